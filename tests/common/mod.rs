//! The harness every integration test uses: a real `sluice` process on ephemeral ports, with a
//! data directory that outlives restarts and crashes, and a few client helpers.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio_postgres::{Client, NoTls};

/// How long a server may take to print `sluice: ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of the server's stderr a panic message carries.
const STDERR_TAIL: u64 = 16 * 1024;

pub struct TestServer {
    child: Option<Child>,
    dir: TempDir,
    /// Arguments after `start --data-dir …`; the listeners default to ephemeral ports.
    args: Vec<String>,
    pub sql_port: u16,
    pub http_port: u16,
}

impl TestServer {
    /// Starts a server on a fresh temporary directory.
    pub fn start() -> TestServer {
        TestServer::start_in(TempDir::new().expect("create temp dir"))
    }

    /// Starts a server whose data lives in `dir/data` (and its stderr in `dir/server.stderr`).
    pub fn start_in(dir: TempDir) -> TestServer {
        TestServer::start_with_args(dir, &["--peer-listen", "127.0.0.1:0"])
    }

    /// Starts a server with these extra `sluice start` arguments (which must include
    /// `--peer-listen`: the default port would collide between tests).
    pub fn start_with_args(dir: TempDir, args: &[&str]) -> TestServer {
        let mut server = TestServer {
            child: None,
            dir,
            args: args.iter().map(|a| a.to_string()).collect(),
            sql_port: 0,
            http_port: 0,
        };
        server.launch();
        server
    }

    /// The server's resident memory in bytes (Linux `VmRSS`).
    pub fn rss_bytes(&self) -> u64 {
        let pid = self.child.as_ref().expect("server running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .expect("VmRSS in /proc/<pid>/status")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("server.stderr")
    }

    fn launch(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stderr_path())
            .expect("open server stderr file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("start")
            .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(&self.args)
            // The server must not pick up settings from the environment of whoever runs the tests.
            .env_remove("SLUICE_LISTEN")
            .env_remove("SLUICE_HTTP_LISTEN")
            .env_remove("SLUICE_DATA_DIR")
            .env_remove("SLUICE_CONFIG")
            .env_remove("SLUICE_PASSWORD")
            .env_remove("SLUICE_PEER_LISTEN")
            .env_remove("SLUICE_JOIN")
            .env_remove("SLUICE_NODE_ID")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn the sluice binary");
        let stdout = child.stdout.take().expect("piped stdout");
        self.child = Some(child);

        // A reader thread forwards lines and then keeps draining stdout, so the server never
        // blocks on a full pipe.
        let (tx, rx) = mpsc::channel::<String>();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The receiver is gone once the server is ready; keep draining regardless.
                let _ = tx.send(line);
            }
        });

        let deadline = Instant::now() + READY_TIMEOUT;
        let (mut sql_port, mut http_port) = (None, None);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("sluice: sql listening on ") {
                        sql_port = Some(parse_port(addr));
                    } else if let Some(addr) = line.strip_prefix("sluice: http listening on ") {
                        http_port = Some(parse_port(addr));
                    } else if line.trim() == "sluice: ready" {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.kill_child();
                    self.fail(&format!("server not ready within {READY_TIMEOUT:?}"));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.wait_child(STOP_TIMEOUT);
                    self.fail(&format!(
                        "server closed stdout before `sluice: ready` (exit: {status:?})"
                    ));
                }
            }
        }
        match (sql_port, http_port) {
            (Some(sql), Some(http)) => {
                self.sql_port = sql;
                self.http_port = http;
            }
            _ => {
                self.kill_child();
                self.fail("server said ready without printing both listening addresses");
            }
        }
    }

    /// Panics with `msg` and the tail of the server's stderr.
    pub fn fail(&self, msg: &str) -> ! {
        panic!(
            "{msg}\n----- sluice stderr (tail) -----\n{}",
            self.stderr_tail()
        );
    }

    pub fn stderr_tail(&self) -> String {
        let Ok(mut file) = File::open(self.stderr_path()) else {
            return String::from("<no stderr file>");
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(STDERR_TAIL)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=sluice dbname=sluice connect_timeout=10",
            self.sql_port
        )
    }

    /// A new connection; its connection task runs on the current tokio runtime.
    pub async fn client(&self) -> Client {
        match self.try_client().await {
            Ok(client) => client,
            Err(e) => self.fail(&format!("connect to sluice: {e}")),
        }
    }

    pub async fn try_client(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(&self.conninfo(), NoTls).await?;
        tokio::spawn(async move {
            // A test that drops its client or kills the server ends the connection; nothing to do.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Crashes the server: SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        self.kill_child();
    }

    /// SIGTERM, then waits for a clean exit (status 0).
    pub fn stop(&mut self) {
        let Some(child) = self.child.as_ref() else {
            return;
        };
        let pid = child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {pid} failed: {status}");
        match self.wait_child(STOP_TIMEOUT) {
            Some(status) if status.success() => {}
            Some(status) => self.fail(&format!("server exited with {status} after SIGTERM")),
            None => {
                self.kill_child();
                self.fail(&format!(
                    "server still running {STOP_TIMEOUT:?} after SIGTERM"
                ));
            }
        }
    }

    /// Stops the server cleanly and starts it again on the same data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Starts the server again after `kill9` or `stop`.
    pub fn start_again(&mut self) {
        self.launch();
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn kill_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still running.
    fn wait_child(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => return None,
                Err(e) => panic!("wait for sluice: {e}"),
            }
        }
    }

    /// A minimal HTTP/1.0 GET against the HTTP listener: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        self.http_request("GET", path)
    }

    /// A minimal HTTP/1.0 POST with no body: (status code, body).
    pub fn http_post(&self, path: &str) -> (u16, String) {
        self.http_request("POST", path)
    }

    fn http_request(&self, method: &str, path: &str) -> (u16, String) {
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.http_port)).expect("connect to the http port");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set read timeout");
        let request =
            format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n");
        stream.write_all(request.as_bytes()).expect("send request");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).expect("read response");
        let response = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("malformed HTTP response: {response:?}"));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("malformed HTTP status line: {head:?}"));
        (status, body.to_string())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill_child();
    }
}

