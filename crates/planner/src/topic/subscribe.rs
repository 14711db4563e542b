//! Topic statements: `SUBSCRIBE`, `DECLARE … CURSOR FOR SUBSCRIBE`,
//! `FETCH`, `CLOSE`, `COMMIT OFFSETS`, and topic DDL's dispatch.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::sqlparser::ast;
use sluice_engine::{Snapshot, Value};
use sluice_stream::{topic as log, Cursor};

use super::records::{record_schema, records_batch};
use super::stats::SubscriptionGuard;
use crate::api::{CommandTag, CopyOptions, Output};
use crate::catalog::TableDef;
use crate::context::Context;
use crate::error::{sqlstate, stream_error, Error, Result};
use crate::resolve::Access;
use crate::stream_sql::{Start, StreamStatement, Subscribe, UpTo};
use crate::types::SqlType;

/// Records a streaming SUBSCRIBE reads per batch it sends.
const STREAM_BATCH: usize = 1024;

/// How often a streaming SUBSCRIBE looks for partitions added by ALTER
/// TOPIC while it waits (records themselves wake it at once).
const PARTITION_CHECK: Duration = Duration::from_secs(1);

// Counters

/// A planned topic statement.
pub(crate) enum StreamPlan {
    CreateTopic(Box<ast::CreateTable>),
    AlterTopic {
        name: ast::ObjectName,
        options: Vec<(String, String)>,
    },
    DropTopic {
        names: Vec<ast::ObjectName>,
        if_exists: bool,
    },
    Subscribe {
        table: Arc<TableDef>,
        spec: Subscribe,
        copy: Option<CopyOptions>,
    },
    Declare {
        cursor: String,
        table: Arc<TableDef>,
        spec: Subscribe,
    },
    Fetch {
        cursor: String,
        count: Option<u64>,
        timeout: Option<Duration>,
    },
    Close(Option<String>),
    CommitOffsets(String),
}

/// A cursor declared `FOR SUBSCRIBE`, kept by its session.
pub(crate) struct TopicCursor {
    table: Arc<TableDef>,
    schema: SchemaRef,
    cursor: Cursor,
    spec: Subscribe,
    /// Set for a cursor of a consumer group.
    member: Option<crate::offsets::GroupMember>,
    counted: SubscriptionGuard,
}

pub(crate) type Cursors = HashMap<String, TopicCursor>;

pub(crate) async fn prepare(
    session: &Context,
    cursors: &Cursors,
    statement: &StreamStatement,
) -> Result<(StreamPlan, Option<SchemaRef>)> {
    let plan = match statement {
        StreamStatement::CreateTopic(create) => StreamPlan::CreateTopic(create.clone()),
        StreamStatement::AlterTopic { name, options } => StreamPlan::AlterTopic {
            name: name.clone(),
            options: options.clone(),
        },
        StreamStatement::DropTopic { names, if_exists } => StreamPlan::DropTopic {
            names: names.clone(),
            if_exists: *if_exists,
        },
        StreamStatement::Subscribe(spec) => {
            let table = session.relation(&spec.topic, Access::Subscribe)?;
            let schema = record_schema(&table);
            return Ok((
                StreamPlan::Subscribe {
                    table,
                    spec: spec.clone(),
                    copy: None,
                },
                Some(schema),
            ));
        }
        StreamStatement::CopySubscribe { subscribe, options } => {
            let table = session.relation(&subscribe.topic, Access::Subscribe)?;
            StreamPlan::Subscribe {
                table,
                spec: subscribe.clone(),
                copy: Some(crate::copy::options_from_pairs(options)?),
            }
        }
        StreamStatement::Declare { cursor, subscribe } => StreamPlan::Declare {
            cursor: cursor.clone(),
            table: session.relation(&subscribe.topic, Access::Subscribe)?,
            spec: subscribe.clone(),
        },
        StreamStatement::Fetch {
            cursor,
            count,
            timeout,
        } => {
            let schema = cursors
                .get(cursor)
                .map(|c| c.schema.clone())
                .ok_or_else(|| no_cursor(cursor))?;
            return Ok((
                StreamPlan::Fetch {
                    cursor: cursor.clone(),
                    count: *count,
                    timeout: *timeout,
                },
                Some(schema),
            ));
        }
        StreamStatement::Close(cursor) => StreamPlan::Close(cursor.clone()),
        StreamStatement::CommitOffsets(cursor) => StreamPlan::CommitOffsets(cursor.clone()),
    };
    Ok((plan, None))
}

