//! COPY FROM STDIN and COPY TO STDOUT over the wire.
//!
//! COPY FROM: the planner's `Output::CopyIn` starts it (`start_copy_in`);
//! each CopyData chunk goes through [`parse::CopyParser`], and complete rows
//! go to `Session::copy_rows` in batches of about [`BATCH_ROWS`] rows or
//! [`BATCH_BYTES`] bytes; CopyDone flushes the rest and answers `COPY n`.
//! A malformed line, CopyFail, cancel or timeout ends the copy with an error
//! and the connection carries on.
//!
//! COPY TO: rows stream from the planner's record batches, are rendered in
//! PostgreSQL's text output format by arrow-pg, then escaped or quoted by
//! [`format`], one CopyData message per row.

pub(crate) mod format;
pub(crate) mod parse;

use std::fmt::Debug;
use std::sync::Arc;

use arrow_pg::datatypes::arrow_schema_to_pg_fields;
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::datatypes::Schema;
use datafusion::execution::SendableRecordBatchStream;
use futures::{Sink, SinkExt};
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::Format;
use pgwire::api::ClientInfo;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail, CopyOutResponse};
use pgwire::messages::response::CommandComplete;
use pgwire::messages::PgWireBackendMessage;
pub(crate) use sluice_planner::{sqlstate, CopyFormat, CopyOptions, Error};
use sluice_planner::{CommandTag, CopyIn};

use self::format::{write_header, write_line};
use self::parse::{CopyParser, Row};
use crate::connection::Connection;
use crate::error::{internal, protocol_violation, to_wire};
use crate::interrupt::Interrupt;
use crate::query::{data_rows, next_flushing};
use crate::server::Shared;

/// Rows per `copy_rows` call.
pub(crate) const BATCH_ROWS: usize = 10_000;
/// Input bytes that also end a batch, for wide rows.
pub(crate) const BATCH_BYTES: usize = 8 << 20;

/// A COPY FROM STDIN between CopyData messages.
pub(crate) struct CopyInState {
    copy: CopyIn,
    parser: CopyParser,
    rows: Vec<Row>,
    /// Input bytes of the rows waiting in `rows`.
    bytes: usize,
    inserted: u64,
    interrupt: Interrupt,
}

/// Prepares to receive the data of `copy`; the caller sends CopyInResponse.
pub(crate) fn start_copy_in(shared: &Shared, copy: CopyIn, interrupt: Interrupt) -> CopyInState {
    let parser = CopyParser::new(
        &copy.options,
        &copy.table,
        &copy.columns,
        shared.config.max_message_bytes,
    );
    CopyInState {
        copy,
        parser,
        rows: Vec::new(),
        bytes: 0,
        inserted: 0,
        interrupt,
    }
}

impl Connection {
    /// Hands waiting rows to the planner: whole batches, or everything when
    /// `all` (at CopyDone) or when the waiting bytes reached the limit.
    async fn flush_copy_rows(&self, state: &mut CopyInState, all: bool) -> PgWireResult<()> {
        let flush_all = all || state.bytes >= BATCH_BYTES;
        while state.rows.len() >= BATCH_ROWS || (flush_all && !state.rows.is_empty()) {
            let take = state.rows.len().min(BATCH_ROWS);
            let batch: Vec<Row> = if take == state.rows.len() {
                std::mem::take(&mut state.rows)
            } else {
                state.rows.drain(..take).collect()
            };
            let mut session = self.session.lock().await?;
            let copy = &state.copy;
            let inserted = state
                .interrupt
                .run(async { session.copy_rows(copy, batch).await.map_err(to_wire) })
                .await?;
            state.inserted += inserted;
            self.shared.metrics.copy_rows_in.inc_by(inserted);
        }
        if state.rows.is_empty() {
            state.bytes = 0;
        }
        Ok(())
    }
}

