//! Topics through real clients: CREATE TOPIC, appends by INSERT and COPY
//! (offsets assigned at apply), the topic read as a table, subscription
//! cursors (DECLARE … FOR SUBSCRIBE, FETCH with its timeout, wake-up on
//! commit), consumer offsets committed alone or with the consumer's own
//! writes, and streaming `COPY (SUBSCRIBE …) TO STDOUT` from psql.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::SinkExt;
use tokio_postgres::Client;

use common::{batch, expect_sqlstate, simple_counts, simple_rows, TestServer};

async fn orders(server: &TestServer, partitions: u32) -> Client {
    let client = server.client().await;
    batch(
        &client,
        &format!(
            "CREATE TOPIC orders (order_id bigint NOT NULL, customer text, amount numeric(10,2)) \
             WITH (partitions = {partitions}, partition_key = 'customer', compression = 'zstd')"
        ),
    )
    .await;
    client
}

/// `(partition, offset, order_id)` of every record, in subscription order.
fn records(rows: &[tokio_postgres::Row]) -> Vec<(i32, i64, i64)> {
    rows.iter()
        .map(|r| (r.get("_partition"), r.get("_offset"), r.get("order_id")))
        .collect()
}

async fn insert_orders(client: &Client, ids: std::ops::Range<i64>) {
    let values: Vec<String> = ids
        .map(|id| format!("({id}, 'customer{}', {}.50)", id % 7, id))
        .collect();
    batch(
        client,
        &format!("INSERT INTO orders VALUES {}", values.join(", ")),
    )
    .await;
}

