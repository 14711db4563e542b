//! openraft type configuration and the helpers the log store and the state
//! machine share: `Meta` keys, value encoding, and storage-error plumbing.

use std::error::Error as StdError;
use std::sync::{Arc, Mutex};

use openraft::{AnyError, BasicNode, ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sluice_engine::Error as EngineError;

use crate::command::{CommandBatch, CommandResponse};

openraft::declare_raft_types!(
    /// The openraft types of a Sluice Raft group.
    pub TypeConfig:
        D = CommandBatch,
        R = Vec<CommandResponse>,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub(crate) type NodeId = u64;
pub(crate) type LogId = openraft::LogId<NodeId>;
pub(crate) type Vote = openraft::Vote<NodeId>;
pub(crate) type Entry = openraft::Entry<TypeConfig>;
pub(crate) type StoredMembership = openraft::StoredMembership<NodeId, BasicNode>;
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;
pub(crate) type RaftStorageError = StorageError<NodeId>;

/// Keys of the `Meta` keyspace. Each value is postcard-encoded.
pub(crate) mod meta_key {
    /// `Vote`, written with `Sync` before `save_vote` returns.
    pub const VOTE: &[u8] = b"raft/vote";
    /// `Option<LogId>` of the last committed entry.
    pub const COMMITTED: &[u8] = b"raft/committed";
    /// `Option<LogId>` of the last purged entry.
    pub const LAST_PURGED: &[u8] = b"raft/last_purged";
    /// `Option<LogId>` of the last entry in the log, written in the same batch
    /// as the entries (the engine has no reverse scan to find it).
    pub const LAST_LOG: &[u8] = b"raft/last_log";
    /// `Option<LogId>` applied to `Data`, written in the same batch as the data.
    pub const APPLIED: &[u8] = b"sm/applied";
    /// `StoredMembership` as of `APPLIED`.
    pub const MEMBERSHIP: &[u8] = b"sm/membership";
    /// File name of a snapshot whose install began but has not finished:
    /// `Data` is garbage until the install is resumed from that file.
    pub const INSTALLING: &[u8] = b"sm/installing_snapshot";
}

/// Big-endian so that the engine's byte order is the log's index order.
pub(crate) fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Encodes into a buffer sized by a counting pass first. A log entry holds
/// record batches of megabytes, and a buffer grown by doubling copied them
/// again at every step (about 1% of the server's CPU under batched INSERTs);
/// counting is cheap, as byte strings count by their length.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EngineError> {
    let failed = |e: postcard::Error| EngineError::Encode(format!("postcard: {e}"));
    let size = postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())
        .map_err(failed)?;
    postcard::serialize_with_flavor(value, SizedVec(Vec::with_capacity(size))).map_err(failed)
}

/// postcard's output to a `Vec` of a capacity chosen by the caller.
struct SizedVec(Vec<u8>);

impl postcard::ser_flavors::Flavor for SizedVec {
    type Output = Vec<u8>;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, EngineError> {
    postcard::from_bytes(bytes).map_err(|e| EngineError::Corrupt(format!("decode {what}: {e}")))
}

pub(crate) fn storage_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    error: &(dyn StdError + 'static),
) -> RaftStorageError {
    StorageIOError::new(subject, verb, AnyError::from_dyn(error, None)).into()
}

/// The first storage failure seen by the log store or the state machine.
///
/// openraft stops the node when they return a `StorageError`; the node keeps
/// the engine error here so that callers get `Error::Storage` with the real
/// cause instead of a bare "raft stopped".
#[derive(Clone, Default)]
pub(crate) struct FatalSlot {
    inner: Arc<Mutex<Option<EngineError>>>,
}

impl FatalSlot {
    /// Records `error` (the first one wins) and returns it as openraft's error.
    pub(crate) fn fail(
        &self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
        error: EngineError,
    ) -> RaftStorageError {
        tracing::error!(%error, ?subject, ?verb, "raft storage failure; the node stops");
        let converted = storage_error(subject, verb, &error);
        let mut slot = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_none() {
            *slot = Some(error);
        }
        converted
    }

    pub(crate) fn get(&self) -> Option<EngineError> {
        let slot = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.as_ref().map(clone_engine_error)
    }
}

pub(crate) fn clone_engine_error(error: &EngineError) -> EngineError {
    match error {
        EngineError::Storage(msg) => EngineError::Storage(msg.clone()),
        EngineError::Corrupt(msg) => EngineError::Corrupt(msg.clone()),
        EngineError::Encode(msg) => EngineError::Encode(msg.clone()),
    }
}

/// Held by everything openraft owns that uses the engine (log store, log
/// readers, state machine, snapshot builders). openraft drops some of them
/// in background tasks after `Raft::shutdown` returns; `RaftNode::shutdown`
/// waits until only its own handle is left, so that the engine can be
/// closed and reopened right after.
#[derive(Clone, Default)]
pub(crate) struct StorageUsers(Arc<()>);

impl StorageUsers {
    /// Handles other than this one.
    pub(crate) fn others(&self) -> usize {
        Arc::strong_count(&self.0) - 1
    }
}

/// Runs a blocking engine call (a `Sync` write, snapshot file I/O) off the
/// async workers, so that the Raft core and client tasks keep running
/// meanwhile. A call its caller awaits at once on a hot path is cheaper
/// through [`in_place`].
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, EngineError>
where
    F: FnOnce() -> Result<T, EngineError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) => Err(EngineError::Storage(format!(
            "blocking storage task failed: {join}"
        ))),
    }
}

/// Runs a blocking engine call on the calling thread without stalling the
/// other tasks of its worker: on a multi-thread runtime `block_in_place`
/// first hands them to another thread. For a call its caller waits for
/// anyway (the Raft core waiting for its log's fsync) this saves the two
/// thread wake-ups of a trip through [`blocking`]. Elsewhere (a
/// current-thread runtime, or none) there is nothing to hand over.
pub(crate) fn in_place<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|runtime| runtime.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Mutation;

    #[test]
    fn encodes_as_postcard_does_into_an_exact_buffer() {
        let mutations = vec![
            Mutation::Put {
                key: b"k".to_vec(),
                value: vec![7; 1 << 20],
            },
            Mutation::Delete { key: Vec::new() },
            Mutation::Put {
                key: vec![1; 300],
                value: b"short".to_vec(),
            },
        ];
        let encoded = encode(&mutations).unwrap();
        assert_eq!(encoded, postcard::to_stdvec(&mutations).unwrap());
        assert_eq!(encoded.capacity(), encoded.len());
        let decoded: Vec<Mutation> = decode(&encoded, "mutations").unwrap();
        assert_eq!(encode(&decoded).unwrap(), encoded);
    }

    /// A task woken by a worker waits in that worker's own queue; blocking
    /// the worker in place must not strand it (with one worker, it would
    /// never run and this call would wait forever).
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn blocking_in_place_leaves_the_workers_other_tasks_running() {
        let (ran_tx, ran_rx) = std::sync::mpsc::channel::<()>();
        let seen = tokio::spawn(async move {
            let other = tokio::spawn(async move {
                let _ = ran_tx.send(());
            });
            let seen = in_place(|| ran_rx.recv_timeout(std::time::Duration::from_secs(10)));
            other.await.expect("the other task");
            seen
        })
        .await
        .expect("the blocking task");
        assert!(
            seen.is_ok(),
            "the other task did not run while the worker blocked"
        );
    }
}
