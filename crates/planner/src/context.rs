//! The context every statement takes: a node's [`Database`] and one
//! session's [`Context`], with the primitives statements are built from.
//!
//! A statement module (dml, ddl, copy, topic, cluster, …) plans against
//! [`Context::plan`], reads through [`Context::read_view`] (a linearizable
//! snapshot, or the open block's snapshot with its writes laid over), and
//! writes through [`Context::propose`] (Raft outside a block, the block's
//! write set inside one). Session settings, the transaction block and its
//! commit live here too. This module names no statement module: the
//! dispatch from statements to their modules is [`crate::session`]'s.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::catalog::{CatalogProviderList, MemoryCatalogProviderList};
use datafusion::common::DFSchema;
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
use sluice_engine::{Snapshot, Value};
use sluice_raftstore::RaftNode;

use crate::api::{CommandTag, Output};
use crate::cached_plan::CachedPlan;
use crate::catalog::{CatalogState, SharedCatalog, TableDef, CATALOG_NAME, DEFAULT_SCHEMA};
use crate::error::{from_datafusion, raft_error, sqlstate, Error, Result};
use crate::parse::Statement;
use crate::provider::SessionCatalog;
use crate::runtime::{is_point_sized, query_runtime};
use crate::settings::{
    canonical_setting, default_settings, on_off, parse_bool_setting, parse_bytes,
    parse_duration_ms, startup_options, validated, ReadConsistency, SessionSettings, REPORTED,
};
use crate::subplan::{ApplyCorrelatedSubqueries, SluiceQueryPlanner};
use crate::table::ReadView;
use crate::transaction::{
    IsolationLevel, Transaction, TransactionModes, TransactionRegistry, TransactionState,
    TransactionStats,
};
use sluice_raftstore::{ApplyError, Command};

/// Compiled DEFAULT expressions per table id, with the definition they were compiled from.
/// What a table's definition compiles to, cached per definition: its
/// DEFAULT expressions and its CHECK constraints.
#[derive(Clone)]
struct TableExpressions {
    defaults: HashMap<String, Expr>,
    checks: Arc<Vec<crate::check::CompiledCheck>>,
}

type ExpressionCache = HashMap<u64, (Arc<TableDef>, TableExpressions)>;

/// State shared by every session of a node.
pub struct Database {
    raft: Arc<RaftNode>,
    pub(crate) catalog: Arc<SharedCatalog>,
    parser: PostgresCompatibilityParser,
    /// Evaluates DEFAULT expressions; kept apart from sessions' settings.
    expr_context: SessionContext,
    expressions: Mutex<ExpressionCache>,
    pub(crate) rowids: crate::table::RowIdGenerator,
    pub(crate) transactions: Arc<TransactionRegistry>,
    pub(crate) topics: Arc<crate::topic::TopicCounters>,
    pub(crate) sequences: Arc<crate::sequence::SequenceAllocator>,
    /// What every session's DataFusion context starts from.
    template: SessionTemplate,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database").finish_non_exhaustive()
    }
}

