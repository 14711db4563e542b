//! A topic as a table for SELECT: a scan of its partitions, narrowed by
//! filters on `_partition`, `_offset` and `_timestamp`.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session as DfSession, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use sluice_engine::{Snapshot, ValueKind};
use sluice_stream::topic as log;

use super::records::{records_to_batch, user_kinds};
use crate::catalog::TableDef;
use crate::error::{stream_error, Error};
use crate::table::{scan_properties, scan_snapshot, scan_stream};

/// `SELECT … FROM topic`: every retained record, partition by partition in
/// offset order. `_partition = n` and bounds on `_offset` narrow the read.
pub struct TopicTable {
    def: Arc<TableDef>,
    schema: SchemaRef,
}

impl fmt::Debug for TopicTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicTable")
            .field("topic", &self.def.qualified_name())
            .finish()
    }
}

impl TopicTable {
    pub fn new(def: Arc<TableDef>, dml_target: bool) -> Self {
        let schema = if dml_target {
            def.dml_schema(false)
        } else {
            def.arrow_schema()
        };
        Self { def, schema }
    }
}

/// What the filters say about `_partition` and `_offset`.
#[derive(Debug, Clone, Default)]
struct TopicRange {
    partition: Option<u32>,
    /// Inclusive bounds.
    from: u64,
    to: Option<u64>,
    empty: bool,
}

