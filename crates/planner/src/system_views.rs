//! `sluice_catalog`: read-only views of the node and the cluster, computed
//! when a query scans them (so a cached plan always sees the present).
//!
//! - `sluice_catalog.nodes`: one row per member of the Raft cluster, with
//!   the role, indexes and lag each member reports about itself over the
//!   peer transport (members that do not answer within 300 ms are listed
//!   with `reachable = false` and NULL figures).
//! - `sluice_catalog.consumer_lag`: per consumer group and committed
//!   partition, the partition's end offset, the committed offset and the
//!   lag between them, read from the local replica.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemTable, SchemaProvider, Session as DfSession, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use sluice_engine::Value;
use sluice_raftstore::{MemberStatus, RaftNode};

use crate::catalog::offsets_table;
use crate::error::Result;

pub const SCHEMA_NAME: &str = crate::catalog::SLUICE_SCHEMA;

/// The `sluice_catalog` schema of one node.
pub struct SystemViews {
    raft: Arc<RaftNode>,
    catalog: Arc<crate::catalog::SharedCatalog>,
}

impl SystemViews {
    pub fn new(raft: Arc<RaftNode>, catalog: Arc<crate::catalog::SharedCatalog>) -> Self {
        Self { raft, catalog }
    }
}

const VIEWS: [&str; 2] = ["nodes", "consumer_lag"];

impl fmt::Debug for SystemViews {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SystemViews").finish_non_exhaustive()
    }
}

#[async_trait]
impl SchemaProvider for SystemViews {
    fn table_names(&self) -> Vec<String> {
        VIEWS.iter().map(|v| v.to_string()).collect()
    }

    async fn table(
        &self,
        name: &str,
    ) -> datafusion::common::Result<Option<Arc<dyn TableProvider>>> {
        Ok(match name {
            "nodes" => Some(Arc::new(NodesView {
                raft: self.raft.clone(),
            })),
            "consumer_lag" => Some(Arc::new(LagView {
                raft: self.raft.clone(),
                catalog: self.catalog.clone(),
            })),
            _ => None,
        })
    }

    fn table_exist(&self, name: &str) -> bool {
        VIEWS.contains(&name)
    }
}

/// `sluice_catalog.nodes`.
struct NodesView {
    raft: Arc<RaftNode>,
}

impl fmt::Debug for NodesView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodesView").finish_non_exhaustive()
    }
}

fn nodes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("node_id", DataType::Int64, false),
        Field::new("address", DataType::Utf8, false),
        Field::new("voter", DataType::Boolean, false),
        Field::new("role", DataType::Utf8, true),
        Field::new("reachable", DataType::Boolean, false),
        Field::new("term", DataType::Int64, true),
        Field::new("leader_id", DataType::Int64, true),
        Field::new("last_log_index", DataType::Int64, true),
        Field::new("committed_index", DataType::Int64, true),
        Field::new("applied_index", DataType::Int64, true),
        // Entries committed in the cluster (as far as any member reports)
        // that this member has not applied yet: the staleness of a stale read there.
        Field::new("lag", DataType::Int64, true),
        Field::new("snapshot_index", DataType::Int64, true),
        Field::new("is_local", DataType::Boolean, false),
    ]))
}

fn saturate(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn nodes_batch(local: u64, members: &[MemberStatus]) -> datafusion::common::Result<RecordBatch> {
    let committed = members
        .iter()
        .filter_map(|m| m.status.as_ref().map(|s| s.committed_index))
        .max()
        .unwrap_or(0);
    let figure = |f: &dyn Fn(&sluice_raftstore::NodeStatus) -> u64| -> ArrayRef {
        Arc::new(
            members
                .iter()
                .map(|m| m.status.as_ref().map(|s| saturate(f(s))))
                .collect::<Int64Array>(),
        )
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(
            members
                .iter()
                .map(|m| Some(saturate(m.member.node_id)))
                .collect::<Int64Array>(),
        ),
        Arc::new(
            members
                .iter()
                .map(|m| Some(m.member.addr.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            members
                .iter()
                .map(|m| Some(m.member.voter))
                .collect::<BooleanArray>(),
        ),
        Arc::new(
            members
                .iter()
                .map(|m| m.status.as_ref().map(|s| s.role.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            members
                .iter()
                .map(|m| Some(m.status.is_some()))
                .collect::<BooleanArray>(),
        ),
        figure(&|s| s.term),
        Arc::new(
            members
                .iter()
                .map(|m| m.status.as_ref().and_then(|s| s.leader_id.map(saturate)))
                .collect::<Int64Array>(),
        ),
        figure(&|s| s.last_log_index),
        figure(&|s| s.committed_index),
        figure(&|s| s.applied_index),
        figure(&|s| committed.saturating_sub(s.applied_index)),
        figure(&|s| s.snapshot_index),
        Arc::new(
            members
                .iter()
                .map(|m| Some(m.member.node_id == local))
                .collect::<BooleanArray>(),
        ),
    ];
    RecordBatch::try_new(nodes_schema(), columns).map_err(DataFusionError::from)
}

#[async_trait]
impl TableProvider for NodesView {
    fn schema(&self) -> SchemaRef {
        nodes_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let mut members = self.raft.cluster_status().await;
        members.sort_by_key(|m| m.member.node_id);
        let batch = nodes_batch(self.raft.node_id(), &members)?;
        let table = MemTable::try_new(nodes_schema(), vec![vec![batch]])?;
        table.scan(state, projection, filters, limit).await
    }
}

/// `sluice_catalog.consumer_lag`.
struct LagView {
    raft: Arc<RaftNode>,
    catalog: Arc<crate::catalog::SharedCatalog>,
}

impl fmt::Debug for LagView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LagView").finish_non_exhaustive()
    }
}

fn lag_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("group_name", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("end_offset", DataType::Int64, false),
        Field::new("committed_offset", DataType::Int64, false),
        Field::new("lag", DataType::Int64, false),
    ]))
}

#[async_trait]
impl TableProvider for LagView {
    fn schema(&self) -> SchemaRef {
        lag_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let failed = |e: crate::error::Error| DataFusionError::External(Box::new(e));
        let snapshot = self.raft.local_snapshot();
        let catalog = self.catalog.refresh(snapshot.as_ref()).map_err(failed)?;
        let rows = consumer_lag(snapshot.as_ref(), &catalog).map_err(failed)?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(
                rows.iter()
                    .map(|r| Some(r.group.as_str()))
                    .collect::<StringArray>(),
            ),
            Arc::new(
                rows.iter()
                    .map(|r| Some(r.topic.as_str()))
                    .collect::<StringArray>(),
            ),
            Arc::new(
                rows.iter()
                    .map(|r| Some(r.partition as i32))
                    .collect::<datafusion::arrow::array::Int32Array>(),
            ),
            Arc::new(
                rows.iter()
                    .map(|r| Some(saturate(r.end_offset)))
                    .collect::<Int64Array>(),
            ),
            Arc::new(
                rows.iter()
                    .map(|r| Some(saturate(r.committed_offset)))
                    .collect::<Int64Array>(),
            ),
            Arc::new(
                rows.iter()
                    .map(|r| Some(saturate(r.lag)))
                    .collect::<Int64Array>(),
            ),
        ];
        let batch = RecordBatch::try_new(lag_schema(), columns)?;
        let table = MemTable::try_new(lag_schema(), vec![vec![batch]])?;
        table.scan(state, projection, filters, limit).await
    }
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
            .map_err(crate::error::stream_error)?
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
