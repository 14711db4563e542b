//! Interactive transactions: `BEGIN … COMMIT` over Raft, optimistically.
//!
//! A transaction writes nothing until it commits. Its statements run as
//! usual, but [`crate::dml::propose`] hands their mutations to the open
//! [`Transaction`] instead of Raft: they are applied, with the very rules
//! every replica applies ([`plan_mutations`]), to a [`WriteSet`] in the
//! session. Every read of the transaction sees its snapshot with that write
//! set laid over it ([`Overlaid`]), so scans, joins, aggregates, index
//! lookups and the input plans of later DML all see its own writes.
//!
//! `COMMIT` proposes one Raft command: a `Check` for every key the
//! transaction wrote or checked, expecting the value it had in the snapshot
//! the transaction read, then the writes. The state machine applies it
//! deterministically on every replica: if any such key changed since (a
//! concurrent transaction committed a write to it first), the whole command
//! is rejected and the client gets 40001. That is first-committer-wins
//! snapshot isolation, validated by value.
//!
//! Isolation levels (documented in docs/architecture.md, with the anomalies
//! each allows):
//! - `REPEATABLE READ`: one snapshot, taken at the transaction's first
//!   statement (as PostgreSQL does), for every statement.
//! - `READ COMMITTED` (the default): a fresh snapshot per statement; writes
//!   are validated the same way, so where PostgreSQL would wait for a
//!   concurrent writer and re-read the row, Sluice fails the commit with
//!   40001 and the client retries.
//! - `SERIALIZABLE`: one snapshot, like REPEATABLE READ, read through a
//!   [`ReadRecorder`] that keeps each key and key range the transaction read
//!   with a digest of what it saw. COMMIT adds a `CheckRange` per recorded
//!   read, so the commit also fails with 40001 if anything the transaction
//!   read (rows, absent keys, gaps a scan covered: phantoms) changed since
//!   its snapshot. Every writing transaction then behaves as if it ran
//!   alone at its commit point, and a read-only one as if at its snapshot:
//!   the serial order is the commit order.
//!
//! Snapshots are RocksDB snapshots held by the session; the versions they
//! pin are dropped by compaction once the transaction ends.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::sql::sqlparser::ast;
use sluice_engine::{Keyspace, Snapshot};
use sluice_raftstore::{
    plan_mutations, ApplyError, ApplyOutcome, Mutation, Overlaid, ReadRecorder, WriteSet,
};

use crate::catalog::CatalogState;
use crate::error::{sqlstate, storage_error, Error, Result};
pub use crate::settings::IsolationLevel;
use crate::settings::SettingsSnapshot;

/// Where the session stands, for ReadyForQuery's status byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionState {
    Idle,
    Open,
    /// An error occurred inside the block; only ROLLBACK (or COMMIT, which
    /// rolls back) is accepted.
    Failed,
}

/// The state `ROLLBACK TO SAVEPOINT` returns to. Copies are cheap: the
/// write set and the expectations are shared until the next write.
struct Savepoint {
    name: String,
    writes: Arc<WriteSet>,
    expected: Arc<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    expected_bytes: usize,
    appends: Arc<Vec<Mutation>>,
    appends_bytes: usize,
    range_guards: Arc<Vec<Mutation>>,
    catalog: Option<Arc<CatalogState>>,
    settings: SettingsSnapshot,
}

/// The node's transaction blocks, for metrics: the open ones (each holds a
/// snapshot, and with it versions compaction cannot drop yet) and how the
/// finished ones ended.
#[derive(Debug, Default)]
pub(crate) struct TransactionRegistry {
    next_id: AtomicU64,
    open: Mutex<BTreeMap<u64, Instant>>,
    committed: AtomicU64,
    rolled_back: AtomicU64,
    conflicts: AtomicU64,
}

