//! COPY: planning `COPY … FROM STDIN` / `COPY … TO STDOUT`, and turning the
//! text fields the frontend parsed into typed rows.
//!
//! Each batch of rows from the frontend becomes one Raft command, so a bulk
//! load costs one proposal per batch, not per row. A failing batch writes
//! nothing of itself; batches before it stay committed (documented: COPY is
//! not atomic until interactive transactions land).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BinaryArray, StringArray};
use datafusion::arrow::compute::{cast_with_options, CastOptions};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::FormatOptions;
use datafusion::sql::sqlparser::ast;
use sluice_engine::Value;
use sluice_raftstore::Mutation;

use crate::api::{CopyIn, CopyOptions};
use crate::catalog::TableDef;
use crate::context::Context;
use crate::ddl::evaluate_constant;
use crate::dml::{keyed_rows, quote_ident};
use crate::error::{from_datafusion, sqlstate, Error, Result};
use crate::resolve::Access;
use crate::types::{decode_bytea, text_value, value_at, SqlType};

/// A planned COPY: rows in from the client, or a query's rows out to it.
pub(crate) enum CopyPlan {
    In(CopyIn),
    Out {
        plan: crate::cached_plan::CachedPlan,
        options: CopyOptions,
    },
}

pub(crate) async fn prepare(session: &Context, statement: &ast::Statement) -> Result<CopyPlan> {
    let ast::Statement::Copy {
        source,
        to,
        target,
        options,
        legacy_options,
        ..
    } = statement
    else {
        return Err(Error::new(sqlstate::INTERNAL_ERROR, "not a COPY statement"));
    };
    let options = copy_options(options, legacy_options)?;
    match (to, target) {
        (false, ast::CopyTarget::Stdin) => {
            let ast::CopySource::Table { table_name, columns } = source else {
                return Err(Error::new(sqlstate::SYNTAX_ERROR, "COPY FROM needs a table"));
            };
            let table = session.relation(table_name, Access::Data)?;
            let columns = column_list(&table, columns)?;
            Ok(CopyPlan::In(CopyIn { table: table.qualified_name(), columns, options }))
        }
        (true, ast::CopyTarget::Stdout) => {
            let query = match source {
                ast::CopySource::Table { table_name, columns } => {
                    let table = session.relation(table_name, Access::Data)?;
                    let columns = column_list(&table, columns)?;
                    let list: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
                    let sql = format!(
                        "SELECT {} FROM {}.{}",
                        list.join(", "),
                        quote_ident(&table.schema),
                        quote_ident(&table.name)
                    );
                    session.parse(&sql)?.remove(0).into_sql()?
                }
                ast::CopySource::Query(query) => ast::Statement::Query(query.clone()),
            };
            let plan = session.cache(session.plan(query).await?).await?;
            Ok(CopyPlan::Out { plan, options })
        }
        _ => Err(Error::new(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            "COPY to or from a file or program is not allowed; use COPY … FROM STDIN / TO STDOUT (psql: \\copy)",
        )),
    }
}

/// The table's column indexes a column list names, in its order (every user column when it
/// is empty), as COPY and INSERT resolve them.
pub(crate) fn column_indexes(table: &TableDef, columns: &[ast::Ident]) -> Result<Vec<usize>> {
    if columns.is_empty() {
        return Ok((0..table.user_columns().len()).collect());
    }
    let mut indexes = Vec::with_capacity(columns.len());
    for ident in columns {
        let name = crate::names::identifier(ident);
        let index = table
            .column_index(&name)
            .ok_or_else(|| undefined_column(table, &name))?;
        if indexes.contains(&index) {
            return Err(Error::new(
                sqlstate::DUPLICATE_COLUMN,
                format!("column \"{name}\" specified more than once"),
            ));
        }
        indexes.push(index);
    }
    Ok(indexes)
}

fn column_list(table: &TableDef, columns: &[ast::Ident]) -> Result<Vec<String>> {
    Ok(column_indexes(table, columns)?
        .into_iter()
        .map(|index| table.columns[index].name.clone())
        .collect())
}

fn undefined_column(table: &TableDef, name: &str) -> Error {
    Error::new(
        sqlstate::UNDEFINED_COLUMN,
        format!(
            "column \"{name}\" of relation \"{}\" does not exist",
            table.name
        ),
    )
}

