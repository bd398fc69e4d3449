//! Encoding record batches into one object's bytes a piece at a time, so an object of any size is
//! uploaded in parts while it is being encoded (memory stays at about a part and a row group).

use crate::avro;
use crate::config::Compression;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use sluice_core::arrow::array::RecordBatch;
use sluice_core::arrow::datatypes::SchemaRef;
use sluice_core::{Error, Format, Result};
use std::io::Write;
use std::sync::{Arc, Mutex};

/// A Parquet row group is closed once its buffers hold this much.
const ROW_GROUP_BYTES: usize = 64 << 20;

/// The bytes encoded so far and not yet taken: the writer end every encoder writes into.
#[derive(Clone, Default)]
struct Pending(Arc<Mutex<Vec<u8>>>);

impl Write for Pending {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A text encoder's output, compressed or not.
enum Text {
    Plain(Pending),
    Gzip(flate2::write::GzEncoder<Pending>),
    Zstd(zstd::stream::write::Encoder<'static, Pending>),
}

impl Write for Text {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Text::Plain(w) => w.write(buf),
            Text::Gzip(w) => w.write(buf),
            Text::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Text::Plain(w) => w.flush(),
            Text::Gzip(w) => w.flush(),
            Text::Zstd(w) => w.flush(),
        }
    }
}

impl Text {
    fn finish(self) -> std::io::Result<()> {
        match self {
            Text::Plain(_) => Ok(()),
            Text::Gzip(w) => w.finish().map(drop),
            Text::Zstd(w) => w.finish().map(drop),
        }
    }
}

#[allow(clippy::large_enum_variant)] // one per object being written
enum Inner {
    Parquet(ArrowWriter<Pending>),
    Json(sluice_core::arrow::json::LineDelimitedWriter<Text>),
    Csv(sluice_core::arrow::csv::Writer<Text>),
    Avro(avro::Encoder),
    /// Arrow IPC stream: batches staged for a file that spans batches.
    Ipc(sluice_core::arrow::ipc::writer::StreamWriter<Pending>),
}

/// One object's encoder.
pub struct Encoder {
    inner: Inner,
    out: Pending,
    rows: u64,
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::msg(format!("encoding failed: {e}"))
}

impl Encoder {
    pub fn new(
        format: Format,
        compression: Option<Compression>,
        row_group_rows: usize,
        schema: &SchemaRef,
        seed: &str,
    ) -> Result<Encoder> {
        let out = Pending::default();
        let text = || -> Result<Text> {
            Ok(match compression {
                None | Some(Compression::None) => Text::Plain(out.clone()),
                Some(Compression::Gzip) => Text::Gzip(flate2::write::GzEncoder::new(
                    out.clone(),
                    flate2::Compression::default(),
                )),
                Some(Compression::Zstd) => {
                    Text::Zstd(zstd::stream::write::Encoder::new(out.clone(), 3).map_err(err)?)
                }
                Some(c) => return Err(err(format!("{c:?} is not a compression for text"))),
            })
        };
        let inner = match format {
            Format::Parquet => {
                use parquet::basic::{Compression as C, GzipLevel, ZstdLevel};
                let codec = match compression {
                    None | Some(Compression::Zstd) => C::ZSTD(ZstdLevel::default()),
                    Some(Compression::Snappy) => C::SNAPPY,
                    Some(Compression::Gzip) => C::GZIP(GzipLevel::default()),
                    Some(Compression::None) => C::UNCOMPRESSED,
                    Some(Compression::Deflate) => {
                        return Err(err("deflate is not a Parquet codec"))
                    }
                };
                let props = WriterProperties::builder()
                    .set_compression(codec)
                    .set_max_row_group_row_count(Some(row_group_rows.max(1)))
                    .build();
                Inner::Parquet(
                    ArrowWriter::try_new(out.clone(), schema.clone(), Some(props)).map_err(err)?,
                )
            }
            Format::Json => {
                Inner::Json(sluice_core::arrow::json::LineDelimitedWriter::new(text()?))
            }
            Format::Csv => Inner::Csv(
                sluice_core::arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(text()?),
            ),
            Format::Avro => Inner::Avro(avro::Encoder::new(schema, compression, seed)?),
            other => return Err(err(format!("{other} is not a file format"))),
        };
        Ok(Encoder {
            inner,
            out,
            rows: 0,
        })
    }

    /// The staging encoder: Arrow IPC, read back when the file is rolled.
    pub fn staging(schema: &SchemaRef) -> Result<Encoder> {
        let out = Pending::default();
        let w = sluice_core::arrow::ipc::writer::StreamWriter::try_new(out.clone(), schema)
            .map_err(err)?;
        Ok(Encoder {
            inner: Inner::Ipc(w),
            out,
            rows: 0,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        match &mut self.inner {
            Inner::Parquet(w) => {
                w.write(batch).map_err(err)?;
                if w.in_progress_size() >= ROW_GROUP_BYTES {
                    w.flush().map_err(err)?;
                }
            }
            Inner::Json(w) => w.write(batch).map_err(err)?,
            Inner::Csv(w) => w.write(batch).map_err(err)?,
            Inner::Avro(w) => {
                let mut out = self.out.clone();
                w.write(batch, &mut out)?
            }
            Inner::Ipc(w) => w.write(batch).map_err(err)?,
        }
        Ok(())
    }

    /// The bytes encoded since the last call.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut *self.out.0.lock().unwrap())
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Ends the object (footers, trailers); returns the last bytes.
    pub fn finish(self, schema: &SchemaRef) -> Result<Vec<u8>> {
        match self.inner {
            Inner::Parquet(w) => {
                w.close().map_err(err)?;
            }
            Inner::Json(mut w) => {
                w.finish().map_err(err)?;
                w.into_inner().finish().map_err(err)?;
            }
            Inner::Csv(mut w) => {
                if self.rows == 0 {
                    // The header, for an empty file.
                    w.write(&RecordBatch::new_empty(schema.clone()))
                        .map_err(err)?;
                }
                w.into_inner().finish().map_err(err)?;
            }
            Inner::Avro(w) => {
                let mut out = self.out.clone();
                w.finish(&mut out)?;
            }
            Inner::Ipc(mut w) => w.finish().map_err(err)?,
        }
        Ok(std::mem::take(&mut *self.out.0.lock().unwrap()))
    }
}

/// The file extension, with the text compression's.
pub fn extension(format: Format, compression: Option<Compression>) -> String {
    let base = format.name();
    match (format, compression) {
        (Format::Json | Format::Csv, Some(Compression::Gzip)) => format!("{base}.gz"),
        (Format::Json | Format::Csv, Some(Compression::Zstd)) => format!("{base}.zst"),
        _ => base.to_string(),
    }
}

/// Which compressions each format takes, for config checks.
pub fn allowed(format: Format) -> &'static [Compression] {
    use Compression::*;
    match format {
        Format::Parquet => &[Zstd, Snappy, Gzip, None],
        Format::Json | Format::Csv => &[None, Gzip, Zstd],
        Format::Avro => &[None, Deflate],
        Format::Text | Format::Raw => &[],
    }
}
