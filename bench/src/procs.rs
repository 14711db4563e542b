//! Processes the benchmarks start: 3-node Sluice and etcd clusters on
//! loopback, each member in its own temporary directory, killed and removed
//! when dropped (also when the benchmark fails half-way).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("pick a free port")
}

/// One member process, restartable with the same arguments and data.
pub struct Member {
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    pub fn new(program: &Path, args: Vec<String>, log: PathBuf) -> Member {
        Member {
            program: program.to_path_buf(),
            args,
            log,
            child: None,
        }
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "member already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open member log");
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process's peak resident memory so far (Linux `VmHWM`), in MB.
    pub fn peak_rss_mb(&self) -> Option<f64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until `ready` returns true, at most `limit`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !ready().await {
        assert!(Instant::now() < deadline, "{what} not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct SluiceCluster {
    pub members: Vec<Member>,
    pub sql_ports: Vec<u16>,
    _dir: TempDir,
}

impl SluiceCluster {
    /// Node 1 forms the cluster, the others join it one after the other.
    pub async fn start(binary: &Path, size: usize) -> SluiceCluster {
        let dir = TempDir::new().expect("temp dir");
        let peer_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let sql_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let mut members = Vec::new();
        for i in 0..size {
            let mut args = vec![
                "start".to_string(),
                format!("--node-id={}", i + 1),
                format!(
                    "--data-dir={}",
                    dir.path().join(format!("n{}", i + 1)).display()
                ),
                format!("--listen=127.0.0.1:{}", sql_ports[i]),
                format!("--http-listen=127.0.0.1:{}", free_port()),
                format!("--peer-listen=127.0.0.1:{}", peer_ports[i]),
            ];
            if i == 0 {
                args.push("--init".into());
            } else {
                args.push(format!("--join=127.0.0.1:{}", peer_ports[0]));
            }
            let mut member = Member::new(binary, args, dir.path().join(format!("n{}.log", i + 1)));
            member.start();
            let port = sql_ports[i];
            wait_until(
                "sluice node answers SQL",
                Duration::from_secs(60),
                || async move { connect(port).await.is_some() },
            )
            .await;
            members.push(member);
        }
        SluiceCluster {
            members,
            sql_ports,
            _dir: dir,
        }
    }

    /// The index of the member the reachable members agree leads.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (i, port) in self.sql_ports.iter().enumerate() {
                if !self.members[i].is_running() {
                    continue;
                }
                let Some(client) = connect(*port).await else {
                    continue;
                };
                if let Ok(row) = client
                    .query_one("SELECT role FROM sluice_catalog.nodes WHERE is_local", &[])
                    .await
                {
                    if row.get::<_, Option<String>>(0).as_deref() == Some("leader") {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no sluice leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every member's replica has applied as far as the leader
    /// had committed when asked.
    pub async fn wait_caught_up(&self) {
        let ports = self.sql_ports.clone();
        wait_until("sluice members catch up", Duration::from_secs(60), || {
            let ports = ports.clone();
            async move {
                let Some(client) = connect(ports[0]).await else {
                    return false;
                };
                match client
                    .query(
                        "SELECT bool_and(reachable AND lag = 0) FROM sluice_catalog.nodes",
                        &[],
                    )
                    .await
                {
                    Ok(rows) => rows
                        .first()
                        .and_then(|r| r.get::<_, Option<bool>>(0))
                        .unwrap_or(false),
                    Err(_) => false,
                }
            }
        })
        .await;
    }
}

pub async fn connect(port: u16) -> Option<tokio_postgres::Client> {
    let conninfo =
        format!("host=127.0.0.1 port={port} user=sluice dbname=sluice connect_timeout=2");
    let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Some(client)
}

pub struct EtcdCluster {
    pub members: Vec<Member>,
    pub client_ports: Vec<u16>,
    _dir: TempDir,
}

impl EtcdCluster {
    /// Three members at etcd's default timeouts (heartbeat 100 ms, election
    /// 1000 ms) and default durability (the WAL is fsynced before a put is
    /// acknowledged).
    pub async fn start(binary: &Path, size: usize) -> EtcdCluster {
        let dir = TempDir::new().expect("temp dir");
        let peer_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let client_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let initial: Vec<String> = (0..size)
            .map(|i| format!("e{i}=http://127.0.0.1:{}", peer_ports[i]))
            .collect();
        let mut members = Vec::new();
        for i in 0..size {
            let args = vec![
                format!("--name=e{i}"),
                format!("--data-dir={}", dir.path().join(format!("e{i}")).display()),
                format!("--listen-peer-urls=http://127.0.0.1:{}", peer_ports[i]),
                format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                    peer_ports[i]
                ),
                format!("--listen-client-urls=http://127.0.0.1:{}", client_ports[i]),
                format!(
                    "--advertise-client-urls=http://127.0.0.1:{}",
                    client_ports[i]
                ),
                format!("--initial-cluster={}", initial.join(",")),
                "--initial-cluster-state=new".into(),
                "--initial-cluster-token=sluice-bench".into(),
                "--log-level=error".into(),
            ];
            let mut member = Member::new(binary, args, dir.path().join(format!("e{i}.log")));
            member.start();
            members.push(member);
        }
        let cluster = EtcdCluster {
            members,
            client_ports,
            _dir: dir,
        };
        let _ = cluster.leader().await;
        cluster
    }

    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for (i, port) in self.client_ports.iter().enumerate() {
                if !self.members[i].is_running() {
                    continue;
                }
                let Ok(mut conn) = crate::http::Connection::open(*port).await else {
                    continue;
                };
                let Ok(body) = conn.post("/v3/maintenance/status", "{}").await else {
                    continue;
                };
                let Ok(status) = serde_json::from_str::<serde_json::Value>(&body) else {
                    continue;
                };
                let leader = status["leader"].as_str().map(str::to_string);
                let me = status["header"]["member_id"].as_str().map(str::to_string);
                if leader.is_some() && leader == me {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no etcd leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
