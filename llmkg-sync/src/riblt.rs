//! Rateless set reconciliation over 32-byte ids: a rateless invertible Bloom lookup table
//! (RIBLT, after Yang, Gilad and Alizadeh, "Practical Rateless Set Reconciliation",
//! SIGCOMM 2024).
//!
//! Two replicas each hold a set of 32-byte ids (commit ids, triple ids: BLAKE3 hashes). They
//! want to learn which ids one side has and the other lacks, moving about as many bytes as the
//! differences themselves and in few round trips, whatever the size of the sets.
//!
//! # How it works
//!
//! An [`Encoder`] turns a set into an endless stream of [`CodedSymbol`]s. Every id is mapped
//! to a pseudo-random, increasing sequence of symbol indexes: index 0 always, and index `i`
//! with probability `1 / (1 + i / 2)`, so the early symbols cover many ids and later ones few.
//! A symbol holds the xor of its ids, the xor of their keyed checksums and their count.
//!
//! A [`Decoder`] holds the *local* set. For every remote symbol it receives it subtracts the
//! local symbol at the same index (xor the sums and checksums, subtract the counts), which
//! leaves a symbol over the symmetric difference only. A difference symbol with count `±1`
//! whose checksum matches its sum is *pure*: its sum is an id only the remote (`+1`) or only
//! the local side (`-1`) has. The decoder then removes that id from every symbol it maps to,
//! which may make more symbols pure (peeling). Every id maps to symbol 0, so decoding is
//! complete when difference symbol 0 is empty. For `d` differences that takes about
//! `1.35 d` to `1.7 d` symbols (more, relatively, for small `d`), independent of the set sizes.
//!
//! # Wire size
//!
//! A symbol is 37 bytes with postcard: the 32-byte xor sum, a 4-byte checksum and a 1-byte
//! count.
//!
//! - The **count** is sent modulo 256 (a wrapping `i8`). The decoder knows its own count
//!   exactly and only needs the *difference* of the two counts, which is small for all but the
//!   first few symbols (`d * 2 / (i + 2)` on average at index `i`); where it wraps, the
//!   checksum rejects the false `±1`. A full zigzag varint would cost 2–3 bytes per symbol for
//!   sets of a million (the count at index `i` is about `2n / (i + 2)`), 3–5 % more bytes.
//! - The **checksum** is 32 bits of a keyed BLAKE3 hash of the id. A false "pure" verdict
//!   needs a count of `±1`, a 32-bit checksum match (probability `2^-32` per test) *and* the
//!   false id to map to the symbol it was found in (probability `2 / (i + 2)`). Decoding `d`
//!   differences makes a few tests per symbol, so for `d = 10,000` a false peel happens in
//!   well under one session in 10^5; when it does, the decoder does not finish within its
//!   limit or reports an inconsistency, and the session is retried under a fresh salt. A
//!   64-bit checksum would add 4 bytes (11 %) to every symbol.
//!
//! # Keys
//!
//! The index mapping and the checksums come from BLAKE3 keyed with a key derived from a
//! per-session `u64` salt both sides agree on (the requester picks it at random). A peer cannot
//! precompute ids that collide in the mapping or the checksum for a session it does not yet
//! know. Within a session the peer knows the key; what it can do with it (forge symbols, make
//! decoding fail) is bounded by [`DecodeLimits`].
//!
//! # The exchange
//!
//! [`Requester`] (the side that wants the differences) and [`Responder`] implement this
//! exchange; every message is a postcard-encoded [`Message`]:
//!
//! ```text
//!  requester (set A, decodes)                         responder (set B, encodes)
//!     |-- Open { salt, |A|, sketch(A) } --------------------->|  estimate d from the sketches
//!     |<------------------- Symbols { estimate, first batch } --|  ~ need(d) symbols
//!     |-- More { count } ------------------------------------>|  only if not yet decoded
//!     |<------------------------------- Symbols { batch } ------|
//!     |   ... (a third round if needed)
//!     |-- Done ---------------------------------------------->|
//! ```
//!
//! A round trip is one request (`Open` or `More`) and its `Symbols` reply; the final `Done`
//! is a one-way message (its byte is counted in the bytes). The sketch is a 128-bucket count
//! sketch: the count of ids per keyed-hash bucket, modulo 256, about 130 bytes. From the
//! bucket count differences the responder estimates `d` with a relative error of about 13 %
//! (their variance is `d / 128` per bucket), and sends a first batch of
//! [`first_batch_size`] symbols: 92 % of the [`expected_symbols`] for the estimate. If that
//! does not decode, the requester asks for [`next_batch_size`] more, bringing the total to
//! 108 % and then 128 % ([`BATCH_TARGETS`]): each step over-shoots by less than 1.2 ×, and
//! three rounds cover estimates from about 10 % too high to 40 % too low. The requester keeps
//! asking (a quarter more each round) after the third round if it must, so a bad estimate
//! costs round trips and bytes, never correctness.
//!
//! In simulation (200 sessions per `d`, differences split between the sides) the bytes
//! exceed 2 × the minimum in about 25 % of sessions at `d = 100` (median 1.87 ×, worst
//! 2.4 ×), 3 % at `d = 300`, 1.5 % at `d = 1,000` (median 1.72 ×) and none at
//! `d = 10,000` (median 1.70 ×); a fourth round is needed in 3–5 % of sessions at `d` from
//! 100 to 1,000.
//!
//! # Costs
//!
//! - Bytes: about `37 × 1.37 d` symbols for large `d` (`37 × 1.47 d` at `d = 100`), the
//!   over-shoot of the batch sizing, and ~150 bytes of sketch and framing: 1.7–1.9 × the
//!   minimum `32 d` typically.
//! - Time: one keyed BLAKE3 hash per id per side and session, then, for `m` symbols, about
//!   `2 ln m` xors of 32 bytes per id. Each [`Encoder::next_symbols`] call scans all ids once,
//!   so it is meant for batches, not single symbols.
//! - Memory: 56 bytes per local id, ~40 bytes per received symbol, bounded by
//!   [`DecodeLimits`].
//!
//! # Limits
//!
//! Ids must be distinct within a set (a repeated id cancels out of the sums). The count sketch
//! estimates differences up to about 200,000; beyond that the estimate is low and the exchange
//! takes more rounds. A peer controls the symbols it sends: the decoder's work and memory are
//! bounded by [`DecodeLimits`], and a forged or inconsistent stream ends in a [`DecodeError`],
//! never a panic or a loop.
//!
//! # Example
//!
//! ```
//! use llmkg_sync::riblt::{DecodeLimits, Decoder, Encoder};
//!
//! let id = |i: u32| *blake3::hash(&i.to_le_bytes()).as_bytes();
//! let remote: Vec<[u8; 32]> = (0..1000).map(id).collect(); // 0..1000
//! let local: Vec<[u8; 32]> = (5..1003).map(id).collect(); // 5..1003
//!
//! let salt = 0x5eed;
//! let mut encoder = Encoder::from_ids(salt, remote.iter().copied());
//! let mut decoder = Decoder::new(salt, local.iter().copied(), DecodeLimits::default());
//! while !decoder.is_decoded() {
//!     let batch = encoder.next_symbols(8);
//!     decoder.add_symbols(&batch).expect("an honest stream decodes");
//! }
//! let mut remote_only = decoder.remote_only().to_vec();
//! remote_only.sort();
//! let mut expected: Vec<[u8; 32]> = (0..5).map(id).collect();
//! expected.sort();
//! assert_eq!(remote_only, expected);
//! assert_eq!(decoder.local_only().len(), 3);
//! ```

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The length of the ids reconciled here.
pub const ID_LEN: usize = 32;

