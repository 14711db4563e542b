//! The state machine: applies committed commands to `Keyspace::Data`.
//!
//! Hot path: [`StateMachine::apply`] runs for every committed entry.
//!
//! All entries openraft hands to one `apply` call go into one engine
//! `WriteBatch` (split only past [`APPLY_FLUSH_BYTES`]) that also records the
//! applied log id and the membership in `Keyspace::Meta`, written with
//! `Durability::Unlogged`: the Raft log is the durable record (its entries
//! are fsynced before they commit), so writing every applied byte to the
//! engine's log as well would only write it twice. After a crash the engine
//! holds the state as of its last flush, applied id and data together (one
//! batch, flushed as a unit), and openraft re-applies the committed entries
//! after it. The Raft log therefore may not lose an entry whose apply is not
//! yet on disk: [`DurableApply`] tracks how far that is, and the log store
//! purges no further.
//!
//! Apply is deterministic: a command's outcome depends only on the command
//! and the data before it. A rejected command writes nothing (the applied id
//! still advances). Reads during apply go through overlays: the command's
//! own earlier mutations, then the earlier commands of the same engine batch
//! (not yet written), then the engine.

use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use sluice_engine::{
    Durability, Engine, Error as EngineError, KeyRange, Keyspace, WriteBatch, WriteOp,
};
use tokio::sync::watch;

use crate::command::{ApplyError, ApplyOutcome, Command, CommandResponse, Mutation};
use crate::log_store::read_meta_snapshot;
use crate::snapshot::{self, SnapshotDir, SnapshotReader, StoredSnapshot};
use crate::types::{
    blocking, encode, in_place, meta_key, Entry, FatalSlot, LogId, RaftStorageError, SnapshotMeta,
    StorageUsers, StoredMembership, TypeConfig,
};
use crate::watch::LogWatchers;
use crate::write_set::{merged_scan, plan_mutations, WriteSet};

/// An apply batch is written early once its payload passes this size, so a
/// burst of large commands does not build one unbounded batch.
const APPLY_FLUSH_BYTES: usize = 32 << 20;
/// An apply batch up to this size is written on the state machine's own
/// task as it is: an unlogged write this small costs less than handing the
/// worker's other tasks to another thread first. Larger ones are written
/// under `block_in_place` ([`in_place`]): the state machine waits for them
/// anyway, and a trip through the blocking pool costs two thread wake-ups.
const INLINE_APPLY_BYTES: usize = 256 << 10;
/// Bounds of one engine batch while installing a snapshot.
const INSTALL_BATCH_BYTES: usize = 4 << 20;
const INSTALL_BATCH_PAIRS: usize = 10_000;
/// `Data` keys are compared against this to delete "everything": a
/// `delete_range` up to it, then point deletes for any key beyond it.
const DATA_END: [u8; 16] = [0xff; 16];

/// The engine batch being built by one `apply` call.
#[derive(Default)]
struct PendingApply {
    batch: WriteBatch,
    /// The batch's writes, read through by later commands of the batch.
    overlay: WriteSet,
    bytes: usize,
    /// Sequence logs appended to, with their next sequence number after it.
    appended: Vec<(Vec<u8>, u64)>,
}

