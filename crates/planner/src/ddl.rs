//! CREATE/DROP SCHEMA, CREATE/DROP/ALTER TABLE and TRUNCATE.
//!
//! Every DDL is one Raft command that also bumps the catalog version and
//! `Check`s the version it was planned against: concurrent DDL statements
//! serialize, and the loser gets 40001 and may retry on the new catalog.

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::common::DFSchema;
use datafusion::logical_expr::{ExprSchemable, LogicalPlanBuilder};
use datafusion::sql::sqlparser::ast;
use futures::StreamExt;
use sluice_engine::{row, KeyRange, Snapshot, Value};
use sluice_raftstore::{Command, Mutation};

use crate::api::{CommandTag, Output};
use crate::catalog::{
    encode_json, next_table_id_key, read_counter, schema_key, sequence_key, table_key, version_key,
    CatalogState, ColumnDef, SchemaDef, SequenceDef, TableDef, KEY_COLUMN, ROWID_COLUMN,
    SYSTEM_SCHEMAS,
};
use crate::context::Context;
use crate::error::{from_datafusion, raft_error, sqlstate, Error, Result};
use crate::index::{self, IndexColumn, IndexDef, IndexState};
use crate::names::{first_free_name, identifier};
use crate::resolve::{self, Access};
use crate::transaction::TransactionState;
use crate::types::{value_at, SqlType};

pub async fn execute(session: &mut Context, statement: &ast::Statement) -> Result<Output> {
    if let ast::Statement::CreateIndex(create) = statement {
        return create_index(session, create).await;
    }
    if let Some(request) = added_unique_constraint(statement) {
        build_index(session, request).await?;
        return Ok(Output::Command(CommandTag::new("ALTER TABLE")));
    }
    let snapshot = session.read_view().await?;
    let catalog = session.catalog_state();
    let mut change = CatalogChange::begin(snapshot.as_ref())?;
    let tag = match statement {
        ast::Statement::CreateSchema {
            schema_name,
            if_not_exists,
            ..
        } => {
            let name = match schema_name {
                ast::SchemaName::Simple(name) => resolve::schema_name(name)?,
                _ => {
                    return Err(Error::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "CREATE SCHEMA AUTHORIZATION is not supported",
                    ))
                }
            };
            if catalog.schemas.contains_key(&name) || SYSTEM_SCHEMAS.contains(&name.as_str()) {
                if *if_not_exists {
                    return Ok(Output::Command(CommandTag::new("CREATE SCHEMA")));
                }
                return Err(Error::new(
                    sqlstate::DUPLICATE_SCHEMA,
                    format!("schema \"{name}\" already exists"),
                ));
            }
            change.put(schema_key(&name), encode_json(&SchemaDef { name }));
            "CREATE SCHEMA"
        }
        ast::Statement::CreateTable(create) => {
            let def = table_definition(session, &catalog, create)?;
            let Some(NewTable { def, sequences }) = def else {
                return Ok(Output::Command(CommandTag::new("CREATE TABLE")));
            };
            let id = change.allocate_id(snapshot.as_ref())?;
            let mut def = TableDef { id, ..def };
            // A self-reference was declared before the table had its id.
            for fk in &mut def.foreign_keys {
                if fk.parent == 0 {
                    fk.parent = id;
                }
            }
            for index in &mut def.indexes {
                index.id = change.allocate_id(snapshot.as_ref())?;
            }
            change.put(table_key(id), encode_json(&def));
            for mut sequence in sequences {
                if let Some(owner) = &mut sequence.owned_by {
                    owner.table = id;
                }
                change.create_sequence(sequence, snapshot.as_ref())?;
            }
            "CREATE TABLE"
        }
        ast::Statement::Drop {
            object_type,
            if_exists,
            names,
            cascade,
            ..
        } => match object_type {
            ast::ObjectType::Table => {
                let mut dropped = Vec::new();
                for name in names {
                    match resolve::find(&catalog, name, Access::Ddl)? {
                        Some(def) => dropped.push(def),
                        None if *if_exists => {}
                        None => return Err(resolve::missing(name, Access::Ddl)),
                    }
                }
                drop_references(&catalog, &dropped, *cascade, &mut change)?;
                for def in &dropped {
                    change.drop_table(def, &catalog, snapshot.as_ref())?;
                }
                "DROP TABLE"
            }
            ast::ObjectType::Schema => {
                for name in names {
                    let schema = resolve::schema_name(name)?;
                    if !catalog.schemas.contains_key(&schema) {
                        if *if_exists {
                            continue;
                        }
                        return Err(Error::new(
                            sqlstate::INVALID_SCHEMA_NAME,
                            format!("schema \"{schema}\" does not exist"),
                        ));
                    }
                    let tables: Vec<Arc<TableDef>> = catalog.tables_in(&schema).cloned().collect();
                    if !tables.is_empty() && !cascade {
                        return Err(Error::new(
                            sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
                            format!(
                                "cannot drop schema {schema} because other objects depend on it"
                            ),
                        )
                        .with_detail("Use DROP ... CASCADE to drop the dependent objects too."));
                    }
                    drop_references(&catalog, &tables, true, &mut change)?;
                    for table in tables {
                        change.drop_table(&table, &catalog, snapshot.as_ref())?;
                    }
                    change.mutations.push(Mutation::Delete {
                        key: schema_key(&schema),
                    });
                }
                "DROP SCHEMA"
            }
            ast::ObjectType::Index => {
                let mut changed: Vec<TableDef> = Vec::new();
                for name in names {
                    let (schema, index_name) = resolve::qualified_name(name)?;
                    let owner = changed
                        .iter()
                        .position(|t| t.schema == schema && t.index(&index_name).is_some());
                    let mut table = match owner {
                        Some(i) => changed.remove(i),
                        None => match catalog
                            .tables_in(&schema)
                            .find(|t| t.index(&index_name).is_some())
                        {
                            Some(table) => table.as_ref().clone(),
                            None if *if_exists => continue,
                            None => {
                                return Err(Error::new(
                                    sqlstate::UNDEFINED_OBJECT,
                                    format!("index \"{index_name}\" does not exist"),
                                ))
                            }
                        },
                    };
                    let position = table
                        .indexes
                        .iter()
                        .position(|i| i.name == index_name)
                        .expect("the index was found on this table");
                    let dropped = table.indexes.remove(position);
                    refuse_if_referenced(&catalog, &table, &dropped)?;
                    change.mutations.push(index::delete_all(dropped.id));
                    changed.push(table);
                }
                for table in changed {
                    change.put(table_key(table.id), encode_json(&table));
                }
                "DROP INDEX"
            }
            other => {
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("DROP {other} is not supported"),
                ))
            }
        },
        ast::Statement::Truncate(truncate) => {
            let mut targets = Vec::new();
            for target in &truncate.table_names {
                match resolve::find(&catalog, &target.name, Access::Ddl)? {
                    Some(def) => targets.push(def),
                    None => return Err(resolve::missing(&target.name, Access::Ddl)),
                }
            }
            let cascade = matches!(truncate.cascade, Some(ast::CascadeOption::Cascade));
            for def in truncated_with_references(&catalog, targets, cascade)? {
                if def.is_topic() {
                    // Offsets continue after a TRUNCATE, as after retention:
                    // each partition keeps its state and newest batch key range.
                    return Err(Error::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!("cannot truncate topic \"{}\"", def.name),
                    )
                    .with_detail("Records leave a topic by retention (ALTER TOPIC … SET (retention = …)) or with DROP TOPIC."));
                }
                let (start, end) = range_bounds(&def.rows_range());
                change.mutations.push(Mutation::DeleteRange { start, end });
                change.mutations.extend(index::drop_entries(&def));
            }
            // No definition changes; the version bump still orders TRUNCATE against concurrent DDL.
            "TRUNCATE TABLE"
        }
        ast::Statement::AlterTable(alter) => {
            let Some(def) = resolve::find(&catalog, &alter.name, Access::Ddl)? else {
                if alter.if_exists {
                    return Ok(Output::Command(CommandTag::new("ALTER TABLE")));
                }
                return Err(resolve::missing(&alter.name, Access::Ddl));
            };
            let original = def;
            let mut def = original.as_ref().clone();
            for operation in &alter.operations {
                alter_table(session, &mut def, operation, snapshot.as_ref()).await?;
            }
            if def.has_primary_key() && !original.has_primary_key() {
                rekey_rows(session, &original, &def, &snapshot, &mut change)?;
            }
            for dropped in original
                .indexes
                .iter()
                .filter(|index| def.indexes.iter().all(|kept| kept.id != index.id))
            {
                change.mutations.push(index::delete_all(dropped.id));
            }
            validate_added_checks(session, &original, &def, &snapshot, &mut change)?;
            validate_added_foreign_keys(
                session,
                &catalog,
                &original,
                &def,
                &snapshot,
                &mut change,
            )?;
            change.put(table_key(def.id), encode_json(&def));
            "ALTER TABLE"
        }
        other => {
            return Err(Error::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!("{other} is not supported"),
            ))
        }
    };
    change.commit(session).await?;
    Ok(Output::Command(CommandTag::new(tag)))
}

