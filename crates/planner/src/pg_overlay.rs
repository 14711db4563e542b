//! `pg_catalog` as datafusion-pg-catalog provides it, with `pg_attribute`
//! and `pg_attrdef` corrected from the Sluice catalog.
//!
//! datafusion-pg-catalog derives a column's type from its Arrow type alone,
//! without type modifiers, so `\d` would show `numeric` for `numeric(12,2)`
//! and `text` for `varchar(20)`, `uuid` or `json`; and it knows no column
//! defaults. This overlay replaces `pg_attribute` by a view over the
//! original that takes `atttypid`, `atttypmod` and `atthasdef` from the
//! declared columns, matched by schema, table and column name, and
//! `pg_attrdef` by a view of the declared defaults. Its `adbin` holds the
//! default's SQL text, which `pg_get_expr` returns as it is
//! ([`crate::functions`]): PostgreSQL stores a parsed tree there and
//! `pg_get_expr` prints it, so clients see the same text either way. Every
//! other table is the original.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Int32Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::{Column, Result, ScalarValue};
use datafusion::datasource::{provider_as_source, MemTable, ViewTable};
use datafusion::functions::expr_fn::coalesce;
use datafusion::logical_expr::{cast, lit, Expr, JoinType, LogicalPlanBuilder};

use crate::catalog::SharedCatalog;
use crate::types::SqlType;

pub struct PgCatalogOverlay {
    inner: Arc<dyn SchemaProvider>,
    catalog: Arc<SharedCatalog>,
}

impl fmt::Debug for PgCatalogOverlay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgCatalogOverlay").finish_non_exhaustive()
    }
}

impl PgCatalogOverlay {
    pub fn new(inner: Arc<dyn SchemaProvider>, catalog: Arc<SharedCatalog>) -> Self {
        Self { inner, catalog }
    }

    /// (schema, table, column, type oid, type modifier, default) of every
    /// Sluice column.
    fn declared_columns(&self) -> Result<RecordBatch> {
        let state = self.catalog.current();
        let (mut schemas, mut tables, mut columns, mut oids, mut modifiers) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut defaults = Vec::new();
        for table in state.tables.values() {
            for column in &table.columns {
                let (oid, modifier) = pg_type(column.ty);
                schemas.push(table.schema.clone());
                tables.push(table.name.clone());
                columns.push(column.name.clone());
                oids.push(oid);
                modifiers.push(modifier);
                defaults.push(column.default.clone());
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("nspname", DataType::Utf8, false),
            Field::new("relname", DataType::Utf8, false),
            Field::new("attname", DataType::Utf8, false),
            Field::new("typid", DataType::Int32, false),
            Field::new("typmod", DataType::Int32, false),
            Field::new("adsrc", DataType::Utf8, true),
        ]));
        Ok(RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(schemas)),
                Arc::new(StringArray::from(tables)),
                Arc::new(StringArray::from(columns)),
                Arc::new(Int32Array::from(oids)),
                Arc::new(Int32Array::from(modifiers)),
                Arc::new(StringArray::from(defaults)),
            ],
        )?)
    }

    /// The original `pg_attribute` (as `a`) joined to its class (`c`),
    /// namespace (`n`) and the declared columns (`m`); `None` when the
    /// original tables are missing.
    async fn attributes_with_declared(
        &self,
    ) -> Result<Option<(Arc<dyn TableProvider>, LogicalPlanBuilder)>> {
        let (Some(attribute), Some(class), Some(namespace)) = (
            self.inner.table("pg_attribute").await?,
            self.inner.table("pg_class").await?,
            self.inner.table("pg_namespace").await?,
        ) else {
            return Ok(None);
        };
        let declared = self.declared_columns()?;
        let declared = MemTable::try_new(declared.schema(), vec![vec![declared]])?;
        let scan = |name: &str, table: Arc<dyn TableProvider>| {
            LogicalPlanBuilder::scan(name, provider_as_source(table), None)?.build()
        };
        let plan = LogicalPlanBuilder::from(scan("a", attribute.clone())?)
            .join(
                scan("c", class)?,
                JoinType::Left,
                (vec!["a.attrelid"], vec!["c.oid"]),
                None,
            )?
            .join(
                scan("n", namespace)?,
                JoinType::Left,
                (vec!["c.relnamespace"], vec!["n.oid"]),
                None,
            )?
            .join(
                scan("m", Arc::new(declared))?,
                JoinType::Left,
                (
                    vec!["n.nspname", "c.relname", "a.attname"],
                    vec!["m.nspname", "m.relname", "m.attname"],
                ),
                None,
            )?;
        Ok(Some((attribute, plan)))
    }

    async fn attribute_view(&self) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some((attribute, plan)) = self.attributes_with_declared().await? else {
            return self.inner.table("pg_attribute").await;
        };
        let projection: Vec<Expr> = attribute
            .schema()
            .fields()
            .iter()
            .map(|field| match field.name().as_str() {
                "atttypid" => {
                    coalesce(vec![column("m", "typid"), column("a", "atttypid")]).alias("atttypid")
                }
                "atttypmod" => coalesce(vec![column("m", "typmod"), column("a", "atttypmod")])
                    .alias("atttypmod"),
                "atthasdef" => column("m", "adsrc")
                    .is_not_null()
                    .or(column("a", "atthasdef"))
                    .alias("atthasdef"),
                name => column("a", name).alias(name),
            })
            .collect();
        let plan = plan.project(projection)?.build()?;
        Ok(Some(Arc::new(ViewTable::new(plan, None))))
    }

    /// `pg_attrdef`: one row per declared default, in the original's columns.
    async fn attrdef_view(&self) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(original) = self.inner.table("pg_attrdef").await? else {
            return Ok(None);
        };
        let Some((_, plan)) = self.attributes_with_declared().await? else {
            return Ok(Some(original));
        };
        let projection: Vec<Expr> = original
            .schema()
            .fields()
            .iter()
            .map(|field| {
                let value = match field.name().as_str() {
                    // Unique per column, as PostgreSQL's row oid is.
                    "oid" => column("a", "attrelid") * lit(1000) + column("a", "attnum"),
                    "adrelid" => column("a", "attrelid"),
                    "adnum" => column("a", "attnum"),
                    "adbin" => column("m", "adsrc"),
                    _ => lit(ScalarValue::Null),
                };
                cast(value, field.data_type().clone()).alias(field.name())
            })
            .collect();
        let plan = plan
            .filter(column("m", "adsrc").is_not_null())?
            .project(projection)?
            .build()?;
        Ok(Some(Arc::new(ViewTable::new(plan, None))))
    }
}