fn no_cursor(name: &str) -> Error {
    Error::new(
        sqlstate::INVALID_CURSOR_NAME,
        format!("cursor \"{name}\" does not exist"),
    )
}

impl StreamPlan {
    /// CREATE, ALTER and DROP TOPIC: DDL, refused inside a transaction
    /// block by the session like any other.
    pub(crate) fn is_ddl(&self) -> bool {
        matches!(
            self,
            StreamPlan::CreateTopic(_)
                | StreamPlan::AlterTopic { .. }
                | StreamPlan::DropTopic { .. }
        )
    }
}

/// Runs a topic statement; `cursors` are the session's subscription cursors.
pub(crate) async fn execute(
    session: &mut Context,
    cursors: &mut Cursors,
    plan: &StreamPlan,
) -> Result<Output> {
    match plan {
        StreamPlan::CreateTopic(create) => super::ddl::create_topic(session, create).await,
        StreamPlan::AlterTopic { name, options } => {
            super::ddl::alter_topic(session, name, options).await
        }
        StreamPlan::DropTopic { names, if_exists } => {
            super::ddl::drop_topics(session, names, *if_exists).await
        }
        StreamPlan::Subscribe { table, spec, copy } => {
            if spec.group.is_some() {
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "a streaming SUBSCRIBE cannot join a consumer group",
                )
                .with_detail("Groups commit offsets with COMMIT OFFSETS FOR a cursor: use DECLARE … CURSOR FOR SUBSCRIBE … GROUP and FETCH."));
            }
            let (cursor, _) = open_cursor(session, table, spec).await?;
            let schema = record_schema(table);
            let stream = subscription_stream(
                session.db.clone(),
                table.clone(),
                schema.clone(),
                cursor,
                SubscriptionGuard::new(&session.db.topics),
            );
            Ok(match copy {
                None => Output::Rows {
                    schema,
                    stream,
                    verb: "SUBSCRIBE",
                },
                Some(options) => Output::CopyOut {
                    schema,
                    stream,
                    options: options.clone(),
                },
            })
        }
        StreamPlan::Declare {
            cursor,
            table,
            spec,
        } => {
            if cursors.contains_key(cursor) {
                return Err(Error::new(
                    sqlstate::DUPLICATE_CURSOR,
                    format!("cursor \"{cursor}\" already exists"),
                ));
            }
            let (opened, member) = open_cursor(session, table, spec).await?;
            cursors.insert(
                cursor.clone(),
                TopicCursor {
                    table: table.clone(),
                    schema: record_schema(table),
                    cursor: opened,
                    spec: spec.clone(),
                    member,
                    counted: SubscriptionGuard::new(&session.db.topics),
                },
            );
            Ok(Output::Command(CommandTag::new("DECLARE CURSOR")))
        }
        StreamPlan::Fetch {
            cursor,
            count,
            timeout,
        } => {
            let timeout = match timeout {
                Some(t) => *t,
                None => session.fetch_timeout(),
            };
            rebalance_if_due(session, cursors, cursor).await?;
            let raft = session.db.raft().clone();
            let open = cursors.get_mut(cursor).ok_or_else(|| no_cursor(cursor))?;
            let max = count.map_or(usize::MAX, |n| n.min(usize::MAX as u64) as usize);
            let records = open
                .cursor
                .fetch(|| raft.local_snapshot(), max, timeout)
                .await
                .map_err(stream_error)?;
            open.counted.delivered(records.len());
            let batch = records_batch(&open.table, &open.schema, &records)?;
            let schema = open.schema.clone();
            let stream = datafusion::physical_plan::memory::MemoryStream::try_new(
                vec![batch],
                schema.clone(),
                None,
            )
            .map_err(crate::error::from_datafusion)?;
            Ok(Output::Rows {
                schema,
                stream: Box::pin(stream),
                verb: "FETCH",
            })
        }
        StreamPlan::Close(None) => {
            let db = session.db.clone();
            for (_, open) in cursors.drain() {
                open.close(&db).await;
            }
            Ok(Output::Command(CommandTag::new("CLOSE CURSOR ALL")))
        }
        StreamPlan::Close(Some(cursor)) => {
            let open = cursors.remove(cursor).ok_or_else(|| no_cursor(cursor))?;
            open.close(&session.db).await;
            Ok(Output::Command(CommandTag::new("CLOSE CURSOR")))
        }
        StreamPlan::CommitOffsets(cursor) => {
            let open = cursors.get(cursor).ok_or_else(|| no_cursor(cursor))?;
            let group = open.group().ok_or_else(|| {
                Error::new(
                    sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!("cursor \"{cursor}\" has no consumer group to commit offsets for"),
                )
                .with_detail("Declare it FOR SUBSCRIBE … GROUP 'name'.")
            })?;
            crate::offsets::commit(session, group, open.table(), open.positions()).await
        }
    }
}

