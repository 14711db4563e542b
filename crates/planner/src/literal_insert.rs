//! `INSERT … VALUES` whose rows are all plain literals and parameters, typed the way COPY
//! types text.
//!
//! Bulk loads mostly arrive as multi-row INSERTs of literals: drivers' batched inserts,
//! `pg_dump --inserts`, topic producers; and a driver's statement cache sends the same
//! INSERT again and again with `$n` parameters in place of the values. Planned by
//! DataFusion, every value of such a list becomes an expression that the analyzer, the
//! optimizer and the executor each walk, which costs far more than writing the row (about
//! 0.6 ms of CPU for a prepared ten-row INSERT, against tens of microseconds to write it). A
//! literal is text with a known meaning, and reading text by a column's type is exactly
//! COPY's job ([`crate::copy::parse_rows`]), so such a statement is typed once, when it is
//! prepared; each execution only fills in its parameters and writes as COPY does.
//!
//! The shortcut takes only statements whose result it reproduces exactly, and leaves every
//! other one to DataFusion, which also gives a bad value its proper error:
//!
//! - the plain form `INSERT INTO t [(columns)] VALUES (…), …`: no ON CONFLICT, RETURNING,
//!   WITH, ORDER BY or LIMIT;
//! - each value a string literal, a number (optionally negated), TRUE/FALSE or NULL, for a
//!   column type that reads it as PostgreSQL's assignment does: strings for text, integer,
//!   floating-point and numeric columns, numbers for numeric types only when no rounding is
//!   involved (integers, or no more fraction digits than a numeric's scale), booleans for
//!   boolean columns; every literal parses;
//! - or a parameter `$n`, whose type is its column's, as PostgreSQL and DataFusion infer it
//!   (a type the client declares must be that one); its value is converted as a planned
//!   INSERT converts it ([`crate::types::value_at`]). Parameters are numbered without gaps,
//!   and one used twice is in columns of one type;
//! - columns left out have no DEFAULT (and a topic's system columns are not listed).
//!
//! NULL into a NOT NULL column is checked at each execution, with a planned INSERT's error.

use std::borrow::Cow;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::ast;
use sluice_engine::Value;

use crate::api::{CommandTag, Output};
use crate::catalog::TableDef;
use crate::context::Context;
use crate::error::{from_datafusion, Result};
use crate::resolve::Access;
use crate::types::{value_at, SqlType};
use crate::values_scan::{Literal as ScannedLiteral, ScannedRows};

/// A literal INSERT, typed at prepare time.
pub(crate) struct LiteralInsert {
    pub(crate) table: Arc<TableDef>,
    /// Whole rows of the table, in its column order; a parameter's place holds NULL until
    /// an execution binds it.
    rows: Vec<Vec<Value>>,
    /// Where each parameter goes, in row order.
    places: Vec<Place>,
    /// The type of each parameter (`$1` first): its column's.
    pub(crate) param_types: Vec<DataType>,
}

/// A value of the statement that a parameter gives.
struct Place {
    row: usize,
    column: usize,
    /// Index of the parameter (`$1` is 0).
    param: usize,
}

/// One value of the VALUES list, as the shortcut reads it.
enum Field {
    /// The text COPY would be given (`None`: NULL).
    Text(Option<String>),
    /// `$n`, as its index (`$1` is 0).
    Param(usize),
}

