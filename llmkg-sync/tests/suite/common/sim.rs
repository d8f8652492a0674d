//! Shared by the simulator suites (`sync_sim`, `sync_join`): their triples, links and writes.

use std::time::Duration;

use llmkg_federation_core::{ChangeSet, Term, Triple};
use llmkg_sync::protocol::SyncCore;
use llmkg_transport::sim::{Disk, Latency, LinkConfig};

/// Triple `i`, over `subjects` subjects and 3 predicates (so that writes meet one another).
pub fn triple(i: u32, subjects: u32) -> Triple {
    Triple::new(
        Term::iri(format!("https://example.org/s{}", i % subjects)).unwrap(),
        Term::iri(format!("https://example.org/p{}", i % 3)).unwrap(),
        Term::string(format!("v{i}")).unwrap(),
    )
    .unwrap()
}

/// Links of 1-20 ms that lose 5 % of messages and reorder 10 % (and duplicate `duplicate`).
pub fn lossy_link(duplicate: f64) -> LinkConfig {
    let link = LinkConfig::with_latency(Latency::Uniform {
        min: Duration::from_millis(1),
        max: Duration::from_millis(20),
    })
    .loss(0.05);
    let link = if duplicate > 0.0 { link.duplicate(duplicate) } else { link };
    link.reorder(0.1, Duration::from_millis(30))
}

/// A write of one node: remove a triple its replica holds (a removal that observes the
/// additions it has seen; `pick` chooses which) when `remove`, or else add `fresh`.
pub fn one_change(core: &SyncCore<Disk>, fresh: Triple, remove: bool, pick: usize) -> ChangeSet {
    let held = core.replica().state().triples();
    match (remove, held.is_empty()) {
        (true, false) => ChangeSet::removing([held[pick % held.len()].clone()]),
        _ => ChangeSet::adding([fresh]),
    }
}
