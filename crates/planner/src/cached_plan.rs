//! Plans kept by prepared statements.
//!
//! A prepared statement is planned once; what each execution still pays is
//! binding its `$n` values and, unless the physical plan is kept (below),
//! building the physical plan. The logical optimizer (predicate pushdown
//! into the key-range scan, projection pruning, decorrelation) runs at
//! prepare time on the plan with its placeholders in place, so
//! `SELECT … WHERE id = $1` reaches the scan as `id = $1` and binding turns
//! it into `id = 42` without another optimizer pass.
//!
//! Two kinds of plan are optimized per execution instead:
//! - plans that call a non-immutable function: the optimizer folds `now()` and
//!   `current_date` to constants, which would freeze them at prepare time;
//! - plans the optimizer cannot handle while placeholders are untyped (it is
//!   tried, and on error the statement falls back to per-execution
//!   optimization, which is what every plan did before this cache).
//!
//! The physical plan is kept too when running it again is sound, which
//! covers point and range reads by key: it is built only of operators that
//! keep nothing between executions (Sluice's key-range scans, projections,
//! filters, limits), and its `$n` sit only in the scans' key ranges (a `$n`
//! anywhere else would fail physical planning: DataFusion has no physical
//! placeholder). Other statements plan per execution as before; the logical
//! plan is checked first ([`may_keep_physical`]), so that they are not
//! planned physically at prepare only to be planned again. Each
//! execution runs a fresh copy of the kept plan ([`instantiate`]) whose scans
//! chose their ranges from the bound values. Physical planning cost a point
//! SELECT about a third of the server's CPU.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::datasource::source_as_provider;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
use datafusion::physical_plan::placeholder_row::PlaceholderRowExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::ExecutionPlan;

use crate::error::{from_datafusion, sqlstate, Error, Result};
use crate::table::{has_placeholder, SluiceScanExec, SluiceTable};

/// A logical plan, optimized once when that is safe.
#[derive(Debug, Clone)]
pub(crate) struct CachedPlan {
    plan: Arc<LogicalPlan>,
    /// Whether `plan` has already been through the logical optimizer.
    optimized: bool,
    /// The type each `$n` has in the plan, ordered by n; a bound value is cast to it.
    placeholder_types: Vec<Option<DataType>>,
    /// `plan`'s physical plan, when it can run again (see the module doc);
    /// its scans wait for their `$n` values.
    kept_physical: Option<Arc<dyn ExecutionPlan>>,
    /// Set by [`Self::bind`] from `kept_physical`: the plan to run, once.
    physical: Option<Arc<dyn ExecutionPlan>>,
}

impl CachedPlan {
    /// Keeps `plan` (as produced by the SQL planner), optimizing it now when
    /// the result cannot depend on the moment it runs.
    pub(crate) async fn new(state: &SessionState, plan: LogicalPlan) -> Result<Self> {
        let inferred = plan.get_parameter_types().map_err(from_datafusion)?;
        let count = inferred
            .keys()
            .filter_map(|name| name.strip_prefix('$')?.parse::<usize>().ok())
            .max()
            .unwrap_or(0);
        let placeholder_types = (1..=count)
            .map(|n| inferred.get(&format!("${n}")).cloned().flatten())
            .collect();
        let (plan, optimized) = if is_immutable(&plan) {
            match state.optimize(&plan) {
                Ok(optimized) => (optimized, true),
                Err(_) => (plan, false),
            }
        } else {
            (plan, false)
        };
        let kept_physical = if optimized && may_keep_physical(&plan) {
            reusable_physical(state, &plan).await
        } else {
            None
        };
        Ok(Self {
            plan: Arc::new(plan),
            optimized,
            placeholder_types,
            kept_physical,
            physical: None,
        })
    }

    /// The plan as the SQL planner produced it or optimized; see [`Self::is_optimized`].
    pub(crate) fn plan(&self) -> &LogicalPlan {
        &self.plan
    }

    pub(crate) fn is_optimized(&self) -> bool {
        self.optimized
    }

    /// The physical plan to run, on a plan [`Self::bind`] made from one
    /// whose physical plan was kept.
    pub(crate) fn physical(&self) -> Option<&Arc<dyn ExecutionPlan>> {
        self.physical.as_ref()
    }

