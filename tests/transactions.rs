//! Interactive transactions through real client connections: BEGIN … COMMIT / ROLLBACK,
//! reading one's own writes, first-committer-wins conflicts (40001), the failed-block state
//! (25P02), crash safety of open transactions, and the anomalies each isolation level allows.
//!
//! Anomalies pinned here, each by a test named after it:
//! | anomaly              | READ COMMITTED | REPEATABLE READ | SERIALIZABLE |
//! |----------------------|----------------|-----------------|--------------|
//! | dirty read           | prevented      | prevented       | prevented    |
//! | non-repeatable read  | allowed        | prevented       | prevented    |
//! | phantom              | allowed        | prevented (reads) | prevented (reads, and a writer that relied on the gap fails with 40001) |
//! | lost update          | prevented (40001 at commit) | prevented (40001) | prevented (40001) |
//! | write skew           | allowed        | allowed         | prevented (40001) |

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use common::{batch, expect_sqlstate, simple_counts, simple_rows, TestServer};

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

async fn accounts(server: &TestServer, rows: i64, balance: i64) -> Client {
    let client = server.client().await;
    batch(
        &client,
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL)",
    )
    .await;
    let values: Vec<String> = (1..=rows).map(|id| format!("({id}, {balance})")).collect();
    batch(
        &client,
        &format!("INSERT INTO accounts VALUES {}", values.join(", ")),
    )
    .await;
    client
}

