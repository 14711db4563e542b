//! Databases and sessions: statement classification, plan caching,
//! execution, and session settings.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{CatalogProviderList, MemoryCatalogProviderList};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::execution::session_state::SessionState;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::stream::RecordBatchReceiverStream;
use datafusion::physical_plan::{execute_stream, ExecutionPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures::StreamExt;
use sluice_engine::Snapshot;
use sluice_raftstore::RaftNode;

use crate::api::{CommandTag, Output};
use crate::cached_plan::CachedPlan;
use crate::catalog::{SharedCatalog, TableDef, CATALOG_NAME, DEFAULT_SCHEMA};
use crate::error::{from_datafusion, raft_error, sqlstate, Error, Result};
use crate::names::identifier;
use crate::parse::{Statement, StatementKind};
use crate::provider::SessionCatalog;
use crate::runtime::{is_point_sized, query_runtime};
use crate::settings::{
    canonical_setting, default_settings, on_off, parse_bool_setting, parse_bytes,
    parse_duration_ms, parse_set, startup_options, unknown_setting, ReadConsistency, REPORTED,
};
use crate::subplan::{ApplyCorrelatedSubqueries, SluiceQueryPlanner};
use crate::table::ReadView;
use crate::transaction::{
    IsolationLevel, Transaction, TransactionRegistry, TransactionState, TransactionStats,
};
use crate::values_scan::MAX_PARAMETER_NUMBER;
use crate::{copy, ddl, dml, literal_insert};
use sluice_raftstore::{ApplyError, Command};

/// Compiled DEFAULT expressions per table id, with the definition they were compiled from.
type DefaultsCache = HashMap<u64, (Arc<TableDef>, HashMap<String, Expr>)>;

/// State shared by every session of a node.
pub struct Database {
    raft: Arc<RaftNode>,
    pub(crate) catalog: Arc<SharedCatalog>,
    parser: PostgresCompatibilityParser,
    /// Evaluates DEFAULT expressions; kept apart from sessions' settings.
    expr_context: SessionContext,
    defaults: Mutex<DefaultsCache>,
    pub(crate) rowids: dml::RowIdGenerator,
    pub(crate) transactions: Arc<TransactionRegistry>,
    pub(crate) topics: Arc<crate::topic::TopicCounters>,
    /// What every session's DataFusion context starts from.
    template: SessionTemplate,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database").finish_non_exhaustive()
    }
}

impl Database {
    /// Loads the catalog through a linearizable read and returns the database.
    pub async fn open(raft: Arc<RaftNode>) -> Result<Arc<Database>> {
        let catalog = Arc::new(SharedCatalog::default());
        let snapshot = raft.read_snapshot().await.map_err(raft_error)?;
        catalog.refresh(snapshot.as_ref())?;
        let db = Arc::new_cyclic(|db: &std::sync::Weak<Database>| Database {
            template: SessionTemplate::new(db.clone(), &raft, &catalog),
            raft,
            catalog,
            parser: PostgresCompatibilityParser::new(),
            expr_context: SessionContext::new_with_config(base_config()),
            defaults: Mutex::default(),
            rowids: dml::RowIdGenerator::new(),
            transactions: Arc::default(),
            topics: Arc::default(),
        });
        crate::topic::spawn_retention(Arc::downgrade(&db));
        Ok(db)
    }

    /// Every consumer group's lag per committed partition, from the local
    /// replica (for metrics).
    pub fn consumer_lag(&self) -> Result<Vec<crate::system_views::ConsumerLag>> {
        let snapshot = self.raft.local_snapshot();
        let catalog = self.catalog.refresh(snapshot.as_ref())?;
        crate::system_views::consumer_lag(snapshot.as_ref(), &catalog)
    }

    /// Appends, subscriptions and retention (for metrics).
    pub fn topic_stats(&self) -> crate::topic::TopicStats {
        self.topics.snapshot()
    }

    /// Open transaction blocks and how finished ones ended (for metrics).
    pub fn transaction_stats(&self) -> TransactionStats {
        self.transactions.stats()
    }

    pub fn raft(&self) -> &Arc<RaftNode> {
        &self.raft
    }

    pub fn new_session(self: &Arc<Self>, startup: &[(String, String)]) -> Session {
        Session::new(self.clone(), startup)
    }

