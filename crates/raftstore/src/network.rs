//! The peer transport: openraft's RPCs and Sluice's own node-to-node
//! requests over TCP on the peer port.
//!
//! # Wire format
//!
//! Each message is one frame: a 4-byte big-endian length, then that many
//! bytes of postcard. A request frame holds an [`Envelope`] (sender id,
//! intended receiver id, [`PeerRequest`]); the answer is one frame holding a
//! [`PeerResponse`]. A connection carries one request at a time; clients keep
//! their connection open and reuse it. Frames above [`MAX_FRAME_BYTES`] are
//! refused by both sides, so a corrupt length cannot make a node allocate
//! gigabytes.
//!
//! The receiver id matters: after a restart with a new address mapping (a
//! Kubernetes pod rescheduled), a request meant for node 2 must never be
//! handled by node 3 as if it were its own. Mismatches are answered with
//! [`PeerResponse::WrongNode`], and a node never opens a client to itself.
//!
//! # Faults
//!
//! Every node carries a [`FaultFilter`]: a set of peers it neither sends to
//! nor accepts requests from, and an optional delay added to every message.
//! Tests partition a cluster by isolating nodes through it (in process, or
//! through the HTTP debug endpoint the binary exposes when started with
//! fault injection enabled).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, SnapshotMismatch, Unreachable,
};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, Raft, RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::command::{CommandBatch, CommandResponse};
use crate::types::{NodeId, TypeConfig};

/// Largest frame either side accepts: a full Raft command (64 MiB) plus
/// headroom for the entry around it.
pub(crate) const MAX_FRAME_BYTES: usize = 80 << 20;
/// How long a client waits for a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed connection, the client refuses to try again for this long,
/// doubling up to [`MAX_BACKOFF`], so a dead peer costs nothing per heartbeat.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A request with the ids of its sender and intended receiver.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    pub request: PeerRequest,
}

/// Everything one node asks another.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum PeerRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A follower forwards a batch of proposals to the leader.
    ClientWrite(CommandBatch),
    /// A follower asks the leader for a read index (leadership confirmed by
    /// a quorum) before serving a linearizable read from its own replica.
    ReadIndex,
    /// A new node asks to be added (as a learner, then a voter).
    Join {
        node_id: NodeId,
        addr: String,
    },
    /// Planned removal of a member.
    Remove {
        node_id: NodeId,
    },
    /// The receiver's own status, for `sluice_catalog.nodes`.
    Status,
}

/// Answers to [`PeerRequest`]s.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum PeerResponse {
    AppendEntries(AppendEntriesResponse<NodeId>),
    Vote(VoteResponse<NodeId>),
    InstallSnapshot(InstallSnapshotResponse<NodeId>),
    ClientWrite(Vec<CommandResponse>),
    ReadIndex(u64),
    Done,
    Status(crate::node::NodeStatus),
    /// The receiver is not the leader; the request was not acted on, so the
    /// sender may retry it elsewhere.
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// A chunk of a snapshot arrived out of order; the sender restarts the
    /// transfer (openraft's protocol).
    SnapshotMismatch(SnapshotMismatch),
    /// The envelope named another receiver.
    WrongNode {
        actual: NodeId,
    },
    /// Any other failure, as text.
    Failed(String),
}

/// Which peers this node is cut off from, and how late its messages are.
#[derive(Debug, Clone, Default)]
pub struct FaultFilter {
    inner: Arc<Mutex<Faults>>,
}

#[derive(Debug, Default)]
struct Faults {
    isolated_from: HashSet<NodeId>,
    delay: Option<Duration>,
}

impl FaultFilter {
    /// Drops every message to and from `peers` (both directions, at this node).
    pub fn isolate_from(&self, peers: impl IntoIterator<Item = NodeId>) {
        self.lock().isolated_from.extend(peers);
    }

    /// Delays every message this node sends or answers.
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.lock().delay = delay;
    }

    /// Removes every fault.
    pub fn heal(&self) {
        *self.lock() = Faults::default();
    }

    pub fn isolated_from_peers(&self) -> Vec<NodeId> {
        let mut peers: Vec<_> = self.lock().isolated_from.iter().copied().collect();
        peers.sort_unstable();
        peers
    }

    pub(crate) fn blocks(&self, peer: NodeId) -> bool {
        self.lock().isolated_from.contains(&peer)
    }

    fn delay(&self) -> Option<Duration> {
        self.lock().delay
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn write_frame<T: Serialize>(stream: &mut TcpStream, message: &T) -> std::io::Result<()> {
    let body = postcard::to_stdvec(message)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {} bytes exceeds {MAX_FRAME_BYTES}", body.len()),
        ));
    }
    let len = u32::try_from(body.len()).expect("bounded by MAX_FRAME_BYTES");
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await?;
    stream.flush().await
}

