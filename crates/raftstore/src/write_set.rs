//! Writes not yet in the engine, and the rules for making them.
//!
//! Two places hold writes that readers must already see: the state machine's
//! apply batch (earlier commands of the batch, not yet written) and an open
//! SQL transaction's buffer (its statements' writes, not yet committed). Both
//! are a [`WriteSet`] read through over a base view, and both turn
//! [`Mutation`]s into writes with [`plan_mutations`], so a statement inside a
//! transaction meets exactly the rules (duplicate keys, checks, upserts) that
//! every replica applies at commit.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use sluice_engine::{Error as EngineError, KeyRange, Keyspace, KvPair, Snapshot, WriteOp};

use crate::command::{ApplyError, ApplyOutcome, Mutation};

/// Pending writes to `Keyspace::Data`, by key.
#[derive(Debug, Default, Clone)]
pub struct WriteSet {
    /// `None` = deleted.
    values: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Ranges deleted by `DeleteRange`; `values` holds no key inside a range
    /// unless it was written after the range was deleted.
    deleted: Vec<(Vec<u8>, Vec<u8>)>,
    /// Key and value bytes of every write applied (a bound on the memory a
    /// transaction holds, counted as written, not as retained).
    bytes: usize,
}

impl WriteSet {
    /// `Some(state)` if this set decides the key's value.
    pub fn lookup(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        if let Some(value) = self.values.get(key) {
            return Some(value.as_deref());
        }
        if self.in_deleted_range(key) {
            return Some(None);
        }
        None
    }

    fn in_deleted_range(&self, key: &[u8]) -> bool {
        self.deleted
            .iter()
            .any(|(start, end)| key >= start.as_slice() && key < end.as_slice())
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.deleted.is_empty()
    }

    /// Bytes of keys and values written so far.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records one write (any keyspace's op is taken as a `Data` write).
    pub fn apply(&mut self, op: &WriteOp) {
        match op {
            WriteOp::Put { key, value, .. } => {
                self.bytes += key.len() + value.len();
                self.values.insert(key.clone(), Some(value.clone()));
            }
            WriteOp::Delete { key, .. } => {
                self.bytes += key.len();
                self.values.insert(key.clone(), None);
            }
            WriteOp::DeleteRange { start, end, .. } => {
                self.bytes += start.len() + end.len();
                if start < end {
                    let doomed: Vec<Vec<u8>> = self
                        .values
                        .range::<[u8], _>((
                            Bound::Included(start.as_slice()),
                            Bound::Excluded(end.as_slice()),
                        ))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in doomed {
                        self.values.remove(&key);
                    }
                    self.deleted.push((start.clone(), end.clone()));
                }
            }
        }
    }

    /// The mutations that make a base view equal to this set over it:
    /// the deleted ranges first, then every key's final state.
    pub fn to_mutations(&self) -> Vec<Mutation> {
        let mut out = Vec::with_capacity(self.deleted.len() + self.values.len());
        for (start, end) in &self.deleted {
            out.push(Mutation::DeleteRange {
                start: start.clone(),
                end: end.clone(),
            });
        }
        for (key, value) in &self.values {
            out.push(match value {
                Some(value) => Mutation::Put {
                    key: key.clone(),
                    value: value.clone(),
                },
                None => Mutation::Delete { key: key.clone() },
            });
        }
        out
    }

    /// Keys with an explicit write, in order, within `[start, end]`.
    fn written_within<'a>(
        &'a self,
        start: &'a Bound<Vec<u8>>,
        end: &'a Bound<Vec<u8>>,
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> + 'a {
        let as_slice = |b: &'a Bound<Vec<u8>>| match b {
            Bound::Included(k) => Bound::Included(k.as_slice()),
            Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.values
            .range::<[u8], _>((as_slice(start), as_slice(end)))
    }
}

