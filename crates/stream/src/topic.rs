//! Where a topic's records live and how they are read back.
//!
//! Each partition is one sequence log of the state machine
//! (`sluice_raftstore::seqlog`) under the prefix `0x04 <topic id u64>
//! <partition u32>`. An append is one `Mutation::Append` of one record
//! batch: apply assigns it the partition's next offsets, so offsets are
//! dense per partition and identical on every replica. Batches are keyed by
//! their *last* offset, so a forward seek from offset `n` lands on the batch
//! that holds `n`.

use std::ops::Bound;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_engine::{KeyRange, Keyspace, Snapshot};
use sluice_raftstore::{seqlog, Mutation};

use crate::batch::{self, BatchBuilder, Compression};
use crate::error::{Error, Result};

/// First byte of every topic key in the `Data` keyspace.
pub const TOPIC_PREFIX: u8 = 0x04;
/// One stamp-index entry per second of producer time.
pub const STAMP_INTERVAL_US: u64 = 1_000_000;
/// Most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 1024;
/// Batches read per engine scan.
const SCAN_BATCHES: usize = 16;

/// A topic's settings, kept in its catalog entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicOptions {
    pub partitions: u32,
    /// The column whose value picks the partition (hash); round-robin when absent.
    pub partition_key: Option<String>,
    /// Records older than this are removed.
    pub retention_ms: Option<u64>,
    /// Each partition keeps at most about this many bytes of batches.
    pub retention_bytes: Option<u64>,
    pub compression: Compression,
}

impl Default for TopicOptions {
    fn default() -> Self {
        Self {
            partitions: 1,
            partition_key: None,
            retention_ms: None,
            retention_bytes: None,
            compression: Compression::None,
        }
    }
}

impl TopicOptions {
    /// Applies `WITH (name = value, …)` options over `self`. Names are
    /// lower case; `retention = 'none'` clears a retention.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let bad =
            |what: &str| Error::InvalidOption(format!("{name} must be {what}, not \"{value}\""));
        match name {
            "partitions" => {
                let n: u32 = value.parse().map_err(|_| bad("a whole number"))?;
                if !(1..=MAX_PARTITIONS).contains(&n) {
                    return Err(bad(&format!("between 1 and {MAX_PARTITIONS}")));
                }
                self.partitions = n;
            }
            "partition_key" => self.partition_key = Some(value.to_string()),
            "retention" | "retention_ms" => {
                self.retention_ms = match value.to_ascii_lowercase().as_str() {
                    "none" | "infinite" | "-1" => None,
                    _ => Some(
                        parse_duration(value)
                            .ok_or_else(|| bad("a duration such as '7 days' or '1h'"))?
                            .as_millis() as u64,
                    ),
                }
            }
            "retention_bytes" => {
                self.retention_bytes = match value.to_ascii_lowercase().as_str() {
                    "none" | "-1" => None,
                    _ => Some(
                        parse_size(value).ok_or_else(|| bad("a size such as '1GB'"))?,
                    ),
                }
            }
            "compression" => self.compression = Compression::parse(value)?,
            other => {
                return Err(Error::InvalidOption(format!(
                    "unknown topic option \"{other}\" (partitions, partition_key, retention, retention_bytes, compression)"
                )))
            }
        }
        Ok(())
    }
}

/// `'7 days'`, `'12h'`, `'30 min'`, `'500ms'`, `'90s'`, a bare number of milliseconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim().to_ascii_lowercase();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let unit_ms = match unit.trim() {
        "" | "ms" | "msec" | "millisecond" | "milliseconds" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1e3,
        "m" | "min" | "mins" | "minute" | "minutes" => 6e4,
        "h" | "hr" | "hour" | "hours" => 3.6e6,
        "d" | "day" | "days" => 8.64e7,
        "w" | "week" | "weeks" => 6.048e8,
        _ => return None,
    };
    let ms = number * unit_ms;
    (0.0..1e15)
        .contains(&ms)
        .then(|| Duration::from_millis(ms as u64))
}

/// `'1GB'`, `'512MB'`, `'64kB'`, a bare number of bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        "tb" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// The sequence-log prefix of one partition.
pub fn partition_log(topic_id: u64, partition: u32) -> Vec<u8> {
    let mut log = Vec::with_capacity(13);
    log.push(TOPIC_PREFIX);
    log.extend_from_slice(&topic_id.to_be_bytes());
    log.extend_from_slice(&partition.to_be_bytes());
    log
}

