use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use redb::{CommitError, Database, Durability, ReadableDatabase, TableDefinition, TableError};

use super::{KvBatch, KvError, KvOp, KvPair, KvStore, check_key, range_is_empty};

/// The table of a [`RedbKv`], in its own file or in a [`RedbStore`](crate::RedbStore)'s.
pub(crate) const KV_TABLE: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("kv");

/// The embedded durable [`KvStore`]: a table named `kv` in a [redb] file. Every
/// [`KvStore::write`] is one redb write transaction committed with
/// `Durability::Immediate` (fsynced before it returns).
///
/// Open it on a file of its own with [`RedbKv::open`], or share a node's repository file with
/// [`RedbStore::kv`](crate::RedbStore::kv): the two then live in one database (one file, one
/// lock), in different tables. Clones share the database.
///
/// After a crash, opening the file recovers the last committed state.
///
/// ```
/// use llmkg_federation_core::kv::{KvStore, RedbKv};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("node.redb");
/// RedbKv::open(&path)?.put(b"raft/term", b"7")?;
/// // Reopened: what returned Ok is there.
/// assert_eq!(RedbKv::open(&path)?.get(b"raft/term")?.as_deref(), Some(&b"7"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct RedbKv {
    db: Arc<Database>,
}

impl std::fmt::Debug for RedbKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedbKv")
    }
}

/// Maps a redb error that happened before anything was committed.
fn kv_err(e: impl Into<redb::Error>) -> KvError {
    match e.into() {
        redb::Error::Io(e) => KvError::Io(e),
        redb::Error::Corrupted(msg) => KvError::Corrupt(msg),
        other => KvError::backend(other),
    }
}

impl RedbKv {
    /// Opens the store at `path`, creating the file if it does not exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, KvError> {
        let db = Database::create(path).map_err(kv_err)?;
        Self::with_database(Arc::new(db))
    }

    /// A store in the `kv` table of an open database (creating the table if needed).
    fn with_database(db: Arc<Database>) -> Result<Self, KvError> {
        let tx = db.begin_write().map_err(kv_err)?;
        tx.open_table(KV_TABLE).map_err(kv_err)?;
        tx.commit().map_err(kv_err)?;
        Ok(Self { db })
    }

    /// A store over a database whose `kv` table was created when it was opened.
    pub(crate) fn shared(db: Arc<Database>) -> Self {
        Self { db }
    }
}

impl KvStore for RedbKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        check_key(key)?;
        let tx = self.db.begin_read().map_err(kv_err)?;
        let table = match tx.open_table(KV_TABLE) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(kv_err(e)),
        };
        Ok(table.get(key).map_err(kv_err)?.map(|v| v.value().to_vec()))
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
        let tx = self.db.begin_read().map_err(kv_err)?;
        let table = match tx.open_table(KV_TABLE) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(kv_err(e)),
        };
        let mut out = Vec::new();
        for entry in table.range::<&[u8]>((start, end)).map_err(kv_err)? {
            let (k, v) = entry.map_err(kv_err)?;
            out.push((k.value().to_vec(), v.value().to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn write(&self, batch: KvBatch) -> Result<(), KvError> {
        batch.validate()?;
        let mut tx = self.db.begin_write().map_err(kv_err)?;
        tx.set_durability(Durability::Immediate).map_err(kv_err)?;
        {
            let mut table = tx.open_table(KV_TABLE).map_err(kv_err)?;
            for op in batch.ops() {
                // An error returns early and drops the transaction uncommitted: it aborts,
                // nothing is written.
                match op {
                    KvOp::Put(k, v) => {
                        table.insert(k.as_slice(), v.as_slice()).map_err(kv_err)?;
                    }
                    KvOp::Delete(k) => {
                        table.remove(k.as_slice()).map_err(kv_err)?;
                    }
                }
            }
        }
        match tx.commit() {
            Ok(()) => Ok(()),
            // A poisoned transaction is rolled back: nothing written.
            Err(CommitError::TransactionPoisoned) => {
                Err(KvError::backend(redb::Error::TransactionPoisoned))
            }
            // Any other commit failure may already be durable (redb's commit contract).
            Err(e) => Err(KvError::CommitUncertain(Box::new(redb::Error::from(e)))),
        }
    }
}
