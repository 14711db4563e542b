//! FOREIGN KEY constraints: `REFERENCES` on a column, `FOREIGN KEY (…)
//! REFERENCES …` on the table, and `ALTER TABLE … ADD CONSTRAINT … FOREIGN
//! KEY`, kept in the referencing table's definition
//! ([`crate::catalog::ForeignKeyDef`]). The referenced columns are the
//! parent's primary key or one of its UNIQUE constraints, as PostgreSQL
//! requires, so a referenced row is found by one key: its row key or its
//! unique index entry.
//!
//! Both sides are checked in the Raft command of the write that could break
//! them (`Context::propose` calls [`upkeep`] beside index upkeep):
//!
//! - A written row of a referencing table (values all non-NULL, MATCH
//!   SIMPLE, and changed) needs its parent: missing, 23503; present, the
//!   command `Check`s the parent's key at the bytes read, so a concurrent
//!   delete of the parent fails one of the two (40001) instead of leaving an
//!   orphan.
//! - A deleted row of a referenced table, or one whose referenced values
//!   change, looks up the rows that reference it (through an index whose
//!   leading columns are the foreign key's, else a scan of the child). Their
//!   presence fails the write (NO ACTION, RESTRICT) or becomes more writes
//!   in the same command (CASCADE, SET NULL), which go through the same
//!   upkeep in turn. The ranges looked at are read through a
//!   [`ReadRecorder`](sluice_raftstore::ReadRecorder) over committed state,
//!   and its `CheckRange`s join the command (inside a block, its commit), so
//!   a referencing row committed meanwhile fails the write with 40001.
//!
//! Not yet: SET DEFAULT, MATCH FULL, DEFERRABLE (refused with 0A000), and
//! referenced columns of another type than the referencing ones' (42804,
//! where PostgreSQL accepts comparable types such as integer and bigint).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::sql::sqlparser::ast;
use sluice_engine::{KeyRange, Keyspace, Snapshot, Value};
use sluice_raftstore::Mutation;

use crate::catalog::{
    encode_indexed, scan_all, CatalogState, ForeignKeyDef, IndexState, ReferentialAction, TableDef,
};
use crate::error::{sqlstate, storage_error, Error, ErrorObject, Result};
use crate::names::{first_free_name, identifier};
use crate::resolve::{self, Access};

/// What upkeep adds to a command for one table's row mutations.
#[derive(Default)]
pub(crate) struct References {
    /// `Check`s of the parent rows (or unique entries) new rows refer to.
    pub checks: Vec<Mutation>,
    /// Writes to referencing tables (CASCADE, SET NULL), with the `Check`
    /// of each row they replace, for their own upkeep in turn.
    pub cascaded: Vec<Cascade>,
}

/// One table's share of a write: its row mutations, and the rows among
/// them that move to a new key (old key, new key), which are updates, not
/// deletes, to the foreign keys that refer to them.
pub(crate) struct Cascade {
    pub table: Arc<TableDef>,
    pub mutations: Vec<Mutation>,
    pub moves: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Where upkeep reads: `view` is what the statement sees (a block's writes
/// over its snapshot); `guard`, when set, is a recorder over committed state
/// whose ranges become the command's `CheckRange`s (outside a block `view`
/// is that recorder itself).
pub(crate) struct Reader<'a> {
    pub view: &'a dyn Snapshot,
    pub guard: Option<&'a dyn Snapshot>,
}

impl Reader<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.view.get(Keyspace::Data, key).map_err(storage_error)
    }

    /// The pairs in `range` as the statement sees them; the guard reads the
    /// same range from committed state.
    fn scan(&self, range: &KeyRange) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if let Some(guard) = self.guard {
            scan_all(guard, range)?;
        }
        scan_all(self.view, range)
    }
}

/// Every foreign key that refers to table `parent`, with its table.
pub(crate) fn referencing(
    catalog: &CatalogState,
    parent: u64,
) -> Vec<(Arc<TableDef>, ForeignKeyDef)> {
    catalog
        .tables
        .values()
        .flat_map(|table| {
            table
                .foreign_keys
                .iter()
                .filter(move |fk| fk.parent == parent)
                .map(move |fk| (table.clone(), fk.clone()))
        })
        .collect()
}

