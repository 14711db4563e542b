//! The raftstore's error type and how openraft's errors map onto it.

use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, RaftError};
use openraft::BasicNode;

use crate::command::ApplyError;
use crate::types::{FatalSlot, NodeId};

/// Errors of the raftstore.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command was committed but rejected deterministically at apply
    /// (duplicate key, conflict): nothing of it was written. Report to the client.
    #[error("command rejected: {0}")]
    Apply(ApplyError),
    /// The serialized command exceeds `RaftConfig::max_command_bytes`; it was
    /// not proposed.
    #[error("command of {bytes} bytes exceeds the limit of {limit} bytes")]
    CommandTooLarge { bytes: usize, limit: usize },
    /// This node is not the leader and could not route to it. Retryable.
    #[error("not the leader (leader: {leader_id:?})")]
    NotLeader { leader_id: Option<u64> },
    /// No leader or quorum within the wait. Retryable.
    #[error("raft unavailable: {0}")]
    Unavailable(String),
    /// The write was sent towards the leader but its outcome is unknown (the
    /// leader stopped answering, or lost its quorum before committing). It
    /// may or may not be applied; the client must check before retrying.
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
    /// A membership change was refused (unknown node, reused id, last voter).
    #[error("membership change refused: {0}")]
    Membership(String),
    /// The engine failed under the log store or state machine. Fatal: the
    /// Raft group has stopped and the node must not continue.
    #[error("raft storage failure: {0}")]
    Storage(sluice_engine::Error),
    /// The node is shutting down (or has shut down).
    #[error("raft node is shutting down")]
    ShuttingDown,
    /// A bug or an unexpected state.
    #[error("raft internal error: {0}")]
    Internal(String),
}

impl Error {
    /// True when the same request may succeed if tried again (after a leader
    /// change or once a quorum is back).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::NotLeader { .. } | Error::Unavailable(_))
    }

    /// True when the node can no longer serve writes and should stop.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Storage(_))
    }
}

impl Error {
    /// An equal error, for answering every proposer of a failed batch.
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Apply(e) => Error::Apply(e.clone()),
            Error::CommandTooLarge { bytes, limit } => Error::CommandTooLarge {
                bytes: *bytes,
                limit: *limit,
            },
            Error::NotLeader { leader_id } => Error::NotLeader {
                leader_id: *leader_id,
            },
            Error::Unavailable(m) => Error::Unavailable(m.clone()),
            Error::Ambiguous(m) => Error::Ambiguous(m.clone()),
            Error::Membership(m) => Error::Membership(m.clone()),
            Error::Storage(e) => Error::Storage(crate::types::clone_engine_error(e)),
            Error::ShuttingDown => Error::ShuttingDown,
            Error::Internal(m) => Error::Internal(m.clone()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Maps openraft's fatal errors, preferring the engine error recorded by the
/// log store or state machine (openraft only keeps a message).
pub(crate) fn from_fatal(fatal: &Fatal<NodeId>, slot: &FatalSlot, shutting_down: bool) -> Error {
    if let Some(engine_error) = slot.get() {
        return Error::Storage(engine_error);
    }
    match fatal {
        Fatal::StorageError(e) => Error::Storage(sluice_engine::Error::Storage(e.to_string())),
        Fatal::Panicked => Error::Internal("raft core panicked".into()),
        Fatal::Stopped if shutting_down => Error::ShuttingDown,
        Fatal::Stopped => Error::Unavailable("raft core stopped".into()),
    }
}

pub(crate) fn from_client_write(
    error: &RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
    slot: &FatalSlot,
    shutting_down: bool,
) -> Error {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader {
            leader_id: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Error::Internal(format!("membership change error on a client write: {e}"))
        }
        RaftError::Fatal(fatal) => from_fatal(fatal, slot, shutting_down),
    }
}

pub(crate) fn from_check_leader(
    error: &RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>,
    slot: &FatalSlot,
    shutting_down: bool,
) -> Error {
    match error {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => Error::NotLeader {
            leader_id: f.leader_id,
        },
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)) => {
            Error::Unavailable(e.to_string())
        }
        RaftError::Fatal(fatal) => from_fatal(fatal, slot, shutting_down),
    }
}
