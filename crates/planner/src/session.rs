//! A client's SQL session: statements in, outputs out.
//!
//! [`Session::prepare`] classifies a parsed statement and plans it with the
//! statement module that owns its family ([`PreparedKind`]);
//! [`Session::execute`] runs it, inside the transaction rules of the
//! session's [`Context`]. This is the one module that names every statement
//! module; they take the [`Context`] and never name this one.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::sql::sqlparser::ast;
use futures::StreamExt;
use sluice_raftstore::RaftNode;

use crate::api::{CommandTag, Output};
use crate::cached_plan::{parameter_types, CachedPlan};
use crate::context::{Context, Database};
use crate::error::{from_datafusion, sqlstate, Error, Result};
use crate::names::identifier;
use crate::parse::{Statement, StatementKind};
use crate::settings::{canonical_setting, on_off, parse_set, unknown_setting, SetRequest};
use crate::transaction::{transaction_modes, IsolationLevel, TransactionModes, TransactionState};
use crate::values_scan::MAX_PARAMETER_NUMBER;
use crate::{copy, ddl, dml, literal_insert};

/// A planned statement, reusable across executions.
pub struct Prepared {
    pub statement: Statement,
    pub param_types: Vec<DataType>,
    pub result_schema: Option<SchemaRef>,
    pub(crate) kind: PreparedKind,
    catalog_version: u64,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("statement", &self.statement.to_string())
            .finish_non_exhaustive()
    }
}

pub(crate) enum PreparedKind {
    Query(CachedPlan),
    Dml(Box<dml::DmlPlan>),
    /// An INSERT of literals and `$n` parameters, typed when prepared ([`literal_insert`]).
    LiteralInsert(Box<literal_insert::LiteralInsert>),
    Ddl,
    Set(SetRequest),
    /// RESET ALL.
    ResetAll,
    Show(String),
    Begin(TransactionModes),
    Commit,
    Rollback,
    Savepoint(String),
    ReleaseSavepoint(String),
    RollbackToSavepoint(String),
    SetTransaction {
        modes: TransactionModes,
        session: bool,
    },
    CopyIn(crate::api::CopyIn),
    CopyOut {
        plan: CachedPlan,
        options: crate::api::CopyOptions,
    },
    Tag(&'static str),
    /// `PREPARE name AS statement`: `target` is kept under `name` when run.
    SqlPrepare {
        name: String,
        target: Arc<Prepared>,
    },
    /// `EXECUTE name (args)`: `args` is `SELECT args`, evaluated at each
    /// execution (it may use this statement's own `$n`).
    SqlExecute {
        name: String,
        args: Option<CachedPlan>,
    },
    /// `DEALLOCATE name`, or every name (`ALL`) when `None`.
    SqlDeallocate(Option<String>),
    Cluster(crate::cluster::ClusterChange),
    Stream(crate::topic::StreamPlan),
}

impl PreparedKind {
    /// Whether the statement writes, which a read-only transaction refuses.
    fn writes(&self) -> bool {
        match self {
            PreparedKind::Dml(_)
            | PreparedKind::LiteralInsert(_)
            | PreparedKind::Ddl
            | PreparedKind::CopyIn(_)
            | PreparedKind::Cluster(_) => true,
            PreparedKind::Stream(plan) => plan.is_ddl(),
            _ => false,
        }
    }

    fn uses_catalog(&self) -> bool {
        matches!(
            self,
            PreparedKind::Query(_)
                | PreparedKind::Dml(_)
                | PreparedKind::LiteralInsert(_)
                | PreparedKind::CopyOut { .. }
                | PreparedKind::Stream(_)
        )
    }
}

/// One client connection's state.
pub struct Session {
    cx: Context,
    /// Cursors declared `FOR SUBSCRIBE`, until CLOSE or the session ends.
    cursors: crate::topic::Cursors,
    /// Statements of SQL-level `PREPARE`, by name, until DEALLOCATE,
    /// DISCARD ALL or the session ends. (The protocol's named statements
    /// live in the frontend's portal store.)
    sql_prepared: HashMap<String, Arc<Prepared>>,
}

impl Database {
    /// Loads the catalog through a linearizable read and starts the
    /// statement families' background work (topic retention).
    pub async fn open(raft: Arc<RaftNode>) -> Result<Arc<Database>> {
        let db = Database::load(raft).await?;
        crate::topic::spawn_retention(Arc::downgrade(&db));
        Ok(db)
    }