/// An id: 32 bytes, expected to be uniformly distributed (a BLAKE3 hash).
pub type Id = [u8; ID_LEN];

/// The BLAKE3 key-derivation context for the per-session key.
const KEY_CONTEXT: &str = "llmkg-sync 2025 riblt session key";

/// Number of buckets in the count sketch.
pub const SKETCH_BUCKETS: usize = 128;

/// The per-session hashing key, derived from the salt.
#[derive(Clone)]
struct Key([u8; 32]);

impl Key {
    fn new(salt: u64) -> Self {
        Self(blake3::derive_key(KEY_CONTEXT, &salt.to_le_bytes()))
    }

    /// The keyed hash of `id`: the mapping seed, the checksum and the sketch bucket.
    fn hash(&self, id: &Id) -> Hashed {
        let h = blake3::keyed_hash(&self.0, id);
        let b = h.as_bytes();
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&b[0..8]);
        let mut check = [0u8; 4];
        check.copy_from_slice(&b[8..12]);
        Hashed {
            seed: u64::from_le_bytes(seed),
            check: u32::from_le_bytes(check),
            bucket: b[12] % SKETCH_BUCKETS as u8,
        }
    }
}

#[derive(Clone, Copy)]
struct Hashed {
    seed: u64,
    check: u32,
    bucket: u8,
}

/// The index sequence of one id: index 0, then each later index `i` with probability
/// `1 / (1 + i / 2)`, drawn one gap at a time.
#[derive(Clone, Copy, Debug)]
struct Mapping {
    rng: u64,
    next: u64,
}

impl Mapping {
    fn new(seed: u64) -> Self {
        Self { rng: seed, next: 0 }
    }