async fn read_frame<T: DeserializeOwned>(stream: &mut TcpStream) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("peer frame of {len} bytes exceeds {MAX_FRAME_BYTES}"),
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    postcard::from_bytes(&body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// What a peer's port says about the process behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// The port refused or reset the connection: no process serves it.
    Gone,
    /// The peer answered a status request.
    Answering,
    /// No answer in time, or the connection was dropped unanswered (as a
    /// node isolated by its fault filter does): a silent host or a
    /// partition, which only timeouts can tell apart from a slow peer.
    Unknown,
}

/// Asks `to` at `addr` for its status on a fresh connection.
pub(crate) async fn probe(from: NodeId, to: NodeId, addr: &str, timeout: Duration) -> Liveness {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await?;
        let envelope = Envelope {
            from,
            to,
            request: PeerRequest::Status,
        };
        write_frame(&mut stream, &envelope).await?;
        read_frame::<PeerResponse>(&mut stream).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(_)) => Liveness::Answering,
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Liveness::Gone
        }
        _ => Liveness::Unknown,
    }
}

/// Why a request to a peer did not get an answer.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Not sent at all (no connection, isolated, backing off): the peer
    /// certainly did not act on it.
    NotSent(String),
    /// Sent, but the answer did not arrive: the peer may have acted on it.
    NoAnswer(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::NotSent(m) => write!(f, "not sent: {m}"),
            SendError::NoAnswer(m) => write!(f, "no answer: {m}"),
        }
    }
}

/// One reusable connection from this node to one peer.
#[derive(Debug)]
pub(crate) struct PeerConnection {
    from: NodeId,
    to: NodeId,
    addr: String,
    faults: FaultFilter,
    stream: Option<TcpStream>,
    backoff: Duration,
    retry_after: Option<tokio::time::Instant>,
}

impl PeerConnection {
    pub(crate) fn new(from: NodeId, to: NodeId, addr: String, faults: FaultFilter) -> Self {
        Self {
            from,
            to,
            addr,
            faults,
            stream: None,
            backoff: MIN_BACKOFF,
            retry_after: None,
        }
    }

    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    async fn connect(&mut self) -> Result<&mut TcpStream, SendError> {
        if self.stream.is_none() {
            if let Some(after) = self.retry_after {
                if tokio::time::Instant::now() < after {
                    return Err(SendError::NotSent(format!(
                        "backing off from node {} at {}",
                        self.to, self.addr
                    )));
                }
            }
            let connected =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr)).await;
            match connected {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    self.stream = Some(stream);
                    self.backoff = MIN_BACKOFF;
                    self.retry_after = None;
                }
                Ok(Err(e)) => return Err(self.failed_connect(e.to_string())),
                Err(_) => return Err(self.failed_connect("connect timed out".into())),
            }
        }
        Ok(self.stream.as_mut().expect("connected above"))
    }

    fn failed_connect(&mut self, why: String) -> SendError {
        self.retry_after = Some(tokio::time::Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        SendError::NotSent(format!(
            "connect to node {} at {}: {why}",
            self.to, self.addr
        ))
    }

    /// Sends one request and waits up to `timeout` for its answer.
    pub(crate) async fn call(
        &mut self,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, SendError> {
        if self.to == self.from {
            return Err(SendError::NotSent("a node never sends to itself".into()));
        }
        if self.faults.blocks(self.to) {
            return Err(SendError::NotSent(format!(
                "node {} is isolated from node {} (fault injection)",
                self.from, self.to
            )));
        }
        if let Some(delay) = self.faults.delay() {
            tokio::time::sleep(delay).await;
        }
        let envelope = Envelope {
            from: self.from,
            to: self.to,
            request,
        };
        let to = self.to;
        let result = tokio::time::timeout(timeout, async {
            let stream = self.connect().await?;
            write_frame(stream, &envelope)
                .await
                .map_err(|e| SendError::NoAnswer(format!("send to node {to}: {e}")))?;
            read_frame::<PeerResponse>(stream)
                .await
                .map_err(|e| SendError::NoAnswer(format!("read answer of node {to}: {e}")))
        })
        .await;
        let result = match result {
            Ok(result) => result,
            Err(_) => Err(SendError::NoAnswer(format!(
                "node {to} did not answer within {timeout:?}"
            ))),
        };
        if result.is_err() {
            // The stream may hold half a frame; never reuse it.
            self.stream = None;
        }
        result
    }
}

/// Creates openraft's per-target clients.
#[derive(Debug, Clone)]
pub(crate) struct TcpNetwork {
    pub node_id: NodeId,
    pub faults: FaultFilter,
}

impl RaftNetworkFactory<TypeConfig> for TcpNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerClient {
            connection: PeerConnection::new(
                self.node_id,
                target,
                node.addr.clone(),
                self.faults.clone(),
            ),
        }
    }
}

