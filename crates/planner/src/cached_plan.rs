//! Plans kept by prepared statements.
//!
//! A prepared statement is planned once; what each execution still pays is
//! binding its `$n` values and building the physical plan. The logical
//! optimizer (predicate pushdown into the key-range scan, projection pruning,
//! decorrelation) runs at prepare time on the plan with its placeholders in
//! place, so `SELECT … WHERE id = $1` reaches the scan as `id = $1` and binding
//! turns it into `id = 42` without another optimizer pass.
//!
//! Two kinds of plan are optimized per execution instead:
//! - plans that call a non-immutable function: the optimizer folds `now()` and
//!   `current_date` to constants, which would freeze them at prepare time;
//! - plans the optimizer cannot handle while placeholders are untyped (it is
//!   tried, and on error the statement falls back to per-execution
//!   optimization, which is what every plan did before this cache).

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};

use crate::api::{sqlstate, Error, Result};
use crate::session::map_df_error;

/// A logical plan, optimized once when that is safe.
#[derive(Debug, Clone)]
pub(crate) struct CachedPlan {
    plan: LogicalPlan,
    /// Whether `plan` has already been through the logical optimizer.
    optimized: bool,
    /// The type each `$n` has in the plan, ordered by n; a bound value is cast to it.
    placeholder_types: Vec<Option<DataType>>,
}

impl CachedPlan {
    /// Keeps `plan` (as produced by the SQL planner), optimizing it now when
    /// the result cannot depend on the moment it runs.
    pub(crate) fn new(state: &SessionState, plan: LogicalPlan) -> Result<Self> {
        let inferred = plan.get_parameter_types().map_err(map_df_error)?;
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
        Ok(Self {
            plan,
            optimized,
            placeholder_types,
        })
    }

    /// The plan as the SQL planner produced it or optimized; see [`Self::is_optimized`].
    pub(crate) fn plan(&self) -> &LogicalPlan {
        &self.plan
    }

    pub(crate) fn is_optimized(&self) -> bool {
        self.optimized
    }

    /// Substitutes parameter values, cast to the types the plan expects
    /// (`declared` where the plan leaves a placeholder untyped).
    pub(crate) fn bind(&self, declared: &[DataType], params: Vec<ScalarValue>) -> Result<Self> {
        check_param_count(declared.len(), params.len())?;
        if params.is_empty() {
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
        let plan = self
            .plan
            .clone()
            .with_param_values(ParamValues::from(values))
            .map_err(map_df_error)?;
        Ok(Self {
            plan,
            optimized: self.optimized,
            placeholder_types: Vec::new(),
        })
    }
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
        .map_err(|e| map_df_error(e).with_detail(format!("parameter ${}", index + 1)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn cached(sql: &str) -> CachedPlan {
        let ctx = SessionContext::new();
        let state = ctx.state();
        let plan = state.create_logical_plan(sql).await.unwrap();
        CachedPlan::new(&state, plan).unwrap()
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
