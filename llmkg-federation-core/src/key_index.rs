//! An ordered set of dictionary keys for the graph's SPO/POS/OSP indexes: one large sorted
//! run plus two small ordered sets of changes, merged into the run from time to time.
//!
//! A `BTreeSet` of a million keys costs a handful of cache misses per insert, and its nodes
//! take about twice the 12 bytes a key needs. Here almost every key lives in a plain sorted
//! `Vec` (12 bytes each, binary-searched), and changes go to two small sets — keys added
//! since the last merge, and keys of the run removed since — which stay small. When the
//! changes outgrow [`KeyIndex::change_limit`] (`32·√n`, at least 4,096), they are merged into
//! the run in place, each stretch of it moved once. A merge moves about `n` keys every
//! `32·√n` changes: `√n / 32` sequential key moves per change, about 31 for a million keys.
//!
//! Reads merge the run and the added keys in order and skip the removed ones, so a range
//! scan is still one ordered pass: see [`KeyIndex::range`].

use std::collections::BTreeSet;
use std::collections::btree_set;
use std::iter::Peekable;

pub(crate) type Key = [u32; 3];

/// A key as one integer with the same order (the derived order of arrays compares through a
/// slice loop; one integer comparison is a few instructions).
fn pack(k: &Key) -> u128 {
    (u128::from(k[0]) << 64) | (u128::from(k[1]) << 32) | u128::from(k[2])
}

fn unpack(x: u128) -> Key {
    [(x >> 64) as u32, (x >> 32) as u32, x as u32]
}

/// The fewest changes held before a merge, whatever the size of the run.
const MIN_CHANGES: usize = 4_096;

/// An ordered set of keys; see the [module documentation](self).
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyIndex {
    /// Sorted, distinct.
    run: Vec<Key>,
    /// Keys not in `run`, packed.
    added: BTreeSet<u128>,
    /// Keys of `run` that are no longer in the set, packed.
    removed: BTreeSet<u128>,
}

/// The position of the first key of `run` not below `k`.
fn lower_bound(run: &[Key], k: u128) -> usize {
    run.partition_point(|x| pack(x) < k)
}

/// Takes `removed` (packed keys of `run`, ascending) out of `run`, in one forward pass: each
/// stretch between two removed keys moves once.
fn fold_out(run: &mut Vec<Key>, removed: impl Iterator<Item = u128>) {
    // `write` trails `read` by the number of keys removed so far.
    let (mut read, mut write) = (0, 0);
    for r in removed {
        let at = read + lower_bound(run.get(read..).unwrap_or_default(), r);
        debug_assert!(run.get(at).is_some_and(|x| pack(x) == r), "removed keys are in the run");
        run.copy_within(read..at, write);
        write += at - read;
        // `r` is a key of the run, at `at`: skip it.
        read = at + 1;
    }
    let len = run.len();
    run.copy_within(read.min(len)..len, write);
    run.truncate(write + len.saturating_sub(read));
}

/// Puts `added` (`count` packed keys absent from `run`, descending) into `run`, in one
/// backward pass: each stretch between two added keys moves once.
fn fold_in(run: &mut Vec<Key>, added: impl Iterator<Item = u128>, count: usize) {
    // From the largest: the keys below `end` are not moved yet.
    let mut end = run.len();
    let mut shift = count;
    run.resize(end + shift, [0; 3]);
    for a in added {
        let at = lower_bound(run.get(..end).unwrap_or_default(), a);
        run.copy_within(at..end, at + shift);
        shift -= 1;
        if let Some(slot) = run.get_mut(at + shift) {
            *slot = unpack(a);
        }
        end = at;
    }
}

impl KeyIndex {
    /// The set of `keys`, which must be sorted and distinct.
    pub(crate) fn from_sorted(keys: Vec<Key>) -> Self {
        debug_assert!(keys.windows(2).all(|w| w[0] < w[1]));
        KeyIndex { run: keys, added: BTreeSet::new(), removed: BTreeSet::new() }
    }

