//! Hostile or clumsy clients cannot take the server down: garbage on the socket closes only that
//! connection, a client vanishing mid-query leaves the server serving, a 100 MB value is either
//! stored or refused with a SQLSTATE, and degenerate statements get PostgreSQL's answers. The
//! HTTP endpoints answer for probes and Prometheus. Extended-protocol replies wait for Sync or
//! Flush, and a malformed Query message is a protocol violation, as in PostgreSQL.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio_postgres::SimpleQueryMessage;

use common::{batch, describe, expect_sqlstate, simple_rows, TestServer};

fn one() -> Vec<Vec<Option<String>>> {
    vec![vec![Some("1".to_string())]]
}

/// Sends `bytes` on a fresh connection and expects the server to close it within 10 s.
fn expect_closed_after(server: &TestServer, what: &str, bytes: &[u8]) {
    let mut stream = TcpStream::connect(("127.0.0.1", server.sql_port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set read timeout");
    // The server may close while we are still writing; that is a fine outcome too.
    let _ = stream.write_all(bytes);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0_u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            // Anything sent before closing (an ErrorResponse) is fine.
            Ok(_) if Instant::now() < deadline => {}
            Ok(_) => server.fail(&format!("{what}: server kept the connection open")),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                server.fail(&format!("{what}: server kept the connection open for 10 s"))
            }
            // Reset by peer: closed.
            Err(_) => return,
        }
    }
}

/// One frontend message: its type byte, then its length (counting itself) and body.
fn frontend_message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut message = vec![kind];
    message.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    message.extend_from_slice(body);
    message
}

/// The bytes that arrive within `wait`, or until the server closes the connection.
fn backend_bytes(stream: &mut TcpStream, wait: Duration) -> Vec<u8> {
    stream
        .set_read_timeout(Some(wait))
        .expect("set read timeout");
    let mut bytes = Vec::new();
    let mut buf = [0_u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    bytes
}

/// The type bytes of the backend messages that arrive within `wait`.
fn backend_kinds(stream: &mut TcpStream, wait: Duration) -> Vec<u8> {
    message_kinds(&backend_bytes(stream, wait))
}

fn message_kinds(bytes: &[u8]) -> Vec<u8> {
    let mut kinds = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        kinds.push(bytes[at]);
        let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        at += 1 + len;
    }
    kinds
}

/// A connection past startup, speaking raw protocol bytes.
fn started_connection(server: &TestServer) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", server.sql_port)).expect("connect");
    let mut startup = 196608_u32.to_be_bytes().to_vec();
    for part in ["user", "sluice", "database", "sluice", ""] {
        startup.extend_from_slice(part.as_bytes());
        startup.push(0);
    }
    let mut message = (startup.len() as u32 + 4).to_be_bytes().to_vec();
    message.extend_from_slice(&startup);
    stream.write_all(&message).expect("startup");
    let kinds = backend_kinds(&mut stream, Duration::from_millis(1_000));
    assert_eq!(kinds.last(), Some(&b'Z'), "no ReadyForQuery: {kinds:?}");
    stream
}

/// Like PostgreSQL, the server keeps ParseComplete and BindComplete in its send buffer until
/// Sync or Flush: drivers pipeline Parse/Bind/Execute/Sync and expect one answer per Sync.
#[test]
fn extended_replies_wait_for_sync_or_flush() {
    let server = TestServer::start();
    let mut stream = started_connection(&server);

    // Parse "SELECT 1" as the unnamed statement, bind it: nothing may arrive yet.
    let mut parse = b"\0SELECT 1\0".to_vec();
    parse.extend_from_slice(&0_u16.to_be_bytes());
    let mut bind = b"\0\0".to_vec();
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut pipelined = frontend_message(b'P', &parse);
    pipelined.extend(frontend_message(b'B', &bind));
    stream.write_all(&pipelined).expect("parse and bind");
    let early = backend_kinds(&mut stream, Duration::from_millis(300));
    assert!(early.is_empty(), "sent before Sync or Flush: {early:?}");

    stream
        .write_all(&frontend_message(b'H', &[]))
        .expect("flush");
    let flushed = backend_kinds(&mut stream, Duration::from_millis(1_000));
    assert_eq!(flushed, b"12", "after Flush");

    let mut execute = frontend_message(b'E', b"\0\0\0\0\0");
    execute.extend(frontend_message(b'S', &[]));
    stream.write_all(&execute).expect("execute and sync");
    let answered = backend_kinds(&mut stream, Duration::from_millis(1_000));
    assert_eq!(answered, b"DCZ", "after Execute and Sync");
}

