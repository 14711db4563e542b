//! Scenario tests of a one-node Raft group on the memory engine and on
//! RocksDB in a temporary directory.

use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_engine::{
    Durability, Engine, Error as EngineError, KeyRange, Keyspace, KvPair, MemoryEngine,
    RocksConfig, RocksEngine, Snapshot, WriteBatch,
};
use sluice_raftstore::{ApplyError, ApplyOutcome, Command, Error, Mutation, RaftConfig, RaftNode};
use tempfile::TempDir;

fn config(dir: &TempDir) -> RaftConfig {
    RaftConfig::new(1, dir.path().join("raft"))
}

fn open_rocks(dir: &TempDir) -> Arc<dyn Engine> {
    RocksEngine::open(RocksConfig::new(dir.path().join("db"))).expect("open rocksdb")
}

async fn memory_node() -> (Arc<RaftNode>, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let node = RaftNode::start(MemoryEngine::new(), config(&dir))
        .await
        .expect("start node");
    (node, dir)
}

async fn rocks_node(dir: &TempDir) -> Arc<RaftNode> {
    RaftNode::start(open_rocks(dir), config(dir))
        .await
        .expect("start node")
}

fn insert(key: &str, value: &str) -> Mutation {
    Mutation::Insert {
        key: key.into(),
        value: value.into(),
    }
}

fn put(key: &str, value: &str) -> Mutation {
    Mutation::Put {
        key: key.into(),
        value: value.into(),
    }
}

fn command(mutations: Vec<Mutation>) -> Command {
    Command { mutations }
}

fn get(snapshot: &dyn Snapshot, key: &str) -> Option<Vec<u8>> {
    snapshot.get(Keyspace::Data, key.as_bytes()).unwrap()
}

fn all_data(snapshot: &dyn Snapshot) -> Vec<KvPair> {
    snapshot
        .scan(Keyspace::Data, &KeyRange::all(), usize::MAX)
        .unwrap()
}