impl PendingApply {
    /// Applies one command atomically: either all of its writes join the
    /// batch, or none do.
    fn apply_command(
        &mut self,
        engine: &dyn Engine,
        command: Command,
        index: u64,
    ) -> Result<Result<ApplyOutcome, ApplyError>, EngineError> {
        let logs: Vec<(Vec<u8>, u64)> = command
            .mutations
            .iter()
            .filter_map(|m| match m {
                Mutation::Append { log, count, .. } => Some((log.clone(), *count)),
                _ => None,
            })
            .collect();
        let overlay = &self.overlay;
        let planned = plan_mutations(
            command.mutations,
            |key| match overlay.lookup(key) {
                Some(state) => Ok(state.map(<[u8]>::to_vec)),
                None => engine.get(Keyspace::Data, key),
            },
            |range, limit| {
                merged_scan(
                    &mut |range, limit| engine.scan(Keyspace::Data, range, limit),
                    overlay,
                    range,
                    limit,
                )
            },
        )?;
        let (ops, mut outcome) = match planned {
            Ok(planned) => planned,
            Err(rejected) => return Ok(Err(rejected)),
        };
        outcome.applied_index = index;
        for ((log, count), first) in logs.into_iter().zip(&outcome.appended) {
            self.appended.push((log, first + count));
        }
        for op in ops {
            self.bytes += match &op {
                WriteOp::Put { key, value, .. } => key.len() + value.len(),
                WriteOp::Delete { key, .. } => key.len(),
                WriteOp::DeleteRange { start, end, .. } => start.len() + end.len(),
            };
            self.overlay.apply(&op);
            self.batch.ops.push(op);
        }
        Ok(Ok(outcome))
    }
}

/// How far the applied state is on disk, for the log store's purges.
///
/// Apply batches are `Unlogged`, so the last applied index the engine would
/// keep through a crash is the one that a completed
/// [`Engine::persist_unlogged`] covered (or the one found at open, or the
/// one a `Sync` snapshot install wrote). [`DurableApply::request_persist`]
/// starts such a flush on a thread of its own, so neither the Raft core nor
/// apply ever waits for it; the engine also flushes on its own when its
/// memory fills, which only makes more of the state durable than recorded.
#[derive(Debug)]
pub(crate) struct DurableApply {
    persisted: AtomicU64,
    persisting: AtomicBool,
    applied: watch::Receiver<u64>,
}

impl DurableApply {
    pub(crate) fn new(applied: watch::Receiver<u64>) -> Arc<Self> {
        Arc::new(DurableApply {
            persisted: AtomicU64::new(0),
            persisting: AtomicBool::new(false),
            applied,
        })
    }

    /// Every entry up to this index has its apply on disk.
    pub(crate) fn persisted(&self) -> u64 {
        self.persisted.load(Ordering::SeqCst)
    }

    pub(crate) fn mark(&self, index: u64) {
        self.persisted.fetch_max(index, Ordering::SeqCst);
    }

