//! CREATE SEQUENCE and DROP SEQUENCE, through table DDL's catalog change
//! ([`crate::ddl`]).

use datafusion::sql::sqlparser::ast;

use crate::api::{CommandTag, Output};
use crate::catalog::{encode_json, table_key, SequenceOwner, TableDef};
use crate::context::Context;
use crate::ddl::CatalogChange;
use crate::error::{sqlstate, Error, Result};
use crate::resolve;
use crate::sequence::def::from_options;
use crate::types::SqlType;

/// Whether `statement` is sequence DDL (this module's to run).
pub fn is_sequence_ddl(statement: &ast::Statement) -> bool {
    matches!(
        statement,
        ast::Statement::CreateSequence { .. }
            | ast::Statement::Drop {
                object_type: ast::ObjectType::Sequence,
                ..
            }
    )
}

pub(crate) async fn execute(session: &mut Context, statement: &ast::Statement) -> Result<Output> {
    let snapshot = session.read_view().await?;
    let catalog = session.catalog_state();
    let mut change = CatalogChange::begin(snapshot.as_ref())?;
    let tag = match statement {
        ast::Statement::CreateSequence {
            temporary,
            if_not_exists,
            name,
            data_type,
            sequence_options,
            owned_by,
        } => {
            if *temporary {
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "temporary sequences are not supported",
                ));
            }
            let (schema, name) = resolve::qualified_name(name)?;
            if !catalog.schemas.contains_key(&schema) {
                return Err(Error::new(
                    sqlstate::INVALID_SCHEMA_NAME,
                    format!("schema \"{schema}\" does not exist"),
                ));
            }
            if catalog.relation_exists(&schema, &name) {
                if *if_not_exists {
                    return Ok(Output::Command(CommandTag::new("CREATE SEQUENCE")));
                }
                return Err(Error::new(
                    sqlstate::DUPLICATE_TABLE,
                    format!("relation \"{name}\" already exists"),
                ));
            }
            let ty = match data_type {
                Some(data_type) => SqlType::from_ast(data_type)?,
                None => SqlType::Int8,
            };
            let mut def = from_options(&schema, &name, ty, sequence_options)?;
            if let Some(owner) = owned_by {
                def.owned_by = owner_column(session, owner, &schema)?;
            }
            change.create_sequence(def, snapshot.as_ref())?;
            "CREATE SEQUENCE"
        }
        ast::Statement::Drop {
            object_type: ast::ObjectType::Sequence,
            if_exists,
            names,
            cascade,
            ..
        } => {
            for name in names {
                let (schema, sequence_name) = resolve::qualified_name(name)?;
                let Some(def) = catalog.sequence(&schema, &sequence_name) else {
                    if *if_exists {
                        continue;
                    }
                    return Err(Error::new(
                        sqlstate::UNDEFINED_TABLE,
                        format!("sequence \"{sequence_name}\" does not exist"),
                    ));
                };
                // A serial column's DEFAULT depends on its sequence: CASCADE
                // drops the default, as PostgreSQL does.
                let user = def
                    .owned_by
                    .as_ref()
                    .and_then(|owner| catalog.table_by_id(owner.table));
                if let Some(table) = user {
                    let column = def.owned_by.as_ref().map_or("", |o| o.column.as_str());
                    if !cascade {
                        return Err(Error::new(
                            sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
                            format!(
                                "cannot drop sequence {} because other objects depend on it",
                                def.name
                            ),
                        )
                        .with_detail(format!(
                            "default value for column {column} of table {} depends on sequence {}\nUse DROP ... CASCADE to drop the dependent objects too.",
                            table.name, def.name
                        )));
                    }
                    let mut table = TableDef::clone(table);
                    if let Some(index) = table.column_index(column) {
                        table.columns[index].default = None;
                    }
                    change.put(table_key(table.id), encode_json(&table));
                }
                change.drop_sequence(def);
            }
            "DROP SEQUENCE"
        }
        other => {
            return Err(Error::new(
                sqlstate::INTERNAL_ERROR,
                format!("not sequence DDL: {other}"),
            ))
        }
    };
    change.commit(session).await?;
    Ok(Output::Command(CommandTag::new(tag)))
}

/// `OWNED BY table.column` (same schema as the sequence) or `OWNED BY NONE`.
fn owner_column(
    session: &Context,
    owner: &ast::ObjectName,
    sequence_schema: &str,
) -> Result<Option<SequenceOwner>> {
    let parts = resolve::name_parts(owner);
    let (schema, table, column) = match parts.as_slice() {
        [none] if none == "none" => return Ok(None),
        [table, column] => (sequence_schema.to_string(), table, column),
        [schema, table, column] => (schema.clone(), table, column),
        _ => {
            return Err(Error::new(
                sqlstate::SYNTAX_ERROR,
                format!("invalid OWNED BY option: {owner}"),
            ))
        }
    };
    if schema != sequence_schema {
        return Err(Error::new(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            "sequence must be in same schema as table it is linked to",
        ));
    }
    let catalog = session.catalog_state();
    let def = resolve::table_with_column(&catalog, &schema, table, column)?;
    Ok(Some(SequenceOwner {
        table: def.id,
        column: column.clone(),
    }))
}