/// Turns `mutations` into writes, reading each key's value before them with
/// `read`; the rules every replica applies. The mutations are all-or-nothing:
/// on a rejection nothing of them counts. `applied_index` of the outcome is
/// left 0 for the caller.
pub fn plan_mutations<E>(
    mutations: Vec<Mutation>,
    mut read: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>, E>,
) -> Result<Result<(Vec<WriteOp>, ApplyOutcome), ApplyError>, E> {
    let mut local = WriteSet::default();
    let mut ops = Vec::with_capacity(mutations.len());
    let mut outcome = ApplyOutcome::default();
    let mut current = |local: &WriteSet, key: &[u8]| match local.lookup(key) {
        Some(state) => Ok(state.map(<[u8]>::to_vec)),
        None => read(key),
    };
    for mutation in mutations {
        let op = match mutation {
            Mutation::Insert { key, value } => {
                if current(&local, &key)?.is_some() {
                    return Ok(Err(ApplyError::DuplicateKey { key }));
                }
                outcome.inserted += 1;
                WriteOp::Put {
                    keyspace: Keyspace::Data,
                    key,
                    value,
                }
            }
            Mutation::InsertIfAbsent { key, value } => {
                if current(&local, &key)?.is_some() {
                    outcome.ignored += 1;
                    continue;
                }
                outcome.inserted += 1;
                WriteOp::Put {
                    keyspace: Keyspace::Data,
                    key,
                    value,
                }
            }
            Mutation::Put { key, value } => WriteOp::Put {
                keyspace: Keyspace::Data,
                key,
                value,
            },
            Mutation::Delete { key } => WriteOp::Delete {
                keyspace: Keyspace::Data,
                key,
            },
            Mutation::DeleteRange { start, end } => WriteOp::DeleteRange {
                keyspace: Keyspace::Data,
                start,
                end,
            },
            Mutation::Check { key, expected } => {
                if current(&local, &key)? != expected {
                    return Ok(Err(ApplyError::Conflict { key }));
                }
                continue;
            }
        };
        local.apply(&op);
        ops.push(op);
    }
    Ok(Ok((ops, outcome)))
}

/// A snapshot with a [`WriteSet`] laid over its `Data` keyspace: what an open
/// transaction reads.
pub struct Overlaid {
    base: Arc<dyn Snapshot>,
    writes: Arc<WriteSet>,
}

impl Overlaid {
    pub fn new(base: Arc<dyn Snapshot>, writes: Arc<WriteSet>) -> Self {
        Self { base, writes }
    }
}