/// A snapshot of [`TransactionRegistry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransactionStats {
    pub open: u64,
    /// Age of the oldest open block (zero when none is open).
    pub oldest_age: Duration,
    pub committed: u64,
    /// Rolled back by ROLLBACK, a failed block, or a dropped connection.
    pub rolled_back: u64,
    /// Commits refused with 40001 (also counted as rolled back).
    pub conflicts: u64,
}

impl TransactionRegistry {
    pub(crate) fn stats(&self) -> TransactionStats {
        let open = self.open.lock().expect("registry lock");
        TransactionStats {
            open: open.len() as u64,
            oldest_age: open.values().min().map_or(Duration::ZERO, Instant::elapsed),
            committed: self.committed.load(Ordering::Relaxed),
            rolled_back: self.rolled_back.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn conflict(&self) {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
    }
}

/// A transaction's entry in the registry; it leaves when the block ends,
/// counted as committed only if [`Registration::committed`] said so.
struct Registration {
    id: u64,
    registry: Arc<TransactionRegistry>,
    committed: bool,
}

impl Registration {
    fn new(registry: Arc<TransactionRegistry>) -> Self {
        let id = registry.next_id.fetch_add(1, Ordering::Relaxed);
        registry
            .open
            .lock()
            .expect("registry lock")
            .insert(id, Instant::now());
        Self {
            id,
            registry,
            committed: false,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let registry = &self.registry;
        registry
            .open
            .lock()
            .expect("registry lock")
            .remove(&self.id);
        let outcome = if self.committed {
            &registry.committed
        } else {
            &registry.rolled_back
        };
        outcome.fetch_add(1, Ordering::Relaxed);
    }
}

/// An open transaction block.
pub(crate) struct Transaction {
    pub(crate) isolation: IsolationLevel,
    /// The transaction's snapshot (REPEATABLE READ), or the current
    /// statement's (READ COMMITTED). `None` before the first read.
    base: Option<Arc<dyn Snapshot>>,
    /// SERIALIZABLE: what the transaction read from `base`.
    reads: Option<Arc<ReadRecorder>>,
    writes: Arc<WriteSet>,
    /// Each key the transaction wrote or checked, with its value in the
    /// snapshot the statement that first touched it read: what COMMIT
    /// expects to find.
    expected: Arc<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    expected_bytes: usize,
    /// Topic appends, proposed as they are at COMMIT (their offsets are
    /// assigned at apply), after the writes.
    appends: Arc<Vec<Mutation>>,
    appends_bytes: usize,
    /// `CheckRange`s over committed state that the commit must pass: the
    /// ranges where foreign key upkeep found no referencing rows (or the
    /// ones it cascaded to), so a row others commit there meanwhile fails
    /// the commit rather than referring to a row this block removed.
    range_guards: Arc<Vec<Mutation>>,
    /// The catalog as the block's own DDL left it (its writes over its
    /// snapshot); `None` until the block runs DDL. Other sessions see the
    /// shared catalog until COMMIT.
    pub(crate) catalog: Option<Arc<CatalogState>>,
    /// Open savepoints, oldest first; names may repeat (the newest wins).
    savepoints: Vec<Savepoint>,
    pub(crate) failed: bool,
    pub(crate) read_only: bool,
    /// Opened by the server around statements that must commit together
    /// (a multi-statement query), not by BEGIN; it ends with them.
    pub(crate) implicit: bool,
    /// Bytes the block may write, check and record as read before it is
    /// refused with 54000 (`sluice.max_transaction_bytes`): its commit must
    /// fit in one Raft command.
    limit: usize,
    /// The session's settings when the block opened: ROLLBACK restores them.
    pub(crate) settings_at_begin: SettingsSnapshot,
    registration: Registration,
}

impl Transaction {
    pub(crate) fn new(
        registry: Arc<TransactionRegistry>,
        isolation: IsolationLevel,
        read_only: bool,
        limit: usize,
        settings_at_begin: SettingsSnapshot,
    ) -> Self {
        Self {
            settings_at_begin,
            limit,
            registration: Registration::new(registry),
            isolation,
            read_only,
            base: None,
            reads: None,
            writes: Arc::default(),
            expected: Arc::default(),
            expected_bytes: 0,
            appends: Arc::default(),
            appends_bytes: 0,
            range_guards: Arc::default(),
            catalog: None,
            savepoints: Vec::new(),
            failed: false,
            implicit: false,
        }
    }

    /// The committed state the block's current statement reads under its
    /// own writes; `None` before the first read.
    pub(crate) fn committed_snapshot(&self) -> Option<Arc<dyn Snapshot>> {
        self.base.clone()
    }

    /// Range checks the commit must pass (see `range_guards`).
    pub(crate) fn guard_ranges(&mut self, guards: Vec<Mutation>) -> Result<()> {
        if !guards.is_empty() {
            Arc::make_mut(&mut self.range_guards).extend(guards);
        }
        self.check_size()
    }

    /// Whether a statement of the block has taken a snapshot (PostgreSQL's
    /// "first snapshot set"): from then on the isolation level is fixed.
    pub(crate) fn has_snapshot(&self) -> bool {
        self.base.is_some()
    }

    /// Whether a savepoint is open: PostgreSQL's subtransaction.
    pub(crate) fn in_subtransaction(&self) -> bool {
        !self.savepoints.is_empty()
    }

    /// Whether a statement needs a new base snapshot before it reads.
    pub(crate) fn needs_snapshot(&self) -> bool {
        self.base.is_none() || self.isolation == IsolationLevel::ReadCommitted
    }

    pub(crate) fn set_snapshot(&mut self, snapshot: Arc<dyn Snapshot>) {
        if self.isolation == IsolationLevel::Serializable {
            let recorder = Arc::new(ReadRecorder::new(snapshot));
            self.base = Some(recorder.clone());
            self.reads = Some(recorder);
        } else {
            self.base = Some(snapshot);
        }
    }

    /// What the transaction reads: its snapshot with its writes over it.
    /// Refused once the transaction holds too much (54000).
    pub(crate) fn view(&self) -> Result<Option<Arc<dyn Snapshot>>> {
        self.check_size()?;
        let Some(base) = self.base.clone() else {
            return Ok(None);
        };
        Ok(Some(Arc::new(Overlaid::new(base, self.writes.clone()))))
    }

    /// Bytes of writes, of old values to check, and of recorded reads must
    /// stay under the block's limit.
    fn check_size(&self) -> Result<()> {
        let reads = self.reads.as_ref().map_or(0, |reads| reads.bytes());
        let guards: usize = self
            .range_guards
            .iter()
            .map(|guard| match guard {
                Mutation::CheckRange { start, end, .. } => bound_len(start) + bound_len(end) + 32,
                _ => 0,
            })
            .sum();
        let bytes = self.writes.bytes() + self.expected_bytes + self.appends_bytes + reads + guards;
        if bytes > self.limit {
            return Err(Error::new(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "transaction is too large: {bytes} bytes written, read for writing and \
                     recorded as read, more than the limit of {}",
                    self.limit
                ),
            )
            .with_detail(
                "Commit in smaller transactions, or raise sluice.max_transaction_bytes.",
            ));
        }
        Ok(())
    }

    /// Applies a statement's mutations to the write set, all or nothing;
    /// the inner error is a rejection by the replicas' rules (duplicate key).
    pub(crate) fn apply(
        &mut self,
        mutations: Vec<Mutation>,
    ) -> Result<std::result::Result<ApplyOutcome, ApplyError>> {
        if self.read_only {
            return Err(Error::new(
                sqlstate::READ_ONLY_SQL_TRANSACTION,
                "cannot write in a read-only transaction",
            ));
        }
        let base = self.base.clone().ok_or_else(|| {
            Error::new(
                sqlstate::INTERNAL_ERROR,
                "a transaction wrote before reading its snapshot",
            )
        })?;
        let read_base = |key: &[u8]| base.get(Keyspace::Data, key);
        // Appends take their sequence numbers at apply, so they are kept
        // aside and join the commit command as they are: concurrent
        // appenders to one partition never conflict.
        let (appends, mutations): (Vec<Mutation>, Vec<Mutation>) = mutations
            .into_iter()
            .partition(|m| matches!(m, Mutation::Append { .. }));
        let mut touched: Vec<Vec<u8>> = Vec::new();
        for mutation in &mutations {
            match mutation {
                Mutation::Insert { key, .. }
                | Mutation::InsertIfAbsent { key, .. }
                | Mutation::Put { key, .. }
                | Mutation::Delete { key }
                | Mutation::Check { key, .. } => touched.push(key.clone()),
                // TRUNCATE and DROP: the write set keeps the range deleted
                // for the block's reads, and COMMIT deletes the range as it
                // is then, so rows committed meanwhile by others go too, as
                // if this block had committed after them.
                Mutation::DeleteRange { .. } => {}
                Mutation::Append { .. } => unreachable!("partitioned out above"),
                // Sequences are not transactional: nextval proposes its own command.
                Mutation::NextValues { .. } => {
                    return Err(Error::new(
                        sqlstate::INTERNAL_ERROR,
                        "a statement put a sequence advance into a transaction block",
                    ))
                }
                // Only COMMIT proposes range checks, from the recorded reads.
                Mutation::CheckRange { .. } => {
                    return Err(Error::new(
                        sqlstate::INTERNAL_ERROR,
                        "a statement proposed a range check",
                    ))
                }
            }
        }
        // Values read from the snapshot while planning, kept for `expected`
        // below so that no key is read from the engine twice.
        let mut base_reads: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        let writes = &self.writes;
        let view = Overlaid::new(base.clone(), writes.clone());
        let planned = plan_mutations(
            mutations,
            |key| match writes.lookup(key) {
                Some(state) => Ok(state.map(<[u8]>::to_vec)),
                None => {
                    let value = read_base(key)?;
                    base_reads.insert(key.to_vec(), value.clone());
                    Ok(value)
                }
            },
            |range, limit| view.scan(Keyspace::Data, range, limit),
        )
        .map_err(storage_error)?;
        let (ops, mut outcome) = match planned {
            Ok(planned) => planned,
            Err(rejected) => return Ok(Err(rejected)),
        };
        for append in appends {
            if let Mutation::Append { count, entry, .. } = &append {
                outcome.inserted += count;
                self.appends_bytes += entry.len();
            }
            Arc::make_mut(&mut self.appends).push(append);
        }
        for key in touched {
            if !self.expected.contains_key(&key) && self.writes.lookup(&key).is_none() {
                let value = match base_reads.remove(&key) {
                    Some(value) => value,
                    None => read_base(&key).map_err(storage_error)?,
                };
                self.expected_bytes += key.len() + value.as_ref().map_or(0, Vec::len);
                Arc::make_mut(&mut self.expected).insert(key, value);
            }
        }
        let writes = Arc::make_mut(&mut self.writes);
        for op in &ops {
            writes.apply(op);
        }
        self.check_size()?;
        Ok(Ok(outcome))
    }

    /// `SAVEPOINT name`: remembers the block's writes, and the session's
    /// `settings`, as they are now.
    pub(crate) fn savepoint(&mut self, name: String, settings: SettingsSnapshot) {
        self.savepoints.push(Savepoint {
            name,
            writes: self.writes.clone(),
            expected: self.expected.clone(),
            expected_bytes: self.expected_bytes,
            appends: self.appends.clone(),
            appends_bytes: self.appends_bytes,
            range_guards: self.range_guards.clone(),
            catalog: self.catalog.clone(),
            settings,
        });
    }

    /// `RELEASE SAVEPOINT name`: forgets the savepoint and every later one,
    /// keeping their writes.
    pub(crate) fn release(&mut self, name: &str) -> Result<()> {
        let position = self.find_savepoint(name)?;
        self.savepoints.truncate(position);
        Ok(())
    }

    /// `ROLLBACK TO SAVEPOINT name`: undoes every write since the savepoint,
    /// which stays open, and leaves a failed block usable again. Returns the
    /// settings to restore.
    pub(crate) fn rollback_to(&mut self, name: &str) -> Result<SettingsSnapshot> {
        let position = self.find_savepoint(name)?;
        self.savepoints.truncate(position + 1);
        let savepoint = &self.savepoints[position];
        self.writes = savepoint.writes.clone();
        self.expected = savepoint.expected.clone();
        self.expected_bytes = savepoint.expected_bytes;
        self.appends = savepoint.appends.clone();
        self.appends_bytes = savepoint.appends_bytes;
        self.range_guards = savepoint.range_guards.clone();
        self.catalog = savepoint.catalog.clone();
        self.failed = false;
        Ok(savepoint.settings.clone())
    }

    fn find_savepoint(&self, name: &str) -> Result<usize> {
        self.savepoints
            .iter()
            .rposition(|savepoint| savepoint.name == name)
            .ok_or_else(|| {
                Error::new(
                    sqlstate::INVALID_SAVEPOINT_SPECIFICATION,
                    format!("savepoint \"{name}\" does not exist"),
                )
            })
    }

    /// The commit command: checks of written keys and (SERIALIZABLE) of
    /// everything read, then the writes. `None` when the transaction wrote
    /// nothing: it commits without a Raft round, serialized at its snapshot.
    /// The expectations move into the command (copied only if a savepoint
    /// still shares them). The caller reports the outcome with
    /// [`Self::committed`].
    pub(crate) fn commit_command(&mut self) -> Result<Option<Vec<Mutation>>> {
        if self.writes.is_empty() && self.appends.is_empty() {
            return Ok(None);
        }
        self.check_size()?;
        let mut mutations: Vec<Mutation> = Arc::unwrap_or_clone(std::mem::take(&mut self.expected))
            .into_iter()
            .map(|(key, expected)| Mutation::Check { key, expected })
            .collect();
        if let Some(reads) = &self.reads {
            mutations.extend(reads.checks());
        }
        mutations.extend(Arc::unwrap_or_clone(std::mem::take(&mut self.range_guards)));
        mutations.extend(self.writes.to_mutations());
        mutations.extend(Arc::unwrap_or_clone(std::mem::take(&mut self.appends)));
        Ok(Some(mutations))
    }

    /// Marks the block as committed; it leaves the registry when dropped.
    pub(crate) fn committed(mut self) {
        self.registration.committed = true;
    }
}

fn bound_len(bound: &std::ops::Bound<Vec<u8>>) -> usize {
    match bound {
        std::ops::Bound::Included(key) | std::ops::Bound::Excluded(key) => key.len(),
        std::ops::Bound::Unbounded => 0,
    }
}

/// The modes of BEGIN and SET TRANSACTION; `None` where the statement does
/// not name one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TransactionModes {
    pub isolation: Option<IsolationLevel>,
    pub read_only: Option<bool>,
}

pub(crate) fn transaction_modes(modes: &[ast::TransactionMode]) -> TransactionModes {
    let mut parsed = TransactionModes::default();
    for mode in modes {
        match mode {
            ast::TransactionMode::IsolationLevel(level) => {
                parsed.isolation = Some(match level {
                    ast::TransactionIsolationLevel::ReadUncommitted
                    | ast::TransactionIsolationLevel::ReadCommitted => {
                        IsolationLevel::ReadCommitted
                    }
                    ast::TransactionIsolationLevel::RepeatableRead
                    | ast::TransactionIsolationLevel::Snapshot => IsolationLevel::RepeatableRead,
                    ast::TransactionIsolationLevel::Serializable => IsolationLevel::Serializable,
                });
            }
            ast::TransactionMode::AccessMode(mode) => {
                parsed.read_only = Some(matches!(mode, ast::TransactionAccessMode::ReadOnly));
            }
        }
    }
    parsed
}
