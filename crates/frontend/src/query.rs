//! The simple and extended query protocols: statements go through the
//! planner session, results stream back batch by batch.
//!
//! pgwire's default handlers are replaced where they would be wrong for us:
//! its `on_execute` collects every row of a portal executed without a row
//! limit before sending any, its `on_query` runs all statements of a query
//! string before streaming the first result and only wraps execution (not
//! streaming) in the cancel, and its Describe sends an empty RowDescription
//! instead of NoData for a statement with parameters but no result rows.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Instant;

use arrow_pg::datatypes::df::deserialize_parameters;
use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Schema, TimeUnit};
use datafusion::common::ParamValues;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::scalar::ScalarValue;
use futures::{FutureExt, Sink, SinkExt, StreamExt};
use pgwire::api::portal::{Format, Portal, PortalExecutionState};
use pgwire::api::query::{send_ready_for_query, ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    CopyResponse, FieldInfo, QueryResponse, Response, SendableRowStream, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireConnectionState, Type, DEFAULT_NAME};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::copy::CopyInResponse;
use pgwire::messages::data::{
    DataRow, FieldDescription, NoData, ParameterDescription, RowDescription,
};
use pgwire::messages::extendedquery::{
    Bind, BindComplete, Describe, Execute, Parse, ParseComplete, PortalSuspended,
    TARGET_TYPE_BYTE_PORTAL, TARGET_TYPE_BYTE_STATEMENT,
};
use pgwire::messages::response::{CommandComplete, EmptyQueryResponse, TransactionStatus};
use pgwire::messages::simplequery::Query;
use pgwire::messages::startup::ParameterStatus;
use pgwire::messages::PgWireBackendMessage;
use sluice_planner::{
    sqlstate, CommandTag, Error, Output, Prepared, Session, Statement, TransactionState,
};

use crate::connection::{Connection, SessionSlot};
use crate::copy::{copy_out, start_copy_in};
use crate::error::{internal, protocol_violation, to_wire};
use crate::interrupt::Interrupt;
use crate::metrics::{leading_text, statement_kind};
use sluice_planner::from_datafusion;

/// Parse: plans the statement once with the planner; Bind/Execute reuse it.
pub(crate) struct Parser {
    session: Arc<SessionSlot>,
}

impl Parser {
    pub(crate) fn new(session: Arc<SessionSlot>) -> Self {
        Self { session }
    }
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Arc<Prepared>;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Arc<Prepared>>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut session = self.session.lock().await?;
        let mut statements = session.parse(sql).map_err(to_wire)?;
        if statements.len() > 1 {
            return Err(to_wire(Error::new(
                sqlstate::SYNTAX_ERROR,
                "cannot insert multiple commands into a prepared statement",
            )));
        }
        let Some(statement) = statements.pop() else {
            return Ok(None);
        };
        let declared: Vec<Option<DataType>> = types
            .iter()
            .map(|t| t.as_ref().and_then(arrow_type))
            .collect();
        session
            .prepare(statement, &declared)
            .await
            .map(Some)
            .map_err(to_wire)
    }

    fn get_parameter_types(&self, stmt: &Arc<Prepared>) -> PgWireResult<Vec<Type>> {
        Ok(stmt
            .param_types
            .iter()
            .map(|t| into_pg_type(t).unwrap_or(Type::UNKNOWN))
            .collect())
    }

    fn get_result_schema(
        &self,
        stmt: &Arc<Prepared>,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match &stmt.result_schema {
            Some(schema) => result_fields(schema, format.unwrap_or(&Format::UnifiedText)),
            None => Ok(Vec::new()),
        }
    }
}

/// The Arrow type for a parameter type the client declared in Parse;
/// `None` lets the planner infer it.
fn arrow_type(pg: &Type) -> Option<DataType> {
    Some(match *pg {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DataType::Utf8,
        Type::BYTEA => DataType::Binary,
        Type::DATE => DataType::Date32,
        Type::TIME => DataType::Time64(TimeUnit::Microsecond),
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        _ => return None,
    })
}

