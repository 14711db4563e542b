//! Correlated subqueries that DataFusion cannot decorrelate, evaluated per
//! outer row.
//!
//! DataFusion turns equality-correlated subqueries into joins, but leaves a
//! scalar subquery such as `(SELECT count(*) FROM t AS x WHERE x.b < t.b)`,
//! or an `EXISTS` in a select list, in the plan, and its physical planner
//! then refuses it. PostgreSQL answers these with a nested loop ("SubPlan"),
//! and so does Sluice:
//!
//! 1. [`ApplyCorrelatedSubqueries`], the last optimizer rule, finds each such
//!    subquery in a projection, filter, sort or aggregate. It replaces the
//!    subquery's outer column references with [`OuterValue`] calls that read
//!    one shared slot per column, and puts an [`ApplyNode`] between the node
//!    and its input. The apply node's inputs are the outer input and the
//!    rewritten subqueries, so the optimizer and the physical planner treat
//!    the subqueries like any other plan; the expression now reads a column
//!    the apply node appends.
//! 2. [`ApplyExec`] plans each subquery once. For every outer row it stores
//!    the row's outer values in the slots, re-executes the subquery plans
//!    (state reset) and appends their results: the single value of a scalar
//!    subquery (NULL when it returns no row, 21000 when it returns several),
//!    or whether an `EXISTS` subquery returns a row. Results are memoized
//!    per distinct outer-value tuple, so a repeated key costs one lookup.
//!
//! The cost is one subquery execution per distinct outer tuple, as in
//! PostgreSQL's SubPlan; the subqueries DataFusion *can* decorrelate never
//! reach this module.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session as DfSession;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, DFSchemaRef, DataFusionError, Result, ScalarValue};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::expr::Exists;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    ColumnarValue, Expr, Extension, LogicalPlan, LogicalPlanBuilder, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Subquery, UserDefinedLogicalNode,
    UserDefinedLogicalNodeCore, Volatility,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{reset_plan_states, Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    collect, DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, Partitioning,
    PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::TryStreamExt;

use crate::error::{sqlstate, Error};

/// Distinct outer tuples remembered per execution before the memo starts over.
const MEMO_CAPACITY: usize = 4096;

/// What an apply node computes for one subquery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd)]
enum ApplyKind {
    /// The subquery's single value, or NULL when it returns no row.
    Scalar,
    /// Whether the subquery returns at least one row.
    Exists,
}

/// The current outer row's values, read by [`OuterValue`] calls inside the
/// subquery plans of one apply node.
#[derive(Debug, Default)]
struct OuterSlots {
    values: RwLock<Vec<ScalarValue>>,
    /// Held while one outer row's subqueries run, so two executions of the
    /// same plan can never see each other's values.
    turn: tokio::sync::Mutex<()>,
}

/// `outer_value(i)`: the i-th outer column of the row being evaluated.
#[derive(Debug)]
struct OuterValue {
    index: usize,
    column: Column,
    field: FieldRef,
    slots: Arc<OuterSlots>,
    signature: Signature,
}

impl PartialEq for OuterValue {
    fn eq(&self, other: &Self) -> bool {
        self.index == other.index && Arc::ptr_eq(&self.slots, &other.slots)
    }
}

impl Eq for OuterValue {}

impl Hash for OuterValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.index.hash(state);
        (Arc::as_ptr(&self.slots) as usize).hash(state);
    }
}

impl ScalarUDFImpl for OuterValue {
    fn name(&self) -> &str {
        "outer_value"
    }

    fn display_name(&self, _args: &[Expr]) -> Result<String> {
        Ok(format!("outer({})", self.column.flat_name()))
    }

    fn schema_name(&self, _args: &[Expr]) -> Result<String> {
        Ok(format!("outer({})", self.column.flat_name()))
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.field.data_type().clone())
    }

    fn return_field_from_args(&self, _args: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(Arc::clone(&self.field))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let values = self
            .slots
            .values
            .read()
            .map_err(|_| DataFusionError::Internal("outer value slots poisoned".into()))?;
        let value = values.get(self.index).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!("outer value {} is not set", self.index))
        })?;
        Ok(ColumnarValue::Scalar(value))
    }
}

/// The optimizer rule of step 1 in the module docs.
#[derive(Debug, Default)]
pub struct ApplyCorrelatedSubqueries;

