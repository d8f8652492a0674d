//! The event queue: entries ordered by virtual time, then by the order they were scheduled.
//!
//! [`Queue`] behaves exactly like a binary heap keyed by `(time, sequence number)`: entries
//! pop in order of time, and entries due at the same instant in the order they were pushed.
//! It is built for the simulator's pattern, where virtual time only moves forward and most
//! entries are due a few milliseconds after the current instant (message latencies): those
//! go into a timing wheel with one slot per microsecond, where a push and a pop cost a few
//! array accesses; the rest (timers and faults far ahead, and in principle anything scheduled
//! before the last popped instant) wait in an ordered [`Buckets`] map.

use std::collections::btree_map::Entry as Slot;
use std::collections::{BTreeMap, VecDeque};

use llmkg_federation_core::Time;

/// Instants the wheel spans: entries due within this many microseconds of the wheel's base go
/// straight into a slot (2^15 µs, about 33 ms, more than typical link latencies).
const SLOTS: usize = 1 << 15;
const MASK: u64 = SLOTS as u64 - 1;
/// Marks an empty list in the wheel's slots and node links.
const NIL: u32 = u32::MAX;

/// A priority queue keyed by `(time, scheduling order)` (see the module documentation).
///
/// The wheel covers the instants `[base, base + SLOTS)`; each slot holds the FIFO list of the
/// entries due at its one instant, linked through a slab of nodes, and a bitmap marks the
/// slots in use so the next due instant is found a word at a time. `overflow` holds every
/// other entry. `base` is the last instant popped from the wheel (or a later one when the
/// queue was empty), so it only moves forward; when it does, the overflow entries whose
/// instant enters the window move into the wheel *before* anything else can be pushed at
/// that instant, which keeps each slot in scheduling order. Entries scheduled before `base`
/// (the simulator never does that, but the queue does not rely on it) stay in the overflow and
/// pop before everything in the wheel, which is exactly their order.
pub(super) struct Queue<T> {
    /// The first instant (microseconds) of the wheel's window.
    base: u64,
    /// Per slot: first and last node of its list (`NIL` when empty).
    slots: Vec<[u32; 2]>,
    /// One bit per slot: set when its list is not empty.
    occupied: Vec<u64>,
    /// The wheel's entries; a free node has no item.
    nodes: Vec<Node<T>>,
    /// Free nodes, reused last-freed first (still in cache).
    free: Vec<u32>,
    /// Entries in the wheel.
    in_wheel: usize,
    /// Entries outside the wheel's window.
    overflow: Buckets<T>,
}

struct Node<T> {
    /// The next node in the same slot.
    next: u32,
    item: Option<T>,
}

impl<T> Queue<T> {
    pub(super) fn new() -> Self {
        Self {
            base: 0,
            slots: vec![[NIL, NIL]; SLOTS],
            occupied: vec![0; SLOTS / 64],
            nodes: Vec::new(),
            free: Vec::new(),
            in_wheel: 0,
            overflow: Buckets::new(),
        }
    }

    /// Schedules `item` at `at`, after everything already scheduled at `at`.
    pub(super) fn push(&mut self, at: Time, item: T) {
        let t = at.as_micros();
        if self.len() == 0 {
            // Nothing is scheduled, so the window may start anywhere: start it here.
            self.base = t;
        }
        if self.in_window(t) {
            self.wheel_push(t, item);
        } else {
            self.overflow.push(at, item);
        }
    }

    /// When the next entry is due.
    #[cfg(test)]
    pub(super) fn peek_time(&self) -> Option<Time> {
        if let Some(early) = self.overflow.peek_time().filter(|t| t.as_micros() < self.base) {
            return Some(early);
        }
        if self.in_wheel > 0 {
            return self.next_in_wheel().map(Time::from_micros);
        }
        self.overflow.peek_time()
    }

    /// Removes the earliest entry.
    pub(super) fn pop(&mut self) -> Option<(Time, T)> {
        self.pop_until(Time::MAX)
    }

    /// Removes the earliest entry if it is due at or before `deadline`.
    pub(super) fn pop_until(&mut self, deadline: Time) -> Option<(Time, T)> {
        if self.overflow.peek_time().is_some_and(|t| t.as_micros() < self.base) {
            return self.overflow.pop_until(deadline);
        }
        if self.in_wheel == 0 {
            let (at, item) = self.overflow.pop_until(deadline)?;
            self.advance(at.as_micros());
            return Some((at, item));
        }
        let t = self.next_in_wheel()?;
        if t > deadline.as_micros() {
            return None;
        }
        self.advance(t);
        self.wheel_pop(t).map(|item| (Time::from_micros(t), item))
    }

    pub(super) fn len(&self) -> usize {
        self.in_wheel + self.overflow.len()
    }

