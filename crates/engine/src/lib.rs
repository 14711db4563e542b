//! The storage engine: an ordered key-value store with atomic write batches,
//! consistent snapshots and range scans, plus the byte formats Sluice stores
//! in it. Nothing here knows about SQL, Raft or the wire.
//!
//! Main flow:
//!
//! 1. A node opens one engine: [`RocksEngine::open`] on disk, or
//!    [`MemoryEngine::new`] in tests. Both implement [`Engine`] and pass the
//!    same conformance suite (`tests/conformance.rs`).
//! 2. Keys are built with [`keycode`]: an order-preserving encoding of typed
//!    values, so that a composite primary key scans in SQL order.
//!    Rows are stored with [`row`]: a compact, versioned encoding.
//! 3. Writers collect [`WriteOp`]s into a [`WriteBatch`] and hand it to
//!    [`Engine::write`], which applies it atomically, durably when asked.
//! 4. Readers take an [`Engine::snapshot`], which sees exactly the writes
//!    completed before it, and page through [`Snapshot::scan`].
//!
//! Data is split into three [`Keyspace`]s (RocksDB column families): table
//! rows and the catalog, the Raft log, and node metadata (vote, applied
//! index, membership).

use std::ops::Bound;
use std::sync::Arc;

pub mod keycode;
pub mod memory;
pub mod rocks;
pub mod row;
pub mod value;

pub use memory::MemoryEngine;
pub use rocks::{RocksConfig, RocksEngine};
pub use value::{Value, ValueKind};

/// A separately ordered key space. On RocksDB each is a column family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Keyspace {
    /// Table rows, indexes and the SQL catalog: everything the state machine applies.
    Data,
    /// Raft log entries.
    RaftLog,
    /// Node metadata: Raft vote, applied index, membership.
    Meta,
}

impl Keyspace {
    pub const ALL: [Keyspace; 3] = [Keyspace::Data, Keyspace::RaftLog, Keyspace::Meta];

    pub fn name(self) -> &'static str {
        match self {
            Keyspace::Data => "data",
            Keyspace::RaftLog => "raft_log",
            Keyspace::Meta => "meta",
        }
    }
}

/// One change inside a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    Put {
        keyspace: Keyspace,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        keyspace: Keyspace,
        key: Vec<u8>,
    },
    /// Deletes every key in `[start, end)`.
    DeleteRange {
        keyspace: Keyspace,
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// Changes applied all together or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, keyspace: Keyspace, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::Put {
            keyspace,
            key: key.into(),
            value: value.into(),
        });
    }

    pub fn delete(&mut self, keyspace: Keyspace, key: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::Delete {
            keyspace,
            key: key.into(),
        });
    }

    pub fn delete_range(
        &mut self,
        keyspace: Keyspace,
        start: impl Into<Vec<u8>>,
        end: impl Into<Vec<u8>>,
    ) {
        self.ops.push(WriteOp::DeleteRange {
            keyspace,
            start: start.into(),
            end: end.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// How durable a write must be when [`Engine::write`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On stable storage (WAL fsynced) before returning. Used for the Raft log and vote.
    Sync,
    /// In the engine's log but not yet fsynced: survives a process crash only if a
    /// later `Sync` write or flush happened. Used for Raft log appends, which the
    /// log store fsyncs ([`Engine::sync`]) before it reports them flushed.
    Buffered,
    /// Not in the engine's log at all: in memory until the engine writes its
    /// memory out on its own or [`Engine::persist_unlogged`] runs, and lost by a
    /// crash before that (all of a batch or none of it, and never a later batch
    /// without the earlier ones). For writes the caller can redo: state-machine
    /// apply, which the Raft log replays. It saves writing every byte twice.
    Unlogged,
}

/// A key range for scans: `start` and `end` bounds in byte order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Bound<Vec<u8>>,
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    pub fn all() -> Self {
        Self {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
        }
    }

    /// Every key that begins with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        let end = match prefix_successor(prefix) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        Self {
            start: Bound::Included(prefix.to_vec()),
            end,
        }
    }

    /// `[start, end)`.
    pub fn half_open(start: Vec<u8>, end: Vec<u8>) -> Self {
        Self {
            start: Bound::Included(start),
            end: Bound::Excluded(end),
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        let after_start = match &self.start {
            Bound::Included(s) => key >= s.as_slice(),
            Bound::Excluded(s) => key > s.as_slice(),
            Bound::Unbounded => true,
        };
        let before_end = match &self.end {
            Bound::Included(e) => key <= e.as_slice(),
            Bound::Excluded(e) => key < e.as_slice(),
            Bound::Unbounded => true,
        };
        after_start && before_end
    }

    /// The range that resumes a scan after `key` was returned.
    pub fn resume_after(&self, key: &[u8]) -> Self {
        Self {
            start: Bound::Excluded(key.to_vec()),
            end: self.end.clone(),
        }
    }
}