/// Whether writes to `table` need [`upkeep`].
pub(crate) fn involved(catalog: &CatalogState, table: &TableDef) -> bool {
    !table.foreign_keys.is_empty()
        || catalog
            .tables
            .values()
            .any(|t| t.foreign_keys.iter().any(|fk| fk.parent == table.id))
}

/// The key that finds the parent row `values` (the foreign key's values, in
/// its column order) refer to: the parent's row key when the referenced
/// columns are its primary key, else the entry of its matching unique index.
pub(crate) fn parent_key(
    parent: &TableDef,
    fk: &ForeignKeyDef,
    values: &[Value],
) -> Result<Vec<u8>> {
    let mut row = vec![Value::Null; parent.columns.len()];
    for (&column, value) in fk.parent_columns.iter().zip(values) {
        row[column] = value.clone();
    }
    if same_columns(&parent.primary_key, &fk.parent_columns) {
        return parent.key_for_row(&row);
    }
    let index = unique_index_for(parent, &fk.parent_columns).ok_or_else(|| {
        Error::new(
            sqlstate::INTERNAL_ERROR,
            format!(
                "foreign key \"{}\" refers to columns of \"{}\" without a unique constraint",
                fk.name, parent.name
            ),
        )
    })?;
    Ok(index.entry(parent, &row, &[])?.0)
}

fn same_columns(a: &[usize], b: &[usize]) -> bool {
    a.len() == b.len() && a.iter().all(|c| b.contains(c))
}

/// The public unique index over exactly `columns` (in any order).
pub(crate) fn unique_index_for<'a>(
    table: &'a TableDef,
    columns: &[usize],
) -> Option<&'a crate::catalog::IndexDef> {
    table.indexes.iter().find(|index| {
        index.unique
            && index.state == IndexState::Public
            && same_columns(
                &index.columns.iter().map(|c| c.column).collect::<Vec<_>>(),
                columns,
            )
    })
}

/// Whether `columns` of `table` can be referenced: its primary key or a
/// UNIQUE constraint.
pub(crate) fn can_be_referenced(table: &TableDef, columns: &[usize]) -> bool {
    (!columns.is_empty() && same_columns(&table.primary_key, columns))
        || unique_index_for(table, columns).is_some()
}

fn values_of(row: &[Value], columns: &[usize]) -> Vec<Value> {
    columns.iter().map(|&c| row[c].clone()).collect()
}

/// What upkeep knows of the whole command, across the tables of a cascade.
#[derive(Default)]
pub(crate) struct CommandState {
    /// Row keys the command already deletes or rewrites, so that a cycle of
    /// references cannot visit a row twice.
    done: HashSet<Vec<u8>>,
    /// Parent keys (as [`parent_key`] gives them) the command writes with
    /// new values that cascaded rows now refer to: present, though not yet
    /// in any view.
    provided: HashSet<Vec<u8>>,
}

