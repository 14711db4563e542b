//! The SQL catalog: schemas and tables, stored in the replicated `Data`
//! keyspace and cached in memory ([`SharedCatalog`]), and the built-in
//! tables of `sluice_catalog`. Its DataFusion face, which turns definitions
//! into table providers, is [`crate::provider`].
//!
//! Layout of the `Data` keyspace (all integers big-endian):
//!
//! | key | value |
//! |---|---|
//! | `0x01 's' <schema name>` | [`SchemaDef`] as JSON |
//! | `0x01 't' <table id u64>` | [`TableDef`] as JSON |
//! | `0x01 'q' <sequence id u64>` | [`SequenceDef`] as JSON |
//! | `0x01 'n'` | next table id (u64) |
//! | `0x01 'v'` | catalog version (u64), bumped by every DDL |
//! | `0x02 <table id u64> <primary key>` | the row ([`sluice_engine::row`]) |
//! | `0x03 <index id u64> <values> <key suffix>` | an index entry ([`crate::index`]) |
//! | `0x04 <sequence id u64> <nonce u64>` | a sequence's state ([`sluice_raftstore::sequence`]) |
//!
//! The primary key is encoded with [`sluice_engine::keycode`]; a table
//! without a declared primary key uses a hidden `bigint` row id. Every DDL
//! command carries a `Check` of the catalog version it was planned against,
//! so two concurrent DDL statements cannot both apply on a stale view.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::logical_expr::Expr;
use serde::{Deserialize, Serialize};
use sluice_engine::{keycode, row, KeyRange, Keyspace, Snapshot, Value, ValueKind};

use crate::error::{sqlstate, storage_error, Error, Result};
use crate::types::{arrow_schema, SqlType};

pub const CATALOG_NAME: &str = "sluice";
pub const DEFAULT_SCHEMA: &str = "public";
/// Name of the hidden column that carries a row's storage key through the
/// input plan of UPDATE and DELETE (see [`SessionCatalog::dml_target`]).
pub const KEY_COLUMN: &str = "__sluice_key";
/// Name of the hidden row id of tables without a primary key.
pub const ROWID_COLUMN: &str = "__sluice_rowid";

const CATALOG_PREFIX: u8 = 0x01;
const ROWS_PREFIX: u8 = 0x02;
/// Schemas that exist without a catalog entry.
const BUILTIN_SCHEMAS: [&str; 1] = [DEFAULT_SCHEMA];
/// Schemas provided by DataFusion or datafusion-pg-catalog, never stored.
pub const SYSTEM_SCHEMAS: [&str; 3] = ["pg_catalog", "information_schema", "sluice_catalog"];

pub fn schema_key(name: &str) -> Vec<u8> {
    let mut key = vec![CATALOG_PREFIX, b's'];
    key.extend_from_slice(name.as_bytes());
    key
}

pub fn table_key(id: u64) -> Vec<u8> {
    let mut key = vec![CATALOG_PREFIX, b't'];
    key.extend_from_slice(&id.to_be_bytes());
    key
}

pub fn sequence_key(id: u64) -> Vec<u8> {
    let mut key = vec![CATALOG_PREFIX, b'q'];
    key.extend_from_slice(&id.to_be_bytes());
    key
}

pub fn next_table_id_key() -> Vec<u8> {
    vec![CATALOG_PREFIX, b'n']
}

pub fn version_key() -> Vec<u8> {
    vec![CATALOG_PREFIX, b'v']
}

