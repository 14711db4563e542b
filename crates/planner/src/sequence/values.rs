//! Sequence values: the node's blocks of values, a session's `currval` and
//! `lastval`, and the SQL functions over them (`nextval`, `currval`,
//! `lastval`, `setval`, `pg_get_serial_sequence`).
//!
//! A value is never a Raft round of its own: [`SequenceAllocator`] takes a
//! block of at least [`NODE_BLOCK`] values (or the sequence's `CACHE`) with
//! one `NextValues` command and hands them out on this node in order. Apply
//! assigns blocks, so two nodes, or a node before and after a failover,
//! never hand out the same value. A node that stops loses the rest of its
//! block: the sequence jumps, as PostgreSQL's does after a crash (it logs
//! 32 values ahead). Values are not transactional: a rolled-back block's
//! values stay used.
//!
//! The functions find the session through a DataFusion config extension
//! ([`SequenceSession`]) that every session's state carries, so one set of
//! functions serves every session, and a column's DEFAULT compiled once per
//! node still records `currval` for the session that inserts.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::async_udf::{AsyncScalarUDF, AsyncScalarUDFImpl};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use sluice_raftstore::sequence::{SequenceState, ValueBlock};
use sluice_raftstore::{ApplyError, Command, Mutation, RaftNode};

use crate::catalog::{encode_json, sequence_key, SequenceDef, SharedCatalog, DEFAULT_SCHEMA};
use crate::error::{raft_error, sqlstate, Error, Result};
use crate::names::{parse_qualified_text, quote_ident_if_needed};
use crate::provider::SessionCatalog;

/// The fewest values a node takes at once: PostgreSQL logs this many ahead,
/// so a crash makes a sequence jump by as much there as here.
pub const NODE_BLOCK: u64 = 32;

/// This node's unused values of each sequence, by state key.
pub struct SequenceAllocator {
    raft: Arc<RaftNode>,
    shared: Arc<SharedCatalog>,
    blocks: Mutex<HashMap<Vec<u8>, Arc<tokio::sync::Mutex<Block>>>>,
}

/// Values `next`, `next + increment`, … (`left` of them) not yet handed out.
#[derive(Debug, Default)]
struct Block {
    next: i64,
    left: u64,
}

impl SequenceAllocator {
    pub fn new(raft: Arc<RaftNode>, shared: Arc<SharedCatalog>) -> Self {
        Self {
            raft,
            shared,
            blocks: Mutex::default(),
        }
    }

    fn slot(&self, def: &SequenceDef) -> Arc<tokio::sync::Mutex<Block>> {
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        blocks.entry(def.state_key()).or_default().clone()
    }

    /// The next `count` values of `def`, in order.
    pub async fn take(&self, def: &SequenceDef, count: usize) -> Result<Vec<i64>> {
        let slot = self.slot(def);
        let mut block = slot.lock().await;
        let mut values = Vec::with_capacity(count);
        while values.len() < count {
            if block.left == 0 {
                let wanted = ((count - values.len()) as u64)
                    .max(NODE_BLOCK)
                    .max(def.cache as u64);
                let ValueBlock { first, count } = self.allocate(def, wanted).await?;
                *block = Block {
                    next: first,
                    left: count,
                };
            }
            let n = block.left.min((count - values.len()) as u64);
            for i in 0..n {
                values.push((block.next as i128 + i as i128 * def.increment as i128) as i64);
            }
            block.left -= n;
            // Past the block's last value this may leave the type's range;
            // it is never read then.
            block.next = (block.next as i128 + n as i128 * def.increment as i128) as i64;
        }
        Ok(values)
    }

    /// Sets the sequence's state (setval), dropping this node's block so
    /// that its next value follows the new state.
    pub async fn set(&self, def: &SequenceDef, state: SequenceState) -> Result<()> {
        let slot = self.slot(def);
        let mut block = slot.lock().await;
        let mut mutations = self.definition_check(def);
        mutations.push(Mutation::Put {
            key: def.state_key(),
            value: state.encode(),
        });
        self.propose(def, mutations).await?;
        *block = Block::default();
        Ok(())
    }

    async fn allocate(&self, def: &SequenceDef, count: u64) -> Result<ValueBlock> {
        let mut mutations = self.definition_check(def);
        mutations.push(Mutation::NextValues {
            key: def.state_key(),
            bounds: def.bounds(),
            count,
        });
        let outcome = self.propose(def, mutations).await?;
        outcome
            .values
            .first()
            .copied()
            .ok_or_else(|| Error::new(sqlstate::INTERNAL_ERROR, "nextval got no values"))
    }