    /// Starts persisting what is applied now, unless a persist is running;
    /// `then` runs after it succeeds.
    pub(crate) fn request_persist(
        self: &Arc<Self>,
        engine: Arc<dyn Engine>,
        then: impl FnOnce() + Send + 'static,
    ) {
        if self.persisting.swap(true, Ordering::SeqCst) {
            return;
        }
        // Published after its batch was written, so the flush covers it.
        let applied = *self.applied.borrow();
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("apply-persist".into())
            .spawn(move || {
                match engine.persist_unlogged() {
                    Ok(()) => {
                        this.mark(applied);
                        then();
                    }
                    // The Raft log is kept, so nothing is lost; a failing
                    // disk fails the next write, which stops the node.
                    Err(e) => tracing::error!(error = %e, "persisting the applied state failed"),
                }
                this.persisting.store(false, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "start a persist of the applied state");
            self.persisting.store(false, Ordering::SeqCst);
        }
    }
}

/// The state machine openraft drives.
pub(crate) struct StateMachine {
    engine: Arc<dyn Engine>,
    applied: Option<LogId>,
    membership: StoredMembership,
    snapshots: Arc<SnapshotDir>,
    applied_tx: watch::Sender<u64>,
    fatal: FatalSlot,
    users: StorageUsers,
    watchers: Arc<LogWatchers>,
    durable: Arc<DurableApply>,
}

impl StateMachine {
    /// Opens the state machine on `engine`, finishing an interrupted
    /// snapshot install first if there is one.
    pub(crate) async fn open(
        engine: Arc<dyn Engine>,
        snapshot_dir: PathBuf,
        applied_tx: watch::Sender<u64>,
        fatal: FatalSlot,
        users: StorageUsers,
        watchers: Arc<LogWatchers>,
        durable: Arc<DurableApply>,
    ) -> Result<Self, EngineError> {
        let interrupted: Option<String> =
            read_meta_snapshot(&*engine.snapshot(), meta_key::INSTALLING)?;
        let snapshots = {
            let pinned = interrupted.clone();
            Arc::new(blocking(move || SnapshotDir::open(snapshot_dir, pinned.as_deref())).await?)
        };
        if let Some(file_name) = interrupted {
            let path = snapshots.path_of(&file_name);
            tracing::warn!(path = %path.display(), "resuming an interrupted snapshot install");
            let engine = engine.clone();
            let meta = blocking(move || {
                let meta = SnapshotReader::open(&path)?.meta().clone();
                install_from_file(&*engine, &path, &meta)?;
                Ok(StoredSnapshot { meta, path })
            })
            .await?;
            snapshots.set_current(meta);
        }
        let state = engine.snapshot();
        let applied = read_meta_snapshot::<Option<LogId>>(&*state, meta_key::APPLIED)?.flatten();
        let membership = read_meta_snapshot::<StoredMembership>(&*state, meta_key::MEMBERSHIP)?
            .unwrap_or_default();
        applied_tx.send_replace(applied.map_or(0, |id| id.index));
        // Unlogged writes never replay from the engine's log: what is read
        // here is on disk.
        durable.mark(applied.map_or(0, |id| id.index));
        tracing::info!(
            applied = applied.map_or(0, |id| id.index),
            "state machine opened at its last persisted apply; the raft log replays the rest"
        );
        Ok(Self {
            engine,
            applied,
            membership,
            snapshots,
            applied_tx,
            fatal,
            users,
            watchers,
            durable,
        })
    }

