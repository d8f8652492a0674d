#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
#![allow(unsafe_code)] // the counting global allocator below
//! What the frame decoder allocates, measured by this binary's own counting allocator: a
//! header declaring a huge frame allocates nothing, and a legal frame's buffer grows with the
//! bytes that arrive, never to the declared length ahead of them.
//!
//! The counts are per thread (each test runs on its own thread), so tests running in
//! parallel do not disturb each other's measurements.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use llmkg_federation_core::ChannelId;
use llmkg_transport::tcp::{Frame, FrameDecoder, FrameError, INITIAL_PAYLOAD_CAPACITY};
use proptest::prelude::*;

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

/// What `f` allocated on this thread.
#[derive(Debug, Clone, Copy)]
struct Heap {
    /// Bytes allocated in total (a reallocation counts its new size).
    allocated: usize,
    /// The peak of live bytes above those live when `f` started.
    peak: usize,
}

fn measure<T>(f: impl FnOnce() -> T) -> (T, Heap) {
    let allocated = ALLOCATED.with(Cell::get);
    let live = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(live));
    let out = f();
    let heap = Heap {
        allocated: ALLOCATED.with(Cell::get) - allocated,
        peak: (PEAK.with(Cell::get) - live).max(0) as usize,
    };
    (out, heap)
}

const MAX: usize = 16 << 20;

#[test]
fn the_counter_sees_allocations() {
    let (v, heap) = measure(|| Vec::<u8>::with_capacity(100_000));
    assert!(heap.allocated >= 100_000 && heap.peak >= 100_000, "{heap:?}");
    drop(v);
}

#[test]
fn a_four_gib_header_allocates_nothing() {
    let mut d = FrameDecoder::new(MAX);
    let (r, heap) = measure(|| d.feed(&mut &[0xFF, 0xFF, 0xFF, 0xFF][..]));
    assert_eq!(r, Err(FrameError::TooLarge { len: u64::from(u32::MAX), max: MAX }));
    assert_eq!(heap.allocated, 0, "{heap:?}");
    assert_eq!(d.buffered_capacity(), 0);
    // Nor does anything fed to it afterwards, nor finishing it.
    let (r, heap) = measure(|| (d.feed(&mut &[0u8; 4096][..]), d.finish()));
    assert!(r.0.is_err() && r.1.is_err());
    assert_eq!(heap.allocated, 0, "{heap:?}");
}

#[test]
fn a_maximal_legal_header_allocates_only_the_initial_buffer_then_grows_with_the_data() {
    let (header, n) = Frame::message(ChannelId::DEFAULT, vec![0; MAX]).header().unwrap();
    let mut d = FrameDecoder::new(MAX);
    let (r, heap) = measure(|| d.feed(&mut &header[..n]));
    assert_eq!(r, Ok(None));
    assert!(heap.allocated <= INITIAL_PAYLOAD_CAPACITY, "{heap:?}");
    assert!(d.buffered_capacity() <= INITIAL_PAYLOAD_CAPACITY);
    // 100 kB of the declared 16 MiB arrive: the buffer grows to at most twice that.
    let data = vec![0u8; 100_000];
    let (r, heap) = measure(|| d.feed(&mut &data[..]));
    assert_eq!(r, Ok(None));
    assert!(heap.allocated <= 200_000, "{heap:?}");
    assert!(heap.peak <= 200_000 + INITIAL_PAYLOAD_CAPACITY, "{heap:?}");
    assert!(d.buffered_capacity() <= 200_000, "{}", d.buffered_capacity());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// A message frame declaring up to the maximum, of which only `body` arrives (in pieces):
    /// the decoder's peak heap follows the bytes that arrived, not the declared length.
    #[test]
    fn declared_lengths_never_allocate_ahead_of_the_data(
        declared in 0usize..=MAX,
        body_len in 0usize..70_000,
        piece in 1usize..8192,
    ) {
        let arrived = body_len.min(declared);
        // The frame's header, and only the first `arrived` bytes of its payload.
        let frame = Frame::message(ChannelId::DEFAULT, vec![7; declared]);
        let (header, n) = frame.header().unwrap();
        let mut bytes = header[..n].to_vec();
        bytes.extend_from_slice(&frame.payload()[..arrived]);
        drop(frame);
        let mut d = FrameDecoder::new(MAX);
        let (result, heap) = measure(|| {
            let mut frames = Vec::new();
            for mut chunk in bytes.chunks(piece) {
                while let Some(f) = d.feed(&mut chunk)? {
                    frames.push(f);
                }
            }
            Ok::<_, FrameError>(frames)
        });
        let frames = result.unwrap();
        prop_assert_eq!(frames.len(), usize::from(arrived == declared));
        // Twice what arrived (the doubling) or the initial buffer, plus the old block during
        // a reallocation, plus the few bytes of the returned list.
        let bound = 3 * (2 * arrived).max(INITIAL_PAYLOAD_CAPACITY) / 2 + 256;
        prop_assert!(heap.peak <= bound, "{:?} for {} of {} bytes", heap, arrived, declared);
    }
}