#[tokio::test]
async fn appends_get_dense_offsets_and_read_back_as_a_table() {
    let server = TestServer::start();
    let client = orders(&server, 4).await;
    let rows = client
        .query(
            "INSERT INTO orders VALUES (1, 'ada', 9.99), (2, 'bob', 5.00), (3, 'ada', 1.00) \
             RETURNING _partition, _offset, order_id",
            &[],
        )
        .await
        .unwrap();
    let returned: Vec<(i32, i64, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    // Same key, same partition; one statement's records of a partition
    // take consecutive offsets in statement order.
    assert_eq!(returned[0].0, returned[2].0);
    for partition in [returned[0].0, returned[1].0] {
        let offsets: Vec<i64> = returned
            .iter()
            .filter(|r| r.0 == partition)
            .map(|r| r.1)
            .collect();
        assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{returned:?}");
    }
    insert_orders(&client, 10..200).await;

    // Every partition's offsets are dense from 0.
    let rows = client
        .query(
            "SELECT _partition, _offset, order_id FROM orders ORDER BY _partition, _offset",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 193);
    let mut expected_offset = std::collections::HashMap::new();
    for (partition, offset, _) in records(&rows) {
        let next = expected_offset.entry(partition).or_insert(0i64);
        assert_eq!(offset, *next, "partition {partition}");
        *next += 1;
    }
    assert!(
        expected_offset.len() > 1,
        "the key spread records over partitions"
    );

    // A topic is a table: filters, aggregates, the system columns.
    let sum = simple_rows(
        &client,
        "SELECT count(*), sum(amount) FROM orders WHERE customer = 'ada'",
    )
    .await;
    assert_eq!(sum[0][0].as_deref(), Some("2"));
    assert_eq!(sum[0][1].as_deref(), Some("10.99"));
    let partition = returned[0].0;
    let tail = client
        .query(
            "SELECT _offset FROM orders WHERE _partition = $1 AND _offset >= 1 ORDER BY _offset",
            &[&partition],
        )
        .await
        .unwrap();
    assert_eq!(tail[0].get::<_, i64>(0), 1);
    let plan = simple_rows(
        &client,
        &format!("EXPLAIN SELECT * FROM orders WHERE _partition = {partition} AND _offset > 5"),
    )
    .await;
    let text: Vec<String> = plan.iter().filter_map(|r| r[1].clone()).collect();
    assert!(
        text.iter()
            .any(|l| l.contains("_partition = ") && l.contains("_offset >= 6")),
        "{text:?}"
    );
    let stamps = simple_rows(
        &client,
        "SELECT count(*) FROM orders WHERE _timestamp > now() - interval '1 minute'",
    )
    .await;
    assert_eq!(stamps[0][0].as_deref(), Some("193"));

    // COPY appends too; the system columns are not part of its default column list.
    let sink = client
        .copy_in::<_, Bytes>("COPY orders FROM STDIN")
        .await
        .unwrap();
    futures::pin_mut!(sink);
    sink.send(Bytes::from_static(b"500\tzoe\t1.25\n501\tzoe\t2.50\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    let zoe = simple_rows(
        &client,
        "SELECT order_id FROM orders WHERE customer = 'zoe' ORDER BY _offset",
    )
    .await;
    assert_eq!(
        zoe,
        vec![vec![Some("500".into())], vec![Some("501".into())]]
    );
}

#[tokio::test]
async fn topics_refuse_what_an_append_only_log_cannot_do() {
    let server = TestServer::start();
    let client = orders(&server, 2).await;
    insert_orders(&client, 0..3).await;
    expect_sqlstate(
        client.batch_execute("UPDATE orders SET amount = 0").await,
        "0A000",
    );
    expect_sqlstate(client.batch_execute("DELETE FROM orders").await, "0A000");
    expect_sqlstate(client.batch_execute("TRUNCATE orders").await, "0A000");
    expect_sqlstate(
        client
            .batch_execute("INSERT INTO orders (order_id, _offset) VALUES (1, 5)")
            .await,
        "428C9",
    );
    expect_sqlstate(
        client
            .batch_execute("INSERT INTO orders (customer) VALUES ('no id')")
            .await,
        "23502",
    );
    batch(&client, "CREATE TABLE plain (id bigint PRIMARY KEY)").await;
    expect_sqlstate(
        client
            .batch_execute("DECLARE c CURSOR FOR SUBSCRIBE plain")
            .await,
        "42809",
    );
    expect_sqlstate(
        client
            .batch_execute("DECLARE c CURSOR FOR SUBSCRIBE missing")
            .await,
        "42P01",
    );
    expect_sqlstate(client.batch_execute("FETCH 10 FROM nope").await, "34000");
    expect_sqlstate(
        client
            .batch_execute("DECLARE c CURSOR FOR SUBSCRIBE orders FROM OFFSET -1")
            .await,
        "42601",
    );
    expect_sqlstate(
        client
            .batch_execute("DECLARE c CURSOR FOR SUBSCRIBE orders FROM OFFSET 99")
            .await,
        "22023",
    );
    expect_sqlstate(
        client
            .batch_execute("CREATE TOPIC bad (a int) WITH (partitions = 0)")
            .await,
        "22023",
    );
    expect_sqlstate(
        client
            .batch_execute("CREATE TOPIC bad (a int) WITH (partition_key = 'b')")
            .await,
        "42703",
    );
    expect_sqlstate(
        client
            .batch_execute("CREATE TOPIC bad (a int PRIMARY KEY)")
            .await,
        "42P16",
    );
    expect_sqlstate(
        client.batch_execute("COMMIT OFFSETS FOR nothing").await,
        "34000",
    );
    expect_sqlstate(
        client
            .batch_execute("DROP TABLE sluice_catalog.consumer_offsets")
            .await,
        "42501",
    );
    // Topic DDL, like table DDL, belongs to its block: rolled back, the topic never was.
    batch(
        &client,
        "BEGIN; CREATE TOPIC in_block (a int); INSERT INTO in_block VALUES (1)",
    )
    .await;
    batch(&client, "ROLLBACK").await;
    expect_sqlstate(
        client
            .batch_execute("DECLARE gone CURSOR FOR SUBSCRIBE in_block")
            .await,
        "42P01",
    );
    // The server is fine after all of it.
    assert_eq!(simple_counts(&client, "SELECT 1").await, vec![1]);
}

#[tokio::test]
async fn fetch_waits_for_a_commit_and_wakes_at_once() {
    let server = TestServer::start();
    let client = orders(&server, 3).await;
    batch(&client, "DECLARE c CURSOR FOR SUBSCRIBE orders FROM END").await;
    // Nothing yet: the timeout bounds the wait.
    let started = Instant::now();
    let rows = client
        .query("FETCH 100 FROM c WITH (timeout = '200ms')", &[])
        .await
        .unwrap();
    assert!(rows.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(190));
    let rows = client
        .query("FETCH 100 FROM c WITH (timeout = '0s')", &[])
        .await
        .unwrap();
    assert!(rows.is_empty());

    // A FETCH waiting on an empty topic returns as soon as another session commits.
    let producer = server.client().await;
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let rows = client
            .query("FETCH 100 FROM c WITH (timeout = '30s')", &[])
            .await
            .unwrap();
        (rows, started.elapsed(), client)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let inserted = Instant::now();
    insert_orders(&producer, 0..5).await;
    let acknowledged = inserted.elapsed();
    let (rows, waited, client) = waiting.await.unwrap();
    assert!(!rows.is_empty());
    // Woken by the commit, not by the 30 s timeout (no timing bound beyond that:
    // the latency is measured by the benchmark).
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    assert!(waited >= Duration::from_millis(250));
    eprintln!("insert acknowledged in {acknowledged:?}; fetch returned after {waited:?}");

    // The rest arrives with later fetches, each record once, in offset order per partition.
    let mut seen: Vec<(i32, i64, i64)> = records(&rows);
    while seen.len() < 5 {
        let more = client
            .query("FETCH 2 FROM c WITH (timeout = '5s')", &[])
            .await
            .unwrap();
        assert!(more.len() <= 2);
        seen.extend(records(&more));
    }
    let ids: BTreeSet<i64> = seen.iter().map(|r| r.2).collect();
    assert_eq!(ids, (0..5).collect());
    for partition in 0..3 {
        let offsets: Vec<i64> = seen
            .iter()
            .filter(|r| r.0 == partition)
            .map(|r| r.1)
            .collect();
        let mut sorted = offsets.clone();
        sorted.sort();
        assert_eq!(offsets, sorted);
    }
    batch(&client, "CLOSE c").await;
    expect_sqlstate(client.batch_execute("FETCH 1 FROM c").await, "34000");
}

/// At-least-once: a consumer that dies after processing but before
/// committing sees those records again; what it committed it never sees again.
/// Exactly-once: offsets committed in the same transaction as the consumer's
/// own writes, so a crash between the two cannot happen.
#[tokio::test]
async fn consumers_resume_from_committed_offsets() {
    let server = TestServer::start();
    let producer = orders(&server, 2).await;
    insert_orders(&producer, 0..40).await;

    // at-least-once
    let consumer = server.client().await;
    batch(
        &consumer,
        "DECLARE c CURSOR FOR SUBSCRIBE orders GROUP 'billing'",
    )
    .await;
    let first = consumer.query("FETCH 15 FROM c", &[]).await.unwrap();
    assert_eq!(first.len(), 15);
    assert_eq!(
        simple_counts(&consumer, "COMMIT OFFSETS FOR c").await,
        vec![2]
    );
    let uncommitted = consumer.query("FETCH 10 FROM c", &[]).await.unwrap();
    assert_eq!(uncommitted.len(), 10);
    drop(consumer); // dies before committing the second fetch
                    // The server notices when the connection closes. A consumer that joined
                    // before that would share the partitions with the dead member until its
                    // heartbeat expired (as in Kafka), so this one waits for the group to empty.
    wait_for_members(&producer, "billing", 0).await;

    let consumer = server.client().await;
    batch(
        &consumer,
        "DECLARE c CURSOR FOR SUBSCRIBE orders GROUP 'billing'",
    )
    .await;
    let mut again = Vec::new();
    loop {
        let rows = consumer
            .query("FETCH 100 FROM c WITH (timeout = '0s')", &[])
            .await
            .unwrap();
        if rows.is_empty() {
            break;
        }
        again.extend(records(&rows));
    }
    let first_ids: BTreeSet<i64> = records(&first).iter().map(|r| r.2).collect();
    let again_ids: BTreeSet<i64> = again.iter().map(|r| r.2).collect();
    assert!(
        first_ids.is_disjoint(&again_ids),
        "committed records came back"
    );
    assert_eq!(first_ids.len() + again_ids.len(), 40, "no gap");
    for r in records(&uncommitted) {
        assert!(
            again_ids.contains(&r.2),
            "uncommitted record {r:?} was lost"
        );
    }

    // The offsets are a table: readable, and writable to seek.
    let committed = simple_rows(
        &consumer,
        "SELECT partition, next_offset FROM sluice_catalog.consumer_offsets \
         WHERE group_name = 'billing' AND topic = 'orders' ORDER BY partition",
    )
    .await;
    assert_eq!(committed.len(), 2);
    batch(
        &consumer,
        "UPDATE sluice_catalog.consumer_offsets SET next_offset = 0 WHERE group_name = 'billing'",
    )
    .await;
    batch(
        &consumer,
        "CLOSE c; DECLARE c CURSOR FOR SUBSCRIBE orders GROUP 'billing'",
    )
    .await;
    let replay = consumer
        .query("FETCH ALL FROM c WITH (timeout = '0s')", &[])
        .await
        .unwrap();
    assert_eq!(replay.len(), 40);

    // exactly-once: the consumer's writes and its offsets in one transaction.
    batch(
        &consumer,
        "CREATE TABLE invoices (order_id bigint PRIMARY KEY)",
    )
    .await;
    let consumer = server.client().await;
    batch(
        &consumer,
        "DECLARE c CURSOR FOR SUBSCRIBE orders GROUP 'invoicing'",
    )
    .await;
    for _ in 0..2 {
        let rows = consumer.query("FETCH 10 FROM c", &[]).await.unwrap();
        invoice(&consumer, &rows, "COMMIT").await;
    }
    // A block that rolls back takes its offsets with it: the next consumer
    // starts after the two committed rounds.
    let more = consumer.query("FETCH 5 FROM c", &[]).await.unwrap();
    assert_eq!(more.len(), 5);
    invoice(&consumer, &more, "ROLLBACK").await;
    drop(consumer);
    wait_for_members(&producer, "invoicing", 0).await;
    let consumer = server.client().await;
    batch(
        &consumer,
        "DECLARE c CURSOR FOR SUBSCRIBE orders GROUP 'invoicing'",
    )
    .await;
    loop {
        let rows = consumer
            .query("FETCH 7 FROM c WITH (timeout = '0s')", &[])
            .await
            .unwrap();
        if rows.is_empty() {
            break;
        }
        // A duplicate would fail the INSERT with 23505.
        invoice(&consumer, &rows, "COMMIT").await;
    }
    assert_eq!(
        simple_counts(&consumer, "SELECT * FROM invoices").await,
        vec![40]
    );
}

/// Writes an invoice per fetched order and commits the cursor's offsets in
/// the same block, which ends with `end` (COMMIT or ROLLBACK).
async fn invoice(consumer: &Client, rows: &[tokio_postgres::Row], end: &str) {
    let ids: Vec<String> = records(rows).iter().map(|r| format!("({})", r.2)).collect();
    batch(
        consumer,
        &format!(
            "BEGIN; INSERT INTO invoices VALUES {}; COMMIT OFFSETS FOR c; {end}",
            ids.join(", ")
        ),
    )
    .await;
}

#[tokio::test]
async fn subscribe_start_positions() {
    let server = TestServer::start();
    let client = orders(&server, 1).await;
    insert_orders(&client, 0..10).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Same clock as the server's: it runs on this machine.
    let boundary = chrono::Utc::now()
        .format("%Y-%m-%d %H:%M:%S%.6f")
        .to_string();
    tokio::time::sleep(Duration::from_millis(20)).await;
    insert_orders(&client, 10..15).await;
    for (start, expected) in [
        ("FROM BEGINNING", 0i64),
        ("FROM OFFSET 7", 7),
        (&format!("FROM TIMESTAMP '{boundary}'") as &str, 10),
    ] {
        batch(
            &client,
            &format!("DECLARE c CURSOR FOR SUBSCRIBE orders {start}"),
        )
        .await;
        let rows = client.query("FETCH 1 FROM c", &[]).await.unwrap();
        assert_eq!(records(&rows)[0].1, expected, "{start}");
        batch(&client, "CLOSE c").await;
    }
    batch(&client, "DECLARE c CURSOR FOR SUBSCRIBE orders FROM END").await;
    assert!(client
        .query("FETCH 1 FROM c WITH (timeout = '0s')", &[])
        .await
        .unwrap()
        .is_empty());
}

async fn next_line(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(20), lines.recv())
        .await
        .expect("a streamed row")
        .expect("psql still running")
}

/// psql streams `COPY (SUBSCRIBE …) TO STDOUT` rows as they are committed,
/// not at the end (which never comes).
#[tokio::test]
async fn psql_copy_subscribe_streams_rows_as_they_arrive() {
    let server = TestServer::start();
    let client = orders(&server, 2).await;
    insert_orders(&client, 0..3).await;
    // At a terminal psql's output is line-buffered; stdbuf gives the pipe the same.
    let mut psql = Command::new("stdbuf")
        .args(["-oL", "psql", "-X", "-h", "127.0.0.1", "-p"])
        .arg(server.sql_port.to_string())
        .args([
            "-U",
            "sluice",
            "-d",
            "sluice",
            "-c",
            "COPY (SUBSCRIBE orders FROM BEGINNING) TO STDOUT WITH (FORMAT csv)",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run psql");
    let stdout = psql.stdout.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });

    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next_line(&mut lines).await);
    }
    insert_orders(&client, 100..101).await;
    let live = next_line(&mut lines).await;
    assert!(live.contains(",100,"), "{live} (rows before: {seen:?})");
    // A killed psql ends the stream, though no record arrives to be written
    // to it: the server notices the closed socket within about a second
    // (the subscription gauge drops) and keeps serving.
    let subscriptions = || metric(&server.http_get("/metrics").1, "sluice_topic_subscriptions");
    assert_eq!(subscriptions(), 1.0);
    psql.kill().unwrap();
    let _ = psql.wait();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while subscriptions() != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle subscription of a killed psql is still open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        simple_counts(&client, "SELECT * FROM orders").await,
        vec![4]
    );
}

