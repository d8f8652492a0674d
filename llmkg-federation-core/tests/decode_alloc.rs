#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
#![allow(unsafe_code)] // the counting global allocator below
//! What decoding allocates for inputs that claim huge lengths, measured by this binary's own
//! counting allocator: a ten-byte input claiming 2^60 elements or bytes fails without
//! allocating for the claim.
//!
//! The counts are per thread (each test runs on its own thread), so tests running in
//! parallel do not disturb each other's measurements.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use llmkg_federation_core::encoding;
use llmkg_federation_core::{BlankNode, ChangeSet, Commit, Iri, Literal, SignedCommit, Triple};

/// Counts the heap bytes the current thread allocates, and its live bytes and their peak.
struct Counting;

thread_local! {
    // Const-initialized and without destructors: using them never allocates.
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn grew(by: usize) {
    let _ = ALLOCATED.try_with(|a| a.set(a.get().saturating_add(by)));
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(by as isize);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn shrank(by: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(by as isize)));
}

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as the new block arriving before the old one leaves, as it may.
        grew(new_size);
        shrank(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The peak of live heap bytes on this thread while `f` ran, above those live when it started.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let live = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(live));
    let out = f();
    (out, (PEAK.with(Cell::get) - live).max(0) as usize)
}

/// Varint encoding of `n` (postcard: 7 bits a byte, least significant first).
fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// What a failed decode may allocate: an error message, nothing for the claimed length. (The
/// encoding module allows sequences to pre-allocate up to serde's cautious 1 MiB; postcard
/// caps the length hint by the input that remains, so a ten-byte input reserves nothing. If
/// a dependency change starts reserving up to that allowance, raise this on purpose.)
const BOUND: usize = 4096;

#[test]
fn the_counter_sees_allocations() {
    let (v, peak) = peak_of(|| Vec::<u8>::with_capacity(100_000));
    assert!(peak >= 100_000, "{peak}");
    drop(v);
}

/// A decode that must fail.
type Check<'a> = Box<dyn Fn() -> bool + 'a>;

#[test]
fn huge_claimed_lengths_fail_fast_without_allocating() {
    let huge = varint(1 << 60);
    assert_eq!(huge, encoding::try_encode(&(1u64 << 60)).unwrap(), "varint helper is wrong");
    let mut input = huge.clone();
    input.push(0x00);
    assert_eq!(input.len(), 10);
    let max = varint(u64::MAX);

    let start = Instant::now();
    let checks: Vec<(&str, Check<'_>)> = vec![
        // A vector of triples (the `add` side of a change set, and the bare vector).
        ("ChangeSet", Box::new(|| encoding::decode::<ChangeSet>(&input).is_err())),
        ("Vec<Triple>", Box::new(|| encoding::decode::<Vec<Triple>>(&input).is_err())),
        // A commit's parent list, also through the envelope decoders.
        ("Commit", Box::new(|| encoding::decode::<Commit>(&input).is_err())),
        ("SignedCommit", Box::new(|| SignedCommit::decode(&input, None).is_err())),
        // Strings: an IRI, a label, a literal's lexical form.
        ("Iri", Box::new(|| encoding::decode::<Iri>(&input).is_err())),
        ("BlankNode", Box::new(|| encoding::decode::<BlankNode>(&input).is_err())),
        ("Literal", Box::new(|| encoding::decode::<Literal>(&input).is_err())),
        // Maximal varints and over-long varints.
        ("ChangeSet, u64::MAX", Box::new(|| encoding::decode::<ChangeSet>(&max).is_err())),
        ("ChangeSet, 10 x 0xff", Box::new(|| encoding::decode::<ChangeSet>(&[0xff; 10]).is_err())),
        ("ChangeSet, 11 x 0xff", Box::new(|| encoding::decode::<ChangeSet>(&[0xff; 11]).is_err())),
    ];
    let mut peaks = Vec::new();
    for (what, decode) in &checks {
        let (failed, peak) = peak_of(decode);
        assert!(failed, "{what}: a huge claimed length decoded");
        assert!(peak <= BOUND, "{what}: peak heap {peak} bytes");
        peaks.push((*what, peak));
    }
    println!("peak heap per decode: {peaks:?}");
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
}