/// Adds what `write.table`'s foreign keys, and those that refer to it,
/// imply for its row mutations (see the module docs).
pub(crate) fn upkeep(
    catalog: &CatalogState,
    reader: &Reader<'_>,
    write: &Cascade,
    command: &mut CommandState,
) -> Result<References> {
    let done = &mut command.done;
    let table = write.table.as_ref();
    let mutations = write.mutations.as_slice();
    let mut references = References::default();
    let rows_prefix = table.rows_prefix();
    let kinds = table.kinds();
    let old_rows: HashMap<&[u8], &[u8]> = mutations
        .iter()
        .filter_map(|m| match m {
            Mutation::Check {
                key,
                expected: Some(old),
            } if key.starts_with(&rows_prefix) => Some((key.as_slice(), old.as_slice())),
            _ => None,
        })
        .collect();
    let mut written: Vec<(&[u8], Option<&[u8]>)> = Vec::new();
    for mutation in mutations {
        match mutation {
            Mutation::Insert { key, value } | Mutation::Put { key, value }
                if key.starts_with(&rows_prefix) =>
            {
                written.push((key, Some(value)))
            }
            Mutation::Delete { key } if key.starts_with(&rows_prefix) => written.push((key, None)),
            _ => {}
        }
    }
    for (key, _) in &written {
        done.insert(key.to_vec());
    }
    if !table.foreign_keys.is_empty() {
        let new_keys: HashSet<&[u8]> = written
            .iter()
            .filter(|(_, new)| new.is_some())
            .map(|(key, _)| *key)
            .collect();
        let mut checked: HashSet<Vec<u8>> = HashSet::new();
        for (key, new) in &written {
            let Some(new) = new else { continue };
            let new = table.decode_row(&kinds, new)?;
            let old = match old_rows.get(key) {
                Some(old) => Some(table.decode_row(&kinds, old)?),
                None => None,
            };
            for fk in &table.foreign_keys {
                let values = values_of(&new, &fk.columns);
                if values.iter().any(Value::is_null)
                    || old
                        .as_ref()
                        .is_some_and(|old| values_of(old, &fk.columns) == values)
                {
                    continue;
                }
                let parent = catalog.table_by_id(fk.parent).ok_or_else(|| {
                    Error::new(
                        sqlstate::INTERNAL_ERROR,
                        format!("foreign key \"{}\" refers to a dropped table", fk.name),
                    )
                })?;
                let lookup = parent_key(parent, fk, &values)?;
                // A row referring to one the same command writes (a
                // self-referencing table filled in one statement).
                if parent.id == table.id && new_keys.contains(lookup.as_slice()) {
                    continue;
                }
                if checked.contains(&lookup) || command.provided.contains(&lookup) {
                    continue;
                }
                match reader.get(&lookup)? {
                    Some(bytes) => {
                        references.checks.push(Mutation::Check {
                            key: lookup.clone(),
                            expected: Some(bytes),
                        });
                        checked.insert(lookup);
                    }
                    None => return Err(missing_parent(table, fk, parent, &values)),
                }
            }
        }
    }
    let referencing = referencing(catalog, table.id);
    if referencing.is_empty() {
        return Ok(references);
    }
    let mut cascaded: HashMap<u64, Cascade> = HashMap::new();
    let new_rows: HashMap<&[u8], &[u8]> = written
        .iter()
        .filter_map(|(key, new)| new.map(|new| (*key, new)))
        .collect();
    let moves: HashMap<&[u8], &[u8]> = write
        .moves
        .iter()
        .map(|(old, new)| (old.as_slice(), new.as_slice()))
        .collect();
    for (key, new) in &written {
        let Some(old) = old_rows.get(key) else {
            continue;
        };
        let old = table.decode_row(&kinds, old)?;
        // A row moving to a new key is updated, not deleted.
        let new = new.or_else(|| moves.get(key).and_then(|to| new_rows.get(to)).copied());
        let new = match new {
            Some(new) => Some(table.decode_row(&kinds, new)?),
            None => None,
        };
        for (child, fk) in &referencing {
            let old_values = values_of(&old, &fk.parent_columns);
            if old_values.iter().any(Value::is_null) {
                continue;
            }
            let new_values = new.as_ref().map(|new| values_of(new, &fk.parent_columns));
            if new_values.as_ref() == Some(&old_values) {
                continue;
            }
            let rows: Vec<(Vec<u8>, Vec<u8>)> = referencing_rows(reader, child, fk, &old_values)?
                .into_iter()
                .filter(|(child_key, _)| !done.contains(child_key))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let action = if new.is_some() {
                fk.on_update
            } else {
                fk.on_delete
            };
            let replacement: Vec<Value> = match (action, &new_values) {
                (ReferentialAction::NoAction | ReferentialAction::Restrict, _) => {
                    return Err(still_referenced(table, child, fk, &old_values))
                }
                (ReferentialAction::Cascade, None) => Vec::new(),
                (ReferentialAction::Cascade, Some(new_values)) => {
                    command.provided.insert(parent_key(table, fk, new_values)?);
                    new_values.clone()
                }
                (ReferentialAction::SetNull, _) => vec![Value::Null; fk.columns.len()],
            };
            let Cascade {
                mutations: writes,
                moves: child_moves,
                ..
            } = cascaded.entry(child.id).or_insert_with(|| Cascade {
                table: child.clone(),
                mutations: Vec::new(),
                moves: Vec::new(),
            });
            let child_kinds = child.kinds();
            for (child_key, bytes) in rows {
                done.insert(child_key.clone());
                writes.push(Mutation::Check {
                    key: child_key.clone(),
                    expected: Some(bytes.clone()),
                });
                if action == ReferentialAction::Cascade && new_values.is_none() {
                    writes.push(Mutation::Delete { key: child_key });
                    continue;
                }
                let mut row = child.decode_row(&child_kinds, &bytes)?;
                for (&column, value) in fk.columns.iter().zip(&replacement) {
                    if value.is_null() && !child.columns[column].nullable {
                        return Err(child.not_null_violation(&child.columns[column].name));
                    }
                    row[column] = value.clone();
                }
                let value = child.encode_row(&row)?;
                if child.has_primary_key() {
                    let new_key = child.key_for_row(&row)?;
                    if new_key != child_key {
                        writes.push(Mutation::Delete {
                            key: child_key.clone(),
                        });
                        writes.push(Mutation::Insert {
                            key: new_key.clone(),
                            value,
                        });
                        child_moves.push((child_key, new_key));
                        continue;
                    }
                }
                writes.push(Mutation::Put {
                    key: child_key,
                    value,
                });
            }
        }
    }
    references.cascaded = cascaded.into_values().collect();
    Ok(references)
}

