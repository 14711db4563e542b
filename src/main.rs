//! The `sluice` binary: command-line interface, configuration, and the
//! wiring of engine → raftstore → planner → frontend for one node.
//!
//! Startup order matters for durability and for what a client can observe:
//! the engine opens (RocksDB recovers its WAL), the Raft node recovers its
//! log and vote and re-applies committed entries, the catalog loads through
//! a linearizable read, and only then do the listeners accept clients.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use sluice_engine::{Engine, RocksConfig, RocksEngine};
use sluice_frontend::{Auth, FrontendConfig, Metrics};
use sluice_planner::Database;
use sluice_raftstore::{Bootstrap, FaultFilter, PeerSetup, RaftConfig, RaftNode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const DEFAULT_LISTEN: &str = "127.0.0.1:5433";
const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8433";
const DEFAULT_PEER_LISTEN: &str = "127.0.0.1:7433";
const DEFAULT_DATA_DIR: &str = "./sluice-data";
/// The user a password applies to when a node requires authentication.
const DEFAULT_USER: &str = "sluice";

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: a PostgreSQL-compatible SQL database whose every write is replicated with Raft into RocksDB",
    long_about = "Sluice speaks the PostgreSQL wire protocol: connect with psql or any Postgres driver.\n\
                  Start a node with embedded defaults:  sluice start\n\
                  then connect:                          psql -h 127.0.0.1 -p 5433 -U sluice -d sluice"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a node and serve SQL, HTTP and the peer transport until SIGINT/SIGTERM. Without
    /// --join a new node forms a one-member cluster that others can join.
    Start(StartArgs),
}

/// Every flag can also come from the environment or a TOML config file;
/// flags win over the environment, which wins over the file.
#[derive(Args, Debug, Default)]
struct StartArgs {
    /// PostgreSQL wire protocol address [default: 127.0.0.1:5433]
    #[arg(long, env = "SLUICE_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// HTTP address for /health, /ready and /metrics [default: 127.0.0.1:8433]
    #[arg(long, env = "SLUICE_HTTP_LISTEN", value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// Directory holding the node's data [default: ./sluice-data]
    #[arg(long, env = "SLUICE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// TOML file with any of: listen, http_listen, peer_listen, advertise_addr, join, data_dir,
    /// password, node_id, block_cache_mb
    #[arg(long, env = "SLUICE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Require this password (SCRAM-SHA-256) for user `sluice`. Mandatory when listening beyond loopback.
    #[arg(
        long,
        env = "SLUICE_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    password: Option<String>,
    /// This node's Raft id; never reuse an id for a different node [default: 1]
    #[arg(long, env = "SLUICE_NODE_ID", value_name = "ID")]
    node_id: Option<u64>,
    /// RocksDB block cache size in MiB [default: 256]
    #[arg(long, env = "SLUICE_BLOCK_CACHE_MB", value_name = "MIB")]
    block_cache_mb: Option<usize>,
    /// Address for Raft and node-to-node traffic [default: 127.0.0.1:7433]
    #[arg(long, env = "SLUICE_PEER_LISTEN", value_name = "ADDR")]
    peer_listen: Option<SocketAddr>,
    /// The peer address other nodes use to reach this one (host:port; a DNS name is fine)
    /// [default: the bound --peer-listen address]
    #[arg(long, env = "SLUICE_ADVERTISE_ADDR", value_name = "HOST:PORT")]
    advertise_addr: Option<String>,
    /// Form a new cluster with this node as its first member (the default without --join)
    #[arg(long, conflicts_with = "join")]
    init: bool,
    /// Join the cluster through the member(s) at these peer addresses (comma-separated); only
    /// used on first start
    #[arg(
        long,
        env = "SLUICE_JOIN",
        value_name = "HOST:PORT,...",
        value_delimiter = ','
    )]
    join: Vec<String>,
    /// Derive the node id from the host name's trailing ordinal (a StatefulSet pod `sluice-2`
    /// is node 3); ordinal 0 forms the cluster, the others join it
    #[arg(long, env = "SLUICE_NODE_ID_FROM_ORDINAL", conflicts_with = "node_id")]
    node_id_from_ordinal: bool,
    /// How long a write waits to be committed before it fails with 40003 (outcome unknown),
    /// e.g. when the leader has lost its quorum [default: 10000]
    #[arg(long, env = "SLUICE_WRITE_TIMEOUT_MS", value_name = "MS")]
    write_timeout_ms: Option<u64>,
    /// Build a Raft snapshot (and purge the log behind it) every this many entries
    /// [default: 10000]
    #[arg(long, env = "SLUICE_SNAPSHOT_EVERY_LOGS", value_name = "ENTRIES")]
    snapshot_every_logs: Option<u64>,
    /// Serve POST /debug/isolate?peers=1,2 and /debug/heal on the HTTP port, which cut this
    /// node off from peers (for fault-injection tests; never in production)
    #[arg(long, env = "SLUICE_FAULT_INJECTION", hide = true)]
    fault_injection: bool,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    password: Option<String>,
    node_id: Option<u64>,
    block_cache_mb: Option<usize>,
    peer_listen: Option<SocketAddr>,
    advertise_addr: Option<String>,
    join: Option<Vec<String>>,
}

