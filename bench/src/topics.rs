//! Topic suites: durable appends of 100-byte records and end-to-end
//! subscription latency, Sluice beside Redis Streams (AOF with
//! `appendfsync always`, durable like Sluice, and `everysec`, which is not)
//! and NATS JetStream (file storage; acknowledged before fsync).
//!
//! - `topic-append`: P producers append N records in total in batches of B:
//!   Sluice by `COPY … FROM STDIN` and by multi-row INSERT into a 4-partition
//!   topic, Redis by pipelined `XADD`. Records per second.
//! - `subscribe-latency`: a producer appends at a steady rate (10 records
//!   per statement or pipeline, spread over 4 connections; Sluice's is a
//!   prepared 10-row INSERT, as a driver's statement cache sends it) and one consumer
//!   receives: Sluice through `COPY (SUBSCRIBE … FROM END) TO STDOUT`, Redis
//!   through `XREAD BLOCK`. Latency is from just before the producer sends
//!   a record to its receipt (both ends on this machine's clock). Every
//!   system's producers and consumer speak its protocol from the measuring
//!   task itself (Sluice's through [`crate::pgraw`]), so that no client
//!   library's own tasks sit inside the measured time.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::nats::{Nats, NatsServer};
use crate::pgraw::PgRaw;
use crate::procs::{connect, free_port, wait_until, Member, SluiceCluster};
use crate::{median, percentile};

/// A Redis server on loopback with its AOF in a temporary directory.
pub struct Redis {
    pub member: Member,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub async fn start(binary: &Path, fsync: &str) -> Redis {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let port = free_port();
        let args = vec![
            "--port".to_string(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            dir.path().display().to_string(),
            "--appendonly".into(),
            "yes".into(),
            "--appendfsync".into(),
            fsync.into(),
            "--save".into(),
            String::new(),
        ];
        let mut member = Member::new(binary, args, dir.path().join("redis.log"));
        member.start();
        wait_until("redis answers", Duration::from_secs(30), || async move {
            match Resp::connect(port).await {
                Some(mut r) => {
                    matches!(r.call(&[b"PING"]).await, Ok(Reply::Simple(pong)) if pong == "PONG")
                }
                None => false,
            }
        })
        .await;
        Redis {
            member,
            port,
            _dir: dir,
        }
    }
}

/// A minimal RESP2 client: enough for XADD, XREAD, DEL and PING.
pub struct Resp {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

#[derive(Debug)]
pub enum Reply {
    Simple(String),
    Bulk(Option<Vec<u8>>),
    Integer(i64),
    Array(Option<Vec<Reply>>),
}

impl Resp {
    pub async fn connect(port: u16) -> Option<Resp> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.set_nodelay(true).ok()?;
        let (read, write) = stream.into_split();
        Some(Resp {
            reader: BufReader::new(read),
            writer: write,
        })
    }

    fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Sends every command in one write, then reads their replies.
    pub async fn pipeline(&mut self, commands: &[Vec<Vec<u8>>]) -> std::io::Result<Vec<Reply>> {
        let mut out = Vec::new();
        for command in commands {
            let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
            Self::encode(&mut out, &args);
        }
        self.writer.write_all(&out).await?;
        let mut replies = Vec::with_capacity(commands.len());
        for _ in commands {
            replies.push(self.reply().await?);
        }
        Ok(replies)
    }

    pub async fn call(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        let mut out = Vec::new();
        Self::encode(&mut out, args);
        self.writer.write_all(&out).await?;
        self.reply().await
    }

