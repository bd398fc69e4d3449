//! The shared payload decoders (JSON and CSV with a schema, text) on arbitrary payloads: rows or
//! dead letters, never a panic. The first byte splits the input into payloads.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_formats::payload::{PayloadDecoder, PayloadFormat};

const SCHEMA: &str = "id bigint, name string, t double, ok boolean, at timestamp, tags string";

fuzz_target!(|data: &[u8]| {
    let Some((&sep, rest)) = data.split_first() else {
        return;
    };
    let payloads: Vec<&[u8]> = rest.split(|b| *b == sep).collect();
    for (format, schema) in [
        (PayloadFormat::Json, Some(SCHEMA)),
        (PayloadFormat::Csv, Some(SCHEMA)),
        (PayloadFormat::Text, None),
    ] {
        let d = PayloadDecoder::new("sources.f", "payload", format, schema, None).unwrap();
        let out = d.decode(&payloads);
        assert_eq!(out.kept.len() + out.failed.len(), payloads.len());
    }
});