/// Types `statement` when it is a literal INSERT the shortcut reproduces exactly; `None`
/// sends it to DataFusion. `scanned`: rows that follow the statement's own
/// ([`crate::values_scan`]). `declared`: the parameter types the client gave, if any.
pub(crate) fn plan(
    session: &Context,
    statement: &ast::Statement,
    scanned: Option<&ScannedRows>,
    declared: &[Option<DataType>],
) -> Option<LiteralInsert> {
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
    let table = session.relation(name, Access::Data).ok()?;
    let columns = listed_columns(&table, &insert.columns)?;
    let parsed_rows = values.rows.iter().map(|row| {
        let literals = row.content.iter().map(parsed_literal);
        (row.content.len(), Either::Parsed(literals))
    });
    let scanned_rows = scanned.into_iter().flat_map(|scanned| {
        scanned.rows().map(move |row| {
            let literals = row
                .iter()
                .map(move |literal| Some(scanned_literal(scanned, literal)));
            (row.len(), Either::Scanned(literals))
        })
    });
    let mut texts = Vec::with_capacity(values.rows.len() + scanned.map_or(0, |s| s.rows().len()));
    let mut places = Vec::new();
    let mut param_types: Vec<Option<DataType>> = Vec::new();
    for (row_index, (width, literals)) in parsed_rows.chain(scanned_rows).enumerate() {
        if width != columns.len() {
            return None;
        }
        let mut fields = Vec::with_capacity(columns.len());
        for (literal, &column) in literals.zip(&columns) {
            let ty = table.columns[column].ty;
            match field(literal?, ty)? {
                Field::Text(text) => fields.push(text),
                Field::Param(param) => {
                    if param >= param_types.len() {
                        param_types.resize(param + 1, None);
                    }
                    let arrow_type = ty.arrow_type();
                    match &param_types[param] {
                        Some(seen) if *seen != arrow_type => return None,
                        _ => param_types[param] = Some(arrow_type),
                    }
                    places.push(Place {
                        row: row_index,
                        column,
                        param,
                    });
                    fields.push(None);
                }
            }
        }
        texts.push(fields);
    }
    // Every parameter used, and each declared type the one its column gives.
    let param_types: Vec<DataType> = param_types.into_iter().collect::<Option<_>>()?;
    if declared.len() > param_types.len()
        || declared
            .iter()
            .zip(&param_types)
            .any(|(declared, inferred)| declared.as_ref().is_some_and(|d| d != inferred))
    {
        return None;
    }
    let absent = vec![Value::Null; table.columns.len()];
    let rows = crate::copy::parse_rows(&table, &columns, texts, &absent).ok()?;
    Some(LiteralInsert {
        table,
        rows,
        places,
        param_types,
    })
}

/// The table's column indexes the INSERT lists (all user columns when it lists none), or
/// `None` when the list is one the shortcut leaves alone: a name that is not a plain
/// column, a repeat, a system column, or an omitted column with a DEFAULT.
fn listed_columns(table: &TableDef, listed: &[ast::ObjectName]) -> Option<Vec<usize>> {
    let idents = listed
        .iter()
        .map(|name| match name.0.as_slice() {
            [part] => part.as_ident().cloned(),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    let columns = crate::copy::column_indexes(table, &idents).ok()?;
    let defaults_needed = table
        .columns
        .iter()
        .enumerate()
        .any(|(index, column)| !columns.contains(&index) && column.default.is_some());
    let system_listed = columns.iter().any(|&index| table.is_system_column(index));
    (!defaults_needed && !system_listed).then_some(columns)
}

/// A value of the VALUES list as the shortcut reads it, whether sqlparser parsed it or
/// [`crate::values_scan`] scanned it.
#[derive(Debug, PartialEq)]
enum Literal<'a> {
    Null,
    String(Cow<'a, str>),
    /// Digits with an optional fraction (sqlparser's number text), and a sign.
    Number {
        negative: bool,
        digits: &'a str,
    },
    Boolean(bool),
    /// `$n`, as its index (`$1` is 0).
    Param(usize),
}

/// Both kinds of row in one loop without boxing.
enum Either<P, S> {
    Parsed(P),
    Scanned(S),
}

impl<'a, P, S> Iterator for Either<P, S>
where
    P: Iterator<Item = Option<Literal<'a>>>,
    S: Iterator<Item = Option<Literal<'a>>>,
{
    type Item = Option<Literal<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Either::Parsed(parsed) => parsed.next(),
            Either::Scanned(scanned) => scanned.next(),
        }
    }
}

/// `expr` as a [`Literal`], or `None` when it is none of them.
fn parsed_literal(expr: &ast::Expr) -> Option<Literal<'_>> {
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
    match value {
        ast::Value::Placeholder(name) if !negative => {
            let number: usize = name.strip_prefix('$')?.parse().ok()?;
            number.checked_sub(1).map(Literal::Param)
        }
        ast::Value::Null => Some(Literal::Null),
        ast::Value::SingleQuotedString(text) => Some(Literal::String(Cow::Borrowed(text))),
        ast::Value::Boolean(b) => Some(Literal::Boolean(*b)),
        ast::Value::Number(digits, false) => Some(Literal::Number { negative, digits }),
        _ => None,
    }
}

/// A scanned value as a [`Literal`].
fn scanned_literal<'a>(rows: &'a ScannedRows, literal: &ScannedLiteral) -> Literal<'a> {
    match *literal {
        ScannedLiteral::String { .. } => Literal::String(rows.text(literal)),
        ScannedLiteral::Number { negative, .. } => Literal::Number {
            negative,
            digits: rows.digits(literal),
        },
        ScannedLiteral::Null => Literal::Null,
        ScannedLiteral::Boolean(b) => Literal::Boolean(b),
        ScannedLiteral::Parameter(n) => Literal::Param(usize::from(n) - 1),
    }
}