impl OptimizerRule for ApplyCorrelatedSubqueries {
    fn name(&self) -> &str {
        "sluice_apply_correlated_subqueries"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        if !matches!(
            plan,
            LogicalPlan::Projection(_)
                | LogicalPlan::Filter(_)
                | LogicalPlan::Sort(_)
                | LogicalPlan::Aggregate(_)
        ) || !has_leftover_subquery(&plan)?
        {
            return Ok(Transformed::no(plan));
        }
        let input = Arc::new(plan.inputs()[0].clone());
        let mut apply = ApplyBuilder::new(Arc::clone(&input));
        let names = NamePreserver::new(&plan);
        let rewritten = plan.clone().map_expressions(|expr| {
            let saved = names.save(&expr);
            let rewritten = expr.transform_up(|e| apply.replace(e))?;
            Ok(rewritten.update_data(|e| saved.restore(e)))
        })?;
        if apply.subqueries.is_empty() {
            return Ok(Transformed::no(plan));
        }
        let original_schema = Arc::clone(plan.schema());
        let apply_plan = apply.build()?;
        let node = rewritten.data;
        let node = node.with_new_exprs(node.expressions(), vec![apply_plan])?;
        // A filter or sort passes its input's columns through: drop the
        // apply node's extra columns again.
        let node = if node.schema().fields().len() != original_schema.fields().len() {
            LogicalPlanBuilder::from(node)
                .project(original_schema.columns().into_iter().map(Expr::Column))?
                .build()?
        } else {
            node
        };
        Ok(Transformed::yes(node))
    }
}

fn is_leftover(expr: &Expr) -> bool {
    match expr {
        // Uncorrelated scalar subqueries have their own physical operator.
        Expr::ScalarSubquery(subquery) => !subquery.outer_ref_columns.is_empty(),
        Expr::Exists(_) => true,
        _ => false,
    }
}