/// The smallest byte string greater than every string with this prefix, if any.
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// `range` as an iterator takes it: an inclusive lower bound and an
/// exclusive upper bound (`None`: unbounded), or `None` when no key can be
/// in the range. The successor of a key `k` in byte order is `k` followed by
/// `0x00`, which turns `Excluded(start)` and `Included(end)` into exact
/// bounds of the other kind.
pub(crate) fn iterate_bounds(range: &KeyRange) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
    fn successor(key: &[u8]) -> Vec<u8> {
        let mut next = Vec::with_capacity(key.len() + 1);
        next.extend_from_slice(key);
        next.push(0);
        next
    }
    let lower = match &range.start {
        Bound::Included(s) => s.clone(),
        Bound::Excluded(s) => successor(s),
        Bound::Unbounded => Vec::new(),
    };
    let upper = match &range.end {
        Bound::Included(e) => Some(successor(e)),
        Bound::Excluded(e) => Some(e.clone()),
        Bound::Unbounded => None,
    };
    match upper {
        Some(upper) if upper <= lower => None,
        upper => Some((lower, upper)),
    }
}

pub type KvPair = (Vec<u8>, Vec<u8>);

/// Reads that see one consistent point in time.
pub trait Snapshot: Send + Sync {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Up to `limit` pairs of `range` in ascending key order. A caller pages
    /// through a large range with [`KeyRange::resume_after`]; keeping no
    /// iterator open between pages keeps snapshots `'static` and `Send`.
    fn scan(&self, keyspace: Keyspace, range: &KeyRange, limit: usize) -> Result<Vec<KvPair>>;
}

/// An ordered key-value store.
pub trait Engine: Send + Sync + 'static {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Same contract as [`Snapshot::scan`], on the latest state.
    fn scan(&self, keyspace: Keyspace, range: &KeyRange, limit: usize) -> Result<Vec<KvPair>>;

    /// Applies the whole batch atomically.
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<()>;

    /// A consistent view of every keyspace as of now.
    fn snapshot(&self) -> Arc<dyn Snapshot>;

    /// Makes every completed write durable (fsync of the engine's log).
    fn sync(&self) -> Result<()>;

    /// Makes every completed `Unlogged` write durable (writes the engine's
    /// memory to its files and waits). Slow: call it in the background.
    fn persist_unlogged(&self) -> Result<()>;

    /// Human-readable engine statistics for metrics (name, value).
    fn stats(&self) -> Vec<(String, f64)> {
        Vec::new()
    }
}

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backing store failed (I/O error, corruption, disk full). The node
    /// cannot trust its state after this and should stop writing.
    #[error("storage failure: {0}")]
    Storage(String),
    /// Stored bytes do not decode: corruption or a format from a newer version.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A value cannot be encoded (e.g. NaN in a key is fine, but a kind mismatch is not).
    #[error("cannot encode value: {0}")]
    Encode(String),
}

impl Error {
    /// True when the error comes from the disk or the store itself rather
    /// than from one bad value: the caller must not continue writing.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Storage(_) | Error::Corrupt(_))
    }

    /// True when the disk is full (RocksDB reports "No space left on device").
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::Storage(msg) if msg.contains("No space left") || msg.contains("NoSpace"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