    /// Moves `next` to the id's following index.
    ///
    /// From index `i`, the chance that none of `i+1 ..= i+g` is chosen is
    /// `prod (1 - 2/(i+k+2)) = (i+1)(i+2) / ((i+g+1)(i+g+2)) ≈ ((i+1.5) / (i+g+1.5))^2`.
    /// Setting that to a uniform `u` in (0, 1] and solving gives the gap
    /// `g = (i + 1.5) (1/sqrt(u) - 1)`, rounded up (at least 1).
    #[inline]
    fn advance(&mut self) {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let u = ((z >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
        let gap = (self.next as f64 + 1.5) * (1.0 / u.sqrt() - 1.0);
        // Rounded up by hand (`f64::ceil` is a libm call on baseline x86-64); `as` saturates,
        // and gap is finite and >= 0 since u is in (0, 1].
        let whole = gap as u64;
        let whole = if (whole as f64) < gap { whole.saturating_add(1) } else { whole };
        self.next = self.next.saturating_add(whole.max(1));
    }
}

/// One coded symbol of the stream, as sent on the wire (37 bytes with postcard).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CodedSymbol {
    /// The xor of the ids mapped to this symbol.
    pub sum: Id,
    /// The xor of their keyed 32-bit checksums, little-endian.
    pub checksum: [u8; 4],
    /// Their signed count, modulo 256 (wrapping): only count differences matter to a decoder.
    pub count: i8,
}

impl CodedSymbol {
    /// The empty symbol.
    pub const EMPTY: CodedSymbol = CodedSymbol { sum: [0; ID_LEN], checksum: [0; 4], count: 0 };
}

/// A symbol in working form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cell {
    sum: Id,
    check: u32,
    count: i8,
}

impl Cell {
    #[inline]
    fn toggle(&mut self, id: &Id, check: u32, sign: i8) {
        xor_into(&mut self.sum, id);
        self.check ^= check;
        self.count = self.count.wrapping_add(sign);
    }

    fn is_empty(&self) -> bool {
        self.count == 0 && self.check == 0 && self.sum == [0; ID_LEN]
    }

    fn to_symbol(self) -> CodedSymbol {
        CodedSymbol { sum: self.sum, checksum: self.check.to_le_bytes(), count: self.count }
    }
}

/// `a ^= b`, two 16-byte words at a time.
#[inline]
fn xor_into(a: &mut Id, b: &Id) {
    let (a0, a1) = a.split_at_mut(16);
    let (b0, b1) = b.split_at(16);
    for (x, y) in [(a0, b0), (a1, b1)] {
        let mut xa = [0u8; 16];
        let mut ya = [0u8; 16];
        xa.copy_from_slice(x);
        ya.copy_from_slice(y);
        let v = u128::from_ne_bytes(xa) ^ u128::from_ne_bytes(ya);
        x.copy_from_slice(&v.to_ne_bytes());
    }
}

/// One id with its keyed hash and its position in its index sequence.
#[derive(Clone, Copy)]
struct Item {
    id: Id,
    check: u32,
    bucket: u8,
    map: Mapping,
}

/// The count sketch of a set: the number of ids per keyed-hash bucket, modulo 256, and the
/// set size. Comparing two sketches estimates the size of the symmetric difference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sketch {
    /// The number of ids in the set.
    pub set_size: u64,
    /// The per-bucket counts modulo 256; [`SKETCH_BUCKETS`] of them.
    pub buckets: Vec<u8>,
}

impl Sketch {
    /// Estimates the number of ids in exactly one of the two sets, or `None` if `other` does
    /// not have [`SKETCH_BUCKETS`] buckets.
    ///
    /// The bucket count differences `c_k` sum to the set size difference `D`; around their
    /// mean `D / K` they vary with variance `d (1 - 1/K) / K`, so
    /// `d ≈ sum (c_k - D/K)^2 · K / (K - 1)`, with a relative error of about `sqrt(2 / K)`.
    /// Each `c_k - D/K` must stay within ±127 (modulo 256), which holds up to about 200,000
    /// differences.
    pub fn estimate_difference(&self, other: &Sketch) -> Option<u64> {
        if self.buckets.len() != SKETCH_BUCKETS || other.buckets.len() != SKETCH_BUCKETS {
            return None;
        }
        let k = SKETCH_BUCKETS as i128;
        let delta = i128::from(self.set_size) - i128::from(other.set_size);
        let base = delta.div_euclid(k);
        // `base` modulo 256, as the buckets are.
        let base_mod = base.rem_euclid(256) as u8;
        let mut sum_sq: f64 = 0.0;
        for (a, b) in self.buckets.iter().zip(&other.buckets) {
            let wrapped = a.wrapping_sub(*b).wrapping_sub(base_mod) as i8;
            let c = (base + i128::from(wrapped)) as f64;
            sum_sq += c * c;
        }
        let mean = delta as f64 / k as f64;
        let spread = (sum_sq - k as f64 * mean * mean).max(0.0);
        let est = spread * k as f64 / (k - 1) as f64;
        let est = est.max(delta.unsigned_abs() as f64);
        Some(est.round() as u64)
    }
}