/// The rows of `child` whose foreign key `fk` holds `values`: through an
/// index whose leading columns are the key's, else by a scan of the table.
fn referencing_rows(
    reader: &Reader<'_>,
    child: &TableDef,
    fk: &ForeignKeyDef,
    values: &[Value],
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let index = child.indexes.iter().find(|index| {
        index.state == IndexState::Public
            && index.columns.len() >= fk.columns.len()
            && index
                .columns
                .iter()
                .zip(&fk.columns)
                .all(|(c, &column)| c.column == column && !c.descending)
    });
    if let Some(index) = index {
        let mut prefix = index.prefix();
        for value in values {
            encode_indexed(&mut prefix, value, false)?;
        }
        let mut rows = Vec::new();
        for (_, row_key) in reader.scan(&KeyRange::prefix(&prefix))? {
            if let Some(bytes) = reader.get(&row_key)? {
                rows.push((row_key, bytes));
            }
        }
        return Ok(rows);
    }
    let kinds = child.kinds();
    let mut rows = Vec::new();
    for (key, bytes) in reader.scan(&child.rows_range())? {
        let row = child.decode_row(&kinds, &bytes)?;
        if values_of(&row, &fk.columns) == values {
            rows.push((key, bytes));
        }
    }
    Ok(rows)
}

fn key_text(table: &TableDef, columns: &[usize], values: &[Value]) -> String {
    let names: Vec<&str> = columns
        .iter()
        .map(|&c| table.columns[c].name.as_str())
        .collect();
    let rendered: Vec<String> = values.iter().map(crate::catalog::render_value).collect();
    format!("({})=({})", names.join(", "), rendered.join(", "))
}

fn fk_error(child: &TableDef, fk: &ForeignKeyDef, message: String, detail: String) -> Error {
    Error::new(sqlstate::FOREIGN_KEY_VIOLATION, message)
        .with_detail(detail)
        .with_object(ErrorObject {
            schema: Some(child.schema.clone()),
            table: Some(child.name.clone()),
            constraint: Some(fk.name.clone()),
        })
}

/// 23503 for a referencing row whose parent is not there.
pub(crate) fn missing_parent(
    child: &TableDef,
    fk: &ForeignKeyDef,
    parent: &TableDef,
    values: &[Value],
) -> Error {
    fk_error(
        child,
        fk,
        format!(
            "insert or update on table \"{}\" violates foreign key constraint \"{}\"",
            child.name, fk.name
        ),
        format!(
            "Key {} is not present in table \"{}\".",
            key_text(child, &fk.columns, values),
            parent.name
        ),
    )
}

/// 23503 for a parent row deleted or changed while rows still refer to it.
fn still_referenced(
    parent: &TableDef,
    child: &TableDef,
    fk: &ForeignKeyDef,
    values: &[Value],
) -> Error {
    fk_error(
        child,
        fk,
        format!(
            "update or delete on table \"{}\" violates foreign key constraint \"{}\" on table \"{}\"",
            parent.name, fk.name, child.name
        ),
        format!(
            "Key {} is still referenced from table \"{}\".",
            key_text(parent, &fk.parent_columns, values),
            child.name
        ),
    )
}

