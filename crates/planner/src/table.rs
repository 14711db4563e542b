//! A Sluice table as a DataFusion `TableProvider`, and its scan.
//!
//! Equality and range predicates on a prefix of the primary key become one
//! key range ([`scan_source_for`]), or a range of a secondary index whose
//! entries name the rows; the predicates are still reported
//! `Inexact`, so DataFusion re-checks them and a narrow range is only ever an
//! optimisation. The scan reads the statement's snapshot ([`ReadView`],
//! carried in the task's session config) page by page, so results stream.
//!
//! Hot path: [`SluiceScanExec::execute`] for every query.

use std::collections::HashMap;
use std::fmt;
use std::ops::Bound;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BinaryBuilder};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::catalog::{Session as DfSession, TableProvider};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DataFusionError, ParamValues, ScalarValue};
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
use sluice_engine::{prefix_successor, KeyRange, Keyspace, Snapshot, Value};

use crate::catalog::TableDef;
use crate::error::{sqlstate, Error};
use crate::index::{encode_indexed, IndexDef, IndexState};
use crate::types::{rows_to_batch_projected, SqlType};

/// The snapshot a statement reads, handed to scans through the task's
/// session config so that a cached plan binds to a fresh snapshot per run.
pub struct ReadView {
    pub snapshot: Arc<dyn Snapshot>,
}

pub struct SluiceTable {
    def: Arc<TableDef>,
    schema: SchemaRef,
    defaults: HashMap<String, Expr>,
    with_key: bool,
}

impl fmt::Debug for SluiceTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SluiceTable")
            .field("table", &self.def.qualified_name())
            .finish()
    }
}

impl SluiceTable {
    pub fn new(def: Arc<TableDef>, defaults: HashMap<String, Expr>) -> Self {
        let schema = def.arrow_schema();
        Self {
            def,
            schema,
            defaults,
            with_key: false,
        }
    }

    /// The table as the target of a DML statement (see `SessionCatalog::dml_target`).
    pub fn dml_target(def: Arc<TableDef>, defaults: HashMap<String, Expr>, with_key: bool) -> Self {
        let schema = def.dml_schema(with_key);
        Self {
            def,
            schema,
            defaults,
            with_key,
        }
    }
}

