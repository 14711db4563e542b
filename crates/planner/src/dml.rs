//! INSERT, UPDATE and DELETE.
//!
//! DataFusion plans each statement into a `Dml` node whose input yields the
//! rows to write: the new rows for INSERT, the updated rows for UPDATE, the
//! doomed rows for DELETE. We never hand the statement to
//! `TableProvider::update`/`delete_from`: on DataFusion 55 a `WHERE` with an
//! `IN`/`EXISTS` subquery reaches those as *no filter* (apache/datafusion#24654).
//! Instead the input plan runs in full (it evaluates the whole `WHERE`,
//! subqueries included) and its rows become keyed [`Mutation`]s, proposed as
//! one Raft [`Command`]. UPDATE and DELETE scan their target with a hidden
//! key column ([`KEY_COLUMN`]) so each output row names the stored row it
//! came from, whether the table has a primary key or a hidden row id.
//!
//! Read-modify-write safety: every updated or deleted row carries a `Check`
//! of the exact bytes read, so a concurrent change between our snapshot and
//! apply fails the statement with 40001 instead of being lost.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BinaryArray, UInt64Array};
use datafusion::arrow::compute::{cast_with_options, CastOptions};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::FormatOptions;
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{LogicalPlan, WriteOp};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast;
use futures::StreamExt;
use sluice_engine::{Keyspace, Snapshot, Value};
use sluice_raftstore::Mutation;

use crate::api::{CommandTag, Output};
use crate::cached_plan::parameter_types;
use crate::cached_plan::CachedPlan;
use crate::catalog::{TableDef, KEY_COLUMN};
use crate::context::Context;
use crate::error::{from_datafusion, sqlstate, storage_error, Error, Result};
use crate::resolve::Access;
use crate::types::{rows_to_batch, value_at};

#[derive(Debug, Clone)]
pub enum OnConflict {
    Error,
    DoNothing(Arbiter),
    DoUpdate {
        assignments: Vec<ast::Assignment>,
        selection: Option<Box<ast::Expr>>,
        arbiter: Arbiter,
    },
}

/// The unique constraint that decides whether a proposed row conflicts:
/// the primary key, one UNIQUE index (by id), or, for DO NOTHING without a
/// target, any of them, as in PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arbiter {
    PrimaryKey,
    Unique(u64),
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmlOp {
    Insert,
    Update,
    Delete,
}

impl DmlOp {
    fn verb(self) -> &'static str {
        match self {
            DmlOp::Insert => "INSERT",
            DmlOp::Update => "UPDATE",
            DmlOp::Delete => "DELETE",
        }
    }
}

pub struct DmlPlan {
    /// The input of the `Dml` logical plan: it yields the rows to write.
    input: CachedPlan,
    pub op: DmlOp,
    pub table: Arc<TableDef>,
    on_conflict: OnConflict,
    returning: Option<Returning>,
}

struct Returning {
    items: Vec<ast::SelectItem>,
    schema: SchemaRef,
}

impl DmlPlan {
    pub fn returning_schema(&self) -> Option<SchemaRef> {
        self.returning.as_ref().map(|r| r.schema.clone())
    }
}

fn table_factor_name(table: &ast::TableWithJoins) -> Result<&ast::ObjectName> {
    match &table.relation {
        ast::TableFactor::Table { name, .. } => Ok(name),
        other => Err(Error::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("cannot modify {other}"),
        )),
    }
}