/// Turns a set of ids into the coded symbol stream, in order.
#[derive(Clone)]
pub struct Encoder {
    key: Key,
    salt: u64,
    items: Vec<Item>,
    produced: u64,
}

/// Why an id could not be added to an [`Encoder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// Symbols have been produced already, and they would not contain the new id. The
    /// encoder is unchanged.
    #[error("the encoder has already produced symbols; ids can no longer be added")]
    AlreadyStarted,
}

impl Encoder {
    /// An encoder over the empty set, keyed by `salt`.
    pub fn new(salt: u64) -> Self {
        Self { key: Key::new(salt), salt, items: Vec::new(), produced: 0 }
    }

    /// An encoder over `ids`, which must be distinct, keyed by `salt`.
    pub fn from_ids(salt: u64, ids: impl IntoIterator<Item = Id>) -> Self {
        let mut enc = Self::new(salt);
        let ids = ids.into_iter();
        enc.items.reserve(ids.size_hint().0);
        for id in ids {
            enc.push(id);
        }
        enc
    }

    fn push(&mut self, id: Id) {
        let h = self.key.hash(&id);
        self.items.push(Item { id, check: h.check, bucket: h.bucket, map: Mapping::new(h.seed) });
    }

    /// Adds one id (not already present) before any symbol is produced.
    pub fn add(&mut self, id: Id) -> Result<(), EncodeError> {
        if self.produced > 0 {
            return Err(EncodeError::AlreadyStarted);
        }
        self.push(id);
        Ok(())
    }

    /// The salt the encoder is keyed with.
    pub fn salt(&self) -> u64 {
        self.salt
    }

    /// The number of ids.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The number of symbols produced so far (the index of the next one).
    pub fn symbols_produced(&self) -> u64 {
        self.produced
    }

    /// The count sketch of the set, for [`Sketch::estimate_difference`].
    pub fn sketch(&self) -> Sketch {
        let mut buckets = vec![0u8; SKETCH_BUCKETS];
        for it in &self.items {
            if let Some(b) = buckets.get_mut(usize::from(it.bucket)) {
                *b = b.wrapping_add(1);
            }
        }
        Sketch { set_size: self.items.len() as u64, buckets }
    }

    /// The next `n` symbols of the stream, continuing where the last call left off.
    ///
    /// Each call scans every id once, plus one 32-byte xor per id and symbol it maps to.
    pub fn next_symbols(&mut self, n: usize) -> Vec<CodedSymbol> {
        self.next_cells(n).into_iter().map(Cell::to_symbol).collect()
    }

    fn next_cells(&mut self, n: usize) -> Vec<Cell> {
        let mut out = vec![Cell::default(); n];
        let start = self.produced;
        let end = start.saturating_add(n as u64);
        for it in &mut self.items {
            while it.map.next < end {
                if let Some(cell) = out.get_mut((it.map.next - start) as usize) {
                    cell.toggle(&it.id, it.check, 1);
                }
                it.map.advance();
            }
        }
        self.produced = end;
        out
    }
}

/// Bounds on what a [`Decoder`] accepts from a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// The most symbols it accepts in total (each costs ~40 bytes of memory).
    pub max_symbols: usize,
    /// The most differing ids it recovers.
    pub max_differences: usize,
}

impl DecodeLimits {
    /// Limits for at most `d` differences: `d` ids and `3 d + 64` symbols, room for the
    /// decoding overhead of small and unlucky sessions.
    pub fn for_differences(d: usize) -> Self {
        Self { max_symbols: d.saturating_mul(3).saturating_add(64), max_differences: d }
    }
}

impl Default for DecodeLimits {
    /// 250,000 differences and 1,000,000 symbols (about 40 MB).
    fn default() -> Self {
        Self { max_symbols: 1_000_000, max_differences: 250_000 }
    }
}

/// How a symbol stream contradicts itself or the local set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Inconsistency {
    /// The same id was recovered twice.
    #[error("an id was recovered twice")]
    DuplicateId,
    /// An id recovered as "only the remote has it" is in the local set.
    #[error("an id the remote claims only it has is in the local set")]
    RemoteOnlyIsLocal,
    /// An id recovered as "only the local side has it" is not in the local set.
    #[error("an id recovered as local-only is not in the local set")]
    LocalOnlyIsMissing,
}

