//! `current_setting(name [, missing_ok])` and `set_config(name, value,
//! is_local)`: the session's settings from inside a query, as pg_dump
//! (`set_config('search_path', '', false)`), connection pools and
//! row-level-security style applications (`set_config('app.user', …, true)`)
//! use them. Both are volatile, so a kept plan reads the value of each run.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};

use super::shared::SessionSettings;
use super::values::{canonical_setting, unknown_setting};
use crate::error::{sqlstate, Error};

pub fn register(ctx: &datafusion::prelude::SessionContext) {
    for function in [Function::CurrentSetting, Function::SetConfig] {
        ctx.register_udf(ScalarUDF::new_from_impl(SettingFunction::new(function)));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Function {
    CurrentSetting,
    SetConfig,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SettingFunction {
    function: Function,
    signature: Signature,
}

impl SettingFunction {
    fn new(function: Function) -> Self {
        let signature = match function {
            Function::CurrentSetting => Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![DataType::Utf8]),
                    TypeSignature::Exact(vec![DataType::Utf8, DataType::Boolean]),
                ],
                Volatility::Volatile,
            ),
            Function::SetConfig => Signature::exact(
                vec![DataType::Utf8, DataType::Utf8, DataType::Boolean],
                Volatility::Volatile,
            ),
        };
        Self {
            function,
            signature,
        }
    }
}

fn external(error: Error) -> DataFusionError {
    DataFusionError::External(Box::new(error))
}

fn strings(value: &ColumnarValue, rows: usize) -> datafusion::common::Result<StringArray> {
    let array = cast(&value.to_array(rows)?, &DataType::Utf8)?;
    Ok(array
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("cast to Utf8 gives a StringArray")
        .clone())
}

fn booleans(
    value: Option<&ColumnarValue>,
    rows: usize,
) -> datafusion::common::Result<BooleanArray> {
    match value {
        Some(value) => Ok(value
            .to_array(rows)?
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| DataFusionError::Internal("boolean argument expected".into()))?
            .clone()),
        None => Ok(BooleanArray::from(vec![false; rows])),
    }
}

impl ScalarUDFImpl for SettingFunction {
    fn name(&self) -> &str {
        match self.function {
            Function::CurrentSetting => "current_setting",
            Function::SetConfig => "set_config",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let settings = SessionSettings::of(&args.config_options).map_err(external)?;
        let rows = args.number_rows;
        let names = strings(&args.args[0], rows)?;
        let mut out: Vec<Option<String>> = Vec::with_capacity(rows);
        match self.function {
            Function::CurrentSetting => {
                let missing_ok = booleans(args.args.get(1), rows)?;
                for row in 0..rows {
                    if names.is_null(row) {
                        out.push(None);
                        continue;
                    }
                    let missing_ok = !missing_ok.is_null(row) && missing_ok.value(row);
                    out.push(current_setting(settings, names.value(row), missing_ok)?);
                }
            }
            Function::SetConfig => {
                let values = strings(&args.args[1], rows)?;
                let local = booleans(args.args.get(2), rows)?;
                for row in 0..rows {
                    if names.is_null(row) {
                        return Err(external(Error::new(
                            sqlstate::NULL_VALUE_NOT_ALLOWED,
                            "SET requires parameter name",
                        )));
                    }
                    let value = (!values.is_null(row)).then(|| values.value(row).to_string());
                    let local = !local.is_null(row) && local.value(row);
                    out.push(Some(set_config(settings, names.value(row), value, local)?));
                }
            }
        }
        Ok(ColumnarValue::Array(
            Arc::new(StringArray::from(out)) as ArrayRef
        ))
    }
}

fn current_setting(
    settings: &SessionSettings,
    name: &str,
    missing_ok: bool,
) -> datafusion::common::Result<Option<String>> {
    let value = canonical_setting(name).and_then(|name| settings.get(&name));
    match value {
        Some(value) => Ok(Some(value)),
        None if missing_ok => Ok(None),
        None => Err(external(unknown_setting(name))),
    }
}

fn set_config(
    settings: &SessionSettings,
    name: &str,
    value: Option<String>,
    local: bool,
) -> datafusion::common::Result<String> {
    let canonical = canonical_setting(name).ok_or_else(|| external(unknown_setting(name)))?;
    // The function runs inside a query, after the transaction's first
    // snapshot: PostgreSQL refuses a change of its modes from then on.
    match canonical.as_str() {
        "transaction_isolation" => {
            return Err(external(Error::new(
                sqlstate::ACTIVE_SQL_TRANSACTION,
                "SET TRANSACTION ISOLATION LEVEL must be called before any query",
            )))
        }
        // PostgreSQL lets a query turn read-only on; the block's mode is not
        // within a function's reach here, so it says how instead.
        "transaction_read_only" => {
            return Err(external(Error::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "set_config cannot change transaction_read_only; use SET TRANSACTION READ ONLY",
            )))
        }
        _ => {}
    }
    settings.set(&canonical, value, local).map_err(external)
}