    pub fn new_session(self: &Arc<Self>, startup: &[(String, String)]) -> Session {
        Session {
            cx: Context::new(self.clone(), startup),
            cursors: Default::default(),
            sql_prepared: HashMap::new(),
        }
    }
}

impl Session {
    /// Splits and parses SQL text; empty text yields no statements (see
    /// [`crate::parse::parse`]).
    pub fn parse(&self, sql: &str) -> Result<Vec<Statement>> {
        self.cx.parse(sql)
    }

    /// The settings PostgreSQL reports to a client at startup.
    pub fn reported_parameters(&self) -> Vec<(String, String)> {
        self.cx.reported_parameters()
    }

    /// Reported settings the last statements changed, to send as ParameterStatus.
    pub fn take_parameter_changes(&mut self) -> Vec<(String, String)> {
        self.cx.take_parameter_changes()
    }

    pub fn statement_timeout(&self) -> Option<Duration> {
        self.cx.statement_timeout()
    }

    /// `idle_in_transaction_session_timeout`, inside a block only.
    pub fn idle_in_transaction_timeout(&self) -> Option<Duration> {
        self.cx.idle_in_transaction_timeout()
    }

    pub fn user(&self) -> String {
        self.cx.user()
    }

    /// Where the session's transaction block stands.
    pub fn transaction_state(&self) -> TransactionState {
        self.cx.transaction_state()
    }

    /// Fails the open transaction block, if any: the frontend calls this
    /// for errors raised outside [`Self::execute`] (while streaming rows).
    pub fn mark_failed(&self) {
        self.cx.mark_failed()
    }

    /// Warnings the last statement raised (PostgreSQL sends them as notices).
    pub fn take_notices(&mut self) -> Vec<Error> {
        self.cx.take_notices()
    }

    /// Opens the implicit block of a multi-statement query (see
    /// [`Context::begin_implicit`]).
    pub fn begin_implicit(&mut self) -> Result<()> {
        self.cx.begin_implicit()
    }

    /// Commits or discards the implicit block, if one is open.
    pub async fn finish_implicit(&mut self, succeeded: bool) -> Result<()> {
        let result = self.cx.finish_implicit(succeeded).await;
        self.cx.sync_block_catalog();
        result
    }

    /// Plans `statement`. `param_types` are the client-declared types of `$n`.
    ///
    /// Planning uses the catalog this node last loaded. In a cluster, DDL
    /// acknowledged through another member may not be loaded here yet, so a
    /// statement that names an unknown table, schema or column is planned
    /// once more after a linearizable read has refreshed the catalog (if
    /// that read brought a newer catalog). Known names need no round trip:
    /// execution re-checks the catalog version against its own read.
    pub async fn prepare(
        &mut self,
        statement: Statement,
        param_types: &[Option<DataType>],
    ) -> Result<Arc<Prepared>> {
        self.cx.sync_block_catalog();
        let version = self.cx.catalog_state().version;
        let first = self.prepare_once(statement.clone(), param_types).await;
        match first {
            Err(e) if names_missing_object(&e) => {
                self.cx.db.read_view().await?;
                if self.cx.catalog_state().version == version {
                    return Err(e);
                }
                self.prepare_once(statement, param_types).await
            }
            other => other,
        }
    }