/// Plans a DML statement; also returns the types of its `$n` (`declared` by the client where given).
pub async fn prepare(
    session: &Context,
    statement: &ast::Statement,
    declared: &[Option<DataType>],
) -> Result<(DmlPlan, Vec<DataType>)> {
    let mut statement = statement.clone();
    let (op, table, on_conflict, returning_items) = match &mut statement {
        ast::Statement::Insert(insert) => {
            let name = match &insert.table {
                ast::TableObject::TableName(name) => name.clone(),
                other => {
                    return Err(Error::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!("cannot insert into {other}"),
                    ))
                }
            };
            let table = session.relation(&name, Access::Data)?;
            if table.is_topic() && insert.columns.is_empty() {
                // A topic's system columns are assigned, not given: a
                // column-less INSERT lists the topic's own columns.
                insert.columns = table
                    .user_columns()
                    .iter()
                    .map(|c| {
                        ast::ObjectName::from(vec![ast::Ident::with_quote('"', c.name.clone())])
                    })
                    .collect();
            }
            if table.is_topic() && insert.on.is_some() {
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "ON CONFLICT is not supported for topics: records have no key to conflict on",
                ));
            }
            let on_conflict = match insert.on.take() {
                None => OnConflict::Error,
                Some(ast::OnInsert::OnConflict(conflict)) => {
                    let arbiter = conflict_arbiter(&table, conflict.conflict_target.as_ref())?;
                    match conflict.action {
                        ast::OnConflictAction::DoNothing => OnConflict::DoNothing(arbiter),
                        ast::OnConflictAction::DoUpdate(update) => {
                            if conflict.conflict_target.is_none() {
                                return Err(Error::new(
                                    sqlstate::SYNTAX_ERROR,
                                    "ON CONFLICT DO UPDATE requires inference specification or constraint name",
                                ));
                            }
                            OnConflict::DoUpdate {
                                assignments: update.assignments,
                                selection: update.selection.map(Box::new),
                                arbiter,
                            }
                        }
                    }
                }
                Some(other) => {
                    return Err(Error::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!("{other} is not supported"),
                    ))
                }
            };
            (DmlOp::Insert, table, on_conflict, insert.returning.take())
        }
        ast::Statement::Update(update) => {
            let table = session.relation(table_factor_name(&update.table)?, Access::Data)?;
            let mut assigned = Vec::with_capacity(update.assignments.len());
            for assignment in &update.assignments {
                if assignment
                    .target
                    .to_string()
                    .eq_ignore_ascii_case(KEY_COLUMN)
                {
                    return Err(Error::new(
                        sqlstate::UNDEFINED_COLUMN,
                        format!("column \"{KEY_COLUMN}\" does not exist"),
                    ));
                }
                let columns = match &assignment.target {
                    ast::AssignmentTarget::ColumnName(name) => std::slice::from_ref(name),
                    ast::AssignmentTarget::Tuple(names) => names.as_slice(),
                };
                for name in columns {
                    let column = name
                        .0
                        .last()
                        .and_then(|part| part.as_ident())
                        .map(crate::names::identifier)
                        .unwrap_or_else(|| name.to_string());
                    if assigned.contains(&column) {
                        return Err(Error::new(
                            sqlstate::SYNTAX_ERROR,
                            format!("multiple assignments to same column \"{column}\""),
                        ));
                    }
                    assigned.push(column);
                }
            }
            (
                DmlOp::Update,
                table,
                OnConflict::Error,
                update.returning.take(),
            )
        }
        ast::Statement::Delete(delete) => {
            let tables = match &delete.from {
                ast::FromTable::WithFromKeyword(t) | ast::FromTable::WithoutKeyword(t) => t,
            };
            let [target] = tables.as_slice() else {
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "DELETE from several tables is not supported",
                ));
            };
            let table = session.relation(table_factor_name(target)?, Access::Data)?;
            (
                DmlOp::Delete,
                table,
                OnConflict::Error,
                delete.returning.take(),
            )
        }
        _ => return Err(Error::new(sqlstate::INTERNAL_ERROR, "not a DML statement")),
    };
    if table.is_topic() && op != DmlOp::Insert {
        return Err(Error::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("cannot {} topic \"{}\"", op.verb(), table.name),
        )
        .with_detail("A topic is append-only: records leave it by retention or with DROP TOPIC."));
    }
    let plan = {
        let _target = session.catalog.dml_target(table.id, op != DmlOp::Insert);
        session.plan(statement).await?
    };
    if !matches!(&plan, LogicalPlan::Dml(dml) if matches!(dml.op, WriteOp::Insert(_) | WriteOp::Update | WriteOp::Delete))
    {
        return Err(Error::new(
            sqlstate::INTERNAL_ERROR,
            "DML statement did not plan to a DML node",
        ));
    }
    let returning = match returning_items {
        None => None,
        Some(items) => {
            let empty = RecordBatch::new_empty(table.arrow_schema());
            let plan = returning_plan(&table, &items, empty).await?;
            Some(Returning {
                items,
                schema: Arc::new(plan.schema().as_arrow().clone()),
            })
        }
    };
    let types = parameter_types(&plan, declared)?;
    let LogicalPlan::Dml(dml) = plan else {
        unreachable!("checked above")
    };
    let input = session.cache(Arc::unwrap_or_clone(dml.input)).await?;
    Ok((
        DmlPlan {
            input,
            op,
            table,
            on_conflict,
            returning,
        },
        types,
    ))
}