impl Database {
    /// Loads the catalog through a linearizable read; [`Database::open`]
    /// starts the background work of the statement families too.
    pub(crate) async fn load(raft: Arc<RaftNode>) -> Result<Arc<Database>> {
        let catalog = Arc::new(SharedCatalog::default());
        let snapshot = raft.read_snapshot().await.map_err(raft_error)?;
        catalog.refresh(snapshot.as_ref())?;
        let db = Arc::new_cyclic(|db: &std::sync::Weak<Database>| Database {
            template: SessionTemplate::new(db.clone(), &raft, &catalog),
            sequences: Arc::new(crate::sequence::SequenceAllocator::new(
                raft.clone(),
                catalog.clone(),
            )),
            raft,
            catalog,
            parser: PostgresCompatibilityParser::new(),
            expr_context: expression_context(),
            expressions: Mutex::default(),
            rowids: crate::table::RowIdGenerator::new(),
            transactions: Arc::default(),
            topics: Arc::default(),
        });
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

    /// DataFusion expressions of a table's DEFAULT clauses, cached per definition.
    fn defaults_for(&self, def: &Arc<TableDef>) -> HashMap<String, Expr> {
        self.expressions_for(def).defaults
    }

    /// A table's CHECK constraints, compiled, cached per definition.
    pub(crate) fn checks_for(&self, def: &Arc<TableDef>) -> Arc<Vec<crate::check::CompiledCheck>> {
        self.expressions_for(def).checks
    }

    /// Fails with 23514 when a row to write breaks a CHECK of `def`.
    pub(crate) fn enforce_checks<R: AsRef<[Value]>>(
        &self,
        def: &Arc<TableDef>,
        rows: &[R],
    ) -> Result<()> {
        if def.checks.is_empty() {
            return Ok(());
        }
        crate::check::enforce(def, &self.checks_for(def), rows)
    }

    fn expressions_for(&self, def: &Arc<TableDef>) -> TableExpressions {
        let mut cache = self.expressions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached_def, expressions)) = cache.get(&def.id) {
            if Arc::ptr_eq(cached_def, def) {
                return expressions.clone();
            }
        }
        let expressions = TableExpressions {
            defaults: self.compile_defaults(def),
            checks: Arc::new(crate::check::compile(&self.expr_context, def)),
        };
        cache.insert(def.id, (def.clone(), expressions.clone()));
        expressions
    }

    /// A definition's checks, compiled afresh (for definitions not yet stored).
    pub(crate) fn compile_checks(&self, def: &TableDef) -> Vec<crate::check::CompiledCheck> {
        crate::check::compile(&self.expr_context, def)
    }

    /// Fails unless `sql` can be a CHECK constraint of `def`.
    pub(crate) fn validate_check(&self, def: &TableDef, sql: &str) -> Result<()> {
        crate::check::validate(&self.expr_context, def, sql)
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

/// The context DEFAULT expressions compile in: the sequence and setting
/// functions are the only ones not built in.
fn expression_context() -> SessionContext {
    let ctx = SessionContext::new_with_config(base_config());
    crate::sequence::register(&ctx);
    crate::settings::register(&ctx);
    ctx
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
        crate::sequence::register(&ctx);
        crate::settings::register(&ctx);
        SessionTemplate {
            state: ctx.state(),
            catalog,
        }
    }

    /// The template's state whose only catalog is `catalog`, given the
    /// template's system schemas, carrying the session's face of the
    /// sequences for the sequence functions.
    fn session_state(
        &self,
        catalog: &Arc<SessionCatalog>,
        sequences: crate::sequence::SequenceSession,
        settings: SessionSettings,
    ) -> SessionState {
        catalog.share_system_schemas(&self.catalog);
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        catalogs.register_catalog(CATALOG_NAME.to_string(), catalog.clone());
        let mut config = self.state.config().clone();
        config.options_mut().extensions.insert(sequences);
        config.options_mut().extensions.insert(settings);
        SessionStateBuilder::new_from_existing(self.state.clone())
            .with_config(config)
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

/// One session's planning and transaction state: what every statement takes.
pub(crate) struct Context {
    pub(crate) db: Arc<Database>,
    /// The session's DataFusion state. It does not change after the session
    /// opens (the catalog changes behind a shared provider), so statements
    /// borrow it rather than clone it with every function registry. Its
    /// query start time is the session's: plans that read the clock are
    /// planned from a clone that marks its own start (see [`Self::run_plan`]).
    planning_state: SessionState,
    pub(crate) catalog: Arc<SessionCatalog>,
    /// Shared with `current_setting` and `set_config` (see [`SessionSettings`]).
    settings: SessionSettings,
    /// The open transaction block, if any (see [`crate::transaction`]).
    /// Behind a lock only so that `&Context` code paths can write into it;
    /// the session itself is used by one task at a time.
    txn: Mutex<Option<Transaction>>,
    /// Warnings for the client from the last statement.
    notices: Vec<Error>,
}

impl Context {
    pub(crate) fn new(db: Arc<Database>, startup: &[(String, String)]) -> Context {
        let defaults_db = db.clone();
        let catalog = Arc::new(SessionCatalog::new(
            db.catalog.clone(),
            Arc::new(move |def: &Arc<TableDef>| defaults_db.defaults_for(def)),
        ));
        let sequences =
            crate::sequence::SequenceSession::new(db.sequences.clone(), catalog.clone());
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
        let settings = SessionSettings::new(settings, max_transaction_bytes(&db));
        let planning_state = db
            .template
            .session_state(&catalog, sequences, settings.clone());
        Context {
            db,
            planning_state,
            catalog,
            settings,
            txn: Mutex::new(None),
            notices: Vec::new(),
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
    pub(crate) fn parse(&self, sql: &str) -> Result<Vec<Statement>> {
        crate::parse::parse(sql, &self.db.parser)
    }

    pub(crate) fn reported_parameters(&self) -> Vec<(String, String)> {
        REPORTED
            .iter()
            .map(|name| (name.to_string(), self.setting(name)))
            .collect()
    }

    pub(crate) fn take_parameter_changes(&mut self) -> Vec<(String, String)> {
        self.settings.take_changes()
    }

    pub(crate) fn statement_timeout(&self) -> Option<Duration> {
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
    pub(crate) fn idle_in_transaction_timeout(&self) -> Option<Duration> {
        if self.transaction_state() == TransactionState::Idle {
            return None;
        }
        parse_duration_ms(&self.setting("idle_in_transaction_session_timeout"))
            .filter(|d| !d.is_zero())
    }

    pub(crate) fn user(&self) -> String {
        self.setting("session_authorization")
    }

    pub(crate) fn setting(&self, name: &str) -> String {
        self.settings.get(name).unwrap_or_default()
    }

    /// Where the session's transaction block stands.
    pub(crate) fn transaction_state(&self) -> TransactionState {
        match &*self.txn.lock().expect("transaction lock") {
            None => TransactionState::Idle,
            Some(txn) if txn.failed => TransactionState::Failed,
            Some(_) => TransactionState::Open,
        }
    }

    /// Fails the open transaction block, if any: the frontend calls this
    /// for errors raised outside [`Self::execute`] (while streaming rows).
    pub(crate) fn mark_failed(&self) {
        if let Some(txn) = &mut *self.txn.lock().expect("transaction lock") {
            txn.failed = true;
        }
    }

    /// Warnings the last statement raised (PostgreSQL sends them as notices).
    pub(crate) fn take_notices(&mut self) -> Vec<Error> {
        std::mem::take(&mut self.notices)
    }

    pub(crate) fn no_transaction_notice(&mut self) {
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

    pub(crate) async fn commit(&mut self) -> Result<Output> {
        let txn = self.txn.lock().expect("transaction lock").take();
        let Some(txn) = txn else {
            self.no_transaction_notice();
            return Ok(Output::Command(CommandTag::new("COMMIT")));
        };
        if txn.failed {
            self.settings.restore(txn.settings_at_begin.clone());
            return Ok(Output::Command(CommandTag::new("ROLLBACK")));
        }
        let settings_at_begin = txn.settings_at_begin.clone();
        let committed = self.commit_writes(txn).await;
        match &committed {
            Ok(()) => self.settings.end_transaction(),
            Err(_) => self.settings.restore(settings_at_begin),
        }
        committed.map(|()| Output::Command(CommandTag::new("COMMIT")))
    }

    /// Proposes a block's writes, if it made any, as one command.
    async fn commit_writes(&self, mut txn: Transaction) -> Result<()> {
        let changed_catalog = txn.catalog.is_some();
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
        if changed_catalog {
            self.reload_catalog().await;
        }
        Ok(())
    }

    /// The 40001 for a commit that a transaction committed first invalidated:
    /// a row it wrote changed, or (SERIALIZABLE) something it read.
    fn commit_conflict(&self, conflict: &ApplyError) -> Error {
        let (ApplyError::Conflict { key }
        | ApplyError::ReadConflict { key }
        | ApplyError::DuplicateKey { key }
        | ApplyError::CorruptLog { log: key }
        | ApplyError::SequenceExhausted { key, .. }) = conflict;
        let what = self.catalog_state().describe_data_key(key);
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
    pub(crate) fn in_block(
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
        crate::resolve::require(&self.catalog_state(), name, access)
    }

    /// The catalog this session's statements see: the open block's own
    /// after its DDL, else the one this node last loaded.
    pub(crate) fn catalog_state(&self) -> Arc<CatalogState> {
        self.block_catalog()
            .unwrap_or_else(|| self.db.catalog.current())
    }

    /// The open block's own catalog, once its DDL changed it.
    fn block_catalog(&self) -> Option<Arc<CatalogState>> {
        self.txn
            .lock()
            .expect("transaction lock")
            .as_ref()
            .and_then(|txn| txn.catalog.clone())
    }

    /// Points DataFusion's view of the catalog at [`Self::catalog_state`];
    /// the dispatch calls it around every statement, as a block's DDL,
    /// ROLLBACK TO SAVEPOINT or end changes what the session sees.
    pub(crate) fn sync_block_catalog(&self) {
        self.catalog.set_block_catalog(self.block_catalog());
    }

    /// Loads the catalog a DDL just committed, so that this session's next
    /// statement plans against it. The DDL is acknowledged whether or not
    /// this read succeeds: if it fails (no leader for a moment), the next
    /// statement's own read loads the catalog, so it is not the DDL's error.
    async fn reload_catalog(&self) {
        if let Err(e) = self.db.read_view().await {
            tracing::warn!(error = %e.message, "catalog reload after DDL failed; the next read retries");
        }
    }

    /// Writes a DDL command's catalog mutations (a version check and bump
    /// among them). Outside a block they commit through Raft at once and the
    /// node's catalog reloads; inside one they join the block's write set,
    /// the block reads its own catalog from its view, and COMMIT validates
    /// the version it read, so concurrent DDL fails one side with 40001.
    pub(crate) async fn propose_ddl(
        &self,
        mutations: Vec<sluice_raftstore::Mutation>,
    ) -> Result<()> {
        let ddl_conflict = || {
            Error::new(
                sqlstate::SERIALIZATION_FAILURE,
                "could not serialize DDL: the catalog was changed concurrently; retry",
            )
        };
        if self.transaction_state() == TransactionState::Idle {
            self.db
                .raft()
                .propose(Command { mutations })
                .await
                .map_err(|e| match e {
                    sluice_raftstore::Error::Apply(ApplyError::Conflict { .. }) => ddl_conflict(),
                    other => raft_error(other),
                })?;
            self.reload_catalog().await;
            return Ok(());
        }
        match self.write_in_transaction(mutations)? {
            Ok(_) => {}
            Err(ApplyError::Conflict { .. }) => return Err(ddl_conflict()),
            Err(other) => return Err(raft_error(sluice_raftstore::Error::Apply(other))),
        }
        let view = self.read_view().await?;
        let catalog = Arc::new(CatalogState::load(view.as_ref())?);
        if let Some(txn) = &mut *self.txn.lock().expect("transaction lock") {
            txn.catalog = Some(catalog);
        }
        self.sync_block_catalog();
        Ok(())
    }

    /// Sets the open block's isolation level and access mode, with the checks
    /// of PostgreSQL's `transaction_isolation` and `transaction_read_only`:
    /// the level may change only before the block's first query and outside
    /// a savepoint; read-only may be turned on at any time, off only before
    /// the first query. Used by SET TRANSACTION, `SET transaction_*` and a
    /// BEGIN inside an open block (which PostgreSQL warns about and then
    /// applies). Outside a block it only warns, as PostgreSQL does.
    pub(crate) fn set_transaction_modes(&mut self, modes: TransactionModes) -> Result<()> {
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
        drop(guard);
        self.show_transaction_modes();
        Ok(())
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

    /// `sluice.max_transaction_bytes` in bytes (see [`max_transaction_bytes`]);
    /// checked again here, as a startup option sets it unchecked.
    pub(crate) fn transaction_limit(&self) -> Result<usize> {
        let name = "sluice.max_transaction_bytes";
        let value = validated(name, self.setting(name), max_transaction_bytes(&self.db))?;
        Ok(parse_bytes(&value).expect("a checked size parses"))
    }

    pub(crate) fn default_isolation(&self) -> Result<IsolationLevel> {
        IsolationLevel::parse(&self.setting("default_transaction_isolation"))
    }

    pub(crate) fn default_read_only(&self) -> Result<bool> {
        parse_bool_setting(
            "default_transaction_read_only",
            &self.setting("default_transaction_read_only"),
        )
    }

    /// Opens an implicit transaction block unless a block is open: the
    /// statements of one multi-statement query run in it, as in PostgreSQL,
    /// and it ends with [`Self::finish_implicit`].
    pub(crate) fn begin_implicit(&mut self) -> Result<()> {
        let isolation = self.default_isolation()?;
        let read_only = self.default_read_only()?;
        let limit = self.transaction_limit()?;
        let mut txn = self.txn.lock().expect("transaction lock");
        if txn.is_none() {
            let mut implicit = Transaction::new(
                self.db.transactions.clone(),
                isolation,
                read_only,
                limit,
                self.settings.snapshot(),
            );
            implicit.implicit = true;
            *txn = Some(implicit);
        }
        drop(txn);
        self.show_transaction_modes();
        Ok(())
    }

    /// Ends the implicit block if one is open: commits it when its
    /// statements succeeded (the commit itself can fail, with 40001),
    /// otherwise discards it. An explicit block is left alone.
    pub(crate) async fn finish_implicit(&mut self, succeeded: bool) -> Result<()> {
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
            self.rollback();
        }
        Ok(())
    }

    /// BEGIN: opens a block with `modes` over the session's defaults. Inside
    /// an open block PostgreSQL warns (an implicit block just becomes
    /// explicit) and then applies the modes under SET TRANSACTION's rules,
    /// so a client that opened the block itself (psycopg, pgJDBC) still gets
    /// the level its application's BEGIN asks for.
    pub(crate) fn begin(&mut self, modes: TransactionModes) -> Result<()> {
        let limit = self.transaction_limit()?;
        let mut txn = self.txn.lock().expect("transaction lock");
        if let Some(open) = txn.as_mut() {
            if open.implicit {
                open.implicit = false;
            } else {
                self.notices.push(Error::new(
                    sqlstate::ACTIVE_SQL_TRANSACTION,
                    "there is already a transaction in progress",
                ));
            }
            drop(txn);
            return self.set_transaction_modes(modes);
        }
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
            self.settings.snapshot(),
        ));
        drop(txn);
        self.show_transaction_modes();
        Ok(())
    }

    /// ROLLBACK: discards the open block, warning when there is none.
    pub(crate) fn rollback(&mut self) {
        let txn = self.txn.lock().expect("transaction lock").take();
        match txn {
            Some(txn) => self.settings.restore(txn.settings_at_begin),
            None => self.no_transaction_notice(),
        }
    }

    /// `ROLLBACK TO SAVEPOINT name`: the block's writes and the settings as
    /// they were at the savepoint.
    pub(crate) fn rollback_to_savepoint(&mut self, name: &str) -> Result<()> {
        let mut settings = None;
        self.in_block("ROLLBACK TO SAVEPOINT", |txn| {
            settings = Some(txn.rollback_to(name)?);
            Ok(())
        })?;
        if let Some(settings) = settings {
            self.settings.restore(settings);
        }
        Ok(())
    }

    /// `SAVEPOINT name`.
    pub(crate) fn savepoint(&mut self, name: &str) -> Result<()> {
        let settings = self.settings.snapshot();
        self.in_block("SAVEPOINT", |txn| {
            txn.savepoint(name.to_string(), settings);
            Ok(())
        })
    }

    /// Every setting back to its default (DISCARD ALL, RESET ALL).
    pub(crate) fn reset_settings(&mut self) {
        self.settings.reset();
        self.show_transaction_modes();
    }

    /// Statements outside a block are transactions of their own: a
    /// `set_config(…, true)` of the last one has ended with it.
    pub(crate) fn statement_starts(&self) {
        if self.transaction_state() == TransactionState::Idle {
            self.settings.end_transaction();
        }
    }

    /// Keeps `transaction_isolation` and `transaction_read_only` showing the
    /// open block's modes: they are the transaction's own layer of settings.
    fn show_transaction_modes(&self) {
        if let Some(txn) = &*self.txn.lock().expect("transaction lock") {
            self.settings
                .show_transaction_modes(txn.isolation.name(), on_off(txn.read_only));
        }
    }

    /// Proposes row mutations of `table` with their index upkeep: through
    /// Raft outside a block, into the block's write set inside one.
    /// Rejections by the replicas' rules become PostgreSQL errors that name
    /// the table and key.
    pub(crate) async fn propose(
        &self,
        table: &TableDef,
        mutations: Vec<sluice_raftstore::Mutation>,
    ) -> Result<sluice_raftstore::ApplyOutcome> {
        self.propose_moving(table, mutations, Vec::new()).await
    }

    /// [`Self::propose`] for writes where the rows `moves` names (old key,
    /// new key) change key: foreign keys that refer to them see updates.
    pub(crate) async fn propose_moving(
        &self,
        table: &TableDef,
        mutations: Vec<sluice_raftstore::Mutation>,
        moves: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<sluice_raftstore::ApplyOutcome> {
        if mutations.is_empty() {
            return Ok(Default::default());
        }
        let catalog = self.catalog_state();
        let mutations = if crate::foreign_key::involved(&catalog, table) {
            // Boxed: its future is large, and every writer's future holds it.
            Box::pin(self.with_reference_upkeep(&catalog, table, mutations, moves)).await?
        } else {
            crate::index::with_index_upkeep(table, mutations)?
        };
        // Unique index entries are `Insert`s too; the count is of rows.
        let entry_inserts = mutations
            .iter()
            .filter(|m| {
                matches!(m, sluice_raftstore::Mutation::Insert { key, .. }
                    if table.indexes.iter().any(|index| key.starts_with(&index.prefix())))
            })
            .count() as u64;
        let result = if self.transaction_state() == TransactionState::Idle {
            self.db.raft().propose(Command { mutations }).await
        } else {
            self.write_in_transaction(mutations)?
                .map_err(sluice_raftstore::Error::Apply)
        };
        match result {
            Ok(mut outcome) => {
                outcome.inserted = outcome.inserted.saturating_sub(entry_inserts);
                Ok(outcome)
            }
            Err(sluice_raftstore::Error::Apply(ApplyError::DuplicateKey { key })) => {
                // A cascade may have written another table's key.
                let owner = catalog
                    .tables
                    .values()
                    .find(|t| t.owns_key(&key))
                    .map(Arc::as_ref)
                    .unwrap_or(table);
                Err(crate::index::duplicate_key_error(owner, &key))
            }
            Err(e) => Err(raft_error(e)),
        }
    }

    /// Index upkeep plus what foreign keys imply ([`crate::foreign_key`]),
    /// for `table`'s mutations and the writes they cascade to, as one list.
    /// Referencing rows are looked up through a recorder over committed
    /// state: outside a block its `CheckRange`s join the command; inside
    /// one they join the block's commit.
    async fn with_reference_upkeep(
        &self,
        catalog: &CatalogState,
        table: &TableDef,
        mutations: Vec<sluice_raftstore::Mutation>,
        moves: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Vec<sluice_raftstore::Mutation>> {
        // A cascade that never ends is a cycle of rows referring to each
        // other in a way `done` cannot see; stop it rather than spin.
        const MOST_CASCADE_STEPS: usize = 10_000;
        let idle = self.transaction_state() == TransactionState::Idle;
        let view = self.read_view().await?;
        let committed = if idle {
            view.clone()
        } else {
            self.block_committed_view()?
        };
        let recorder = sluice_raftstore::ReadRecorder::new(committed);
        let reader = if idle {
            crate::foreign_key::Reader {
                view: &recorder,
                guard: None,
            }
        } else {
            crate::foreign_key::Reader {
                view: view.as_ref(),
                guard: Some(&recorder),
            }
        };
        let mut command = crate::foreign_key::CommandState::default();
        let mut checks = Vec::new();
        let mut writes = Vec::new();
        let mut pending = vec![crate::foreign_key::Cascade {
            table: Arc::new(table.clone()),
            mutations,
            moves,
        }];
        let mut steps = 0;
        while let Some(write) = pending.pop() {
            steps += 1;
            if steps > MOST_CASCADE_STEPS {
                return Err(Error::new(
                    sqlstate::PROGRAM_LIMIT_EXCEEDED,
                    "foreign key cascades went on for too long",
                ));
            }
            let references = crate::foreign_key::upkeep(catalog, &reader, &write, &mut command)?;
            checks.extend(references.checks);
            pending.extend(references.cascaded);
            writes.extend(crate::index::with_index_upkeep(
                &write.table,
                write.mutations,
            )?);
        }
        // The view shares the block's write set: release it before the
        // writes join that set (see `dml::execute`).
        drop(view);
        let guards = recorder.checks();
        if idle {
            checks.extend(guards);
        } else {
            self.guard_block_ranges(guards)?;
        }
        checks.extend(writes);
        Ok(checks)
    }

    /// Inside a block: the committed state its statement reads under the
    /// block's own writes.
    pub(crate) fn block_committed_view(&self) -> Result<Arc<dyn Snapshot>> {
        self.txn
            .lock()
            .expect("transaction lock")
            .as_ref()
            .and_then(Transaction::committed_snapshot)
            .ok_or_else(|| Error::new(sqlstate::INTERNAL_ERROR, "no block snapshot to guard"))
    }

    /// Range checks (from a recorder over [`Self::block_committed_view`])
    /// the open block's commit must pass.
    pub(crate) fn guard_block_ranges(&self, guards: Vec<sluice_raftstore::Mutation>) -> Result<()> {
        match &mut *self.txn.lock().expect("transaction lock") {
            Some(txn) => txn.guard_ranges(guards),
            None => Err(Error::new(
                sqlstate::INTERNAL_ERROR,
                "no transaction block is open",
            )),
        }
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

    /// SET, SET LOCAL and RESET of one setting (`value` `None` for its default).
    pub(crate) fn apply_set(
        &mut self,
        name: &str,
        value: Option<String>,
        local: bool,
    ) -> Result<()> {
        match name {
            "transaction_isolation" | "transaction_read_only" => {
                let Some(value) = value else {
                    // RESET of a transaction mode changes nothing in PostgreSQL.
                    return Ok(());
                };
                let modes = if name == "transaction_isolation" {
                    TransactionModes {
                        isolation: Some(IsolationLevel::parse(&value)?),
                        read_only: None,
                    }
                } else {
                    TransactionModes {
                        isolation: None,
                        read_only: Some(parse_bool_setting(name, &value)?),
                    }
                };
                return self.set_transaction_modes(modes);
            }
            _ => {}
        }
        if local && self.transaction_state() == TransactionState::Idle {
            self.notices.push(Error::new(
                sqlstate::NO_ACTIVE_SQL_TRANSACTION,
                "SET LOCAL can only be used in transaction blocks",
            ));
            // PostgreSQL still checks the value, and then forgets it.
            self.settings.set(name, value, true)?;
            self.settings.end_transaction();
            return Ok(());
        }
        self.settings.set(name, value, local)?;
        Ok(())
    }
}

/// The largest `sluice.max_transaction_bytes`: a block's writes, the old
/// values it checks and the reads it records must fit in one Raft command,
/// so at most three quarters of the command limit.
fn max_transaction_bytes(db: &Database) -> usize {
    db.raft().max_command_bytes() / 4 * 3
}

#[cfg(test)]
mod tests {
    use crate::testing::{database, exec, rows, run, sqlstate_of, Reply};

    fn texts(values: &[&[&str]]) -> Vec<Vec<String>> {
        values
            .iter()
            .map(|row| row.iter().map(|v| v.to_string()).collect())
            .collect()
    }

    #[tokio::test]
    async fn a_block_sees_its_own_writes_and_others_see_them_only_after_commit() {
        let test = database().await;
        let (mut a, mut b) = (test.session(), test.session());
        exec(&mut a, "CREATE TABLE t (id int PRIMARY KEY, v text)").await;
        exec(&mut a, "BEGIN; INSERT INTO t VALUES (1, 'x')").await;
        assert_eq!(
            rows(&mut a, "SELECT id, v FROM t").await,
            texts(&[&["1", "x"]])
        );
        assert_eq!(rows(&mut b, "SELECT id FROM t").await, texts(&[]));
        assert_eq!(
            run(&mut a, "COMMIT").await.unwrap(),
            Reply::Tag("COMMIT".into())
        );
        assert_eq!(rows(&mut b, "SELECT id FROM t").await, texts(&[&["1"]]));
    }

    #[tokio::test]
    async fn a_failed_block_refuses_statements_until_rollback_which_discards_it() {
        let test = database().await;
        let mut a = test.session();
        exec(&mut a, "CREATE TABLE t (id int PRIMARY KEY)").await;
        exec(&mut a, "BEGIN; INSERT INTO t VALUES (1)").await;
        assert_eq!(sqlstate_of(&mut a, "SELECT 1/0").await, "22012");
        assert_eq!(sqlstate_of(&mut a, "SELECT 1").await, "25P02");
        // COMMIT of a failed block rolls it back, as in PostgreSQL.
        assert_eq!(
            run(&mut a, "COMMIT").await.unwrap(),
            Reply::Tag("ROLLBACK".into())
        );
        assert_eq!(
            rows(&mut a, "SELECT count(*) FROM t").await,
            texts(&[&["0"]])
        );
        exec(&mut a, "BEGIN; INSERT INTO t VALUES (2); ROLLBACK").await;
        assert_eq!(
            rows(&mut a, "SELECT count(*) FROM t").await,
            texts(&[&["0"]])
        );
    }

    #[tokio::test]
    async fn read_only_transactions_refuse_writes() {
        let test = database().await;
        let mut a = test.session();
        exec(&mut a, "CREATE TABLE t (id int PRIMARY KEY)").await;
        exec(&mut a, "BEGIN READ ONLY").await;
        assert_eq!(
            sqlstate_of(&mut a, "INSERT INTO t VALUES (1)").await,
            "25006"
        );
        exec(&mut a, "ROLLBACK; SET default_transaction_read_only = on").await;
        assert_eq!(
            sqlstate_of(&mut a, "INSERT INTO t VALUES (1)").await,
            "25006"
        );
        assert_eq!(
            rows(&mut a, "SELECT count(*) FROM t").await,
            texts(&[&["0"]])
        );
    }

    #[tokio::test]
    async fn the_second_of_two_blocks_updating_one_row_fails_at_commit_with_40001() {
        let test = database().await;
        let (mut a, mut b) = (test.session(), test.session());
        exec(
            &mut a,
            "CREATE TABLE t (id int PRIMARY KEY, n int); INSERT INTO t VALUES (1, 0)",
        )
        .await;
        exec(&mut a, "BEGIN; UPDATE t SET n = n + 1 WHERE id = 1").await;
        exec(&mut b, "BEGIN; UPDATE t SET n = n + 10 WHERE id = 1").await;
        exec(&mut a, "COMMIT").await;
        assert_eq!(sqlstate_of(&mut b, "COMMIT").await, "40001");
        assert_eq!(rows(&mut b, "SELECT n FROM t").await, texts(&[&["1"]]));
    }
}
