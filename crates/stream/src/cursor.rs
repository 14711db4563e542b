//! A subscription cursor: only a position per partition in durable
//! storage, plus the watchers that wake it when apply appends.
//!
//! Memory per cursor is its positions and at most one fetch's records, so
//! a slow consumer costs the server nothing while it is not fetching.
//! Waiting is event-driven: before each read the cursor marks its
//! partitions' watchers seen, then reads from a fresh snapshot; only when
//! that read finds nothing does it wait, and any append applied after the
//! mark (so possibly after the snapshot) wakes it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_engine::Snapshot;
use sluice_raftstore::LogWatchers;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::topic::{self, Record};

/// Bytes one fetch returns at most (records beyond it wait for the next).
pub const MAX_FETCH_BYTES: usize = 4 << 20;

pub struct Cursor {
    topic_id: u64,
    /// Next offset to deliver, per partition read.
    positions: BTreeMap<u32, u64>,
    watchers: BTreeMap<u32, watch::Receiver<u64>>,
    /// Where the next fetch starts reading, for fairness across partitions.
    next_turn: usize,
    /// For a bounded cursor (`UP TO`): the offset each partition stops
    /// before; a partition not listed has nothing to deliver.
    limits: Option<BTreeMap<u32, u64>>,
    /// The last read reached the end of every partition as of its snapshot, so
    /// there is nothing to read until a watcher reports an append.
    drained: bool,
}

impl Cursor {
    /// A cursor over `positions` (partition → first offset to deliver).
    pub fn new(watchers: &LogWatchers, topic_id: u64, positions: BTreeMap<u32, u64>) -> Self {
        let watchers = positions
            .keys()
            .map(|&p| (p, watchers.watch(&topic::partition_log(topic_id, p))))
            .collect();
        Self {
            topic_id,
            positions,
            watchers,
            next_turn: 0,
            limits: None,
            drained: false,
        }
    }

    /// Stops each partition before its offset in `limits`: once every
    /// partition is there the cursor is [`finished`](Self::finished).
    pub fn bounded(mut self, limits: BTreeMap<u32, u64>) -> Self {
        self.limits = Some(limits);
        self
    }

    pub fn is_bounded(&self) -> bool {
        self.limits.is_some()
    }

    /// A bounded cursor that has delivered everything up to its limits.
    pub fn finished(&self) -> bool {
        self.is_bounded() && self.positions.iter().all(|(&p, &at)| self.room(p, at) == 0)
    }

    /// Records `partition` may still deliver from `from`.
    fn room(&self, partition: u32, from: u64) -> usize {
        match &self.limits {
            None => usize::MAX,
            Some(limits) => {
                let limit = limits.get(&partition).copied().unwrap_or(0);
                usize::try_from(limit.saturating_sub(from)).unwrap_or(usize::MAX)
            }
        }
    }

    /// Next offset to deliver, per partition.
    pub fn positions(&self) -> &BTreeMap<u32, u64> {
        &self.positions
    }

    /// Stops reading `partition` (a group rebalance took it away).
    pub fn release(&mut self, partition: u32) {
        self.positions.remove(&partition);
        self.watchers.remove(&partition);
    }

    /// Starts reading `partition` at `offset`.
    pub fn acquire(&mut self, watchers: &LogWatchers, partition: u32, offset: u64) {
        self.positions.insert(partition, offset);
        self.drained = false;
        self.watchers.insert(
            partition,
            watchers.watch(&topic::partition_log(self.topic_id, partition)),
        );
    }

    /// Records available now, up to `max`, read from `snapshot` across the
    /// partitions in turn. Positions advance past what is returned.
    /// [`fetch`](Self::fetch) is the way to call it: it marks the watchers seen
    /// first, so that a read skipped for want of news misses nothing.
    fn read_available(&mut self, snapshot: &dyn Snapshot, max: usize) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        let partitions: Vec<u32> = self.positions.keys().copied().collect();
        if partitions.is_empty() {
            return Ok(out);
        }
        let turn = self.next_turn % partitions.len();
        self.next_turn = self.next_turn.wrapping_add(1);
        let mut bytes = 0;
        for &partition in partitions[turn..].iter().chain(&partitions[..turn]) {
            if out.len() >= max || bytes >= MAX_FETCH_BYTES {
                break;
            }
            let from = self.positions[&partition];
            // Offsets are dense, so reading at most `room` records from
            // `from` stops exactly before the partition's limit.
            let room = self.room(partition, from);
            if room == 0 {
                continue;
            }
            let before = out.len();
            let next = topic::read(
                snapshot,
                self.topic_id,
                partition,
                from,
                (max - out.len()).min(room),
                MAX_FETCH_BYTES - bytes,
                &mut out,
            )?;
            bytes += out[before..]
                .iter()
                .map(|r| r.data.len() + 16)
                .sum::<usize>();
            self.positions.insert(partition, next);
        }
        // A partition's read stops early only at the count or the byte budget.
        self.drained = out.len() < max && bytes < MAX_FETCH_BYTES;
        Ok(out)
    }

    /// Waits up to `timeout` for at least one record, then returns what is
    /// available (up to `max`). A zero timeout returns at once, and so does
    /// a finished bounded cursor. Fails with [`Error::Closed`] when the node
    /// shuts down while it waits.
    pub async fn fetch(
        &mut self,
        snapshot: impl Fn() -> Arc<dyn Snapshot>,
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<Record>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // After a read that drained every partition, only a reported append
            // makes another worth its snapshot: a streaming subscription would
            // otherwise read once more, in vain, before each wait.
            let appended = || {
                self.watchers
                    .values()
                    .any(|w| w.has_changed().unwrap_or(true))
            };
            let mut records = Vec::new();
            if !self.drained || appended() {
                for watcher in self.watchers.values_mut() {
                    watcher.borrow_and_update();
                }
                records = self.read_available(&*snapshot(), max)?;
            }
            if !records.is_empty()
                || max == 0
                || self.finished()
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(records);
            }
            if self.watchers.is_empty() {
                tokio::time::sleep_until(deadline).await;
                return Ok(records);
            }
            let changed = self.watchers.values_mut().map(|w| Box::pin(w.changed()));
            tokio::select! {
                (result, _, _) = futures::future::select_all(changed) => {
                    if result.is_err() {
                        return Err(Error::Closed);
                    }
                    // `changed` marked that append seen: read for it regardless.
                    self.drained = false;
                }
                _ = tokio::time::sleep_until(deadline) => return Ok(records),
            }
        }
    }
}
