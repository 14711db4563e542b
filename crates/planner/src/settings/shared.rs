//! A session's setting values, shared between the session (SET, SHOW,
//! transaction ends) and the functions that read and write them inside a
//! query (`current_setting`, `set_config`), which find it in the session's
//! DataFusion config as they find [`crate::sequence::SequenceSession`].
//!
//! Values live in two layers, as PostgreSQL keeps them: the session's, and
//! on top of them the open transaction's `SET LOCAL` values, dropped when
//! the transaction ends. A transaction block takes a [`SettingsSnapshot`]
//! when it opens and at each savepoint; ROLLBACK (and ROLLBACK TO) put the
//! snapshot back, so a SET inside a block that rolls back is undone.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use datafusion::common::config::ConfigOptions;

use super::values::{on_off, parse_bool_setting, parse_bytes, parse_duration_ms};
use super::values::{IsolationLevel, ReadConsistency, REPORTED};
use crate::error::{sqlstate, Error, Result};

/// Both layers of a session's settings at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SettingsSnapshot {
    session: BTreeMap<String, String>,
    /// `SET LOCAL` values of the open transaction.
    local: BTreeMap<String, String>,
}

impl SettingsSnapshot {
    fn get(&self, name: &str) -> Option<&String> {
        if let Some(value) = self.local.get(name) {
            return Some(value);
        }
        // Outside a block the transaction modes are the session defaults.
        match name {
            "transaction_isolation" => self.session.get("default_transaction_isolation"),
            "transaction_read_only" => self.session.get("default_transaction_read_only"),
            _ => self.session.get(name),
        }
    }
}

#[derive(Clone)]
pub struct SessionSettings(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    /// The values the session started with (defaults and startup options):
    /// what RESET returns to.
    startup: BTreeMap<String, String>,
    /// The largest `sluice.max_transaction_bytes`: three quarters of the
    /// Raft command limit, so a block's write set fits in one command.
    max_transaction_bytes: usize,
}

struct State {
    values: SettingsSnapshot,
    /// Reported settings whose value changed, for ParameterStatus messages.
    changed: Vec<(String, String)>,
}

impl fmt::Debug for SessionSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSettings").finish_non_exhaustive()
    }
}

impl SessionSettings {
    pub(crate) fn new(initial: BTreeMap<String, String>, max_transaction_bytes: usize) -> Self {
        Self(Arc::new(Shared {
            state: Mutex::new(State {
                values: SettingsSnapshot {
                    session: initial.clone(),
                    local: BTreeMap::new(),
                },
                changed: Vec::new(),
            }),
            startup: initial,
            max_transaction_bytes,
        }))
    }

