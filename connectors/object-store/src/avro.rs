//! Avro object container files from record batches; the schema and the values come from the one
//! Arrow → Avro mapping (`sluice_formats::avro`).

use crate::config::Compression;
use apache_avro::{Codec, Schema, Writer};
use sluice_core::arrow::array::RecordBatch;
use sluice_core::arrow::datatypes::SchemaRef;
use sluice_core::{Error, Result};
use std::io::Write;

fn err(e: impl std::fmt::Display) -> Error {
    Error::msg(format!("avro: {e}"))
}

pub struct Encoder {
    schema: Schema,
    codec: Codec,
    marker: [u8; 16],
    header_written: bool,
}

impl Encoder {
    /// `seed` makes the file's sync marker, so a re-written object is byte for byte the same.
    pub fn new(schema: &SchemaRef, compression: Option<Compression>, seed: &str) -> Result<Self> {
        let parsed = sluice_formats::avro::schema_of(schema)?;
        let codec = match compression {
            None | Some(Compression::None) => Codec::Null,
            Some(Compression::Deflate) => Codec::Deflate(Default::default()),
            Some(c) => return Err(err(format!("{c:?} is not an Avro codec here"))),
        };
        let mut marker = [0u8; 16];
        let h = fnv(seed.as_bytes());
        marker[..8].copy_from_slice(&h.to_le_bytes());
        marker[8..].copy_from_slice(&fnv(&h.to_le_bytes()).to_le_bytes());
        Ok(Encoder {
            schema: parsed,
            codec,
            marker,
            header_written: false,
        })
    }

    fn writer<W: Write>(&self, out: W) -> Result<Writer<'_, W>> {
        Writer::builder()
            .schema(&self.schema)
            .writer(out)
            .codec(self.codec)
            .marker(self.marker)
            .has_header(self.header_written)
            .build()
            .map_err(err)
    }

    /// Appends the batch's rows to `out` as one or more blocks (the header first, once).
    pub fn write(&mut self, batch: &RecordBatch, out: &mut impl Write) -> Result<()> {
        let records = sluice_formats::avro::records(batch)?;
        let mut w = self.writer(&mut *out)?;
        for r in records {
            w.append_value(r).map_err(err)?;
        }
        w.flush().map_err(err)?;
        drop(w);
        self.header_written = true;
        Ok(())
    }

    /// Writes the header if no batch did (an empty file).
    pub fn finish(self, out: &mut impl Write) -> Result<()> {
        if !self.header_written {
            let mut w = self.writer(out)?;
            w.flush().map_err(err)?;
        }
        Ok(())
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value;
    use sluice_core::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use sluice_core::arrow::datatypes::{DataType, TimeUnit};
    use sluice_core::arrow::datatypes::{Field, Schema as ArrowSchema};
    use std::sync::Arc;

    #[test]
    fn rows_read_back_with_the_avro_reader() {
        let schema = Arc::new(ArrowSchema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("site-name", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some("n"), None])),
                Arc::new(TimestampMillisecondArray::from(vec![5, 6])),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        let mut e = Encoder::new(&schema, Some(Compression::Deflate), "k").unwrap();
        e.write(&b, &mut out).unwrap();
        e.write(&b, &mut out).unwrap();
        e.finish(&mut out).unwrap();
        let rows: Vec<Value> = apache_avro::Reader::new(&out[..])
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(rows.len(), 4);
        assert_eq!(
            rows[1],
            Value::Record(vec![
                ("id".into(), Value::Long(2)),
                ("site_name".into(), Value::Union(0, Box::new(Value::Null))),
                ("ts".into(), Value::TimestampMillis(6)),
            ])
        );
    }
}