/// The arbiter an ON CONFLICT target names: the primary key or a UNIQUE
/// index over exactly its columns (42P10 otherwise); no target, any.
fn conflict_arbiter(table: &TableDef, target: Option<&ast::ConflictTarget>) -> Result<Arbiter> {
    let Some(target) = target else {
        return Ok(Arbiter::Any);
    };
    let ast::ConflictTarget::Columns(columns) = target else {
        return Err(Error::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "ON CONFLICT ON CONSTRAINT is not supported",
        ));
    };
    let mut named = Vec::with_capacity(columns.len());
    for column in columns {
        let name = crate::names::identifier(column);
        let index = table.column_index(&name).ok_or_else(|| {
            Error::new(
                sqlstate::UNDEFINED_COLUMN,
                format!("column \"{name}\" does not exist"),
            )
        })?;
        if !named.contains(&index) {
            named.push(index);
        }
    }
    let same = |columns: &[usize]| {
        columns.len() == named.len() && columns.iter().all(|c| named.contains(c))
    };
    if table.has_primary_key() && same(&table.primary_key) {
        return Ok(Arbiter::PrimaryKey);
    }
    let unique = table.indexes.iter().find(|index| {
        index.unique
            && index.state == crate::index::IndexState::Public
            && same(&index.columns.iter().map(|c| c.column).collect::<Vec<_>>())
    });
    match unique {
        Some(index) => Ok(Arbiter::Unique(index.id)),
        None => Err(Error::new(
            sqlstate::INVALID_COLUMN_REFERENCE,
            "there is no unique or exclusion constraint matching the ON CONFLICT specification",
        )),
    }
}

/// The keys under which `arbiter` finds a conflict for a proposed row
/// stored at `row_key`: its row key (primary key) and the entries of the
/// arbiter's unique indexes (none for values with a NULL, which never
/// conflict).
fn arbiter_keys(
    table: &TableDef,
    arbiter: Arbiter,
    row_key: &[u8],
    values: &[Value],
) -> Result<Vec<Vec<u8>>> {
    let mut keys = Vec::new();
    if matches!(arbiter, Arbiter::PrimaryKey | Arbiter::Any) && table.has_primary_key() {
        keys.push(row_key.to_vec());
    }
    for index in &table.indexes {
        let arbitrates = match arbiter {
            Arbiter::Unique(id) => index.id == id,
            Arbiter::Any => index.unique && index.state == crate::index::IndexState::Public,
            Arbiter::PrimaryKey => false,
        };
        if arbitrates {
            let (entry, unique) = index.entry(table, values, row_key)?;
            if unique {
                keys.push(entry);
            }
        }
    }
    Ok(keys)
}

/// The stored row a proposed row conflicts with under its arbiter keys
/// ([`arbiter_keys`]): its key and bytes.
fn conflicting_row(
    table: &TableDef,
    keys: &[Vec<u8>],
    snapshot: &dyn Snapshot,
) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    let rows_prefix = table.rows_prefix();
    for key in keys {
        let Some(found) = get(snapshot, key)? else {
            continue;
        };
        if key.starts_with(&rows_prefix) {
            return Ok(Some((key.clone(), found)));
        }
        // A unique entry holds the key of its row.
        if let Some(row) = get(snapshot, &found)? {
            return Ok(Some((found, row)));
        }
    }
    Ok(None)
}

/// Plans `SELECT <items> FROM <table>` over `rows`, the RETURNING projection.
async fn returning_plan(
    table: &TableDef,
    items: &[ast::SelectItem],
    rows: RecordBatch,
) -> Result<LogicalPlan> {
    let ctx = scratch_context(&[(&table.name, rows)])?;
    let list: Vec<String> = items.iter().map(ToString::to_string).collect();
    let sql = format!(
        "SELECT {} FROM {}",
        list.join(", "),
        quote_ident(&table.name)
    );
    ctx.state()
        .create_logical_plan(&sql)
        .await
        .map_err(from_datafusion)
}

