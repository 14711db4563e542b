//! The Raft log and vote, stored in the engine.
//!
//! Layout: each entry is postcard-encoded in `Keyspace::RaftLog` under its
//! index as 8 big-endian bytes, so byte order is index order. The vote, the
//! committed log id, the last purged log id and the last log id live in
//! `Keyspace::Meta` (see [`meta_key`]).
//!
//! Durability: [`LogStore::append`] writes all given entries (and the new
//! last log id) in one `Buffered` engine batch, which makes them readable
//! at once, then fsyncs the engine's log and only then calls openraft's
//! flush callback: nothing is reported flushed, hence committed or
//! acknowledged, before its fsync. The fsync runs on the calling worker
//! thread under `block_in_place`, because openraft 0.9's core awaits that
//! callback before it does anything else (`RaftCore::append_to_log`): a
//! flusher thread of its own bought the core no concurrency and cost two
//! thread wake-ups per commit, one to start the fsync and one to resume the
//! core. Group commit happens a level up, in the node's proposal batcher.
//! Revisit this on an openraft upgrade: once the core stops waiting for the
//! callback (later versions move log I/O off the core), an fsync off the
//! core's thread lets it go on, and grouping appends pays again.
//! `save_vote`, `truncate` and `purge` are `Sync` writes.
//! `purge` deletes no entry whose apply is not yet on disk (the state
//! machine writes unlogged; see [`DurableApply`]): it purges up to the
//! persisted apply, starts a persist in the background, and leaves the rest
//! to a later purge.
//! `save_committed` is `Buffered`: a lost committed id only means
//! re-learning it from the leader; the next fsync persists it.
//!
//! [`DurableVote`] mirrors, in memory, the two facts a sole voter's reads
//! rest on (see `Shared::leads_alone` in `node`): the vote as last saved,
//! and the index of the last membership entry appended.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader};
use sluice_engine::{
    Durability, Engine, Error as EngineError, KeyRange, Keyspace, Snapshot, WriteBatch,
};

use crate::state_machine::DurableApply;
use crate::types::{
    blocking, decode, encode, in_place, log_key, meta_key, Entry, FatalSlot, LogId,
    RaftStorageError, StorageUsers, TypeConfig, Vote,
};

/// Entries read per engine scan page.
const READ_PAGE: usize = 256;

/// Greater than every 8-byte log key: the exclusive end of "the whole log".
const LOG_END: [u8; 9] = [0xff; 9];

/// What the log store last made durable about leadership, shared with the
/// node. openraft saves a vote before it answers the vote request that
/// changed it, and hands a membership entry to `append` before it acts on
/// it; so whoever reads these learns of a new term or a new membership no
/// later than any peer could, which openraft's own metrics (published after
/// the fact) do not promise.
#[derive(Default)]
pub(crate) struct DurableVote {
    vote: Mutex<Option<Vote>>,
    /// The index of the last membership entry appended since the node
    /// started (0: none); one the metrics do not show yet is newer than
    /// what they describe.
    membership_appended: AtomicU64,
}

