//! Row encoding: the compact, versioned bytes stored as the value of a row's
//! key. Keys use [`crate::keycode`] instead, because only keys need to sort.
//!
//! **Hot path.** Every inserted, updated and scanned row passes through
//! [`encode_row`] / [`decode_row`]. Keep them free of per-column
//! allocation other than the decoded strings themselves; callers that
//! process many rows reuse buffers through [`encode_row_into`] and
//! [`decode_row_into`].
//!
//! # Byte format (version 1)
//!
//! | bytes | content |
//! |---|---|
//! | 1 | format version, [`ROW_FORMAT_VERSION`] = `0x01` |
//! | 1–10 | `n`, the number of stored columns, unsigned LEB128 |
//! | ⌈n/8⌉ | null bitmap: bit `i % 8` (least significant first) of byte `i / 8` is set when column `i` is NULL; bits past `n` are zero |
//! | … | each non-NULL column in column order, encoded by its kind as below |
//!
//! | kind | bytes |
//! |---|---|
//! | `Bool` | 1: `0x00` false, `0x01` true |
//! | `Int16` / `Int32` / `Int64` | 2 / 4 / 8, little-endian |
//! | `Float32` / `Float64` | 4 / 8, IEEE-754 bits little-endian (NaN payloads and -0.0 kept exactly) |
//! | `Decimal { scale }` | the `i128` mantissa zig-zag encoded, unsigned LEB128 (1–19 bytes); the scale is the column's |
//! | `Text` / `Bytes` | length as unsigned LEB128, then the bytes (text is UTF-8) |
//! | `Date` | 4, `i32` days little-endian |
//! | `Time` / `Timestamp` / `TimestampTz` | 8, `i64` microseconds little-endian |
//! | `Interval` | 16: months `i32`, days `i32`, micros `i64`, little-endian |
//! | `Uuid` | 16, as they are |
//!
//! The column count makes `ALTER TABLE ADD COLUMN` free: rows written before
//! it store fewer columns, [`decode_row`] returns only those, and the caller
//! fills in the new column's default. A new incompatible layout gets a new
//! version byte; a decoder that meets a version it does not know refuses it
//! as [`Error::Corrupt`] rather than guessing.

use crate::value::{Value, ValueKind};
use crate::{Error, Result};

/// The version byte written by [`encode_row`].
pub const ROW_FORMAT_VERSION: u8 = 1;

/// Encodes one row. `values` and `kinds` are the table's columns in order;
/// a value that does not fit its column's kind is an [`Error::Encode`].
pub fn encode_row(values: &[Value], kinds: &[ValueKind]) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(estimated_len(values));
    encode_row_into(&mut buf, values, kinds)?;
    Ok(buf)
}

/// Like [`encode_row`], appending to `buf`. On error `buf` may hold a
/// partial row after its original content.
pub fn encode_row_into(buf: &mut Vec<u8>, values: &[Value], kinds: &[ValueKind]) -> Result<()> {
    if values.len() != kinds.len() {
        return Err(Error::Encode(format!(
            "row has {} values for {} columns",
            values.len(),
            kinds.len()
        )));
    }
    buf.push(ROW_FORMAT_VERSION);
    put_varint(buf, values.len() as u64);
    let bitmap_start = buf.len();
    buf.resize(bitmap_start + values.len().div_ceil(8), 0);
    for (i, (value, kind)) in values.iter().zip(kinds).enumerate() {
        if !value.fits(*kind) {
            return Err(Error::Encode(format!(
                "column {i}: {value:?} is not a {kind:?}"
            )));
        }
        match value {
            Value::Null => buf[bitmap_start + i / 8] |= 1 << (i % 8),
            Value::Bool(b) => buf.push(u8::from(*b)),
            Value::Int16(v) => buf.extend_from_slice(&v.to_le_bytes()),
            Value::Int32(v) | Value::Date(v) => buf.extend_from_slice(&v.to_le_bytes()),
            Value::Int64(v) | Value::Time(v) | Value::Timestamp(v) | Value::TimestampTz(v) => {
                buf.extend_from_slice(&v.to_le_bytes())
            }
            Value::Float32(v) => buf.extend_from_slice(&v.to_bits().to_le_bytes()),
            Value::Float64(v) => buf.extend_from_slice(&v.to_bits().to_le_bytes()),
            Value::Decimal(m) => put_varint_u128(buf, zigzag(*m)),
            Value::Text(s) => {
                put_varint(buf, s.len() as u64);
                buf.extend_from_slice(s.as_bytes());
            }
            Value::Bytes(b) => {
                put_varint(buf, b.len() as u64);
                buf.extend_from_slice(b);
            }
            Value::Interval {
                months,
                days,
                micros,
            } => {
                buf.extend_from_slice(&months.to_le_bytes());
                buf.extend_from_slice(&days.to_le_bytes());
                buf.extend_from_slice(&micros.to_le_bytes());
            }
            Value::Uuid(u) => buf.extend_from_slice(u),
        }
    }
    Ok(())
}