fn copy_options(
    options: &[ast::CopyOption],
    legacy: &[ast::CopyLegacyOption],
) -> Result<CopyOptions> {
    let mut out = CopyOptions::text();
    let ascii = |c: char, what: &str| -> Result<u8> {
        u8::try_from(c).ok().filter(u8::is_ascii).ok_or_else(|| {
            Error::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!("COPY {what} must be a single one-byte character"),
            )
        })
    };
    let set_format = |out: &mut CopyOptions, csv: bool| {
        let (null, delimiter) = if csv {
            (String::new(), b',')
        } else {
            ("\\N".to_string(), b'\t')
        };
        out.format = if csv {
            crate::api::CopyFormat::Csv
        } else {
            crate::api::CopyFormat::Text
        };
        out.null = null;
        out.delimiter = delimiter;
    };
    // FORMAT first: it sets the defaults other options override.
    for option in options {
        if let ast::CopyOption::Format(name) = option {
            match name.value.to_ascii_lowercase().as_str() {
                "csv" => set_format(&mut out, true),
                "text" => set_format(&mut out, false),
                "binary" => {
                    return Err(Error::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "COPY BINARY is not supported yet",
                    ))
                }
                other => {
                    return Err(Error::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!("COPY format \"{other}\" not recognized"),
                    ))
                }
            }
        }
    }
    for option in legacy {
        if let ast::CopyLegacyOption::Csv(_) = option {
            set_format(&mut out, true);
        }
    }
    for option in options {
        match option {
            ast::CopyOption::Format(_) => {}
            ast::CopyOption::Delimiter(c) => out.delimiter = ascii(*c, "delimiter")?,
            ast::CopyOption::Null(s) => out.null = s.clone(),
            ast::CopyOption::Header(h) => out.header = *h,
            // PostgreSQL's hint to load rows already frozen: rows Sluice writes carry no
            // transaction visibility to freeze, so there is nothing to do.
            ast::CopyOption::Freeze(_) => {}
            ast::CopyOption::Quote(c) => out.quote = ascii(*c, "quote")?,
            ast::CopyOption::Escape(c) => out.escape = ascii(*c, "escape")?,
            ast::CopyOption::Encoding(e)
                if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
            other => {
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("COPY option {other} is not supported"),
                ))
            }
        }
    }
    for option in legacy {
        match option {
            ast::CopyLegacyOption::Csv(csv) => {
                for csv_option in csv {
                    match csv_option {
                        ast::CopyLegacyCsvOption::Header => out.header = true,
                        ast::CopyLegacyCsvOption::Quote(c) => out.quote = ascii(*c, "quote")?,
                        ast::CopyLegacyCsvOption::Escape(c) => out.escape = ascii(*c, "escape")?,
                        other => {
                            return Err(Error::new(
                                sqlstate::FEATURE_NOT_SUPPORTED,
                                format!("COPY option {other} is not supported"),
                            ))
                        }
                    }
                }
            }
            ast::CopyLegacyOption::Delimiter(c) => out.delimiter = ascii(*c, "delimiter")?,
            ast::CopyLegacyOption::Null(s) => out.null = s.clone(),
            ast::CopyLegacyOption::Header => out.header = true,
            ast::CopyLegacyOption::Binary => {
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "COPY BINARY is not supported yet",
                ))
            }
            other => {
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("COPY option {other} is not supported"),
                ))
            }
        }
    }
    if out.format == crate::api::CopyFormat::Text && out.header {
        return Err(Error::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "COPY HEADER available only in CSV mode",
        ));
    }
    Ok(out)
}

/// COPY options given as `(name, value)` pairs (`COPY (SUBSCRIBE …) TO
/// STDOUT (FORMAT csv, HEADER)`), with the same rules as a table's COPY.
pub fn options_from_pairs(pairs: &[(String, Option<String>)]) -> Result<CopyOptions> {
    let one_char = |name: &str, value: &Option<String>| -> Result<char> {
        let value = value.as_deref().unwrap_or_default();
        let mut chars = value.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => Ok(c),
            _ => Err(Error::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("COPY {name} must be a single one-byte character"),
            )),
        }
    };
    let mut options = Vec::new();
    for (name, value) in pairs {
        let text = value.clone().unwrap_or_default();
        options.push(match name.as_str() {
            "format" => ast::CopyOption::Format(ast::Ident::new(text)),
            "delimiter" => ast::CopyOption::Delimiter(one_char(name, value)?),
            "null" => ast::CopyOption::Null(text),
            "header" => ast::CopyOption::Header(
                value.is_none()
                    || matches!(text.to_ascii_lowercase().as_str(), "true" | "on" | "1"),
            ),
            "quote" => ast::CopyOption::Quote(one_char(name, value)?),
            "escape" => ast::CopyOption::Escape(one_char(name, value)?),
            "encoding" => ast::CopyOption::Encoding(text),
            other => {
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("COPY option {other} is not supported"),
                ))
            }
        });
    }
    copy_options(&options, &[])
}

