//! Functions sluice adds to SQL.
//!
//! - `sample(fraction, seed, col, ...)`: true for a deterministic, seeded `fraction` of rows, chosen by
//!   a hash of the given columns (Spark's `sample`, made reproducible: the same row is kept or dropped
//!   on every run and re-run).

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{exec_err, ScalarValue};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use std::sync::Arc;

pub fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::from(Sample::new()));
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Sample {
    signature: Signature,
}

impl Sample {
    fn new() -> Self {
        Sample {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

fn scalar_f64(v: &ColumnarValue) -> Option<f64> {
    match v {
        ColumnarValue::Scalar(s) => match s {
            ScalarValue::Float64(Some(f)) => Some(*f),
            ScalarValue::Float32(Some(f)) => Some(*f as f64),
            ScalarValue::Int64(Some(i)) => Some(*i as f64),
            ScalarValue::Int32(Some(i)) => Some(*i as f64),
            _ => None,
        },
        _ => None,
    }
}

/// splitmix64: spreads a 64-bit value over the whole range.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl ScalarUDFImpl for Sample {
    fn name(&self) -> &str {
        "sample"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if args.args.len() < 3 {
            return exec_err!("sample(fraction, seed, column, ...) needs a fraction, a seed and at least one column");
        }
        let (Some(fraction), Some(seed)) = (scalar_f64(&args.args[0]), scalar_f64(&args.args[1]))
        else {
            return exec_err!(
                "sample(fraction, seed, ...): fraction and seed must be number literals"
            );
        };
        let n = args.number_rows;
        let cols: Vec<ArrayRef> = args.args[2..]
            .iter()
            .map(|c| c.clone().into_array(n))
            .collect::<Result<_>>()?;
        let fields = cols
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect();
        let conv = RowConverter::new(fields)?;
        let rows = conv.convert_columns(&cols)?;
        let threshold = (fraction.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let mut h = mix(seed as u64);
            for chunk in rows.row(i).as_ref().chunks(8) {
                let mut w = [0u8; 8];
                w[..chunk.len()].copy_from_slice(chunk);
                h = mix(h ^ u64::from_le_bytes(w));
            }
            out.push(h < threshold || fraction >= 1.0);
        }
        let arr = BooleanArray::from(out);
        debug_assert_eq!(arr.len(), n);
        Ok(ColumnarValue::Array(Arc::new(arr)))
    }
}