/// openraft's client for one target node.
#[derive(Debug)]
pub(crate) struct PeerClient {
    connection: PeerConnection,
}

fn send_error<E: std::error::Error>(error: SendError) -> RPCError<NodeId, BasicNode, E> {
    match error {
        SendError::NotSent(m) => RPCError::Unreachable(Unreachable::new(&AnyError::error(m))),
        SendError::NoAnswer(m) => RPCError::Network(NetworkError::new(&AnyError::error(m))),
    }
}

fn unexpected<E: std::error::Error>(
    target: NodeId,
    response: PeerResponse,
) -> RPCError<NodeId, BasicNode, E> {
    let message = match response {
        PeerResponse::Failed(m) => format!("node {target} failed the request: {m}"),
        PeerResponse::WrongNode { actual } => {
            format!("the address of node {target} is served by node {actual}")
        }
        other => format!("unexpected answer from node {target}: {other:?}"),
    };
    RPCError::Network(NetworkError::new(&AnyError::error(message)))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self
            .connection
            .call(PeerRequest::AppendEntries(rpc), option.hard_ttl())
            .await
            .map_err(send_error)?
        {
            PeerResponse::AppendEntries(r) => Ok(r),
            other => Err(unexpected(self.connection.to, other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .connection
            .call(PeerRequest::InstallSnapshot(rpc), option.hard_ttl())
            .await
            .map_err(send_error)?
        {
            PeerResponse::InstallSnapshot(r) => Ok(r),
            PeerResponse::SnapshotMismatch(m) => {
                Err(RPCError::RemoteError(openraft::error::RemoteError::new(
                    self.connection.to,
                    RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m)),
                )))
            }
            other => Err(unexpected(self.connection.to, other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self
            .connection
            .call(PeerRequest::Vote(rpc), option.hard_ttl())
            .await
            .map_err(send_error)?
        {
            PeerResponse::Vote(r) => Ok(r),
            other => Err(unexpected(self.connection.to, other)),
        }
    }

    fn backoff(&self) -> Backoff {
        // openraft waits this long after an Unreachable before replicating to
        // the peer again; short, so a restarted node rejoins quickly.
        Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}

/// What the peer server hands requests to (implemented by the node).
pub(crate) trait PeerHandler: Send + Sync + 'static {
    fn raft(&self) -> &Raft<TypeConfig>;
    /// Counts a snapshot received in full and installed.
    fn snapshot_installed(&self);
    fn handle_sluice(
        &self,
        request: PeerRequest,
    ) -> impl std::future::Future<Output = PeerResponse> + Send;
    /// A connection over which `peer` sent AppendEntries was closed by the
    /// other end (not by this node's fault filter).
    fn replication_connection_lost(
        &self,
        peer: NodeId,
    ) -> impl std::future::Future<Output = ()> + Send;
}

/// Accepts peer connections until `stop` is cancelled.
pub(crate) async fn serve<H: PeerHandler>(
    listener: TcpListener,
    node_id: NodeId,
    faults: FaultFilter,
    handler: Arc<H>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let faults = faults.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = serve_connection(stream, node_id, faults, handler) => {}
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept peer connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection<H: PeerHandler>(
    mut stream: TcpStream,
    node_id: NodeId,
    faults: FaultFilter,
    handler: Arc<H>,
) {
    // Who replicated to this node over this connection: when a leader's
    // process dies, the kernel closes its sockets, and that end of file is
    // the earliest sign of it, long before heartbeats are missed.
    let mut replicating_peer = None;
    loop {
        let envelope: Envelope = match read_frame(&mut stream).await {
            Ok(envelope) => envelope,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    tracing::debug!("peer connection closed: {e}");
                }
                if let Some(peer) = replicating_peer {
                    drop(stream);
                    handler.replication_connection_lost(peer).await;
                }
                return;
            }
        };
        if faults.blocks(envelope.from) {
            // An isolated node hears nothing: drop the connection unanswered.
            return;
        }
        if matches!(envelope.request, PeerRequest::AppendEntries(_)) {
            replicating_peer = Some(envelope.from);
        }
        // A joining node does not know the id of the seed it asks.
        let addressed_here = envelope.to == node_id
            || (envelope.to == 0 && matches!(envelope.request, PeerRequest::Join { .. }));
        let response = if !addressed_here {
            PeerResponse::WrongNode { actual: node_id }
        } else {
            dispatch(handler.as_ref(), envelope.request).await
        };
        if let Some(delay) = faults.delay() {
            tokio::time::sleep(delay).await;
        }
        if let Err(e) = write_frame(&mut stream, &response).await {
            tracing::debug!("answer peer {}: {e}", envelope.from);
            return;
        }
    }
}

async fn dispatch<H: PeerHandler>(handler: &H, request: PeerRequest) -> PeerResponse {
    let raft = handler.raft();
    match request {
        PeerRequest::AppendEntries(rpc) => match raft.append_entries(rpc).await {
            Ok(r) => PeerResponse::AppendEntries(r),
            Err(e) => PeerResponse::Failed(e.to_string()),
        },
        PeerRequest::Vote(rpc) => match raft.vote(rpc).await {
            Ok(r) => PeerResponse::Vote(r),
            Err(e) => PeerResponse::Failed(e.to_string()),
        },
        PeerRequest::InstallSnapshot(rpc) => {
            let last_chunk = rpc.done;
            match raft.install_snapshot(rpc).await {
                Ok(r) => {
                    if last_chunk {
                        handler.snapshot_installed();
                    }
                    PeerResponse::InstallSnapshot(r)
                }
                Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) => {
                    PeerResponse::SnapshotMismatch(m)
                }
                Err(RaftError::Fatal(Fatal::Stopped)) => {
                    PeerResponse::Failed("raft stopped".into())
                }
                Err(e) => PeerResponse::Failed(e.to_string()),
            }
        }
        other => handler.handle_sluice(other).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn oversized_and_garbage_frames_are_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let first = read_frame::<Envelope>(&mut stream).await;
            let (mut stream2, _) = listener.accept().await.unwrap();
            let second = read_frame::<Envelope>(&mut stream2).await;
            (first.is_err(), second.is_err())
        });
        let mut a = TcpStream::connect(addr).await.unwrap();
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        b.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.unwrap();
        assert_eq!(server.await.unwrap(), (true, true));
    }

    #[tokio::test]
    async fn isolated_peer_is_not_contacted_and_self_is_refused() {
        let faults = FaultFilter::default();
        faults.isolate_from([2]);
        let mut to_two = PeerConnection::new(1, 2, "127.0.0.1:1".into(), faults.clone());
        let err = to_two
            .call(PeerRequest::Status, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(
            matches!(err, SendError::NotSent(ref m) if m.contains("isolated")),
            "{err}"
        );
        let mut to_self = PeerConnection::new(1, 1, "127.0.0.1:1".into(), faults.clone());
        assert!(matches!(
            to_self
                .call(PeerRequest::Status, Duration::from_millis(100))
                .await,
            Err(SendError::NotSent(_))
        ));
        faults.heal();
        assert!(faults.isolated_from_peers().is_empty());
    }

    #[tokio::test]
    async fn probe_tells_a_gone_process_from_a_live_or_silent_one() {
        let timeout = Duration::from_millis(300);
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        assert_eq!(probe(1, 2, &closed_addr, timeout).await, Liveness::Gone);

        let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            // Answers the first connection, drops the second unanswered (an
            // isolating fault filter), and keeps the third silent.
            let (mut answered, _) = live.accept().await.unwrap();
            read_frame::<Envelope>(&mut answered).await.unwrap();
            write_frame(&mut answered, &PeerResponse::Done)
                .await
                .unwrap();
            let (mut dropped, _) = live.accept().await.unwrap();
            read_frame::<Envelope>(&mut dropped).await.unwrap();
            drop(dropped);
            let (_silent, _) = live.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        assert_eq!(probe(1, 2, &live_addr, timeout).await, Liveness::Answering);
        assert_eq!(probe(1, 2, &live_addr, timeout).await, Liveness::Unknown);
        assert_eq!(probe(1, 2, &live_addr, timeout).await, Liveness::Unknown);
    }
}
