//! Names to catalog objects: the one resolver for tables, topics, indexes and
//! schemas, so that every statement folds names and reports a missing or
//! wrong object the way PostgreSQL does.
//!
//! A statement says what it does with the name ([`Access`]); that decides
//! which objects it may name (DDL may not touch system tables, topic DDL and
//! SUBSCRIBE only topics) and how a miss reads: DML and queries say
//! `relation "x" does not exist`, DROP/ALTER say `table "x" does not exist`,
//! as PostgreSQL does.

use std::sync::Arc;

use datafusion::sql::sqlparser::ast;

use crate::catalog::{CatalogState, TableDef, DEFAULT_SCHEMA};
use crate::error::{sqlstate, Error, Result};
use crate::names::identifier;

/// What a statement does with the relation it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads and writes rows (DML, COPY): tables, topics and the writable
    /// system tables.
    Data,
    /// Changes a table's definition or drops it (DROP, ALTER, TRUNCATE,
    /// CREATE INDEX): anything but a system table.
    Ddl,
    /// ALTER TOPIC and DROP TOPIC: only topics.
    TopicDdl,
    /// SUBSCRIBE and cursors over it: only topics.
    Subscribe,
}

/// `schema.name` (or `catalog.schema.name`) as stored: unquoted parts fold
/// to lower case, and an unqualified name is in the default schema.
pub fn qualified_name(name: &ast::ObjectName) -> Result<(String, String)> {
    match name_parts(name).as_slice() {
        [table] => Ok((DEFAULT_SCHEMA.to_string(), table.clone())),
        [schema, table] | [_, schema, table] => Ok((schema.clone(), table.clone())),
        _ => Err(Error::new(
            sqlstate::SYNTAX_ERROR,
            format!("improper qualified name: {name}"),
        )),
    }
}

/// The parts of a dotted name as stored: unquoted parts fold to lower case.
pub fn name_parts(name: &ast::ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|part| match part.as_ident() {
            Some(ident) => identifier(ident),
            None => part.to_string(),
        })
        .collect()
}

/// A name that must have one part: a schema's.
pub fn schema_name(name: &ast::ObjectName) -> Result<String> {
    match name.0.as_slice() {
        [part] => {
            Ok(identifier(part.as_ident().ok_or_else(|| {
                Error::new(sqlstate::SYNTAX_ERROR, "bad name")
            })?))
        }
        _ => Err(Error::new(
            sqlstate::SYNTAX_ERROR,
            format!("improper name: {name}"),
        )),
    }
}

/// The relation `name` denotes for `access`; `None` when there is none, an
/// error when there is one that `access` may not use.
pub fn find(
    catalog: &CatalogState,
    name: &ast::ObjectName,
    access: Access,
) -> Result<Option<Arc<TableDef>>> {
    let (schema, table) = qualified_name(name)?;
    let Some(def) = catalog.table(&schema, &table) else {
        return Ok(None);
    };
    if matches!(access, Access::Ddl | Access::TopicDdl) && def.is_builtin() {
        return Err(Error::new(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied: \"{}\" is a system table",
                def.qualified_name()
            ),
        ));
    }
    if !def.is_topic() {
        let wrong = match access {
            Access::TopicDdl => format!("\"{name}\" is a table, not a topic"),
            Access::Subscribe => format!(
                "\"{}\" is a table, not a topic: only topics can be subscribed to",
                def.name
            ),
            Access::Data | Access::Ddl => return Ok(Some(def.clone())),
        };
        return Err(Error::new(sqlstate::WRONG_OBJECT_TYPE, wrong));
    }
    Ok(Some(def.clone()))
}

/// Like [`find`], with a miss as an error.
pub fn require(
    catalog: &CatalogState,
    name: &ast::ObjectName,
    access: Access,
) -> Result<Arc<TableDef>> {
    find(catalog, name, access)?.ok_or_else(|| missing(name, access))
}

/// The error for a relation that does not exist, worded for `access`.
pub fn missing(name: &ast::ObjectName, access: Access) -> Error {
    let message = match access {
        Access::Data | Access::Subscribe => match qualified_name(name) {
            Ok((_, table)) => format!("relation \"{table}\" does not exist"),
            Err(_) => format!("relation \"{name}\" does not exist"),
        },
        Access::Ddl => format!("table \"{name}\" does not exist"),
        Access::TopicDdl => format!("topic \"{name}\" does not exist"),
    };
    Error::new(sqlstate::UNDEFINED_TABLE, message)
}

