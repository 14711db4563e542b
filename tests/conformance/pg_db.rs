//! A sqllogictest `AsyncDB` over tokio-postgres that uses only the extended query protocol, and a
//! runner that applies every record of a file and collects the failures instead of stopping at
//! the first one.
//!
//! Values are requested in binary (tokio-postgres always does) and rendered the way PostgreSQL's
//! own text output functions render them, so the expected results of the corpus, which pass
//! against PostgreSQL, apply unchanged.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqllogictest::{DBOutput, DefaultColumnType, Record, Runner};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, NoTls};

/// A record that runs longer than this counts as failed, so one pathological plan cannot hang
/// the whole suite.
const RECORD_TIMEOUT: Duration = Duration::from_secs(120);

/// How many failures a report keeps verbatim.
const KEPT_FAILURES: usize = 20;

#[derive(Debug)]
pub enum SltError {
    Postgres(tokio_postgres::Error),
    Decode(String),
}

impl fmt::Display for SltError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The plain Display of tokio_postgres::Error is just "db error"; the server's
            // message and SQLSTATE are what a failure report needs.
            SltError::Postgres(e) => match e.as_db_error() {
                Some(db) => write!(f, "{} (SQLSTATE {})", db.message(), db.code().code()),
                None => write!(f, "{e}"),
            },
            SltError::Decode(msg) => write!(f, "decode result value: {msg}"),
        }
    }
}

impl std::error::Error for SltError {}

impl From<tokio_postgres::Error> for SltError {
    fn from(e: tokio_postgres::Error) -> Self {
        SltError::Postgres(e)
    }
}

/// One connection; every statement goes through Parse/Bind/Execute.
pub struct PgDb {
    client: Client,
}

impl PgDb {
    pub async fn connect(conninfo: &str) -> Result<Self, SltError> {
        let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("conformance: connection ended: {e}");
            }
        });
        Ok(PgDb { client })
    }
}

#[async_trait]
impl sqllogictest::AsyncDB for PgDb {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let statement = self.client.prepare(sql).await?;
        if statement.columns().is_empty() {
            let count = self.client.execute(&statement, &[]).await?;
            return Ok(DBOutput::StatementComplete(count));
        }
        let types: Vec<DefaultColumnType> = statement
            .columns()
            .iter()
            .map(|c| column_type(c.type_()))
            .collect();
        let rows = self.client.query(&statement, &[]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut values = Vec::with_capacity(row.len());
            for i in 0..row.len() {
                let raw: Option<RawValue<'_>> = row
                    .try_get(i)
                    .map_err(|e| SltError::Decode(format!("column {i}: {e}")))?;
                values.push(match raw {
                    None => "NULL".to_string(),
                    Some(v) => render(v.ty, v.bytes).map_err(SltError::Decode)?,
                });
            }
            out.push(values);
        }
        Ok(DBOutput::Rows { types, rows: out })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "postgres-extended"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }
}

fn column_type(ty: &Type) -> DefaultColumnType {
    match *ty {
        Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => DefaultColumnType::Integer,
        Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC => DefaultColumnType::FloatingPoint,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            DefaultColumnType::Text
        }
        _ => DefaultColumnType::Any,
    }
}

/// A column value as the server sent it, of any type.
struct RawValue<'a> {
    ty: Type,
    bytes: &'a [u8],
}

impl<'a> FromSql<'a> for RawValue<'a> {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue {
            ty: ty.clone(),
            bytes: raw,
        })
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Renders a binary value as PostgreSQL's output function would, with sqllogictest's
/// `(empty)` for the empty string.
pub fn render(ty: Type, raw: &[u8]) -> Result<String, String> {
    let text = match ty {
        Type::BOOL => match raw {
            [0] => "f".to_string(),
            [_] => "t".to_string(),
            _ => return Err(format!("bool of {} bytes", raw.len())),
        },
        Type::INT2 => i16::from_be_bytes(fixed(raw)?).to_string(),
        Type::INT4 => i32::from_be_bytes(fixed(raw)?).to_string(),
        Type::INT8 => i64::from_be_bytes(fixed(raw)?).to_string(),
        Type::OID => u32::from_be_bytes(fixed(raw)?).to_string(),
        Type::FLOAT4 => format_float4(f32::from_be_bytes(fixed(raw)?)),
        Type::FLOAT8 => format_float8(f64::from_be_bytes(fixed(raw)?)),
        Type::NUMERIC => format_numeric(raw)?,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON => {
            utf8(raw)?
        }
        Type::JSONB => match raw.split_first() {
            Some((1, rest)) => utf8(rest)?,
            _ => return Err("jsonb without version 1 header".to_string()),
        },
        other => return Err(format!("unsupported result type {other}")),
    };
    Ok(if text.is_empty() {
        "(empty)".to_string()
    } else {
        text
    })
}

