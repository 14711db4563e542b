//! An in-memory [`Engine`] for tests: one `BTreeMap` per keyspace.
//!
//! Each map sits behind an `Arc`, so a snapshot is three reference-count
//! increments. A writer changes a map through `Arc::make_mut`, which copies
//! the map only while a snapshot still shares it: snapshots cost nothing
//! until the next write, then one copy of each keyspace that write touches.
//! That is the simple trade for a test engine; it is not meant for large
//! data.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::{
    iterate_bounds, Durability, Engine, KeyRange, Keyspace, KvPair, Result, Snapshot, WriteBatch,
    WriteOp,
};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// The engine's whole state: one map per keyspace, indexed by [`slot`].
#[derive(Clone, Default)]
struct Maps([Arc<Map>; Keyspace::ALL.len()]);

fn slot(keyspace: Keyspace) -> usize {
    match keyspace {
        Keyspace::Data => 0,
        Keyspace::RaftLog => 1,
        Keyspace::Meta => 2,
    }
}

impl Maps {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Option<Vec<u8>> {
        self.0[slot(keyspace)].get(key).cloned()
    }

    fn scan(&self, keyspace: Keyspace, range: &KeyRange, limit: usize) -> Vec<KvPair> {
        let Some((lower, upper)) = iterate_bounds(range) else {
            return Vec::new();
        };
        let upper = match &upper {
            Some(upper) => Bound::Excluded(upper.as_slice()),
            None => Bound::Unbounded,
        };
        self.0[slot(keyspace)]
            .range::<[u8], _>((Bound::Included(lower.as_slice()), upper))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// See the module documentation.
#[derive(Default)]
pub struct MemoryEngine {
    maps: RwLock<Maps>,
}

impl MemoryEngine {
    pub fn new() -> Arc<MemoryEngine> {
        Arc::new(Self::default())
    }

    // Nothing done under the write lock can panic (range bounds are checked
    // first, and allocation failure aborts), so a poisoned lock would still
    // hold whole batches: its maps are used as they are.
    fn lock_read(&self) -> RwLockReadGuard<'_, Maps> {
        self.maps.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_write(&self) -> RwLockWriteGuard<'_, Maps> {
        self.maps.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Engine for MemoryEngine {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.lock_read().get(keyspace, key))
    }

    fn scan(&self, keyspace: Keyspace, range: &KeyRange, limit: usize) -> Result<Vec<KvPair>> {
        Ok(self.lock_read().scan(keyspace, range, limit))
    }

    fn write(&self, batch: WriteBatch, _durability: Durability) -> Result<()> {
        let mut maps = self.lock_write();
        for op in batch.ops {
            match op {
                WriteOp::Put {
                    keyspace,
                    key,
                    value,
                } => {
                    Arc::make_mut(&mut maps.0[slot(keyspace)]).insert(key, value);
                }
                WriteOp::Delete { keyspace, key } => {
                    let map = &mut maps.0[slot(keyspace)];
                    if map.contains_key(&key) {
                        Arc::make_mut(map).remove(&key);
                    }
                }
                WriteOp::DeleteRange {
                    keyspace,
                    start,
                    end,
                } => {
                    if start >= end {
                        continue;
                    }
                    let map = &mut maps.0[slot(keyspace)];
                    let doomed: Vec<Vec<u8>> =
                        map.range(start..end).map(|(k, _)| k.clone()).collect();
                    if doomed.is_empty() {
                        continue;
                    }
                    let map = Arc::make_mut(map);
                    for key in doomed {
                        map.remove(&key);
                    }
                }
            }
        }
        Ok(())
    }

    fn snapshot(&self) -> Arc<dyn Snapshot> {
        Arc::new(MemorySnapshot {
            maps: self.lock_read().clone(),
        })
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn persist_unlogged(&self) -> Result<()> {
        Ok(())
    }

    fn stats(&self) -> Vec<(String, f64)> {
        let maps = self.lock_read();
        let mut stats = Vec::new();
        for keyspace in Keyspace::ALL {
            let map = &maps.0[slot(keyspace)];
            let bytes: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
            stats.push((format!("memory_{}_keys", keyspace.name()), map.len() as f64));
            stats.push((format!("memory_{}_bytes", keyspace.name()), bytes as f64));
        }
        stats
    }
}

/// A frozen copy of the maps, sharing them with the engine until it writes.
struct MemorySnapshot {
    maps: Maps,
}

impl Snapshot for MemorySnapshot {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.maps.get(keyspace, key))
    }

    fn scan(&self, keyspace: Keyspace, range: &KeyRange, limit: usize) -> Result<Vec<KvPair>> {
        Ok(self.maps.scan(keyspace, range, limit))
    }
}