fn has_leftover_subquery(plan: &LogicalPlan) -> Result<bool> {
    let mut found = false;
    plan.apply_expressions(|expr| {
        found = expr.exists(|e| Ok(is_leftover(e)))?;
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    Ok(found)
}

static NEXT_APPLY_ID: AtomicU64 = AtomicU64::new(1);

/// Collects the subqueries of one plan node into one apply node.
struct ApplyBuilder {
    input: Arc<LogicalPlan>,
    slots: Arc<OuterSlots>,
    outer: Vec<Column>,
    subqueries: Vec<LogicalPlan>,
    kinds: Vec<ApplyKind>,
    names: Vec<String>,
}

impl ApplyBuilder {
    fn new(input: Arc<LogicalPlan>) -> ApplyBuilder {
        ApplyBuilder {
            input,
            slots: Arc::default(),
            outer: Vec::new(),
            subqueries: Vec::new(),
            kinds: Vec::new(),
            names: Vec::new(),
        }
    }

    fn replace(&mut self, expr: Expr) -> Result<Transformed<Expr>> {
        match expr {
            Expr::ScalarSubquery(subquery) if !subquery.outer_ref_columns.is_empty() => {
                match self.add(&subquery, ApplyKind::Scalar)? {
                    Some(column) => Ok(Transformed::yes(column)),
                    None => Ok(Transformed::no(Expr::ScalarSubquery(subquery))),
                }
            }
            Expr::Exists(Exists { subquery, negated }) => {
                match self.add(&subquery, ApplyKind::Exists)? {
                    Some(column) if negated => Ok(Transformed::yes(!column)),
                    Some(column) => Ok(Transformed::yes(column)),
                    None => Ok(Transformed::no(Expr::Exists(Exists { subquery, negated }))),
                }
            }
            other => Ok(Transformed::no(other)),
        }
    }

    /// Adds one subquery; `None` when one of its outer references is not a
    /// column of the input (it belongs to a query further out).
    fn add(&mut self, subquery: &Subquery, kind: ApplyKind) -> Result<Option<Expr>> {
        let mut calls = HashMap::new();
        for outer in &subquery.outer_ref_columns {
            let Expr::OuterReferenceColumn(ref field, ref column) = *outer else {
                return Ok(None);
            };
            if self.input.schema().maybe_index_of_column(column).is_none() {
                return Ok(None);
            }
            let index = match self.outer.iter().position(|c| c == column) {
                Some(index) => index,
                None => {
                    self.outer.push(column.clone());
                    self.outer.len() - 1
                }
            };
            let call = ScalarUDF::new_from_impl(OuterValue {
                index,
                column: column.clone(),
                field: Arc::clone(field),
                slots: Arc::clone(&self.slots),
                signature: Signature::nullary(Volatility::Volatile),
            })
            .call(Vec::new());
            calls.insert(column.clone(), call);
        }
        let plan = bind_outer_references(subquery.subquery.as_ref().clone(), &calls)?;
        let plan = match kind {
            ApplyKind::Scalar => plan,
            ApplyKind::Exists => LogicalPlanBuilder::from(plan).limit(0, Some(1))?.build()?,
        };
        let id = NEXT_APPLY_ID.fetch_add(1, AtomicOrdering::Relaxed);
        let name = format!("__sluice_subquery_{id}");
        self.subqueries.push(plan);
        self.kinds.push(kind);
        self.names.push(name.clone());
        Ok(Some(Expr::Column(Column::from_name(name))))
    }

    fn build(self) -> Result<LogicalPlan> {
        let node = ApplyNode::try_new(
            self.input.as_ref().clone(),
            self.subqueries,
            self.kinds,
            self.names,
            self.outer,
            self.slots,
        )?;
        Ok(LogicalPlan::Extension(Extension {
            node: Arc::new(node),
        }))
    }
}

/// Replaces the outer references of a subquery plan (not of subqueries
/// nested in it, which refer to their own outer query) with slot reads,
/// keeping every output name.
fn bind_outer_references(plan: LogicalPlan, calls: &HashMap<Column, Expr>) -> Result<LogicalPlan> {
    plan.transform_up(|node| {
        let names = NamePreserver::new(&node);
        let node = node.map_expressions(|expr| {
            let saved = names.save(&expr);
            let rewritten = expr.transform_up(|e| match e {
                Expr::OuterReferenceColumn(field, column) => match calls.get(&column) {
                    Some(call) => Ok(Transformed::yes(call.clone())),
                    None => Ok(Transformed::no(Expr::OuterReferenceColumn(field, column))),
                },
                other => Ok(Transformed::no(other)),
            })?;
            Ok(rewritten.update_data(|e| saved.restore(e)))
        })?;
        if node.transformed {
            Ok(Transformed::yes(node.data.recompute_schema()?))
        } else {
            Ok(node)
        }
    })
    .map(|t| t.data)
}

/// The logical apply operator: its input's columns, then one column per
/// subquery.
#[derive(Debug, Clone)]
struct ApplyNode {
    input: LogicalPlan,
    subqueries: Vec<LogicalPlan>,
    kinds: Vec<ApplyKind>,
    names: Vec<String>,
    outer: Vec<Column>,
    slots: Arc<OuterSlots>,
    schema: DFSchemaRef,
}

impl ApplyNode {
    fn try_new(
        input: LogicalPlan,
        subqueries: Vec<LogicalPlan>,
        kinds: Vec<ApplyKind>,
        names: Vec<String>,
        outer: Vec<Column>,
        slots: Arc<OuterSlots>,
    ) -> Result<ApplyNode> {
        let mut fields = Vec::with_capacity(subqueries.len());
        for ((subquery, kind), name) in subqueries.iter().zip(&kinds).zip(&names) {
            let data_type = match kind {
                ApplyKind::Scalar => subquery.schema().field(0).data_type().clone(),
                ApplyKind::Exists => DataType::Boolean,
            };
            fields.push((None, Arc::new(Field::new(name, data_type, true))));
        }
        let extra = DFSchema::new_with_metadata(fields, HashMap::new())?;
        let schema = Arc::new(input.schema().join(&extra)?);
        Ok(ApplyNode {
            input,
            subqueries,
            kinds,
            names,
            outer,
            slots,
            schema,
        })
    }
}

impl PartialEq for ApplyNode {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.slots, &other.slots)
            && self.names == other.names
            && self.input == other.input
            && self.subqueries == other.subqueries
    }
}

impl Eq for ApplyNode {}

impl Hash for ApplyNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.names.hash(state);
        self.input.hash(state);
        self.subqueries.hash(state);
    }
}

impl PartialOrd for ApplyNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.names
            .partial_cmp(&other.names)
            .filter(|order| *order != Ordering::Equal)
    }
}

