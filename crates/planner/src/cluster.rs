//! Planned membership changes, as PostgreSQL-style procedure calls:
//!
//! - `CALL sluice.add_node(4, 'host:7433')`: adds node 4 as a learner, waits
//!   until it has caught up (by snapshot and log), then makes it a voter. The
//!   node must be running (started with `--join`, or waiting for this call).
//! - `CALL sluice.remove_node(3)`: removes node 3 from the membership; the
//!   leader stops replicating to it. Node ids are never reused, so a removed
//!   node must not come back under the same id with fresh data.
//!
//! Any member accepts these; a follower forwards them to the leader.

use datafusion::sql::sqlparser::ast;

use crate::api::{CommandTag, Output};
use crate::context::Context;
use crate::error::{sqlstate, Error, Result};

/// A membership change requested with `CALL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClusterChange {
    AddNode { node_id: u64, addr: String },
    RemoveNode { node_id: u64 },
}

/// Recognizes `CALL sluice.add_node(...)` and `CALL sluice.remove_node(...)`.
pub(crate) fn prepare_call(call: &ast::Function) -> Result<ClusterChange> {
    let name = call.name.to_string().to_ascii_lowercase();
    let args = literal_args(call)?;
    match (name.as_str(), args.as_slice()) {
        ("sluice.add_node", [ast::Value::Number(id, _), ast::Value::SingleQuotedString(addr)]) => {
            Ok(ClusterChange::AddNode {
                node_id: node_id(id)?,
                addr: addr.clone(),
            })
        }
        ("sluice.remove_node", [ast::Value::Number(id, _)]) => Ok(ClusterChange::RemoveNode {
            node_id: node_id(id)?,
        }),
        ("sluice.add_node", _) => Err(usage("sluice.add_node(node_id, 'host:port')")),
        ("sluice.remove_node", _) => Err(usage("sluice.remove_node(node_id)")),
        _ => Err(Error::new(
            sqlstate::UNDEFINED_FUNCTION,
            format!("procedure {name} does not exist"),
        )),
    }
}

fn usage(signature: &str) -> Error {
    Error::new(
        sqlstate::UNDEFINED_FUNCTION,
        format!("procedure call does not match {signature}"),
    )
    .with_detail("Arguments must be literals.")
}

fn node_id(text: &str) -> Result<u64> {
    match text.parse::<u64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(Error::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("invalid node id {text}: node ids are positive integers"),
        )),
    }
}

fn literal_args(call: &ast::Function) -> Result<Vec<ast::Value>> {
    let ast::FunctionArguments::List(list) = &call.args else {
        return Ok(Vec::new());
    };
    list.args
        .iter()
        .map(|arg| match arg {
            ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(ast::Expr::Value(v))) => {
                Ok(v.value.clone())
            }
            other => Err(Error::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!("procedure arguments must be literals, not {other}"),
            )),
        })
        .collect()
}

pub(crate) async fn execute(session: &Context, change: &ClusterChange) -> Result<Output> {
    let raft = session.db.raft();
    let result = match change {
        ClusterChange::AddNode { node_id, addr } => raft.add_node(*node_id, addr.clone()).await,
        ClusterChange::RemoveNode { node_id } => raft.remove_node(*node_id).await,
    };
    result.map_err(crate::error::raft_error)?;
    Ok(Output::Command(CommandTag::new("CALL")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(sql: &str) -> ast::Function {
        let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
        let mut statements =
            datafusion::sql::sqlparser::parser::Parser::parse_sql(&dialect, sql).unwrap();
        match statements.remove(0) {
            ast::Statement::Call(f) => f,
            other => panic!("not a CALL: {other}"),
        }
    }

    #[test]
    fn membership_calls_parse_and_bad_ones_are_refused() {
        assert_eq!(
            prepare_call(&call("CALL sluice.add_node(4, '10.0.0.4:7433')")).unwrap(),
            ClusterChange::AddNode {
                node_id: 4,
                addr: "10.0.0.4:7433".into()
            }
        );
        assert_eq!(
            prepare_call(&call("CALL SLUICE.REMOVE_NODE(3)")).unwrap(),
            ClusterChange::RemoveNode { node_id: 3 }
        );
        let bad = prepare_call(&call("CALL sluice.remove_node(0)")).unwrap_err();
        assert_eq!(bad.code, sqlstate::INVALID_PARAMETER_VALUE);
        let bad = prepare_call(&call("CALL sluice.remove_node('x')")).unwrap_err();
        assert_eq!(bad.code, sqlstate::UNDEFINED_FUNCTION);
        let bad = prepare_call(&call("CALL nothing_here()")).unwrap_err();
        assert_eq!(bad.code, sqlstate::UNDEFINED_FUNCTION);
    }
}
