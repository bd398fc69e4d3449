//! Schemas written in configs as `"device string, ts timestamp, temperature double"`.

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use std::sync::Arc;

/// The types a config may name, with the Arrow type each maps to.
pub const TYPE_NAMES: &[(&str, DataType)] = &[
    ("string", DataType::Utf8),
    ("text", DataType::Utf8),
    ("varchar", DataType::Utf8),
    ("bool", DataType::Boolean),
    ("boolean", DataType::Boolean),
    ("int", DataType::Int32),
    ("int32", DataType::Int32),
    ("bigint", DataType::Int64),
    ("long", DataType::Int64),
    ("int64", DataType::Int64),
    ("float", DataType::Float32),
    ("float32", DataType::Float32),
    ("double", DataType::Float64),
    ("float64", DataType::Float64),
    ("date", DataType::Date32),
    (
        "timestamp",
        DataType::Timestamp(TimeUnit::Millisecond, None),
    ),
];

fn type_from_name(name: &str) -> Option<DataType> {
    let lower = name.to_ascii_lowercase();
    TYPE_NAMES
        .iter()
        .find(|(n, _)| *n == lower)
        .map(|(_, t)| t.clone())
}

/// Parse `"a string, b int64"`. The error says which column and which types are known.
pub fn parse_schema(s: &str) -> Result<SchemaRef, String> {
    let mut fields = Vec::new();
    for (i, col) in s.split(',').enumerate() {
        let col = col.trim();
        if col.is_empty() {
            continue;
        }
        let mut parts = col.split_whitespace();
        let (Some(name), Some(ty), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "column {} (`{col}`) should be written as `name type`, e.g. `temperature double`",
                i + 1
            ));
        };
        let Some(dt) = type_from_name(ty) else {
            let known: Vec<&str> = TYPE_NAMES.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "column `{name}` has unknown type `{ty}` (known: {})",
                known.join(", ")
            ));
        };
        if fields.iter().any(|f: &Field| f.name() == name) {
            return Err(format!("column `{name}` is declared twice"));
        }
        fields.push(Field::new(name, dt, true));
    }
    if fields.is_empty() {
        return Err("at least one column, e.g. `device string, temperature double`".into());
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// The schema of a text source: one `line` column.
pub fn line_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, false)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_columns_in_order() {
        let s = parse_schema("device string, ts timestamp, temperature double").unwrap();
        let names: Vec<_> = s.fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["device", "ts", "temperature"]);
        assert_eq!(s.field(2).data_type(), &DataType::Float64);
    }

    #[test]
    fn rejects_unknown_type() {
        let e = parse_schema("a strng").unwrap_err();
        assert!(e.contains("unknown type `strng`"), "{e}");
    }
}
