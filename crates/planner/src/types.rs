//! SQL column types and their two other faces: the Arrow type DataFusion
//! computes with, and the [`ValueKind`] the storage formats encode.
//!
//! Hot path: [`rows_to_batch`] and [`value_at`] convert every scanned and
//! every written row.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, BooleanArray, Date32Array, Decimal128Array,
    Float32Array, Float64Array, Int16Array, Int32Array, Int64Array, IntervalMonthDayNanoArray,
    LargeStringArray, StringArray, StringBuilder, StringViewArray, Time64MicrosecondArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{
    DataType, Field, IntervalMonthDayNano, IntervalUnit, Schema, SchemaRef, TimeUnit,
};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::sql::sqlparser::ast::{self, ExactNumberInfo};
use serde::{Deserialize, Serialize};
use sluice_engine::{Value, ValueKind};

use crate::error::{sqlstate, Error, Result};

/// The time zone Arrow timestamps with a zone carry: stored instants are UTC.
pub const UTC: &str = "+00:00";

/// Largest precision of a `numeric` column (Arrow's Decimal128 limit).
pub const MAX_NUMERIC_PRECISION: u8 = 38;
/// `numeric` without a declared precision: the widest Decimal128 with a
/// fixed scale, since DataFusion has no arbitrary-precision decimal.
pub const DEFAULT_NUMERIC: (u8, i8) = (38, 10);

/// A column's declared SQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SqlType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric { precision: u8, scale: i8 },
    Text,
    Varchar(Option<u32>),
    Char(u32),
    Bytea,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Interval,
    Uuid,
    Json,
    Jsonb,
}