/// Decodes a row stored for columns of `kinds`. Returns one value per
/// stored column, at most `kinds.len()`: a row written before a column was
/// added has fewer, and the caller pads it. Stored columns beyond `kinds`
/// are not decoded.
pub fn decode_row(bytes: &[u8], kinds: &[ValueKind]) -> Result<Vec<Value>> {
    let mut values = Vec::new();
    decode_row_into(bytes, kinds, &mut values)?;
    Ok(values)
}

/// Like [`decode_row`], replacing the content of `out` so that a scan can
/// reuse one vector. On error `out` holds an unspecified prefix of the row.
pub fn decode_row_into(bytes: &[u8], kinds: &[ValueKind], out: &mut Vec<Value>) -> Result<()> {
    out.clear();
    let mut input = bytes;
    let version = take::<1>(&mut input)?[0];
    if version != ROW_FORMAT_VERSION {
        return Err(Error::Corrupt(format!(
            "unknown row format version {version}"
        )));
    }
    let stored = get_varint(&mut input)?;
    let bitmap_len = stored.div_ceil(8);
    if bitmap_len > input.len() as u64 {
        return Err(Error::Corrupt(format!(
            "row claims {stored} columns in {} bytes",
            bytes.len()
        )));
    }
    // Bounded by the input length just checked, so these casts cannot truncate.
    let stored = stored as usize;
    let (bitmap, mut input) = input.split_at(bitmap_len as usize);
    let used_bits = stored % 8;
    if used_bits > 0 && bitmap[bitmap.len() - 1] >> used_bits != 0 {
        return Err(Error::Corrupt(
            "row null bitmap has bits past the last column".into(),
        ));
    }
    let count = stored.min(kinds.len());
    out.reserve(count);
    for (i, kind) in kinds[..count].iter().enumerate() {
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            out.push(Value::Null);
            continue;
        }
        out.push(decode_column(&mut input, *kind)?);
    }
    if stored <= kinds.len() && !input.is_empty() {
        return Err(Error::Corrupt(format!(
            "{} bytes after the last row column",
            input.len()
        )));
    }
    Ok(())
}

fn decode_column(input: &mut &[u8], kind: ValueKind) -> Result<Value> {
    Ok(match kind {
        ValueKind::Bool => match take::<1>(input)?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            other => return Err(Error::Corrupt(format!("row bool byte {other:#04x}"))),
        },
        ValueKind::Int16 => Value::Int16(i16::from_le_bytes(take(input)?)),
        ValueKind::Int32 => Value::Int32(i32::from_le_bytes(take(input)?)),
        ValueKind::Int64 => Value::Int64(i64::from_le_bytes(take(input)?)),
        ValueKind::Float32 => Value::Float32(f32::from_bits(u32::from_le_bytes(take(input)?))),
        ValueKind::Float64 => Value::Float64(f64::from_bits(u64::from_le_bytes(take(input)?))),
        ValueKind::Decimal { .. } => Value::Decimal(unzigzag(get_varint_u128(input)?)),
        ValueKind::Text => {
            let bytes = get_length_prefixed(input)?;
            let text = std::str::from_utf8(bytes)
                .map_err(|_| Error::Corrupt("row text is not UTF-8".into()))?;
            Value::Text(text.to_owned())
        }
        ValueKind::Bytes => Value::Bytes(get_length_prefixed(input)?.to_vec()),
        ValueKind::Date => Value::Date(i32::from_le_bytes(take(input)?)),
        ValueKind::Time => Value::Time(i64::from_le_bytes(take(input)?)),
        ValueKind::Timestamp => Value::Timestamp(i64::from_le_bytes(take(input)?)),
        ValueKind::TimestampTz => Value::TimestampTz(i64::from_le_bytes(take(input)?)),
        ValueKind::Interval => Value::Interval {
            months: i32::from_le_bytes(take(input)?),
            days: i32::from_le_bytes(take(input)?),
            micros: i64::from_le_bytes(take(input)?),
        },
        ValueKind::Uuid => Value::Uuid(take(input)?),
    })
}

