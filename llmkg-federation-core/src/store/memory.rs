use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use super::{BranchName, ObjectId, Store, StoreError, WriteBatch};
use crate::commit::CommitId;

#[derive(Default)]
struct Inner {
    objects: HashMap<ObjectId, Vec<u8>>,
    refs: BTreeMap<BranchName, CommitId>,
}

/// A store in memory, shared by its clones. Not durable.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<RwLock<Inner>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryStore")
    }
}

fn poisoned() -> StoreError {
    StoreError::backend("memory store lock poisoned by a panic in another thread")
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of objects held.
    pub fn object_count(&self) -> usize {
        self.inner.read().map(|i| i.objects.len()).unwrap_or(0)
    }

    /// A copy of every object, sorted by id (to inspect or copy a store in tests and tools).
    pub fn objects(&self) -> Vec<(ObjectId, Vec<u8>)> {
        let mut out: Vec<(ObjectId, Vec<u8>)> = self
            .inner
            .read()
            .map(|i| i.objects.iter().map(|(k, v)| (*k, v.to_vec())).collect())
            .unwrap_or_default();
        out.sort_by_key(|(k, _)| *k);
        out
    }
}

impl Store for MemoryStore {
    fn object(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, StoreError> {
        let inner = self.inner.read().map_err(|_| poisoned())?;
        Ok(inner.objects.get(id).map(|b| b.to_vec()))
    }

    fn contains_object(&self, id: &ObjectId) -> Result<bool, StoreError> {
        Ok(self.inner.read().map_err(|_| poisoned())?.objects.contains_key(id))
    }

    fn reference(&self, name: &BranchName) -> Result<Option<CommitId>, StoreError> {
        Ok(self.inner.read().map_err(|_| poisoned())?.refs.get(name).copied())
    }

    fn references(&self) -> Result<Vec<(BranchName, CommitId)>, StoreError> {
        let inner = self.inner.read().map_err(|_| poisoned())?;
        Ok(inner.refs.iter().map(|(k, v)| (k.clone(), *v)).collect())
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut inner = self.inner.write().map_err(|_| poisoned())?;
        // Check every compare-and-swap first, simulating the updates in order, so that a
        // conflict leaves everything untouched.
        let mut view: BTreeMap<&BranchName, Option<CommitId>> = BTreeMap::new();
        for u in &batch.refs {
            let actual = match view.get(&u.name) {
                Some(v) => *v,
                None => inner.refs.get(&u.name).copied(),
            };
            if actual != u.expected {
                return Err(StoreError::RefConflict {
                    name: u.name.clone(),
                    expected: u.expected,
                    actual,
                });
            }
            view.insert(&u.name, u.new);
        }
        for (id, bytes) in batch.objects {
            inner.objects.entry(id).or_insert(bytes);
        }
        for u in batch.refs {
            match u.new {
                Some(id) => inner.refs.insert(u.name, id),
                None => inner.refs.remove(&u.name),
            };
        }
        Ok(())
    }
}