impl TopicCursor {
    pub(crate) fn group(&self) -> Option<&str> {
        self.spec.group.as_deref()
    }

    /// Leaves the group, if any, in the background (the end of the session).
    pub(crate) fn leave(&mut self, db: &Arc<crate::Database>) {
        if let Some(member) = self.member.take() {
            member.leave(db);
        }
    }

    /// CLOSE: leaves the group, if any, before the statement completes.
    async fn close(mut self, db: &Arc<crate::Database>) {
        if let Some(member) = self.member.take() {
            member.leave_now(db).await;
        }
    }

    pub(crate) fn table(&self) -> &Arc<TableDef> {
        &self.table
    }

    pub(crate) fn positions(&self) -> &BTreeMap<u32, u64> {
        self.cursor.positions()
    }
}

/// A group cursor's heartbeat and, with it, the partitions it should own
/// now: released ones are dropped (their uncommitted records go to the new
/// owner, at least once), acquired ones start at the group's committed
/// offsets.
async fn rebalance_if_due(session: &Context, cursors: &mut Cursors, name: &str) -> Result<()> {
    let Some(mut open) = cursors.remove(name) else {
        return Ok(());
    };
    let result = rebalance(session, &mut open).await;
    cursors.insert(name.to_string(), open);
    result
}

async fn rebalance(session: &Context, open: &mut TopicCursor) -> Result<()> {
    let Some(member) = &mut open.member else {
        follow_new_partitions(&session.db, &mut open.table, &mut open.cursor)?;
        return Ok(());
    };
    if !member.heartbeat_due() {
        return Ok(());
    }
    // Partitions added by ALTER TOPIC since DECLARE are shared out too.
    let snapshot = session.db.raft().local_snapshot();
    if let Some(def) = current_table(&session.db, &*snapshot, open.table.id)? {
        open.table = def;
    }
    let partitions = open.table.topic.as_ref().map_or(1, |t| t.partitions);
    let assigned = member.rebalance(&session.db, partitions).await?;
    let owned: Vec<u32> = open.cursor.positions().keys().copied().collect();
    for partition in &owned {
        if !assigned.contains(partition) {
            open.cursor.release(*partition);
        }
    }
    let acquired: Vec<u32> = assigned
        .iter()
        .copied()
        .filter(|p| !owned.contains(p))
        .collect();
    if !acquired.is_empty() {
        let positions = start_positions(session, &open.table, &open.spec, &acquired).await?;
        for (partition, offset) in positions {
            open.cursor
                .acquire(session.db.raft().log_watchers(), partition, offset);
        }
    }
    Ok(())
}

