//! Where a physical plan runs: inline on the connection's task when it is
//! point-sized (a point select, an INSERT's VALUES), otherwise on the query
//! runtime, a thread pool of its own, so that long computations never delay
//! cancels, timeouts and other sessions.

use datafusion::catalog::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::placeholder_row::PlaceholderRowExec;
use datafusion::physical_plan::ExecutionPlan;

use crate::error::{sqlstate, Error, Result};
use crate::table::SluiceScanExec;

/// Most rows a plan may run inline on the connection's task: see [`is_point_sized`].
const INLINE_PLAN_ROWS: usize = 10_000;

/// Whether `plan` is cheap whatever the data: one partition throughout, and
/// leaves that are point lookups ([`SluiceScanExec::reads_at_most_one_row`]),
/// the constant row of a FROM-less SELECT, or VALUES already in memory, whose
/// row counts multiplied (what a cross join of them could produce) stay within
/// [`INLINE_PLAN_ROWS`]. Such a plan (a point select, an INSERT's VALUES) runs
/// inline on the connection's task, where the two thread hand-offs to the
/// query runtime and back would cost more than the plan. Anything else (a
/// scan, a table function such as generate_series, a recursive CTE) goes to
/// the query runtime, since only there can a long computation not delay
/// cancels and other sessions.
pub(crate) fn is_point_sized(plan: &dyn ExecutionPlan) -> bool {
    leaf_rows_product(plan).is_some_and(|rows| rows <= INLINE_PLAN_ROWS)
}

/// The product of the leaves' row counts, `None` when a leaf's count is not
/// bounded by the statement itself or an operator runs partitions in parallel.
fn leaf_rows_product(plan: &dyn ExecutionPlan) -> Option<usize> {
    if plan.properties().output_partitioning().partition_count() != 1 {
        return None;
    }
    let children = plan.children();
    if children.is_empty() {
        if let Some(scan) = plan.downcast_ref::<SluiceScanExec>() {
            return scan.reads_at_most_one_row().then_some(1);
        }
        if plan.is::<PlaceholderRowExec>() || plan.is::<EmptyExec>() {
            return Some(1);
        }
        let memory = plan
            .downcast_ref::<DataSourceExec>()?
            .data_source()
            .downcast_ref::<MemorySourceConfig>()?;
        let rows = memory
            .partitions()
            .iter()
            .flatten()
            .map(|b| b.num_rows())
            .sum();
        return Some(usize::max(rows, 1));
    }
    children.into_iter().try_fold(1usize, |product, child| {
        product.checked_mul(leaf_rows_product(child.as_ref())?)
    })
}

/// The runtime that executes physical plans, one per process, apart from the
/// runtime that serves connections. DataFusion operators compute a whole batch
/// per poll and spawn one task per partition, so on a machine with few cores
/// they can occupy every worker of a shared runtime for seconds; the
/// connection tasks that enforce statement_timeout, answer CancelRequest and
/// serve other sessions would then wait behind them. With plans on their own
/// threads the OS scheduler shares the cores between both.
pub(crate) fn query_runtime() -> Result<&'static tokio::runtime::Handle> {
    static RUNTIME: std::sync::OnceLock<std::result::Result<tokio::runtime::Runtime, String>> =
        std::sync::OnceLock::new();
    let built = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .thread_name("sluice-query")
            // Executing deep (but legal) expressions recurses like planning them.
            .thread_stack_size(8 << 20)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    match built {
        Ok(runtime) => Ok(runtime.handle()),
        Err(e) => Err(Error::new(
            sqlstate::INTERNAL_ERROR,
            format!("start the query runtime: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::prelude::SessionContext;

    use super::*;

    /// The physical plan DataFusion builds for `sql` (no Sluice tables involved).
    fn physical_plan_of(sql: &str) -> Arc<dyn ExecutionPlan> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let ctx = SessionContext::new();
            ctx.sql(sql)
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap()
        })
    }

    #[test]
    fn only_plans_bounded_by_the_statement_run_inline() {
        let ten_rows = (1..=10)
            .map(|n| format!("({n})"))
            .collect::<Vec<_>>()
            .join(",");
        for inline in ["SELECT 1 + 1", &format!("VALUES {ten_rows}")] {
            assert!(
                is_point_sized(physical_plan_of(inline).as_ref()),
                "{inline}"
            );
        }
        let hundred = (1..=100)
            .map(|n| format!("({n})"))
            .collect::<Vec<_>>()
            .join(",");
        // 100 × 100 × 100 rows: each VALUES is small, their cross join is not
        // (a count(*) would be answered from statistics, so the sum).
        let cross = format!(
            "SELECT sum(a.column1 * b.column1 * c.column1) FROM (VALUES {hundred}) a, (VALUES {hundred}) b, (VALUES {hundred}) c"
        );
        for offloaded in [
            "SELECT * FROM generate_series(1, 10)",
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r",
            &cross,
        ] {
            assert!(!is_point_sized(physical_plan_of(offloaded).as_ref()), "{offloaded}");
        }
    }
}
