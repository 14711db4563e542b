//! The RocksDB [`Engine`]: one column family per [`Keyspace`].
//!
//! Durability: every write goes through the RocksDB WAL. A
//! [`Durability::Sync`] write fsyncs the WAL before returning; a
//! [`Durability::Buffered`] write reaches the WAL file (the OS page cache)
//! but is fsynced only by a later `Sync` write, [`Engine::sync`], or a
//! clean close.
//!
//! Snapshots are owned ([`RocksSnapshot`]): each holds an `Arc` of the
//! database, so the database stays open until the engine and every snapshot
//! are gone, and a snapshot can cross threads and `.await`s.

use std::path::PathBuf;
use std::sync::Arc;

use rocksdb::properties::{self, PropName};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType,
    DBRawIteratorWithThreadMode, DBWithThreadMode, Options, ReadOptions, SingleThreaded,
    SnapshotWithThreadMode, WriteOptions,
};

use crate::{
    iterate_bounds, Durability, Engine, Error, KeyRange, Keyspace, KvPair, Result, Snapshot,
    WriteBatch, WriteOp,
};

type Db = DBWithThreadMode<SingleThreaded>;

/// How to open a [`RocksEngine`]. [`RocksConfig::new`] gives the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct RocksConfig {
    /// The database directory, created if missing.
    pub path: PathBuf,
    /// The LRU block cache shared by every column family. Default 256 MiB.
    pub block_cache_bytes: usize,
    /// Memtable size per column family. Default 64 MiB.
    pub write_buffer_bytes: usize,
    /// Flush and compaction threads. Default 4.
    pub max_background_jobs: i32,
    /// Rate limit for flush and compaction writes in bytes per second, so
    /// that they do not starve foreground I/O. Default `None`: unlimited.
    pub compaction_rate_limit_bytes_per_sec: Option<i64>,
}

impl RocksConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            block_cache_bytes: 256 << 20,
            write_buffer_bytes: 64 << 20,
            max_background_jobs: 4,
            compaction_rate_limit_bytes_per_sec: None,
        }
    }
}

/// The RocksDB engine. Dropping the last handle (the engine and every
/// snapshot taken from it) closes the database.
pub struct RocksEngine {
    db: Arc<Db>,
    cache: Cache,
    path: PathBuf,
}

impl std::fmt::Debug for RocksEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksEngine")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn storage(context: &str, err: rocksdb::Error) -> Error {
    // Keep RocksDB's own text: `Error::is_disk_full` looks for it.
    Error::Storage(format!("{context}: {err}"))
}

impl RocksEngine {
    /// Opens (creating if missing) the database at `config.path`, with every
    /// keyspace's column family.
    pub fn open(config: RocksConfig) -> Result<Arc<RocksEngine>> {
        let cache = Cache::new_lru_cache(config.block_cache_bytes);

        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(config.max_background_jobs);
        // Smooth out writeback instead of stalling on one large fsync.
        db_opts.set_bytes_per_sync(1 << 20);
        db_opts.set_keep_log_file_num(10);
        // Unlogged writes (state-machine apply) live only in memtables
        // until a flush; flushing every column family as one unit keeps a
        // batch that spans them (data + applied index) whole across a crash.
        db_opts.set_atomic_flush(true);
        if let Some(rate) = config.compaction_rate_limit_bytes_per_sec {
            db_opts.set_ratelimiter(rate, 100_000, 10);
        }

        let mut descriptors: Vec<ColumnFamilyDescriptor> = Keyspace::ALL
            .iter()
            .map(|ks| ColumnFamilyDescriptor::new(ks.name(), cf_options(*ks, &config, &cache)))
            .collect();
        // A column family this version does not know (written by a newer
        // one) must still be opened, or RocksDB refuses to open at all. An
        // unreadable directory is left for `open` to report.
        if let Ok(existing) = Db::list_cf(&db_opts, &config.path) {
            for name in existing {
                if !descriptors.iter().any(|d| d.name() == name) {
                    descriptors.push(ColumnFamilyDescriptor::new(name, Options::default()));
                }
            }
        }

        let db = Db::open_cf_descriptors(&db_opts, &config.path, descriptors)
            .map_err(|e| storage(&format!("open rocksdb at {}", config.path.display()), e))?;
        tracing::info!(path = %config.path.display(), "opened rocksdb");
        Ok(Arc::new(RocksEngine {
            db: Arc::new(db),
            cache,
            path: config.path,
        }))
    }