fn fixed<const N: usize>(raw: &[u8]) -> Result<[u8; N], String> {
    raw.try_into()
        .map_err(|_| format!("expected {N} bytes, got {}", raw.len()))
}

fn utf8(raw: &[u8]) -> Result<String, String> {
    String::from_utf8(raw.to_vec()).map_err(|e| e.to_string())
}

fn format_float8(v: f64) -> String {
    // float8out: shortest round-trip digits, exponent form outside [1e-4, 1e15).
    format_float(v.is_nan(), v.is_infinite(), v < 0.0, format!("{v:e}"), 15)
        .unwrap_or_else(|| v.to_string())
}

fn format_float4(v: f32) -> String {
    format_float(v.is_nan(), v.is_infinite(), v < 0.0, format!("{v:e}"), 6)
        .unwrap_or_else(|| v.to_string())
}

/// Returns the special or exponent form when PostgreSQL would print one, `None` when the plain
/// positional digits (Rust's shortest `Display`) are what it prints.
fn format_float(
    nan: bool,
    infinite: bool,
    negative: bool,
    scientific: String,
    digits: i32,
) -> Option<String> {
    if nan {
        return Some("NaN".to_string());
    }
    if infinite {
        return Some(if negative { "-Infinity" } else { "Infinity" }.to_string());
    }
    let (mantissa, exponent) = scientific.split_once('e')?;
    let exponent: i32 = exponent.parse().ok()?;
    if (-4..digits).contains(&exponent) || mantissa.trim_start_matches('-') == "0" {
        return None;
    }
    let sign = if exponent < 0 { '-' } else { '+' };
    Some(format!("{mantissa}e{sign}{:02}", exponent.abs()))
}

/// Decodes the binary NUMERIC (base-10000 digits with weight, sign and display scale) into
/// numeric_out's text.
fn format_numeric(raw: &[u8]) -> Result<String, String> {
    let word = |i: usize| -> Result<u16, String> {
        raw.get(i * 2..i * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated numeric".to_string())
    };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = i64::from(word(3)?);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Ok("NaN".to_string()),
        0xD000 => return Ok("Infinity".to_string()),
        0xF000 => return Ok("-Infinity".to_string()),
        other => return Err(format!("numeric sign {other:#x}")),
    }
    let digits = (0..ndigits)
        .map(|i| word(4 + i))
        .collect::<Result<Vec<u16>, String>>()?;
    let digit_at = |pos: i64| -> u16 {
        usize::try_from(pos)
            .ok()
            .and_then(|p| digits.get(p).copied())
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for pos in 0..=weight {
            let d = digit_at(pos);
            if pos == 0 {
                out.push_str(&d.to_string());
            } else {
                out.push_str(&format!("{d:04}"));
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut fraction = String::new();
        let mut pos = weight + 1;
        while (fraction.len() as i64) < dscale {
            fraction.push_str(&format!("{:04}", digit_at(pos)));
            pos += 1;
        }
        fraction.truncate(usize::try_from(dscale).unwrap_or(usize::MAX));
        out.push_str(&fraction);
    }
    Ok(out)
}

/// What one file did.
pub struct FileReport {
    pub file: String,
    /// Statements and queries that ran (skipped ones excluded).
    pub executed: usize,
    pub failed: usize,
    /// The first failures, each with its location, SQL and the expected/actual difference.
    pub first_failures: Vec<String>,
    /// How many failures share each cause (the failure's first line: the error message, or
    /// "query result mismatch").
    pub causes: BTreeMap<String, usize>,
}

impl FileReport {
    /// The causes, most frequent first.
    pub fn top_causes(&self) -> Vec<(&str, usize)> {
        let mut causes: Vec<(&str, usize)> =
            self.causes.iter().map(|(c, n)| (c.as_str(), *n)).collect();
        causes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        causes
    }
}

impl fmt::Display for FileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} passed, {} failed of {} records",
            self.file,
            self.executed - self.failed,
            self.failed,
            self.executed
        )
    }
}

