//! Event-time windows with a watermark (Structured Streaming's append mode, on micro-batches).
//!
//! Rows wait in a buffer until every window that holds them is final. The watermark is the largest
//! event time seen minus the allowed delay; a window `[start, end)` is emitted once, in the batch
//! where the watermark reaches `end`. Rows whose event time is below the watermark of the previous
//! batch (or NULL) are late: counted, and dropped or sent to the dead-letter output.
//!
//! One record dated far ahead would move the watermark there for good and make every later row
//! late, so a row more than `max_future` after the batch time (the processing clock, recorded in
//! the plan, so a re-run decides the same) is an outlier: it never moves the watermark and goes to
//! the dead-letter output. So does a time outside ±[`TIME_LIMIT`], where window arithmetic would
//! overflow.

use sluice_core::arrow::array::BooleanArray;
use sluice_core::arrow::array::{
    Array, AsArray, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use sluice_core::arrow::compute::{cast, filter_record_batch, take_record_batch};
use sluice_core::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use std::sync::Arc;

/// Event times beyond ± this many ms (about ±285,000 years) are outliers.
pub const TIME_LIMIT: i64 = 1 << 53;

/// Where a row stands against the watermark and `max_future`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Row {
    OnTime,
    Late,
    Outlier,
}

pub struct EventTime {
    pub table: String,
    column: usize,
    length: i64,
    slide: i64,
    delay: i64,
    max_future: i64,
    buffer: Vec<RecordBatch>,
    max_ts: Option<i64>,
    watermark: Option<i64>,
    out_schema: SchemaRef,
}

/// The input schema with `window_start` and `window_end` appended.
pub fn windowed_schema(input: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    fields.push(Field::new("window_start", ts.clone(), false));
    fields.push(Field::new("window_end", ts, false));
    Arc::new(Schema::new(fields))
}

pub struct Processed {
    /// Rows of the windows that closed in this batch, with window columns; None if none closed.
    pub closed: Option<Vec<RecordBatch>>,
    /// Late rows (input schema).
    pub late: Vec<RecordBatch>,
    /// Rows dated more than `max_future` after the batch time, or out of range (input schema).
    pub future: Vec<RecordBatch>,
}

impl EventTime {
    pub fn new(
        table: &str,
        schema: SchemaRef,
        column: usize,
        length: i64,
        slide: i64,
        delay: i64,
        max_future: i64,
    ) -> Self {
        EventTime {
            table: table.to_string(),
            column,
            length,
            slide,
            delay,
            max_future,
            buffer: Vec::new(),
            max_ts: None,
            watermark: None,
            out_schema: windowed_schema(&schema),
        }
    }

    fn times(&self, b: &RecordBatch) -> Vec<Option<i64>> {
        let col = b.column(self.column);
        let col = match col.data_type() {
            DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Int64 => col.clone(),
            _ => cast(col, &DataType::Timestamp(TimeUnit::Millisecond, None))
                .expect("validated type"),
        };
        let ints = cast(&col, &DataType::Int64).expect("timestamp to int64");
        ints.as_primitive::<Int64Type>().iter().collect()
    }

