//! Every error a client can provoke with ordinary SQL arrives with PostgreSQL's SQLSTATE, and the
//! session carries on afterwards. Each test checks all its cases and then reports every
//! mismatch at once.

mod common;

use tokio_postgres::Client;

use common::{describe, simple_rows, TestServer};

/// Collects SQLSTATE mismatches instead of stopping at the first.
#[derive(Default)]
struct Mismatches(Vec<String>);

impl Mismatches {
    fn expect<T>(&mut self, what: &str, result: Result<T, tokio_postgres::Error>, code: &str) {
        match result {
            Ok(_) => self
                .0
                .push(format!("{what}: expected {code}, but it succeeded")),
            Err(e) => match e.code() {
                Some(state) if state.code() == code => {}
                _ => self
                    .0
                    .push(format!("{what}: expected {code}, got {}", describe(&e))),
            },
        }
    }

    async fn simple(&mut self, client: &Client, sql: &str, code: &str) {
        self.expect(sql, client.simple_query(sql).await, code);
        still_works(client, sql).await;
    }

    async fn extended(&mut self, client: &Client, sql: &str, code: &str) {
        let what = format!("{sql} (extended)");
        self.expect(&what, client.query(sql, &[]).await, code);
        still_works(client, &what).await;
    }

    fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} SQLSTATE mismatches:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