#[cfg(test)]
mod tests {
    use crate::testing::{database, exec, rows, sqlstate_of};

    fn one(value: &str) -> Vec<Vec<String>> {
        vec![vec![value.to_string()]]
    }

    #[tokio::test]
    async fn set_config_and_current_setting_are_the_sessions_settings() {
        let test = database().await;
        let mut s = test.session();
        // pg_dump's first statement.
        assert_eq!(
            rows(
                &mut s,
                "SELECT pg_catalog.set_config('search_path', '', false)"
            )
            .await,
            one("")
        );
        assert_eq!(rows(&mut s, "SHOW search_path").await, one(""));
        // What pg_dump asks and sets next.
        assert_eq!(
            rows(&mut s, "SELECT pg_catalog.pg_is_in_recovery()").await,
            one("false")
        );
        exec(
            &mut s,
            "SET synchronized_seqscans TO off; SET row_security = off; \
             SET default_table_access_method = heap",
        )
        .await;
        exec(&mut s, "SET statement_timeout = '2s'").await;
        assert_eq!(
            rows(&mut s, "SELECT current_setting('statement_timeout')").await,
            one("2s")
        );
        assert_eq!(
            rows(
                &mut s,
                "SELECT set_config('app.user', 'ann', true), current_setting('app.user')"
            )
            .await,
            vec![vec!["ann".to_string(), "ann".to_string()]]
        );
        // The statement was the transaction: its local value is gone, the
        // placeholder stays, as in PostgreSQL.
        assert_eq!(
            rows(&mut s, "SELECT current_setting('app.user')").await,
            one("")
        );
        assert_eq!(
            rows(&mut s, "SELECT current_setting('app.other', true) IS NULL").await,
            one("true")
        );
        assert_eq!(
            sqlstate_of(&mut s, "SELECT current_setting('app.nosuch')").await,
            "42704"
        );
        assert_eq!(
            sqlstate_of(
                &mut s,
                "SELECT set_config('statement_timeout', 'soon', false)"
            )
            .await,
            "22023"
        );
        assert_eq!(
            sqlstate_of(&mut s, "SELECT set_config(NULL, 'x', false)").await,
            "22004"
        );
        assert_eq!(
            sqlstate_of(
                &mut s,
                "SELECT set_config('transaction_isolation', 'serializable', false)"
            )
            .await,
            "25001"
        );
        assert_eq!(
            sqlstate_of(&mut s, "SET server_version = '1'").await,
            "55P02"
        );
    }

    #[tokio::test]
    async fn settings_follow_the_transaction_block() {
        let test = database().await;
        let mut s = test.session();
        exec(&mut s, "BEGIN").await;
        exec(&mut s, "SET LOCAL search_path = x").await;
        assert_eq!(rows(&mut s, "SHOW search_path").await, one("x"));
        exec(&mut s, "COMMIT").await;
        assert_eq!(
            rows(&mut s, "SHOW search_path").await,
            one("\"$user\", public")
        );

        exec(&mut s, "BEGIN").await;
        exec(&mut s, "SET search_path = y").await;
        exec(&mut s, "ROLLBACK").await;
        assert_eq!(
            rows(&mut s, "SHOW search_path").await,
            one("\"$user\", public")
        );

        exec(&mut s, "BEGIN").await;
        exec(&mut s, "SET search_path = y").await;
        exec(&mut s, "SAVEPOINT a").await;
        exec(&mut s, "SELECT set_config('search_path', 'z', false)").await;
        exec(&mut s, "ROLLBACK TO a").await;
        assert_eq!(rows(&mut s, "SHOW search_path").await, one("y"));
        exec(&mut s, "COMMIT").await;
        assert_eq!(rows(&mut s, "SHOW search_path").await, one("y"));

        // SET LOCAL outside a block warns and changes nothing.
        exec(&mut s, "SET LOCAL search_path = q").await;
        assert_eq!(rows(&mut s, "SHOW search_path").await, one("y"));
        exec(&mut s, "RESET search_path").await;
        assert_eq!(
            rows(&mut s, "SHOW search_path").await,
            one("\"$user\", public")
        );

        exec(&mut s, "BEGIN ISOLATION LEVEL SERIALIZABLE").await;
        assert_eq!(
            rows(&mut s, "SELECT current_setting('transaction_isolation')").await,
            one("serializable")
        );
        exec(&mut s, "SET application_name = 'app'").await;
        exec(&mut s, "RESET ALL").await;
        assert_eq!(
            rows(&mut s, "SHOW transaction_isolation").await,
            one("serializable")
        );
        assert_eq!(rows(&mut s, "SHOW application_name").await, one(""));
        exec(&mut s, "COMMIT").await;
        assert_eq!(
            rows(&mut s, "SHOW transaction_isolation").await,
            one("read committed")
        );
    }
}
