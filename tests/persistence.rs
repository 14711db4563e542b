//! What a client was told is committed stays committed: across a clean shutdown, across SIGKILL
//! right after the last acknowledgement, and across SIGKILL in the middle of a write stream.
//! The catalog (DDL) is as durable as the rows.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::Client;

use common::{batch, describe, simple_rows, TestServer};

/// The payload stored for row `id`: varied lengths and content, so the checksum sees bytes.
fn payload(id: i64) -> String {
    format!("row-{id}-{}", "x".repeat((id % 37) as usize))
}

/// (count, sum of ids, sum of payload lengths) as computed by the server.
async fn checksum(client: &Client, table: &str) -> (i64, i64, i64) {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(sum(id), 0)::bigint, \
                 coalesce(sum(length(payload)), 0)::bigint FROM {table}"
            ),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("checksum of {table}: {}", describe(&e)));
    (row.get(0), row.get(1), row.get(2))
}

fn expected_checksum(ids: impl IntoIterator<Item = i64>) -> (i64, i64, i64) {
    ids.into_iter().fold((0, 0, 0), |(n, s, l), id| {
        (n + 1, s + id, l + payload(id).len() as i64)
    })
}

async fn ids_in(client: &Client, table: &str) -> BTreeSet<i64> {
    client
        .query(&format!("SELECT id FROM {table}"), &[])
        .await
        .unwrap_or_else(|e| panic!("read ids of {table}: {}", describe(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_survive_clean_restart() {
    let mut server = TestServer::start();
    let client = server.client().await;
    batch(
        &client,
        "CREATE TABLE kept (id bigint PRIMARY KEY, payload text)",
    )
    .await;
    let insert = client
        .prepare("INSERT INTO kept VALUES ($1, $2)")
        .await
        .unwrap();
    for id in 0..500_i64 {
        client
            .execute(&insert, &[&id, &payload(id)])
            .await
            .unwrap_or_else(|e| panic!("insert {id}: {}", describe(&e)));
    }
    batch(&client, "UPDATE kept SET payload = 'changed' WHERE id = 7").await;
    batch(&client, "DELETE FROM kept WHERE id >= 400").await;
    drop(client);

    server.restart();
    let client = server.client().await;
    let ids = ids_in(&client, "kept").await;
    assert_eq!(ids, (0..400).collect::<BTreeSet<i64>>());
    assert_eq!(
        simple_rows(
            &client,
            "SELECT payload FROM kept WHERE id IN (7, 8) ORDER BY id"
        )
        .await,
        vec![vec![Some("changed".to_string())], vec![Some(payload(8))]]
    );
}

/// Writers insert batches; the server is SIGKILLed the moment the last one is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_rows_survive_kill9() {
    let mut server = TestServer::start();
    let setup = server.client().await;
    batch(
        &setup,
        "CREATE TABLE acked (id bigint PRIMARY KEY, payload text)",
    )
    .await;

    const WRITERS: i64 = 4;
    const BATCHES: i64 = 25;
    const ROWS_PER_BATCH: i64 = 40;
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let client = server.client().await;
        tasks.push(tokio::spawn(async move {
            for b in 0..BATCHES {
                let first = (writer * BATCHES + b) * ROWS_PER_BATCH;
                let values: Vec<String> = (first..first + ROWS_PER_BATCH)
                    .map(|id| format!("({id}, '{}')", payload(id)))
                    .collect();
                let sql = format!("INSERT INTO acked VALUES {}", values.join(", "));
                let n = client
                    .execute(sql.as_str(), &[])
                    .await
                    .unwrap_or_else(|e| panic!("writer {writer} batch {b}: {}", describe(&e)));
                assert_eq!(n, ROWS_PER_BATCH as u64);
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    server.kill9();

    server.start_again();
    let client = server.client().await;
    let total = WRITERS * BATCHES * ROWS_PER_BATCH;
    assert_eq!(
        checksum(&client, "acked").await,
        expected_checksum(0..total),
        "every acknowledged row is back after SIGKILL"
    );
}

/// SIGKILL while writes are in flight: every acknowledged row is present; of the in-flight ones
/// each is either wholly present or absent; the table is writable afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_writes_loses_no_acknowledged_row() {
    let mut server = TestServer::start();
    let setup = server.client().await;
    batch(
        &setup,
        "CREATE TABLE stream (id bigint PRIMARY KEY, payload text)",
    )
    .await;

    const WRITERS: i64 = 3;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let client = server.client().await;
        let acked = Arc::clone(&acked);
        tasks.push(tokio::spawn(async move {
            let insert = client
                .prepare("INSERT INTO stream VALUES ($1, $2)")
                .await
                .unwrap_or_else(|e| panic!("prepare: {}", describe(&e)));
            // Writes stop at the first error: the server is gone.
            for i in 0.. {
                let id = i * WRITERS + writer;
                if client.execute(&insert, &[&id, &payload(id)]).await.is_err() {
                    break;
                }
                acked.lock().expect("acked set").insert(id);
            }
        }));
    }
    // Let the writers get going, then pull the plug under them.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acked_before_kill = acked.lock().expect("acked set").len();
    server.kill9();
    for task in tasks {
        // A writer only stops when its connection fails, which SIGKILL must cause promptly.
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("writers still acknowledged 30 s after SIGKILL")
            .expect("writer task");
    }
    let acked = acked.lock().expect("acked set").clone();
    assert!(
        acked_before_kill > 0,
        "no write was acknowledged in 1.5 s; cannot test durability"
    );
    println!("{} rows acknowledged before SIGKILL", acked.len());

    server.start_again();
    let client = server.client().await;
    let present = ids_in(&client, "stream").await;
    let missing: Vec<&i64> = acked.difference(&present).take(10).collect();
    assert!(missing.is_empty(), "acknowledged rows lost: {missing:?}...");
    // Each writer had at most one statement in flight when the server died.
    let extra = present.difference(&acked).count();
    assert!(
        extra <= WRITERS as usize,
        "{extra} rows present that were never sent"
    );
    // Spot-check contents: every 50th row and every row whose insert was in flight.
    for id in present
        .iter()
        .filter(|id| *id % 50 == 0 || !acked.contains(id))
    {
        let row = client
            .query_one("SELECT payload FROM stream WHERE id = $1", &[id])
            .await
            .unwrap_or_else(|e| panic!("read {id}: {}", describe(&e)));
        assert_eq!(row.get::<_, String>(0), payload(*id), "row {id} intact");
    }
    let next = present.iter().max().map_or(0, |m| m + 1_000_000);
    client
        .execute(
            "INSERT INTO stream VALUES ($1, $2)",
            &[&next, &payload(next)],
        )
        .await
        .unwrap_or_else(|e| panic!("write after recovery: {}", describe(&e)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_survives_restart_and_crash() {
    let mut server = TestServer::start();
    let client = server.client().await;
    batch(
        &client,
        "CREATE TABLE kept (id int PRIMARY KEY, name text NOT NULL, amount numeric(8,2) DEFAULT 1.5); \
         CREATE TABLE dropped (id int PRIMARY KEY); \
         CREATE SCHEMA side; \
         CREATE TABLE side.things (k text PRIMARY KEY, v bigint); \
         INSERT INTO kept (id, name) VALUES (1, 'a'); \
         INSERT INTO side.things VALUES ('k', 42); \
         DROP TABLE dropped; \
         ALTER TABLE kept ADD COLUMN extra text",
    )
    .await;
    drop(client);

    server.kill9();
    server.start_again();
    let client = server.client().await;
    assert_eq!(
        simple_rows(&client, "SELECT id, name, amount, extra FROM kept").await,
        vec![vec![
            Some("1".to_string()),
            Some("a".to_string()),
            Some("1.50".to_string()),
            None
        ]]
    );
    common::expect_sqlstate(client.simple_query("SELECT * FROM dropped").await, "42P01");
    // Constraints and defaults came back with the table.
    common::expect_sqlstate(
        client
            .simple_query("INSERT INTO kept (id, name) VALUES (1, 'dup')")
            .await,
        "23505",
    );
    common::expect_sqlstate(
        client
            .simple_query("INSERT INTO kept (id) VALUES (2)")
            .await,
        "23502",
    );
    batch(&client, "INSERT INTO kept (id, name) VALUES (2, 'b')").await;
    drop(client);

    server.restart();
    let client = server.client().await;
    assert_eq!(
        simple_rows(&client, "SELECT id, amount FROM kept ORDER BY id").await,
        vec![
            vec![Some("1".to_string()), Some("1.50".to_string())],
            vec![Some("2".to_string()), Some("1.50".to_string())],
        ]
    );
    assert_eq!(
        simple_rows(&client, "SELECT v FROM side.things WHERE k = 'k'").await,
        vec![vec![Some("42".to_string())]]
    );
}
