//! The real `psql` client works against Sluice: its catalog queries behind `\dt`, `\d`, `\dn`
//! and `\l` succeed and describe tables faithfully, and `\copy` loads a CSV file.

mod common;

use std::process::{Command, Output};

use common::{simple_rows, TestServer};

fn psql(server: &TestServer, command: &str) -> Output {
    Command::new("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p"])
        .arg(server.sql_port.to_string())
        .args(["-U", "sluice", "-d", "sluice", "-c", command])
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE")
        .current_dir(server.temp_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run psql ({e}); scripts/install-deps installs postgresql-client")
        })
}

/// Runs `command` and returns its stdout, failing on a non-zero exit or any error on stderr.
fn psql_ok(server: &TestServer, command: &str) -> String {
    let out = psql(server, command);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && !stderr.contains("ERROR"),
        "psql -c {command:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

const CREATE_ACCOUNTS: &str = "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, \
     balance numeric(12,2) DEFAULT 0, opened date)";

async fn server_with_accounts() -> TestServer {
    let server = TestServer::start();
    let client = server.client().await;
    client
        .batch_execute(CREATE_ACCOUNTS)
        .await
        .expect("create accounts");
    server
}

#[tokio::test]
async fn psql_describes_tables() {
    let server = server_with_accounts().await;
    let tables = psql_ok(&server, r"\dt");
    assert!(tables.contains("accounts"), "\\dt output:\n{tables}");

    let described = psql_ok(&server, r"\d accounts");
    let missing: Vec<String> = [
        ("id", "bigint"),
        ("owner", "text"),
        ("balance", "numeric(12,2)"),
        ("opened", "date"),
    ]
    .into_iter()
    .filter(|(column, ty)| {
        !described.lines().any(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            cells.len() >= 2 && cells[0] == *column && cells[1] == *ty
        })
    })
    .map(|(column, ty)| format!("{column} {ty}"))
    .collect();
    assert!(
        missing.is_empty(),
        "columns missing from \\d: {missing:?}\n{described}"
    );
}

#[tokio::test]
async fn psql_lists_schemas_and_databases() {
    let server = server_with_accounts().await;
    let schemas = psql_ok(&server, r"\dn");
    assert!(schemas.contains("public"), "\\dn output:\n{schemas}");
    let databases = psql_ok(&server, r"\l");
    assert!(databases.contains("sluice"), "\\l output:\n{databases}");
}

#[tokio::test]
async fn psql_copy_loads_csv() {
    let server = server_with_accounts().await;
    let csv = server.temp_dir().join("accounts.csv");
    std::fs::write(
        &csv,
        "1,ada,10.50,2024-01-02\n2,\"bob, jr.\",0,\n3,\"say \"\"hi\"\"\",7.25,2023-12-31\n",
    )
    .expect("write csv");
    let copied = psql_ok(&server, r"\copy accounts FROM 'accounts.csv' CSV");
    assert!(copied.contains("COPY 3"), "\\copy output:\n{copied}");
    let client = server.client().await;
    assert_eq!(
        simple_rows(
            &client,
            "SELECT id, owner, balance, opened FROM accounts ORDER BY id"
        )
        .await,
        vec![
            vec![
                Some("1".to_string()),
                Some("ada".to_string()),
                Some("10.50".to_string()),
                Some("2024-01-02".to_string()),
            ],
            vec![
                Some("2".to_string()),
                Some("bob, jr.".to_string()),
                Some("0.00".to_string()),
                None,
            ],
            vec![
                Some("3".to_string()),
                Some("say \"hi\"".to_string()),
                Some("7.25".to_string()),
                Some("2023-12-31".to_string()),
            ],
        ]
    );
}