async fn still_works(client: &Client, after: &str) {
    match client.simple_query("SELECT count(*) FROM t").await {
        Ok(rows) => assert!(!rows.is_empty(), "no result after {after}"),
        Err(e) => panic!("the session is broken after {after}: {}", describe(&e)),
    }
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

async fn count(client: &Client, filter: &str) -> String {
    simple_rows(client, &format!("SELECT count(*) FROM t WHERE {filter}")).await[0][0]
        .clone()
        .unwrap_or_default()
}

#[tokio::test]
async fn constraint_violations() {
    let server = TestServer::start();
    let client = server.client().await;
    setup(&client).await;
    let mut m = Mismatches::default();

    // unique_violation, alone, within one multi-row INSERT, and through a parameter
    m.simple(
        &client,
        "INSERT INTO t (id, name) VALUES (1, 'again')",
        "23505",
    )
    .await;
    m.simple(
        &client,
        "INSERT INTO t (id, name) VALUES (5, 'a'), (6, 'b'), (5, 'c')",
        "23505",
    )
    .await;
    m.expect(
        "INSERT INTO t (id, name) VALUES ($1, $2) with id 1",
        client
            .execute("INSERT INTO t (id, name) VALUES ($1, $2)", &[&1_i32, &"p"])
            .await,
        "23505",
    );

    // not_null_violation, explicit, by omission, and by UPDATE
    m.simple(
        &client,
        "INSERT INTO t (id, name) VALUES (2, NULL)",
        "23502",
    )
    .await;
    m.simple(&client, "INSERT INTO t (id) VALUES (3)", "23502")
        .await;
    m.simple(&client, "UPDATE t SET name = NULL WHERE id = 1", "23502")
        .await;
    m.simple(
        &client,
        "INSERT INTO t (id, name) VALUES (NULL, 'x')",
        "23502",
    )
    .await;

    let mut rows_written = Vec::new();
    for (filter, expected) in [
        ("id IN (5, 6)", "0"),
        ("id <> 1", "0"),
        ("name = 'one'", "1"),
    ] {
        let got = count(&client, filter).await;
        if got != expected {
            rows_written.push(format!("count where {filter}: {got}, expected {expected}"));
        }
    }
    assert!(
        rows_written.is_empty(),
        "failed statements wrote rows: {rows_written:?}"
    );
    m.assert_none();
}

#[tokio::test]
async fn data_exceptions() {
    let server = TestServer::start();
    let client = server.client().await;
    setup(&client).await;
    let mut m = Mismatches::default();

    // invalid_text_representation
    m.simple(
        &client,
        "INSERT INTO t (id, name) VALUES ('abc', 'x')",
        "22P02",
    )
    .await;
    m.simple(&client, "SELECT 'abc'::int", "22P02").await;
    m.extended(&client, "SELECT 'abc'::int", "22P02").await;

    // numeric_value_out_of_range
    m.simple(
        &client,
        "INSERT INTO t (id, name, amount) VALUES (10, 'x', 1000)",
        "22003",
    )
    .await;
    m.simple(
        &client,
        "INSERT INTO t (id, name, small) VALUES (11, 'x', 100000)",
        "22003",
    )
    .await;

    // string_data_right_truncation
    m.simple(
        &client,
        "INSERT INTO t (id, name, code) VALUES (12, 'x', 'abcd')",
        "22001",
    )
    .await;

    // division_by_zero
    m.simple(&client, "SELECT 1 / 0", "22012").await;

    // Integer arithmetic that overflows fails, as in PostgreSQL, rather than
    // wrapping around: in constants the optimizer folds, in columns, in
    // filters and in UPDATE's assignments, through both protocols.
    client
        .batch_execute("UPDATE t SET small = 300")
        .await
        .unwrap_or_else(|e| panic!("update: {}", describe(&e)));
    m.simple(&client, "SELECT 9223372036854775807 + 1", "22003")
        .await;
    m.extended(&client, "SELECT 2147483647::int * 2::int", "22003")
        .await;
    m.simple(
        &client,
        "SELECT small * small * small * small FROM t",
        "22003",
    )
    .await;
    m.extended(
        &client,
        "SELECT id FROM t WHERE id - 9223372036854775807 - 9 < 0",
        "22003",
    )
    .await;
    m.simple(
        &client,
        "UPDATE t SET small = small * small * small * small",
        "22003",
    )
    .await;

    assert_eq!(
        count(&client, "true").await,
        "1",
        "none of the rejected rows was written"
    );
    m.assert_none();
}

#[tokio::test]
async fn name_and_syntax_errors() {
    let server = TestServer::start();
    let client = server.client().await;
    setup(&client).await;
    let mut m = Mismatches::default();

    m.simple(&client, "SELECT * FROM no_such_table", "42P01")
        .await;
    m.extended(&client, "SELECT * FROM no_such_table", "42P01")
        .await;
    m.simple(&client, "INSERT INTO no_such_table VALUES (1)", "42P01")
        .await;
    m.simple(&client, "SELECT no_such_column FROM t", "42703")
        .await;
    m.extended(&client, "SELECT no_such_column FROM t", "42703")
        .await;
    m.simple(
        &client,
        "INSERT INTO t (id, no_such_column) VALUES (1, 2)",
        "42703",
    )
    .await;
    m.simple(&client, "CREATE TABLE t (id int)", "42P07").await;
    m.simple(&client, "SELEC 1", "42601").await;
    m.simple(&client, "SELECT (1", "42601").await;
    m.extended(&client, "SELECT 1 +", "42601").await;
    m.assert_none();
}

/// A Bind with the wrong number of parameters is refused by the client library or the server;
/// either way the connection stays usable, and a correct Bind then works.
#[tokio::test]
async fn wrong_parameter_count() {
    let server = TestServer::start();
    let client = server.client().await;
    setup(&client).await;

    let result = client.query("SELECT $1::int", &[]).await;
    assert!(result.is_err(), "a missing parameter must fail: {result:?}");
    let result = client.query("SELECT $1::int", &[&1_i32, &2_i32]).await;
    assert!(result.is_err(), "an extra parameter must fail: {result:?}");
    still_works(&client, "the parameter errors").await;
    let row = client
        .query_one("SELECT $1::int", &[&41_i32])
        .await
        .unwrap_or_else(|e| panic!("a correct Bind after the errors: {}", describe(&e)));
    assert_eq!(row.get::<_, i32>(0), 41);
}

/// PostgreSQL types an integer literal that fits in 32 bits as `integer`, so
/// `$1::int + 1` is `integer`; DataFusion types every integer literal `bigint`.
#[tokio::test]
#[ignore = "known gap: integer literals are bigint (DataFusion), PostgreSQL types them integer"]
async fn integer_literals_are_int4() {
    let server = TestServer::start();
    let client = server.client().await;
    let row = client
        .query_one("SELECT $1::int + 1", &[&41_i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}

/// The wording of the errors every application meets first, and built-in functions under
/// their `pg_catalog.` names, as PostgreSQL 15 answers (checked against it): SQLAlchemy's
/// first query is `SELECT pg_catalog.version()`, ORMs show these messages to their users.
#[tokio::test]
async fn common_errors_are_worded_and_builtins_named_as_in_postgresql() {
    let server = TestServer::start();
    let client = server.client().await;
    setup(&client).await;
    let message = |e: tokio_postgres::Error| {
        let db = e.as_db_error().expect("a server error").clone();
        (db.code().code().to_string(), db.message().to_string())
    };
    for (sql, code, text) in [
        (
            "SELECT * FROM nosuch",
            "42P01",
            "relation \"nosuch\" does not exist",
        ),
        (
            "SELECT no_such_column FROM t",
            "42703",
            "column \"no_such_column\" does not exist",
        ),
        ("SELECT 1/0", "22012", "division by zero"),
    ] {
        let simple = client.simple_query(sql).await.unwrap_err();
        assert_eq!(
            message(simple),
            (code.to_string(), text.to_string()),
            "{sql}"
        );
        let extended = client.query(sql, &[]).await.unwrap_err();
        assert_eq!(
            message(extended),
            (code.to_string(), text.to_string()),
            "{sql} (extended)"
        );
    }
    // An error raised while rows stream reads the same as one raised at planning.
    let streamed = client
        .query("SELECT 10 / (id - id) FROM t", &[])
        .await
        .unwrap_err();
    assert_eq!(message(streamed).1, "division by zero");

    let version = client
        .query_one("SELECT pg_catalog.version()", &[])
        .await
        .unwrap();
    assert_eq!(version.columns()[0].name(), "version");
    assert!(version.get::<_, String>(0).starts_with("PostgreSQL 15"));
    let types = simple_rows(
        &client,
        "SELECT pg_typeof(1.5::float8), pg_catalog.pg_typeof('a'::text), pg_typeof(now()), \
         pg_typeof(true), pg_typeof(NULL::date)",
    )
    .await;
    let expected = [
        "double precision",
        "text",
        "timestamp with time zone",
        "boolean",
        "date",
    ];
    assert_eq!(
        types,
        vec![expected
            .iter()
            .map(|t| Some(t.to_string()))
            .collect::<Vec<_>>()]
    );
    // Only pg_catalog is the built-ins' schema.
    let elsewhere = client
        .simple_query("SELECT public.version()")
        .await
        .unwrap_err();
    assert_eq!(message(elsewhere).0, "42883");
}

/// Generated SQL repeats output names (PostgreSQL allows it) and must not assign a column
/// twice (PostgreSQL refuses it with 42601), both checked against PostgreSQL 15.
#[tokio::test]
async fn repeated_output_names_are_allowed_and_repeated_assignments_refused() {
    let server = TestServer::start();
    let client = server.client().await;
    setup(&client).await;
    let row = client
        .query_one("SELECT 1 AS a, 2 AS a, 'x' AS b", &[])
        .await
        .unwrap();
    let names: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["a", "a", "b"]);
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (1, 2));

    let mut m = Mismatches::default();
    m.simple(&client, "UPDATE t SET n = 1, n = 2", "42601")
        .await;
    m.simple(&client, "UPDATE t SET (n, name) = (1, 'a'), n = 3", "42601")
        .await;
    m.assert_none();
    let error = client
        .simple_query("UPDATE t SET n = 1, N = 2")
        .await
        .unwrap_err();
    assert_eq!(
        error.as_db_error().unwrap().message(),
        "multiple assignments to same column \"n\""
    );
}