fn parse_port(addr: &str) -> u16 {
    addr.trim()
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse a port from {addr:?}"))
}

/// Asserts that `err` is a server error with SQLSTATE `code`.
/// The checkout under test. Cargo runs each test binary in its package's directory, so this is
/// read at run time: a binary a build reused from a clone elsewhere (CI clones into a fresh
/// directory but shares the target directory) would carry that clone's compile-time path.
pub fn checkout_dir() -> PathBuf {
    std::env::current_dir()
        .ok()
        .filter(|dir| dir.join("Cargo.toml").is_file())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn assert_sqlstate(err: &tokio_postgres::Error, code: &str) {
    match err.code() {
        Some(state) => assert_eq!(
            state.code(),
            code,
            "expected SQLSTATE {code}, got {} ({})",
            state.code(),
            describe(err)
        ),
        None => panic!("expected SQLSTATE {code}, got a non-server error: {err:?}"),
    }
}

/// The server's message for an error, or the client-side error.
pub fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => err.to_string(),
    }
}

/// Expects `result` to be an error with SQLSTATE `code`.
pub fn expect_sqlstate<T: std::fmt::Debug>(result: Result<T, tokio_postgres::Error>, code: &str) {
    match result {
        Ok(v) => panic!("expected SQLSTATE {code}, but the statement succeeded: {v:?}"),
        Err(e) => assert_sqlstate(&e, code),
    }
}

/// Runs statements that must succeed, naming the SQL and SQLSTATE if they do not.
pub async fn batch(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
}

/// The command-complete row counts of a simple-protocol batch, in order.
pub async fn simple_counts(client: &Client, sql: &str) -> Vec<u64> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(n),
            _ => None,
        })
        .collect()
}

/// The rows of a simple-protocol query as text (None for NULL).
pub async fn simple_rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}
