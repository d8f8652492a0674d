//! # llmkg-sync
//!
//! The data plane of LLMKG Federation: how the replicas of a federated branch, each written
//! to by its own node, are kept consistent without a coordinator, over lossy links and
//! partitions, with few bytes and round trips.
//!
//! ```text
//!  host ── write / synchronize / status ──► EventualSync (SyncStrategy) ──► FederatedSyncResult
//!                                               │
//!                                               ▼
//!                          Driver ◄──► SyncCore (sans-io Protocol) ──► Replica on KvStore
//!                            │           summaries, version vectors,     (redb, memory, sim Disk)
//!                        Transport       batches with acks                add-wins observed-remove
//!                                                                         over the commit graph
//! ```
//!
//! - [`replica`]: the eventual-consistency replica. Its state is a pure function of the set
//!   of signed commits it holds (add-wins observed-remove over the commit graph's causality);
//!   local writes take the heads as parents; received commits are checked against the rules
//!   (hybrid-logical-clock timestamps, parents concurrent, authors' chains, effective
//!   changes and the state root of the author's causal past), not only applied.
//! - [`protocol`]: anti-entropy as a sans-io core — heads summaries to a few random peers per
//!   round, version vectors when each side lacks something, frame-bounded batches pipelined
//!   with acknowledgements.
//! - [`engine`]: [`EventualSync`](engine::EventualSync), the core behind the object-safe
//!   [`SyncStrategy`](llmkg_federation_core::sync::SyncStrategy) over any transport.
//! - [`hlc`], [`vv`]: hybrid logical clocks and version vectors.
//!
//! What it does not do (yet): strong consistency (change sets ordered through consensus)
//! and conflict-resolution sync are named in
//! [`FederatedSyncStrategy`](llmkg_federation_core::sync::FederatedSyncStrategy) but not
//! built; asking for them is a typed
//! [`NotAvailable`](llmkg_federation_core::sync::SyncError::NotAvailable) error. A replica
//! starts from the full history (no shallow start from a snapshot). See
//! `docs/guide-sync.md`.

pub mod engine;
pub mod hlc;
pub mod protocol;
pub mod replica;
pub mod riblt;
pub mod vv;

/// The guide (`docs/guide-sync.md`), compiled and run as a doctest so its examples cannot
/// rot.
#[cfg(doctest)]
#[doc = include_str!("../../docs/guide-sync.md")]
struct GuideSync;