#[async_trait]
impl TableProvider for SluiceTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.defaults.get(column)
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        let exact = exact_key_equalities(&self.def, filters);
        Ok(filters
            .iter()
            .zip(exact)
            .map(|(filter, exact)| {
                if exact {
                    TableProviderFilterPushDown::Exact
                } else if narrows_a_key(&self.def, filter) {
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
        let (source, range, range_text, one_key) = scan_source_for(&self.def, filters);
        let batch_size = state.config().batch_size().clamp(64, 8192);
        let mut scan = SluiceScanExec::new(
            self.def.clone(),
            schema,
            projection,
            self.with_key,
            source,
            range,
            range_text,
            one_key,
            limit,
            batch_size,
        );
        if filters.iter().any(has_placeholder) {
            scan.unbound_filters = Some(filters.into());
        }
        Ok(Arc::new(scan))
    }
}

/// Whether `expr` has a `$n` in it.
pub(crate) fn has_placeholder(expr: &Expr) -> bool {
    expr.exists(|e| Ok(matches!(e, Expr::Placeholder(_))))
        .unwrap_or(true)
}

/// Which of `filters` the scan's key range applies exactly, so that
/// DataFusion need not re-check them: when every primary-key column is
/// pinned by a `column = value` filter (a literal the key can hold, or a
/// parameter of the column's own type), one such filter per column. The
/// range is then one key, and a point lookup plans and runs without a
/// filter above its scan. Anything else stays `Inexact` and is re-checked.
///
/// Binding keeps this sound: a parameter's value is cast to the
/// placeholder's type (see `cached_plan`), which is the column's, so it
/// converts to a key value as a literal does; and `key_bounds_of` reads an
/// equality with NULL, or two different values for one column, as an empty
/// range, which is what the filters would have selected.
fn exact_key_equalities(def: &TableDef, filters: &[&Expr]) -> Vec<bool> {
    let mut exact = vec![false; filters.len()];
    for &column in &def.primary_key {
        let col = &def.columns[column];
        let pinned = filters.iter().position(|filter| {
            let Some((compared, Operator::Eq, other)) = compared_column(filter) else {
                return false;
            };
            if compared.name != col.name {
                return false;
            }
            match other {
                Expr::Literal(value, _) => literal_value(value, col.ty).is_some(),
                Expr::Placeholder(placeholder) => placeholder
                    .field
                    .as_ref()
                    .is_some_and(|field| field.data_type() == &col.ty.arrow_type()),
                _ => false,
            }
        });
        match pinned {
            Some(i) => exact[i] = true,
            None => return vec![false; filters.len()],
        }
    }
    exact
}

/// Bounds found for one primary-key column.
#[derive(Default, Debug)]
struct ColumnBounds {
    eq: Option<Value>,
    lower: Option<(Value, bool)>,
    upper: Option<(Value, bool)>,
    /// No row can match: an equality with NULL, or with two different values.
    none: bool,
}

impl ColumnBounds {
    fn is_empty(&self) -> bool {
        self.eq.is_none() && self.lower.is_none() && self.upper.is_none() && !self.none
    }
}

/// Bounds per key column (`columns`, positions in the table) implied by
/// `filters` (conjunctions of `column <op> literal`). Empty when nothing
/// constrains the key.
fn key_bounds_of(def: &TableDef, columns: &[usize], filters: &[Expr]) -> Vec<ColumnBounds> {
    let mut bounds: Vec<ColumnBounds> = columns.iter().map(|_| ColumnBounds::default()).collect();
    let mut any = false;
    for filter in filters {
        for conjunct in split_conjunction(filter) {
            let Some((column, op, literal)) = column_comparison(conjunct) else {
                continue;
            };
            let Some(position) = columns.iter().position(|&i| def.columns[i].name == column) else {
                continue;
            };
            let ty = def.columns[columns[position]].ty;
            if op == Operator::Eq && literal.is_null() {
                bounds[position].none = true;
                any = true;
                continue;
            }
            let Some(value) = literal_value(literal, ty) else {
                continue;
            };
            let b = &mut bounds[position];
            match op {
                Operator::Eq if b.eq.as_ref().is_some_and(|eq| *eq != value) => b.none = true,
                Operator::Eq => b.eq = Some(value),
                Operator::Gt => b.lower = Some((value, false)),
                Operator::GtEq => b.lower = Some((value, true)),
                Operator::Lt => b.upper = Some((value, false)),
                Operator::LtEq => b.upper = Some((value, true)),
                _ => continue,
            }
            any = true;
        }
    }
    if any {
        bounds
    } else {
        Vec::new()
    }
}

/// Whether `filter` could narrow the primary key or an index.
fn narrows_a_key(def: &TableDef, filter: &Expr) -> bool {
    let filters = std::slice::from_ref(filter);
    !key_bounds_of(def, &def.primary_key, filters).is_empty()
        || def
            .indexes
            .iter()
            .any(|index| !key_bounds_of(def, &index_columns(index), filters).is_empty())
        || compares_a_key_with_a_parameter(def, filter)
}

/// `key_column op $n`: a prepared statement's plan is optimized before its
/// parameters are bound (see `cached_plan`), so the filter must reach the
/// scan while its value is still a placeholder; after binding it is a
/// literal and narrows the range like any other.
fn compares_a_key_with_a_parameter(def: &TableDef, filter: &Expr) -> bool {
    let Some((column, _, Expr::Placeholder(_))) = compared_column(filter) else {
        return false;
    };
    let Some(position) = def.columns.iter().position(|col| col.name == column.name) else {
        return false;
    };
    def.primary_key.contains(&position)
        || def
            .indexes
            .iter()
            .any(|index| index.columns.iter().any(|c| c.column == position))
}

fn index_columns(index: &IndexDef) -> Vec<usize> {
    index.columns.iter().map(|c| c.column).collect()
}

/// Where a scan reads: the table's rows, or a public index whose entries
/// name the rows.
#[derive(Debug, Clone)]
enum ScanSource {
    Rows,
    Index,
}

/// The cheapest source for `filters`: a primary-key range when the key is
/// constrained, else the public index with the longest constrained prefix
/// (equalities first), else the whole table. The flag says whether the range
/// is one primary key: every key column pinned by equality.
fn scan_source_for(def: &TableDef, filters: &[Expr]) -> (ScanSource, KeyRange, String, bool) {
    let key: Vec<(usize, bool)> = def.primary_key.iter().map(|&c| (c, false)).collect();
    if let Some((range, text, score)) = range_over(def, def.rows_prefix(), &key, filters) {
        return (ScanSource::Rows, range, text, score == 2 * key.len());
    }
    let best = def
        .indexes
        .iter()
        .filter(|index| index.state == IndexState::Public)
        .filter_map(|index| {
            let columns: Vec<(usize, bool)> = index
                .columns
                .iter()
                .map(|c| (c.column, c.descending))
                .collect();
            range_over(def, index.prefix(), &columns, filters)
                .map(|(range, text, score)| (score, index, range, text))
        })
        .max_by_key(|(score, ..)| *score);
    match best {
        Some((_, index, range, text)) => (
            ScanSource::Index,
            range,
            format!("index {} ({text})", index.name),
            false,
        ),
        None => (
            ScanSource::Rows,
            def.rows_range(),
            "full".to_string(),
            false,
        ),
    }
}

/// The key range under `prefix` that covers every row `filters` can select,
/// given the key's columns (position, descending); its description for
/// EXPLAIN; and how many columns it pins (equalities count double). `None`
/// when the filters do not narrow it.
fn range_over(
    def: &TableDef,
    mut prefix: Vec<u8>,
    columns: &[(usize, bool)],
    filters: &[Expr],
) -> Option<(KeyRange, String, usize)> {
    let positions: Vec<usize> = columns.iter().map(|(c, _)| *c).collect();
    let bounds = key_bounds_of(def, &positions, filters);
    let mut described = Vec::new();
    let mut score = 0;
    if bounds.iter().any(|b| b.none) {
        // Empty, and as pinned as a range can be: the cheapest source.
        let nothing = KeyRange {
            start: Bound::Included(prefix.clone()),
            end: Bound::Excluded(prefix),
        };
        return Some((nothing, "none".to_string(), 2 * columns.len()));
    }
    for (b, &(column, descending)) in bounds.iter().zip(columns) {
        let name = &def.columns[column].name;
        if let Some(value) = &b.eq {
            encode_indexed(&mut prefix, value, descending).ok()?;
            described.push(format!("{name} = {value:?}"));
            score += 2;
            continue;
        }
        // A descending column's range would need its bounds swapped; only
        // equalities use it.
        if b.is_empty() || descending {
            break;
        }
        let encode = |value: &Value| {
            let mut key = prefix.clone();
            encode_indexed(&mut key, value, false).ok().map(|()| key)
        };
        let start = match &b.lower {
            Some((value, inclusive)) => {
                let key = encode(value)?;
                described.push(format!(
                    "{name} {} {value:?}",
                    if *inclusive { ">=" } else { ">" }
                ));
                if *inclusive {
                    Bound::Included(key)
                } else {
                    successor_bound(&key, true)
                }
            }
            None => Bound::Included(prefix.clone()),
        };
        let end = match &b.upper {
            Some((value, inclusive)) => {
                let key = encode(value)?;
                described.push(format!(
                    "{name} {} {value:?}",
                    if *inclusive { "<=" } else { "<" }
                ));
                if *inclusive {
                    successor_bound(&key, false)
                } else {
                    Bound::Excluded(key)
                }
            }
            None => successor_bound(&prefix, false),
        };
        return Some((KeyRange { start, end }, described.join(" AND "), score + 1));
    }
    if described.is_empty() {
        return None;
    }
    Some((KeyRange::prefix(&prefix), described.join(" AND "), score))
}

/// `column op literal`, normalising `literal op column` by flipping `op`.
fn column_comparison(expr: &Expr) -> Option<(&str, Operator, &ScalarValue)> {
    match compared_column(expr)? {
        (column, op, Expr::Literal(value, _)) => Some((column.name.as_str(), op, value)),
        _ => None,
    }
}

/// `column op other` for the operators a key range can express, with
/// `other op column` normalised by flipping `op`.
fn compared_column(expr: &Expr) -> Option<(&Column, Operator, &Expr)> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else {
        return None;
    };
    let op = *op;
    if !matches!(
        op,
        Operator::Eq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq
    ) {
        return None;
    }
    match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), other) => Some((c, op, other)),
        (other, Expr::Column(c)) => Some((c, op.swap()?, other)),
        _ => None,
    }
}