    /// DataFusion expressions of a table's DEFAULT clauses, cached per definition.
    fn defaults_for(&self, def: &Arc<TableDef>) -> HashMap<String, Expr> {
        let mut cache = self.defaults.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached_def, exprs)) = cache.get(&def.id) {
            if Arc::ptr_eq(cached_def, def) {
                return exprs.clone();
            }
        }
        let exprs = self.compile_defaults(def);
        cache.insert(def.id, (def.clone(), exprs.clone()));
        exprs
    }

    fn compile_defaults(&self, def: &TableDef) -> HashMap<String, Expr> {
        let mut exprs = HashMap::new();
        let Ok(schema) = DFSchema::try_from(def.arrow_schema().as_ref().clone()) else {
            return exprs;
        };
        for column in &def.columns {
            let Some(sql) = &column.default else { continue };
            match self.compile_default(sql, &schema) {
                Ok(expr) => {
                    exprs.insert(column.name.clone(), expr);
                }
                // Validated at CREATE TABLE; reaching this means a newer
                // version wrote a default this one cannot plan.
                Err(e) => {
                    tracing::error!(table = %def.qualified_name(), column = %column.name, "default expression: {e}")
                }
            }
        }
        exprs
    }

    pub(crate) fn compile_default(&self, sql: &str, schema: &DFSchema) -> Result<Expr> {
        self.expr_context
            .state()
            .create_logical_expr(sql, schema)
            .map_err(from_datafusion)
    }

    /// A linearizable snapshot and the catalog as of that snapshot.
    pub(crate) async fn read_view(&self) -> Result<Arc<dyn Snapshot>> {
        self.read_view_at(ReadConsistency::Linearizable).await
    }

    /// A snapshot at the given consistency and the catalog as of it. A stale
    /// snapshot is this replica's applied state, with no leader round trip;
    /// writes planned from it are still validated at apply (their row
    /// checks fail with 40001 if what they read was out of date).
    pub(crate) async fn read_view_at(
        &self,
        consistency: ReadConsistency,
    ) -> Result<Arc<dyn Snapshot>> {
        let snapshot = match consistency {
            ReadConsistency::Linearizable => self.raft.read_snapshot().await.map_err(raft_error)?,
            ReadConsistency::Stale => self.raft.local_snapshot(),
        };
        self.catalog.refresh(snapshot.as_ref())?;
        Ok(snapshot)
    }
}

/// A DataFusion context with Sluice's planner extensions: correlated
/// subqueries DataFusion cannot decorrelate are evaluated per outer row
/// ([`crate::apply`]).
fn new_context() -> SessionContext {
    let state = SessionStateBuilder::new()
        .with_config(base_config())
        .with_default_features()
        .with_query_planner(Arc::new(SluiceQueryPlanner))
        .build();
    let ctx = SessionContext::new_with_state(state);
    ctx.add_optimizer_rule(Arc::new(ApplyCorrelatedSubqueries));
    ctx
}

/// A session's DataFusion state before the session's own catalog is put in:
/// built once per node, because datafusion-pg-catalog decodes its static
/// tables (about a megabyte of Arrow files) and registers its functions for
/// every context it sets up, which made each connection cost megabytes and
/// milliseconds.
///
/// Its system schemas (`pg_catalog` and `sluice_catalog`) are shared by every
/// session. `pg_catalog` lists tables through the template's own catalog,
/// which reads the same shared Sluice catalog as the sessions'.
struct SessionTemplate {
    state: SessionState,
    catalog: Arc<SessionCatalog>,
}

impl SessionTemplate {
    fn new(
        db: std::sync::Weak<Database>,
        raft: &Arc<RaftNode>,
        shared: &Arc<SharedCatalog>,
    ) -> Self {
        let ctx = new_context();
        // The template holds the database weakly: the database holds it.
        let catalog = Arc::new(SessionCatalog::new(
            shared.clone(),
            Arc::new(move |def: &Arc<TableDef>| {
                db.upgrade()
                    .map(|db| db.defaults_for(def))
                    .unwrap_or_default()
            }),
        ));
        ctx.register_catalog(CATALOG_NAME, catalog.clone());
        if let Err(e) =
            datafusion_pg_catalog::setup_pg_catalog(&ctx, CATALOG_NAME, EmptyContextProvider)
        {
            tracing::error!("pg_catalog setup failed: {e}");
        }
        if let Err(e) = datafusion::catalog::CatalogProvider::register_schema(
            catalog.as_ref(),
            crate::system_views::SCHEMA_NAME,
            Arc::new(crate::system_views::SystemViews::new(
                raft.clone(),
                shared.clone(),
            )),
        ) {
            tracing::error!("sluice_catalog setup failed: {e}");
        }
        crate::functions::register(&ctx);
        SessionTemplate {
            state: ctx.state(),
            catalog,
        }
    }

    /// The template's state whose only catalog is `catalog`, given the
    /// template's system schemas.
    fn session_state(&self, catalog: &Arc<SessionCatalog>) -> SessionState {
        catalog.share_system_schemas(&self.catalog);
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        catalogs.register_catalog(CATALOG_NAME.to_string(), catalog.clone());
        SessionStateBuilder::new_from_existing(self.state.clone())
            .with_catalog_list(catalogs)
            .build()
    }
}

fn base_config() -> SessionConfig {
    let mut config = SessionConfig::new()
        .with_default_catalog_and_schema(CATALOG_NAME, DEFAULT_SCHEMA)
        .with_create_default_catalog_and_schema(false)
        .with_information_schema(true);
    let options = config.options_mut();
    options.sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
    // PostgreSQL: ASC puts NULLs last, DESC first.
    options.sql_parser.default_null_ordering = "nulls_max".into();
    options.execution.time_zone = Some("+00:00".into());
    // Scans produce one partition in key order; spreading it round-robin only
    // costs point queries a repartition and buys nothing for small results.
    options.optimizer.enable_round_robin_repartition = false;
    config
}

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
    Set {
        name: String,
        value: Option<String>,
    },
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
    /// DDL, which cannot run inside a transaction block yet: tables' and topics'.
    fn is_ddl(&self) -> bool {
        match self {
            PreparedKind::Ddl => true,
            PreparedKind::Stream(plan) => plan.is_ddl(),
            _ => false,
        }
    }

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
    pub(crate) db: Arc<Database>,
    /// The session's DataFusion state. It does not change after the session
    /// opens (the catalog changes behind a shared provider), so statements
    /// borrow it rather than clone it with every function registry. Its
    /// query start time is the session's: plans that read the clock are
    /// planned from a clone that marks its own start (see [`Self::run_plan`]).
    planning_state: SessionState,
    pub(crate) catalog: Arc<SessionCatalog>,
    settings: BTreeMap<String, String>,
    changed: Vec<(String, String)>,
    /// The open transaction block, if any (see [`crate::transaction`]).
    /// Behind a lock only so that `&Session` code paths can write into it;
    /// the session itself is used by one task at a time.
    txn: Mutex<Option<Transaction>>,
    /// Warnings for the client from the last statement.
    notices: Vec<Error>,
    /// Cursors declared `FOR SUBSCRIBE`, until CLOSE or the session ends.
    pub(crate) cursors: crate::topic::Cursors,
    /// Statements of SQL-level `PREPARE`, by name, until DEALLOCATE,
    /// DISCARD ALL or the session ends. (The protocol's named statements
    /// live in the frontend's portal store.)
    sql_prepared: HashMap<String, Arc<Prepared>>,
}

