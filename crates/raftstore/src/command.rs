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
    Insert {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Writes only if `key` is absent; otherwise skipped (counted as ignored).
    InsertIfAbsent {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Unconditional write.
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Unconditional delete (deleting an absent key is not an error).
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Deletes every key in `[start, end)`.
    DeleteRange {
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        #[serde(with = "serde_bytes")]
        end: Vec<u8>,
    },
    /// Fails the command with [`ApplyError::Conflict`] unless `key` currently
    /// holds exactly `expected` (`None` = absent). Guards read-modify-write
    /// statements against a concurrent change between their read and apply.
    Check {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
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
    /// Appends `entry` to the sequence log under `log` (see [`seqlog`]) at
    /// the log's next sequence number, which only apply assigns, so every
    /// replica numbers it identically. `entry` holds `count` items numbered
    /// from there on; `stamp` (a producer clock, any unit) feeds the log's
    /// sparse stamp index, one entry per `index_interval` of stamp.
    Append {
        #[serde(with = "serde_bytes")]
        log: Vec<u8>,
        #[serde(with = "serde_bytes")]
        entry: Vec<u8>,
        count: u64,
        stamp: u64,
        index_interval: u64,
    },
    /// Takes up to `count` values from the integer sequence whose state
    /// ([`sequence::SequenceState`]) is at `key`, by the rules of `bounds`;
    /// an absent state starts at `bounds.start`. Only apply assigns the
    /// values, so every replica hands out the same block and no two
    /// proposals, from whichever node, get the same value. The block ends
    /// early at the bound; the next one cycles or fails with
    /// [`ApplyError::SequenceExhausted`].
    NextValues {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        bounds: sequence::SequenceBounds,
        count: u64,
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
    /// The first sequence number of each `Append`, in mutation order.
    #[serde(default)]
    pub appended: Vec<u64>,
    /// The block each `NextValues` took, in mutation order.
    #[serde(default)]
    pub values: Vec<sequence::ValueBlock>,
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
    /// The state of the sequence log under `log` does not decode.
    #[error("corrupt sequence log state")]
    CorruptLog { log: Vec<u8> },
    /// A `NextValues` found its sequence at its bound, without `cycle`;
    /// or its state does not decode (`corrupt`).
    #[error("sequence exhausted")]
    SequenceExhausted { key: Vec<u8>, corrupt: bool },
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

/// The layout of a sequence log, the storage under one `Append` log prefix
/// (all integers big-endian):
///
/// | key | value |
/// |---|---|
/// | `<log> 0x00` | [`LogState`]: next sequence number, highest stamp, last indexed stamp |
/// | `<log> 0x01 <last seq u64>` | an entry as appended, holding `count` items (keyed by its last number, so a forward seek from `n` finds the entry holding `n`) |
/// | `<log> 0x02 <stamp u64>` | first seq u64 of the entry that raised the highest stamp to `stamp` |
///
/// Entries are removed from the front only (`DeleteRange`), so the first
/// remaining entry is the log's start. An `Append` of no items writes nothing. The stamp index answers "the
/// first entry whose stamp may be at or after T" without a reverse scan: an
/// index entry is written when the highest stamp passes the last indexed
/// one by `index_interval`, so every entry before the first index entry at
/// or after `T - index_interval` has a stamp below `T`.
pub mod seqlog {
    use serde::{Deserialize, Serialize};

    pub const STATE: u8 = 0x00;
    pub const ENTRIES: u8 = 0x01;
    pub const STAMPS: u8 = 0x02;

    /// What apply keeps about a log.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct LogState {
        pub next: u64,
        pub max_stamp: u64,
        /// Stamp of the last index entry; `None` before the first.
        pub indexed_stamp: Option<u64>,
    }

    impl LogState {
        pub fn encode(&self) -> Vec<u8> {
            let mut out = Vec::with_capacity(25);
            out.extend_from_slice(&self.next.to_be_bytes());
            out.extend_from_slice(&self.max_stamp.to_be_bytes());
            match self.indexed_stamp {
                Some(stamp) => {
                    out.push(1);
                    out.extend_from_slice(&stamp.to_be_bytes());
                }
                None => out.push(0),
            }
            out
        }

        /// `None` for bytes that are not a state (corruption).
        pub fn decode(bytes: &[u8]) -> Option<LogState> {
            let u64_at = |at: usize| {
                bytes
                    .get(at..at + 8)
                    .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
            };
            let indexed_stamp = match bytes.get(16) {
                Some(0) if bytes.len() == 17 => None,
                Some(1) if bytes.len() == 25 => Some(u64_at(17)?),
                _ => return None,
            };
            Some(LogState {
                next: u64_at(0)?,
                max_stamp: u64_at(8)?,
                indexed_stamp,
            })
        }
    }

    fn key(log: &[u8], kind: u8, number: Option<u64>) -> Vec<u8> {
        let mut key = Vec::with_capacity(log.len() + 9);
        key.extend_from_slice(log);
        key.push(kind);
        if let Some(number) = number {
            key.extend_from_slice(&number.to_be_bytes());
        }
        key
    }

    pub fn state_key(log: &[u8]) -> Vec<u8> {
        key(log, STATE, None)
    }

    pub fn entry_key(log: &[u8], seq: u64) -> Vec<u8> {
        key(log, ENTRIES, Some(seq))
    }

    pub fn stamp_key(log: &[u8], stamp: u64) -> Vec<u8> {
        key(log, STAMPS, Some(stamp))
    }

    /// The prefix of every entry key (and, with [`STAMPS`], of the index).
    pub fn section(log: &[u8], kind: u8) -> Vec<u8> {
        key(log, kind, None)
    }

    /// The number at the end of an entry or stamp key.
    pub fn number_of(key: &[u8]) -> Option<u64> {
        let tail = key.len().checked_sub(8).map(|at| &key[at..])?;
        Some(u64::from_be_bytes(tail.try_into().ok()?))
    }
}

/// Integer sequences (SQL's `CREATE SEQUENCE`): the state apply keeps under
/// a sequence's key, the bounds a `NextValues` carries, and the rule that
/// turns one into the next.
pub mod sequence {
    use serde::{Deserialize, Serialize};

    /// PostgreSQL's `last_value` and `is_called`: the next value is
    /// `last + increment` once called, else `last` itself (a fresh or
    /// `setval(…, false)` sequence).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct SequenceState {
        pub last: i64,
        pub called: bool,
    }

    impl SequenceState {
        pub fn encode(&self) -> Vec<u8> {
            let mut out = self.last.to_be_bytes().to_vec();
            out.push(u8::from(self.called));
            out
        }

        /// `None` for bytes that are not a state (corruption).
        pub fn decode(bytes: &[u8]) -> Option<SequenceState> {
            let (last, called) = bytes.split_at_checked(8)?;
            let called = match called {
                [0] => false,
                [1] => true,
                _ => return None,
            };
            Some(SequenceState {
                last: i64::from_be_bytes(last.try_into().ok()?),
                called,
            })
        }
    }

    /// What a sequence's definition says about the values it hands out.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SequenceBounds {
        pub start: i64,
        /// Never 0.
        pub increment: i64,
        pub min: i64,
        pub max: i64,
        pub cycle: bool,
    }

    /// `count` values from `first`, `increment` apart.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ValueBlock {
        pub first: i64,
        pub count: u64,
    }

    impl SequenceBounds {
        /// The block of at most `count` values after `state`, and the state
        /// after it; `None` when the sequence is at its bound and does not
        /// cycle.
        pub fn next_block(
            &self,
            state: Option<SequenceState>,
            count: u64,
        ) -> Option<(ValueBlock, SequenceState)> {
            let ascending = self.increment > 0;
            let within = |v: i64| v >= self.min && v <= self.max;
            let first = match state {
                None => Some(self.start),
                Some(SequenceState {
                    last,
                    called: false,
                }) => Some(last),
                Some(SequenceState { last, called: true }) => last.checked_add(self.increment),
            };
            let first = match first.filter(|&v| within(v)) {
                Some(first) => first,
                None if self.cycle => {
                    if ascending {
                        self.min
                    } else {
                        self.max
                    }
                }
                None => return None,
            };
            // Values left before the bound, counting `first`.
            let room = if ascending {
                (self.max as i128 - first as i128) / self.increment as i128 + 1
            } else {
                (first as i128 - self.min as i128) / -(self.increment as i128) + 1
            };
            let taken = (count.max(1) as i128).min(room) as u64;
            let last = (first as i128 + (taken as i128 - 1) * self.increment as i128) as i64;
            Some((
                ValueBlock {
                    first,
                    count: taken,
                },
                SequenceState { last, called: true },
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Mutation` as it was encoded before its byte strings were marked as
    /// such: logs and snapshots written then must still read.
    #[derive(Serialize, Deserialize)]
    enum PlainMutation {
        Insert {
            key: Vec<u8>,
            value: Vec<u8>,
        },
        InsertIfAbsent {
            key: Vec<u8>,
            value: Vec<u8>,
        },
        Put {
            key: Vec<u8>,
            value: Vec<u8>,
        },
        Delete {
            key: Vec<u8>,
        },
        DeleteRange {
            start: Vec<u8>,
            end: Vec<u8>,
        },
        Check {
            key: Vec<u8>,
            expected: Option<Vec<u8>>,
        },
        CheckRange {
            start: Bound<Vec<u8>>,
            end: Bound<Vec<u8>>,
            digest: [u8; 32],
        },
        Append {
            log: Vec<u8>,
            entry: Vec<u8>,
            count: u64,
            stamp: u64,
            index_interval: u64,
        },
    }

    #[test]
    fn byte_strings_keep_the_encoding_of_a_byte_sequence() {
        let long: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        let pairs = vec![
            (
                Mutation::Insert {
                    key: b"k".to_vec(),
                    value: long.clone(),
                },
                PlainMutation::Insert {
                    key: b"k".to_vec(),
                    value: long.clone(),
                },
            ),
            (
                Mutation::InsertIfAbsent {
                    key: vec![],
                    value: vec![0],
                },
                PlainMutation::InsertIfAbsent {
                    key: vec![],
                    value: vec![0],
                },
            ),
            (
                Mutation::Put {
                    key: long.clone(),
                    value: b"v".to_vec(),
                },
                PlainMutation::Put {
                    key: long.clone(),
                    value: b"v".to_vec(),
                },
            ),
            (
                Mutation::Delete { key: vec![1, 2] },
                PlainMutation::Delete { key: vec![1, 2] },
            ),
            (
                Mutation::DeleteRange {
                    start: vec![1],
                    end: vec![2],
                },
                PlainMutation::DeleteRange {
                    start: vec![1],
                    end: vec![2],
                },
            ),
            (
                Mutation::Check {
                    key: vec![3],
                    expected: Some(long.clone()),
                },
                PlainMutation::Check {
                    key: vec![3],
                    expected: Some(long.clone()),
                },
            ),
            (
                Mutation::Check {
                    key: vec![3],
                    expected: None,
                },
                PlainMutation::Check {
                    key: vec![3],
                    expected: None,
                },
            ),
            (
                Mutation::CheckRange {
                    start: Bound::Included(vec![1]),
                    end: Bound::Unbounded,
                    digest: [7; 32],
                },
                PlainMutation::CheckRange {
                    start: Bound::Included(vec![1]),
                    end: Bound::Unbounded,
                    digest: [7; 32],
                },
            ),
            (
                Mutation::Append {
                    log: b"topic".to_vec(),
                    entry: long.clone(),
                    count: 3,
                    stamp: 1 << 40,
                    index_interval: 1000,
                },
                PlainMutation::Append {
                    log: b"topic".to_vec(),
                    entry: long.clone(),
                    count: 3,
                    stamp: 1 << 40,
                    index_interval: 1000,
                },
            ),
        ];
        for (now, before) in pairs {
            let encoded = postcard::to_allocvec(&now).unwrap();
            assert_eq!(encoded, postcard::to_allocvec(&before).unwrap(), "{now:?}");
            assert_eq!(postcard::from_bytes::<Mutation>(&encoded).unwrap(), now);
        }
    }

    #[test]
    fn sequence_blocks_stop_at_the_bound_then_cycle_or_end() {
        use sequence::{SequenceBounds, SequenceState, ValueBlock};
        let up = SequenceBounds {
            start: 5,
            increment: 10,
            min: 1,
            max: 40,
            cycle: false,
        };
        let (block, state) = up.next_block(None, 32).unwrap();
        assert_eq!(block, ValueBlock { first: 5, count: 4 });
        assert_eq!(
            state,
            SequenceState {
                last: 35,
                called: true
            }
        );
        assert_eq!(up.next_block(Some(state), 1), None);
        let cycling = SequenceBounds { cycle: true, ..up };
        let (block, _) = cycling.next_block(Some(state), 2).unwrap();
        assert_eq!(block, ValueBlock { first: 1, count: 2 });
        // setval(…, false): the stored value itself comes next.
        let fresh = SequenceState {
            last: 20,
            called: false,
        };
        assert_eq!(up.next_block(Some(fresh), 1).unwrap().0.first, 20);
        let down = SequenceBounds {
            start: -1,
            increment: -1,
            min: i64::MIN,
            max: -1,
            cycle: false,
        };
        let near_end = SequenceState {
            last: i64::MIN + 1,
            called: true,
        };
        let (block, state) = down.next_block(Some(near_end), 5).unwrap();
        assert_eq!(
            block,
            ValueBlock {
                first: i64::MIN,
                count: 1
            }
        );
        assert_eq!(down.next_block(Some(state), 1), None);
        assert_eq!(SequenceState::decode(&state.encode()), Some(state));
        assert_eq!(SequenceState::decode(&[0; 8]), None);
    }
}