    /// Substitutes parameter values, cast to the types the plan expects
    /// (`declared` where the plan leaves a placeholder untyped).
    pub(crate) fn bind(&self, declared: &[DataType], params: Vec<ScalarValue>) -> Result<Self> {
        check_param_count(declared.len(), params.len())?;
        if params.is_empty() && self.kept_physical.is_none() {
            return Ok(self.clone());
        }
        let mut values = Vec::with_capacity(params.len());
        for (i, value) in params.into_iter().enumerate() {
            let target = self
                .placeholder_types
                .get(i)
                .cloned()
                .flatten()
                .unwrap_or_else(|| declared[i].clone());
            values.push(bind_value(value, &target, i)?);
        }
        let values = ParamValues::from(values);
        let (plan, physical) = match &self.kept_physical {
            Some(kept) => (
                self.plan.clone(),
                Some(instantiate(kept, &values).map_err(from_datafusion)?),
            ),
            None => {
                let plan = LogicalPlan::clone(&self.plan)
                    .with_param_values(values)
                    .map_err(from_datafusion)?;
                (Arc::new(plan), None)
            }
        };
        Ok(Self {
            plan,
            optimized: self.optimized,
            placeholder_types: Vec::new(),
            kept_physical: None,
            physical,
        })
    }
}

