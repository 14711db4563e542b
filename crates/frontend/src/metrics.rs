//! Prometheus metrics: counters the frontend updates as it works, plus Raft
//! and engine gauges read from the node when `/metrics` is scraped.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    exponential_buckets, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use sluice_planner::Database;

/// Every metric Sluice exports, in one registry.
pub struct Metrics {
    registry: Registry,
    pub(crate) connections_opened: IntCounter,
    pub(crate) connections_current: IntGauge,
    pub(crate) statements: IntCounterVec,
    pub(crate) statement_errors: IntCounterVec,
    pub(crate) statement_seconds: HistogramVec,
    pub(crate) rows_returned: IntCounter,
    pub(crate) copy_rows_in: IntCounter,
    raft: RaftGauges,
    transactions: TransactionGauges,
    topics: TopicMetrics,
    engine: GaugeVec,
    /// One scrape at a time: counters catch up by difference.
    rendering: std::sync::Mutex<()>,
}

struct TopicMetrics {
    appended_records: IntCounter,
    appended_bytes: IntCounter,
    delivered_records: IntCounter,
    retention_deletes: IntCounter,
    subscriptions: IntGauge,
    consumer_lag: IntGaugeVec,
}

struct TransactionGauges {
    open: IntGauge,
    oldest_seconds: Gauge,
    committed: IntCounter,
    rolled_back: IntCounter,
    conflicts: IntCounter,
}

struct RaftGauges {
    term: IntGauge,
    applied_index: IntGauge,
    committed_index: IntGauge,
    last_log_index: IntGauge,
    is_leader: IntGauge,
    leader_changes: IntGauge,
    proposals: IntGauge,
    proposal_failures: IntGauge,
    forwarded_proposals: IntGauge,
    snapshots_installed: IntGauge,
    leader_loss_elections: IntGauge,
    read_barriers: IntGauge,
    sole_voter_reads: IntGauge,
    snapshot_index: IntGauge,
    purged_index: IntGauge,
    members: IntGauge,
    follower_lag: IntGaugeVec,
}

