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

use crate::api::{sqlstate, CommandTag, Error, Output, Result};
use crate::catalog::{storage_error, ColumnDef, TableDef};
use crate::session::Session;
use crate::system_views::SCHEMA_NAME;
use crate::topic::now_micros;
use crate::types::SqlType;

/// Ids at or above this are built-in tables; allocated ids count up from 1.
pub const BUILTIN_ID_BASE: u64 = 1 << 62;
pub const OFFSETS_TABLE_ID: u64 = BUILTIN_ID_BASE;
pub const OFFSETS_TABLE: &str = "consumer_offsets";
pub const MEMBERS_TABLE_ID: u64 = BUILTIN_ID_BASE + 1;
pub const MEMBERS_TABLE: &str = "consumer_members";
/// A group cursor heartbeats at most this often (at a FETCH).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A member without a heartbeat for this long has left its group.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

fn column(name: &str, ty: SqlType, nullable: bool) -> ColumnDef {
    ColumnDef {
        name: name.into(),
        ty,
        nullable,
        default: None,
        missing_value: None,
    }
}

/// The definition of `sluice_catalog.consumer_members`.
pub fn members_table() -> TableDef {
    TableDef {
        id: MEMBERS_TABLE_ID,
        schema: SCHEMA_NAME.into(),
        name: MEMBERS_TABLE.into(),
        columns: vec![
            column("group_name", SqlType::Text, false),
            column("topic", SqlType::Text, false),
            column("member_id", SqlType::Text, false),
            column("node_id", SqlType::Int8, false),
            column("heartbeat_at", SqlType::TimestampTz, false),
        ],
        primary_key: vec![0, 1, 2],
        indexes: Vec::new(),
        topic: None,
    }
}

/// Every built-in table.
pub fn builtin_tables() -> Vec<TableDef> {
    vec![offsets_table(), members_table()]
}

/// The definition of `sluice_catalog.consumer_offsets`.
pub fn offsets_table() -> TableDef {
    TableDef {
        id: OFFSETS_TABLE_ID,
        schema: SCHEMA_NAME.into(),
        name: OFFSETS_TABLE.into(),
        columns: vec![
            column("group_name", SqlType::Text, false),
            column("topic", SqlType::Text, false),
            column("partition", SqlType::Int4, false),
            column("next_offset", SqlType::Int8, false),
            column("committed_at", SqlType::TimestampTz, true),
        ],
        primary_key: vec![0, 1, 2],
        indexes: Vec::new(),
        topic: None,
    }
}

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
            .map_err(crate::dml::raft_error)?;
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

fn offsets_def(session: &Session) -> Result<Arc<TableDef>> {
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
    session: &Session,
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

/// `COMMIT OFFSETS FOR c`: the cursor's next offsets become its group's
/// committed offsets.
pub(crate) async fn commit(session: &mut Session, cursor: &str) -> Result<Output> {
    let open = session.cursors.get(cursor).ok_or_else(|| {
        Error::new(
            sqlstate::INVALID_CURSOR_NAME,
            format!("cursor \"{cursor}\" does not exist"),
        )
    })?;
    let group = open.group().map(str::to_string).ok_or_else(|| {
        Error::new(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("cursor \"{cursor}\" has no consumer group to commit offsets for"),
        )
        .with_detail("Declare it FOR SUBSCRIBE … GROUP 'name'.")
    })?;
    let topic = topic_name(open.table());
    let positions: Vec<(u32, u64)> = open.positions().iter().map(|(p, o)| (*p, *o)).collect();
    let def = offsets_def(session)?;
    let now = now_micros();
    let mut mutations = Vec::with_capacity(positions.len());
    for (partition, next) in &positions {
        let values = vec![
            Value::Text(group.clone()),
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
    crate::dml::propose(session, &def, mutations).await?;
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

/// One row of `sluice_catalog.consumer_lag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerLag {
    pub group: String,
    pub topic: String,
    pub partition: u32,
    /// The partition's next offset (one past its last record).
    pub end_offset: u64,
    pub committed_offset: u64,
    /// Records appended and not yet committed by the group.
    pub lag: u64,
}

/// Lag of every committed (group, topic, partition) in `snapshot`. Offsets
/// of topics that no longer exist are left out.
pub(crate) fn consumer_lag(
    snapshot: &dyn sluice_engine::Snapshot,
    catalog: &crate::catalog::CatalogState,
) -> Result<Vec<ConsumerLag>> {
    let def = offsets_table();
    let kinds = def.kinds();
    let mut out = Vec::new();
    for (_, bytes) in crate::catalog::scan_all(snapshot, &def.rows_range())? {
        let row = def.decode_row(&kinds, &bytes)?;
        let (
            Some(Value::Text(group)),
            Some(Value::Text(topic)),
            Some(Value::Int32(partition)),
            Some(Value::Int64(next)),
        ) = (row.first(), row.get(1), row.get(2), row.get(3))
        else {
            continue;
        };
        let (schema, name) = match topic.split_once('.') {
            Some((schema, name)) => (schema, name),
            None => (crate::catalog::DEFAULT_SCHEMA, topic.as_str()),
        };
        let Some(table) = catalog.table(schema, name).filter(|t| t.is_topic()) else {
            continue;
        };
        let Ok(partition) = u32::try_from(*partition) else {
            continue;
        };
        let end = sluice_stream::topic::bounds(snapshot, table.id, partition)
            .map_err(crate::topic::stream_error)?
            .end;
        let committed = u64::try_from(*next).unwrap_or(0);
        out.push(ConsumerLag {
            group: group.clone(),
            topic: topic.clone(),
            partition,
            end_offset: end,
            committed_offset: committed,
            lag: end.saturating_sub(committed),
        });
    }
    Ok(out)
}
