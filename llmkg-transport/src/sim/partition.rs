//! Partition history: which group assignments were in force while a copy was in flight.

use std::collections::VecDeque;

/// The partition assignments ("epochs") that some copy in flight has lived through.
///
/// Every copy is stamped with the epoch in force when it was sent (and the sender and receiver
/// were in the same group then, or it was dropped at once). When it arrives, every assignment
/// that came into force since is checked: if any of them separated sender and receiver, the
/// copy was cut, even if the partition healed before the copy arrived.
///
/// Only the epochs from the oldest one a copy in flight was sent in up to the current one are
/// kept (each with a count of copies sent in it that are still in flight), so the history is
/// bounded by what is in flight, not by how many partitions a run applies.
pub(super) struct PartitionHistory {
    /// The epoch number of `epochs[0]`.
    base: u64,
    /// From `base` up to the current epoch (never empty).
    epochs: VecDeque<Epoch>,
}

struct Epoch {
    /// Group of each node by index; `None` when everyone is in one group.
    groups: Option<Box<[u32]>>,
    /// Copies sent during this epoch that have not arrived yet.
    in_flight: u64,
}

impl PartitionHistory {
    /// Everyone in one group, epoch 0.
    pub(super) fn new() -> Self {
        Self { base: 0, epochs: VecDeque::from([Epoch { groups: None, in_flight: 0 }]) }
    }

    fn current(&self) -> u64 {
        self.base + (self.epochs.len() as u64).saturating_sub(1)
    }

    /// A new assignment comes into force (`None`: everyone in one group).
    pub(super) fn push(&mut self, groups: Option<Box<[u32]>>) {
        self.epochs.push_back(Epoch { groups, in_flight: 0 });
        self.prune();
    }

    /// A copy was put in flight now; returns the epoch to stamp it with.
    pub(super) fn sent(&mut self) -> u64 {
        if let Some(e) = self.epochs.back_mut() {
            e.in_flight += 1;
        }
        self.current()
    }

    /// A copy stamped `epoch` from node `from` to node `to` arrived (or was discarded): whether
    /// an assignment that came into force after it was sent separated the two.
    pub(super) fn arrived(&mut self, epoch: u64, from: u32, to: u32) -> bool {
        let Some(i) = epoch.checked_sub(self.base).and_then(|i| usize::try_from(i).ok()) else {
            // Not reached: an epoch with copies in flight is never pruned.
            return false;
        };
        let Some(sent_in) = self.epochs.get_mut(i) else {
            return false;
        };
        sent_in.in_flight = sent_in.in_flight.saturating_sub(1);
        // A node added after an assignment came into force is in its group 0 (the unlisted).
        let group = |g: &[u32], n: u32| g.get(n as usize).copied().unwrap_or(0);
        let cut = self
            .epochs
            .range(i + 1..)
            .any(|e| e.groups.as_deref().is_some_and(|g| group(g, from) != group(g, to)));
        self.prune();
        cut
    }

    /// Forgets the oldest epochs once no copy sent in them is in flight.
    fn prune(&mut self) {
        while self.epochs.len() > 1 && self.epochs.front().is_some_and(|e| e.in_flight == 0) {
            self.epochs.pop_front();
            self.base += 1;
        }
    }

    /// Number of epochs kept (for tests).
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.epochs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_that_heals_during_the_flight_still_cuts() {
        let mut h = PartitionHistory::new();
        let a = h.sent(); // 0 -> 1
        let b = h.sent(); // 0 -> 2
        h.push(Some(vec![0, 0, 1].into_boxed_slice()));
        h.push(None);
        assert!(!h.arrived(a, 0, 1), "0 and 1 stayed together");
        assert!(h.arrived(b, 0, 2), "0 and 2 were separated while the copy was in flight");
        let c = h.sent();
        assert!(!h.arrived(c, 0, 2));
        assert_eq!(h.kept(), 1, "epochs without copies in flight are forgotten");
    }

    #[test]
    fn history_is_bounded_by_what_is_in_flight() {
        let mut h = PartitionHistory::new();
        let old = h.sent();
        for i in 0..100u32 {
            h.push((i % 2 == 0).then(|| vec![0, 1].into_boxed_slice()));
        }
        assert_eq!(h.kept(), 101);
        assert!(h.arrived(old, 0, 1));
        assert_eq!(h.kept(), 1);
    }
}