/// The statement kinds counted separately.
pub(crate) const KINDS: [&str; 6] = ["select", "insert", "update", "delete", "ddl", "other"];

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        // Metric definitions are constants: failing here is a programming
        // error caught by the first test run, not a runtime condition.
        Arc::new(Self::build().expect("metric definitions are valid"))
    }

    fn build() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let connections_opened = IntCounter::new(
            "sluice_connections_opened_total",
            "SQL connections accepted",
        )?;
        let connections_current = IntGauge::new("sluice_connections", "SQL connections open now")?;
        let statements = IntCounterVec::new(
            Opts::new(
                "sluice_statements_total",
                "SQL statements executed, by kind",
            ),
            &["kind"],
        )?;
        let statement_errors = IntCounterVec::new(
            Opts::new(
                "sluice_statement_errors_total",
                "Errors returned to clients, by SQLSTATE class",
            ),
            &["class"],
        )?;
        let statement_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sluice_statement_duration_seconds",
                "Statement execution time, results included",
            )
            .buckets(exponential_buckets(0.0001, 4.0, 11)?),
            &["kind"],
        )?;
        let rows_returned = IntCounter::new("sluice_rows_returned_total", "Rows sent to clients")?;
        let copy_rows_in = IntCounter::new(
            "sluice_copy_rows_in_total",
            "Rows loaded by COPY FROM STDIN",
        )?;
        let raft = RaftGauges {
            term: IntGauge::new("sluice_raft_term", "Current Raft term")?,
            applied_index: IntGauge::new(
                "sluice_raft_applied_index",
                "Last log index applied to the state machine",
            )?,
            committed_index: IntGauge::new(
                "sluice_raft_committed_index",
                "Last committed log index",
            )?,
            last_log_index: IntGauge::new(
                "sluice_raft_last_log_index",
                "Last log index in the local log",
            )?,
            is_leader: IntGauge::new(
                "sluice_raft_is_leader",
                "1 when this node is the Raft leader",
            )?,
            leader_changes: IntGauge::new("sluice_raft_leader_changes", "Leader changes observed")?,
            proposals: IntGauge::new("sluice_raft_proposals", "Commands proposed")?,
            proposal_failures: IntGauge::new(
                "sluice_raft_proposal_failures",
                "Proposals that failed",
            )?,
            forwarded_proposals: IntGauge::new(
                "sluice_raft_forwarded_proposals",
                "Proposals this node forwarded to the leader",
            )?,
            snapshots_installed: IntGauge::new(
                "sluice_raft_snapshots_installed",
                "Snapshots received from a leader and installed",
            )?,
            leader_loss_elections: IntGauge::new(
                "sluice_raft_leader_loss_elections",
                "Elections started at once because the leader's peer port refused connections",
            )?,
            read_barriers: IntGauge::new(
                "sluice_raft_read_barriers",
                "Linearizable reads served (each confirms this node's view is current)",
            )?,
            sole_voter_reads: IntGauge::new(
                "sluice_raft_sole_voter_reads",
                "Linearizable reads served from the applied state alone, this node being the only voter and the leader",
            )?,
            snapshot_index: IntGauge::new(
                "sluice_raft_snapshot_index",
                "Last log index covered by the current snapshot",
            )?,
            purged_index: IntGauge::new(
                "sluice_raft_purged_index",
                "Log entries purged behind the snapshot (log disk use is bounded by this)",
            )?,
            members: IntGauge::new("sluice_raft_members", "Members of the Raft cluster")?,
            follower_lag: IntGaugeVec::new(
                Opts::new(
                    "sluice_raft_follower_lag_entries",
                    "Log entries the leader has that a follower does not (leader only)",
                ),
                &["node_id"],
            )?,
        };
        let engine = GaugeVec::new(
            Opts::new("sluice_engine_stat", "Storage engine statistics"),
            &["name"],
        )?;
        let topics = TopicMetrics {
            appended_records: IntCounter::new(
                "sluice_topic_appended_records_total",
                "Records appended to topics through this node (acknowledged)",
            )?,
            appended_bytes: IntCounter::new(
                "sluice_topic_appended_bytes_total",
                "Bytes of record batches appended through this node (after compression)",
            )?,
            delivered_records: IntCounter::new(
                "sluice_topic_delivered_records_total",
                "Records delivered to subscribers by FETCH and SUBSCRIBE on this node",
            )?,
            retention_deletes: IntCounter::new(
                "sluice_topic_retention_deletes_total",
                "Retention commands this node proposed as leader",
            )?,
            subscriptions: IntGauge::new(
                "sluice_topic_subscriptions",
                "Subscription cursors and streaming SUBSCRIBEs open on this node",
            )?,
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    "sluice_consumer_lag_records",
                    "Records appended and not yet committed, per consumer group and partition",
                ),
                &["group", "topic", "partition"],
            )?,
        };
        let transactions = TransactionGauges {
            open: IntGauge::new(
                "sluice_transactions_open",
                "Transaction blocks open now (each holds a snapshot)",
            )?,
            oldest_seconds: Gauge::new(
                "sluice_transaction_oldest_seconds",
                "Age of the oldest open transaction block (0 when none)",
            )?,
            committed: IntCounter::new(
                "sluice_transactions_committed_total",
                "Transaction blocks committed (explicit and implicit)",
            )?,
            rolled_back: IntCounter::new(
                "sluice_transactions_rolled_back_total",
                "Transaction blocks rolled back, failed, refused or abandoned",
            )?,
            conflicts: IntCounter::new(
                "sluice_transaction_conflicts_total",
                "Commits refused with 40001 by a conflicting commit",
            )?,
        };

        registry.register(Box::new(connections_opened.clone()))?;
        registry.register(Box::new(connections_current.clone()))?;
        registry.register(Box::new(statements.clone()))?;
        registry.register(Box::new(statement_errors.clone()))?;
        registry.register(Box::new(statement_seconds.clone()))?;
        registry.register(Box::new(rows_returned.clone()))?;
        registry.register(Box::new(copy_rows_in.clone()))?;
        for gauge in [
            &raft.term,
            &raft.applied_index,
            &raft.committed_index,
            &raft.last_log_index,
            &raft.is_leader,
            &raft.leader_changes,
            &raft.proposals,
            &raft.proposal_failures,
            &raft.forwarded_proposals,
            &raft.snapshots_installed,
            &raft.leader_loss_elections,
            &raft.read_barriers,
            &raft.sole_voter_reads,
            &raft.snapshot_index,
            &raft.purged_index,
            &raft.members,
        ] {
            registry.register(Box::new(gauge.clone()))?;
        }
        registry.register(Box::new(raft.follower_lag.clone()))?;
        registry.register(Box::new(transactions.open.clone()))?;
        registry.register(Box::new(transactions.oldest_seconds.clone()))?;
        for counter in [
            &transactions.committed,
            &transactions.rolled_back,
            &transactions.conflicts,
        ] {
            registry.register(Box::new(counter.clone()))?;
        }
        registry.register(Box::new(engine.clone()))?;
        for counter in [
            &topics.appended_records,
            &topics.appended_bytes,
            &topics.delivered_records,
            &topics.retention_deletes,
        ] {
            registry.register(Box::new(counter.clone()))?;
        }
        registry.register(Box::new(topics.subscriptions.clone()))?;
        registry.register(Box::new(topics.consumer_lag.clone()))?;
        // Show every kind from the first scrape, not only after first use.
        for kind in KINDS {
            statements.with_label_values(&[kind]);
        }
        Ok(Metrics {
            registry,
            connections_opened,
            connections_current,
            statements,
            statement_errors,
            statement_seconds,
            rows_returned,
            copy_rows_in,
            raft,
            transactions,
            topics,
            engine,
            rendering: std::sync::Mutex::new(()),
        })
    }

    pub(crate) fn statement_done(&self, kind: &str, elapsed: Duration) {
        self.statements.with_label_values(&[kind]).inc();
        self.statement_seconds
            .with_label_values(&[kind])
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn error(&self, class: &str) {
        self.statement_errors.with_label_values(&[class]).inc();
    }

    /// The Prometheus text exposition, with Raft and engine gauges as of now.
    pub(crate) fn render(&self, db: &Database) -> prometheus::Result<String> {
        let _one_at_a_time = self
            .rendering
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let raft = db.raft();
        let status = raft.status();
        let gauges = &self.raft;
        gauges.term.set(saturate(status.term));
        gauges.applied_index.set(saturate(status.applied_index));
        gauges.committed_index.set(saturate(status.committed_index));
        gauges.last_log_index.set(saturate(status.last_log_index));
        gauges
            .is_leader
            .set(i64::from(status.role == sluice_raftstore::Role::Leader));
        gauges.leader_changes.set(saturate(status.leader_changes));
        gauges.proposals.set(saturate(status.proposals));
        gauges
            .proposal_failures
            .set(saturate(status.proposal_failures));
        gauges
            .forwarded_proposals
            .set(saturate(status.forwarded_proposals));
        gauges
            .snapshots_installed
            .set(saturate(status.snapshots_installed));
        gauges
            .leader_loss_elections
            .set(saturate(status.leader_loss_elections));
        gauges.read_barriers.set(saturate(status.read_barriers));
        gauges
            .sole_voter_reads
            .set(saturate(status.sole_voter_reads));
        gauges.snapshot_index.set(saturate(status.snapshot_index));
        gauges.purged_index.set(saturate(status.purged_index));
        gauges.members.set(saturate(raft.members().len() as u64));
        // Only the leader knows its followers' progress; others show none.
        gauges.follower_lag.reset();
        for follower in &status.followers {
            gauges
                .follower_lag
                .with_label_values(&[follower.node_id.to_string().as_str()])
                .set(saturate(
                    status.last_log_index.saturating_sub(follower.matched_index),
                ));
        }
        let stats = db.transaction_stats();
        let txn = &self.transactions;
        txn.open.set(saturate(stats.open));
        txn.oldest_seconds.set(stats.oldest_age.as_secs_f64());
        // The planner counts; the counters catch up with it at each scrape.
        for (counter, total) in [
            (&txn.committed, stats.committed),
            (&txn.rolled_back, stats.rolled_back),
            (&txn.conflicts, stats.conflicts),
        ] {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        let topic_stats = db.topic_stats();
        let topics = &self.topics;
        for (counter, total) in [
            (&topics.appended_records, topic_stats.appended_records),
            (&topics.appended_bytes, topic_stats.appended_bytes),
            (&topics.delivered_records, topic_stats.delivered_records),
            (&topics.retention_deletes, topic_stats.retention_deletes),
        ] {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        topics
            .subscriptions
            .set(saturate(topic_stats.open_subscriptions));
        topics.consumer_lag.reset();
        match db.consumer_lag() {
            Ok(rows) => {
                for row in rows {
                    topics
                        .consumer_lag
                        .with_label_values(&[
                            row.group.as_str(),
                            row.topic.as_str(),
                            row.partition.to_string().as_str(),
                        ])
                        .set(saturate(row.lag));
                }
            }
            Err(e) => tracing::warn!(error = %e, "consumer lag for metrics"),
        }
        for (name, value) in raft.engine().stats() {
            self.engine.with_label_values(&[name.as_str()]).set(value);
        }
        let mut out = String::new();
        TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}

fn saturate(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The first few characters of a statement's SQL: enough for its kind,
/// without formatting a large statement whole (formatting stops early).
pub(crate) fn leading_text(statement: &impl fmt::Display) -> String {
    struct Prefix(String);
    impl fmt::Write for Prefix {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for c in s.chars() {
                if self.0.len() >= PREFIX_LEN {
                    return Err(fmt::Error);
                }
                self.0.push(c);
            }
            Ok(())
        }
    }
    let mut prefix = Prefix(String::new());
    // Err only means the prefix is full.
    let _ = fmt::write(&mut prefix, format_args!("{statement}"));
    prefix.0
}

const PREFIX_LEN: usize = 32;

/// The kind of a statement for the counters, from its leading keyword.
pub(crate) fn statement_kind(sql: &str) -> &'static str {
    let word = sql
        .trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    match word.to_ascii_lowercase().as_str() {
        "select" | "with" | "values" | "table" | "show" | "explain" => "select",
        "insert" | "copy" => "insert",
        "update" => "update",
        "delete" => "delete",
        "create" | "drop" | "alter" | "truncate" | "comment" => "ddl",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_text_stops_early() {
        let long = format!("INSERT INTO t VALUES {}", "(1), ".repeat(1000));
        let prefix = leading_text(&long);
        assert_eq!(prefix.len(), PREFIX_LEN);
        assert_eq!(statement_kind(&prefix), "insert");
        assert_eq!(leading_text(&"SHOW x"), "SHOW x");
    }

    #[test]
    fn kinds_from_leading_keyword() {
        assert_eq!(statement_kind("SELECT 1"), "select");
        assert_eq!(statement_kind("  (select 1)"), "select");
        assert_eq!(statement_kind("insert into t values (1)"), "insert");
        assert_eq!(statement_kind("CREATE TABLE t (a int)"), "ddl");
        assert_eq!(statement_kind("BEGIN"), "other");
    }

    #[test]
    fn counters_appear_in_the_exposition() {
        let metrics = Metrics::new();
        metrics.statement_done("select", Duration::from_millis(3));
        metrics.error("42");
        metrics.rows_returned.inc_by(5);
        let mut out = String::new();
        TextEncoder::new()
            .encode_utf8(&metrics.registry.gather(), &mut out)
            .unwrap();
        assert!(
            out.contains("sluice_statements_total{kind=\"select\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("sluice_statements_total{kind=\"ddl\"} 0"),
            "{out}"
        );
        assert!(
            out.contains("sluice_statement_errors_total{class=\"42\"} 1"),
            "{out}"
        );
        assert!(out.contains("sluice_rows_returned_total 5"), "{out}");
        assert!(
            out.contains("sluice_statement_duration_seconds_bucket"),
            "{out}"
        );
    }
}