    /// The set of `keys`, in any order, repeats allowed.
    pub(crate) fn from_unsorted(mut keys: Vec<Key>) -> Self {
        keys.sort_unstable_by_key(pack);
        keys.dedup();
        Self::from_sorted(keys)
    }

    pub(crate) fn len(&self) -> usize {
        self.run.len() + self.added.len() - self.removed.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn in_run(&self, k: u128) -> bool {
        self.run.get(lower_bound(&self.run, k)).is_some_and(|x| pack(x) == k)
    }

    pub(crate) fn contains(&self, k: &Key) -> bool {
        let k = pack(k);
        self.added.contains(&k) || (self.in_run(k) && !self.removed.contains(&k))
    }

    /// Adds `k`; returns false if it was present.
    pub(crate) fn insert(&mut self, k: Key) -> bool {
        let k = pack(&k);
        let inserted = if self.removed.remove(&k) {
            true
        } else if self.in_run(k) {
            false
        } else {
            self.added.insert(k)
        };
        self.merge_if_due();
        inserted
    }

    /// Removes `k`; returns false if it was absent.
    pub(crate) fn remove(&mut self, k: &Key) -> bool {
        let k = pack(k);
        let removed = self.added.remove(&k) || (self.in_run(k) && self.removed.insert(k));
        self.merge_if_due();
        removed
    }

    /// Adds keys the caller knows are absent, sorted and distinct (the batch path: no search
    /// of the run). A batch that would bring on a merge anyway is merged into the run
    /// directly, without passing through the set of added keys.
    pub(crate) fn insert_absent(&mut self, keys: Vec<Key>) {
        debug_assert!(keys.windows(2).all(|w| pack(&w[0]) < pack(&w[1])));
        if self.pending() + keys.len() > self.change_limit() {
            self.merge();
            fold_in(&mut self.run, keys.iter().rev().map(pack), keys.len());
            return;
        }
        for k in keys {
            let k = pack(&k);
            if !self.removed.remove(&k) {
                self.added.insert(k);
            }
        }
        self.merge_if_due();
    }

    /// Removes keys the caller knows are present, sorted and distinct (the batch path: no
    /// search of the run). A batch that would bring on a merge anyway is taken out of the run
    /// directly.
    pub(crate) fn remove_present(&mut self, keys: Vec<Key>) {
        debug_assert!(keys.windows(2).all(|w| pack(&w[0]) < pack(&w[1])));
        if self.pending() + keys.len() > self.change_limit() {
            self.merge();
            fold_out(&mut self.run, keys.iter().map(pack));
            return;
        }
        for k in keys {
            let k = pack(&k);
            if !self.added.remove(&k) {
                self.removed.insert(k);
            }
        }
        self.merge_if_due();
    }

    /// How many changes wait to be merged.
    fn pending(&self) -> usize {
        self.added.len() + self.removed.len()
    }

    /// How many changes are held before they are merged into the run.
    fn change_limit(&self) -> usize {
        MIN_CHANGES.max(self.run.len().isqrt() * 32)
    }

    fn merge_if_due(&mut self) {
        if self.pending() > self.change_limit() {
            self.merge();
        }
    }

    /// Folds the changes into the run, in place: one forward pass closes the gaps of the
    /// removed keys, one backward pass opens room for the added ones (each stretch of the
    /// run between two changes moves once, by `copy_within`).
    fn merge(&mut self) {
        fold_out(&mut self.run, self.removed.iter().copied());
        fold_in(&mut self.run, self.added.iter().rev().copied(), self.added.len());
        self.added.clear();
        self.removed.clear();
    }

    /// The keys `lo..=hi`, in order.
    pub(crate) fn range(&self, lo: Key, hi: Key) -> Range<'_> {
        let (lo, hi) = (pack(&lo), pack(&hi));
        if lo > hi {
            return Range {
                run: [].iter(),
                added: self.added.range(0..0).peekable(),
                removed: self.removed.range(0..0).peekable(),
                run_only: true,
            };
        }
        let start = lower_bound(&self.run, lo);
        let end = self.run.partition_point(|x| pack(x) <= hi);
        let mut added = self.added.range(lo..=hi).peekable();
        let mut removed = self.removed.range(lo..=hi).peekable();
        let run_only = added.peek().is_none() && removed.peek().is_none();
        Range { run: self.run.get(start..end).unwrap_or_default().iter(), added, removed, run_only }
    }

