//! Sequences: `CREATE SEQUENCE`, `serial` and identity columns, and
//! `nextval`, `currval`, `lastval`, `setval` and `pg_get_serial_sequence`.
//!
//! A sequence's definition is a catalog entry ([`crate::catalog::SequenceDef`]);
//! its state (PostgreSQL's `last_value` and `is_called`) is a key of its
//! own that only `NextValues` and `setval` move, outside any transaction.
//! Each node takes values in blocks and hands them out locally
//! ([`values`]), so a value costs no Raft round and values stay unique
//! across nodes and failovers.
//!
//! | module | what it holds |
//! |---|---|
//! | [`def`] | definitions from CREATE SEQUENCE's options, and the sequence a `serial` or identity column owns |
//! | [`values`] | the node's blocks of values, a session's `currval`/`lastval`, the SQL functions |
//! | [`ddl`] | CREATE SEQUENCE and DROP SEQUENCE, through table DDL's catalog change |

mod ddl;
mod def;
mod values;

pub(crate) use ddl::{execute, is_sequence_ddl};
pub use def::{for_column, new_nonce, nextval_default, serial_type};
pub use values::{register, SequenceAllocator, SequenceSession};