/// The literal as a key value of a column of type `ty`, if it converts
/// without loss (otherwise the predicate is left to DataFusion).
fn literal_value(literal: &ScalarValue, ty: SqlType) -> Option<Value> {
    if literal.is_null() {
        return None;
    }
    let target = ty.arrow_type();
    let cast = literal.cast_to(&target).ok()?;
    if literal.data_type() != target && cast.cast_to(&literal.data_type()).ok()? != *literal {
        return None;
    }
    let array = cast.to_array().ok()?;
    crate::types::value_at(&array, 0, ty, "")
        .ok()
        .filter(|v| !v.is_null())
}

/// The bound just past every key that starts with `key`.
fn successor_bound(key: &[u8], as_start: bool) -> Bound<Vec<u8>> {
    match prefix_successor(key) {
        Some(next) if as_start => Bound::Included(next),
        Some(next) => Bound::Excluded(next),
        None => Bound::Unbounded,
    }
}

/// Reads one table's rows in key order from the statement's snapshot.
#[derive(Debug, Clone)]
pub struct SluiceScanExec {
    def: Arc<TableDef>,
    schema: SchemaRef,
    projection: Vec<usize>,
    with_key: bool,
    source: ScanSource,
    range: KeyRange,
    range_text: String,
    limit: Option<usize>,
    batch_size: usize,
    properties: Arc<PlanProperties>,
    /// The range is one primary key: see [`Self::reads_at_most_one_row`].
    reads_one_key: bool,
    /// Filters with `$n` in them, when a prepared statement's plan was built
    /// before its parameters had values: the range above is then not the
    /// statement's, and [`Self::bind`] must give the scan its values before
    /// it runs.
    unbound_filters: Option<Arc<[Expr]>>,
}