    /// Every key, in order; the iterator knows its length.
    pub(crate) fn iter(&self) -> Iter<'_> {
        Iter { keys: self.range([0; 3], [u32::MAX; 3]), left: self.len() }
    }
}

/// Keys of a [`KeyIndex`] in a range, in order.
pub(crate) struct Range<'a> {
    run: std::slice::Iter<'a, Key>,
    added: Peekable<btree_set::Range<'a, u128>>,
    removed: Peekable<btree_set::Range<'a, u128>>,
    /// No change falls in the range: the keys are the run's (the common case for a narrow
    /// range, and the fast one).
    run_only: bool,
}

impl Iterator for Range<'_> {
    type Item = Key;

    fn next(&mut self) -> Option<Key> {
        if self.run_only {
            return self.run.next().copied();
        }
        loop {
            let from_run = self.run.as_slice().first().map(pack);
            match (from_run, self.added.peek()) {
                (None, None) => return None,
                // `added` and `run` are disjoint: the smaller comes first.
                (Some(r), Some(a)) if **a < r => return self.added.next().map(|a| unpack(*a)),
                (None, Some(_)) => return self.added.next().map(|a| unpack(*a)),
                (Some(r), _) => {
                    let key = self.run.next().copied();
                    // Removed keys are keys of the run: skip them as the run passes them.
                    while self.removed.next_if(|x| **x < r).is_some() {}
                    if self.removed.next_if(|x| **x == r).is_none() {
                        return key;
                    }
                }
            }
        }
    }
}

/// Every key of a [`KeyIndex`], in order.
pub(crate) struct Iter<'a> {
    keys: Range<'a>,
    left: usize,
}