impl Session {
    fn new(db: Arc<Database>, startup: &[(String, String)]) -> Session {
        let defaults_db = db.clone();
        let catalog = Arc::new(SessionCatalog::new(
            db.catalog.clone(),
            Arc::new(move |def: &Arc<TableDef>| defaults_db.defaults_for(def)),
        ));
        let planning_state = db.template.session_state(&catalog);
        let mut settings = default_settings();
        let mut requested: Vec<(String, String)> = Vec::new();
        for (name, value) in startup {
            match name.as_str() {
                "user" => {
                    settings.insert("session_authorization".into(), value.clone());
                }
                // libpq's PGOPTIONS and drivers' `options`: `-c name=value`.
                "options" => requested.extend(startup_options(value)),
                "database" | "replication" => {}
                other => requested.push((other.to_string(), value.clone())),
            }
        }
        for (name, value) in requested {
            if let Some(canonical) = canonical_setting(&name) {
                settings.insert(canonical, value);
            }
        }
        Session {
            db,
            planning_state,
            catalog,
            settings,
            changed: Vec::new(),
            txn: Mutex::new(None),
            notices: Vec::new(),
            cursors: Default::default(),
            sql_prepared: HashMap::new(),
        }
    }

    /// Splits and parses SQL text; empty text yields no statements.
    ///
    /// Statements are parsed as plain PostgreSQL. Only statements that read
    /// the system catalogs (psql's `\d`, drivers' type lookups) go through
    /// datafusion-pg-catalog's compatibility parser: some of its rewrites
    /// (subqueries in a select list replaced by NULL or given `LIMIT 1`,
    /// unqualified names re-qualified) would change the answer of a user
    /// query, so they must never touch one.
    pub fn parse(&self, sql: &str) -> Result<Vec<Statement>> {
        crate::parse::parse(sql, &self.db.parser)
    }

    pub fn reported_parameters(&self) -> Vec<(String, String)> {
        REPORTED
            .iter()
            .map(|name| (name.to_string(), self.setting(name)))
            .collect()
    }

