//! [`RaftNode`]: one Raft group over one engine, its proposal batcher, and
//! the routing that lets any member accept writes and linearizable reads.
//!
//! Routing: a proposal always enters the local batcher. The batcher sends a
//! batch to openraft when this node is leader and otherwise forwards it to
//! the leader over the peer transport (`PeerRequest::ClientWrite`). A read
//! on a follower asks the leader for a read index (`PeerRequest::ReadIndex`:
//! leadership confirmed by a quorum) and waits until its own replica has
//! applied that far. While no leader is known (an election), both wait up to
//! `leader_wait_ms` and then fail with [`Error::Unavailable`] (retryable). A
//! forwarded write whose answer is lost fails with [`Error::Ambiguous`]: it
//! may have been applied, so it is never retried behind the client's back.
//!
//! Threads: a node runs its Raft core, storage, batcher and peer server on
//! its own tokio runtime ([`RAFT_WORKER_THREADS`] workers), never on the
//! caller's. SQL sessions can keep the caller's workers busy for long
//! stretches (planning, building a session's catalog); on a shared runtime a
//! vote or heartbeat then waited behind them past the election timeout, and
//! under a storm of new connections a 2-core node never elected a leader.
//! With its own threads the core is scheduled by the kernel beside the
//! sessions instead of queued behind them. Callers talk to it only through
//! channels, which work across runtimes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::metrics::WaitError;
use openraft::{BasicNode, ChangeMembers, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use sluice_engine::{Engine, Snapshot};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::command::{ApplyOutcome, Command, CommandBatch, CommandResponse};
use crate::error::{from_check_leader, from_client_write, from_fatal, Error, Result};
use crate::log_store::{DurableVote, LogStore};
use crate::network::{
    probe, FaultFilter, Liveness, PeerConnection, PeerHandler, PeerRequest, PeerResponse,
    SendError, TcpNetwork,
};
use crate::state_machine::{DurableApply, StateMachine};
use crate::types::{FatalSlot, NodeId, StorageUsers, TypeConfig};
use crate::watch::LogWatchers;

/// How long `RaftNode::start` waits to become leader with everything applied.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Proposals waiting to join a batch; senders wait when it is full.
const PROPOSAL_QUEUE: usize = 4096;
/// Most commands in one Raft entry.
const MAX_BATCH_COMMANDS: usize = 1024;
/// Batches proposed but not yet applied. Two lets one batch fill while the
/// previous one is being fsynced and applied.
const MAX_INFLIGHT_BATCHES: usize = 2;
/// How long a `Status` request to a peer may take before the peer is
/// reported unreachable.
const STATUS_TIMEOUT: Duration = Duration::from_millis(300);
/// How long the leader may take to catch a joining node up before the join
/// fails (the node retries).
const JOIN_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a follower that lost its leader's connection waits for the
/// leader's peer port to answer. A dead process on a live host refuses at
/// once; a silent host is left to the election timer.
const LEADER_PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// How much later each survivor of a lost leader starts its election than
/// the survivor before it in voter id order. Survivors that all started at
/// once would each vote for themselves and split the vote, leaving the
/// group leaderless until an election timer fires; staggered, the first
/// one's vote request reaches the others before their turn, and they vote
/// for it instead.
const LEADER_LOSS_STAGGER: Duration = Duration::from_millis(150);
/// Pause between routing attempts while a leader change settles.
const ROUTE_RETRY: Duration = Duration::from_millis(10);
/// Worker threads of a node's own runtime: two, so that an fsync or an
/// apply in progress on one leaves the other free for heartbeats and votes.
pub const RAFT_WORKER_THREADS: usize = 2;
/// How long dropping a node that was not shut down waits for its core.
const DROP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// A snapshot is built once this many entries were applied since the
    /// last one; the log behind it is then purged, which bounds its disk use.
    pub snapshot_every_logs: u64,
    /// Entries kept behind a snapshot so that a briefly lagging follower can
    /// catch up from the log instead of a full snapshot.
    pub logs_kept_behind_snapshot: u64,
    /// How long a write or a read barrier may wait for a leader (during an
    /// election) before it fails as unavailable.
    pub leader_wait_ms: u64,
    /// How long a proposal may wait for its commit before it fails as
    /// ambiguous (the leader lost its quorum, or the disk hangs).
    pub write_timeout_ms: u64,
}

impl RaftConfig {
    /// Heartbeat 50 ms, election timeout 150–300 ms, commands up to 64 MiB,
    /// a snapshot every 10,000 entries, writes wait up to 3 s for a leader.
    pub fn new(node_id: u64, data_dir: PathBuf) -> Self {
        Self {
            node_id,
            data_dir,
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            max_command_bytes: 64 << 20,
            snapshot_every_logs: 10_000,
            logs_kept_behind_snapshot: 1_000,
            leader_wait_ms: 3_000,
            write_timeout_ms: 10_000,
        }
    }

    fn openraft_config(&self) -> Result<openraft::Config> {
        openraft::Config {
            cluster_name: "sluice".into(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_logs),
            max_in_snapshot_log_to_keep: self.logs_kept_behind_snapshot,
            // Past this lag a follower gets a snapshot; keep it above the
            // snapshot interval or a snapshot may not catch it up.
            replication_lag_threshold: self.snapshot_every_logs * 2,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Internal(format!("invalid raft configuration: {e}")))
    }
}

/// How a node of a multi-node cluster finds its group on first start.
/// Ignored on restart, when the stored log already says who the members are
/// (except that a node that crashed before it became a voter joins again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Form a new cluster with this node as its only member.
    Init,
    /// Ask a member at one of these peer addresses to add this node.
    Join(Vec<String>),
}