/// A throwaway DataFusion context holding only in-memory tables.
fn scratch_context(tables: &[(&str, RecordBatch)]) -> Result<SessionContext> {
    let ctx = SessionContext::new();
    for (name, batch) in tables {
        let table = MemTable::try_new(batch.schema(), vec![vec![batch.clone()]])
            .map_err(from_datafusion)?;
        ctx.register_table(*name, Arc::new(table))
            .map_err(from_datafusion)?;
    }
    Ok(ctx)
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub async fn execute(
    session: &mut Context,
    plan: &DmlPlan,
    types: &[DataType],
    params: Vec<ScalarValue>,
) -> Result<Output> {
    let input = plan.input.bind(types, params)?;
    let snapshot = session.read_view().await?;
    let batches = collect(session.run_cached(&input, snapshot.clone()).await?).await?;
    let table = &plan.table;
    let with_key = plan.op != DmlOp::Insert;
    let mut rows = Vec::new();
    for batch in &batches {
        rows.extend(batch_rows(table, batch, with_key)?);
    }
    if plan.op != DmlOp::Delete {
        session.db.enforce_checks(table, &rows)?;
    }
    if table.is_topic() {
        drop(snapshot);
        let values: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
        return append(session, table, values, plan.returning.as_ref()).await;
    }
    let planned = match plan.op {
        DmlOp::Insert => insert(session, table, rows, &plan.on_conflict, snapshot.as_ref()).await?,
        DmlOp::Update => update(table, rows, snapshot.as_ref())?,
        DmlOp::Delete => delete(rows, snapshot.as_ref())?,
    };
    // Inside a transaction block the view shares the block's write set; it
    // must be released before the writes join that set, or the set is
    // copied whole (copy-on-write) by every statement.
    drop(snapshot);
    let outcome = session
        .propose_moving(table, planned.mutations, planned.moves)
        .await?;
    let count = planned.count.unwrap_or(outcome.inserted);
    let returned = planned.returned;
    match &plan.returning {
        None => Ok(Output::Command(CommandTag::with_rows(
            plan.op.verb(),
            count,
        ))),
        Some(returning) => {
            let batch = rows_to_batch(&table.arrow_schema(), &table.types(), &returned)?;
            let plan_r = returning_plan(table, &returning.items, batch).await?;
            let ctx = scratch_context(&[])?;
            let frame = ctx
                .execute_logical_plan(plan_r)
                .await
                .map_err(from_datafusion)?;
            let stream = frame.execute_stream().await.map_err(from_datafusion)?;
            Ok(Output::Rows {
                schema: returning.schema.clone(),
                stream,
                verb: plan.op.verb(),
            })
        }
    }
}

/// INSERT into a topic: the rows become appends (see [`crate::topic`]).
async fn append(
    session: &mut Context,
    table: &Arc<TableDef>,
    mut values: Vec<Vec<Value>>,
    returning: Option<&Returning>,
) -> Result<Output> {
    let (plan, outcome) = crate::topic::propose_appends(session, table, &values).await?;
    let Some(returning) = returning else {
        return Ok(Output::Command(CommandTag::with_rows(
            "INSERT",
            values.len() as u64,
        )));
    };
    crate::topic::fill_system_columns(table, &mut values, &plan, &outcome.appended);
    // Nullable: inside a block the offsets are not known before COMMIT.
    let batch = rows_to_batch(&table.dml_schema(false), &table.types(), &values)?;
    let plan = returning_plan(table, &returning.items, batch).await?;
    let ctx = scratch_context(&[])?;
    let frame = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(from_datafusion)?;
    let stream = frame.execute_stream().await.map_err(from_datafusion)?;
    Ok(Output::Rows {
        schema: returning.schema.clone(),
        stream,
        verb: "INSERT",
    })
}

async fn collect(
    mut stream: datafusion::execution::SendableRecordBatchStream,
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    while let Some(batch) = stream.next().await {
        out.push(batch.map_err(from_datafusion)?);
    }
    Ok(out)
}

/// One row of DML input: its column values and, for UPDATE/DELETE, the key
/// of the stored row it came from.
pub struct InputRow {
    pub values: Vec<Value>,
    pub source_key: Option<Vec<u8>>,
}

impl AsRef<[Value]> for InputRow {
    fn as_ref(&self) -> &[Value] {
        &self.values
    }
}

/// Converts a batch shaped like the table (plus the key column when
/// `with_key`) into typed rows, casting each column to its declared type.
pub fn batch_rows(table: &TableDef, batch: &RecordBatch, with_key: bool) -> Result<Vec<InputRow>> {
    let columns = table.columns.len();
    let expected = columns + usize::from(with_key);
    if batch.num_columns() != expected {
        return Err(Error::new(
            sqlstate::INTERNAL_ERROR,
            format!(
                "DML input has {} columns, table {} has {columns}",
                batch.num_columns(),
                table.qualified_name()
            ),
        ));
    }
    let cast_options = CastOptions {
        safe: false,
        format_options: FormatOptions::default(),
    };
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns);
    for (index, column) in table.columns.iter().enumerate() {
        let target = column.ty.arrow_type();
        let array = batch.column(index);
        let array = if array.data_type() == &target {
            array.clone()
        } else {
            cast_with_options(array, &target, &cast_options).map_err(|e| {
                from_datafusion(e.into()).with_detail(format!(
                    "column \"{}\" of type {}",
                    column.name,
                    column.ty.pg_name()
                ))
            })?
        };
        arrays.push(array);
    }
    let keys = if with_key {
        Some(
            batch
                .column(columns)
                .as_any()
                .downcast_ref::<BinaryArray>()
                .ok_or_else(|| {
                    Error::new(sqlstate::INTERNAL_ERROR, "DML key column is not binary")
                })?,
        )
    } else {
        None
    };
    let mut rows = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let mut values = Vec::with_capacity(columns);
        for (index, column) in table.columns.iter().enumerate() {
            let value = value_at(&arrays[index], row, column.ty, &column.name)?;
            if value.is_null() && !column.nullable && !table.is_system_column(index) {
                return Err(table.not_null_violation(&column.name));
            }
            values.push(value);
        }
        let source_key = keys.map(|k| k.value(row).to_vec());
        rows.push(InputRow { values, source_key });
    }
    Ok(rows)
}