    /// Writes `pending` with the applied id and membership as of `applied`.
    async fn flush(
        &mut self,
        pending: PendingApply,
        applied: LogId,
    ) -> Result<(), RaftStorageError> {
        let subject = ErrorSubject::Apply(applied);
        let appended = pending.appended;
        let mut batch = pending.batch;
        put_applied_state(&mut batch, Some(applied), &self.membership)
            .map_err(|e| self.fatal.fail(subject.clone(), ErrorVerb::Write, e))?;
        let written = if pending.bytes <= INLINE_APPLY_BYTES {
            self.engine.write(batch, Durability::Unlogged)
        } else {
            in_place(|| self.engine.write(batch, Durability::Unlogged))
        };
        written.map_err(|e| self.fatal.fail(subject, ErrorVerb::Write, e))?;
        self.applied = Some(applied);
        self.applied_tx.send_replace(applied.index);
        self.watchers.notify(&appended);
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<CommandResponse>>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut pending = PendingApply::default();
        let mut last = None;
        let mut responses = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            match entry.payload {
                EntryPayload::Blank => responses.push(Vec::new()),
                EntryPayload::Normal(batch) => {
                    let mut results = Vec::with_capacity(batch.commands.len());
                    for command in batch.commands {
                        let result = pending
                            .apply_command(&*self.engine, command, log_id.index)
                            .map_err(|e| {
                                self.fatal
                                    .fail(ErrorSubject::Apply(log_id), ErrorVerb::Read, e)
                            })?;
                        results.push(CommandResponse { result });
                    }
                    responses.push(results);
                }
                EntryPayload::Membership(membership) => {
                    self.membership = StoredMembership::new(Some(log_id), membership);
                    responses.push(Vec::new());
                }
            }
            last = Some(log_id);
            if pending.bytes >= APPLY_FLUSH_BYTES {
                self.flush(std::mem::take(&mut pending), log_id).await?;
            }
        }
        // The applied id is written even for an empty batch: blank and
        // membership entries advance it too.
        if let Some(last) = last {
            if self.applied != Some(last) {
                self.flush(pending, last).await?;
            }
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            engine: self.engine.clone(),
            snapshots: self.snapshots.clone(),
            fatal: self.fatal.clone(),
            _users: self.users.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, RaftStorageError> {
        let path = self.snapshots.receive_path();
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| {
                let e = EngineError::Storage(format!("create {}: {e}", path.display()));
                self.fatal
                    .fail(ErrorSubject::Snapshot(None), ErrorVerb::Write, e)
            })?;
        // The handle is all openraft needs; unlinking now leaves no file
        // behind if the transfer is abandoned.
        if let Err(e) = tokio::fs::remove_file(&path).await {
            tracing::warn!(path = %path.display(), error = %e, "unlink received snapshot file");
        }
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), RaftStorageError> {
        use tokio::io::AsyncSeekExt;

        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let path = self.snapshots.new_path(meta);
        let tmp = path.with_extension("tmp");
        let copied: Result<(), std::io::Error> = async {
            snapshot.seek(std::io::SeekFrom::Start(0)).await?;
            let mut out = tokio::fs::File::create(&tmp).await?;
            tokio::io::copy(&mut *snapshot, &mut out).await?;
            out.sync_all().await
        }
        .await;
        copied.map_err(|e| {
            let e = EngineError::Storage(format!("copy snapshot to {}: {e}", tmp.display()));
            self.fatal.fail(subject.clone(), ErrorVerb::Write, e)
        })?;

        let engine = self.engine.clone();
        let expected = meta.clone();
        let installed = blocking(move || {
            snapshot::publish(&tmp, &path)?;
            install_from_file(&*engine, &path, &expected)?;
            Ok(StoredSnapshot {
                meta: expected,
                path,
            })
        })
        .await
        .map_err(|e| self.fatal.fail(subject, ErrorVerb::Write, e))?;

        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        // The install's last batch was a `Sync` write.
        self.durable.mark(meta.last_log_id.map_or(0, |id| id.index));
        self.snapshots.set_current(installed);
        self.watchers.wake_all();
        self.applied_tx
            .send_replace(meta.last_log_id.map_or(0, |id| id.index));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::Snapshot<TypeConfig>>, RaftStorageError> {
        let Some(current) = self.snapshots.current() else {
            return Ok(None);
        };
        let file = tokio::fs::File::open(&current.path).await.map_err(|e| {
            let e = EngineError::Storage(format!("open {}: {e}", current.path.display()));
            self.fatal.fail(
                ErrorSubject::Snapshot(Some(current.meta.signature())),
                ErrorVerb::Read,
                e,
            )
        })?;
        Ok(Some(openraft::Snapshot {
            meta: current.meta,
            snapshot: Box::new(file),
        }))
    }
}

/// Adds the applied id and membership to `batch`.
fn put_applied_state(
    batch: &mut WriteBatch,
    applied: Option<LogId>,
    membership: &StoredMembership,
) -> Result<(), EngineError> {
    batch.put(Keyspace::Meta, meta_key::APPLIED, encode(&applied)?);
    batch.put(Keyspace::Meta, meta_key::MEMBERSHIP, encode(membership)?);
    Ok(())
}

/// Replaces `Data` with the pairs of the snapshot file at `path`.
///
/// The file is verified completely first. The first batch deletes all data
/// and records the file name under `INSTALLING`; the last batch records the
/// applied id and membership, clears the marker and is written `Sync`. If the
/// node crashes in between, `StateMachine::open` installs the file again.
fn install_from_file(
    engine: &dyn Engine,
    path: &std::path::Path,
    meta: &SnapshotMeta,
) -> Result<(), EngineError> {
    let header = SnapshotReader::open(path)?;
    if header.meta().last_log_id != meta.last_log_id {
        return Err(EngineError::Corrupt(format!(
            "snapshot file {} holds log id {:?}, expected {:?}",
            path.display(),
            header.meta().last_log_id,
            meta.last_log_id
        )));
    }
    header.verify()?;

    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| EngineError::Storage(format!("bad snapshot path {}", path.display())))?;
    let mut batch = WriteBatch::new();
    batch.put(
        Keyspace::Meta,
        meta_key::INSTALLING,
        encode(&file_name.to_string())?,
    );
    batch.delete_range(Keyspace::Data, Vec::new(), DATA_END.to_vec());
    engine.write(batch, Durability::Buffered)?;
    // Keys at or beyond DATA_END are not covered by the range delete.
    let mut beyond = KeyRange {
        start: Bound::Included(DATA_END.to_vec()),
        end: Bound::Unbounded,
    };
    loop {
        let page = engine.scan(Keyspace::Data, &beyond, INSTALL_BATCH_PAIRS)?;
        let Some((last, _)) = page.last() else { break };
        beyond = beyond.resume_after(last);
        let mut batch = WriteBatch::new();
        for (key, _) in &page {
            batch.delete(Keyspace::Data, key.clone());
        }
        engine.write(batch, Durability::Buffered)?;
    }