/// Partitions a consumer of `cursor` reads now: one FETCH of everything
/// available.
async fn fetched_partitions(client: &Client, cursor: &str) -> BTreeSet<i32> {
    let rows = client
        .query(
            &format!("FETCH ALL FROM {cursor} WITH (timeout = '0s')"),
            &[],
        )
        .await
        .unwrap();
    records(&rows).iter().map(|r| r.0).collect()
}

#[tokio::test]
async fn group_members_share_partitions_and_take_over_when_one_leaves() {
    let server = TestServer::start();
    let producer = orders(&server, 4).await;
    let a = server.client().await;
    let b = server.client().await;
    batch(&a, "DECLARE a CURSOR FOR SUBSCRIBE orders GROUP 'g'").await;
    batch(&b, "DECLARE b CURSOR FOR SUBSCRIBE orders GROUP 'g'").await;
    let members = simple_rows(
        &producer,
        "SELECT member_id FROM sluice_catalog.consumer_members WHERE group_name = 'g'",
    )
    .await;
    assert_eq!(members.len(), 2);
    // After a heartbeat interval both have rebalanced to their half.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    fetched_partitions(&a, "a").await;
    fetched_partitions(&b, "b").await;
    // Enough records that every partition has some.
    insert_orders(&producer, 0..200).await;
    let of_a = fetched_partitions(&a, "a").await;
    let of_b = fetched_partitions(&b, "b").await;
    assert!(of_a.is_disjoint(&of_b), "a {of_a:?}, b {of_b:?}");
    assert_eq!(of_a.len(), 2, "a {of_a:?}");
    assert_eq!(of_b.len(), 2, "b {of_b:?}");

    // b leaves; at its next heartbeat a owns every partition, and reads b's
    // uncommitted records again (at least once).
    batch(&b, "CLOSE b").await;
    // CLOSE leaves the group before it completes.
    let members = simple_rows(
        &producer,
        "SELECT member_id FROM sluice_catalog.consumer_members WHERE group_name = 'g'",
    )
    .await;
    assert_eq!(members.len(), 1, "{members:?}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // b's partitions come back from b's (absent) commits, a's own continue.
    let taken_over = fetched_partitions(&a, "a").await;
    assert_eq!(taken_over, of_b, "a re-reads what b did not commit");
    insert_orders(&producer, 200..400).await;
    let taken_over = fetched_partitions(&a, "a").await;
    assert_eq!(taken_over, (0..4).collect(), "a after b left");

    // A member that disconnects without CLOSE leaves with its session.
    let c = server.client().await;
    batch(&c, "DECLARE c CURSOR FOR SUBSCRIBE orders GROUP 'g'").await;
    wait_for_members(&producer, "g", 2).await;
    drop(c);
    wait_for_members(&producer, "g", 1).await;
}

/// Waits until group `g` has `count` members (a leave is applied in the background).
async fn wait_for_members(client: &Client, group: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let members = simple_rows(
            client,
            &format!(
                "SELECT member_id FROM sluice_catalog.consumer_members WHERE group_name = '{group}'"
            ),
        )
        .await;
        if members.len() == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "members {members:?}, expected {count}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn retention_removes_old_records_and_old_positions_fail_clearly() {
    let server = TestServer::start();
    let client = server.client().await;
    batch(
        &client,
        "CREATE TOPIC events (id bigint) WITH (retention = '1s')",
    )
    .await;
    batch(&client, "INSERT INTO events VALUES (1), (2), (3)").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    batch(&client, "INSERT INTO events VALUES (4)").await;
    // The leader applies retention every second; the first batch goes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ids = simple_rows(&client, "SELECT id FROM events ORDER BY _offset").await;
        if ids == vec![vec![Some("4".to_string())]] {
            break;
        }
        assert!(Instant::now() < deadline, "retention never ran: {ids:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    expect_sqlstate(
        client
            .batch_execute("DECLARE c CURSOR FOR SUBSCRIBE events FROM OFFSET 0")
            .await,
        "22023",
    );
    // earliest: start such partitions at their first retained record.
    batch(
        &client,
        "DECLARE c CURSOR FOR SUBSCRIBE events FROM OFFSET 0 WITH (earliest)",
    )
    .await;
    let rows = client.query("FETCH 10 FROM c", &[]).await.unwrap();
    assert_eq!(records_of(&rows), vec![(0, 3)]);
    batch(&client, "ALTER TOPIC events SET (retention = 'none')").await;
    batch(&client, "DROP TOPIC events").await;
    expect_sqlstate(client.batch_execute("SELECT * FROM events").await, "42P01");
}

fn records_of(rows: &[tokio_postgres::Row]) -> Vec<(i32, i64)> {
    rows.iter()
        .map(|r| (r.get("_partition"), r.get("_offset")))
        .collect()
}

/// A subscriber that never reads: the server writes until the socket is
/// full and then waits, holding at most one batch for it. Speaks the
/// protocol by hand so that no client library buffers on its behalf.
async fn stalled_subscriber(port: u16, topic: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut startup = Vec::new();
    startup.extend_from_slice(&196608u32.to_be_bytes());
    for part in ["user", "sluice", "database", "sluice"] {
        startup.extend_from_slice(part.as_bytes());
        startup.push(0);
    }
    startup.push(0);
    let mut message = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
    message.extend_from_slice(&startup);
    let query = format!("COPY (SUBSCRIBE {topic} FROM BEGINNING) TO STDOUT\0");
    message.push(b'Q');
    message.extend_from_slice(&((query.len() + 4) as u32).to_be_bytes());
    message.extend_from_slice(query.as_bytes());
    stream.write_all(&message).await.unwrap();
    stream
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} in\n{text}"))
}

