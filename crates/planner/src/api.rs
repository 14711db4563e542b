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