/// `ALTER TABLE t ADD [CONSTRAINT name] UNIQUE (columns)` as the unique
/// index it means (PostgreSQL builds the same index for both), so that it
/// builds online like CREATE UNIQUE INDEX; `None` for any other statement.
fn added_unique_constraint(statement: &ast::Statement) -> Option<IndexRequest<'_>> {
    let ast::Statement::AlterTable(alter) = statement else {
        return None;
    };
    let [ast::AlterTableOperation::AddConstraint {
        constraint: ast::TableConstraint::Unique(unique),
        ..
    }] = alter.operations.as_slice()
    else {
        return None;
    };
    Some(IndexRequest {
        table: &alter.name,
        name: unique.name.as_ref().map(identifier),
        columns: &unique.columns,
        unique: true,
        if_not_exists: false,
    })
}

/// One DDL command: the catalog version it was planned against, checked
/// and bumped, and the writes it makes.
pub(crate) struct CatalogChange {
    version: u64,
    /// The next free object id once one is allocated.
    next_id: Option<u64>,
    mutations: Vec<Mutation>,
}

impl CatalogChange {
    pub(crate) fn begin(snapshot: &dyn Snapshot) -> Result<CatalogChange> {
        let (version, version_bytes) = read_counter(snapshot, &version_key())?;
        Ok(CatalogChange {
            version,
            next_id: None,
            mutations: vec![Mutation::Check {
                key: version_key(),
                expected: version_bytes,
            }],
        })
    }

    pub(crate) async fn commit(mut self, session: &Context) -> Result<()> {
        self.put(version_key(), (self.version + 1).to_be_bytes().to_vec());
        session.propose_ddl(self.mutations).await
    }

    /// Allocates an id for a new table, index or sequence.
    pub(crate) fn allocate_id(&mut self, snapshot: &dyn Snapshot) -> Result<u64> {
        let id = match self.next_id {
            Some(id) => id,
            None => {
                let (next_id, next_bytes) = read_counter(snapshot, &next_table_id_key())?;
                self.mutations.push(Mutation::Check {
                    key: next_table_id_key(),
                    expected: next_bytes,
                });
                // Ids start at 1 and are never reused, even after DROP TABLE.
                next_id.max(1)
            }
        };
        self.next_id = Some(id + 1);
        // The last put of the counter is the one that counts.
        self.put(next_table_id_key(), (id + 1).to_be_bytes().to_vec());
        Ok(id)
    }

    /// Writes a new sequence's definition under a fresh id and nonce.
    pub(crate) fn create_sequence(
        &mut self,
        mut def: SequenceDef,
        snapshot: &dyn Snapshot,
    ) -> Result<()> {
        def.id = self.allocate_id(snapshot)?;
        def.nonce = crate::sequence::new_nonce();
        self.put(sequence_key(def.id), encode_json(&def));
        Ok(())
    }

    /// Deletes a sequence's definition and its state.
    pub(crate) fn drop_sequence(&mut self, def: &SequenceDef) {
        self.mutations.push(Mutation::Delete {
            key: sequence_key(def.id),
        });
        self.mutations.push(Mutation::Delete {
            key: def.state_key(),
        });
    }

    pub(crate) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.mutations.push(Mutation::Put { key, value });
    }

    /// Drops a table or topic with its rows, index entries, the sequences
    /// its columns own and, for a topic, its records and every group's
    /// committed offsets of it.
    pub(crate) fn drop_table(
        &mut self,
        def: &TableDef,
        catalog: &CatalogState,
        snapshot: &dyn Snapshot,
    ) -> Result<()> {
        for sequence in catalog.sequences_owned_by(def.id) {
            self.drop_sequence(sequence);
        }
        let (start, end) = range_bounds(&def.rows_range());
        self.mutations.push(Mutation::DeleteRange { start, end });
        if def.is_topic() {
            let (start, end) = sluice_stream::topic::topic_key_range(def.id);
            self.mutations.push(Mutation::DeleteRange { start, end });
            for key in crate::offsets::rows_of_topic(snapshot, def)? {
                self.mutations.push(Mutation::Delete { key });
            }
        }
        self.mutations.extend(index::drop_entries(def));
        self.mutations.push(Mutation::Delete {
            key: table_key(def.id),
        });
        Ok(())
    }
}

fn range_bounds(range: &KeyRange) -> (Vec<u8>, Vec<u8>) {
    let start = match &range.start {
        std::ops::Bound::Included(s) | std::ops::Bound::Excluded(s) => s.clone(),
        std::ops::Bound::Unbounded => Vec::new(),
    };
    let end = match &range.end {
        std::ops::Bound::Included(e) | std::ops::Bound::Excluded(e) => e.clone(),
        std::ops::Bound::Unbounded => vec![0xff; 16],
    };
    (start, end)
}

/// DROP of `dropped` tables against the foreign keys that refer to them
/// from other tables: refused (2BP01) without CASCADE, as PostgreSQL does;
/// with it, those constraints go (the referencing tables stay).
fn drop_references(
    catalog: &CatalogState,
    dropped: &[Arc<TableDef>],
    cascade: bool,
    change: &mut CatalogChange,
) -> Result<()> {
    let ids: Vec<u64> = dropped.iter().map(|t| t.id).collect();
    let mut changed: std::collections::BTreeMap<u64, TableDef> = Default::default();
    let mut dependents = Vec::new();
    for parent in dropped {
        for (child, fk) in crate::foreign_key::referencing(catalog, parent.id) {
            if ids.contains(&child.id) {
                continue;
            }
            dependents.push(format!(
                "constraint {} on table {} depends on table {}",
                fk.name, child.name, parent.name
            ));
            changed
                .entry(child.id)
                .or_insert_with(|| child.as_ref().clone())
                .foreign_keys
                .retain(|kept| kept.name != fk.name);
        }
    }
    if dependents.is_empty() {
        return Ok(());
    }
    if !cascade {
        let names: Vec<&str> = dropped.iter().map(|t| t.name.as_str()).collect();
        return Err(Error::new(
            sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
            format!(
                "cannot drop table {} because other objects depend on it",
                names.join(", ")
            ),
        )
        .with_detail(format!(
            "{}\nUse DROP ... CASCADE to drop the dependent objects too.",
            dependents.join("\n")
        )));
    }
    for child in changed.into_values() {
        change.put(table_key(child.id), encode_json(&child));
    }
    Ok(())
}