fn estimated_len(values: &[Value]) -> usize {
    let payload: usize = values
        .iter()
        .map(|v| match v {
            Value::Text(s) => s.len() + 2,
            Value::Bytes(b) => b.len() + 2,
            Value::Interval { .. } | Value::Uuid(_) | Value::Decimal(_) => 16,
            _ => 8,
        })
        .sum();
    2 + values.len().div_ceil(8) + payload
}

fn take<const N: usize>(input: &mut &[u8]) -> Result<[u8; N]> {
    let Some((head, rest)) = input.split_first_chunk::<N>() else {
        return Err(Error::Corrupt(format!(
            "row truncated: need {N} bytes, {} left",
            input.len()
        )));
    };
    *input = rest;
    Ok(*head)
}

fn get_length_prefixed<'a>(input: &mut &'a [u8]) -> Result<&'a [u8]> {
    let len = get_varint(input)?;
    if len > input.len() as u64 {
        return Err(Error::Corrupt(format!(
            "row string of {len} bytes with {} left",
            input.len()
        )));
    }
    let (head, rest) = input.split_at(len as usize);
    *input = rest;
    Ok(head)
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_varint_u128(buf: &mut Vec<u8>, mut v: u128) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn get_varint(input: &mut &[u8]) -> Result<u64> {
    let v = get_varint_u128(input)?;
    u64::try_from(v).map_err(|_| Error::Corrupt("row varint exceeds 64 bits".into()))
}

fn get_varint_u128(input: &mut &[u8]) -> Result<u128> {
    let mut v: u128 = 0;
    for shift in (0..128).step_by(7) {
        let byte = take::<1>(input)?[0];
        let bits = u128::from(byte & 0x7f);
        // The 19th byte may only carry the top two bits of a u128.
        if shift == 126 && bits > 0b11 {
            return Err(Error::Corrupt("row varint exceeds 128 bits".into()));
        }
        v |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Error::Corrupt("row varint exceeds 128 bits".into()))
}

fn zigzag(v: i128) -> u128 {
    ((v << 1) ^ (v >> 127)) as u128
}

