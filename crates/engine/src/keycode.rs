//! Order-preserving key encoding: the byte order of an encoded tuple is the
//! SQL order of the tuple (first column, then the second, ...), so a
//! composite primary key scans in SQL order and a prefix of the columns is a
//! byte prefix of the key.
//!
//! Every value is self-delimiting: a decoder knows where it ends without a
//! length in front. That is what makes a tuple's encoding the concatenation
//! of its values, and what lets the MVCC version suffix planned for
//! interactive transactions be appended after the key later without
//! ambiguity. Do not add an encoding that needs to know where the key ends.
//!
//! # Byte format
//!
//! Each value starts with a marker byte:
//!
//! | marker | meaning |
//! |---|---|
//! | `0x00` | never written: reserved so that a caller can build a bound below every value |
//! | `0x01` | a value of the column's kind follows |
//! | `0x02` | NULL, no payload. NULL sorts after every value, as `ORDER BY … ASC` does in PostgreSQL and DataFusion (NULLS LAST) |
//! | `0xFF` | never written: reserved for a bound above every value |
//!
//! After `0x01` the payload depends on the column's [`ValueKind`]:
//!
//! | kind | payload |
//! |---|---|
//! | `Bool` | 1 byte: `0x00` false, `0x01` true |
//! | `Int16`, `Int32`, `Int64` | big-endian two's complement at the kind's width, sign bit flipped |
//! | `Float32`, `Float64` | IEEE-754 bits big-endian; negative: all bits flipped, otherwise the sign bit flipped. `-0.0` is written as `0.0` and every NaN as one canonical NaN, which sorts after `+inf` (PostgreSQL's order) |
//! | `Decimal { scale }` | the `i128` mantissa, 16 bytes big-endian, sign bit flipped. The scale is the column's, so mantissa order is value order |
//! | `Text`, `Bytes` | the bytes with each `0x00` written as `0x00 0xFF`, then the terminator `0x00 0x00`. Text compares by UTF-8 bytes, i.e. code point order (the "C" collation) |
//! | `Date` | `i32` days, as the integers |
//! | `Time`, `Timestamp`, `TimestampTz` | `i64` microseconds, as the integers |
//! | `Interval` | months `i32`, days `i32`, micros `i64`, each as the integers |
//! | `Uuid` | the 16 bytes as they are |
//!
//! Intervals order by (months, days, micros), which is how DataFusion
//! compares them; PostgreSQL instead compares the total span (a month counts
//! as 30 days), so `'1 month'` and `'30 days'` are equal there and distinct
//! here.
//!
//! [`encode_u64`] writes a plain 8-byte big-endian integer, for keys that
//! hold counters (Raft log indexes, offsets) rather than typed values.

use crate::value::{Value, ValueKind};
use crate::{Error, Result};

/// Marker of a present value.
pub const MARKER_VALUE: u8 = 0x01;
/// Marker of a NULL.
pub const MARKER_NULL: u8 = 0x02;

const ESCAPE: u8 = 0x00;
const ESCAPED_ZERO: u8 = 0xFF;
const TERMINATOR: u8 = 0x00;

/// Appends the order-preserving encoding of `value` to `buf`.
///
/// Every [`Value`] has a key encoding, so this does not fail today; the
/// `Result` leaves room for kinds that cannot be keys.
pub fn encode_value(buf: &mut Vec<u8>, value: &Value) -> Result<()> {
    if value.is_null() {
        buf.push(MARKER_NULL);
        return Ok(());
    }
    buf.push(MARKER_VALUE);
    match value {
        Value::Null => {}
        Value::Bool(b) => buf.push(u8::from(*b)),
        Value::Int16(v) => buf.extend_from_slice(&(*v as u16 ^ (1 << 15)).to_be_bytes()),
        Value::Int32(v) | Value::Date(v) => put_i32(buf, *v),
        Value::Int64(v) | Value::Time(v) | Value::Timestamp(v) | Value::TimestampTz(v) => {
            put_i64(buf, *v)
        }
        Value::Float32(v) => buf.extend_from_slice(&order_f32(*v).to_be_bytes()),
        Value::Float64(v) => buf.extend_from_slice(&order_f64(*v).to_be_bytes()),
        Value::Decimal(m) => buf.extend_from_slice(&(*m as u128 ^ (1 << 127)).to_be_bytes()),
        Value::Text(s) => put_escaped(buf, s.as_bytes()),
        Value::Bytes(b) => put_escaped(buf, b),
        Value::Interval {
            months,
            days,
            micros,
        } => {
            put_i32(buf, *months);
            put_i32(buf, *days);
            put_i64(buf, *micros);
        }
        Value::Uuid(u) => buf.extend_from_slice(u),
    }
    Ok(())
}

