//! The PostgreSQL front door: the wire protocol server, one planner session
//! per connection, COPY, cancel and timeouts, and the HTTP endpoint for
//! health, readiness and metrics. Nothing here knows how data is stored.
//!
//! Main flow, for one client connection:
//!
//! 1. [`serve_sql`] accepts the socket and runs `server::drive` in its own
//!    task: it refuses SSL, bounds message sizes (`limit::LimitedIo`),
//!    decodes messages (`query_codec::QueryCodec`: simple Queries itself,
//!    the rest through pgwire's codec) and hands each to pgwire's
//!    `process_message`.
//! 2. The startup message reaches `connection::Startup::on_startup`, which
//!    authenticates (trust, or SCRAM-SHA-256 through pgwire), registers the
//!    connection for CancelRequest, and opens the planner session with
//!    [`Database::new_session`] from the startup parameters.
//! 3. A simple Query goes to `query::Connection::on_query`: the planner's
//!    `Session::parse` splits it, then for each statement `Session::prepare`
//!    and `Session::execute`. The extended protocol goes through pgwire's
//!    `ExtendedQueryHandler`: Parse calls `Session::prepare` (through
//!    `query::Parser`), Describe reports its parameter and result types,
//!    Execute (`query::Connection::on_execute`) runs it with the bound
//!    parameters decoded by arrow-pg.
//! 4. Execution and result streaming run under an `interrupt::Interrupt`:
//!    CancelRequest, `statement_timeout` and server shutdown stop them.
//!    Rows stream batch by batch from the planner's record batch stream,
//!    encoded by arrow-pg (`query::send_rows`).
//! 5. Inside the planner, reads take a snapshot from the Raft node and
//!    writes become commands proposed through `sluice_raftstore`; the
//!    frontend only sees the resulting `Output` and errors with SQLSTATEs,
//!    which `error` turns into ErrorResponses.
//! 6. COPY FROM STDIN data is parsed by `copy::parse::CopyParser` and sent
//!    to `Session::copy_rows` in batches; COPY TO STDOUT lines are written
//!    by `copy::format`.
//!
//! [`serve_http`] serves `/health`, `/ready` (from the Raft node's status)
//! and `/metrics` (the [`Metrics`] registry plus Raft and engine gauges read
//! at scrape time).

mod connection;
mod copy;
mod error;
mod http;
mod interrupt;
mod limit;
mod metrics;
mod query;
mod query_codec;
mod server;

pub use http::serve_http;
pub use metrics::Metrics;
pub use server::serve_sql;

/// Re-exported so that callers name the same types the functions take.
pub use sluice_planner::Database;

/// How clients authenticate.
#[derive(Clone)]
pub enum Auth {
    /// Any user, no password.
    Trust,
    /// One user with a password, checked with SCRAM-SHA-256; the password
    /// itself never crosses the wire.
    Password { user: String, password: String },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Trust => f.write_str("Trust"),
            Auth::Password { user, .. } => f
                .debug_struct("Password")
                .field("user", user)
                .finish_non_exhaustive(),
        }
    }
}

/// Settings of the SQL listener.
#[derive(Debug, Clone)]
pub struct FrontendConfig {
    pub auth: Auth,
    /// Connections beyond this are refused with SQLSTATE 53300.
    pub max_connections: usize,
    /// Largest protocol message accepted (a query text, a Bind, a CopyData
    /// chunk, or one COPY record); a bigger one closes the connection.
    pub max_message_bytes: usize,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        Self {
            auth: Auth::Trust,
            max_connections: 1000,
            max_message_bytes: 256 << 20,
        }
    }
}