/// Inserts one batch of COPY rows (fields in `copy.columns` order, already unescaped).
pub async fn insert_rows(
    session: &mut Context,
    copy: &CopyIn,
    rows: Vec<Vec<Option<String>>>,
) -> Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let table = session
        .db
        .catalog
        .current()
        .tables
        .values()
        .find(|t| t.qualified_name() == copy.table)
        .cloned()
        .ok_or_else(|| {
            Error::new(
                sqlstate::UNDEFINED_TABLE,
                format!("relation \"{}\" does not exist", copy.table),
            )
        })?;
    for (line, row) in rows.iter().enumerate() {
        if row.len() != copy.columns.len() {
            let what = if row.len() < copy.columns.len() {
                "missing data for a column"
            } else {
                "extra data after last expected column"
            };
            return Err(
                Error::new(sqlstate::BAD_COPY_FILE_FORMAT, what.to_string()).with_detail(format!(
                    "row {} of this batch has {} fields, expected {}",
                    line + 1,
                    row.len(),
                    copy.columns.len()
                )),
            );
        }
    }
    // By name: the table may have changed since the COPY started.
    let columns = copy
        .columns
        .iter()
        .map(|name| {
            table
                .column_index(name)
                .ok_or_else(|| undefined_column(&table, name))
        })
        .collect::<Result<Vec<_>>>()?;
    // A column COPY does not list takes its DEFAULT, the same for every row.
    let mut absent = Vec::with_capacity(table.columns.len());
    for (index, column) in table.columns.iter().enumerate() {
        absent.push(match &column.default {
            Some(sql) if !columns.contains(&index) => {
                evaluate_constant(session, &table, sql, column.ty).await?
            }
            _ => Value::Null,
        });
    }
    let values = parse_rows(&table, &columns, rows, &absent)?;
    for row in &values {
        check_not_null(&table, row)?;
    }
    session.db.enforce_checks(&table, &values)?;
    write_rows(session, &table, &values).await
}

/// Types text rows whose fields are the `columns` of `table` (indexes, in that order) into
/// whole rows of the table; a column not listed takes its value from `absent`. NOT NULL is
/// the caller's to check ([`check_not_null`]).
pub(crate) fn parse_rows(
    table: &TableDef,
    columns: &[usize],
    mut rows: Vec<Vec<Option<String>>>,
    absent: &[Value],
) -> Result<Vec<Vec<Value>>> {
    let mut values: Vec<Vec<Value>> = vec![Vec::with_capacity(table.columns.len()); rows.len()];
    for (index, column) in table.columns.iter().enumerate() {
        let column_values = match columns.iter().position(|&c| c == index) {
            Some(field) => parse_column(&mut rows, field, column.ty, &column.name)?,
            None => vec![absent[index].clone(); rows.len()],
        };
        for (row, value) in values.iter_mut().zip(column_values) {
            row.push(value);
        }
    }
    Ok(values)
}

/// Fails on a NULL in a NOT NULL column of a whole row (a topic's system columns are
/// assigned at apply, so they may be NULL here).
pub(crate) fn check_not_null(table: &TableDef, row: &[Value]) -> Result<()> {
    for (index, (column, value)) in table.columns.iter().zip(row).enumerate() {
        if value.is_null() && !column.nullable && !table.is_system_column(index) {
            return Err(table.not_null_violation(&column.name));
        }
    }
    Ok(())
}

/// Writes new whole rows: appends to a topic, inserts into a table (a duplicate key fails
/// the batch). Returns the number of rows written.
pub(crate) async fn write_rows(
    session: &Context,
    table: &Arc<TableDef>,
    values: &[Vec<Value>],
) -> Result<u64> {
    if table.is_topic() {
        crate::topic::propose_appends(session, table, values).await?;
        return Ok(values.len() as u64);
    }
    let keyed = keyed_rows(session, table, values)?;
    let mutations = keyed
        .into_iter()
        .map(|(key, value)| Mutation::Insert { key, value })
        .collect();
    let outcome = session.propose(table, mutations).await?;
    Ok(outcome.inserted)
}

