//! CHECK constraints: declared in CREATE TABLE (on a column or the table)
//! or added by `ALTER TABLE … ADD [CONSTRAINT name] CHECK (…)`, and kept in
//! the table's definition as SQL text ([`crate::catalog::CheckDef`]).
//!
//! Every writer of whole rows (planned INSERT and UPDATE, ON CONFLICT's
//! updates, literal INSERT, COPY) calls [`enforce`] on the rows it is about
//! to write, with the checks compiled once per definition
//! (`Database::checks_for`). A row violates a check when the expression is
//! false; NULL passes, as in PostgreSQL. The rows were produced against the
//! definition the statement was planned with, and every write `Check`s that
//! definition ([`crate::index::definition_check`]), so a write planned
//! before a check was added fails with 40001 instead of skipping it.
//!
//! Adding a check to a table with rows validates them at a snapshot and
//! proposes, in the same command as the new definition, a `CheckRange` of
//! every row it read: a row written in between fails the ALTER with 40001
//! rather than slipping past the validation.

use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::DFSchema;
use datafusion::logical_expr::ExprSchemable;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use sluice_engine::Value;

use crate::catalog::TableDef;
use crate::error::{from_datafusion, sqlstate, Error, ErrorObject, Result};
use crate::types::rows_to_batch;

/// A check ready to evaluate over rows of its table.
pub(crate) struct CompiledCheck {
    name: String,
    expr: Arc<dyn PhysicalExpr>,
}

/// The expression of a CHECK as the planner reads it, with PostgreSQL's
/// checks: no subqueries (0A000), known columns (42703), boolean (42804).
fn plan(
    context: &SessionContext,
    table: &TableDef,
    sql: &str,
) -> Result<(datafusion::logical_expr::Expr, DFSchema)> {
    let parsed = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .and_then(|mut parser| parser.parse_expr())
        .map_err(|e| Error::new(sqlstate::SYNTAX_ERROR, e.to_string()))?;
    if has_subquery(&parsed) {
        return Err(Error::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "cannot use subquery in check constraint",
        ));
    }
    let schema = DFSchema::try_from_qualified_schema(table.name.as_str(), &table.arrow_schema())
        .map_err(from_datafusion)?;
    let expr = context
        .state()
        .create_logical_expr(sql, &schema)
        .map_err(from_datafusion)?;
    let ty = expr.get_type(&schema).map_err(from_datafusion)?;
    if !matches!(ty, DataType::Boolean | DataType::Null) {
        return Err(Error::new(
            sqlstate::DATATYPE_MISMATCH,
            format!(
                "argument of CHECK must be type boolean, not type {}",
                crate::functions::pg_type_name(&ty)
            ),
        ));
    }
    Ok((expr, schema))
}

/// Fails unless `sql` can be a CHECK of `table`.
pub(crate) fn validate(context: &SessionContext, table: &TableDef, sql: &str) -> Result<()> {
    plan(context, table, sql).map(|_| ())
}

/// The table's checks, compiled. A check that no longer compiles (written
/// by a newer version) is logged and fails every write, rather than being
/// skipped.
pub(crate) fn compile(context: &SessionContext, table: &TableDef) -> Vec<CompiledCheck> {
    table
        .checks
        .iter()
        .map(|check| {
            let compiled = plan(context, table, &check.expr).and_then(|(expr, schema)| {
                context
                    .state()
                    .create_physical_expr(expr, &schema)
                    .map_err(from_datafusion)
            });
            let expr = compiled.unwrap_or_else(|e| {
                tracing::error!(table = %table.qualified_name(), check = %check.name, "check expression: {}", e.message);
                datafusion::physical_expr::expressions::lit(datafusion::common::ScalarValue::Boolean(Some(false)))
            });
            CompiledCheck {
                name: check.name.clone(),
                expr,
            }
        })
        .collect()
}

/// Fails with 23514 on the first row that some check finds false.
pub(crate) fn enforce<R: AsRef<[Value]>>(
    table: &TableDef,
    checks: &[CompiledCheck],
    rows: &[R],
) -> Result<()> {
    if checks.is_empty() || rows.is_empty() {
        return Ok(());
    }
    let batch = rows_to_batch(&table.arrow_schema(), &table.types(), rows)?;
    for check in checks {
        let result = check
            .expr
            .evaluate(&batch)
            .and_then(|value| value.into_array(batch.num_rows()))
            .map_err(from_datafusion)?;
        let Some(result) = result.as_any().downcast_ref::<BooleanArray>() else {
            // CHECK (NULL): never false.
            continue;
        };
        if let Some(row) = (0..result.len()).find(|&i| result.is_valid(i) && !result.value(i)) {
            return Err(violation(table, &check.name, rows[row].as_ref()));
        }
    }
    Ok(())
}

