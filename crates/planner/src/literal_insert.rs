//! `INSERT … VALUES` whose rows are all plain literals, typed the way COPY types text.
//!
//! Bulk loads mostly arrive as multi-row INSERTs of literals: drivers' batched inserts,
//! `pg_dump --inserts`, topic producers. Planned by DataFusion, every literal of such a
//! list becomes an expression that the analyzer, the optimizer and the executor each walk,
//! which costs far more than writing the row. A literal is text with a known meaning, and
//! reading text by a column's type is exactly COPY's job ([`crate::copy::typed_rows`]), so
//! such a statement is typed once, when it is prepared, and executes as COPY's write.
//!
//! The shortcut takes only statements whose result it reproduces exactly, and leaves every
//! other one to DataFusion, which also gives a bad value its proper error:
//!
//! - the plain form `INSERT INTO t [(columns)] VALUES (…), …`: no ON CONFLICT, RETURNING,
//!   WITH, ORDER BY or LIMIT, no declared parameter types;
//! - each value a string literal, a number (optionally negated), TRUE/FALSE or NULL, for a
//!   column type that reads it as PostgreSQL's assignment does: strings for text, integer,
//!   floating-point and numeric columns, numbers for numeric types only when no rounding is
//!   involved (integers, or no more fraction digits than a numeric's scale), booleans for
//!   boolean columns;
//! - every value parses, and no NULL lands in a NOT NULL column;
//! - columns left out have no DEFAULT (and a topic's system columns are not listed).

use std::sync::Arc;

use datafusion::sql::sqlparser::ast;
use sluice_engine::Value;

use crate::api::{CommandTag, Output, Result};
use crate::catalog::TableDef;
use crate::dml::lookup_table;
use crate::session::Session;
use crate::types::SqlType;

/// A literal INSERT, typed at prepare time.
pub(crate) struct LiteralInsert {
    pub(crate) table: Arc<TableDef>,
    /// Whole rows of the table, in its column order.
    pub(crate) rows: Vec<Vec<Value>>,
}

/// Types `statement` when it is a literal INSERT the shortcut reproduces exactly; `None`
/// sends it to DataFusion.
pub(crate) fn plan(session: &Session, statement: &ast::Statement) -> Option<LiteralInsert> {
    let ast::Statement::Insert(insert) = statement else {
        return None;
    };
    let plain = insert.or.is_none()
        && !insert.ignore
        && !insert.overwrite
        && insert.table_alias.is_none()
        && insert.assignments.is_empty()
        && insert.partitioned.is_none()
        && insert.after_columns.is_empty()
        && insert.on.is_none()
        && insert.returning.is_none()
        && insert.output.is_none()
        && !insert.replace_into
        && insert.priority.is_none()
        && insert.insert_alias.is_none()
        && insert.settings.is_none()
        && insert.format_clause.is_none()
        && insert.multi_table_insert_type.is_none();
    if !plain {
        return None;
    }
    let ast::TableObject::TableName(name) = &insert.table else {
        return None;
    };
    let source = insert.source.as_deref()?;
    let simple_query = source.with.is_none()
        && source.order_by.is_none()
        && source.limit_clause.is_none()
        && source.fetch.is_none()
        && source.locks.is_empty()
        && source.for_clause.is_none()
        && source.settings.is_none()
        && source.format_clause.is_none()
        && source.pipe_operators.is_empty();
    let ast::SetExpr::Values(values) = source.body.as_ref() else {
        return None;
    };
    if !simple_query || values.explicit_row || values.value_keyword {
        return None;
    }
    let table = lookup_table(session, name).ok()?;
    let columns = listed_columns(&table, &insert.columns)?;
    let types: Vec<SqlType> = columns
        .iter()
        .map(|c| table.columns[*c].ty)
        .collect::<Vec<_>>();
    let mut texts = Vec::with_capacity(values.rows.len());
    for row in &values.rows {
        if row.content.len() != columns.len() {
            return None;
        }
        let fields = row
            .content
            .iter()
            .zip(&types)
            .map(|(expr, ty)| literal_text(expr, *ty))
            .collect::<Option<Vec<_>>>()?;
        texts.push(fields);
    }
    let names: Vec<String> = columns
        .iter()
        .map(|c| table.columns[*c].name.clone())
        .collect();
    let absent = vec![Value::Null; table.columns.len()];
    let rows = crate::copy::typed_rows(&table, &names, &texts, &absent).ok()?;
    Some(LiteralInsert { table, rows })
}

/// The table's column indexes the INSERT lists (all user columns when it lists none), or
/// `None` when the list is one the shortcut leaves alone: a name that is not a plain
/// column, a repeat, a system column, or an omitted column with a DEFAULT.
fn listed_columns(table: &TableDef, listed: &[ast::ObjectName]) -> Option<Vec<usize>> {
    let columns: Vec<usize> = if listed.is_empty() {
        (0..table.user_columns().len()).collect()
    } else {
        let mut indexes = Vec::with_capacity(listed.len());
        for name in listed {
            let [part] = name.0.as_slice() else {
                return None;
            };
            let ident = part.as_ident()?;
            let index = table.column_index(&crate::names::identifier(ident))?;
            if table.is_system_column(index) || indexes.contains(&index) {
                return None;
            }
            indexes.push(index);
        }
        indexes
    };
    let defaults_needed = table
        .columns
        .iter()
        .enumerate()
        .any(|(index, column)| !columns.contains(&index) && column.default.is_some());
    (!defaults_needed).then_some(columns)
}