pub fn table_rows_prefix(id: u64) -> Vec<u8> {
    let mut key = vec![ROWS_PREFIX];
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// Reads a big-endian u64 counter; absent means 0.
pub fn read_counter(snapshot: &dyn Snapshot, key: &[u8]) -> Result<(u64, Option<Vec<u8>>)> {
    match snapshot.get(Keyspace::Data, key).map_err(storage_error)? {
        None => Ok((0, None)),
        Some(bytes) => {
            let array: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                Error::new(sqlstate::DATA_CORRUPTED, "catalog counter is not 8 bytes")
            })?;
            Ok((u64::from_be_bytes(array), Some(bytes)))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaDef {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    pub ty: SqlType,
    pub nullable: bool,
    /// The DEFAULT expression as SQL text, evaluated by DataFusion on INSERT.
    pub default: Option<String>,
    /// For columns added by ALTER TABLE: the value rows written before the
    /// column existed read as (row-encoded single value), or NULL when absent.
    pub missing_value: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDef {
    pub id: u64,
    pub schema: String,
    pub name: String,
    pub columns: Vec<ColumnDef>,
    /// Column indexes of the primary key, in key order. Empty: hidden row id.
    pub primary_key: Vec<usize>,
    /// Secondary indexes ([`crate::index`]). Omitted from the stored JSON
    /// when empty, so definitions written before indexes existed keep
    /// their exact bytes (statements `Check` them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<IndexDef>,
    /// Set for a topic ([`crate::topic`]): an append-only log whose last
    /// three columns are the system columns `_partition`, `_offset` and
    /// `_timestamp`, assigned at append. Omitted for tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<sluice_stream::TopicOptions>,
    /// CHECK constraints ([`crate::check`]), omitted when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckDef>,
    /// FOREIGN KEY constraints of this (referencing) table
    /// ([`crate::foreign_key`]), omitted when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign_keys: Vec<ForeignKeyDef>,
}

impl TableDef {
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Whether a constraint of the table (primary key, UNIQUE index, CHECK)
    /// has this name.
    pub fn constraint_named(&self, name: &str) -> bool {
        (self.has_primary_key() && name == format!("{}_pkey", self.name))
            || self.indexes.iter().any(|index| index.name == name)
            || self.checks.iter().any(|check| check.name == name)
            || self.foreign_keys.iter().any(|fk| fk.name == name)
    }

    /// Whether `key` is one of this table's rows or index entries.
    pub fn owns_key(&self, key: &[u8]) -> bool {
        key.starts_with(&self.rows_prefix())
            || self
                .indexes
                .iter()
                .any(|index| key.starts_with(&index.prefix()))
    }

    /// The 23502 for a NULL in NOT NULL `column`.
    pub fn not_null_violation(&self, column: &str) -> Error {
        Error::new(
            sqlstate::NOT_NULL_VIOLATION,
            format!(
                "null value in column \"{column}\" of relation \"{}\" violates not-null constraint",
                self.name
            ),
        )
    }

    pub fn types(&self) -> Vec<SqlType> {
        self.columns.iter().map(|c| c.ty).collect()
    }

    pub fn kinds(&self) -> Vec<ValueKind> {
        self.columns.iter().map(|c| c.ty.value_kind()).collect()
    }

    /// A table Sluice defines itself (`sluice_catalog.consumer_offsets`):
    /// its definition is not stored and DDL cannot change it.
    pub fn is_builtin(&self) -> bool {
        self.id >= BUILTIN_ID_BASE
    }

    pub fn is_topic(&self) -> bool {
        self.topic.is_some()
    }

    /// The columns a producer writes: all of a table's, a topic's without
    /// its system columns.
    pub fn user_columns(&self) -> &[ColumnDef] {
        match self.topic {
            Some(_) => &self.columns[..self.columns.len().saturating_sub(3)],
            None => &self.columns,
        }
    }

    /// Whether column `index` is one of a topic's system columns, which
    /// appends assign rather than producers give.
    pub fn is_system_column(&self, index: usize) -> bool {
        self.is_topic() && index >= self.user_columns().len()
    }

    pub fn has_primary_key(&self) -> bool {
        !self.primary_key.is_empty()
    }

    pub fn index(&self, name: &str) -> Option<&IndexDef> {
        self.indexes.iter().find(|i| i.name == name)
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    pub fn rows_prefix(&self) -> Vec<u8> {
        table_rows_prefix(self.id)
    }

    pub fn rows_range(&self) -> KeyRange {
        KeyRange::prefix(&self.rows_prefix())
    }

    /// The storage key of a row given its full column values.
    pub fn key_for_row(&self, values: &[Value]) -> Result<Vec<u8>> {
        let pk: Vec<Value> = self
            .primary_key
            .iter()
            .map(|&i| values[i].clone())
            .collect();
        self.key_for_pk(&pk)
    }

    pub fn key_for_pk(&self, pk: &[Value]) -> Result<Vec<u8>> {
        keycode::encode_key(&self.rows_prefix(), pk)
            .map_err(|e| Error::new(sqlstate::INTERNAL_ERROR, format!("encode key: {e}")))
    }

    pub fn key_for_rowid(&self, rowid: i64) -> Result<Vec<u8>> {
        self.key_for_pk(&[Value::Int64(rowid)])
    }

    pub fn encode_row(&self, values: &[Value]) -> Result<Vec<u8>> {
        row::encode_row(values, &self.kinds())
            .map_err(|e| Error::new(sqlstate::INTERNAL_ERROR, format!("encode row: {e}")))
    }

    /// Decodes a stored row, filling columns added after it was written.
    pub fn decode_row(&self, kinds: &[ValueKind], bytes: &[u8]) -> Result<Vec<Value>> {
        let mut values = row::decode_row(bytes, kinds).map_err(|e| {
            Error::new(
                sqlstate::DATA_CORRUPTED,
                format!("decode row of {}: {e}", self.qualified_name()),
            )
        })?;
        for column in &self.columns[values.len()..] {
            values.push(self.missing_value(column)?);
        }
        Ok(values)
    }

    fn missing_value(&self, column: &ColumnDef) -> Result<Value> {
        match &column.missing_value {
            None => Ok(Value::Null),
            Some(bytes) => row::decode_row(bytes, &[column.ty.value_kind()])
                .map_err(|e| {
                    Error::new(
                        sqlstate::DATA_CORRUPTED,
                        format!("decode default of {}: {e}", column.name),
                    )
                })?
                .pop()
                .ok_or_else(|| Error::new(sqlstate::DATA_CORRUPTED, "empty stored default")),
        }
    }

    /// Decodes the primary key part of a storage key (for error details).
    pub fn describe_key(&self, key: &[u8]) -> String {
        let prefix_len = self.rows_prefix().len();
        let Some(encoded) = key.get(prefix_len..) else {
            return String::from("(?)");
        };
        let (names, kinds): (Vec<&str>, Vec<ValueKind>) = if self.has_primary_key() {
            self.primary_key
                .iter()
                .map(|&i| {
                    (
                        self.columns[i].name.as_str(),
                        self.columns[i].ty.value_kind(),
                    )
                })
                .unzip()
        } else {
            (vec![ROWID_COLUMN], vec![ValueKind::Int64])
        };
        match keycode::decode_key(encoded, &kinds) {
            Ok(values) => {
                let rendered: Vec<String> = values.iter().map(render_value).collect();
                format!("({})=({})", names.join(", "), rendered.join(", "))
            }
            Err(_) => String::from("(?)"),
        }
    }

    pub fn arrow_schema(&self) -> SchemaRef {
        arrow_schema(
            self.columns
                .iter()
                .map(|c| (c.name.as_str(), c.ty, c.nullable)),
        )
    }

    /// The schema DML statements are planned against: every column
    /// nullable (the executor checks NOT NULL and names the column as
    /// PostgreSQL does), plus the hidden key column for UPDATE/DELETE.
    pub fn dml_schema(&self, with_key: bool) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .arrow_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        if with_key {
            fields.push(Field::new(KEY_COLUMN, DataType::Binary, false));
        }
        Arc::new(Schema::new(fields))
    }
}

pub(crate) fn render_value(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::Bool(v) => if *v { "t" } else { "f" }.into(),
        Value::Int16(v) => v.to_string(),
        Value::Int32(v) => v.to_string(),
        Value::Int64(v) => v.to_string(),
        Value::Float32(v) => v.to_string(),
        Value::Float64(v) => v.to_string(),
        Value::Decimal(v) => v.to_string(),
        Value::Text(v) => v.clone(),
        Value::Uuid(v) => crate::types::format_uuid(v),
        other => format!("{other:?}"),
    }
}

/// A sequence (`CREATE SEQUENCE`, or the one behind a `serial` or identity
/// column). Its values live apart from the definition, under
/// [`SequenceDef::state_key`], and move by `NextValues` commands that are
/// not part of any transaction ([`crate::sequence`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceDef {
    /// Allocated from the same counter as table ids.
    pub id: u64,
    /// Chosen at random when the sequence is created: a block that created
    /// a sequence and rolled back leaves its id to be used again, and the
    /// values such a block took must not be the next sequence's state.
    pub nonce: u64,
    pub schema: String,
    pub name: String,
    /// `smallint`, `integer` or `bigint`: the type of the values.
    pub ty: SqlType,
    pub start: i64,
    pub increment: i64,
    pub min: i64,
    pub max: i64,
    pub cache: i64,
    pub cycle: bool,
    /// The column the sequence belongs to (`serial`, identity, `OWNED BY`):
    /// dropping the table or the column drops the sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owned_by: Option<SequenceOwner>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceOwner {
    pub table: u64,
    pub column: String,
}

impl SequenceDef {
    pub fn state_key(&self) -> Vec<u8> {
        let mut key = vec![SEQUENCE_PREFIX];
        key.extend_from_slice(&self.id.to_be_bytes());
        key.extend_from_slice(&self.nonce.to_be_bytes());
        key
    }

    pub fn bounds(&self) -> sluice_raftstore::sequence::SequenceBounds {
        sluice_raftstore::sequence::SequenceBounds {
            start: self.start,
            increment: self.increment,
            min: self.min,
            max: self.max,
            cycle: self.cycle,
        }
    }
}

const SEQUENCE_PREFIX: u8 = 0x04;

/// Compiles a table's DEFAULT expressions (provided by the session layer).
pub type DefaultsFn = Arc<dyn Fn(&Arc<TableDef>) -> HashMap<String, Expr> + Send + Sync>;

/// One consistent, immutable view of the catalog.
#[derive(Debug, Default)]
pub struct CatalogState {
    pub version: u64,
    pub schemas: BTreeMap<String, SchemaDef>,
    pub tables: BTreeMap<(String, String), Arc<TableDef>>,
    pub sequences: BTreeMap<(String, String), Arc<SequenceDef>>,
}

impl CatalogState {
    /// Loads the whole catalog from a snapshot.
    pub fn load(snapshot: &dyn Snapshot) -> Result<CatalogState> {
        let (version, _) = read_counter(snapshot, &version_key())?;
        let mut state = CatalogState {
            version,
            ..Default::default()
        };
        for name in BUILTIN_SCHEMAS {
            state
                .schemas
                .insert(name.into(), SchemaDef { name: name.into() });
        }
        let range = KeyRange::prefix(&[CATALOG_PREFIX, b's']);
        for (_, value) in scan_all(snapshot, &range)? {
            let schema: SchemaDef = decode_json(&value)?;
            state.schemas.insert(schema.name.clone(), schema);
        }
        let range = KeyRange::prefix(&[CATALOG_PREFIX, b't']);
        for (_, value) in scan_all(snapshot, &range)? {
            let table: TableDef = decode_json(&value)?;
            state
                .tables
                .insert((table.schema.clone(), table.name.clone()), Arc::new(table));
        }
        let range = KeyRange::prefix(&[CATALOG_PREFIX, b'q']);
        for (_, value) in scan_all(snapshot, &range)? {
            let sequence: SequenceDef = decode_json(&value)?;
            state.sequences.insert(
                (sequence.schema.clone(), sequence.name.clone()),
                Arc::new(sequence),
            );
        }
        for builtin in builtin_tables() {
            state.tables.insert(
                (builtin.schema.clone(), builtin.name.clone()),
                Arc::new(builtin),
            );
        }
        Ok(state)
    }

    /// What a `Data` key belongs to, for the detail of a conflict:
    /// `table "public.t", key (id)=(1)`, an index, or the catalog.
    pub fn describe_data_key(&self, key: &[u8]) -> String {
        for table in self.tables.values() {
            let prefix = table.rows_prefix();
            if key.starts_with(&prefix) {
                let name = table.qualified_name();
                return if key.len() > prefix.len() {
                    format!("table \"{name}\", key {}", table.describe_key(key))
                } else {
                    format!("table \"{name}\"")
                };
            }
            if let Some(index) = table
                .indexes
                .iter()
                .find(|index| key.starts_with(&index.prefix()))
            {
                return format!(
                    "index \"{}\" of table \"{}\"",
                    index.name,
                    table.qualified_name()
                );
            }
        }
        String::from("the catalog")
    }

    pub fn table(&self, schema: &str, name: &str) -> Option<&Arc<TableDef>> {
        self.tables.get(&(schema.to_string(), name.to_string()))
    }

    pub fn sequence(&self, schema: &str, name: &str) -> Option<&Arc<SequenceDef>> {
        self.sequences.get(&(schema.to_string(), name.to_string()))
    }

    /// Whether a table, topic or sequence has this name: they share one
    /// namespace, as PostgreSQL's relations do.
    pub fn relation_exists(&self, schema: &str, name: &str) -> bool {
        self.table(schema, name).is_some() || self.sequence(schema, name).is_some()
    }

    /// Whether a table of `schema` has an index named `name`.
    pub fn index_named(&self, schema: &str, name: &str) -> bool {
        self.tables_in(schema).any(|t| t.index(name).is_some())
    }

    pub fn table_by_id(&self, id: u64) -> Option<&Arc<TableDef>> {
        self.tables.values().find(|t| t.id == id)
    }

    /// The sequences that belong to a column of table `id`.
    pub fn sequences_owned_by(&self, id: u64) -> impl Iterator<Item = &Arc<SequenceDef>> + '_ {
        self.sequences
            .values()
            .filter(move |s| s.owned_by.as_ref().is_some_and(|o| o.table == id))
    }

    pub fn tables_in<'a>(
        &'a self,
        schema: &'a str,
    ) -> impl Iterator<Item = &'a Arc<TableDef>> + 'a {
        self.tables.values().filter(move |t| t.schema == schema)
    }
}