/// A Query message's text ends with the message's only NUL. One with a NUL inside is a protocol
/// violation (08P01) that ends the connection, as in PostgreSQL: what follows the NUL is not
/// run, where it once was decoded as further messages (here a second, smuggled Query).
#[test]
fn query_text_must_end_its_message() {
    let server = TestServer::start();
    let mut stream = started_connection(&server);
    let mut body = b"SELECT 1\0".to_vec();
    body.extend(frontend_message(b'Q', b"SELECT 2\0"));
    stream
        .write_all(&frontend_message(b'Q', &body))
        .expect("query");
    let bytes = backend_bytes(&mut stream, Duration::from_secs(10));
    let kinds = message_kinds(&bytes);
    assert_eq!(kinds, b"E", "only an error, then the connection closes");
    assert!(
        bytes.windows(7).any(|w| w == b"C08P01\0"),
        "not a protocol violation: {:?}",
        String::from_utf8_lossy(&bytes)
    );

    let mut fresh = started_connection(&server);
    fresh
        .write_all(&frontend_message(b'Q', b"SELECT 1\0"))
        .expect("query");
    let kinds = backend_kinds(&mut fresh, Duration::from_millis(1_000));
    assert_eq!(kinds, b"TDCZ", "the server still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_only_that_connection() {
    let server = TestServer::start();
    let bystander = server.client().await;
    assert_eq!(simple_rows(&bystander, "SELECT 1").await, one());

    expect_closed_after(
        &server,
        "an HTTP request on the SQL port",
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    // A plausible startup length followed by noise: an unknown protocol version.
    let mut noise = vec![0_u8; 64 * 1024];
    StdRng::seed_from_u64(7).fill_bytes(&mut noise);
    noise[..8].copy_from_slice(&[0, 0, 0, 16, 0x12, 0x34, 0x56, 0x78]);
    expect_closed_after(&server, "random bytes after a startup length", &noise);
    // A startup length far beyond any real startup packet.
    expect_closed_after(
        &server,
        "a 2 GB startup length",
        &[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
    );

    assert_eq!(
        simple_rows(&bystander, "SELECT 1").await,
        one(),
        "an existing session is unaffected"
    );
    let fresh = server.client().await;
    assert_eq!(simple_rows(&fresh, "SELECT 1").await, one());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_query_leaves_server_serving() {
    let server = TestServer::start();
    let doomed = server.client().await;
    let query = tokio::spawn(async move {
        let result = doomed
            .simple_query("SELECT count(*) FROM generate_series(1, 1000000000)")
            .await;
        drop(doomed);
        result.map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Aborting drops the future and the client, which closes the socket under the running query.
    query.abort();
    let _ = query.await;

    let started = Instant::now();
    let other = tokio::time::timeout(Duration::from_secs(20), async {
        let client = server.client().await;
        simple_rows(&client, "SELECT 1").await
    })
    .await
    .unwrap_or_else(|_| server.fail("no answer within 20 s after a client vanished mid-query"));
    assert_eq!(other, one());
    println!(
        "a new session answered {:?} after the client vanished",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabyte_value_is_stored_or_refused_cleanly() {
    let server = TestServer::start();
    let client = server.client().await;
    client
        .batch_execute("CREATE TABLE big (id int PRIMARY KEY, v text)")
        .await
        .unwrap_or_else(|e| panic!("create: {}", describe(&e)));
    let value = "0123456789abcdef".repeat(100 * 1024 * 1024 / 16);
    match client
        .execute("INSERT INTO big VALUES (1, $1)", &[&value])
        .await
    {
        Ok(n) => {
            println!("a 100 MB value was stored");
            assert_eq!(n, 1);
            let len: i32 = client
                .query_one("SELECT length(v) FROM big WHERE id = 1", &[])
                .await
                .unwrap_or_else(|e| panic!("read back: {}", describe(&e)))
                .get(0);
            assert_eq!(len as usize, value.len());
        }
        Err(e) => {
            println!("a 100 MB value was refused: {}", describe(&e));
            assert!(
                e.code().is_some(),
                "refusal must be a server error with a SQLSTATE, not a dropped connection: {e:?}"
            );
            assert_eq!(
                simple_rows(&client, "SELECT 1").await,
                one(),
                "the session survives the refusal"
            );
        }
    }
    let fresh = server.client().await;
    assert_eq!(simple_rows(&fresh, "SELECT 1").await, one());
}

#[tokio::test]
async fn degenerate_statements() {
    let server = TestServer::start();
    let client = server.client().await;

    for sql in ["", ";", "  ;  ; "] {
        let messages = client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql:?}: {}", describe(&e)));
        assert!(
            !messages
                .iter()
                .any(|m| matches!(m, SimpleQueryMessage::Row(_))),
            "{sql:?} returned rows"
        );
    }
    expect_sqlstate(client.simple_query("FOO BAR").await, "42601");
    expect_sqlstate(client.query("FOO BAR", &[]).await, "42601");
    assert_eq!(simple_rows(&client, "SELECT 1").await, one());
}

/// A `$n` that no Bind could supply (Bind counts parameters in 16 bits) is refused as
/// PostgreSQL refuses an unknown parameter, before anything is sized by it: such a statement
/// used to abort the whole server on an allocation sized by `$n`, which is why the test ends
/// on a fresh connection.
#[tokio::test]
async fn parameter_numbers_no_bind_could_supply() {
    let server = TestServer::start();
    let client = server.client().await;
    batch(&client, "CREATE TABLE p (id int PRIMARY KEY, t text)").await;
    for sql in [
        "INSERT INTO p (id, t) VALUES ($4294967296, 'x')",
        "INSERT INTO p (id, t) VALUES ($65536, 'x')",
        "INSERT INTO p (id, t) VALUES ($1, $99999999999999999999999)",
        "SELECT $0",
        "SELECT $70000::int + 1",
        "SELECT * FROM p WHERE id = $4294967297",
    ] {
        expect_sqlstate(client.prepare(sql).await, "42P02");
        expect_sqlstate(
            client.simple_query(&format!("PREPARE s AS {sql}")).await,
            "42P02",
        );
    }
    // The highest number a Bind can supply is still a parameter.
    let statement = client
        .prepare("SELECT $65535::int IS NULL")
        .await
        .unwrap_or_else(|e| panic!("prepare $65535: {}", describe(&e)));
    assert_eq!(statement.params().len(), 65535);
    let inserted = client
        .execute("INSERT INTO p (id, t) VALUES ($2, $1)", &[&"y", &7_i32])
        .await
        .unwrap_or_else(|e| panic!("insert after refusals: {}", describe(&e)));
    assert_eq!(inserted, 1);
    let fresh = server.client().await;
    assert_eq!(simple_rows(&fresh, "SELECT 1").await, one());
}

#[tokio::test]
async fn http_health_ready_and_metrics() {
    let server = TestServer::start();
    let (status, body) = server.http_get("/health");
    assert_eq!(status, 200, "/health: {body}");
    let (status, body) = server.http_get("/ready");
    assert_eq!(status, 200, "/ready: {body}");

    // Metrics should reflect some activity.
    let client = server.client().await;
    assert_eq!(simple_rows(&client, "SELECT 1").await, one());
    let (status, body) = server.http_get("/metrics");
    assert_eq!(status, 200, "/metrics: {body}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("sluice_") || l.starts_with("# TYPE sluice_")),
        "/metrics has no sluice_ metrics:\n{body}"
    );
    // A single node is its cluster's only voter: its reads need no quorum.
    let metric = |name: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{body}"))
    };
    let barriers = metric("sluice_raft_read_barriers");
    assert!(barriers >= 1, "no read barrier counted");
    assert_eq!(metric("sluice_raft_sole_voter_reads"), barriers);
}
