//! Settings' defaults, names, and the parsing of their values (durations,
//! sizes, booleans, isolation levels, read consistency) as PostgreSQL
//! accepts them.

use std::collections::BTreeMap;
use std::time::Duration;

use datafusion::sql::sqlparser::ast;

use crate::error::{sqlstate, Error, Result};

/// The version clients see; drivers parse the leading number.
pub const SERVER_VERSION: &str = "15.8 (Sluice 0.1.0)";

/// `sluice.read_consistency`: how fresh a statement's snapshot must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadConsistency {
    /// Reflects every write acknowledged before the statement (the default).
    Linearizable,
    /// This replica's applied state, served without asking the leader;
    /// `sluice_catalog.nodes` shows how far behind it is.
    Stale,
}

impl ReadConsistency {
    pub(crate) fn parse(value: &str) -> Result<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "linearizable" | "strong" => Ok(Self::Linearizable),
            "stale" | "local" => Ok(Self::Stale),
            _ => Err(Error::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("invalid value for parameter \"sluice.read_consistency\": \"{value}\""),
            )
            .with_detail("Available values: linearizable, stale.")),
        }
    }
}

/// A transaction's isolation level, as `transaction_isolation` and
/// `default_transaction_isolation` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationLevel {
    ReadCommitted,
    RepeatableRead,
    Serializable,
}

impl IsolationLevel {
    /// Parses PostgreSQL's spelling (`read committed`, `REPEATABLE READ`, …).
    pub fn parse(text: &str) -> Result<Self> {
        match text
            .trim()
            .to_ascii_lowercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .as_str()
        {
            "read committed" | "read uncommitted" => Ok(Self::ReadCommitted),
            "repeatable read" => Ok(Self::RepeatableRead),
            "serializable" => Ok(Self::Serializable),
            other => Err(Error::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("invalid value for parameter \"transaction_isolation\": \"{other}\""),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::ReadCommitted => "read committed",
            Self::RepeatableRead => "repeatable read",
            Self::Serializable => "serializable",
        }
    }
}

/// Settings reported to the client at startup and whenever they change.
pub(crate) const REPORTED: [&str; 11] = [
    "server_version",
    "server_encoding",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "integer_datetimes",
    "standard_conforming_strings",
    "TimeZone",
    "application_name",
    "is_superuser",
    "session_authorization",
];

pub(crate) fn default_settings() -> BTreeMap<String, String> {
    [
        ("server_version", SERVER_VERSION),
        ("server_version_num", "150008"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("IntervalStyle", "postgres"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
        ("application_name", ""),
        ("is_superuser", "on"),
        ("session_authorization", "sluice"),
        ("search_path", "\"$user\", public"),
        ("statement_timeout", "0"),
        ("lock_timeout", "0"),
        ("idle_in_transaction_session_timeout", "0"),
        ("sluice.max_transaction_bytes", "24MB"),
        ("sluice.read_consistency", "linearizable"),
        ("sluice.fetch_timeout", DEFAULT_FETCH_TIMEOUT),
        ("extra_float_digits", "1"),
        ("max_identifier_length", "63"),
        ("default_transaction_isolation", "read committed"),
        ("transaction_isolation", "read committed"),
        ("default_transaction_read_only", "off"),
        ("transaction_read_only", "off"),
        ("bytea_output", "hex"),
        ("client_min_messages", "notice"),
        // Set by pg_dump and by the scripts it writes. Sluice has none of
        // what they govern (row-level security, function bodies, XML,
        // tablespaces, table access methods, synchronized scans), so any
        // value means the same here.
        ("row_security", "on"),
        ("synchronized_seqscans", "on"),
        ("check_function_bodies", "on"),
        ("xmloption", "content"),
        ("default_tablespace", ""),
        ("default_table_access_method", "heap"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The canonical spelling of a setting name (PostgreSQL names are case-insensitive).
pub(crate) fn canonical_setting(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    if let Some(reported) = REPORTED.iter().find(|r| r.eq_ignore_ascii_case(&lower)) {
        return Some(reported.to_string());
    }
    if default_settings().contains_key(&lower) {
        return Some(lower);
    }
    // Custom settings with a dotted prefix are accepted, as in PostgreSQL.
    lower.contains('.').then_some(lower)
}

/// A size in PostgreSQL's memory units: `65536`, `64kB`, `24MB`, `1GB`.
pub(crate) fn parse_bytes(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number.parse().ok()?;
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(scale)
}

/// The settings in a startup `options` string: `-c name=value`,
/// `-cname=value` or `--name=value`, separated by spaces; a backslash
/// escapes the next character (a space inside a value), as in PostgreSQL.
pub(crate) fn startup_options(options: &str) -> Vec<(String, String)> {
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut settings = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let assignment = if word == "-c" {
            words.next()
        } else {
            word.strip_prefix("--")
                .or_else(|| word.strip_prefix("-c"))
                .map(str::to_string)
        };
        if let Some((name, value)) = assignment.as_deref().and_then(|a| a.split_once('=')) {
            settings.push((name.replace('-', "_"), value.to_string()));
        }
    }
    settings
}

pub(crate) fn unknown_setting(name: &str) -> Error {
    Error::new(
        sqlstate::UNDEFINED_OBJECT,
        format!("unrecognized configuration parameter \"{name}\""),
    )
}

/// What a SET statement sets.
pub(crate) struct SetRequest {
    /// The setting's canonical name.
    pub(crate) name: String,
    /// `None` for DEFAULT (and RESET).
    pub(crate) value: Option<String>,
    /// SET LOCAL: only until the transaction ends.
    pub(crate) local: bool,
}

pub(crate) fn parse_set(set: &ast::Set) -> Result<SetRequest> {
    match set {
        ast::Set::SingleAssignment {
            variable,
            values,
            scope,
            ..
        } => {
            let raw = variable.to_string();
            Ok(SetRequest {
                name: canonical_setting(&raw).ok_or_else(|| unknown_setting(&raw))?,
                value: set_value(values),
                local: matches!(scope, Some(ast::ContextModifier::Local)),
            })
        }
        ast::Set::SetTimeZone { value, local } => Ok(SetRequest {
            name: "TimeZone".into(),
            value: set_value(std::slice::from_ref(value)),
            local: *local,
        }),
        ast::Set::SetNames { charset_name, .. } => Ok(SetRequest {
            name: "client_encoding".into(),
            value: Some(charset_name.to_string()),
            local: false,
        }),
        other => Err(Error::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("{other} is not supported"),
        )),
    }
}

/// The text of a SET value list; `None` for DEFAULT.
fn set_value(values: &[ast::Expr]) -> Option<String> {
    let parts: Vec<String> = values
        .iter()
        .map(|v| match v {
            ast::Expr::Value(value) => match &value.value {
                ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => s.clone(),
                other => other.to_string(),
            },
            ast::Expr::Identifier(ident) => ident.value.clone(),
            other => other.to_string(),
        })
        .collect();
    if parts.len() == 1 && parts[0].eq_ignore_ascii_case("default") {
        return None;
    }
    Some(parts.join(", "))
}

/// Parses a PostgreSQL duration setting: bare numbers are milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<Duration> {
    let text = text.trim().trim_matches('\'').trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let millis = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" => number,
        "us" => number / 1000.0,
        "s" => number * 1000.0,
        "min" => number * 60_000.0,
        "h" => number * 3_600_000.0,
        "d" => number * 86_400_000.0,
        _ => return None,
    };
    (millis >= 0.0).then(|| Duration::from_micros((millis * 1000.0) as u64))
}

pub(crate) fn on_off(value: bool) -> &'static str {
    if value {
        "on"
    } else {
        "off"
    }
}

/// A boolean setting as PostgreSQL accepts it: on/off, true/false, yes/no,
/// 1/0, and unique prefixes of those words.
pub(crate) fn parse_bool_setting(name: &str, value: &str) -> Result<bool> {
    let lower = value.trim().to_ascii_lowercase();
    let matches = |word: &str, shortest: usize| lower.len() >= shortest && word.starts_with(&lower);
    if matches("true", 1) || matches("yes", 1) || matches("on", 2) || lower == "1" {
        Ok(true)
    } else if matches("false", 1) || matches("no", 1) || matches("off", 2) || lower == "0" {
        Ok(false)
    } else {
        Err(Error::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("parameter \"{name}\" requires a Boolean value"),
        ))
    }
}

