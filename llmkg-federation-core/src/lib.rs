//! # llmkg-federation-core
//!
//! The foundation of LLMKG Federation: the knowledge-graph model, canonical encoding and
//! content ids, node identities and signatures, the Merkle state tree, the local versioned
//! graph (git for triples) and the storage it runs on.
//!
//! ```text
//!  Term / Triple / ChangeSet ──► Commit ──sign──► SignedCommit ──encode──► Store (objects)
//!          │                        ▲                                       │
//!          ▼                        │ state_root                            ▼
//!     GraphState (dictionary + SPO/POS/OSP + MerkleTree)            refs (branches, CAS)
//! ```
//!
//! The paved path is [`Repository`]:
//!
//! ```
//! use llmkg_federation_core::{BranchName, ChangeSet, MemoryStore, NodeKeypair, OrgId,
//!     Repository, SystemClock, Term, Triple};
//!
//! let mut repo = Repository::new(
//!     MemoryStore::new(),
//!     NodeKeypair::from_secret_bytes([1; 32]),
//!     OrgId::new("acme")?,
//!     SystemClock,
//! );
//! let main = BranchName::new("main")?;
//! let t = Triple::new(
//!     Term::iri("https://example.org/alice")?,
//!     Term::iri("http://xmlns.com/foaf/0.1/name")?,
//!     Term::string("Alice")?,
//! )?;
//! let id = repo.commit(&main, ChangeSet::adding([t]), "add alice")?;
//! assert_eq!(repo.head(&main)?, Some(id));
//! assert_eq!(repo.state(&main)?.len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Durable storage is [`RedbStore`] (one file, every commit durable when the call returns);
//! hosts can bring their own by implementing [`Store`] and running the conformance suite in
//! the `testing` module (feature `testing`).
//!
//! Protocol cores keep their own durable state (a Raft term, vote and log) in a [`KvStore`]
//! (`kv` module): an ordered, atomic, durable-before-returning key-value trait, with
//! [`MemoryKv`], [`RedbKv`] (alone or in a [`RedbStore`]'s file) and a namespace adapter.
//!
//! RDF documents come in and go out through the `rdf` module (feature `rdf`, on by
//! default): N-Triples, N-Quads and Turtle imported as one commit, any commit's state exported.
//!
//! ## What this crate does not do
//!
//! No networking, no consensus, no sync, no access control: those live in the sibling crates
//! and build on the types here. Nothing here reads the system clock unless given
//! [`SystemClock`], spawns threads or needs an async runtime.

mod certificate;
mod commit;
pub mod consensus;
pub mod encoding;
pub mod federated;
mod federation;
mod graph;
mod identity;
mod key_index;
pub mod kv;
pub mod merkle;
pub mod protocol;
#[cfg(feature = "rdf")]
pub mod rdf;
pub mod registry;
mod repo;
pub mod security;
pub mod snapshot;
mod store;
pub mod sync;
pub mod system;
mod term;
#[cfg(feature = "testing")]
pub mod testing;
mod time;
pub mod transport;

pub use certificate::{
    AcceptAll, CertificateError, CertificatePolicy, CommitPolicy, CommitRefusal, InvalidRootKey,
    MAX_CERTIFICATE_LEN, MAX_REVOKED_SERIALS, MAX_ROLES, NodeCertificate, OrgKeypair, OrgRootKey,
    Revocation, Role, TrustAnchors,
};
pub use commit::{
    Commit, CommitId, CommitShapeError, CommitVerifyError, MAX_MESSAGE_LEN, MAX_PARENTS,
    SignedCommit,
};
pub use encoding::{DecodeError, TripleId};
pub use federation::FederationId;
pub use graph::{ApplyError, ChangeIds, GraphState, Matches, Pattern, TripleRef};
pub use identity::{
    BatchError, CrateSignable, ENVELOPE_DOMAIN, InvalidOrgId, NodeId, NodeKeypair, OrgId,
    RESERVED_CONTEXT_PREFIX, SignError, Signable, SignatureError, Signed, Signer, SignerError,
    SigningInput, TRANSPORT_BINDING_CONTEXT, is_reserved_context,
};
pub use kv::{KvBatch, KvError, KvStore, MemoryKv, RedbKv};
pub use merkle::{
    Membership, MerkleProof, MerkleTree, NibblePath, NodeHash, ProofError, StateRoot,
    SubtreeSummary,
};
pub use protocol::{HostInfo, LinkState, Protocol, Time, Transmit};
pub use repo::{
    CheckpointPolicy, InvalidCommit, MergeOutcome, RepoError, RepoOptions, Repository, three_way,
};
pub use snapshot::{Snapshot, SnapshotChunk, SnapshotError, SnapshotManifest, SnapshotReceiver};
pub use store::{
    BranchName, InvalidBranchName, MemoryStore, ObjectId, RedbStore, RefUpdate, Store, StoreError,
    WriteBatch,
};
pub use term::{
    BlankNode, ChangeSet, Iri, LanguageTag, Literal, LiteralKind, MAX_TERM_LEN, RDF_LANG_STRING,
    Term, TermError, Triple, XSD_STRING,
};
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
pub use transport::{
    BoxFuture, ChannelId, Incoming, InvalidChannel, RequestId, Timer, Transport, TransportError,
};
