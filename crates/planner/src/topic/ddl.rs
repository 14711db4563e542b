//! Topic DDL: CREATE TOPIC, ALTER TOPIC … SET, DROP TOPIC. A topic is a
//! table definition with topic options and three system columns, written
//! through the same catalog change as table DDL ([`crate::ddl`]).

use datafusion::sql::sqlparser::ast;

use crate::api::{CommandTag, Output};
use crate::catalog::{encode_json, table_key, ColumnDef, TableDef};
use crate::context::Context;
use crate::ddl::{table_definition, CatalogChange, NewTable};
use crate::error::{sqlstate, Error, Result};
use crate::resolve::{self, Access};
use crate::types::SqlType;

/// The system columns every topic ends with, in order.
pub const TOPIC_COLUMNS: [(&str, SqlType); 3] = [
    ("_partition", SqlType::Int4),
    ("_offset", SqlType::Int8),
    ("_timestamp", SqlType::TimestampTz),
];

/// `CREATE TOPIC`: a table definition whose rows are records.
pub(crate) async fn create_topic(
    session: &mut Context,
    create: &ast::CreateTable,
) -> Result<Output> {
    let snapshot = session.read_view().await?;
    let catalog = session.catalog_state();
    let mut change = CatalogChange::begin(snapshot.as_ref())?;
    let Some(NewTable { mut def, sequences }) = table_definition(session, &catalog, create)? else {
        return Ok(Output::Command(CommandTag::new("CREATE TOPIC")));
    };
    if !sequences.is_empty() || !def.indexes.is_empty() {
        return Err(Error::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "a topic's columns cannot be serial, identity or UNIQUE columns",
        ));
    }
    if def.has_primary_key() {
        return Err(Error::new(
            sqlstate::INVALID_TABLE_DEFINITION,
            "a topic has no primary key: its records are identified by (_partition, _offset)",
        ));
    }
    for column in &def.columns {
        if TOPIC_COLUMNS.iter().any(|(name, _)| *name == column.name) {
            return Err(Error::new(
                sqlstate::DUPLICATE_COLUMN,
                format!(
                    "column name \"{}\" is reserved for topics' system columns",
                    column.name
                ),
            ));
        }
    }
    let mut options = sluice_stream::TopicOptions::default();
    let given = match &create.table_options {
        ast::CreateTableOptions::None => Vec::new(),
        ast::CreateTableOptions::With(options) => options.clone(),
        other => {
            return Err(Error::new(
                sqlstate::SYNTAX_ERROR,
                format!("topic options go in WITH (…), not {other}"),
            ))
        }
    };
    for option in &given {
        let (name, value) = option_text(option)?;
        options
            .set(&name, &value)
            .map_err(crate::error::stream_error)?;
    }
    validate_topic_options(&def, &mut options)?;
    for (name, ty) in TOPIC_COLUMNS {
        def.columns.push(ColumnDef {
            name: name.to_string(),
            ty,
            nullable: false,
            default: None,
            missing_value: None,
        });
    }
    def.topic = Some(options);
    let id = change.allocate_id(snapshot.as_ref())?;
    let def = TableDef { id, ..def };
    change.put(table_key(id), encode_json(&def));
    change.commit(session).await?;
    Ok(Output::Command(CommandTag::new("CREATE TOPIC")))
}

/// Folds the partition key to a column name and checks that it exists.
fn validate_topic_options(def: &TableDef, options: &mut sluice_stream::TopicOptions) -> Result<()> {
    if let Some(key) = &mut options.partition_key {
        *key = key.to_ascii_lowercase();
        let key = key.clone();
        if !def.user_columns().iter().any(|c| c.name == key) {
            return Err(Error::new(
                sqlstate::UNDEFINED_COLUMN,
                format!("partition_key column \"{key}\" does not exist"),
            ));
        }
    }
    Ok(())
}

/// `name = value` of a WITH option, the value as text.
fn option_text(option: &ast::SqlOption) -> Result<(String, String)> {
    let ast::SqlOption::KeyValue { key, value } = option else {
        return Err(Error::new(
            sqlstate::SYNTAX_ERROR,
            format!("expected name = value, found {option}"),
        ));
    };
    let text = match value {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) => s.clone(),
            ast::Value::Number(n, _) => n.clone(),
            ast::Value::Boolean(b) => b.to_string(),
            other => other.to_string(),
        },
        ast::Expr::Identifier(ident) => ident.value.clone(),
        ast::Expr::UnaryOp {
            op: ast::UnaryOperator::Minus,
            expr,
        } => format!("-{expr}"),
        other => other.to_string(),
    };
    Ok((key.value.to_ascii_lowercase(), text))
}

/// `ALTER TOPIC name SET (…)`: retention, compression (for new batches) and
/// more partitions (never fewer: records would lose their partition).
pub(crate) async fn alter_topic(
    session: &mut Context,
    name: &ast::ObjectName,
    given: &[(String, String)],
) -> Result<Output> {
    let snapshot = session.read_view().await?;
    let catalog = session.catalog_state();
    let mut change = CatalogChange::begin(snapshot.as_ref())?;
    let def = resolve::require(&catalog, name, Access::TopicDdl)?;
    let mut options = def.topic.clone().unwrap_or_default();
    for (option, value) in given {
        options
            .set(option, value)
            .map_err(crate::error::stream_error)?;
    }
    let before = def.topic.as_ref().map_or(1, |t| t.partitions);
    if options.partitions < before {
        return Err(Error::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("a topic's partitions can only grow (it has {before})"),
        ));
    }
    validate_topic_options(&def, &mut options)?;
    let mut altered = TableDef::clone(&def);
    altered.topic = Some(options);
    change.put(table_key(def.id), encode_json(&altered));
    change.commit(session).await?;
    Ok(Output::Command(CommandTag::new("ALTER TOPIC")))
}

/// `DROP TOPIC`: the definition, every record and the groups' offsets.
pub(crate) async fn drop_topics(
    session: &mut Context,
    names: &[ast::ObjectName],
    if_exists: bool,
) -> Result<Output> {
    let snapshot = session.read_view().await?;
    let catalog = session.catalog_state();
    let mut change = CatalogChange::begin(snapshot.as_ref())?;
    for name in names {
        match resolve::find(&catalog, name, Access::TopicDdl)? {
            Some(def) => change.drop_table(&def, &catalog, snapshot.as_ref())?,
            None if if_exists => {}
            None => return Err(resolve::missing(name, Access::TopicDdl)),
        }
    }
    change.commit(session).await?;
    Ok(Output::Command(CommandTag::new("DROP TOPIC")))
}
