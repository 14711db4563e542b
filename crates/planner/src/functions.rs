//! SQL functions PostgreSQL clients call that neither DataFusion nor
//! datafusion-pg-catalog provide.

use std::sync::Arc;

use datafusion::arrow::array::{Array, BinaryBuilder, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, DataFusionError, ScalarValue};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{
    create_udf, Cast, ColumnarValue, Expr, ExprSchemable, LogicalPlan, ScalarUDF, Volatility,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::prelude::SessionContext;

use crate::settings::SERVER_VERSION;
use crate::types::decode_bytea;

pub fn register(ctx: &SessionContext) {
    ctx.add_analyzer_rule(Arc::new(ByteaInput {
        decode: Arc::new(bytea_in()),
    }));
    let version = format!(
        "PostgreSQL {SERVER_VERSION} on {}-linux",
        std::env::consts::ARCH
    );
    ctx.register_udf(create_udf(
        "version",
        Vec::new(),
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |_args: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                version.clone(),
            ))))
        }),
    ));
}

/// `pg_bytea_in(text) -> bytea`: PostgreSQL's bytea input function.
fn bytea_in() -> ScalarUDF {
    create_udf(
        "pg_bytea_in",
        vec![DataType::Utf8],
        DataType::Binary,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let text = cast(&arrays[0], &DataType::Utf8)?;
            let text = text
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| DataFusionError::Internal("pg_bytea_in: not text".into()))?;
            let mut out = BinaryBuilder::new();
            for row in 0..text.len() {
                if text.is_null(row) {
                    out.append_null();
                } else {
                    let bytes = decode_bytea(text.value(row))
                        .map_err(|e| DataFusionError::External(Box::new(e)))?;
                    out.append_value(bytes);
                }
            }
            let array: Arc<dyn Array> = Arc::new(out.finish());
            Ok(if matches!(args[0], ColumnarValue::Scalar(_)) {
                ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?)
            } else {
                ColumnarValue::Array(array)
            })
        }),
    )
}

fn is_text_to_bytea(cast: &Cast, input_schema: Option<&DFSchema>) -> bool {
    if cast.field.data_type() != &DataType::Binary {
        return false;
    }
    let source = match cast.expr.as_ref() {
        Expr::Literal(value, _) => Some(value.data_type()),
        inner => input_schema.and_then(|schema| inner.get_type(schema).ok()),
    };
    matches!(
        source,
        Some(DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)
    )
}

/// Text cast to bytea means PostgreSQL's bytea input (`'\\xdead'::bytea`
/// is two bytes), not Arrow's reinterpretation of the UTF-8 bytes: every
/// such cast, including the ones INSERT and UPDATE add for bytea columns,
/// becomes `pg_bytea_in`.
#[derive(Debug)]
struct ByteaInput {
    decode: Arc<ScalarUDF>,
}

impl AnalyzerRule for ByteaInput {
    fn analyze(
        &self,
        plan: LogicalPlan,
        _config: &ConfigOptions,
    ) -> datafusion::common::Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let input_schema = match node.inputs().as_slice() {
                [input] => Some(Arc::clone(input.schema())),
                _ => None,
            };
            // Rewritten expressions keep their output names, so the plan's schema is unchanged.
            let names = NamePreserver::new(&node);
            node.map_expressions(|expr| {
                let saved = names.save(&expr);
                let rewritten = expr.transform_up(|e| match e {
                    Expr::Cast(cast) if is_text_to_bytea(&cast, input_schema.as_deref()) => {
                        Ok(Transformed::yes(self.decode.call(vec![*cast.expr])))
                    }
                    other => Ok(Transformed::no(other)),
                })?;
                Ok(rewritten.update_data(|e| saved.restore(e)))
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "sluice_bytea_input"
    }
}