/// The table `id` as the catalog defines it now (refreshed from `snapshot`
/// if that holds a newer catalog version); `None` once it is dropped.
fn current_table(
    db: &crate::Database,
    snapshot: &dyn Snapshot,
    id: u64,
) -> Result<Option<Arc<TableDef>>> {
    let catalog = db.catalog.refresh(snapshot)?;
    Ok(catalog.table_by_id(id).cloned())
}

/// A cursor over every partition of a topic also reads the partitions that
/// ALTER TOPIC added since it last looked (the catalog, refreshed from the
/// local replica if a newer version was applied). Every record of such a
/// partition was appended after the cursor was declared, so it starts at
/// the partition's first retained record, whatever the FROM clause said.
fn follow_new_partitions(
    db: &crate::Database,
    table: &mut Arc<TableDef>,
    cursor: &mut Cursor,
) -> Result<()> {
    // A bounded cursor's limits were fixed with the partitions it opened on.
    if cursor.is_bounded() {
        return Ok(());
    }
    let snapshot = db.raft().local_snapshot();
    let Some(current) = current_table(db, &*snapshot, table.id)? else {
        // Dropped: the next read finds nothing, as for any dropped topic.
        return Ok(());
    };
    let partitions = current.topic.as_ref().map_or(1, |t| t.partitions);
    let known = cursor.positions().len() as u32;
    if partitions > known {
        for partition in known..partitions {
            let bounds = log::bounds(&*snapshot, table.id, partition).map_err(stream_error)?;
            cursor.acquire(db.raft().log_watchers(), partition, bounds.start);
        }
    }
    *table = current;
    Ok(())
}

/// Start positions of `partitions`, checked against what is retained. For
/// a group, a partition's committed offset wins; the FROM clause (default
/// BEGINNING) places partitions the group has not committed yet.
async fn start_positions(
    session: &Context,
    table: &Arc<TableDef>,
    spec: &Subscribe,
    partitions: &[u32],
) -> Result<BTreeMap<u32, u64>> {
    let snapshot = session.db.raft().local_snapshot();
    let committed = match &spec.group {
        Some(group) => crate::offsets::committed(session, group, table).await?,
        None => BTreeMap::new(),
    };
    let timestamp = match &spec.start {
        Start::Timestamp(text) => {
            let quoted = format!("'{}'", text.replace('\'', "''"));
            match crate::ddl::evaluate_constant(session, table, &quoted, SqlType::TimestampTz)
                .await?
            {
                Value::TimestampTz(us) => Some(us),
                _ => {
                    return Err(Error::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!("invalid timestamp \"{text}\""),
                    ))
                }
            }
        }
        _ => None,
    };
    let mut positions = BTreeMap::new();
    for &partition in partitions {
        let bounds = log::bounds(&*snapshot, table.id, partition).map_err(stream_error)?;
        let requested = match (committed.get(&partition), &spec.start) {
            (Some(next), _) => *next,
            (None, Start::Beginning | Start::Committed) => bounds.start,
            (None, Start::End) => bounds.end,
            (None, Start::Offset(n)) => *n,
            (None, Start::Offsets(listed)) => {
                listed.get(&partition).copied().unwrap_or(bounds.start)
            }
            (None, Start::Timestamp(_)) => {
                log::offset_at_time(&*snapshot, table.id, partition, timestamp.unwrap_or(0))
                    .map_err(stream_error)?
            }
        };
        let position = if requested < bounds.start {
            if !spec.earliest {
                return Err(stream_error(sluice_stream::Error::BelowRetention {
                    partition,
                    requested,
                    start: bounds.start,
                }));
            }
            bounds.start
        } else if requested > bounds.end {
            return Err(Error::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!(
                    "offset {requested} is beyond the end of partition {partition} (next offset {})",
                    bounds.end
                ),
            ));
        } else {
            requested
        };
        positions.insert(partition, position);
    }
    Ok(positions)
}

