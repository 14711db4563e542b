//! [`RaftNode`]: one Raft group over one engine, and its proposal batcher.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::InitializeError;
use openraft::metrics::WaitError;
use openraft::{BasicNode, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use sluice_engine::{Engine, Snapshot};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::command::{ApplyOutcome, Command, CommandBatch, CommandResponse};
use crate::error::{from_check_leader, from_client_write, from_fatal, Error, Result};
use crate::log_store::LogStore;
use crate::network::NoPeersNetwork;
use crate::state_machine::StateMachine;
use crate::types::{FatalSlot, NodeId, StorageUsers, TypeConfig};

/// How long `RaftNode::start` waits to become leader with everything applied.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// A snapshot is built once this many entries were applied since the last
/// one; the log behind it is then purged, which bounds the log's disk use.
const SNAPSHOT_EVERY_LOGS: u64 = 10_000;
/// Entries kept behind a snapshot so that a briefly lagging follower can
/// catch up from the log instead of a full snapshot.
const LOGS_KEPT_BEHIND_SNAPSHOT: u64 = 1_000;
/// Proposals waiting to join a batch; senders wait when it is full.
const PROPOSAL_QUEUE: usize = 4096;
/// Most commands in one Raft entry.
const MAX_BATCH_COMMANDS: usize = 1024;
/// Batches proposed but not yet applied. Two lets one batch fill while the
/// previous one is being fsynced and applied.
const MAX_INFLIGHT_BATCHES: usize = 2;

/// How to run a [`RaftNode`]. [`RaftConfig::new`] gives the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftConfig {
    /// This node's id. Stable across restarts and never reused.
    pub node_id: u64,
    /// Directory for snapshot files (`<data_dir>/snapshots`).
    pub data_dir: PathBuf,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Largest serialized command `propose` accepts.
    pub max_command_bytes: usize,
}

impl RaftConfig {
    /// Heartbeat 50 ms, election timeout 150–300 ms, commands up to 64 MiB.
    pub fn new(node_id: u64, data_dir: PathBuf) -> Self {
        Self {
            node_id,
            data_dir,
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            max_command_bytes: 64 << 20,
        }
    }

    fn openraft_config(&self) -> Result<openraft::Config> {
        openraft::Config {
            cluster_name: "sluice".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY_LOGS),
            max_in_snapshot_log_to_keep: LOGS_KEPT_BEHIND_SNAPSHOT,
            // Past this lag a follower gets a snapshot; keep it above the
            // snapshot interval or a snapshot may not catch it up.
            replication_lag_threshold: SNAPSHOT_EVERY_LOGS * 2,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Internal(format!("invalid raft configuration: {e}")))
    }
}

/// A point-in-time view of the node, for `/metrics` and diagnostics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeStatus {
    pub node_id: u64,
    /// "leader", "follower", "candidate", "learner" or "shutdown".
    pub role: &'static str,
    pub term: u64,
    pub leader_id: Option<u64>,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    /// Last log index included in the current snapshot (0 = none).
    pub snapshot_index: u64,
    /// Leader elections observed: changes of the leader id to a new known leader.
    pub leader_changes: u64,
    /// Calls to `propose`.
    pub proposals: u64,
    /// Calls to `propose` that failed for a reason other than an apply
    /// rejection (`Error::Apply` is a committed, answered command).
    pub proposal_failures: u64,
}

#[derive(Default)]
struct Counters {
    leader_changes: AtomicU64,
    proposals: AtomicU64,
    proposal_failures: AtomicU64,
    committed_index: Arc<AtomicU64>,
}

/// A command waiting for the batcher.
struct Proposal {
    command: Command,
    bytes: usize,
    reply: oneshot::Sender<Result<CommandResponse>>,
}

/// What the batcher needs to map openraft errors.
#[derive(Clone)]
struct ErrorContext {
    fatal: FatalSlot,
    shutting_down: Arc<AtomicBool>,
}