pub fn scan_all(snapshot: &dyn Snapshot, range: &KeyRange) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    const PAGE: usize = 1024;
    let mut out = Vec::new();
    let mut range = range.clone();
    loop {
        let page = snapshot
            .scan(Keyspace::Data, &range, PAGE)
            .map_err(storage_error)?;
        let done = page.len() < PAGE;
        if let Some((last, _)) = page.last() {
            range = range.resume_after(last);
        }
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

fn decode_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::new(
            sqlstate::DATA_CORRUPTED,
            format!("decode catalog entry: {e}"),
        )
    })
}

pub fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("catalog definitions always serialize")
}

/// The catalog shared by all sessions of a node: the latest loaded state.
#[derive(Debug, Default)]
pub struct SharedCatalog {
    state: RwLock<Arc<CatalogState>>,
}

impl SharedCatalog {
    pub fn current(&self) -> Arc<CatalogState> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reloads from `snapshot` if it holds a newer catalog version.
    pub fn refresh(&self, snapshot: &dyn Snapshot) -> Result<Arc<CatalogState>> {
        let (version, _) = read_counter(snapshot, &version_key())?;
        let current = self.current();
        if current.version == version && version != 0 {
            return Ok(current);
        }
        let loaded = Arc::new(CatalogState::load(snapshot)?);
        let mut guard = self.state.write().unwrap_or_else(|e| e.into_inner());
        if loaded.version >= guard.version {
            *guard = loaded.clone();
        }
        Ok(guard.clone())
    }
}