    /// The one carried in a statement's DataFusion config.
    pub(crate) fn of(options: &ConfigOptions) -> Result<&SessionSettings> {
        options.extensions.get::<SessionSettings>().ok_or_else(|| {
            Error::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "session settings are not available here (outside a statement's rows)",
            )
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value in effect: the transaction's `SET LOCAL`, else the session's.
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        self.state().values.get(name).cloned()
    }

    /// Sets `name` (already canonical) to `value`, or for `None` to the
    /// value the session started with, after PostgreSQL's checks; returns the value set. `local`
    /// writes the transaction's layer; the caller has made sure a
    /// transaction is open. The transaction modes are not set here (see
    /// `Context::apply_set`).
    pub(crate) fn set(&self, name: &str, value: Option<String>, local: bool) -> Result<String> {
        let value = match value {
            Some(value) => validated(name, value, self.0.max_transaction_bytes)?,
            None => self.0.startup.get(name).cloned().unwrap_or_default(),
        };
        self.change(|values| {
            if local {
                // A custom setting first set locally stays defined, empty,
                // after the transaction, as PostgreSQL's placeholders do.
                values.session.entry(name.to_string()).or_default();
                values.local.insert(name.to_string(), value.clone());
            } else {
                // A session SET inside a transaction replaces any SET LOCAL.
                values.local.remove(name);
                values.session.insert(name.to_string(), value.clone());
            }
        });
        Ok(value)
    }

    /// Shows the open block's modes as `transaction_isolation` and
    /// `transaction_read_only` (set through `Context::set_transaction_modes`).
    pub(crate) fn show_transaction_modes(&self, isolation: &str, read_only: &str) {
        self.change(|values| {
            values
                .local
                .insert("transaction_isolation".into(), isolation.into());
            values
                .local
                .insert("transaction_read_only".into(), read_only.into());
        });
    }

    pub(crate) fn snapshot(&self) -> SettingsSnapshot {
        self.state().values.clone()
    }

    /// Puts back what a block or savepoint saw when it began.
    pub(crate) fn restore(&self, snapshot: SettingsSnapshot) {
        self.change(|values| *values = snapshot);
    }

    /// The transaction ended: its `SET LOCAL` values go.
    pub(crate) fn end_transaction(&self) {
        self.change(|values| values.local.clear());
    }

    /// Every setting back to the value the session started with (DISCARD
    /// ALL, RESET ALL). The open transaction's modes stay.
    pub(crate) fn reset(&self) {
        let startup = self.0.startup.clone();
        self.change(|values| {
            values
                .local
                .retain(|name, _| name.starts_with("transaction_"));
            values.session = startup;
        });
    }

    /// Reported settings the last statements changed, to send as ParameterStatus.
    pub(crate) fn take_changes(&self) -> Vec<(String, String)> {
        std::mem::take(&mut self.state().changed)
    }

    fn change(&self, edit: impl FnOnce(&mut SettingsSnapshot)) {
        let mut state = self.state();
        let before: Vec<Option<String>> = REPORTED
            .iter()
            .map(|name| state.values.get(name).cloned())
            .collect();
        edit(&mut state.values);
        for (name, before) in REPORTED.iter().zip(before) {
            let after = state.values.get(name).cloned();
            if after != before {
                if let Some(after) = after {
                    state.changed.push((name.to_string(), after));
                }
            }
        }
    }
}

/// `value` for `name` as PostgreSQL would store it, or its error.
pub(crate) fn validated(name: &str, value: String, max_transaction_bytes: usize) -> Result<String> {
    let invalid = || {
        Error::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("invalid value for parameter \"{name}\": \"{value}\""),
        )
    };
    match name {
        "default_transaction_read_only" | "transaction_read_only" => {
            return Ok(on_off(parse_bool_setting(name, &value)?).to_string());
        }
        "default_transaction_isolation" | "transaction_isolation" => {
            IsolationLevel::parse(&value)?;
        }
        "sluice.max_transaction_bytes" => match parse_bytes(&value) {
            Some(bytes) if (1024..=max_transaction_bytes).contains(&bytes) => {}
            _ => {
                return Err(invalid().with_detail(format!(
                    "Give a size from 1kB to {}MB (three quarters of the Raft command limit).",
                    max_transaction_bytes >> 20
                )))
            }
        },
        "sluice.read_consistency" => {
            ReadConsistency::parse(&value)?;
        }
        "statement_timeout"
        | "lock_timeout"
        | "idle_in_transaction_session_timeout"
        | "sluice.fetch_timeout"
            if parse_duration_ms(&value).is_none() =>
        {
            return Err(invalid());
        }
        "TimeZone"
            if !matches!(
                value.to_ascii_uppercase().as_str(),
                "UTC" | "GMT" | "Z" | "ETC/UTC" | "+00:00"
            ) =>
        {
            return Err(Error::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!("time zone \"{value}\" is not supported yet; sessions run in UTC"),
            ));
        }
        "client_encoding"
            if !matches!(
                value.to_ascii_uppercase().replace('-', "").as_str(),
                "UTF8" | "UNICODE"
            ) =>
        {
            return Err(Error::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!("client_encoding \"{value}\" is not supported; only UTF8"),
            ));
        }
        "server_version"
        | "server_encoding"
        | "integer_datetimes"
        | "server_version_num"
        | "max_identifier_length"
        | "is_superuser" => {
            return Err(Error::new(
                sqlstate::CANT_CHANGE_RUNTIME_PARAM,
                format!("parameter \"{name}\" cannot be changed"),
            ));
        }
        _ => {}
    }
    Ok(value)
}

session_handle_extension!(SessionSettings, "sluice_settings");

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SessionSettings {
        SessionSettings::new(super::super::values::default_settings(), 1 << 20)
    }

    #[test]
    fn local_values_sit_over_the_session_and_go_with_the_transaction() {
        let s = settings();
        s.set("application_name", Some("a".into()), false).unwrap();
        s.set("application_name", Some("b".into()), true).unwrap();
        assert_eq!(s.get("application_name").as_deref(), Some("b"));
        s.end_transaction();
        assert_eq!(s.get("application_name").as_deref(), Some("a"));
        let changes = s.take_changes();
        assert_eq!(
            changes,
            vec![
                ("application_name".to_string(), "a".to_string()),
                ("application_name".to_string(), "b".to_string()),
                ("application_name".to_string(), "a".to_string()),
            ]
        );
    }

    #[test]
    fn a_restored_snapshot_undoes_later_sets() {
        let s = settings();
        let saved = s.snapshot();
        s.set("search_path", Some("x".into()), false).unwrap();
        s.restore(saved);
        assert_eq!(s.get("search_path").as_deref(), Some("\"$user\", public"));
    }

    #[test]
    fn values_are_checked_as_postgres_checks_them() {
        let s = settings();
        let code = |r: Result<String>| r.unwrap_err().code;
        assert_eq!(
            code(s.set("statement_timeout", Some("soon".into()), false)),
            sqlstate::INVALID_PARAMETER_VALUE
        );
        assert_eq!(
            code(s.set("server_version", Some("1".into()), false)),
            sqlstate::CANT_CHANGE_RUNTIME_PARAM
        );
        assert_eq!(
            code(s.set("sluice.max_transaction_bytes", Some("2MB".into()), false)),
            sqlstate::INVALID_PARAMETER_VALUE
        );
        assert_eq!(
            s.set("default_transaction_read_only", Some("yes".into()), false)
                .unwrap(),
            "on"
        );
    }
}