    pub fn take_parameter_changes(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.changed)
    }

    pub fn statement_timeout(&self) -> Option<Duration> {
        parse_duration_ms(&self.setting("statement_timeout")).filter(|d| !d.is_zero())
    }

    /// How long a FETCH from a subscription waits for its first record.
    pub(crate) fn fetch_timeout(&self) -> Duration {
        parse_duration_ms(&self.setting("sluice.fetch_timeout"))
            .or_else(|| parse_duration_ms(crate::settings::DEFAULT_FETCH_TIMEOUT))
            .unwrap_or(Duration::from_millis(500))
    }

    /// How long the client may stay idle inside a transaction block
    /// (`idle_in_transaction_session_timeout`); `None` outside a block or
    /// when the setting is 0.
    pub fn idle_in_transaction_timeout(&self) -> Option<Duration> {
        if self.transaction_state() == TransactionState::Idle {
            return None;
        }
        parse_duration_ms(&self.setting("idle_in_transaction_session_timeout"))
            .filter(|d| !d.is_zero())
    }

    pub fn user(&self) -> String {
        self.setting("session_authorization")
    }

    fn setting(&self, name: &str) -> String {
        if name == "transaction_isolation" {
            if let Some(txn) = &*self.txn.lock().expect("transaction lock") {
                return txn.isolation.name().to_string();
            }
            return self.setting("default_transaction_isolation");
        }
        if name == "transaction_read_only" {
            if let Some(txn) = &*self.txn.lock().expect("transaction lock") {
                return on_off(txn.read_only).to_string();
            }
            return self.setting("default_transaction_read_only");
        }
        self.settings.get(name).cloned().unwrap_or_default()
    }

    /// Where the session's transaction block stands.
    pub fn transaction_state(&self) -> TransactionState {
        match &*self.txn.lock().expect("transaction lock") {
            None => TransactionState::Idle,
            Some(txn) if txn.failed => TransactionState::Failed,
            Some(_) => TransactionState::Open,
        }
    }

    /// Fails the open transaction block, if any: the frontend calls this
    /// for errors raised outside [`Self::execute`] (while streaming rows).
    pub fn mark_failed(&self) {
        if let Some(txn) = &mut *self.txn.lock().expect("transaction lock") {
            txn.failed = true;
        }
    }

    /// Warnings the last statement raised (PostgreSQL sends them as notices).
    pub fn take_notices(&mut self) -> Vec<Error> {
        std::mem::take(&mut self.notices)
    }

    fn no_transaction_notice(&mut self) {
        self.notices.push(Error::new(
            sqlstate::NO_ACTIVE_SQL_TRANSACTION,
            "there is no transaction in progress",
        ));
    }

    /// What statements read: a linearizable snapshot, or inside a
    /// transaction block the block's snapshot with its writes laid over.
    pub(crate) async fn read_view(&self) -> Result<Arc<dyn Snapshot>> {
        let needs_snapshot = self
            .txn
            .lock()
            .expect("transaction lock")
            .as_ref()
            .map(Transaction::needs_snapshot);
        let consistency = ReadConsistency::parse(&self.setting("sluice.read_consistency"))?;
        let Some(needs_snapshot) = needs_snapshot else {
            return self.db.read_view_at(consistency).await;
        };
        let fresh = if needs_snapshot {
            Some(self.db.read_view_at(consistency).await?)
        } else {
            None
        };
        let mut guard = self.txn.lock().expect("transaction lock");
        let txn = guard.as_mut().ok_or_else(|| {
            Error::new(sqlstate::INTERNAL_ERROR, "transaction ended mid-statement")
        })?;
        if let Some(snapshot) = fresh {
            txn.set_snapshot(snapshot);
        }
        txn.view()?
            .ok_or_else(|| Error::new(sqlstate::INTERNAL_ERROR, "transaction has no snapshot"))
    }

    /// Applies a statement's mutations to the open block's write set; the
    /// inner error is a rejection by the replicas' rules (duplicate key).
    pub(crate) fn write_in_transaction(
        &self,
        mutations: Vec<sluice_raftstore::Mutation>,
    ) -> Result<std::result::Result<sluice_raftstore::ApplyOutcome, ApplyError>> {
        match &mut *self.txn.lock().expect("transaction lock") {
            Some(txn) => txn.apply(mutations),
            None => Err(Error::new(
                sqlstate::INTERNAL_ERROR,
                "no transaction block is open",
            )),
        }
    }

    async fn commit(&mut self) -> Result<Output> {
        let txn = self.txn.lock().expect("transaction lock").take();
        let Some(mut txn) = txn else {
            self.no_transaction_notice();
            return Ok(Output::Command(CommandTag::new("COMMIT")));
        };
        if txn.failed {
            return Ok(Output::Command(CommandTag::new("ROLLBACK")));
        }
        if let Some(mutations) = txn.commit_command()? {
            let appended = crate::topic::append_size(&mutations);
            match self.db.raft().propose(Command { mutations }).await {
                Ok(_) => self.db.topics.appended(appended),
                Err(sluice_raftstore::Error::Apply(
                    conflict @ (ApplyError::Conflict { .. } | ApplyError::ReadConflict { .. }),
                )) => {
                    self.db.transactions.conflict();
                    return Err(self.commit_conflict(&conflict));
                }
                Err(e) => return Err(raft_error(e)),
            }
        }
        txn.committed();
        Ok(Output::Command(CommandTag::new("COMMIT")))
    }

    /// The 40001 for a commit that a transaction committed first invalidated:
    /// a row it wrote changed, or (SERIALIZABLE) something it read.
    fn commit_conflict(&self, conflict: &ApplyError) -> Error {
        let (ApplyError::Conflict { key }
        | ApplyError::ReadConflict { key }
        | ApplyError::DuplicateKey { key }
        | ApplyError::CorruptLog { log: key }) = conflict;
        let what = self.db.catalog.current().describe_data_key(key);
        let (message, detail) = match conflict {
            ApplyError::ReadConflict { .. } => (
                "could not serialize access due to read/write dependencies among transactions",
                format!("Rows this transaction read ({what}) were changed, added or removed by"),
            ),
            _ => (
                "could not serialize access due to concurrent update",
                format!("A row this transaction read for writing ({what}) was changed by"),
            ),
        };
        Error::new(sqlstate::SERIALIZATION_FAILURE, message).with_detail(format!(
            "{detail} a transaction that committed first; nothing of this transaction was \
             written. Retry it."
        ))
    }

    /// Runs a savepoint command on the open block, refusing it outside one.
    fn in_block(
        &self,
        command: &str,
        action: impl FnOnce(&mut Transaction) -> Result<()>,
    ) -> Result<()> {
        match &mut *self.txn.lock().expect("transaction lock") {
            Some(txn) => action(txn),
            None => Err(Error::new(
                sqlstate::NO_ACTIVE_SQL_TRANSACTION,
                format!("{command} can only be used in transaction blocks"),
            )),
        }
    }

    /// The relation `name` denotes for `access` in the catalog this node last
    /// loaded ([`crate::resolve::require`]).
    pub(crate) fn relation(
        &self,
        name: &ast::ObjectName,
        access: crate::resolve::Access,
    ) -> Result<Arc<TableDef>> {
        crate::resolve::require(&self.db.catalog.current(), name, access)
    }

    /// Sets the open block's isolation level and access mode, with the checks
    /// of PostgreSQL's `transaction_isolation` and `transaction_read_only`:
    /// the level may change only before the block's first query and outside
    /// a savepoint; read-only may be turned on at any time, off only before
    /// the first query. Used by SET TRANSACTION, `SET transaction_*` and a
    /// BEGIN inside an open block (which PostgreSQL warns about and then
    /// applies). Outside a block it only warns, as PostgreSQL does.
    fn set_transaction_modes(&mut self, modes: TransactionModes) -> Result<()> {
        let mut guard = self.txn.lock().expect("transaction lock");
        let Some(txn) = guard.as_mut() else {
            drop(guard);
            self.notices.push(Error::new(
                sqlstate::NO_ACTIVE_SQL_TRANSACTION,
                "SET TRANSACTION can only be used in transaction blocks",
            ));
            return Ok(());
        };
        if let Some(level) = modes.isolation.filter(|level| *level != txn.isolation) {
            if txn.in_subtransaction() {
                return Err(Error::new(
                    sqlstate::ACTIVE_SQL_TRANSACTION,
                    "SET TRANSACTION ISOLATION LEVEL must not be called in a subtransaction",
                ));
            }
            if txn.has_snapshot() {
                return Err(Error::new(
                    sqlstate::ACTIVE_SQL_TRANSACTION,
                    "SET TRANSACTION ISOLATION LEVEL must be called before any query",
                ));
            }
            txn.isolation = level;
        }
        match modes.read_only {
            Some(false) if txn.read_only && txn.has_snapshot() => {
                return Err(Error::new(
                    sqlstate::ACTIVE_SQL_TRANSACTION,
                    "transaction read-write mode must be set before any query",
                ));
            }
            Some(read_only) => txn.read_only = read_only,
            None => {}
        }
        Ok(())
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
        let version = self.db.catalog.current().version;
        let first = self.prepare_once(statement.clone(), param_types).await;
        match first {
            Err(e) if names_missing_object(&e) => {
                self.db.read_view().await?;
                if self.db.catalog.current().version == version {
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
        if self.transaction_state() == TransactionState::Failed
            && !matches!(
                *statement.kind,
                StatementKind::Sql(ast::Statement::Commit { .. } | ast::Statement::Rollback { .. })
            )
        {
            return Err(aborted_block());
        }
        let catalog_version = self.db.catalog.current().version;
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
                let (kind, result_schema) = crate::topic::prepare(self, stream).await?;
                return Ok(Arc::new(Prepared {
                    statement,
                    param_types: Vec::new(),
                    result_schema,
                    kind,
                    catalog_version,
                }));
            }
        };
        let (kind, result_schema, param_types) = match ast {
            ast::Statement::Query(_) | ast::Statement::Explain { .. } => {
                let plan = self.plan(ast.clone()).await?;
                let schema = crate::names::postgres_column_names(ast, plan.schema().as_arrow());
                let types = parameter_types(&plan, param_types)?;
                (
                    PreparedKind::Query(self.cache(plan).await?),
                    Some(schema),
                    types,
                )
            }
            ast::Statement::Insert(_) | ast::Statement::Update(_) | ast::Statement::Delete(_) => {
                let rows = scanned.map(|scanned| scanned.rows());
                match literal_insert::plan(self, ast, rows, param_types) {
                    Some(insert) => {
                        let types = insert.param_types.clone();
                        (PreparedKind::LiteralInsert(Box::new(insert)), None, types)
                    }
                    None => {
                        let whole = scanned.map_or(ast, |scanned| scanned.whole());
                        let (plan, types) = dml::prepare(self, whole, param_types).await?;
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
            ast::Statement::Set(set) => {
                let (name, value) = parse_set(set)?;
                (PreparedKind::Set { name, value }, None, Vec::new())
            }
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
                let kind = copy::prepare(self, ast).await?;
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
                    let plan = match self.parse(&select)?.pop().map(Statement::into_sql) {
                        Some(Ok(ast)) => self.plan(ast).await?,
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
                    (Some(self.cache(plan).await?), types)
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

    /// Keeps `plan` for repeated execution, optimized once where that is safe.
    pub(crate) async fn cache(&self, plan: LogicalPlan) -> Result<CachedPlan> {
        // Optimizing needs no per-query state: plans that read the clock are
        // not optimized here.
        CachedPlan::new(&self.planning_state, plan).await
    }

    /// Plans a statement with DataFusion against the current catalog.
    pub(crate) async fn plan(&self, mut statement: ast::Statement) -> Result<LogicalPlan> {
        crate::names::disambiguate_select_items(&mut statement);
        crate::names::name_function_columns_after_their_alias(&mut statement);
        // SQL-to-plan translation evaluates nothing, so the session's state
        // serves (its query start time is not read).
        self.planning_state
            .statement_to_plan(DfStatement::Statement(Box::new(statement)))
            .await
            .map_err(from_datafusion)
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
            prepared.kind.writes() && self.transaction_state() == TransactionState::Idle;
        if idle_write && self.default_read_only()? {
            // A statement outside a block is a transaction of its own, and
            // default_transaction_read_only makes it read-only too.
            return Err(Error::new(
                sqlstate::READ_ONLY_SQL_TRANSACTION,
                "cannot write in a read-only transaction",
            ));
        }
        let implicit = matches!(prepared.kind, PreparedKind::Dml(_))
            && idle_write
            && self.default_isolation()? == IsolationLevel::Serializable;
        if implicit {
            self.begin_implicit()?;
        }
        let result = self.execute_in_block(prepared, params).await;
        if result.is_err() {
            self.mark_failed();
        }
        if implicit {
            self.finish_implicit(result.is_ok()).await?;
        }
        result
    }

    /// `sluice.max_transaction_bytes` in bytes: a block's writes, the old
    /// values it checks and the reads it records must fit in one Raft
    /// command, so at most three quarters of the command limit.
    fn transaction_limit_of(&self, value: &str) -> Result<usize> {
        let most = self.db.raft().max_command_bytes() / 4 * 3;
        match parse_bytes(value) {
            Some(bytes) if (1024..=most).contains(&bytes) => Ok(bytes),
            _ => Err(Error::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!(
                    "invalid value for parameter \"sluice.max_transaction_bytes\": \"{value}\""
                ),
            )
            .with_detail(format!(
                "Give a size from 1kB to {}MB (three quarters of the Raft command limit).",
                most >> 20
            ))),
        }
    }

    fn transaction_limit(&self) -> Result<usize> {
        self.transaction_limit_of(&self.setting("sluice.max_transaction_bytes"))
    }

    fn default_isolation(&self) -> Result<IsolationLevel> {
        IsolationLevel::parse(&self.setting("default_transaction_isolation"))
    }

    fn default_read_only(&self) -> Result<bool> {
        parse_bool_setting(
            "default_transaction_read_only",
            &self.setting("default_transaction_read_only"),
        )
    }

    /// Opens an implicit transaction block unless a block is open: the
    /// statements of one multi-statement query run in it, as in PostgreSQL,
    /// and it ends with [`Self::finish_implicit`].
    pub fn begin_implicit(&mut self) -> Result<()> {
        let isolation = self.default_isolation()?;
        let read_only = self.default_read_only()?;
        let limit = self.transaction_limit()?;
        let mut txn = self.txn.lock().expect("transaction lock");
        if txn.is_none() {
            let mut implicit =
                Transaction::new(self.db.transactions.clone(), isolation, read_only, limit);
            implicit.implicit = true;
            *txn = Some(implicit);
        }
        Ok(())
    }

    /// Ends the implicit block if one is open: commits it when its
    /// statements succeeded (the commit itself can fail, with 40001),
    /// otherwise discards it. An explicit block is left alone.
    pub async fn finish_implicit(&mut self, succeeded: bool) -> Result<()> {
        let implicit = matches!(
            &*self.txn.lock().expect("transaction lock"),
            Some(txn) if txn.implicit
        );
        if !implicit {
            return Ok(());
        }
        if succeeded {
            self.commit().await?;
        } else {
            self.txn.lock().expect("transaction lock").take();
        }
        Ok(())
    }

    async fn execute_in_block(
        &mut self,
        prepared: &Prepared,
        params: Vec<ScalarValue>,
    ) -> Result<Output> {
        match self.transaction_state() {
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
            TransactionState::Open if prepared.kind.is_ddl() => {
                return Err(Error::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "DDL inside a transaction block is not supported yet",
                )
                .with_detail("Run it outside BEGIN … COMMIT; it commits on its own."));
            }
            _ => {}
        }
        if prepared.kind.uses_catalog()
            && prepared.catalog_version != self.db.catalog.current().version
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
                let snapshot = self.read_view().await?;
                let stream = self.run_cached(&plan, snapshot).await?;
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
                dml::execute(self, plan, &prepared.param_types, params).await
            }
            PreparedKind::LiteralInsert(insert) => {
                literal_insert::execute(self, insert, params).await
            }
            PreparedKind::Ddl => match prepared.statement.sql() {
                Some(ast) => ddl::execute(self, ast).await,
                None => Err(Error::new(
                    sqlstate::INTERNAL_ERROR,
                    "DDL without a statement",
                )),
            },
            PreparedKind::Stream(plan) => crate::topic::execute(self, plan).await,
            PreparedKind::Cluster(change) => {
                if self.transaction_state() != TransactionState::Idle {
                    return Err(Error::new(
                        sqlstate::ACTIVE_SQL_TRANSACTION,
                        "membership changes cannot run inside a transaction block",
                    ));
                }
                crate::cluster::execute(self, change).await
            }
            PreparedKind::Set { name, value } => {
                self.apply_set(name, value.clone())?;
                Ok(Output::Command(CommandTag::new("SET")))
            }
            PreparedKind::Show(name) => {
                let schema = prepared
                    .result_schema
                    .clone()
                    .unwrap_or_else(|| Arc::new(Schema::empty()));
                let value = self.setting(name);
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
                let limit = self.transaction_limit()?;
                let mut txn = self.txn.lock().expect("transaction lock");
                match txn.as_mut() {
                    Some(open) => {
                        if open.implicit {
                            // BEGIN inside an implicit block makes it explicit, as in PostgreSQL.
                            open.implicit = false;
                        } else {
                            self.notices.push(Error::new(
                                sqlstate::ACTIVE_SQL_TRANSACTION,
                                "there is already a transaction in progress",
                            ));
                        }
                        // Either way PostgreSQL applies BEGIN's modes to the
                        // open block, under SET TRANSACTION's rules: a client
                        // that opened a block itself (psycopg, pgJDBC) still
                        // gets the level its application's BEGIN asks for.
                        drop(txn);
                        self.set_transaction_modes(*modes)?;
                    }
                    None => {
                        let isolation = match modes.isolation {
                            Some(level) => level,
                            None => self.default_isolation()?,
                        };
                        let read_only = match modes.read_only {
                            Some(read_only) => read_only,
                            None => self.default_read_only()?,
                        };
                        *txn = Some(Transaction::new(
                            self.db.transactions.clone(),
                            isolation,
                            read_only,
                            limit,
                        ));
                    }
                }
                Ok(Output::Command(CommandTag::new("BEGIN")))
            }
            PreparedKind::Commit => self.commit().await,
            PreparedKind::Rollback => {
                if self.txn.lock().expect("transaction lock").take().is_none() {
                    self.no_transaction_notice();
                }
                Ok(Output::Command(CommandTag::new("ROLLBACK")))
            }
            PreparedKind::Savepoint(name) => {
                self.in_block("SAVEPOINT", |txn| {
                    txn.savepoint(name.clone());
                    Ok(())
                })?;
                Ok(Output::Command(CommandTag::new("SAVEPOINT")))
            }
            PreparedKind::ReleaseSavepoint(name) => {
                self.in_block("RELEASE SAVEPOINT", |txn| txn.release(name))?;
                Ok(Output::Command(CommandTag::new("RELEASE")))
            }
            PreparedKind::RollbackToSavepoint(name) => {
                self.in_block("ROLLBACK TO SAVEPOINT", |txn| txn.rollback_to(name))?;
                Ok(Output::Command(CommandTag::new("ROLLBACK")))
            }
            PreparedKind::SetTransaction { modes, session } => {
                if *session {
                    if let Some(level) = modes.isolation {
                        self.apply_set("default_transaction_isolation", Some(level.name().into()))?;
                    }
                    if let Some(read_only) = modes.read_only {
                        self.apply_set(
                            "default_transaction_read_only",
                            Some(on_off(read_only).into()),
                        )?;
                    }
                } else {
                    self.set_transaction_modes(*modes)?;
                }
                Ok(Output::Command(CommandTag::new("SET")))
            }
            PreparedKind::CopyIn(copy) => Ok(Output::CopyIn(copy.clone())),
            PreparedKind::CopyOut { plan, options } => {
                let snapshot = self.read_view().await?;
                let stream = self.run_cached(plan, snapshot).await?;
                Ok(Output::CopyOut {
                    schema: stream.schema(),
                    stream,
                    options: options.clone(),
                })
            }
            PreparedKind::Tag(tag) => {
                if *tag == "DISCARD ALL" {
                    self.settings = default_settings();
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
                        let snapshot = self.read_view().await?;
                        let stream = self.run_cached(&plan, snapshot).await?;
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

    /// Runs a logical plan against `snapshot`, streaming its batches.
    pub(crate) async fn run(
        &self,
        plan: &LogicalPlan,
        snapshot: Arc<dyn Snapshot>,
    ) -> Result<SendableRecordBatchStream> {
        self.run_plan(plan, false, snapshot).await
    }

    /// Runs a bound [`CachedPlan`]: its kept physical plan, else its logical
    /// plan, skipping the optimizer if it has run.
    pub(crate) async fn run_cached(
        &self,
        plan: &CachedPlan,
        snapshot: Arc<dyn Snapshot>,
    ) -> Result<SendableRecordBatchStream> {
        match plan.physical() {
            Some(physical) => self.run_physical(physical.clone(), snapshot),
            None => {
                self.run_plan(plan.plan(), plan.is_optimized(), snapshot)
                    .await
            }
        }
    }

    async fn run_plan(
        &self,
        plan: &LogicalPlan,
        optimized: bool,
        snapshot: Arc<dyn Snapshot>,
    ) -> Result<SendableRecordBatchStream> {
        let physical = if optimized {
            self.planning_state
                .query_planner()
                .create_physical_plan(plan, &self.planning_state)
                .await
        } else {
            // Optimized now, so `now()` and friends fold to this statement's
            // start time.
            let mut state = self.planning_state.clone();
            state.mark_start_execution();
            state.create_physical_plan(plan).await
        }
        .map_err(from_datafusion)?;
        self.run_physical(physical, snapshot)
    }

    fn run_physical(
        &self,
        physical: Arc<dyn ExecutionPlan>,
        snapshot: Arc<dyn Snapshot>,
    ) -> Result<SendableRecordBatchStream> {
        let state = &self.planning_state;
        let mut config = state.config().clone();
        config.set_extension(Arc::new(ReadView { snapshot }));
        // Execution looks functions up nowhere (they are resolved into the
        // physical plan), so the task carries no copies of the registries.
        let task = TaskContext::new(
            None,
            state.session_id().to_string(),
            config,
            HashMap::new(),
            HashMap::new(),
            HashMap::new(),
            HashMap::new(),
            state.runtime_env().clone(),
        );
        if is_point_sized(physical.as_ref()) {
            // A point lookup or an INSERT's VALUES computes for microseconds:
            // the two thread hand-offs to the query runtime and back would cost
            // more than the plan itself (see [`is_point_sized`]).
            return execute_stream(physical, Arc::new(task)).map_err(from_datafusion);
        }
        // The plan runs on the query runtime (see [`query_runtime`]): one
        // batch of a join can compute for seconds without yielding, and the
        // connection's runtime must stay free to answer a cancel or
        // statement_timeout on time. `execute` itself runs there too, since
        // operators such as CoalescePartitionsExec spawn their partitions'
        // tasks from it. Dropping the returned stream aborts the task.
        let runtime = query_runtime()?;
        let mut builder = RecordBatchReceiverStream::builder(physical.schema(), 2);
        let tx = builder.tx();
        builder.spawn_on(
            async move {
                let mut stream = execute_stream(physical, Arc::new(task))?;
                while let Some(batch) = stream.next().await {
                    if tx.send(batch).await.is_err() {
                        break;
                    }
                }
                Ok(())
            },
            runtime,
        );
        Ok(builder.build())
    }

    /// COPY FROM STDIN data rows: see [`copy::insert_rows`].
    pub async fn copy_rows(
        &mut self,
        copy: &crate::api::CopyIn,
        rows: Vec<Vec<Option<String>>>,
    ) -> Result<u64> {
        copy::insert_rows(self, copy, rows).await
    }

    fn apply_set(&mut self, name: &str, value: Option<String>) -> Result<()> {
        let mut value = match value {
            Some(v) => v,
            None => default_settings().get(name).cloned().unwrap_or_default(),
        };
        match name {
            "transaction_isolation" => {
                return self.set_transaction_modes(TransactionModes {
                    isolation: Some(IsolationLevel::parse(&value)?),
                    read_only: None,
                });
            }
            "transaction_read_only" => {
                return self.set_transaction_modes(TransactionModes {
                    isolation: None,
                    read_only: Some(parse_bool_setting(name, &value)?),
                });
            }
            "default_transaction_read_only" => {
                value = on_off(parse_bool_setting(name, &value)?).to_string();
            }
            "default_transaction_isolation" => {
                IsolationLevel::parse(&value)?;
            }
            "sluice.max_transaction_bytes" => {
                self.transaction_limit_of(&value)?;
            }
            "sluice.read_consistency" => {
                ReadConsistency::parse(&value)?;
            }
            "statement_timeout"
            | "lock_timeout"
            | "idle_in_transaction_session_timeout"
            | "sluice.fetch_timeout"
                if parse_duration_ms(&value).is_none() =>
            {
                return Err(Error::new(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    format!("invalid value for parameter \"{name}\": \"{value}\""),
                ));
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
                    sqlstate::INVALID_PARAMETER_VALUE,
                    format!("parameter \"{name}\" cannot be changed"),
                ));
            }
            _ => {}
        }
        if REPORTED.contains(&name) && self.settings.get(name) != Some(&value) {
            self.changed.push((name.to_string(), value.clone()));
        }
        self.settings.insert(name.to_string(), value);
        Ok(())
    }
}

impl Drop for Session {
    /// Cursors of consumer groups leave their groups with the session.
    fn drop(&mut self) {
        let db = self.db.clone();
        for (_, mut open) in self.cursors.drain() {
            open.leave(&db);
        }
    }
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// One type per `$n`, ordered by n: the client's where given, else DataFusion's
/// inference, else text (the client may send any literal as text).
pub(crate) fn parameter_types(
    plan: &LogicalPlan,
    declared: &[Option<DataType>],
) -> Result<Vec<DataType>> {
    let inferred = plan.get_parameter_types().map_err(from_datafusion)?;
    let cast = cast_parameter_types(plan);
    let mut max = declared.len();
    for name in inferred.keys() {
        if let Some(n) = name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
            max = max.max(n);
        }
    }
    Ok((1..=max)
        .map(|n| {
            declared
                .get(n - 1)
                .cloned()
                .flatten()
                .or_else(|| inferred.get(&format!("${n}")).cloned().flatten())
                .or_else(|| cast.get(&format!("${n}")).cloned())
                .unwrap_or(DataType::Utf8)
        })
        .collect())
}

/// Types of parameters that appear only under a cast (`$1::int`), which
/// DataFusion leaves uninferred but PostgreSQL types by the cast.
fn cast_parameter_types(plan: &LogicalPlan) -> HashMap<String, DataType> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut found = HashMap::new();
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                let cast = match e {
                    Expr::Cast(c) => Some((&c.expr, &c.field)),
                    Expr::TryCast(c) => Some((&c.expr, &c.field)),
                    _ => None,
                };
                if let Some((inner, field)) = cast {
                    if let Expr::Placeholder(p) = inner.as_ref() {
                        found
                            .entry(p.id.clone())
                            .or_insert_with(|| field.data_type().clone());
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    found
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

/// The modes of BEGIN and SET TRANSACTION; `None` where the statement does
/// not name one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TransactionModes {
    pub isolation: Option<IsolationLevel>,
    pub read_only: Option<bool>,
}

fn transaction_modes(modes: &[ast::TransactionMode]) -> TransactionModes {
    let mut parsed = TransactionModes::default();
    for mode in modes {
        match mode {
            ast::TransactionMode::IsolationLevel(level) => {
                parsed.isolation = Some(match level {
                    ast::TransactionIsolationLevel::ReadUncommitted
                    | ast::TransactionIsolationLevel::ReadCommitted => {
                        IsolationLevel::ReadCommitted
                    }
                    ast::TransactionIsolationLevel::RepeatableRead
                    | ast::TransactionIsolationLevel::Snapshot => IsolationLevel::RepeatableRead,
                    ast::TransactionIsolationLevel::Serializable => IsolationLevel::Serializable,
                });
            }
            ast::TransactionMode::AccessMode(mode) => {
                parsed.read_only = Some(matches!(mode, ast::TransactionAccessMode::ReadOnly));
            }
        }
    }
    parsed
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