/// Stated bound: four subscribers that stop reading a 50 MB backlog each
/// add less than 48 MB to the server's memory (each holds one batch of at
/// most 1024 records; buffering their backlogs would take 200 MB).
#[tokio::test]
async fn stalled_subscribers_do_not_grow_server_memory() {
    let server = TestServer::start_with_args(
        tempfile::TempDir::new().unwrap(),
        &["--peer-listen", "127.0.0.1:0", "--block-cache-mb", "8"],
    );
    let client = server.client().await;
    batch(
        &client,
        "CREATE TOPIC backlog (body text) WITH (partitions = 2)",
    )
    .await;
    let record = "x".repeat(100);
    for _ in 0..10 {
        let sink = client
            .copy_in::<_, Bytes>("COPY backlog FROM STDIN")
            .await
            .unwrap();
        futures::pin_mut!(sink);
        let chunk: String = std::iter::repeat_n(format!("{record}\n"), 50_000).collect();
        sink.send(Bytes::from(chunk)).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), 50_000);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_bytes();
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(stalled_subscriber(server.sql_port, "backlog").await);
    }
    // Let the server fill the sockets and block.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, text) = server.http_get("/metrics");
        if metric(&text, "sluice_topic_subscriptions") >= 4.0
            && metric(&text, "sluice_topic_delivered_records_total") > 4.0 * 1024.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "subscribers never started:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, text) = server.http_get("/metrics");
    let delivered = metric(&text, "sluice_topic_delivered_records_total");
    let after = server.rss_bytes();
    let grown = after.saturating_sub(before);
    eprintln!(
        "rss before {} MB, after {} MB; {delivered} records handed to the stalled sockets",
        before >> 20,
        after >> 20
    );
    assert!(
        delivered < 4.0 * 500_000.0,
        "the subscribers stalled, yet everything was sent"
    );
    assert!(grown < 48 << 20, "server memory grew by {} MB", grown >> 20);
    // The server still serves others while they are stalled.
    assert_eq!(simple_counts(&client, "SELECT 1").await, vec![1]);
    drop(stalled);
}

