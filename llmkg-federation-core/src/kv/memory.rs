use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};

use super::{KvBatch, KvError, KvOp, KvPair, KvStore, check_key, range_is_empty};

/// A [`KvStore`] in memory: a `BTreeMap` behind a lock, shared by its clones. Not durable.
#[derive(Clone, Default)]
pub struct MemoryKv {
    map: Arc<RwLock<BTreeMap<Vec<u8>, Vec<u8>>>>,
}

impl std::fmt::Debug for MemoryKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryKv").field("keys", &self.len()).finish()
    }
}

fn poisoned() -> KvError {
    KvError::backend("memory key-value store lock poisoned by a panic in another thread")
}

impl MemoryKv {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys stored.
    pub fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }

    /// True if nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl KvStore for MemoryKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        check_key(key)?;
        Ok(self.map.read().map_err(|_| poisoned())?.get(key).cloned())
    }

    fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KvPair>, KvError> {
        if limit == 0 || range_is_empty(start, end) {
            return Ok(Vec::new());
        }
        let map = self.map.read().map_err(|_| poisoned())?;
        Ok(map
            .range::<[u8], _>((start, end))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn write(&self, batch: KvBatch) -> Result<(), KvError> {
        batch.validate()?;
        let mut map = self.map.write().map_err(|_| poisoned())?;
        for op in batch {
            match op {
                KvOp::Put(k, v) => {
                    map.insert(k, v);
                }
                KvOp::Delete(k) => {
                    map.remove(&k);
                }
            }
        }
        Ok(())
    }
}