    async fn prepare_once(
        &mut self,
        statement: Statement,
        param_types: &[Option<DataType>],
    ) -> Result<Arc<Prepared>> {
        if self.cx.transaction_state() == TransactionState::Failed
            && !matches!(
                *statement.kind,
                StatementKind::Sql(ast::Statement::Commit { .. } | ast::Statement::Rollback { .. })
            )
        {
            return Err(aborted_block());
        }
        let catalog_version = self.cx.catalog_state().version;
        let text_column = |name: &str| {
            Some(Arc::new(Schema::new(vec![Field::new(
                name,
                DataType::Utf8,
                true,
            )])))
        };
        // A scanned INSERT is classified by its head (an INSERT); the literal INSERT
        // shortcut reads its scanned rows as they are, and only a statement the shortcut
        // leaves to DataFusion needs the whole tree.
        let (ast, scanned) = match statement.kind.as_ref() {
            StatementKind::Sql(ast) => (ast, None),
            StatementKind::ScannedInsert(scanned) => (scanned.head(), Some(scanned.as_ref())),
            StatementKind::Stream(stream) => {
                let (plan, result_schema) =
                    crate::topic::prepare(&self.cx, &self.cursors, stream).await?;
                return Ok(Arc::new(Prepared {
                    statement,
                    param_types: Vec::new(),
                    result_schema,
                    kind: PreparedKind::Stream(plan),
                    catalog_version,
                }));
            }
        };
        let (kind, result_schema, param_types) = match ast {
            ast::Statement::Query(_) | ast::Statement::Explain { .. } => {
                let plan = self.cx.plan(ast.clone()).await?;
                let schema = crate::names::postgres_column_names(ast, plan.schema().as_arrow());
                let types = parameter_types(&plan, param_types)?;
                (
                    PreparedKind::Query(self.cx.cache(plan).await?),
                    Some(schema),
                    types,
                )
            }
            ast::Statement::Insert(_) | ast::Statement::Update(_) | ast::Statement::Delete(_) => {
                let rows = scanned.map(|scanned| scanned.rows());
                match literal_insert::plan(&self.cx, ast, rows, param_types) {
                    Some(insert) => {
                        let types = insert.param_types.clone();
                        (PreparedKind::LiteralInsert(Box::new(insert)), None, types)
                    }
                    None => {
                        let whole = scanned.map_or(ast, |scanned| scanned.whole());
                        let (plan, types) = dml::prepare(&self.cx, whole, param_types).await?;
                        let schema = plan.returning_schema();
                        (PreparedKind::Dml(Box::new(plan)), schema, types)
                    }
                }
            }
            ast::Statement::CreateTable(_)
            | ast::Statement::CreateSchema { .. }
            | ast::Statement::Drop { .. }
            | ast::Statement::AlterTable(_)
            | ast::Statement::CreateIndex(_)
            | ast::Statement::CreateSequence { .. }
            | ast::Statement::Truncate(_) => (PreparedKind::Ddl, None, Vec::new()),
            ast::Statement::Set(ast::Set::SetTransaction {
                modes,
                snapshot: None,
                session,
            }) => (
                PreparedKind::SetTransaction {
                    modes: transaction_modes(modes),
                    session: *session,
                },
                None,
                Vec::new(),
            ),
            ast::Statement::Set(set) => (PreparedKind::Set(parse_set(set)?), None, Vec::new()),
            ast::Statement::Reset(reset) => match &reset.reset {
                ast::Reset::ALL => (PreparedKind::ResetAll, None, Vec::new()),
                ast::Reset::ConfigurationParameter(name) => {
                    let raw = name.to_string();
                    let request = SetRequest {
                        name: canonical_setting(&raw).ok_or_else(|| unknown_setting(&raw))?,
                        value: None,
                        local: false,
                    };
                    (PreparedKind::Set(request), None, Vec::new())
                }
            },
            ast::Statement::ShowVariable { variable } => {
                let name = variable
                    .iter()
                    .map(|i| i.value.clone())
                    .collect::<Vec<_>>()
                    .join(" ");
                let canonical = canonical_setting(&name).ok_or_else(|| unknown_setting(&name))?;
                (
                    PreparedKind::Show(canonical.clone()),
                    text_column(&canonical.to_ascii_lowercase()),
                    Vec::new(),
                )
            }
            ast::Statement::StartTransaction {
                modes, statements, ..
            } if statements.is_empty() => (
                PreparedKind::Begin(transaction_modes(modes)),
                None,
                Vec::new(),
            ),
            ast::Statement::Savepoint { name } => {
                (PreparedKind::Savepoint(identifier(name)), None, Vec::new())
            }
            ast::Statement::ReleaseSavepoint { name } => (
                PreparedKind::ReleaseSavepoint(identifier(name)),
                None,
                Vec::new(),
            ),
            ast::Statement::Rollback {
                savepoint: Some(name),
                chain: false,
            } => (
                PreparedKind::RollbackToSavepoint(identifier(name)),
                None,
                Vec::new(),
            ),
            ast::Statement::Commit { chain: false, .. } => (PreparedKind::Commit, None, Vec::new()),
            ast::Statement::Rollback {
                savepoint: None,
                chain: false,
            } => (PreparedKind::Rollback, None, Vec::new()),
            ast::Statement::Copy { .. } => {
                let kind = match copy::prepare(&self.cx, ast).await? {
                    copy::CopyPlan::In(copy) => PreparedKind::CopyIn(copy),
                    copy::CopyPlan::Out { plan, options } => {
                        PreparedKind::CopyOut { plan, options }
                    }
                };
                (kind, None, Vec::new())
            }
            ast::Statement::Call(call) => (
                PreparedKind::Cluster(crate::cluster::prepare_call(call)?),
                None,
                Vec::new(),
            ),
            ast::Statement::Discard { .. } => (PreparedKind::Tag("DISCARD ALL"), None, Vec::new()),
            ast::Statement::Prepare {
                name,
                data_types,
                statement: inner,
            } => {
                let types = data_types
                    .iter()
                    .map(|t| crate::types::SqlType::from_ast(t).map(|t| Some(t.arrow_type())))
                    .collect::<Result<Vec<_>>>()?;
                let inner = Statement {
                    kind: Arc::new(StatementKind::Sql((**inner).clone())),
                };
                let target = Box::pin(self.prepare(inner, &types)).await?;
                let name = identifier(name);
                (PreparedKind::SqlPrepare { name, target }, None, Vec::new())
            }
            ast::Statement::Execute {
                name: Some(name),
                parameters,
                immediate: false,
                into,
                using,
                output: false,
                default: false,
                ..
            } if into.is_empty() && using.is_empty() => {
                let name = match name.0.as_slice() {
                    [ast::ObjectNamePart::Identifier(ident)] => identifier(ident),
                    _ => return Err(unknown_prepared(&name.to_string())),
                };
                let target = self.sql_prepared_named(&name)?;
                let (args, types) = if parameters.is_empty() {
                    (None, Vec::new())
                } else {
                    let list: Vec<String> = parameters.iter().map(ToString::to_string).collect();
                    let select = format!("SELECT {}", list.join(", "));
                    let plan = match self.cx.parse(&select)?.pop().map(Statement::into_sql) {
                        Some(Ok(ast)) => self.cx.plan(ast).await?,
                        _ => {
                            return Err(Error::new(
                                sqlstate::SYNTAX_ERROR,
                                "EXECUTE parameters must be expressions",
                            ))
                        }
                    };
                    // `EXECUTE name($1)` sent by a driver: `$1` has the type of
                    // the prepared statement's parameter it stands for.
                    let mut declared = param_types.to_vec();
                    for (arg, ty) in parameters.iter().zip(&target.param_types) {
                        let ast::Expr::Value(ast::ValueWithSpan {
                            value: ast::Value::Placeholder(placeholder),
                            ..
                        }) = arg
                        else {
                            continue;
                        };
                        let Some(n) = placeholder.strip_prefix('$').and_then(|n| n.parse().ok())
                        else {
                            continue;
                        };
                        if (1..=MAX_PARAMETER_NUMBER).contains(&n) {
                            if declared.len() < n {
                                declared.resize(n, None);
                            }
                            declared[n - 1].get_or_insert_with(|| ty.clone());
                        }
                    }
                    let types = parameter_types(&plan, &declared)?;
                    (Some(self.cx.cache(plan).await?), types)
                };
                let schema = target.result_schema.clone();
                (PreparedKind::SqlExecute { name, args }, schema, types)
            }
            ast::Statement::Deallocate { name, .. } => {
                let all = name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all");
                let name = (!all).then(|| identifier(name));
                (PreparedKind::SqlDeallocate(name), None, Vec::new())
            }
            other => {
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "statement not supported: {}",
                        first_words(&other.to_string())
                    ),
                ))
            }
        };
        Ok(Arc::new(Prepared {
            statement,
            param_types,
            result_schema,
            kind,
            catalog_version,
        }))
    }

    /// Executes a prepared statement with bound parameters. An error inside
    /// a transaction block fails the block (see [`Self::transaction_state`]).
    ///
    /// Under a SERIALIZABLE default, a DML statement outside a block runs
    /// in an implicit block of its own, so that what it read (a subquery,
    /// an INSERT … SELECT) is validated at commit like any serializable
    /// transaction's reads; otherwise it commits on its own, checking only
    /// the rows it changed.
    pub async fn execute(
        &mut self,
        prepared: &Prepared,
        params: Vec<ScalarValue>,
    ) -> Result<Output> {
        // Reads (a point select) skip the transaction lock here altogether.
        let idle_write =
            prepared.kind.writes() && self.cx.transaction_state() == TransactionState::Idle;
        if idle_write && self.cx.default_read_only()? {
            // A statement outside a block is a transaction of its own, and
            // default_transaction_read_only makes it read-only too.
            return Err(Error::new(
                sqlstate::READ_ONLY_SQL_TRANSACTION,
                "cannot write in a read-only transaction",
            ));
        }
        let implicit = matches!(prepared.kind, PreparedKind::Dml(_))
            && idle_write
            && self.cx.default_isolation()? == IsolationLevel::Serializable;
        if implicit {
            self.cx.begin_implicit()?;
        }
        self.cx.statement_starts();
        self.cx.sync_block_catalog();
        let result = self.execute_in_block(prepared, params).await;
        self.cx.sync_block_catalog();
        if result.is_err() {
            self.cx.mark_failed();
        }
        if implicit {
            self.finish_implicit(result.is_ok()).await?;
        }
        result
    }

    async fn execute_in_block(
        &mut self,
        prepared: &Prepared,
        params: Vec<ScalarValue>,
    ) -> Result<Output> {
        match self.cx.transaction_state() {
            TransactionState::Failed
                if !matches!(
                    prepared.kind,
                    PreparedKind::Commit
                        | PreparedKind::Rollback
                        | PreparedKind::RollbackToSavepoint(_)
                ) =>
            {
                return Err(aborted_block());
            }
            _ => {}
        }
        if prepared.kind.uses_catalog()
            && prepared.catalog_version != self.cx.catalog_state().version
        {
            // A DDL changed the catalog since planning: plan again, keeping the parameter types.
            let types: Vec<Option<DataType>> =
                prepared.param_types.iter().cloned().map(Some).collect();
            let fresh = Box::pin(self.prepare(prepared.statement.clone(), &types)).await?;
            if !same_row_type(&fresh.result_schema, &prepared.result_schema) {
                // The client described the rows already; PostgreSQL refuses the same way.
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "cached plan must not change result type",
                ));
            }
            return Box::pin(self.execute_current(&fresh, params)).await;
        }
        self.execute_current(prepared, params).await
    }

    async fn execute_current(
        &mut self,
        prepared: &Prepared,
        params: Vec<ScalarValue>,
    ) -> Result<Output> {
        match &prepared.kind {
            PreparedKind::Query(plan) => {
                let plan = plan.bind(&prepared.param_types, params)?;
                let snapshot = self.cx.read_view().await?;
                let stream = self.cx.run_cached(&plan, snapshot).await?;
                let schema = prepared
                    .result_schema
                    .clone()
                    .unwrap_or_else(|| stream.schema());
                let stream = crate::names::with_schema(stream, schema.clone());
                Ok(Output::Rows {
                    schema,
                    stream,
                    verb: "SELECT",
                })
            }
            PreparedKind::Dml(plan) => {
                dml::execute(&mut self.cx, plan, &prepared.param_types, params).await
            }
            PreparedKind::LiteralInsert(insert) => {
                literal_insert::execute(&self.cx, insert, params).await
            }
            PreparedKind::Ddl => match prepared.statement.sql() {
                Some(ast) if crate::sequence::is_sequence_ddl(ast) => {
                    crate::sequence::execute(&mut self.cx, ast).await
                }
                Some(ast) => ddl::execute(&mut self.cx, ast).await,
                None => Err(Error::new(
                    sqlstate::INTERNAL_ERROR,
                    "DDL without a statement",
                )),
            },
            PreparedKind::Stream(plan) => {
                crate::topic::execute(&mut self.cx, &mut self.cursors, plan).await
            }
            PreparedKind::Cluster(change) => {
                if self.cx.transaction_state() != TransactionState::Idle {
                    return Err(Error::new(
                        sqlstate::ACTIVE_SQL_TRANSACTION,
                        "membership changes cannot run inside a transaction block",
                    ));
                }
                crate::cluster::execute(&self.cx, change).await
            }
            PreparedKind::Set(request) => {
                self.cx
                    .apply_set(&request.name, request.value.clone(), request.local)?;
                Ok(Output::Command(CommandTag::new("SET")))
            }
            PreparedKind::ResetAll => {
                self.cx.reset_settings();
                Ok(Output::Command(CommandTag::new("RESET")))
            }
            PreparedKind::Show(name) => {
                let schema = prepared
                    .result_schema
                    .clone()
                    .unwrap_or_else(|| Arc::new(Schema::empty()));
                let value = self.cx.setting(name);
                let batch = RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(datafusion::arrow::array::StringArray::from(vec![
                        value,
                    ]))],
                )
                .map_err(|e| Error::new(sqlstate::INTERNAL_ERROR, e.to_string()))?;
                let stream = datafusion::physical_plan::memory::MemoryStream::try_new(
                    vec![batch],
                    schema.clone(),
                    None,
                )
                .map_err(from_datafusion)?;
                Ok(Output::Rows {
                    schema,
                    stream: Box::pin(stream),
                    verb: "SHOW",
                })
            }
            PreparedKind::Begin(modes) => {
                self.cx.begin(*modes)?;
                Ok(Output::Command(CommandTag::new("BEGIN")))
            }
            PreparedKind::Commit => self.cx.commit().await,
            PreparedKind::Rollback => {
                self.cx.rollback();
                Ok(Output::Command(CommandTag::new("ROLLBACK")))
            }
            PreparedKind::Savepoint(name) => {
                self.cx.savepoint(name)?;
                Ok(Output::Command(CommandTag::new("SAVEPOINT")))
            }
            PreparedKind::ReleaseSavepoint(name) => {
                self.cx
                    .in_block("RELEASE SAVEPOINT", |txn| txn.release(name))?;
                Ok(Output::Command(CommandTag::new("RELEASE")))
            }
            PreparedKind::RollbackToSavepoint(name) => {
                self.cx.rollback_to_savepoint(name)?;
                Ok(Output::Command(CommandTag::new("ROLLBACK")))
            }
            PreparedKind::SetTransaction { modes, session } => {
                if *session {
                    if let Some(level) = modes.isolation {
                        self.cx.apply_set(
                            "default_transaction_isolation",
                            Some(level.name().into()),
                            false,
                        )?;
                    }
                    if let Some(read_only) = modes.read_only {
                        self.cx.apply_set(
                            "default_transaction_read_only",
                            Some(on_off(read_only).into()),
                            false,
                        )?;
                    }
                } else {
                    self.cx.set_transaction_modes(*modes)?;
                }
                Ok(Output::Command(CommandTag::new("SET")))
            }
            PreparedKind::CopyIn(copy) => Ok(Output::CopyIn(copy.clone())),
            PreparedKind::CopyOut { plan, options } => {
                let snapshot = self.cx.read_view().await?;
                let stream = self.cx.run_cached(plan, snapshot).await?;
                Ok(Output::CopyOut {
                    schema: stream.schema(),
                    stream,
                    options: options.clone(),
                })
            }
            PreparedKind::Tag(tag) => {
                if *tag == "DISCARD ALL" {
                    self.cx.reset_settings();
                    self.sql_prepared.clear();
                }
                Ok(Output::Command(CommandTag::new(*tag)))
            }
            PreparedKind::SqlPrepare { name, target } => {
                if self.sql_prepared.contains_key(name) {
                    return Err(Error::new(
                        sqlstate::DUPLICATE_PREPARED_STATEMENT,
                        format!("prepared statement \"{name}\" already exists"),
                    ));
                }
                self.sql_prepared.insert(name.clone(), target.clone());
                Ok(Output::Command(CommandTag::new("PREPARE")))
            }
            PreparedKind::SqlExecute { name, args } => {
                let target = self.sql_prepared_named(name)?;
                let values = match args {
                    None => Vec::new(),
                    Some(plan) => {
                        let plan = plan.bind(&prepared.param_types, params)?;
                        let snapshot = self.cx.read_view().await?;
                        let stream = self.cx.run_cached(&plan, snapshot).await?;
                        first_row(stream).await?
                    }
                };
                if values.len() != target.param_types.len() {
                    return Err(Error::new(
                        sqlstate::SYNTAX_ERROR,
                        format!("wrong number of parameters for prepared statement \"{name}\""),
                    )
                    .with_detail(format!(
                        "Expected {} parameters but got {}.",
                        target.param_types.len(),
                        values.len()
                    )));
                }
                let values = values
                    .into_iter()
                    .zip(&target.param_types)
                    .map(|(value, ty)| cast_argument(value, ty))
                    .collect::<Result<Vec<_>>>()?;
                Box::pin(self.execute(&target, values)).await
            }
            PreparedKind::SqlDeallocate(name) => {
                match name {
                    // A name not prepared here may be one of the protocol's
                    // named statements (psycopg deallocates those in SQL),
                    // which the frontend keeps: not an error here.
                    Some(name) => {
                        self.sql_prepared.remove(name);
                    }
                    None => self.sql_prepared.clear(),
                }
                let tag = if name.is_some() {
                    "DEALLOCATE"
                } else {
                    "DEALLOCATE ALL"
                };
                Ok(Output::Command(CommandTag::new(tag)))
            }
        }
    }

    /// The statement `PREPARE` kept under `name`.
    fn sql_prepared_named(&self, name: &str) -> Result<Arc<Prepared>> {
        self.sql_prepared
            .get(name)
            .cloned()
            .ok_or_else(|| unknown_prepared(name))
    }

    /// COPY FROM STDIN data rows: see [`copy::insert_rows`].
    pub async fn copy_rows(
        &mut self,
        copy: &crate::api::CopyIn,
        rows: Vec<Vec<Option<String>>>,
    ) -> Result<u64> {
        copy::insert_rows(&mut self.cx, copy, rows).await
    }
}