impl SluiceScanExec {
    #[allow(clippy::too_many_arguments)]
    fn new(
        def: Arc<TableDef>,
        schema: SchemaRef,
        projection: Vec<usize>,
        with_key: bool,
        source: ScanSource,
        range: KeyRange,
        range_text: String,
        reads_one_key: bool,
        limit: Option<usize>,
        batch_size: usize,
    ) -> Self {
        let properties = scan_properties(&schema);
        Self {
            def,
            schema,
            projection,
            with_key,
            source,
            range,
            range_text,
            limit,
            batch_size,
            properties,
            reads_one_key,
            unbound_filters: None,
        }
    }

    /// Whether the scan waits for parameter values ([`Self::bind`]).
    pub(crate) fn is_unbound(&self) -> bool {
        self.unbound_filters.is_some()
    }

    /// This scan with `params` in place of its filters' `$n`, its key range
    /// chosen from the values exactly as [`SluiceTable::scan`] chooses it
    /// from literals. The rest of the plan does not depend on the range: a
    /// scan's properties are the same whatever it reads.
    pub(crate) fn bind(&self, params: &ParamValues) -> datafusion::common::Result<Self> {
        let Some(filters) = &self.unbound_filters else {
            return Ok(self.clone());
        };
        let filters = filters
            .iter()
            .map(|filter| {
                filter
                    .clone()
                    .transform_up(|e| match e {
                        Expr::Placeholder(placeholder) => {
                            let (value, metadata) = params
                                .get_placeholders_with_values(&placeholder.id)?
                                .into_inner();
                            Ok(Transformed::yes(Expr::Literal(value, metadata)))
                        }
                        other => Ok(Transformed::no(other)),
                    })
                    .data()
            })
            .collect::<datafusion::common::Result<Vec<_>>>()?;
        let (source, range, range_text, reads_one_key) = scan_source_for(&self.def, &filters);
        // Spelled out rather than `..self.clone()`, which would copy the
        // unbound range and its text only to drop them, on every execution.
        Ok(Self {
            def: self.def.clone(),
            schema: self.schema.clone(),
            projection: self.projection.clone(),
            with_key: self.with_key,
            source,
            range,
            range_text,
            limit: self.limit,
            batch_size: self.batch_size,
            properties: self.properties.clone(),
            reads_one_key,
            unbound_filters: None,
        })
    }

