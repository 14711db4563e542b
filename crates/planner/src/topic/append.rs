//! Appends: rows become records, grouped per partition (by the hash of the
//! partition key, or round-robin) into one `Mutation::Append` each, and
//! proposed through the context.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_engine::{keycode, row, Value};
use sluice_raftstore::Mutation;
use sluice_stream::{topic as log, BatchBuilder};

use super::records::user_kinds;
use super::stats::append_size;
use crate::catalog::TableDef;
use crate::context::Context;
use crate::error::{sqlstate, stream_error, Error, Result};

/// Round-robin partition choice for topics without a partition key.
static ROUND_ROBIN: AtomicU64 = AtomicU64::new(0);

/// The appends of one statement.
pub(crate) struct AppendPlan {
    mutations: Vec<Mutation>,
    /// Per mutation: its partition and the rows (indexes into the input)
    /// it holds, in record order.
    layout: Vec<(u32, Vec<usize>)>,
    timestamp_us: i64,
}

/// The appends for rows given in table order (system columns NULL).
fn append_mutations(def: &TableDef, rows: &[Vec<Value>]) -> Result<AppendPlan> {
    let options = def.topic.as_ref().ok_or_else(|| {
        Error::new(
            sqlstate::INTERNAL_ERROR,
            "append to a table that is not a topic",
        )
    })?;
    let users = def.user_columns().len();
    let kinds = user_kinds(def);
    for row in rows {
        for (column, value) in def.columns[users..].iter().zip(&row[users..]) {
            if !value.is_null() {
                return Err(Error::new(
                    sqlstate::GENERATED_ALWAYS,
                    format!(
                        "cannot insert a non-DEFAULT value into column \"{}\"",
                        column.name
                    ),
                )
                .with_detail("Topics assign _partition, _offset and _timestamp to each record."));
            }
        }
    }
    let key_column = match &options.partition_key {
        Some(name) => Some(def.column_index(name).ok_or_else(|| {
            Error::new(
                sqlstate::UNDEFINED_COLUMN,
                format!("partition_key column \"{name}\" does not exist"),
            )
        })?),
        None => None,
    };
    let partitions = options.partitions.max(1);
    let mut by_partition: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    let first_turn = ROUND_ROBIN.fetch_add(1, Ordering::Relaxed);
    for (i, row) in rows.iter().enumerate() {
        let partition = match key_column {
            Some(column) => {
                let mut key = Vec::new();
                keycode::encode_value(&mut key, &row[column])
                    .map_err(|e| Error::new(sqlstate::INTERNAL_ERROR, e.to_string()))?;
                log::partition_for_key(&key, partitions)
            }
            // One statement's rows stay together in one partition (one batch),
            // and statements take turns.
            None => (first_turn % u64::from(partitions)) as u32,
        };
        by_partition.entry(partition).or_default().push(i);
    }
    let timestamp = now_micros();
    let mut mutations = Vec::new();
    let mut layout = Vec::new();
    let mut record = Vec::new();
    for (partition, indexes) in by_partition {
        let mut batch = BatchBuilder::new();
        let mut held = Vec::new();
        for (n, &i) in indexes.iter().enumerate() {
            record.clear();
            row::encode_row_into(&mut record, &rows[i][..users], &kinds)
                .map_err(|e| Error::new(sqlstate::INTERNAL_ERROR, format!("encode record: {e}")))?;
            if batch.is_empty() {
                // A statement's rows are usually alike: sized by its first
                // record, a megabyte batch is not copied at every doubling.
                let rest = (4 + record.len()) * (indexes.len() - n);
                batch.reserve(rest.min(APPEND_BATCH_BYTES));
            }
            batch.push(&record);
            held.push(i);
            // Keep batches well inside one Raft command.
            if batch.payload_bytes() >= APPEND_BATCH_BYTES {
                let full = std::mem::take(&mut batch);
                mutations.push(
                    log::append(def.id, partition, full, timestamp, options.compression)
                        .map_err(stream_error)?,
                );
                layout.push((partition, std::mem::take(&mut held)));
            }
        }
        if !batch.is_empty() {
            mutations.push(
                log::append(def.id, partition, batch, timestamp, options.compression)
                    .map_err(stream_error)?,
            );
            layout.push((partition, held));
        }
    }
    Ok(AppendPlan {
        mutations,
        layout,
        timestamp_us: timestamp,
    })
}

/// Appends `rows` (table order, system columns NULL) through the
/// statement's path to Raft (the open block, if any) and counts them once
/// acknowledged (in a block, COMMIT counts them).
pub(crate) async fn propose_appends(
    session: &Context,
    def: &TableDef,
    rows: &[Vec<Value>],
) -> Result<(AppendPlan, sluice_raftstore::ApplyOutcome)> {
    let mut plan = append_mutations(def, rows)?;
    let mutations = std::mem::take(&mut plan.mutations);
    let size = append_size(&mutations);
    let outcome = session.propose(def, mutations).await?;
    if session.transaction_state() == crate::TransactionState::Idle {
        session.db.topics.appended(size);
    }
    Ok((plan, outcome))
}

/// Records of one statement per batch before a new batch is started.
const APPEND_BATCH_BYTES: usize = 4 << 20;

pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Fills the system columns of appended rows (for RETURNING): the offsets
/// from the apply outcome's first offset per append. Inside a transaction
/// block they are not known before COMMIT and stay NULL.
pub(crate) fn fill_system_columns(
    def: &TableDef,
    rows: &mut [Vec<Value>],
    plan: &AppendPlan,
    firsts: &[u64],
) {
    let users = def.user_columns().len();
    for (i, (partition, held)) in plan.layout.iter().enumerate() {
        for (n, &row) in held.iter().enumerate() {
            rows[row][users] = Value::Int32(*partition as i32);
            if let Some(first) = firsts.get(i) {
                rows[row][users + 1] = Value::Int64((first + n as u64) as i64);
            }
            rows[row][users + 2] = Value::TimestampTz(plan.timestamp_us);
        }
    }
}

// The topic as a table