/// Dropping a topic, alone or with its schema, takes every group's
/// committed offsets of it along: a topic created again under the same
/// name starts its groups from the beginning.
#[tokio::test]
async fn dropping_a_topic_forgets_its_committed_offsets() {
    let server = TestServer::start();
    let client = server.client().await;
    let committed = |topic: &'static str| {
        let client = &client;
        async move {
            simple_counts(
                client,
                &format!("SELECT * FROM sluice_catalog.consumer_offsets WHERE topic = '{topic}'"),
            )
            .await[0]
        }
    };
    batch(
        &client,
        "CREATE SCHEMA s; CREATE TOPIC t (id bigint); CREATE TOPIC s.t (id bigint)",
    )
    .await;
    batch(
        &client,
        "INSERT INTO t VALUES (1); INSERT INTO s.t VALUES (1)",
    )
    .await;
    for topic in ["t", "s.t"] {
        batch(
            &client,
            &format!("DECLARE c CURSOR FOR SUBSCRIBE {topic} GROUP 'g'; FETCH 1 FROM c; COMMIT OFFSETS FOR c; CLOSE c"),
        )
        .await;
    }
    assert_eq!((committed("t").await, committed("s.t").await), (1, 1));
    batch(&client, "DROP TOPIC t").await;
    assert_eq!((committed("t").await, committed("s.t").await), (0, 1));
    batch(&client, "DROP SCHEMA s CASCADE").await;
    assert_eq!(committed("s.t").await, 0);
}

