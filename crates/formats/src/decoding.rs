//! The decoding keys the sources share, and the one place a source's decoder is built from them.
//!
//! A source's options are its own keys joined with one of these
//! (`sluice_core::options::Joined`): [`LineDecoding`] for sources of text records (socket, file,
//! generator, queue), [`PayloadDecoding`] for message sources (MQTT, Kafka), whose payloads may
//! also be binary or Avro.

use crate::avro::Wire;
use crate::payload::{PayloadDecoder, PayloadFormats};
use crate::{Decoder, Format, FormatOf, LineFormats};
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_core::{BuildContext, Component, ConfigError};

/// How a text record (a line) is decoded.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LineDecoding {
    /// `text` (one `line` column), `json` (one object per record) or `csv`, the last
    /// two with `schema`. A record that does not decode goes to the dead-letter output.
    #[serde(default)]
    pub format: FormatOf<LineFormats>,
    /// Columns for `json` / `csv`, e.g. `"device string, temperature double"`.
    #[serde(default)]
    pub schema: Option<String>,
    /// CSV field delimiter (default `,`).
    #[serde(default)]
    pub delimiter: Option<char>,
}

impl LineDecoding {
    /// The decoder of the source at `at`; its dead letters name the source.
    pub fn decoder(&self, at: &Component) -> Result<Decoder, ConfigError> {
        Decoder::for_component(
            &at.path,
            self.format.get(),
            self.schema.as_deref(),
            self.delimiter,
        )
    }
}

/// How a message's payload is decoded.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PayloadDecoding {
    /// `text` (one string column), `raw` (one binary column), `json` or `csv` (with `schema`),
    /// or `avro` with `avro_schema` / `avro_schema_file` (one datum per payload; the columns are
    /// the schema's fields). A payload that does not decode goes to the dead-letter output.
    #[serde(default)]
    pub format: FormatOf<PayloadFormats>,
    /// Columns for `json` / `csv`, e.g. `"device string, temperature double"`.
    #[serde(default)]
    pub schema: Option<String>,
    /// CSV field delimiter (default `,`).
    #[serde(default)]
    pub delimiter: Option<char>,
    /// For `format = "avro"`: the writer schema, Avro's JSON form, e.g.
    /// `{"type":"record","name":"r","fields":[{"name":"n","type":"long"}]}`.
    #[serde(default)]
    pub avro_schema: Option<String>,
    /// For `format = "avro"`: a file holding the writer schema (an `.avsc`), instead of
    /// `avro_schema`.
    #[serde(default)]
    pub avro_schema_file: Option<String>,
    /// For `format = "avro"`: `plain` (a bare datum, default) or `confluent` (a magic byte and a
    /// 4-byte schema id first, as Confluent's serializers write; the id is not looked up, so the
    /// schema given must be the one the payloads were written with).
    #[serde(default)]
    pub avro_wire: Wire,
}

impl PayloadDecoding {
    /// The decoder of the source at `at`, whose `text` / `raw` column is named `column`.
    pub fn decoder(
        &self,
        cx: &BuildContext,
        at: &Component,
        column: &str,
    ) -> Result<PayloadDecoder, ConfigError> {
        let path = at.path.as_str();
        match (self.format.get(), &self.avro_schema, &self.avro_schema_file) {
            (Format::Avro, Some(_), Some(_)) | (Format::Avro, None, None) => {
                Err(ConfigError::new(
                    at.key("avro_schema"),
                    "one of `avro_schema` (the writer schema as JSON) and `avro_schema_file` with format = \"avro\"",
                    if self.avro_schema.is_some() { "both" } else { "neither" },
                ))
            }
            (Format::Avro, _, _) if self.schema.is_some() => Err(ConfigError::new(
                at.key("schema"),
                "no `schema` with format = \"avro\" (the columns are the Avro schema's fields)",
                "a schema",
            )),
            (Format::Avro, Some(text), None) => {
                PayloadDecoder::avro(path, "avro_schema", text, self.avro_wire)
            }
            (Format::Avro, None, Some(file)) => {
                let p = cx.resolve(file);
                let text = std::fs::read_to_string(&p).map_err(|e| {
                    ConfigError::new(
                        at.key("avro_schema_file"),
                        "a readable file holding an Avro schema",
                        format!("{} ({e})", p.display()),
                    )
                })?;
                PayloadDecoder::avro(path, "avro_schema_file", &text, self.avro_wire)
            }
            (_, Some(_), _) | (_, _, Some(_)) => Err(ConfigError::new(
                at.key("format"),
                "format = \"avro\" with `avro_schema` / `avro_schema_file`",
                format!("\"{}\"", self.format.get()),
            )),
            _ => PayloadDecoder::new(
                path,
                column,
                self.format.get(),
                self.schema.as_deref(),
                self.delimiter,
            ),
        }
    }
}
