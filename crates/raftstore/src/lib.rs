//! Replication: an openraft (0.9, storage v2) Raft group whose state machine
//! applies [`Command`]s to the engine. A node is started alone
//! ([`RaftNode::start`], no transport: tests and embedded use) or as a
//! member of a cluster ([`RaftNode::start_cluster`]), which serves the peer
//! transport (module `network`: openraft's RPCs plus forwarding, read
//! index, join and status over one framed TCP protocol).
//!
//! Main flow of a write:
//!
//! 1. [`RaftNode::propose`] checks the command's serialized size against
//!    `max_command_bytes` and queues it. The batcher (`node::run_batcher`)
//!    gathers the commands queued meanwhile into one [`CommandBatch`]. On
//!    the leader it calls openraft's `Raft::client_write` with it; on a
//!    follower it forwards the batch to the leader (`PeerRequest::ClientWrite`),
//!    which does the same, and relays the responses.
//! 2. openraft appends the entry: `LogStore::append` writes it to
//!    `Keyspace::RaftLog` in one engine batch with `Durability::Sync` (the
//!    fsync) and only then reports the flush.
//! 3. With the entry durable on a majority of voters, it is committed:
//!    `LogStore::save_committed` records the committed id.
//! 4. `StateMachine::apply` applies every command of every entry handed to
//!    it, deterministically, into one engine `WriteBatch` that also records
//!    the applied log id and membership, and writes it (`Buffered`). Then it
//!    publishes the applied index on [`RaftNode::applied_watch`].
//! 5. Each command's [`CommandResponse`] travels back through openraft to the
//!    batcher, which answers each proposer: an [`ApplyOutcome`] or
//!    [`Error::Apply`].
//!
//! Reads: [`RaftNode::read_snapshot`] on the leader calls openraft's
//! `ensure_linearizable` (leadership confirmed by a quorum, and the state
//! machine applied up to the read index); on a follower it asks the leader
//! for that read index and waits until its own state machine has applied it.
//! Then it takes an engine snapshot. A leader that is the only voter
//! skips the confirmation (`Shared::leads_alone`): every acknowledged write
//! is already applied there, and the log store's durable vote and appended
//! membership tell it, before any peer could lead, that this stopped being so.
//! [`RaftNode::local_snapshot`] skips the confirmation (stale reads).
//!
//! # Durability: the ordered writes and fsyncs
//!
//! 1. `save_vote`: the vote, `Sync`, before openraft acts on it.
//! 2. `append`: entries plus the last log id, one `Sync` write (fsync), then
//!    the flush callback. Nothing is acknowledged before this fsync.
//! 3. `save_committed`: the committed id, `Buffered` (persisted by the next
//!    fsync; if lost, a restarted node re-learns it by committing again).
//! 4. `apply`: data, applied id and membership in one `Buffered` batch. After
//!    a crash the data is exactly as of the persisted applied id (same
//!    batch), and openraft re-applies the durable log entries after it.
//! 5. Snapshots: the file is written to `*.tmp`, fsynced, renamed to `*.snap`
//!    and the directory fsynced, before openraft is told it exists (and only
//!    then purges the log behind it). `purge` and `truncate` are `Sync`.
//! 6. Installing a snapshot: the first batch deletes `Data` and records an
//!    "installing" marker; bounded batches of pairs follow; the last batch
//!    records the applied id, clears the marker and is `Sync`. A node that
//!    crashes in between finishes the install from the file when it opens.
//!
//! On-disk formats: module `log_store` (keys) and module `snapshot` (file
//! format) describe them byte by byte.

// openraft's storage traits return `StorageError` (about 224 bytes) by value;
// our helpers return the same type so `?` passes it through unchanged.
#![allow(clippy::result_large_err)]

mod command;
mod error;
mod log_store;
mod network;
mod node;
mod snapshot;
mod state_machine;
mod types;
mod watch;
mod write_set;

pub use command::{
    seqlog, sequence, ApplyError, ApplyOutcome, Command, CommandBatch, CommandResponse, Mutation,
};
pub use error::{Error, Result};
pub use network::FaultFilter;
pub use node::{
    Bootstrap, FollowerProgress, Member, MemberStatus, NodeStatus, PeerSetup, RaftConfig, RaftNode,
    Role,
};
pub use types::TypeConfig;
pub use watch::LogWatchers;
pub use write_set::{plan_mutations, Overlaid, RangeDigest, ReadRecorder, WriteSet};