/// Whether the optimized logical `plan` can give a physical plan worth
/// keeping: scans of Sluice tables under projections, filters and limits,
/// with `$n` only in the scans' filters. Anything else is planned per
/// execution, so building its physical plan at prepare would be wasted.
fn may_keep_physical(plan: &LogicalPlan) -> bool {
    let mut may = true;
    let _ = plan.apply_with_subqueries(|node| {
        may = match node {
            LogicalPlan::TableScan(scan) => {
                source_as_provider(&scan.source).is_ok_and(|provider| provider.is::<SluiceTable>())
            }
            LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::EmptyRelation(_) => !node.expressions().iter().any(has_placeholder),
            _ => false,
        };
        Ok(if may {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    may
}

/// `plan`'s physical plan if it can be kept and run again (module doc).
async fn reusable_physical(
    state: &SessionState,
    plan: &LogicalPlan,
) -> Option<Arc<dyn ExecutionPlan>> {
    // Failing here is expected: a `$n` outside a scan's key range.
    let physical = state
        .query_planner()
        .create_physical_plan(plan, state)
        .await
        .ok()?;
    let stateful = physical
        .exists(|node| Ok(!keeps_nothing_between_runs(node.as_ref())))
        .ok()?;
    (!stateful).then_some(physical)
}

/// Operators whose fresh copy (with the same children's properties) runs
/// as a newly planned one would. Joins, sorts and aggregates are left out:
/// some keep state in the plan (a join's build side, dynamic filters).
fn keeps_nothing_between_runs(node: &dyn ExecutionPlan) -> bool {
    node.is::<SluiceScanExec>()
        || node.is::<ProjectionExec>()
        || node.is::<FilterExec>()
        || node.is::<GlobalLimitExec>()
        || node.is::<LocalLimitExec>()
        || node.is::<EmptyExec>()
        || node.is::<PlaceholderRowExec>()
}

/// A fresh copy of a kept plan to run once: scans take `params` into their
/// key ranges, and every other operator is re-created with its children's
/// properties kept (a scan's do not depend on its range), so that none
/// carries metrics from an earlier execution.
fn instantiate(
    node: &Arc<dyn ExecutionPlan>,
    params: &ParamValues,
) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
    if let Some(scan) = node.downcast_ref::<SluiceScanExec>() {
        // A scan keeps nothing of its runs either: only an unbound one changes.
        return Ok(if scan.is_unbound() {
            Arc::new(scan.bind(params)?)
        } else {
            Arc::clone(node)
        });
    }
    let children = node
        .children()
        .into_iter()
        .map(|child| instantiate(child, params))
        .collect::<datafusion::common::Result<Vec<_>>>()?;
    Arc::clone(node).replace_children(
        children,
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
    )
}

/// Parameter `index` (0-based) as a value of `target`, the type its statement gives it.
pub(crate) fn bind_value(
    value: ScalarValue,
    target: &DataType,
    index: usize,
) -> Result<ScalarValue> {
    if value.data_type() == *target || value.is_null() && *target == DataType::Null {
        return Ok(value);
    }
    value
        .cast_to(target)
        .map_err(|e| from_datafusion(e).with_detail(format!("parameter ${}", index + 1)))
}

/// Fails when a Bind supplies another number of parameters than the statement has.
pub(crate) fn check_param_count(required: usize, supplied: usize) -> Result<()> {
    if supplied == required {
        return Ok(());
    }
    Err(Error::new(
        sqlstate::PROTOCOL_VIOLATION,
        format!(
            "bind message supplies {supplied} parameters, but prepared statement requires {required}"
        ),
    ))
}

/// Whether every function `plan` calls is immutable, so that optimizing it
/// (which evaluates constant calls) gives the same plan whenever it is done.
fn is_immutable(plan: &LogicalPlan) -> bool {
    let mut immutable = true;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::ScalarFunction(call) = e {
                    if call.func.signature().volatility != Volatility::Immutable {
                        immutable = false;
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    immutable
}

/// One type per `$n`, ordered by n: the client's where given, else DataFusion's
/// inference, else text (the client may send any literal as text).
pub(crate) fn parameter_types(
    plan: &LogicalPlan,
    declared: &[Option<DataType>],
) -> Result<Vec<DataType>> {
    let inferred = plan.get_parameter_types().map_err(from_datafusion)?;
    let cast = cast_parameter_types(plan);
    let mut max = declared.len();
    for name in inferred.keys() {
        if let Some(n) = name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
            max = max.max(n);
        }
    }
    Ok((1..=max)
        .map(|n| {
            declared
                .get(n - 1)
                .cloned()
                .flatten()
                .or_else(|| inferred.get(&format!("${n}")).cloned().flatten())
                .or_else(|| cast.get(&format!("${n}")).cloned())
                .unwrap_or(DataType::Utf8)
        })
        .collect())
}

/// Types of parameters that appear only under a cast (`$1::int`), which
/// DataFusion leaves uninferred but PostgreSQL types by the cast.
fn cast_parameter_types(plan: &LogicalPlan) -> HashMap<String, DataType> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut found = HashMap::new();
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                let cast = match e {
                    Expr::Cast(c) => Some((&c.expr, &c.field)),
                    Expr::TryCast(c) => Some((&c.expr, &c.field)),
                    _ => None,
                };
                if let Some((inner, field)) = cast {
                    if let Expr::Placeholder(p) = inner.as_ref() {
                        found
                            .entry(p.id.clone())
                            .or_insert_with(|| field.data_type().clone());
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn cached(sql: &str) -> CachedPlan {
        let ctx = SessionContext::new();
        let state = ctx.state();
        let plan = state.create_logical_plan(sql).await.unwrap();
        CachedPlan::new(&state, plan).await.unwrap()
    }

    #[tokio::test]
    async fn immutable_plans_are_optimized_once() {
        let plan = cached("SELECT a FROM (VALUES (1), (2)) AS t(a) WHERE a = $1 + 0").await;
        assert!(plan.is_optimized());
        let bound = plan
            .bind(&[DataType::Int64], vec![ScalarValue::Int64(Some(2))])
            .unwrap();
        assert!(bound.is_optimized());
        assert!(!format!("{}", bound.plan().display_indent()).contains("$1"));
    }

    #[tokio::test]
    async fn only_plans_of_stateless_operators_without_loose_parameters_keep_their_physical_plan() {
        let kept = cached("SELECT 1 + 1 AS two WHERE true LIMIT 1").await;
        let template = kept.kept_physical.clone().expect("kept");
        let first = kept.bind(&[], Vec::new()).unwrap();
        let second = kept.bind(&[], Vec::new()).unwrap();
        let (first, second) = (first.physical().unwrap(), second.physical().unwrap());
        // Each execution runs its own copy, never the kept plan itself.
        assert!(!Arc::ptr_eq(first, &template) && !Arc::ptr_eq(first, second));
        for not_kept in [
            // A `$n` outside a scan's key range: DataFusion cannot plan it unbound.
            "SELECT $1::int + 1",
            // Operators that keep state in the plan.
            "SELECT sum(a) FROM (VALUES (1), (2)) AS t(a)",
            "SELECT a FROM (VALUES (2), (1)) AS t(a) ORDER BY a",
        ] {
            let plan = cached(not_kept).await;
            // Told apart on the logical plan, before any physical planning.
            assert!(!may_keep_physical(plan.plan()), "{not_kept}");
            assert!(plan.kept_physical.is_none(), "{not_kept}");
        }
        let per_execution = cached("SELECT $1::int + 1").await;
        let bound = per_execution
            .bind(&[DataType::Int32], vec![ScalarValue::Int32(Some(1))])
            .unwrap();
        assert!(bound.physical().is_none());
    }

    #[tokio::test]
    async fn plans_reading_the_clock_are_optimized_per_execution() {
        let plan = cached("SELECT now() > $1::timestamp").await;
        assert!(!plan.is_optimized());
    }

    #[tokio::test]
    async fn wrong_parameter_count_is_a_protocol_violation() {
        let plan = cached("SELECT $1::int").await;
        let error = plan.bind(&[DataType::Int32], Vec::new()).unwrap_err();
        assert_eq!(error.code, sqlstate::PROTOCOL_VIOLATION);
    }
}
