//! Storage traits and the two built-in stores.
//!
//! A repository keeps two kinds of data: **objects**, immutable byte strings addressed by a
//! 32-byte content id (today: encoded signed commits), and **refs**, mutable names (branches)
//! pointing at a commit. Hosts may bring their own store by implementing [`Store`]; the
//! `testing` module (feature `testing`) has the conformance suite that both
//! built-in stores pass.
//!
//! | store | durability | use |
//! |---|---|---|
//! | [`MemoryStore`] | none: gone with the process | tests, simulations, caches |
//! | [`RedbStore`] | ACID, one file, durable when [`Store::write`] returns | the embedded default |

mod memory;
mod redb_store;

pub use memory::MemoryStore;
pub use redb_store::RedbStore;

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::commit::CommitId;
use crate::encoding::content_id;

content_id!(
    /// The key of an object in a [`Store`]: a content id such as a [`CommitId`].
    ObjectId
);

impl From<CommitId> for ObjectId {
    fn from(id: CommitId) -> Self {
        ObjectId::from_bytes(*id.as_bytes())
    }
}

/// The name of a branch: 1 to 255 bytes of `[A-Za-z0-9._/-]`, with no empty, `.` or `..`
/// path segment and no leading or trailing `/`.
///
/// ```
/// use llmkg_federation_core::BranchName;
/// assert!(BranchName::new("acme/main").is_ok());
/// assert!(BranchName::new("../etc").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BranchName(Box<str>);

/// A text was not a valid [`BranchName`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "invalid branch name {0:?}: expected 1-255 bytes of [A-Za-z0-9._/-] in non-empty segments other than '.' and '..'"
)]
pub struct InvalidBranchName(pub String);

impl BranchName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidBranchName> {
        let name: String = name.into();
        let chars_ok = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'));
        let segments_ok = name.split('/').all(|s| !s.is_empty() && s != "." && s != "..");
        if (1..=255).contains(&name.len()) && chars_ok && segments_ok {
            Ok(Self(name.into_boxed_str()))
        } else {
            Err(InvalidBranchName(name.chars().take(300).collect()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for BranchName {
    type Err = InvalidBranchName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for BranchName {
    type Error = InvalidBranchName;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<BranchName> for String {
    fn from(value: BranchName) -> Self {
        value.0.into()
    }
}

impl fmt::Display for BranchName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for BranchName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BranchName({})", self.0)
    }
}

/// One compare-and-swap on a ref.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefUpdate {
    /// The ref.
    pub name: BranchName,
    /// The value the ref must have now (`None`: must not exist).
    pub expected: Option<CommitId>,
    /// The value to set (`None`: delete the ref).
    pub new: Option<CommitId>,
}

/// Objects to add and refs to update, all or nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// Objects to store. An id already present keeps its existing bytes.
    pub objects: Vec<(ObjectId, Vec<u8>)>,
    /// Ref compare-and-swaps, applied in order.
    pub refs: Vec<RefUpdate>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an object.
    pub fn put_object(mut self, id: impl Into<ObjectId>, bytes: Vec<u8>) -> Self {
        self.objects.push((id.into(), bytes));
        self
    }

    /// Adds a ref compare-and-swap.
    pub fn update_ref(
        mut self,
        name: BranchName,
        expected: Option<CommitId>,
        new: Option<CommitId>,
    ) -> Self {
        self.refs.push(RefUpdate { name, expected, new });
        self
    }
}

/// A store operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A ref did not have the expected value. **Nothing** in the batch was written.
    #[error("ref {name} is {actual:?}, expected {expected:?}")]
    RefConflict {
        /// The ref.
        name: BranchName,
        /// What the batch expected.
        expected: Option<CommitId>,
        /// What the store holds.
        actual: Option<CommitId>,
    },
    /// The stored data is damaged (a ref that does not decode, ...). Nothing was written.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// The backend failed (I/O, locking, ...). For [`Store::write`], nothing was written.
    #[error("storage backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Wraps a backend error.
    pub fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError::Backend(e.into())
    }
}

/// A content-addressed object store with compare-and-swap refs.
///
/// # Contract
///
/// - **Atomic writes.** [`Store::write`] applies all of a batch — objects and ref updates — or
///   none of it. If any ref's current value differs from its `expected`, it fails with
///   [`StoreError::RefConflict`] and writes nothing.
/// - **Durability.** A durable store has made the whole batch durable when `write` returns
///   `Ok`. After a crash, every batch whose `write` returned is present, and a batch that was
///   in flight is either wholly present or wholly absent — never in part. (A
///   [`MemoryStore`] is not durable at all.)
/// - **Immutable objects.** Writing an id that is already present keeps the existing bytes
///   and is not an error. The store does not interpret object bytes; callers verify them.
/// - **Read-your-writes.** Reads reflect every write that returned before them.
/// - **Concurrency.** Methods take `&self` and may be called from several threads; writes
///   are serializable.
///
/// The trait is object safe: a host may hold a `Box<dyn Store>` or `Arc<dyn Store>`.
pub trait Store: Send + Sync {
    /// The bytes of object `id`, if present.
    fn object(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, StoreError>;

    /// True if object `id` is present.
    fn contains_object(&self, id: &ObjectId) -> Result<bool, StoreError>;

    /// The commit ref `name` points at, if it exists.
    fn reference(&self, name: &BranchName) -> Result<Option<CommitId>, StoreError>;

    /// Every ref, sorted by name.
    fn references(&self) -> Result<Vec<(BranchName, CommitId)>, StoreError>;

    /// Applies `batch` atomically (see the trait contract).
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError>;
}

macro_rules! forward_store {
    ($ty:ty) => {
        impl<S: Store + ?Sized> Store for $ty {
            fn object(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, StoreError> {
                (**self).object(id)
            }
            fn contains_object(&self, id: &ObjectId) -> Result<bool, StoreError> {
                (**self).contains_object(id)
            }
            fn reference(&self, name: &BranchName) -> Result<Option<CommitId>, StoreError> {
                (**self).reference(name)
            }
            fn references(&self) -> Result<Vec<(BranchName, CommitId)>, StoreError> {
                (**self).references()
            }
            fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
                (**self).write(batch)
            }
        }
    };
}

forward_store!(Box<S>);
forward_store!(std::sync::Arc<S>);
forward_store!(&S);