/// A cursor over every partition, or (with a group) over the partitions
/// the group assigns to a new member, which it joins.
async fn open_cursor(
    session: &Context,
    table: &Arc<TableDef>,
    spec: &Subscribe,
) -> Result<(Cursor, Option<crate::offsets::GroupMember>)> {
    let partitions = table.topic.as_ref().map_or(1, |t| t.partitions);
    if let Start::Offsets(listed) = &spec.start {
        if let Some(missing) = listed.keys().find(|&&p| p >= partitions) {
            return Err(Error::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!(
                    "topic \"{}\" has no partition {missing} (it has {partitions})",
                    table.name
                ),
            ));
        }
    }
    let (assigned, member) = match &spec.group {
        None => ((0..partitions).collect::<Vec<u32>>(), None),
        Some(group) => {
            let mut member = crate::offsets::GroupMember::new(&session.db, group, table)?;
            let assigned = member.rebalance(&session.db, partitions).await?;
            (assigned, Some(member))
        }
    };
    let positions = match start_positions(session, table, spec, &assigned).await {
        Ok(positions) => positions,
        Err(e) => {
            if let Some(member) = member {
                member.leave_now(&session.db).await;
            }
            return Err(e);
        }
    };
    let mut cursor = Cursor::new(session.db.raft().log_watchers(), table.id, positions);
    if let Some(up_to) = spec.up_to {
        // Limits for every partition, not only the assigned ones: a group
        // member may be handed others later.
        let snapshot = session.db.raft().local_snapshot();
        let mut limits = BTreeMap::new();
        for partition in 0..partitions {
            let limit = match up_to {
                UpTo::End => {
                    log::bounds(&*snapshot, table.id, partition)
                        .map_err(stream_error)?
                        .end
                }
                UpTo::Offset(n) => n,
            };
            limits.insert(partition, limit);
        }
        cursor = cursor.bounded(limits);
    }
    Ok((cursor, member))
}

/// A stream of record batches, each sent as soon as it is read; it ends
/// when a bounded cursor (UP TO) is finished, otherwise only when the
/// client cancels or disconnects (the stream is dropped). Memory: one
/// batch of at most [`STREAM_BATCH`] records. Appends wake it at once;
/// partitions added by ALTER TOPIC are looked for every
/// [`PARTITION_CHECK`], between batches or waits, not at every batch.
fn subscription_stream(
    db: Arc<crate::Database>,
    table: Arc<TableDef>,
    schema: SchemaRef,
    cursor: Cursor,
    counted: SubscriptionGuard,
) -> SendableRecordBatchStream {
    let stream_schema = schema.clone();
    // The cursor was just opened from the current catalog: the first look
    // for added partitions is due one PARTITION_CHECK from now.
    let state = Some((db, table, schema, cursor, counted, Instant::now()));
    let batches = futures::stream::unfold(state, |state| async move {
        let (db, mut table, schema, mut cursor, counted, mut looked) = state?;
        loop {
            // UP TO reached: the stream (and a COPY of it) ends.
            if cursor.finished() {
                return None;
            }
            if looked.elapsed() >= PARTITION_CHECK {
                if let Err(e) = follow_new_partitions(&db, &mut table, &mut cursor) {
                    return Some((Err(DataFusionError::External(Box::new(e))), None));
                }
                looked = Instant::now();
            }
            let raft = db.raft();
            let fetched = cursor
                .fetch(|| raft.local_snapshot(), STREAM_BATCH, PARTITION_CHECK)
                .await;
            let batch = match fetched {
                Ok(records) if records.is_empty() => continue,
                Ok(records) => {
                    counted.delivered(records.len());
                    records_batch(&table, &schema, &records)
                }
                // Shutdown or a bad batch: the error ends the stream.
                Err(e) => {
                    let e = DataFusionError::External(Box::new(stream_error(e)));
                    return Some((Err(e), None));
                }
            };
            let item = batch.map_err(|e| DataFusionError::External(Box::new(e)));
            return Some((item, Some((db, table, schema, cursor, counted, looked))));
        }
    });
    Box::pin(RecordBatchStreamAdapter::new(stream_schema, batches))
}

