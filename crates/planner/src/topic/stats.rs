//! Counters of appends, subscriptions and retention, for metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sluice_raftstore::Mutation;

/// What the node's topics did, for `/metrics`.
#[derive(Debug, Default)]
pub struct TopicCounters {
    appended_records: AtomicU64,
    appended_bytes: AtomicU64,
    delivered_records: AtomicU64,
    open_subscriptions: AtomicU64,
    retention_deletes: AtomicU64,
}

/// A snapshot of [`TopicCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicStats {
    /// Records this node's sessions appended (acknowledged).
    pub appended_records: u64,
    /// Bytes of the record batches they appended (after compression).
    pub appended_bytes: u64,
    /// Records delivered by FETCH and SUBSCRIBE on this node.
    pub delivered_records: u64,
    /// Cursors and streaming SUBSCRIBEs open now.
    pub open_subscriptions: u64,
    /// Retention commands this node proposed (as leader).
    pub retention_deletes: u64,
}

impl TopicCounters {
    pub(crate) fn snapshot(&self) -> TopicStats {
        TopicStats {
            appended_records: self.appended_records.load(Ordering::Relaxed),
            appended_bytes: self.appended_bytes.load(Ordering::Relaxed),
            delivered_records: self.delivered_records.load(Ordering::Relaxed),
            open_subscriptions: self.open_subscriptions.load(Ordering::Relaxed),
            retention_deletes: self.retention_deletes.load(Ordering::Relaxed),
        }
    }

    /// Counts acknowledged appends (see [`append_size`]).
    /// A retention command this node proposed.
    pub(crate) fn retention_deleted(&self) {
        self.retention_deletes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn appended(&self, (records, bytes): (u64, u64)) {
        self.appended_records.fetch_add(records, Ordering::Relaxed);
        self.appended_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Records and batch bytes of the appends among `mutations`.
pub(crate) fn append_size(mutations: &[Mutation]) -> (u64, u64) {
    mutations
        .iter()
        .fold((0, 0), |(records, bytes), m| match m {
            Mutation::Append { count, entry, .. } => (records + count, bytes + entry.len() as u64),
            _ => (records, bytes),
        })
}

/// Counts one open subscription while it lives.
pub(crate) struct SubscriptionGuard {
    counters: Arc<TopicCounters>,
}

impl SubscriptionGuard {
    pub(crate) fn new(counters: &Arc<TopicCounters>) -> Self {
        counters.open_subscriptions.fetch_add(1, Ordering::Relaxed);
        Self {
            counters: counters.clone(),
        }
    }

    pub(crate) fn delivered(&self, records: usize) {
        self.counters
            .delivered_records
            .fetch_add(records as u64, Ordering::Relaxed);
    }
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        self.counters
            .open_subscriptions
            .fetch_sub(1, Ordering::Relaxed);
    }
}

// Retention
