//! The sink side: a sink receives the output of one job for one batch and writes it so that writing
//! the same (job, batch time) again replaces rather than duplicates.

use crate::error::Result;

use crate::time::BatchTime;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;

/// The output of one job for one batch.
pub struct SinkBatch<'a> {
    pub job: &'a str,
    pub time: BatchTime,
    pub schema: SchemaRef,
    pub batches: &'a [RecordBatch],
    /// True when this batch is being re-run after a restart.
    pub rerun: bool,
    /// Where rows the sink cannot write go (a partition value no folder name can hold, a topic
    /// with a wildcard), with the reason: they are skipped, not fatal, and not lost.
    pub dead: &'a crate::DeadLetters,
}

impl SinkBatch<'_> {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

#[async_trait]
pub trait Sink: Send {
    /// Called once before the first batch: connect and check what can be checked (the endpoint
    /// answers, the bucket exists, the credentials are accepted), so a bad setup stops the gateway
    /// at start with a clear error rather than at the first batch.
    async fn open(&mut self) -> Result<()> {
        Ok(())
    }
    async fn write(&mut self, batch: SinkBatch<'_>) -> Result<()>;
    /// Whether writing the same (job, batch time) twice leaves one copy.
    fn idempotent(&self) -> bool;
    /// Whether a write can vanish without an error because the peer never confirms it (MQTT QoS
    /// 0): the path is then at-most-once whatever the source, and `validate` says so.
    fn unconfirmed(&self) -> bool {
        false
    }
    /// The option (a key under the sink's table) that names this sink's output the same whatever
    /// the job writing it, if it is set — e.g. the file sink's `prefix`. Such a sink serves one
    /// writer: the gateway refuses a config where two jobs, or a job and the dead-letter output,
    /// would write under the same names and overwrite each other.
    fn fixed_name_option(&self) -> Option<&'static str> {
        None
    }
    async fn close(&mut self) -> Result<()> {
        Ok(())
    }
}
