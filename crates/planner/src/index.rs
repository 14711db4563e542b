//! Secondary indexes: their entries, their upkeep on every write, and the
//! online build of CREATE INDEX.
//!
//! An index entry lives in the `Data` keyspace beside the rows:
//!
//! | key | value |
//! |---|---|
//! | `0x03 <index id u64> <indexed values> <row key suffix>` | the row's storage key |
//!
//! The indexed values use [`sluice_engine::keycode`]; a `DESC` column's
//! bytes are inverted (every byte `!b`), which reverses its order because
//! the encoding is self-delimiting (and puts NULLs first, PostgreSQL's
//! default for `DESC`). The row key suffix (the primary key, or the hidden
//! row id) makes every entry unique and orders equal values by key. A
//! unique index leaves the suffix off when no indexed value is NULL, and
//! writes such an entry with `Insert`: a second row with the same values
//! fails the command at apply with a duplicate key, on every replica, even
//! when the two writes came from different nodes at once.
//!
//! Upkeep is one mechanism for every writer: [`with_index_upkeep`] looks at
//! the row mutations a statement is about to propose and adds the index
//! deletes and puts they imply (the old row comes from the `Check` that
//! every update and delete already carries), plus a `Check` that the
//! table's definition is still the one the statement was planned with. A
//! statement planned before a CREATE or DROP INDEX therefore fails with
//! 40001 instead of writing rows without their entries.
//!
//! CREATE INDEX builds online in three commands (as F1 and CockroachDB do):
//! the index is first added `WriteOnly`, so every later write maintains it;
//! then the rows that existed before are backfilled page by page, each page
//! `Check`ing that its rows are unchanged (a page that raced with a write is
//! read again); finally the index becomes `Public` and scans may use it.

use std::collections::HashMap;

use sluice_engine::{prefix_successor, KeyRange, Keyspace, Snapshot};
use sluice_raftstore::Mutation;

pub use crate::catalog::{encode_indexed, index_prefix, IndexColumn, IndexDef, IndexState};
use crate::catalog::{encode_json, table_key, TableDef};
use crate::error::{sqlstate, Error, ErrorObject, Result};

/// The `Check` that pins a statement to the table definition it was planned with.
pub fn definition_check(table: &TableDef) -> Mutation {
    Mutation::Check {
        key: table_key(table.id),
        expected: Some(encode_json(table)),
    }
}

/// Adds to a statement's row mutations of `table` the definition check and
/// the index entries they imply (see the module docs).
pub fn with_index_upkeep(table: &TableDef, mutations: Vec<Mutation>) -> Result<Vec<Mutation>> {
    let mut out = Vec::with_capacity(mutations.len() + 1);
    // A built-in table's definition is code, not stored data.
    if !table.is_builtin() {
        out.push(definition_check(table));
    }
    if table.indexes.is_empty() {
        out.extend(mutations);
        return Ok(out);
    }
    let kinds = table.kinds();
    let old_rows: HashMap<&[u8], &[u8]> = mutations
        .iter()
        .filter_map(|m| match m {
            Mutation::Check {
                key,
                expected: Some(old),
            } => Some((key.as_slice(), old.as_slice())),
            _ => None,
        })
        .collect();
    let entries = |row_key: &[u8], bytes: &[u8]| -> Result<Vec<(Vec<u8>, bool)>> {
        let values = table.decode_row(&kinds, bytes)?;
        table
            .indexes
            .iter()
            .map(|index| index.entry(table, &values, row_key))
            .collect()
    };
    let mut removed = Vec::new();
    let mut added = Vec::new();
    for mutation in &mutations {
        let (key, new_row) = match mutation {
            Mutation::Insert { key, value } | Mutation::Put { key, value } => (key, Some(value)),
            Mutation::Delete { key } => (key, None),
            Mutation::Check { .. } | Mutation::CheckRange { .. } => continue,
            Mutation::InsertIfAbsent { .. }
            | Mutation::DeleteRange { .. }
            | Mutation::Append { .. }
            | Mutation::NextValues { .. } => return Err(Error::new(
                sqlstate::INTERNAL_ERROR,
                "conditional, range, append and sequence writes cannot maintain secondary indexes",
            )),
        };
        let old = match old_rows.get(key.as_slice()) {
            Some(old) => entries(key, old)?,
            None if matches!(mutation, Mutation::Insert { .. }) => Vec::new(),
            None => {
                return Err(Error::new(
                    sqlstate::INTERNAL_ERROR,
                    "a write to an indexed table must check the row it replaces",
                ))
            }
        };
        let new = match new_row {
            Some(bytes) => entries(key, bytes)?,
            None => Vec::new(),
        };
        for entry in &old {
            if !new.contains(entry) {
                removed.push(entry.0.clone());
            }
        }
        for entry in new {
            if !old.contains(&entry) {
                added.push((entry, key.clone()));
            }
        }
    }
    out.extend(mutations);
    // Every removal before any addition: a row moving onto another row's
    // old key may produce the very entry the other row gives up (and a
    // unique entry another row gives up may be taken in the same command).
    out.extend(removed.into_iter().map(|key| Mutation::Delete { key }));
    out.extend(added.into_iter().map(|((key, unique), value)| {
        if unique {
            Mutation::Insert { key, value }
        } else {
            Mutation::Put { key, value }
        }
    }));
    Ok(out)
}