/// Decodes one value of `kind` from the front of `input` and advances
/// `input` past it.
pub fn decode_value(input: &mut &[u8], kind: ValueKind) -> Result<Value> {
    match take::<1>(input)?[0] {
        MARKER_NULL => return Ok(Value::Null),
        MARKER_VALUE => {}
        other => return Err(Error::Corrupt(format!("key value marker {other:#04x}"))),
    }
    Ok(match kind {
        ValueKind::Bool => match take::<1>(input)?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            other => return Err(Error::Corrupt(format!("key bool byte {other:#04x}"))),
        },
        ValueKind::Int16 => Value::Int16((u16::from_be_bytes(take(input)?) ^ (1 << 15)) as i16),
        ValueKind::Int32 => Value::Int32(get_i32(input)?),
        ValueKind::Int64 => Value::Int64(get_i64(input)?),
        ValueKind::Float32 => Value::Float32(unorder_f32(u32::from_be_bytes(take(input)?))),
        ValueKind::Float64 => Value::Float64(unorder_f64(u64::from_be_bytes(take(input)?))),
        ValueKind::Decimal { .. } => {
            Value::Decimal((u128::from_be_bytes(take(input)?) ^ (1 << 127)) as i128)
        }
        ValueKind::Text => {
            let bytes = get_escaped(input)?;
            Value::Text(
                String::from_utf8(bytes)
                    .map_err(|_| Error::Corrupt("key text is not UTF-8".into()))?,
            )
        }
        ValueKind::Bytes => Value::Bytes(get_escaped(input)?),
        ValueKind::Date => Value::Date(get_i32(input)?),
        ValueKind::Time => Value::Time(get_i64(input)?),
        ValueKind::Timestamp => Value::Timestamp(get_i64(input)?),
        ValueKind::TimestampTz => Value::TimestampTz(get_i64(input)?),
        ValueKind::Interval => Value::Interval {
            months: get_i32(input)?,
            days: get_i32(input)?,
            micros: get_i64(input)?,
        },
        ValueKind::Uuid => Value::Uuid(take(input)?),
    })
}

/// `prefix` followed by the encoding of each value in turn.
pub fn encode_key(prefix: &[u8], values: &[Value]) -> Result<Vec<u8>> {
    let mut key = Vec::with_capacity(prefix.len() + values.len() * 9);
    key.extend_from_slice(prefix);
    for value in values {
        encode_value(&mut key, value)?;
    }
    Ok(key)
}

/// Decodes a whole key (without its prefix) as one value per kind. Bytes
/// left over after the last value are an error; a caller that expects a
/// suffix decodes with [`decode_value`] instead.
pub fn decode_key(input: &[u8], kinds: &[ValueKind]) -> Result<Vec<Value>> {
    let mut rest = input;
    let mut values = Vec::with_capacity(kinds.len());
    for kind in kinds {
        values.push(decode_value(&mut rest, *kind)?);
    }
    if !rest.is_empty() {
        return Err(Error::Corrupt(format!(
            "{} bytes after the last key value",
            rest.len()
        )));
    }
    Ok(values)
}

/// Appends `v` as 8 bytes big-endian.
pub fn encode_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_be_bytes());
}

/// Reads 8 bytes big-endian from the front of `input` and advances it.
pub fn decode_u64(input: &mut &[u8]) -> Result<u64> {
    Ok(u64::from_be_bytes(take(input)?))
}

fn take<const N: usize>(input: &mut &[u8]) -> Result<[u8; N]> {
    let Some((head, rest)) = input.split_first_chunk::<N>() else {
        return Err(Error::Corrupt(format!(
            "key truncated: need {N} bytes, {} left",
            input.len()
        )));
    };
    *input = rest;
    Ok(*head)
}

fn put_i32(buf: &mut Vec<u8>, v: i32) {
    buf.extend_from_slice(&(v as u32 ^ (1 << 31)).to_be_bytes());
}

fn put_i64(buf: &mut Vec<u8>, v: i64) {
    buf.extend_from_slice(&(v as u64 ^ (1 << 63)).to_be_bytes());
}

