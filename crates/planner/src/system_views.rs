//! `sluice_catalog`: read-only views of the node and the cluster, computed
//! when a query scans them (so a cached plan always sees the present).
//!
//! - `sluice_catalog.nodes`: one row per member of the Raft cluster, with
//!   the role, indexes and lag each member reports about itself over the
//!   peer transport (members that do not answer within 300 ms are listed
//!   with `reachable = false` and NULL figures).

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
use sluice_raftstore::{MemberStatus, RaftNode};

pub const SCHEMA_NAME: &str = "sluice_catalog";

/// The `sluice_catalog` schema of one node.
pub struct SystemViews {
    raft: Arc<RaftNode>,
}

impl SystemViews {
    pub fn new(raft: Arc<RaftNode>) -> Self {
        Self { raft }
    }
}

impl fmt::Debug for SystemViews {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SystemViews").finish_non_exhaustive()
    }
}

#[async_trait]
impl SchemaProvider for SystemViews {
    fn table_names(&self) -> Vec<String> {
        vec!["nodes".into()]
    }

    async fn table(
        &self,
        name: &str,
    ) -> datafusion::common::Result<Option<Arc<dyn TableProvider>>> {
        Ok(match name {
            "nodes" => Some(Arc::new(NodesView {
                raft: self.raft.clone(),
            })),
            _ => None,
        })
    }

    fn table_exist(&self, name: &str) -> bool {
        name == "nodes"
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