/// Result columns in the formats the client asked for.
fn result_fields(schema: &Schema, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
    if let Format::Individual(codes) = format {
        if codes.len() != schema.fields().len() {
            return Err(protocol_violation(format!(
                "bind message has {} result formats but query has {} columns",
                codes.len(),
                schema.fields().len()
            )));
        }
    }
    arrow_schema_to_pg_fields(schema, format, None)
}

fn row_description(fields: &[FieldInfo]) -> RowDescription {
    RowDescription::new(fields.iter().map(FieldDescription::from).collect())
}

/// Encodes record batches into DataRows lazily, one batch at a time.
pub(crate) fn data_rows(
    stream: SendableRecordBatchStream,
    fields: Arc<Vec<FieldInfo>>,
) -> SendableRowStream {
    Box::pin(stream.flat_map(move |batch| {
        let rows: Box<dyn Iterator<Item = PgWireResult<DataRow>> + Send> = match batch {
            Ok(batch) if batch.num_columns() == fields.len() => {
                encode_recordbatch(fields.clone(), batch)
            }
            Ok(batch) => Box::new(std::iter::once(Err(internal(format!(
                "result batch has {} columns, the described result {}",
                batch.num_columns(),
                fields.len()
            ))))),
            Err(e) => Box::new(std::iter::once(Err(to_wire(from_datafusion(e))))),
        };
        futures::stream::iter(rows)
    }))
}

/// Pulls the next item, first flushing what was written when the producer
/// has nothing ready, so that slow results reach the client as they come.
pub(crate) async fn next_flushing<C, S>(
    client: &mut C,
    stream: &mut S,
) -> PgWireResult<Option<S::Item>>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    S: futures::Stream + Unpin,
{
    if let Some(item) = stream.next().now_or_never() {
        return Ok(item);
    }
    client.flush().await?;
    Ok(stream.next().await)
}

/// Sends up to `max_rows` rows (0 = all). Returns the rows sent and whether
/// the limit stopped it (PostgreSQL then suspends the portal even if no row
/// remains).
async fn send_rows<C>(
    client: &mut C,
    rows: &mut SendableRowStream,
    max_rows: usize,
) -> PgWireResult<(usize, bool)>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let mut sent = 0;
    while max_rows == 0 || sent < max_rows {
        match next_flushing(client, rows).await? {
            Some(row) => {
                client.feed(PgWireBackendMessage::DataRow(row?)).await?;
                sent += 1;
            }
            None => return Ok((sent, false)),
        }
    }
    Ok((sent, true))
}

/// A planner tag as pgwire's, for its Response types.
fn wire_tag(tag: &CommandTag) -> Tag {
    let wire = Tag::new(&tag.verb);
    match tag.rows {
        // The 0 is the OID PostgreSQL once reported for single-row inserts.
        Some(rows) if tag.verb == "INSERT" => wire.with_oid(0).with_rows(rows as usize),
        Some(rows) => wire.with_rows(rows as usize),
        None => wire,
    }
}

fn command_complete(tag: &CommandTag) -> PgWireBackendMessage {
    PgWireBackendMessage::CommandComplete(CommandComplete::new(tag.to_string()))
}

/// ReadyForQuery's status byte for the session's transaction block.
fn wire_status(state: TransactionState) -> TransactionStatus {
    match state {
        TransactionState::Idle => TransactionStatus::Idle,
        TransactionState::Open => TransactionStatus::Transaction,
        TransactionState::Failed => TransactionStatus::Error,
    }
}

/// An ErrorResponse sent while a block was open (pgwire then reports `E`)
/// fails the session's block, wherever the error arose (streaming rows too).
fn note_reported_error<C: ClientInfo>(client: &C, session: &Session) {
    if matches!(client.transaction_status(), TransactionStatus::Error) {
        session.mark_failed();
    }
}