/// Keys and encoded rows for new rows, drawing hidden row ids where needed.
pub fn keyed_rows(
    session: &Context,
    table: &TableDef,
    rows: &[Vec<Value>],
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let first_rowid = if table.has_primary_key() {
        0
    } else {
        session.db.rowids.reserve(rows.len())
    };
    rows.iter()
        .enumerate()
        .map(|(i, values)| {
            let key = if table.has_primary_key() {
                table.key_for_row(values)?
            } else {
                table.key_for_rowid(first_rowid + i as i64)?
            };
            Ok((key, table.encode_row(values)?))
        })
        .collect()
}

/// A DML statement's writes, ready to propose, and the rows it returns.
struct PlannedWrites {
    mutations: Vec<Mutation>,
    returned: Vec<Vec<Value>>,
    /// The command tag's count; `None` when apply decides it (rows inserted).
    count: Option<u64>,
    /// Rows that change key (old key, new key): updates, to foreign keys.
    moves: Vec<(Vec<u8>, Vec<u8>)>,
}

async fn insert(
    session: &Context,
    table: &Arc<TableDef>,
    rows: Vec<InputRow>,
    on_conflict: &OnConflict,
    snapshot: &dyn Snapshot,
) -> Result<PlannedWrites> {
    let values: Vec<Vec<Value>> = rows.into_iter().map(|r| r.values).collect();
    let keyed = keyed_rows(session, table, &values)?;
    match on_conflict {
        OnConflict::Error => {
            let mutations = keyed
                .into_iter()
                .map(|(key, value)| Mutation::Insert { key, value })
                .collect();
            Ok(PlannedWrites {
                mutations,
                returned: values,
                count: None,
                moves: Vec::new(),
            })
        }
        OnConflict::DoNothing(arbiter) => {
            let mut returned = Vec::new();
            let mut mutations = Vec::with_capacity(keyed.len());
            if table.indexes.is_empty() {
                // Only the row key can conflict: apply decides, row by row.
                for ((key, value), row) in keyed.into_iter().zip(values) {
                    // RETURNING lists the rows that did not conflict in our
                    // snapshot; the count comes from apply, which is authoritative.
                    if get(snapshot, &key)?.is_none() {
                        returned.push(row);
                    }
                    mutations.push(Mutation::InsertIfAbsent { key, value });
                }
            } else {
                // Index entries must not be written for a row that is
                // skipped, so the decision is made here; each key it rests
                // on is checked absent, so a concurrent insert of the same
                // values fails the statement (40001) rather than being missed.
                let mut seen: HashSet<Vec<u8>> = HashSet::new();
                for ((key, value), row) in keyed.into_iter().zip(values) {
                    let keys = arbiter_keys(table, *arbiter, &key, &row)?;
                    if keys.iter().any(|k| seen.contains(k))
                        || conflicting_row(table, &keys, snapshot)?.is_some()
                    {
                        continue;
                    }
                    for key in &keys {
                        mutations.push(Mutation::Check {
                            key: key.clone(),
                            expected: None,
                        });
                    }
                    seen.extend(keys);
                    mutations.push(Mutation::Insert { key, value });
                    returned.push(row);
                }
            }
            Ok(PlannedWrites {
                mutations,
                returned,
                count: None,
                moves: Vec::new(),
            })
        }
        OnConflict::DoUpdate {
            assignments,
            selection,
            arbiter,
        } => {
            upsert(
                session,
                table,
                keyed,
                values,
                Conflict {
                    arbiter: *arbiter,
                    assignments,
                    selection: selection.as_deref(),
                },
                snapshot,
            )
            .await
        }
    }
}

/// What ON CONFLICT … DO UPDATE says.
struct Conflict<'a> {
    arbiter: Arbiter,
    assignments: &'a [ast::Assignment],
    selection: Option<&'a ast::Expr>,
}