/// The 23505 for a write whose row key or unique index entry `key` already
/// exists, naming the constraint and the values as PostgreSQL does.
pub fn duplicate_key_error(table: &TableDef, key: &[u8]) -> Error {
    let (constraint, values) = match table
        .indexes
        .iter()
        .find(|index| key.starts_with(&index.prefix()))
    {
        Some(index) => (index.name.clone(), index.describe_entry(table, key)),
        None => (
            format!("{}_pkey", table.name),
            Some(table.describe_key(key)),
        ),
    };
    let error = Error::new(
        sqlstate::UNIQUE_VIOLATION,
        format!("duplicate key value violates unique constraint \"{constraint}\""),
    )
    .with_object(ErrorObject {
        schema: Some(table.schema.clone()),
        table: Some(table.name.clone()),
        constraint: Some(constraint),
    });
    match values {
        Some(values) => error.with_detail(format!("Key {values} already exists.")),
        None => error,
    }
}

/// Removes every entry of the table's indexes (DROP TABLE, TRUNCATE).
pub fn drop_entries(table: &TableDef) -> Vec<Mutation> {
    table
        .indexes
        .iter()
        .map(|index| delete_all(index.id))
        .collect()
}

pub fn delete_all(index_id: u64) -> Mutation {
    let start = index_prefix(index_id);
    let end = prefix_successor(&start).expect("an index prefix has a successor");
    Mutation::DeleteRange { start, end }
}

/// One page of the backfill: entries for up to `limit` rows of `range`,
/// each guarded by a `Check` of the row it was built from, and the range
/// left to read.
pub fn backfill_page(
    table: &TableDef,
    index: &IndexDef,
    snapshot: &dyn Snapshot,
    range: &KeyRange,
    limit: usize,
) -> Result<(Vec<Mutation>, Option<KeyRange>)> {
    let page = snapshot
        .scan(Keyspace::Data, range, limit)
        .map_err(crate::error::storage_error)?;
    let kinds = table.kinds();
    let mut mutations = Vec::with_capacity(page.len() * 2 + 1);
    mutations.push(definition_check(table));
    for (key, bytes) in &page {
        let values = table.decode_row(&kinds, bytes)?;
        mutations.push(Mutation::Check {
            key: key.clone(),
            expected: Some(bytes.clone()),
        });
        let (entry, unique) = index.entry(table, &values, key)?;
        if !unique {
            mutations.push(Mutation::Put {
                key: entry,
                value: key.clone(),
            });
            continue;
        }
        // A row written since the index became write-only has its entry
        // already; any other row's entry there is a duplicate, which the
        // `Insert` reports at apply.
        let existing = snapshot
            .get(Keyspace::Data, &entry)
            .map_err(crate::error::storage_error)?;
        if existing.as_deref() != Some(key.as_slice()) {
            mutations.push(Mutation::Insert {
                key: entry,
                value: key.clone(),
            });
        }
    }
    let rest = match page.last() {
        Some((last, _)) if page.len() == limit => Some(range.resume_after(last)),
        _ => None,
    };
    Ok((mutations, rest))
}
