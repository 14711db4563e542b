//! Consumer offsets and groups.
//!
//! Offsets: `sluice_catalog.consumer_offsets`, a replicated SQL table like
//! any other (readable, and writable to seek or reset), keyed by
//! `(group_name, topic, partition)`. Members: `sluice_catalog.consumer_members`,
//! one row per cursor of a group with its last heartbeat.
//!
//! Both are built in: their definitions are not stored but added to every
//! loaded catalog under reserved ids, and their rows live under those ids
//! like any table's rows. `COMMIT OFFSETS FOR c` writes the cursor's positions
//! through the ordinary DML path, so inside `BEGIN … COMMIT` they commit
//! atomically with the consumer's own writes (exactly-once), and a
//! concurrent commit of the same group's partition fails one of the two
//! with 40001.
//!
//! Groups: a group cursor heartbeats (writes its member row) at most every
//! [`HEARTBEAT_EVERY`], at a FETCH, and then computes its partitions from
//! the members whose heartbeat is younger than [`SESSION_TIMEOUT`]: members
//! sorted by id, partition `p` to member `p mod n`. Every member computes
//! the same assignment from the same table, so no coordinator is needed; a
//! member that joins or leaves (its row is deleted: by CLOSE before it
//! completes, at the end of a session in the background) or stops
//! heartbeating is accounted for by the others at their next heartbeat.
//! During that window two members may read the same partition; delivery is
//! at-least-once, and offsets committed in a transaction make processing
//! exactly-once all the same.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_engine::{keycode, KeyRange, Keyspace, Value};
use sluice_raftstore::{Command, Mutation};

use crate::api::{CommandTag, Output};
use crate::catalog::{
    members_table, offsets_table, TableDef, OFFSETS_TABLE, SLUICE_SCHEMA as SCHEMA_NAME,
};
use crate::context::Context;
use crate::error::{sqlstate, storage_error, Error, Result};
use crate::topic::now_micros;

/// A group cursor heartbeats at most this often (at a FETCH).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A member without a heartbeat for this long has left its group.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Distinguishes the cursors of one node: with the node id and its start
/// time, a member id is unique across the cluster and restarts.
static NEXT_MEMBER: AtomicU64 = AtomicU64::new(1);

/// One cursor's membership of a consumer group.
pub(crate) struct GroupMember {
    group: String,
    topic: String,
    id: String,
    last_heartbeat: Option<Instant>,
}

impl GroupMember {
    pub(crate) fn new(db: &crate::Database, group: &str, topic: &TableDef) -> Result<Self> {
        if group.is_empty() {
            return Err(Error::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                "a consumer group name must not be empty",
            ));
        }
        static STARTED: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
        let started = *STARTED.get_or_init(now_micros);
        Ok(Self {
            group: group.to_string(),
            topic: topic_name(topic),
            id: format!(
                "{}-{started}-{}",
                db.raft().node_id(),
                NEXT_MEMBER.fetch_add(1, Ordering::Relaxed)
            ),
            last_heartbeat: None,
        })
    }

    pub(crate) fn heartbeat_due(&self) -> bool {
        self.last_heartbeat
            .is_none_or(|at| at.elapsed() >= HEARTBEAT_EVERY)
    }

    fn key(&self, def: &TableDef) -> Result<Vec<u8>> {
        def.key_for_pk(&[
            Value::Text(self.group.clone()),
            Value::Text(self.topic.clone()),
            Value::Text(self.id.clone()),
        ])
    }

    /// Heartbeats, then returns the partitions this member owns now.
    pub(crate) async fn rebalance(
        &mut self,
        db: &Arc<crate::Database>,
        partitions: u32,
    ) -> Result<Vec<u32>> {
        let def = members_table();
        let now = now_micros();
        let values = vec![
            Value::Text(self.group.clone()),
            Value::Text(self.topic.clone()),
            Value::Text(self.id.clone()),
            Value::Int64(db.raft().node_id() as i64),
            Value::TimestampTz(now),
        ];
        // Outside any transaction of the session: a heartbeat is not the
        // consumer's write and must not wait for (or roll back with) it.
        db.raft()
            .propose(Command {
                mutations: vec![Mutation::Put {
                    key: def.key_for_row(&values)?,
                    value: def.encode_row(&values)?,
                }],
            })
            .await
            .map_err(crate::error::raft_error)?;
        self.last_heartbeat = Some(Instant::now());
        let prefix = keycode::encode_key(
            &def.rows_prefix(),
            &[
                Value::Text(self.group.clone()),
                Value::Text(self.topic.clone()),
            ],
        )
        .map_err(|e| Error::new(sqlstate::INTERNAL_ERROR, e.to_string()))?;
        let snapshot = db.read_view().await?;
        let oldest = now - SESSION_TIMEOUT.as_micros() as i64;
        let kinds = def.kinds();
        let mut live: Vec<String> = Vec::new();
        for (_, bytes) in crate::catalog::scan_all(snapshot.as_ref(), &KeyRange::prefix(&prefix))? {
            let row = def.decode_row(&kinds, &bytes)?;
            if let (Some(Value::Text(id)), Some(Value::TimestampTz(at))) = (row.get(2), row.get(4))
            {
                if *at >= oldest || *id == self.id {
                    live.push(id.clone());
                }
            }
        }
        if !live.contains(&self.id) {
            live.push(self.id.clone());
        }
        live.sort();

        let me = live.iter().position(|id| *id == self.id).unwrap_or(0);
        Ok((0..partitions)
            .filter(|p| *p as usize % live.len() == me)
            .collect())
    }

    /// The command that deletes this member's row.
    fn leave_command(&self) -> Option<Command> {
        let key = self.key(&members_table()).ok()?;
        Some(Command {
            mutations: vec![Mutation::Delete { key }],
        })
    }

    /// Leaves the group before returning (CLOSE): a cursor declared next, by
    /// this session or another, shares the partitions without this member.
    /// A failed delete is only logged: the row expires after
    /// [`SESSION_TIMEOUT`].
    pub(crate) async fn leave_now(self, db: &Arc<crate::Database>) {
        if let Some(command) = self.leave_command() {
            if let Err(e) = db.raft().propose(command).await {
                tracing::debug!(error = %e, "leaving a consumer group");
            }
        }
    }

    /// Leaves the group in the background: the end of a session must not
    /// wait on Raft (a row left behind by a crash expires after
    /// [`SESSION_TIMEOUT`]).
    pub(crate) fn leave(self, db: &Arc<crate::Database>) {
        let Some(command) = self.leave_command() else {
            return;
        };
        let raft = db.raft().clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = raft.propose(command).await {
                    tracing::debug!(error = %e, "leaving a consumer group");
                }
            });
        }
    }
}