/// INSERT … ON CONFLICT (target) DO UPDATE: new rows are inserted; rows
/// that conflict with a stored row under the arbiter update that row with
/// the assignments, evaluated with `excluded` bound to the proposed row,
/// exactly as PostgreSQL scopes them.
async fn upsert(
    session: &Context,
    table: &Arc<TableDef>,
    keyed: Vec<(Vec<u8>, Vec<u8>)>,
    values: Vec<Vec<Value>>,
    conflict: Conflict<'_>,
    snapshot: &dyn Snapshot,
) -> Result<PlannedWrites> {
    let Conflict {
        arbiter,
        assignments,
        selection,
    } = conflict;
    let kinds = table.kinds();
    let mut seen = HashSet::new();
    let mut mutations = Vec::new();
    let mut returned = Vec::new();
    let mut existing_rows = Vec::new();
    let mut excluded_rows = Vec::new();
    let mut conflict_keys = Vec::new();
    let mut moves = Vec::new();
    for ((key, encoded), row) in keyed.into_iter().zip(values) {
        let keys = arbiter_keys(table, arbiter, &key, &row)?;
        if keys.iter().any(|k| seen.contains(k)) {
            return Err(Error::new(
                sqlstate::CARDINALITY_VIOLATION,
                "ON CONFLICT DO UPDATE command cannot affect row a second time",
            )
            .with_detail("Ensure that no rows proposed for insertion within the same command have duplicate constrained values."));
        }
        match conflicting_row(table, &keys, snapshot)? {
            None => {
                // Absent here: a concurrent insert of the same values fails
                // the statement (40001) rather than duplicating them.
                for key in &keys {
                    mutations.push(Mutation::Check {
                        key: key.clone(),
                        expected: None,
                    });
                }
                mutations.push(Mutation::Insert {
                    key,
                    value: encoded,
                });
                returned.push(row);
            }
            Some((existing_key, old)) => {
                existing_rows.push(table.decode_row(&kinds, &old)?);
                excluded_rows.push(row);
                conflict_keys.push((existing_key, old));
            }
        }
        seen.extend(keys);
    }
    let inserted = returned.len() as u64;
    let mut updated = 0u64;
    if !conflict_keys.is_empty() {
        let new_rows = evaluate_conflict_updates(
            table,
            assignments,
            selection,
            &existing_rows,
            &excluded_rows,
        )
        .await?;
        let updated_rows: Vec<&[Value]> = new_rows.iter().map(|(_, row)| row.as_slice()).collect();
        session.db.enforce_checks(table, &updated_rows)?;
        for (ordinal, new_values) in new_rows {
            let (old_key, old_bytes) = &conflict_keys[ordinal];
            let new_key = if table.has_primary_key() {
                table.key_for_row(&new_values)?
            } else {
                old_key.clone()
            };
            mutations.push(Mutation::Check {
                key: old_key.clone(),
                expected: Some(old_bytes.clone()),
            });
            if &new_key != old_key {
                moves.push((old_key.clone(), new_key.clone()));
                mutations.push(Mutation::Delete {
                    key: old_key.clone(),
                });
                mutations.push(Mutation::Insert {
                    key: new_key,
                    value: table.encode_row(&new_values)?,
                });
            } else {
                mutations.push(Mutation::Put {
                    key: new_key,
                    value: table.encode_row(&new_values)?,
                });
            }
            returned.push(new_values);
            updated += 1;
        }
    }
    Ok(PlannedWrites {
        mutations,
        returned,
        count: Some(inserted + updated),
        moves,
    })
}

async fn evaluate_conflict_updates(
    table: &Arc<TableDef>,
    assignments: &[ast::Assignment],
    selection: Option<&ast::Expr>,
    existing: &[Vec<Value>],
    excluded: &[Vec<Value>],
) -> Result<Vec<(usize, Vec<Value>)>> {
    const ORDINAL: &str = "__sluice_ordinal";
    let with_ordinal = |rows: &[Vec<Value>]| -> Result<RecordBatch> {
        let batch = rows_to_batch(&table.arrow_schema(), &table.types(), rows)?;
        let mut fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(ORDINAL, DataType::UInt64, false));
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(UInt64Array::from_iter_values(
            0..rows.len() as u64,
        )));
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map_err(|e| Error::new(sqlstate::INTERNAL_ERROR, e.to_string()))
    };
    let ctx = scratch_context(&[
        (&table.name, with_ordinal(existing)?),
        ("excluded", with_ordinal(excluded)?),
    ])?;
    let mut assigned: HashMap<String, String> = HashMap::new();
    for assignment in assignments {
        let target = assignment.target.to_string();
        let name = target
            .rsplit('.')
            .next()
            .unwrap_or(&target)
            .trim_matches('"')
            .to_lowercase();
        if table.column_index(&name).is_none() {
            return Err(Error::new(
                sqlstate::UNDEFINED_COLUMN,
                format!(
                    "column \"{name}\" of relation \"{}\" does not exist",
                    table.name
                ),
            ));
        }
        assigned.insert(name, assignment.value.to_string());
    }
    let target = quote_ident(&table.name);
    let mut select = vec![format!("{target}.{ORDINAL}")];
    for column in &table.columns {
        let expr = assigned
            .get(&column.name)
            .cloned()
            .unwrap_or_else(|| format!("{target}.{}", quote_ident(&column.name)));
        select.push(format!(
            "CAST({expr} AS {}) AS {}",
            cast_type(column.ty),
            quote_ident(&column.name)
        ));
    }
    let mut sql = format!(
        "SELECT {} FROM {target} JOIN excluded ON {target}.{ORDINAL} = excluded.{ORDINAL}",
        select.join(", ")
    );
    if let Some(selection) = selection {
        sql.push_str(&format!(" WHERE {selection}"));
    }
    let frame = ctx.sql(&sql).await.map_err(from_datafusion)?;
    let batches = frame.collect().await.map_err(from_datafusion)?;
    let mut out = Vec::new();
    for batch in batches {
        let ordinals = batch
            .column(0)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .cloned()
            .ok_or_else(|| Error::new(sqlstate::INTERNAL_ERROR, "ordinal column lost its type"))?;
        let projected = batch
            .project(&(1..batch.num_columns()).collect::<Vec<_>>())
            .map_err(|e| Error::new(sqlstate::INTERNAL_ERROR, e.to_string()))?;
        for (i, row) in batch_rows(table, &projected, false)?
            .into_iter()
            .enumerate()
        {
            out.push((ordinals.value(i) as usize, row.values));
        }
    }
    Ok(out)
}

