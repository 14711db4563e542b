//! SQLite's sqllogictest corpus (select1–5, ~8,900 queries of joins, subqueries, CASE,
//! aggregates and NULL handling) must pass against Sluice over the extended protocol, exactly as
//! it passes against PostgreSQL. Each file gets a fresh server; every record runs, and the test
//! prints per-file counts and the first failures.
//!
//! Every record must pass, as it does against PostgreSQL. Correlated subqueries that DataFusion
//! cannot decorrelate run through Sluice's apply operator (`crates/planner/src/apply.rs`), and the
//! `CREATE INDEX` statements of select4 build real secondary indexes.
//!
//! Setting `SLUICE_CONFORMANCE_ORACLE` to a libpq-style connection string (for example
//! `host=127.0.0.1 port=5999 user=postgres dbname=postgres`) runs the same files against that
//! server instead, each in a freshly created database: that is how the adapter itself is checked
//! against real PostgreSQL.

#[path = "../common/mod.rs"]
mod common;
mod pg_db;

use std::path::PathBuf;

use common::TestServer;

/// The peer's corpus lives in `shared/conformance/sqllogictest` beside the checkout (or beside
/// one of its ancestors, for a clone made elsewhere, as CI does).
fn corpus_dir() -> PathBuf {
    let checkout = common::checkout_dir();
    checkout
        .ancestors()
        .map(|dir| dir.join("shared/conformance/sqllogictest"))
        .find(|dir| dir.is_dir())
        .unwrap_or_else(|| {
            panic!(
                "conformance corpus not found in shared/conformance/sqllogictest beside {} or its parents",
                checkout.display()
            )
        })
}

async fn check_file(name: &str) {
    let path = corpus_dir().join(name);
    assert!(
        path.exists(),
        "conformance corpus file {} is missing",
        path.display()
    );
    let (report, _server) = match std::env::var("SLUICE_CONFORMANCE_ORACLE") {
        Ok(oracle) => (run_against_oracle(&oracle, &path, name).await, None),
        Err(_) => {
            let server = TestServer::start();
            let report = pg_db::run_file(&path, &server.conninfo())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            (report, Some(server))
        }
    };
    // One print, so that files running in parallel do not interleave their reports.
    let mut summary = format!("{report}\n");
    for (cause, n) in report.top_causes() {
        summary.push_str(&format!("  {n:>6} x {cause}\n"));
    }
    for (i, failure) in report.first_failures.iter().enumerate() {
        summary.push_str(&format!(
            "--- {name}: failure {} of {} ---\n{failure}\n",
            i + 1,
            report.failed
        ));
    }
    println!("{summary}");
    assert_eq!(
        report.failed, 0,
        "{name}: {} records failed\n{report}",
        report.failed
    );
    assert!(report.executed > 0, "{name} ran no records");
}

async fn run_against_oracle(oracle: &str, path: &std::path::Path, name: &str) -> pg_db::FileReport {
    let (admin, connection) = tokio_postgres::connect(oracle, tokio_postgres::NoTls)
        .await
        .expect("connect to the oracle server");
    tokio::spawn(connection);
    let database = format!("sluice_slt_{}", name.trim_end_matches(".test"));
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database}"))
        .await
        .expect("drop the previous oracle database");
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .expect("create the oracle database");
    let report = pg_db::run_file(path, &format!("{oracle} dbname={database}"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database}"))
        .await
        .expect("drop the oracle database");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select1() {
    check_file("select1.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select2() {
    check_file("select2.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select3() {
    check_file("select3.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select4() {
    check_file("select4.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select5() {
    check_file("select5.test").await;
}