impl Snapshot for Overlaid {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        if keyspace == Keyspace::Data {
            if let Some(state) = self.writes.lookup(key) {
                return Ok(state.map(<[u8]>::to_vec));
            }
        }
        self.base.get(keyspace, key)
    }

    fn scan(
        &self,
        keyspace: Keyspace,
        range: &KeyRange,
        limit: usize,
    ) -> Result<Vec<KvPair>, EngineError> {
        if keyspace != Keyspace::Data || self.writes.is_empty() || limit == 0 {
            return self.base.scan(keyspace, range, limit);
        }
        let mut out: Vec<KvPair> = Vec::new();
        let mut cursor = range.clone();
        loop {
            let page = self.base.scan(keyspace, &cursor, limit)?;
            let exhausted = page.len() < limit;
            // This round decides every key up to the last base key read (or
            // the end of the range once the base has no more).
            let upto = match (exhausted, page.last()) {
                (false, Some((last, _))) => Bound::Included(last.clone()),
                _ => cursor.end.clone(),
            };
            let mut written = self.writes.written_within(&cursor.start, &upto).peekable();
            let mut base = page.into_iter().peekable();
            loop {
                let take_written = match (written.peek(), base.peek()) {
                    (None, None) => break,
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (Some((w, _)), Some((b, _))) => w.as_slice() <= b.as_slice(),
                };
                if take_written {
                    let (key, value) = written.next().expect("peeked");
                    if base.peek().is_some_and(|(b, _)| b == key) {
                        base.next();
                    }
                    if let Some(value) = value {
                        out.push((key.clone(), value.clone()));
                    }
                } else {
                    let (key, value) = base.next().expect("peeked");
                    if !self.writes.in_deleted_range(&key) {
                        out.push((key, value));
                    }
                }
                if out.len() == limit {
                    return Ok(out);
                }
            }
            drop(written);
            match &upto {
                Bound::Included(last) if !exhausted => cursor = cursor.resume_after(last),
                _ => return Ok(out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_engine::{Durability, Engine, MemoryEngine, WriteBatch};

    fn put(key: &str, value: &str) -> WriteOp {
        WriteOp::Put {
            keyspace: Keyspace::Data,
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn base(keys: &[&str]) -> Arc<dyn Snapshot> {
        let engine = MemoryEngine::new();
        let batch = WriteBatch {
            ops: keys.iter().map(|k| put(k, "base")).collect(),
        };
        engine.write(batch, Durability::Buffered).unwrap();
        engine.snapshot()
    }

    fn keys(pairs: &[KvPair]) -> Vec<String> {
        pairs
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                )
            })
            .collect()
    }

    #[test]
    fn scans_merge_writes_deletes_and_ranges_in_every_page_size() {
        let snapshot = base(&["a", "b", "c", "d", "e", "f", "g"]);
        let mut writes = WriteSet::default();
        writes.apply(&put("b", "new"));
        writes.apply(&put("bb", "ins"));
        writes.apply(&WriteOp::Delete {
            keyspace: Keyspace::Data,
            key: b"c".to_vec(),
        });
        writes.apply(&WriteOp::DeleteRange {
            keyspace: Keyspace::Data,
            start: b"e".to_vec(),
            end: b"g".to_vec(),
        });
        writes.apply(&put("f", "again"));
        writes.apply(&put("z", "tail"));
        let view = Overlaid::new(snapshot, Arc::new(writes));
        let expected = [
            "a=base", "b=new", "bb=ins", "d=base", "f=again", "g=base", "z=tail",
        ];
        for limit in 1..10 {
            let mut all = Vec::new();
            let mut range = KeyRange::all();
            loop {
                let page = view.scan(Keyspace::Data, &range, limit).unwrap();
                assert!(page.len() <= limit);
                let done = page.len() < limit;
                if let Some((last, _)) = page.last() {
                    range = range.resume_after(last);
                }
                all.extend(page);
                if done {
                    break;
                }
            }
            assert_eq!(keys(&all), expected, "page size {limit}");
        }
        let bounded = KeyRange::half_open(b"b".to_vec(), b"f".to_vec());
        assert_eq!(
            keys(&view.scan(Keyspace::Data, &bounded, 100).unwrap()),
            ["b=new", "bb=ins", "d=base"]
        );
        assert_eq!(view.get(Keyspace::Data, b"e").unwrap(), None);
        assert_eq!(
            view.get(Keyspace::Data, b"f").unwrap(),
            Some(b"again".to_vec())
        );
        assert_eq!(
            view.get(Keyspace::Data, b"a").unwrap(),
            Some(b"base".to_vec())
        );
    }

    #[test]
    fn planned_mutations_are_all_or_nothing() {
        let snapshot = base(&["a"]);
        let read = |k: &[u8]| snapshot.get(Keyspace::Data, k);
        let planned = plan_mutations(
            vec![
                Mutation::Insert {
                    key: b"b".to_vec(),
                    value: b"1".to_vec(),
                },
                Mutation::InsertIfAbsent {
                    key: b"a".to_vec(),
                    value: b"1".to_vec(),
                },
                Mutation::Check {
                    key: b"b".to_vec(),
                    expected: Some(b"1".to_vec()),
                },
            ],
            read,
        )
        .unwrap()
        .unwrap();
        assert_eq!(planned.0.len(), 1);
        assert_eq!((planned.1.inserted, planned.1.ignored), (1, 1));
        let rejected = plan_mutations(
            vec![
                Mutation::Put {
                    key: b"c".to_vec(),
                    value: b"1".to_vec(),
                },
                Mutation::Insert {
                    key: b"a".to_vec(),
                    value: b"1".to_vec(),
                },
            ],
            |k: &[u8]| snapshot.get(Keyspace::Data, k),
        )
        .unwrap();
        assert_eq!(
            rejected.unwrap_err(),
            ApplyError::DuplicateKey { key: b"a".to_vec() }
        );
    }
}