/// The resolved configuration of one node.
#[derive(Debug)]
struct NodeConfig {
    listen: SocketAddr,
    http_listen: SocketAddr,
    data_dir: PathBuf,
    password: Option<String>,
    node_id: u64,
    block_cache_mb: usize,
    peer_listen: SocketAddr,
    advertise_addr: Option<String>,
    /// Empty: form a new cluster (on first start).
    join: Vec<String>,
    fault_injection: bool,
    write_timeout_ms: Option<u64>,
    snapshot_every_logs: Option<u64>,
}

impl NodeConfig {
    fn resolve(args: StartArgs) -> Result<NodeConfig, String> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("read config {}: {e}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| format!("parse config {}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let parse = |s: &str| s.parse::<SocketAddr>().expect("built-in address parses");
        let config = NodeConfig {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| parse(DEFAULT_LISTEN)),
            http_listen: args
                .http_listen
                .or(file.http_listen)
                .unwrap_or_else(|| parse(DEFAULT_HTTP_LISTEN)),
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            password: args.password.or(file.password).filter(|p| !p.is_empty()),
            node_id: args.node_id.or(file.node_id).unwrap_or(1),
            block_cache_mb: args.block_cache_mb.or(file.block_cache_mb).unwrap_or(256),
            peer_listen: args
                .peer_listen
                .or(file.peer_listen)
                .unwrap_or_else(|| parse(DEFAULT_PEER_LISTEN)),
            advertise_addr: args.advertise_addr.or(file.advertise_addr),
            join: if args.join.is_empty() {
                file.join.unwrap_or_default()
            } else {
                args.join
            },
            fault_injection: args.fault_injection,
            write_timeout_ms: args.write_timeout_ms,
            snapshot_every_logs: args.snapshot_every_logs,
        };
        let mut config = config;
        if args.init {
            config.join.clear();
        }
        if args.node_id_from_ordinal {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .unwrap_or_default();
            let ordinal = ordinal_of(host.trim())?;
            config.node_id = ordinal + 1;
            if ordinal == 0 {
                // The first pod forms the cluster; the others join through it.
                config.join.clear();
            } else if config.join.is_empty() {
                return Err("--node-id-from-ordinal: pods after the first need --join".into());
            }
        }
        if config.peer_listen.ip().is_unspecified() && config.advertise_addr.is_none() {
            return Err(format!(
                "--peer-listen {} is not an address other nodes can use: set --advertise-addr",
                config.peer_listen
            ));
        }
        if config.node_id == 0 {
            return Err("node id must be at least 1".into());
        }
        let exposed = !config.listen.ip().is_loopback()
            || !config.http_listen.ip().is_loopback()
            || !config.peer_listen.ip().is_loopback();
        if !config.listen.ip().is_loopback() && config.password.is_none() {
            return Err(format!(
                "refusing to listen on {} without authentication: set --password (or SLUICE_PASSWORD)",
                config.listen
            ));
        }
        if exposed {
            tracing::warn!("listening beyond loopback; SQL requires a password, HTTP endpoints and the peer port are unauthenticated");
        }
        Ok(config)
    }
}

