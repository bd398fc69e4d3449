//! Turning a range's records into rows: the payload decoded by the shared decoder, then the
//! envelope columns; bad KPL aggregates and undecodable payloads go to the dead letters.

use super::feed::Rec;
use super::KinesisSource;
use arrow::array::{ArrayRef, Int64Builder, StringBuilder, TimestampMillisecondBuilder};
use arrow::datatypes::{DataType, Field, TimeUnit};
use arrow::record_batch::RecordBatch;
use sluice_core::{DeadLetter, DeadLetters, Result};
use std::sync::Arc;

/// Rows per output record batch.
pub(super) const CHUNK: usize = 32 * 1024;

/// Envelope columns, after the payload's.
pub(super) const ENVELOPE: &[&str] = &[
    "stream",
    "shard_id",
    "sequence_number",
    "sub_sequence_number",
    "partition_key",
    "approximate_arrival_timestamp",
];

pub(super) fn envelope_fields() -> Vec<Field> {
    vec![
        Field::new("stream", DataType::Utf8, false),
        Field::new("shard_id", DataType::Utf8, false),
        Field::new("sequence_number", DataType::Utf8, false),
        Field::new("sub_sequence_number", DataType::Int64, false),
        Field::new("partition_key", DataType::Utf8, false),
        Field::new(
            "approximate_arrival_timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
    ]
}

impl KinesisSource {
    pub(super) fn rows(
        &self,
        shard: &str,
        recs: &[Rec],
        dead: &DeadLetters,
    ) -> Result<RecordBatch> {
        let mut good: Vec<&Rec> = Vec::with_capacity(recs.len());
        for r in recs {
            match &r.bad {
                Some(why) => dead.push(self.dead_letter(shard, r, why)),
                None => good.push(r),
            }
        }
        let payloads: Vec<&[u8]> = good.iter().map(|r| r.data.as_slice()).collect();
        let decoded = self.decoder.decode(&payloads);
        for (i, why) in decoded.failed {
            dead.push(self.dead_letter(shard, good[i], &why));
        }
        let mut columns: Vec<ArrayRef> = decoded.columns;
        if self.cfg.envelope {
            let n = decoded.kept.len();
            let stream = &self.aws.stream;
            let mut streams = StringBuilder::with_capacity(n, n * stream.len());
            let mut shards = StringBuilder::with_capacity(n, n * shard.len());
            let mut seqs = StringBuilder::with_capacity(n, n * 56);
            let mut subs = Int64Builder::with_capacity(n);
            let mut keys = StringBuilder::with_capacity(n, n * 16);
            let mut arrivals = TimestampMillisecondBuilder::with_capacity(n);
            for &i in &decoded.kept {
                let r = good[i];
                streams.append_value(stream);
                shards.append_value(shard);
                seqs.append_value(&r.pos.seq);
                subs.append_value(r.pos.sub as i64);
                keys.append_value(&r.key);
                arrivals.append_option(r.arrival);
            }
            columns.push(Arc::new(streams.finish()));
            columns.push(Arc::new(shards.finish()));
            columns.push(Arc::new(seqs.finish()));
            columns.push(Arc::new(subs.finish()));
            columns.push(Arc::new(keys.finish()));
            columns.push(Arc::new(arrivals.finish()));
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    fn dead_letter(&self, shard: &str, r: &Rec, why: &str) -> DeadLetter {
        let shown = &r.data[..r.data.len().min(4096)];
        DeadLetter {
            origin: self.name.clone(),
            reason: format!(
                "{why} (stream {} shard {shard} sequence number {})",
                self.aws.stream, r.pos
            ),
            payload: String::from_utf8_lossy(shown).into_owned(),
        }
    }
}
