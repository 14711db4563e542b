//! The types the frontend sees: statement outputs, command tags, COPY
//! descriptions and errors carrying their SQLSTATE.

use std::fmt;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;

/// What executing one statement produced.
pub enum Output {
    /// Rows to stream to the client, then a command tag. `verb` is "SELECT"
    /// for queries, or "INSERT"/"UPDATE"/"DELETE" for `RETURNING`; the
    /// frontend counts the rows it sends and forms the tag with [`CommandTag`].
    Rows {
        schema: SchemaRef,
        stream: SendableRecordBatchStream,
        verb: &'static str,
    },
    /// A statement without rows: DDL, DML, SET.
    Command(CommandTag),
    /// `COPY … FROM STDIN`: the frontend collects CopyData, parses it with the
    /// given options and hands the rows to [`crate::Session::copy_rows`].
    CopyIn(CopyIn),
    /// `COPY … TO STDOUT`: the frontend formats the stream per `options`.
    CopyOut {
        schema: SchemaRef,
        stream: SendableRecordBatchStream,
        options: CopyOptions,
    },
    /// The empty query string.
    Empty,
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Rows { schema, verb, .. } => f
                .debug_struct("Rows")
                .field("verb", verb)
                .field("schema", schema)
                .finish(),
            Output::Command(tag) => f.debug_tuple("Command").field(tag).finish(),
            Output::CopyIn(copy) => f.debug_tuple("CopyIn").field(copy).finish(),
            Output::CopyOut { options, .. } => {
                f.debug_struct("CopyOut").field("options", options).finish()
            }
            Output::Empty => f.write_str("Empty"),
        }
    }
}

/// A PostgreSQL command tag: `INSERT 0 3`, `UPDATE 1`, `CREATE TABLE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTag {
    pub verb: String,
    pub rows: Option<u64>,
}

impl CommandTag {
    pub fn new(verb: impl Into<String>) -> Self {
        Self {
            verb: verb.into(),
            rows: None,
        }
    }

    pub fn with_rows(verb: impl Into<String>, rows: u64) -> Self {
        Self {
            verb: verb.into(),
            rows: Some(rows),
        }
    }
}

impl fmt::Display for CommandTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.verb.as_str(), self.rows) {
            // The 0 is the OID PostgreSQL once reported for single-row inserts.
            ("INSERT", Some(n)) => write!(f, "INSERT 0 {n}"),
            (verb, Some(n)) => write!(f, "{verb} {n}"),
            (verb, None) => f.write_str(verb),
        }
    }
}

/// Text or CSV, as in PostgreSQL's COPY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv,
}

/// COPY options with PostgreSQL's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    pub format: CopyFormat,
    /// Text: tab; CSV: comma.
    pub delimiter: u8,
    /// Text: `\N`; CSV: the empty unquoted string.
    pub null: String,
    /// CSV only: the first line is a header.
    pub header: bool,
    /// CSV only.
    pub quote: u8,
    /// CSV only; defaults to `quote`.
    pub escape: u8,
}

impl CopyOptions {
    pub fn text() -> Self {
        Self {
            format: CopyFormat::Text,
            delimiter: b'\t',
            null: "\\N".into(),
            header: false,
            quote: b'"',
            escape: b'"',
        }
    }

    pub fn csv() -> Self {
        Self {
            format: CopyFormat::Csv,
            delimiter: b',',
            null: String::new(),
            header: false,
            quote: b'"',
            escape: b'"',
        }
    }
}

/// A `COPY table [(columns)] FROM STDIN` in progress.
#[derive(Debug, Clone)]
pub struct CopyIn {
    /// Schema-qualified table name.
    pub table: String,
    /// The columns the data lines fill, in order.
    pub columns: Vec<String>,
    pub options: CopyOptions,
}

/// A planner error with its SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// Five-character SQLSTATE, e.g. `23505`.
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
}

impl Error {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            detail: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// True when the same statement may succeed if retried (40001, 40P01,
    /// and node unavailability while a leader is elected).
    pub fn is_retryable(&self) -> bool {
        matches!(self.code, "40001" | "40P01" | "57P03" | "08006")
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The SQLSTATEs Sluice raises, named as in PostgreSQL's errcodes.
pub mod sqlstate {
    pub const SUCCESSFUL_COMPLETION: &str = "00000";
    pub const WARNING: &str = "01000";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const STRING_DATA_RIGHT_TRUNCATION: &str = "22001";
    pub const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
    pub const DATETIME_FIELD_OVERFLOW: &str = "22008";
    pub const DIVISION_BY_ZERO: &str = "22012";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
    pub const BAD_COPY_FILE_FORMAT: &str = "22P04";
    pub const DATA_EXCEPTION: &str = "22000";
    pub const CARDINALITY_VIOLATION: &str = "21000";
    pub const NOT_NULL_VIOLATION: &str = "23502";
    pub const UNIQUE_VIOLATION: &str = "23505";
    pub const ACTIVE_SQL_TRANSACTION: &str = "25001";
    pub const NO_ACTIVE_SQL_TRANSACTION: &str = "25P01";
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
    pub const IDLE_IN_TRANSACTION_SESSION_TIMEOUT: &str = "25P03";
    pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
    pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
    pub const INVALID_SAVEPOINT_SPECIFICATION: &str = "3B001";
    pub const INVALID_CURSOR_NAME: &str = "34000";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const STATEMENT_COMPLETION_UNKNOWN: &str = "40003";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const UNDEFINED_COLUMN: &str = "42703";
    pub const UNDEFINED_FUNCTION: &str = "42883";
    pub const UNDEFINED_TABLE: &str = "42P01";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const UNDEFINED_PARAMETER: &str = "42P02";
    pub const DUPLICATE_TABLE: &str = "42P07";
    pub const WRONG_OBJECT_TYPE: &str = "42809";
    pub const GENERATED_ALWAYS: &str = "428C9";
    pub const DUPLICATE_CURSOR: &str = "42P03";
    pub const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
    pub const DUPLICATE_SCHEMA: &str = "42P06";
    pub const INVALID_SCHEMA_NAME: &str = "3F000";
    pub const DUPLICATE_OBJECT: &str = "42710";
    pub const DUPLICATE_COLUMN: &str = "42701";
    pub const DATATYPE_MISMATCH: &str = "42804";
    pub const AMBIGUOUS_COLUMN: &str = "42702";
    pub const INVALID_TABLE_DEFINITION: &str = "42P16";
    pub const INVALID_COLUMN_DEFINITION: &str = "42611";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const INSUFFICIENT_RESOURCES: &str = "53000";
    pub const DISK_FULL: &str = "53100";
    pub const QUERY_CANCELED: &str = "57014";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const DATA_CORRUPTED: &str = "XX001";
}
