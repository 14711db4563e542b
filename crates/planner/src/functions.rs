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
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{
    create_udf, Cast, ColumnarValue, Expr, ExprSchemable, LogicalPlan, Operator,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::prelude::SessionContext;

use crate::settings::SERVER_VERSION;
use crate::types::decode_bytea;

pub fn register(ctx: &SessionContext) {
    ctx.add_analyzer_rule(Arc::new(ByteaInput {
        decode: Arc::new(bytea_in()),
    }));
    ctx.add_analyzer_rule(Arc::new(CheckedIntegerArithmetic::default()));
    let version = format!(
        "PostgreSQL {SERVER_VERSION} on {}-linux",
        std::env::consts::ARCH
    );
    ctx.register_udf(ScalarUDF::new_from_impl(PgTypeof::default()));
    // datafusion-pg-catalog's answers '' for everything; the catalog views
    // that feed it (crate::pg_overlay) hold expressions as SQL text already.
    ctx.register_udf(ScalarUDF::new_from_impl(PgGetExpr::default()));
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
    // Every replica serves reads and takes writes (a follower hands them to
    // the leader), so none is a standby in recovery; pg_dump asks.
    ctx.register_udf(create_udf(
        "pg_is_in_recovery",
        Vec::new(),
        DataType::Boolean,
        Volatility::Stable,
        Arc::new(|_args: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(false))))
        }),
    ));
}

/// `pg_typeof(any) -> text`: the PostgreSQL name of the argument's type, as
/// `regtype` prints it. The type is the one DataFusion computes, so an
/// integer literal is `bigint` here where PostgreSQL says `integer`
/// (docs/architecture.md, known gaps).
#[derive(Debug, PartialEq, Eq, Hash)]
struct PgTypeof {
    signature: Signature,
}

impl Default for PgTypeof {
    fn default() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for PgTypeof {
    fn name(&self) -> &str {
        "pg_typeof"
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
        let name = args
            .arg_fields
            .first()
            .map_or_else(|| "unknown".to_string(), |f| pg_type_name(f.data_type()));
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(name))))
    }
}

/// `pg_get_expr(expr_text, relation [, pretty]) -> text`: the expression
/// text itself (see `crate::pg_overlay`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct PgGetExpr {
    signature: Signature,
}

impl Default for PgGetExpr {
    fn default() -> Self {
        Self {
            signature: Signature::one_of(
                vec![
                    datafusion::logical_expr::TypeSignature::Any(2),
                    datafusion::logical_expr::TypeSignature::Any(3),
                ],
                Volatility::Stable,
            ),
        }
    }
}

impl ScalarUDFImpl for PgGetExpr {
    fn name(&self) -> &str {
        "pg_get_expr"
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
        args.args[0].cast_to(&DataType::Utf8, None)
    }
}

/// PostgreSQL's name for the type a value of `data_type` has on the wire.
pub(crate) fn pg_type_name(data_type: &DataType) -> String {
    let name = match data_type {
        DataType::Null => "unknown",
        DataType::Boolean => "boolean",
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint",
        DataType::Int32 | DataType::UInt16 => "integer",
        DataType::Int64 | DataType::UInt32 => "bigint",
        DataType::UInt64
        | DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => "numeric",
        DataType::Float16 | DataType::Float32 => "real",
        DataType::Float64 => "double precision",
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text",
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => "bytea",
        DataType::Date32 | DataType::Date64 => "date",
        DataType::Time32(_) | DataType::Time64(_) => "time without time zone",
        DataType::Timestamp(_, None) => "timestamp without time zone",
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone",
        DataType::Interval(_) | DataType::Duration(_) => "interval",
        DataType::List(field) | DataType::LargeList(field) | DataType::FixedSizeList(field, _) => {
            return format!("{}[]", pg_type_name(field.data_type()));
        }
        DataType::Dictionary(_, value) => return pg_type_name(value),
        _ => "unknown",
    };
    name.to_string()
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

/// Rewrites every expression of `plan` and its subqueries bottom-up with
/// `rewrite`, which sees the schema of the node's inputs (empty for a node
/// without inputs). Rewritten expressions keep their output names, so every
/// node's schema stays as it was.
fn rewrite_expressions(
    plan: LogicalPlan,
    rewrite: impl Fn(Expr, &DFSchema) -> datafusion::common::Result<Transformed<Expr>>,
) -> datafusion::common::Result<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| {
        let input_schema = match node.inputs().as_slice() {
            [] => Arc::new(DFSchema::empty()),
            [input] => Arc::clone(input.schema()),
            inputs => Arc::new(merge_schema(inputs)),
        };
        let names = NamePreserver::new(&node);
        node.map_expressions(|expr| {
            let saved = names.save(&expr);
            let rewritten = expr.transform_up(|e| rewrite(e, &input_schema))?;
            Ok(rewritten.update_data(|e| saved.restore(e)))
        })
    })
    .map(|t| t.data)
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
        rewrite_expressions(plan, |e, input_schema| match e {
            Expr::Cast(cast) if is_text_to_bytea(&cast, Some(input_schema)) => {
                Ok(Transformed::yes(self.decode.call(vec![*cast.expr])))
            }
            other => Ok(Transformed::no(other)),
        })
    }

    fn name(&self) -> &str {
        "sluice_bytea_input"
    }
}