/// Why a [`Decoder`] rejected symbols.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Accepting the batch would take the decoder past [`DecodeLimits::max_symbols`]. The
    /// decoder is unchanged: the whole batch was rejected, and the decoder stays usable.
    #[error("symbol limit reached: {limit} symbols, {offered} offered")]
    SymbolLimit {
        /// The limit.
        limit: usize,
        /// The symbols accepted so far plus the batch.
        offered: usize,
    },
    /// More than [`DecodeLimits::max_differences`] ids were recovered. The decoder changed
    /// (part of the batch was processed) and is now failed: every later call returns
    /// [`DecodeError::Failed`].
    #[error("difference limit reached: more than {limit} differing ids")]
    DifferenceLimit {
        /// The limit.
        limit: usize,
    },
    /// The stream is inconsistent (forged, from another salt, or a checksum collision). The
    /// decoder changed and is now failed: every later call returns [`DecodeError::Failed`].
    #[error("inconsistent symbol stream: {0}")]
    Inconsistent(Inconsistency),
    /// An earlier call failed; the decoder is unchanged and accepts nothing more.
    #[error("the decoder failed earlier")]
    Failed,
}

/// A recovered id and its index sequence, kept to subtract it from later symbols.
struct Peeled {
    id: Id,
    check: u32,
    sign: i8,
    map: Mapping,
}

/// Recovers the symmetric difference between the local set and a remote coded symbol stream.
pub struct Decoder {
    limits: DecodeLimits,
    local: Encoder,
    /// Remote minus local symbols, minus the recovered ids.
    cells: Vec<Cell>,
    peeled: Vec<Peeled>,
    seen: HashMap<Id, usize, foldhash::fast::RandomState>,
    remote_only: Vec<Id>,
    local_only: Vec<Id>,
    queue: Vec<usize>,
    scratch: Vec<u64>,
    decoded: bool,
    failed: bool,
}

impl Decoder {
    /// A decoder for the session keyed by `salt`, over the local set `local` (distinct ids).
    pub fn new(salt: u64, local: impl IntoIterator<Item = Id>, limits: DecodeLimits) -> Self {
        Self::from_encoder(Encoder::from_ids(salt, local), limits)
    }

    /// A decoder over the set of the encoder `local`; if it has produced symbols already,
    /// its stream is restarted from index 0.
    pub fn from_encoder(local: Encoder, limits: DecodeLimits) -> Self {
        let mut local = local;
        // An encoder that already produced symbols cannot be rewound: restart its mappings.
        if local.produced > 0 {
            let key = local.key.clone();
            for it in &mut local.items {
                it.map = Mapping::new(key.hash(&it.id).seed);
            }
            local.produced = 0;
        }
        Self {
            limits,
            local,
            cells: Vec::new(),
            peeled: Vec::new(),
            seen: HashMap::default(),
            remote_only: Vec::new(),
            local_only: Vec::new(),
            queue: Vec::new(),
            scratch: Vec::new(),
            decoded: false,
            failed: false,
        }
    }

    /// The salt the decoder is keyed with.
    pub fn salt(&self) -> u64 {
        self.local.salt
    }

    /// The local set's size.
    pub fn local_len(&self) -> usize {
        self.local.len()
    }

    /// The local set's count sketch.
    pub fn sketch(&self) -> Sketch {
        self.local.sketch()
    }

    /// The limits the decoder enforces.
    pub fn limits(&self) -> DecodeLimits {
        self.limits
    }

    /// The number of remote symbols accepted so far.
    pub fn symbols_used(&self) -> usize {
        self.cells.len()
    }

    /// Whether the difference is fully recovered.
    pub fn is_decoded(&self) -> bool {
        self.decoded
    }

    /// Whether an earlier call failed.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// The ids only the remote has: complete once [`Decoder::is_decoded`], partial before.
    pub fn remote_only(&self) -> &[Id] {
        &self.remote_only
    }

    /// The ids only the local side has: complete once [`Decoder::is_decoded`], partial
    /// before.
    pub fn local_only(&self) -> &[Id] {
        &self.local_only
    }

    /// The number of differing ids recovered so far.
    pub fn differences_found(&self) -> usize {
        self.peeled.len()
    }