/// Sends the warnings the last statement raised.
async fn send_notices<C>(client: &mut C, session: &mut Session) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    for notice in session.take_notices() {
        client.feed(crate::error::warning(notice)).await?;
    }
    Ok(())
}

/// Tells the client about settings the statement changed (SET TimeZone …).
async fn send_parameter_changes<C>(client: &mut C, session: &mut Session) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    for (name, value) in session.take_parameter_changes() {
        client
            .feed(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
                name, value,
            )))
            .await?;
    }
    Ok(())
}

impl Connection {
    /// Runs one statement of a simple Query and sends all its results.
    async fn run_simple<C>(
        &self,
        client: &mut C,
        statement: Statement,
        last: bool,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut session = self.session.lock().await?;
        note_reported_error(client, &session);
        let mut interrupt = self.interrupt(client, session.statement_timeout()).await;
        let output = interrupt
            .run(async {
                let prepared = session.prepare(statement, &[]).await.map_err(to_wire)?;
                session
                    .execute(&prepared, Vec::new())
                    .await
                    .map_err(to_wire)
            })
            .await;
        client.set_transaction_status(wire_status(session.transaction_state()));
        send_notices(client, &mut session).await?;
        let output = output?;
        match output {
            Output::Rows {
                schema,
                stream,
                verb,
            } => {
                let fields = Arc::new(result_fields(&schema, &Format::UnifiedText)?);
                client
                    .feed(PgWireBackendMessage::RowDescription(row_description(
                        &fields,
                    )))
                    .await?;
                let mut rows = data_rows(stream, fields);
                let (sent, _) = interrupt.run(send_rows(client, &mut rows, 0)).await?;
                self.shared.metrics.rows_returned.inc_by(sent as u64);
                client
                    .feed(command_complete(&CommandTag::with_rows(verb, sent as u64)))
                    .await?;
            }
            Output::Command(tag) => {
                client.feed(command_complete(&tag)).await?;
            }
            Output::CopyIn(copy) => {
                if !last {
                    // The rest of the query string would have to wait for
                    // the copy data; PostgreSQL does that, clients never need it.
                    return Err(to_wire(Error::new(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "COPY FROM STDIN must be the last statement of a multi-statement query",
                    )));
                }
                let columns = copy.columns.len();
                self.put_copy_in(start_copy_in(&self.shared, copy, interrupt));
                send_copy_in_response(client, columns).await?;
                client.set_state(PgWireConnectionState::CopyInProgress(false));
            }
            Output::CopyOut {
                schema,
                stream,
                options,
            } => {
                let sent = interrupt
                    .run(copy_out(client, &schema, stream, &options))
                    .await?;
                self.shared.metrics.rows_returned.inc_by(sent);
                client
                    .feed(command_complete(&CommandTag::with_rows("COPY", sent)))
                    .await?;
            }
            Output::Empty => {
                client
                    .feed(PgWireBackendMessage::EmptyQueryResponse(
                        EmptyQueryResponse::new(),
                    ))
                    .await?
            }
        }
        send_parameter_changes(client, &mut session).await
    }