async fn balance(client: &Client, id: i64) -> i64 {
    client
        .query_one("SELECT balance FROM accounts WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0)
}

async fn total(client: &Client) -> i64 {
    let rows = simple_rows(client, "SELECT sum(balance) FROM accounts").await;
    rows[0][0].as_ref().unwrap().parse().unwrap()
}

#[tokio::test]
async fn rollback_discards_and_commit_keeps_own_writes_visible_inside() {
    let server = TestServer::start();
    let client = accounts(&server, 2, 100).await;
    let other = server.client().await;

    batch(&client, "BEGIN").await;
    batch(
        &client,
        "UPDATE accounts SET balance = balance - 10 WHERE id = 1",
    )
    .await;
    batch(
        &client,
        "UPDATE accounts SET balance = balance + 10 WHERE id = 2",
    )
    .await;
    batch(&client, "INSERT INTO accounts VALUES (3, 7)").await;
    batch(&client, "DELETE FROM accounts WHERE id = 2").await;
    // Own writes are visible to scans, point lookups, aggregates and joins.
    assert_eq!(total(&client).await, 90 + 7);
    assert_eq!(balance(&client, 1).await, 90);
    assert_eq!(
        simple_rows(
            &client,
            "SELECT a.id, b.id FROM accounts a JOIN accounts b ON a.id < b.id ORDER BY 1, 2"
        )
        .await,
        vec![vec![s("1"), s("3")]]
    );
    // Nobody else sees them (no dirty read).
    assert_eq!(total(&other).await, 200);
    batch(&client, "ROLLBACK").await;
    assert_eq!(total(&client).await, 200);
    assert_eq!(
        simple_counts(&client, "SELECT * FROM accounts").await,
        vec![2]
    );

    // The same over the extended protocol, committed.
    client.execute("BEGIN", &[]).await.unwrap();
    let update = client
        .prepare("UPDATE accounts SET balance = balance + $1 WHERE id = $2")
        .await
        .unwrap();
    client.execute(&update, &[&-10i64, &1i64]).await.unwrap();
    client.execute(&update, &[&10i64, &2i64]).await.unwrap();
    assert_eq!(balance(&client, 1).await, 90);
    assert_eq!(balance(&other, 1).await, 100);
    client.execute("COMMIT", &[]).await.unwrap();
    assert_eq!(balance(&other, 1).await, 90);
    assert_eq!(balance(&other, 2).await, 110);
}

#[tokio::test]
async fn an_error_fails_the_block_until_rollback() {
    let server = TestServer::start();
    let client = accounts(&server, 1, 100).await;
    batch(&client, "BEGIN").await;
    batch(&client, "INSERT INTO accounts VALUES (2, 1)").await;
    expect_sqlstate(
        client
            .simple_query("INSERT INTO accounts VALUES (1, 1)")
            .await,
        "23505",
    );
    expect_sqlstate(client.simple_query("SELECT 1").await, "25P02");
    expect_sqlstate(client.query("SELECT 1", &[]).await, "25P02");
    // COMMIT of a failed block rolls it back.
    let tags = client.simple_query("COMMIT").await.unwrap();
    assert!(matches!(
        &tags[0],
        tokio_postgres::SimpleQueryMessage::CommandComplete(_)
    ));
    assert_eq!(
        simple_counts(&client, "SELECT * FROM accounts").await,
        vec![1]
    );

    // DROP TABLE in a block is taken back by ROLLBACK.
    batch(&client, "BEGIN; DROP TABLE accounts").await;
    expect_sqlstate(client.simple_query("SELECT * FROM accounts").await, "42P01");
    batch(&client, "ROLLBACK").await;
    assert_eq!(
        simple_counts(&client, "SELECT * FROM accounts").await,
        vec![1]
    );
    // An unknown level is refused.
    expect_sqlstate(
        client
            .simple_query("SET default_transaction_isolation = 'chaotic'")
            .await,
        "22023",
    );
    // COMMIT and ROLLBACK outside a block only warn.
    batch(&client, "COMMIT").await;
    batch(&client, "ROLLBACK").await;
    // A read-only block refuses writes.
    batch(&client, "BEGIN READ ONLY").await;
    expect_sqlstate(client.simple_query("DELETE FROM accounts").await, "25006");
    batch(&client, "ROLLBACK").await;
    assert_eq!(
        simple_counts(&client, "SELECT * FROM accounts").await,
        vec![1]
    );
}

/// Savepoints as SQLAlchemy and Django use them: a failed statement inside a savepoint is
/// undone by ROLLBACK TO, which also leaves the failed block usable; RELEASE keeps the writes.
#[tokio::test]
async fn savepoints_undo_part_of_a_block() {
    let server = TestServer::start();
    let client = accounts(&server, 1, 100).await;

    batch(&client, "BEGIN").await;
    batch(&client, "INSERT INTO accounts VALUES (2, 2)").await;
    batch(&client, "SAVEPOINT a").await;
    batch(&client, "INSERT INTO accounts VALUES (3, 3)").await;
    batch(&client, "SAVEPOINT \"B\"").await;
    batch(&client, "UPDATE accounts SET balance = 0").await;
    assert_eq!(total(&client).await, 0);
    batch(&client, "ROLLBACK TO SAVEPOINT \"B\"").await;
    assert_eq!(total(&client).await, 105);
    // The savepoint stays after ROLLBACK TO, and can be rolled back to again.
    batch(&client, "DELETE FROM accounts WHERE id = 1").await;
    batch(&client, "ROLLBACK TO \"B\"").await;
    assert_eq!(total(&client).await, 105);
    // Names are identifiers: unquoted ones fold to lower case, quoted ones do not.
    expect_sqlstate(client.simple_query("RELEASE SAVEPOINT b").await, "3B001");
    expect_sqlstate(client.simple_query("SELECT 1").await, "25P02");
    // An error fails the block; ROLLBACK TO an earlier savepoint recovers it.
    batch(&client, "ROLLBACK TO SAVEPOINT A").await;
    assert_eq!(total(&client).await, 102);
    batch(&client, "SAVEPOINT inner_sp").await;
    batch(&client, "INSERT INTO accounts VALUES (4, 4)").await;
    batch(&client, "RELEASE inner_sp").await;
    expect_sqlstate(client.simple_query("ROLLBACK TO inner_sp").await, "3B001");
    batch(&client, "ROLLBACK TO a").await;
    batch(&client, "INSERT INTO accounts VALUES (5, 5)").await;
    batch(&client, "RELEASE SAVEPOINT a").await;
    batch(&client, "COMMIT").await;
    let ids = simple_rows(&client, "SELECT id FROM accounts ORDER BY id").await;
    assert_eq!(ids, vec![vec![s("1")], vec![s("2")], vec![s("5")]]);

    // Outside a block savepoints are refused, as in PostgreSQL.
    expect_sqlstate(client.simple_query("SAVEPOINT x").await, "25P01");
    expect_sqlstate(
        client.simple_query("ROLLBACK TO SAVEPOINT x").await,
        "25P01",
    );
    // Over the extended protocol too (drivers send savepoints as prepared statements).
    client.execute("BEGIN", &[]).await.unwrap();
    client.execute("SAVEPOINT x", &[]).await.unwrap();
    client
        .execute("INSERT INTO accounts VALUES ($1, 6)", &[&6i64])
        .await
        .unwrap();
    client
        .execute("ROLLBACK TO SAVEPOINT x", &[])
        .await
        .unwrap();
    client.execute("COMMIT", &[]).await.unwrap();
    assert_eq!(total(&client).await, 107);
}

/// Several statements in one simple query commit together or not at all, as in PostgreSQL;
/// under a SERIALIZABLE default a single DML statement is its own serializable transaction.
#[tokio::test]
async fn multi_statement_queries_are_one_transaction() {
    let server = TestServer::start();
    let client = accounts(&server, 1, 100).await;
    let other = server.client().await;

    expect_sqlstate(
        client
            .simple_query(
                "UPDATE accounts SET balance = 0 WHERE id = 1; \
                 INSERT INTO accounts VALUES (2, 5); INSERT INTO accounts VALUES (1, 1)",
            )
            .await,
        "23505",
    );
    // Nothing of the failed query remains, and the session is not left in a failed block.
    assert_eq!(total(&other).await, 100);
    assert_eq!(total(&client).await, 100);

    let done = simple_counts(
        &client,
        "UPDATE accounts SET balance = balance - 40 WHERE id = 1; \
         INSERT INTO accounts VALUES (2, 40); SELECT * FROM accounts",
    )
    .await;
    assert_eq!(done, vec![1, 1, 2]);
    assert_eq!(total(&other).await, 100);
    assert_eq!(balance(&other, 2).await, 40);
    // The block ended with the query: ROLLBACK now has nothing to undo.
    batch(&client, "ROLLBACK").await;
    assert_eq!(balance(&other, 2).await, 40);

    // Inside an explicit block the statements simply join it.
    batch(&client, "BEGIN").await;
    batch(
        &client,
        "DELETE FROM accounts WHERE id = 2; UPDATE accounts SET balance = 1",
    )
    .await;
    batch(&client, "ROLLBACK").await;
    assert_eq!(total(&other).await, 100);

    // A SERIALIZABLE default: autocommit DML commits (or fails) as one transaction.
    batch(
        &client,
        "SET default_transaction_isolation = 'serializable'",
    )
    .await;
    batch(
        &client,
        "INSERT INTO accounts SELECT id + 10, balance FROM accounts",
    )
    .await;
    assert_eq!(total(&other).await, 200);
    expect_sqlstate(
        client
            .simple_query("INSERT INTO accounts SELECT id + 10, balance FROM accounts")
            .await,
        "23505",
    );
    let rows = client
        .execute(
            "UPDATE accounts SET balance = balance + $1 WHERE id > 10",
            &[&1i64],
        )
        .await
        .unwrap();
    assert_eq!(rows, 2);
    assert_eq!(total(&other).await, 202);

    // The default can also come with the connection, as libpq's PGOPTIONS sends it.
    let conninfo = format!(
        "{} options='-c default_transaction_isolation=serializable'",
        server.conninfo()
    );
    let (serializable, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    batch(&serializable, "BEGIN").await;
    let level = simple_rows(&serializable, "SHOW transaction_isolation").await;
    assert_eq!(level, vec![vec![s("serializable")]]);
    batch(&serializable, "COMMIT").await;
}

/// The value of an unlabelled metric in a Prometheus text exposition.
fn metric(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// `idle_in_transaction_session_timeout` ends a session left idle inside a block (FATAL 25P03)
/// and with it the block; an idle session outside a block is left alone. `/metrics` shows the
/// open blocks, the age of the oldest, and how blocks ended.
#[tokio::test]
async fn idle_blocks_time_out_and_open_blocks_are_measured() {
    let server = TestServer::start();
    let client = accounts(&server, 1, 100).await;
    let other = server.client().await;

    batch(&client, "SET idle_in_transaction_session_timeout = '400ms'").await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(
        balance(&client, 1).await,
        100,
        "idle outside a block is fine"
    );

    batch(&client, "BEGIN").await;
    batch(&client, "UPDATE accounts SET balance = 0").await;
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let (_, during) = server.http_get("/metrics");
    assert_eq!(metric(&during, "sluice_transactions_open"), 1.0);
    assert!(metric(&during, "sluice_transaction_oldest_seconds") >= 0.1);
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let error = client.simple_query("COMMIT").await.unwrap_err();
    assert!(
        error.is_closed() || error.code().map(|c| c.code()) == Some("25P03"),
        "the session was ended: {error:?}"
    );
    assert_eq!(
        total(&other).await,
        100,
        "nothing of the timed-out block was written"
    );

    // Commits, rollbacks and conflicts are counted (once the ended session has let go).
    let mut before = String::new();
    for _ in 0..100 {
        before = server.http_get("/metrics").1;
        if metric(&before, "sluice_transactions_open") == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&before, "sluice_transactions_open"), 0.0);
    batch(&other, "BEGIN; UPDATE accounts SET balance = 1; COMMIT").await;
    batch(&other, "BEGIN; UPDATE accounts SET balance = 2; ROLLBACK").await;
    let third = server.client().await;
    batch(&other, "BEGIN ISOLATION LEVEL REPEATABLE READ").await;
    assert_eq!(balance(&other, 1).await, 1);
    batch(&third, "UPDATE accounts SET balance = 3").await;
    batch(&other, "UPDATE accounts SET balance = 4").await;
    expect_sqlstate(other.simple_query("COMMIT").await, "40001");
    let (_, after) = server.http_get("/metrics");
    let delta = |name: &str| metric(&after, name) - metric(&before, name);
    assert_eq!(delta("sluice_transactions_committed_total"), 1.0);
    assert_eq!(delta("sluice_transactions_rolled_back_total"), 2.0);
    assert_eq!(delta("sluice_transaction_conflicts_total"), 1.0);
    assert_eq!(metric(&after, "sluice_transactions_open"), 0.0);
}

/// Dirty reads: another session never sees a block's writes before COMMIT, at any level, and
/// the PostgreSQL spellings of the block commands all work.
#[tokio::test]
async fn dirty_read_is_prevented_at_every_level() {
    let server = TestServer::start();
    let writer = accounts(&server, 1, 100).await;
    let reader = server.client().await;
    for (begin, end) in [
        ("START TRANSACTION ISOLATION LEVEL READ COMMITTED", "END"),
        (
            "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "COMMIT WORK",
        ),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE", "ABORT"),
        (
            "BEGIN WORK ISOLATION LEVEL READ UNCOMMITTED",
            "ROLLBACK TRANSACTION",
        ),
    ] {
        batch(&writer, begin).await;
        batch(&writer, "UPDATE accounts SET balance = balance + 1").await;
        batch(&writer, "INSERT INTO accounts VALUES (100, 1)").await;
        for level in ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"] {
            batch(&reader, &format!("BEGIN ISOLATION LEVEL {level}")).await;
            let before = total(&writer).await - 1;
            assert_eq!(total(&reader).await, before - 1, "{begin} / {level}");
            batch(&reader, "COMMIT").await;
        }
        batch(&writer, end).await;
        batch(&writer, "DELETE FROM accounts WHERE id = 100").await;
    }
    // END committed the first block, COMMIT WORK the second; ABORT and ROLLBACK undid theirs.
    assert_eq!(balance(&reader, 1).await, 102);
}

/// A block that grows past `sluice.max_transaction_bytes` fails with 54000 instead of
/// growing without bound; the limit is a setting with bounds, and nothing of the block is
/// written.
#[tokio::test]
async fn oversized_transactions_are_refused() {
    let server = TestServer::start();
    let client = accounts(&server, 1, 100).await;
    batch(
        &client,
        "CREATE TABLE blobs (id bigint PRIMARY KEY, body text)",
    )
    .await;
    expect_sqlstate(
        client
            .simple_query("SET sluice.max_transaction_bytes = '1GB'")
            .await,
        "22023",
    );
    expect_sqlstate(
        client
            .simple_query("SET sluice.max_transaction_bytes = 'lots'")
            .await,
        "22023",
    );
    batch(&client, "SET sluice.max_transaction_bytes = '64kB'").await;
    batch(&client, "BEGIN").await;
    let body = "x".repeat(10_000);
    for id in 0..6i64 {
        client
            .execute("INSERT INTO blobs VALUES ($1, $2)", &[&id, &body])
            .await
            .unwrap();
    }
    let error = client
        .execute("INSERT INTO blobs VALUES ($1, $2)", &[&6i64, &body])
        .await
        .unwrap_err();
    assert_eq!(error.code().map(|c| c.code()), Some("54000"), "{error:?}");
    expect_sqlstate(client.simple_query("SELECT 1").await, "25P02");
    batch(&client, "ROLLBACK").await;
    assert_eq!(simple_counts(&client, "SELECT * FROM blobs").await, vec![0]);
    // Back at the default (24MB) the same block commits.
    batch(&client, "SET sluice.max_transaction_bytes = DEFAULT").await;
    batch(&client, "BEGIN").await;
    for id in 0..7i64 {
        client
            .execute("INSERT INTO blobs VALUES ($1, $2)", &[&id, &body])
            .await
            .unwrap();
    }
    batch(&client, "COMMIT").await;
    assert_eq!(simple_counts(&client, "SELECT * FROM blobs").await, vec![7]);
}

#[tokio::test]
async fn lost_update_is_prevented_at_every_level() {
    for level in ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"] {
        let server = TestServer::start();
        let a = accounts(&server, 1, 100).await;
        let b = server.client().await;
        batch(&a, &format!("BEGIN ISOLATION LEVEL {level}")).await;
        batch(&b, &format!("BEGIN ISOLATION LEVEL {level}")).await;
        assert_eq!(balance(&a, 1).await, 100);
        assert_eq!(balance(&b, 1).await, 100);
        batch(&a, "UPDATE accounts SET balance = balance + 1 WHERE id = 1").await;
        batch(&b, "UPDATE accounts SET balance = balance + 2 WHERE id = 1").await;
        batch(&a, "COMMIT").await;
        let error = b.simple_query("COMMIT").await.unwrap_err();
        assert_eq!(
            error.code(),
            Some(&SqlState::T_R_SERIALIZATION_FAILURE),
            "{level}"
        );
        assert_eq!(balance(&b, 1).await, 101, "{level}");
    }
}