/// Parses one column of text fields into typed values with Arrow's casts,
/// after mapping PostgreSQL's text spellings Arrow does not know. The fields
/// of a text or varchar column are taken as they are, checked but not
/// copied: most of what bulk loads write is text.
fn parse_column(
    rows: &mut [Vec<Option<String>>],
    field: usize,
    ty: SqlType,
    name: &str,
) -> Result<Vec<Value>> {
    if let SqlType::Text | SqlType::Varchar(_) = ty {
        return rows
            .iter_mut()
            .map(|row| match row[field].take() {
                Some(text) => text_value(text, ty),
                None => Ok(Value::Null),
            })
            .collect();
    }
    let target = ty.arrow_type();
    let array: ArrayRef = if ty == SqlType::Bytea {
        let decoded: Vec<Option<Vec<u8>>> = rows
            .iter()
            .map(|row| row[field].as_deref().map(decode_bytea).transpose())
            .collect::<Result<_>>()?;
        Arc::new(BinaryArray::from_iter(decoded))
    } else {
        let texts = StringArray::from_iter(
            rows.iter()
                .map(|row| row[field].as_deref().map(|t| normalize_text(t, ty))),
        );
        if target == DataType::Utf8 {
            Arc::new(texts)
        } else {
            let options = CastOptions {
                safe: false,
                format_options: FormatOptions::default(),
            };
            cast_with_options(&texts, &target, &options).map_err(|e| {
                let mut error = from_datafusion(e.into());
                if error.code == sqlstate::INTERNAL_ERROR {
                    error.code = sqlstate::INVALID_TEXT_REPRESENTATION;
                }
                error.with_detail(format!("COPY column \"{name}\" of type {}", ty.pg_name()))
            })?
        }
    };
    (0..rows.len())
        .map(|row| value_at(&array, row, ty, name))
        .collect()
}

/// PostgreSQL text forms that Arrow's parsers spell differently.
fn normalize_text(text: &str, ty: SqlType) -> std::borrow::Cow<'_, str> {
    match ty {
        // PostgreSQL prints `+00`; Arrow wants `+00:00`.
        SqlType::TimestampTz => {
            let bytes = text.as_bytes();
            let n = bytes.len();
            if n >= 3
                && matches!(bytes[n - 3], b'+' | b'-')
                && bytes[n - 2..].iter().all(u8::is_ascii_digit)
            {
                std::borrow::Cow::Owned(format!("{text}:00"))
            } else {
                std::borrow::Cow::Borrowed(text)
            }
        }
        SqlType::Bool => match text.trim().to_ascii_lowercase().as_str() {
            "t" | "true" | "y" | "yes" | "on" | "1" => "true".into(),
            "f" | "false" | "n" | "no" | "off" | "0" => "false".into(),
            _ => std::borrow::Cow::Borrowed(text),
        },
        _ => std::borrow::Cow::Borrowed(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytea_hex_decodes() {
        assert_eq!(decode_bytea("\\x4142").unwrap(), b"AB");
        assert_eq!(
            decode_bytea("\\x414").unwrap_err().code,
            sqlstate::INVALID_TEXT_REPRESENTATION
        );
        assert_eq!(decode_bytea("plain").unwrap(), b"plain");
    }

    #[test]
    fn postgres_timestamptz_offsets_are_widened() {
        assert_eq!(
            normalize_text("2026-01-01 10:00:00+00", SqlType::TimestampTz),
            "2026-01-01 10:00:00+00:00"
        );
        assert_eq!(
            normalize_text("2026-01-01 10:00:00+05:30", SqlType::TimestampTz),
            "2026-01-01 10:00:00+05:30"
        );
    }

    #[test]
    fn integer_columns_parse_and_reject_garbage() {
        let mut rows = vec![
            vec![Some("42".to_string())],
            vec![None],
            vec![Some("x".to_string())],
        ];
        let err = parse_column(&mut rows, 0, SqlType::Int4, "n").unwrap_err();
        assert_eq!(err.code, sqlstate::INVALID_TEXT_REPRESENTATION);
        let ok = parse_column(&mut rows[..2], 0, SqlType::Int4, "n").unwrap();
        assert_eq!(ok, vec![Value::Int32(42), Value::Null]);
    }

    #[test]
    fn text_columns_take_their_fields_with_varchar_checks() {
        let fields = || {
            vec![
                vec![Some("ab".to_string())],
                vec![None],
                vec![Some("é✓".to_string())],
            ]
        };
        let expected = vec![
            Value::Text("ab".into()),
            Value::Null,
            Value::Text("é✓".into()),
        ];
        for ty in [
            SqlType::Text,
            SqlType::Varchar(None),
            SqlType::Varchar(Some(2)),
        ] {
            assert_eq!(parse_column(&mut fields(), 0, ty, "t").unwrap(), expected);
        }
        let err = parse_column(&mut fields(), 0, SqlType::Varchar(Some(1)), "t").unwrap_err();
        assert_eq!(err.code, sqlstate::STRING_DATA_RIGHT_TRUNCATION);
    }
}