fn get_i32(input: &mut &[u8]) -> Result<i32> {
    Ok((u32::from_be_bytes(take(input)?) ^ (1 << 31)) as i32)
}

fn get_i64(input: &mut &[u8]) -> Result<i64> {
    Ok((u64::from_be_bytes(take(input)?) ^ (1 << 63)) as i64)
}

fn order_f32(v: f32) -> u32 {
    let v = if v.is_nan() {
        f32::NAN
    } else if v == 0.0 {
        0.0
    } else {
        v
    };
    let bits = v.to_bits();
    if bits >> 31 == 1 {
        !bits
    } else {
        bits ^ (1 << 31)
    }
}

fn unorder_f32(bits: u32) -> f32 {
    f32::from_bits(if bits >> 31 == 1 {
        bits ^ (1 << 31)
    } else {
        !bits
    })
}

fn order_f64(v: f64) -> u64 {
    let v = if v.is_nan() {
        f64::NAN
    } else if v == 0.0 {
        0.0
    } else {
        v
    };
    let bits = v.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits ^ (1 << 63)
    }
}

fn unorder_f64(bits: u64) -> f64 {
    f64::from_bits(if bits >> 63 == 1 {
        bits ^ (1 << 63)
    } else {
        !bits
    })
}

fn put_escaped(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.reserve(bytes.len() + 2);
    for chunk in bytes.split_inclusive(|b| *b == ESCAPE) {
        buf.extend_from_slice(chunk);
        if chunk.last() == Some(&ESCAPE) {
            buf.push(ESCAPED_ZERO);
        }
    }
    buf.extend_from_slice(&[ESCAPE, TERMINATOR]);
}