    /// Buffer the rows of batch `now`; emit the windows the new watermark closes.
    pub fn process(&mut self, input: Vec<RecordBatch>, now: i64) -> Processed {
        let mut late = Vec::new();
        let mut future = Vec::new();
        let limit = now.saturating_add(self.max_future).min(TIME_LIMIT);
        let wm = self.watermark;
        // Each row once: an outlier, on time (at or after the watermark; any time before the
        // first), or late (before it, or NULL).
        let class = |t: &Option<i64>| match *t {
            Some(t) if t > limit || t < -TIME_LIMIT => Row::Outlier,
            Some(t) if wm.is_none_or(|w| t >= w) => Row::OnTime,
            _ => Row::Late,
        };
        for b in input {
            let ts = self.times(&b);
            let rows: Vec<Row> = ts.iter().map(class).collect();
            let mask =
                |kind: Row| -> BooleanArray { rows.iter().map(|r| Some(*r == kind)).collect() };
            if rows.contains(&Row::Outlier) {
                future.push(filter_record_batch(&b, &mask(Row::Outlier)).expect("same length"));
            }
            if rows.contains(&Row::Late) {
                late.push(filter_record_batch(&b, &mask(Row::Late)).expect("same length"));
            }
            let on_time = ts.iter().zip(&rows).filter(|(_, r)| **r == Row::OnTime);
            if let Some(m) = on_time.filter_map(|(t, _)| *t).max() {
                self.max_ts = Some(self.max_ts.map_or(m, |old| old.max(m)));
            }
            let kept = filter_record_batch(&b, &mask(Row::OnTime)).expect("same length");
            if kept.num_rows() > 0 {
                self.buffer.push(kept);
            }
        }
        let Some(max_ts) = self.max_ts else {
            return Processed {
                closed: None,
                late,
                future,
            };
        };
        let new_wm = max_ts.saturating_sub(self.delay);
        let old_wm = self.watermark;
        if old_wm.is_some_and(|o| new_wm <= o) {
            return Processed {
                closed: None,
                late,
                future,
            };
        }
        let mut closed = Vec::new();
        let mut remaining = Vec::new();
        for b in std::mem::take(&mut self.buffer) {
            let ts = self.times(&b);
            let mut idx = Vec::new();
            let mut starts = Vec::new();
            let mut keep = Vec::with_capacity(ts.len());
            for (i, t) in ts.iter().enumerate() {
                let t = t.expect("null times are late");
                // |t| <= TIME_LIMIT (outliers never reach the buffer): none of this overflows.
                let last_start = t.div_euclid(self.slide) * self.slide;
                let mut start = last_start;
                while start.saturating_add(self.length) > t {
                    let end = start.saturating_add(self.length);
                    if end <= new_wm && old_wm.is_none_or(|o| end > o) {
                        idx.push(i as u32);
                        starts.push(start);
                    }
                    start = start.saturating_sub(self.slide);
                }
                keep.push(last_start.saturating_add(self.length) > new_wm);
            }
            if !idx.is_empty() {
                let rows =
                    take_record_batch(&b, &UInt32Array::from(idx)).expect("indices in range");
                let ends: Vec<i64> = starts
                    .iter()
                    .map(|s| s.saturating_add(self.length))
                    .collect();
                let mut cols = rows.columns().to_vec();
                cols.push(Arc::new(TimestampMillisecondArray::from(starts)));
                cols.push(Arc::new(TimestampMillisecondArray::from(ends)));
                closed.push(
                    RecordBatch::try_new(self.out_schema.clone(), cols).expect("windowed schema"),
                );
            }
            let keep = BooleanArray::from(keep);
            if keep.true_count() > 0 {
                remaining.push(filter_record_batch(&b, &keep).expect("same length"));
            }
        }
        self.buffer = remaining;
        self.watermark = Some(new_wm);
        Processed {
            closed: if closed.is_empty() {
                None
            } else {
                Some(closed)
            },
            late,
            future,
        }
    }

    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// The buffered rows and the (max event time, watermark), for the checkpoint.
    pub fn snapshot(&self) -> (Option<RecordBatch>, [Option<i64>; 2]) {
        let buffer = self.buffer.first().map(|b| {
            sluice_core::arrow::compute::concat_batches(&b.schema(), &self.buffer)
                .expect("one schema")
        });
        (buffer, [self.max_ts, self.watermark])
    }

    /// Continue from a [`EventTime::snapshot`].
    pub fn restore(&mut self, buffer: Option<RecordBatch>, marks: [Option<i64>; 2]) {
        self.buffer = buffer.into_iter().filter(|b| b.num_rows() > 0).collect();
        self.max_ts = marks[0];
        self.watermark = marks[1];
    }
}
