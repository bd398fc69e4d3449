//! One message per row, for the sinks that write messages (Kafka, MQTT): a row as a JSON object,
//! as a CSV line (no header, no line end), or a column's value as bytes. Each row is encoded on
//! its own, so a value holding a line break stays in its row.

use arrow::array::{Array, ArrayRef, AsArray, StructArray};
use arrow::datatypes::{DataType, Field, Fields};
use arrow::error::ArrowError;
use arrow::json::writer::{make_encoder, EncoderOptions};
use arrow::record_batch::RecordBatch;
use std::sync::Arc;

/// Each row as a JSON object (nulls left out), as `encode_json_lines` writes it, without the
/// line end.
pub fn json_rows(batch: &RecordBatch) -> Result<Vec<Vec<u8>>, ArrowError> {
    let rows = StructArray::from(batch.clone());
    let field = Arc::new(Field::new_struct(
        "row",
        Fields::from(batch.schema().fields().to_vec()),
        false,
    ));
    let options = EncoderOptions::default();
    let mut encoder = make_encoder(&field, &rows, &options)?;
    let mut out = Vec::with_capacity(batch.num_rows());
    for r in 0..batch.num_rows() {
        let mut row = Vec::new();
        encoder.encode(r, &mut row);
        out.push(row);
    }
    Ok(out)
}

/// Each row as a CSV line without a header or line end.
pub fn csv_rows(batch: &RecordBatch) -> Result<Vec<Vec<u8>>, ArrowError> {
    let mut buf = Vec::new();
    let mut ends = Vec::with_capacity(batch.num_rows());
    for r in 0..batch.num_rows() {
        arrow::csv::WriterBuilder::new()
            .with_header(false)
            .build(&mut buf)
            .write(&batch.slice(r, 1))?;
        ends.push(buf.len());
    }
    let mut out = Vec::with_capacity(ends.len());
    let mut start = 0;
    for end in ends {
        let mut row = &buf[start..end];
        if let Some(stripped) = row.strip_suffix(b"\n") {
            row = stripped;
        }
        out.push(row.to_vec());
        start = end;
    }
    Ok(out)
}

/// Each value of `column` as bytes: binary as it is, any other type as its text (a null: empty).
pub fn column_bytes(column: &ArrayRef) -> Result<Vec<Vec<u8>>, ArrowError> {
    Ok(match column.data_type() {
        DataType::Binary => {
            let a = column.as_binary::<i32>();
            (0..a.len()).map(|r| a.value(r).to_vec()).collect()
        }
        _ => {
            let s = arrow::compute::cast(column, &DataType::Utf8)?;
            let a = s.as_string::<i32>();
            (0..a.len())
                .map(|r| a.value(r).as_bytes().to_vec())
                .collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::Schema;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])),
                Arc::new(StringArray::from(vec![Some("a"), Some("two\nlines"), None])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn json_rows_are_the_json_lines_of_the_batch() {
        let b = batch();
        let lines = crate::encode_json_lines(std::slice::from_ref(&b)).unwrap();
        let expected: Vec<Vec<u8>> = lines
            .split(|c| *c == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        assert_eq!(json_rows(&b).unwrap(), expected);
        assert_eq!(json_rows(&b).unwrap()[1], br#"{"s":"two\nlines"}"#.to_vec());
    }

    #[test]
    fn a_csv_value_with_a_line_break_stays_in_its_row() {
        let rows = csv_rows(&batch()).unwrap();
        assert_eq!(
            rows,
            vec![b"1,a".to_vec(), b",\"two\nlines\"".to_vec(), b"3,".to_vec()]
        );
    }

    #[test]
    fn column_bytes_casts_to_text() {
        let b = batch();
        assert_eq!(
            column_bytes(b.column(0)).unwrap(),
            vec![b"1".to_vec(), b"".to_vec(), b"3".to_vec()]
        );
    }
}
