//! The event queue: entries ordered by virtual time, then by the order they were scheduled.

use std::collections::btree_map::Entry as Slot;
use std::collections::{BTreeMap, VecDeque};

use llmkg_federation_core::Time;

/// Keep at most this many emptied buckets for reuse.
const POOL: usize = 16_384;
/// Buckets that grew beyond this many entries are freed rather than pooled, so a burst does
/// not leave its memory behind (the pool holds at most `POOL * POOLED_CAPACITY` entries).
const POOLED_CAPACITY: usize = 64;

/// A priority queue keyed by `(time, scheduling order)`.
///
/// Equivalent to a binary heap of `(time, sequence number)`, but entries due at the same
/// instant share one FIFO bucket (appending preserves scheduling order, so no sequence number
/// is needed), and only the distinct instants live in an ordered map. Many entries share an
/// instant at microsecond resolution, so the map stays small and hot in cache while the
/// entries themselves sit contiguously; emptied buckets are recycled, so steady-state pushes
/// and pops do not allocate.
pub(super) struct Queue<T> {
    buckets: BTreeMap<Time, VecDeque<T>>,
    pool: Vec<VecDeque<T>>,
    len: usize,
}

impl<T> Queue<T> {
    pub(super) fn new() -> Self {
        Self { buckets: BTreeMap::new(), pool: Vec::new(), len: 0 }
    }

    /// Schedules `item` at `at`, after everything already scheduled at `at`.
    pub(super) fn push(&mut self, at: Time, item: T) {
        match self.buckets.entry(at) {
            Slot::Occupied(mut bucket) => bucket.get_mut().push_back(item),
            Slot::Vacant(slot) => {
                let mut bucket = self.pool.pop().unwrap_or_default();
                bucket.push_back(item);
                slot.insert(bucket);
            }
        }
        self.len += 1;
    }

    /// When the next entry is due.
    pub(super) fn peek_time(&self) -> Option<Time> {
        self.buckets.first_key_value().map(|(at, _)| *at)
    }

    /// Removes the earliest entry.
    pub(super) fn pop(&mut self) -> Option<(Time, T)> {
        let mut first = self.buckets.first_entry()?;
        let at = *first.key();
        let item = first.get_mut().pop_front();
        if first.get().is_empty() {
            let bucket = first.remove();
            if self.pool.len() < POOL && bucket.capacity() <= POOLED_CAPACITY {
                self.pool.push(bucket);
            }
        }
        let item = item?;
        self.len -= 1;
        Some((at, item))
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
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
}