    /// Feeds the next remote symbols of the stream, in order, and returns
    /// [`Decoder::is_decoded`]. Symbols fed after decoding completed are ignored.
    pub fn add_symbols(&mut self, symbols: &[CodedSymbol]) -> Result<bool, DecodeError> {
        if self.failed {
            return Err(DecodeError::Failed);
        }
        if self.decoded || symbols.is_empty() {
            return Ok(self.decoded);
        }
        let offered = self.cells.len().saturating_add(symbols.len());
        if offered > self.limits.max_symbols {
            return Err(DecodeError::SymbolLimit { limit: self.limits.max_symbols, offered });
        }
        let result = self.add_checked(symbols);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn add_checked(&mut self, symbols: &[CodedSymbol]) -> Result<bool, DecodeError> {
        let start = self.cells.len();
        let local = self.local.next_cells(symbols.len());
        for (r, l) in symbols.iter().zip(local) {
            let mut cell = Cell {
                sum: r.sum,
                check: u32::from_le_bytes(r.checksum) ^ l.check,
                count: r.count.wrapping_sub(l.count),
            };
            xor_into(&mut cell.sum, &l.sum);
            self.cells.push(cell);
        }
        let end = self.cells.len() as u64;
        // Remove the ids recovered so far from the new symbols.
        for p in &mut self.peeled {
            while p.map.next < end {
                if let Some(cell) = self.cells.get_mut(p.map.next as usize) {
                    cell.toggle(&p.id, p.check, p.sign.wrapping_neg());
                }
                p.map.advance();
            }
        }
        self.queue.extend(start..self.cells.len());
        self.peel()?;
        if self.cells.first().is_some_and(Cell::is_empty) {
            self.verify_local()?;
            self.decoded = true;
        }
        Ok(self.decoded)
    }

    /// Peels pure symbols until none is left in the queue.
    fn peel(&mut self) -> Result<(), DecodeError> {
        while let Some(index) = self.queue.pop() {
            let Some(cell) = self.cells.get(index).copied() else { continue };
            if cell.count != 1 && cell.count != -1 {
                continue;
            }
            let h = self.local.key.hash(&cell.sum);
            if h.check != cell.check {
                continue;
            }
            // The id's indexes within the symbols received; it must map to `index`.
            self.scratch.clear();
            let mut map = Mapping::new(h.seed);
            let end = self.cells.len() as u64;
            while map.next < end {
                self.scratch.push(map.next);
                map.advance();
            }
            if !self.scratch.contains(&(index as u64)) {
                continue;
            }
            if self.seen.contains_key(&cell.sum) {
                return Err(DecodeError::Inconsistent(Inconsistency::DuplicateId));
            }
            if self.peeled.len() >= self.limits.max_differences {
                return Err(DecodeError::DifferenceLimit { limit: self.limits.max_differences });
            }
            let sign = cell.count;
            for &j in &self.scratch {
                if let Some(c) = self.cells.get_mut(j as usize) {
                    c.toggle(&cell.sum, h.check, sign.wrapping_neg());
                    if c.count == 1 || c.count == -1 {
                        self.queue.push(j as usize);
                    }
                }
            }
            self.seen.insert(cell.sum, self.peeled.len());
            self.peeled.push(Peeled { id: cell.sum, check: h.check, sign, map });
            if sign == 1 {
                self.remote_only.push(cell.sum);
            } else {
                self.local_only.push(cell.sum);
            }
        }
        Ok(())
    }

    /// Checks the recovered ids against the local set: remote-only ids must be absent,
    /// local-only ids present.
    fn verify_local(&self) -> Result<(), DecodeError> {
        if self.seen.is_empty() {
            return Ok(());
        }
        let mut found_local = 0usize;
        for it in &self.local.items {
            if let Some(&i) = self.seen.get(&it.id) {
                match self.peeled.get(i) {
                    Some(p) if p.sign == 1 => {
                        return Err(DecodeError::Inconsistent(Inconsistency::RemoteOnlyIsLocal));
                    }
                    _ => found_local += 1,
                }
            }
        }
        if found_local != self.local_only.len() {
            return Err(DecodeError::Inconsistent(Inconsistency::LocalOnlyIsMissing));
        }
        Ok(())
    }

    /// The recovered difference, once decoded.
    pub fn differences(&self) -> Option<Differences> {
        self.decoded.then(|| Differences {
            remote_only: self.remote_only.clone(),
            local_only: self.local_only.clone(),
        })
    }
}

/// The symmetric difference between the local and the remote set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Differences {
    /// Ids only the remote has.
    pub remote_only: Vec<Id>,
    /// Ids only the local side has.
    pub local_only: Vec<Id>,
}

/// The expected number of symbols to decode `d` differences: about `1.35 d` for large `d`,
/// relatively more for small `d` (a fit to measured means: `d (1.35 + 1.2 / sqrt d)`).
pub fn expected_symbols(d: u64) -> u64 {
    if d == 0 {
        return 1;
    }
    let d = d as f64;
    (d * (1.35 + 1.2 / d.sqrt())).ceil() as u64
}

/// The size of the first batch for an estimated `d` differences: a little under
/// [`expected_symbols`], as over-shooting costs bytes and under-shooting a round trip.
pub fn first_batch_size(estimate: u64) -> u64 {
    let e = expected_symbols(estimate) as f64;
    ((e * BATCH_TARGETS[0]).ceil() as u64).max(1)
}