/// The default wait of a FETCH for its first record (`FETCH … WITH
/// (timeout = …)` or the `sluice.fetch_timeout` setting override it).
pub const DEFAULT_FETCH_TIMEOUT: &str = "500ms";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_postgres() {
        assert_eq!(parse_duration_ms("50"), Some(Duration::from_millis(50)));
        assert_eq!(parse_duration_ms("50ms"), Some(Duration::from_millis(50)));
        assert_eq!(parse_duration_ms("'5s'"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration_ms("1min"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration_ms("soon"), None);
    }

    #[test]
    fn startup_options_read_like_postgres() {
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            startup_options(
                "-c default_transaction_isolation=serializable  -cstatement_timeout=5s \
                 --application-name=my\\ app -x ignored"
            ),
            pairs(&[
                ("default_transaction_isolation", "serializable"),
                ("statement_timeout", "5s"),
                ("application_name", "my app"),
            ])
        );
        assert_eq!(startup_options(""), pairs(&[]));
        assert_eq!(startup_options("-c"), pairs(&[]));
    }

    #[test]
    fn setting_names_are_case_insensitive() {
        assert_eq!(canonical_setting("timezone").as_deref(), Some("TimeZone"));
        assert_eq!(canonical_setting("DATESTYLE").as_deref(), Some("DateStyle"));
        assert_eq!(
            canonical_setting("sluice.read_consistency").as_deref(),
            Some("sluice.read_consistency")
        );
        assert_eq!(canonical_setting("no_such_thing"), None);
    }

    #[test]
    fn booleans_read_like_postgres() {
        for yes in ["on", "ON", "true", "t", "yes", "y", "1"] {
            assert_eq!(parse_bool_setting("x", yes), Ok(true), "{yes}");
        }
        for no in ["off", "of", "false", "f", "no", "n", "0"] {
            assert_eq!(parse_bool_setting("x", no), Ok(false), "{no}");
        }
        for neither in ["o", "maybe", "2", ""] {
            let error = parse_bool_setting("x", neither).unwrap_err();
            assert_eq!(error.code, sqlstate::INVALID_PARAMETER_VALUE, "{neither}");
        }
    }
}