/// `[start, end)` of every key of a topic, for dropping it.
pub fn topic_key_range(topic_id: u64) -> (Vec<u8>, Vec<u8>) {
    let mut start = vec![TOPIC_PREFIX];
    start.extend_from_slice(&topic_id.to_be_bytes());
    let mut end = vec![TOPIC_PREFIX];
    end.extend_from_slice(&(topic_id + 1).to_be_bytes());
    (start, end)
}

/// The partition a key value (its encoded bytes) goes to.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    crc32c::crc32c(key) % partitions.max(1)
}

/// The mutation that appends `records` to a partition.
pub fn append(
    topic_id: u64,
    partition: u32,
    records: BatchBuilder,
    timestamp_us: i64,
    compression: Compression,
) -> Result<Mutation> {
    let count = u64::from(records.len());
    let entry = records.finish(timestamp_us, compression)?;
    Ok(Mutation::Append {
        log: partition_log(topic_id, partition),
        entry,
        count,
        stamp: timestamp_us.max(0) as u64,
        index_interval: STAMP_INTERVAL_US,
    })
}

/// One record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: u32,
    pub offset: u64,
    pub timestamp_us: i64,
    pub data: Vec<u8>,
}

/// The offsets a partition holds: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionBounds {
    pub start: u64,
    pub end: u64,
}

fn state_of(snapshot: &dyn Snapshot, log: &[u8]) -> Result<seqlog::LogState> {
    match snapshot.get(Keyspace::Data, &seqlog::state_key(log))? {
        None => Ok(seqlog::LogState::default()),
        Some(bytes) => seqlog::LogState::decode(&bytes)
            .ok_or_else(|| Error::Corrupt("partition state does not decode".into())),
    }
}

fn entries_from(log: &[u8], offset: u64) -> KeyRange {
    KeyRange {
        start: Bound::Included(seqlog::entry_key(log, offset)),
        end: Bound::Excluded(seqlog::section(log, seqlog::ENTRIES + 1)),
    }
}

/// The offset a stamp-index entry points at.
fn indexed_offset(value: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = value
        .try_into()
        .map_err(|_| Error::Corrupt("stamp index entry".into()))?;
    Ok(u64::from_be_bytes(bytes))
}

/// The first offset a batch keyed `key` holds.
fn batch_start(key: &[u8], value: &[u8]) -> Result<(u64, u64, batch::BatchHeader)> {
    let last = seqlog::number_of(key).ok_or_else(|| Error::Corrupt("batch key".into()))?;
    let header = batch::header(value)?;
    let first = (last + 1)
        .checked_sub(u64::from(header.count))
        .ok_or_else(|| {
            Error::Corrupt(format!(
                "batch ending at {last} holds {} records",
                header.count
            ))
        })?;
    Ok((first, last, header))
}

/// Where a partition starts and ends, without reading its batches.
pub fn bounds(snapshot: &dyn Snapshot, topic_id: u64, partition: u32) -> Result<PartitionBounds> {
    let log = partition_log(topic_id, partition);
    let state = state_of(snapshot, &log)?;
    let first = snapshot.scan(Keyspace::Data, &entries_from(&log, 0), 1)?;
    let start = match first.first() {
        Some((key, value)) => batch_start(key, value)?.0,
        None => state.next,
    };
    Ok(PartitionBounds {
        start,
        end: state.next,
    })
}