fn get_escaped(input: &mut &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = *input;
    loop {
        let Some(pos) = rest.iter().position(|b| *b == ESCAPE) else {
            return Err(Error::Corrupt("key string has no terminator".into()));
        };
        out.extend_from_slice(&rest[..pos]);
        match rest.get(pos + 1) {
            Some(&TERMINATOR) => {
                *input = &rest[pos + 2..];
                return Ok(out);
            }
            Some(&ESCAPED_ZERO) => {
                out.push(0);
                rest = &rest[pos + 2..];
            }
            Some(other) => {
                return Err(Error::Corrupt(format!(
                    "key string escape 0x00 {other:#04x}"
                )));
            }
            None => return Err(Error::Corrupt("key string has no terminator".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    const KINDS: [ValueKind; 15] = [
        ValueKind::Bool,
        ValueKind::Int16,
        ValueKind::Int32,
        ValueKind::Int64,
        ValueKind::Float32,
        ValueKind::Float64,
        ValueKind::Decimal { scale: 2 },
        ValueKind::Text,
        ValueKind::Bytes,
        ValueKind::Date,
        ValueKind::Time,
        ValueKind::Timestamp,
        ValueKind::TimestampTz,
        ValueKind::Interval,
        ValueKind::Uuid,
    ];

    /// SQL order of two values of one kind: NULLS LAST, NaN above every
    /// number, -0.0 == 0.0, strings by bytes.
    fn sql_cmp(a: &Value, b: &Value) -> Ordering {
        fn f64_cmp(a: f64, b: f64) -> Ordering {
            match (a.is_nan(), b.is_nan()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
            }
        }
        match (a, b) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Null, _) => Ordering::Greater,
            (_, Value::Null) => Ordering::Less,
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Int16(a), Value::Int16(b)) => a.cmp(b),
            (Value::Int32(a), Value::Int32(b)) | (Value::Date(a), Value::Date(b)) => a.cmp(b),
            (Value::Int64(a), Value::Int64(b))
            | (Value::Time(a), Value::Time(b))
            | (Value::Timestamp(a), Value::Timestamp(b))
            | (Value::TimestampTz(a), Value::TimestampTz(b)) => a.cmp(b),
            (Value::Float32(a), Value::Float32(b)) => f64_cmp(f64::from(*a), f64::from(*b)),
            (Value::Float64(a), Value::Float64(b)) => f64_cmp(*a, *b),
            (Value::Decimal(a), Value::Decimal(b)) => a.cmp(b),
            (Value::Text(a), Value::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
            (
                Value::Interval {
                    months: m1,
                    days: d1,
                    micros: u1,
                },
                Value::Interval {
                    months: m2,
                    days: d2,
                    micros: u2,
                },
            ) => (m1, d1, u1).cmp(&(m2, d2, u2)),
            (Value::Uuid(a), Value::Uuid(b)) => a.cmp(b),
            (a, b) => panic!("kinds differ: {a:?} vs {b:?}"),
        }
    }

    fn tuple_cmp(a: &[Value], b: &[Value]) -> Ordering {
        a.iter()
            .zip(b)
            .map(|(a, b)| sql_cmp(a, b))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }

    fn random_f64(rng: &mut StdRng) -> f64 {
        match rng.random_range(0..10) {
            0 => {
                let special = [
                    0.0,
                    -0.0,
                    f64::NAN,
                    -f64::NAN,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                    1e-310,
                ];
                special[rng.random_range(0..special.len())]
            }
            1 => f64::from_bits(rng.random()),
            _ => rng.random_range(-1000.0..1000.0),
        }
    }

    fn random_bytes(rng: &mut StdRng) -> Vec<u8> {
        let len = rng.random_range(0..6);
        // A small alphabet with 0x00 and 0xff makes prefixes and escapes common.
        let alphabet = [0x00, 0x01, 0x61, 0xfe, 0xff];
        (0..len)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())])
            .collect()
    }

    fn random_value(rng: &mut StdRng, kind: ValueKind) -> Value {
        if rng.random_range(0..12) == 0 {
            return Value::Null;
        }
        // Small ranges make equal values and near neighbours likely.
        let small = rng.random_range(0..3) == 0;
        match kind {
            ValueKind::Bool => Value::Bool(rng.random()),
            ValueKind::Int16 => Value::Int16(if small {
                rng.random_range(-3..3)
            } else {
                rng.random()
            }),
            ValueKind::Int32 => Value::Int32(if small {
                rng.random_range(-3..3)
            } else {
                rng.random()
            }),
            ValueKind::Int64 => Value::Int64(if small {
                rng.random_range(-3..3)
            } else {
                rng.random()
            }),
            ValueKind::Float32 => Value::Float32(random_f64(rng) as f32),
            ValueKind::Float64 => Value::Float64(random_f64(rng)),
            ValueKind::Decimal { .. } => Value::Decimal(if small {
                rng.random_range(-3..3)
            } else {
                rng.random()
            }),
            ValueKind::Text => {
                let chars = ['\0', 'a', 'b', 'é', '\u{10ffff}', '\u{7f}'];
                let len = rng.random_range(0..5);
                Value::Text(
                    (0..len)
                        .map(|_| chars[rng.random_range(0..chars.len())])
                        .collect(),
                )
            }
            ValueKind::Bytes => Value::Bytes(random_bytes(rng)),
            ValueKind::Date => Value::Date(rng.random()),
            ValueKind::Time => Value::Time(rng.random_range(0..86_400_000_000)),
            ValueKind::Timestamp => Value::Timestamp(rng.random()),
            ValueKind::TimestampTz => Value::TimestampTz(rng.random()),
            ValueKind::Interval => Value::Interval {
                months: rng.random_range(-2..2),
                days: rng.random_range(-2..2),
                micros: if small {
                    rng.random_range(-2..2)
                } else {
                    rng.random()
                },
            },
            ValueKind::Uuid => {
                let mut u = [0u8; 16];
                u[0] = rng.random_range(0..3);
                u[15] = rng.random();
                Value::Uuid(u)
            }
        }
    }

    /// What decoding is expected to give back: keys normalise -0.0 and NaN.
    fn normalised(v: &Value) -> Value {
        match v {
            Value::Float32(f) if f.is_nan() => Value::Float32(f32::NAN),
            Value::Float32(f) if *f == 0.0 => Value::Float32(0.0),
            Value::Float64(f) if f.is_nan() => Value::Float64(f64::NAN),
            Value::Float64(f) if *f == 0.0 => Value::Float64(0.0),
            other => other.clone(),
        }
    }

    fn assert_same(a: &Value, b: &Value) {
        match (a, b) {
            (Value::Float32(x), Value::Float32(y)) => assert_eq!(x.to_bits(), y.to_bits()),
            (Value::Float64(x), Value::Float64(y)) => assert_eq!(x.to_bits(), y.to_bits()),
            _ => assert_eq!(a, b),
        }
    }

    #[test]
    fn single_values_sort_in_sql_order_and_round_trip() {
        let mut rng = StdRng::seed_from_u64(7);
        for kind in KINDS {
            for _ in 0..2000 {
                let a = random_value(&mut rng, kind);
                let b = random_value(&mut rng, kind);
                let ka = encode_key(b"", std::slice::from_ref(&a)).unwrap();
                let kb = encode_key(b"", std::slice::from_ref(&b)).unwrap();
                assert_eq!(ka.cmp(&kb), sql_cmp(&a, &b), "{kind:?}: {a:?} vs {b:?}");
                let back = decode_key(&ka, &[kind]).unwrap();
                assert_same(&back[0], &normalised(&a));
            }
        }
    }

    #[test]
    fn composite_tuples_sort_column_by_column() {
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..300 {
            let kinds: Vec<ValueKind> = (0..rng.random_range(1..4))
                .map(|_| KINDS[rng.random_range(0..KINDS.len())])
                .collect();
            for _ in 0..50 {
                let a: Vec<Value> = kinds.iter().map(|k| random_value(&mut rng, *k)).collect();
                let b: Vec<Value> = kinds.iter().map(|k| random_value(&mut rng, *k)).collect();
                let ka = encode_key(b"t1", &a).unwrap();
                let kb = encode_key(b"t1", &b).unwrap();
                assert_eq!(ka.cmp(&kb), tuple_cmp(&a, &b), "{kinds:?}: {a:?} vs {b:?}");
                let back = decode_key(&ka[2..], &kinds).unwrap();
                for (got, want) in back.iter().zip(&a) {
                    assert_same(got, &normalised(want));
                }
            }
        }
    }

    #[test]
    fn key_prefix_of_columns_is_byte_prefix() {
        let full = encode_key(b"p", &[Value::Text("a\0b".into()), Value::Int32(5)]).unwrap();
        let first = encode_key(b"p", &[Value::Text("a\0b".into())]).unwrap();
        assert!(full.starts_with(&first));
        // "a" must not be a byte prefix of "a\0b": the terminator differs from the escape.
        let shorter = encode_key(b"p", &[Value::Text("a".into())]).unwrap();
        assert!(!full.starts_with(&shorter));
        assert!(shorter < full);
    }

    #[test]
    fn nan_sorts_after_infinity_and_negative_zero_equals_zero() {
        let enc = |v: f64| encode_key(b"", &[Value::Float64(v)]).unwrap();
        assert!(enc(f64::NAN) > enc(f64::INFINITY));
        assert_eq!(enc(f64::NAN), enc(-f64::NAN));
        assert_eq!(enc(-0.0), enc(0.0));
        assert!(enc(f64::NEG_INFINITY) < enc(-1.0));
        assert!(enc(-f64::MIN_POSITIVE) < enc(0.0));
    }

    #[test]
    fn null_sorts_last() {
        let null = encode_key(b"", &[Value::Null]).unwrap();
        let max = encode_key(b"", &[Value::Int64(i64::MAX)]).unwrap();
        assert!(max < null);
        assert_eq!(
            decode_key(&null, &[ValueKind::Int64]).unwrap(),
            vec![Value::Null]
        );
    }

    #[test]
    fn decode_rejects_garbage_without_panicking() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..5000 {
            let len = rng.random_range(0..24);
            let bytes: Vec<u8> = (0..len).map(|_| rng.random_range(0..4) * 0x55).collect();
            let kind = KINDS[rng.random_range(0..KINDS.len())];
            let _ = decode_key(&bytes, &[kind, kind]);
        }
        assert!(matches!(
            decode_key(&[0x03], &[ValueKind::Int32]),
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(
            decode_key(&[0x01, 0x00], &[ValueKind::Int32]),
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(
            decode_key(&[0x01, b'a', 0x00], &[ValueKind::Text]),
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(
            decode_key(&[0x01, 0x00, 0x01], &[ValueKind::Bytes]),
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(
            decode_key(&[0x01, 0xc3, 0x00, 0x00], &[ValueKind::Text]),
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(
            decode_key(&[0x02, 0x02], &[ValueKind::Int32]),
            Err(Error::Corrupt(_))
        ));
    }

    #[test]
    fn u64_is_big_endian_and_advances() {
        let mut buf = Vec::new();
        encode_u64(&mut buf, 1);
        encode_u64(&mut buf, 256);
        assert_eq!(&buf[..8], &[0, 0, 0, 0, 0, 0, 0, 1]);
        let mut input = buf.as_slice();
        assert_eq!(decode_u64(&mut input).unwrap(), 1);
        assert_eq!(decode_u64(&mut input).unwrap(), 256);
        assert!(input.is_empty());
        assert!(decode_u64(&mut input).is_err());
    }
}