/// The definition a FOREIGN KEY declaration of `child` asks for, after
/// PostgreSQL's checks. `column` is the column a `REFERENCES` option was
/// declared on. A table referring to itself while being created is
/// `child` (its id still 0, which the caller replaces by the new id).
pub(crate) fn define(
    catalog: &CatalogState,
    child: &TableDef,
    declared: &ast::ForeignKeyConstraint,
    column: Option<&str>,
) -> Result<ForeignKeyDef> {
    let unsupported = |what: &str| {
        Error::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("{what} foreign keys are not supported yet"),
        )
    };
    if matches!(
        declared.match_kind,
        Some(ast::ConstraintReferenceMatchKind::Full | ast::ConstraintReferenceMatchKind::Partial)
    ) {
        return Err(unsupported("MATCH FULL and MATCH PARTIAL"));
    }
    if declared
        .characteristics
        .as_ref()
        .is_some_and(|c| c.deferrable == Some(true) || c.initially.is_some())
    {
        return Err(unsupported("deferrable"));
    }
    let action = |action: Option<ast::ReferentialAction>| match action {
        None | Some(ast::ReferentialAction::NoAction) => Ok(ReferentialAction::NoAction),
        Some(ast::ReferentialAction::Restrict) => Ok(ReferentialAction::Restrict),
        Some(ast::ReferentialAction::Cascade) => Ok(ReferentialAction::Cascade),
        Some(ast::ReferentialAction::SetNull) => Ok(ReferentialAction::SetNull),
        Some(ast::ReferentialAction::SetDefault) => Err(unsupported("ON … SET DEFAULT")),
    };
    let on_delete = action(declared.on_delete)?;
    let on_update = action(declared.on_update)?;

    let (schema, name) = resolve::qualified_name(&declared.foreign_table)?;
    let parent: &TableDef = if schema == child.schema && name == child.name {
        child
    } else {
        match resolve::find(catalog, &declared.foreign_table, Access::Ddl)? {
            Some(parent) => catalog
                .table_by_id(parent.id)
                .map(Arc::as_ref)
                .ok_or_else(|| resolve::missing(&declared.foreign_table, Access::Ddl))?,
            None => return Err(resolve::missing(&declared.foreign_table, Access::Ddl)),
        }
    };
    if parent.is_topic() || parent.is_builtin() {
        return Err(Error::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("\"{}\" cannot be referenced by a foreign key", parent.name),
        ));
    }
    let find = |table: &TableDef, name: &str| {
        table.column_index(name).ok_or_else(|| {
            Error::new(
                sqlstate::UNDEFINED_COLUMN,
                format!("column \"{name}\" referenced in foreign key constraint does not exist"),
            )
        })
    };
    let columns: Vec<usize> = match column {
        Some(column) => vec![find(child, column)?],
        None => declared
            .columns
            .iter()
            .map(|c| find(child, &identifier(c)))
            .collect::<Result<_>>()?,
    };
    let parent_columns: Vec<usize> = if declared.referred_columns.is_empty() {
        if !parent.has_primary_key() {
            return Err(Error::new(
                sqlstate::INVALID_FOREIGN_KEY,
                format!(
                    "there is no primary key for referenced table \"{}\"",
                    parent.name
                ),
            ));
        }
        parent.primary_key.clone()
    } else {
        declared
            .referred_columns
            .iter()
            .map(|c| find(parent, &identifier(c)))
            .collect::<Result<_>>()?
    };
    if columns.len() != parent_columns.len() {
        return Err(Error::new(
            sqlstate::INVALID_FOREIGN_KEY,
            "number of referencing and referenced columns for foreign key disagree",
        ));
    }
    if !can_be_referenced(parent, &parent_columns) {
        return Err(Error::new(
            sqlstate::INVALID_FOREIGN_KEY,
            format!(
                "there is no unique constraint matching given keys for referenced table \"{}\"",
                parent.name
            ),
        ));
    }
    let name = match &declared.name {
        Some(given) => {
            let given = identifier(given);
            if child.constraint_named(&given) {
                return Err(Error::new(
                    sqlstate::DUPLICATE_OBJECT,
                    format!(
                        "constraint \"{given}\" for relation \"{}\" already exists",
                        child.name
                    ),
                ));
            }
            given
        }
        None => {
            let names: Vec<&str> = columns
                .iter()
                .map(|&c| child.columns[c].name.as_str())
                .collect();
            first_free_name(&format!("{}_{}_fkey", child.name, names.join("_")), |n| {
                child.constraint_named(n)
            })
        }
    };
    for (&c, &p) in columns.iter().zip(&parent_columns) {
        let (child_type, parent_type) = (child.columns[c].ty, parent.columns[p].ty);
        if child_type.value_kind() != parent_type.value_kind() {
            return Err(Error::new(
                sqlstate::DATATYPE_MISMATCH,
                format!("foreign key constraint \"{name}\" cannot be implemented"),
            )
            .with_detail(format!(
                "Key columns \"{}\" and \"{}\" are of incompatible types: {} and {}.",
                child.columns[c].name,
                parent.columns[p].name,
                child_type.pg_name(),
                parent_type.pg_name()
            )));
        }
    }
    Ok(ForeignKeyDef {
        name,
        columns,
        parent: parent.id,
        parent_columns,
        on_delete,
        on_update,
    })
}

