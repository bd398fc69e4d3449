//! Hive-style output layout: the rows of a batch split by the values of some columns
//! (`site=north/`) and by time (`dt=2026-11-22/hour=13/`, from an event-time column or the batch
//! time), for the sinks that write folders of files.

use arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use std::collections::BTreeMap;

/// How a sink's output is split into folders.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// Columns whose values make `col=value/` folders, in this order.
    pub columns: Vec<String>,
    /// A strftime template (`dt=%Y-%m-%d/hour=%H`) applied in UTC, before the column folders.
    pub time: Option<String>,
    /// The timestamp column the time template reads; the batch time when absent.
    pub time_column: Option<String>,
}

/// The longest partition value kept as a folder name, in bytes (file systems allow 255 per name,
/// and the folder is `<column>=<value>`).
pub const MAX_VALUE_BYTES: usize = 200;

/// Rows grouped by folder, and the rows that cannot be placed.
#[derive(Debug, Default)]
pub struct Split {
    /// The rows of each folder (`""` for a flat layout), in folder order.
    pub parts: BTreeMap<String, Vec<RecordBatch>>,
    /// Rows whose partition value cannot be a folder name, with why: for the dead-letter output.
    pub rejected: Vec<(String, RecordBatch)>,
}

impl Split {
    pub fn rejected_rows(&self) -> usize {
        self.rejected.iter().map(|(_, b)| b.num_rows()).sum()
    }

    /// The rejected rows as dead letters from `origin`, each with its reason.
    pub fn dead_letters(&self, origin: &str) -> Vec<sluice_core::DeadLetter> {
        self.rejected
            .iter()
            .flat_map(|(why, rows)| crate::dead_rows(origin, why, std::slice::from_ref(rows)))
            .collect()
    }
}

/// Why a partition value cannot be a folder name, if it cannot.
fn bad_value(column: &str, value: &str) -> Option<String> {
    if value.len() > MAX_VALUE_BYTES {
        Some(format!(
            "partition value of `{column}` is {} bytes, over the {MAX_VALUE_BYTES} a folder name allows",
            value.len()
        ))
    } else if value.chars().any(|c| c.is_control()) {
        Some(format!(
            "partition value of `{column}` holds a control character (NUL, newline, …), which no folder name may"
        ))
    } else if value == "." || value == ".." {
        Some(format!("partition value of `{column}` is `{value}`"))
    } else {
        None
    }
}

impl Layout {
    pub fn is_flat(&self) -> bool {
        self.columns.is_empty() && self.time.is_none()
    }

    /// The rows of `batches` grouped by their folder (`""` for a flat layout), in folder order.
    pub fn split(
        &self,
        schema: &SchemaRef,
        batches: &[RecordBatch],
        batch_time_ms: i64,
    ) -> Result<Split, ArrowError> {
        let mut split = Split::default();
        if self.is_flat() {
            split.parts.insert(String::new(), batches.to_vec());
            return Ok(split);
        }
        let index = |c: &str| {
            schema.index_of(c).map_err(|_| {
                ArrowError::SchemaError(format!(
                    "partition column `{c}` is not in the job's output"
                ))
            })
        };
        let columns: Vec<usize> = self
            .columns
            .iter()
            .map(|c| index(c))
            .collect::<Result<_, _>>()?;
        let time_column = self.time_column.as_deref().map(index).transpose()?;
        // With the batch time every row shares one time folder.
        let batch_folder = self.time.as_ref().map(|t| format_time(t, batch_time_ms));
        for b in batches {
            let values = columns
                .iter()
                .map(|&i| cast(b.column(i), &DataType::Utf8))
                .collect::<Result<Vec<_>, _>>()?;
            let times = time_column.map(|i| millis(b.column(i))).transpose()?;
            let mut rows: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            let mut bad: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            'row: for r in 0..b.num_rows() {
                let mut key = match (&self.time, &times) {
                    (Some(t), Some(ms)) => match ms.is_valid(r) {
                        true => format_time(t, ms.value(r)),
                        false => "__null__".to_string(),
                    },
                    _ => batch_folder.clone().unwrap_or_default(),
                };
                for (&i, v) in columns.iter().zip(&values) {
                    let value = if v.is_null(r) {
                        "__null__".to_string()
                    } else {
                        let raw = v.as_string::<i32>().value(r);
                        if let Some(why) = bad_value(schema.field(i).name(), raw) {
                            bad.entry(why).or_default().push(r as u32);
                            continue 'row;
                        }
                        raw.replace('/', "%2F")
                    };
                    if !key.is_empty() {
                        key.push('/');
                    }
                    key.push_str(&format!("{}={value}", schema.field(i).name()));
                }
                rows.entry(key).or_default().push(r as u32);
            }
            for (k, r) in rows {
                split
                    .parts
                    .entry(k)
                    .or_default()
                    .push(take_record_batch(b, &UInt32Array::from(r))?);
            }
            for (why, r) in bad {
                split
                    .rejected
                    .push((why, take_record_batch(b, &UInt32Array::from(r))?));
            }
        }
        Ok(split)
    }
}

