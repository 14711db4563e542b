//! Real Postgres drivers against Sluice, each a short program in `tests/drivers/` written the
//! way a user of that driver writes one, printing `ok` when every check held:
//! - psycopg, from the virtualenv `scripts/python-env` creates (`SLUICE_PYTHON`);
//! - node-postgres, installed by `scripts/node-env` (`SLUICE_NODE_PG`, the module's path);
//! - pgjdbc, Debian's `libpostgresql-jdbc-java` (`SLUICE_PGJDBC`, the jar's path), run as a
//!   single-file Java program.
//!
//! `scripts/test` installs all three and exports the variables.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestServer;

fn script(name: &str) -> PathBuf {
    common::checkout_dir().join("tests/drivers").join(name)
}

/// A driver's location from `variable`, else `default`, which must exist.
fn installed(variable: &str, default: PathBuf, how: &str) -> PathBuf {
    let path = std::env::var_os(variable).map_or(default, PathBuf::from);
    assert!(
        path.exists(),
        "{} not found: {how} (scripts/test does) or set {variable}",
        path.display()
    );
    path
}

/// `relative` under `$HOME`, where the driver scripts install.
fn in_home(relative: &str) -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(relative)
}

fn python() -> PathBuf {
    installed(
        "SLUICE_PYTHON",
        in_home(".cache/sluice-pyenv/bin/python"),
        "run scripts/python-env",
    )
}

fn node_pg() -> PathBuf {
    installed(
        "SLUICE_NODE_PG",
        in_home(".cache/sluice-nodeenv/node_modules/pg"),
        "run scripts/node-env",
    )
}

fn pgjdbc() -> PathBuf {
    installed(
        "SLUICE_PGJDBC",
        PathBuf::from("/usr/share/java/postgresql.jar"),
        "run scripts/install-deps (it installs libpostgresql-jdbc-java)",
    )
}

#[test]
fn psycopg_default_mode_commits_and_rolls_back() {
    run_psycopg("psycopg_session.py");
}

#[test]
fn psycopg_default_mode_gets_the_isolation_level_the_application_asks_for() {
    run_psycopg("psycopg_isolation.py");
}

#[test]
fn psycopg_default_mode_runs_a_migration_as_one_transaction() {
    run_psycopg("psycopg_migration.py");
}

#[test]
fn psycopg_default_mode_creates_serial_tables_and_returns_new_ids() {
    run_psycopg("psycopg_serial.py");
}

#[test]
fn psycopg_consumes_a_topic_with_a_group_cursor() {
    run_psycopg("psycopg_topic.py");
}

#[test]
fn node_postgres_pool_prepared_statements_transactions_and_a_topic_consumer() {
    let server = TestServer::start();
    let mut node = Command::new("node");
    node.arg(script("node_pg.js"))
        .arg(server.sql_port.to_string())
        .env("SLUICE_NODE_PG", node_pg());
    run_driver("node-postgres", node, &server);
}

#[test]
fn pgjdbc_prepared_statements_batches_transactions_and_a_topic_consumer() {
    let server = TestServer::start();
    let mut java = Command::new("java");
    java.arg("-cp")
        .arg(pgjdbc())
        .arg(script("PgJdbc.java"))
        .arg(server.sql_port.to_string());
    run_driver("pgjdbc", java, &server);
}

fn run_psycopg(name: &str) {
    let server = TestServer::start();
    let dsn = format!(
        "host=127.0.0.1 port={} user=sluice dbname=sluice connect_timeout=10",
        server.sql_port
    );
    let mut python = Command::new(python());
    python.arg(script(name)).arg(dsn);
    run_driver("psycopg", python, &server);
}

/// Runs a driver program to completion and requires it to print exactly `ok`.
fn run_driver(driver: &str, mut program: Command, server: &TestServer) {
    let shown: Vec<OsString> = std::iter::once(program.get_program().to_owned())
        .chain(program.get_args().map(|a| a.to_owned()))
        .collect();
    let out = program
        .output()
        .unwrap_or_else(|e| panic!("run {driver} ({:?}): {e}", Path::new(&shown[0])));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "{driver} program failed ({}): {shown:?}\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver:\n{}",
        out.status,
        server.stderr_tail()
    );
}
