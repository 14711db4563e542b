//! Errors and their SQLSTATEs: the one place where any failure (a planner
//! check, DataFusion, the storage engine, Raft, topics) gets the code and
//! wording PostgreSQL would use. The frontend calls [`from_datafusion`] too,
//! for errors raised while rows stream, so a statement fails the same way
//! whether DataFusion raises the error at planning or during execution.
//!
//! Flow: every layer's error type has one `from_*`/`*_error` function here;
//! the planner's own [`Error`] travels through DataFusion inside
//! `DataFusionError::External` and comes back out unchanged.

use datafusion::common::DataFusionError;

/// A planner error with its SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// Five-character SQLSTATE, e.g. `23505`.
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    /// The object the error is about, for the error's schema, table and
    /// constraint fields (drivers expose them, e.g. psycopg's
    /// `diag.constraint_name`). Boxed: most errors have none.
    pub object: Option<Box<ErrorObject>>,
}

/// The database object an error names, as PostgreSQL reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorObject {
    pub schema: Option<String>,
    pub table: Option<String>,
    pub constraint: Option<String>,
}

impl Error {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            detail: None,
            object: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_object(mut self, object: ErrorObject) -> Self {
        self.object = Some(Box::new(object));
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
    pub const CANT_CHANGE_RUNTIME_PARAM: &str = "55P02";
    pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
    pub const BAD_COPY_FILE_FORMAT: &str = "22P04";
    pub const DATA_EXCEPTION: &str = "22000";
    pub const CARDINALITY_VIOLATION: &str = "21000";
    pub const NOT_NULL_VIOLATION: &str = "23502";
    pub const CHECK_VIOLATION: &str = "23514";
    pub const FOREIGN_KEY_VIOLATION: &str = "23503";
    pub const INVALID_FOREIGN_KEY: &str = "42830";
    pub const NULL_VALUE_NOT_ALLOWED: &str = "22004";
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
    pub const INVALID_NAME: &str = "42602";
    pub const DEPENDENT_OBJECTS_STILL_EXIST: &str = "2BP01";
    pub const SEQUENCE_GENERATOR_LIMIT_EXCEEDED: &str = "2200H";
    pub const WRONG_OBJECT_TYPE: &str = "42809";
    pub const GENERATED_ALWAYS: &str = "428C9";
    pub const DUPLICATE_CURSOR: &str = "42P03";
    pub const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
    pub const DUPLICATE_SCHEMA: &str = "42P06";
    pub const INVALID_SCHEMA_NAME: &str = "3F000";
    pub const DUPLICATE_OBJECT: &str = "42710";
    pub const DUPLICATE_COLUMN: &str = "42701";
    pub const DATATYPE_MISMATCH: &str = "42804";
    pub const INVALID_COLUMN_REFERENCE: &str = "42P10";
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

/// The SQLSTATE and PostgreSQL's wording for a DataFusion error, raised while
/// planning or while rows stream. The planner's own errors, wrapped in
/// `External` on their way through DataFusion, come back unchanged.
pub fn from_datafusion(error: DataFusionError) -> Error {
    let error = match error {
        DataFusionError::Context(_, inner) => return from_datafusion(*inner),
        DataFusionError::Diagnostic(_, inner) => return from_datafusion(*inner),
        DataFusionError::Collection(mut errors) if !errors.is_empty() => {
            return from_datafusion(errors.remove(0))
        }
        DataFusionError::Shared(shared) => match std::sync::Arc::try_unwrap(shared) {
            Ok(inner) => return from_datafusion(inner),
            Err(shared) => DataFusionError::Execution(shared.to_string()),
        },
        DataFusionError::External(external) => match external.downcast::<Error>() {
            Ok(ours) => return *ours,
            Err(other) => match other.downcast::<DataFusionError>() {
                Ok(inner) => return from_datafusion(*inner),
                Err(other) => DataFusionError::Execution(other.to_string()),
            },
        },
        other => other,
    };
    let message = error.to_string();
    let code = match &error {
        DataFusionError::SQL(..) => sqlstate::SYNTAX_ERROR,
        DataFusionError::NotImplemented(_) => sqlstate::FEATURE_NOT_SUPPORTED,
        DataFusionError::ResourcesExhausted(_) => sqlstate::INSUFFICIENT_RESOURCES,
        DataFusionError::SchemaError(e, _) => match e.as_ref() {
            datafusion::common::SchemaError::FieldNotFound { .. } => sqlstate::UNDEFINED_COLUMN,
            datafusion::common::SchemaError::AmbiguousReference { .. } => {
                sqlstate::AMBIGUOUS_COLUMN
            }
            datafusion::common::SchemaError::DuplicateQualifiedField { .. }
            | datafusion::common::SchemaError::DuplicateUnqualifiedField { .. } => {
                sqlstate::DUPLICATE_COLUMN
            }
        },
        DataFusionError::ArrowError(e, _) => arrow_error_code(e, &message),
        DataFusionError::Plan(m) => plan_error_code(m),
        DataFusionError::Execution(m) => message_code(m).unwrap_or(sqlstate::DATA_EXCEPTION),
        _ => message_code(&message).unwrap_or(sqlstate::INTERNAL_ERROR),
    };
    let message = match code {
        // PostgreSQL's wording; DataFusion says "Divide by zero error".
        sqlstate::DIVISION_BY_ZERO => Some("division by zero".to_string()),
        sqlstate::UNDEFINED_TABLE => undefined_relation(&message),
        sqlstate::UNDEFINED_COLUMN => undefined_column(&message),
        _ => None,
    }
    .unwrap_or_else(|| clean_message(&message));
    Error::new(code, message)
}

/// PostgreSQL's `relation "t" does not exist` for DataFusion's
/// `table 'sluice.public.t' not found`: the schema is named unless it is the
/// default one (DataFusion has already qualified what the query wrote).
fn undefined_relation(message: &str) -> Option<String> {
    let start = message.find("table '")? + "table '".len();
    let rest = &message[start..];
    let name = &rest[..rest.find("' not found")?];
    let mut parts = name.rsplit('.');
    let table = parts.next()?;
    // "public" is the default schema (catalog::DEFAULT_SCHEMA; this leaf
    // module does not import the catalog).
    let shown = match parts.next() {
        Some(schema) if schema != "public" => format!("{schema}.{table}"),
        _ => table.to_string(),
    };
    Some(format!("relation \"{shown}\" does not exist"))
}

/// PostgreSQL's `column "x" does not exist` (`column t.x does not exist` for
/// a qualified reference) for DataFusion's `No field named x. Valid fields …`.
fn undefined_column(message: &str) -> Option<String> {
    let start = message.find("No field named ")? + "No field named ".len();
    let rest = &message[start..];
    let name = rest
        .split("Valid fields")
        .next()?
        .trim_end()
        .trim_end_matches('.');
    let unquoted: Vec<String> = name
        .split('.')
        .map(|part| part.trim_matches('"').to_string())
        .collect();
    Some(match unquoted.as_slice() {
        [column] => format!("column \"{column}\" does not exist"),
        qualified => format!("column {} does not exist", qualified.join(".")),
    })
}

fn arrow_error_code(error: &datafusion::arrow::error::ArrowError, message: &str) -> &'static str {
    use datafusion::arrow::error::ArrowError as A;
    match error {
        A::DivideByZero => sqlstate::DIVISION_BY_ZERO,
        A::ArithmeticOverflow(_) => sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
        A::CastError(_) | A::ParseError(_) | A::InvalidArgumentError(_) | A::ComputeError(_) => {
            message_code(message).unwrap_or(sqlstate::INVALID_TEXT_REPRESENTATION)
        }
        _ => message_code(message).unwrap_or(sqlstate::INTERNAL_ERROR),
    }
}

fn plan_error_code(message: &str) -> &'static str {
    let lower = message.to_ascii_lowercase();
    if lower.contains("table") && (lower.contains("not found") || lower.contains("doesn't exist")) {
        sqlstate::UNDEFINED_TABLE
    } else if lower.contains("no field named")
        || lower.contains("column") && lower.contains("not found")
    {
        sqlstate::UNDEFINED_COLUMN
    } else if lower.contains("invalid function") || lower.contains("no function matches") {
        sqlstate::UNDEFINED_FUNCTION
    } else if lower.contains("placeholder") || lower.contains("parameter") {
        sqlstate::PROTOCOL_VIOLATION
    } else if let Some(code) = message_code(message) {
        code
    } else if lower.contains("cannot") && lower.contains("coerce") || lower.contains("type") {
        sqlstate::DATATYPE_MISMATCH
    } else {
        sqlstate::SYNTAX_ERROR
    }
}