/// The tables TRUNCATE empties: `targets`, and with CASCADE every table
/// that refers to one of them, transitively. Without it, a table referred
/// to from outside the list is refused (0A000), as in PostgreSQL.
fn truncated_with_references(
    catalog: &CatalogState,
    mut targets: Vec<Arc<TableDef>>,
    cascade: bool,
) -> Result<Vec<Arc<TableDef>>> {
    let mut next = 0;
    while next < targets.len() {
        let parent = targets[next].clone();
        next += 1;
        for (child, _) in crate::foreign_key::referencing(catalog, parent.id) {
            if targets.iter().any(|t| t.id == child.id) {
                continue;
            }
            if !cascade {
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "cannot truncate a table referenced in a foreign key constraint",
                )
                .with_detail(format!(
                    "Table \"{}\" references \"{}\". Truncate table \"{}\" at the same time, or use TRUNCATE ... CASCADE.",
                    child.name, parent.name, child.name
                )));
            }
            targets.push(child);
        }
    }
    Ok(targets)
}

/// What CREATE TABLE makes: the table (its id filled in later) and the
/// sequences its `serial` and identity columns own (ids and owner too).
pub(crate) struct NewTable {
    pub def: TableDef,
    pub sequences: Vec<SequenceDef>,
}

/// The definition CREATE TABLE asks for, or `None` when IF NOT EXISTS found
/// the table already there.
pub(crate) fn table_definition(
    session: &Context,
    catalog: &CatalogState,
    create: &ast::CreateTable,
) -> Result<Option<NewTable>> {
    let (schema, name) = resolve::qualified_name(&create.name)?;
    if create.query.is_some() {
        return Err(Error::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "CREATE TABLE … AS is not supported yet",
        ));
    }
    if create.temporary {
        return Err(Error::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "temporary tables are not supported",
        ));
    }
    if !catalog.schemas.contains_key(&schema) {
        return Err(Error::new(
            sqlstate::INVALID_SCHEMA_NAME,
            format!("schema \"{schema}\" does not exist"),
        ));
    }
    if catalog.relation_exists(&schema, &name) {
        if create.if_not_exists {
            return Ok(None);
        }
        return Err(Error::new(
            sqlstate::DUPLICATE_TABLE,
            format!("relation \"{name}\" already exists"),
        ));
    }
    if create.columns.is_empty() {
        return Err(Error::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "tables without columns are not supported",
        ));
    }
    let mut columns: Vec<ColumnDef> = Vec::new();
    let mut primary_key: Vec<usize> = Vec::new();
    let mut sequences: Vec<SequenceDef> = Vec::new();
    // UNIQUE constraints: their columns and the name given, if any.
    let mut uniques: Vec<(Vec<usize>, Option<String>)> = Vec::new();
    let mut new_checks: Vec<NewCheck> = Vec::new();
    // Foreign keys, with the column a REFERENCES option was declared on.
    let mut references: Vec<(ast::ForeignKeyConstraint, Option<String>)> = Vec::new();
    for column in &create.columns {
        let ColumnSpec {
            mut def,
            primary: is_primary,
            generated,
            unique,
            checks,
            references: column_references,
        } = column_definition(column)?;
        new_checks.extend(checks);
        references.extend(
            column_references
                .into_iter()
                .map(|reference| (reference, Some(def.name.clone()))),
        );
        if let Some(constraint_name) = unique {
            uniques.push((vec![columns.len()], constraint_name));
        }
        if let Some(options) = generated {
            let taken: Vec<String> = sequences.iter().map(|s| s.name.clone()).collect();
            let sequence = crate::sequence::for_column(
                catalog, &taken, &schema, &name, &def.name, def.ty, &options,
            )?;
            def.default = Some(crate::sequence::nextval_default(&sequence));
            sequences.push(sequence);
        }
        if columns.iter().any(|c| c.name == def.name) {
            return Err(Error::new(
                sqlstate::DUPLICATE_COLUMN,
                format!("column \"{}\" specified more than once", def.name),
            ));
        }
        if is_primary {
            if !primary_key.is_empty() {
                return Err(multiple_primary_keys(&name));
            }
            primary_key.push(columns.len());
        }
        columns.push(def);
    }
    for constraint in &create.constraints {
        match constraint {
            ast::TableConstraint::PrimaryKey(pk) => {
                if !primary_key.is_empty() {
                    return Err(multiple_primary_keys(&name));
                }
                primary_key = key_columns(&columns, pk)?;
            }
            ast::TableConstraint::Unique(unique) => uniques.push((
                constraint_columns(&columns, &unique.columns, "unique")?,
                unique.name.as_ref().map(identifier),
            )),
            ast::TableConstraint::Check(check) => new_checks.push(NewCheck {
                name: check.name.as_ref().map(identifier),
                expr: check.expr.to_string(),
                column: None,
            }),
            ast::TableConstraint::ForeignKey(reference) => {
                references.push((reference.clone(), None))
            }
            other => return Err(unsupported_constraint(other)),
        }
    }
    for &index in &primary_key {
        columns[index].nullable = false;
    }
    // PostgreSQL's names: table_columns_key, numbered while taken.
    let mut indexes: Vec<IndexDef> = Vec::new();
    for (unique_columns, given) in uniques {
        let taken = |candidate: &str| {
            catalog.relation_exists(&schema, candidate)
                || catalog.index_named(&schema, candidate)
                || indexes.iter().any(|i| i.name == candidate)
                || sequences.iter().any(|s| s.name == candidate)
        };
        let index_name = match given {
            Some(given) if taken(&given) => {
                return Err(Error::new(
                    sqlstate::DUPLICATE_TABLE,
                    format!("relation \"{given}\" already exists"),
                ))
            }
            Some(given) => given,
            None => {
                let names: Vec<&str> = unique_columns
                    .iter()
                    .map(|&c| columns[c].name.as_str())
                    .collect();
                first_free_name(&format!("{name}_{}_key", names.join("_")), taken)
            }
        };
        indexes.push(IndexDef {
            id: 0,
            name: index_name,
            columns: unique_columns
                .into_iter()
                .map(|column| IndexColumn {
                    column,
                    descending: false,
                })
                .collect(),
            state: IndexState::Public,
            unique: true,
        });
    }
    for column in &columns {
        if column.name == KEY_COLUMN || column.name == ROWID_COLUMN {
            return Err(Error::new(
                sqlstate::DUPLICATE_COLUMN,
                format!("column name \"{}\" is reserved", column.name),
            ));
        }
    }
    let mut def = TableDef {
        id: 0,
        schema,
        name,
        columns,
        primary_key,
        indexes,
        topic: None,
        checks: Vec::new(),
        foreign_keys: Vec::new(),
    };
    validate_defaults(session, &def)?;
    for check in new_checks {
        add_check(session, &mut def, check)?;
    }
    for (reference, column) in references {
        let fk = crate::foreign_key::define(catalog, &def, &reference, column.as_deref())?;
        def.foreign_keys.push(fk);
    }
    Ok(Some(NewTable { def, sequences }))
}

