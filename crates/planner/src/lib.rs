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
//! The modules, in layers: a module uses its own layer and those above it,
//! and no two modules use each other (`scripts/check-module-cycles` fails the
//! tests on a circle). Statement modules take the [`context::Context`];
//! only [`session`] names them all.
//!
//! | layer | module | what |
//! |---|---|---|
//! | leaves | [`api`] | what the frontend sees: outputs, command tags, COPY descriptions |
//! | | [`error`] | every failure's SQLSTATE and PostgreSQL wording (the frontend's too) |
//! | | [`types`], [`names`] | SQL types and their Arrow and storage faces; result column names |
//! | | [`parse`], [`dialect`], [`values_scan`], [`stream_sql`] | SQL text to statements: the dialect, literal VALUES rows, the topic statements' grammar |
//! | definitions | [`catalog`] | schema, table, index and built-in table definitions, their keys, the cached catalog |
//! | | [`resolve`] | names to catalog objects: the one resolver, with PostgreSQL's messages |
//! | | [`index`] | secondary index upkeep on every write, and the online build |
//! | | [`check`] | CHECK constraints: their definitions, compiled expressions, and the 23514 |
//! | | [`foreign_key`] | FOREIGN KEY constraints: declarations, and the parent and child checks and cascades of every write |
//! | DataFusion face | [`table`] | a table as a `TableProvider`, and its key-range scan |
//! | | [`system_views`], [`pg_overlay`] | `sluice_catalog`'s views; `pg_catalog` corrected from the catalog |
//! | | [`provider`] | the `CatalogProvider` over tables, topics and the system schemas |
//! | | [`functions`], [`subplan`] | functions DataFusion lacks; the correlated-subquery operator |
//! | | [`settings`] | a directory: setting defaults, names and value checks; a session's values in their session and `SET LOCAL` layers; `current_setting` and `set_config` |
//! | | [`sequence`] | a directory: sequence definitions, the node's blocks of values and `nextval` and friends, CREATE/DROP SEQUENCE (its `ddl` is a statement) |
//! | | [`cached_plan`], [`transaction`], [`runtime`] | plans kept by prepared statements; transaction blocks; where plans run |
//! | context | [`context`] | `Database` and a session's `Context`: settings, the transaction block, read views, propose, plan and run |
//! | statements | [`dml`], [`literal_insert`], [`copy`], [`ddl`], [`cluster`], [`offsets`] | INSERT/UPDATE/DELETE, literal inserts, COPY, DDL, membership calls, consumer offsets and groups |
//! | topics | [`topic`] | a directory, a file per part: records and the topic table (the provider's, below the context), appends, SUBSCRIBE and cursors, retention, counters |
//! | dispatch | [`session`] | `Session` and `Prepared`: classify, prepare, execute; SQL PREPARE and subscription cursors |
//! | tests only | `testing` | in-process sessions on a one-node group over the memory engine, for unit tests beside the code |
//!
//! [`Mutation`]: sluice_raftstore::Mutation
//! [`Command`]: sluice_raftstore::Command

/// Makes a session's handle (its sequences, its settings) a DataFusion
/// config extension, so that functions find it in their `config_options`.
/// The handle has no options of its own: setting one is refused.
macro_rules! session_handle_extension {
    ($handle:ty, $prefix:literal) => {
        impl datafusion::common::config::ExtensionOptions for $handle {
            fn as_any(&self) -> &dyn std::any::Any {
                self
            }

            fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
                self
            }

            fn cloned(&self) -> Box<dyn datafusion::common::config::ExtensionOptions> {
                Box::new(self.clone())
            }

            fn set(&mut self, key: &str, _value: &str) -> datafusion::common::Result<()> {
                Err(datafusion::common::DataFusionError::Configuration(format!(
                    "{}.{key} cannot be set",
                    $prefix
                )))
            }

            fn entries(&self) -> Vec<datafusion::common::config::ConfigEntry> {
                Vec::new()
            }
        }

        impl datafusion::common::config::ConfigExtension for $handle {
            const PREFIX: &'static str = $prefix;
        }
    };
}

mod api;
mod cached_plan;
mod catalog;
mod check;
mod cluster;
mod context;
mod copy;
mod ddl;
mod dialect;
mod dml;
mod error;
mod foreign_key;
mod functions;
mod index;
mod literal_insert;
mod names;
mod offsets;
mod parse;
mod pg_overlay;
mod provider;
mod resolve;
mod runtime;
mod sequence;
mod session;
mod settings;
mod stream_sql;
mod subplan;
mod system_views;
mod table;
#[cfg(test)]
mod testing;
mod topic;
mod transaction;
mod types;
mod values_scan;

pub use api::{CommandTag, CopyFormat, CopyIn, CopyOptions, Output};
pub use context::Database;
pub use error::{from_datafusion, sqlstate, Error, Result};
pub use parse::Statement;
pub use session::{Prepared, Session};
pub use settings::SERVER_VERSION;
pub use system_views::ConsumerLag;
pub use topic::TopicStats;
pub use transaction::{IsolationLevel, TransactionState, TransactionStats};
pub use types::SqlType;