/// Runs `scenario` on a memory node and on a RocksDB node.
macro_rules! on_both_engines {
    ($memory:ident, $rocks:ident, $scenario:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $memory() {
            let (node, _dir) = memory_node().await;
            $scenario(&node).await;
            node.shutdown().await.unwrap();
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $rocks() {
            let dir = tempfile::tempdir().unwrap();
            let node = rocks_node(&dir).await;
            $scenario(&node).await;
            node.shutdown().await.unwrap();
        }
    };
}

/// A command's writes are visible to linearizable reads once `propose`
/// returns, and its outcome counts what it inserted.
async fn propose_applies_and_reports_outcome(node: &Arc<RaftNode>) {
    let before = node.status().applied_index;
    let outcome = node
        .propose(command(vec![
            insert("a", "1"),
            insert("b", "2"),
            put("c", "3"),
            Mutation::InsertIfAbsent {
                key: "d".into(),
                value: "4".into(),
            },
            Mutation::Delete { key: "c".into() },
        ]))
        .await
        .unwrap();
    assert_eq!(outcome.inserted, 3);
    assert_eq!(outcome.ignored, 0);
    assert!(outcome.applied_index > before);

    let snapshot = node.read_snapshot().await.unwrap();
    assert_eq!(get(&*snapshot, "a"), Some(b"1".to_vec()));
    assert_eq!(get(&*snapshot, "b"), Some(b"2".to_vec()));
    assert_eq!(get(&*snapshot, "c"), None);
    assert_eq!(get(&*snapshot, "d"), Some(b"4".to_vec()));
    assert!(*node.applied_watch().borrow() >= outcome.applied_index);

    // The leader-change counter is kept by a task that watches openraft's
    // metrics; on a busy machine it may not have run yet.
    for _ in 0..200 {
        if node.status().leader_changes > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let status = node.status();
    assert_eq!(status.role, sluice_raftstore::Role::Leader);
    assert_eq!(status.leader_id, Some(1));
    assert!(status.applied_index >= outcome.applied_index);
    assert!(status.committed_index >= outcome.applied_index);
    assert!(status.last_log_index >= outcome.applied_index);
    assert_eq!(status.leader_changes, 1);
    assert_eq!(status.proposals, 1);
    assert_eq!(status.proposal_failures, 0);
}
on_both_engines!(
    propose_applies_and_reports_outcome_memory,
    propose_applies_and_reports_outcome_rocks,
    propose_applies_and_reports_outcome
);

/// An `Insert` of an existing key, or of a key inserted earlier in the same
/// command, rejects the whole command: none of its writes land, and the node
/// keeps accepting commands.
async fn duplicate_key_rejects_whole_command(node: &Arc<RaftNode>) {
    node.propose(command(vec![insert("k1", "v1")]))
        .await
        .unwrap();

    let err = node
        .propose(command(vec![
            insert("k2", "v2"),
            put("k3", "v3"),
            insert("k1", "other"),
        ]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Apply(ApplyError::DuplicateKey { ref key }) if key == b"k1"),
        "{err}"
    );
    assert!(!err.is_retryable() && !err.is_fatal());

    let err = node
        .propose(command(vec![insert("k4", "a"), insert("k4", "b")]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Apply(ApplyError::DuplicateKey { ref key }) if key == b"k4"),
        "{err}"
    );

    let snapshot = node.read_snapshot().await.unwrap();
    assert_eq!(get(&*snapshot, "k1"), Some(b"v1".to_vec()));
    assert_eq!(get(&*snapshot, "k2"), None);
    assert_eq!(get(&*snapshot, "k3"), None);
    assert_eq!(get(&*snapshot, "k4"), None);

    node.propose(command(vec![insert("k2", "v2")]))
        .await
        .unwrap();
    assert_eq!(
        get(&*node.read_snapshot().await.unwrap(), "k2"),
        Some(b"v2".to_vec())
    );
    // Rejections at apply are answers, not failures of the proposal.
    assert_eq!(node.status().proposal_failures, 0);
}
on_both_engines!(
    duplicate_key_rejects_whole_command_memory,
    duplicate_key_rejects_whole_command_rocks,
    duplicate_key_rejects_whole_command
);

/// `Check` compares against the value as of its place in the command
/// (earlier puts, deletes and range deletes included) and rejects the whole
/// command on a mismatch.
async fn check_conflict_rejects_command(node: &Arc<RaftNode>) {
    node.propose(command(vec![put("row", "v1"), put("r2", "x")]))
        .await
        .unwrap();

    let err = node
        .propose(command(vec![
            put("other", "written?"),
            Mutation::Check {
                key: "row".into(),
                expected: Some(b"v0".to_vec()),
            },
        ]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Apply(ApplyError::Conflict { ref key }) if key == b"row"),
        "{err}"
    );
    assert_eq!(get(&*node.read_snapshot().await.unwrap(), "other"), None);

    node.propose(command(vec![
        Mutation::Check {
            key: "row".into(),
            expected: Some(b"v1".to_vec()),
        },
        put("row", "v2"),
        Mutation::Check {
            key: "row".into(),
            expected: Some(b"v2".to_vec()),
        },
        Mutation::DeleteRange {
            start: b"r".to_vec(),
            end: b"s".to_vec(),
        },
        Mutation::Check {
            key: "row".into(),
            expected: None,
        },
        Mutation::Check {
            key: "r2".into(),
            expected: None,
        },
        put("row", "v3"),
    ]))
    .await
    .unwrap();
    let snapshot = node.read_snapshot().await.unwrap();
    assert_eq!(get(&*snapshot, "row"), Some(b"v3".to_vec()));
    assert_eq!(get(&*snapshot, "r2"), None);

    let err = node
        .propose(command(vec![Mutation::Check {
            key: "missing".into(),
            expected: Some(vec![]),
        }]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Apply(ApplyError::Conflict { .. })),
        "{err}"
    );
}
on_both_engines!(
    check_conflict_rejects_command_memory,
    check_conflict_rejects_command_rocks,
    check_conflict_rejects_command
);

/// `InsertIfAbsent` skips keys that exist (also ones written earlier in the
/// same command) and counts them as ignored.
async fn insert_if_absent_counts_ignored(node: &Arc<RaftNode>) {
    node.propose(command(vec![put("x1", "old")])).await.unwrap();
    let iia = |k: &str, v: &str| Mutation::InsertIfAbsent {
        key: k.into(),
        value: v.into(),
    };
    let outcome = node
        .propose(command(vec![
            iia("x1", "new"),
            iia("x2", "new"),
            iia("x2", "again"),
            iia("x3", "new"),
        ]))
        .await
        .unwrap();
    assert_eq!((outcome.inserted, outcome.ignored), (2, 2));
    let snapshot = node.read_snapshot().await.unwrap();
    assert_eq!(get(&*snapshot, "x1"), Some(b"old".to_vec()));
    assert_eq!(get(&*snapshot, "x2"), Some(b"new".to_vec()));
    assert_eq!(get(&*snapshot, "x3"), Some(b"new".to_vec()));
}
on_both_engines!(
    insert_if_absent_counts_ignored_memory,
    insert_if_absent_counts_ignored_rocks,
    insert_if_absent_counts_ignored
);

/// Many tasks proposing at once all get their own outcome, and their
/// commands share log entries (group commit).
async fn concurrent_proposals_all_succeed(node: &Arc<RaftNode>) {
    const TASKS: usize = 64;
    const EACH: usize = 25;
    let start_index = node.status().last_log_index;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let node = node.clone();
        handles.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..EACH {
                let key = format!("t{t:03}-{i:03}");
                let outcome: ApplyOutcome = node
                    .propose(command(vec![insert(&key, "v")]))
                    .await
                    .unwrap();
                assert_eq!(outcome.inserted, 1);
                outcomes.push(outcome.applied_index);
            }
            outcomes
        }));
    }
    for handle in handles {
        let indexes = handle.await.unwrap();
        // One task's proposals are sequential, so their entries are ordered.
        assert!(indexes.windows(2).all(|w| w[0] < w[1]));
    }
    let snapshot = node.read_snapshot().await.unwrap();
    assert_eq!(all_data(&*snapshot).len(), TASKS * EACH);
    let entries = node.status().last_log_index - start_index;
    assert!(
        entries < (TASKS * EACH) as u64,
        "{entries} entries for {} proposals: nothing was batched",
        TASKS * EACH
    );
}