#[tokio::test]
async fn non_repeatable_reads_and_phantoms_by_level() {
    let server = TestServer::start();
    let reader = accounts(&server, 2, 100).await;
    let writer = server.client().await;

    // REPEATABLE READ: one snapshot for the whole block.
    batch(&reader, "BEGIN ISOLATION LEVEL REPEATABLE READ").await;
    assert_eq!(balance(&reader, 1).await, 100);
    batch(&writer, "UPDATE accounts SET balance = 5 WHERE id = 1").await;
    batch(&writer, "INSERT INTO accounts VALUES (3, 1)").await;
    assert_eq!(
        balance(&reader, 1).await,
        100,
        "non-repeatable read under REPEATABLE READ"
    );
    assert_eq!(
        simple_counts(&reader, "SELECT * FROM accounts").await,
        vec![2],
        "phantom"
    );
    let level = simple_rows(&reader, "SHOW transaction_isolation").await;
    assert_eq!(level, vec![vec![s("repeatable read")]]);
    batch(&reader, "COMMIT").await;

    // READ COMMITTED (the default): each statement sees what committed before it.
    batch(&reader, "BEGIN").await;
    assert_eq!(balance(&reader, 1).await, 5);
    batch(&writer, "UPDATE accounts SET balance = 6 WHERE id = 1").await;
    batch(&writer, "DELETE FROM accounts WHERE id = 3").await;
    assert_eq!(balance(&reader, 1).await, 6);
    assert_eq!(
        simple_counts(&reader, "SELECT * FROM accounts").await,
        vec![2]
    );
    batch(&reader, "COMMIT").await;
}