    fn reply(
        &mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Reply>> + Send + '_>>
    {
        Box::pin(async move {
            let mut line = String::new();
            self.reader.read_line(&mut line).await?;
            let line = line.trim_end_matches("\r\n");
            let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, line.to_string());
            let (kind, rest) = line.split_at(1.min(line.len()));
            Ok(match kind {
                "+" => Reply::Simple(rest.to_string()),
                "-" => return Err(std::io::Error::other(format!("redis: {rest}"))),
                ":" => Reply::Integer(rest.parse().map_err(|_| bad())?),
                "$" => {
                    let len: i64 = rest.parse().map_err(|_| bad())?;
                    if len < 0 {
                        Reply::Bulk(None)
                    } else {
                        let mut data = vec![0; len as usize + 2];
                        self.reader.read_exact(&mut data).await?;
                        data.truncate(len as usize);
                        Reply::Bulk(Some(data))
                    }
                }
                "*" => {
                    let len: i64 = rest.parse().map_err(|_| bad())?;
                    if len < 0 {
                        Reply::Array(None)
                    } else {
                        let mut items = Vec::with_capacity(len as usize);
                        for _ in 0..len {
                            items.push(self.reply().await?);
                        }
                        Reply::Array(Some(items))
                    }
                }
                _ => return Err(bad()),
            })
        })
    }
}

/// A single Sluice node (kept while the value lives) and its SQL port,
/// after running `ddl` on it.
async fn sluice_with(sluice: &Path, ddl: &str) -> (SluiceCluster, u16) {
    let node = SluiceCluster::start(sluice, 1).await;
    let port = node.sql_ports[0];
    connect(port)
        .await
        .expect("connect")
        .batch_execute(ddl)
        .await
        .expect("create topic");
    (node, port)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A 100-byte record body.
fn payload(n: u64) -> String {
    format!("{n:0>100}")
}

#[derive(Clone, Copy)]
enum Producer {
    SluiceCopy,
    SluiceInsert,
    Redis,
    Nats,
}

/// Appends `total` records from `producers` connections in batches of `batch`; records/s.
async fn append_run(
    kind: Producer,
    port: u16,
    total: u64,
    producers: u64,
    batch: u64,
    round: u64,
) -> f64 {
    let each = total / producers;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        tasks.push(tokio::spawn(async move {
            let base = round * 1_000_000_000 + p * each;
            match kind {
                Producer::SluiceCopy | Producer::SluiceInsert => {
                    let client = connect(port).await.expect("connect to sluice");
                    let mut sent = 0;
                    while sent < each {
                        let n = batch.min(each - sent);
                        match kind {
                            Producer::SluiceCopy => {
                                let mut data = String::with_capacity(n as usize * 101);
                                for i in 0..n {
                                    data.push_str(&payload(base + sent + i));
                                    data.push('\n');
                                }
                                let sink = client
                                    .copy_in::<_, bytes::Bytes>(
                                        "COPY bench_topic (payload) FROM STDIN",
                                    )
                                    .await
                                    .expect("copy in");
                                futures::pin_mut!(sink);
                                futures::SinkExt::send(&mut sink, bytes::Bytes::from(data))
                                    .await
                                    .expect("copy data");
                                sink.finish().await.expect("copy finish");
                            }
                            _ => {
                                let values: Vec<String> = (0..n)
                                    .map(|i| format!("('{}')", payload(base + sent + i)))
                                    .collect();
                                client
                                    .batch_execute(&format!(
                                        "INSERT INTO bench_topic (payload) VALUES {}",
                                        values.join(",")
                                    ))
                                    .await
                                    .expect("insert");
                            }
                        }
                        sent += n;
                    }
                }
                Producer::Nats => {
                    let mut nats = Nats::connect(port).await.expect("connect to nats");
                    let inbox = format!("_INBOX.acks{p}");
                    nats.subscribe(&inbox).await.expect("subscribe to acks");
                    let mut sent = 0;
                    while sent < each {
                        let n = batch.min(each - sent);
                        let mut out = Vec::with_capacity(n as usize * 140);
                        for i in 0..n {
                            Nats::publish_into(
                                &mut out,
                                "bench",
                                &inbox,
                                payload(base + sent + i).as_bytes(),
                            );
                        }
                        nats.write(&out).await.expect("publish");
                        for _ in 0..n {
                            let ack = nats.next_msg().await.expect("ack");
                            assert!(
                                !ack.payload.starts_with(b"{\"error\""),
                                "nats refused a publish"
                            );
                        }
                        sent += n;
                    }
                }
                Producer::Redis => {
                    let mut redis = Resp::connect(port).await.expect("connect to redis");
                    let mut sent = 0;
                    while sent < each {
                        let n = batch.min(each - sent);
                        let commands: Vec<Vec<Vec<u8>>> = (0..n)
                            .map(|i| {
                                vec![
                                    b"XADD".to_vec(),
                                    b"bench".to_vec(),
                                    b"*".to_vec(),
                                    b"payload".to_vec(),
                                    payload(base + sent + i).into_bytes(),
                                ]
                            })
                            .collect();
                        redis.pipeline(&commands).await.expect("xadd");
                        sent += n;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("producer");
    }
    (each * producers) as f64 / started.elapsed().as_secs_f64()
}

pub async fn topic_append(
    sluice: &Path,
    redis: &Path,
    nats: &Path,
    total: u64,
    producers: u64,
    batch: u64,
    reps: usize,
) {
    let (node, port) = sluice_with(
        sluice,
        "CREATE TOPIC bench_topic (payload text) WITH (partitions = 4)",
    )
    .await;
    let always = Redis::start(redis, "always").await;
    let everysec = Redis::start(redis, "everysec").await;
    let jetstream = NatsServer::with_stream(nats, "BENCH", "bench").await;
    let mut js = Vec::new();
    let (mut copy, mut insert, mut r_always, mut r_everysec) = (vec![], vec![], vec![], vec![]);
    for round in 0..reps as u64 {
        copy.push(
            append_run(
                Producer::SluiceCopy,
                port,
                total,
                producers,
                batch,
                round * 4,
            )
            .await,
        );
        r_always.push(
            append_run(
                Producer::Redis,
                always.port,
                total,
                producers,
                batch,
                round * 4 + 1,
            )
            .await,
        );
        insert.push(
            append_run(
                Producer::SluiceInsert,
                port,
                total,
                producers,
                batch,
                round * 4 + 2,
            )
            .await,
        );
        r_everysec.push(
            append_run(
                Producer::Redis,
                everysec.port,
                total,
                producers,
                batch,
                round * 4 + 3,
            )
            .await,
        );
        js.push(
            append_run(
                Producer::Nats,
                jetstream.port,
                total,
                producers,
                batch,
                round * 4 + 1_000,
            )
            .await,
        );
        eprintln!("topic-append rep {} done", round + 1);
    }
    let spread = |v: &[f64]| {
        let min = v.iter().cloned().fold(f64::MAX, f64::min);
        let max = v.iter().cloned().fold(0.0, f64::max);
        format!("{:.0} rec/s ({min:.0}–{max:.0})", median(v.to_vec()))
    };
    let ratio = |a: &[f64], b: &[f64]| median(a.to_vec()) / median(b.to_vec()).max(1e-9);
    let workload = format!("{total} × 100 B, {producers} producers");
    let peak = |member: &Member| member.peak_rss_mb().unwrap_or(0.0);
    for (system, runs, member) in [
        ("Sluice COPY", &copy, &node.members[0]),
        ("Sluice INSERT", &insert, &node.members[0]),
        ("Redis always", &r_always, &always.member),
        ("Redis everysec", &r_everysec, &everysec.member),
        ("NATS JetStream", &js, &jetstream.member),
    ] {
        crate::chart::record(
            "topic-append",
            &workload,
            system,
            "records/s",
            median(runs.to_vec()),
        );
        if !system.ends_with("INSERT") {
            let server = system.trim_end_matches(" COPY");
            crate::chart::record(
                "topic-append",
                "peak server memory",
                server,
                "MB",
                peak(member),
            );
        }
    }
    println!(
        "| topic-append | {total} × 100 B, {producers} producers, batches of {batch}; peak RSS Sluice {:.0} MB, Redis always {:.0} MB, everysec {:.0} MB, NATS {:.0} MB | COPY: {}; INSERT: {} | Redis appendfsync always: {}; everysec (not durable): {}; NATS JetStream (not durable): {} | COPY/always {:.2}, INSERT/always {:.2}, COPY/JetStream {:.2} |",
        peak(&node.members[0]),
        peak(&always.member),
        peak(&everysec.member),
        peak(&jetstream.member),
        spread(&copy),
        spread(&insert),
        spread(&r_always),
        spread(&r_everysec),
        spread(&js),
        ratio(&copy, &r_always),
        ratio(&insert, &r_always),
        ratio(&copy, &js),
    );
}

#[derive(Clone, Copy, PartialEq)]
enum Anchor {
    Sluice,
    Redis,
    Nats,
}

/// The latencies of one run, each sorted.
struct Latencies {
    /// From just before a producer sent a record to its receipt by the consumer.
    end_to_end: Vec<Duration>,
    /// Sluice only: from the server's stamp on the record (`_timestamp`, taken as the
    /// INSERT writes, before its Raft proposal) to its receipt, which leaves out the
    /// client and the statement.
    after_stamp: Vec<Duration>,
    /// From just before a producer sent a batch to its acknowledgement: how much of the
    /// end-to-end time the append itself takes, commit and fsync included.
    acknowledged: Vec<Duration>,
}

fn drain_sorted(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Duration>) -> Vec<Duration> {
    let mut all = Vec::new();
    while let Ok(l) = rx.try_recv() {
        all.push(l);
    }
    all.sort();
    all
}

/// Latencies of `seconds` of records produced at `rate` per second.
async fn latency_run(system: Anchor, port: u16, rate: u64, seconds: u64) -> Latencies {
    const PER_SEND: u64 = 10;
    const PRODUCERS: u64 = 4;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    let (stamped_tx, mut stamped_rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    let total = rate * seconds;
    // The consumer, subscribed before the first record.
    let consumer = if system == Anchor::Nats {
        let mut conn = Nats::connect(port).await.expect("nats consumer");
        let deliver = format!("deliver.lat{}", now_us());
        conn.subscribe(&deliver).await.expect("subscribe");
        conn.push_consumer("LAT", &deliver)
            .await
            .expect("push consumer");
        tokio::spawn(async move {
            let mut seen = 0;
            while seen < total {
                let Ok(msg) = conn.next_msg().await else {
                    break;
                };
                let received = now_us();
                let sent: i64 = String::from_utf8_lossy(&msg.payload)
                    .parse()
                    .unwrap_or(received);
                let _ = tx.send(Duration::from_micros((received - sent).max(0) as u64));
                seen += 1;
            }
        })
    } else if system == Anchor::Redis {
        let mut conn = Resp::connect(port).await.expect("redis consumer");
        let deleted = conn.call(&[b"DEL", b"lat"]).await.expect("del");
        assert!(
            matches!(deleted, Reply::Integer(n) if n >= 0),
            "{deleted:?}"
        );
        tokio::spawn(async move {
            let mut last = b"$".to_vec();
            let mut seen = 0;
            while seen < total {
                let reply = conn
                    .call(&[b"XREAD", b"BLOCK", b"5000", b"STREAMS", b"lat", &last])
                    .await
                    .expect("xread");
                let received = now_us();
                let Reply::Array(Some(streams)) = reply else {
                    break;
                };
                for stream in streams {
                    let Reply::Array(Some(parts)) = stream else {
                        continue;
                    };
                    let Some(Reply::Array(Some(entries))) = parts.into_iter().nth(1) else {
                        continue;
                    };
                    for entry in entries {
                        let Reply::Array(Some(mut fields)) = entry else {
                            continue;
                        };
                        let Reply::Bulk(Some(id)) = fields.remove(0) else {
                            continue;
                        };
                        last = id;
                        if let Some(Reply::Array(Some(kv))) = fields.pop() {
                            if let Some(Reply::Bulk(Some(sent))) = kv.get(1) {
                                let sent: i64 =
                                    String::from_utf8_lossy(sent).parse().unwrap_or(received);
                                let _ =
                                    tx.send(Duration::from_micros((received - sent).max(0) as u64));
                                seen += 1;
                            }
                        }
                    }
                }
            }
        })
    } else {
        let mut conn = PgRaw::connect(port).await.expect("sluice consumer");
        tokio::spawn(async move {
            conn.copy_out("COPY (SUBSCRIBE lat FROM END) TO STDOUT")
                .await
                .expect("subscribe");
            let mut partial = Vec::new();
            let mut seen = 0;
            while seen < total {
                let Ok(message) = conn.read().await else {
                    break;
                };
                if message.tag != b'd' {
                    break;
                }
                let received = now_us();
                partial.extend_from_slice(&message.body);
                while let Some(end) = partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=end).collect();
                    let line = String::from_utf8_lossy(&line);
                    // _partition, _offset, _timestamp, sent_us, payload
                    let fields: Vec<&str> = line.split('\t').collect();
                    let sent = fields
                        .get(3)
                        .and_then(|s| s.parse::<i64>().ok())
                        .unwrap_or(received);
                    let _ = tx.send(Duration::from_micros((received - sent).max(0) as u64));
                    if let Some(stamped) = fields.get(2).and_then(|t| micros_of_day(t)) {
                        let since = (received % DAY_US - stamped).rem_euclid(DAY_US);
                        let _ = stamped_tx.send(Duration::from_micros(since as u64));
                    }
                    seen += 1;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let interval = Duration::from_micros(1_000_000 * PER_SEND * PRODUCERS / rate);
    let mut producers = Vec::new();
    for _ in 0..PRODUCERS {
        let acked_tx = acked_tx.clone();
        producers.push(tokio::spawn(async move {
            let acknowledged = |sent: i64| {
                let _ = acked_tx.send(Duration::from_micros((now_us() - sent).max(0) as u64));
            };
            let sends = total / PER_SEND / PRODUCERS;
            let mut ticker = tokio::time::interval(interval);
            if system == Anchor::Nats {
                let mut conn = Nats::connect(port).await.expect("nats producer");
                let inbox = format!("_INBOX.lat{}", now_us());
                conn.subscribe(&inbox).await.expect("subscribe to acks");
                for _ in 0..sends {
                    ticker.tick().await;
                    let sent_us = now_us();
                    let sent = sent_us.to_string();
                    let mut out = Vec::new();
                    for _ in 0..PER_SEND {
                        Nats::publish_into(&mut out, "lat", &inbox, sent.as_bytes());
                    }
                    conn.write(&out).await.expect("publish");
                    for _ in 0..PER_SEND {
                        conn.next_msg().await.expect("ack");
                    }
                    acknowledged(sent_us);
                }
            } else if system == Anchor::Redis {
                let mut conn = Resp::connect(port).await.expect("redis producer");
                for _ in 0..sends {
                    ticker.tick().await;
                    let sent_us = now_us();
                    let sent = sent_us.to_string().into_bytes();
                    let commands: Vec<Vec<Vec<u8>>> = (0..PER_SEND)
                        .map(|_| {
                            vec![
                                b"XADD".to_vec(),
                                b"lat".to_vec(),
                                b"*".to_vec(),
                                b"sent".to_vec(),
                                sent.clone(),
                            ]
                        })
                        .collect();
                    conn.pipeline(&commands).await.expect("xadd");
                    acknowledged(sent_us);
                }
            } else {
                let mut conn = PgRaw::connect(port).await.expect("sluice producer");
                // Prepared once, as a driver's statement cache would: a producer's INSERT
                // has the same text every time, only its values change.
                let rows = vec!["($1, 'x')"; PER_SEND as usize].join(",");
                conn.prepare("append", &format!("INSERT INTO lat VALUES {rows}"))
                    .await
                    .expect("prepare insert");
                for _ in 0..sends {
                    ticker.tick().await;
                    let sent_us = now_us();
                    conn.execute("append", &[&sent_us.to_string()])
                        .await
                        .expect("insert");
                    acknowledged(sent_us);
                }
            }
        }));
    }
    for p in producers {
        p.await.expect("producer");
    }
    let received = tokio::time::timeout(Duration::from_secs(30), consumer).await;
    if received.is_err() {
        eprintln!("subscribe-latency: the consumer did not receive every record in time");
    }
    Latencies {
        end_to_end: drain_sorted(&mut rx),
        after_stamp: drain_sorted(&mut stamped_rx),
        acknowledged: drain_sorted(&mut acked_rx),
    }
}

/// A sub-second latency to the hundredth of a millisecond: the goal and the
/// anchors sit near 1 ms, where the tenth that other suites print hides
/// differences of up to 100 µs.
fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

const DAY_US: i64 = 86_400_000_000;

/// The time of day of a UTC timestamp as COPY prints it (`2026-12-06 06:20:01.5+00`), in
/// microseconds: a latency under a day needs no date.
fn micros_of_day(timestamp: &str) -> Option<i64> {
    let time = timestamp.split(' ').nth(1)?;
    let time = time.strip_suffix("+00")?;
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut parts = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    let digits = fraction.len().min(6);
    let micros = if digits == 0 {
        0
    } else {
        fraction[..digits].parse::<i64>().ok()? * 10_i64.pow(6 - digits as u32)
    };
    Some(((h * 60 + m) * 60 + s) * 1_000_000 + micros)
}

pub async fn subscribe_latency(
    sluice: &Path,
    redis: &Path,
    nats: &Path,
    rate: u64,
    seconds: u64,
    reps: usize,
) {
    let (_node, port) = sluice_with(
        sluice,
        "CREATE TOPIC lat (sent_us bigint, payload text) WITH (partitions = 1)",
    )
    .await;
    let anchor = Redis::start(redis, "always").await;
    let jetstream = NatsServer::with_stream(nats, "LAT", "lat").await;
    let (mut s, mut r, mut n) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        s.push(latency_run(Anchor::Sluice, port, rate, seconds).await);
        r.push(latency_run(Anchor::Redis, anchor.port, rate, seconds).await);
        n.push(latency_run(Anchor::Nats, jetstream.port, rate, seconds).await);
        eprintln!("subscribe-latency rep {} done", rep + 1);
    }
    let describe = |runs: &[Latencies], which: fn(&Latencies) -> &Vec<Duration>| {
        let q = |p: f64| {
            Duration::from_secs_f64(median(
                runs.iter()
                    .map(|l| percentile(which(l), p).as_secs_f64())
                    .collect(),
            ))
        };
        let n: usize = runs.iter().map(|l| which(l).len()).sum();
        (q(50.0), q(99.0), q(99.9), n)
    };
    let (sp50, sp99, sp999, sn) = describe(&s, |l| &l.end_to_end);
    let (stamped50, stamped99, _, _) = describe(&s, |l| &l.after_stamp);
    let (rp50, rp99, rp999, rn) = describe(&r, |l| &l.end_to_end);
    let (np50, np99, np999, nn) = describe(&n, |l| &l.end_to_end);
    let (sack50, _, _, _) = describe(&s, |l| &l.acknowledged);
    let (rack50, _, _, _) = describe(&r, |l| &l.acknowledged);
    let (nack50, _, _, _) = describe(&n, |l| &l.acknowledged);
    let workload = format!("{rate} rec/s, 1 consumer");
    for (system, p50, p99, p999) in [
        ("Sluice", sp50, sp99, sp999),
        ("Redis XREAD BLOCK", rp50, rp99, rp999),
        ("NATS JetStream push", np50, np99, np999),
    ] {
        for (metric, value) in [("p50 ms", p50), ("p99 ms", p99), ("p99.9 ms", p999)] {
            crate::chart::record(
                "subscribe-latency",
                &workload,
                system,
                metric,
                value.as_secs_f64() * 1e3,
            );
        }
    }
    println!(
        "| subscribe-latency | {rate} rec/s for {seconds} s, 1 consumer | p50 {}, p99 {}, p99.9 {} ({sn} records); after the server stamped the record (as the INSERT writes, before Raft): p50 {}, p99 {}; appends acknowledged: p50 {} | Redis XREAD BLOCK (appendfsync always): p50 {}, p99 {}, p99.9 {} ({rn} records; XADD acknowledged: p50 {}); NATS JetStream push consumer: p50 {}, p99 {}, p99.9 {} ({nn} records; publish acknowledged: p50 {}) | p50/Redis {:.2}, p99/Redis {:.2}, p50/NATS {:.2} |",
        ms(sp50),
        ms(sp99),
        ms(sp999),
        ms(stamped50),
        ms(stamped99),
        ms(sack50),
        ms(rp50),
        ms(rp99),
        ms(rp999),
        ms(rack50),
        ms(np50),
        ms(np99),
        ms(np999),
        ms(nack50),
        sp50.as_secs_f64() / rp50.as_secs_f64().max(1e-9),
        sp99.as_secs_f64() / rp99.as_secs_f64().max(1e-9),
        sp50.as_secs_f64() / np50.as_secs_f64().max(1e-9),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_timestamps_read_as_time_of_day() {
        let at = |h: i64, m: i64, s: i64, us: i64| ((h * 60 + m) * 60 + s) * 1_000_000 + us;
        assert_eq!(
            micros_of_day("2026-12-06 06:20:01.5+00"),
            Some(at(6, 20, 1, 500_000))
        );
        assert_eq!(
            micros_of_day("2026-12-06 23:59:59.123456+00"),
            Some(at(23, 59, 59, 123_456))
        );
        assert_eq!(micros_of_day("2026-12-06 00:00:00+00"), Some(0));
        assert_eq!(micros_of_day("2026-12-06 00:00:00+01"), None);
        assert_eq!(micros_of_day("garbage"), None);
    }
}