    /// Executes a portal that has not run yet and describes its outcome,
    /// as pgwire's default Execute handling expects: rows as a lazy stream
    /// (sent by the caller under the row limit), commands as their tag. COPY
    /// TO has already sent its data and comes back as its `COPY n` tag.
    async fn execute_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<Arc<Prepared>>,
        interrupt: &mut Interrupt,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = portal.statement.statement.clone();
        let params = bound_parameters(portal, &prepared)?;
        let mut session = self.session.lock().await?;
        note_reported_error(client, &session);
        let output = interrupt
            .run(async { session.execute(&prepared, params).await.map_err(to_wire) })
            .await;
        client.set_transaction_status(wire_status(session.transaction_state()));
        send_notices(client, &mut session).await?;
        let output = output?;
        let response = match output {
            Output::Rows {
                schema,
                stream,
                verb,
            } => {
                let fields = Arc::new(result_fields(&schema, &portal.result_column_format)?);
                let mut response = QueryResponse::new(fields.clone(), data_rows(stream, fields));
                response.set_command_tag(verb);
                Response::Query(response)
            }
            // The transaction status is already the session's (set above).
            Output::Command(tag) => Response::Execution(wire_tag(&tag)),
            Output::CopyIn(copy) => {
                let columns = copy.columns.len();
                // The copy runs under its own interrupt, armed now.
                let copy_interrupt = self.interrupt(client, session.statement_timeout()).await;
                self.put_copy_in(start_copy_in(&self.shared, copy, copy_interrupt));
                Response::CopyIn(CopyResponse::new(0, columns, futures::stream::empty()))
            }
            Output::CopyOut {
                schema,
                stream,
                options,
            } => {
                let sent = interrupt
                    .run(copy_out(client, &schema, stream, &options))
                    .await?;
                self.shared.metrics.rows_returned.inc_by(sent);
                Response::Execution(Tag::new("COPY").with_rows(sent as usize))
            }
            Output::Empty => Response::EmptyQuery,
        };
        send_parameter_changes(client, &mut session).await?;
        Ok(response)
    }

    /// Sends the rows of a started portal up to `max_rows`, then
    /// PortalSuspended or CommandComplete.
    async fn fetch_portal<C>(
        &self,
        client: &mut C,
        response: &mut QueryResponse,
        max_rows: usize,
        interrupt: &mut Interrupt,
    ) -> PgWireResult<bool>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (sent, suspended) = interrupt
            .run(send_rows(client, response.data_rows(), max_rows))
            .await?;
        self.shared.metrics.rows_returned.inc_by(sent as u64);
        if suspended {
            client
                .feed(PgWireBackendMessage::PortalSuspended(PortalSuspended::new()))
                .await?;
        } else {
            let tag = CommandTag::with_rows(response.command_tag(), sent as u64);
            client.feed(command_complete(&tag)).await?;
        }
        Ok(suspended)
    }

    async fn timeout(&self) -> PgWireResult<Option<std::time::Duration>> {
        Ok(self.session.lock().await?.statement_timeout())
    }
}

async fn send_copy_in_response<C>(client: &mut C, columns: usize) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let wire_columns = i16::try_from(columns).map_err(|_| internal("too many columns for COPY"))?;
    let response = CopyInResponse::new(0, wire_columns, vec![0; columns]);
    client
        .send(PgWireBackendMessage::CopyInResponse(response))
        .await?;
    Ok(())
}

/// Bound parameter values, decoded by arrow-pg with the client's formats and
/// the planner's parameter types.
fn bound_parameters(
    portal: &Portal<Arc<Prepared>>,
    prepared: &Prepared,
) -> PgWireResult<Vec<ScalarValue>> {
    let expected = prepared.param_types.len();
    if portal.parameters.len() != expected {
        return Err(protocol_violation(format!(
            "bind message supplies {} parameters, but prepared statement \"{}\" requires {expected}",
            portal.parameters.len(),
            statement_name(&portal.statement),
        )));
    }
    if let Format::Individual(codes) = &portal.parameter_format {
        if codes.len() != expected {
            return Err(protocol_violation(format!(
                "bind message has {} parameter formats but {expected} parameters",
                codes.len()
            )));
        }
    }
    let types: Vec<Option<&DataType>> = prepared.param_types.iter().map(Some).collect();
    match deserialize_parameters(portal, &types)? {
        ParamValues::List(values) => Ok(values.into_iter().map(|v| v.value).collect()),
        ParamValues::Map(_) => Err(internal("named parameters are not bound by position")),
    }
}

fn statement_name(statement: &StoredStatement<Arc<Prepared>>) -> &str {
    if statement.id == DEFAULT_NAME {
        ""
    } else {
        &statement.id
    }
}