/// A cursor over every partition, and a streaming subscription, read the
/// partitions ALTER TOPIC adds after they were declared, from their start.
#[tokio::test]
async fn cursors_and_streams_follow_partitions_added_by_alter_topic() {
    let server = TestServer::start();
    let client = orders(&server, 2).await;
    insert_orders(&client, 0..4).await;
    batch(&client, "DECLARE c CURSOR FOR SUBSCRIBE orders FROM END").await;
    let streamer = server.client().await;
    let stream = streamer
        .copy_out("COPY (SUBSCRIBE orders FROM END) TO STDOUT WITH (FORMAT csv)")
        .await
        .unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(Ok(chunk)) = futures::StreamExt::next(&mut stream).await {
            if lines_tx
                .send(String::from_utf8_lossy(&chunk).trim_end().to_string())
                .is_err()
            {
                break;
            }
        }
    });

    let producer = server.client().await;
    batch(&producer, "ALTER TOPIC orders SET (partitions = 6)").await;
    // 7 customers over 6 partitions: some records land in partitions 2..5.
    insert_orders(&producer, 100..128).await;
    let placed = simple_rows(
        &producer,
        "SELECT count(*) FROM orders WHERE _partition >= 2",
    )
    .await;
    let in_new: usize = placed[0][0].as_deref().unwrap().parse().unwrap();
    assert!(in_new > 0, "no record went to an added partition");

    let mut fetched = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while fetched.len() < 28 {
        assert!(Instant::now() < deadline, "FETCH saw only {fetched:?}");
        let rows = client
            .query("FETCH 100 FROM c WITH (timeout = '1s')", &[])
            .await
            .unwrap();
        fetched.extend(records(&rows));
    }
    let ids: BTreeSet<i64> = fetched.iter().map(|r| r.2).collect();
    assert_eq!(
        ids,
        (100..128).collect(),
        "each record once, none before END"
    );
    assert!(fetched.iter().any(|r| r.0 >= 2));

    let mut streamed = BTreeSet::new();
    while streamed.len() < 28 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.recv())
            .await
            .expect("a streamed row")
            .expect("stream open");
        // CSV: _partition, _offset, _timestamp, order_id, …
        let order_id: i64 = line.split(',').nth(3).unwrap().parse().unwrap();
        assert!(streamed.insert(order_id), "{order_id} streamed twice");
    }
    assert_eq!(streamed, (100..128).collect());
}