impl SqlType {
    /// Resolves a parsed SQL type; unsupported types are a clear 0A000/42704.
    pub fn from_ast(data_type: &ast::DataType) -> Result<SqlType> {
        use ast::DataType as D;
        let ty = match data_type {
            D::Boolean | D::Bool => SqlType::Bool,
            D::SmallInt(_) | D::Int2(_) => SqlType::Int2,
            D::Int(_) | D::Integer(_) | D::Int4(_) => SqlType::Int4,
            D::BigInt(_) | D::Int8(_) => SqlType::Int8,
            D::Real | D::Float4 => SqlType::Float4,
            D::DoublePrecision | D::Float8 | D::Double(_) => SqlType::Float8,
            D::Float(info) => match info {
                ExactNumberInfo::Precision(p) | ExactNumberInfo::PrecisionAndScale(p, _)
                    if *p <= 24 =>
                {
                    SqlType::Float4
                }
                _ => SqlType::Float8,
            },
            D::Numeric(info) | D::Decimal(info) | D::Dec(info) => numeric_type(info)?,
            D::Text | D::String(_) => SqlType::Text,
            D::Varchar(len) | D::CharacterVarying(len) | D::CharVarying(len) => {
                SqlType::Varchar(char_length(len.as_ref())?)
            }
            D::Char(len) | D::Character(len) => {
                SqlType::Char(char_length(len.as_ref())?.unwrap_or(1))
            }
            D::Bytea => SqlType::Bytea,
            D::Date => SqlType::Date,
            D::Time(_, tz) => match tz {
                ast::TimezoneInfo::None | ast::TimezoneInfo::WithoutTimeZone => SqlType::Time,
                _ => {
                    return Err(Error::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "time with time zone is not supported; use timestamptz",
                    ))
                }
            },
            D::Timestamp(_, tz) => match tz {
                ast::TimezoneInfo::None | ast::TimezoneInfo::WithoutTimeZone => SqlType::Timestamp,
                ast::TimezoneInfo::WithTimeZone | ast::TimezoneInfo::Tz => SqlType::TimestampTz,
            },
            D::TimestampNtz(_) => SqlType::Timestamp,
            D::Interval { .. } => SqlType::Interval,
            D::Uuid => SqlType::Uuid,
            D::JSON => SqlType::Json,
            D::JSONB => SqlType::Jsonb,
            D::Custom(name, modifiers) if modifiers.is_empty() => {
                match name.to_string().to_ascii_lowercase().as_str() {
                    "timestamptz" => SqlType::TimestampTz,
                    "int2" => SqlType::Int2,
                    "int4" => SqlType::Int4,
                    "int8" => SqlType::Int8,
                    "float4" => SqlType::Float4,
                    "float8" => SqlType::Float8,
                    // Only a column's type (crate::sequence::serial_type).
                    "serial" | "bigserial" | "smallserial" | "serial2" | "serial4" | "serial8" => {
                        return Err(Error::new(
                            sqlstate::UNDEFINED_OBJECT,
                            format!("type \"{name}\" does not exist"),
                        ))
                    }
                    other => {
                        return Err(Error::new(
                            sqlstate::UNDEFINED_OBJECT,
                            format!("type \"{other}\" does not exist"),
                        ))
                    }
                }
            }
            other => {
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("type {other} is not supported"),
                ))
            }
        };
        Ok(ty)
    }

    pub fn arrow_type(self) -> DataType {
        match self {
            SqlType::Bool => DataType::Boolean,
            SqlType::Int2 => DataType::Int16,
            SqlType::Int4 => DataType::Int32,
            SqlType::Int8 => DataType::Int64,
            SqlType::Float4 => DataType::Float32,
            SqlType::Float8 => DataType::Float64,
            SqlType::Numeric { precision, scale } => DataType::Decimal128(precision, scale),
            SqlType::Text
            | SqlType::Varchar(_)
            | SqlType::Char(_)
            | SqlType::Json
            | SqlType::Jsonb
            | SqlType::Uuid => DataType::Utf8,
            SqlType::Bytea => DataType::Binary,
            SqlType::Date => DataType::Date32,
            SqlType::Time => DataType::Time64(TimeUnit::Microsecond),
            SqlType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            SqlType::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
            SqlType::Interval => DataType::Interval(IntervalUnit::MonthDayNano),
        }
    }

    pub fn value_kind(self) -> ValueKind {
        match self {
            SqlType::Bool => ValueKind::Bool,
            SqlType::Int2 => ValueKind::Int16,
            SqlType::Int4 => ValueKind::Int32,
            SqlType::Int8 => ValueKind::Int64,
            SqlType::Float4 => ValueKind::Float32,
            SqlType::Float8 => ValueKind::Float64,
            SqlType::Numeric { scale, .. } => ValueKind::Decimal { scale },
            SqlType::Text
            | SqlType::Varchar(_)
            | SqlType::Char(_)
            | SqlType::Json
            | SqlType::Jsonb => ValueKind::Text,
            SqlType::Bytea => ValueKind::Bytes,
            SqlType::Date => ValueKind::Date,
            SqlType::Time => ValueKind::Time,
            SqlType::Timestamp => ValueKind::Timestamp,
            SqlType::TimestampTz => ValueKind::TimestampTz,
            SqlType::Interval => ValueKind::Interval,
            SqlType::Uuid => ValueKind::Uuid,
        }
    }

    /// The name PostgreSQL's `format_type` prints, as `\d` shows it.
    pub fn pg_name(self) -> String {
        match self {
            SqlType::Bool => "boolean".into(),
            SqlType::Int2 => "smallint".into(),
            SqlType::Int4 => "integer".into(),
            SqlType::Int8 => "bigint".into(),
            SqlType::Float4 => "real".into(),
            SqlType::Float8 => "double precision".into(),
            SqlType::Numeric { precision, scale } => format!("numeric({precision},{scale})"),
            SqlType::Text => "text".into(),
            SqlType::Varchar(None) => "character varying".into(),
            SqlType::Varchar(Some(n)) => format!("character varying({n})"),
            SqlType::Char(n) => format!("character({n})"),
            SqlType::Bytea => "bytea".into(),
            SqlType::Date => "date".into(),
            SqlType::Time => "time without time zone".into(),
            SqlType::Timestamp => "timestamp without time zone".into(),
            SqlType::TimestampTz => "timestamp with time zone".into(),
            SqlType::Interval => "interval".into(),
            SqlType::Uuid => "uuid".into(),
            SqlType::Json => "json".into(),
            SqlType::Jsonb => "jsonb".into(),
        }
    }
}