/// How a topic is named in the offsets table: unqualified in `public`.
pub fn topic_name(topic: &TableDef) -> String {
    if topic.schema == crate::catalog::DEFAULT_SCHEMA {
        topic.name.clone()
    } else {
        topic.qualified_name()
    }
}

fn offsets_def(session: &Context) -> Result<Arc<TableDef>> {
    session
        .db
        .catalog
        .current()
        .table(SCHEMA_NAME, OFFSETS_TABLE)
        .cloned()
        .ok_or_else(|| Error::new(sqlstate::INTERNAL_ERROR, "consumer_offsets is missing"))
}

/// The committed next offset of each partition of `topic` for `group`.
pub(crate) async fn committed(
    session: &Context,
    group: &str,
    topic: &TableDef,
) -> Result<BTreeMap<u32, u64>> {
    if group.is_empty() {
        return Err(Error::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            "a consumer group name must not be empty",
        ));
    }
    let def = offsets_def(session)?;
    let snapshot = session.read_view().await?;
    let kinds = def.kinds();
    let partitions = topic.topic.as_ref().map_or(1, |t| t.partitions);
    let name = topic_name(topic);
    let mut out = BTreeMap::new();
    for partition in 0..partitions {
        let key = def.key_for_pk(&[
            Value::Text(group.into()),
            Value::Text(name.clone()),
            Value::Int32(partition as i32),
        ])?;
        let Some(bytes) = snapshot.get(Keyspace::Data, &key).map_err(storage_error)? else {
            continue;
        };
        match def.decode_row(&kinds, &bytes)?.get(3) {
            Some(Value::Int64(next)) if *next >= 0 => {
                out.insert(partition, *next as u64);
            }
            other => {
                return Err(Error::new(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    format!(
                        "committed offset {other:?} of group \"{group}\", topic \"{name}\", partition {partition} is not a valid offset"
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// `COMMIT OFFSETS FOR c`: a group cursor's next offsets (`positions`, by
/// partition) become `group`'s committed offsets of `table`.
pub(crate) async fn commit(
    session: &Context,
    group: &str,
    table: &TableDef,
    positions: &BTreeMap<u32, u64>,
) -> Result<Output> {
    let topic = topic_name(table);
    let def = offsets_def(session)?;
    let now = now_micros();
    let mut mutations = Vec::with_capacity(positions.len());
    for (partition, next) in positions {
        let values = vec![
            Value::Text(group.to_string()),
            Value::Text(topic.clone()),
            Value::Int32(*partition as i32),
            Value::Int64(*next as i64),
            Value::TimestampTz(now),
        ];
        mutations.push(Mutation::Put {
            key: def.key_for_row(&values)?,
            value: def.encode_row(&values)?,
        });
    }
    session.propose(&def, mutations).await?;
    Ok(Output::Command(CommandTag::with_rows(
        "COMMIT OFFSETS",
        positions.len() as u64,
    )))
}

/// The offsets rows of a dropped topic, for every group.
pub(crate) fn rows_of_topic(
    snapshot: &dyn sluice_engine::Snapshot,
    topic: &TableDef,
) -> Result<Vec<Vec<u8>>> {
    let def = offsets_table();
    let kinds = def.kinds();
    let name = topic_name(topic);
    let mut keys = Vec::new();
    for (key, value) in crate::catalog::scan_all(snapshot, &def.rows_range())? {
        let row = def.decode_row(&kinds, &value)?;
        if matches!(row.get(1), Some(Value::Text(t)) if *t == name) {
            keys.push(key);
        }
    }
    Ok(keys)
}
