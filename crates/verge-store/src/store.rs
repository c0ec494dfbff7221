//! The durable store: [`State`] persisted in redb, one transaction per command.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};
use verge_core::{NodeId, WorkloadId};

use crate::state::{Command, Key, State, StateError};

const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const WORKLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("workloads");
const CACHE_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("cache_log");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The command was refused by the state machine; nothing changed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The database could not be read or written.
    #[error("state database: {0}")]
    Db(String),
    /// A stored record could not be decoded.
    #[error("state database holds a corrupt {table} record {key:?}: {err}")]
    Corrupt { table: &'static str, key: String, err: String },
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Synced before the call returns: survives `kill -9` and power loss.
    Durable,
    /// Made durable by the next durable commit; lost if the process dies
    /// first. For state that agents send again on every connect.
    Deferred,
}

/// redb's page cache. The state lives in memory ([`State`]) and is read
/// from the file only when opened, so the cache serves writes alone;
/// redb's default (1 GiB) let it grow with every write.
const STORE_CACHE_BYTES: usize = 16 << 20;

/// The control plane's state, backed by a redb file.
pub struct Store {
    db: Database,
    state: State,
}

impl Store {
    /// Opens (or creates) the store at `path` and loads the state.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = redb::Builder::new().set_cache_size(STORE_CACHE_BYTES).create(path).map_err(db_err)?;
        let state = load(&db)?;
        Ok(Store { db, state })
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Applies `cmd` and makes the change durable before returning.
    pub fn apply(&mut self, cmd: Command) -> Result<(), StoreError> {
        let keys = self.state.apply(cmd)?;
        self.persist_or_reload(&keys, Durability::Durable)
    }

    /// Applies several commands in one transaction: one disk sync for all.
    /// Returns each command's own outcome (a refused command changes nothing
    /// and does not stop the others), or an error if the batch could not be
    /// written, in which case none of it happened.
    pub fn apply_batch(&mut self, cmds: Vec<Command>, durability: Durability) -> Result<Vec<Result<(), StateError>>, StoreError> {
        let mut keys = Vec::new();
        let outcomes = cmds.into_iter().map(|c| self.state.apply(c).map(|k| keys.extend(k))).collect();
        self.persist_or_reload(&keys, durability)?;
        Ok(outcomes)
    }

    fn persist_or_reload(&mut self, keys: &[Key], durability: Durability) -> Result<(), StoreError> {
        if let Err(e) = self.persist(keys, durability) {
            // Memory and disk disagree now; the disk is the truth.
            if let Ok(state) = load(&self.db) {
                self.state = state;
            }
            return Err(e);
        }
        Ok(())
    }

