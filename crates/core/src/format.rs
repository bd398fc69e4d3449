//! Data formats: [`Format`], every format sluice reads or writes, and [`FormatOf`], a `format` key
//! that accepts one use's formats (a line source's, a file sink's, …). What a key accepts is
//! declared once ([`Accepted`]); its errors ("one of `text`, `json`, `csv`"), its JSON Schema and
//! the generated docs list exactly that.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

/// A data format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Text: one string per record (a line, a payload).
    Text,
    /// Bytes as they came (one binary column).
    Raw,
    /// JSON: an object per record (JSON lines in files).
    Json,
    /// CSV: a row per record (files have a header).
    Csv,
    /// Apache Avro: a datum per message, or an object container file.
    Avro,
    /// Apache Parquet files.
    Parquet,
}

impl Format {
    pub const ALL: [Format; 6] = [
        Format::Text,
        Format::Raw,
        Format::Json,
        Format::Csv,
        Format::Avro,
        Format::Parquet,
    ];

    /// The name in a config file, and a file's extension.
    pub fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Raw => "raw",
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Avro => "avro",
            Format::Parquet => "parquet",
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == name)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The formats one `format` key accepts, in the order errors and docs list them; the first is the
/// key's default.
pub trait Accepted: 'static {
    const FORMATS: &'static [Format];
}

/// A `format` key that accepts `A`'s formats and refuses the others.
pub struct FormatOf<A>(Format, PhantomData<A>);

impl<A: Accepted> FormatOf<A> {
    /// `format`, which must be one of `A`'s.
    pub fn new(format: Format) -> Self {
        assert!(
            A::FORMATS.contains(&format),
            "{format} is not accepted here"
        );
        FormatOf(format, PhantomData)
    }

    pub fn get(&self) -> Format {
        self.0
    }
}

impl<A> Clone for FormatOf<A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A> Copy for FormatOf<A> {}

impl<A> PartialEq for FormatOf<A> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl<A> Eq for FormatOf<A> {}

impl<A> fmt::Debug for FormatOf<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<A: Accepted> Default for FormatOf<A> {
    fn default() -> Self {
        FormatOf(A::FORMATS[0], PhantomData)
    }
}

impl<A> Serialize for FormatOf<A> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name())
    }
}

impl<'de, A: Accepted> Deserialize<'de> for FormatOf<A> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        match Format::from_name(&name).filter(|f| A::FORMATS.contains(f)) {
            Some(f) => Ok(FormatOf(f, PhantomData)),
            // serde's own words for an enum, which config errors turn into "one of …".
            None => Err(serde::de::Error::custom(format!(
                "unknown variant `{name}`, expected one of {}",
                A::FORMATS
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

impl<A: Accepted> schemars::JsonSchema for FormatOf<A> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        let names: Vec<&str> = A::FORMATS.iter().map(|f| f.name()).collect();
        format!("Format_{}", names.join("_")).into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let names: Vec<&str> = A::FORMATS.iter().map(|f| f.name()).collect();
        schemars::json_schema!({ "type": "string", "enum": names })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lines;
    impl Accepted for Lines {
        const FORMATS: &'static [Format] = &[Format::Text, Format::Json, Format::Csv];
    }

    #[test]
    fn a_key_takes_its_formats_and_names_them_when_refusing() {
        let ok: FormatOf<Lines> = serde_json::from_str("\"csv\"").unwrap();
        assert_eq!(ok.get(), Format::Csv);
        assert_eq!(FormatOf::<Lines>::default().get(), Format::Text);
        for bad in ["\"parquet\"", "\"xml\""] {
            let e = serde_json::from_str::<FormatOf<Lines>>(bad)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("expected one of `text`, `json`, `csv`"), "{e}");
        }
    }
}