/// The table `schema.table` that has `column`, with PostgreSQL's errors
/// for a missing table (42P01) or column (42703).
pub fn table_with_column<'a>(
    catalog: &'a CatalogState,
    schema: &str,
    table: &str,
    column: &str,
) -> Result<&'a Arc<TableDef>> {
    let def = catalog.table(schema, table).ok_or_else(|| {
        Error::new(
            sqlstate::UNDEFINED_TABLE,
            format!("relation \"{table}\" does not exist"),
        )
    })?;
    if def.column_index(column).is_none() {
        return Err(Error::new(
            sqlstate::UNDEFINED_COLUMN,
            format!("column \"{column}\" of relation \"{table}\" does not exist"),
        ));
    }
    Ok(def)
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    use super::*;

    fn object_name(text: &str) -> ast::ObjectName {
        Parser::new(&PostgreSqlDialect {})
            .try_with_sql(text)
            .unwrap()
            .parse_object_name(false)
            .unwrap()
    }

    #[test]
    fn unquoted_names_fold_and_default_to_public() {
        assert_eq!(
            qualified_name(&object_name("Orders")).unwrap(),
            (DEFAULT_SCHEMA.to_string(), "orders".to_string())
        );
        assert_eq!(
            qualified_name(&object_name("\"Sales\".\"Q1\"")).unwrap(),
            ("Sales".to_string(), "Q1".to_string())
        );
        assert_eq!(
            qualified_name(&object_name("db.s.t")).unwrap(),
            ("s".to_string(), "t".to_string())
        );
        let four = qualified_name(&object_name("a.b.c.d")).unwrap_err();
        assert_eq!(four.code, sqlstate::SYNTAX_ERROR);
        assert_eq!(schema_name(&object_name("Ops")).unwrap(), "ops");
        assert!(schema_name(&object_name("a.b")).is_err());
    }

    /// A catalog with a table `public.orders`, a topic `public.clicks` and the
    /// built-in `sluice_catalog.consumer_offsets`.
    fn catalog() -> CatalogState {
        let builtin = crate::catalog::offsets_table();
        let table = TableDef {
            id: 1,
            schema: DEFAULT_SCHEMA.into(),
            name: "orders".into(),
            ..builtin.clone()
        };
        let topic = TableDef {
            id: 2,
            name: "clicks".into(),
            topic: Some(sluice_stream::TopicOptions::default()),
            ..table.clone()
        };
        let mut state = CatalogState::default();
        for def in [builtin, table, topic] {
            state
                .tables
                .insert((def.schema.clone(), def.name.clone()), Arc::new(def));
        }
        state
    }

    #[test]
    fn each_access_names_only_what_it_may_use() {
        let catalog = catalog();
        let find = |name: &str, access| find(&catalog, &object_name(name), access);
        let named = |found: Result<Option<Arc<TableDef>>>| found.unwrap().map(|t| t.id);
        // DML reads and writes tables, topics and the writable system tables.
        assert_eq!(named(find("ORDERS", Access::Data)), Some(1));
        assert_eq!(named(find("clicks", Access::Data)), Some(2));
        let offsets = find("sluice_catalog.consumer_offsets", Access::Data);
        assert!(named(offsets).is_some());
        assert_eq!(named(find("nope", Access::Data)), None);
        // DDL may drop a table or a topic, never a system table.
        assert_eq!(named(find("public.orders", Access::Ddl)), Some(1));
        let system = find("sluice_catalog.consumer_offsets", Access::Ddl).unwrap_err();
        assert_eq!(system.code, sqlstate::INSUFFICIENT_PRIVILEGE);
        // Topic DDL and SUBSCRIBE only topics.
        assert_eq!(named(find("clicks", Access::TopicDdl)), Some(2));
        let table = find("orders", Access::TopicDdl).unwrap_err();
        assert_eq!(table.code, sqlstate::WRONG_OBJECT_TYPE);
        let subscribed = find("orders", Access::Subscribe).unwrap_err();
        assert_eq!(subscribed.code, sqlstate::WRONG_OBJECT_TYPE);
        assert!(subscribed
            .message
            .contains("only topics can be subscribed to"));
        let system = find("sluice_catalog.consumer_offsets", Access::TopicDdl).unwrap_err();
        assert_eq!(system.code, sqlstate::INSUFFICIENT_PRIVILEGE);
        // A miss is an error only through require.
        let missing = require(&catalog, &object_name("nope"), Access::Subscribe).unwrap_err();
        assert_eq!(missing.message, "relation \"nope\" does not exist");
    }

    #[test]
    fn a_miss_reads_as_postgresql_words_it_for_the_statement() {
        let name = object_name("Nope");
        assert_eq!(
            missing(&name, Access::Data).message,
            "relation \"nope\" does not exist"
        );
        assert_eq!(
            missing(&name, Access::Ddl).message,
            "table \"Nope\" does not exist"
        );
        for access in [
            Access::Data,
            Access::Ddl,
            Access::TopicDdl,
            Access::Subscribe,
        ] {
            assert_eq!(missing(&name, access).code, sqlstate::UNDEFINED_TABLE);
        }
    }
}