fn unzigzag(v: u128) -> i128 {
    (v >> 1) as i128 ^ -((v & 1) as i128)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn all_kinds_row() -> (Vec<Value>, Vec<ValueKind>) {
        let row = vec![
            (Value::Bool(true), ValueKind::Bool),
            (Value::Int16(-2), ValueKind::Int16),
            (Value::Int32(i32::MIN), ValueKind::Int32),
            (Value::Int64(i64::MAX), ValueKind::Int64),
            (Value::Float32(-0.0), ValueKind::Float32),
            (Value::Float64(f64::NAN), ValueKind::Float64),
            (Value::Decimal(i128::MIN), ValueKind::Decimal { scale: 4 }),
            (Value::Decimal(i128::MAX), ValueKind::Decimal { scale: 0 }),
            (Value::Decimal(-12345), ValueKind::Decimal { scale: 2 }),
            (Value::Text("héllo\0".into()), ValueKind::Text),
            (Value::Bytes(vec![0, 255, 7]), ValueKind::Bytes),
            (Value::Date(-719_528), ValueKind::Date),
            (Value::Time(86_399_999_999), ValueKind::Time),
            (Value::Timestamp(-1), ValueKind::Timestamp),
            (
                Value::TimestampTz(1_700_000_000_000_000),
                ValueKind::TimestampTz,
            ),
            (
                Value::Interval {
                    months: -1,
                    days: 40,
                    micros: i64::MIN,
                },
                ValueKind::Interval,
            ),
            (Value::Uuid([9; 16]), ValueKind::Uuid),
            (Value::Text(String::new()), ValueKind::Text),
        ];
        row.into_iter().unzip()
    }

    fn assert_rows_equal(got: &[Value], want: &[Value]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            match (g, w) {
                (Value::Float32(a), Value::Float32(b)) => assert_eq!(a.to_bits(), b.to_bits()),
                (Value::Float64(a), Value::Float64(b)) => assert_eq!(a.to_bits(), b.to_bits()),
                _ => assert_eq!(g, w),
            }
        }
    }

    #[test]
    fn every_kind_round_trips_with_and_without_nulls() {
        let (values, kinds) = all_kinds_row();
        let bytes = encode_row(&values, &kinds).unwrap();
        assert_eq!(bytes[0], ROW_FORMAT_VERSION);
        assert_rows_equal(&decode_row(&bytes, &kinds).unwrap(), &values);

        // Every subset of NULL columns in a sliding pattern, including all NULL.
        for step in 1..=values.len() {
            let with_nulls: Vec<Value> = values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    if i % step == 0 {
                        Value::Null
                    } else {
                        v.clone()
                    }
                })
                .collect();
            let bytes = encode_row(&with_nulls, &kinds).unwrap();
            assert_rows_equal(&decode_row(&bytes, &kinds).unwrap(), &with_nulls);
        }
        let all_null = vec![Value::Null; kinds.len()];
        let bytes = encode_row(&all_null, &kinds).unwrap();
        assert_eq!(bytes.len(), 1 + 1 + kinds.len().div_ceil(8));
        assert_rows_equal(&decode_row(&bytes, &kinds).unwrap(), &all_null);
    }

    #[test]
    fn empty_row_round_trips() {
        let bytes = encode_row(&[], &[]).unwrap();
        assert_eq!(bytes, vec![ROW_FORMAT_VERSION, 0]);
        assert!(decode_row(&bytes, &[ValueKind::Int32]).unwrap().is_empty());
    }

    #[test]
    fn rows_written_before_add_column_decode_to_their_stored_columns() {
        let old_kinds = [ValueKind::Int64, ValueKind::Text];
        let old = [Value::Int64(1), Value::Text("a".into())];
        let bytes = encode_row(&old, &old_kinds).unwrap();
        let new_kinds = [ValueKind::Int64, ValueKind::Text, ValueKind::Bool];
        assert_eq!(decode_row(&bytes, &new_kinds).unwrap(), old.to_vec());
        // A reader that knows fewer columns stops after them.
        assert_eq!(
            decode_row(&bytes, &old_kinds[..1]).unwrap(),
            vec![Value::Int64(1)]
        );
    }

    #[test]
    fn values_that_do_not_fit_are_refused() {
        let err = encode_row(&[Value::Int32(1)], &[ValueKind::Int64]).unwrap_err();
        assert!(matches!(err, Error::Encode(_)));
        let err = encode_row(&[Value::Int32(1)], &[]).unwrap_err();
        assert!(matches!(err, Error::Encode(_)));
    }

    #[test]
    fn unknown_version_and_trailing_bytes_are_corrupt() {
        let kinds = [ValueKind::Int32];
        let mut bytes = encode_row(&[Value::Int32(5)], &kinds).unwrap();
        bytes.push(0);
        assert!(matches!(decode_row(&bytes, &kinds), Err(Error::Corrupt(_))));
        bytes.pop();
        bytes[0] = 2;
        assert!(matches!(decode_row(&bytes, &kinds), Err(Error::Corrupt(_))));
        assert!(matches!(decode_row(&[], &kinds), Err(Error::Corrupt(_))));
        // Bits set past the column count.
        assert!(matches!(
            decode_row(&[1, 1, 0b10], &kinds),
            Err(Error::Corrupt(_))
        ));
        // A column count far larger than the input.
        let huge = [
            1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert!(matches!(decode_row(&huge, &kinds), Err(Error::Corrupt(_))));
    }

    #[test]
    fn varints_round_trip_at_the_edges() {
        for v in [0u128, 1, 127, 128, u64::MAX as u128, u128::MAX] {
            let mut buf = Vec::new();
            put_varint_u128(&mut buf, v);
            let mut input = buf.as_slice();
            assert_eq!(get_varint_u128(&mut input).unwrap(), v);
            assert!(input.is_empty());
        }
        for v in [0i128, -1, 1, i128::MIN, i128::MAX] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        let mut too_long: &[u8] = &[0xff; 19];
        assert!(get_varint_u128(&mut too_long).is_err());
    }

    #[test]
    fn corrupt_inputs_never_panic() {
        let (values, kinds) = all_kinds_row();
        let good = encode_row(&values, &kinds).unwrap();
        // Every truncation is an error, never a panic or a short row.
        for len in 0..good.len() {
            assert!(
                decode_row(&good[..len], &kinds).is_err(),
                "truncated to {len}"
            );
        }
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..20_000 {
            let mut bytes = good.clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random();
            }
            let _ = decode_row(&bytes, &kinds);
            let len = rng.random_range(0..32);
            let garbage: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let _ = decode_row(&garbage, &kinds);
        }
    }
}