/// SQLSTATEs recognisable from the text of arithmetic and cast errors.
fn message_code(message: &str) -> Option<&'static str> {
    let lower = message.to_ascii_lowercase();
    if lower.contains("divide by zero") || lower.contains("division by zero") {
        Some(sqlstate::DIVISION_BY_ZERO)
    } else if let Some(text) = uncastable_string(message) {
        // A well-formed number that does not fit the type is out of range;
        // anything else is not a number at all.
        if text.trim().parse::<f64>().is_ok() {
            Some(sqlstate::NUMERIC_VALUE_OUT_OF_RANGE)
        } else {
            Some(sqlstate::INVALID_TEXT_REPRESENTATION)
        }
    } else if lower.contains("overflow")
        || lower.contains("too large to store")
        || lower.contains("out of range")
        || lower.contains("can't cast value")
        || lower.contains("is too large")
        || lower.contains("precision")
    {
        Some(sqlstate::NUMERIC_VALUE_OUT_OF_RANGE)
    } else if lower.contains("error parsing") || lower.contains("invalid") && lower.contains("cast")
    {
        Some(sqlstate::INVALID_TEXT_REPRESENTATION)
    } else {
        None
    }
}

/// The string in Arrow's "Cannot cast string 'X' to value of T type".
fn uncastable_string(message: &str) -> Option<&str> {
    let rest = &message[message.find("Cannot cast string '")? + "Cannot cast string '".len()..];
    Some(&rest[..rest.rfind("' to value of")?])
}