// ---------------------------------------------------------------------------
// Built-in tables: `sluice_catalog`'s writable tables, defined in code.

/// The schema of Sluice's own system tables and views.
pub const SLUICE_SCHEMA: &str = "sluice_catalog";

/// Ids at or above this are built-in tables; allocated ids count up from 1.
pub const BUILTIN_ID_BASE: u64 = 1 << 62;

pub const OFFSETS_TABLE_ID: u64 = BUILTIN_ID_BASE;

pub const OFFSETS_TABLE: &str = "consumer_offsets";

pub const MEMBERS_TABLE_ID: u64 = BUILTIN_ID_BASE + 1;

pub const MEMBERS_TABLE: &str = "consumer_members";

fn column(name: &str, ty: SqlType, nullable: bool) -> ColumnDef {
    ColumnDef {
        name: name.into(),
        ty,
        nullable,
        default: None,
        missing_value: None,
    }
}

/// The definition of `sluice_catalog.consumer_members`.
pub fn members_table() -> TableDef {
    TableDef {
        id: MEMBERS_TABLE_ID,
        schema: SLUICE_SCHEMA.into(),
        name: MEMBERS_TABLE.into(),
        columns: vec![
            column("group_name", SqlType::Text, false),
            column("topic", SqlType::Text, false),
            column("member_id", SqlType::Text, false),
            column("node_id", SqlType::Int8, false),
            column("heartbeat_at", SqlType::TimestampTz, false),
        ],
        primary_key: vec![0, 1, 2],
        indexes: Vec::new(),
        topic: None,
        checks: Vec::new(),
        foreign_keys: Vec::new(),
    }
}

