//! Topics in SQL: appends from INSERT and COPY, the topic as a table for
//! SELECT, and subscriptions (`SUBSCRIBE`, `DECLARE … CURSOR FOR SUBSCRIBE`,
//! `FETCH`, `CLOSE`, `COMMIT OFFSETS`).
//!
//! A topic's catalog entry is a [`TableDef`] with topic options; its last
//! three columns are the system columns `_partition`, `_offset` and
//! `_timestamp`. Producers write the other columns: each row becomes a
//! record (the user columns in `sluice_engine::row` format), rows go to
//! partitions by the hash of the partition key or round-robin, and each
//! partition's records of a statement become one batch and one
//! `Mutation::Append` ([`sluice_stream::topic::append`]). Offsets are
//! assigned at apply, so `RETURNING _offset` reads them from the outcome.
//!
//! Subscriptions read the local replica's snapshot (records are committed
//! data, and waiting for a read index per FETCH would only add a round
//! trip); rows come out as `_partition, _offset, _timestamp, <columns>`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::catalog::{Session as DfSession, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::coop::make_cooperative;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, SchedulingType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::sql::sqlparser::ast;
use sluice_engine::{keycode, row, Snapshot, Value, ValueKind};
use sluice_raftstore::Mutation;
use sluice_stream::{topic as log, BatchBuilder, Cursor, Record};

use crate::api::{CommandTag, CopyOptions, Output};
use crate::catalog::TableDef;
use crate::error::{sqlstate, stream_error, Error, Result};
use crate::resolve::Access;
use crate::session::{PreparedKind, Session};
use crate::stream_sql::{Start, StreamStatement, Subscribe, UpTo};
use crate::table::ReadView;
use crate::types::{arrow_schema, rows_to_batch_projected, SqlType};

/// Records a streaming SUBSCRIBE reads per batch it sends.
const STREAM_BATCH: usize = 1024;
/// How often a streaming SUBSCRIBE looks for partitions added by ALTER
/// TOPIC while it waits (records themselves wake it at once).
const PARTITION_CHECK: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// Counters

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
    fn new(counters: &Arc<TopicCounters>) -> Self {
        counters.open_subscriptions.fetch_add(1, Ordering::Relaxed);
        Self {
            counters: counters.clone(),
        }
    }

    fn delivered(&self, records: usize) {
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

// ---------------------------------------------------------------------------
// Retention

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
                db.topics.retention_deletes.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Records as rows

/// Rows of a subscription: the system columns first, then the topic's own.
pub(crate) fn record_schema(def: &TableDef) -> SchemaRef {
    let user = def.user_columns();
    let system = &def.columns[user.len()..];
    arrow_schema(
        system
            .iter()
            .chain(user)
            .map(|c| (c.name.as_str(), c.ty, c.nullable)),
    )
}

fn user_kinds(def: &TableDef) -> Vec<ValueKind> {
    def.user_columns()
        .iter()
        .map(|c| c.ty.value_kind())
        .collect()
}

/// A record as a row in table order: the user columns, then `_partition`,
/// `_offset`, `_timestamp`.
fn record_row(def: &TableDef, kinds: &[ValueKind], record: &Record) -> Result<Vec<Value>> {
    let mut values = row::decode_row(&record.data, kinds).map_err(|e| {
        Error::new(
            sqlstate::DATA_CORRUPTED,
            format!(
                "decode record {}/{} of topic {}: {e}",
                record.partition,
                record.offset,
                def.qualified_name()
            ),
        )
    })?;
    // Records written before an added column (not possible yet) read NULL.
    values.resize(kinds.len(), Value::Null);
    values.push(Value::Int32(record.partition as i32));
    values.push(Value::Int64(record.offset as i64));
    values.push(Value::TimestampTz(record.timestamp_us));
    Ok(values)
}

/// Records as a batch of `schema`, whose columns are `projection` of the
/// table-order row.
fn records_to_batch(
    def: &TableDef,
    kinds: &[ValueKind],
    schema: &SchemaRef,
    projection: &[usize],
    records: &[Record],
) -> Result<RecordBatch> {
    let rows: Vec<Vec<Value>> = records
        .iter()
        .map(|r| record_row(def, kinds, r))
        .collect::<Result<_>>()?;
    let columns = rows_to_batch_projected(&def.types(), &rows, projection)?;
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options)
        .map_err(|e| Error::new(sqlstate::INTERNAL_ERROR, format!("build record batch: {e}")))
}

/// Records in subscription order: system columns, then the topic's own.
fn records_batch(def: &TableDef, schema: &SchemaRef, records: &[Record]) -> Result<RecordBatch> {
    let users = def.user_columns().len();
    let projection: Vec<usize> = (users..users + 3).chain(0..users).collect();
    records_to_batch(def, &user_kinds(def), schema, &projection, records)
}

// ---------------------------------------------------------------------------
// Appends