fn violation(table: &TableDef, constraint: &str, row: &[Value]) -> Error {
    let rendered: Vec<String> = row
        .iter()
        .map(|value| match value {
            Value::Null => "null".to_string(),
            other => crate::catalog::render_value(other),
        })
        .collect();
    Error::new(
        sqlstate::CHECK_VIOLATION,
        format!(
            "new row for relation \"{}\" violates check constraint \"{constraint}\"",
            table.name
        ),
    )
    .with_detail(format!("Failing row contains ({}).", rendered.join(", ")))
    .with_object(ErrorObject {
        schema: Some(table.schema.clone()),
        table: Some(table.name.clone()),
        constraint: Some(constraint.to_string()),
    })
}

/// The error of ADD CONSTRAINT when a stored row fails the new check.
pub(crate) fn violated_by_some_row(table: &TableDef, constraint: &str) -> Error {
    Error::new(
        sqlstate::CHECK_VIOLATION,
        format!(
            "check constraint \"{constraint}\" of relation \"{}\" is violated by some row",
            table.name
        ),
    )
    .with_object(ErrorObject {
        schema: Some(table.schema.clone()),
        table: Some(table.name.clone()),
        constraint: Some(constraint.to_string()),
    })
}

fn has_subquery(expr: &ast::Expr) -> bool {
    use std::ops::ControlFlow;
    let found = ast::visit_expressions(expr, |e| match e {
        ast::Expr::Subquery(_) | ast::Expr::Exists { .. } | ast::Expr::InSubquery { .. } => {
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    });
    found.is_break()
}

#[cfg(test)]
mod tests {
    use crate::testing::{database, exec, rows, run, sqlstate_of};

    #[tokio::test]
    async fn checks_hold_on_every_write_path() {
        let test = database().await;
        let mut s = test.session();
        exec(
            &mut s,
            "CREATE TABLE c (id int PRIMARY KEY, n int CHECK (n > 0), \
             m int CONSTRAINT m_pos CHECK (m >= 0), CHECK (n < m), CHECK (true))",
        )
        .await;
        let error = run(&mut s, "INSERT INTO c VALUES (1, -1, 5)")
            .await
            .unwrap_err();
        assert_eq!(error.code, "23514");
        assert_eq!(
            error.message,
            "new row for relation \"c\" violates check constraint \"c_n_check\""
        );
        assert_eq!(
            error.detail.as_deref(),
            Some("Failing row contains (1, -1, 5).")
        );
        assert_eq!(
            error.object.as_ref().and_then(|o| o.constraint.as_deref()),
            Some("c_n_check")
        );
        // NULL passes a check.
        exec(&mut s, "INSERT INTO c VALUES (1, NULL, 5)").await;
        assert_eq!(
            sqlstate_of(&mut s, "INSERT INTO c VALUES (2, 6, 5)").await,
            "23514"
        );
        let error = run(&mut s, "UPDATE c SET m = -1").await.unwrap_err();
        assert_eq!(
            error.message,
            "new row for relation \"c\" violates check constraint \"m_pos\""
        );
        assert_eq!(
            error.detail.as_deref(),
            Some("Failing row contains (1, null, -1).")
        );
        // Literal INSERT with parameters' path, INSERT … SELECT, ON CONFLICT's update.
        assert_eq!(
            sqlstate_of(&mut s, "INSERT INTO c SELECT 3, 0, 1").await,
            "23514"
        );
        assert_eq!(
            sqlstate_of(
                &mut s,
                "INSERT INTO c VALUES (1, 1, 5) ON CONFLICT (id) DO UPDATE SET n = 10"
            )
            .await,
            "23514"
        );
        exec(
            &mut s,
            "INSERT INTO c VALUES (1, 1, 5) ON CONFLICT (id) DO UPDATE SET n = 2",
        )
        .await;
        assert_eq!(
            rows(&mut s, "SELECT id, n, m FROM c").await,
            vec![vec!["1".to_string(), "2".to_string(), "5".to_string()]]
        );
    }

    #[tokio::test]
    async fn check_expressions_are_checked_as_postgres_checks_them() {
        let test = database().await;
        let mut s = test.session();
        assert_eq!(
            sqlstate_of(&mut s, "CREATE TABLE b (a int CHECK (a))").await,
            "42804"
        );
        assert_eq!(
            sqlstate_of(&mut s, "CREATE TABLE b (a int CHECK (b > 0))").await,
            "42703"
        );
        assert_eq!(
            sqlstate_of(&mut s, "CREATE TABLE b (a int CHECK (a > (SELECT 1)))").await,
            "0A000"
        );
        assert_eq!(
            sqlstate_of(
                &mut s,
                "CREATE TABLE b (a int CONSTRAINT x CHECK (a > 0), CONSTRAINT x CHECK (a < 9))"
            )
            .await,
            "42710"
        );
    }

    #[tokio::test]
    async fn added_checks_validate_existing_rows_and_drop_by_name() {
        let test = database().await;
        let mut s = test.session();
        exec(&mut s, "CREATE TABLE a (id int PRIMARY KEY, n int)").await;
        exec(&mut s, "INSERT INTO a VALUES (1, 5), (2, NULL)").await;
        let error = run(&mut s, "ALTER TABLE a ADD CONSTRAINT big CHECK (n > 100)")
            .await
            .unwrap_err();
        assert_eq!(error.code, "23514");
        assert_eq!(
            error.message,
            "check constraint \"big\" of relation \"a\" is violated by some row"
        );
        // The failed ALTER left no constraint behind.
        exec(&mut s, "INSERT INTO a VALUES (3, 1)").await;
        exec(&mut s, "ALTER TABLE a ADD CHECK (n > 0)").await;
        assert_eq!(
            sqlstate_of(&mut s, "INSERT INTO a VALUES (4, 0)").await,
            "23514"
        );
        exec(&mut s, "ALTER TABLE a DROP CONSTRAINT a_check").await;
        exec(&mut s, "INSERT INTO a VALUES (4, 0)").await;
        assert_eq!(
            sqlstate_of(&mut s, "ALTER TABLE a DROP CONSTRAINT a_check").await,
            "42704"
        );
        exec(&mut s, "ALTER TABLE a DROP CONSTRAINT IF EXISTS a_check").await;
        // A UNIQUE constraint drops with its index.
        exec(&mut s, "ALTER TABLE a ADD CONSTRAINT n_key UNIQUE (n)").await;
        assert_eq!(
            sqlstate_of(&mut s, "INSERT INTO a VALUES (5, 0)").await,
            "23505"
        );
        exec(&mut s, "ALTER TABLE a DROP CONSTRAINT n_key").await;
        exec(&mut s, "INSERT INTO a VALUES (5, 0)").await;
        assert_eq!(
            rows(&mut s, "SELECT count(*) FROM a WHERE n = 0").await,
            vec![vec!["2".to_string()]]
        );
        assert_eq!(
            sqlstate_of(&mut s, "ALTER TABLE a DROP CONSTRAINT a_pkey").await,
            "0A000"
        );
    }

    #[tokio::test]
    async fn checks_in_a_block() {
        let test = database().await;
        let mut s = test.session();
        exec(&mut s, "BEGIN").await;
        exec(
            &mut s,
            "CREATE TABLE k (id int PRIMARY KEY, n int CHECK (n <> 13))",
        )
        .await;
        exec(&mut s, "INSERT INTO k VALUES (1, 1)").await;
        // A table created in the block may take a new check over its rows.
        exec(&mut s, "ALTER TABLE k ADD CONSTRAINT small CHECK (n < 10)").await;
        assert_eq!(
            sqlstate_of(&mut s, "INSERT INTO k VALUES (2, 13)").await,
            "23514"
        );
        exec(&mut s, "ROLLBACK").await;

        // A migration adds a check to a table others write: a row they
        // commit before the block does fails the block's commit, since
        // the validation never saw it.
        let mut other = test.session();
        exec(&mut s, "CREATE TABLE m (id int PRIMARY KEY, n int)").await;
        exec(&mut s, "INSERT INTO m VALUES (1, 1)").await;
        exec(&mut s, "BEGIN").await;
        exec(
            &mut s,
            "ALTER TABLE m ADD CONSTRAINT m_small CHECK (n < 10)",
        )
        .await;
        exec(&mut other, "INSERT INTO m VALUES (2, 50)").await;
        assert_eq!(sqlstate_of(&mut s, "COMMIT").await, "40001");
        exec(&mut s, "BEGIN").await;
        assert_eq!(
            sqlstate_of(
                &mut s,
                "ALTER TABLE m ADD CONSTRAINT m_small CHECK (n < 10)"
            )
            .await,
            "23514"
        );
        exec(&mut s, "ROLLBACK").await;
        exec(&mut other, "DELETE FROM m WHERE id = 2").await;
        exec(&mut s, "BEGIN").await;
        exec(
            &mut s,
            "ALTER TABLE m ADD CONSTRAINT m_small CHECK (n < 10)",
        )
        .await;
        exec(&mut s, "COMMIT").await;
        assert_eq!(
            sqlstate_of(&mut other, "INSERT INTO m VALUES (3, 50)").await,
            "23514"
        );
    }
}
