//! Session settings: SET, SHOW, RESET and their values, and the functions
//! that read and write them from inside a query.
//!
//! | module | what it holds |
//! |---|---|
//! | [`values`] | defaults, names, and the parsing of values (durations, sizes, booleans, isolation levels) as PostgreSQL accepts them; nothing of sessions |
//! | [`shared`] | a session's values in their two layers (session and `SET LOCAL`), shared with the functions, and the checks a new value passes |
//! | [`functions`] | `current_setting` and `set_config` |

mod functions;
mod shared;
mod values;

pub use functions::register;
pub(crate) use shared::{validated, SessionSettings, SettingsSnapshot};
pub(crate) use values::{
    canonical_setting, default_settings, on_off, parse_bool_setting, parse_bytes, parse_set,
    startup_options, unknown_setting, ReadConsistency, SetRequest, REPORTED,
};
pub use values::{parse_duration_ms, IsolationLevel, DEFAULT_FETCH_TIMEOUT, SERVER_VERSION};