impl UserDefinedLogicalNodeCore for ApplyNode {
    fn name(&self) -> &str {
        "SluiceApply"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        std::iter::once(&self.input)
            .chain(self.subqueries.iter())
            .collect()
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        self.outer.iter().cloned().map(Expr::Column).collect()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let outer: Vec<String> = self.outer.iter().map(|c| c.flat_name()).collect();
        write!(f, "SluiceApply: outer=[{}]", outer.join(", "))?;
        for (kind, name) in self.kinds.iter().zip(&self.names) {
            write!(f, ", {name}={kind:?}")?;
        }
        Ok(())
    }

    fn with_exprs_and_inputs(
        &self,
        exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        if inputs.len() != self.subqueries.len() + 1 {
            return Err(DataFusionError::Internal(
                "SluiceApply rebuilt with the wrong number of inputs".into(),
            ));
        }
        let outer = exprs
            .into_iter()
            .map(|expr| match expr {
                Expr::Column(column) => Ok(column),
                other => Err(DataFusionError::Internal(format!(
                    "SluiceApply outer reference is not a column: {other}"
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        let subqueries = inputs.split_off(1);
        let input = inputs.remove(0);
        ApplyNode::try_new(
            input,
            subqueries,
            self.kinds.clone(),
            self.names.clone(),
            outer,
            Arc::clone(&self.slots),
        )
    }
}

/// Plans [`ApplyNode`]s; everything else goes to DataFusion's planner.
#[derive(Debug, Default)]
pub struct SluiceQueryPlanner;

#[async_trait]
impl QueryPlanner for SluiceQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn DfSession,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(ApplyPlanner)])
            .create_physical_plan(logical_plan, session)
            .await
    }
}

struct ApplyPlanner;

#[async_trait]
impl ExtensionPlanner for ApplyPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn DfSession,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<ApplyNode>() else {
            return Ok(None);
        };
        let outer_indices = node
            .outer
            .iter()
            .map(|column| node.input.schema().index_of_column(column))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Arc::new(ApplyExec::new(
            Arc::clone(&physical_inputs[0]),
            physical_inputs[1..].to_vec(),
            node.kinds.clone(),
            outer_indices,
            Arc::clone(&node.slots),
            Arc::new(node.schema.as_arrow().clone()),
        ))))
    }
}

/// The physical apply operator of step 2 in the module docs.
#[derive(Debug)]
struct ApplyExec {
    input: Arc<dyn ExecutionPlan>,
    subqueries: Vec<Arc<dyn ExecutionPlan>>,
    kinds: Vec<ApplyKind>,
    outer_indices: Vec<usize>,
    slots: Arc<OuterSlots>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl ApplyExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        subqueries: Vec<Arc<dyn ExecutionPlan>>,
        kinds: Vec<ApplyKind>,
        outer_indices: Vec<usize>,
        slots: Arc<OuterSlots>,
        schema: SchemaRef,
    ) -> ApplyExec {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        ApplyExec {
            input,
            subqueries,
            kinds,
            outer_indices,
            slots,
            schema,
            properties,
        }
    }
}

impl DisplayAs for ApplyExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SluiceApplyExec: outer_columns={:?}, subqueries={:?}",
            self.outer_indices, self.kinds
        )
    }
}

impl ExecutionPlan for ApplyExec {
    fn name(&self) -> &str {
        "SluiceApplyExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        std::iter::once(&self.input)
            .chain(self.subqueries.iter())
            .collect()
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        let mut required = vec![Distribution::UnspecifiedDistribution; self.subqueries.len() + 1];
        // One stream at a time writes the shared outer-value slots.
        required[0] = Distribution::SinglePartition;
        required
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false; self.subqueries.len() + 1]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        let mut maintains = vec![false; self.subqueries.len() + 1];
        maintains[0] = true;
        maintains
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != self.subqueries.len() + 1 {
            return Err(DataFusionError::Internal(
                "SluiceApplyExec rebuilt with the wrong number of children".into(),
            ));
        }
        let subqueries = children.split_off(1);
        Ok(Arc::new(ApplyExec::new(
            children.remove(0),
            subqueries,
            self.kinds.clone(),
            self.outer_indices.clone(),
            Arc::clone(&self.slots),
            Arc::clone(&self.schema),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "SluiceApplyExec has one partition, asked for {partition}"
            )));
        }
        let input = self.input.execute(0, Arc::clone(&context))?;
        let evaluator = Arc::new(RowEvaluator {
            subqueries: self.subqueries.clone(),
            kinds: self.kinds.clone(),
            outer_indices: self.outer_indices.clone(),
            slots: Arc::clone(&self.slots),
            schema: Arc::clone(&self.schema),
            context,
            memo: tokio::sync::Mutex::new(HashMap::new()),
        });
        let stream = input.and_then(move |batch| {
            let evaluator = Arc::clone(&evaluator);
            async move { evaluator.extend(batch).await }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }
}

