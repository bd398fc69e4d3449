//! Avro: the one mapping between Arrow and Avro, and message payloads as single Avro datums —
//! plain, or in the Confluent wire format (a zero byte and a 4-byte big-endian schema id before
//! the datum; the id is written, never looked up: there is no schema registry here).
//!
//! Arrow → Avro (the object-store sink's files and the Kafka sink's records):
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
//!
//! Avro → Arrow (payloads decoded with a writer schema, a record): boolean, int, long, float,
//! double, bytes, string as themselves; enum, uuid as strings; fixed as binary; `date` as Date32;
//! `timestamp-*` and `local-timestamp-*` as timestamps of their unit; `time-millis` /
//! `time-micros` as int / long; a union of null and one type as that type; anything else (records,
//! arrays, maps, other unions, decimals, durations) as a string holding its JSON form. Every
//! column is nullable.

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanBuilder, Date32Builder, Float32Builder,
    Float64Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder, TimestampMillisecondBuilder, TimestampNanosecondBuilder,
};
use arrow::compute::cast;
use arrow::datatypes::{self as t, DataType, Field, SchemaRef, TimeUnit};
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_core::{Error, Result};
use std::sync::Arc;

fn err(e: impl std::fmt::Display) -> Error {
    Error::msg(format!("avro: {e}"))
}

/// How a datum is framed in a message.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Wire {
    /// The datum alone.
    #[default]
    Plain,
    /// A zero byte, a 4-byte schema id, the datum (Confluent's serializers).
    Confluent,
}

pub fn avro_name(name: &str) -> String {
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

/// The Avro schema of record batches of `schema`, parsed.
pub fn schema_of(schema: &SchemaRef) -> Result<Schema> {
    Schema::parse(&schema_json(schema)).map_err(err)
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

/// The rows of a batch as Avro records of [`schema_json`]'s schema.
pub fn records(batch: &RecordBatch) -> Result<Vec<Value>> {
    let columns = batch
        .columns()
        .iter()
        .map(normalized)
        .collect::<Result<Vec<_>>>()?;
    let schema = batch.schema();
    let names: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| avro_name(f.name()))
        .collect();
    Ok((0..batch.num_rows())
        .map(|row| {
            let fields = columns
                .iter()
                .zip(schema.fields())
                .zip(&names)
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
            Value::Record(fields)
        })
        .collect())
}

/// Rows → one datum each, with the schema [`schema_of`] gives for the batches' schema.
pub struct DatumEncoder {
    schema: Schema,
    /// The Confluent header (zero byte, schema id), when framed so.
    header: Option<[u8; 5]>,
}

impl DatumEncoder {
    pub fn new(schema: &SchemaRef, wire: Wire, schema_id: u32) -> Result<Self> {
        let header = (wire == Wire::Confluent).then(|| {
            let mut h = [0u8; 5];
            h[1..].copy_from_slice(&schema_id.to_be_bytes());
            h
        });
        Ok(DatumEncoder {
            schema: schema_of(schema)?,
            header,
        })
    }

    pub fn encode(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let writer = GenericDatumWriter::builder(&self.schema)
            .build()
            .map_err(err)?;
        records(batch)?
            .into_iter()
            .map(|r| {
                let datum = writer.write_value_to_vec(r).map_err(err)?;
                Ok(match self.header {
                    Some(h) => [&h[..], &datum].concat(),
                    None => datum,
                })
            })
            .collect()
    }
}

/// How a top-level field of the writer schema becomes a column.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Bool,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    Str,
    Date,
    TsMs,
    TsUs,
    TsNs,
    Json,
}