/// The size of the batch to ask for in round `round` (2 for the first `More`) after
/// `received` symbols did not decode `estimate` differences: enough to bring the total to
/// [`BATCH_TARGETS`]`[round - 1]` × [`expected_symbols`]`(estimate)`, and at least 2 % of
/// what was received; past the last target, a quarter of what was received.
pub fn next_batch_size(estimate: u64, received: u64, round: u32) -> u64 {
    let e = expected_symbols(estimate) as f64;
    let received_f = received as f64;
    let n = match BATCH_TARGETS.get(round.saturating_sub(1) as usize) {
        Some(t) => (t * e - received_f).max(0.02 * received_f),
        None => 0.25 * received_f,
    };
    (n.ceil() as u64).max(2)
}

/// The cumulative number of symbols sent after round 1, 2, 3, as fractions of
/// [`expected_symbols`] of the estimate. Consecutive targets are about 1.18 apart: a session
/// that decodes at round `k` has over-shot by less than that factor, which keeps the bytes
/// within about 2 × the minimum for `d ≥ 300`; three rounds cover estimates from about
/// 10 % too high to 40 % too low.
pub const BATCH_TARGETS: [f64; 3] = [0.92, 1.08, 1.28];

/// A message of the reconciliation exchange (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// Requester to responder: opens a session.
    Open {
        /// The session salt.
        salt: u64,
        /// The requester's count sketch.
        sketch: Sketch,
    },
    /// Responder to requester: the next symbols of the stream.
    Symbols {
        /// The responder's estimate of the number of differences.
        estimate: u64,
        /// The symbols, continuing the stream.
        symbols: Vec<CodedSymbol>,
    },
    /// Requester to responder: send `count` more symbols.
    More {
        /// How many.
        count: u64,
    },
    /// Requester to responder: decoded, the session is over.
    Done,
}

/// Why a reconciliation session failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The decoder rejected the symbols; see [`DecodeError`] for the state it is left in.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A message that does not fit the exchange at this point (e.g. `Symbols` sent to a
    /// responder, or a sketch with the wrong number of buckets). Nothing changed.
    #[error("unexpected message")]
    Unexpected,
    /// The peer asked for more symbols than the responder's limit. Nothing changed.
    #[error("the peer asked for {asked} symbols past the limit of {limit}")]
    TooManyRequested {
        /// Symbols sent so far plus those asked for.
        asked: u64,
        /// The limit.
        limit: u64,
    },
}

/// The side that wants the differences: holds the local set and decodes.
pub struct Requester {
    decoder: Decoder,
    estimate: u64,
    rounds: u32,
}

impl Requester {
    /// A requester over the local set `local` (distinct ids), for the session `salt` (pick it
    /// at random per session).
    pub fn new(salt: u64, local: impl IntoIterator<Item = Id>, limits: DecodeLimits) -> Self {
        Self { decoder: Decoder::new(salt, local, limits), estimate: 0, rounds: 0 }
    }

    /// The message that opens the session.
    pub fn open(&self) -> Message {
        Message::Open { salt: self.decoder.salt(), sketch: self.decoder.sketch() }
    }

    /// Handles the responder's `Symbols` and returns the reply: `More` or `Done`.
    pub fn handle(&mut self, message: &Message) -> Result<Message, SessionError> {
        let Message::Symbols { estimate, symbols } = message else {
            return Err(SessionError::Unexpected);
        };
        if self.decoder.is_decoded() {
            return Err(SessionError::Unexpected);
        }
        if self.rounds == 0 {
            self.estimate = *estimate;
        }
        self.rounds = self.rounds.saturating_add(1);
        if self.decoder.add_symbols(symbols)? {
            return Ok(Message::Done);
        }
        let count =
            next_batch_size(self.estimate, self.decoder.symbols_used() as u64, self.rounds + 1);
        let room = self.decoder.limits().max_symbols.saturating_sub(self.decoder.symbols_used());
        Ok(Message::More { count: count.min(room as u64).max(1) })
    }

    /// The responder's sketch estimate of the number of differences (0 before its first
    /// reply).
    pub fn estimate(&self) -> u64 {
        self.estimate
    }

    /// The number of `Symbols` replies handled (round trips so far).
    pub fn rounds(&self) -> u32 {
        self.rounds
    }

    /// Whether the difference is recovered.
    pub fn is_done(&self) -> bool {
        self.decoder.is_decoded()
    }

    /// The decoder, for its counters and results.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The recovered difference (remote = responder), once done.
    pub fn differences(&self) -> Option<Differences> {
        self.decoder.differences()
    }
}

/// The side that answers: holds its set and streams symbols.
pub struct Responder {
    encoder: Encoder,
    estimate: u64,
    max_symbols: u64,
    done: bool,
}