/// Runs every record of `path` against connections made from `conninfo` under the label
/// `postgresql`, continuing past failures.
pub async fn run_file(path: &Path, conninfo: &str) -> Result<FileReport, String> {
    let records = sqllogictest::parse_file::<DefaultColumnType>(path)
        .map_err(|e| format!("parse {}: {e}", path.display()))?;
    let conninfo = conninfo.to_string();
    let mut runner = Runner::new(move || {
        let conninfo = conninfo.clone();
        async move { PgDb::connect(&conninfo).await }
    });
    runner.add_label("postgresql");
    let mut report = FileReport {
        file: path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        ),
        executed: 0,
        failed: 0,
        first_failures: Vec::new(),
        causes: BTreeMap::new(),
    };
    for record in records {
        if matches!(record, Record::Halt { .. }) {
            break;
        }
        let counted = matches!(record, Record::Statement { .. } | Record::Query { .. });
        let location = record_location(&record);
        let failure = match tokio::time::timeout(RECORD_TIMEOUT, runner.run_async(record)).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.display(false).to_string()),
            Err(_) => Some(format!(
                "timed out after {RECORD_TIMEOUT:?}\nat {}",
                location.unwrap_or_default()
            )),
        };
        if counted {
            report.executed += 1;
        }
        if let Some(failure) = failure {
            report.failed += 1;
            *report.causes.entry(cause(&failure)).or_default() += 1;
            if report.first_failures.len() < KEPT_FAILURES {
                report.first_failures.push(failure);
            }
        }
    }
    runner.shutdown_async().await;
    Ok(report)
}

/// The first line of a failure, without the literals that vary between otherwise equal errors.
fn cause(failure: &str) -> String {
    let first = failure.lines().next().unwrap_or_default();
    let mut out = String::with_capacity(first.len());
    let mut in_quotes = false;
    for c in first.chars() {
        match c {
            '"' | '\'' => {
                in_quotes = !in_quotes;
                out.push(c);
            }
            _ if in_quotes => {}
            c if c.is_ascii_digit() => {
                if !out.ends_with('#') {
                    out.push('#');
                }
            }
            c => out.push(c),
        }
    }
    out.chars().take(160).collect()
}

fn record_location(record: &Record<DefaultColumnType>) -> Option<String> {
    match record {
        Record::Statement { loc, sql, .. } | Record::Query { loc, sql, .. } => {
            Some(format!("{loc}: {sql}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut out = Vec::new();
        for w in [ndigits, weight as u16, sign, dscale].iter().chain(digits) {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out
    }

    #[test]
    fn numeric_renders_like_numeric_out() {
        // 12345.6700 = digits [1, 2345, 6700], weight 1, dscale 4.
        let raw = numeric(3, 1, 0, 4, &[1, 2345, 6700]);
        assert_eq!(format_numeric(&raw).as_deref(), Ok("12345.6700"));
        // -0.05 = digits [500], weight -1, dscale 2.
        let raw = numeric(1, -1, 0x4000, 2, &[500]);
        assert_eq!(format_numeric(&raw).as_deref(), Ok("-0.05"));
        // 10000 = digits [1], weight 1, dscale 0 (trailing zero groups are omitted).
        let raw = numeric(1, 1, 0, 0, &[1]);
        assert_eq!(format_numeric(&raw).as_deref(), Ok("10000"));
        // 0 has no digits at all.
        let raw = numeric(0, 0, 0, 0, &[]);
        assert_eq!(format_numeric(&raw).as_deref(), Ok("0"));
        assert!(format_numeric(&[0, 1]).is_err());
    }

    #[test]
    fn floats_render_like_float8out() {
        assert_eq!(format_float8(1.5), "1.5");
        assert_eq!(format_float8(-0.0001), "-0.0001");
        assert_eq!(format_float8(0.00001), "1e-05");
        assert_eq!(format_float8(1e15), "1e+15");
        assert_eq!(format_float8(123456789012345.0), "123456789012345");
        assert_eq!(format_float8(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(format_float4(1234567.0), "1.234567e+06");
        assert_eq!(format_float8(0.0), "0");
    }
}