fn column(qualifier: &str, name: &str) -> Expr {
    Expr::Column(Column::new(Some(qualifier), name))
}

/// PostgreSQL's type oid and `atttypmod` for a declared type.
fn pg_type(ty: SqlType) -> (i32, i32) {
    // A type modifier carries a 4-byte header in PostgreSQL (VARHDRSZ).
    const VARHDRSZ: i32 = 4;
    match ty {
        SqlType::Bool => (16, -1),
        SqlType::Int2 => (21, -1),
        SqlType::Int4 => (23, -1),
        SqlType::Int8 => (20, -1),
        SqlType::Float4 => (700, -1),
        SqlType::Float8 => (701, -1),
        SqlType::Numeric { precision, scale } => (
            1700,
            ((i32::from(precision) << 16) | i32::from(scale as u8)) + VARHDRSZ,
        ),
        SqlType::Text => (25, -1),
        SqlType::Varchar(None) => (1043, -1),
        SqlType::Varchar(Some(n)) => (1043, n as i32 + VARHDRSZ),
        SqlType::Char(n) => (1042, n as i32 + VARHDRSZ),
        SqlType::Bytea => (17, -1),
        SqlType::Date => (1082, -1),
        SqlType::Time => (1083, -1),
        SqlType::Timestamp => (1114, -1),
        SqlType::TimestampTz => (1184, -1),
        SqlType::Interval => (1186, -1),
        SqlType::Uuid => (2950, -1),
        SqlType::Json => (114, -1),
        SqlType::Jsonb => (3802, -1),
    }
}

#[async_trait]
impl SchemaProvider for PgCatalogOverlay {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        match name {
            "pg_attribute" => return self.attribute_view().await,
            "pg_attrdef" => return self.attrdef_view().await,
            _ => {}
        }
        self.inner.table(name).await
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_modifiers_match_postgres() {
        // PostgreSQL: numeric(12,2) has atttypmod 786438, varchar(20) 24.
        assert_eq!(
            pg_type(SqlType::Numeric {
                precision: 12,
                scale: 2
            }),
            (1700, 786_438)
        );
        assert_eq!(pg_type(SqlType::Varchar(Some(20))), (1043, 24));
    }
}