/// The peer side of a node: where it listens, how others reach it, how it
/// joins, and its fault filter (for tests).
#[derive(Debug)]
pub struct PeerSetup {
    pub listener: TcpListener,
    /// The address other nodes connect to (may differ from the bound one,
    /// e.g. a Kubernetes headless-Service name).
    pub advertise_addr: String,
    pub bootstrap: Bootstrap,
    pub faults: FaultFilter,
}

/// A member of the cluster as the membership records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub node_id: u64,
    pub addr: String,
    pub voter: bool,
}

/// A member and what it reported about itself (`None`: unreachable).
#[derive(Debug, Clone)]
pub struct MemberStatus {
    pub member: Member,
    pub status: Option<NodeStatus>,
}

/// How far the leader has replicated its log to one follower.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FollowerProgress {
    pub node_id: u64,
    /// Highest log index known to be on the follower (0 = none).
    pub matched_index: u64,
}

/// What a node is in its Raft group, as `sluice_catalog.nodes` and the logs
/// name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    /// A non-voting member (a joining node catching up).
    Learner,
    /// No longer a member: removed from the group's membership.
    Removed,
    /// Shutting down or shut down.
    Shutdown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Removed => "removed",
            Role::Shutdown => "shutdown",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A point-in-time view of the node, for `/metrics`, `/ready` and
/// `sluice_catalog.nodes`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    pub node_id: u64,
    pub role: Role,
    pub term: u64,
    pub leader_id: Option<u64>,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    /// Last log index included in the current snapshot (0 = none).
    pub snapshot_index: u64,
    /// Log entries this node has purged behind its snapshot (0 = none).
    pub purged_index: u64,
    /// Leader elections observed: changes of the leader id to a new known leader.
    pub leader_changes: u64,
    /// Calls to `propose`.
    pub proposals: u64,
    /// Calls to `propose` that failed for a reason other than an apply
    /// rejection (`Error::Apply` is a committed, answered command).
    pub proposal_failures: u64,
    /// Proposals this node forwarded to the leader.
    pub forwarded_proposals: u64,
    /// Snapshots received and installed from a leader.
    pub snapshots_installed: u64,
    /// Elections this node started at once because the leader's process was
    /// found gone (its peer port refusing connections), without waiting for
    /// the election timeout.
    pub leader_loss_elections: u64,
    /// Linearizable reads (read barriers) this node served.
    pub read_barriers: u64,
    /// Of those, the reads served from this node's applied state alone,
    /// because it is the only voter and leads.
    pub sole_voter_reads: u64,
    /// Milliseconds since the leader last heard from a quorum (leader only).
    pub millis_since_quorum_ack: Option<u64>,
    /// Replication progress per follower (leader only).
    pub followers: Vec<FollowerProgress>,
}

impl NodeStatus {
    /// True when the node can serve: a voter (leader or follower) with a
    /// known leader, or a learner that has caught up with what is committed.
    pub fn readiness(&self) -> std::result::Result<(), String> {
        match (self.role, self.leader_id) {
            (Role::Leader | Role::Follower, Some(_)) => Ok(()),
            (Role::Learner, Some(_)) if self.applied_index >= self.committed_index => Ok(()),
            (Role::Learner, Some(_)) => Err(format!(
                "learner catching up (applied {} of {})",
                self.applied_index, self.committed_index
            )),
            (role @ (Role::Leader | Role::Follower | Role::Learner), None) => {
                Err(format!("no known leader (role {role}, term {})", self.term))
            }
            (role, _) => Err(format!("node is {role} (term {})", self.term)),
        }
    }
}

#[derive(Default)]
struct Counters {
    leader_changes: AtomicU64,
    proposals: AtomicU64,
    proposal_failures: AtomicU64,
    forwarded_proposals: AtomicU64,
    snapshots_installed: AtomicU64,
    leader_loss_elections: AtomicU64,
    /// The highest term in which this node started a leader-loss election,
    /// so that the several connections a dead leader leaves behind start
    /// one election, not one each.
    leader_loss_term: AtomicU64,
    read_barriers: AtomicU64,
    sole_voter_reads: AtomicU64,
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

/// Idle connections to peers, reused by forwarding and status requests.
struct PeerPool {
    node_id: NodeId,
    faults: FaultFilter,
    idle: Mutex<HashMap<NodeId, Vec<PeerConnection>>>,
}

impl PeerPool {
    async fn call(
        &self,
        target: NodeId,
        addr: &str,
        request: PeerRequest,
        timeout: Duration,
    ) -> std::result::Result<PeerResponse, SendError> {
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.get_mut(&target).and_then(|conns| conns.pop())
        };
        let mut connection = match reused {
            Some(c) if c.addr() == addr => c,
            _ => PeerConnection::new(self.node_id, target, addr.to_string(), self.faults.clone()),
        };
        let result = connection.call(request, timeout).await;
        if result.is_ok() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let conns = idle.entry(target).or_default();
            if conns.len() < 4 {
                conns.push(connection);
            }
        }
        result
    }
}

/// What the batcher, the read path and the peer server share.
struct Shared {
    node_id: NodeId,
    raft: Raft<TypeConfig>,
    metrics: watch::Receiver<RaftMetrics<NodeId, BasicNode>>,
    applied: watch::Receiver<u64>,
    counters: Arc<Counters>,
    durable_vote: Arc<DurableVote>,
    errors: ErrorContext,
    peers: Option<PeerPool>,
    leader_wait: Duration,
    write_timeout: Duration,
}

/// One Raft group replicating commands into one engine.
pub struct RaftNode {
    node_id: NodeId,
    shared: Arc<Shared>,
    engine: Arc<dyn Engine>,
    max_command_bytes: usize,
    proposals: mpsc::Sender<Proposal>,
    faults: FaultFilter,
    stop: CancellationToken,
    storage_users: StorageUsers,
    log_watchers: Arc<LogWatchers>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The runtime everything above runs on; `None` only while `open` is
    /// still building the node on it.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
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

