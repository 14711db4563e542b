//! The replicated command: what the SQL layer asks every replica to apply.
//!
//! A command is applied atomically by the state machine in one engine write
//! batch together with the applied log index. Apply is deterministic: its
//! outcome depends only on the command and the state before it, never on
//! clocks, randomness or anything outside the command. Checks that can fail
//! (duplicate key, changed row) fail the whole command on every replica alike.

use std::ops::Bound;

use serde::{Deserialize, Serialize};

/// One change to the `Data` keyspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mutation {
    /// Fails the command with [`ApplyError::DuplicateKey`] if `key` exists.
    Insert { key: Vec<u8>, value: Vec<u8> },
    /// Writes only if `key` is absent; otherwise skipped (counted as ignored).
    InsertIfAbsent { key: Vec<u8>, value: Vec<u8> },
    /// Unconditional write.
    Put { key: Vec<u8>, value: Vec<u8> },
    /// Unconditional delete (deleting an absent key is not an error).
    Delete { key: Vec<u8> },
    /// Deletes every key in `[start, end)`.
    DeleteRange { start: Vec<u8>, end: Vec<u8> },
    /// Fails the command with [`ApplyError::Conflict`] unless `key` currently
    /// holds exactly `expected` (`None` = absent). Guards read-modify-write
    /// statements against a concurrent change between their read and apply.
    Check {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
    },
    /// Fails the command with [`ApplyError::ReadConflict`] unless the pairs
    /// now in the range have exactly this [`crate::RangeDigest`]: what a
    /// serializable transaction read is still what is there at its commit.
    CheckRange {
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        digest: [u8; 32],
    },
}

/// A batch of mutations applied all together or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub mutations: Vec<Mutation>,
}

/// What applying a command did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOutcome {
    /// The log index at which the command was applied.
    pub applied_index: u64,
    /// Rows written by `Insert`/`InsertIfAbsent`.
    pub inserted: u64,
    /// `InsertIfAbsent` mutations skipped because the key existed.
    pub ignored: u64,
}

/// Why a command was rejected at apply. The same on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error("duplicate key")]
    DuplicateKey { key: Vec<u8> },
    #[error("concurrent update conflict")]
    Conflict { key: Vec<u8> },
    /// A `CheckRange` failed; `key` is the range's lower bound (empty when
    /// unbounded).
    #[error("read/write conflict")]
    ReadConflict { key: Vec<u8> },
}

/// The state machine's response to one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse {
    pub result: Result<ApplyOutcome, ApplyError>,
}

/// Commands proposed concurrently that share one Raft log entry.
///
/// openraft 0.9 appends and fsyncs each client write on its own, so the node
/// groups concurrent proposals itself: one entry, one log write, one fsync
/// for all of them (group commit). Each command still applies atomically and
/// independently, in order, exactly as if it were its own entry: a rejected
/// command does not affect the others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandBatch {
    pub commands: Vec<Command>,
}