fn numeric_type(info: &ExactNumberInfo) -> Result<SqlType> {
    let (precision, scale) = match info {
        ExactNumberInfo::None => {
            return Ok(SqlType::Numeric {
                precision: DEFAULT_NUMERIC.0,
                scale: DEFAULT_NUMERIC.1,
            })
        }
        ExactNumberInfo::Precision(p) => (*p, 0),
        ExactNumberInfo::PrecisionAndScale(p, s) => (*p, *s),
    };
    if precision == 0 || precision > MAX_NUMERIC_PRECISION as u64 {
        return Err(Error::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("NUMERIC precision {precision} must be between 1 and {MAX_NUMERIC_PRECISION}"),
        ));
    }
    if scale < 0 || scale as u64 > precision {
        return Err(Error::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("NUMERIC scale {scale} must be between 0 and precision {precision}"),
        ));
    }
    Ok(SqlType::Numeric {
        precision: precision as u8,
        scale: scale as i8,
    })
}

fn char_length(len: Option<&ast::CharacterLength>) -> Result<Option<u32>> {
    match len {
        None => Ok(None),
        Some(ast::CharacterLength::Max) => Ok(None),
        Some(ast::CharacterLength::IntegerLength { length, .. }) => {
            if *length == 0 || *length > 10_485_760 {
                return Err(Error::new(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    format!("length for type varchar must be between 1 and 10485760, got {length}"),
                ));
            }
            Ok(Some(*length as u32))
        }
    }
}

/// Builds the Arrow schema of a table's columns.
pub fn arrow_schema<'a>(columns: impl Iterator<Item = (&'a str, SqlType, bool)>) -> SchemaRef {
    let fields: Vec<Field> = columns
        .map(|(name, ty, nullable)| Field::new(name, ty.arrow_type(), nullable))
        .collect();
    Arc::new(Schema::new(fields))
}

/// Converts decoded rows (one `Vec<Value>` per row, in `types` order) into a batch.
pub fn rows_to_batch<R: AsRef<[Value]>>(
    schema: &SchemaRef,
    types: &[SqlType],
    rows: &[R],
) -> Result<RecordBatch> {
    let all: Vec<usize> = (0..types.len()).collect();
    let columns = rows_to_batch_projected(types, rows, &all)?;
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options)
        .map_err(|e| Error::new(sqlstate::INTERNAL_ERROR, format!("build record batch: {e}")))
}

/// The Arrow arrays of the columns `projection` selects from decoded rows.
pub fn rows_to_batch_projected<R: AsRef<[Value]>>(
    types: &[SqlType],
    rows: &[R],
    projection: &[usize],
) -> Result<Vec<ArrayRef>> {
    projection
        .iter()
        .map(|&index| {
            column_array(
                types[index],
                rows.iter()
                    .map(|row| row.as_ref().get(index).unwrap_or(&Value::Null)),
            )
        })
        .collect()
}

fn corrupt(ty: SqlType, value: &Value) -> Error {
    Error::new(
        sqlstate::DATA_CORRUPTED,
        format!(
            "stored value {value:?} does not match column type {}",
            ty.pg_name()
        ),
    )
}

macro_rules! primitive_column {
    ($values:expr, $array:ty, $variant:path, $ty:expr) => {{
        let mut out = Vec::new();
        for value in $values {
            out.push(match value {
                Value::Null => None,
                $variant(v) => Some(*v),
                other => return Err(corrupt($ty, other)),
            });
        }
        Arc::new(<$array>::from(out)) as ArrayRef
    }};
}

