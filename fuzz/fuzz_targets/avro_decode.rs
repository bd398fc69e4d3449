//! Avro datums, plain and in Confluent's framing, against a schema with nested and logical
//! types: rows or dead letters, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_formats::avro::Wire;
use sluice_formats::payload::PayloadDecoder;

const SCHEMA: &str = r#"{"type": "record", "name": "r", "fields": [
  {"name": "id", "type": "long"},
  {"name": "name", "type": ["null", "string"]},
  {"name": "t", "type": "double"},
  {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
  {"name": "tags", "type": {"type": "array", "items": "string"}},
  {"name": "kind", "type": {"type": "enum", "name": "k", "symbols": ["a", "b"]}},
  {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}}
]}"#;

fuzz_target!(|data: &[u8]| {
    let Some((&sep, rest)) = data.split_first() else {
        return;
    };
    let payloads: Vec<&[u8]> = rest.split(|b| *b == sep).collect();
    for wire in [Wire::Plain, Wire::Confluent] {
        let d = PayloadDecoder::avro("sources.k", "avro_schema", SCHEMA, wire).unwrap();
        let out = d.decode(&payloads);
        assert_eq!(out.kept.len() + out.failed.len(), payloads.len());
    }
});
