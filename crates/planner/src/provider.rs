//! The catalog's DataFusion face: [`SessionCatalog`] resolves DataFusion's
//! table references to Sluice tables ([`SluiceTable`]), topics, and the
//! per-session system schemas (pg_catalog, information_schema, sluice_catalog).
//!
//! Definitions live in [`crate::catalog`]; this module only builds providers
//! over them, so the catalog itself depends on no table or view code.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::common::DataFusionError;

use crate::catalog::{CatalogState, DefaultsFn, SharedCatalog, SYSTEM_SCHEMAS};
use crate::table::SluiceTable;

/// A session's DataFusion catalog: the shared Sluice tables plus the
/// per-session system schemas (pg_catalog, information_schema).
pub struct SessionCatalog {
    shared: Arc<SharedCatalog>,
    defaults: DefaultsFn,
    system_schemas: RwLock<HashMap<String, Arc<dyn SchemaProvider>>>,
    /// While DML is planned: the target table, and whether its scans expose the key column.
    dml_target: Mutex<Option<DmlTarget>>,
    /// The open transaction block's catalog, once the block has run DDL.
    block: RwLock<Option<Arc<CatalogState>>>,
}

impl fmt::Debug for SessionCatalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCatalog").finish_non_exhaustive()
    }
}

impl SessionCatalog {
    pub fn new(shared: Arc<SharedCatalog>, defaults: DefaultsFn) -> Self {
        Self {
            shared,
            defaults,
            system_schemas: RwLock::default(),
            dml_target: Mutex::new(None),
            block: RwLock::default(),
        }
    }

    /// The catalog statements of this session see: the open block's, if its
    /// DDL changed the catalog, else the one this node last loaded.
    pub(crate) fn current(&self) -> Arc<CatalogState> {
        let block = self.block.read().unwrap_or_else(|e| e.into_inner()).clone();
        block.unwrap_or_else(|| self.shared.current())
    }

    /// Follows the open block's catalog (`None` outside a block or before its DDL).
    pub(crate) fn set_block_catalog(&self, catalog: Option<Arc<CatalogState>>) {
        *self.block.write().unwrap_or_else(|e| e.into_inner()) = catalog;
    }

    /// Plans table `id` as the target of a DML statement until the guard
    /// drops: all its columns read as nullable (NOT NULL is checked by the
    /// DML executor, which names the column as PostgreSQL does), and with
    /// `with_key` its scans carry [`KEY_COLUMN`].
    pub fn dml_target(self: &Arc<Self>, id: u64, with_key: bool) -> DmlTargetGuard {
        *self.dml_target.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(DmlTarget { id, with_key });
        DmlTargetGuard {
            catalog: self.clone(),
        }
    }

    fn current_dml_target(&self) -> Option<DmlTarget> {
        *self.dml_target.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, Clone, Copy)]
struct DmlTarget {
    id: u64,
    with_key: bool,
}

pub struct DmlTargetGuard {
    catalog: Arc<SessionCatalog>,
}

impl Drop for DmlTargetGuard {
    fn drop(&mut self) {
        *self
            .catalog
            .dml_target
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl SessionCatalog {
    /// Puts in `other`'s system schemas (built once per node and shared).
    pub(crate) fn share_system_schemas(&self, other: &SessionCatalog) {
        let theirs = other
            .system_schemas
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.system_schemas
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(theirs);
    }
}

impl CatalogProvider for SessionCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.current().schemas.keys().cloned().collect();
        names.extend(
            self.system_schemas
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned(),
        );
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        let system = self
            .system_schemas
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned();
        let state = self.current();
        match system {
            // sluice_catalog: its built-in tables, then the computed views.
            Some(views) if name == crate::system_views::SCHEMA_NAME => {
                Some(Arc::new(SluiceSchema {
                    name: name.to_string(),
                    state,
                    defaults: self.defaults.clone(),
                    dml_target: self.current_dml_target(),
                    fallback: Some(views),
                }))
            }
            Some(system) => Some(system),
            None => {
                state.schemas.get(name)?;
                Some(Arc::new(SluiceSchema {
                    name: name.to_string(),
                    state,
                    defaults: self.defaults.clone(),
                    dml_target: self.current_dml_target(),
                    fallback: None,
                }))
            }
        }
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> datafusion::common::Result<Option<Arc<dyn SchemaProvider>>> {
        // Only system schemas are registered through DataFusion; user schemas
        // are created with CREATE SCHEMA through Raft.
        if !SYSTEM_SCHEMAS.contains(&name) {
            return Err(DataFusionError::Plan(format!(
                "schema {name} must be created with CREATE SCHEMA"
            )));
        }
        let schema: Arc<dyn SchemaProvider> = if name == "pg_catalog" {
            Arc::new(crate::pg_overlay::PgCatalogOverlay::new(
                schema,
                self.shared.clone(),
            ))
        } else {
            schema
        };
        Ok(self
            .system_schemas
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), schema))
    }
}

/// One Sluice schema as DataFusion sees it, bound to one catalog state.
#[derive(Clone)]
struct SluiceSchema {
    name: String,
    state: Arc<CatalogState>,
    defaults: DefaultsFn,
    dml_target: Option<DmlTarget>,
    /// Tables to look in after this schema's own (sluice_catalog's views).
    fallback: Option<Arc<dyn SchemaProvider>>,
}

impl fmt::Debug for SluiceSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SluiceSchema")
            .field("name", &self.name)
            .finish()
    }
}

#[async_trait]
impl SchemaProvider for SluiceSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .state
            .tables_in(&self.name)
            .map(|t| t.name.clone())
            .collect();
        if let Some(fallback) = &self.fallback {
            names.extend(fallback.table_names());
        }
        names
    }

    async fn table(
        &self,
        name: &str,
    ) -> datafusion::common::Result<Option<Arc<dyn TableProvider>>> {
        let Some(def) = self.state.table(&self.name, name) else {
            return match &self.fallback {
                Some(fallback) => fallback.table(name).await,
                None => Ok(None),
            };
        };
        let target = self.dml_target.filter(|target| target.id == def.id);
        if def.is_topic() {
            return Ok(Some(Arc::new(crate::topic::TopicTable::new(
                def.clone(),
                target.is_some(),
            ))));
        }
        let defaults = (self.defaults)(def);
        let table = match target {
            Some(target) => SluiceTable::dml_target(def.clone(), defaults, target.with_key),
            None => SluiceTable::new(def.clone(), defaults),
        };
        Ok(Some(Arc::new(table)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.state.table(&self.name, name).is_some()
            || self.fallback.as_ref().is_some_and(|f| f.table_exist(name))
    }
}
