//! Records as rows: a topic's record schema, and stored records decoded
//! into Arrow batches (`_partition, _offset, _timestamp, <columns>`).

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use sluice_engine::{row, Value, ValueKind};
use sluice_stream::Record;

use crate::catalog::TableDef;
use crate::error::{sqlstate, Error, Result};
use crate::types::{arrow_schema, rows_to_batch_projected};

/// Rows of a subscription: the system columns first, then the topic's own.
pub(crate) fn record_schema(def: &TableDef) -> SchemaRef {
    let user = def.user_columns();
    let system = &def.columns[user.len()..];
    arrow_schema(
        system
            .iter()
            .chain(user)
            .map(|c| (c.name.as_str(), c.ty, c.nullable)),
    )
}

pub(crate) fn user_kinds(def: &TableDef) -> Vec<ValueKind> {
    def.user_columns()
        .iter()
        .map(|c| c.ty.value_kind())
        .collect()
}

/// A record as a row in table order: the user columns, then `_partition`,
/// `_offset`, `_timestamp`.
fn record_row(def: &TableDef, kinds: &[ValueKind], record: &Record) -> Result<Vec<Value>> {
    let mut values = row::decode_row(&record.data, kinds).map_err(|e| {
        Error::new(
            sqlstate::DATA_CORRUPTED,
            format!(
                "decode record {}/{} of topic {}: {e}",
                record.partition,
                record.offset,
                def.qualified_name()
            ),
        )
    })?;
    // Records written before an added column (not possible yet) read NULL.
    values.resize(kinds.len(), Value::Null);
    values.push(Value::Int32(record.partition as i32));
    values.push(Value::Int64(record.offset as i64));
    values.push(Value::TimestampTz(record.timestamp_us));
    Ok(values)
}

/// Records as a batch of `schema`, whose columns are `projection` of the
/// table-order row.
pub(crate) fn records_to_batch(
    def: &TableDef,
    kinds: &[ValueKind],
    schema: &SchemaRef,
    projection: &[usize],
    records: &[Record],
) -> Result<RecordBatch> {
    let rows: Vec<Vec<Value>> = records
        .iter()
        .map(|r| record_row(def, kinds, r))
        .collect::<Result<_>>()?;
    let columns = rows_to_batch_projected(&def.types(), &rows, projection)?;
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options)
        .map_err(|e| Error::new(sqlstate::INTERNAL_ERROR, format!("build record batch: {e}")))
}

/// Records in subscription order: system columns, then the topic's own.
pub(crate) fn records_batch(
    def: &TableDef,
    schema: &SchemaRef,
    records: &[Record],
) -> Result<RecordBatch> {
    let users = def.user_columns().len();
    let projection: Vec<usize> = (users..users + 3).chain(0..users).collect();
    records_to_batch(def, &user_kinds(def), schema, &projection, records)
}

// Appends