#[cfg(test)]
mod tests {
    use crate::testing::{database, exec, rows, run, sqlstate_of};

    #[tokio::test]
    async fn a_cursor_fetches_appended_records_and_a_group_commits_its_offsets() {
        let test = database().await;
        let mut s = test.session();
        run(
            &mut s,
            "CREATE TOPIC events (id bigint, what text) WITH (partitions = 1); \
             INSERT INTO events VALUES (1, 'a'), (2, 'b'), (3, 'c')",
        )
        .await
        .unwrap();
        exec(&mut s, "DECLARE c CURSOR FOR SUBSCRIBE events GROUP 'g'").await;
        let fetched = rows(&mut s, "FETCH 2 FROM c WITH (timeout = '0s')").await;
        let offsets_and_ids: Vec<(&str, &str)> = fetched
            .iter()
            .map(|row| (row[1].as_str(), row[3].as_str()))
            .collect();
        assert_eq!(offsets_and_ids, [("0", "1"), ("1", "2")]);
        exec(&mut s, "COMMIT OFFSETS FOR c").await;
        assert_eq!(
            rows(
                &mut s,
                "SELECT group_name, partition, next_offset FROM sluice_catalog.consumer_offsets"
            )
            .await,
            vec![vec!["g".to_string(), "0".to_string(), "2".to_string()]]
        );
        exec(&mut s, "CLOSE c").await;
        assert_eq!(sqlstate_of(&mut s, "FETCH 1 FROM c").await, "34000");
        // A new member of the group starts where the group committed.
        exec(&mut s, "DECLARE d CURSOR FOR SUBSCRIBE events GROUP 'g'").await;
        let rest = rows(&mut s, "FETCH ALL FROM d WITH (timeout = '0s')").await;
        assert_eq!(
            rest.iter().map(|row| row[3].as_str()).collect::<Vec<_>>(),
            ["3"]
        );
        exec(&mut s, "DECLARE plain CURSOR FOR SUBSCRIBE events").await;
        assert_eq!(
            sqlstate_of(&mut s, "COMMIT OFFSETS FOR plain").await,
            "55000"
        );
        assert_eq!(sqlstate_of(&mut s, "SUBSCRIBE nosuch").await, "42P01");
    }

    #[tokio::test]
    async fn a_topic_created_in_a_block_takes_appends_that_commit_with_it() {
        let test = database().await;
        let mut s = test.session();
        exec(
            &mut s,
            "BEGIN; CREATE TOPIC t (v text) WITH (partitions = 2); \
             INSERT INTO t VALUES ('a'), ('b'), ('c'); COMMIT",
        )
        .await;
        exec(&mut s, "DECLARE c CURSOR FOR SUBSCRIBE t").await;
        let mut values: Vec<String> = rows(&mut s, "FETCH ALL FROM c WITH (timeout = '0s')")
            .await
            .into_iter()
            .map(|row| row[3].clone())
            .collect();
        values.sort();
        assert_eq!(values, ["a", "b", "c"]);
        // Rolled back, neither the topic nor its records exist.
        exec(
            &mut s,
            "BEGIN; CREATE TOPIC u (v text); INSERT INTO u VALUES ('x'); ROLLBACK",
        )
        .await;
        assert_eq!(sqlstate_of(&mut s, "SELECT * FROM u").await, "42P01");
    }
}