impl Kind {
    fn of(schema: &Schema) -> Kind {
        match schema {
            Schema::Boolean => Kind::Bool,
            Schema::Int | Schema::TimeMillis => Kind::Int,
            Schema::Long | Schema::TimeMicros => Kind::Long,
            Schema::Float => Kind::Float,
            Schema::Double => Kind::Double,
            Schema::Bytes | Schema::Fixed(_) => Kind::Bytes,
            Schema::String | Schema::Enum(_) | Schema::Uuid(_) => Kind::Str,
            Schema::Date => Kind::Date,
            Schema::TimestampMillis | Schema::LocalTimestampMillis => Kind::TsMs,
            Schema::TimestampMicros | Schema::LocalTimestampMicros => Kind::TsUs,
            Schema::TimestampNanos | Schema::LocalTimestampNanos => Kind::TsNs,
            Schema::Union(u) => {
                let other: Vec<&Schema> = u
                    .variants()
                    .iter()
                    .filter(|s| !matches!(s, Schema::Null))
                    .collect();
                match other.as_slice() {
                    [one] => Kind::of(one),
                    _ => Kind::Json,
                }
            }
            _ => Kind::Json,
        }
    }

    fn data_type(self) -> DataType {
        match self {
            Kind::Bool => DataType::Boolean,
            Kind::Int => DataType::Int32,
            Kind::Long => DataType::Int64,
            Kind::Float => DataType::Float32,
            Kind::Double => DataType::Float64,
            Kind::Bytes => DataType::Binary,
            Kind::Str | Kind::Json => DataType::Utf8,
            Kind::Date => DataType::Date32,
            Kind::TsMs => DataType::Timestamp(TimeUnit::Millisecond, None),
            Kind::TsUs => DataType::Timestamp(TimeUnit::Microsecond, None),
            Kind::TsNs => DataType::Timestamp(TimeUnit::Nanosecond, None),
        }
    }
}

enum Builder {
    Bool(BooleanBuilder),
    Int(Int32Builder),
    Long(Int64Builder),
    Float(Float32Builder),
    Double(Float64Builder),
    Bytes(BinaryBuilder),
    Str(StringBuilder),
    Date(Date32Builder),
    TsMs(TimestampMillisecondBuilder),
    TsUs(TimestampMicrosecondBuilder),
    TsNs(TimestampNanosecondBuilder),
}

impl Builder {
    fn new(kind: Kind) -> Builder {
        match kind {
            Kind::Bool => Builder::Bool(BooleanBuilder::new()),
            Kind::Int => Builder::Int(Int32Builder::new()),
            Kind::Long => Builder::Long(Int64Builder::new()),
            Kind::Float => Builder::Float(Float32Builder::new()),
            Kind::Double => Builder::Double(Float64Builder::new()),
            Kind::Bytes => Builder::Bytes(BinaryBuilder::new()),
            Kind::Str | Kind::Json => Builder::Str(StringBuilder::new()),
            Kind::Date => Builder::Date(Date32Builder::new()),
            Kind::TsMs => Builder::TsMs(TimestampMillisecondBuilder::new()),
            Kind::TsUs => Builder::TsUs(TimestampMicrosecondBuilder::new()),
            Kind::TsNs => Builder::TsNs(TimestampNanosecondBuilder::new()),
        }
    }

    /// Append a value decoded with the field's schema (a null or a mismatch appends a null).
    fn append(&mut self, v: Value, kind: Kind) {
        let v = match v {
            Value::Union(_, inner) if !matches!(kind, Kind::Json) => *inner,
            v => v,
        };
        match (self, v) {
            (b, Value::Null) => b.null(),
            (Builder::Bool(b), Value::Boolean(x)) => b.append_value(x),
            (Builder::Int(b), Value::Int(x) | Value::TimeMillis(x)) => b.append_value(x),
            (Builder::Long(b), Value::Long(x) | Value::TimeMicros(x)) => b.append_value(x),
            (Builder::Float(b), Value::Float(x)) => b.append_value(x),
            (Builder::Double(b), Value::Double(x)) => b.append_value(x),
            (Builder::Bytes(b), Value::Bytes(x) | Value::Fixed(_, x)) => b.append_value(x),
            (Builder::Date(b), Value::Date(x)) => b.append_value(x),
            (Builder::TsMs(b), Value::TimestampMillis(x) | Value::LocalTimestampMillis(x)) => {
                b.append_value(x)
            }
            (Builder::TsUs(b), Value::TimestampMicros(x) | Value::LocalTimestampMicros(x)) => {
                b.append_value(x)
            }
            (Builder::TsNs(b), Value::TimestampNanos(x) | Value::LocalTimestampNanos(x)) => {
                b.append_value(x)
            }
            (Builder::Str(b), Value::String(x) | Value::Enum(_, x))
                if !matches!(kind, Kind::Json) =>
            {
                b.append_value(x)
            }
            (Builder::Str(b), Value::Uuid(x)) => b.append_value(x.to_string()),
            (Builder::Str(b), v) => match serde_json::Value::try_from(v.clone()) {
                Ok(j) => b.append_value(j.to_string()),
                Err(_) => b.append_value(format!("{v:?}")),
            },
            (b, _) => b.null(),
        }
    }