/// One Raft group replicating commands into one engine.
pub struct RaftNode {
    node_id: NodeId,
    raft: Raft<TypeConfig>,
    engine: Arc<dyn Engine>,
    max_command_bytes: usize,
    proposals: mpsc::Sender<Proposal>,
    metrics: watch::Receiver<RaftMetrics<NodeId, BasicNode>>,
    applied: watch::Receiver<u64>,
    counters: Arc<Counters>,
    errors: ErrorContext,
    storage_users: StorageUsers,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl RaftNode {
    /// The largest serialized command [`Self::propose`] accepts.
    pub fn max_command_bytes(&self) -> usize {
        self.max_command_bytes
    }

    /// Opens the Raft group on `engine`. On first start initializes a
    /// one-member cluster {node_id}; on restart recovers from the stored
    /// log, vote and applied index (re-applying committed entries). Returns
    /// once this node is leader with everything committed applied, or an
    /// error after about 10 s.
    pub async fn start(engine: Arc<dyn Engine>, config: RaftConfig) -> Result<Arc<RaftNode>> {
        let raft_config = Arc::new(config.openraft_config()?);
        let fatal = FatalSlot::default();
        let counters = Arc::new(Counters::default());
        let storage_users = StorageUsers::default();
        let log_store = LogStore::open(
            engine.clone(),
            counters.committed_index.clone(),
            fatal.clone(),
            storage_users.clone(),
        )
        .map_err(Error::Storage)?;
        let (applied_tx, applied_rx) = watch::channel(0);
        let state_machine = StateMachine::open(
            engine.clone(),
            config.data_dir.join("snapshots"),
            applied_tx,
            fatal.clone(),
            storage_users.clone(),
        )
        .await
        .map_err(Error::Storage)?;

        let node_id = config.node_id;
        let raft = Raft::new(
            node_id,
            raft_config,
            NoPeersNetwork,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| from_fatal(&e, &fatal, false))?;
        let errors = ErrorContext {
            fatal,
            shutting_down: Arc::new(AtomicBool::new(false)),
        };

        if let Err(e) = Self::become_leader(&raft, node_id, &errors).await {
            // Stop the core so that it releases the engine.
            let _ = raft.shutdown().await;
            let _ = wait_released(&storage_users).await;
            return Err(e);
        }

        let (proposals, proposal_rx) = mpsc::channel(PROPOSAL_QUEUE);
        let tasks = vec![
            tokio::spawn(watch_leader(raft.metrics(), counters.clone())),
            tokio::spawn(run_batcher(
                raft.clone(),
                proposal_rx,
                config.max_command_bytes,
                errors.clone(),
            )),
        ];
        tracing::info!(node_id, "raft node started as leader");
        Ok(Arc::new(RaftNode {
            node_id,
            metrics: raft.metrics(),
            raft,
            engine,
            max_command_bytes: config.max_command_bytes,
            proposals,
            applied: applied_rx,
            counters,
            errors,
            storage_users,
            tasks: Mutex::new(tasks),
        }))
    }

    async fn become_leader(
        raft: &Raft<TypeConfig>,
        node_id: NodeId,
        errors: &ErrorContext,
    ) -> Result<()> {
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| from_fatal(&e, &errors.fatal, false))?;
        if !initialized {
            match raft.initialize(BTreeSet::from([node_id])).await {
                Ok(()) => tracing::info!(node_id, "initialized a one-member raft cluster"),
                // Raced with a stored state; it is initialized, which is the goal.
                Err(openraft::error::RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(openraft::error::RaftError::APIError(e)) => {
                    return Err(Error::Internal(format!("initialize raft: {e}")));
                }
                Err(openraft::error::RaftError::Fatal(e)) => {
                    return Err(from_fatal(&e, &errors.fatal, false));
                }
            }
        }
        let waited = raft
            .wait(Some(START_TIMEOUT))
            .metrics(
                |m| {
                    m.state == ServerState::Leader
                        && m.current_leader == Some(node_id)
                        && m.last_applied.map(|id| id.index) >= m.last_log_index
                },
                "leader with everything applied",
            )
            .await;
        match waited {
            Ok(_) => Ok(()),
            Err(WaitError::Timeout(after, _)) => Err(Error::Unavailable(format!(
                "node {node_id} did not become leader within {after:?}"
            ))),
            Err(WaitError::ShuttingDown) => {
                let running = raft.metrics().borrow().running_state.clone();
                Err(match running {
                    Err(fatal) => from_fatal(&fatal, &errors.fatal, false),
                    Ok(()) => errors.fatal.get().map_or_else(
                        || Error::Unavailable("raft stopped during start".into()),
                        Error::Storage,
                    ),
                })
            }
        }
    }

    /// Proposes a command; returns once it is committed (durable on a
    /// majority) and applied. Concurrent proposals share Raft entries (group
    /// commit), so several outcomes may carry the same `applied_index`.
    pub async fn propose(&self, command: Command) -> Result<ApplyOutcome> {
        self.counters.proposals.fetch_add(1, Ordering::Relaxed);
        let result = self.propose_inner(command).await;
        if let Err(e) = &result {
            if !matches!(e, Error::Apply(_)) {
                self.counters
                    .proposal_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn propose_inner(&self, command: Command) -> Result<ApplyOutcome> {
        self.check_running()?;
        let bytes = postcard::experimental::serialized_size(&command)
            .map_err(|e| Error::Internal(format!("size of command: {e}")))?;
        if bytes > self.max_command_bytes {
            return Err(Error::CommandTooLarge {
                bytes,
                limit: self.max_command_bytes,
            });
        }
        let (reply, response) = oneshot::channel();
        self.proposals
            .send(Proposal {
                command,
                bytes,
                reply,
            })
            .await
            .map_err(|_| self.stopped_error())?;
        let response = response.await.map_err(|_| self.stopped_error())??;
        response.result.map_err(Error::Apply)
    }

    fn check_running(&self) -> Result<()> {
        if let Some(e) = self.errors.fatal.get() {
            return Err(Error::Storage(e));
        }
        if self.errors.shutting_down.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    /// The error for a batcher that went away: the node stopped.
    fn stopped_error(&self) -> Error {
        match self.check_running() {
            Err(e) => e,
            Ok(()) => Error::Unavailable("raft proposal pipeline stopped".into()),
        }
    }

    /// A snapshot that reflects every write acknowledged before this call:
    /// confirms leadership with a quorum (`ensure_linearizable`), waits until
    /// the read index is applied, then takes an engine snapshot.
    pub async fn read_snapshot(&self) -> Result<Arc<dyn Snapshot>> {
        self.check_running()?;
        self.raft.ensure_linearizable().await.map_err(|e| {
            from_check_leader(
                &e,
                &self.errors.fatal,
                self.errors.shutting_down.load(Ordering::Acquire),
            )
        })?;
        Ok(self.engine.snapshot())
    }

    /// The local replica's current state, without confirming leadership
    /// (stale reads).
    pub fn local_snapshot(&self) -> Arc<dyn Snapshot> {
        self.engine.snapshot()
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    pub fn status(&self) -> NodeStatus {
        let metrics = self.metrics.borrow();
        let role = if self.errors.shutting_down.load(Ordering::Acquire) {
            "shutdown"
        } else {
            match metrics.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
        };
        NodeStatus {
            node_id: self.node_id,
            role,
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            committed_index: self.counters.committed_index.load(Ordering::Relaxed),
            applied_index: metrics.last_applied.map_or(0, |id| id.index),
            snapshot_index: metrics.snapshot.map_or(0, |id| id.index),
            leader_changes: self.counters.leader_changes.load(Ordering::Relaxed),
            proposals: self.counters.proposals.load(Ordering::Relaxed),
            proposal_failures: self.counters.proposal_failures.load(Ordering::Relaxed),
        }
    }

    /// Watch of the applied log index, updated right after each apply batch
    /// is written to the engine.
    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Stops the Raft group and its tasks. Afterwards every call returns
    /// `Error::ShuttingDown`, and the engine is no longer used by the node:
    /// call this before dropping the node to reopen the same engine
    /// directory. Idempotent.
    pub async fn shutdown(&self) -> Result<()> {
        self.errors.shutting_down.store(true, Ordering::Release);
        let result = self.raft.shutdown().await;
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            task.abort();
            // Cancelled or finished: either way it no longer holds the raft.
            let _ = task.await;
        }
        result.map_err(|e| Error::Internal(format!("raft core task failed: {e}")))?;
        wait_released(&self.storage_users).await
    }
}

impl Drop for RaftNode {
    fn drop(&mut self) {
        if self.errors.shutting_down.load(Ordering::Acquire) {
            return;
        }
        // Without a shutdown the core task would run on and keep the engine
        // open; stop it in the background as well as we can.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let raft = self.raft.clone();
            runtime.spawn(async move {
                let _ = raft.shutdown().await;
            });
        }
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

/// Waits until openraft's background tasks have dropped the log store, the
/// state machine and their helpers.
async fn wait_released(users: &StorageUsers) -> Result<()> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    while users.others() > 0 {
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Internal(format!(
                "{} raft storage handles still alive after shutdown",
                users.others()
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

async fn watch_leader(
    mut metrics: watch::Receiver<RaftMetrics<NodeId, BasicNode>>,
    counters: Arc<Counters>,
) {
    let mut previous = None;
    loop {
        let leader = metrics.borrow_and_update().current_leader;
        if leader.is_some() && leader != previous {
            counters.leader_changes.fetch_add(1, Ordering::Relaxed);
            tracing::info!(leader = ?leader, "raft leader changed");
        }
        previous = leader;
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Groups queued proposals into Raft entries: each batch is one entry, one
/// log write and one fsync. A batch takes whatever queued up while the
/// previous ones were in flight, up to `max_bytes` of commands.
async fn run_batcher(
    raft: Raft<TypeConfig>,
    mut queue: mpsc::Receiver<Proposal>,
    max_bytes: usize,
    errors: ErrorContext,
) {
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT_BATCHES));
    let mut carried: Option<Proposal> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match queue.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS {
            match queue.try_recv() {
                Ok(next) if bytes + next.bytes > max_bytes => {
                    carried = Some(next);
                    break;
                }
                Ok(next) => {
                    bytes += next.bytes;
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        let errors = errors.clone();
        tokio::spawn(async move {
            submit(&raft, batch, &errors).await;
            drop(permit);
        });
    }
}

async fn submit(raft: &Raft<TypeConfig>, batch: Vec<Proposal>, errors: &ErrorContext) {
    let mut replies = Vec::with_capacity(batch.len());
    let mut commands = Vec::with_capacity(batch.len());
    for proposal in batch {
        commands.push(proposal.command);
        replies.push(proposal.reply);
    }
    match raft.client_write(CommandBatch { commands }).await {
        Ok(written) if written.data.len() == replies.len() => {
            for (reply, response) in replies.into_iter().zip(written.data) {
                // The proposer may have given up waiting; nothing to do then.
                let _ = reply.send(Ok(response));
            }
        }
        Ok(written) => {
            let message = format!(
                "entry {} answered {} responses for {} commands",
                written.log_id,
                written.data.len(),
                replies.len()
            );
            tracing::error!("{message}");
            for reply in replies {
                let _ = reply.send(Err(Error::Internal(message.clone())));
            }
        }
        Err(e) => {
            let shutting_down = errors.shutting_down.load(Ordering::Acquire);
            for reply in replies {
                let _ = reply.send(Err(from_client_write(&e, &errors.fatal, shutting_down)));
            }
        }
    }
}