    /// Every entry, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        let wheel = self.nodes.iter().filter_map(|node| node.item.as_ref());
        wheel.chain(self.overflow.buckets.values().flatten())
    }

    /// Moves the window's start to `t` (not before the current one, and with no wheel entry
    /// before `t`), pulling in the overflow entries that now fall inside it, in order.
    fn advance(&mut self, t: u64) {
        if t <= self.base {
            return;
        }
        self.base = t;
        while self.overflow.peek_time().is_some_and(|at| self.in_window(at.as_micros())) {
            match self.overflow.pop_until(Time::MAX) {
                Some((at, item)) => self.wheel_push(at.as_micros(), item),
                None => break,
            }
        }
    }

    /// Whether instant `t` falls in the wheel's window.
    fn in_window(&self, t: u64) -> bool {
        t >= self.base && t - self.base < SLOTS as u64
    }

    /// Appends to the list of instant `t` (inside the window).
    fn wheel_push(&mut self, t: u64, item: T) {
        let node = match self.free.pop() {
            Some(free) => {
                self.nodes[free as usize] = Node { next: NIL, item: Some(item) };
                free
            }
            None => {
                self.nodes.push(Node { next: NIL, item: Some(item) });
                (self.nodes.len() - 1) as u32
            }
        };
        let s = (t & MASK) as usize;
        let [head, tail] = self.slots[s];
        if head == NIL {
            self.slots[s] = [node, node];
            self.occupied[s / 64] |= 1 << (s % 64);
        } else {
            self.nodes[tail as usize].next = node;
            self.slots[s][1] = node;
        }
        self.in_wheel += 1;
    }

    /// Takes the first entry of the list of instant `t`.
    fn wheel_pop(&mut self, t: u64) -> Option<T> {
        let s = (t & MASK) as usize;
        let head = self.slots[s][0];
        let node = self.nodes.get_mut(head as usize)?;
        let item = node.item.take();
        let next = node.next;
        if next == NIL {
            self.slots[s] = [NIL, NIL];
            self.occupied[s / 64] &= !(1 << (s % 64));
        } else {
            self.slots[s][0] = next;
        }
        self.free.push(head);
        self.in_wheel -= 1;
        item
    }

    /// The earliest instant with an entry in the wheel: the first occupied slot at or after
    /// the base's, going round once.
    fn next_in_wheel(&self) -> Option<u64> {
        let start = (self.base & MASK) as usize;
        let words = self.occupied.len();
        let (first_word, first_bit) = (start / 64, start % 64);
        // The base's word, from the base's bit on; then the other words in turn; then the
        // base's word again below the base's bit (instants at the end of the window).
        let mut hit = None;
        let masked = self.occupied[first_word] & (u64::MAX << first_bit);
        if masked != 0 {
            hit = Some(first_word * 64 + masked.trailing_zeros() as usize);
        } else {
            for k in 1..=words {
                let w = (first_word + k) % words;
                let mut bits = self.occupied[w];
                if k == words {
                    bits &= !(u64::MAX << first_bit);
                }
                if bits != 0 {
                    hit = Some(w * 64 + bits.trailing_zeros() as usize);
                    break;
                }
            }
        }
        let slot = hit?;
        let offset = (slot as u64).wrapping_sub(self.base) & MASK;
        Some(self.base + offset)
    }
}

/// Keep at most this many emptied buckets for reuse.
const POOL: usize = 16_384;
/// Buckets that grew beyond this many entries are freed rather than pooled, so a burst does
/// not leave its memory behind (the pool holds at most `POOL * POOLED_CAPACITY` entries).
const POOLED_CAPACITY: usize = 64;

/// A priority queue keyed by `(time, scheduling order)`, for any times (the [`Queue`]'s
/// overflow).
///
/// Entries due at the same instant share one FIFO bucket (appending preserves scheduling
/// order, so no sequence number is needed), and only the distinct instants live in an ordered
/// map. Emptied buckets are recycled, so steady-state pushes and pops do not allocate.
struct Buckets<T> {
    buckets: BTreeMap<Time, VecDeque<T>>,
    /// The first key of `buckets`, kept at hand: the wheel looks at it on every pop.
    first: Option<Time>,
    pool: Vec<VecDeque<T>>,
    len: usize,
}

impl<T> Buckets<T> {
    fn new() -> Self {
        Self { buckets: BTreeMap::new(), first: None, pool: Vec::new(), len: 0 }
    }

    /// Schedules `item` at `at`, after everything already scheduled at `at`.
    fn push(&mut self, at: Time, item: T) {
        match self.buckets.entry(at) {
            Slot::Occupied(mut bucket) => bucket.get_mut().push_back(item),
            Slot::Vacant(slot) => {
                let mut bucket = self.pool.pop().unwrap_or_default();
                bucket.push_back(item);
                slot.insert(bucket);
            }
        }
        if self.first.is_none_or(|first| at < first) {
            self.first = Some(at);
        }
        self.len += 1;
    }

    /// When the next entry is due.
    fn peek_time(&self) -> Option<Time> {
        self.first
    }

