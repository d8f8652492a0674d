use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{BranchName, ObjectId, Store, StoreError, WriteBatch};
use crate::commit::CommitId;
use crate::kv::{KV_TABLE, RedbKv};

const OBJECTS: TableDefinition<'_, &[u8; 32], &[u8]> = TableDefinition::new("objects");
const REFS: TableDefinition<'_, &str, &[u8; 32]> = TableDefinition::new("refs");

/// The embedded durable store: one [redb] file, ACID, every [`Store::write`] durable when
/// it returns (redb's `Durability::Immediate`: the commit is fsynced).
///
/// After a crash, opening the file recovers the last committed state (redb repairs its
/// allocator state on open if needed; that may take time proportional to the file size).
///
/// The same file also holds the node's protocol state: [`RedbStore::kv`] is a
/// [`KvStore`](crate::kv::KvStore) in a table of its own, sharing the open database.
pub struct RedbStore {
    db: Arc<Database>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedbStore")
    }
}

fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError::backend(e.into())
}

impl RedbStore {
    /// Opens the store at `path`, creating the file if it does not exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(backend)?;
        // Make sure both tables exist so that readers never see "table does not exist".
        let tx = db.begin_write().map_err(backend)?;
        tx.open_table(OBJECTS).map_err(backend)?;
        tx.open_table(REFS).map_err(backend)?;
        tx.open_table(KV_TABLE).map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// The key-value store in this file (table `kv`), sharing the open database: protocol
    /// state (a Raft term, vote and log, say) lives next to the repository's objects and refs,
    /// in one file. Each has its own transactions: a [`Store::write`] and a
    /// [`KvStore::write`](crate::kv::KvStore::write) are not atomic together.
    pub fn kv(&self) -> RedbKv {
        RedbKv::shared(Arc::clone(&self.db))
    }
}

fn branch_name(name: &str) -> Result<BranchName, StoreError> {
    BranchName::new(name).map_err(|e| StoreError::Corrupt(format!("stored ref name: {e}")))
}

impl Store for RedbStore {
    fn object(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(OBJECTS).map_err(backend)?;
        Ok(table.get(id.as_bytes()).map_err(backend)?.map(|v| v.value().to_vec()))
    }

    fn contains_object(&self, id: &ObjectId) -> Result<bool, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(OBJECTS).map_err(backend)?;
        Ok(table.get(id.as_bytes()).map_err(backend)?.is_some())
    }

    fn reference(&self, name: &BranchName) -> Result<Option<CommitId>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(REFS).map_err(backend)?;
        match table.get(name.as_str()).map_err(backend)? {
            Some(v) => Ok(Some(CommitId::from_bytes(*v.value()))),
            None => Ok(None),
        }
    }

    fn references(&self) -> Result<Vec<(BranchName, CommitId)>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(REFS).map_err(backend)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(backend)? {
            let (k, v) = entry.map_err(backend)?;
            out.push((branch_name(k.value())?, CommitId::from_bytes(*v.value())));
        }
        Ok(out)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(backend)?;
        {
            let mut refs = tx.open_table(REFS).map_err(backend)?;
            for u in &batch.refs {
                let actual = refs
                    .get(u.name.as_str())
                    .map_err(backend)?
                    .map(|v| CommitId::from_bytes(*v.value()));
                if actual != u.expected {
                    // Dropping the transaction without committing aborts it: nothing written.
                    return Err(StoreError::RefConflict {
                        name: u.name.clone(),
                        expected: u.expected,
                        actual,
                    });
                }
                match u.new {
                    Some(id) => {
                        refs.insert(u.name.as_str(), id.as_bytes()).map_err(backend)?;
                    }
                    None => {
                        refs.remove(u.name.as_str()).map_err(backend)?;
                    }
                }
            }
            let mut objects = tx.open_table(OBJECTS).map_err(backend)?;
            for (id, bytes) in &batch.objects {
                if objects.get(id.as_bytes()).map_err(backend)?.is_none() {
                    objects.insert(id.as_bytes(), bytes.as_slice()).map_err(backend)?;
                }
            }
        }
        tx.commit().map_err(backend)?;
        Ok(())
    }
}
