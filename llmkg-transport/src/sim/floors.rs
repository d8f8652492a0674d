//! The FIFO floors of the links with copies in flight: a small map from link key to floor,
//! changed at every send and arrival.
//!
//! A run keeps only a few thousand floors at a time but inserts and removes one for nearly
//! every message, so this is an open-addressing table with linear probing and backward-shift
//! deletion: no tombstones accumulate, so it never needs rehashing in place, and a lookup
//! reads one or two adjacent slots. Keys are link keys (sender and receiver index), which no
//! core chooses, mixed like the simulator's other lookup-only maps (see `IdHasher`).

/// Marks an empty slot.
const EMPTY: u64 = u64::MAX;
/// Slots of a new table (a power of two).
const MIN_SLOTS: usize = 64;

/// A link's FIFO floor: no FIFO copy on it to receiver incarnation `incarnation` is scheduled
/// before `at` (microseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Floor {
    pub(super) at: u64,
    pub(super) incarnation: u32,
}

#[derive(Clone, Copy)]
struct Slot {
    /// The link key, or [`EMPTY`].
    link: u64,
    incarnation: u32,
    at: u64,
}

const FREE: Slot = Slot { link: EMPTY, incarnation: 0, at: 0 };

/// A map from link key (not `u64::MAX`) to [`Floor`].
pub(super) struct Floors {
    slots: Vec<Slot>,
    len: usize,
}

impl Floors {
    pub(super) fn new() -> Self {
        Self { slots: vec![FREE; MIN_SLOTS], len: 0 }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, link: u64) -> usize {
        // A folded 64×64→128-bit multiply, so both halves of the key reach the low bits.
        let product = u128::from(link) * 0x9e37_79b9_7f4a_7c15_u128;
        ((product as u64) ^ ((product >> 64) as u64)) as usize & self.mask()
    }

    /// The slot holding `link`, if any.
    fn find(&self, link: u64) -> Option<usize> {
        let mask = self.mask();
        let mut i = self.home(link);
        loop {
            let slot = self.slots.get(i)?;
            if slot.link == link {
                return Some(i);
            }
            if slot.link == EMPTY {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    pub(super) fn get(&self, link: u64) -> Option<Floor> {
        let slot = self.slots.get(self.find(link)?)?;
        Some(Floor { at: slot.at, incarnation: slot.incarnation })
    }

    /// Sets the floor of `link` (`link` must not be `u64::MAX`, which marks empty slots).
    pub(super) fn insert(&mut self, link: u64, floor: Floor) {
        if link == EMPTY {
            return;
        }
        // At most half full, so probe sequences stay short and always end at an empty slot.
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.mask();
        let mut i = self.home(link);
        while let Some(slot) = self.slots.get_mut(i) {
            if slot.link == link || slot.link == EMPTY {
                if slot.link == EMPTY {
                    self.len += 1;
                }
                *slot = Slot { link, incarnation: floor.incarnation, at: floor.at };
                return;
            }
            i = (i + 1) & mask;
        }
    }

    /// Removes the floor of `link` if it is not after `now`.
    pub(super) fn remove_if_not_after(&mut self, link: u64, now: u64) {
        let Some(hole) = self.find(link) else { return };
        if self.slots.get(hole).is_none_or(|slot| slot.at > now) {
            return;
        }
        self.remove_at(hole);
    }

    /// Empties slot `hole` and shifts back the entries after it that probed past it, so every
    /// entry stays reachable from its home slot without crossing an empty one.
    fn remove_at(&mut self, mut hole: usize) {
        let mask = self.mask();
        let mut i = (hole + 1) & mask;
        loop {
            let Some(&slot) = self.slots.get(i) else { return };
            if slot.link == EMPTY {
                break;
            }
            let home = self.home(slot.link);
            // The entry at `i` may move to `hole` if its home is not in (hole, i] (cyclically).
            let distance_home = i.wrapping_sub(home) & mask;
            let distance_hole = i.wrapping_sub(hole) & mask;
            if distance_home >= distance_hole {
                self.slots[hole] = slot;
                hole = i;
            }
            i = (i + 1) & mask;
        }
        self.slots[hole] = FREE;
        self.len -= 1;
    }

    fn grow(&mut self) {
        let doubled = vec![FREE; self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, doubled);
        self.len = 0;
        for slot in old.into_iter().filter(|s| s.link != EMPTY) {
            self.insert(slot.link, Floor { at: slot.at, incarnation: slot.incarnation });
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64, u64, u32),
        Remove(u64, u64),
        Get(u64),
    }

    /// Keys from a small range so that entries collide, probe past each other and are removed
    /// from the middle of clusters; now and then a key far away.
    fn key() -> impl Strategy<Value = u64> {
        prop_oneof![
            8 => (0u64..12, 0u64..12).prop_map(|(from, to)| from << 32 | to),
            1 => any::<u64>().prop_map(|k| k.min(u64::MAX - 1)),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (key(), 0u64..1_000, any::<u32>()).prop_map(|(k, at, inc)| Op::Insert(k, at, inc)),
            3 => (key(), 0u64..1_000).prop_map(|(k, now)| Op::Remove(k, now)),
            2 => key().prop_map(Op::Get),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The table against a `HashMap` over random inserts, conditional removals and
        /// lookups, checking every key's entry after each step.
        #[test]
        fn matches_a_hash_map(ops in prop::collection::vec(op(), 1..400)) {
            let mut floors = Floors::new();
            let mut model: HashMap<u64, Floor> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(link, at, incarnation) => {
                        floors.insert(link, Floor { at, incarnation });
                        model.insert(link, Floor { at, incarnation });
                    }
                    Op::Remove(link, now) => {
                        floors.remove_if_not_after(link, now);
                        if model.get(&link).is_some_and(|f| f.at <= now) {
                            model.remove(&link);
                        }
                    }
                    Op::Get(link) => prop_assert_eq!(floors.get(link), model.get(&link).copied()),
                }
                prop_assert_eq!(floors.len(), model.len());
                for (link, floor) in &model {
                    prop_assert_eq!(floors.get(*link), Some(*floor));
                }
            }
        }
    }

    #[test]
    fn grows_and_empties() {
        let mut floors = Floors::new();
        for link in 0..10_000 {
            floors.insert(link, Floor { at: link, incarnation: 1 });
        }
        assert_eq!(floors.len(), 10_000);
        for link in 0..10_000 {
            floors.remove_if_not_after(link, 10_000);
        }
        assert_eq!(floors.len(), 0);
        assert_eq!(floors.get(5), None);
    }
}