/// Write skew: two transactions each read both rows and change a different one. Snapshot
/// isolation allows it (no row is written by both), which is why SERIALIZABLE exists.
#[tokio::test]
async fn write_skew_is_allowed_under_repeatable_read() {
    let server = TestServer::start();
    let a = accounts(&server, 2, 1).await;
    let b = server.client().await;
    for client in [&a, &b] {
        batch(client, "BEGIN ISOLATION LEVEL REPEATABLE READ").await;
        assert_eq!(total(client).await, 2);
    }
    batch(&a, "UPDATE accounts SET balance = 0 WHERE id = 1").await;
    batch(&b, "UPDATE accounts SET balance = 0 WHERE id = 2").await;
    batch(&a, "COMMIT").await;
    batch(&b, "COMMIT").await;
    assert_eq!(total(&a).await, 0);
}

/// Write skew under SERIALIZABLE, the classic on-call doctors: each transaction checks that
/// two doctors are on call and takes one off. Both would commit under snapshot isolation; here
/// the second commit fails with 40001 because a row it read changed, and at least one doctor
/// stays on call. Retried, it sees the new state and refuses to proceed itself.
#[tokio::test]
async fn write_skew_is_prevented_under_serializable() {
    let server = TestServer::start();
    let a = accounts(&server, 2, 1).await;
    let b = server.client().await;
    for client in [&a, &b] {
        batch(client, "BEGIN ISOLATION LEVEL SERIALIZABLE").await;
        assert_eq!(total(client).await, 2);
    }
    batch(&a, "UPDATE accounts SET balance = 0 WHERE id = 1").await;
    batch(&b, "UPDATE accounts SET balance = 0 WHERE id = 2").await;
    batch(&a, "COMMIT").await;
    let error = b.simple_query("COMMIT").await.unwrap_err();
    let db = error.as_db_error().expect("a server error");
    assert_eq!(db.code(), &SqlState::T_R_SERIALIZATION_FAILURE);
    assert!(
        db.detail()
            .unwrap_or_default()
            .contains("table \"public.accounts\""),
        "the detail names what conflicted: {db:?}"
    );
    assert_eq!(total(&a).await, 1);

    // SET TRANSACTION works too, and SHOW reports the level.
    batch(&b, "BEGIN").await;
    batch(&b, "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").await;
    let level = simple_rows(&b, "SHOW transaction_isolation").await;
    assert_eq!(level, vec![vec![s("serializable")]]);
    assert_eq!(total(&b).await, 1);
    batch(&b, "COMMIT").await;
}