/// The text COPY would be given for `expr` in a column of type `ty`, or `None` when the
/// literal's meaning in that column is not simply its text (see the module comment).
fn literal_text(expr: &ast::Expr, ty: SqlType) -> Option<Option<String>> {
    let (negative, value) = match expr {
        ast::Expr::Value(value) => (false, &value.value),
        ast::Expr::UnaryOp {
            op: ast::UnaryOperator::Minus,
            expr,
        } => match expr.as_ref() {
            ast::Expr::Value(value) if matches!(value.value, ast::Value::Number(..)) => {
                (true, &value.value)
            }
            _ => return None,
        },
        _ => return None,
    };
    let textual = matches!(ty, SqlType::Text | SqlType::Varchar(_) | SqlType::Char(_));
    let numeric = matches!(
        ty,
        SqlType::Int2
            | SqlType::Int4
            | SqlType::Int8
            | SqlType::Float4
            | SqlType::Float8
            | SqlType::Numeric { .. }
    );
    match value {
        ast::Value::Null => Some(None),
        ast::Value::SingleQuotedString(text) if textual || numeric => Some(Some(text.clone())),
        ast::Value::Boolean(b) if ty == SqlType::Bool => Some(Some(b.to_string())),
        ast::Value::Number(number, false) if numeric => {
            let digits = number.to_string();
            if !reads_exactly(&digits, ty) {
                return None;
            }
            Some(Some(if negative {
                format!("-{digits}")
            } else {
                digits
            }))
        }
        _ => None,
    }
}

/// Whether a number literal's text stands for the same value in a column of type `ty`:
/// PostgreSQL types `1.25` as numeric and then rounds it to the column, so an integer
/// column or a numeric of smaller scale would round, which text parsing does not.
fn reads_exactly(number: &str, ty: SqlType) -> bool {
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (number, None),
    };
    if !plain(whole) || fraction.is_some_and(|f| !plain(f)) {
        return false;
    }
    match ty {
        SqlType::Int2 | SqlType::Int4 | SqlType::Int8 => fraction.is_none(),
        SqlType::Float4 | SqlType::Float8 => true,
        SqlType::Numeric { scale, .. } => {
            i64::try_from(fraction.map_or(0, str::len)).unwrap_or(i64::MAX) <= i64::from(scale)
        }
        _ => false,
    }
}

/// Writes the rows typed at prepare time.
pub(crate) async fn execute(session: &Session, insert: &LiteralInsert) -> Result<Output> {
    // Nothing is read, but a transaction block takes its snapshot before its first write
    // (its writes are validated against it), exactly as a planned INSERT does. The view
    // shares the block's write set, so it is released before the write joins it.
    drop(session.read_view().await?);
    let count = crate::copy::write_rows(session, &insert.table, &insert.rows).await?;
    Ok(Output::Command(CommandTag::with_rows("INSERT", count)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_exactly_only_without_rounding() {
        let numeric = |scale| SqlType::Numeric {
            precision: 10,
            scale,
        };
        assert!(reads_exactly("42", SqlType::Int4));
        assert!(!reads_exactly("4.5", SqlType::Int4));
        assert!(reads_exactly("4.5", SqlType::Float8));
        assert!(reads_exactly("9.99", numeric(2)));
        assert!(!reads_exactly("9.999", numeric(2)));
        assert!(!reads_exactly("1e3", SqlType::Float8));
        assert!(!reads_exactly(".5", SqlType::Float8));
        assert!(!reads_exactly("7", SqlType::Text));
    }

    fn literal(sql: &str) -> ast::Expr {
        use datafusion::sql::sqlparser::{dialect::PostgreSqlDialect, parser::Parser};
        Parser::new(&PostgreSqlDialect {})
            .try_with_sql(sql)
            .unwrap()
            .parse_expr()
            .unwrap()
    }

    #[test]
    fn literals_become_copy_text_only_where_that_means_the_same() {
        let text = |sql: &str, ty| literal_text(&literal(sql), ty);
        assert_eq!(text("'ada'", SqlType::Text), Some(Some("ada".into())));
        assert_eq!(text("'12'", SqlType::Int8), Some(Some("12".into())));
        assert_eq!(text("-12", SqlType::Int8), Some(Some("-12".into())));
        assert_eq!(text("NULL", SqlType::Date), Some(None));
        assert_eq!(text("true", SqlType::Bool), Some(Some("true".into())));
        // A number in a text column prints as numeric does ('1.50' stays '1.50'); left to DataFusion.
        assert_eq!(text("1.50", SqlType::Text), None);
        assert_eq!(text("'2026-01-01'", SqlType::Date), None);
        assert_eq!(text("1 + 1", SqlType::Int4), None);
        assert_eq!(text("-'1'", SqlType::Int4), None);
        assert_eq!(text("$1", SqlType::Int4), None);
    }
}