    /// The database directory.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn property_sum(&self, name: &PropName) -> f64 {
        Keyspace::ALL
            .iter()
            .filter_map(|ks| self.db.cf_handle(ks.name()))
            .filter_map(|cf| self.db.property_int_value_cf(cf, name).ok().flatten())
            .map(|v| v as f64)
            .sum()
    }

    fn property(&self, name: &PropName) -> Option<f64> {
        self.db
            .property_int_value(name)
            .ok()
            .flatten()
            .map(|v| v as f64)
    }
}

fn cf_options(keyspace: Keyspace, config: &RocksConfig, cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    // Index and filter blocks count against the cache budget; the hot L0
    // ones stay pinned so that point reads do not evict them.
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    // Raft log reads are sequential over keys that exist, where a filter
    // saves nothing.
    if keyspace != Keyspace::RaftLog {
        table.set_bloom_filter(10.0, false);
    }

    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    opts.set_write_buffer_size(config.write_buffer_bytes);
    opts.set_level_compaction_dynamic_level_bytes(true);
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.set_bottommost_compression_type(DBCompressionType::Zstd);
    opts
}

fn cf(db: &Db, keyspace: Keyspace) -> Result<&ColumnFamily> {
    db.cf_handle(keyspace.name())
        .ok_or_else(|| Error::Storage(format!("column family {} is not open", keyspace.name())))
}

/// Reads up to `limit` pairs from an iterator whose bounds are already set
/// to `[lower, upper)`.
fn collect_range(
    mut iter: DBRawIteratorWithThreadMode<'_, Db>,
    lower: &[u8],
    limit: usize,
) -> Result<Vec<KvPair>> {
    let mut out = Vec::new();
    iter.seek(lower);
    while out.len() < limit {
        let Some((key, value)) = iter.item() else {
            break;
        };
        out.push((key.to_vec(), value.to_vec()));
        iter.next();
    }
    iter.status().map_err(|e| storage("scan", e))?;
    Ok(out)
}

/// An upper bound of `batch`'s size in RocksDB's encoding: a 12-byte header,
/// then per operation a tag, a column family id and each slice's varint
/// length (at most 5 bytes each) before its bytes.
fn encoded_size(batch: &WriteBatch) -> usize {
    const HEADER: usize = 12;
    const PER_OP: usize = 1 + 5;
    const PER_SLICE: usize = 5;
    HEADER
        + batch
            .ops
            .iter()
            .map(|op| match op {
                WriteOp::Put { key, value, .. } => PER_OP + 2 * PER_SLICE + key.len() + value.len(),
                WriteOp::Delete { key, .. } => PER_OP + PER_SLICE + key.len(),
                WriteOp::DeleteRange { start, end, .. } => {
                    PER_OP + 2 * PER_SLICE + start.len() + end.len()
                }
            })
            .sum::<usize>()
}