    /// A `Check` that the committed definition is still the one used, so a
    /// concurrent DROP or change of the sequence fails the command rather
    /// than bring back its state. A sequence only an open block has created
    /// is not committed and has nothing to check.
    fn definition_check(&self, def: &SequenceDef) -> Vec<Mutation> {
        match self.shared.current().sequence(&def.schema, &def.name) {
            Some(committed) if committed.id == def.id && committed.nonce == def.nonce => {
                vec![Mutation::Check {
                    key: sequence_key(def.id),
                    expected: Some(encode_json(committed.as_ref())),
                }]
            }
            _ => Vec::new(),
        }
    }

    async fn propose(
        &self,
        def: &SequenceDef,
        mutations: Vec<Mutation>,
    ) -> Result<sluice_raftstore::ApplyOutcome> {
        match self.raft.propose(Command { mutations }).await {
            Ok(outcome) => Ok(outcome),
            Err(sluice_raftstore::Error::Apply(ApplyError::SequenceExhausted {
                corrupt: false,
                ..
            })) => {
                let (which, bound) = if def.increment > 0 {
                    ("maximum", def.max)
                } else {
                    ("minimum", def.min)
                };
                Err(Error::new(
                    sqlstate::SEQUENCE_GENERATOR_LIMIT_EXCEEDED,
                    format!(
                        "nextval: reached {which} value of sequence \"{}\" ({bound})",
                        def.name
                    ),
                ))
            }
            Err(sluice_raftstore::Error::Apply(ApplyError::Conflict { .. })) => Err(Error::new(
                sqlstate::SERIALIZATION_FAILURE,
                format!(
                    "sequence \"{}\" was changed or dropped by a concurrent statement",
                    def.name
                ),
            )),
            Err(e) => Err(raft_error(e)),
        }
    }
}

/// A session's face of the sequences: how its statements find them (its
/// catalog, a transaction block's included) and the last value `nextval`
/// returned for each, for `currval` and `lastval`. Carried in the session's
/// DataFusion config, where the functions find it.
#[derive(Clone)]
pub struct SequenceSession(Arc<SessionSequences>);

struct SessionSequences {
    allocator: Arc<SequenceAllocator>,
    catalog: Arc<SessionCatalog>,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// By sequence id and nonce.
    values: HashMap<(u64, u64), i64>,
    last: Option<((u64, u64), i64)>,
}

impl fmt::Debug for SequenceSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SequenceSession").finish_non_exhaustive()
    }
}

session_handle_extension!(SequenceSession, "sluice_sequences");

impl SequenceSession {
    pub fn new(allocator: Arc<SequenceAllocator>, catalog: Arc<SessionCatalog>) -> Self {
        Self(Arc::new(SessionSequences {
            allocator,
            catalog,
            seen: Mutex::default(),
        }))
    }

    fn of(options: &ConfigOptions) -> Result<&SequenceSession> {
        options.extensions.get::<SequenceSession>().ok_or_else(|| {
            Error::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "sequence functions are not supported here (outside a statement's rows, such as the DEFAULT of a column added to a table with rows)",
            )
        })
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.0.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sequence a name given as text denotes, as `regclass` input reads it.
    fn resolve(&self, text: &str) -> Result<Arc<SequenceDef>> {
        let (schema, name) = relation_text(text)?;
        let (schema, name) = (schema.as_str(), name.as_str());
        let catalog = self.0.catalog.current();
        if let Some(def) = catalog.sequence(schema, name) {
            return Ok(def.clone());
        }
        if catalog.table(schema, name).is_some() {
            return Err(Error::new(
                sqlstate::WRONG_OBJECT_TYPE,
                format!("\"{name}\" is not a sequence"),
            ));
        }
        Err(Error::new(
            sqlstate::UNDEFINED_TABLE,
            format!("relation \"{text}\" does not exist"),
        ))
    }

    async fn nextval(&self, name: &str, count: usize) -> Result<Vec<i64>> {
        let def = self.resolve(name)?;
        let values = self.0.allocator.take(&def, count).await?;
        if let Some(&last) = values.last() {
            let mut seen = self.seen();
            seen.values.insert((def.id, def.nonce), last);
            seen.last = Some(((def.id, def.nonce), last));
        }
        Ok(values)
    }

    fn currval(&self, name: &str) -> Result<i64> {
        let def = self.resolve(name)?;
        self.seen()
            .values
            .get(&(def.id, def.nonce))
            .copied()
            .ok_or_else(|| {
                Error::new(
                    sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!(
                        "currval of sequence \"{}\" is not yet defined in this session",
                        def.name
                    ),
                )
            })
    }

