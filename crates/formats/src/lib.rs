//! Payload codecs shared by every connector: text, JSON lines, CSV and Avro decoded into Arrow with
//! a schema, and encoded from Arrow for sinks. One place, not one per connector.
//!
//! A record that does not decode is never an error for the batch: it becomes a [`DeadLetter`] and
//! the rest of the block is kept.

use arrow::array::{ArrayRef, RecordBatch, StringBuilder};
use arrow::datatypes::SchemaRef;
use sluice_core::schema::{line_schema, parse_schema};
use sluice_core::{ConfigError, DeadLetter};
use std::sync::Arc;

pub mod avro;
pub mod decoding;
pub mod messages;
pub mod partition;
pub mod payload;
pub mod template;

pub use sluice_core::format::{Accepted, Format, FormatOf};

/// The formats of a text record (a line): `text` (one `line` column), `json` or `csv`.
pub struct LineFormats;
impl Accepted for LineFormats {
    const FORMATS: &'static [Format] = &[Format::Text, Format::Json, Format::Csv];
}

/// Decodes records (one payload each) of a source into record batches.
#[derive(Clone)]
pub struct Decoder {
    format: Format,
    schema: SchemaRef,
    origin: String,
    delimiter: u8,
}

impl Decoder {
    /// `schema` is the config string (`"a string, b int64"`); required for json and csv. `path` is
    /// the key path of the component, for errors.
    pub fn new(
        path: &str,
        origin: &str,
        format: Format,
        schema: Option<&str>,
        delimiter: Option<char>,
    ) -> Result<Self, ConfigError> {
        if !LineFormats::FORMATS.contains(&format) {
            return Err(ConfigError::new(
                format!("{path}.format"),
                "one of `text`, `json`, `csv` (a text record's formats)",
                format!("\"{format}\""),
            ));
        }
        let schema = match (format, schema) {
            (Format::Text, None) => line_schema(),
            (Format::Text, Some(_)) => {
                return Err(ConfigError::new(
                    format!("{path}.schema"),
                    "no schema for format \"text\" (text records have one `line` column)",
                    "a schema",
                )
                .with_hint("set format = \"json\" or \"csv\" to decode records with a schema"))
            }
            (_, None) => {
                return Err(ConfigError::new(
                    format!("{path}.schema"),
                    format!(
                        "a schema for format \"{}\", e.g. \"device string, temperature double\"",
                        format.name()
                    ),
                    "nothing",
                ))
            }
            (_, Some(s)) => parse_schema(s)
                .map_err(|e| ConfigError::new(format!("{path}.schema"), e, format!("\"{s}\"")))?,
        };
        let delimiter = match delimiter {
            None => b',',
            Some(c) if c.is_ascii() => c as u8,
            Some(c) => {
                return Err(ConfigError::new(
                    format!("{path}.delimiter"),
                    "a single ASCII character",
                    format!("'{c}'"),
                ))
            }
        };
        Ok(Decoder {
            format,
            schema,
            origin: origin.to_string(),
            delimiter,
        })
    }

    /// The decoder of the component at key path `path` (`sources.lines`); dead letters name the
    /// component (`lines`) as their origin.
    pub fn for_component(
        path: &str,
        format: Format,
        schema: Option<&str>,
        delimiter: Option<char>,
    ) -> Result<Self, ConfigError> {
        let name = sluice_core::options::component_name(path);
        Self::new(path, name, format, schema, delimiter)
    }