    fn persist(&self, keys: &[Key], durability: Durability) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(db_err)?;
        if durability == Durability::Deferred {
            tx.set_durability(redb::Durability::None);
        }
        {
            let mut nodes = tx.open_table(NODES).map_err(db_err)?;
            let mut workloads = tx.open_table(WORKLOADS).map_err(db_err)?;
            let mut cache_log = tx.open_table(CACHE_LOG).map_err(db_err)?;
            for key in keys {
                match key {
                    Key::Node(id) => match self.state.nodes.get(id) {
                        Some(rec) => nodes.insert(id.as_str(), encode(rec).as_slice()).map(drop),
                        None => nodes.remove(id.as_str()).map(drop),
                    },
                    Key::Workload(id) => match self.state.workloads.get(id) {
                        Some(rec) => workloads.insert(id.as_str(), encode(rec).as_slice()).map(drop),
                        None => workloads.remove(id.as_str()).map(drop),
                    },
                    Key::CacheLog(seq) => match self.state.cache_log.get(seq) {
                        Some(e) => cache_log.insert(*seq, encode(e).as_slice()).map(drop),
                        None => cache_log.remove(*seq).map(drop),
                    },
                }
                .map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Records contain only string-keyed maps, so serialisation cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn load(db: &Database) -> Result<State, StoreError> {
    let tx = db.begin_write().map_err(db_err)?;
    // Opening in a write transaction creates the tables on first start.
    let state = State {
        nodes: load_table(&tx, NODES, "nodes", NodeId::new)?,
        workloads: load_table(&tx, WORKLOADS, "workloads", WorkloadId::new)?,
        cache_log: load_cache_log(&tx)?,
    };
    tx.commit().map_err(db_err)?;
    Ok(state)
}

/// Every record of one table, keyed by its validated id.
fn load_table<K: Ord, R: serde::de::DeserializeOwned>(
    tx: &redb::WriteTransaction,
    def: TableDefinition<&str, &[u8]>,
    name: &'static str,
    parse_key: impl Fn(String) -> Result<K, verge_core::ValidationError>,
) -> Result<BTreeMap<K, R>, StoreError> {
    let table = tx.open_table(def).map_err(db_err)?;
    let mut out = BTreeMap::new();
    for row in table.iter().map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        let rec: R = decode(name, k.value(), v.value())?;
        let id = parse_key(k.value().to_string()).map_err(|e| corrupt(name, k.value(), e))?;
        out.insert(id, rec);
    }
    Ok(out)
}

/// The cache log's entries by position.
fn load_cache_log(tx: &redb::WriteTransaction) -> Result<BTreeMap<u64, crate::cachelog::MissedInvalidation>, StoreError> {
    let table = tx.open_table(CACHE_LOG).map_err(db_err)?;
    let mut out = BTreeMap::new();
    for row in table.iter().map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        out.insert(k.value(), decode("cache_log", &k.value().to_string(), v.value())?);
    }
    Ok(out)
}

fn corrupt(table: &'static str, key: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { table, key: key.to_string(), err: err.to_string() }
}

fn decode<T: serde::de::DeserializeOwned>(table: &'static str, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(table, key, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::{node, workload};

    #[test]
    fn state_survives_reopen_and_refused_commands_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let mut s = Store::open(&path).unwrap();
            s.apply(Command::RegisterNode { spec: node("n1"), now_ms: 5 }).unwrap();
            s.apply(Command::SubmitWorkload { spec: workload("w1"), now_ms: 6 }).unwrap();
            s.apply(Command::Place {
                id: WorkloadId::new("w1").unwrap(),
                node: NodeId::new("n1").unwrap(),
                reason: "best".into(),
                now_ms: 7,
            })
            .unwrap();
            s.apply(Command::SubmitWorkload { spec: workload("w2"), now_ms: 8 }).unwrap();
            s.apply(Command::DeleteWorkload { id: WorkloadId::new("w2").unwrap() }).unwrap();
            assert!(s.apply(Command::DeleteWorkload { id: WorkloadId::new("w2").unwrap() }).is_err());
            let missed = Command::QueueCacheInvalidation { nodes: vec![NodeId::new("n1").unwrap()], key: "k".into(), version: 3 };
            s.apply(missed).unwrap();
        }
        {
            let mut s = Store::open(&path).unwrap();
            let backlog = s.state().cache_backlog(&NodeId::new("n1").unwrap()).unwrap();
            assert_eq!((backlog.keys.get("k"), backlog.through), (Some(&3), 1), "the cache log survives a restart");
            let cmds = vec![
                Command::SubmitWorkload { spec: workload("w3"), now_ms: 9 },
                Command::DeleteWorkload { id: WorkloadId::new("nope").unwrap() },
                Command::SubmitWorkload { spec: workload("w4"), now_ms: 9 },
            ];
            let outcomes = s.apply_batch(cmds, Durability::Durable).unwrap();
            assert!(outcomes[0].is_ok() && outcomes[1].is_err() && outcomes[2].is_ok());
            s.apply_batch(vec![Command::DeleteWorkload { id: WorkloadId::new("w4").unwrap() }], Durability::Deferred).unwrap();
            // A durable commit carries the deferred one with it.
            s.apply(Command::DeleteWorkload { id: WorkloadId::new("w3").unwrap() }).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.state().nodes.len(), 1);
        assert_eq!(s.state().workloads.len(), 1);
        assert_eq!(s.state().workloads[&WorkloadId::new("w1").unwrap()].node, Some(NodeId::new("n1").unwrap()));
    }
}
