//! Writes not yet in the engine, and the rules for making them.
//!
//! Two places hold writes that readers must already see: the state machine's
//! apply batch (earlier commands of the batch, not yet written) and an open
//! SQL transaction's buffer (its statements' writes, not yet committed). Both
//! are a [`WriteSet`] read through over a base view, and both turn
//! [`Mutation`]s into writes with [`plan_mutations`], so a statement inside a
//! transaction meets exactly the rules (duplicate keys, checks, upserts) that
//! every replica applies at commit.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use sluice_engine::{Error as EngineError, KeyRange, Keyspace, KvPair, Snapshot, WriteOp};

use crate::command::seqlog::{self, LogState};
use crate::command::sequence::SequenceState;
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

/// Pairs read per page when a `CheckRange` re-reads its range.
const CHECK_RANGE_PAGE: usize = 1024;

/// Turns `mutations` into writes, reading each key's value before them with
/// `read` and ranges with `scan`; the rules every replica applies. The
/// mutations are all-or-nothing: on a rejection nothing of them counts.
/// `applied_index` of the outcome is left 0 for the caller.
pub fn plan_mutations<E>(
    mutations: Vec<Mutation>,
    mut read: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>, E>,
    mut scan: impl FnMut(&KeyRange, usize) -> Result<Vec<KvPair>, E>,
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
            Mutation::CheckRange { start, end, digest } => {
                let range = KeyRange { start, end };
                if digest_range(&mut scan, &local, &range)? != digest {
                    let key = match range.start {
                        Bound::Included(key) | Bound::Excluded(key) => key,
                        Bound::Unbounded => Vec::new(),
                    };
                    return Ok(Err(ApplyError::ReadConflict { key }));
                }
                continue;
            }
            Mutation::Append {
                log,
                entry,
                count,
                stamp,
                index_interval,
            } => {
                let state_key = seqlog::state_key(&log);
                let mut state = match current(&local, &state_key)? {
                    None => LogState::default(),
                    Some(bytes) => match LogState::decode(&bytes) {
                        Some(state) => state,
                        None => return Ok(Err(ApplyError::CorruptLog { log })),
                    },
                };
                let first = state.next;
                outcome.appended.push(first);
                if count == 0 {
                    continue;
                }
                outcome.inserted += count;
                state.next = first.saturating_add(count);
                state.max_stamp = state.max_stamp.max(stamp);
                let due = match state.indexed_stamp {
                    None => true,
                    Some(indexed) => {
                        state.max_stamp >= indexed.saturating_add(index_interval.max(1))
                    }
                };
                // Keyed by its last number: a forward seek from n finds the entry holding n.
                let mut writes = vec![WriteOp::Put {
                    keyspace: Keyspace::Data,
                    key: seqlog::entry_key(&log, first + count - 1),
                    value: entry,
                }];
                if due {
                    state.indexed_stamp = Some(state.max_stamp);
                    writes.push(WriteOp::Put {
                        keyspace: Keyspace::Data,
                        key: seqlog::stamp_key(&log, state.max_stamp),
                        value: first.to_be_bytes().to_vec(),
                    });
                }
                writes.push(WriteOp::Put {
                    keyspace: Keyspace::Data,
                    key: state_key,
                    value: state.encode(),
                });
                for op in writes {
                    local.apply(&op);
                    ops.push(op);
                }
                continue;
            }
            Mutation::NextValues { key, bounds, count } => {
                let state = match current(&local, &key)? {
                    None => None,
                    Some(bytes) => match SequenceState::decode(&bytes) {
                        Some(state) => Some(state),
                        None => {
                            return Ok(Err(ApplyError::SequenceExhausted { key, corrupt: true }))
                        }
                    },
                };
                let Some((block, state)) = bounds.next_block(state, count) else {
                    return Ok(Err(ApplyError::SequenceExhausted {
                        key,
                        corrupt: false,
                    }));
                };
                outcome.values.push(block);
                WriteOp::Put {
                    keyspace: Keyspace::Data,
                    key,
                    value: state.encode(),
                }
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
        if keyspace != Keyspace::Data {
            return self.base.scan(keyspace, range, limit);
        }
        merged_scan(
            &mut |range, limit| self.base.scan(keyspace, range, limit),
            &self.writes,
            range,
            limit,
        )
    }
}

/// Reads up to `limit` pairs of a range from the view below a write set.
type BaseScan<'a, E> = dyn FnMut(&KeyRange, usize) -> Result<Vec<KvPair>, E> + 'a;

