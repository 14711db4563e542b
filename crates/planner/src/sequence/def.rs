//! Sequence definitions from SQL: CREATE SEQUENCE's options with
//! PostgreSQL's defaults and checks, and the sequence a `serial` or identity
//! column implies.

use std::hash::{BuildHasher, Hasher};

use datafusion::sql::sqlparser::ast;

use crate::catalog::{CatalogState, SequenceDef, SequenceOwner};
use crate::error::{sqlstate, Error, Result};
use crate::names::{first_free_name, quote_ident_if_needed};
use crate::types::SqlType;

/// The integer type behind `serial`, `bigserial` and `smallserial` (and
/// their `serial4`, `serial8`, `serial2` spellings); `None` for any other type.
pub fn serial_type(data_type: &ast::DataType) -> Option<SqlType> {
    let ast::DataType::Custom(name, modifiers) = data_type else {
        return None;
    };
    if !modifiers.is_empty() {
        return None;
    }
    match name.to_string().to_ascii_lowercase().as_str() {
        "serial" | "serial4" => Some(SqlType::Int4),
        "bigserial" | "serial8" => Some(SqlType::Int8),
        "smallserial" | "serial2" => Some(SqlType::Int2),
        _ => None,
    }
}

/// The range of values a sequence of type `ty` may hold.
fn type_range(ty: SqlType) -> Result<(i64, i64)> {
    match ty {
        SqlType::Int2 => Ok((i16::MIN.into(), i16::MAX.into())),
        SqlType::Int4 => Ok((i32::MIN.into(), i32::MAX.into())),
        SqlType::Int8 => Ok((i64::MIN, i64::MAX)),
        _ => Err(Error::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            "sequence type must be smallint, integer, or bigint",
        )),
    }
}

/// A sequence named `schema.name` of type `ty` with `options` applied over
/// PostgreSQL's defaults, checked as PostgreSQL checks them. Its id and
/// nonce are the caller's to fill in.
pub fn from_options(
    schema: &str,
    name: &str,
    ty: SqlType,
    options: &[ast::SequenceOptions],
) -> Result<SequenceDef> {
    let (type_min, type_max) = type_range(ty)?;
    let mut increment = 1;
    let mut min = None;
    let mut max = None;
    let mut start = None;
    let mut cache = 1;
    let mut cycle = false;
    for option in options {
        match option {
            ast::SequenceOptions::IncrementBy(expr, _) => increment = option_value(expr)?,
            ast::SequenceOptions::MinValue(expr) => {
                min = expr.as_ref().map(option_value).transpose()?
            }
            ast::SequenceOptions::MaxValue(expr) => {
                max = expr.as_ref().map(option_value).transpose()?
            }
            ast::SequenceOptions::StartWith(expr, _) => start = Some(option_value(expr)?),
            ast::SequenceOptions::Cache(expr) => cache = option_value(expr)?,
            // sqlparser's flag says NO CYCLE.
            ast::SequenceOptions::Cycle(no) => cycle = !*no,
        }
    }
    let invalid = |message: String| Error::new(sqlstate::INVALID_PARAMETER_VALUE, message);
    if increment == 0 {
        return Err(invalid("INCREMENT must not be zero".into()));
    }
    let min = min.unwrap_or(if increment > 0 { 1 } else { type_min });
    let max = max.unwrap_or(if increment > 0 { type_max } else { -1 });
    let type_name = ty.pg_name();
    for (label, value) in [("MINVALUE", min), ("MAXVALUE", max)] {
        if value < type_min || value > type_max {
            return Err(invalid(format!(
                "{label} ({value}) is out of range for sequence data type {type_name}"
            )));
        }
    }
    if min >= max {
        return Err(invalid(format!(
            "MINVALUE ({min}) must be less than MAXVALUE ({max})"
        )));
    }
    let start = start.unwrap_or(if increment > 0 { min } else { max });
    if start < min {
        return Err(invalid(format!(
            "START value ({start}) cannot be less than MINVALUE ({min})"
        )));
    }
    if start > max {
        return Err(invalid(format!(
            "START value ({start}) cannot be greater than MAXVALUE ({max})"
        )));
    }
    if cache <= 0 {
        return Err(invalid(format!(
            "CACHE ({cache}) must be greater than zero"
        )));
    }
    Ok(SequenceDef {
        id: 0,
        nonce: 0,
        schema: schema.to_string(),
        name: name.to_string(),
        ty,
        start,
        increment,
        min,
        max,
        cache,
        cycle,
        owned_by: None,
    })
}

