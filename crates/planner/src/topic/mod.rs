//! Topics in SQL: appends from INSERT and COPY, the topic as a table for
//! SELECT, and subscriptions (`SUBSCRIBE`, `DECLARE … CURSOR FOR SUBSCRIBE`,
//! `FETCH`, `CLOSE`, `COMMIT OFFSETS`).
//!
//! A topic's catalog entry is a [`TableDef`] with topic options; its last
//! three columns are the system columns `_partition`, `_offset` and
//! `_timestamp`. Producers write the other columns: each row becomes a
//! record (the user columns in `sluice_engine::row` format), rows go to
//! partitions by the hash of the partition key or round-robin, and each
//! partition's records of a statement become one batch and one
//! `Mutation::Append` ([`sluice_stream::topic::append`]). Offsets are
//! assigned at apply, so `RETURNING _offset` reads them from the outcome.
//!
//! Subscriptions read the local replica's snapshot (records are committed
//! data, and waiting for a read index per FETCH would only add a round
//! trip); rows come out as `_partition, _offset, _timestamp, <columns>`.
//!
//! | module | what it holds |
//! |---|---|
//! | [`records`] | a topic's record schema; stored records decoded into Arrow batches |
//! | [`append`] | rows into per-partition `Mutation::Append`s, proposed through the context |
//! | [`table`] | the topic as a `TableProvider` for SELECT, with its scan |
//! | [`subscribe`] | SUBSCRIBE, cursors, FETCH, CLOSE, COMMIT OFFSETS; topic DDL's dispatch |
//! | [`ddl`] | CREATE, ALTER and DROP TOPIC, through table DDL's catalog change |
//! | [`retention`] | the scheduler that drops records past the retention limits |
//! | [`stats`] | counters for metrics |
//!
//! Only `subscribe` takes the session's cursors; `table` and `records` take
//! no context at all, so the catalog provider can build topic tables
//! without reaching the statement layer.

mod append;
mod ddl;
mod records;
mod retention;
mod stats;
mod subscribe;
mod table;

pub(crate) use append::{fill_system_columns, now_micros, propose_appends};
pub(crate) use retention::spawn_retention;
pub use stats::TopicStats;
pub(crate) use stats::{append_size, TopicCounters};
pub(crate) use subscribe::{execute, prepare, Cursors, StreamPlan};
pub use table::TopicTable;