/// Integer `+`, `-` and `*` that fail on overflow with 22003, as
/// PostgreSQL's do: DataFusion's wrap around (`2147483647 + 1` would be
/// `-2147483648`), both when a plan runs and when the optimizer folds
/// constants, which is why the rewrite is an analyzer rule ahead of both.
#[derive(Debug)]
struct CheckedIntegerArithmetic {
    add: Arc<ScalarUDF>,
    sub: Arc<ScalarUDF>,
    mul: Arc<ScalarUDF>,
}

impl Default for CheckedIntegerArithmetic {
    fn default() -> Self {
        let udf = |op| Arc::new(ScalarUDF::new_from_impl(CheckedOp::new(op)));
        Self {
            add: udf(Operator::Plus),
            sub: udf(Operator::Minus),
            mul: udf(Operator::Multiply),
        }
    }
}

impl AnalyzerRule for CheckedIntegerArithmetic {
    fn analyze(
        &self,
        plan: LogicalPlan,
        _config: &ConfigOptions,
    ) -> datafusion::common::Result<LogicalPlan> {
        // Runs after type coercion, so both operands already have one type.
        rewrite_expressions(plan, |e, input_schema| match e {
            Expr::BinaryExpr(binary) => {
                let udf = match binary.op {
                    Operator::Plus => &self.add,
                    Operator::Minus => &self.sub,
                    Operator::Multiply => &self.mul,
                    _ => return Ok(Transformed::no(Expr::BinaryExpr(binary))),
                };
                let integer = |e: &Expr| e.get_type(input_schema).is_ok_and(|t| t.is_integer());
                if integer(&binary.left) && integer(&binary.right) {
                    Ok(Transformed::yes(
                        udf.call(vec![*binary.left, *binary.right]),
                    ))
                } else {
                    Ok(Transformed::no(Expr::BinaryExpr(binary)))
                }
            }
            other => Ok(Transformed::no(other)),
        })
    }

    fn name(&self) -> &str {
        "sluice_checked_integer_arithmetic"
    }
}

/// One checked integer operator as a function of two values of one type.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CheckedOp {
    op: Operator,
    name: &'static str,
    signature: Signature,
}

impl CheckedOp {
    fn new(op: Operator) -> Self {
        let name = match op {
            Operator::Plus => "int_add",
            Operator::Minus => "int_sub",
            _ => "int_mul",
        };
        Self {
            op,
            name,
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for CheckedOp {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(arg_types[0].clone())
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        use datafusion::arrow::compute::kernels::numeric;
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let (left, right) = (&arrays[0], &arrays[1]);
        let result = match self.op {
            Operator::Plus => numeric::add(left, right),
            Operator::Minus => numeric::sub(left, right),
            _ => numeric::mul(left, right),
        };
        let result = result.map_err(|e| match e {
            datafusion::arrow::error::ArrowError::ArithmeticOverflow(_) => {
                let type_name = match left.data_type() {
                    DataType::Int8 | DataType::Int16 => "smallint",
                    DataType::Int32 => "integer",
                    _ => "bigint",
                };
                DataFusionError::External(Box::new(crate::error::Error::new(
                    crate::error::sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
                    format!("{type_name} out of range"),
                )))
            }
            other => DataFusionError::ArrowError(Box::new(other), None),
        })?;
        Ok(if scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&result, 0)?)
        } else {
            ColumnarValue::Array(result)
        })
    }
}