impl Drop for Session {
    /// Cursors of consumer groups leave their groups with the session.
    fn drop(&mut self) {
        let db = self.cx.db.clone();
        for (_, mut open) in self.cursors.drain() {
            open.leave(&db);
        }
    }
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Whether two result descriptions agree on the column count and types.
fn same_row_type(a: &Option<SchemaRef>, b: &Option<SchemaRef>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.fields().len() == b.fields().len()
                && a.fields()
                    .iter()
                    .zip(b.fields())
                    .all(|(x, y)| x.data_type() == y.data_type())
        }
        _ => false,
    }
}

/// Maps a DataFusion error to the SQLSTATE PostgreSQL would report.
fn unknown_prepared(name: &str) -> Error {
    Error::new(
        sqlstate::INVALID_SQL_STATEMENT_NAME,
        format!("prepared statement \"{name}\" does not exist"),
    )
}

/// The values of a one-row result (EXECUTE's arguments).
async fn first_row(mut stream: SendableRecordBatchStream) -> Result<Vec<ScalarValue>> {
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(from_datafusion)?;
        if batch.num_rows() > 0 {
            return batch
                .columns()
                .iter()
                .map(|column| ScalarValue::try_from_array(column, 0).map_err(from_datafusion))
                .collect();
        }
    }
    Err(Error::new(
        sqlstate::INTERNAL_ERROR,
        "EXECUTE arguments produced no row",
    ))
}