/// What the shortcut makes of `literal` in a column of type `ty`, or `None` when the
/// literal's meaning in that column is not simply its text (see the module comment).
fn field(literal: Literal<'_>, ty: SqlType) -> Option<Field> {
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
    let text = match literal {
        Literal::Param(index) => return Some(Field::Param(index)),
        Literal::Null => None,
        Literal::String(text) if textual || numeric => Some(text.into_owned()),
        Literal::Boolean(b) if ty == SqlType::Bool => Some(b.to_string()),
        Literal::Number { negative, digits } if numeric && reads_exactly(digits, ty) => {
            Some(if negative {
                format!("-{digits}")
            } else {
                digits.to_string()
            })
        }
        _ => return None,
    };
    Some(Field::Text(text))
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

/// Binds `params` into the rows typed at prepare time and writes them.
pub(crate) async fn execute(
    session: &Context,
    insert: &LiteralInsert,
    params: Vec<ScalarValue>,
) -> Result<Output> {
    crate::cached_plan::check_param_count(insert.param_types.len(), params.len())?;
    // Each parameter is converted to its type once, by value, as a Bind converts it,
    // before any row is checked; a parameter used in several places is read from that.
    let params = params
        .into_iter()
        .zip(&insert.param_types)
        .enumerate()
        .map(|(index, (value, ty))| crate::cached_plan::bind_value(value, ty, index))
        .collect::<Result<Vec<_>>>()?;
    let table = &insert.table;
    let mut rows = Cow::Borrowed(&insert.rows);
    if !insert.places.is_empty() {
        let rows = rows.to_mut();
        for place in &insert.places {
            let column = &table.columns[place.column];
            rows[place.row][place.column] =
                bound_value(&params[place.param], column.ty, &column.name)?;
        }
    }
    for row in rows.iter() {
        crate::copy::check_not_null(table, row)?;
    }
    session.db.enforce_checks(table, &rows)?;
    // Nothing is read, but a transaction block takes its snapshot before its first write
    // (its writes are validated against it), exactly as a planned INSERT does. The view
    // shares the block's write set, so it is released before the write joins it.
    drop(session.read_view().await?);
    let count = crate::copy::write_rows(session, table, &rows).await?;
    Ok(Output::Command(CommandTag::with_rows("INSERT", count)))
}

/// A bound parameter's value in its column, converted as a planned INSERT converts it:
/// read as the column's value with its checks ([`value_at`]: lengths, padding). The
/// parameter was already cast to its own type ([`crate::cached_plan::bind_value`]).
fn bound_value(value: &ScalarValue, ty: SqlType, column: &str) -> Result<Value> {
    let array = value.to_array().map_err(from_datafusion)?;
    value_at(&array, 0, ty, column)
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
        let text = |sql: &str, ty| match parsed_literal(&literal(sql)).and_then(|l| field(l, ty)) {
            Some(Field::Text(text)) => Some(text),
            _ => None,
        };
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

    #[test]
    fn numbered_parameters_take_their_place_and_others_do_not() {
        let int8 = |sql: &str| parsed_literal(&literal(sql)).and_then(|l| field(l, SqlType::Int8));
        let param = |sql: &str| match int8(sql) {
            Some(Field::Param(index)) => Some(index),
            _ => None,
        };
        assert_eq!(param("$1"), Some(0));
        assert_eq!(param("$12"), Some(11));
        assert_eq!(param("$0"), None);
        assert_eq!(param("-$1"), None);
        assert!(matches!(int8("7"), Some(Field::Text(Some(t))) if t == "7"));
    }

    /// The shortcut reads a scanned value as it reads the expression sqlparser makes of it.
    #[test]
    fn scanned_values_read_as_their_parsed_expressions() {
        let sql = "INSERT INTO t VALUES (0, 'a'), ('x''y', -1.50), (NULL, true), \
                   (FALSE, $7), ('', 0042), ('é''''', -3)";
        let split = crate::values_scan::split(sql).expect("scanned");
        let rows = &split.rows;
        let mut seen = 0;
        for row in rows.rows() {
            for scanned in row {
                let parsed = rows.expr(scanned);
                assert_eq!(
                    Some(scanned_literal(rows, scanned)),
                    parsed_literal(&parsed),
                    "{parsed}"
                );
                seen += 1;
            }
        }
        assert_eq!(seen, 10);
    }
}
