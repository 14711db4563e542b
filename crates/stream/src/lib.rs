//! Topics: append-only logs of records that live in the replicated store
//! and are read as SQL tables and through subscription cursors.
//!
//! Main flow:
//!
//! 1. A producer's rows become records (the planner encodes each as a row)
//!    and go, per partition, into one [`batch::BatchBuilder`]: the records,
//!    a producer timestamp, a CRC32C and optional LZ4/Zstd compression.
//! 2. [`topic::append`] wraps a batch in a `Mutation::Append` on the
//!    partition's sequence log. The Raft state machine assigns the batch its
//!    offsets at apply (dense per partition, identical on every replica),
//!    maintains the sparse time index and wakes the partition's watchers.
//! 3. Readers find records by offset ([`topic::read`]) or by time
//!    ([`topic::offset_at_time`]) in any snapshot; a [`cursor::Cursor`]
//!    keeps a position per partition and waits for appends without polling.
//! 4. Retention ([`topic::retention_deletes`]) turns a topic's limits into
//!    range deletes of whole batches from the front of each partition.
//!
//! The key layout is in [`topic`], the batch format in [`batch`].

pub mod batch;
pub mod cursor;
mod error;
pub mod topic;

pub use batch::{BatchBuilder, Compression};
pub use cursor::Cursor;
pub use error::{Error, Result};
pub use topic::{PartitionBounds, Record, TopicOptions};