fn multiple_primary_keys(table: &str) -> Error {
    Error::new(
        sqlstate::INVALID_TABLE_DEFINITION,
        format!("multiple primary keys for table \"{table}\" are not allowed"),
    )
}

fn unsupported_constraint(constraint: &impl std::fmt::Display) -> Error {
    Error::new(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!("constraint {constraint} is not supported yet"),
    )
}

/// Adds a CHECK to `def` under its given name, or under PostgreSQL's
/// (`<table>_<column>_check` for a column's, `<table>_check` for the
/// table's, numbered while taken), after checking its expression.
fn add_check(session: &Context, def: &mut TableDef, check: NewCheck) -> Result<()> {
    let taken = |candidate: &str| def.constraint_named(candidate);
    let name = match check.name {
        Some(given) if taken(&given) => {
            return Err(Error::new(
                sqlstate::DUPLICATE_OBJECT,
                format!(
                    "constraint \"{given}\" for relation \"{}\" already exists",
                    def.name
                ),
            ))
        }
        Some(given) => given,
        None => {
            let base = match &check.column {
                Some(column) => format!("{}_{column}_check", def.name),
                None => format!("{}_check", def.name),
            };
            first_free_name(&base, taken)
        }
    };
    session.db.validate_check(def, &check.expr)?;
    def.checks.push(crate::catalog::CheckDef {
        name,
        expr: check.expr,
    });
    Ok(())
}

/// What a column's definition says of it and its constraints.
struct ColumnSpec {
    def: ColumnDef,
    primary: bool,
    /// For a `serial` or identity column, the options of the sequence it owns.
    generated: Option<Vec<ast::SequenceOptions>>,
    /// UNIQUE, with the constraint's name if given.
    unique: Option<Option<String>>,
    /// CHECKs on the column.
    checks: Vec<NewCheck>,
    /// REFERENCES on the column.
    references: Vec<ast::ForeignKeyConstraint>,
}

/// A CHECK as declared: its name if given, and its expression.
struct NewCheck {
    name: Option<String>,
    expr: String,
    /// The column it was declared on, which PostgreSQL names it after.
    column: Option<String>,
}

fn column_definition(column: &ast::ColumnDef) -> Result<ColumnSpec> {
    let serial = crate::sequence::serial_type(&column.data_type);
    let ty = match serial {
        Some(ty) => ty,
        None => SqlType::from_ast(&column.data_type)?,
    };
    let mut def = ColumnDef {
        name: identifier(&column.name),
        ty,
        nullable: serial.is_none(),
        default: None,
        missing_value: None,
    };
    let mut generated = serial.map(|_| Vec::new());
    let mut primary = false;
    let mut unique = None;
    let mut checks = Vec::new();
    let mut references = Vec::new();
    for option in &column.options {
        match &option.option {
            ast::ColumnOption::Null if generated.is_some() => {
                return Err(Error::new(
                    sqlstate::SYNTAX_ERROR,
                    format!(
                        "conflicting NULL/NOT NULL declarations for column \"{}\"",
                        def.name
                    ),
                ))
            }
            ast::ColumnOption::Null => def.nullable = true,
            ast::ColumnOption::NotNull => def.nullable = false,
            ast::ColumnOption::Default(_) if generated.is_some() => {
                return Err(Error::new(
                    sqlstate::SYNTAX_ERROR,
                    format!(
                        "multiple default values specified for column \"{}\"",
                        def.name
                    ),
                ))
            }
            ast::ColumnOption::Default(expr) => def.default = Some(expr.to_string()),
            ast::ColumnOption::PrimaryKey(_) => primary = true,
            ast::ColumnOption::Unique(constraint) => {
                unique = Some(constraint.name.as_ref().or(option.name.as_ref()).map(identifier))
            }
            ast::ColumnOption::ForeignKey(reference) => {
                let mut reference = reference.clone();
                reference.name = reference.name.or_else(|| option.name.clone());
                references.push(reference);
            }
            ast::ColumnOption::Check(check) => checks.push(NewCheck {
                name: check.name.as_ref().or(option.name.as_ref()).map(identifier),
                expr: check.expr.to_string(),
                column: Some(def.name.clone()),
            }),
            ast::ColumnOption::Generated {
                generated_as: ast::GeneratedAs::ByDefault,
                sequence_options,
                generation_expr: None,
                ..
            } if serial.is_none() && def.default.is_none() => {
                if !matches!(ty, SqlType::Int2 | SqlType::Int4 | SqlType::Int8) {
                    return Err(Error::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        "identity column type must be smallint, integer, or bigint",
                    ));
                }
                def.nullable = false;
                generated = Some(sequence_options.clone().unwrap_or_default());
            }
            ast::ColumnOption::Generated {
                generated_as: ast::GeneratedAs::Always,
                generation_expr: None,
                ..
            } => {
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "GENERATED ALWAYS AS IDENTITY is not supported yet (INSERT cannot say OVERRIDING SYSTEM VALUE); use GENERATED BY DEFAULT AS IDENTITY",
                ))
            }
            other => return Err(unsupported_constraint(other)),
        }
    }
    Ok(ColumnSpec {
        def,
        primary,
        generated,
        unique,
        checks,
        references,
    })
}

/// Plans every DEFAULT once so a bad one fails CREATE TABLE, not the first INSERT.
fn validate_defaults(session: &Context, def: &TableDef) -> Result<()> {
    let schema =
        DFSchema::try_from(def.arrow_schema().as_ref().clone()).map_err(from_datafusion)?;
    for column in &def.columns {
        if let Some(sql) = &column.default {
            let expr = session.db.compile_default(sql, &schema)?;
            if !expr.column_refs().is_empty() {
                return Err(Error::new(
                    sqlstate::INVALID_COLUMN_DEFINITION,
                    format!(
                        "cannot use column reference in DEFAULT expression of column \"{}\"",
                        column.name
                    ),
                ));
            }
            expr.cast_to(&column.ty.arrow_type(), &schema)
                .map_err(from_datafusion)?;
        }
    }
    Ok(())
}