#[async_trait]
impl SimpleQueryHandler for Connection {
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        client.set_state(PgWireConnectionState::QueryInProgress);
        // On error pgwire's process_error sends ErrorResponse and
        // ReadyForQuery and resets the state.
        SimpleQueryHandler::do_query(self, client, &query.query).await?;
        if !matches!(client.state(), PgWireConnectionState::CopyInProgress(_)) {
            client.set_state(PgWireConnectionState::ReadyForQuery);
            let status = client.transaction_status();
            send_ready_for_query(client, status).await?;
        }
        Ok(())
    }

    /// Runs the statements one after another, each result streamed before
    /// the next statement starts; the first error stops the rest. Results
    /// are sent here, so nothing is left to return.
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = self.session.lock().await?.parse(query).map_err(to_wire)?;
        if statements.is_empty() {
            client
                .feed(PgWireBackendMessage::EmptyQueryResponse(
                    EmptyQueryResponse::new(),
                ))
                .await?;
            return Ok(Vec::new());
        }
        let count = statements.len();
        // Like PostgreSQL, several statements in one query commit together
        // or not at all. Queries that mix in DDL, COPY, settings or
        // transaction control still run statement by statement.
        let implicit = count > 1 && statements.iter().all(Statement::reads_or_writes_rows_only);
        if implicit {
            self.session
                .lock()
                .await?
                .begin_implicit()
                .map_err(to_wire)?;
        }
        let mut result = Ok(());
        for (i, statement) in statements.into_iter().enumerate() {
            let kind = statement_kind(&leading_text(&statement));
            let started = Instant::now();
            result = self.run_simple(client, statement, i + 1 == count).await;
            self.shared.metrics.statement_done(kind, started.elapsed());
            if result.is_err() {
                break;
            }
        }
        if implicit {
            let mut session = self.session.lock().await?;
            let finished = session.finish_implicit(result.is_ok()).await;
            client.set_transaction_status(wire_status(session.transaction_state()));
            finished.map_err(to_wire)?;
        }
        result.map(|()| Vec::new())
    }
}