/// Round-robin partition choice for topics without a partition key.
static ROUND_ROBIN: AtomicU64 = AtomicU64::new(0);

/// The appends of one statement.
pub(crate) struct AppendPlan {
    mutations: Vec<Mutation>,
    /// Per mutation: its partition and the rows (indexes into the input)
    /// it holds, in record order.
    layout: Vec<(u32, Vec<usize>)>,
    timestamp_us: i64,
}

/// The appends for rows given in table order (system columns NULL).
fn append_mutations(def: &TableDef, rows: &[Vec<Value>]) -> Result<AppendPlan> {
    let options = def.topic.as_ref().ok_or_else(|| {
        Error::new(
            sqlstate::INTERNAL_ERROR,
            "append to a table that is not a topic",
        )
    })?;
    let users = def.user_columns().len();
    let kinds = user_kinds(def);
    for row in rows {
        for (column, value) in def.columns[users..].iter().zip(&row[users..]) {
            if !value.is_null() {
                return Err(Error::new(
                    sqlstate::GENERATED_ALWAYS,
                    format!(
                        "cannot insert a non-DEFAULT value into column \"{}\"",
                        column.name
                    ),
                )
                .with_detail("Topics assign _partition, _offset and _timestamp to each record."));
            }
        }
    }
    let key_column = match &options.partition_key {
        Some(name) => Some(def.column_index(name).ok_or_else(|| {
            Error::new(
                sqlstate::UNDEFINED_COLUMN,
                format!("partition_key column \"{name}\" does not exist"),
            )
        })?),
        None => None,
    };
    let partitions = options.partitions.max(1);
    let mut by_partition: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    let first_turn = ROUND_ROBIN.fetch_add(1, Ordering::Relaxed);
    for (i, row) in rows.iter().enumerate() {
        let partition = match key_column {
            Some(column) => {
                let mut key = Vec::new();
                keycode::encode_value(&mut key, &row[column])
                    .map_err(|e| Error::new(sqlstate::INTERNAL_ERROR, e.to_string()))?;
                log::partition_for_key(&key, partitions)
            }
            // One statement's rows stay together in one partition (one batch),
            // and statements take turns.
            None => (first_turn % u64::from(partitions)) as u32,
        };
        by_partition.entry(partition).or_default().push(i);
    }
    let timestamp = now_micros();
    let mut mutations = Vec::new();
    let mut layout = Vec::new();
    let mut record = Vec::new();
    for (partition, indexes) in by_partition {
        let mut batch = BatchBuilder::new();
        let mut held = Vec::new();
        for (n, &i) in indexes.iter().enumerate() {
            record.clear();
            row::encode_row_into(&mut record, &rows[i][..users], &kinds)
                .map_err(|e| Error::new(sqlstate::INTERNAL_ERROR, format!("encode record: {e}")))?;
            if batch.is_empty() {
                // A statement's rows are usually alike: sized by its first
                // record, a megabyte batch is not copied at every doubling.
                let rest = (4 + record.len()) * (indexes.len() - n);
                batch.reserve(rest.min(APPEND_BATCH_BYTES));
            }
            batch.push(&record);
            held.push(i);
            // Keep batches well inside one Raft command.
            if batch.payload_bytes() >= APPEND_BATCH_BYTES {
                let full = std::mem::take(&mut batch);
                mutations.push(
                    log::append(def.id, partition, full, timestamp, options.compression)
                        .map_err(stream_error)?,
                );
                layout.push((partition, std::mem::take(&mut held)));
            }
        }
        if !batch.is_empty() {
            mutations.push(
                log::append(def.id, partition, batch, timestamp, options.compression)
                    .map_err(stream_error)?,
            );
            layout.push((partition, held));
        }
    }
    Ok(AppendPlan {
        mutations,
        layout,
        timestamp_us: timestamp,
    })
}

/// Appends `rows` (table order, system columns NULL) through the
/// statement's path to Raft (the open block, if any) and counts them once
/// acknowledged (in a block, COMMIT counts them).
pub(crate) async fn propose_appends(
    session: &Session,
    def: &TableDef,
    rows: &[Vec<Value>],
) -> Result<(AppendPlan, sluice_raftstore::ApplyOutcome)> {
    let mut plan = append_mutations(def, rows)?;
    let mutations = std::mem::take(&mut plan.mutations);
    let size = append_size(&mutations);
    let outcome = crate::dml::propose(session, def, mutations).await?;
    if session.transaction_state() == crate::TransactionState::Idle {
        session.db.topics.appended(size);
    }
    Ok((plan, outcome))
}

/// Records of one statement per batch before a new batch is started.
const APPEND_BATCH_BYTES: usize = 4 << 20;

pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Fills the system columns of appended rows (for RETURNING): the offsets
/// from the apply outcome's first offset per append. Inside a transaction
/// block they are not known before COMMIT and stay NULL.
pub(crate) fn fill_system_columns(
    def: &TableDef,
    rows: &mut [Vec<Value>],
    plan: &AppendPlan,
    firsts: &[u64],
) {
    let users = def.user_columns().len();
    for (i, (partition, held)) in plan.layout.iter().enumerate() {
        for (n, &row) in held.iter().enumerate() {
            rows[row][users] = Value::Int32(*partition as i32);
            if let Some(first) = firsts.get(i) {
                rows[row][users + 1] = Value::Int64((first + n as u64) as i64);
            }
            rows[row][users + 2] = Value::TimestampTz(plan.timestamp_us);
        }
    }
}

// ---------------------------------------------------------------------------
// The topic as a table

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
        let properties = Arc::new(
            PlanProperties::new(
                EquivalenceProperties::new(schema.clone()),
                Partitioning::UnknownPartitioning(1),
                EmissionType::Incremental,
                Boundedness::Bounded,
            )
            .with_scheduling_type(SchedulingType::Cooperative),
        );
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
        let view = context
            .session_config()
            .get_extension::<ReadView>()
            .ok_or_else(|| {
                DataFusionError::Internal("topic scan executed without a read snapshot".into())
            })?;
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
            snapshot: view.snapshot.clone(),
            schema: self.schema.clone(),
            projection: self.projection.clone(),
            partitions,
            current: 0,
            position: None,
            range: self.range.clone(),
            remaining: self.limit.unwrap_or(usize::MAX),
            batch_size: self.batch_size,
        };
        let schema = self.schema.clone();
        let stream = futures::stream::poll_fn(move |_cx| {
            std::task::Poll::Ready(reader.next_batch().transpose())
        });
        Ok(make_cooperative(Box::pin(RecordBatchStreamAdapter::new(
            schema, stream,
        ))))
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

// ---------------------------------------------------------------------------
// Statements

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
    session: &mut Session,
    statement: &StreamStatement,
) -> Result<(PreparedKind, Option<SchemaRef>)> {
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
                PreparedKind::Stream(StreamPlan::Subscribe {
                    table,
                    spec: spec.clone(),
                    copy: None,
                }),
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
            let schema = session
                .cursors
                .get(cursor)
                .map(|c| c.schema.clone())
                .ok_or_else(|| no_cursor(cursor))?;
            return Ok((
                PreparedKind::Stream(StreamPlan::Fetch {
                    cursor: cursor.clone(),
                    count: *count,
                    timeout: *timeout,
                }),
                Some(schema),
            ));
        }
        StreamStatement::Close(cursor) => StreamPlan::Close(cursor.clone()),
        StreamStatement::CommitOffsets(cursor) => StreamPlan::CommitOffsets(cursor.clone()),
    };
    Ok((PreparedKind::Stream(plan), None))
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

pub(crate) async fn execute(session: &mut Session, plan: &StreamPlan) -> Result<Output> {
    match plan {
        StreamPlan::CreateTopic(create) => crate::ddl::create_topic(session, create).await,
        StreamPlan::AlterTopic { name, options } => {
            crate::ddl::alter_topic(session, name, options).await
        }
        StreamPlan::DropTopic { names, if_exists } => {
            crate::ddl::drop_topics(session, names, *if_exists).await
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
            if session.cursors.contains_key(cursor) {
                return Err(Error::new(
                    sqlstate::DUPLICATE_CURSOR,
                    format!("cursor \"{cursor}\" already exists"),
                ));
            }
            let (opened, member) = open_cursor(session, table, spec).await?;
            session.cursors.insert(
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
            rebalance_if_due(session, cursor).await?;
            let raft = session.db.raft().clone();
            let open = session
                .cursors
                .get_mut(cursor)
                .ok_or_else(|| no_cursor(cursor))?;
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
            for (_, open) in session.cursors.drain() {
                open.close(&db).await;
            }
            Ok(Output::Command(CommandTag::new("CLOSE CURSOR ALL")))
        }
        StreamPlan::Close(Some(cursor)) => {
            let open = session
                .cursors
                .remove(cursor)
                .ok_or_else(|| no_cursor(cursor))?;
            open.close(&session.db).await;
            Ok(Output::Command(CommandTag::new("CLOSE CURSOR")))
        }
        StreamPlan::CommitOffsets(cursor) => crate::offsets::commit(session, cursor).await,
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
async fn rebalance_if_due(session: &mut Session, name: &str) -> Result<()> {
    let Some(mut open) = session.cursors.remove(name) else {
        return Ok(());
    };
    let result = rebalance(session, &mut open).await;
    session.cursors.insert(name.to_string(), open);
    result
}

async fn rebalance(session: &Session, open: &mut TopicCursor) -> Result<()> {
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
    Ok(catalog.tables.values().find(|t| t.id == id).cloned())
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
    session: &Session,
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
    session: &Session,
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
