//! The stream crate's one error type; the planner maps it to SQLSTATEs.

/// Why a topic operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A stored batch failed its checksum or does not decode. Never
    /// answered with data: the reader stops at the batch.
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    /// A topic option has a bad value (`partitions = 0`, `retention = 'x'`).
    #[error("{0}")]
    InvalidOption(String),
    /// A start position below the partition's retained start.
    #[error("offset {requested} of partition {partition} is no longer retained (the partition starts at {start})")]
    BelowRetention {
        partition: u32,
        requested: u64,
        start: u64,
    },
    /// A record batch is larger than one batch may be.
    #[error("record batch of {0} bytes is too large")]
    TooLarge(usize),
    /// The node is shutting down: no more appends will wake a cursor.
    #[error("the node is shutting down")]
    Closed,
    #[error(transparent)]
    Storage(#[from] sluice_engine::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