async fn alter_table(
    session: &Context,
    def: &mut TableDef,
    operation: &ast::AlterTableOperation,
    snapshot: &dyn sluice_engine::Snapshot,
) -> Result<()> {
    match operation {
        ast::AlterTableOperation::AddColumn {
            column_def,
            if_not_exists,
            ..
        } => {
            let ColumnSpec {
                def: mut column,
                primary,
                generated,
                unique,
                checks,
                references,
            } = column_definition(column_def)?;
            if unique.is_some() {
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "adding a UNIQUE column to a table is not supported yet; add the column, then CREATE UNIQUE INDEX",
                ));
            }
            if generated.is_some() {
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "adding a serial or identity column to a table is not supported yet",
                ));
            }
            if primary {
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "adding a primary key column is not supported",
                ));
            }
            if def.column_index(&column.name).is_some() {
                if *if_not_exists {
                    return Ok(());
                }
                return Err(Error::new(
                    sqlstate::DUPLICATE_COLUMN,
                    format!(
                        "column \"{}\" of relation \"{}\" already exists",
                        column.name, def.name
                    ),
                ));
            }
            let mut with_column = def.clone();
            with_column.columns.push(column.clone());
            validate_defaults(session, &with_column)?;
            // Rows already stored read the default as evaluated now (PostgreSQL
            // does the same for non-volatile defaults), or NULL.
            let existing = if let Some(sql) = &column.default {
                let value = evaluate_constant(session, &with_column, sql, column.ty).await?;
                if value.is_null() {
                    None
                } else {
                    Some(
                        row::encode_row(std::slice::from_ref(&value), &[column.ty.value_kind()])
                            .map_err(|e| {
                                Error::new(sqlstate::INTERNAL_ERROR, format!("encode default: {e}"))
                            })?,
                    )
                }
            } else {
                None
            };
            if !column.nullable && existing.is_none() {
                let any_row = snapshot
                    .scan(sluice_engine::Keyspace::Data, &def.rows_range(), 1)
                    .map_err(crate::error::storage_error)?;
                if !any_row.is_empty() {
                    return Err(Error::new(
                        sqlstate::NOT_NULL_VIOLATION,
                        format!(
                            "column \"{}\" of relation \"{}\" contains null values",
                            column.name, def.name
                        ),
                    ));
                }
            }
            column.missing_value = existing;
            def.columns.push(column);
            for check in checks {
                add_check(session, def, check)?;
            }
            for reference in references {
                let fk = crate::foreign_key::define(
                    &session.catalog_state(),
                    def,
                    &reference,
                    Some(&column_def.name.value),
                )?;
                def.foreign_keys.push(fk);
            }
            Ok(())
        }
        ast::AlterTableOperation::AddConstraint {
            constraint: ast::TableConstraint::ForeignKey(reference),
            ..
        } => {
            let fk = crate::foreign_key::define(&session.catalog_state(), def, reference, None)?;
            def.foreign_keys.push(fk);
            Ok(())
        }
        ast::AlterTableOperation::AddConstraint {
            constraint: ast::TableConstraint::Check(check),
            ..
        } => add_check(
            session,
            def,
            NewCheck {
                name: check.name.as_ref().map(identifier),
                expr: check.expr.to_string(),
                column: None,
            },
        ),
        ast::AlterTableOperation::DropConstraint {
            if_exists,
            name,
            drop_behavior: _,
        } => {
            let name = identifier(name);
            if let Some(position) = def.checks.iter().position(|c| c.name == name) {
                def.checks.remove(position);
                return Ok(());
            }
            if let Some(position) = def.foreign_keys.iter().position(|fk| fk.name == name) {
                def.foreign_keys.remove(position);
                return Ok(());
            }
            // A UNIQUE constraint is its index; its entries go with it (see
            // `dropped_indexes`).
            if let Some(position) = def.indexes.iter().position(|i| i.unique && i.name == name) {
                let index = def.indexes.remove(position);
                refuse_if_referenced(&session.catalog_state(), def, &index)?;
                return Ok(());
            }
            if def.has_primary_key() && name == format!("{}_pkey", def.name) {
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "dropping a primary key is not supported: rows are stored by it",
                ));
            }
            if *if_exists {
                return Ok(());
            }
            Err(Error::new(
                sqlstate::UNDEFINED_OBJECT,
                format!(
                    "constraint \"{name}\" of relation \"{}\" does not exist",
                    def.name
                ),
            ))
        }
        ast::AlterTableOperation::AddConstraint {
            constraint: ast::TableConstraint::PrimaryKey(pk),
            ..
        } => {
            if def.has_primary_key() {
                return Err(multiple_primary_keys(&def.name));
            }
            if def.is_topic() {
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "a topic has no primary key: its records are keyed by partition and offset",
                ));
            }
            def.primary_key = key_columns(&def.columns, pk)?;
            for &index in &def.primary_key.clone() {
                def.columns[index].nullable = false;
            }
            Ok(())
        }
        ast::AlterTableOperation::AlterColumn { column_name, op } => {
            let name = identifier(column_name);
            let index = def.column_index(&name).ok_or_else(|| {
                Error::new(
                    sqlstate::UNDEFINED_COLUMN,
                    format!(
                        "column \"{name}\" of relation \"{}\" does not exist",
                        def.name
                    ),
                )
            })?;
            match op {
                // Rows already stored keep their values; only later INSERTs
                // read the new default, as in PostgreSQL.
                ast::AlterColumnOperation::SetDefault { value } => {
                    def.columns[index].default = Some(value.to_string());
                    validate_defaults(session, def)
                }
                ast::AlterColumnOperation::DropDefault => {
                    def.columns[index].default = None;
                    Ok(())
                }
                // Nothing stored can violate it.
                ast::AlterColumnOperation::DropNotNull if !def.primary_key.contains(&index) => {
                    def.columns[index].nullable = true;
                    Ok(())
                }
                ast::AlterColumnOperation::DropNotNull => Err(Error::new(
                    sqlstate::INVALID_TABLE_DEFINITION,
                    format!("column \"{name}\" is in a primary key"),
                )),
                other => Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("ALTER TABLE … ALTER COLUMN {name} {other} is not supported yet"),
                )),
            }
        }
        other => Err(Error::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("ALTER TABLE {other} is not supported yet"),
        )),
    }
}

/// The columns a PRIMARY KEY constraint names, in key order.
fn key_columns(columns: &[ColumnDef], pk: &ast::PrimaryKeyConstraint) -> Result<Vec<usize>> {
    constraint_columns(columns, &pk.columns, "primary key")
}

/// The columns a PRIMARY KEY or UNIQUE constraint names, in order.
fn constraint_columns(
    columns: &[ColumnDef],
    named: &[ast::IndexColumn],
    constraint: &str,
) -> Result<Vec<usize>> {
    let mut key = Vec::with_capacity(named.len());
    for index_column in named {
        let column_name = match &index_column.column.expr {
            ast::Expr::Identifier(ident) => identifier(ident),
            other => {
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("{constraint} on expression {other}"),
                ))
            }
        };
        let index = columns
            .iter()
            .position(|c| c.name == column_name)
            .ok_or_else(|| {
                Error::new(
                    sqlstate::UNDEFINED_COLUMN,
                    format!("column \"{column_name}\" named in key does not exist"),
                )
            })?;
        if key.contains(&index) {
            return Err(Error::new(
                sqlstate::DUPLICATE_COLUMN,
                format!("column \"{column_name}\" appears twice in {constraint} constraint"),
            ));
        }
        key.push(index);
    }
    Ok(key)
}

/// ALTER TABLE … ADD PRIMARY KEY on a table keyed by hidden row ids: every
/// row moves to the key its values give, and its index entries with it, in
/// the DDL's one command. A NULL or duplicate key refuses the whole change,
/// as PostgreSQL's index build does. Rows committed by others after
/// `snapshot` would be lost by the move, so they are read guarded
/// ([`read_rows_guarded`]).
fn rekey_rows(
    session: &Context,
    old: &TableDef,
    new: &TableDef,
    snapshot: &Arc<dyn Snapshot>,
    change: &mut CatalogChange,
) -> Result<()> {
    let rows = read_rows_guarded(session, old, snapshot, change)?;
    move_rows(old, new, rows, change)
}