    fn lastval(&self) -> Result<i64> {
        let seen = self.seen();
        let not_yet = || {
            Error::new(
                sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                "lastval is not yet defined in this session",
            )
        };
        let (sequence, value) = seen.last.ok_or_else(not_yet)?;
        // As in PostgreSQL, a dropped sequence's last value is gone with it.
        let exists = self
            .0
            .catalog
            .current()
            .sequences
            .values()
            .any(|s| (s.id, s.nonce) == sequence);
        exists.then_some(value).ok_or_else(not_yet)
    }

    async fn setval(&self, name: &str, value: i64, called: bool) -> Result<i64> {
        let def = self.resolve(name)?;
        if value < def.min || value > def.max {
            return Err(Error::new(
                sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
                format!(
                    "setval: value {value} is out of bounds for sequence \"{}\" ({}..{})",
                    def.name, def.min, def.max
                ),
            ));
        }
        self.0
            .allocator
            .set(
                &def,
                SequenceState {
                    last: value,
                    called,
                },
            )
            .await?;
        if called {
            let mut seen = self.seen();
            seen.values.insert((def.id, def.nonce), value);
        }
        Ok(value)
    }

    /// `pg_get_serial_sequence(table, column)`: the qualified name of the
    /// sequence owned by the column, or NULL.
    fn serial_sequence(&self, table: &str, column: &str) -> Result<Option<String>> {
        let (schema, name) = relation_text(table)?;
        let catalog = self.0.catalog.current();
        // The column is compared as written: PostgreSQL does not fold it.
        let def = crate::resolve::table_with_column(&catalog, &schema, &name, column)?;
        let owned = catalog
            .sequences_owned_by(def.id)
            .find(|s| s.owned_by.as_ref().is_some_and(|o| o.column == column))
            .map(|s| {
                format!(
                    "{}.{}",
                    quote_ident_if_needed(&s.schema),
                    quote_ident_if_needed(&s.name)
                )
            });
        Ok(owned)
    }
}

/// `schema` and `name` of a relation named in text (`'s'`, `'public."S"'`),
/// as `regclass` input reads it.
fn relation_text(text: &str) -> Result<(String, String)> {
    let parts = parse_qualified_text(text).ok_or_else(|| {
        Error::new(
            sqlstate::INVALID_NAME,
            format!("invalid name syntax: \"{text}\""),
        )
    })?;
    match <[String; 1]>::try_from(parts) {
        Ok([name]) => Ok((DEFAULT_SCHEMA.to_string(), name)),
        Err(mut parts) if parts.len() <= 3 => {
            let name = parts.pop().expect("two or three parts");
            let schema = parts.pop().expect("two or three parts");
            Ok((schema, name))
        }
        Err(_) => Err(Error::new(
            sqlstate::INVALID_NAME,
            format!("improper relation name (too many dotted names): {text}"),
        )),
    }
}

/// Registers the sequence functions.
pub fn register(ctx: &datafusion::prelude::SessionContext) {
    for function in [Function::NextVal, Function::SetVal] {
        let udf = AsyncScalarUDF::new(Arc::new(SequenceFunction::new(function)));
        ctx.register_udf(udf.into_scalar_udf());
    }
    for function in [
        Function::CurrVal,
        Function::LastVal,
        Function::SerialSequence,
    ] {
        ctx.register_udf(ScalarUDF::new_from_impl(SequenceFunction::new(function)));
    }
}

fn external(error: Error) -> DataFusionError {
    DataFusionError::External(Box::new(error))
}

/// The text values of an argument, one per row.
fn texts(value: &ColumnarValue, rows: usize) -> datafusion::common::Result<Vec<Option<String>>> {
    let array = value.to_array(rows)?;
    let array = cast(&array, &DataType::Utf8)?;
    let strings = array
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("cast to Utf8 gives a StringArray");
    Ok(strings.iter().map(|s| s.map(str::to_string)).collect())
}

fn int64_result(values: Vec<Option<i64>>) -> ColumnarValue {
    ColumnarValue::Array(Arc::new(Int64Array::from(values)) as ArrayRef)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Function {
    /// `nextval(regclass) -> bigint`, async: it may propose.
    NextVal,
    /// `setval(regclass, bigint [, boolean]) -> bigint`, async: it proposes.
    SetVal,
    /// `currval(regclass) -> bigint`.
    CurrVal,
    /// `lastval() -> bigint`.
    LastVal,
    /// `pg_get_serial_sequence(text, text) -> text`.
    SerialSequence,
}

/// One of the sequence functions. They are strict, as PostgreSQL's are: a
/// NULL argument gives NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SequenceFunction {
    function: Function,
    signature: Signature,
}