    fn null(&mut self) {
        match self {
            Builder::Bool(b) => b.append_null(),
            Builder::Int(b) => b.append_null(),
            Builder::Long(b) => b.append_null(),
            Builder::Float(b) => b.append_null(),
            Builder::Double(b) => b.append_null(),
            Builder::Bytes(b) => b.append_null(),
            Builder::Str(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::TsMs(b) => b.append_null(),
            Builder::TsUs(b) => b.append_null(),
            Builder::TsNs(b) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Builder::Bool(mut b) => Arc::new(b.finish()),
            Builder::Int(mut b) => Arc::new(b.finish()),
            Builder::Long(mut b) => Arc::new(b.finish()),
            Builder::Float(mut b) => Arc::new(b.finish()),
            Builder::Double(mut b) => Arc::new(b.finish()),
            Builder::Bytes(mut b) => Arc::new(b.finish()),
            Builder::Str(mut b) => Arc::new(b.finish()),
            Builder::Date(mut b) => Arc::new(b.finish()),
            Builder::TsMs(mut b) => Arc::new(b.finish()),
            Builder::TsUs(mut b) => Arc::new(b.finish()),
            Builder::TsNs(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Payloads → columns, each payload one datum of a writer schema that is a record.
#[derive(Clone)]
pub struct DatumDecoder {
    schema: Schema,
    fields: Vec<(Field, Kind)>,
    wire: Wire,
}

impl DatumDecoder {
    /// `schema`: the writer schema's JSON text. The error says what is wrong with it.
    pub fn new(schema: &str, wire: Wire) -> std::result::Result<Self, String> {
        let parsed = Schema::parse_str(schema).map_err(|e| e.to_string())?;
        let Schema::Record(r) = &parsed else {
            return Err("the top-level type is not a record".into());
        };
        let fields = r
            .fields
            .iter()
            .map(|f| {
                let kind = Kind::of(&f.schema);
                (Field::new(&f.name, kind.data_type(), true), kind)
            })
            .collect();
        Ok(DatumDecoder {
            schema: parsed,
            fields,
            wire,
        })
    }

    pub fn fields(&self) -> Vec<Field> {
        self.fields.iter().map(|(f, _)| f.clone()).collect()
    }

    /// Decode one payload to its field values, or say why it does not decode.
    fn datum(
        &self,
        reader: &GenericDatumReader<'_>,
        payload: &[u8],
    ) -> std::result::Result<Vec<Value>, String> {
        let mut body = payload;
        if self.wire == Wire::Confluent {
            if payload.len() < 5 || payload[0] != 0 {
                return Err(
                    "not in the Confluent wire format (a zero byte and a 4-byte schema id first)"
                        .into(),
                );
            }
            body = &payload[5..];
        }
        let v = reader
            .read_value(&mut body)
            .map_err(|e| format!("not an Avro datum of the schema: {e}"))?;
        if !body.is_empty() {
            return Err(format!(
                "{} bytes left after the Avro datum (another schema?)",
                body.len()
            ));
        }
        match v {
            Value::Record(fields) if fields.len() == self.fields.len() => {
                Ok(fields.into_iter().map(|(_, v)| v).collect())
            }
            other => Err(format!("not a record of the schema: {other:?}")),
        }
    }

    /// Decode payloads: the columns of those that decode, with their indexes, and why the others
    /// did not.
    pub fn decode(&self, payloads: &[&[u8]]) -> (Vec<ArrayRef>, Vec<usize>, Vec<(usize, String)>) {
        let mut builders: Vec<Builder> =
            self.fields.iter().map(|(_, k)| Builder::new(*k)).collect();
        let mut kept = Vec::with_capacity(payloads.len());
        let mut failed = Vec::new();
        let reader = match GenericDatumReader::builder(&self.schema).build() {
            Ok(r) => r,
            Err(e) => {
                let why = format!("the Avro schema does not resolve: {e}");
                failed = (0..payloads.len()).map(|i| (i, why.clone())).collect();
                let columns = builders.into_iter().map(Builder::finish).collect();
                return (columns, kept, failed);
            }
        };
        for (i, p) in payloads.iter().enumerate() {
            match self.datum(&reader, p) {
                Ok(values) => {
                    for ((b, v), (_, kind)) in builders.iter_mut().zip(values).zip(&self.fields) {
                        b.append(v, *kind);
                    }
                    kept.push(i);
                }
                Err(reason) => failed.push((i, reason)),
            }
        }
        (
            builders.into_iter().map(Builder::finish).collect(),
            kept,
            failed,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::Schema as ArrowSchema;

    #[test]
    fn rows_encode_to_datums_that_decode_back_and_bad_payloads_are_named() {
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
        let enc = DatumEncoder::new(&schema, Wire::Confluent, 7).unwrap();
        let datums = enc.encode(&b).unwrap();
        assert_eq!(&datums[0][..5], &[0, 0, 0, 0, 7]);
        let dec = DatumDecoder::new(&schema_json(&schema).to_string(), Wire::Confluent).unwrap();
        let names: Vec<String> = dec.fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["id", "site_name", "ts"]);
        let mut payloads: Vec<&[u8]> = datums.iter().map(|d| &d[..]).collect();
        payloads.insert(1, b"\x00\x00\x00\x00\x07\xff");
        payloads.push(b"{}");
        let (cols, kept, failed) = dec.decode(&payloads);
        assert_eq!(kept, vec![0, 2]);
        assert_eq!(failed.iter().map(|f| f.0).collect::<Vec<_>>(), vec![1, 3]);
        assert!(failed[1].1.contains("Confluent"), "{failed:?}");
        assert_eq!(cols[0].as_primitive::<t::Int64Type>().values(), &[1, 2]);
        assert!(cols[1].is_null(1));
        assert_eq!(cols[1].as_string::<i32>().value(0), "n");
        assert_eq!(
            cols[2]
                .as_primitive::<t::TimestampMillisecondType>()
                .values(),
            &[5, 6]
        );
    }

    #[test]
    fn nested_values_become_json_text() {
        let dec = DatumDecoder::new(
            r#"{"type":"record","name":"r","fields":[
                {"name":"tags","type":{"type":"array","items":"string"}},
                {"name":"kind","type":{"type":"enum","name":"k","symbols":["a","b"]}}]}"#,
            Wire::Plain,
        )
        .unwrap();
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"r","fields":[
                {"name":"tags","type":{"type":"array","items":"string"}},
                {"name":"kind","type":{"type":"enum","name":"k","symbols":["a","b"]}}]}"#,
        )
        .unwrap();
        let datum = GenericDatumWriter::builder(&schema)
            .build()
            .unwrap()
            .write_value_to_vec(Value::Record(vec![
                (
                    "tags".into(),
                    Value::Array(vec![Value::String("x".into()), Value::String("y".into())]),
                ),
                ("kind".into(), Value::Enum(1, "b".into())),
            ]))
            .unwrap();
        let (cols, kept, _) = dec.decode(&[&datum]);
        assert_eq!(kept, vec![0]);
        assert_eq!(cols[0].as_string::<i32>().value(0), r#"["x","y"]"#);
        assert_eq!(cols[1].as_string::<i32>().value(0), "b");
        assert!(DatumDecoder::new(r#""string""#, Wire::Plain)
            .err()
            .unwrap()
            .contains("record"));
    }
}
