//! Record batches to bytes and back (the Arrow IPC stream format).

use crate::{Error, Result};
use arrow::ipc::reader::{StreamDecoder, StreamReader};
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;

/// Append `batch` to `out` as an IPC stream.
pub fn write_into(out: &mut Vec<u8>, batch: &RecordBatch) -> Result<()> {
    let mut w = StreamWriter::try_new(out, &batch.schema()).map_err(arrow_err)?;
    w.write(batch).map_err(arrow_err)?;
    w.finish().map_err(arrow_err)
}

pub fn write(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    write_into(&mut out, batch)?;
    Ok(out)
}

/// Read one batch (several written batches are concatenated).
pub fn read(bytes: &[u8]) -> Result<RecordBatch> {
    let r = StreamReader::try_new(bytes, None).map_err(arrow_err)?;
    let schema = r.schema();
    let batches = r.collect::<Result<Vec<_>, _>>().map_err(arrow_err)?;
    arrow::compute::concat_batches(&schema, &batches).map_err(arrow_err)
}

/// [`read`] without copying: the batch's buffers point into `bytes`.
pub fn read_owned(bytes: Vec<u8>) -> Result<RecordBatch> {
    let mut buf = arrow::buffer::Buffer::from_vec(bytes);
    let mut decoder = StreamDecoder::new();
    let mut batches = Vec::new();
    while !buf.is_empty() {
        if let Some(b) = decoder.decode(&mut buf).map_err(arrow_err)? {
            batches.push(b);
        }
    }
    decoder.finish().map_err(arrow_err)?;
    match batches.len() {
        1 => Ok(batches.pop().expect("one")),
        0 => Err(Error::msg("a stored batch holds no data")),
        _ => arrow::compute::concat_batches(&batches[0].schema(), &batches).map_err(arrow_err),
    }
}

fn arrow_err(e: arrow::error::ArrowError) -> Error {
    Error::msg(format!("cannot encode or decode a stored batch: {e}"))
}
