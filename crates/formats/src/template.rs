//! Per-row text templates for sinks that name each message from its row: `alerts/{site}` (an MQTT
//! topic), `{user_id}` (a Kinesis partition key). `{column}` is replaced by the row's value as
//! text; a null value by nothing.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use sluice_core::ConfigError;

/// A template cut into literal text and column names.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Column(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub parts: Vec<Part>,
}

impl Template {
    /// Parse the template set at key path `key` (for errors); `example` is shown when it is empty.
    pub fn parse(key: &str, t: &str, example: &str) -> Result<Template, ConfigError> {
        let mut parts = Vec::new();
        let mut rest = t;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(ConfigError::new(
                    key,
                    "`{column}` placeholders closed with `}`",
                    format!("\"{t}\""),
                ));
            };
            let name = rest[open + 1..open + close].trim();
            if name.is_empty() {
                return Err(ConfigError::new(
                    key,
                    "a column name between `{` and `}`",
                    format!("\"{t}\""),
                ));
            }
            parts.push(Part::Column(name.to_string()));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if parts.is_empty() {
            return Err(ConfigError::new(
                key,
                format!("a template such as \"{example}\""),
                "\"\"",
            ));
        }
        Ok(Template { parts })
    }

    /// The template filled in for every row of `batch`; Err names a column the rows lack.
    pub fn render(&self, batch: &RecordBatch) -> Result<Vec<String>, String> {
        let schema = batch.schema();
        let mut columns: Vec<Option<ArrayRef>> = Vec::with_capacity(self.parts.len());
        for p in &self.parts {
            columns.push(match p {
                Part::Text(_) => None,
                Part::Column(c) => {
                    let i = schema.index_of(c).map_err(|_| {
                        format!(
                            "the template names column `{c}`, which the job's output does not have"
                        )
                    })?;
                    Some(
                        arrow::compute::cast(batch.column(i), &DataType::Utf8)
                            .map_err(|e| format!("column `{c}`: {e}"))?,
                    )
                }
            });
        }
        Ok((0..batch.num_rows())
            .map(|r| {
                let mut s = String::new();
                for (p, col) in self.parts.iter().zip(&columns) {
                    match (p, col) {
                        (Part::Text(t), _) => s.push_str(t),
                        (Part::Column(_), Some(c)) => {
                            let a = c.as_string::<i32>();
                            if a.is_valid(r) {
                                s.push_str(a.value(r));
                            }
                        }
                        (Part::Column(_), None) => {}
                    }
                }
                s
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn templates_split_into_text_and_columns_and_fill_in_each_row() {
        let t = Template::parse("s.topic", "alerts/{site}/{ device }", "a/{b}").unwrap();
        assert_eq!(
            t.parts,
            vec![
                Part::Text("alerts/".into()),
                Part::Column("site".into()),
                Part::Text("/".into()),
                Part::Column("device".into()),
            ]
        );
        let e = Template::parse("sinks.a.topic", "alerts/{site", "a/{b}").unwrap_err();
        assert!(e.to_string().contains("sinks.a.topic"), "{e}");
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("site", DataType::Utf8, true),
                Field::new("device", DataType::Int64, false),
            ])),
            vec![
                Arc::new(StringArray::from(vec![Some("north"), None])),
                Arc::new(Int64Array::from(vec![7, 8])),
            ],
        )
        .unwrap();
        assert_eq!(
            t.render(&batch).unwrap(),
            vec!["alerts/north/7", "alerts//8"]
        );
        let missing = Template::parse("k", "{zone}", "{a}").unwrap();
        assert!(missing.render(&batch).unwrap_err().contains("`zone`"));
    }
}