fn format_time(template: &str, ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format(template)
        .to_string()
}

/// A timestamp (any unit, any zone) or integer (milliseconds) column as milliseconds since the epoch.
fn millis(column: &dyn Array) -> Result<arrow::array::Int64Array, ArrowError> {
    let ms = match column.data_type() {
        DataType::Timestamp(_, tz) => cast(
            column,
            &DataType::Timestamp(TimeUnit::Millisecond, tz.clone()),
        )?,
        DataType::Int64 | DataType::Int32 | DataType::UInt32 | DataType::UInt64 => {
            cast(column, &DataType::Int64)?
        }
        other => {
            return Err(ArrowError::SchemaError(format!(
                "the time partition column is {other}; expected a timestamp or milliseconds as an integer"
            )))
        }
    };
    let ms = cast(&ms, &DataType::Int64)?;
    Ok(ms.as_primitive::<arrow::datatypes::Int64Type>().clone())
}

/// Whether a strftime template is valid, for config checks.
pub fn valid_time_template(template: &str) -> bool {
    use chrono::format::{Item, StrftimeItems};
    StrftimeItems::new(template).all(|i| !matches!(i, Item::Error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn rows_split_by_event_hour_then_column() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("site", DataType::Utf8, true),
            Field::new("v", DataType::Int64, false),
        ]));
        let hour = 3_600_000;
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(TimestampMillisecondArray::from(vec![
                    Some(0),
                    Some(hour + 5),
                    None,
                    Some(10),
                ])),
                Arc::new(StringArray::from(vec![
                    Some("a/b"),
                    Some("a/b"),
                    Some("c"),
                    None,
                ])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            ],
        )
        .unwrap();
        let layout = Layout {
            columns: vec!["site".into()],
            time: Some("dt=%Y-%m-%d/hour=%H".into()),
            time_column: Some("ts".into()),
        };
        let parts = layout.split(&schema, &[b], 0).unwrap().parts;
        let keys: Vec<_> = parts.keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "__null__/site=c",
                "dt=1970-01-01/hour=00/site=__null__",
                "dt=1970-01-01/hour=00/site=a%2Fb",
                "dt=1970-01-01/hour=01/site=a%2Fb",
            ]
        );
        let v = |k: &str| {
            parts[k][0]
                .column(2)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .to_vec()
        };
        assert_eq!(v("dt=1970-01-01/hour=00/site=a%2Fb"), [1]);
        assert_eq!(v("dt=1970-01-01/hour=00/site=__null__"), [4]);
        assert!(valid_time_template("dt=%Y"));
        assert!(!valid_time_template("dt=%Q"));
    }

    #[test]
    fn values_that_cannot_be_folder_names_are_rejected_rows() {
        let schema = Arc::new(Schema::new(vec![Field::new("site", DataType::Utf8, true)]));
        let long = "x".repeat(MAX_VALUE_BYTES + 1);
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec!["ok", &long, "a\0b", ".."]))],
        )
        .unwrap();
        let layout = Layout {
            columns: vec!["site".into()],
            ..Default::default()
        };
        let split = layout.split(&schema, &[b], 0).unwrap();
        assert_eq!(split.parts.keys().collect::<Vec<_>>(), ["site=ok"]);
        assert_eq!(split.rejected_rows(), 3);
        assert!(split
            .rejected
            .iter()
            .any(|(why, _)| why.contains("201 bytes")));
    }
}