/// Evaluates the subqueries of one apply execution row by row.
struct RowEvaluator {
    subqueries: Vec<Arc<dyn ExecutionPlan>>,
    kinds: Vec<ApplyKind>,
    outer_indices: Vec<usize>,
    slots: Arc<OuterSlots>,
    schema: SchemaRef,
    context: Arc<TaskContext>,
    memo: tokio::sync::Mutex<HashMap<Vec<ScalarValue>, Vec<ScalarValue>>>,
}

impl RowEvaluator {
    /// The batch with one more column per subquery.
    async fn extend(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let mut results: Vec<Vec<ScalarValue>> =
            vec![Vec::with_capacity(batch.num_rows()); self.subqueries.len()];
        let mut memo = self.memo.lock().await;
        for row in 0..batch.num_rows() {
            let outer = self
                .outer_indices
                .iter()
                .map(|&i| ScalarValue::try_from_array(batch.column(i), row))
                .collect::<Result<Vec<_>>>()?;
            let values = match memo.get(&outer) {
                Some(values) => values.clone(),
                None => {
                    let values = self.evaluate(&outer).await?;
                    if memo.len() >= MEMO_CAPACITY {
                        memo.clear();
                    }
                    memo.insert(outer, values.clone());
                    values
                }
            };
            for (column, value) in results.iter_mut().zip(values) {
                column.push(value);
            }
        }
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        for (values, field) in results
            .into_iter()
            .zip(self.schema.fields().iter().skip(batch.num_columns()))
        {
            columns.push(if values.is_empty() {
                datafusion::arrow::array::new_empty_array(field.data_type())
            } else {
                ScalarValue::iter_to_array(values)?
            });
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }

    /// Runs every subquery for one outer tuple.
    async fn evaluate(&self, outer: &[ScalarValue]) -> Result<Vec<ScalarValue>> {
        let _turn = self.slots.turn.lock().await;
        *self
            .slots
            .values
            .write()
            .map_err(|_| DataFusionError::Internal("outer value slots poisoned".into()))? =
            outer.to_vec();
        let mut values = Vec::with_capacity(self.subqueries.len());
        for (plan, kind) in self.subqueries.iter().zip(&self.kinds) {
            let plan = reset_plan_states(Arc::clone(plan))?;
            let output_type = plan.schema().field(0).data_type().clone();
            let batches = collect(plan, Arc::clone(&self.context)).await?;
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            values.push(match kind {
                ApplyKind::Exists => ScalarValue::Boolean(Some(rows > 0)),
                ApplyKind::Scalar if rows > 1 => {
                    return Err(DataFusionError::External(Box::new(Error::new(
                        sqlstate::CARDINALITY_VIOLATION,
                        "more than one row returned by a subquery used as an expression",
                    ))))
                }
                ApplyKind::Scalar => match batches.iter().find(|b| b.num_rows() > 0) {
                    Some(batch) => ScalarValue::try_from_array(batch.column(0), 0)?,
                    None => ScalarValue::try_from(&output_type)?,
                },
            });
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outer_value_equality_is_per_slot_set() {
        let slots = Arc::new(OuterSlots::default());
        let make = |index, slots: &Arc<OuterSlots>| OuterValue {
            index,
            column: Column::from_name("b"),
            field: Arc::new(Field::new("b", DataType::Int32, true)),
            slots: Arc::clone(slots),
            signature: Signature::nullary(Volatility::Volatile),
        };
        assert_eq!(make(0, &slots), make(0, &slots));
        assert_ne!(make(0, &slots), make(1, &slots));
        assert_ne!(make(0, &slots), make(0, &Arc::new(OuterSlots::default())));
    }
}