/// Appends records of `partition` from offset `from` to `out`, up to
/// `max_records` records and about `max_bytes` bytes. Returns the offset to
/// read from next. `from` below the retained start is an error.
pub fn read(
    snapshot: &dyn Snapshot,
    topic_id: u64,
    partition: u32,
    from: u64,
    max_records: usize,
    max_bytes: usize,
    out: &mut Vec<Record>,
) -> Result<u64> {
    let log = partition_log(topic_id, partition);
    let mut position = from;
    let mut range = entries_from(&log, from);
    let mut taken = 0;
    let mut bytes = 0;
    let mut checked_start = false;
    while taken < max_records && bytes < max_bytes {
        let page = snapshot.scan(Keyspace::Data, &range, SCAN_BATCHES)?;
        let done = page.len() < SCAN_BATCHES;
        for (key, value) in &page {
            let (first, _, _) = batch_start(key, value)?;
            if !checked_start {
                checked_start = true;
                if first > position {
                    return Err(Error::BelowRetention {
                        partition,
                        requested: position,
                        start: first,
                    });
                }
            }
            let decoded = batch::decode(value).map_err(|e| {
                tracing::error!(topic_id, partition, first, error = %e, "corrupt record batch");
                e
            })?;
            for (i, record) in decoded.records().enumerate() {
                let offset = first + i as u64;
                if offset < position {
                    continue;
                }
                if taken >= max_records || bytes >= max_bytes {
                    return Ok(position);
                }
                let record = record?;
                bytes += record.len() + 16;
                taken += 1;
                out.push(Record {
                    partition,
                    offset,
                    timestamp_us: decoded.header.timestamp_us,
                    data: record.to_vec(),
                });
                position = offset + 1;
            }
            range = range.resume_after(key);
        }
        if done {
            break;
        }
    }
    // Nothing stored at or after `from` means `from` is at or past the end:
    // retention never removes a partition's newest batch, so a position
    // below the start always finds a batch and is refused above. (This is
    // the common case of an idle cursor, which must cost one seek only.)
    Ok(position)
}

/// The first offset of `partition` whose batch timestamp is at or after
/// `timestamp_us` (the end offset when there is none).
pub fn offset_at_time(
    snapshot: &dyn Snapshot,
    topic_id: u64,
    partition: u32,
    timestamp_us: i64,
) -> Result<u64> {
    let log = partition_log(topic_id, partition);
    let b = bounds(snapshot, topic_id, partition)?;
    let target = timestamp_us.max(0) as u64;
    let seek = target.saturating_sub(STAMP_INTERVAL_US);
    let index = KeyRange {
        start: Bound::Included(seqlog::stamp_key(&log, seek)),
        end: Bound::Excluded(seqlog::section(&log, seqlog::STAMPS + 1)),
    };
    let Some((_, value)) = snapshot.scan(Keyspace::Data, &index, 1)?.pop() else {
        return Ok(b.end);
    };
    let mut range = entries_from(&log, indexed_offset(&value)?.max(b.start));
    loop {
        let page = snapshot.scan(Keyspace::Data, &range, SCAN_BATCHES)?;
        for (key, value) in &page {
            let (first, _, header) = batch_start(key, value)?;
            if header.timestamp_us >= timestamp_us {
                return Ok(first);
            }
            range = range.resume_after(key);
        }
        if page.len() < SCAN_BATCHES {
            return Ok(b.end);
        }
    }
}