fn column_array<'a>(ty: SqlType, values: impl Iterator<Item = &'a Value>) -> Result<ArrayRef> {
    let array: ArrayRef = match ty {
        SqlType::Bool => primitive_column!(values, BooleanArray, Value::Bool, ty),
        SqlType::Int2 => primitive_column!(values, Int16Array, Value::Int16, ty),
        SqlType::Int4 => primitive_column!(values, Int32Array, Value::Int32, ty),
        SqlType::Int8 => primitive_column!(values, Int64Array, Value::Int64, ty),
        SqlType::Float4 => primitive_column!(values, Float32Array, Value::Float32, ty),
        SqlType::Float8 => primitive_column!(values, Float64Array, Value::Float64, ty),
        SqlType::Date => primitive_column!(values, Date32Array, Value::Date, ty),
        SqlType::Time => primitive_column!(values, Time64MicrosecondArray, Value::Time, ty),
        SqlType::Timestamp => {
            primitive_column!(values, TimestampMicrosecondArray, Value::Timestamp, ty)
        }
        SqlType::TimestampTz => {
            let mut out = Vec::new();
            for value in values {
                out.push(match value {
                    Value::Null => None,
                    Value::TimestampTz(v) => Some(*v),
                    other => return Err(corrupt(ty, other)),
                });
            }
            Arc::new(TimestampMicrosecondArray::from(out).with_timezone(UTC))
        }
        SqlType::Numeric { precision, scale } => {
            let mut out = Vec::new();
            for value in values {
                out.push(match value {
                    Value::Null => None,
                    Value::Decimal(v) => Some(*v),
                    other => return Err(corrupt(ty, other)),
                });
            }
            Arc::new(
                Decimal128Array::from(out)
                    .with_precision_and_scale(precision, scale)
                    .map_err(|e| Error::new(sqlstate::INTERNAL_ERROR, e.to_string()))?,
            )
        }
        SqlType::Interval => {
            let mut out = Vec::new();
            for value in values {
                out.push(match value {
                    Value::Null => None,
                    Value::Interval {
                        months,
                        days,
                        micros,
                    } => Some(IntervalMonthDayNano::new(
                        *months,
                        *days,
                        micros.saturating_mul(1000),
                    )),
                    other => return Err(corrupt(ty, other)),
                });
            }
            Arc::new(IntervalMonthDayNanoArray::from(out))
        }
        SqlType::Bytea => {
            let mut builder = BinaryBuilder::new();
            for value in values {
                match value {
                    Value::Null => builder.append_null(),
                    Value::Bytes(v) => builder.append_value(v),
                    other => return Err(corrupt(ty, other)),
                }
            }
            Arc::new(builder.finish())
        }
        SqlType::Uuid => {
            let mut builder = StringBuilder::new();
            for value in values {
                match value {
                    Value::Null => builder.append_null(),
                    Value::Uuid(bytes) => builder.append_value(format_uuid(bytes)),
                    other => return Err(corrupt(ty, other)),
                }
            }
            Arc::new(builder.finish())
        }
        SqlType::Text | SqlType::Varchar(_) | SqlType::Char(_) | SqlType::Json | SqlType::Jsonb => {
            let mut builder = StringBuilder::new();
            for value in values {
                match value {
                    Value::Null => builder.append_null(),
                    Value::Text(v) => builder.append_value(v),
                    other => return Err(corrupt(ty, other)),
                }
            }
            Arc::new(builder.finish())
        }
    };
    Ok(array)
}

