//! In-process sessions for unit tests: a one-node Raft group over the
//! memory engine, and statements run through the same prepare and execute
//! the frontend calls, without a socket.

use std::sync::Arc;

use datafusion::arrow::util::display::array_value_to_string;
use futures::StreamExt;
use sluice_engine::MemoryEngine;
use sluice_raftstore::{RaftConfig, RaftNode};

use crate::api::Output;
use crate::context::Database;
use crate::error::{Error, Result};
use crate::session::Session;

/// A database on a fresh one-node group; its directory holds only snapshots.
pub(crate) struct TestDb {
    pub db: Arc<Database>,
    _dir: tempfile::TempDir,
}

pub(crate) async fn database() -> TestDb {
    let dir = tempfile::tempdir().expect("temporary directory");
    let raft = RaftNode::start(MemoryEngine::new(), RaftConfig::new(1, dir.path().into()))
        .await
        .expect("a one-node group starts");
    let db = Database::open(raft).await.expect("the database opens");
    TestDb { db, _dir: dir }
}

impl TestDb {
    pub fn session(&self) -> Session {
        self.db.new_session(&[("user".into(), "test".into())])
    }
}

/// What a statement answered: its command tag (`INSERT 0 2` reads `INSERT 2`
/// here), or its rows as PostgreSQL's text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    Tag(String),
    Rows(Vec<Vec<String>>),
}

/// Runs every statement of `sql` as the simple protocol would, statement by
/// statement, and returns the last one's reply; the first error ends it.
pub(crate) async fn run(session: &mut Session, sql: &str) -> Result<Reply> {
    let mut last = Reply::Tag(String::new());
    for statement in session.parse(sql)? {
        let prepared = session.prepare(statement, &[]).await?;
        last = match session.execute(&prepared, Vec::new()).await? {
            Output::Command(tag) => Reply::Tag(match tag.rows {
                Some(rows) => format!("{} {rows}", tag.verb),
                None => tag.verb,
            }),
            Output::Rows { mut stream, .. } | Output::CopyOut { mut stream, .. } => {
                let mut rows = Vec::new();
                while let Some(batch) = stream.next().await {
                    let batch = match batch {
                        Ok(batch) => batch,
                        Err(e) => {
                            // As the frontend does for errors raised while rows stream.
                            session.mark_failed();
                            return Err(crate::error::from_datafusion(e));
                        }
                    };
                    for row in 0..batch.num_rows() {
                        rows.push(
                            batch
                                .columns()
                                .iter()
                                .map(|column| {
                                    if column.is_null(row) {
                                        "NULL".to_string()
                                    } else {
                                        array_value_to_string(column, row)
                                            .expect("a displayable value")
                                    }
                                })
                                .collect(),
                        );
                    }
                }
                Reply::Rows(rows)
            }
            other => Reply::Tag(format!("{other:?}")),
        };
    }
    Ok(last)
}

/// The rows of a query, panicking on anything else.
pub(crate) async fn rows(session: &mut Session, sql: &str) -> Vec<Vec<String>> {
    match run(session, sql).await {
        Ok(Reply::Rows(rows)) => rows,
        other => panic!("{sql}: expected rows, got {other:?}"),
    }
}

/// The SQLSTATE `sql` fails with, panicking if it succeeds.
pub(crate) async fn sqlstate_of(session: &mut Session, sql: &str) -> &'static str {
    match run(session, sql).await {
        Err(Error { code, .. }) => code,
        Ok(reply) => panic!("{sql}: expected an error, got {reply:?}"),
    }
}

/// Runs `sql`, panicking if it fails.
pub(crate) async fn exec(session: &mut Session, sql: &str) {
    if let Err(e) = run(session, sql).await {
        panic!("{sql}: {e:?}");
    }
}
