//! Every error a client can provoke with ordinary SQL arrives with PostgreSQL's SQLSTATE, and the
//! session carries on afterwards.

mod common;

use tokio_postgres::Client;

use common::{describe, expect_sqlstate, simple_rows, TestServer};

async fn still_works(client: &Client) {
    let rows = simple_rows(client, "SELECT count(*) FROM t").await;
    assert_eq!(rows.len(), 1, "the session keeps working after an error");
}

async fn setup(client: &Client) {
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, name text NOT NULL, n int, \
             amount numeric(3,1), small smallint, code varchar(3))",
        )
        .await
        .unwrap_or_else(|e| panic!("create table: {}", describe(&e)));
    client
        .batch_execute("INSERT INTO t (id, name) VALUES (1, 'one')")
        .await
        .unwrap_or_else(|e| panic!("insert: {}", describe(&e)));
}

#[tokio::test]
async fn constraint_violations() {
    let server = TestServer::start();
    let client = server.client().await;
    setup(&client).await;

    // unique_violation, alone and within one multi-row INSERT
    expect_sqlstate(
        client
            .simple_query("INSERT INTO t (id, name) VALUES (1, 'again')")
            .await,
        "23505",
    );
    still_works(&client).await;
    expect_sqlstate(
        client
            .simple_query("INSERT INTO t (id, name) VALUES (5, 'a'), (6, 'b'), (5, 'c')")
            .await,
        "23505",
    );
    assert_eq!(
        simple_rows(&client, "SELECT count(*) FROM t WHERE id IN (5, 6)").await,
        vec![vec![Some("0".to_string())]],
        "a failed INSERT writes none of its rows"
    );
    expect_sqlstate(
        client
            .execute("INSERT INTO t (id, name) VALUES ($1, $2)", &[&1_i32, &"p"])
            .await,
        "23505",
    );
    still_works(&client).await;

    // not_null_violation, explicit and by omission
    expect_sqlstate(
        client
            .simple_query("INSERT INTO t (id, name) VALUES (2, NULL)")
            .await,
        "23502",
    );
    expect_sqlstate(
        client.simple_query("INSERT INTO t (id) VALUES (3)").await,
        "23502",
    );
    expect_sqlstate(
        client
            .simple_query("UPDATE t SET name = NULL WHERE id = 1")
            .await,
        "23502",
    );
    still_works(&client).await;
    assert_eq!(
        simple_rows(&client, "SELECT id, name FROM t").await,
        vec![vec![Some("1".to_string()), Some("one".to_string())]]
    );
}

#[tokio::test]
async fn data_exceptions() {
    let server = TestServer::start();
    let client = server.client().await;
    setup(&client).await;

    // invalid_text_representation
    expect_sqlstate(
        client
            .simple_query("INSERT INTO t (id, name) VALUES ('abc', 'x')")
            .await,
        "22P02",
    );
    expect_sqlstate(client.simple_query("SELECT 'abc'::int").await, "22P02");
    still_works(&client).await;

    // numeric_value_out_of_range
    expect_sqlstate(
        client
            .simple_query("INSERT INTO t (id, name, amount) VALUES (10, 'x', 1000)")
            .await,
        "22003",
    );
    expect_sqlstate(
        client
            .simple_query("INSERT INTO t (id, name, small) VALUES (11, 'x', 100000)")
            .await,
        "22003",
    );
    still_works(&client).await;

    // string_data_right_truncation
    expect_sqlstate(
        client
            .simple_query("INSERT INTO t (id, name, code) VALUES (12, 'x', 'abcd')")
            .await,
        "22001",
    );
    still_works(&client).await;
    assert_eq!(
        simple_rows(&client, "SELECT count(*) FROM t").await,
        vec![vec![Some("1".to_string())]],
        "none of the rejected rows was written"
    );
}

#[tokio::test]
async fn name_and_syntax_errors() {
    let server = TestServer::start();
    let client = server.client().await;
    setup(&client).await;

    expect_sqlstate(
        client.simple_query("SELECT * FROM no_such_table").await,
        "42P01",
    );
    expect_sqlstate(
        client.query("SELECT * FROM no_such_table", &[]).await,
        "42P01",
    );
    still_works(&client).await;
    expect_sqlstate(
        client.simple_query("SELECT no_such_column FROM t").await,
        "42703",
    );
    expect_sqlstate(
        client
            .simple_query("INSERT INTO t (id, no_such_column) VALUES (1, 2)")
            .await,
        "42703",
    );
    still_works(&client).await;
    expect_sqlstate(client.simple_query("SELEC 1").await, "42601");
    expect_sqlstate(client.simple_query("SELECT (1").await, "42601");
    expect_sqlstate(client.query("SELECT FROM WHERE", &[]).await, "42601");
    still_works(&client).await;
}

/// A Bind with fewer parameters than the statement declares is refused by the client library
/// or the server; either way the connection stays usable.
#[tokio::test]
async fn wrong_parameter_count() {
    let server = TestServer::start();
    let client = server.client().await;
    setup(&client).await;

    let result = client.query("SELECT $1::int", &[]).await;
    assert!(result.is_err(), "a missing parameter must fail: {result:?}");
    let result = client.query("SELECT $1::int", &[&1_i32, &2_i32]).await;
    assert!(result.is_err(), "an extra parameter must fail: {result:?}");
    still_works(&client).await;
    let row = client
        .query_one("SELECT $1::int + 1", &[&41_i32])
        .await
        .unwrap_or_else(|e| panic!("after the parameter errors: {}", describe(&e)));
    assert_eq!(row.get::<_, i32>(0), 42);
}