/// The StatefulSet ordinal at the end of a host name (`sluice-2` → 2).
fn ordinal_of(host: &str) -> Result<u64, String> {
    let short = host.split('.').next().unwrap_or(host);
    short
        .rsplit('-')
        .next()
        .and_then(|digits| digits.parse::<u64>().ok())
        .ok_or_else(|| format!("host name {host:?} does not end in -<ordinal>"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Start(args) = cli.command;
    let config = match NodeConfig::resolve(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice")
        // DataFusion plans recursively; deep (but legal) expressions need more than the 2 MiB default.
        .thread_stack_size(8 << 20)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sluice: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: NodeConfig) -> Result<(), String> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("create data directory {}: {e}", config.data_dir.display()))?;
    let engine = open_engine(&config.data_dir, config.block_cache_mb)?;
    let peer_listener = TcpListener::bind(config.peer_listen)
        .await
        .map_err(|e| format!("listen on {}: {e}", config.peer_listen))?;
    let peer_addr = peer_listener.local_addr().map_err(|e| e.to_string())?;
    let advertise_addr = config
        .advertise_addr
        .clone()
        .unwrap_or_else(|| peer_addr.to_string());
    let bootstrap = if config.join.is_empty() {
        Bootstrap::Init
    } else {
        Bootstrap::Join(config.join.clone())
    };
    println!("sluice: peer listening on {peer_addr}");
    let mut raft_config = RaftConfig::new(config.node_id, config.data_dir.join("raft"));
    if let Some(ms) = config.write_timeout_ms {
        raft_config.write_timeout_ms = ms.max(1);
    }
    if let Some(every) = config.snapshot_every_logs {
        raft_config.snapshot_every_logs = every.max(1);
        raft_config.logs_kept_behind_snapshot = raft_config
            .logs_kept_behind_snapshot
            .min(raft_config.snapshot_every_logs / 10);
    }
    let raft = RaftNode::start_cluster(
        engine.clone(),
        raft_config,
        PeerSetup {
            listener: peer_listener,
            advertise_addr,
            bootstrap,
            faults: FaultFilter::default(),
        },
    )
    .await
    .map_err(|e| format!("start raft: {e}"))?;
    let db = open_database(&raft).await?;

    let sql_listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("listen on {}: {e}", config.listen))?;
    let http_listener = TcpListener::bind(config.http_listen)
        .await
        .map_err(|e| format!("listen on {}: {e}", config.http_listen))?;
    let sql_addr = sql_listener.local_addr().map_err(|e| e.to_string())?;
    let http_addr = http_listener.local_addr().map_err(|e| e.to_string())?;

    let shutdown = CancellationToken::new();
    let metrics = Metrics::new();
    let auth = match config.password.clone() {
        Some(password) => Auth::Password {
            user: DEFAULT_USER.to_string(),
            password,
        },
        None => Auth::Trust,
    };
    let frontend_config = FrontendConfig {
        auth,
        ..FrontendConfig::default()
    };
    let sql = tokio::spawn(sluice_frontend::serve_sql(
        sql_listener,
        db.clone(),
        frontend_config,
        metrics.clone(),
        shutdown.clone(),
    ));
    let http = tokio::spawn(sluice_frontend::serve_http(
        http_listener,
        db.clone(),
        metrics,
        config.fault_injection,
        shutdown.clone(),
    ));

    // Tests and scripts read these lines to learn the ports (port 0 is allowed).
    println!("sluice: sql listening on {sql_addr}");
    println!("sluice: http listening on {http_addr}");
    println!("sluice: ready");
    tracing::info!(%sql_addr, %http_addr, data_dir = %config.data_dir.display(), node_id = config.node_id, "node ready");

    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    for (name, task) in [("sql", sql), ("http", http)] {
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!("{name} server ended with an error: {e}"),
            Ok(Err(e)) => tracing::warn!("{name} server task failed: {e}"),
            Err(_) => tracing::warn!("{name} server did not stop within 10 s"),
        }
    }
    drop(db);
    if let Err(e) = raft.shutdown().await {
        tracing::warn!("raft shutdown: {e}");
    }
    if let Err(e) = engine.sync() {
        tracing::warn!("final engine sync: {e}");
    }
    Ok(())
}

/// Loads the catalog through a linearizable read. A restarting member of a
/// cluster may have to wait for an election (or for its peers to come back),
/// so it retries until a leader answers or the node is told to stop.
async fn open_database(raft: &Arc<RaftNode>) -> Result<Arc<Database>, String> {
    let mut logged = false;
    loop {
        let opened = tokio::select! {
            opened = Database::open(raft.clone()) => opened,
            _ = wait_for_signal() => return Err("stopped before the catalog could be loaded".into()),
        };
        match opened {
            Ok(db) => return Ok(db),
            Err(e) if e.is_retryable() => {
                if !logged {
                    tracing::warn!("waiting for a Raft leader to load the catalog: {e}");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(format!("load catalog: {e}")),
        }
    }
}

fn open_engine(data_dir: &Path, block_cache_mb: usize) -> Result<Arc<dyn Engine>, String> {
    let mut rocks = RocksConfig::new(data_dir.join("db"));
    rocks.block_cache_bytes = block_cache_mb.saturating_mul(1 << 20);
    let engine = RocksEngine::open(rocks)
        .map_err(|e| format!("open storage in {}: {e}", data_dir.display()))?;
    Ok(engine)
}

async fn wait_for_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statefulset_ordinals_become_node_ids() {
        assert_eq!(ordinal_of("sluice-0"), Ok(0));
        assert_eq!(ordinal_of("sluice-12.sluice.db.svc.cluster.local"), Ok(12));
        assert_eq!(ordinal_of("my-db-sluice-2"), Ok(2));
        assert!(ordinal_of("sluice").is_err());
        assert!(ordinal_of("").is_err());
    }

    #[test]
    fn join_and_init_resolve_from_flags() {
        let args = StartArgs {
            join: vec!["10.0.0.1:7433".into()],
            ..StartArgs::default()
        };
        let config = NodeConfig::resolve(args).unwrap();
        assert_eq!(config.join, vec!["10.0.0.1:7433".to_string()]);
        assert_eq!(config.peer_listen, DEFAULT_PEER_LISTEN.parse().unwrap());

        let unroutable = StartArgs {
            peer_listen: Some("0.0.0.0:7433".parse().unwrap()),
            ..StartArgs::default()
        };
        let err = NodeConfig::resolve(unroutable).unwrap_err();
        assert!(err.contains("--advertise-addr"), "{err}");
    }
}