/// `batch` as RocksDB's batch.
fn rocks_batch(db: &Db, batch: &WriteBatch) -> Result<rocksdb::WriteBatch> {
    // Sized up front: RocksDB's batch is one growing std::string, and a
    // record batch of megabytes would otherwise be copied again at every
    // growth (each put after a large value outgrows an exact fit).
    let mut wb = rocksdb::WriteBatch::with_capacity_bytes(encoded_size(batch));
    for op in &batch.ops {
        match op {
            WriteOp::Put {
                keyspace,
                key,
                value,
            } => wb.put_cf(cf(db, *keyspace)?, key, value),
            WriteOp::Delete { keyspace, key } => wb.delete_cf(cf(db, *keyspace)?, key),
            // An empty or inverted range deletes nothing, as in the
            // memory engine; RocksDB would reject it instead.
            WriteOp::DeleteRange { start, end, .. } if start >= end => {}
            WriteOp::DeleteRange {
                keyspace,
                start,
                end,
            } => wb.delete_range_cf(cf(db, *keyspace)?, start, end),
        }
    }
    Ok(wb)
}

/// Read options bounded to `range`, or `None` when the range is empty.
fn bounded_read_options(range: &KeyRange) -> Option<(ReadOptions, Vec<u8>)> {
    let (lower, upper) = iterate_bounds(range)?;
    let mut opts = ReadOptions::default();
    opts.set_iterate_lower_bound(lower.clone());
    if let Some(upper) = upper {
        opts.set_iterate_upper_bound(upper);
    }
    Some((opts, lower))
}

impl Engine for RocksEngine {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db
            .get_cf(cf(&self.db, keyspace)?, key)
            .map_err(|e| storage("get", e))
    }

    fn scan(&self, keyspace: Keyspace, range: &KeyRange, limit: usize) -> Result<Vec<KvPair>> {
        let cf = cf(&self.db, keyspace)?;
        let Some((opts, lower)) = bounded_read_options(range) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        collect_range(self.db.raw_iterator_cf_opt(cf, opts), &lower, limit)
    }

    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()> {
        let wb = rocks_batch(&self.db, &batch)?;
        let mut opts = WriteOptions::default();
        opts.set_sync(durability == Durability::Sync);
        opts.disable_wal(durability == Durability::Unlogged);
        self.db
            .write_opt(wb, &opts)
            .map_err(|e| storage("write batch", e))
    }

    fn snapshot(&self) -> Arc<dyn Snapshot> {
        Arc::new(RocksSnapshot::new(Arc::clone(&self.db)))
    }

    fn sync(&self) -> Result<()> {
        self.db.flush_wal(true).map_err(|e| storage("sync wal", e))
    }

    fn persist_unlogged(&self) -> Result<()> {
        let families: Vec<&ColumnFamily> = Keyspace::ALL
            .iter()
            .map(|ks| cf(&self.db, *ks))
            .collect::<Result<_>>()?;
        let mut opts = rocksdb::FlushOptions::default();
        opts.set_wait(true);
        self.db
            .flush_cfs_opt(&families, &opts)
            .map_err(|e| storage("flush memtables", e))
    }

    fn stats(&self) -> Vec<(String, f64)> {
        let mut stats = vec![
            (
                "rocksdb_estimate_live_data_size_bytes".to_owned(),
                self.property_sum(properties::ESTIMATE_LIVE_DATA_SIZE),
            ),
            (
                "rocksdb_total_sst_files_size_bytes".to_owned(),
                self.property_sum(properties::TOTAL_SST_FILES_SIZE),
            ),
            (
                "rocksdb_estimate_num_keys".to_owned(),
                self.property_sum(properties::ESTIMATE_NUM_KEYS),
            ),
            (
                "rocksdb_memtable_size_bytes".to_owned(),
                self.property_sum(properties::CUR_SIZE_ALL_MEM_TABLES),
            ),
            (
                "rocksdb_estimate_pending_compaction_bytes".to_owned(),
                self.property_sum(properties::ESTIMATE_PENDING_COMPACTION_BYTES),
            ),
            (
                "rocksdb_block_cache_usage_bytes".to_owned(),
                self.cache.get_usage() as f64,
            ),
            (
                "rocksdb_block_cache_pinned_usage_bytes".to_owned(),
                self.cache.get_pinned_usage() as f64,
            ),
        ];
        let db_wide = [
            (
                "rocksdb_running_compactions",
                properties::NUM_RUNNING_COMPACTIONS,
            ),
            ("rocksdb_running_flushes", properties::NUM_RUNNING_FLUSHES),
            ("rocksdb_background_errors", properties::BACKGROUND_ERRORS),
            ("rocksdb_write_stopped", properties::IS_WRITE_STOPPED),
            ("rocksdb_live_snapshots", properties::NUM_SNAPSHOTS),
            (
                "rocksdb_oldest_snapshot_unix_seconds",
                properties::OLDEST_SNAPSHOT_TIME,
            ),
        ];
        for (name, prop) in db_wide {
            if let Some(v) = self.property(prop) {
                stats.push((name.to_owned(), v));
            }
        }
        stats
    }
}