/// Strips DataFusion's layer prefixes so clients see one sentence.
fn clean_message(message: &str) -> String {
    let mut text = message;
    for prefix in [
        "Error during planning: ",
        "Arrow error: ",
        "Execution error: ",
        "Schema error: ",
        "This feature is not implemented: ",
        "Optimizer rule 'simplify_expressions' failed\ncaused by\n",
        "SQL error: ",
        "Cast error: ",
        "Parser error: ",
        "Invalid argument error: ",
        "Compute error: ",
    ] {
        while let Some(rest) = text.strip_prefix(prefix) {
            text = rest;
        }
    }
    text.to_string()
}

/// Maps a storage failure: a full disk is 53100, damage XX001.
pub fn storage_error(e: sluice_engine::Error) -> Error {
    if e.is_disk_full() {
        return Error::new(sqlstate::DISK_FULL, format!("could not write: {e}"));
    }
    match e {
        sluice_engine::Error::Corrupt(_) => Error::new(sqlstate::DATA_CORRUPTED, e.to_string()),
        _ => Error::new(sqlstate::INTERNAL_ERROR, e.to_string()),
    }
}

/// Maps a Raft-layer failure to a SQLSTATE.
pub fn raft_error(error: sluice_raftstore::Error) -> Error {
    use sluice_raftstore::{ApplyError, Error as R};
    match error {
        R::Apply(ApplyError::DuplicateKey { .. }) => Error::new(sqlstate::UNIQUE_VIOLATION, "duplicate key value violates unique constraint"),
        R::Apply(ApplyError::Conflict { .. }) => Error::new(
            sqlstate::SERIALIZATION_FAILURE,
            "could not serialize access due to concurrent update",
        )
        .with_detail("A row this statement read was changed by another statement before it committed; retry."),
        R::Apply(ApplyError::ReadConflict { .. }) => Error::new(
            sqlstate::SERIALIZATION_FAILURE,
            "could not serialize access due to read/write dependencies among transactions",
        ),
        R::Apply(ApplyError::CorruptLog { .. }) => Error::new(
            sqlstate::DATA_CORRUPTED,
            "the state of a topic partition does not decode; the append was refused on every replica",
        ),
        R::Apply(ApplyError::SequenceExhausted { corrupt: true, .. }) => Error::new(
            sqlstate::DATA_CORRUPTED,
            "the state of a sequence does not decode; nextval was refused on every replica",
        ),
        R::Apply(ApplyError::SequenceExhausted { corrupt: false, .. }) => Error::new(
            sqlstate::SEQUENCE_GENERATOR_LIMIT_EXCEEDED,
            "nextval: reached the bound of a sequence",
        ),
        R::CommandTooLarge { bytes, limit } => Error::new(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!("statement writes {bytes} bytes, more than the limit of {limit} bytes for one command"),
        ),
        R::NotLeader { .. } | R::Unavailable(_) => Error::new(
            sqlstate::CANNOT_CONNECT_NOW,
            format!("no Raft leader is available to accept the statement; retry: {error}"),
        ),
        R::Ambiguous(why) => Error::new(
            sqlstate::STATEMENT_COMPLETION_UNKNOWN,
            "the statement may or may not have been committed",
        )
        .with_detail(format!("{why}. The leader changed or lost its quorum while the statement was being committed; check its effect before retrying.")),
        R::Membership(why) => Error::new(sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE, why),
        R::Storage(e) => storage_error(e),
        R::ShuttingDown => Error::new(sqlstate::ADMIN_SHUTDOWN, "the node is shutting down"),
        other => Error::new(sqlstate::INTERNAL_ERROR, other.to_string()),
    }
}

