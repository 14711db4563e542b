//! PostgreSQL's names for unnamed result columns.
//!
//! DataFusion names `SELECT sum(x)` `sum(t.x)`; PostgreSQL names it `sum`,
//! and `?column?` for an expression it cannot name. Drivers that look
//! columns up by name see PostgreSQL's names. Only the reported schema
//! changes (PostgreSQL allows duplicate output names; DataFusion plans do
//! not), and each batch is relabelled with it as it streams.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::sqlparser::ast;
use futures::StreamExt;

/// The schema `statement` reports under PostgreSQL's naming rules. Only a
/// plain SELECT is renamed; columns that cannot be matched to a select item
/// (wildcards expand to several) keep DataFusion's names, which are already
/// the column names.
pub fn postgres_column_names(statement: &ast::Statement, schema: &Schema) -> SchemaRef {
    let ast::Statement::Query(query) = statement else {
        return Arc::new(schema.clone());
    };
    let ast::SetExpr::Select(select) = query.body.as_ref() else {
        return Arc::new(schema.clone());
    };
    if select.projection.len() != schema.fields().len() {
        return Arc::new(schema.clone());
    }
    let fields: Vec<Field> = select
        .projection
        .iter()
        .zip(schema.fields())
        .map(|(item, field)| match item {
            ast::SelectItem::UnnamedExpr(expr) => {
                field.as_ref().clone().with_name(expression_name(expr))
            }
            // The alias as written, even where the plan had to make it unique.
            ast::SelectItem::ExprWithAlias { alias, .. } => {
                field.as_ref().clone().with_name(identifier(alias))
            }
            _ => field.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// Gives DataFusion distinct names for select items it would name alike.
///
/// PostgreSQL allows `SELECT a, a` and two scalar subqueries side by side;
/// DataFusion refuses a projection with two equal expression names, and
/// names every scalar subquery `(<subquery>)`. So, in every SELECT of the
/// statement, items that contain a subquery or repeat an earlier item get an
/// alias: their PostgreSQL name when no other item has it, otherwise that
/// name with their position. The client-visible names of the outermost
/// SELECT still come from [`postgres_column_names`] on the original text.
pub fn disambiguate_select_items(statement: &mut ast::Statement) {
    struct Disambiguate;
    impl ast::VisitorMut for Disambiguate {
        type Break = ();
        fn pre_visit_select(&mut self, select: &mut ast::Select) -> ControlFlow<()> {
            alias_ambiguous_items(&mut select.projection);
            ControlFlow::Continue(())
        }
    }
    let _ = ast::VisitMut::visit(statement, &mut Disambiguate);
}

/// Names the column of a one-column table function after its table alias.
///
/// In PostgreSQL `FROM generate_series(1, 3) g` makes a column `g`; DataFusion
/// names it `value` whatever the alias, so `SELECT g FROM generate_series(…) g`
/// would fail. An alias without a column list gets that column list.
pub fn name_function_columns_after_their_alias(statement: &mut ast::Statement) {
    struct NameColumns;
    impl ast::VisitorMut for NameColumns {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &mut ast::TableFactor) -> ControlFlow<()> {
            if let ast::TableFactor::Table {
                name,
                args: Some(_),
                alias: Some(alias),
                with_ordinality: false,
                ..
            } = factor
            {
                let function = name.0.last().and_then(|part| part.as_ident());
                let one_column = function.is_some_and(|f| {
                    ["generate_series", "range"].contains(&identifier(f).as_str())
                });
                if one_column && alias.columns.is_empty() {
                    alias.columns = vec![ast::TableAliasColumnDef {
                        name: alias.name.clone(),
                        data_type: None,
                    }];
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = ast::VisitMut::visit(statement, &mut NameColumns);
}

fn alias_ambiguous_items(items: &mut [ast::SelectItem]) {
    let names: Vec<Option<String>> = items
        .iter()
        .map(|item| match item {
            ast::SelectItem::UnnamedExpr(expr) => Some(expression_name(expr)),
            ast::SelectItem::ExprWithAlias { alias, .. } => Some(identifier(alias)),
            _ => None,
        })
        .collect();
    let texts: Vec<Option<String>> = items
        .iter()
        .map(|item| match item {
            ast::SelectItem::UnnamedExpr(expr) => Some(expr.to_string()),
            _ => None,
        })
        .collect();
    for (position, item) in items.iter_mut().enumerate() {
        if let ast::SelectItem::ExprWithAlias { alias, .. } = item {
            // PostgreSQL allows `SELECT 1 AS a, 2 AS a`; DataFusion's plans
            // need unique names, so a repeated alias gets its position
            // inside the plan (clients still see `a` twice).
            let name = identifier(alias);
            if names[..position].contains(&Some(name.clone())) {
                *alias = ast::Ident::with_quote('"', format!("{name}_{}", position + 1));
            }
            continue;
        }
        let ast::SelectItem::UnnamedExpr(expr) = item else {
            continue;
        };
        let repeats = texts[..position].contains(&texts[position]);
        if !repeats && !contains_subquery(expr) {
            continue;
        }
        let name = names[position].clone().unwrap_or_else(unknown);
        let unique = names.iter().filter(|n| n.as_deref() == Some(&name)).count() == 1;
        let alias = if unique {
            name
        } else {
            format!("{name}_{}", position + 1)
        };
        *item = ast::SelectItem::ExprWithAlias {
            expr: expr.clone(),
            alias: ast::Ident::with_quote('"', alias),
        };
    }
}

fn contains_subquery(expr: &ast::Expr) -> bool {
    let found = ast::visit_expressions(expr, |e| match e {
        ast::Expr::Subquery(_) | ast::Expr::Exists { .. } | ast::Expr::InSubquery { .. } => {
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    });
    found.is_break()
}

/// PostgreSQL's FigureColname: columns by their name, functions by theirs,
/// casts by their operand (or type), everything else `?column?`.
fn expression_name(expr: &ast::Expr) -> String {
    match expr {
        ast::Expr::Identifier(ident) => identifier(ident),
        ast::Expr::CompoundIdentifier(parts) => {
            parts.last().map(identifier).unwrap_or_else(unknown)
        }
        ast::Expr::Function(function) => function
            .name
            .0
            .last()
            .and_then(|part| part.as_ident())
            .map(identifier)
            .unwrap_or_else(unknown),
        ast::Expr::Cast {
            expr, data_type, ..
        } => match expression_name(expr).as_str() {
            "?column?" => type_name(data_type),
            name => name.to_string(),
        },
        ast::Expr::Nested(inner) => expression_name(inner),
        ast::Expr::Case { .. } => "case".into(),
        ast::Expr::Exists { .. } => "exists".into(),
        ast::Expr::Subquery(query) => match query.body.as_ref() {
            ast::SetExpr::Select(select) => match select.projection.as_slice() {
                [ast::SelectItem::UnnamedExpr(inner)] => expression_name(inner),
                [ast::SelectItem::ExprWithAlias { alias, .. }] => identifier(alias),
                _ => unknown(),
            },
            _ => unknown(),
        },
        _ => unknown(),
    }
}

fn type_name(data_type: &ast::DataType) -> String {
    use ast::DataType as D;
    match data_type {
        D::Int(_) | D::Integer(_) | D::Int4(_) => "int4".into(),
        D::BigInt(_) | D::Int8(_) => "int8".into(),
        D::SmallInt(_) | D::Int2(_) => "int2".into(),
        D::Text => "text".into(),
        D::Boolean | D::Bool => "bool".into(),
        D::Real | D::Float4 => "float4".into(),
        D::DoublePrecision | D::Float8 => "float8".into(),
        D::Numeric(_) | D::Decimal(_) => "numeric".into(),
        D::Varchar(_) | D::CharacterVarying(_) => "varchar".into(),
        D::Date => "date".into(),
        D::Timestamp(_, ast::TimezoneInfo::WithTimeZone | ast::TimezoneInfo::Tz) => {
            "timestamptz".into()
        }
        D::Timestamp(..) => "timestamp".into(),
        other => other.to_string().to_lowercase(),
    }
}

/// An SQL identifier as PostgreSQL compares it: unquoted names fold to
/// lower case, quoted ones stay as written.
pub(crate) fn identifier(ident: &ast::Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// PostgreSQL's choice of a generated object name: `base`, else `base1`,
/// `base2`, … whichever is first not `taken`.
pub(crate) fn first_free_name(base: &str, taken: impl Fn(&str) -> bool) -> String {
    std::iter::once(base.to_string())
        .chain((1..).map(|n| format!("{base}{n}")))
        .find(|candidate| !taken(candidate))
        .expect("some numbered name is free")
}

/// `name` as PostgreSQL's `quote_ident` writes it: bare when it reads back
/// as itself (lower case letters, digits and underscores, not starting with
/// a digit), else in double quotes.
pub(crate) fn quote_ident_if_needed(name: &str) -> String {
    let bare = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if bare {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Splits a relation name given as text (`nextval('s')`, regclass input):
/// dotted parts, each folded unless double-quoted.
pub(crate) fn parse_qualified_text(text: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                part.push(c.to_ascii_lowercase());
                chars.next();
            }
            if part.is_empty() {
                return None;
            }
        }
        parts.push(part);
        match chars.next() {
            None => return Some(parts),
            Some('.') => {}
            Some(_) => return None,
        }
    }
}

fn unknown() -> String {
    "?column?".into()
}

/// Relabels every batch of `stream` with `schema` (same types, new names).
pub fn with_schema(
    stream: SendableRecordBatchStream,
    schema: SchemaRef,
) -> SendableRecordBatchStream {
    if stream
        .schema()
        .fields()
        .iter()
        .map(|f| f.name())
        .eq(schema.fields().iter().map(|f| f.name()))
    {
        return stream;
    }
    let target = schema.clone();
    let relabelled = stream.map(move |batch| {
        let batch = batch?;
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        RecordBatch::try_new_with_options(target.clone(), batch.columns().to_vec(), &options)
            .map_err(|e| DataFusionError::ArrowError(Box::new(e), None))
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, relabelled))
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    use super::*;

    fn names(sql: &str) -> Vec<String> {
        let statement = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0);
        let ast::Statement::Query(query) = statement else {
            panic!("not a query")
        };
        let ast::SetExpr::Select(select) = query.body.as_ref() else {
            panic!("not a select")
        };
        select
            .projection
            .iter()
            .map(|item| match item {
                ast::SelectItem::UnnamedExpr(expr) => expression_name(expr),
                other => other.to_string(),
            })
            .collect()
    }

    fn disambiguated(sql: &str) -> String {
        let mut statement = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0);
        disambiguate_select_items(&mut statement);
        statement.to_string()
    }

    #[test]
    fn a_one_column_function_takes_its_alias_as_column_name() {
        let renamed = |sql: &str| {
            let mut statement = Parser::parse_sql(&PostgreSqlDialect {}, sql)
                .unwrap()
                .remove(0);
            name_function_columns_after_their_alias(&mut statement);
            statement.to_string()
        };
        assert_eq!(
            renamed("SELECT g FROM generate_series(1, 3) g"),
            "SELECT g FROM generate_series(1, 3) g (g)"
        );
        // An explicit column list, another function and a plain table stay as written.
        for unchanged in [
            "SELECT n FROM generate_series(1, 3) AS g (n)",
            "SELECT * FROM UNNEST(ARRAY[1]) AS u",
            "SELECT * FROM t AS g",
        ] {
            assert_eq!(renamed(unchanged), unchanged);
        }
    }

    #[test]
    fn repeated_items_and_subqueries_get_distinct_aliases() {
        assert_eq!(
            disambiguated("SELECT a, a, a + 1 FROM t"),
            "SELECT a, a AS \"a_2\", a + 1 FROM t"
        );
        assert_eq!(
            disambiguated("SELECT (SELECT count(*) FROM u), (SELECT max(y) FROM u), (SELECT count(*) FROM v) FROM t"),
            "SELECT (SELECT count(*) FROM u) AS \"count_1\", (SELECT max(y) FROM u) AS \"max\", (SELECT count(*) FROM v) AS \"count_3\" FROM t"
        );
        assert_eq!(
            disambiguated("SELECT x FROM (SELECT 1, 1) AS s WHERE EXISTS (SELECT 2)"),
            "SELECT x FROM (SELECT 1, 1 AS \"?column?_2\") AS s WHERE EXISTS (SELECT 2)"
        );
    }

    #[test]
    fn unnamed_columns_are_named_as_postgres_names_them() {
        assert_eq!(
            names("SELECT owner, sum(balance), count(*), a + b, t.id, '1'::int, x::text, CASE WHEN true THEN 1 END FROM t"),
            ["owner", "sum", "count", "?column?", "id", "int4", "x", "case"]
        );
        assert_eq!(
            names("SELECT \"Mixed\", (SELECT max(y) FROM u)"),
            ["Mixed", "max"]
        );
    }
}