impl Drop for RocksEngine {
    fn drop(&mut self) {
        // Make `Buffered` writes durable on a clean shutdown. The database
        // itself closes when the last `Arc` (this or a snapshot's) goes.
        if let Err(e) = self.db.flush_wal(true) {
            tracing::warn!(path = %self.path.display(), error = %e, "sync rocksdb wal on close");
        }
    }
}

/// A RocksDB snapshot that owns its database handle, so that it is
/// `'static` and can be shared across threads.
pub struct RocksSnapshot {
    // Safety: `snapshot` borrows the `Db` inside `db` with its lifetime
    // extended to 'static. That is sound because (1) the `Db` lives on the
    // heap inside the `Arc`, so its address does not change when this struct
    // moves, (2) this struct holds a strong count on it for as long as
    // `snapshot` exists, and (3) fields drop in declaration order, so
    // `snapshot` (which releases the RocksDB snapshot through its `&Db`) is
    // dropped before `db`. Keep `snapshot` the first field and never hand out
    // the 'static reference.
    snapshot: SnapshotWithThreadMode<'static, Db>,
    db: Arc<Db>,
}

impl RocksSnapshot {
    fn new(db: Arc<Db>) -> Self {
        let snapshot = db.snapshot();
        // Safety: see the comment on the `snapshot` field; `db` is moved
        // into the same struct right below and outlives the snapshot.
        let snapshot = unsafe {
            std::mem::transmute::<SnapshotWithThreadMode<'_, Db>, SnapshotWithThreadMode<'static, Db>>(
                snapshot,
            )
        };
        RocksSnapshot { snapshot, db }
    }
}

impl Snapshot for RocksSnapshot {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.snapshot
            .get_cf(cf(&self.db, keyspace)?, key)
            .map_err(|e| storage("snapshot get", e))
    }

    fn scan(&self, keyspace: Keyspace, range: &KeyRange, limit: usize) -> Result<Vec<KvPair>> {
        let cf = cf(&self.db, keyspace)?;
        let Some((opts, lower)) = bounded_read_options(range) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        collect_range(self.snapshot.raw_iterator_cf_opt(cf, opts), &lower, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_sized_for_their_encoding() {
        let dir = tempfile::TempDir::new().unwrap();
        let engine = RocksEngine::open(RocksConfig::new(dir.path())).unwrap();
        let mut batch = WriteBatch::new();
        // Lengths of one, two and three varint bytes.
        batch.put(Keyspace::Data, vec![1; 3], vec![2; 100]);
        batch.put(Keyspace::Data, vec![3; 200], vec![4; 20_000]);
        batch.put(Keyspace::RaftLog, vec![5; 8], vec![6; 1 << 20]);
        batch.delete(Keyspace::Data, vec![7; 130]);
        batch.delete_range(Keyspace::Data, vec![8; 2], vec![9; 300]);
        let rocks = rocks_batch(&engine.db, &batch).unwrap();
        assert_eq!(rocks.len(), 5);
        assert!(rocks.size_in_bytes() <= encoded_size(&batch));
        assert!(encoded_size(&batch) < rocks.size_in_bytes() + 5 * 16);
    }
}