on_both_engines!(
    concurrent_proposals_all_succeed_memory,
    concurrent_proposals_all_succeed_rocks,
    concurrent_proposals_all_succeed
);

/// A command larger than `max_command_bytes` is refused before proposing.
#[tokio::test]
async fn command_too_large_is_refused_before_proposing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir);
    config.max_command_bytes = 1024;
    let node = RaftNode::start(MemoryEngine::new(), config).await.unwrap();
    let last_log = node.status().last_log_index;
    let big = Mutation::Put {
        key: b"big".to_vec(),
        value: vec![7; 2000],
    };
    let err = node.propose(command(vec![big])).await.unwrap_err();
    assert!(
        matches!(err, Error::CommandTooLarge { limit: 1024, bytes } if bytes > 2000),
        "{err}"
    );
    assert_eq!(node.status().last_log_index, last_log);
    assert_eq!(node.status().proposal_failures, 1);
    node.propose(command(vec![put("small", "ok")]))
        .await
        .unwrap();
    node.shutdown().await.unwrap();
}

/// Every acknowledged write survives a restart on the same RocksDB
/// directory, and the log continues after the old entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_recovers_acknowledged_writes_and_continues_log() {
    let dir = tempfile::tempdir().unwrap();
    let node = rocks_node(&dir).await;
    let mut last = 0;
    for i in 0..50 {
        last = node
            .propose(command(vec![insert(
                &format!("key{i:02}"),
                &format!("value{i}"),
            )]))
            .await
            .unwrap()
            .applied_index;
    }
    let _ = node
        .propose(command(vec![insert("key00", "dup")]))
        .await
        .unwrap_err();
    node.shutdown().await.unwrap();
    drop(node);

    let node = rocks_node(&dir).await;
    let status = node.status();
    assert_eq!(status.role, sluice_raftstore::Role::Leader);
    assert!(status.applied_index > last, "{status:?}");
    let snapshot = node.read_snapshot().await.unwrap();
    for i in 0..50 {
        assert_eq!(
            get(&*snapshot, &format!("key{i:02}")),
            Some(format!("value{i}").into_bytes())
        );
    }
    assert_eq!(all_data(&*snapshot).len(), 50);
    // The restarted sole voter reads from its own applied state: it leads
    // in a new term and has applied that term's first entry.
    let after = node.status();
    assert_eq!((after.read_barriers, after.sole_voter_reads), (1, 1));
    let next = node
        .propose(command(vec![insert("after", "restart")]))
        .await
        .unwrap();
    assert!(next.applied_index > status.applied_index);
    node.shutdown().await.unwrap();
}