    /// Opens a one-member Raft group on `engine`, with no peer transport.
    /// On first start initializes the cluster {node_id}; on restart recovers
    /// from the stored log, vote and applied index (re-applying committed
    /// entries). Returns once this node is leader with everything committed
    /// applied, or an error after about 10 s.
    pub async fn start(engine: Arc<dyn Engine>, config: RaftConfig) -> Result<Arc<RaftNode>> {
        Self::open(engine, config, None).await
    }

    /// Opens a member of a multi-node cluster: serves the peer transport on
    /// `peers.listener`, then initializes, joins or recovers (see
    /// [`Bootstrap`]). A node that forms a cluster returns once it leads it;
    /// a joining node once it is a voter; a restarting node of a larger
    /// cluster at once (its readiness tells when it has a leader).
    pub async fn start_cluster(
        engine: Arc<dyn Engine>,
        config: RaftConfig,
        peers: PeerSetup,
    ) -> Result<Arc<RaftNode>> {
        Self::open(engine, config, Some(peers)).await
    }

    /// Builds the node on a runtime of its own (see the module docs): every
    /// task `build` spawns, openraft's among them, lands there.
    async fn open(
        engine: Arc<dyn Engine>,
        config: RaftConfig,
        peers: Option<PeerSetup>,
    ) -> Result<Arc<RaftNode>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RAFT_WORKER_THREADS)
            .thread_name(format!("raft-{}", config.node_id))
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("start the raft runtime: {e}")))?;
        let built = runtime.spawn(Self::build(engine, config, peers)).await;
        match built {
            Ok(Ok(node)) => {
                *node.runtime.lock().unwrap_or_else(|p| p.into_inner()) = Some(runtime);
                Ok(node)
            }
            // Dropping a runtime blocks, which is not allowed in async code.
            Ok(Err(e)) => {
                runtime.shutdown_background();
                Err(e)
            }
            Err(join) => {
                runtime.shutdown_background();
                Err(Error::Internal(format!("raft node start failed: {join}")))
            }
        }
    }

    async fn build(
        engine: Arc<dyn Engine>,
        config: RaftConfig,
        peers: Option<PeerSetup>,
    ) -> Result<Arc<RaftNode>> {
        let raft_config = Arc::new(config.openraft_config()?);
        let fatal = FatalSlot::default();
        let counters = Arc::new(Counters::default());
        let storage_users = StorageUsers::default();
        let durable_vote = Arc::new(DurableVote::default());
        let (applied_tx, applied_rx) = watch::channel(0);
        let durable_apply = DurableApply::new(applied_rx.clone());
        let log_store = LogStore::open(
            engine.clone(),
            counters.committed_index.clone(),
            durable_vote.clone(),
            durable_apply.clone(),
            fatal.clone(),
            storage_users.clone(),
        )
        .map_err(Error::Storage)?;
        let log_watchers = Arc::new(LogWatchers::default());
        let state_machine = StateMachine::open(
            engine.clone(),
            config.data_dir.join("snapshots"),
            applied_tx,
            fatal.clone(),
            storage_users.clone(),
            log_watchers.clone(),
            durable_apply,
        )
        .await
        .map_err(Error::Storage)?;

        let node_id = config.node_id;
        let faults = peers.as_ref().map(|p| p.faults.clone()).unwrap_or_default();
        let network = TcpNetwork {
            node_id,
            faults: faults.clone(),
        };
        let raft = Raft::new(node_id, raft_config, network, log_store, state_machine)
            .await
            .map_err(|e| from_fatal(&e, &fatal, false))?;
        let errors = ErrorContext {
            fatal,
            shutting_down: Arc::new(AtomicBool::new(false)),
        };
        let shared = Arc::new(Shared {
            node_id,
            metrics: raft.metrics(),
            raft: raft.clone(),
            applied: applied_rx,
            counters: counters.clone(),
            durable_vote,
            errors: errors.clone(),
            peers: peers.as_ref().map(|_| PeerPool {
                node_id,
                faults: faults.clone(),
                idle: Mutex::default(),
            }),
            leader_wait: Duration::from_millis(config.leader_wait_ms),
            write_timeout: Duration::from_millis(config.write_timeout_ms),
        });

        let stop = CancellationToken::new();
        let mut tasks = vec![tokio::spawn(watch_leader(raft.metrics(), counters.clone()))];
        let bootstrap = match peers {
            Some(setup) => {
                // A listener polls readiness through the reactor of the
                // runtime that registered it: move it onto this one, or
                // busy SQL workers would delay every peer message.
                let listener = setup
                    .listener
                    .into_std()
                    .and_then(TcpListener::from_std)
                    .map_err(|e| Error::Internal(format!("move the peer listener: {e}")))?;
                tasks.push(tokio::spawn(crate::network::serve(
                    listener,
                    node_id,
                    faults.clone(),
                    shared.clone(),
                    stop.clone(),
                )));
                Some((setup.bootstrap, setup.advertise_addr))
            }
            None => None,
        };

        let (proposals, proposal_rx) = mpsc::channel(PROPOSAL_QUEUE);
        tasks.push(tokio::spawn(run_batcher(
            shared.clone(),
            proposal_rx,
            config.max_command_bytes,
        )));
        let node = Arc::new(RaftNode {
            node_id,
            shared,
            engine,
            max_command_bytes: config.max_command_bytes,
            proposals,
            faults,
            stop,
            storage_users,
            log_watchers,
            tasks: Mutex::new(tasks),
            runtime: Mutex::new(None),
        });
        if let Err(e) = node.bootstrap(bootstrap).await {
            let _ = node.shutdown().await;
            return Err(e);
        }
        tracing::info!(node_id, role = %node.status().role, "raft node started");
        Ok(node)
    }

    async fn bootstrap(&self, cluster: Option<(Bootstrap, String)>) -> Result<()> {
        let raft = &self.shared.raft;
        let errors = &self.shared.errors;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| from_fatal(&e, &errors.fatal, false))?;
        let (bootstrap, addr) = match cluster {
            None => (Bootstrap::Init, String::new()),
            Some(c) => c,
        };
        if initialized {
            let members = self.members();
            let alone = members.len() == 1 && members[0].node_id == self.node_id;
            let voter = members.iter().any(|m| m.node_id == self.node_id && m.voter);
            if alone {
                self.wait_leader_self().await?;
                return self.update_own_address(&members[0].addr, &addr).await;
            }
            if let (false, Bootstrap::Join(seeds)) = (voter, &bootstrap) {
                // Crashed between being added as a learner and promoted.
                return self.join(seeds, &addr).await;
            }
            return Ok(());
        }
        match bootstrap {
            Bootstrap::Init => {
                let members = BTreeMap::from([(self.node_id, BasicNode::new(addr))]);
                match raft.initialize(members).await {
                    Ok(()) => tracing::info!(node_id = self.node_id, "initialized a new cluster"),
                    // Raced with a stored state; it is initialized, which is the goal.
                    Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                    Err(RaftError::APIError(e)) => {
                        return Err(Error::Internal(format!("initialize raft: {e}")));
                    }
                    Err(RaftError::Fatal(e)) => {
                        return Err(from_fatal(&e, &errors.fatal, false));
                    }
                }
                self.wait_leader_self().await
            }
            Bootstrap::Join(seeds) => self.join(&seeds, &addr).await,
        }
    }

    /// A lone member records the address it now listens on (it may have
    /// been formed without a transport, or moved), so that nodes joining
    /// later can reach it. Members of larger clusters keep their address.
    async fn update_own_address(&self, stored: &str, addr: &str) -> Result<()> {
        if addr.is_empty() || stored == addr {
            return Ok(());
        }
        tracing::info!(node_id = self.node_id, from = %stored, to = %addr, "recording this node's new peer address");
        let nodes = BTreeMap::from([(self.node_id, BasicNode::new(addr))]);
        self.shared
            .raft
            .change_membership(ChangeMembers::SetNodes(nodes), true)
            .await
            .map(|_| ())
            .map_err(|e| from_client_write(&e, &self.shared.errors.fatal, false))
    }

    async fn wait_leader_self(&self) -> Result<()> {
        let node_id = self.node_id;
        let waited = self
            .shared
            .raft
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
            Err(WaitError::ShuttingDown) => Err(self.stopped_error()),
        }
    }

    /// Asks the seeds (following redirects to the leader) to add this node,
    /// until one succeeds. The leader adds it as a learner, waits for it to
    /// catch up (by snapshot and log), then promotes it to voter.
    async fn join(&self, seeds: &[String], addr: &str) -> Result<()> {
        let Some(pool) = &self.shared.peers else {
            return Err(Error::Internal("join without a peer transport".into()));
        };
        if seeds.is_empty() {
            return Err(Error::Internal("join: no seed addresses".into()));
        }
        let mut attempt = 0usize;
        let mut target = seeds[0].clone();
        loop {
            self.check_running()?;
            let request = PeerRequest::Join {
                node_id: self.node_id,
                addr: addr.to_string(),
            };
            // The seed's id is unknown: `0` is no node's id, and a seed
            // accepts a join addressed to 0 (see `Shared::handle_sluice`).
            match pool.call(0, &target, request, JOIN_TIMEOUT).await {
                Ok(PeerResponse::Done) => {
                    tracing::info!(node_id = self.node_id, via = %target, "joined the cluster");
                    return Ok(());
                }
                Ok(PeerResponse::NotLeader {
                    leader_addr: Some(leader),
                    ..
                }) => {
                    target = leader;
                    continue;
                }
                Ok(other) => tracing::warn!(seed = %target, "join refused: {other:?}"),
                Err(e) => tracing::warn!(seed = %target, "join: {e}"),
            }
            attempt += 1;
            target = seeds[attempt % seeds.len()].clone();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Proposes a command; returns once it is committed (durable on a
    /// majority) and applied. Concurrent proposals share Raft entries (group
    /// commit), so several outcomes may carry the same `applied_index`.
    pub async fn propose(&self, command: Command) -> Result<ApplyOutcome> {
        let counters = &self.shared.counters;
        counters.proposals.fetch_add(1, Ordering::Relaxed);
        let result = self.propose_inner(command).await;
        if let Err(e) = &result {
            if !matches!(e, Error::Apply(_)) {
                counters.proposal_failures.fetch_add(1, Ordering::Relaxed);
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
        self.shared.check_running()
    }

    /// The error for a batcher that went away: the node stopped.
    fn stopped_error(&self) -> Error {
        match self.check_running() {
            Err(e) => e,
            Ok(()) => Error::Unavailable("raft proposal pipeline stopped".into()),
        }
    }

    /// A snapshot that reflects every write acknowledged before this call.
    /// On the leader: confirms leadership with a quorum and waits until the
    /// read index is applied. On a follower: gets the read index from the
    /// leader and waits until the local replica has applied it.
    pub async fn read_snapshot(&self) -> Result<Arc<dyn Snapshot>> {
        self.check_running()?;
        self.shared.read_barrier().await?;
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

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn status(&self) -> NodeStatus {
        self.shared.status()
    }

    /// The members of the cluster as this node's applied membership says.
    pub fn members(&self) -> Vec<Member> {
        self.shared.members()
    }

    /// Every member with the status it reports (asked over the peer
    /// transport, each within 300 ms; unreachable members have none).
    pub async fn cluster_status(&self) -> Vec<MemberStatus> {
        let members = self.members();
        let asks = members.into_iter().map(|member| async move {
            let status = if member.node_id == self.node_id {
                Some(self.status())
            } else {
                match &self.shared.peers {
                    Some(pool) => match pool
                        .call(
                            member.node_id,
                            &member.addr,
                            PeerRequest::Status,
                            STATUS_TIMEOUT,
                        )
                        .await
                    {
                        Ok(PeerResponse::Status(s)) => Some(s),
                        _ => None,
                    },
                    None => None,
                }
            };
            MemberStatus { member, status }
        });
        futures::future::join_all(asks).await
    }

    /// Adds a node (as a learner, promoted to voter once caught up). Runs on
    /// the leader; a follower forwards it. Ids are never reused: adding an
    /// id that is already a member with another address is refused.
    pub async fn add_node(&self, node_id: u64, addr: String) -> Result<()> {
        self.shared
            .membership_change(PeerRequest::Join { node_id, addr })
            .await
    }

    /// Removes a node from the membership (voter and learner alike).
    pub async fn remove_node(&self, node_id: u64) -> Result<()> {
        self.shared
            .membership_change(PeerRequest::Remove { node_id })
            .await
    }

    /// The fault filter of this node's transport (tests, fault injection).
    pub fn faults(&self) -> &FaultFilter {
        &self.faults
    }

    /// Watch of the applied log index, updated right after each apply batch
    /// is written to the engine.
    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.shared.applied.clone()
    }

    /// Wake-ups for readers of sequence logs (topic partitions).
    pub fn log_watchers(&self) -> &Arc<LogWatchers> {
        &self.log_watchers
    }

    /// Stops the Raft group and its tasks. Afterwards every call returns
    /// `Error::ShuttingDown`, and the engine is no longer used by the node:
    /// call this before dropping the node to reopen the same engine
    /// directory. Idempotent.
    pub async fn shutdown(&self) -> Result<()> {
        self.shared
            .errors
            .shutting_down
            .store(true, Ordering::Release);
        self.stop.cancel();
        let result = self.shared.raft.shutdown().await;
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
        let runtime = self
            .runtime
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if self.shared.errors.shutting_down.load(Ordering::Acquire) {
            // `shutdown` stopped everything; only the threads remain.
            if let Some(runtime) = runtime {
                runtime.shutdown_background();
            }
            return;
        }
        self.stop.cancel();
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
        let Some(runtime) = runtime else {
            return;
        };
        // Without a shutdown the core would run on and keep the engine open.
        // Stop it, then the runtime, on a thread of their own: this drop may
        // run in async code, where neither may block.
        let raft = self.shared.raft.clone();
        let stopping = std::thread::Builder::new()
            .name("raft-drop".into())
            .spawn(move || {
                let core = runtime.spawn(async move { raft.shutdown().await });
                let _ = runtime
                    .block_on(async { tokio::time::timeout(DROP_SHUTDOWN_TIMEOUT, core).await });
                runtime.shutdown_background();
            });
        if let Err(e) = stopping {
            tracing::warn!("cannot stop a dropped raft node's runtime: {e}");
        }
    }
}

impl Shared {
    fn check_running(&self) -> Result<()> {
        if let Some(e) = self.errors.fatal.get() {
            return Err(Error::Storage(e));
        }
        if self.errors.shutting_down.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    fn shutting_down(&self) -> bool {
        self.errors.shutting_down.load(Ordering::Acquire)
    }

    fn members(&self) -> Vec<Member> {
        let metrics = self.metrics.borrow();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| Member {
                node_id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    fn member_addr(&self, node_id: NodeId) -> Option<String> {
        let metrics = self.metrics.borrow();
        let membership = metrics.membership_config.membership();
        membership.get_node(&node_id).map(|n| n.addr.clone())
    }

    fn status(&self) -> NodeStatus {
        let metrics = self.metrics.borrow();
        let in_membership = metrics
            .membership_config
            .membership()
            .get_node(&self.node_id)
            .is_some();
        let role = if self.shutting_down() {
            Role::Shutdown
        } else {
            match metrics.state {
                ServerState::Leader => Role::Leader,
                ServerState::Follower => Role::Follower,
                ServerState::Candidate => Role::Candidate,
                ServerState::Learner if !in_membership && metrics.last_applied.is_some() => {
                    Role::Removed
                }
                ServerState::Learner => Role::Learner,
                ServerState::Shutdown => Role::Shutdown,
            }
        };
        let followers = metrics
            .replication
            .as_ref()
            .map(|replication| {
                replication
                    .iter()
                    .filter(|(id, _)| **id != self.node_id)
                    .map(|(id, matched)| FollowerProgress {
                        node_id: *id,
                        matched_index: matched.map_or(0, |l| l.index),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let counters = &self.counters;
        let committed = counters.committed_index.load(Ordering::Relaxed);
        NodeStatus {
            node_id: self.node_id,
            role,
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            // openraft publishes its metrics after the proposers of the
            // entries they cover may have heard back; the storage's own
            // records (the committed id as saved, the applied index as
            // written) never lag a proposer, and the log holds what is
            // committed.
            last_log_index: metrics.last_log_index.unwrap_or(0).max(committed),
            committed_index: committed,
            applied_index: metrics
                .last_applied
                .map_or(0, |id| id.index)
                .max(*self.applied.borrow()),
            snapshot_index: metrics.snapshot.map_or(0, |id| id.index),
            purged_index: metrics.purged.map_or(0, |id| id.index),
            leader_changes: counters.leader_changes.load(Ordering::Relaxed),
            proposals: counters.proposals.load(Ordering::Relaxed),
            proposal_failures: counters.proposal_failures.load(Ordering::Relaxed),
            forwarded_proposals: counters.forwarded_proposals.load(Ordering::Relaxed),
            snapshots_installed: counters.snapshots_installed.load(Ordering::Relaxed),
            leader_loss_elections: counters.leader_loss_elections.load(Ordering::Relaxed),
            read_barriers: counters.read_barriers.load(Ordering::Relaxed),
            sole_voter_reads: counters.sole_voter_reads.load(Ordering::Relaxed),
            millis_since_quorum_ack: metrics.millis_since_quorum_ack,
            followers,
        }
    }

    /// The current leader, waiting (until `deadline`) while none is known.
    async fn leader(&self, deadline: tokio::time::Instant) -> Result<NodeId> {
        let mut metrics = self.metrics.clone();
        loop {
            self.check_running()?;
            if let Some(leader) = metrics.borrow_and_update().current_leader {
                return Ok(leader);
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::ShuttingDown),
                Err(_) => {
                    return Err(Error::Unavailable(format!(
                        "no Raft leader elected within {:?}",
                        self.leader_wait
                    )))
                }
            }
        }
    }

    /// Sends `request` to the leader, following leader changes until
    /// `deadline`. `Ok(None)` means this node is the leader: act locally.
    /// A request that was sent but not answered is [`Error::Ambiguous`]
    /// when `idempotent` is false.
    async fn to_leader(
        &self,
        request: impl Fn() -> PeerRequest,
        timeout: Duration,
        idempotent: bool,
    ) -> Result<Option<PeerResponse>> {
        let deadline = tokio::time::Instant::now() + self.leader_wait;
        loop {
            let leader = self.leader(deadline).await?;
            if leader == self.node_id {
                return Ok(None);
            }
            let (Some(pool), Some(addr)) = (&self.peers, self.member_addr(leader)) else {
                return Err(Error::NotLeader {
                    leader_id: Some(leader),
                });
            };
            let retry = match pool.call(leader, &addr, request(), timeout).await {
                Ok(PeerResponse::NotLeader { .. }) => true,
                Ok(response) => return Ok(Some(response)),
                Err(SendError::NotSent(why)) => {
                    tracing::debug!(leader, "route to leader: {why}");
                    true
                }
                Err(SendError::NoAnswer(why)) if !idempotent => {
                    return Err(Error::Ambiguous(format!(
                        "the leader (node {leader}) did not answer: {why}"
                    )))
                }
                Err(SendError::NoAnswer(why)) => {
                    tracing::debug!(leader, "route to leader: {why}");
                    true
                }
            };
            if retry {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::Unavailable(format!(
                        "the leader (node {leader}) could not be reached within {:?}",
                        self.leader_wait
                    )));
                }
                tokio::time::sleep(ROUTE_RETRY).await;
            }
        }
    }

    /// Waits until the local replica has applied everything committed
    /// before the call (linearizable reads).
    async fn read_barrier(&self) -> Result<()> {
        self.counters.read_barriers.fetch_add(1, Ordering::Relaxed);
        if self.leads_alone() {
            self.counters
                .sole_voter_reads
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let index = match self
            .to_leader(|| PeerRequest::ReadIndex, self.leader_wait, true)
            .await?
        {
            None => return self.local_read_barrier().await,
            Some(PeerResponse::ReadIndex(index)) => index,
            Some(other) => return Err(unexpected_answer("read index", other)),
        };
        let mut applied = self.applied.clone();
        let waited =
            tokio::time::timeout(self.leader_wait, applied.wait_for(|a| *a >= index)).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => Err(Error::Unavailable(format!(
                "this replica did not apply up to the read index {index} within {:?}",
                self.leader_wait
            ))),
        }
    }

    /// Whether this node is the only voter and leads, so that its applied
    /// state already holds every acknowledged write and a read needs no
    /// trip through the Raft core (which would confirm a quorum of one).
    ///
    /// The metrics say so only after the fact; the log store's
    /// [`DurableVote`] closes that gap. Another node can lead only once
    /// this one has voted for it (saved before the vote is answered) or
    /// once a membership with other voters was appended here (recorded
    /// before openraft acts on it): either shows up here first, and the
    /// read then takes the ordinary path. Acknowledged writes are applied
    /// here before they are acknowledged; so are a former leader's, once
    /// an entry of this term is applied.
    fn leads_alone(&self) -> bool {
        let metrics = self.metrics.borrow();
        let membership = &metrics.membership_config;
        let voters = membership.membership().get_joint_config();
        let alone = voters.len() == 1 && voters[0].len() == 1 && voters[0].contains(&self.node_id);
        let term = metrics.current_term;
        let leads = metrics.state == ServerState::Leader
            && metrics.current_leader == Some(self.node_id)
            && metrics
                .last_applied
                .is_some_and(|applied| applied.leader_id.term == term);
        let membership_index = membership.log_id().map_or(0, |id| id.index);
        if !(alone && leads && self.durable_vote.membership_appended() <= membership_index) {
            return false;
        }
        drop(metrics);
        self.durable_vote.vote().is_some_and(|vote| {
            vote.committed
                && vote.leader_id.get_term() == term
                && vote.leader_id.voted_for() == Some(self.node_id)
        })
    }

    /// The leader's own barrier: a quorum confirms it still leads, then its
    /// state machine catches up with the read index.
    async fn local_read_barrier(&self) -> Result<()> {
        match tokio::time::timeout(self.leader_wait, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(from_check_leader(
                &e,
                &self.errors.fatal,
                self.shutting_down(),
            )),
            Err(_) => Err(Error::Unavailable(format!(
                "leadership not confirmed by a quorum within {:?}",
                self.leader_wait
            ))),
        }
    }

    /// The leader's read index for a follower's read.
    async fn read_index(&self) -> PeerResponse {
        match tokio::time::timeout(self.leader_wait, self.raft.get_read_log_id()).await {
            Ok(Ok((read, _))) => PeerResponse::ReadIndex(read.map_or(0, |l| l.index)),
            Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                f,
            )))) => self.not_leader(f.leader_id),
            Ok(Err(e)) => PeerResponse::Failed(e.to_string()),
            Err(_) => PeerResponse::Failed("leadership not confirmed by a quorum in time".into()),
        }
    }

    fn not_leader(&self, leader_id: Option<NodeId>) -> PeerResponse {
        PeerResponse::NotLeader {
            leader_id,
            leader_addr: leader_id.and_then(|id| self.member_addr(id)),
        }
    }

    /// Appends `batch` locally (this node believes it leads) and waits for
    /// its responses, at most `write_timeout`.
    async fn write_local(&self, batch: CommandBatch) -> Result<Vec<CommandResponse>> {
        let expected = batch.commands.len();
        let written = tokio::time::timeout(self.write_timeout, self.raft.client_write(batch)).await;
        match written {
            Ok(Ok(written)) if written.data.len() == expected => Ok(written.data),
            Ok(Ok(written)) => {
                let message = format!(
                    "entry {} answered {} responses for {} commands",
                    written.log_id,
                    written.data.len(),
                    expected
                );
                tracing::error!("{message}");
                Err(Error::Internal(message))
            }
            Ok(Err(e)) => Err(from_client_write(
                &e,
                &self.errors.fatal,
                self.shutting_down(),
            )),
            Err(_) => Err(Error::Ambiguous(format!(
                "the write was not committed within {:?} (the leader may have lost its quorum)",
                self.write_timeout
            ))),
        }
    }

    /// Appends `batch` on whichever node leads.
    async fn write(&self, batch: CommandBatch) -> Result<Vec<CommandResponse>> {
        let forward =
            self.peers.is_some() && self.metrics.borrow().current_leader != Some(self.node_id);
        if !forward {
            return self.write_local(batch).await;
        }
        let timeout = self.write_timeout;
        match self
            .to_leader(|| PeerRequest::ClientWrite(batch.clone()), timeout, false)
            .await?
        {
            None => self.write_local(batch).await,
            Some(PeerResponse::ClientWrite(responses)) => {
                self.counters
                    .forwarded_proposals
                    .fetch_add(responses.len() as u64, Ordering::Relaxed);
                Ok(responses)
            }
            Some(PeerResponse::Failed(why)) => Err(Error::Unavailable(format!(
                "the leader failed the write: {why}"
            ))),
            Some(other) => Err(unexpected_answer("forwarded write", other)),
        }
    }

    /// Runs a membership change on the leader (forwarding it if need be).
    async fn membership_change(&self, request: PeerRequest) -> Result<()> {
        let answer = match &request {
            PeerRequest::Join { .. } | PeerRequest::Remove { .. } => {
                let again = || match &request {
                    PeerRequest::Join { node_id, addr } => PeerRequest::Join {
                        node_id: *node_id,
                        addr: addr.clone(),
                    },
                    PeerRequest::Remove { node_id } => PeerRequest::Remove { node_id: *node_id },
                    _ => unreachable!("matched above"),
                };
                match self.to_leader(again, JOIN_TIMEOUT, true).await? {
                    None => self.change_membership_here(again()).await,
                    Some(answer) => answer,
                }
            }
            _ => return Err(Error::Internal("not a membership change".into())),
        };
        match answer {
            PeerResponse::Done => Ok(()),
            PeerResponse::Failed(why) => Err(Error::Membership(why)),
            other => Err(unexpected_answer("membership change", other)),
        }
    }

    /// A membership change on this node, which must be the leader.
    async fn change_membership_here(&self, request: PeerRequest) -> PeerResponse {
        let result = match request {
            PeerRequest::Join { node_id, addr } => self.add_member(node_id, addr).await,
            PeerRequest::Remove { node_id } => self.remove_member(node_id).await,
            _ => return PeerResponse::Failed("not a membership change".into()),
        };
        match result {
            Ok(()) => PeerResponse::Done,
            Err(MembershipError::Raft(RaftError::APIError(ClientWriteError::ForwardToLeader(
                f,
            )))) => self.not_leader(f.leader_id),
            Err(MembershipError::Raft(e)) => PeerResponse::Failed(e.to_string()),
            Err(MembershipError::Refused(why)) => {
                tracing::warn!("membership change refused: {why}");
                PeerResponse::Failed(why)
            }
        }
    }

    async fn add_member(&self, node_id: NodeId, addr: String) -> Result<(), MembershipError> {
        if node_id == 0 {
            return Err(MembershipError::Refused("node id 0 is reserved".into()));
        }
        let current = self.members().into_iter().find(|m| m.node_id == node_id);
        match current {
            Some(m) if m.addr != addr => {
                return Err(MembershipError::Refused(format!(
                    "node {node_id} is already a member at {}; node ids are never reused",
                    m.addr
                )))
            }
            Some(m) if m.voter => return Ok(()),
            _ => {}
        }
        tracing::info!(node_id, %addr, "adding a learner");
        self.raft
            .add_learner(node_id, BasicNode::new(addr), true)
            .await?;
        tracing::info!(node_id, "learner caught up; promoting to voter");
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false)
            .await?;
        Ok(())
    }

    async fn remove_member(&self, node_id: NodeId) -> Result<(), MembershipError> {
        let members = self.members();
        let Some(member) = members.iter().find(|m| m.node_id == node_id) else {
            return Err(MembershipError::Refused(format!(
                "node {node_id} is not a member"
            )));
        };
        let voters = members.iter().filter(|m| m.voter).count();
        if member.voter && voters == 1 {
            return Err(MembershipError::Refused(
                "cannot remove the last voter".into(),
            ));
        }
        tracing::info!(node_id, "removing a member");
        let change = if member.voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([node_id]))
        };
        self.raft.change_membership(change, false).await?;
        Ok(())
    }
}

enum MembershipError {
    Raft(RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>),
    Refused(String),
}

impl From<RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>> for MembershipError {
    fn from(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Self {
        MembershipError::Raft(e)
    }
}

fn unexpected_answer(what: &str, answer: PeerResponse) -> Error {
    match answer {
        PeerResponse::Failed(why) => Error::Unavailable(format!("{what}: {why}")),
        other => Error::Internal(format!("{what}: unexpected answer {other:?}")),
    }
}

impl PeerHandler for Shared {
    fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    fn snapshot_installed(&self) {
        self.counters
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Starts an election at once when the leader that replicated over a
    /// closed connection is really gone. Waiting for the election timer
    /// costs openraft's leader lease plus a random timeout (450–600 ms at
    /// the defaults), and more when the first candidate has the shorter
    /// log; a leader process that was killed or stopped is known dead as
    /// soon as its peer port refuses or resets a connection. Anything else
    /// (the leader answers, stays silent, or its fault filter drops us) leaves
    /// the decision to the timers, so a dropped connection between live
    /// nodes never disturbs their leadership.
    async fn replication_connection_lost(&self, peer: NodeId) {
        let follows_peer = |metrics: &RaftMetrics<NodeId, BasicNode>| {
            metrics.current_leader == Some(peer) && metrics.state == ServerState::Follower
        };
        let term = {
            let metrics = self.metrics.borrow();
            if !follows_peer(&metrics) {
                return;
            }
            metrics.current_term
        };
        let Some(pool) = &self.peers else { return };
        if self.shutting_down()
            || pool.faults.blocks(peer)
            || self.counters.leader_loss_term.load(Ordering::Acquire) >= term
        {
            return;
        }
        let Some(addr) = self.member_addr(peer) else {
            return;
        };
        let liveness = probe(self.node_id, peer, &addr, LEADER_PROBE_TIMEOUT).await;
        if liveness != Liveness::Gone || !follows_peer(&self.metrics.borrow()) {
            return;
        }
        let rank = {
            let metrics = self.metrics.borrow();
            let membership = metrics.membership_config.membership();
            membership
                .voter_ids()
                .filter(|&id| id != peer && id < self.node_id)
                .count()
        };
        if rank > 0 {
            tokio::time::sleep(LEADER_LOSS_STAGGER * rank as u32).await;
            // An earlier survivor's vote request moved this node to a newer
            // term (or a new leader): its election is under way.
            if !follows_peer(&self.metrics.borrow()) {
                return;
            }
        }
        if self
            .counters
            .leader_loss_term
            .fetch_max(term, Ordering::AcqRel)
            >= term
        {
            return;
        }
        tracing::info!(
            leader = peer,
            term,
            "the leader's peer port at {addr} refuses connections: starting an election now"
        );
        self.counters
            .leader_loss_elections
            .fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.raft.trigger().elect().await {
            tracing::warn!("start an election after losing leader {peer}: {e}");
        }
    }

    async fn handle_sluice(&self, request: PeerRequest) -> PeerResponse {
        if self.check_running().is_err() {
            return PeerResponse::Failed("node is stopping".into());
        }
        let leads = self.metrics.borrow().current_leader == Some(self.node_id);
        match request {
            PeerRequest::Status => PeerResponse::Status(self.status()),
            PeerRequest::ReadIndex if leads => self.read_index().await,
            PeerRequest::ClientWrite(batch) if leads => match self.write_local(batch).await {
                Ok(responses) => PeerResponse::ClientWrite(responses),
                Err(Error::NotLeader { leader_id }) => self.not_leader(leader_id),
                Err(e) => PeerResponse::Failed(e.to_string()),
            },
            request @ (PeerRequest::Join { .. } | PeerRequest::Remove { .. }) if leads => {
                self.change_membership_here(request).await
            }
            _ => {
                let leader = self.metrics.borrow().current_leader;
                self.not_leader(leader)
            }
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
async fn run_batcher(shared: Arc<Shared>, mut queue: mpsc::Receiver<Proposal>, max_bytes: usize) {
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
        let shared = shared.clone();
        tokio::spawn(async move {
            submit(&shared, batch).await;
            drop(permit);
        });
    }
}

async fn submit(shared: &Shared, batch: Vec<Proposal>) {
    let mut replies = Vec::with_capacity(batch.len());
    let mut commands = Vec::with_capacity(batch.len());
    for proposal in batch {
        commands.push(proposal.command);
        replies.push(proposal.reply);
    }
    match shared.write(CommandBatch { commands }).await {
        Ok(responses) => {
            for (reply, response) in replies.into_iter().zip(responses) {
                // The proposer may have given up waiting; nothing to do then.
                let _ = reply.send(Ok(response));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.duplicate()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(role: Role, leader_id: Option<u64>, applied: u64, committed: u64) -> NodeStatus {
        NodeStatus {
            node_id: 1,
            role,
            term: 3,
            leader_id,
            last_log_index: committed,
            committed_index: committed,
            applied_index: applied,
            snapshot_index: 0,
            purged_index: 0,
            leader_changes: 0,
            proposals: 0,
            proposal_failures: 0,
            forwarded_proposals: 0,
            snapshots_installed: 0,
            leader_loss_elections: 0,
            read_barriers: 0,
            sole_voter_reads: 0,
            millis_since_quorum_ack: None,
            followers: Vec::new(),
        }
    }

    #[test]
    fn ready_only_as_a_voter_with_a_leader_or_a_caught_up_learner() {
        assert!(status(Role::Leader, Some(1), 5, 5).readiness().is_ok());
        assert!(status(Role::Follower, Some(2), 4, 5).readiness().is_ok());
        assert_eq!(
            status(Role::Follower, None, 5, 5).readiness().unwrap_err(),
            "no known leader (role follower, term 3)"
        );
        assert_eq!(
            status(Role::Candidate, None, 5, 5).readiness().unwrap_err(),
            "node is candidate (term 3)"
        );
        assert!(status(Role::Learner, Some(2), 5, 5).readiness().is_ok());
        assert_eq!(
            status(Role::Learner, Some(2), 3, 5)
                .readiness()
                .unwrap_err(),
            "learner catching up (applied 3 of 5)"
        );
        assert!(status(Role::Removed, Some(2), 5, 5).readiness().is_err());
        assert!(status(Role::Shutdown, Some(1), 5, 5).readiness().is_err());
    }
}
