//! Typed values as the storage formats see them. The SQL type of a column
//! (varchar(n), json, numeric(p,s)) is the catalog's business; here only
//! the physical kind matters.

/// The physical kind of a stored value. Several SQL types share one kind
/// (text, varchar, char and json are all `Text`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueKind {
    Bool,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    /// Fixed-point: an `i128` mantissa at the column's scale.
    Decimal {
        scale: i8,
    },
    Text,
    Bytes,
    /// Days since 1970-01-01.
    Date,
    /// Microseconds since midnight.
    Time,
    /// Microseconds since 1970-01-01 00:00:00, no zone.
    Timestamp,
    /// Microseconds since 1970-01-01 00:00:00 UTC.
    TimestampTz,
    Interval,
    Uuid,
}

/// One value of a row or key. `Null` is valid for every kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    Float32(f32),
    Float64(f64),
    /// `mantissa * 10^-scale`; the scale is the column's.
    Decimal(i128),
    Text(String),
    Bytes(Vec<u8>),
    Date(i32),
    Time(i64),
    Timestamp(i64),
    TimestampTz(i64),
    Interval {
        months: i32,
        days: i32,
        micros: i64,
    },
    Uuid([u8; 16]),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Whether this value can be stored in a column of `kind`.
    pub fn fits(&self, kind: ValueKind) -> bool {
        matches!(
            (self, kind),
            (Value::Null, _)
                | (Value::Bool(_), ValueKind::Bool)
                | (Value::Int16(_), ValueKind::Int16)
                | (Value::Int32(_), ValueKind::Int32)
                | (Value::Int64(_), ValueKind::Int64)
                | (Value::Float32(_), ValueKind::Float32)
                | (Value::Float64(_), ValueKind::Float64)
                | (Value::Decimal(_), ValueKind::Decimal { .. })
                | (Value::Text(_), ValueKind::Text)
                | (Value::Bytes(_), ValueKind::Bytes)
                | (Value::Date(_), ValueKind::Date)
                | (Value::Time(_), ValueKind::Time)
                | (Value::Timestamp(_), ValueKind::Timestamp)
                | (Value::TimestampTz(_), ValueKind::TimestampTz)
                | (Value::Interval { .. }, ValueKind::Interval)
                | (Value::Uuid(_), ValueKind::Uuid)
        )
    }
}