#[async_trait]
impl ExtendedQueryHandler for Connection {
    type Statement = Arc<Prepared>;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    /// As pgwire's default, but ParseComplete waits in the send buffer for
    /// the next Sync or Flush, as in PostgreSQL: a driver pipelines Parse,
    /// Bind, Execute and Sync, and a flush per message woke it once per
    /// message.
    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match StoredStatement::parse(client, &message, self.query_parser()).await? {
            Some(statement) => client.portal_store().put_statement(Arc::new(statement)),
            None => {
                let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
                client.portal_store().put_empty_statement(name)
            }
        }
        client
            .feed(PgWireBackendMessage::ParseComplete(ParseComplete::new()))
            .await?;
        Ok(())
    }

    /// As pgwire's default, but BindComplete is not flushed on its own (see
    /// `on_parse`).
    async fn on_bind<C>(&self, client: &mut C, message: Bind) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statement_name = message.statement_name.as_deref().unwrap_or(DEFAULT_NAME);
        match client.portal_store().get_statement(statement_name) {
            Some(Entry::Value(statement)) => {
                let portal = Portal::try_new(&message, statement)?;
                client.portal_store().put_portal(Arc::new(portal));
            }
            Some(Entry::Empty) if message.parameters.is_empty() => {
                let portal_name = message.portal_name.as_deref().unwrap_or(DEFAULT_NAME);
                client.portal_store().put_empty_portal(portal_name);
            }
            Some(Entry::Empty) => {
                return Err(protocol_violation(format!(
                    "bind message supplies {} parameters, but prepared statement {statement_name:?} requires 0",
                    message.parameters.len()
                )))
            }
            None => return Err(PgWireError::StatementNotFound(statement_name.to_owned())),
        }
        client
            .feed(PgWireBackendMessage::BindComplete(BindComplete::new()))
            .await?;
        Ok(())
    }

    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        let portal_name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        let portal = match client.portal_store().get_portal(portal_name) {
            Some(Entry::Value(portal)) => portal,
            Some(Entry::Empty) => {
                client
                    .feed(PgWireBackendMessage::EmptyQueryResponse(
                        EmptyQueryResponse::new(),
                    ))
                    .await?;
                return Ok(());
            }
            None => return Err(PgWireError::PortalNotFound(portal_name.to_owned())),
        };
        client.set_state(PgWireConnectionState::QueryInProgress);
        let max_rows = usize::try_from(message.max_rows).unwrap_or(0);
        let kind = statement_kind(&leading_text(&portal.statement.statement.statement));
        let started = Instant::now();
        let result = self.execute_or_fetch(client, &portal, max_rows).await;
        self.shared.metrics.statement_done(kind, started.elapsed());
        if !matches!(client.state(), PgWireConnectionState::CopyInProgress(_)) {
            client.set_state(PgWireConnectionState::ReadyForQuery);
        }
        result
    }

    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        match message.target_type {
            TARGET_TYPE_BYTE_STATEMENT => match client.portal_store().get_statement(name) {
                Some(Entry::Value(stored)) => {
                    let types = describe_parameter_types(&stored);
                    client
                        .feed(PgWireBackendMessage::ParameterDescription(
                            ParameterDescription::new(types),
                        ))
                        .await?;
                    send_row_shape(client, &stored.statement, &Format::UnifiedText).await
                }
                Some(Entry::Empty) => {
                    client
                        .feed(PgWireBackendMessage::ParameterDescription(
                            ParameterDescription::new(Vec::new()),
                        ))
                        .await?;
                    client
                        .feed(PgWireBackendMessage::NoData(NoData::new()))
                        .await?;
                    Ok(())
                }
                None => Err(PgWireError::StatementNotFound(name.to_owned())),
            },
            TARGET_TYPE_BYTE_PORTAL => match client.portal_store().get_portal(name) {
                Some(Entry::Value(portal)) => {
                    send_row_shape(
                        client,
                        &portal.statement.statement,
                        &portal.result_column_format,
                    )
                    .await
                }
                Some(Entry::Empty) => {
                    client
                        .feed(PgWireBackendMessage::NoData(NoData::new()))
                        .await?;
                    Ok(())
                }
                None => Err(PgWireError::PortalNotFound(name.to_owned())),
            },
            other => Err(PgWireError::InvalidTargetType(other)),
        }
    }

    /// Executes a portal that has not started. `on_execute` calls it under
    /// the statement's interrupt; it is also the whole of the work for a
    /// caller that drives pgwire's default response handling.
    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Arc<Prepared>>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let timeout = self.timeout().await?;
        let mut interrupt = self.interrupt(client, timeout).await;
        self.execute_portal(client, portal, &mut interrupt).await
    }
}