/// The SQL spelling of a column type for CAST in scratch queries.
fn cast_type(ty: crate::types::SqlType) -> String {
    use crate::types::SqlType as T;
    match ty {
        T::Varchar(_) | T::Char(_) | T::Json | T::Jsonb | T::Uuid => "TEXT".into(),
        T::TimestampTz => "TIMESTAMPTZ".into(),
        T::Time => "TIME".into(),
        T::Timestamp => "TIMESTAMP".into(),
        other => other.pg_name().to_uppercase(),
    }
}

fn update(
    table: &Arc<TableDef>,
    rows: Vec<InputRow>,
    snapshot: &dyn Snapshot,
) -> Result<PlannedWrites> {
    let mut seen = HashSet::new();
    let mut checks = Vec::new();
    let mut moves = Vec::new();
    let mut moved = Vec::new();
    let mut writes = Vec::new();
    let mut returned = Vec::new();
    for row in rows {
        let old_key = row
            .source_key
            .ok_or_else(|| Error::new(sqlstate::INTERNAL_ERROR, "UPDATE row without key"))?;
        // UPDATE … FROM may join a row several times: PostgreSQL updates it once.
        if !seen.insert(old_key.clone()) {
            continue;
        }
        let expected = get(snapshot, &old_key)?;
        checks.push(Mutation::Check {
            key: old_key.clone(),
            expected,
        });
        let new_key = if table.has_primary_key() {
            table.key_for_row(&row.values)?
        } else {
            old_key.clone()
        };
        let encoded = table.encode_row(&row.values)?;
        if new_key == old_key {
            writes.push(Mutation::Put {
                key: new_key,
                value: encoded,
            });
        } else {
            // All moved rows leave before any arrives, so `SET id = id + 1` works.
            moved.push((old_key.clone(), new_key.clone()));
            moves.push(Mutation::Delete { key: old_key });
            writes.push(Mutation::Insert {
                key: new_key,
                value: encoded,
            });
        }
        returned.push(row.values);
    }
    let count = returned.len() as u64;
    let mut mutations = checks;
    mutations.extend(moves);
    mutations.extend(writes);
    Ok(PlannedWrites {
        mutations,
        returned,
        count: Some(count),
        moves: moved,
    })
}

fn delete(rows: Vec<InputRow>, snapshot: &dyn Snapshot) -> Result<PlannedWrites> {
    let mut seen = HashSet::new();
    let mut mutations = Vec::new();
    let mut returned = Vec::new();
    for row in rows {
        let key = row
            .source_key
            .ok_or_else(|| Error::new(sqlstate::INTERNAL_ERROR, "DELETE row without key"))?;
        if !seen.insert(key.clone()) {
            continue;
        }
        let expected = get(snapshot, &key)?;
        mutations.push(Mutation::Check {
            key: key.clone(),
            expected,
        });
        mutations.push(Mutation::Delete { key });
        returned.push(row.values);
    }
    let count = returned.len() as u64;
    Ok(PlannedWrites {
        mutations,
        returned,
        count: Some(count),
        moves: Vec::new(),
    })
}

fn get(snapshot: &dyn Snapshot, key: &[u8]) -> Result<Option<Vec<u8>>> {
    snapshot.get(Keyspace::Data, key).map_err(storage_error)
}

