//! Message payloads (MQTT, Kafka) as columns: one `text` or `raw` column, or the columns a
//! `json` / `csv` [`Decoder`] or an Avro [`DatumDecoder`] gives. Message sources add their envelope columns next to these, so
//! they need to know which messages became rows: [`Decoded::kept`].

use crate::avro::{DatumDecoder, Wire};
use crate::{Accepted, Decoder, Format};
use arrow::array::{ArrayRef, BinaryBuilder, StringBuilder};
use arrow::datatypes::{DataType, Field, SchemaRef};
use sluice_core::ConfigError;
use std::sync::Arc;

/// The formats of a message payload: `text` (one string column; a payload that is not UTF-8 is
/// a dead letter), `raw` (one binary column, the bytes as they came), `json` or `csv` (with
/// `schema`), or `avro` (one datum per payload, with the writer schema).
pub struct PayloadFormats;
impl Accepted for PayloadFormats {
    const FORMATS: &'static [Format] = &[
        Format::Text,
        Format::Raw,
        Format::Json,
        Format::Csv,
        Format::Avro,
    ];
}

/// A message source's envelope columns follow the payload's: refuse a schema that names one.
pub fn check_envelope(path: &str, fields: &[Field], envelope: &[&str]) -> Result<(), ConfigError> {
    match fields
        .iter()
        .find(|f| envelope.contains(&f.name().as_str()))
    {
        None => Ok(()),
        Some(f) => Err(ConfigError::new(
            format!("{path}.schema"),
            format!(
                "no column named like an envelope column ({})",
                envelope.join(", ")
            ),
            format!("a column `{}`", f.name()),
        )
        .with_hint("rename the column, or set envelope = false")),
    }
}

/// Payloads decoded into columns.
pub struct Decoded {
    /// The payload columns, one row per kept payload.
    pub columns: Vec<ArrayRef>,
    /// Indexes (into the payloads given) of the payloads that became rows, in order.
    pub kept: Vec<usize>,
    /// Indexes of the payloads that did not decode, with the reason.
    pub failed: Vec<(usize, String)>,
}

/// Decodes the payloads of one block of messages.
#[derive(Clone)]
pub struct PayloadDecoder {
    column: String,
    format: Format,
    decoder: Option<Decoder>,
    avro: Option<DatumDecoder>,
    /// After [`PayloadDecoder::project`]: the full schema, and for each of its fields the
    /// decoded column it comes from (None: left null).
    projection: Option<(SchemaRef, Vec<Option<usize>>)>,
}

impl PayloadDecoder {
    /// `column` names the single column of `text` and `raw`; `schema` is required by `json` and
    /// `csv` and refused by the others. `path` is the component's key path, for errors.
    pub fn new(
        path: &str,
        column: &str,
        format: Format,
        schema: Option<&str>,
        delimiter: Option<char>,
    ) -> Result<Self, ConfigError> {
        let decoder = match format {
            Format::Json => Some(Decoder::for_component(
                path,
                Format::Json,
                schema,
                delimiter,
            )?),
            Format::Csv => Some(Decoder::for_component(
                path,
                Format::Csv,
                schema,
                delimiter,
            )?),
            Format::Avro => {
                return Err(ConfigError::new(
                    format!("{path}.format"),
                    "text, raw, json or csv here",
                    "\"avro\"",
                )
                .with_hint("Avro payloads are decoded with the writer schema: `avro_schema`"))
            }
            Format::Parquet => {
                return Err(ConfigError::new(
                    format!("{path}.format"),
                    "one of `text`, `raw`, `json`, `csv`, `avro` (a message's formats)",
                    "\"parquet\"",
                ))
            }
            Format::Text | Format::Raw => {
                if schema.is_some() {
                    return Err(ConfigError::new(
                        format!("{path}.schema"),
                        format!("no schema for format \"text\" or \"raw\" (one `{column}` column)"),
                        "a schema",
                    )
                    .with_hint(
                        "set format = \"json\" or \"csv\" to decode payloads with a schema",
                    ));
                }
                None
            }
        };
        Ok(PayloadDecoder {
            column: column.to_string(),
            format,
            decoder,
            avro: None,
            projection: None,
        })
    }

    /// Decode only the columns named in `keep` (JSON); the others are null. The fields (and so
    /// the schema) stay as they were.
    pub fn project(&mut self, keep: &std::collections::BTreeSet<String>) {
        let Some(d) = &self.decoder else {
            return;
        };
        let Some(projected) = d.projected(keep) else {
            return;
        };
        let full = d.schema();
        let small = projected.schema();
        let map = full
            .fields()
            .iter()
            .map(|f| small.index_of(f.name()).ok())
            .collect();
        self.projection = Some((full, map));
        self.decoder = Some(projected);
    }

    /// `format = "avro"`: each payload one datum of `schema` (the writer schema as JSON text, a
    /// record), framed as `wire`. `key` names the schema's key, for errors.
    pub fn avro(path: &str, key: &str, schema: &str, wire: Wire) -> Result<Self, ConfigError> {
        let avro = DatumDecoder::new(schema, wire).map_err(|e| {
            ConfigError::new(
                format!("{path}.{key}"),
                "an Avro schema (JSON) whose top-level type is a record",
                e,
            )
        })?;
        Ok(PayloadDecoder {
            column: String::new(),
            format: Format::Avro,
            decoder: None,
            avro: Some(avro),
            projection: None,
        })
    }