#[async_trait]
impl CopyHandler for Connection {
    async fn on_copy_data<C>(&self, _client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // Taken out for the duration: on error the copy is over and must
        // not be resumed by stray CopyData.
        let Some(mut state) = self.take_copy_in() else {
            return Err(protocol_violation(
                "CopyData received outside COPY FROM STDIN",
            ));
        };
        state.interrupt.check()?;
        let consumed = state
            .parser
            .feed(&copy_data.data, &mut state.rows)
            .map_err(to_wire)?;
        state.bytes += consumed;
        self.flush_copy_rows(&mut state, false).await?;
        self.put_copy_in(state);
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let Some(mut state) = self.take_copy_in() else {
            return Err(protocol_violation(
                "CopyDone received outside COPY FROM STDIN",
            ));
        };
        state.interrupt.check()?;
        state.parser.finish(&mut state.rows).map_err(to_wire)?;
        self.flush_copy_rows(&mut state, true).await?;
        let tag = CommandTag::with_rows("COPY", state.inserted);
        client
            .feed(PgWireBackendMessage::CommandComplete(CommandComplete::new(
                tag.to_string(),
            )))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, _client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        drop(self.take_copy_in());
        to_wire(Error::new(
            sqlstate::QUERY_CANCELED,
            format!("COPY from stdin failed: {}", fail.message),
        ))
    }
}

/// Streams a COPY TO STDOUT: CopyOutResponse, one CopyData per row, CopyDone.
/// Returns the number of rows; the caller sends the `COPY n` tag.
pub(crate) async fn copy_out<C>(
    client: &mut C,
    schema: &Schema,
    stream: SendableRecordBatchStream,
    options: &CopyOptions,
) -> PgWireResult<u64>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let columns = schema.fields().len();
    let wire_columns = i16::try_from(columns).map_err(|_| internal("too many columns for COPY"))?;
    let response = CopyOutResponse::new(0, wire_columns, vec![0; columns]);
    client
        .feed(PgWireBackendMessage::CopyOutResponse(response))
        .await?;
    if options.header {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let mut line = Vec::new();
        write_header(&mut line, options, &names);
        client
            .feed(PgWireBackendMessage::CopyData(CopyData::new(Bytes::from(
                line,
            ))))
            .await?;
    }
    let fields = Arc::new(arrow_schema_to_pg_fields(
        schema,
        &Format::UnifiedText,
        None,
    )?);
    let mut rows = data_rows(stream, fields);
    let mut count = 0;
    while let Some(row) = next_flushing(client, &mut rows).await? {
        let row = row?;
        let values = split_fields(&row.data, columns)?;
        let mut line = Vec::with_capacity(row.data.len() + columns);
        write_line(&mut line, options, &values);
        client
            .feed(PgWireBackendMessage::CopyData(CopyData::new(Bytes::from(
                line,
            ))))
            .await?;
        count += 1;
    }
    client
        .feed(PgWireBackendMessage::CopyDone(CopyDone::new()))
        .await?;
    Ok(count)
}

/// The values of an encoded DataRow: each a length (-1 for NULL) and bytes.
fn split_fields(data: &[u8], columns: usize) -> PgWireResult<Vec<Option<&[u8]>>> {
    let malformed = || internal("malformed encoded row");
    let mut values = Vec::with_capacity(columns);
    let mut pos = 0;
    for _ in 0..columns {
        let len_bytes = data.get(pos..pos + 4).ok_or_else(malformed)?;
        let len = i32::from_be_bytes(<[u8; 4]>::try_from(len_bytes).map_err(|_| malformed())?);
        pos += 4;
        match usize::try_from(len) {
            Ok(len) => {
                values.push(Some(data.get(pos..pos + len).ok_or_else(malformed)?));
                pos += len;
            }
            Err(_) => values.push(None),
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_encoded_row() {
        let mut data = Vec::new();
        data.extend_from_slice(&3i32.to_be_bytes());
        data.extend_from_slice(b"abc");
        data.extend_from_slice(&(-1i32).to_be_bytes());
        data.extend_from_slice(&0i32.to_be_bytes());
        let values = split_fields(&data, 3).unwrap();
        assert_eq!(values, vec![Some(&b"abc"[..]), None, Some(&b""[..])]);
        assert!(split_fields(&data[..5], 1).is_err());
        assert!(split_fields(&data, 4).is_err());
    }
}
