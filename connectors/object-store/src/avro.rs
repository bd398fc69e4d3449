//! Avro object container files from record batches, with the schema derived from the Arrow schema.
//!
//! | Arrow | Avro |
//! |---|---|
//! | Boolean | boolean |
//! | Int8/16/32, UInt8/16 | int |
//! | Int64, UInt32/64 | long |
//! | Float16/32 | float |
//! | Float64 | double |
//! | Utf8, LargeUtf8, Utf8View | string |
//! | Binary, LargeBinary, BinaryView | bytes |
//! | Timestamp | long, `timestamp-millis` / `timestamp-micros` |
//! | Date32 | int, `date` |
//! | anything else | string (its Arrow text form) |
//!
//! Nullable columns are unions `["null", T]`. Field names are made valid Avro names (`[A-Za-z_]`
//! then `[A-Za-z0-9_]`, other characters replaced by `_`).

use crate::config::Compression;
use apache_avro::types::Value;
use apache_avro::{Codec, Schema, Writer};
use sluice_core::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use sluice_core::arrow::compute::cast;
use sluice_core::arrow::datatypes::{self as t, DataType, SchemaRef, TimeUnit};
use sluice_core::{Error, Result};
use std::io::Write;

fn err(e: impl std::fmt::Display) -> Error {
    Error::msg(format!("avro: {e}"))
}

pub struct Encoder {
    schema: Schema,
    names: Vec<String>,
    codec: Codec,
    marker: [u8; 16],
    header_written: bool,
}

fn avro_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        s.insert(0, '_');
    }
    s
}

fn field_type(dt: &DataType) -> serde_json::Value {
    use serde_json::json;
    match dt {
        DataType::Boolean => json!("boolean"),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => {
            json!("int")
        }
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => json!("long"),
        DataType::Float16 | DataType::Float32 => json!("float"),
        DataType::Float64 => json!("double"),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => json!("bytes"),
        DataType::Timestamp(TimeUnit::Second | TimeUnit::Millisecond, _) => {
            json!({"type": "long", "logicalType": "timestamp-millis"})
        }
        DataType::Timestamp(_, _) => json!({"type": "long", "logicalType": "timestamp-micros"}),
        DataType::Date32 => json!({"type": "int", "logicalType": "date"}),
        _ => json!("string"),
    }
}

/// The Avro schema of record batches of `schema`.
pub fn schema_json(schema: &SchemaRef) -> serde_json::Value {
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| {
            let ty = field_type(f.data_type());
            if f.is_nullable() {
                serde_json::json!({"name": avro_name(f.name()), "type": ["null", ty], "default": null})
            } else {
                serde_json::json!({"name": avro_name(f.name()), "type": ty})
            }
        })
        .collect();
    serde_json::json!({"type": "record", "name": "row", "namespace": "sluice", "fields": fields})
}

/// The column as the Arrow type its Avro type is read from.
fn normalized(column: &ArrayRef) -> Result<ArrayRef> {
    let target = match column.data_type() {
        DataType::Int8 | DataType::Int16 | DataType::UInt8 | DataType::UInt16 => DataType::Int32,
        DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        DataType::Float16 => DataType::Float32,
        DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
        DataType::Timestamp(TimeUnit::Second | TimeUnit::Millisecond, _) => DataType::Int64,
        DataType::Timestamp(_, _) => {
            let us =
                cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None)).map_err(err)?;
            return cast(&us, &DataType::Int64).map_err(err);
        }
        DataType::Boolean
        | DataType::Int32
        | DataType::Int64
        | DataType::Float32
        | DataType::Float64
        | DataType::Utf8
        | DataType::Binary
        | DataType::Date32 => return Ok(column.clone()),
        _ => DataType::Utf8,
    };
    if let DataType::Timestamp(TimeUnit::Second, _) = column.data_type() {
        let ms = cast(column, &DataType::Timestamp(TimeUnit::Millisecond, None)).map_err(err)?;
        return cast(&ms, &DataType::Int64).map_err(err);
    }
    cast(column, &target).map_err(err)
}

fn value(column: &ArrayRef, original: &DataType, row: usize) -> Value {
    match column.data_type() {
        DataType::Boolean => Value::Boolean(column.as_boolean().value(row)),
        DataType::Int32 => {
            let v = column.as_primitive::<t::Int32Type>().value(row);
            match original {
                DataType::Date32 => Value::Date(v),
                _ => Value::Int(v),
            }
        }
        DataType::Date32 => Value::Date(column.as_primitive::<t::Date32Type>().value(row)),
        DataType::Int64 => {
            let v = column.as_primitive::<t::Int64Type>().value(row);
            match original {
                DataType::Timestamp(TimeUnit::Second | TimeUnit::Millisecond, _) => {
                    Value::TimestampMillis(v)
                }
                DataType::Timestamp(_, _) => Value::TimestampMicros(v),
                _ => Value::Long(v),
            }
        }
        DataType::Float32 => Value::Float(column.as_primitive::<t::Float32Type>().value(row)),
        DataType::Float64 => Value::Double(column.as_primitive::<t::Float64Type>().value(row)),
        DataType::Binary => Value::Bytes(column.as_binary::<i32>().value(row).to_vec()),
        _ => Value::String(column.as_string::<i32>().value(row).to_string()),
    }
}

impl Encoder {
    /// `seed` makes the file's sync marker, so a re-written object is byte for byte the same.
    pub fn new(schema: &SchemaRef, compression: Option<Compression>, seed: &str) -> Result<Self> {
        let parsed = Schema::parse(&schema_json(schema)).map_err(err)?;
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
            names: schema
                .fields()
                .iter()
                .map(|f| avro_name(f.name()))
                .collect(),
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
        let columns = batch
            .columns()
            .iter()
            .map(normalized)
            .collect::<Result<Vec<_>>>()?;
        let fields = batch.schema();
        let mut w = self.writer(&mut *out)?;
        for row in 0..batch.num_rows() {
            let record = columns
                .iter()
                .zip(fields.fields())
                .zip(&self.names)
                .map(|((c, f), name)| {
                    let v = if c.is_null(row) {
                        Value::Null
                    } else {
                        value(c, f.data_type(), row)
                    };
                    let v = if f.is_nullable() {
                        Value::Union(u32::from(!c.is_null(row)), Box::new(v))
                    } else {
                        v
                    };
                    (name.clone(), v)
                })
                .collect();
            w.append_value(Value::Record(record)).map_err(err)?;
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
    use sluice_core::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
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