/// Reads row `row` of `array` as a value for a column of type `ty`. The
/// array must already have the column's Arrow type (cast before calling);
/// text-typed constraints (varchar length, uuid and json syntax) are
/// enforced here, with PostgreSQL's SQLSTATEs.
pub fn value_at(array: &ArrayRef, row: usize, ty: SqlType, column: &str) -> Result<Value> {
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    let mismatch = || {
        Error::new(
            sqlstate::DATATYPE_MISMATCH,
            format!(
                "column \"{column}\" is of type {} but expression is of type {}",
                ty.pg_name(),
                array.data_type()
            ),
        )
    };
    macro_rules! get {
        ($array:ty) => {
            array
                .as_any()
                .downcast_ref::<$array>()
                .ok_or_else(mismatch)?
                .value(row)
        };
    }
    let value = match ty {
        SqlType::Bool => Value::Bool(get!(BooleanArray)),
        SqlType::Int2 => Value::Int16(get!(Int16Array)),
        SqlType::Int4 => Value::Int32(get!(Int32Array)),
        SqlType::Int8 => Value::Int64(get!(Int64Array)),
        SqlType::Float4 => Value::Float32(get!(Float32Array)),
        SqlType::Float8 => Value::Float64(get!(Float64Array)),
        SqlType::Numeric { .. } => Value::Decimal(get!(Decimal128Array)),
        SqlType::Date => Value::Date(get!(Date32Array)),
        SqlType::Time => Value::Time(get!(Time64MicrosecondArray)),
        SqlType::Timestamp => Value::Timestamp(get!(TimestampMicrosecondArray)),
        SqlType::TimestampTz => Value::TimestampTz(get!(TimestampMicrosecondArray)),
        SqlType::Interval => {
            let v = get!(IntervalMonthDayNanoArray);
            Value::Interval {
                months: v.months,
                days: v.days,
                micros: v.nanoseconds / 1000,
            }
        }
        SqlType::Bytea => Value::Bytes(get!(BinaryArray).to_vec()),
        SqlType::Text | SqlType::Varchar(_) => {
            text_value(string_at(array, row).ok_or_else(mismatch)?.to_owned(), ty)?
        }
        SqlType::Char(length) => {
            // PostgreSQL: trailing spaces beyond the length are dropped silently,
            // anything else too long is an error; shorter values are space-padded.
            let text = string_at(array, row).ok_or_else(mismatch)?;
            let trimmed = text.trim_end_matches(' ');
            check_length(trimmed, length, "character")?;
            let mut padded = trimmed.to_owned();
            let chars = trimmed.chars().count();
            padded.extend(std::iter::repeat_n(' ', length as usize - chars));
            Value::Text(padded)
        }
        SqlType::Uuid => Value::Uuid(parse_uuid(string_at(array, row).ok_or_else(mismatch)?)?),
        SqlType::Json | SqlType::Jsonb => {
            let text = string_at(array, row).ok_or_else(mismatch)?;
            if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
                return Err(Error::new(
                    sqlstate::INVALID_TEXT_REPRESENTATION,
                    format!("invalid input syntax for type json: {e}"),
                ));
            }
            Value::Text(text.to_owned())
        }
    };
    Ok(value)
}

/// `text` as the value of a `text` or `varchar` column of type `ty`, with the
/// checks [`value_at`] makes (a varchar's length).
pub(crate) fn text_value(text: String, ty: SqlType) -> Result<Value> {
    if let SqlType::Varchar(Some(limit)) = ty {
        check_length(&text, limit, "character varying")?;
    }
    Ok(Value::Text(text))
}

fn string_at(array: &ArrayRef, row: usize) -> Option<&str> {
    let any = array.as_any();
    if let Some(a) = any.downcast_ref::<StringArray>() {
        return Some(a.value(row));
    }
    if let Some(a) = any.downcast_ref::<StringViewArray>() {
        return Some(a.value(row));
    }
    any.downcast_ref::<LargeStringArray>().map(|a| a.value(row))
}

fn check_length(text: &str, limit: u32, type_name: &str) -> Result<()> {
    // Byte length bounds the character count from above: skip the count when it cannot exceed.
    if text.len() > limit as usize && text.chars().count() > limit as usize {
        return Err(Error::new(
            sqlstate::STRING_DATA_RIGHT_TRUNCATION,
            format!("value too long for type {type_name}({limit})"),
        ));
    }
    Ok(())
}

