use std::ops::Bound;

#[cfg(doc)]
use super::MAX_KEY_LEN;
use super::{KvBatch, KvError, KvOp, KvPair, KvStore, prefix_successor};

/// A namespace in a shared [`KvStore`]: every key is stored under a fixed prefix, and scans
/// return keys with the prefix stripped.
///
/// Several cores can share one store (one redb file, one simulated disk) through `Prefixed`
/// views, provided **no prefix is a prefix of another** — otherwise one namespace would see
/// the other's keys. [`Prefixed::namespace`] builds prefixes that can never overlap: the
/// name's length byte, then the name.
///
/// Keys are limited to [`MAX_KEY_LEN`] bytes *including* the prefix: a longer key is refused
/// with [`KvError::KeyTooLarge`] whose `max` is what the prefix leaves
/// ([`KvStore::max_key_len`]).
///
/// ```
/// use llmkg_federation_core::kv::{KvStore, MemoryKv, Prefixed};
///
/// let shared = MemoryKv::new();
/// let raft = Prefixed::namespace(shared.clone(), "raft")?;
/// let sync = Prefixed::namespace(shared.clone(), "sync")?;
/// raft.put(b"term", b"7")?;
/// sync.put(b"term", b"other")?;
/// assert_eq!(raft.get(b"term")?.as_deref(), Some(&b"7"[..]));
/// assert_eq!(raft.scan_prefix(b"", 10)?, vec![(b"term".to_vec(), b"7".to_vec())]);
/// assert_eq!(shared.get(b"\x04raft/term")?, None);
/// assert_eq!(shared.get(b"\x04raftterm")?.as_deref(), Some(&b"7"[..]));
/// # Ok::<(), llmkg_federation_core::kv::KvError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Prefixed<K> {
    inner: K,
    prefix: Vec<u8>,
}

impl<K: KvStore> Prefixed<K> {
    /// A view of `inner` under the raw `prefix` (see the type docs on overlapping prefixes).
    pub fn new(inner: K, prefix: impl Into<Vec<u8>>) -> Self {
        Self { inner, prefix: prefix.into() }
    }

    /// A view of `inner` under the prefix `[name.len()] ++ name`; prefixes built this way are
    /// never prefixes of one another. A name longer than 255 bytes is refused with
    /// [`KvError::KeyTooLarge`].
    pub fn namespace(inner: K, name: &str) -> Result<Self, KvError> {
        let len = u8::try_from(name.len())
            .map_err(|_| KvError::KeyTooLarge { len: name.len(), max: u8::MAX.into() })?;
        let mut prefix = Vec::with_capacity(name.len() + 1);
        prefix.push(len);
        prefix.extend_from_slice(name.as_bytes());
        Ok(Self::new(inner, prefix))
    }

    /// The prefix.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The shared store.
    pub fn inner(&self) -> &K {
        &self.inner
    }

    /// The shared store.
    pub fn into_inner(self) -> K {
        self.inner
    }

    fn full_key(&self, key: &[u8]) -> Result<Vec<u8>, KvError> {
        let max = self.max_key_len();
        if key.len() > max {
            return Err(KvError::KeyTooLarge { len: key.len(), max });
        }
        Ok([self.prefix.as_slice(), key].concat())
    }

    fn bound(&self, b: Bound<&[u8]>) -> Bound<Vec<u8>> {
        b.map(|k| [self.prefix.as_slice(), k].concat())
    }
}

impl<K: KvStore> KvStore for Prefixed<K> {
    fn max_key_len(&self) -> usize {
        self.inner.max_key_len().saturating_sub(self.prefix.len())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.inner.get(&self.full_key(key)?)
    }

    fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KvPair>, KvError> {
        let start = match start {
            Bound::Unbounded => Bound::Included(self.prefix.clone()),
            b => self.bound(b),
        };
        let end = match end {
            Bound::Unbounded => match prefix_successor(&self.prefix) {
                Some(e) => Bound::Excluded(e),
                None => Bound::Unbounded,
            },
            b => self.bound(b),
        };
        let entries = self.inner.scan(
            start.as_ref().map(Vec::as_slice),
            end.as_ref().map(Vec::as_slice),
            limit,
        )?;
        Ok(entries
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix(self.prefix.as_slice()).map(|k| (k.to_vec(), v)))
            .collect())
    }

    fn write(&self, batch: KvBatch) -> Result<(), KvError> {
        let mut inner = KvBatch::new();
        for op in batch {
            inner.push(match op {
                KvOp::Put(k, v) => KvOp::Put(self.full_key(&k)?, v),
                KvOp::Delete(k) => KvOp::Delete(self.full_key(&k)?),
            });
        }
        self.inner.write(inner)
    }
}
