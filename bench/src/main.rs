//! `sluice-bench`: the benchmark suites that need more than pgbench, each
//! running Sluice beside its anchor in the same run, alternating, and
//! printing Markdown rows for `bench/RESULTS.md` (`bench/run` calls it).
//!
//! - `failover`: a 3-node loopback cluster under a steady write load; the
//!   leader is killed with SIGKILL; probes (a write every 20 ms, each on a
//!   new connection to a live member) measure the write unavailability: the
//!   time from the kill to the first acknowledged probe issued after it; the
//!   killed member is restarted and the cluster settles before the next
//!   kill. Anchor: a 3-node etcd at its default timeouts, same pattern
//!   (puts through its JSON gateway).
//! - `replicated-writes`: durable single-row writes with 100-byte values
//!   from N clients spread over the members of a 3-node cluster, beside a
//!   single Sluice node and a 3-node etcd: writes/s and latency.
//! - `topic-append` and `subscribe-latency`: see module `topics` (anchor:
//!   Redis Streams).
//! - `chart`: draws the run's charts from the figures the suites recorded
//!   (module `chart`).

mod chart;
mod http;
mod nats;
mod pgraw;
mod procs;
mod topics;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use procs::{connect, EtcdCluster, SluiceCluster};

#[derive(Parser)]
struct Cli {
    /// The sluice binary to measure (every suite needs it; `chart` does not)
    #[arg(long, default_value = "target/release/sluice")]
    sluice: PathBuf,
    /// The etcd binary of the anchor
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// The redis-server binary of the topic suites' anchor
    #[arg(long, default_value = "/usr/bin/redis-server")]
    redis: PathBuf,
    /// The nats-server binary of the topic suites' second anchor
    #[arg(long, default_value = "/usr/sbin/nats-server")]
    nats: PathBuf,
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Subcommand)]
enum Suite {
    Failover {
        /// Leader kills per system (alternating Sluice / etcd)
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// Concurrent writers during each kill
        #[arg(long, default_value_t = 8)]
        writers: usize,
    },
    ReplicatedWrites {
        #[arg(long, default_value = "1,64,256", value_delimiter = ',')]
        clients: Vec<usize>,
        #[arg(long, default_value_t = 3)]
        reps: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    TopicAppend {
        /// Records appended per run
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        #[arg(long, default_value_t = 4)]
        producers: u64,
        /// Records per COPY, INSERT or Redis pipeline
        #[arg(long, default_value_t = 10_000)]
        batch: u64,
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    SubscribeLatency {
        /// Records per second the producer appends
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// One SVG per suite from a run's figures file
    Chart {
        #[arg(long)]
        figures: PathBuf,
        #[arg(long, default_value = "bench/charts")]
        out: PathBuf,
        /// Shown under each chart's suite name: the run's date and commit
        #[arg(long, default_value = "")]
        title: String,
    },
}

/// Acknowledged writes: when each was issued and when it was acknowledged.
type Acks = Arc<Mutex<Vec<(Instant, Instant)>>>;

/// A running load: writers that stop when told.
struct Load {
    stop: Arc<AtomicBool>,
    acks: Acks,
    errors: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn new() -> Load {
        Load {
            stop: Arc::default(),
            acks: Arc::default(),
            errors: Arc::default(),
            tasks: Vec::new(),
        }
    }

    async fn finish(self) -> (Vec<(Instant, Instant)>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let acks = std::mem::take(&mut *self.acks.lock().unwrap());
        (acks, self.errors.load(Ordering::Relaxed))
    }

    /// Writers inserting 100-byte values into `kv`, each starting on member
    /// `w % ports.len()` and moving to the next member when its own is gone.
    fn sluice(ports: &[u16], writers: usize, tag: u64) -> Load {
        let mut load = Load::new();
        for w in 0..writers {
            let ports = ports.to_vec();
            let (stop, acks, errors) = (load.stop.clone(), load.acks.clone(), load.errors.clone());
            load.tasks.push(tokio::spawn(async move {
                let mut member = w % ports.len();
                let mut seq = 0i64;
                let value = "v".repeat(100);
                let key_base = ((tag << 40) | ((w as u64) << 28)) as i64;
                while !stop.load(Ordering::Relaxed) {
                    let Some(client) = connect(ports[member]).await else {
                        member = (member + 1) % ports.len();
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    let Ok(insert) = client.prepare("INSERT INTO kv VALUES ($1, $2)").await else {
                        member = (member + 1) % ports.len();
                        continue;
                    };
                    while !stop.load(Ordering::Relaxed) {
                        seq += 1;
                        let issued = Instant::now();
                        match client.execute(&insert, &[&(key_base + seq), &value]).await {
                            Ok(_) => acks.lock().unwrap().push((issued, Instant::now())),
                            Err(e) if e.is_closed() || e.code().is_none() => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                member = (member + 1) % ports.len();
                                break;
                            }
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                        }
                    }
                }
            }));
        }
        load
    }

    /// The same pattern as etcd puts of 100-byte values.
    fn etcd(ports: &[u16], writers: usize, tag: u64) -> Load {
        let mut load = Load::new();
        for w in 0..writers {
            let ports = ports.to_vec();
            let (stop, acks, errors) = (load.stop.clone(), load.acks.clone(), load.errors.clone());
            load.tasks.push(tokio::spawn(async move {
                let mut member = w % ports.len();
                let mut seq = 0u64;
                let value = http::base64("v".repeat(100).as_bytes());
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut conn) = http::Connection::open(ports[member]).await else {
                        member = (member + 1) % ports.len();
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    while !stop.load(Ordering::Relaxed) {
                        seq += 1;
                        let key = http::base64(format!("k/{tag}/{w}/{seq}").as_bytes());
                        let body = format!(r#"{{"key":"{key}","value":"{value}"}}"#);
                        let issued = Instant::now();
                        let put = tokio::time::timeout(
                            Duration::from_secs(5),
                            conn.post("/v3/kv/put", &body),
                        )
                        .await;
                        match put {
                            Ok(Ok(_)) => acks.lock().unwrap().push((issued, Instant::now())),
                            _ => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                member = (member + 1) % ports.len();
                                break;
                            }
                        }
                    }
                }
            }));
        }
        load
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Which system a probe writes to.
#[derive(Clone, Copy)]
enum System {
    Sluice,
    Etcd,
}

/// Issues one write every 20 ms on an idle one of 8 connections per live
/// member, opened before the kill (as a client behind a health-checked
/// balancer would), so that requests stuck on the dead leader cannot hide
/// when writes resume: the first probe issued after the kill and
/// acknowledged ends the unavailability. Opening connections during the
/// election is avoided on purpose: a storm of new sessions is a different
/// experiment (see the cluster notes in docs/architecture.md).
async fn probes(system: System, ports: Vec<u16>, killed: usize, round: u64) -> Load {
    enum Conn {
        Sluice(tokio_postgres::Client),
        Etcd(http::Connection),
    }
    let mut pool = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        if i == killed {
            continue;
        }
        for _ in 0..8 {
            let conn = match system {
                System::Sluice => connect(*port).await.map(Conn::Sluice),
                System::Etcd => http::Connection::open(*port).await.ok().map(Conn::Etcd),
            };
            if let Some(conn) = conn {
                pool.push(Arc::new(tokio::sync::Mutex::new(conn)));
            }
        }
    }
    assert!(!pool.is_empty(), "no probe connection opened");
    let mut load = Load::new();
    let (stop, acks) = (load.stop.clone(), load.acks.clone());
    load.tasks.push(tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let Some(conn) = pool.iter().find_map(|c| c.clone().try_lock_owned().ok()) else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let acks = acks.clone();
            tokio::spawn(async move {
                let mut conn = conn;
                let issued = Instant::now();
                let key = format!("probe/{round}/{n}");
                let written = tokio::time::timeout(Duration::from_secs(10), async {
                    match &mut *conn {
                        Conn::Sluice(client) => {
                            let id = ((1u64 << 62) | (round << 32) | n) as i64;
                            client
                                .execute("INSERT INTO kv VALUES ($1, $2)", &[&id, &key])
                                .await
                                .is_ok()
                        }
                        Conn::Etcd(http) => {
                            let body = format!(
                                r#"{{"key":"{}","value":"{}"}}"#,
                                http::base64(key.as_bytes()),
                                http::base64(b"probe")
                            );
                            http.post("/v3/kv/put", &body).await.is_ok()
                        }
                    }
                })
                .await;
                if let Ok(true) = written {
                    acks.lock().unwrap().push((issued, Instant::now()));
                }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }));
    load
}

/// Kills the leader under load; the write unavailability of that kill.
async fn sluice_kill(cluster: &mut SluiceCluster, writers: usize, round: u64) -> Duration {
    let load = Load::sluice(&cluster.sql_ports, writers, round);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let leader = cluster.leader().await;
    let probe = probes(System::Sluice, cluster.sql_ports.clone(), leader, round).await;
    let killed = Instant::now();
    cluster.members[leader].kill9();
    let gap = wait_first_ack_after(&probe.acks, killed).await;
    let _ = probe.finish().await;
    let _ = load.finish().await;
    cluster.members[leader].start();
    cluster.wait_caught_up().await;
    gap
}

async fn etcd_kill(cluster: &mut EtcdCluster, writers: usize, round: u64) -> Duration {
    let load = Load::etcd(&cluster.client_ports, writers, round);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let leader = cluster.leader().await;
    let probe = probes(System::Etcd, cluster.client_ports.clone(), leader, round).await;
    let killed = Instant::now();
    cluster.members[leader].kill9();
    let gap = wait_first_ack_after(&probe.acks, killed).await;
    let _ = probe.finish().await;
    let _ = load.finish().await;
    cluster.members[leader].start();
    // Settled: a leader again, and the restarted member has had time to catch up.
    let _ = cluster.leader().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gap
}

async fn wait_first_ack_after(acks: &Acks, killed: Instant) -> Duration {
    let deadline = killed + Duration::from_secs(60);
    loop {
        let first = acks
            .lock()
            .unwrap()
            .iter()
            .filter(|(issued, _)| *issued > killed)
            .map(|(_, acked)| *acked)
            .min();
        if let Some(acked) = first {
            return acked - killed;
        }
        assert!(
            Instant::now() < deadline,
            "writes never resumed after a kill"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn create_kv(port: u16) {
    let client = connect(port).await.expect("connect to sluice");
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS kv (k bigint PRIMARY KEY, v text)")
        .await
        .expect("create kv");
}

async fn failover(cli: &Cli, kills: usize, writers: usize) {
    let mut sluice = SluiceCluster::start(&cli.sluice, 3).await;
    create_kv(sluice.sql_ports[0]).await;
    let mut etcd = EtcdCluster::start(&cli.etcd, 3).await;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..kills {
        let a = sluice_kill(&mut sluice, writers, round as u64).await;
        let b = etcd_kill(&mut etcd, writers, round as u64).await;
        eprintln!(
            "failover {}/{kills}: sluice {}, etcd {}",
            round + 1,
            ms(a),
            ms(b)
        );
        ours.push(a);
        theirs.push(b);
    }
    ours.sort();
    theirs.sort();
    let (p50, p99) = (percentile(&ours, 50.0), percentile(&ours, 99.0));
    let (e50, e99) = (percentile(&theirs, 50.0), percentile(&theirs, 99.0));
    for (system, p50, p99) in [("Sluice", p50, p99), ("etcd", e50, e99)] {
        let workload = format!("{kills} leader kills");
        chart::record(
            "failover",
            &workload,
            system,
            "unavailability p50 ms",
            p50.as_secs_f64() * 1e3,
        );
        chart::record(
            "failover",
            &workload,
            system,
            "unavailability p99 ms",
            p99.as_secs_f64() * 1e3,
        );
    }
    println!(
        "| failover | {kills} leader kills, {writers} writers | p50 {}, p99 {}, max {} | p50 {}, p99 {}, max {} | {:.2} (p50), {:.2} (p99) |",
        ms(p50),
        ms(p99),
        ms(*ours.last().unwrap_or(&Duration::ZERO)),
        ms(e50),
        ms(e99),
        ms(*theirs.last().unwrap_or(&Duration::ZERO)),
        e50.as_secs_f64() / p50.as_secs_f64().max(1e-9),
        e99.as_secs_f64() / p99.as_secs_f64().max(1e-9),
    );
}

struct Throughput {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

fn summarize(acks: &[(Instant, Instant)], seconds: f64) -> Throughput {
    let mut latencies: Vec<Duration> = acks.iter().map(|(i, a)| *a - *i).collect();
    latencies.sort();
    Throughput {
        per_second: acks.len() as f64 / seconds,
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

async fn measure(load: Load, seconds: u64) -> Throughput {
    // The first second is warm-up: connections, prepared statements.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let until = Instant::now();
    let (acks, _) = load.finish().await;
    let window: Vec<_> = acks
        .into_iter()
        .filter(|(issued, acked)| *issued >= from && *acked <= until)
        .collect();
    summarize(&window, (until - from).as_secs_f64())
}

async fn replicated_writes(cli: &Cli, clients: &[usize], reps: usize, seconds: u64) {
    let cluster = SluiceCluster::start(&cli.sluice, 3).await;
    create_kv(cluster.sql_ports[0]).await;
    let single = SluiceCluster::start(&cli.sluice, 1).await;
    create_kv(single.sql_ports[0]).await;
    let etcd = EtcdCluster::start(&cli.etcd, 3).await;
    let mut round = 0u64;
    for &n in clients {
        let (mut three, mut one, mut anchor) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            round += 1;
            three.push(measure(Load::sluice(&cluster.sql_ports, n, round), seconds).await);
            one.push(measure(Load::sluice(&single.sql_ports, n, round), seconds).await);
            anchor.push(measure(Load::etcd(&etcd.client_ports, n, round), seconds).await);
        }
        let describe = |runs: &[Throughput]| {
            format!(
                "{:.0} writes/s, p50 {}, p99 {}",
                median(runs.iter().map(|t| t.per_second).collect()),
                ms(Duration::from_secs_f64(median(
                    runs.iter().map(|t| t.p50.as_secs_f64()).collect()
                ))),
                ms(Duration::from_secs_f64(median(
                    runs.iter().map(|t| t.p99.as_secs_f64()).collect()
                ))),
            )
        };
        let ratio = median(three.iter().map(|t| t.per_second).collect())
            / median(anchor.iter().map(|t| t.per_second).collect()).max(1e-9);
        eprintln!("replicated-writes {n} clients done");
        for (system, runs) in [
            ("Sluice 3 nodes", &three),
            ("Sluice 1 node", &one),
            ("etcd 3 nodes", &anchor),
        ] {
            let workload = format!("{n} clients");
            let rate = median(runs.iter().map(|t| t.per_second).collect());
            let p99 = median(runs.iter().map(|t| t.p99.as_secs_f64() * 1e3).collect());
            chart::record("replicated-writes", &workload, system, "writes/s", rate);
            chart::record("replicated-writes", &workload, system, "p99 ms", p99);
        }
        println!(
            "| replicated-writes | {n} clients, 100-byte values | 3 nodes: {}; 1 node: {} | {} | {ratio:.2} |",
            describe(&three),
            describe(&one),
            describe(&anchor),
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cli = Cli::parse();
    match &cli.suite {
        Suite::Failover { kills, writers } => failover(&cli, *kills, *writers).await,
        Suite::ReplicatedWrites {
            clients,
            reps,
            seconds,
        } => replicated_writes(&cli, clients, *reps, *seconds).await,
        Suite::TopicAppend {
            records,
            producers,
            batch,
            reps,
        } => {
            topics::topic_append(
                &cli.sluice,
                &cli.redis,
                &cli.nats,
                *records,
                *producers,
                *batch,
                *reps,
            )
            .await
        }
        Suite::SubscribeLatency {
            rate,
            seconds,
            reps,
        } => {
            topics::subscribe_latency(&cli.sluice, &cli.redis, &cli.nats, *rate, *seconds, *reps)
                .await
        }
        Suite::Chart {
            figures,
            out,
            title,
        } => match chart::draw(figures, out, title) {
            Ok(written) => written.iter().for_each(|path| eprintln!("chart: {path}")),
            Err(e) => {
                eprintln!("sluice-bench chart: {e}");
                std::process::exit(1);
            }
        },
    }
}