/// Checks that every row of `child` satisfies `fk` at `reader`'s view:
/// 23503 for the first that does not; the `Check`s of the parent rows found.
pub(crate) fn validate_rows(
    catalog: &CatalogState,
    reader: &Reader<'_>,
    child: &TableDef,
    fk: &ForeignKeyDef,
    rows: &[(Vec<u8>, Vec<u8>)],
) -> Result<Vec<Mutation>> {
    let parent = if fk.parent == child.id {
        child
    } else {
        catalog
            .table_by_id(fk.parent)
            .map(Arc::as_ref)
            .ok_or_else(|| Error::new(sqlstate::INTERNAL_ERROR, "referenced table is gone"))?
    };
    let kinds = child.kinds();
    let mut checks: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for (_, bytes) in rows {
        let row = child.decode_row(&kinds, bytes)?;
        let values = values_of(&row, &fk.columns);
        if values.iter().any(Value::is_null) {
            continue;
        }
        let lookup = parent_key(parent, fk, &values)?;
        if checks.contains_key(&lookup) {
            continue;
        }
        match reader.get(&lookup)? {
            Some(found) => {
                checks.insert(lookup, found);
            }
            None => return Err(missing_parent(child, fk, parent, &values)),
        }
    }
    Ok(checks
        .into_iter()
        .map(|(key, found)| Mutation::Check {
            key,
            expected: Some(found),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use crate::testing::{database, exec, rows, run, sqlstate_of};

    fn table(values: &[&[&str]]) -> Vec<Vec<String>> {
        values
            .iter()
            .map(|row| row.iter().map(|v| v.to_string()).collect())
            .collect()
    }

    const SCHEMA: &str = "CREATE TABLE p (id int PRIMARY KEY, code text UNIQUE, name text); \
        CREATE TABLE c (id int PRIMARY KEY, pid int REFERENCES p, \
            pcode text REFERENCES p (code) ON DELETE CASCADE ON UPDATE CASCADE)";

    #[tokio::test]
    async fn referencing_rows_need_their_parent() {
        let test = database().await;
        let mut s = test.session();
        exec(&mut s, SCHEMA).await;
        exec(&mut s, "INSERT INTO p VALUES (1, 'a', 'x'), (2, 'b', 'y')").await;
        let error = run(&mut s, "INSERT INTO c VALUES (1, 5, NULL)")
            .await
            .unwrap_err();
        assert_eq!(error.code, "23503");
        assert_eq!(
            error.message,
            "insert or update on table \"c\" violates foreign key constraint \"c_pid_fkey\""
        );
        assert_eq!(
            error.detail.as_deref(),
            Some("Key (pid)=(5) is not present in table \"p\".")
        );
        assert_eq!(
            error.object.as_ref().and_then(|o| o.constraint.as_deref()),
            Some("c_pid_fkey")
        );
        // NULLs refer to nothing (MATCH SIMPLE); a unique column can be referred to.
        exec(
            &mut s,
            "INSERT INTO c VALUES (1, 1, 'a'), (2, NULL, 'b'), (3, NULL, NULL)",
        )
        .await;
        assert_eq!(
            sqlstate_of(&mut s, "UPDATE c SET pcode = 'zz' WHERE id = 3").await,
            "23503"
        );
        assert_eq!(
            sqlstate_of(&mut s, "INSERT INTO c SELECT 4, 9, NULL").await,
            "23503"
        );
        // Inside a block, a parent the block wrote counts.
        exec(&mut s, "BEGIN").await;
        exec(&mut s, "INSERT INTO p VALUES (3, 'c', 'z')").await;
        exec(&mut s, "INSERT INTO c VALUES (4, 3, 'c')").await;
        exec(&mut s, "COMMIT").await;
        assert_eq!(
            rows(&mut s, "SELECT count(*) FROM c").await,
            table(&[&["4"]])
        );
    }

    #[tokio::test]
    async fn parent_writes_follow_each_constraints_action() {
        let test = database().await;
        let mut s = test.session();
        exec(&mut s, SCHEMA).await;
        exec(
            &mut s,
            "INSERT INTO p VALUES (1, 'a', 'x'), (2, 'b', 'y'), (3, 'c', 'z')",
        )
        .await;
        exec(
            &mut s,
            "INSERT INTO c VALUES (1, 1, 'a'), (2, NULL, 'b'), (3, NULL, 'b')",
        )
        .await;
        // NO ACTION: still referenced.
        let error = run(&mut s, "DELETE FROM p WHERE id = 1").await.unwrap_err();
        assert_eq!(error.code, "23503");
        assert_eq!(
            error.message,
            "update or delete on table \"p\" violates foreign key constraint \"c_pid_fkey\" on table \"c\""
        );
        assert_eq!(
            error.detail.as_deref(),
            Some("Key (id)=(1) is still referenced from table \"c\".")
        );
        // Changing a referenced value that nothing refers to is fine.
        exec(&mut s, "UPDATE p SET id = 30 WHERE id = 3").await;
        // ON UPDATE CASCADE carries the new value to every referencing row.
        exec(&mut s, "UPDATE p SET code = 'bb' WHERE id = 2").await;
        assert_eq!(
            rows(&mut s, "SELECT id, pcode FROM c ORDER BY id").await,
            table(&[&["1", "a"], &["2", "bb"], &["3", "bb"]])
        );
        // ON DELETE CASCADE removes them.
        exec(&mut s, "DELETE FROM p WHERE id = 2").await;
        assert_eq!(
            rows(&mut s, "SELECT id FROM c ORDER BY id").await,
            table(&[&["1"]])
        );
        // A rolled-back cascade leaves everything.
        exec(&mut s, "BEGIN").await;
        exec(&mut s, "DELETE FROM c WHERE id = 1").await;
        exec(&mut s, "DELETE FROM p WHERE id = 1").await;
        exec(&mut s, "ROLLBACK").await;
        assert_eq!(
            rows(&mut s, "SELECT count(*) FROM p").await,
            table(&[&["2"]])
        );
    }

    #[tokio::test]
    async fn set_null_chains_and_self_references() {
        let test = database().await;
        let mut s = test.session();
        exec(
            &mut s,
            "CREATE TABLE node (id int PRIMARY KEY, parent int REFERENCES node ON DELETE CASCADE); \
             CREATE TABLE tag (id int PRIMARY KEY, node int REFERENCES node ON DELETE SET NULL)",
        )
        .await;
        // A row may refer to one written by the same statement.
        exec(
            &mut s,
            "INSERT INTO node VALUES (1, NULL), (2, 1), (3, 2), (4, NULL)",
        )
        .await;
        exec(&mut s, "INSERT INTO tag VALUES (10, 3), (11, 4)").await;
        // Deleting the root cascades down the tree, and the tags of the
        // deleted nodes lose their reference.
        exec(&mut s, "DELETE FROM node WHERE id = 1").await;
        assert_eq!(rows(&mut s, "SELECT id FROM node").await, table(&[&["4"]]));
        assert_eq!(
            rows(&mut s, "SELECT id, node FROM tag ORDER BY id").await,
            table(&[&["10", "NULL"], &["11", "4"]])
        );
    }

    #[tokio::test]
    async fn declarations_are_checked_as_postgres_checks_them() {
        let test = database().await;
        let mut s = test.session();
        exec(
            &mut s,
            "CREATE TABLE p (id int PRIMARY KEY, code text UNIQUE, name text)",
        )
        .await;
        let cases = [
            (
                "CREATE TABLE d (id int, pname text REFERENCES p (name))",
                "42830",
            ),
            ("CREATE TABLE d (id int, pid text REFERENCES p)", "42804"),
            (
                "CREATE TABLE d (id int, pid int REFERENCES nosuch)",
                "42P01",
            ),
            (
                "CREATE TABLE d (id int, pid int REFERENCES p (nosuch))",
                "42703",
            ),
            (
                "CREATE TABLE d (id int, pid int REFERENCES p ON DELETE SET DEFAULT)",
                "0A000",
            ),
            (
                "CREATE TABLE d (id int, a int, b int, FOREIGN KEY (a, b) REFERENCES p (id))",
                "42830",
            ),
        ];
        for (sql, code) in cases {
            assert_eq!(sqlstate_of(&mut s, sql).await, code, "{sql}");
        }
        exec(
            &mut s,
            "CREATE TABLE c (id int PRIMARY KEY, pid int REFERENCES p)",
        )
        .await;
        exec(&mut s, "INSERT INTO p VALUES (1, 'a', 'x')").await;
        exec(&mut s, "INSERT INTO c VALUES (1, 1)").await;
        assert_eq!(sqlstate_of(&mut s, "DROP TABLE p").await, "2BP01");
        assert_eq!(sqlstate_of(&mut s, "TRUNCATE p").await, "0A000");
        exec(&mut s, "TRUNCATE p CASCADE").await;
        assert_eq!(
            rows(&mut s, "SELECT count(*) FROM c").await,
            table(&[&["0"]])
        );
        // ADD CONSTRAINT validates the rows there.
        exec(&mut s, "CREATE TABLE e (id int PRIMARY KEY, code text)").await;
        exec(&mut s, "INSERT INTO e VALUES (1, 'zz')").await;
        assert_eq!(
            sqlstate_of(
                &mut s,
                "ALTER TABLE e ADD CONSTRAINT e_code FOREIGN KEY (code) REFERENCES p (code)"
            )
            .await,
            "23503"
        );
        exec(&mut s, "INSERT INTO p VALUES (2, 'zz', 'y')").await;
        exec(
            &mut s,
            "ALTER TABLE e ADD CONSTRAINT e_code FOREIGN KEY (code) REFERENCES p (code)",
        )
        .await;
        assert_eq!(
            sqlstate_of(&mut s, "DELETE FROM p WHERE id = 2").await,
            "23503"
        );
        assert_eq!(
            sqlstate_of(&mut s, "ALTER TABLE p DROP CONSTRAINT p_code_key").await,
            "2BP01"
        );
        exec(&mut s, "ALTER TABLE e DROP CONSTRAINT e_code").await;
        exec(&mut s, "DELETE FROM p WHERE id = 2").await;
        // DROP … CASCADE takes the constraints, not the referencing tables.
        exec(&mut s, "DROP TABLE p CASCADE").await;
        exec(&mut s, "INSERT INTO c VALUES (2, 99)").await;
    }

    #[tokio::test]
    async fn a_concurrent_parent_delete_and_child_insert_cannot_both_commit() {
        let test = database().await;
        let (mut a, mut b) = (test.session(), test.session());
        exec(
            &mut a,
            "CREATE TABLE p (id int PRIMARY KEY); \
             CREATE TABLE c (id int PRIMARY KEY, pid int REFERENCES p)",
        )
        .await;
        exec(&mut a, "INSERT INTO p VALUES (1), (2)").await;

        // The child's block checks its parent; the parent goes first.
        exec(&mut a, "BEGIN").await;
        exec(&mut a, "INSERT INTO c VALUES (1, 1)").await;
        exec(&mut b, "DELETE FROM p WHERE id = 1").await;
        assert_eq!(sqlstate_of(&mut a, "COMMIT").await, "40001");

        // The parent's block saw no children; a child commits first.
        exec(&mut a, "BEGIN").await;
        exec(&mut a, "DELETE FROM p WHERE id = 2").await;
        exec(&mut b, "INSERT INTO c VALUES (2, 2)").await;
        assert_eq!(sqlstate_of(&mut a, "COMMIT").await, "40001");
        assert_eq!(
            rows(&mut a, "SELECT p.id FROM c JOIN p ON c.pid = p.id").await,
            table(&[&["2"]])
        );
    }
}