    /// A point lookup: the scan's cost does not grow with the table.
    pub(crate) fn reads_at_most_one_row(&self) -> bool {
        self.reads_one_key || self.limit.is_some_and(|limit| limit <= 1)
    }
}

impl DisplayAs for SluiceScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SluiceScan: table={}, range={}",
            self.def.qualified_name(),
            self.range_text
        )?;
        let names: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        write!(f, ", projection=[{}]", names.join(", "))?;
        if let Some(limit) = self.limit {
            write!(f, ", limit={limit}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for SluiceScanExec {
    fn name(&self) -> &str {
        "SluiceScanExec"
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
        if self.is_unbound() {
            return Err(DataFusionError::Internal(
                "a key range scan ran before its parameters were bound".to_string(),
            ));
        }
        let mut reader = ScanReader {
            def: self.def.clone(),
            snapshot: scan_snapshot(&context, "table scan")?,
            schema: self.schema.clone(),
            projection: self.projection.clone(),
            with_key: self.with_key,
            source: self.source.clone(),
            range: Some(self.range.clone()),
            remaining: self.limit.unwrap_or(usize::MAX),
            batch_size: self.batch_size,
        };
        Ok(scan_stream(self.schema.clone(), move || {
            reader.next_batch()
        }))
    }
}

/// The properties of a key-order scan: one partition, batches as they are
/// read, cooperative with tokio's budget.
pub(crate) fn scan_properties(schema: &SchemaRef) -> Arc<PlanProperties> {
    Arc::new(
        PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        )
        .with_scheduling_type(SchedulingType::Cooperative),
    )
}

/// The snapshot a scan reads: the session's, carried by the task's config.
pub(crate) fn scan_snapshot(
    context: &TaskContext,
    what: &str,
) -> datafusion::common::Result<Arc<dyn Snapshot>> {
    context
        .session_config()
        .get_extension::<ReadView>()
        .map(|view| view.snapshot.clone())
        .ok_or_else(|| {
            DataFusionError::Internal(format!("{what} executed without a read snapshot"))
        })
}

/// A stream of the batches `next_batch` reads until it returns `None`.
/// Reading never waits, so without tokio's budget a CPU-bound plan over a
/// scan would never yield: cancel, statement_timeout and shutdown could not
/// interrupt it.
pub(crate) fn scan_stream(
    schema: SchemaRef,
    mut next_batch: impl FnMut() -> datafusion::common::Result<Option<RecordBatch>> + Send + 'static,
) -> SendableRecordBatchStream {
    let stream =
        futures::stream::poll_fn(move |_cx| std::task::Poll::Ready(next_batch().transpose()));
    make_cooperative(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
}

struct ScanReader {
    def: Arc<TableDef>,
    snapshot: Arc<dyn Snapshot>,
    schema: SchemaRef,
    projection: Vec<usize>,
    with_key: bool,
    source: ScanSource,
    /// What is left to read; `None` once exhausted.
    range: Option<KeyRange>,
    remaining: usize,
    batch_size: usize,
}

impl ScanReader {
    fn next_batch(&mut self) -> datafusion::common::Result<Option<RecordBatch>> {
        let Some(range) = self.range.take() else {
            return Ok(None);
        };
        if self.remaining == 0 {
            return Ok(None);
        }
        let want = self.batch_size.min(self.remaining);
        let page = self
            .snapshot
            .scan(Keyspace::Data, &range, want)
            .map_err(|e| DataFusionError::External(Box::new(crate::error::storage_error(e))))?;
        if page.len() == want {
            if let Some((last, _)) = page.last() {
                self.range = Some(range.resume_after(last));
            }
        }
        self.remaining -= page.len();
        if page.is_empty() {
            return Ok(None);
        }
        let page = match self.source {
            ScanSource::Rows => page,
            ScanSource::Index => self.fetch_rows(page)?,
        };
        self.decode(page)
            .map(Some)
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }

    /// The rows that index entries (whose values are row keys) point to.
    fn fetch_rows(
        &self,
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> datafusion::common::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut rows = Vec::with_capacity(entries.len());
        for (_, row_key) in entries {
            let row = self
                .snapshot
                .get(Keyspace::Data, &row_key)
                .map_err(|e| DataFusionError::External(Box::new(crate::error::storage_error(e))))?;
            // Entries and rows change in one command, so a snapshot never
            // holds an entry without its row; skipping is only defensive.
            if let Some(bytes) = row {
                rows.push((row_key, bytes));
            }
        }
        Ok(rows)
    }

    fn decode(&self, page: Vec<(Vec<u8>, Vec<u8>)>) -> Result<RecordBatch, Error> {
        let kinds = self.def.kinds();
        let types = self.def.types();
        let visible = self.def.columns.len();
        let mut rows = Vec::with_capacity(page.len());
        for (_, value) in &page {
            rows.push(self.def.decode_row(&kinds, value)?);
        }
        let value_projection: Vec<usize> = self
            .projection
            .iter()
            .copied()
            .filter(|&i| i < visible)
            .collect();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.projection.len());
        let value_columns = rows_to_batch_projected(&types, &rows, &value_projection)?;
        let mut value_columns = value_columns.into_iter();
        for &index in &self.projection {
            if index < visible {
                columns.push(value_columns.next().ok_or_else(|| {
                    Error::new(sqlstate::INTERNAL_ERROR, "scan projection out of step")
                })?);
            } else if self.with_key {
                let mut keys = BinaryBuilder::new();
                for (key, _) in &page {
                    keys.append_value(key);
                }
                columns.push(Arc::new(keys.finish()));
            }
        }
        let options = RecordBatchOptions::new().with_row_count(Some(page.len()));
        RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)
            .map_err(|e| Error::new(sqlstate::INTERNAL_ERROR, format!("build scan batch: {e}")))
    }
}

