//! The one place where errors get their SQLSTATE and become ErrorResponses.
//!
//! Inside the crate errors are the planner's [`Error`] (a SQLSTATE, a
//! message, an optional detail), which COPY parsing and interrupts create
//! too; at the pgwire boundary they become [`PgWireError::UserError`].
//! Which SQLSTATE a DataFusion, storage or Raft failure gets is the planner's
//! to say (`sluice_planner::from_datafusion` and its siblings), so that an
//! error reads the same whether it was raised while planning or while rows
//! stream.

use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::PgWireBackendMessage;
use sluice_planner::{sqlstate, Error};

/// An ERROR-level response: the statement fails, the connection lives on.
pub(crate) fn to_wire(error: Error) -> PgWireError {
    PgWireError::UserError(Box::new(info(error, "ERROR")))
}

/// A WARNING notice (COMMIT with no transaction open, and the like).
pub(crate) fn warning(error: Error) -> PgWireBackendMessage {
    PgWireBackendMessage::NoticeResponse(info(error, "WARNING").into())
}

/// A FATAL response: the server closes the connection after sending it.
pub(crate) fn fatal(error: Error) -> PgWireError {
    PgWireError::UserError(Box::new(info(error, "FATAL")))
}

fn info(error: Error, severity: &str) -> ErrorInfo {
    let mut info = ErrorInfo::new(severity.to_owned(), error.code.to_owned(), error.message);
    info.detail = error.detail;
    if let Some(object) = error.object {
        info.schema = object.schema;
        info.table = object.table;
        info.constraint = object.constraint;
    }
    info
}

/// Puts any pgwire error into its final ErrorInfo form (pgwire's own
/// mapping for protocol errors) and returns its SQLSTATE and whether it is
/// FATAL.
pub(crate) fn normalize(error: &mut PgWireError) -> (String, bool) {
    let owned = std::mem::replace(error, PgWireError::QueryCanceled);
    let info = match owned {
        PgWireError::UserError(info) => info,
        other => Box::new(ErrorInfo::from(other)),
    };
    let summary = (info.code.clone(), info.is_fatal());
    *error = PgWireError::UserError(info);
    summary
}

/// The SQLSTATE class (its first two characters), the label of the error
/// counter: `23` integrity, `42` syntax or access, `57` operator intervention.
pub(crate) fn sqlstate_class(code: &str) -> &str {
    code.get(..2).unwrap_or("XX")
}

/// Errors created by the frontend itself.
pub(crate) fn protocol_violation(message: impl Into<String>) -> PgWireError {
    to_wire(Error::new(sqlstate::PROTOCOL_VIOLATION, message))
}

pub(crate) fn internal(message: impl Into<String>) -> PgWireError {
    to_wire(Error::new(sqlstate::INTERNAL_ERROR, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_gives_protocol_errors_their_sqlstate() {
        let mut error = PgWireError::QueryCanceled;
        assert_eq!(
            normalize(&mut error),
            (sqlstate::QUERY_CANCELED.to_owned(), false)
        );
        assert!(matches!(error, PgWireError::UserError(_)));
        let mut error = fatal(Error::new(sqlstate::ADMIN_SHUTDOWN, "bye"));
        assert_eq!(normalize(&mut error), ("57P01".to_owned(), true));
    }

    #[test]
    fn classes() {
        assert_eq!(sqlstate_class("23505"), "23");
        assert_eq!(sqlstate_class(""), "XX");
    }
}