/// The deletes that apply a topic's retention to one partition as of
/// `now_us`: whole batches older than the time limit and, when
/// `check_size`, the oldest batches beyond the size limit. The newest batch
/// always stays, so the partition's start and end stay readable. `None`
/// when nothing is due.
///
/// Time retention reads only the stamp index: every batch before the one
/// an index entry points at is older than that entry's stamp, so the cut is
/// the last index entry at or before the limit. Index entries behind a cut
/// go with it, so each run reads only what became due since the last one.
/// Size retention reads every batch header of the partition; callers run it
/// less often.
pub fn retention_deletes(
    snapshot: &dyn Snapshot,
    topic_id: u64,
    partition: u32,
    options: &TopicOptions,
    now_us: i64,
    check_size: bool,
) -> Result<Option<Vec<Mutation>>> {
    let log = partition_log(topic_id, partition);
    let newest = {
        let state = state_of(snapshot, &log)?;
        if state.next == 0 {
            return Ok(None);
        }
        state.next - 1
    };
    // Keep from this offset on (0 = keep everything).
    let mut keep_from: u64 = 0;
    if let Some(ms) = options.retention_ms {
        let oldest_kept = now_us
            .saturating_sub((ms as i64).saturating_mul(1000))
            .max(0) as u64;
        let mut index = KeyRange {
            start: Bound::Included(seqlog::section(&log, seqlog::STAMPS)),
            end: Bound::Included(seqlog::stamp_key(&log, oldest_kept)),
        };
        loop {
            let page = snapshot.scan(Keyspace::Data, &index, 256)?;
            for (key, value) in &page {
                keep_from = keep_from.max(indexed_offset(value)?);
                index = index.resume_after(key);
            }
            if page.len() < 256 {
                break;
            }
        }
    }
    if let (true, Some(limit)) = (check_size, options.retention_bytes) {
        let mut batches: Vec<(u64, usize)> = Vec::new();
        let mut range = entries_from(&log, 0);
        loop {
            let page = snapshot.scan(Keyspace::Data, &range, 256)?;
            for (key, value) in &page {
                batches.push((batch_start(key, value)?.0, value.len()));
                range = range.resume_after(key);
            }
            if page.len() < 256 {
                break;
            }
        }
        // The oldest batch that still fits (the newest batch always does).
        let mut total: u64 = 0;
        let mut fits_from = batches.last().map_or(0, |b| b.0);
        for (first, size) in batches.iter().rev() {
            total += *size as u64;
            if total > limit {
                break;
            }
            fits_from = *first;
        }
        keep_from = keep_from.max(fits_from);
    }
    // Never past the newest batch: find the batch holding `newest`.
    let newest_batch = snapshot
        .scan(Keyspace::Data, &entries_from(&log, newest), 1)?
        .pop()
        .map(|(key, value)| batch_start(&key, &value).map(|b| b.0))
        .transpose()?
        .unwrap_or(newest);
    let keep_from = keep_from.min(newest_batch);
    let start = bounds(snapshot, topic_id, partition)?.start;
    if keep_from <= start {
        return Ok(None);
    }
    // Batches are keyed by their last offset: those below `keep_from` hold
    // only offsets before it (retention cuts at batch starts).
    let mut deletes = vec![Mutation::DeleteRange {
        start: seqlog::section(&log, seqlog::ENTRIES),
        end: seqlog::entry_key(&log, keep_from),
    }];
    // Index entries pointing before the cut, except the last of them, which
    // still bounds lookups for times just after it.
    // (the last stale key seen, and the one before it)
    let (mut last_stale, mut before_last): (Option<Vec<u8>>, Option<Vec<u8>>) = (None, None);
    let mut index = KeyRange {
        start: Bound::Included(seqlog::section(&log, seqlog::STAMPS)),
        end: Bound::Excluded(seqlog::section(&log, seqlog::STAMPS + 1)),
    };
    'scan: loop {
        let page = snapshot.scan(Keyspace::Data, &index, 256)?;
        for (key, value) in &page {
            if indexed_offset(value)? >= keep_from {
                break 'scan;
            }
            before_last = last_stale.replace(key.clone());
            index = index.resume_after(key);
        }
        if page.len() < 256 {
            break;
        }
    }
    if let Some(mut end) = before_last {
        end.push(0);
        deletes.push(Mutation::DeleteRange {
            start: seqlog::section(&log, seqlog::STAMPS),
            end,
        });
    }
    Ok(Some(deletes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_engine::{Durability, Engine, MemoryEngine, WriteBatch};
    use std::sync::Arc;

    /// Applies mutations the way the state machine does.
    fn apply(engine: &Arc<MemoryEngine>, mutations: Vec<Mutation>) -> Vec<u64> {
        let (ops, outcome) = sluice_raftstore::plan_mutations(
            mutations,
            |key| engine.get(Keyspace::Data, key),
            |range, limit| engine.scan(Keyspace::Data, range, limit),
        )
        .unwrap()
        .unwrap();
        let mut batch = WriteBatch::new();
        batch.ops = ops;
        engine.write(batch, Durability::Sync).unwrap();
        outcome.appended
    }

    fn batch_of(records: std::ops::Range<u32>) -> BatchBuilder {
        let mut b = BatchBuilder::new();
        for r in records {
            b.push(&r.to_be_bytes());
        }
        b
    }

    fn offsets(records: &[Record]) -> Vec<u64> {
        records.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn offsets_are_dense_and_readable_from_inside_a_batch() {
        let engine = MemoryEngine::new();
        let first = apply(
            &engine,
            vec![
                append(7, 0, batch_of(0..3), 1_000, Compression::None).unwrap(),
                append(7, 1, batch_of(0..2), 1_000, Compression::None).unwrap(),
                append(7, 0, batch_of(3..5), 2_000, Compression::Lz4).unwrap(),
            ],
        );
        assert_eq!(first, vec![0, 0, 3]);
        let snap = engine.snapshot();
        assert_eq!(
            bounds(&*snap, 7, 0).unwrap(),
            PartitionBounds { start: 0, end: 5 }
        );
        let mut out = Vec::new();
        let next = read(&*snap, 7, 0, 2, 10, usize::MAX, &mut out).unwrap();
        assert_eq!(next, 5);
        assert_eq!(offsets(&out), vec![2, 3, 4]);
        assert_eq!(out[0].data, 2u32.to_be_bytes());
        assert_eq!(out[2].timestamp_us, 2_000);
        // A limit stops inside a batch and the next read resumes there.
        let mut out = Vec::new();
        assert_eq!(read(&*snap, 7, 0, 0, 2, usize::MAX, &mut out).unwrap(), 2);
        assert_eq!(offsets(&out), vec![0, 1]);
        // At the end: nothing, and the position stays.
        let mut out = Vec::new();
        assert_eq!(read(&*snap, 7, 0, 5, 10, usize::MAX, &mut out).unwrap(), 5);
        assert!(out.is_empty());
        // Another topic id shares nothing.
        assert_eq!(bounds(&*snap, 8, 0).unwrap(), PartitionBounds::default());
    }

    #[test]
    fn time_lookup_finds_the_first_batch_at_or_after() {
        let engine = MemoryEngine::new();
        let second = STAMP_INTERVAL_US as i64;
        for (i, ts) in [
            0,
            second / 2,
            second,
            3 * second,
            3 * second + 5,
            10 * second,
        ]
        .into_iter()
        .enumerate()
        {
            let i = i as u32;
            apply(
                &engine,
                vec![append(1, 0, batch_of(i * 10..i * 10 + 10), ts, Compression::None).unwrap()],
            );
        }
        let snap = engine.snapshot();
        let at = |ts: i64| offset_at_time(&*snap, 1, 0, ts).unwrap();
        assert_eq!(at(-5), 0);
        assert_eq!(at(0), 0);
        assert_eq!(at(1), 10);
        assert_eq!(at(second), 20);
        assert_eq!(at(2 * second), 30);
        assert_eq!(at(3 * second + 1), 40);
        assert_eq!(at(9 * second), 50);
        assert_eq!(at(11 * second), 60);
    }

    #[test]
    fn retention_removes_whole_batches_from_the_front() {
        let engine = MemoryEngine::new();
        let second = 1_000_000i64;
        for i in 0..5u32 {
            apply(
                &engine,
                vec![append(
                    2,
                    0,
                    batch_of(i * 4..i * 4 + 4),
                    i as i64 * 60 * second,
                    Compression::None,
                )
                .unwrap()],
            );
        }
        let mut options = TopicOptions::default();
        options.set("retention", "2 min").unwrap();
        let now = 4 * 60 * second;
        let deletes = retention_deletes(&*engine.snapshot(), 2, 0, &options, now, false)
            .unwrap()
            .unwrap();
        apply(&engine, deletes);
        let snap = engine.snapshot();
        // Batches from minute 0 and 1 went; minute 2 (exactly 2 min old) stays.
        assert_eq!(
            bounds(&*snap, 2, 0).unwrap(),
            PartitionBounds { start: 8, end: 20 }
        );
        let err = read(&*snap, 2, 0, 3, 10, usize::MAX, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::BelowRetention {
                    requested: 3,
                    start: 8,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(offset_at_time(&*snap, 2, 0, 0).unwrap(), 8);
        // Appends continue at the same offsets after retention.
        assert_eq!(
            apply(
                &engine,
                vec![append(2, 0, batch_of(0..1), now, Compression::None).unwrap()]
            ),
            vec![20]
        );
        // Size retention keeps the newest batches within the limit, and always the last.
        let mut by_size = TopicOptions::default();
        by_size.set("retention_bytes", "1").unwrap();
        let deletes = retention_deletes(&*engine.snapshot(), 2, 0, &by_size, now, true)
            .unwrap()
            .unwrap();
        apply(&engine, deletes);
        assert_eq!(bounds(&*engine.snapshot(), 2, 0).unwrap().start, 20);
        assert!(
            retention_deletes(&*engine.snapshot(), 2, 0, &by_size, now, true)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn options_parse_and_refuse_bad_values() {
        let mut o = TopicOptions::default();
        o.set("partitions", "4").unwrap();
        o.set("retention", "7 days").unwrap();
        o.set("compression", "zstd").unwrap();
        assert_eq!(o.partitions, 4);
        assert_eq!(o.retention_ms, Some(7 * 86_400_000));
        assert!(o.set("partitions", "0").is_err());
        assert!(o.set("partitions", "-1").is_err());
        assert!(o.set("retention", "soon").is_err());
        assert!(o.set("compression", "gzip").is_err());
        assert!(o.set("colour", "red").is_err());
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_size("64kB"), Some(65536));
    }
}