    /// Removes the earliest entry if it is due at or before `deadline`.
    fn pop_until(&mut self, deadline: Time) -> Option<(Time, T)> {
        let mut first = self.buckets.first_entry()?;
        let at = *first.key();
        if at > deadline {
            return None;
        }
        let item = first.get_mut().pop_front();
        if first.get().is_empty() {
            let bucket = first.remove();
            if self.pool.len() < POOL && bucket.capacity() <= POOLED_CAPACITY {
                self.pool.push(bucket);
            }
            self.first = self.buckets.first_key_value().map(|(at, _)| *at);
        }
        let item = item?;
        self.len -= 1;
        Some((at, item))
    }

    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn pops_by_time_then_insertion_order() {
        let mut q = Queue::new();
        q.push(Time::from_micros(5), 'a');
        q.push(Time::from_micros(1), 'b');
        q.push(Time::from_micros(5), 'c');
        q.push(Time::from_micros(3), 'd');
        assert_eq!(q.len(), 4);
        assert_eq!(q.peek_time(), Some(Time::from_micros(1)));
        let order: Vec<char> = std::iter::from_fn(|| q.pop().map(|(_, c)| c)).collect();
        assert_eq!(order, vec!['b', 'd', 'a', 'c']);
        assert_eq!(q.len(), 0);
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn an_overflow_entry_stays_ahead_of_later_pushes_at_its_instant() {
        let mut q = Queue::new();
        let far = SLOTS as u64 * 3 + 17;
        q.push(Time::from_micros(0), 0);
        q.push(Time::from_micros(far), 1); // outside the window: overflow
        assert_eq!(q.pop(), Some((Time::from_micros(0), 0)));
        q.push(Time::from_micros(far - 10), 2); // still outside: overflow
        assert_eq!(q.pop(), Some((Time::from_micros(far - 10), 2)));
        // `far` is inside the window now: the overflow entry moved in first.
        q.push(Time::from_micros(far), 3);
        assert_eq!(q.pop(), Some((Time::from_micros(far), 1)));
        assert_eq!(q.pop(), Some((Time::from_micros(far), 3)));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn entries_before_the_window_pop_first() {
        let mut q = Queue::new();
        q.push(Time::from_micros(1_000), 'a');
        q.push(Time::from_micros(2_000), 'b');
        assert_eq!(q.pop(), Some((Time::from_micros(1_000), 'a')));
        q.push(Time::from_micros(10), 'c');
        q.push(Time::from_micros(10), 'd');
        assert_eq!(q.peek_time(), Some(Time::from_micros(10)));
        assert_eq!(q.pop_until(Time::from_micros(5)), None);
        assert_eq!(q.pop(), Some((Time::from_micros(10), 'c')));
        assert_eq!(q.pop(), Some((Time::from_micros(10), 'd')));
        assert_eq!(q.pop_until(Time::from_micros(1_999)), None);
        assert_eq!(q.pop(), Some((Time::from_micros(2_000), 'b')));
    }

    /// The queue against a binary heap keyed by `(time, sequence number)` over random
    /// operations: pushes near the last popped instant (as the simulator makes them), far
    /// ahead, at the very end of time and before it; pops, bounded pops and peeks.
    #[test]
    fn matches_a_heap_keyed_by_time_and_sequence() {
        for seed in 0..64u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut q = Queue::new();
            let mut reference = BinaryHeap::new();
            let mut seq = 0u64;
            let mut now = 0u64;
            for _ in 0..20_000 {
                match rng.random_range(0..10) {
                    0..=4 => {
                        let at = match rng.random_range(0..200) {
                            0..=9 => now.saturating_sub(rng.random_range(0..100_000u64)),
                            10..=19 => now.saturating_add(rng.random_range(0..1_000_000)),
                            20 => u64::MAX - rng.random_range(0..3u64),
                            21..=60 => now.saturating_add(rng.random_range(0..3)),
                            _ => now.saturating_add(rng.random_range(0..40_000)),
                        };
                        q.push(Time::from_micros(at), seq);
                        reference.push(Reverse((at, seq)));
                        seq += 1;
                    }
                    5 => {
                        let expected =
                            reference.peek().map(|Reverse((at, _))| Time::from_micros(*at));
                        assert_eq!(q.peek_time(), expected, "seed {seed}");
                    }
                    6 => {
                        let deadline = now.saturating_add(rng.random_range(0..30_000));
                        let due = reference.peek().is_some_and(|Reverse((at, _))| *at <= deadline);
                        let expected = if due { reference.pop() } else { None };
                        let expected = expected.map(|Reverse((at, s))| (Time::from_micros(at), s));
                        let got = q.pop_until(Time::from_micros(deadline));
                        assert_eq!(got, expected, "seed {seed}");
                        if let Some((at, _)) = got {
                            now = now.max(at.as_micros()).min(u64::MAX / 2);
                        }
                    }
                    _ => {
                        let expected =
                            reference.pop().map(|Reverse((at, s))| (Time::from_micros(at), s));
                        let got = q.pop();
                        assert_eq!(got, expected, "seed {seed}");
                        if let Some((at, _)) = got {
                            now = now.max(at.as_micros()).min(u64::MAX / 2);
                        }
                    }
                }
                assert_eq!(q.len(), reference.len(), "seed {seed}");
            }
            while let Some(Reverse((at, s))) = reference.pop() {
                assert_eq!(q.pop(), Some((Time::from_micros(at), s)), "seed {seed}");
            }
            assert_eq!(q.pop(), None);
        }
    }
}