impl DurableVote {
    pub(crate) fn vote(&self) -> Option<Vote> {
        *self.vote.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_vote(&self, vote: Vote) {
        *self.vote.lock().unwrap_or_else(|p| p.into_inner()) = Some(vote);
    }

    pub(crate) fn membership_appended(&self) -> u64 {
        self.membership_appended.load(Ordering::SeqCst)
    }
}

/// Reads log entries; cheap to clone (one per replication stream later).
#[derive(Clone)]
pub(crate) struct LogReader {
    engine: Arc<dyn Engine>,
    fatal: FatalSlot,
    _users: StorageUsers,
}

impl LogReader {
    fn read_range(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry>, RaftStorageError> {
        let end_key = match end {
            Some(end) if end <= start => return Ok(Vec::new()),
            Some(end) => Bound::Excluded(log_key(end).to_vec()),
            None => Bound::Unbounded,
        };
        let mut range = KeyRange {
            start: Bound::Included(log_key(start).to_vec()),
            end: end_key,
        };
        let mut entries = Vec::new();
        loop {
            let page = self
                .engine
                .scan(Keyspace::RaftLog, &range, READ_PAGE)
                .map_err(|e| {
                    self.fatal
                        .fail(ErrorSubject::LogIndex(start), ErrorVerb::Read, e)
                })?;
            let full = page.len() == READ_PAGE;
            for (key, value) in &page {
                let entry: Entry = decode(value, "raft log entry").map_err(|e| {
                    self.fatal
                        .fail(ErrorSubject::LogIndex(start), ErrorVerb::Read, e)
                })?;
                if key.as_slice() != log_key(entry.log_id.index) {
                    let e = EngineError::Corrupt(format!(
                        "raft log entry {} stored under key {key:?}",
                        entry.log_id
                    ));
                    return Err(self.fatal.fail(
                        ErrorSubject::Log(entry.log_id),
                        ErrorVerb::Read,
                        e,
                    ));
                }
                entries.push(entry);
            }
            match page.last() {
                Some((last, _)) if full => range = range.resume_after(last),
                _ => return Ok(entries),
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.checked_add(1),
            Bound::Excluded(&e) => Some(e),
            Bound::Unbounded => None,
        };
        self.read_range(start, end)
    }
}

/// The log store openraft drives. Only this type writes the `RaftLog`
/// keyspace and the `raft/*` meta keys, so it keeps the log bounds in memory.
pub(crate) struct LogStore {
    reader: LogReader,
    engine: Arc<dyn Engine>,
    last_log_id: Option<LogId>,
    /// The purged end of the log, shared with the purge that follows a
    /// persist of the applied state.
    purged: Arc<Mutex<PurgeState>>,
    /// Shared with `RaftNode::status`: openraft's metrics have no committed index.
    committed_index: Arc<AtomicU64>,
    durable_vote: Arc<DurableVote>,
    durable_apply: Arc<DurableApply>,
    fatal: FatalSlot,
}

impl LogStore {
    pub(crate) fn open(
        engine: Arc<dyn Engine>,
        committed_index: Arc<AtomicU64>,
        durable_vote: Arc<DurableVote>,
        durable_apply: Arc<DurableApply>,
        fatal: FatalSlot,
        users: StorageUsers,
    ) -> Result<Self, EngineError> {
        if let Some(vote) = read_meta::<Vote>(&*engine, meta_key::VOTE)? {
            durable_vote.set_vote(vote);
        }
        let last_log_id = read_meta::<Option<LogId>>(&*engine, meta_key::LAST_LOG)?.flatten();
        let last_purged = read_meta::<Option<LogId>>(&*engine, meta_key::LAST_PURGED)?.flatten();
        let committed = read_meta::<Option<LogId>>(&*engine, meta_key::COMMITTED)?.flatten();
        committed_index.store(committed.map_or(0, |c| c.index), Ordering::Relaxed);
        let reader = LogReader {
            engine: engine.clone(),
            fatal: fatal.clone(),
            _users: users,
        };
        Ok(Self {
            reader,
            engine,
            last_log_id,
            purged: Arc::new(Mutex::new(PurgeState {
                last: last_purged,
                wanted: last_purged,
            })),
            committed_index,
            durable_vote,
            durable_apply,
            fatal,
        })
    }

    async fn write_sync(
        &self,
        batch: WriteBatch,
        subject: ErrorSubject<u64>,
    ) -> Result<(), RaftStorageError> {
        let engine = self.engine.clone();
        blocking(move || engine.write(batch, Durability::Sync))
            .await
            .map_err(|e| self.fatal.fail(subject, ErrorVerb::Write, e))
    }

    /// The log id of the entry at `index`, or the last purged id if `index`
    /// is at or below it.
    fn log_id_at(&self, index: u64) -> Result<Option<LogId>, EngineError> {
        if let Some(purged) = self.last_purged() {
            if index <= purged.index {
                return Ok(Some(purged));
            }
        }
        match self.engine.get(Keyspace::RaftLog, &log_key(index))? {
            Some(bytes) => Ok(Some(decode::<Entry>(&bytes, "raft log entry")?.log_id)),
            None => Ok(None),
        }
    }
}

/// How far the log is purged, and how far openraft asked for.
#[derive(Debug)]
struct PurgeState {
    last: Option<LogId>,
    wanted: Option<LogId>,
}

impl LogStore {
    fn last_purged(&self) -> Option<LogId> {
        lock(&self.purged).last
    }
}

fn lock(purged: &Mutex<PurgeState>) -> std::sync::MutexGuard<'_, PurgeState> {
    purged
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Deletes the log up to the purge openraft asked for, but no entry past
/// `persisted`: the apply of those is not on disk yet (see [`DurableApply`]).
/// Held under the lock, so the log store and the purge after a persist never
/// interleave.
fn purge_persisted(
    engine: &dyn Engine,
    purged: &Mutex<PurgeState>,
    persisted: u64,
) -> Result<(), EngineError> {
    let mut state = lock(purged);
    let Some(wanted) = state.wanted else {
        return Ok(());
    };
    let upto = if wanted.index <= persisted {
        wanted
    } else if state.last.is_some_and(|last| persisted <= last.index) {
        return Ok(());
    } else {
        match engine.get(Keyspace::RaftLog, &log_key(persisted))? {
            Some(bytes) => decode::<Entry>(&bytes, "raft log entry")?.log_id,
            None => return Ok(()),
        }
    };
    if Some(upto) <= state.last {
        return Ok(());
    }
    let mut batch = WriteBatch::new();
    match upto.index.checked_add(1) {
        Some(end) => batch.delete_range(Keyspace::RaftLog, log_key(0), log_key(end)),
        None => batch.delete_range(Keyspace::RaftLog, log_key(0), LOG_END),
    }
    batch.put(Keyspace::Meta, meta_key::LAST_PURGED, encode(&Some(upto))?);
    engine.write(batch, Durability::Sync)?;
    state.last = Some(upto);
    Ok(())
}

fn read_meta<T: serde::de::DeserializeOwned>(
    engine: &dyn Engine,
    key: &[u8],
) -> Result<Option<T>, EngineError> {
    match engine.get(Keyspace::Meta, key)? {
        Some(bytes) => Ok(Some(decode(
            &bytes,
            std::str::from_utf8(key).unwrap_or("meta"),
        )?)),
        None => Ok(None),
    }
}

pub(crate) fn read_meta_snapshot<T: serde::de::DeserializeOwned>(
    snapshot: &dyn Snapshot,
    key: &[u8],
) -> Result<Option<T>, EngineError> {
    match snapshot.get(Keyspace::Meta, key)? {
        Some(bytes) => Ok(Some(decode(
            &bytes,
            std::str::from_utf8(key).unwrap_or("meta"),
        )?)),
        None => Ok(None),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        self.reader.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last_purged = self.last_purged();
        let last_log_id = std::cmp::max(self.last_log_id, last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), RaftStorageError> {
        let bytes =
            encode(vote).map_err(|e| self.fatal.fail(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        let mut batch = WriteBatch::new();
        batch.put(Keyspace::Meta, meta_key::VOTE, bytes);
        // Before the write: a reader must not rely on the old vote while
        // the new one may already be on disk.
        self.durable_vote.set_vote(*vote);
        self.write_sync(batch, ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, RaftStorageError> {
        read_meta(&*self.engine, meta_key::VOTE)
            .map_err(|e| self.fatal.fail(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        let bytes = encode(&committed)
            .map_err(|e| self.fatal.fail(ErrorSubject::Store, ErrorVerb::Write, e))?;
        let mut batch = WriteBatch::new();
        batch.put(Keyspace::Meta, meta_key::COMMITTED, bytes);
        // Small and in memory only until the next `Sync` write: not worth a
        // trip to the blocking pool on every commit.
        self.engine
            .write(batch, Durability::Buffered)
            .map_err(|e| self.fatal.fail(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.committed_index
            .fetch_max(committed.map_or(0, |c| c.index), Ordering::Relaxed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        Ok(
            read_meta::<Option<LogId>>(&*self.engine, meta_key::COMMITTED)
                .map_err(|e| self.fatal.fail(ErrorSubject::Store, ErrorVerb::Read, e))?
                .flatten(),
        )
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::new();
        let mut last = None;
        for entry in entries {
            let bytes = encode(&entry).map_err(|e| {
                self.fatal
                    .fail(ErrorSubject::Log(entry.log_id), ErrorVerb::Write, e)
            })?;
            batch.put(Keyspace::RaftLog, log_key(entry.log_id.index), bytes);
            if matches!(entry.payload, openraft::EntryPayload::Membership(_)) {
                self.durable_vote
                    .membership_appended
                    .fetch_max(entry.log_id.index, Ordering::SeqCst);
            }
            last = Some(entry.log_id);
        }
        let Some(last) = last else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let last_bytes = encode(&Some(last)).map_err(|e| {
            self.fatal
                .fail(ErrorSubject::Log(last), ErrorVerb::Write, e)
        })?;
        batch.put(Keyspace::Meta, meta_key::LAST_LOG, last_bytes);

        // A buffered write only reaches the engine's log file: no disk wait.
        if let Err(e) = self.engine.write(batch, Durability::Buffered) {
            let e = self
                .fatal
                .fail(ErrorSubject::Log(last), ErrorVerb::Write, e);
            callback.log_io_completed(Err(io::Error::other(e.to_string())));
            return Err(e);
        }
        self.last_log_id = Some(last);
        let synced = in_place(|| self.engine.sync()).map_err(|e| {
            self.fatal
                .fail(ErrorSubject::Log(last), ErrorVerb::Write, e)
        });
        let reported = synced
            .as_ref()
            .map(|_| ())
            .map_err(|e| io::Error::other(e.to_string()));
        callback.log_io_completed(reported);
        synced
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        let new_last = match log_id.index.checked_sub(1) {
            Some(prev) => self.log_id_at(prev).map_err(|e| {
                self.fatal
                    .fail(ErrorSubject::Log(log_id), ErrorVerb::Read, e)
            })?,
            None => None,
        };
        let new_last = std::cmp::max(new_last, self.last_purged());
        let mut batch = WriteBatch::new();
        batch.delete_range(Keyspace::RaftLog, log_key(log_id.index), LOG_END);
        let bytes = encode(&new_last).map_err(|e| {
            self.fatal
                .fail(ErrorSubject::Log(log_id), ErrorVerb::Delete, e)
        })?;
        batch.put(Keyspace::Meta, meta_key::LAST_LOG, bytes);
        self.write_sync(batch, ErrorSubject::Log(log_id)).await?;
        self.last_log_id = new_last;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        {
            let mut state = lock(&self.purged);
            state.wanted = std::cmp::max(state.wanted, Some(log_id));
        }
        if self.durable_apply.persisted() < log_id.index {
            // The rest follows once what is applied now is on disk.
            let (engine, purged, durable) = (
                self.engine.clone(),
                self.purged.clone(),
                self.durable_apply.clone(),
            );
            self.durable_apply
                .request_persist(self.engine.clone(), move || {
                    if let Err(e) = purge_persisted(&*engine, &purged, durable.persisted()) {
                        tracing::error!(error = %e, "purge the raft log after a persist");
                    }
                });
        }
        let (engine, purged, persisted) = (
            self.engine.clone(),
            self.purged.clone(),
            self.durable_apply.persisted(),
        );
        blocking(move || purge_persisted(&*engine, &purged, persisted))
            .await
            .map_err(|e| {
                self.fatal
                    .fail(ErrorSubject::Log(log_id), ErrorVerb::Delete, e)
            })?;
        let last_purged = self.last_purged();
        if self.last_log_id < last_purged {
            self.last_log_id = last_purged;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};
    use sluice_engine::MemoryEngine;

    use super::*;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn blank(term: u64, index: u64) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Blank,
        }
    }

    /// A store whose purges are not held back by the state machine.
    fn all_applies_persisted() -> Arc<DurableApply> {
        let durable = DurableApply::new(tokio::sync::watch::channel(0).1);
        durable.mark(u64::MAX);
        durable
    }

    fn store(engine: &Arc<dyn Engine>) -> LogStore {
        LogStore::open(
            engine.clone(),
            Arc::new(AtomicU64::new(0)),
            Arc::default(),
            all_applies_persisted(),
            FatalSlot::default(),
            StorageUsers::default(),
        )
        .expect("open log store")
    }

    /// Writes entries the way `append` does, without an openraft callback
    /// (only openraft can build one).
    async fn put_entries(store: &mut LogStore, entries: Vec<Entry>) {
        let mut batch = WriteBatch::new();
        let last = entries.last().map(|e| e.log_id);
        for entry in entries {
            batch.put(
                Keyspace::RaftLog,
                log_key(entry.log_id.index),
                encode(&entry).unwrap(),
            );
        }
        batch.put(Keyspace::Meta, meta_key::LAST_LOG, encode(&last).unwrap());
        store.write_sync(batch, ErrorSubject::Logs).await.unwrap();
        store.last_log_id = last;
    }

    fn memory_engine() -> Arc<dyn Engine> {
        MemoryEngine::new()
    }

    /// Truncation removes the suffix and purge the prefix, and both survive a
    /// reopen: the log state is rebuilt from `Meta`.
    #[tokio::test]
    async fn truncate_and_purge_persist_log_bounds() {
        let engine = memory_engine();
        let mut store = store(&engine);
        put_entries(&mut store, (1..=10).map(|i| blank(1, i)).collect()).await;

        store.truncate(log_id(1, 8)).await.unwrap();
        store.purge(log_id(1, 3)).await.unwrap();

        let mut reopened = super::tests::store(&engine);
        let state = reopened.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 7)));
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
        let entries = reopened.try_get_log_entries(0..100).await.unwrap();
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, vec![4, 5, 6, 7]);
    }

    /// An entry whose apply is not yet on disk is the only record of it: a
    /// purge stops at the persisted apply.
    #[tokio::test]
    async fn purge_keeps_entries_whose_apply_is_not_persisted() {
        let engine = memory_engine();
        let mut store = store(&engine);
        put_entries(&mut store, (1..=10).map(|i| blank(1, i)).collect()).await;
        lock(&store.purged).wanted = Some(log_id(1, 8));

        purge_persisted(&*engine, &store.purged, 4).unwrap();
        assert_eq!(store.last_purged(), Some(log_id(1, 4)));
        let first = store.try_get_log_entries(0..100).await.unwrap()[0].log_id;
        assert_eq!(first, log_id(1, 5));
        purge_persisted(&*engine, &store.purged, 9).unwrap();
        assert_eq!(store.last_purged(), Some(log_id(1, 8)));
        let reopened = super::tests::store(&engine);
        assert_eq!(reopened.last_purged(), Some(log_id(1, 8)));
    }

    /// A purge held back by the applied state finishes by itself once a
    /// persist covers it: openraft does not ask twice.
    #[tokio::test]
    async fn held_back_purge_finishes_after_the_persist() {
        let engine = memory_engine();
        let (applied_tx, applied_rx) = tokio::sync::watch::channel(0);
        let durable = DurableApply::new(applied_rx);
        durable.mark(4);
        let mut store = LogStore::open(
            engine.clone(),
            Arc::new(AtomicU64::new(0)),
            Arc::default(),
            durable.clone(),
            FatalSlot::default(),
            StorageUsers::default(),
        )
        .unwrap();
        put_entries(&mut store, (1..=10).map(|i| blank(1, i)).collect()).await;
        applied_tx.send_replace(9);

        store.purge(log_id(1, 8)).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.last_purged() != Some(log_id(1, 8)) {
            assert!(std::time::Instant::now() < deadline, "purge never finished");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(durable.persisted() >= 9);
    }

    /// Purging everything leaves the last purged id as the last log id, which
    /// openraft needs to continue the log after a snapshot.
    #[tokio::test]
    async fn purge_all_keeps_last_log_id() {
        let engine = memory_engine();
        let mut store = store(&engine);
        put_entries(&mut store, (1..=3).map(|i| blank(2, i)).collect()).await;
        store.purge(log_id(2, 3)).await.unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(2, 3)));
        assert!(store.try_get_log_entries(..).await.unwrap().is_empty());
    }

    /// Reads page through more entries than one scan page returns.
    #[tokio::test]
    async fn reads_span_several_pages() {
        let engine = memory_engine();
        let mut store = store(&engine);
        let n = READ_PAGE as u64 * 2 + 7;
        put_entries(&mut store, (1..=n).map(|i| blank(1, i)).collect()).await;
        let entries = store.try_get_log_entries(1..=n).await.unwrap();
        assert_eq!(entries.len() as u64, n);
        assert!(entries.iter().zip(1..).all(|(e, i)| e.log_id.index == i));
    }

    /// The vote is read back exactly as saved, across a reopen.
    #[tokio::test]
    async fn vote_round_trips() {
        let engine = memory_engine();
        let mut store = store(&engine);
        assert_eq!(store.read_vote().await.unwrap(), None);
        let vote = Vote::new_committed(3, 1);
        store.save_vote(&vote).await.unwrap();
        assert_eq!(
            super::tests::store(&engine).read_vote().await.unwrap(),
            Some(vote)
        );
    }
}