/// Every built-in table.
pub fn builtin_tables() -> Vec<TableDef> {
    vec![offsets_table(), members_table()]
}

/// The definition of `sluice_catalog.consumer_offsets`.
pub fn offsets_table() -> TableDef {
    TableDef {
        id: OFFSETS_TABLE_ID,
        schema: SLUICE_SCHEMA.into(),
        name: OFFSETS_TABLE.into(),
        columns: vec![
            column("group_name", SqlType::Text, false),
            column("topic", SqlType::Text, false),
            column("partition", SqlType::Int4, false),
            column("next_offset", SqlType::Int8, false),
            column("committed_at", SqlType::TimestampTz, true),
        ],
        primary_key: vec![0, 1, 2],
        indexes: Vec::new(),
        topic: None,
        checks: Vec::new(),
        foreign_keys: Vec::new(),
    }
}

// ---------------------------------------------------------------------------
// Secondary index definitions (their upkeep and build are crate::index's).

const INDEX_PREFIX: u8 = 0x03;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexState {
    /// Maintained by writes, not yet complete: never read.
    WriteOnly,
    /// Complete: scans may read it.
    Public,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexColumn {
    /// Position in the table's columns.
    pub column: usize,
    pub descending: bool,
}

/// A FOREIGN KEY constraint as stored in the referencing table's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignKeyDef {
    pub name: String,
    /// The referencing columns, in the constraint's order.
    pub columns: Vec<usize>,
    /// The referenced table's id (this table's own for a self-reference).
    pub parent: u64,
    /// The referenced columns, paired with `columns`: the parent's primary
    /// key or the columns of one of its UNIQUE constraints.
    pub parent_columns: Vec<usize>,
    pub on_delete: ReferentialAction,
    pub on_update: ReferentialAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReferentialAction {
    NoAction,
    Restrict,
    Cascade,
    SetNull,
}

/// A CHECK constraint as stored in its table's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckDef {
    pub name: String,
    /// The expression's SQL text, as sqlparser prints it.
    pub expr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDef {
    /// Allocated from the same counter as table ids.
    pub id: u64,
    pub name: String,
    pub columns: Vec<IndexColumn>,
    pub state: IndexState,
    /// A UNIQUE constraint or index: rows whose indexed values hold no NULL
    /// share one entry key, written with `Insert`, so a second such row
    /// fails at apply. Omitted from the stored JSON when false, so older
    /// definitions keep their bytes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unique: bool,
}

impl IndexDef {
    pub fn prefix(&self) -> Vec<u8> {
        index_prefix(self.id)
    }

    /// The entry of the row stored at `row_key` with `values`, and whether
    /// it is a unique entry (the values alone, no row key suffix): a unique
    /// index's entry for values without NULL, which PostgreSQL never counts
    /// as equal.
    pub fn entry(
        &self,
        table: &TableDef,
        values: &[Value],
        row_key: &[u8],
    ) -> Result<(Vec<u8>, bool)> {
        let mut key = self.prefix();
        for column in &self.columns {
            encode_indexed(&mut key, &values[column.column], column.descending)?;
        }
        if self.unique && self.columns.iter().all(|c| !values[c.column].is_null()) {
            return Ok((key, true));
        }
        let suffix = row_key
            .get(table.rows_prefix().len()..)
            .ok_or_else(|| Error::new(sqlstate::INTERNAL_ERROR, "row key outside its table"))?;
        key.extend_from_slice(suffix);
        Ok((key, false))
    }

    /// The indexed values of an entry key, as `(a, b)=(1, 2)` for an error's
    /// detail; `None` if they do not decode.
    pub fn describe_entry(&self, table: &TableDef, key: &[u8]) -> Option<String> {
        if self.columns.iter().any(|c| c.descending) {
            return None;
        }
        let encoded = key.get(self.prefix().len()..)?;
        let kinds: Vec<ValueKind> = self
            .columns
            .iter()
            .map(|c| table.columns[c.column].ty.value_kind())
            .collect();
        let values = keycode::decode_key(encoded, &kinds).ok()?;
        let names: Vec<&str> = self
            .columns
            .iter()
            .map(|c| table.columns[c.column].name.as_str())
            .collect();
        let rendered: Vec<String> = values.iter().map(render_value).collect();
        Some(format!("({})=({})", names.join(", "), rendered.join(", ")))
    }
}

pub fn index_prefix(id: u64) -> Vec<u8> {
    let mut key = vec![INDEX_PREFIX];
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// Appends one indexed value, inverted for a descending column.
pub fn encode_indexed(buf: &mut Vec<u8>, value: &Value, descending: bool) -> Result<()> {
    let start = buf.len();
    keycode::encode_value(buf, value)
        .map_err(|e| Error::new(sqlstate::INTERNAL_ERROR, format!("encode index key: {e}")))?;
    if descending {
        for byte in &mut buf[start..] {
            *byte = !*byte;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descending_columns_reverse_the_order_of_values() {
        let encode = |value: &Value, descending| {
            let mut buf = Vec::new();
            encode_indexed(&mut buf, value, descending).unwrap();
            buf
        };
        let values = [
            Value::Text("a".into()),
            Value::Text("ab".into()),
            Value::Text("b".into()),
            Value::Null,
        ];
        for pair in values.windows(2) {
            assert!(encode(&pair[0], false) < encode(&pair[1], false));
            assert!(encode(&pair[0], true) > encode(&pair[1], true));
        }
        // A descending text value followed by more key bytes still sorts by the value.
        let mut shorter = encode(&Value::Text("a".into()), true);
        shorter.push(0x00);
        let mut longer = encode(&Value::Text("ab".into()), true);
        longer.push(0xFF);
        assert!(longer < shorter);
    }
}