/// Every stored row of `table`, for a DDL that rewrites or validates them
/// all. They are read through a recorder over committed state whose
/// `CheckRange`s join the DDL's command outside a block, and the block's
/// commit inside one (where the rows are read from the block's view, its
/// own writes included): a row another session commits in between fails
/// the DDL or the commit with 40001 instead of escaping it.
fn read_rows_guarded(
    session: &Context,
    table: &TableDef,
    snapshot: &Arc<dyn Snapshot>,
    change: &mut CatalogChange,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    if session.transaction_state() == TransactionState::Idle {
        let recorder = Arc::new(sluice_raftstore::ReadRecorder::new(snapshot.clone()));
        let rows = crate::catalog::scan_all(recorder.as_ref(), &table.rows_range())?;
        change.mutations.extend(recorder.checks());
        return Ok(rows);
    }
    let recorder = sluice_raftstore::ReadRecorder::new(session.block_committed_view()?);
    crate::catalog::scan_all(&recorder, &table.rows_range())?;
    session.guard_block_ranges(recorder.checks())?;
    crate::catalog::scan_all(snapshot.as_ref(), &table.rows_range())
}

/// Checks the rows `old` holds against the CHECKs `new` adds, failing with
/// 23514 on the first that breaks one (rows read by [`read_rows_guarded`]).
fn validate_added_checks(
    session: &Context,
    old: &TableDef,
    new: &TableDef,
    snapshot: &Arc<dyn Snapshot>,
    change: &mut CatalogChange,
) -> Result<()> {
    let added: Vec<crate::catalog::CheckDef> = new
        .checks
        .iter()
        .filter(|check| !old.checks.contains(check))
        .cloned()
        .collect();
    if added.is_empty() {
        return Ok(());
    }
    let rows = read_rows_guarded(session, old, snapshot, change)?;
    let kinds = new.kinds();
    let mut with_added = new.clone();
    with_added.checks = added;
    let checks = session.db.compile_checks(&with_added);
    for page in rows.chunks(1024) {
        let values = page
            .iter()
            .map(|(_, bytes)| new.decode_row(&kinds, bytes))
            .collect::<Result<Vec<_>>>()?;
        if let Err(violation) = crate::check::enforce(&with_added, &checks, &values) {
            let constraint = violation
                .object
                .as_ref()
                .and_then(|object| object.constraint.clone())
                .unwrap_or_default();
            return Err(crate::check::violated_by_some_row(new, &constraint));
        }
    }
    Ok(())
}

/// Checks the rows `old` holds against the foreign keys `new` adds, failing
/// with 23503 on the first whose parent is missing; the command `Check`s the
/// parents found (rows read by [`read_rows_guarded`]).
fn validate_added_foreign_keys(
    session: &Context,
    catalog: &CatalogState,
    old: &TableDef,
    new: &TableDef,
    snapshot: &Arc<dyn Snapshot>,
    change: &mut CatalogChange,
) -> Result<()> {
    let added: Vec<&crate::catalog::ForeignKeyDef> = new
        .foreign_keys
        .iter()
        .filter(|fk| !old.foreign_keys.contains(fk))
        .collect();
    if added.is_empty() {
        return Ok(());
    }
    let rows = read_rows_guarded(session, old, snapshot, change)?;
    let reader = crate::foreign_key::Reader {
        view: snapshot.as_ref(),
        guard: None,
    };
    for fk in added {
        let checks = crate::foreign_key::validate_rows(catalog, &reader, new, fk, &rows)?;
        change.mutations.extend(checks);
    }
    Ok(())
}

/// Refuses (2BP01) to drop `index` of `table` while a foreign key refers to
/// its columns and no other constraint could serve it, as PostgreSQL does.
fn refuse_if_referenced(catalog: &CatalogState, table: &TableDef, index: &IndexDef) -> Result<()> {
    let columns: Vec<usize> = index.columns.iter().map(|c| c.column).collect();
    for (child, fk) in crate::foreign_key::referencing(catalog, table.id) {
        let served = fk.parent_columns.len() == columns.len()
            && fk.parent_columns.iter().all(|c| columns.contains(c));
        if served && !crate::foreign_key::can_be_referenced(table, &fk.parent_columns) {
            return Err(Error::new(
                sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
                format!(
                    "cannot drop constraint {} on table {} because other objects depend on it",
                    index.name, table.name
                ),
            )
            .with_detail(format!(
                "constraint {} on table {} depends on index {}",
                fk.name, child.name, index.name
            )));
        }
    }
    Ok(())
}

/// Refuses (0A000) a one-step rewrite of `table` inside a block unless the
/// block created the table: only then can no other session write rows the
/// rewrite would miss.
fn refuse_unless_created_in_block(
    session: &Context,
    table: &TableDef,
    what: &str,
    detail: &str,
) -> Result<()> {
    let shared = session.db.catalog.current();
    if shared.table(&table.schema, &table.name).map(|t| t.id) == Some(table.id) {
        return Err(Error::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "{what} on a table that exists outside this transaction block cannot run inside one yet"
            ),
        )
        .with_detail(detail));
    }
    Ok(())
}

fn move_rows(
    old: &TableDef,
    new: &TableDef,
    rows: Vec<(Vec<u8>, Vec<u8>)>,
    change: &mut CatalogChange,
) -> Result<()> {
    let (start, end) = range_bounds(&old.rows_range());
    change.mutations.push(Mutation::DeleteRange { start, end });
    change.mutations.extend(index::drop_entries(old));
    let kinds = old.kinds();
    let mut keys = std::collections::HashSet::with_capacity(rows.len());
    for (_, bytes) in rows {
        let values = old.decode_row(&kinds, &bytes)?;
        if let Some(&null) = new.primary_key.iter().find(|&&c| values[c].is_null()) {
            return Err(Error::new(
                sqlstate::NOT_NULL_VIOLATION,
                format!(
                    "column \"{}\" of relation \"{}\" contains null values",
                    new.columns[null].name, new.name
                ),
            ));
        }
        let key = new.key_for_row(&values)?;
        if !keys.insert(key.clone()) {
            return Err(Error::new(
                sqlstate::UNIQUE_VIOLATION,
                format!("could not create unique index \"{}_pkey\"", new.name),
            )
            .with_detail(format!("Key {} is duplicated.", new.describe_key(&key))));
        }
        for index in &new.indexes {
            change.put(index.entry(new, &values, &key)?.0, key.clone());
        }
        change.put(key, bytes);
    }
    Ok(())
}

/// Evaluates a constant expression (a DEFAULT) to a value of type `ty`.
pub async fn evaluate_constant(
    session: &Context,
    def: &TableDef,
    sql: &str,
    ty: SqlType,
) -> Result<Value> {
    let schema =
        DFSchema::try_from(def.arrow_schema().as_ref().clone()).map_err(from_datafusion)?;
    let expr = session
        .db
        .compile_default(sql, &schema)?
        .cast_to(&ty.arrow_type(), &schema)
        .map_err(from_datafusion)?;
    let plan = LogicalPlanBuilder::empty(true)
        .project(vec![expr.alias("value")])
        .and_then(|b| b.build())
        .map_err(from_datafusion)?;
    let snapshot = session.db.raft().local_snapshot();
    let mut stream = session.run(&plan, snapshot).await?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(from_datafusion)?;
        if batch.num_rows() > 0 {
            let array: ArrayRef = batch.column(0).clone();
            return value_at(&array, 0, ty, "default");
        }
    }
    Ok(Value::Null)
}