#[cfg(test)]
mod tests {
    use crate::testing::{database, exec, rows, run, sqlstate_of, Reply};

    #[tokio::test]
    async fn writes_count_their_rows_and_return_what_they_wrote() {
        let test = database().await;
        let mut s = test.session();
        exec(
            &mut s,
            "CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL)",
        )
        .await;
        assert_eq!(
            run(
                &mut s,
                "INSERT INTO t SELECT x, x * 10 FROM generate_series(1, 5) AS g(x)"
            )
            .await
            .unwrap(),
            Reply::Tag("INSERT 5".into())
        );
        assert_eq!(
            run(&mut s, "UPDATE t SET n = n + 1 WHERE id > 3")
                .await
                .unwrap(),
            Reply::Tag("UPDATE 2".into())
        );
        assert_eq!(
            rows(&mut s, "DELETE FROM t WHERE n > 40 RETURNING id, n").await,
            vec![
                vec!["4".to_string(), "41".to_string()],
                vec!["5".to_string(), "51".to_string()]
            ]
        );
        assert_eq!(
            sqlstate_of(&mut s, "INSERT INTO t VALUES (1, 0)").await,
            "23505"
        );
        assert_eq!(
            sqlstate_of(&mut s, "INSERT INTO t VALUES (9, NULL)").await,
            "23502"
        );
        assert_eq!(sqlstate_of(&mut s, "UPDATE t SET n = NULL").await, "23502");
        assert_eq!(
            rows(&mut s, "SELECT id, n FROM t ORDER BY id").await,
            vec![
                vec!["1".to_string(), "10".to_string()],
                vec!["2".to_string(), "20".to_string()],
                vec!["3".to_string(), "30".to_string()]
            ]
        );
    }

    #[tokio::test]
    async fn on_conflict_arbitrates_on_unique_constraints() {
        let test = database().await;
        let mut s = test.session();
        let strings = |rows: &[&[&str]]| -> Vec<Vec<String>> {
            rows.iter()
                .map(|row| row.iter().map(|v| v.to_string()).collect())
                .collect()
        };
        exec(
            &mut s,
            "CREATE TABLE u (id int PRIMARY KEY, email text UNIQUE, n int)",
        )
        .await;
        assert_eq!(
            sqlstate_of(
                &mut s,
                "INSERT INTO u VALUES (1, 'a', 1) ON CONFLICT (n) DO NOTHING"
            )
            .await,
            "42P10"
        );
        exec(&mut s, "INSERT INTO u VALUES (1, 'a', 1)").await;
        // Without a target, any unique constraint arbitrates, also between
        // the statement's own rows.
        assert_eq!(
            run(
                &mut s,
                "INSERT INTO u VALUES (2, 'a', 2), (3, 'b', 3), (4, 'b', 4) ON CONFLICT DO NOTHING"
            )
            .await
            .unwrap(),
            Reply::Tag("INSERT 1".into())
        );
        assert_eq!(
            rows(&mut s, "SELECT id, email, n FROM u ORDER BY id").await,
            strings(&[&["1", "a", "1"], &["3", "b", "3"]])
        );
        // DO UPDATE on the unique column updates the row that holds the value.
        assert_eq!(
            rows(
                &mut s,
                "INSERT INTO u VALUES (9, 'a', 100) ON CONFLICT (email) \
                 DO UPDATE SET n = excluded.n RETURNING id, email, n"
            )
            .await,
            strings(&[&["1", "a", "100"]])
        );
        assert_eq!(
            sqlstate_of(
                &mut s,
                "INSERT INTO u VALUES (10, 'b', 7), (11, 'b', 8) ON CONFLICT (email) \
                 DO UPDATE SET n = excluded.n"
            )
            .await,
            "21000"
        );
        exec(
            &mut s,
            "INSERT INTO u VALUES (12, 'c', 5) ON CONFLICT (email) DO UPDATE SET n = 0",
        )
        .await;
        // NULLs never conflict.
        exec(
            &mut s,
            "INSERT INTO u VALUES (13, NULL, 1), (14, NULL, 2) ON CONFLICT (email) DO NOTHING",
        )
        .await;
        assert_eq!(
            rows(&mut s, "SELECT count(*) FROM u").await,
            strings(&[&["5"]])
        );
        // The primary key still arbitrates on its own.
        exec(
            &mut s,
            "INSERT INTO u VALUES (1, 'z', 0) ON CONFLICT (id) DO NOTHING",
        )
        .await;
        assert_eq!(
            rows(&mut s, "SELECT email FROM u WHERE id = 1").await,
            strings(&[&["a"]])
        );
    }
}