impl SequenceFunction {
    fn new(function: Function) -> Self {
        let signature = match function {
            Function::NextVal | Function::CurrVal => Signature::string(1, Volatility::Volatile),
            Function::SetVal => Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![DataType::Utf8, DataType::Int64]),
                    TypeSignature::Exact(vec![DataType::Utf8, DataType::Int64, DataType::Boolean]),
                ],
                Volatility::Volatile,
            ),
            Function::LastVal => Signature::nullary(Volatility::Volatile),
            Function::SerialSequence => Signature::string(2, Volatility::Stable),
        };
        Self {
            function,
            signature,
        }
    }
}

impl ScalarUDFImpl for SequenceFunction {
    fn name(&self) -> &str {
        match self.function {
            Function::NextVal => "nextval",
            Function::SetVal => "setval",
            Function::CurrVal => "currval",
            Function::LastVal => "lastval",
            Function::SerialSequence => "pg_get_serial_sequence",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(match self.function {
            Function::SerialSequence => DataType::Utf8,
            _ => DataType::Int64,
        })
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let session = SequenceSession::of(&args.config_options).map_err(external)?;
        let rows = args.number_rows;
        match self.function {
            Function::NextVal | Function::SetVal => Err(DataFusionError::Internal(format!(
                "{} runs only as an async function",
                self.name()
            ))),
            Function::CurrVal => {
                let mut out = Vec::with_capacity(rows);
                for name in texts(&args.args[0], rows)? {
                    out.push(match name {
                        None => None,
                        Some(name) => Some(session.currval(&name).map_err(external)?),
                    });
                }
                Ok(int64_result(out))
            }
            Function::LastVal => {
                let value = session.lastval().map_err(external)?;
                Ok(ColumnarValue::Scalar(ScalarValue::Int64(Some(value))))
            }
            Function::SerialSequence => {
                let tables = texts(&args.args[0], rows)?;
                let columns = texts(&args.args[1], rows)?;
                let mut out = Vec::with_capacity(rows);
                for (table, column) in tables.into_iter().zip(columns) {
                    out.push(match (table, column) {
                        (Some(table), Some(column)) => {
                            session.serial_sequence(&table, &column).map_err(external)?
                        }
                        _ => None,
                    });
                }
                Ok(ColumnarValue::Array(Arc::new(StringArray::from(out))))
            }
        }
    }
}

#[async_trait]
impl AsyncScalarUDFImpl for SequenceFunction {
    async fn invoke_async_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let session = SequenceSession::of(&args.config_options).map_err(external)?;
        match self.function {
            Function::NextVal => next_values(session, &args).await,
            Function::SetVal => set_values(session, &args).await,
            _ => self.invoke_with_args(args),
        }
    }
}

async fn next_values(
    session: &SequenceSession,
    args: &ScalarFunctionArgs,
) -> datafusion::common::Result<ColumnarValue> {
    let rows = args.number_rows;
    // The usual call names one sequence for every row: one block request.
    if let ColumnarValue::Scalar(scalar) = &args.args[0] {
        let name = match scalar {
            ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => {
                s.clone()
            }
            _ => None,
        };
        let Some(name) = name else {
            return Ok(int64_result(vec![None; rows]));
        };
        let values = session.nextval(&name, rows).await.map_err(external)?;
        return Ok(int64_result(values.into_iter().map(Some).collect()));
    }
    let mut out = Vec::with_capacity(rows);
    for name in texts(&args.args[0], rows)? {
        out.push(match name {
            None => None,
            Some(name) => Some(session.nextval(&name, 1).await.map_err(external)?[0]),
        });
    }
    Ok(int64_result(out))
}

async fn set_values(
    session: &SequenceSession,
    args: &ScalarFunctionArgs,
) -> datafusion::common::Result<ColumnarValue> {
    let rows = args.number_rows;
    let names = texts(&args.args[0], rows)?;
    let values = cast(&args.args[1].to_array(rows)?, &DataType::Int64)?;
    let values = values
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("cast to Int64 gives an Int64Array");
    let flags = match args.args.get(2) {
        Some(flag) => Some(cast(&flag.to_array(rows)?, &DataType::Boolean)?),
        None => None,
    };
    let flags = flags.as_ref().map(|flags| {
        flags
            .as_any()
            .downcast_ref::<BooleanArray>()
            .expect("cast to Boolean gives a BooleanArray")
    });
    let mut out = Vec::with_capacity(rows);
    for (row, name) in names.into_iter().enumerate() {
        let called = match flags {
            None => Some(true),
            Some(flags) => flags.is_valid(row).then(|| flags.value(row)),
        };
        let (Some(name), true, Some(called)) = (name, values.is_valid(row), called) else {
            out.push(None);
            continue;
        };
        let set = session
            .setval(&name, values.value(row), called)
            .await
            .map_err(external)?;
        out.push(Some(set));
    }
    Ok(int64_result(out))
}