/// A numeric option's value (`INCREMENT BY -2`, `START 100`).
fn option_value(expr: &ast::Expr) -> Result<i64> {
    let text = expr.to_string();
    text.trim().parse::<i64>().map_err(|_| {
        Error::new(
            sqlstate::SYNTAX_ERROR,
            format!("sequence option value must be an integer, not {text}"),
        )
    })
}

/// The sequence PostgreSQL makes for a `serial` or identity column: named
/// `<table>_<column>_seq` (then `…_seq1`, `…_seq2` while the name is taken,
/// in the catalog or by `also_taken`), owned by the column.
pub fn for_column(
    catalog: &CatalogState,
    also_taken: &[String],
    schema: &str,
    table: &str,
    column: &str,
    ty: SqlType,
    options: &[ast::SequenceOptions],
) -> Result<SequenceDef> {
    let name = first_free_name(&format!("{table}_{column}_seq"), |name| {
        catalog.relation_exists(schema, name) || also_taken.iter().any(|t| t == name)
    });
    let mut def = from_options(schema, &name, ty, options)?;
    def.owned_by = Some(SequenceOwner {
        table: 0,
        column: column.to_string(),
    });
    Ok(def)
}

/// The DEFAULT of a column that draws from `def`: `nextval('name')`, the
/// name qualified outside the default schema and quoted where it must be.
pub fn nextval_default(def: &SequenceDef) -> String {
    let mut name = quote_ident_if_needed(&def.name);
    if def.schema != crate::catalog::DEFAULT_SCHEMA {
        name = format!("{}.{name}", quote_ident_if_needed(&def.schema));
    }
    format!("nextval('{}')", name.replace('\'', "''"))
}

/// A fresh nonce for a new sequence's state key (std's per-process random
/// keys, mixed with the time: no random-number crate for one number).
pub fn new_nonce() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(now);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    use super::*;

    fn create(sql: &str) -> Result<SequenceDef> {
        let statement = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0);
        let ast::Statement::CreateSequence {
            sequence_options,
            data_type,
            ..
        } = statement
        else {
            panic!("not CREATE SEQUENCE: {sql}");
        };
        let ty = match data_type {
            Some(t) => SqlType::from_ast(&t)?,
            None => SqlType::Int8,
        };
        from_options("public", "s", ty, &sequence_options)
    }

    #[test]
    fn defaults_follow_the_direction_and_the_type() {
        let up = create("CREATE SEQUENCE s").unwrap();
        assert_eq!(
            (up.start, up.min, up.max, up.increment),
            (1, 1, i64::MAX, 1)
        );
        let down = create("CREATE SEQUENCE s AS integer INCREMENT BY -1").unwrap();
        assert_eq!((down.start, down.min, down.max), (-1, i32::MIN as i64, -1));
        let small = create("CREATE SEQUENCE s AS smallint START 5 CACHE 20 CYCLE").unwrap();
        assert_eq!(
            (small.start, small.max, small.cache, small.cycle),
            (5, 32767, 20, true)
        );
    }

    #[test]
    fn bad_options_are_refused_with_postgres_messages() {
        let message = |sql| create(sql).unwrap_err().message;
        assert_eq!(
            message("CREATE SEQUENCE s INCREMENT 0"),
            "INCREMENT must not be zero"
        );
        assert_eq!(
            message("CREATE SEQUENCE s MINVALUE 10 MAXVALUE 5"),
            "MINVALUE (10) must be less than MAXVALUE (5)"
        );
        assert_eq!(
            message("CREATE SEQUENCE s START 0"),
            "START value (0) cannot be less than MINVALUE (1)"
        );
        assert_eq!(
            message("CREATE SEQUENCE s AS smallint MAXVALUE 40000"),
            "MAXVALUE (40000) is out of range for sequence data type smallint"
        );
        assert_eq!(
            message("CREATE SEQUENCE s CACHE 0"),
            "CACHE (0) must be greater than zero"
        );
        assert_eq!(
            create("CREATE SEQUENCE s AS text").unwrap_err().code,
            sqlstate::INVALID_PARAMETER_VALUE
        );
    }

    #[test]
    fn column_sequences_take_the_first_free_name_and_quote_it_in_the_default() {
        let catalog = CatalogState::default();
        let taken = vec!["t_id_seq".to_string()];
        let def = for_column(&catalog, &taken, "public", "t", "id", SqlType::Int4, &[]).unwrap();
        assert_eq!(def.name, "t_id_seq1");
        assert_eq!(def.max, i32::MAX as i64);
        assert_eq!(nextval_default(&def), "nextval('t_id_seq1')");
        let odd = SequenceDef {
            schema: "Sales".into(),
            name: "it's".into(),
            ..def
        };
        assert_eq!(nextval_default(&odd), "nextval('\"Sales\".\"it''s\"')");
    }
}