/// Rows per backfill command of CREATE INDEX (each row adds a `Check` and a
/// `Put`, so a page stays far below the command size limit).
const BACKFILL_PAGE_ROWS: usize = 2000;
/// Times one backfill page is read again after racing with a write.
const BACKFILL_RETRIES: usize = 20;

/// CREATE INDEX, built online in three steps (see [`crate::index`]).
async fn create_index(session: &mut Context, create: &ast::CreateIndex) -> Result<Output> {
    let unsupported = |what: &str| {
        Err(Error::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("{what} is not supported"),
        ))
    };
    if create.predicate.is_some() {
        return unsupported("a partial index (CREATE INDEX … WHERE)");
    }
    if !create.include.is_empty() {
        return unsupported("CREATE INDEX … INCLUDE");
    }
    if let Some(using) = &create.using {
        if !using.to_string().eq_ignore_ascii_case("btree") {
            return unsupported(&format!("index method {using}"));
        }
    }
    let name = match &create.name {
        Some(name) => Some(resolve::qualified_name(name)?.1),
        None => None,
    };
    build_index(
        session,
        IndexRequest {
            table: &create.table_name,
            name,
            columns: &create.columns,
            unique: create.unique,
            if_not_exists: create.if_not_exists,
        },
    )
    .await
}

/// The index CREATE INDEX or ADD CONSTRAINT … UNIQUE asks for.
struct IndexRequest<'a> {
    table: &'a ast::ObjectName,
    name: Option<String>,
    columns: &'a [ast::IndexColumn],
    unique: bool,
    if_not_exists: bool,
}

async fn build_index(session: &mut Context, request: IndexRequest<'_>) -> Result<Output> {
    let snapshot = session.read_view().await?;
    let catalog = session.catalog_state();
    let table = resolve::require(&catalog, request.table, Access::Ddl)?;
    let mut columns = Vec::with_capacity(request.columns.len());
    for indexed in request.columns {
        let name = match &indexed.column.expr {
            ast::Expr::Identifier(ident) => identifier(ident),
            other => {
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("an index on the expression {other} is not supported"),
                ))
            }
        };
        let column = table.column_index(&name).ok_or_else(|| {
            Error::new(
                sqlstate::UNDEFINED_COLUMN,
                format!("column \"{name}\" does not exist"),
            )
        })?;
        columns.push(IndexColumn {
            column,
            descending: indexed.column.options.asc == Some(false),
        });
    }
    let taken = |name: &str| {
        catalog.table(&table.schema, name).is_some() || catalog.index_named(&table.schema, name)
    };
    let name = match request.name {
        Some(name) => {
            if taken(&name) {
                if request.if_not_exists {
                    return Ok(Output::Command(CommandTag::new("CREATE INDEX")));
                }
                return Err(Error::new(
                    sqlstate::DUPLICATE_TABLE,
                    format!("relation \"{name}\" already exists"),
                ));
            }
            name
        }
        None => {
            // PostgreSQL's choice: table_columns_idx, then a number until it is free.
            let names: Vec<&str> = columns
                .iter()
                .map(|c| table.columns[c.column].name.as_str())
                .collect();
            let suffix = if request.unique { "key" } else { "idx" };
            first_free_name(
                &format!("{}_{}_{suffix}", table.name, names.join("_")),
                taken,
            )
        }
    };

    let index = IndexDef {
        id: 0,
        name,
        columns,
        state: IndexState::WriteOnly,
        unique: request.unique,
    };
    if session.transaction_state() != TransactionState::Idle {
        return create_index_in_block(session, &table, snapshot.as_ref(), index).await;
    }

    // 1. The index appears write-only: every write from now on maintains it.
    let mut change = CatalogChange::begin(snapshot.as_ref())?;
    let id = change.allocate_id(snapshot.as_ref())?;
    let mut building = table.as_ref().clone();
    building.indexes.push(IndexDef { id, ..index });
    change.put(table_key(building.id), encode_json(&building));
    change.commit(session).await?;

    // 2. and 3. Backfill, then publish; on failure take the index away again.
    match backfill_and_publish(session, &building, id).await {
        Ok(()) => Ok(Output::Command(CommandTag::new("CREATE INDEX"))),
        Err(error) => {
            if let Err(cleanup) = abandon_index(session, &building, id).await {
                tracing::warn!(error = %cleanup, "could not remove the unfinished index {id}");
            }
            Err(duplicate_in_build(error, &building, id))
        }
    }
}

/// A build's duplicate key, worded as PostgreSQL words a failed unique
/// index build; any other error as it is.
fn duplicate_in_build(error: Error, table: &TableDef, index_id: u64) -> Error {
    if error.code != sqlstate::UNIQUE_VIOLATION {
        return error;
    }
    let Some(index) = table.indexes.iter().find(|i| i.id == index_id) else {
        return error;
    };
    Error::new(
        sqlstate::UNIQUE_VIOLATION,
        format!("could not create unique index \"{}\"", index.name),
    )
    .with_detail(
        error
            .detail
            .map(|d| d.replace("already exists", "is duplicated"))
            .unwrap_or_default(),
    )
}

/// CREATE INDEX inside a transaction block: the index is public at once and
/// its entries are computed from the block's view, all in the block's write
/// set. Only a table the block created itself qualifies: no other session
/// can see it, so none can write a row the entries would miss.
async fn create_index_in_block(
    session: &Context,
    table: &TableDef,
    snapshot: &dyn Snapshot,
    index: IndexDef,
) -> Result<Output> {
    refuse_unless_created_in_block(
        session,
        table,
        "CREATE INDEX",
        "Run it outside BEGIN … COMMIT, where the index is built online while writes go on, \
         or create the table in the same block.",
    )?;
    let mut change = CatalogChange::begin(snapshot)?;
    let id = change.allocate_id(snapshot)?;
    let mut built = table.clone();
    built.indexes.push(IndexDef {
        id,
        state: IndexState::Public,
        ..index
    });
    let index = built.indexes.last().expect("the index was just added");
    let (entries, rest) =
        index::backfill_page(table, index, snapshot, &table.rows_range(), usize::MAX)?;
    debug_assert!(rest.is_none(), "one page holds every row");
    change.mutations.extend(entries);
    change.put(table_key(built.id), encode_json(&built));
    change
        .commit(session)
        .await
        .map_err(|e| duplicate_in_build(e, &built, id))?;
    Ok(Output::Command(CommandTag::new("CREATE INDEX")))
}

async fn backfill_and_publish(session: &Context, table: &TableDef, index_id: u64) -> Result<()> {
    let index = table
        .indexes
        .iter()
        .find(|i| i.id == index_id)
        .expect("the index being built is on the table");
    let mut range = Some(table.rows_range());
    let mut retries = 0;
    while let Some(current) = range.take() {
        let snapshot = session.db.read_view().await?;
        let (mutations, rest) = index::backfill_page(
            table,
            index,
            snapshot.as_ref(),
            &current,
            BACKFILL_PAGE_ROWS,
        )?;
        match session.db.raft().propose(Command { mutations }).await {
            Ok(_) => {
                retries = 0;
                range = rest;
            }
            Err(sluice_raftstore::Error::Apply(sluice_raftstore::ApplyError::Conflict { .. }))
                if retries < BACKFILL_RETRIES =>
            {
                // A row of this page changed after we read it: read the page again.
                retries += 1;
                range = Some(current);
            }
            Err(sluice_raftstore::Error::Apply(sluice_raftstore::ApplyError::Conflict { .. })) => {
                return Err(Error::new(
                    sqlstate::SERIALIZATION_FAILURE,
                    "could not build the index: the table kept changing, or its definition changed; retry",
                ))
            }
            Err(sluice_raftstore::Error::Apply(sluice_raftstore::ApplyError::DuplicateKey {
                key,
            })) => return Err(index::duplicate_key_error(table, &key)),
            Err(e) => return Err(raft_error(e)),
        }
    }
    let snapshot = session.db.read_view().await?;
    let mut change = CatalogChange::begin(snapshot.as_ref())?;
    let mut public = table.clone();
    for index in &mut public.indexes {
        if index.id == index_id {
            index.state = IndexState::Public;
        }
    }
    change.mutations.push(index::definition_check(table));
    change.put(table_key(public.id), encode_json(&public));
    change.commit(session).await
}