    let mut reader = SnapshotReader::open(path)?;
    let mut batch = WriteBatch::new();
    let mut bytes = 0;
    while let Some((key, value)) = reader.next_pair()? {
        bytes += key.len() + value.len();
        batch.put(Keyspace::Data, key, value);
        if bytes >= INSTALL_BATCH_BYTES || batch.len() >= INSTALL_BATCH_PAIRS {
            engine.write(std::mem::take(&mut batch), Durability::Buffered)?;
            bytes = 0;
        }
    }
    batch.put(
        Keyspace::Meta,
        meta_key::APPLIED,
        encode(&meta.last_log_id)?,
    );
    batch.put(
        Keyspace::Meta,
        meta_key::MEMBERSHIP,
        encode(&meta.last_membership)?,
    );
    batch.delete(Keyspace::Meta, meta_key::INSTALLING);
    engine.write(batch, Durability::Sync)
}

/// Builds snapshots from an engine snapshot, in parallel with apply.
pub(crate) struct SnapshotBuilder {
    engine: Arc<dyn Engine>,
    snapshots: Arc<SnapshotDir>,
    fatal: FatalSlot,
    _users: StorageUsers,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<openraft::Snapshot<TypeConfig>, RaftStorageError> {
        let source = self.engine.snapshot();
        let snapshots = self.snapshots.clone();
        let built = blocking(move || {
            // Data, applied id and membership from one engine snapshot: they
            // were written in the same batches, so they agree.
            let last_log_id =
                read_meta_snapshot::<Option<LogId>>(&*source, meta_key::APPLIED)?.flatten();
            let last_membership =
                read_meta_snapshot::<StoredMembership>(&*source, meta_key::MEMBERSHIP)?
                    .unwrap_or_default();
            let mut meta = SnapshotMeta { last_log_id, last_membership, snapshot_id: String::new() };
            let path = snapshots.new_path(&meta);
            meta.snapshot_id = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            let pairs = snapshot::write_file(&path, &meta, &*source)?;
            tracing::info!(path = %path.display(), pairs, last_log_id = ?meta.last_log_id, "built snapshot");
            Ok(StoredSnapshot { meta, path })
        })
        .await
        .map_err(|e| self.fatal.fail(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;

        // Open before publishing as current, so a newer snapshot replacing
        // (and unlinking) this one cannot make the open fail.
        let file = tokio::fs::File::open(&built.path).await.map_err(|e| {
            let e = EngineError::Storage(format!("open {}: {e}", built.path.display()));
            self.fatal
                .fail(ErrorSubject::Snapshot(None), ErrorVerb::Read, e)
        })?;
        let meta = built.meta.clone();
        self.snapshots.set_current(built);
        Ok(openraft::Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::command::Mutation;
    use openraft::{CommittedLeaderId, Membership};
    use sluice_engine::MemoryEngine;

    use super::*;
    use crate::command::CommandBatch;
    use crate::log_store::read_meta_snapshot;

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn entry(index: u64, commands: Vec<Vec<Mutation>>) -> Entry {
        let commands = commands
            .into_iter()
            .map(|mutations| Command { mutations })
            .collect();
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(CommandBatch { commands }),
        }
    }

    fn put(key: &str, value: &str) -> Mutation {
        Mutation::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    fn insert(key: &str, value: &str) -> Mutation {
        Mutation::Insert {
            key: key.into(),
            value: value.into(),
        }
    }

    async fn open(engine: &Arc<dyn Engine>, dir: &tempfile::TempDir) -> StateMachine {
        let (tx, rx) = watch::channel(0);
        StateMachine::open(
            engine.clone(),
            dir.path().join("snapshots"),
            tx,
            FatalSlot::default(),
            StorageUsers::default(),
            Arc::default(),
            DurableApply::new(rx),
        )
        .await
        .unwrap()
    }

    fn data(engine: &dyn Engine) -> Vec<(Vec<u8>, Vec<u8>)> {
        engine
            .scan(Keyspace::Data, &KeyRange::all(), usize::MAX)
            .unwrap()
    }

    /// Entries of one `apply` call land in one batch, yet each command sees
    /// the ones before it, and a rejected command writes nothing while the
    /// applied id (persisted with the data) still advances past it.
    #[tokio::test]
    async fn applied_index_persisted_with_data() {
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn Engine> = MemoryEngine::new();
        let mut sm = open(&engine, &dir).await;
        let responses = sm
            .apply(vec![
                entry(
                    1,
                    vec![
                        vec![insert("a", "1")],
                        vec![insert("a", "again"), put("z", "no")],
                    ],
                ),
                Entry {
                    log_id: log_id(2),
                    payload: EntryPayload::Blank,
                },
                entry(
                    3,
                    vec![vec![
                        Mutation::Check {
                            key: "a".into(),
                            expected: Some(b"1".to_vec()),
                        },
                        put("b", "2"),
                    ]],
                ),
            ])
            .await
            .unwrap();
        assert_eq!(responses.len(), 3);
        assert_eq!(responses[0][0].result.as_ref().unwrap().applied_index, 1);
        assert!(matches!(
            responses[0][1].result,
            Err(ApplyError::DuplicateKey { .. })
        ));
        assert!(responses[1].is_empty());
        assert!(responses[2][0].result.is_ok());

        let mut reopened = open(&engine, &dir).await;
        let (applied, _) = reopened.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(3)));
        assert_eq!(
            data(&*engine),
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec())
            ]
        );

        // A rejected command alone still moves the applied id.
        let responses = reopened
            .apply(vec![entry(4, vec![vec![insert("a", "x")]])])
            .await
            .unwrap();
        assert!(responses[0][0].result.is_err());
        let stored: Option<LogId> =
            read_meta_snapshot::<Option<LogId>>(&*engine.snapshot(), meta_key::APPLIED)
                .unwrap()
                .flatten();
        assert_eq!(stored, Some(log_id(4)));
    }