/// Write skew under SERIALIZABLE when the driver opened the block first: psycopg and pgJDBC
/// send `BEGIN` before the application's own `BEGIN ISOLATION LEVEL SERIALIZABLE`.
/// PostgreSQL warns about the second BEGIN and applies its level (no query has run yet); a
/// database that kept READ COMMITTED here would commit both doctors' changes.
#[tokio::test]
async fn a_second_begin_still_sets_the_isolation_level_of_a_block_without_queries() {
    let server = TestServer::start();
    let a = accounts(&server, 2, 1).await;
    let b = server.client().await;
    for client in [&a, &b] {
        batch(client, "BEGIN").await;
        batch(client, "BEGIN ISOLATION LEVEL SERIALIZABLE").await;
        let level = simple_rows(client, "SHOW transaction_isolation").await;
        assert_eq!(level, vec![vec![s("serializable")]]);
        assert_eq!(total(client).await, 2);
    }
    batch(&a, "UPDATE accounts SET balance = 0 WHERE id = 1").await;
    batch(&b, "UPDATE accounts SET balance = 0 WHERE id = 2").await;
    batch(&a, "COMMIT").await;
    expect_sqlstate(b.simple_query("COMMIT").await, "40001");
    assert_eq!(total(&a).await, 1);
}

/// When a transaction's isolation level and access mode can change, with PostgreSQL's
/// answers (checked against PostgreSQL 15): the level only before the block's first query
/// and outside savepoints (25001 otherwise; naming the current level is always fine),
/// read-only at any time, read-write only before the first query; SET SESSION
/// CHARACTERISTICS and default_transaction_read_only apply to later blocks and to
/// statements outside any block.
#[tokio::test]
async fn transaction_modes_change_exactly_when_postgresql_allows() {
    let server = TestServer::start();
    let client = accounts(&server, 1, 100).await;

    // After a query the level is fixed, whether by SET TRANSACTION or a second BEGIN.
    batch(&client, "BEGIN").await;
    assert_eq!(total(&client).await, 100);
    expect_sqlstate(
        client
            .simple_query("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            .await,
        "25001",
    );
    batch(&client, "ROLLBACK").await;
    batch(&client, "BEGIN").await;
    assert_eq!(total(&client).await, 100);
    batch(&client, "SET TRANSACTION ISOLATION LEVEL READ COMMITTED").await;
    expect_sqlstate(
        client
            .simple_query("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .await,
        "25001",
    );
    batch(&client, "ROLLBACK").await;
    let in_one_query = simple_rows(
        &client,
        "BEGIN ISOLATION LEVEL SERIALIZABLE; SHOW transaction_isolation; COMMIT",
    )
    .await;
    assert_eq!(in_one_query, vec![vec![s("serializable")]]);
    // Not inside a savepoint.
    batch(&client, "BEGIN; SAVEPOINT a").await;
    expect_sqlstate(
        client
            .simple_query("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            .await,
        "25001",
    );
    batch(&client, "ROLLBACK").await;

    // Read-only: on at any time, off only before the first query.
    batch(&client, "BEGIN").await;
    assert_eq!(total(&client).await, 100);
    batch(&client, "SET TRANSACTION READ ONLY").await;
    assert_eq!(
        simple_rows(&client, "SHOW transaction_read_only").await,
        vec![vec![s("on")]]
    );
    expect_sqlstate(client.simple_query("DELETE FROM accounts").await, "25006");
    batch(&client, "ROLLBACK").await;
    batch(&client, "BEGIN READ ONLY").await;
    assert_eq!(total(&client).await, 100);
    expect_sqlstate(
        client.simple_query("SET TRANSACTION READ WRITE").await,
        "25001",
    );
    batch(&client, "ROLLBACK").await;
    batch(&client, "BEGIN READ ONLY; SET TRANSACTION READ WRITE").await;
    batch(&client, "UPDATE accounts SET balance = 99 WHERE id = 1").await;
    batch(&client, "COMMIT").await;
    assert_eq!(total(&client).await, 99);

    // Session defaults: later blocks and single statements are read-only.
    batch(
        &client,
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    )
    .await;
    assert_eq!(
        simple_rows(&client, "SHOW default_transaction_read_only").await,
        vec![vec![s("on")]]
    );
    expect_sqlstate(client.simple_query("DELETE FROM accounts").await, "25006");
    expect_sqlstate(
        client.simple_query("CREATE TABLE nope (a int)").await,
        "25006",
    );
    batch(&client, "BEGIN").await;
    assert_eq!(
        simple_rows(&client, "SHOW transaction_isolation").await,
        vec![vec![s("repeatable read")]]
    );
    expect_sqlstate(client.simple_query("DELETE FROM accounts").await, "25006");
    batch(&client, "ROLLBACK").await;
    expect_sqlstate(
        client
            .simple_query("SET default_transaction_read_only = 'maybe'")
            .await,
        "22023",
    );
    batch(&client, "SET default_transaction_read_only = 'false'").await;
    assert_eq!(
        simple_rows(&client, "SHOW default_transaction_read_only").await,
        vec![vec![s("off")]]
    );
    batch(&client, "DELETE FROM accounts").await;
    assert_eq!(
        simple_counts(&client, "SELECT * FROM accounts").await,
        vec![0]
    );
}

/// Phantoms under SERIALIZABLE: a transaction that counted the rows in a key range and wrote
/// on that basis fails if another transaction inserted into the range meanwhile. One that only
/// read commits: it is serialized at its snapshot. Writes outside what it read never conflict.
#[tokio::test]
async fn phantom_is_prevented_under_serializable() {
    let server = TestServer::start();
    let a = accounts(&server, 3, 10).await;
    let b = server.client().await;
    batch(&a, "CREATE TABLE audit (id bigint PRIMARY KEY, n bigint)").await;

    batch(&a, "BEGIN ISOLATION LEVEL SERIALIZABLE").await;
    let counted = simple_rows(
        &a,
        "SELECT count(*) FROM accounts WHERE id BETWEEN 1 AND 10",
    )
    .await;
    assert_eq!(counted, vec![vec![s("3")]]);
    batch(&b, "INSERT INTO accounts VALUES (5, 10)").await;
    // Still three: one snapshot for the whole block.
    let counted = simple_rows(
        &a,
        "SELECT count(*) FROM accounts WHERE id BETWEEN 1 AND 10",
    )
    .await;
    assert_eq!(counted, vec![vec![s("3")]]);
    batch(&a, "INSERT INTO audit VALUES (1, 3)").await;
    expect_sqlstate(a.simple_query("COMMIT").await, "40001");
    assert_eq!(simple_counts(&a, "SELECT * FROM audit").await, vec![0]);

    // A key range that did not change: an insert past it does not conflict.
    batch(&a, "BEGIN ISOLATION LEVEL SERIALIZABLE").await;
    let counted = simple_rows(&a, "SELECT count(*) FROM accounts WHERE id BETWEEN 1 AND 3").await;
    assert_eq!(counted, vec![vec![s("3")]]);
    batch(&b, "INSERT INTO accounts VALUES (7, 10)").await;
    batch(&a, "INSERT INTO audit VALUES (2, 3)").await;
    batch(&a, "COMMIT").await;

    // A point read of an absent key is a read too: its later appearance conflicts.
    batch(&a, "BEGIN ISOLATION LEVEL SERIALIZABLE").await;
    assert_eq!(
        simple_counts(&a, "SELECT * FROM accounts WHERE id = 9").await,
        vec![0]
    );
    batch(&b, "INSERT INTO accounts VALUES (9, 10)").await;
    batch(&a, "INSERT INTO audit VALUES (3, 0)").await;
    expect_sqlstate(a.simple_query("COMMIT").await, "40001");

    // A read-only transaction commits whatever happened since its snapshot.
    batch(&a, "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY").await;
    assert_eq!(total(&a).await, 60);
    batch(&b, "UPDATE accounts SET balance = 0").await;
    assert_eq!(total(&a).await, 60);
    batch(&a, "COMMIT").await;
    assert_eq!(total(&a).await, 0);
}

#[tokio::test]
async fn killed_server_keeps_committed_and_drops_open_transactions() {
    let mut server = TestServer::start();
    let committed = accounts(&server, 1, 100).await;
    let open = server.client().await;
    batch(&committed, "BEGIN").await;
    batch(&committed, "INSERT INTO accounts VALUES (2, 2)").await;
    batch(&committed, "COMMIT").await;
    batch(&open, "BEGIN").await;
    batch(&open, "INSERT INTO accounts VALUES (3, 3)").await;
    batch(&open, "UPDATE accounts SET balance = 0 WHERE id = 1").await;
    server.kill9();
    server.start_again();
    let client = server.client().await;
    assert_eq!(
        simple_rows(&client, "SELECT id, balance FROM accounts ORDER BY id").await,
        vec![vec![s("1"), s("100")], vec![s("2"), s("2")]]
    );

    // A client that disconnects mid-transaction leaves nothing behind either.
    let leaving = server.client().await;
    batch(&leaving, "BEGIN").await;
    batch(&leaving, "INSERT INTO accounts VALUES (4, 4)").await;
    drop(leaving);
    assert_eq!(
        simple_counts(&client, "SELECT * FROM accounts").await,
        vec![2]
    );
}

/// Portals with a row limit (`max_rows`, PortalSuspended) need a transaction in tokio-postgres.
#[tokio::test]
async fn portals_suspend_inside_a_transaction() {
    let server = TestServer::start();
    let mut client = accounts(&server, 5, 1).await;
    let tx = client.transaction().await.unwrap();
    let portal = tx
        .bind("SELECT id FROM accounts ORDER BY id", &[])
        .await
        .unwrap();
    let first = tx.query_portal(&portal, 2).await.unwrap();
    let second = tx.query_portal(&portal, 2).await.unwrap();
    let rest = tx.query_portal(&portal, 2).await.unwrap();
    let ids: Vec<i64> = first
        .iter()
        .chain(&second)
        .chain(&rest)
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    assert_eq!((first.len(), second.len(), rest.len()), (2, 2, 1));
    tx.commit().await.unwrap();
}

/// Concurrent transfers in explicit transactions, retried on 40001: the total never changes,
/// as seen by concurrent readers and at the end, and every transfer applies exactly once.
#[tokio::test]
async fn bank_transfers_keep_the_total() {
    const ACCOUNTS: i64 = 8;
    const CLIENTS: usize = 6;
    const TRANSFERS: usize = 40;
    let server = TestServer::start();
    let setup = accounts(&server, ACCOUNTS, 1000).await;
    batch(
        &setup,
        "CREATE TABLE transfers (id bigint PRIMARY KEY, amount bigint NOT NULL)",
    )
    .await;
    let retries = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for worker in 0..CLIENTS {
        let client = server.client().await;
        let retries = retries.clone();
        workers.push(tokio::spawn(async move {
            let mut seed = worker as u64 * 7919 + 1;
            let mut next = move || {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as i64
            };
            for n in 0..TRANSFERS {
                let from = next() % ACCOUNTS + 1;
                let to = (from + next() % (ACCOUNTS - 1)) % ACCOUNTS + 1;
                let amount = next() % 50 + 1;
                let id = (worker * TRANSFERS + n) as i64;
                loop {
                    let attempt = async {
                        client.batch_execute("BEGIN").await?;
                        client
                            .execute(
                                "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
                                &[&amount, &from],
                            )
                            .await?;
                        client
                            .execute(
                                "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
                                &[&amount, &to],
                            )
                            .await?;
                        client
                            .execute("INSERT INTO transfers VALUES ($1, $2)", &[&id, &amount])
                            .await?;
                        client.batch_execute("COMMIT").await
                    }
                    .await;
                    match attempt {
                        Ok(()) => break,
                        Err(e) if e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE) => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            let _ = client.batch_execute("ROLLBACK").await;
                        }
                        Err(e) => panic!("transfer failed: {e:?}"),
                    }
                }
            }
        }));
    }
    let reader = server.client().await;
    let mut observed = 0;
    while workers.iter().any(|w| !w.is_finished()) {
        assert_eq!(
            total(&reader).await,
            ACCOUNTS * 1000,
            "a reader saw money appear or vanish"
        );
        observed += 1;
    }
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(total(&reader).await, ACCOUNTS * 1000);
    assert_eq!(
        simple_counts(&reader, "SELECT * FROM transfers").await,
        vec![(CLIENTS * TRANSFERS) as u64],
        "a transfer was lost or applied twice"
    );
    assert!(observed > 0);
    // Contention on 8 accounts from 6 clients must have produced conflicts, or the
    // validation is not running.
    assert!(
        retries.load(Ordering::Relaxed) > 0,
        "no transfer ever conflicted"
    );
}

/// Write skew under load: accounts come in pairs whose sum must stay non-negative, and each
/// withdrawal checks the pair's sum before taking from one account of it. Under snapshot
/// isolation two concurrent withdrawals from the two accounts of a pair can both pass the
/// check; under SERIALIZABLE one of them fails with 40001 and retries against the new sum.
/// At the end no pair is negative and the books balance to the committed operations.
#[tokio::test]
async fn serializable_withdrawals_keep_every_pair_non_negative() {
    const PAIRS: i64 = 3;
    const CLIENTS: usize = 6;
    const OPERATIONS: usize = 25;
    let server = TestServer::start();
    let setup = accounts(&server, PAIRS * 2, 50).await;
    let retries = Arc::new(AtomicU64::new(0));
    let net = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let mut workers = Vec::new();
    for worker in 0..CLIENTS {
        let client = server.client().await;
        let (retries, net) = (retries.clone(), net.clone());
        workers.push(tokio::spawn(async move {
            client
                .batch_execute("SET default_transaction_isolation = 'serializable'")
                .await
                .unwrap();
            let mut seed = worker as u64 * 104729 + 3;
            let mut next = move || {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) as i64
            };
            for n in 0..OPERATIONS {
                let first = (next() % PAIRS) * 2 + 1;
                let account = first + next() % 2;
                let withdraw = n % 3 != 2;
                loop {
                    let attempt = async {
                        client.batch_execute("BEGIN").await?;
                        let sum: i64 = client
                            .query_one(
                                "SELECT sum(balance) FROM accounts WHERE id BETWEEN $1 AND $2",
                                &[&first, &(first + 1)],
                            )
                            .await?
                            .get(0);
                        // Widen the window between the check and the write.
                        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
                        let change = match (withdraw, sum >= 60) {
                            (true, true) => -60,
                            (true, false) => 0,
                            (false, _) => 30,
                        };
                        if change != 0 {
                            client
                                .execute(
                                    "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
                                    &[&change, &account],
                                )
                                .await?;
                        }
                        client.batch_execute("COMMIT").await?;
                        Ok::<i64, tokio_postgres::Error>(change)
                    }
                    .await;
                    match attempt {
                        Ok(change) => {
                            net.fetch_add(change, Ordering::Relaxed);
                            break;
                        }
                        Err(e) if e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE) => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            let _ = client.batch_execute("ROLLBACK").await;
                        }
                        Err(e) => panic!("operation failed: {e:?}"),
                    }
                }
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    for pair in 0..PAIRS {
        let first = pair * 2 + 1;
        let sum: i64 = setup
            .query_one(
                "SELECT sum(balance) FROM accounts WHERE id IN ($1, $2)",
                &[&first, &(first + 1)],
            )
            .await
            .unwrap()
            .get(0);
        assert!(sum >= 0, "pair {first} went to {sum}: write skew");
    }
    assert_eq!(
        total(&setup).await,
        PAIRS * 2 * 50 + net.load(Ordering::Relaxed),
        "the books do not balance to the committed operations"
    );
    assert!(
        retries.load(Ordering::Relaxed) > 0,
        "no operation ever conflicted: the test did not exercise concurrency"
    );
}

/// DDL in a block is part of the block, as in PostgreSQL: the block sees its
/// own tables and indexes, others see them only after COMMIT, ROLLBACK (or
/// ROLLBACK TO SAVEPOINT) takes them back, and two blocks changing the
/// catalog at once cannot both commit.
#[tokio::test]
async fn ddl_in_a_block_commits_and_rolls_back_with_it() {
    let server = TestServer::start();
    let a = server.client().await;
    let b = server.client().await;

    batch(
        &a,
        "BEGIN; CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL); \
         INSERT INTO users VALUES (1, 'a@x'), (2, 'b@x'); \
         CREATE INDEX users_email ON users (email)",
    )
    .await;
    assert_eq!(
        simple_rows(&a, "SELECT id FROM users WHERE email = 'b@x'").await,
        vec![vec![s("2")]]
    );
    let plan = simple_rows(&a, "EXPLAIN SELECT id FROM users WHERE email = 'b@x'").await;
    assert!(
        format!("{plan:?}").contains("users_email"),
        "the block's own index serves its reads: {plan:?}"
    );
    expect_sqlstate(b.simple_query("SELECT * FROM users").await, "42P01");
    batch(&a, "COMMIT").await;
    assert_eq!(
        simple_rows(&b, "SELECT id FROM users WHERE email = 'a@x'").await,
        vec![vec![s("1")]]
    );

    // Rolled back, the table never existed; a savepoint takes back only what followed it.
    batch(
        &a,
        "BEGIN; CREATE TABLE gone (a int); SAVEPOINT s; \
         ALTER TABLE users ADD COLUMN nickname text; ROLLBACK TO SAVEPOINT s",
    )
    .await;
    expect_sqlstate(a.simple_query("SELECT nickname FROM users").await, "42703");
    batch(&a, "ROLLBACK").await;
    expect_sqlstate(b.simple_query("SELECT * FROM gone").await, "42P01");

    // Two blocks that both change the catalog: the second to commit fails.
    batch(&a, "BEGIN; CREATE TABLE one (a int)").await;
    batch(&b, "BEGIN; CREATE TABLE two (a int)").await;
    batch(&a, "COMMIT").await;
    expect_sqlstate(b.simple_query("COMMIT").await, "40001");
    assert_eq!(simple_counts(&b, "SELECT * FROM one").await, vec![0]);
    expect_sqlstate(b.simple_query("SELECT * FROM two").await, "42P01");

    // TRUNCATE in a block (pgbench -i's): the block sees the table empty and
    // refills it; others see the old rows until COMMIT, then the new ones.
    batch(&b, "INSERT INTO one VALUES (1), (2), (3)").await;
    batch(&a, "BEGIN; TRUNCATE one; INSERT INTO one VALUES (9)").await;
    assert_eq!(
        simple_rows(&a, "SELECT a FROM one").await,
        vec![vec![s("9")]]
    );
    assert_eq!(simple_counts(&b, "SELECT * FROM one").await, vec![3]);
    batch(&a, "COMMIT").await;
    assert_eq!(
        simple_rows(&b, "SELECT a FROM one").await,
        vec![vec![s("9")]]
    );
    batch(&a, "BEGIN; DROP TABLE one; COMMIT").await;
    expect_sqlstate(b.simple_query("SELECT * FROM one").await, "42P01");
    batch(&b, "CREATE TABLE one (a int)").await;

    // An index on a table from outside the block would miss rows other
    // sessions write meanwhile: refused, pointing at the online build.
    batch(&a, "BEGIN").await;
    expect_sqlstate(
        a.simple_query("CREATE INDEX one_a ON one (a)").await,
        "0A000",
    );
    batch(&a, "ROLLBACK").await;
}
