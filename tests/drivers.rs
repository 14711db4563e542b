//! Real Postgres drivers against Sluice. Python clients run from the virtualenv that
//! `scripts/python-env` creates (`scripts/test` exports its python as `SLUICE_PYTHON`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::TestServer;

fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_PYTHON") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    let default = PathBuf::from(home).join(".cache/sluice-pyenv/bin/python");
    assert!(
        default.exists(),
        "no Python driver environment: run scripts/python-env (scripts/test does) or set SLUICE_PYTHON"
    );
    default
}

#[test]
fn psycopg_default_mode_commits_and_rolls_back() {
    run_script("psycopg_session.py");
}

#[test]
fn psycopg_consumes_a_topic_with_a_group_cursor() {
    run_script("psycopg_topic.py");
}

fn run_script(name: &str) {
    let server = TestServer::start();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/drivers")
        .join(name);
    let dsn = format!(
        "host=127.0.0.1 port={} user=sluice dbname=sluice connect_timeout=10",
        server.sql_port
    );
    let out = Command::new(python())
        .arg(&script)
        .arg(&dsn)
        .output()
        .expect("run the psycopg script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "psycopg session failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver:\n{}",
        out.status,
        server.stderr_tail()
    );
}