/// `FROM OFFSET (partition = offset, …)` places each listed partition; the
/// others start at the beginning.
#[tokio::test]
async fn subscribe_from_an_offset_per_partition() {
    let server = TestServer::start();
    let client = orders(&server, 3).await;
    insert_orders(&client, 0..30).await;
    let mut ends = std::collections::BTreeMap::new();
    for row in simple_rows(
        &client,
        "SELECT _partition, count(*) FROM orders GROUP BY _partition",
    )
    .await
    {
        let partition: i32 = row[0].as_deref().unwrap().parse().unwrap();
        let count: i64 = row[1].as_deref().unwrap().parse().unwrap();
        ends.insert(partition, count);
    }
    assert!(ends.values().all(|&n| n >= 3), "{ends:?}");

    batch(
        &client,
        "DECLARE c CURSOR FOR SUBSCRIBE orders FROM OFFSET (0 = 2, 2 = 1)",
    )
    .await;
    let rows = client
        .query("FETCH 100 FROM c WITH (timeout = '0s')", &[])
        .await
        .unwrap();
    let fetched = records(&rows);
    for (partition, first) in [(0, 2), (1, 0), (2, 1)] {
        let offsets: Vec<i64> = fetched
            .iter()
            .filter(|r| r.0 == partition)
            .map(|r| r.1)
            .collect();
        assert_eq!(
            offsets,
            (first..ends[&partition]).collect::<Vec<_>>(),
            "partition {partition}"
        );
    }
    batch(&client, "CLOSE c").await;

    expect_sqlstate(
        client
            .batch_execute("DECLARE c CURSOR FOR SUBSCRIBE orders FROM OFFSET (5 = 0)")
            .await,
        "22023",
    );
    expect_sqlstate(
        client
            .batch_execute("DECLARE c CURSOR FOR SUBSCRIBE orders FROM OFFSET (0 = 999)")
            .await,
        "22023",
    );
    expect_sqlstate(
        client
            .batch_execute("DECLARE c CURSOR FOR SUBSCRIBE orders FROM OFFSET (0 = 1, 0 = 2)")
            .await,
        "42601",
    );
}