impl Connection {
    async fn execute_or_fetch<C>(
        &self,
        client: &mut C,
        portal: &Arc<Portal<Arc<Prepared>>>,
        max_rows: usize,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Arc<Prepared>>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let timeout = self.timeout().await?;
        let mut interrupt = self.interrupt(client, timeout).await;
        let state = portal.state();
        let mut state = state.lock().await;
        let result = match &mut *state {
            PortalExecutionState::Initial => {
                match self.execute_portal(client, portal, &mut interrupt).await {
                    Ok(Response::Query(mut response)) => {
                        let suspended = self
                            .fetch_portal(client, &mut response, max_rows, &mut interrupt)
                            .await;
                        match suspended {
                            Ok(true) => {
                                *state = PortalExecutionState::Suspended(response);
                                return Ok(());
                            }
                            other => other.map(|_| ()),
                        }
                    }
                    Ok(Response::CopyIn(response)) => {
                        client.set_state(PgWireConnectionState::CopyInProgress(true));
                        pgwire::api::copy::send_copy_in_response(client, response).await
                    }
                    Ok(Response::EmptyQuery) => {
                        client
                            .feed(PgWireBackendMessage::EmptyQueryResponse(
                                EmptyQueryResponse::new(),
                            ))
                            .await?;
                        Ok(())
                    }
                    Ok(Response::Execution(tag)) => Ok(client
                        .feed(PgWireBackendMessage::CommandComplete(tag.into()))
                        .await?),
                    Ok(Response::TransactionStart(tag)) => {
                        client.set_transaction_status(
                            client.transaction_status().to_in_transaction_state(),
                        );
                        Ok(client
                            .feed(PgWireBackendMessage::CommandComplete(tag.into()))
                            .await?)
                    }
                    Ok(Response::TransactionEnd(tag)) => {
                        client.set_transaction_status(client.transaction_status().to_idle_state());
                        Ok(client
                            .feed(PgWireBackendMessage::CommandComplete(tag.into()))
                            .await?)
                    }
                    Ok(Response::Error(info)) => Err(PgWireError::UserError(info)),
                    Ok(Response::CopyOut(_) | Response::CopyBoth(_)) => {
                        Err(internal("unexpected COPY response"))
                    }
                    Err(e) => Err(e),
                }
            }
            PortalExecutionState::Suspended(response) => {
                match self
                    .fetch_portal(client, response, max_rows, &mut interrupt)
                    .await
                {
                    Ok(true) => return Ok(()),
                    other => other.map(|_| ()),
                }
            }
            PortalExecutionState::Finished => {
                client
                    .feed(command_complete(&CommandTag::with_rows("SELECT", 0)))
                    .await?;
                Ok(())
            }
        };
        // Done, failed or interrupted: the portal has nothing more to give.
        *state = PortalExecutionState::Finished;
        result
    }
}

/// Parameter types for Describe: the client's declared types where given,
/// the planner's inferred ones otherwise.
fn describe_parameter_types(stored: &StoredStatement<Arc<Prepared>>) -> Vec<u32> {
    stored
        .statement
        .param_types
        .iter()
        .enumerate()
        .map(|(i, inferred)| {
            let declared = stored
                .parameter_types
                .get(i)
                .cloned()
                .flatten()
                .filter(|t| *t != Type::UNKNOWN);
            declared
                .unwrap_or_else(|| into_pg_type(inferred).unwrap_or(Type::UNKNOWN))
                .oid()
        })
        .collect()
}

/// RowDescription for a statement that returns rows, NoData otherwise.
async fn send_row_shape<C>(client: &mut C, prepared: &Prepared, format: &Format) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    match &prepared.result_schema {
        Some(schema) => {
            let fields = result_fields(schema, format)?;
            client
                .feed(PgWireBackendMessage::RowDescription(row_description(
                    &fields,
                )))
                .await?;
        }
        None => {
            client
                .feed(PgWireBackendMessage::NoData(NoData::new()))
                .await?
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_status_follows_the_session() {
        assert_eq!(wire_status(TransactionState::Idle), TransactionStatus::Idle);
        assert_eq!(
            wire_status(TransactionState::Open),
            TransactionStatus::Transaction
        );
        assert_eq!(
            wire_status(TransactionState::Failed),
            TransactionStatus::Error
        );
    }

    #[test]
    fn declared_types_map_to_arrow() {
        assert_eq!(arrow_type(&Type::INT8), Some(DataType::Int64));
        assert_eq!(arrow_type(&Type::VARCHAR), Some(DataType::Utf8));
        assert_eq!(arrow_type(&Type::UNKNOWN), None);
        assert_eq!(arrow_type(&Type::NUMERIC), None);
    }

    #[test]
    fn result_formats_must_match_columns() {
        use datafusion::arrow::datatypes::Field;
        let schema = Schema::new(vec![
            Field::new("a", DataType::Int32, true),
            Field::new("b", DataType::Utf8, true),
        ]);
        assert!(result_fields(&schema, &Format::Individual(vec![0])).is_err());
        let fields = result_fields(&schema, &Format::Individual(vec![1, 0])).unwrap();
        assert_eq!(fields[0].datatype(), &Type::INT4);
        assert_eq!(fields.len(), 2);
    }
}