/// After enough entries openraft builds a snapshot and purges the log behind
/// it; a restart then starts from the snapshot plus the remaining log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_is_purged_behind_snapshots_and_restart_recovers() {
    const WRITES: usize = 10_300;
    let dir = tempfile::tempdir().unwrap();
    let engine = open_rocks(&dir);
    let node = RaftNode::start(engine.clone(), config(&dir)).await.unwrap();
    // Sequential proposals: one entry each, so the snapshot threshold is reached.
    for i in 0..WRITES {
        node.propose(command(vec![put(&format!("k{i:05}"), "v")]))
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while node.status().snapshot_index == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot built: {:?}",
            node.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_log = loop {
        let first = engine.scan(Keyspace::RaftLog, &KeyRange::all(), 1).unwrap();
        let index = u64::from_be_bytes(first[0].0.as_slice().try_into().unwrap());
        if index > 1 {
            break index;
        }
        assert!(tokio::time::Instant::now() < deadline, "log not purged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(first_log > 5_000, "first log index {first_log}");
    let snapshot_files = std::fs::read_dir(dir.path().join("raft/snapshots"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "snap")
        })
        .count();
    assert_eq!(snapshot_files, 1);
    node.shutdown().await.unwrap();
    drop((node, engine));

    let node = rocks_node(&dir).await;
    let snapshot = node.read_snapshot().await.unwrap();
    assert_eq!(all_data(&*snapshot).len(), WRITES);
    assert!(node.status().snapshot_index > 0);
    node.propose(command(vec![insert("after", "restart")]))
        .await
        .unwrap();
    node.shutdown().await.unwrap();
}

/// After shutdown, calls fail fast with `ShuttingDown` instead of hanging.
#[tokio::test]
async fn shutdown_then_propose_returns_shutting_down() {
    let (node, _dir) = memory_node().await;
    node.shutdown().await.unwrap();
    let err = node
        .propose(command(vec![put("a", "b")]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ShuttingDown), "{err}");
    assert!(matches!(
        node.read_snapshot().await,
        Err(Error::ShuttingDown)
    ));
    assert_eq!(node.status().role, sluice_raftstore::Role::Shutdown);
    node.shutdown().await.unwrap();
}

/// An engine whose writes start failing on demand, like a full disk, or
/// whose fsyncs do, like a failing device.
struct FailingEngine {
    inner: Arc<MemoryEngine>,
    fail: AtomicBool,
    fail_sync: AtomicBool,
}

impl Engine for FailingEngine {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.inner.get(keyspace, key)
    }
    fn scan(
        &self,
        keyspace: Keyspace,
        range: &KeyRange,
        limit: usize,
    ) -> Result<Vec<KvPair>, EngineError> {
        self.inner.scan(keyspace, range, limit)
    }
    fn write(&self, batch: WriteBatch, durability: Durability) -> Result<(), EngineError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(EngineError::Storage("No space left on device".into()));
        }
        self.inner.write(batch, durability)
    }
    fn snapshot(&self) -> Arc<dyn Snapshot> {
        self.inner.snapshot()
    }
    fn sync(&self) -> Result<(), EngineError> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(EngineError::Storage("fsync: Input/output error".into()));
        }
        self.inner.sync()
    }
    fn persist_unlogged(&self) -> Result<(), EngineError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(EngineError::Storage("No space left on device".into()));
        }
        self.inner.persist_unlogged()
    }
}