/// `UP TO END` bounds a subscription by what the topic holds when it opens:
/// psql's COPY of it finishes with those rows, later appends are not in it;
/// a bounded cursor's FETCH returns nothing at once when it is done.
#[tokio::test]
async fn bounded_subscriptions_end_up_to_where_they_were_told() {
    let server = TestServer::start();
    let client = orders(&server, 2).await;
    insert_orders(&client, 0..6).await;
    let output = Command::new("psql")
        .args(["-X", "-At", "-h", "127.0.0.1", "-p"])
        .arg(server.sql_port.to_string())
        .args([
            "-U",
            "sluice",
            "-d",
            "sluice",
            "-c",
            "COPY (SUBSCRIBE orders FROM BEGINNING UP TO END) TO STDOUT WITH (FORMAT csv)",
        ])
        .output()
        .expect("run psql");
    assert!(output.status.success(), "{output:?}");
    let ids: BTreeSet<i64> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.split(',').nth(3).unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, (0..6).collect());

    batch(
        &client,
        "DECLARE c CURSOR FOR SUBSCRIBE orders FROM BEGINNING UP TO OFFSET 2",
    )
    .await;
    insert_orders(&client, 6..12).await;
    let rows = client
        .query("FETCH 100 FROM c WITH (timeout = '1s')", &[])
        .await
        .unwrap();
    let mut fetched = records(&rows);
    fetched.extend(records(
        &client
            .query("FETCH 100 FROM c WITH (timeout = '0s')", &[])
            .await
            .unwrap(),
    ));
    let offsets: BTreeSet<(i32, i64)> = fetched.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(offsets, BTreeSet::from([(0, 0), (0, 1), (1, 0), (1, 1)]));
    let started = Instant::now();
    let rows = client
        .query("FETCH 100 FROM c WITH (timeout = '30s')", &[])
        .await
        .unwrap();
    assert!(rows.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a finished cursor waited"
    );
}