/// Row ids for tables without a primary key: unique per node and increasing,
/// seeded from the clock so a restarted node does not reuse ids. A collision
/// (clock moved back) is still caught at apply by the `Insert` check.
pub struct RowIdGenerator {
    next: AtomicI64,
}

impl RowIdGenerator {
    pub fn new() -> Self {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        // 8 spare bits: 256 ids per microsecond before running ahead of the clock.
        Self {
            next: AtomicI64::new(micros << 8),
        }
    }

    pub fn reserve(&self, count: usize) -> i64 {
        self.next.fetch_add(count as i64, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::logical_expr::expr::Placeholder;
    use datafusion::prelude::{cast, col, lit};

    use super::*;
    use crate::catalog::ColumnDef;

    /// A table `t (a int8, b int8, v int8, PRIMARY KEY (a, b))`.
    fn composite_key_table() -> TableDef {
        let column = |name: &str| ColumnDef {
            name: name.to_string(),
            ty: SqlType::Int8,
            nullable: false,
            default: None,
            missing_value: None,
        };
        TableDef {
            id: 1,
            schema: "public".to_string(),
            name: "t".to_string(),
            columns: vec![column("a"), column("b"), column("v")],
            primary_key: vec![0, 1],
            indexes: Vec::new(),
            topic: None,
            checks: Vec::new(),
            foreign_keys: Vec::new(),
        }
    }

    #[test]
    fn only_equalities_pinning_the_whole_key_are_exact() {
        let def = composite_key_table();
        let exact = |filters: Vec<Expr>| {
            let refs: Vec<&Expr> = filters.iter().collect();
            exact_key_equalities(&def, &refs)
        };
        let a1 = col("a").eq(lit(1i64));
        let b2 = col("b").eq(lit(2i64));
        assert_eq!(exact(vec![a1.clone(), b2.clone()]), [true, true]);
        assert_eq!(
            exact(vec![col("v").gt(lit(0i64)), b2.clone(), a1.clone()]),
            [false, true, true]
        );
        // One per column: a second equality on `a` is left to DataFusion.
        assert_eq!(
            exact(vec![a1.clone(), col("a").eq(lit(3i64)), b2.clone()]),
            [true, false, true]
        );
        assert_eq!(exact(vec![a1.clone()]), [false]);
        assert_eq!(
            exact(vec![a1.clone(), col("b").gt(lit(2i64))]),
            [false, false]
        );
        // A value the key cannot hold, or a cast column, is no key equality.
        assert_eq!(
            exact(vec![a1.clone(), col("b").eq(lit(2.5f64))]),
            [false, false]
        );
        let cast_b = cast(col("b"), DataType::Utf8).eq(lit("2"));
        assert_eq!(exact(vec![a1.clone(), cast_b]), [false, false]);
        // A parameter counts once its type is the column's.
        let typed = Expr::Placeholder(Placeholder::new_with_field(
            "$1".into(),
            Some(Arc::new(Field::new("", DataType::Int64, true))),
        ));
        let untyped = Expr::Placeholder(Placeholder::new_with_field("$1".into(), None));
        assert_eq!(exact(vec![a1.clone(), col("b").eq(typed)]), [true, true]);
        assert_eq!(exact(vec![a1, col("b").eq(untyped)]), [false, false]);
    }

    #[test]
    fn an_equality_no_row_can_meet_scans_nothing() {
        let def = composite_key_table();
        let range = |filters: Vec<Expr>| {
            let (_, range, text, one_key) = scan_source_for(&def, &filters);
            let empty = matches!(
                (&range.start, &range.end),
                (Bound::Included(start), Bound::Excluded(end)) if start == end
            );
            (empty, text, one_key)
        };
        let null = Expr::Literal(ScalarValue::Int64(None), None);
        let a1 = col("a").eq(lit(1i64));
        assert_eq!(
            range(vec![a1.clone(), col("b").eq(null)]),
            (true, "none".into(), true)
        );
        let conflicting = vec![a1.clone(), col("a").eq(lit(2i64)), col("b").eq(lit(1i64))];
        assert_eq!(range(conflicting), (true, "none".into(), true));
        let same_twice = vec![a1.clone(), a1, col("b").eq(lit(1i64))];
        assert!(!range(same_twice).0);
    }

    #[test]
    fn only_a_fully_pinned_primary_key_is_one_key() {
        let def = composite_key_table();
        let one_key = |filters: Vec<Expr>| scan_source_for(&def, &filters).3;
        assert!(one_key(vec![
            col("a").eq(lit(1i64)),
            col("b").eq(lit(2i64))
        ]));
        assert!(one_key(vec![col("a")
            .eq(lit(1i64))
            .and(col("b").eq(lit(2i64)))]));
        assert!(!one_key(vec![col("a").eq(lit(1i64))]));
        assert!(!one_key(vec![
            col("a").eq(lit(1i64)),
            col("b").gt(lit(2i64))
        ]));
        assert!(!one_key(vec![col("v").eq(lit(1i64))]));
        assert!(!one_key(Vec::new()));
    }

    /// A scan planned with `$n` in its filters and then bound reads the range
    /// a scan planned with the values as literals reads, and refuses to run
    /// before it is bound.
    #[tokio::test]
    async fn a_bound_scan_reads_what_literals_would() {
        let table = SluiceTable::new(Arc::new(composite_key_table()), HashMap::new());
        let state = datafusion::prelude::SessionContext::new().state();
        let param = |id: &str| {
            Expr::Placeholder(Placeholder::new_with_field(
                id.into(),
                Some(Arc::new(Field::new("", DataType::Int64, true))),
            ))
        };
        let scan = |filters: Vec<Expr>| {
            let (table, state) = (&table, &state);
            async move {
                let plan = table.scan(state, None, &filters, None).await.unwrap();
                plan.downcast_ref::<SluiceScanExec>().unwrap().clone()
            }
        };
        let unbound = scan(vec![col("a").eq(param("$1")), col("b").eq(param("$2"))]).await;
        assert!(unbound.is_unbound());
        let task = Arc::new(TaskContext::default());
        assert!(Arc::new(unbound.clone()).execute(0, task).is_err());
        for (a, b) in [
            (Some(1i64), Some(2i64)),
            (Some(7), Some(-3)),
            (None, Some(2)),
        ] {
            let bound = unbound
                .bind(&ParamValues::from(vec![
                    ScalarValue::Int64(a),
                    ScalarValue::Int64(b),
                ]))
                .unwrap();
            let literal = scan(vec![
                col("a").eq(lit(ScalarValue::Int64(a))),
                col("b").eq(lit(ScalarValue::Int64(b))),
            ])
            .await;
            assert!(!bound.is_unbound());
            assert_eq!(bound.range, literal.range, "{a:?} {b:?}");
            assert_eq!(bound.range_text, literal.range_text);
            assert_eq!(bound.reads_one_key, literal.reads_one_key);
        }
        let missing = unbound.bind(&ParamValues::from(vec![ScalarValue::Int64(Some(1))]));
        assert!(missing.is_err());
    }
}