    /// A JSON decoder of only the fields of `schema` named in `keep` (the others in the payload
    /// are skipped, not materialised). None for other formats, or when nothing would be left out.
    pub fn projected(&self, keep: &std::collections::BTreeSet<String>) -> Option<Decoder> {
        if self.format != Format::Json {
            return None;
        }
        let fields: Vec<_> = self
            .schema
            .fields()
            .iter()
            .filter(|f| keep.contains(f.name()) || !f.is_nullable())
            .cloned()
            .collect();
        (fields.len() < self.schema.fields().len()).then(|| Decoder {
            format: self.format,
            schema: Arc::new(arrow::datatypes::Schema::new(fields)),
            origin: self.origin.clone(),
            delimiter: self.delimiter,
        })
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Decode the payloads of one block; undecodable ones are returned as dead letters.
    pub fn decode<S: AsRef<str>>(&self, records: &[S]) -> (RecordBatch, Vec<DeadLetter>) {
        match self.format {
            Format::Text => (self.text(records), Vec::new()),
            _ => match self.decode_all(records) {
                Ok(b) => (b, Vec::new()),
                Err(_) => self.decode_one_by_one(records),
            },
        }
    }

    fn text<S: AsRef<str>>(&self, records: &[S]) -> RecordBatch {
        let bytes: usize = records.iter().map(|r| r.as_ref().len()).sum();
        let mut b = StringBuilder::with_capacity(records.len(), bytes);
        for r in records {
            b.append_value(r.as_ref());
        }
        RecordBatch::try_new(self.schema.clone(), vec![Arc::new(b.finish()) as ArrayRef])
            .expect("line schema")
    }

    fn decode_all<S: AsRef<str>>(&self, records: &[S]) -> Result<RecordBatch, String> {
        if self.format == Format::Json {
            return self.decode_json(records);
        }
        let mut buf = String::with_capacity(records.iter().map(|r| r.as_ref().len() + 1).sum());
        for r in records {
            let r = r.as_ref();
            if r.contains('\n') || r.trim().is_empty() {
                return Err("record spans lines or is empty".into());
            }
            buf.push_str(r);
            buf.push('\n');
        }
        self.decode_csv(&buf, records.len())
    }

    /// JSON: each record fed to one decoder as it is (no copy into one text), and checked to
    /// give exactly one row, so rows stay aligned with records.
    fn decode_json<S: AsRef<str>>(&self, records: &[S]) -> Result<RecordBatch, String> {
        let mut d = arrow::json::ReaderBuilder::new(self.schema.clone())
            .with_batch_size(records.len().max(1))
            .build_decoder()
            .map_err(|e| e.to_string())?;
        for r in records {
            let before = d.len();
            let bytes = r.as_ref().as_bytes();
            let used = d.decode(bytes).map_err(|e| e.to_string())?;
            d.decode(b"\n").map_err(|e| e.to_string())?;
            if used != bytes.len() || d.len() != before + 1 || d.has_partial_record() {
                return Err("a record is not exactly one JSON value".into());
            }
        }
        let batch = d
            .flush()
            .map_err(|e| e.to_string())?
            .unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone()));
        if batch.num_rows() != records.len() {
            return Err(format!(
                "expected {} record(s), decoded {}",
                records.len(),
                batch.num_rows()
            ));
        }
        Ok(batch)
    }

    /// CSV: `expect` rows, one per line of `text`.
    fn decode_csv(&self, text: &str, expect: usize) -> Result<RecordBatch, String> {
        let mut d = arrow::csv::ReaderBuilder::new(self.schema.clone())
            .with_header(false)
            .with_delimiter(self.delimiter)
            .with_batch_size(expect.max(1))
            .build_decoder();
        let n = d.decode(text.as_bytes()).map_err(|e| e.to_string())?;
        if n < text.len() {
            return Err("trailing bytes".into());
        }
        let batch = d.flush().map_err(|e| e.to_string())?;
        let batch = batch.unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone()));
        if batch.num_rows() != expect {
            return Err(format!(
                "expected {expect} record(s), decoded {}",
                batch.num_rows()
            ));
        }
        Ok(batch)
    }

    fn decode_one_by_one<S: AsRef<str>>(&self, records: &[S]) -> (RecordBatch, Vec<DeadLetter>) {
        let mut good = Vec::new();
        let mut dead = Vec::new();
        for r in records {
            let r = r.as_ref();
            let res = if r.trim().is_empty() {
                Err("empty record".to_string())
            } else if self.format == Format::Json {
                self.decode_json(&[r])
            } else if r.contains('\n') {
                Err("record contains a newline".to_string())
            } else {
                self.decode_csv(&format!("{r}\n"), 1)
            };
            match res {
                Ok(b) => good.push(b),
                Err(e) => dead.push(DeadLetter {
                    origin: self.origin.clone(),
                    reason: format!("{}: {e}", self.format.name()),
                    payload: r.to_string(),
                }),
            }
        }
        let batch = arrow::compute::concat_batches(&self.schema, &good).expect("same schema");
        (batch, dead)
    }
}

/// Encodes record batches as JSON lines.
/// Typed rows rejected after decoding (late, an outlier, unwritable), one dead letter per row
/// with the row as a JSON object.
pub fn dead_rows(origin: &str, reason: &str, rows: &[RecordBatch]) -> Vec<sluice_core::DeadLetter> {
    let json = encode_json_lines(rows).unwrap_or_default();
    String::from_utf8_lossy(&json)
        .lines()
        .map(|l| sluice_core::DeadLetter {
            origin: origin.to_string(),
            reason: reason.to_string(),
            payload: l.to_string(),
        })
        .collect()
}

pub fn encode_json_lines(batches: &[RecordBatch]) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    Ok(w.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_json_records_become_dead_letters() {
        let d = Decoder::new(
            "sources.s",
            "s",
            Format::Json,
            Some("a string, n int64"),
            None,
        )
        .unwrap();
        let (b, dead) = d.decode(&[r#"{"a":"x","n":1}"#, "not json", r#"{"a":"y","n":2}"#]);
        assert_eq!(b.num_rows(), 2);
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].payload, "not json");
        assert!(dead[0].reason.starts_with("json:"), "{}", dead[0].reason);
    }

    #[test]
    fn a_json_record_of_two_values_or_none_is_a_dead_letter_and_rows_stay_aligned() {
        let d = Decoder::new("sources.s", "s", Format::Json, Some("n int64"), None).unwrap();
        let (b, dead) = d.decode(&[r#"{"n":1}"#, r#"{"n":2} {"n":3}"#, " ", "{\"n\":\n4}"]);
        let n = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        assert_eq!(n.values(), &[1, 4]);
        let payloads: Vec<&str> = dead.iter().map(|d| d.payload.as_str()).collect();
        assert_eq!(payloads, [r#"{"n":2} {"n":3}"#, " "]);
    }

    #[test]
    fn csv_decodes_with_schema() {
        let d = Decoder::new("s", "s", Format::Csv, Some("a string, n int64"), None).unwrap();
        let (b, dead) = d.decode(&["x,1", "y,oops", "z,3"]);
        assert_eq!(b.num_rows(), 2);
        assert_eq!(dead.len(), 1);
    }

    #[test]
    fn json_and_csv_need_a_schema() {
        let e = Decoder::new("sources.s", "s", Format::Json, None, None)
            .err()
            .unwrap();
        assert_eq!(e.path, "sources.s.schema");
    }
}