/// PostgreSQL's bytea input: `\\x` followed by hex digits, or the escape
/// format where `\\\\` is a backslash and `\\nnn` an octal byte.
pub fn decode_bytea(text: &str) -> Result<Vec<u8>> {
    let invalid = || {
        Error::new(
            sqlstate::INVALID_TEXT_REPRESENTATION,
            format!("invalid input syntax for type bytea: \"{text}\""),
        )
    };
    if let Some(hex) = text.strip_prefix("\\x") {
        let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        if !digits.len().is_multiple_of(2) {
            return Err(invalid());
        }
        return digits
            .chunks(2)
            .map(|pair| {
                std::str::from_utf8(pair)
                    .ok()
                    .and_then(|p| u8::from_str_radix(p, 16).ok())
                    .ok_or_else(invalid)
            })
            .collect();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
        } else if bytes.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let octal = bytes.get(i + 1..i + 4).ok_or_else(invalid)?;
            let value = std::str::from_utf8(octal)
                .ok()
                .filter(|o| o.bytes().all(|b| (b'0'..=b'7').contains(&b)))
                .and_then(|o| u16::from_str_radix(o, 8).ok())
                .filter(|v| *v <= 0xff)
                .ok_or_else(invalid)?;
            out.push(value as u8);
            i += 4;
        }
    }
    Ok(out)
}

pub fn format_uuid(bytes: &[u8; 16]) -> String {
    let mut out = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Parses a UUID in PostgreSQL's accepted spellings (hyphens optional, braces allowed).
pub fn parse_uuid(text: &str) -> Result<[u8; 16]> {
    let invalid = || {
        Error::new(
            sqlstate::INVALID_TEXT_REPRESENTATION,
            format!("invalid input syntax for type uuid: \"{text}\""),
        )
    };
    let trimmed = text.trim();
    let inner = trimmed
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(trimmed);
    let hex: Vec<u8> = inner.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return Err(invalid());
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let digits = std::str::from_utf8(pair).map_err(|_| invalid())?;
        out[i] = u8::from_str_radix(digits, 16).map_err(|_| invalid())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_round_trips_through_text() {
        let text = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        let bytes = parse_uuid(text).unwrap();
        assert_eq!(format_uuid(&bytes), text);
        assert_eq!(
            parse_uuid("{A0EEBC999C0B4EF8BB6D6BB9BD380A11}").unwrap(),
            bytes
        );
        assert_eq!(
            parse_uuid("nope").unwrap_err().code,
            sqlstate::INVALID_TEXT_REPRESENTATION
        );
    }

    #[test]
    fn bytea_input_accepts_hex_and_escape_formats() {
        assert_eq!(
            decode_bytea("\\xdeadBEEF").unwrap(),
            [0xde, 0xad, 0xbe, 0xef]
        );
        assert_eq!(decode_bytea("a\\\\b\\001").unwrap(), b"a\\b\x01");
        assert_eq!(
            decode_bytea("\\x414").unwrap_err().code,
            sqlstate::INVALID_TEXT_REPRESENTATION
        );
        assert!(decode_bytea("bad\\9").is_err());
    }

    #[test]
    fn varchar_limit_counts_characters_not_bytes() {
        assert!(check_length("äöü", 3, "character varying").is_ok());
        let err = check_length("abcd", 3, "character varying").unwrap_err();
        assert_eq!(err.code, sqlstate::STRING_DATA_RIGHT_TRUNCATION);
    }

    #[test]
    fn rows_convert_to_batches_with_nulls() {
        let types = [
            SqlType::Int8,
            SqlType::Text,
            SqlType::Numeric {
                precision: 12,
                scale: 2,
            },
        ];
        let schema = arrow_schema(
            [
                ("id", types[0], false),
                ("owner", types[1], true),
                ("balance", types[2], true),
            ]
            .into_iter(),
        );
        let rows = vec![
            vec![
                Value::Int64(1),
                Value::Text("ada".into()),
                Value::Decimal(10000),
            ],
            vec![Value::Int64(2), Value::Null, Value::Null],
        ];
        let batch = rows_to_batch(&schema, &types, &rows).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(
            value_at(batch.column(2), 0, types[2], "balance").unwrap(),
            Value::Decimal(10000)
        );
        assert_eq!(
            value_at(batch.column(1), 1, types[1], "owner").unwrap(),
            Value::Null
        );
    }
}