/// An EXECUTE argument as the value of a parameter of type `ty`: as in
/// PostgreSQL, an untyped literal (text here) is read as that type.
fn cast_argument(value: ScalarValue, ty: &DataType) -> Result<ScalarValue> {
    if value.data_type() == *ty || value.is_null() {
        return value.cast_to(ty).map_err(from_datafusion);
    }
    value.cast_to(ty).map_err(|_| match &value {
        ScalarValue::Utf8(Some(text)) | ScalarValue::Utf8View(Some(text)) => Error::new(
            sqlstate::INVALID_TEXT_REPRESENTATION,
            format!("invalid input syntax for a parameter of type {ty}: \"{text}\""),
        ),
        _ => Error::new(
            sqlstate::DATATYPE_MISMATCH,
            format!("a parameter of type {ty} cannot take the value {value}"),
        ),
    })
}

/// Errors that a catalog loaded more recently might not give.
fn names_missing_object(error: &Error) -> bool {
    matches!(
        error.code,
        sqlstate::UNDEFINED_TABLE
            | sqlstate::INVALID_SCHEMA_NAME
            | sqlstate::UNDEFINED_COLUMN
            | sqlstate::UNDEFINED_OBJECT
    )
}

fn aborted_block() -> Error {
    Error::new(
        sqlstate::IN_FAILED_SQL_TRANSACTION,
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

#[cfg(test)]
mod tests {
    use crate::testing::{database, exec, rows, run, sqlstate_of, Reply};

    #[tokio::test]
    async fn sql_prepare_execute_and_deallocate() {
        let test = database().await;
        let mut s = test.session();
        exec(&mut s, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
        exec(
            &mut s,
            "PREPARE ins (int, text) AS INSERT INTO t VALUES ($1, $2)",
        )
        .await;
        assert_eq!(
            run(&mut s, "EXECUTE ins (1, 'one'); EXECUTE ins (2, 'two')")
                .await
                .unwrap(),
            Reply::Tag("INSERT 1".into())
        );
        assert_eq!(
            sqlstate_of(&mut s, "PREPARE ins AS SELECT 1").await,
            "42P05"
        );
        assert_eq!(sqlstate_of(&mut s, "EXECUTE ins (3)").await, "42601");
        exec(&mut s, "PREPARE get AS SELECT v FROM t WHERE id = $1").await;
        assert_eq!(
            rows(&mut s, "EXECUTE get (2)").await,
            vec![vec!["two".to_string()]]
        );
        exec(&mut s, "DEALLOCATE get").await;
        assert_eq!(sqlstate_of(&mut s, "EXECUTE get (2)").await, "26000");
    }

    #[tokio::test]
    async fn a_prepared_query_is_planned_again_after_ddl_unless_its_rows_change_shape() {
        let test = database().await;
        let mut s = test.session();
        exec(
            &mut s,
            "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)",
        )
        .await;
        exec(
            &mut s,
            "PREPARE star AS SELECT * FROM t; PREPARE ids AS SELECT id FROM t",
        )
        .await;
        exec(&mut s, "ALTER TABLE t ADD COLUMN v text").await;
        assert_eq!(
            rows(&mut s, "EXECUTE ids").await,
            vec![vec!["1".to_string()]]
        );
        assert_eq!(sqlstate_of(&mut s, "EXECUTE star").await, "0A000");
    }
}