/// A node on a [`FailingEngine`] that has committed one write while healthy.
async fn failing_node(dir: &TempDir) -> (Arc<FailingEngine>, Arc<RaftNode>) {
    let engine = Arc::new(FailingEngine {
        inner: MemoryEngine::new(),
        fail: AtomicBool::new(false),
        fail_sync: AtomicBool::new(false),
    });
    let node = RaftNode::start(engine.clone(), config(dir)).await.unwrap();
    node.propose(command(vec![put("a", "1")])).await.unwrap();
    (engine, node)
}

/// A storage failure stops the group: the pending proposal and every later
/// one get `Error::Storage` with the engine's error, none hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_failure_surfaces_as_storage_error() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, node) = failing_node(&dir).await;

    engine.fail.store(true, Ordering::SeqCst);
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        node.propose(command(vec![put("b", "2")])),
    )
    .await
    .expect("propose must not hang")
    .unwrap_err();
    assert!(
        matches!(err, Error::Storage(ref e) if e.is_disk_full()),
        "{err}"
    );
    assert!(err.is_fatal());
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        node.propose(command(vec![put("c", "3")])),
    )
    .await
    .expect("propose must not hang")
    .unwrap_err();
    assert!(matches!(err, Error::Storage(_)), "{err}");
    let read = tokio::time::timeout(Duration::from_secs(5), node.read_snapshot())
        .await
        .unwrap();
    assert!(matches!(read, Err(Error::Storage(_))));
    node.shutdown().await.unwrap();
}

/// An entry whose fsync failed is never acknowledged: the proposal that
/// waits on it fails with the storage error, and so does every later one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_log_fsync_acknowledges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, node) = failing_node(&dir).await;

    engine.fail_sync.store(true, Ordering::SeqCst);
    for key in ["b", "c"] {
        let err = tokio::time::timeout(
            Duration::from_secs(5),
            node.propose(command(vec![put(key, "2")])),
        )
        .await
        .expect("propose must not hang")
        .unwrap_err();
        assert!(matches!(err, Error::Storage(_)) && err.is_fatal(), "{err}");
    }
    node.shutdown().await.unwrap();
}

/// Stale reads see the local state without a round of leadership checks.
#[tokio::test]
async fn local_snapshot_sees_applied_writes() {
    let (node, _dir) = memory_node().await;
    let outcome = node
        .propose(command(vec![put("local", "yes")]))
        .await
        .unwrap();
    assert!(*node.applied_watch().borrow() >= outcome.applied_index);
    assert_eq!(get(&*node.local_snapshot(), "local"), Some(b"yes".to_vec()));
    let range = KeyRange {
        start: Bound::Included(b"l".to_vec()),
        end: Bound::Unbounded,
    };
    assert_eq!(
        node.engine()
            .scan(Keyspace::Data, &range, 10)
            .unwrap()
            .len(),
        1
    );
    node.shutdown().await.unwrap();
}