impl TopicRange {
    fn of(filters: &[Expr]) -> TopicRange {
        let mut range = TopicRange::default();
        for filter in filters {
            for conjunct in split_conjunction(filter) {
                let Some((column, op, value)) = system_comparison(conjunct) else {
                    continue;
                };
                match (column, op) {
                    ("_partition", Operator::Eq) => {
                        let out_of_range = value < 0 || value > u32::MAX as i64;
                        if out_of_range || range.partition.is_some_and(|p| p as i64 != value) {
                            range.empty = true;
                        } else {
                            range.partition = Some(value as u32);
                        }
                    }
                    ("_offset", op) => {
                        let (low, high) = match op {
                            Operator::Eq => (Some(value), Some(value)),
                            Operator::Gt => (Some(value.saturating_add(1)), None),
                            Operator::GtEq => (Some(value), None),
                            Operator::Lt => (None, Some(value.saturating_sub(1))),
                            Operator::LtEq => (None, Some(value)),
                            _ => (None, None),
                        };
                        if let Some(low) = low {
                            range.from = range.from.max(low.max(0) as u64);
                        }
                        if let Some(high) = high {
                            if high < 0 {
                                range.empty = true;
                            } else {
                                let high = high as u64;
                                range.to = Some(range.to.map_or(high, |t| t.min(high)));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        if range.to.is_some_and(|to| to < range.from) {
            range.empty = true;
        }
        range
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = self.partition {
            parts.push(format!("_partition = {p}"));
        }
        if self.from > 0 {
            parts.push(format!("_offset >= {}", self.from));
        }
        if let Some(to) = self.to {
            parts.push(format!("_offset <= {to}"));
        }
        if self.empty {
            return "empty".into();
        }
        if parts.is_empty() {
            "full".into()
        } else {
            parts.join(" AND ")
        }
    }
}

/// `_partition`/`_offset` compared with an integer literal.
fn system_comparison(expr: &Expr) -> Option<(&'static str, Operator, i64)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else {
        return None;
    };
    let (column, op, literal) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) => (c, *op, v),
        (Expr::Literal(v, _), Expr::Column(c)) => (c, op.swap()?, v),
        _ => return None,
    };
    let name = match column.name.as_str() {
        "_partition" => "_partition",
        "_offset" => "_offset",
        _ => return None,
    };
    let value = match literal {
        ScalarValue::Int8(Some(v)) => i64::from(*v),
        ScalarValue::Int16(Some(v)) => i64::from(*v),
        ScalarValue::Int32(Some(v)) => i64::from(*v),
        ScalarValue::Int64(Some(v)) => *v,
        ScalarValue::UInt8(Some(v)) => i64::from(*v),
        ScalarValue::UInt16(Some(v)) => i64::from(*v),
        ScalarValue::UInt32(Some(v)) => i64::from(*v),
        ScalarValue::UInt64(Some(v)) => i64::try_from(*v).ok()?,
        _ => return None,
    };
    matches!(
        op,
        Operator::Eq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq
    )
    .then_some((name, op, value))
}

#[async_trait]
impl TableProvider for TopicTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|filter| {
                if system_comparison(filter).is_some() {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let schema = Arc::new(self.schema.project(&projection)?);
        let properties = scan_properties(&schema);
        Ok(Arc::new(TopicScanExec {
            def: self.def.clone(),
            schema,
            projection,
            range: TopicRange::of(filters),
            limit,
            batch_size: state.config().batch_size().clamp(64, 8192),
            properties,
        }))
    }
}

#[derive(Debug)]
pub struct TopicScanExec {
    def: Arc<TableDef>,
    schema: SchemaRef,
    projection: Vec<usize>,
    range: TopicRange,
    limit: Option<usize>,
    batch_size: usize,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for TopicScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "TopicScan: topic={}, range={}",
            self.def.qualified_name(),
            self.range.describe()
        )?;
        if let Some(limit) = self.limit {
            write!(f, ", limit={limit}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for TopicScanExec {
    fn name(&self) -> &str {
        "TopicScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::common::Result<TreeNodeRecursion>,
    ) -> datafusion::common::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::common::Result<SendableRecordBatchStream> {
        let partitions = self.def.topic.as_ref().map_or(1, |t| t.partitions);
        let partitions: Vec<u32> = match self.range.partition {
            _ if self.range.empty => Vec::new(),
            Some(p) if p < partitions => vec![p],
            Some(_) => Vec::new(),
            None => (0..partitions).collect(),
        };
        let mut reader = TopicScanReader {
            def: self.def.clone(),
            kinds: user_kinds(&self.def),
            snapshot: scan_snapshot(&context, "topic scan")?,
            schema: self.schema.clone(),
            projection: self.projection.clone(),
            partitions,
            current: 0,
            position: None,
            range: self.range.clone(),
            remaining: self.limit.unwrap_or(usize::MAX),
            batch_size: self.batch_size,
        };
        Ok(scan_stream(self.schema.clone(), move || {
            reader.next_batch()
        }))
    }
}

struct TopicScanReader {
    def: Arc<TableDef>,
    kinds: Vec<ValueKind>,
    snapshot: Arc<dyn Snapshot>,
    schema: SchemaRef,
    projection: Vec<usize>,
    partitions: Vec<u32>,
    current: usize,
    position: Option<u64>,
    range: TopicRange,
    remaining: usize,
    batch_size: usize,
}

impl TopicScanReader {
    fn next_batch(&mut self) -> datafusion::common::Result<Option<RecordBatch>> {
        let failed = |e: Error| DataFusionError::External(Box::new(e));
        while self.remaining > 0 && self.current < self.partitions.len() {
            let partition = self.partitions[self.current];
            let from = match self.position {
                Some(position) => position,
                None => {
                    let bounds = log::bounds(&*self.snapshot, self.def.id, partition)
                        .map_err(|e| failed(stream_error(e)))?;
                    self.range.from.max(bounds.start)
                }
            };
            let want = self.batch_size.min(self.remaining);
            let mut records = Vec::with_capacity(want);
            let next = log::read(
                &*self.snapshot,
                self.def.id,
                partition,
                from,
                want,
                sluice_stream::cursor::MAX_FETCH_BYTES,
                &mut records,
            )
            .map_err(|e| failed(stream_error(e)))?;
            if let Some(to) = self.range.to {
                records.retain(|r| r.offset <= to);
            }
            let exhausted = records.is_empty() || self.range.to.is_some_and(|to| next > to);
            if exhausted {
                self.current += 1;
                self.position = None;
            } else {
                self.position = Some(next);
            }
            if records.is_empty() {
                continue;
            }
            self.remaining = self.remaining.saturating_sub(records.len());
            return records_to_batch(
                &self.def,
                &self.kinds,
                &self.schema,
                &self.projection,
                &records,
            )
            .map(Some)
            .map_err(failed);
        }
        Ok(None)
    }
}

// Statements