impl Responder {
    /// Accepts an `Open` for the set `local` (distinct ids) and returns the responder and
    /// its first `Symbols` reply. It sends at most `max_symbols` symbols in the session.
    pub fn accept(
        local: impl IntoIterator<Item = Id>,
        open: &Message,
        max_symbols: u64,
    ) -> Result<(Self, Message), SessionError> {
        let Message::Open { salt, sketch } = open else {
            return Err(SessionError::Unexpected);
        };
        let encoder = Encoder::from_ids(*salt, local);
        let estimate =
            encoder.sketch().estimate_difference(sketch).ok_or(SessionError::Unexpected)?;
        let mut me = Self { encoder, estimate, max_symbols, done: false };
        let first = first_batch_size(estimate).min(max_symbols.max(1));
        let reply = me.symbols(first);
        Ok((me, reply))
    }

    fn symbols(&mut self, count: u64) -> Message {
        let symbols = self.encoder.next_symbols(usize::try_from(count).unwrap_or(usize::MAX));
        Message::Symbols { estimate: self.estimate, symbols }
    }

    /// The estimated number of differences.
    pub fn estimate(&self) -> u64 {
        self.estimate
    }

    /// The number of symbols sent.
    pub fn symbols_sent(&self) -> u64 {
        self.encoder.symbols_produced()
    }

    /// Whether the requester said `Done`.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Handles `More` (returns the `Symbols` reply) or `Done` (returns `None`).
    pub fn handle(&mut self, message: &Message) -> Result<Option<Message>, SessionError> {
        match message {
            _ if self.done => Err(SessionError::Unexpected),
            Message::Done => {
                self.done = true;
                Ok(None)
            }
            Message::More { count } => {
                let asked = self.symbols_sent().saturating_add(*count);
                if asked > self.max_symbols {
                    return Err(SessionError::TooManyRequested { asked, limit: self.max_symbols });
                }
                Ok(Some(self.symbols(*count)))
            }
            _ => Err(SessionError::Unexpected),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u64) -> Id {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    #[test]
    fn mapping_density_is_one_over_one_plus_half_index() {
        let items = 20_000u64;
        let len = 64usize;
        let mut hits = vec![0u64; len];
        for i in 0..items {
            let mut m = Mapping::new(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            while (m.next as usize) < len {
                hits[m.next as usize] += 1;
                m.advance();
            }
        }
        for (i, &h) in hits.iter().enumerate() {
            let want = items as f64 * 2.0 / (i as f64 + 2.0);
            let got = h as f64;
            assert!((got - want).abs() < 5.0 * want.sqrt() + 1.0, "index {i}: {got} vs {want}");
        }
    }

    #[test]
    fn a_symbol_is_37_bytes_on_the_wire() {
        let s = CodedSymbol { sum: [0xff; 32], checksum: [0xff; 4], count: -1 };
        assert_eq!(postcard::to_stdvec(&s).map(|v| v.len()).ok(), Some(37));
    }

    #[test]
    fn ids_cannot_be_added_after_symbols_were_produced() {
        let mut e = Encoder::new(1);
        assert_eq!(e.add(id(1)), Ok(()));
        let _ = e.next_symbols(1);
        assert_eq!(e.add(id(2)), Err(EncodeError::AlreadyStarted));
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn the_sketch_estimates_the_difference() {
        let a = Encoder::from_ids(3, (0..5000).map(id));
        let b = Encoder::from_ids(3, (400..5400).map(id));
        let est = a.sketch().estimate_difference(&b.sketch());
        let est = est.unwrap_or(0) as f64;
        assert!((est - 800.0).abs() < 0.4 * 800.0, "estimate {est}");
        assert_eq!(a.sketch().estimate_difference(&a.sketch()), Some(0));
        let bad = Sketch { set_size: 1, buckets: vec![0; 3] };
        assert_eq!(a.sketch().estimate_difference(&bad), None);
    }

    #[test]
    fn decodes_a_small_difference_one_symbol_at_a_time() {
        let mut e = Encoder::from_ids(9, (0..100).map(id));
        let mut d = Decoder::new(9, (3..104).map(id), DecodeLimits::default());
        while !d.is_decoded() {
            assert!(d.symbols_used() < 100);
            let s = e.next_symbols(1);
            assert!(d.add_symbols(&s).is_ok());
        }
        assert_eq!(d.remote_only().len(), 3);
        assert_eq!(d.local_only().len(), 4);
    }

    #[test]
    fn a_rewound_encoder_restarts_its_stream() {
        let mut e = Encoder::from_ids(4, (0..50).map(id));
        let first = e.next_symbols(10);
        let d = Decoder::from_encoder(e, DecodeLimits::default());
        let mut again = d.local.clone();
        assert_eq!(again.next_symbols(10), first);
    }
}