impl Iterator for Iter<'_> {
    type Item = Key;

    fn next(&mut self) -> Option<Key> {
        let k = self.keys.next()?;
        self.left = self.left.saturating_sub(1);
        Some(k)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Iter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> impl Strategy<Value = Key> {
        (0u32..6, 0u32..6, 0u32..6).prop_map(|(a, b, c)| [a, b, c])
    }

    /// Keys from a space of 13,824, which batches of a few thousand fill and empty again.
    fn wide_key() -> impl Strategy<Value = Key> {
        (0u32..24, 0u32..24, 0u32..24).prop_map(|(a, b, c)| [a, b, c])
    }

    proptest! {
        /// Against a `BTreeSet` model, over inserts, removes and merges forced at random
        /// points: the same answers to
        /// membership, length, full iteration and every range.
        #[test]
        fn behaves_like_an_ordered_set(
            start in proptest::collection::vec(key(), 0..100),
            ops in proptest::collection::vec((any::<bool>(), key(), any::<u8>()), 0..300),
            lo in key(),
            hi in key(),
        ) {
            let mut index = KeyIndex::from_unsorted(start.clone());
            let mut model: BTreeSet<Key> = start.into_iter().collect();
            for (insert, k, merge) in ops {
                if insert {
                    prop_assert_eq!(index.insert(k), model.insert(k));
                } else {
                    prop_assert_eq!(index.remove(&k), model.remove(&k));
                }
                if merge % 17 == 0 {
                    index.merge();
                }
                prop_assert_eq!(index.len(), model.len());
                prop_assert_eq!(index.contains(&k), model.contains(&k));
            }
            let all: Vec<Key> = index.iter().collect();
            prop_assert_eq!(index.iter().len(), model.len());
            prop_assert_eq!(all, model.iter().copied().collect::<Vec<_>>());
            let got: Vec<Key> = index.range(lo, hi).collect();
            let want: Vec<Key> =
                if lo <= hi { model.range(lo..=hi).copied().collect() } else { Vec::new() };
            prop_assert_eq!(got, want);
        }
    }

    /// Runs `batches` of changes (each toggles its keys: removes those present, adds the
    /// others) through the batch paths against a `BTreeSet` model, merging after a batch when
    /// its flag says so.
    fn check_batches(
        start: BTreeSet<Key>,
        batches: Vec<(BTreeSet<Key>, bool)>,
    ) -> Result<(), TestCaseError> {
        let mut index = KeyIndex::from_sorted(start.iter().copied().collect());
        let mut model = start;
        for (keys, merge) in batches {
            let present: Vec<Key> = keys.iter().filter(|k| model.contains(*k)).copied().collect();
            let absent: Vec<Key> = keys.iter().filter(|k| !model.contains(*k)).copied().collect();
            index.remove_present(present.clone());
            index.insert_absent(absent.clone());
            for k in &present {
                model.remove(k);
            }
            model.extend(absent);
            if merge {
                index.merge();
            }
            prop_assert_eq!(index.len(), model.len());
            prop_assert_eq!(
                index.iter().collect::<Vec<_>>(),
                model.iter().copied().collect::<Vec<_>>()
            );
            prop_assert!(index.pending() <= index.change_limit());
        }
        Ok(())
    }

    proptest! {
        /// The batch paths (`insert_absent`, `remove_present`) agree with the model too, with
        /// merges forced between batches: small batches, which wait in the sets of changes.
        #[test]
        fn batches_behave_like_an_ordered_set(
            start in proptest::collection::btree_set(key(), 0..100),
            batches in proptest::collection::vec(
                (proptest::collection::btree_set(key(), 0..40), any::<bool>()),
                0..20,
            ),
        ) {
            check_batches(start, batches)?;
        }
    }

    /// The keys of a 24³ space that a seeded hash picks with probability `percent`/100: sets
    /// of a few thousand keys, made without a strategy per key (which is slow to generate).
    fn dense_keys(seed: u64, percent: u64) -> BTreeSet<Key> {
        let mut picked = BTreeSet::new();
        for x in 0..24u32.pow(3) {
            let h = (u64::from(x) ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
            if h % 100 < percent {
                picked.insert([x / 576, x / 24 % 24, x % 24]);
            }
        }
        picked
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Batches larger than the change limit, which go into the run directly, mixed with
        /// small ones that wait, over a key space they fill and empty again.
        #[test]
        fn large_batches_behave_like_an_ordered_set(
            start in (any::<u64>(), 0u64..60),
            batches in proptest::collection::vec(
                (
                    prop_oneof![
                        proptest::collection::btree_set(wide_key(), 0..50),
                        (any::<u64>(), 30u64..90).prop_map(|(seed, p)| dense_keys(seed, p)),
                    ],
                    any::<bool>(),
                ),
                0..8,
            ),
        ) {
            check_batches(dense_keys(start.0, start.1), batches)?;
        }
    }

    #[test]
    fn changes_are_merged_once_they_outgrow_the_limit() {
        let mut index = KeyIndex::default();
        for i in 0..(MIN_CHANGES as u32 + 1) {
            assert!(index.insert([i, 0, 0]));
        }
        assert!(index.added.is_empty(), "the changes were merged into the run");
        assert_eq!(index.run.len(), MIN_CHANGES + 1);
        assert!(index.remove(&[3, 0, 0]));
        assert!(!index.contains(&[3, 0, 0]));
        assert!(index.insert([3, 0, 0]));
        assert!(index.removed.is_empty() && index.added.is_empty());
        assert_eq!(index.len(), MIN_CHANGES + 1);
    }
}