/// Maps a topic-layer failure to a SQLSTATE.
pub fn stream_error(e: sluice_stream::Error) -> Error {
    use sluice_stream::Error as E;
    match e {
        E::Corrupt(_) => Error::new(sqlstate::DATA_CORRUPTED, e.to_string()),
        E::InvalidOption(message) => Error::new(sqlstate::INVALID_PARAMETER_VALUE, message),
        E::BelowRetention { .. } => Error::new(sqlstate::INVALID_PARAMETER_VALUE, e.to_string())
            .with_detail("Subscribe FROM BEGINNING, or add WITH (earliest) to start such partitions at their first retained record."),
        E::TooLarge(_) => Error::new(sqlstate::PROGRAM_LIMIT_EXCEEDED, e.to_string()),
        E::Closed => Error::new(sqlstate::ADMIN_SHUTDOWN, "the node is shutting down"),
        E::Storage(e) => storage_error(e),
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::error::ArrowError;

    use super::*;

    #[test]
    fn planner_errors_keep_their_sqlstate_through_datafusion() {
        let ours =
            Error::new(sqlstate::UNIQUE_VIOLATION, "duplicate key").with_detail("Key (id)=(1)");
        let wrapped = DataFusionError::Context(
            "while streaming".into(),
            Box::new(DataFusionError::External(Box::new(ours.clone()))),
        );
        assert_eq!(from_datafusion(wrapped), ours);
    }

    #[test]
    fn division_by_zero_reads_as_in_postgresql_at_planning_and_while_streaming() {
        for error in [
            DataFusionError::ArrowError(Box::new(ArrowError::DivideByZero), None),
            DataFusionError::Execution("Divide by zero error".into()),
        ] {
            let mapped = from_datafusion(error);
            assert_eq!(mapped.code, sqlstate::DIVISION_BY_ZERO);
            assert_eq!(mapped.message, "division by zero");
        }
    }

    #[test]
    fn casts_of_text_are_invalid_text_or_out_of_range() {
        let bad = from_datafusion(DataFusionError::ArrowError(
            Box::new(ArrowError::CastError(
                "Cannot cast string 'abc' to value of Int32 type".into(),
            )),
            None,
        ));
        assert_eq!(bad.code, sqlstate::INVALID_TEXT_REPRESENTATION);
        let big = from_datafusion(DataFusionError::ArrowError(
            Box::new(ArrowError::CastError(
                "Cannot cast string '99999999999' to value of Int32 type".into(),
            )),
            None,
        ));
        assert_eq!(big.code, sqlstate::NUMERIC_VALUE_OUT_OF_RANGE);
    }

    #[test]
    fn missing_relations_and_columns_read_as_in_postgresql() {
        let table = from_datafusion(DataFusionError::Plan(
            "table 'sluice.public.nosuch' not found".into(),
        ));
        assert_eq!(table.code, sqlstate::UNDEFINED_TABLE);
        assert_eq!(table.message, "relation \"nosuch\" does not exist");
        let other_schema = from_datafusion(DataFusionError::Plan(
            "table 'sluice.ops.nosuch' not found".into(),
        ));
        assert_eq!(
            other_schema.message,
            "relation \"ops.nosuch\" does not exist"
        );
        let column = from_datafusion(DataFusionError::SchemaError(
            Box::new(datafusion::common::SchemaError::FieldNotFound {
                field: Box::new(datafusion::common::Column::from_name("nosuchcol")),
                valid_fields: vec![datafusion::common::Column::from_qualified_name("t.a")],
            }),
            Box::new(None),
        ));
        assert_eq!(column.code, sqlstate::UNDEFINED_COLUMN);
        assert_eq!(column.message, "column \"nosuchcol\" does not exist");
        // The planner's own wording of the same, with the list on a new line.
        let planned = from_datafusion(DataFusionError::Plan(
            "No field named nosuchcol.\nValid fields are t.id, t.name.".into(),
        ));
        assert_eq!(planned.message, "column \"nosuchcol\" does not exist");
        let qualified = from_datafusion(DataFusionError::Plan(
            "No field named t.nosuchcol. Valid fields are t.id.".into(),
        ));
        assert_eq!(qualified.message, "column t.nosuchcol does not exist");
    }

    #[test]
    fn a_full_disk_is_53100() {
        let full = storage_error(sluice_engine::Error::Storage(
            "IO error: No space left on device".into(),
        ));
        assert_eq!(full.code, sqlstate::DISK_FULL);
        let damaged = storage_error(sluice_engine::Error::Corrupt("short row".into()));
        assert_eq!(damaged.code, sqlstate::DATA_CORRUPTED);
    }
}
