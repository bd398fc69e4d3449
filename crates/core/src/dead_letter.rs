//! Records that could not be decoded or arrived too late: counted, and routed to the dead-letter
//! output when the app configures one.

use arrow::array::{ArrayRef, Int64Builder, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use std::sync::{Arc, Mutex};

/// One rejected record.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The source or job that rejected it.
    pub origin: String,
    /// Why: `"json: expected value at line 1 column 1"`, `"late: event time before watermark"`.
    pub reason: String,
    /// The record as received (raw text), or a JSON rendering of a typed row.
    pub payload: String,
}

/// A shared, thread-safe collector of dead letters; the engine drains it once per batch.
#[derive(Clone, Default)]
pub struct DeadLetters {
    inner: Arc<Mutex<Vec<DeadLetter>>>,
}

impl DeadLetters {
    pub fn push(&self, dl: DeadLetter) {
        self.inner.lock().unwrap().push(dl);
    }
    pub fn extend(&self, dls: impl IntoIterator<Item = DeadLetter>) {
        self.inner.lock().unwrap().extend(dls);
    }
    pub fn take(&self) -> Vec<DeadLetter> {
        std::mem::take(&mut *self.inner.lock().unwrap())
    }

    pub fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("batch_time", DataType::Int64, false),
            Field::new("origin", DataType::Utf8, false),
            Field::new("reason", DataType::Utf8, false),
            Field::new("payload", DataType::Utf8, false),
        ]))
    }

    /// The dead letters of one batch as a record batch with [`DeadLetters::schema`].
    pub fn to_batch(batch_time: i64, dls: &[DeadLetter]) -> RecordBatch {
        let mut t = Int64Builder::new();
        let (mut o, mut r, mut p) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        for d in dls {
            t.append_value(batch_time);
            o.append_value(&d.origin);
            r.append_value(&d.reason);
            p.append_value(&d.payload);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(t.finish()),
            Arc::new(o.finish()),
            Arc::new(r.finish()),
            Arc::new(p.finish()),
        ];
        RecordBatch::try_new(Self::schema(), cols).expect("dead letter schema matches")
    }
}
