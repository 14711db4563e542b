//! The retention scheduler: drops records past a topic's time or size
//! limit, once a second on the leader.

use std::time::Duration;

use sluice_stream::topic as log;

use super::append::now_micros;
use crate::error::{stream_error, Result};

/// How often the leader applies topics' retention.
const RETENTION_EVERY: Duration = Duration::from_secs(1);

/// Size retention reads every batch header, so it runs every this many rounds.
const SIZE_RETENTION_ROUNDS: u64 = 30;

/// Runs retention on the leader until the database is gone.
pub(crate) fn spawn_retention(db: std::sync::Weak<crate::Database>) {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(RETENTION_EVERY);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round: u64 = 0;
        loop {
            interval.tick().await;
            let Some(db) = db.upgrade() else { return };
            round += 1;
            if db.raft().status().role != sluice_raftstore::Role::Leader {
                continue;
            }
            if let Err(e) = apply_retention(&db, round.is_multiple_of(SIZE_RETENTION_ROUNDS)).await
            {
                tracing::warn!(code = e.code, error = %e.message, "topic retention");
            }
        }
    });
}

async fn apply_retention(db: &crate::Database, check_size: bool) -> Result<()> {
    let snapshot = db.raft().local_snapshot();
    let catalog = db.catalog.refresh(snapshot.as_ref())?;
    let now = now_micros();
    for def in catalog.tables.values() {
        let Some(options) = &def.topic else { continue };
        if options.retention_ms.is_none() && options.retention_bytes.is_none() {
            continue;
        }
        for partition in 0..options.partitions {
            let deletes =
                log::retention_deletes(&*snapshot, def.id, partition, options, now, check_size)
                    .map_err(stream_error)?;
            if let Some(mutations) = deletes {
                db.raft()
                    .propose(sluice_raftstore::Command { mutations })
                    .await
                    .map_err(crate::error::raft_error)?;
                db.topics.retention_deleted();
            }
        }
    }
    Ok(())
}

// Records as rows