    /// The payload's columns.
    pub fn fields(&self) -> Vec<Field> {
        if let Some(a) = &self.avro {
            return a.fields();
        }
        if let Some((full, _)) = &self.projection {
            return full.fields().iter().map(|f| (**f).clone()).collect();
        }
        match (&self.decoder, self.format) {
            (Some(d), _) => d.schema().fields().iter().map(|f| (**f).clone()).collect(),
            (None, Format::Raw) => vec![Field::new(&self.column, DataType::Binary, false)],
            (None, _) => vec![Field::new(&self.column, DataType::Utf8, false)],
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn decode(&self, payloads: &[&[u8]]) -> Decoded {
        let mut out = self.decode_projected(payloads);
        if let Some((full, map)) = &self.projection {
            let n = out.kept.len();
            out.columns = full
                .fields()
                .iter()
                .zip(map)
                .map(|(f, m)| match m {
                    Some(i) => out.columns[*i].clone(),
                    None => arrow::array::new_null_array(f.data_type(), n),
                })
                .collect();
        }
        out
    }

    fn decode_projected(&self, payloads: &[&[u8]]) -> Decoded {
        if let Some(a) = &self.avro {
            let (columns, kept, failed) = a.decode(payloads);
            return Decoded {
                columns,
                kept,
                failed,
            };
        }
        let mut kept = Vec::with_capacity(payloads.len());
        let mut failed = Vec::new();
        if self.format == Format::Raw {
            let bytes = payloads.iter().map(|p| p.len()).sum();
            let mut b = BinaryBuilder::with_capacity(payloads.len(), bytes);
            for (i, p) in payloads.iter().enumerate() {
                b.append_value(p);
                kept.push(i);
            }
            return Decoded {
                columns: vec![Arc::new(b.finish())],
                kept,
                failed,
            };
        }
        let mut texts: Vec<&str> = Vec::with_capacity(payloads.len());
        for (i, p) in payloads.iter().enumerate() {
            match std::str::from_utf8(p) {
                Ok(s) => {
                    texts.push(s);
                    kept.push(i);
                }
                Err(_) => failed.push((i, "payload is not valid UTF-8".to_string())),
            }
        }
        let Some(d) = &self.decoder else {
            let mut b =
                StringBuilder::with_capacity(texts.len(), texts.iter().map(|t| t.len()).sum());
            for t in &texts {
                b.append_value(t);
            }
            return Decoded {
                columns: vec![Arc::new(b.finish())],
                kept,
                failed,
            };
        };
        let (batch, dead) = d.decode(&texts);
        if dead.is_empty() {
            return Decoded {
                columns: batch.columns().to_vec(),
                kept,
                failed,
            };
        }
        // Find which payloads failed, one by one, so the caller's envelope stays aligned.
        let mut parts = Vec::new();
        let mut still = Vec::with_capacity(kept.len());
        for (text, &i) in texts.iter().zip(&kept) {
            let (b, dead) = d.decode(&[text]);
            match dead.into_iter().next() {
                None => {
                    parts.push(b);
                    still.push(i);
                }
                Some(dl) => failed.push((i, dl.reason)),
            }
        }
        failed.sort_by_key(|(i, _)| *i);
        let batch = arrow::compute::concat_batches(&d.schema(), &parts).expect("one schema");
        Decoded {
            columns: batch.columns().to_vec(),
            kept: still,
            failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};

    #[test]
    fn bad_payloads_are_reported_by_index_and_the_rest_stay_aligned() {
        let d =
            PayloadDecoder::new("sources.s", "value", Format::Json, Some("n int64"), None).unwrap();
        let payloads: Vec<&[u8]> = vec![b"{\"n\":1}", b"{oops", b"\xff", b"{\"n\":4}"];
        let out = d.decode(&payloads);
        assert_eq!(out.kept, vec![0, 3]);
        assert_eq!(
            out.failed.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![1, 2]
        );
        let n = out.columns[0]
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(n.values(), &[1, 4]);
        assert!(out.failed[1].1.contains("UTF-8"));
    }

    #[test]
    fn a_projected_decoder_keeps_the_schema_and_leaves_the_other_columns_null() {
        let mut d = PayloadDecoder::new(
            "sources.s",
            "value",
            Format::Json,
            Some("n int64, note string, t double"),
            None,
        )
        .unwrap();
        let before = d.fields();
        d.project(&["t".to_string()].into_iter().collect());
        assert_eq!(d.fields(), before);
        let out = d.decode(&[br#"{"n": 1, "note": "x", "t": 2.5}"#, b"{oops"]);
        assert_eq!(out.kept, vec![0]);
        assert_eq!(out.failed.len(), 1);
        assert_eq!(out.columns.len(), 3);
        assert!(out.columns[0].is_null(0) && out.columns[1].is_null(0));
        let t = out.columns[2]
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .unwrap();
        assert_eq!(t.value(0), 2.5);
    }

    #[test]
    fn text_refuses_a_schema_and_raw_keeps_every_payload() {
        let e = PayloadDecoder::new("sources.s", "value", Format::Text, Some("a int64"), None)
            .err()
            .unwrap();
        assert_eq!(e.path, "sources.s.schema");
        let d = PayloadDecoder::new("sources.s", "value", Format::Raw, None, None).unwrap();
        let out = d.decode(&[b"\xff", b"x"]);
        assert_eq!(out.kept, vec![0, 1]);
        assert_eq!(out.columns[0].len(), 2);
    }
}