    /// A membership entry is remembered as the applied membership.
    #[tokio::test]
    async fn membership_entry_is_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn Engine> = MemoryEngine::new();
        let mut sm = open(&engine, &dir).await;
        let membership = Membership::new(vec![[1u64].into()], ());
        sm.apply(vec![Entry {
            log_id: log_id(1),
            payload: EntryPayload::Membership(membership.clone()),
        }])
        .await
        .unwrap();
        let (applied, stored) = open(&engine, &dir).await.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1)));
        assert_eq!(stored, StoredMembership::new(Some(log_id(1)), membership));
    }

    async fn filled(dir: &tempfile::TempDir, pairs: usize) -> (Arc<dyn Engine>, StateMachine) {
        let engine: Arc<dyn Engine> = MemoryEngine::new();
        let mut sm = open(&engine, dir).await;
        let membership = Membership::new(vec![[1u64].into()], ());
        sm.apply(vec![Entry {
            log_id: log_id(1),
            payload: EntryPayload::Membership(membership),
        }])
        .await
        .unwrap();
        let commands = (0..pairs)
            .map(|i| vec![put(&format!("key{i:06}"), &format!("v{i}"))])
            .collect();
        sm.apply(vec![entry(2, commands)]).await.unwrap();
        (engine, sm)
    }

    /// A snapshot built from one state machine and installed into a fresh
    /// one (with unrelated data) reproduces its data, applied id and membership.
    #[tokio::test]
    async fn snapshot_built_and_installed_into_fresh_state_machine() {
        let source_dir = tempfile::tempdir().unwrap();
        let (source_engine, mut source) = filled(&source_dir, 25_000).await;
        let built = source
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(built.meta.last_log_id, Some(log_id(2)));
        let current = source.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, built.meta);

        let target_dir = tempfile::tempdir().unwrap();
        let target_engine: Arc<dyn Engine> = MemoryEngine::new();
        let mut stale = WriteBatch::new();
        stale.put(Keyspace::Data, b"stale".to_vec(), b"x".to_vec());
        stale.put(
            Keyspace::Data,
            vec![0xff; 20],
            b"beyond the range delete".to_vec(),
        );
        target_engine.write(stale, Durability::Sync).unwrap();
        let mut target = open(&target_engine, &target_dir).await;
        // As openraft does for a received snapshot: data arrives in a file
        // from `begin_receiving_snapshot`.
        let mut received = target.begin_receiving_snapshot().await.unwrap();
        let mut source_file = current.snapshot;
        tokio::io::copy(&mut *source_file, &mut *received)
            .await
            .unwrap();
        target
            .install_snapshot(&built.meta, received)
            .await
            .unwrap();

        assert_eq!(data(&*target_engine), data(&*source_engine));
        assert_eq!(
            target.applied_state().await.unwrap(),
            source.applied_state().await.unwrap()
        );
        let reopened = open(&target_engine, &target_dir)
            .await
            .applied_state()
            .await
            .unwrap();
        assert_eq!(reopened.0, Some(log_id(2)));
        let kept = target.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(kept.meta, built.meta);

        // The installed state machine keeps applying after the snapshot.
        target
            .apply(vec![entry(3, vec![vec![insert("new", "1")]])])
            .await
            .unwrap();
        assert_eq!(
            target_engine.get(Keyspace::Data, b"new").unwrap(),
            Some(b"1".to_vec())
        );
    }

    /// A node that crashed in the middle of an install finishes it from the
    /// kept snapshot file when it opens.
    #[tokio::test]
    async fn interrupted_install_is_finished_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, mut sm) = filled(&dir, 100).await;
        let built = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let current = sm.snapshots.current().unwrap();
        drop(sm);
        // The crash: Data wiped and the marker set, pairs not yet written.
        let name = current
            .path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let mut batch = WriteBatch::new();
        batch.put(Keyspace::Meta, meta_key::INSTALLING, encode(&name).unwrap());
        batch.delete_range(Keyspace::Data, Vec::new(), DATA_END.to_vec());
        batch.put(Keyspace::Data, b"key000001".to_vec(), b"half".to_vec());
        engine.write(batch, Durability::Sync).unwrap();

        let mut reopened = open(&engine, &dir).await;
        assert_eq!(data(&*engine).len(), 100);
        assert_eq!(
            engine.get(Keyspace::Data, b"key000001").unwrap(),
            Some(b"v1".to_vec())
        );
        assert_eq!(
            engine.get(Keyspace::Meta, meta_key::INSTALLING).unwrap(),
            None
        );
        assert_eq!(
            reopened.applied_state().await.unwrap().0,
            built.meta.last_log_id
        );
    }
}