async fn abandon_index(session: &Context, table: &TableDef, index_id: u64) -> Result<()> {
    let snapshot = session.db.read_view().await?;
    let mut change = CatalogChange::begin(snapshot.as_ref())?;
    let mut restored = table.clone();
    restored.indexes.retain(|i| i.id != index_id);
    change.mutations.push(index::definition_check(table));
    change.put(table_key(restored.id), encode_json(&restored));
    change.mutations.push(index::delete_all(index_id));
    change.commit(session).await
}

#[cfg(test)]
mod tests {
    use crate::testing::{database, exec, rows, run, sqlstate_of};

    #[tokio::test]
    async fn tables_are_created_and_dropped_once_with_postgresql_sqlstates() {
        let test = database().await;
        let mut s = test.session();
        exec(&mut s, "CREATE TABLE t (id int PRIMARY KEY)").await;
        assert_eq!(
            sqlstate_of(&mut s, "CREATE TABLE t (id int)").await,
            "42P07"
        );
        exec(&mut s, "CREATE TABLE IF NOT EXISTS t (id int)").await;
        assert_eq!(
            sqlstate_of(&mut s, "CREATE TABLE u (a int, a int)").await,
            "42701"
        );
        assert_eq!(
            sqlstate_of(&mut s, "CREATE TABLE u (a nosuchtype)").await,
            "42704"
        );
        exec(&mut s, "DROP TABLE t").await;
        assert_eq!(sqlstate_of(&mut s, "DROP TABLE t").await, "42P01");
        exec(&mut s, "DROP TABLE IF EXISTS t").await;
        assert_eq!(sqlstate_of(&mut s, "SELECT * FROM t").await, "42P01");
        assert_eq!(
            sqlstate_of(&mut s, "DROP TABLE sluice_catalog.consumer_offsets").await,
            "42501"
        );
    }

    #[tokio::test]
    async fn an_index_built_over_existing_rows_answers_and_keeps_up_with_writes() {
        let test = database().await;
        let mut s = test.session();
        run(
            &mut s,
            "CREATE TABLE t (id int PRIMARY KEY, email text); \
             INSERT INTO t VALUES (1, 'a@x'), (2, 'b@x')",
        )
        .await
        .unwrap();
        exec(&mut s, "CREATE INDEX t_email ON t (email)").await;
        exec(
            &mut s,
            "INSERT INTO t VALUES (3, 'b@x'); UPDATE t SET email = 'c@x' WHERE id = 2",
        )
        .await;
        let plan = rows(&mut s, "EXPLAIN SELECT id FROM t WHERE email = 'b@x'").await;
        assert!(
            plan.iter().flatten().any(|line| line.contains("t_email")),
            "the lookup reads the index: {plan:?}"
        );
        assert_eq!(
            rows(&mut s, "SELECT id FROM t WHERE email = 'b@x'").await,
            vec![vec!["3".to_string()]]
        );
        // A unique index built over distinct values holds every later write to them.
        exec(&mut s, "CREATE UNIQUE INDEX u ON t (email)").await;
        for duplicate in [
            "INSERT INTO t VALUES (4, 'a@x')",
            "UPDATE t SET email = 'a@x' WHERE id = 3",
        ] {
            assert_eq!(sqlstate_of(&mut s, duplicate).await, "23505", "{duplicate}");
        }
        exec(&mut s, "UPDATE t SET email = 'z@x' WHERE id = 1").await;
        exec(
            &mut s,
            "INSERT INTO t VALUES (4, 'a@x'), (5, NULL), (6, NULL)",
        )
        .await;
        // Over duplicates the build fails and leaves no index behind.
        run(
            &mut s,
            "CREATE TABLE d (a int); INSERT INTO d VALUES (1), (1)",
        )
        .await
        .unwrap();
        assert_eq!(
            sqlstate_of(&mut s, "CREATE UNIQUE INDEX ON d (a)").await,
            "23505"
        );
        exec(&mut s, "INSERT INTO d VALUES (1)").await;
    }

    #[tokio::test]
    async fn add_primary_key_moves_rows_to_their_keys_or_refuses_nulls_and_duplicates() {
        let test = database().await;
        let mut s = test.session();
        exec(
            &mut s,
            "CREATE TABLE t (id int, v text); CREATE INDEX t_v ON t (v); \
             INSERT INTO t VALUES (2, 'b'), (1, 'a'), (3, NULL)",
        )
        .await;
        exec(&mut s, "ALTER TABLE t ADD PRIMARY KEY (id)").await;
        // Rows now come in key order, a key lookup is a point read, and the
        // index points at the moved rows.
        assert_eq!(
            rows(&mut s, "SELECT id FROM t").await,
            vec![
                vec!["1".to_string()],
                vec!["2".to_string()],
                vec!["3".to_string()]
            ]
        );
        let plan = rows(&mut s, "EXPLAIN SELECT v FROM t WHERE id = 2").await;
        assert!(
            plan.iter().flatten().any(|l| l.contains("range=id = ")),
            "{plan:?}"
        );
        assert_eq!(
            rows(&mut s, "SELECT id FROM t WHERE v = 'a'").await,
            vec![vec!["1".to_string()]]
        );
        assert_eq!(
            sqlstate_of(&mut s, "INSERT INTO t VALUES (1, 'x')").await,
            "23505"
        );
        assert_eq!(
            sqlstate_of(&mut s, "INSERT INTO t VALUES (NULL, 'x')").await,
            "23502"
        );
        assert_eq!(
            sqlstate_of(&mut s, "ALTER TABLE t ADD PRIMARY KEY (v)").await,
            "42P16"
        );

        exec(
            &mut s,
            "CREATE TABLE d (a int, b int); INSERT INTO d VALUES (1, 1), (1, 2)",
        )
        .await;
        assert_eq!(
            sqlstate_of(&mut s, "ALTER TABLE d ADD PRIMARY KEY (a)").await,
            "23505"
        );
        exec(&mut s, "INSERT INTO d VALUES (3, NULL)").await;
        assert_eq!(
            sqlstate_of(&mut s, "ALTER TABLE d ADD PRIMARY KEY (b)").await,
            "23502"
        );
        assert_eq!(
            sqlstate_of(&mut s, "ALTER TABLE d ADD PRIMARY KEY (nope)").await,
            "42703"
        );
        // The refused changes left the table as it was.
        assert_eq!(
            rows(&mut s, "SELECT count(*) FROM d").await,
            vec![vec!["3".to_string()]]
        );
        exec(&mut s, "INSERT INTO d VALUES (1, 1)").await;
    }
}
