//! The SQL layer: turns statements into DataFusion plans over Sluice tables
//! and into replicated commands.
//!
//! Main flow, for one statement of a [`Session`]:
//!
//! 1. [`Session::parse`] splits the text into statements with sqlparser's
//!    PostgreSQL dialect ([`dialect`]; catalog queries go through
//!    datafusion-pg-catalog's parser, which rewrites `::regclass` and friends).
//!    The rows of a multi-row INSERT of literals after its first are scanned,
//!    not tokenized, and become sqlparser's tree only if something other than
//!    the literal INSERT shortcut needs it ([`values_scan`]).
//! 2. [`Session::prepare`] classifies the statement: DDL, DML, COPY, SET/SHOW,
//!    or a query; queries and DML are planned by DataFusion against the
//!    catalog ([`catalog`]), whose tables are [`table::SluiceTable`]s.
//!    An INSERT of plain literals and `$n` parameters skips DataFusion: its
//!    rows are typed like COPY's text, once, and parameters are cast into
//!    them per execution ([`literal_insert`]).
//!    The plan is kept in the [`Prepared`] statement so that executing it
//!    again pays no parsing or planning (the extended protocol's point).
//! 3. [`Session::execute`] binds parameters and runs it:
//!    - a query takes a linearizable snapshot from the Raft node and streams
//!      record batches from key-range scans of that snapshot;
//!    - DML runs its input plan (which evaluates the whole `WHERE`, subqueries
//!      included), turns the resulting rows into keyed [`Mutation`]s and
//!      proposes them as one [`Command`] through Raft ([`dml`]);
//!    - DDL writes catalog entries through the same path ([`ddl`]);
//!    - inside `BEGIN … COMMIT` (or the implicit block of a multi-statement
//!      query) reads see the block's snapshot with its writes laid over,
//!      DML mutations go to the block's write set, and COMMIT proposes them
//!      in one command that every replica validates: the rows written and,
//!      under SERIALIZABLE, the key ranges read ([`transaction`]).
//! 4. The result is an [`Output`] that the frontend encodes for the wire.
//!
//! [`Mutation`]: sluice_raftstore::Mutation
//! [`Command`]: sluice_raftstore::Command

mod api;

pub use api::{sqlstate, CommandTag, CopyFormat, CopyIn, CopyOptions, Error, Output, Result};
mod apply;
mod cached_plan;
mod catalog;
mod cluster;
mod copy;
mod ddl;
mod dialect;
mod dml;
mod functions;
mod index;
mod literal_insert;
mod names;
mod offsets;
mod pg_overlay;
mod session;
mod stream_sql;
mod system_views;
mod table;
mod topic;
mod transaction;
mod types;
mod values_scan;

pub use offsets::ConsumerLag;
pub use session::{Database, Prepared, Session, Statement, SERVER_VERSION};
pub use topic::TopicStats;
pub use transaction::{IsolationLevel, TransactionState, TransactionStats};
pub use types::SqlType;