/// The bounds of a recorded read (`KeyRange` is not hashable).
type RangeBounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// Up to `limit` pairs of `range` as `writes` laid over the base read by
/// `base_scan` shows them.
pub(crate) fn merged_scan<E>(
    base_scan: &mut BaseScan<'_, E>,
    writes: &WriteSet,
    range: &KeyRange,
    limit: usize,
) -> Result<Vec<KvPair>, E> {
    if writes.is_empty() || limit == 0 {
        return base_scan(range, limit);
    }
    let mut out: Vec<KvPair> = Vec::new();
    let mut cursor = range.clone();
    loop {
        let page = base_scan(&cursor, limit)?;
        let exhausted = page.len() < limit;
        // This round decides every key up to the last base key read (or
        // the end of the range once the base has no more).
        let upto = match (exhausted, page.last()) {
            (false, Some((last, _))) => Bound::Included(last.clone()),
            _ => cursor.end.clone(),
        };
        let mut written = writes.written_within(&cursor.start, &upto).peekable();
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
                if !writes.in_deleted_range(&key) {
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

/// The digest of every pair in `range` as `writes` over the base show them.
fn digest_range<E>(
    base_scan: &mut BaseScan<'_, E>,
    writes: &WriteSet,
    range: &KeyRange,
) -> Result<[u8; 32], E> {
    let mut digest = RangeDigest::default();
    let mut cursor = range.clone();
    loop {
        let page = merged_scan(base_scan, writes, &cursor, CHECK_RANGE_PAGE)?;
        for (key, value) in &page {
            digest.add(key, value);
        }
        match page.last() {
            Some((last, _)) if page.len() == CHECK_RANGE_PAGE => cursor = cursor.resume_after(last),
            _ => return Ok(digest.finish()),
        }
    }
}

/// A digest of the pairs of a key range, in key order: what a transaction
/// saw of the range, compared at commit with what is there then. Keys and
/// values are length-prefixed so that no two different sequences of pairs
/// feed the hash the same bytes; BLAKE3 makes a collision (a change that
/// goes unnoticed) as unlikely as guessing a 256-bit key.
#[derive(Default)]
pub struct RangeDigest(blake3::Hasher);

impl RangeDigest {
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        self.0.update(&(key.len() as u64).to_le_bytes());
        self.0.update(key);
        self.0.update(&(value.len() as u64).to_le_bytes());
        self.0.update(value);
    }

    pub fn finish(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

/// A snapshot that remembers what was read from its `Data` keyspace: each
/// key fetched and each range a scan covered (up to its last key when the
/// page filled), with the digest of the pairs seen. A serializable
/// transaction proposes them as `CheckRange`s at commit ([`Self::checks`]).
pub struct ReadRecorder {
    base: Arc<dyn Snapshot>,
    reads: Mutex<RecordedReads>,
}

#[derive(Default)]
struct RecordedReads {
    /// Range → digest. One snapshot answers every read, so a range read
    /// twice has one digest and is kept once.
    ranges: HashMap<RangeBounds, [u8; 32]>,
    bytes: usize,
}

impl ReadRecorder {
    pub fn new(base: Arc<dyn Snapshot>) -> Self {
        Self {
            base,
            reads: Mutex::default(),
        }
    }

    /// Memory held by the recorded reads (bounds of ranges plus digests).
    pub fn bytes(&self) -> usize {
        self.reads.lock().expect("read set lock").bytes
    }

    /// One `CheckRange` per recorded read, in key order of their lower bounds.
    pub fn checks(&self) -> Vec<Mutation> {
        let reads = self.reads.lock().expect("read set lock");
        let mut checks: Vec<Mutation> = reads
            .ranges
            .iter()
            .map(|((start, end), digest)| Mutation::CheckRange {
                start: start.clone(),
                end: end.clone(),
                digest: *digest,
            })
            .collect();
        checks.sort_by(|a, b| lower_bound(a).cmp(&lower_bound(b)));
        checks
    }

    fn record(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, digest: [u8; 32]) {
        let mut reads = self.reads.lock().expect("read set lock");
        let bytes = bound_len(&start) + bound_len(&end) + digest.len();
        if reads.ranges.insert((start, end), digest).is_none() {
            reads.bytes += bytes;
        }
    }
}

fn bound_len(bound: &Bound<Vec<u8>>) -> usize {
    match bound {
        Bound::Included(key) | Bound::Excluded(key) => key.len(),
        Bound::Unbounded => 0,
    }
}

fn lower_bound(check: &Mutation) -> (u8, &[u8]) {
    match check {
        Mutation::CheckRange {
            start: Bound::Included(key) | Bound::Excluded(key),
            ..
        } => (1, key.as_slice()),
        _ => (0, &[]),
    }
}

impl Snapshot for ReadRecorder {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        let value = self.base.get(keyspace, key)?;
        if keyspace == Keyspace::Data {
            let mut digest = RangeDigest::default();
            if let Some(value) = &value {
                digest.add(key, value);
            }
            let key = key.to_vec();
            self.record(
                Bound::Included(key.clone()),
                Bound::Included(key),
                digest.finish(),
            );
        }
        Ok(value)
    }

    fn scan(
        &self,
        keyspace: Keyspace,
        range: &KeyRange,
        limit: usize,
    ) -> Result<Vec<KvPair>, EngineError> {
        let page = self.base.scan(keyspace, range, limit)?;
        if keyspace == Keyspace::Data && limit > 0 {
            let mut digest = RangeDigest::default();
            for (key, value) in &page {
                digest.add(key, value);
            }
            // A full page says nothing about the keys after its last one.
            let end = match page.last() {
                Some((last, _)) if page.len() == limit => Bound::Included(last.clone()),
                _ => range.end.clone(),
            };
            self.record(range.start.clone(), end, digest.finish());
        }
        Ok(page)
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
            no_scans,
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
            no_scans,
        )
        .unwrap();
        assert_eq!(
            rejected.unwrap_err(),
            ApplyError::DuplicateKey { key: b"a".to_vec() }
        );
    }

    fn no_scans(_: &KeyRange, _: usize) -> Result<Vec<KvPair>, EngineError> {
        panic!("no mutation here reads a range")
    }

    /// Applies `mutations` over `snapshot` the way a replica does.
    fn check(
        snapshot: &Arc<dyn Snapshot>,
        mutations: Vec<Mutation>,
    ) -> Result<(Vec<WriteOp>, ApplyOutcome), ApplyError> {
        plan_mutations(
            mutations,
            |k: &[u8]| snapshot.get(Keyspace::Data, k),
            |range: &KeyRange, limit| snapshot.scan(Keyspace::Data, range, limit),
        )
        .unwrap()
    }

    fn range(start: &str, end: &str) -> KeyRange {
        KeyRange::half_open(start.as_bytes().to_vec(), end.as_bytes().to_vec())
    }

    #[test]
    fn recorded_reads_pass_until_something_they_saw_changes() {
        let keys: Vec<String> = (0..3000).map(|i| format!("k{i:05}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let before = base(&keys);
        let recorder = ReadRecorder::new(before.clone());
        // A full page ends the covered range at its last key; a point read
        // of an absent key is recorded as "absent".
        assert_eq!(
            recorder
                .scan(Keyspace::Data, &range("k", "l"), 10)
                .unwrap()
                .len(),
            10
        );
        assert_eq!(
            recorder
                .scan(Keyspace::Data, &range("k02000", "k02500"), 1000)
                .unwrap()
                .len(),
            500
        );
        assert_eq!(recorder.get(Keyspace::Data, b"zz").unwrap(), None);
        assert_eq!(recorder.get(Keyspace::Meta, b"catalog").unwrap(), None);
        let checks = recorder.checks();
        assert_eq!(checks.len(), 3, "Meta reads are not recorded");
        assert_eq!(
            check(&before, checks.clone()),
            Ok((Vec::new(), ApplyOutcome::default()))
        );

        let after = |ops: Vec<WriteOp>| {
            let engine = MemoryEngine::new();
            let mut all: Vec<WriteOp> = keys.iter().map(|k| put(k, "base")).collect();
            all.extend(ops);
            engine
                .write(WriteBatch { ops: all }, Durability::Buffered)
                .unwrap();
            engine.snapshot()
        };
        // Writes outside everything read (past the first page, outside the
        // second range) do not conflict.
        let unrelated = after(vec![
            put("k00010", "new"),
            put("k01999x", "new"),
            put("k02500", "new"),
        ]);
        assert!(check(&unrelated, checks.clone()).is_ok());
        // A changed value, an insert (phantom) and a delete inside a read
        // range each do, and so does the appearance of a key read as absent.
        for (changed, start) in [
            (put("k00009", "new"), "k"),
            (put("k02100x", "phantom"), "k02000"),
            (
                WriteOp::Delete {
                    keyspace: Keyspace::Data,
                    key: b"k02499".to_vec(),
                },
                "k02000",
            ),
            (put("zz", "now here"), "zz"),
        ] {
            let conflict = check(&after(vec![changed]), checks.clone()).unwrap_err();
            assert_eq!(
                conflict,
                ApplyError::ReadConflict {
                    key: start.as_bytes().to_vec()
                }
            );
        }
        // Within one command, a range check sees the command's own earlier writes.
        let own_write = check(
            &before,
            vec![put_mutation("k00001", "mine")]
                .into_iter()
                .chain(checks.clone())
                .collect(),
        );
        assert_eq!(
            own_write.unwrap_err(),
            ApplyError::ReadConflict { key: b"k".to_vec() }
        );
    }

    fn put_mutation(key: &str, value: &str) -> Mutation {
        Mutation::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        }
    }
}
