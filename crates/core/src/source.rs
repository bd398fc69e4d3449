//! The source side of a pipeline.
//!
//! A source is either a **receiver** (push: socket, generator, MQTT, Flume push) whose task writes
//! blocks of records through a [`BlockWriter`] that the engine owns (in memory, or the write-ahead log),
//! or a **replayable** source (pull: files, Kafka, Kinesis) that the engine asks, once per batch, for
//! the exact range of input of that batch and then to read that range — so a batch can be re-run with
//! identical inputs.

use crate::dead_letter::DeadLetters;
use crate::error::Result;
use crate::time::BatchTime;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::fmt;

/// What a source can promise about delivery (see the reliability table in the design).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guarantee {
    /// Input can be read again from offsets recorded in the batch plan.
    Replayable,
    /// The peer resends until we acknowledge; we acknowledge once the block is durable.
    Acknowledged,
    /// The peer never resends: no loss once received.
    Unacknowledged,
}

impl fmt::Display for Guarantee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Guarantee::Replayable => "replayable",
            Guarantee::Acknowledged => "acknowledged",
            Guarantee::Unacknowledged => "unacknowledged",
        })
    }
}

/// A receiver's connection state, shown in logs (and later the UI).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverStatus {
    Starting,
    Connected(String),
    Retrying { attempt: u32, error: String },
    Stopped,
}

/// Resolves once an appended block is durable (see [`BlockWriter::append_at`]).
pub type WhenDurable<'a> = futures::future::BoxFuture<'a, Result<()>>;

/// The engine's side of a receiver: where received blocks go.
#[async_trait]
pub trait BlockWriter: Send + Sync {
    /// Store one block of received records. Resolves once the block is stored as durably as the
    /// engine is configured to (the receiver acknowledges upstream only after that). Waits while the
    /// engine applies backpressure, so a receiver that awaits this stops reading its peer.
    async fn store(&self, block: RecordBatch) -> Result<()> {
        self.store_at(block, serde_json::Value::Null).await
    }
    /// [`BlockWriter::store`], with the receiver's position after this block (e.g. the next record
    /// number of a generator). The position is kept with the block, and after a restart
    /// [`BlockWriter::resume_position`] returns the last durable one.
    async fn store_at(&self, block: RecordBatch, position: serde_json::Value) -> Result<()>;
    /// [`BlockWriter::store_at`] without waiting for durability, for receivers whose peer gets no
    /// acknowledgement (socket, generator): several blocks can be on their way to the disk at once.
    /// Still waits under backpressure. A block is planned into a batch only once durable.
    async fn push_at(&self, block: RecordBatch, position: serde_json::Value) -> Result<()> {
        self.store_at(block, position).await
    }
    /// [`BlockWriter::store_at`] in two steps, for acknowledging receivers that keep reading while
    /// earlier blocks are being synced: returns once the block is appended (in call order, after
    /// any backpressure wait), with a future that resolves when it is durable — the moment to
    /// acknowledge its records upstream.
    async fn append_at(
        &self,
        block: RecordBatch,
        position: serde_json::Value,
    ) -> Result<WhenDurable<'_>> {
        self.store_at(block, position).await?;
        Ok(Box::pin(async { Ok(()) }))
    }
    /// The position stored with the last durable block before a restart, if any: a receiver that
    /// can regenerate its input (the generator) continues after it instead of starting over.
    fn resume_position(&self) -> Option<serde_json::Value> {
        None
    }
    /// Under a rate limit, the most records a block should hold so the limit paces the receiver
    /// smoothly (None: no limit). Receivers cut their blocks at this size when they can.
    fn block_budget(&self) -> Option<usize> {
        None
    }
    /// Where undecodable records go.
    fn dead_letters(&self) -> &DeadLetters;
    /// Report a connection state change.
    fn set_status(&self, status: ReceiverStatus);
    /// Whether the engine asked receivers to stop.
    fn is_stopping(&self) -> bool;
    /// Resolves when the engine asks receivers to stop.
    async fn stopped(&self);
}

/// A push source: runs as a task until the engine stops it.
#[async_trait]
pub trait Receiver: Send {
    async fn run(self: Box<Self>, out: std::sync::Arc<dyn BlockWriter>) -> Result<()>;
}

/// A pull source whose input per batch is a recorded, re-readable range.
///
/// Its range and position are its own types; the engine stores them (as JSON) in the batch plan
/// and the checkpoint, and gives them back typed. Keep their serialized form stable: a checkpoint
/// written by an older build is read with it.
#[async_trait]
pub trait ReplayableSource: Send + 'static {
    /// The input of one batch (e.g. offset ranges per partition, a list of files).
    type Range: Serialize + DeserializeOwned + Send + Sync;
    /// Where the source stands (e.g. the next offsets, the files already planned).
    type Position: Serialize + DeserializeOwned + Send + Sync;
    /// Decide the input of the batch ending at `time` (at most `max_records` if set). The returned
    /// range is recorded in the batch plan; it must be re-readable by [`ReplayableSource::read`].
    async fn plan(&mut self, time: BatchTime, max_records: Option<u64>) -> Result<Self::Range>;
    /// Read exactly the records of a planned range.
    async fn read(&mut self, range: &Self::Range, dead: &DeadLetters) -> Result<Vec<RecordBatch>>;
    /// The batch that consumed `range` is committed: positions before it will never be read again.
    async fn commit(&mut self, _range: &Self::Range) -> Result<()> {
        Ok(())
    }
    /// Only these columns (by name) are read by the jobs: the source may leave the others null
    /// rather than decode them. The schema stays the same. Called once, before the first batch.
    fn project(&mut self, _columns: &std::collections::BTreeSet<String>) {}
    /// Called once when the gateway starts and finds no position of this source in the
    /// checkpoint (a first start, or no checkpoint): fix where its input begins — the files that
    /// already exist, each partition's offset — and return that position. The engine records it
    /// durably before any batch, and a restart that finds no batch plan yet gives it back through
    /// [`ReplayableSource::restore`] instead of calling this again, so input that arrives after
    /// the first start is never skipped, whenever the first batch is planned. None: the source
    /// has no such origin.
    async fn origin(&mut self) -> Result<Option<Self::Position>> {
        Ok(None)
    }
    /// Called once before the first batch is planned (after any re-runs of batches planned
    /// before a restart): connect and start reading ahead, so the first batch has input.
    async fn prepare(&mut self) -> Result<()> {
        Ok(())
    }
    /// A bounded source (a backfill) that will plan nothing more: once every source is exhausted
    /// the gateway stops after the batch in flight.
    fn exhausted(&self) -> bool {
        false
    }
    /// Where the source stands after its last [`ReplayableSource::plan`]. Recorded with every
    /// batch plan.
    fn position(&self) -> Self::Position;
    /// After a restart: continue from a position [`ReplayableSource::position`] (or
    /// [`ReplayableSource::origin`]) returned, so the next plan starts right after the last
    /// recorded one.
    fn restore(&mut self, position: Self::Position) -> Result<()>;
}

/// A [`ReplayableSource`] as the engine holds it: ranges and positions in their stored (JSON)
/// form. Every `ReplayableSource` is one.
#[async_trait]
pub trait AnyReplayable: Send {
    async fn plan(&mut self, time: BatchTime, max_records: Option<u64>) -> Result<Value>;
    async fn read(&mut self, range: &Value, dead: &DeadLetters) -> Result<Vec<RecordBatch>>;
    async fn commit(&mut self, range: &Value) -> Result<()>;
    fn project(&mut self, columns: &std::collections::BTreeSet<String>);
    /// Null: no origin.
    async fn origin(&mut self) -> Result<Value>;
    async fn prepare(&mut self) -> Result<()>;
    fn exhausted(&self) -> bool;
    fn position(&self) -> Value;
    fn restore(&mut self, position: &Value) -> Result<()>;
}

fn stored<T: Serialize>(v: T) -> Value {
    serde_json::to_value(v).expect("a range or position serializes to JSON")
}

fn typed<T: DeserializeOwned>(what: &str, v: &Value) -> Result<T> {
    serde_json::from_value(v.clone())
        .map_err(|e| crate::Error::msg(format!("unreadable {what} {v} in the checkpoint: {e}")))
}

#[async_trait]
impl<S: ReplayableSource> AnyReplayable for S {
    async fn plan(&mut self, time: BatchTime, max_records: Option<u64>) -> Result<Value> {
        Ok(stored(
            ReplayableSource::plan(self, time, max_records).await?,
        ))
    }
    async fn read(&mut self, range: &Value, dead: &DeadLetters) -> Result<Vec<RecordBatch>> {
        let range: S::Range = typed("range", range)?;
        ReplayableSource::read(self, &range, dead).await
    }
    async fn commit(&mut self, range: &Value) -> Result<()> {
        let range: S::Range = typed("range", range)?;
        ReplayableSource::commit(self, &range).await
    }
    fn project(&mut self, columns: &std::collections::BTreeSet<String>) {
        ReplayableSource::project(self, columns)
    }
    async fn origin(&mut self) -> Result<Value> {
        Ok(ReplayableSource::origin(self)
            .await?
            .map_or(Value::Null, stored))
    }
    async fn prepare(&mut self) -> Result<()> {
        ReplayableSource::prepare(self).await
    }
    fn exhausted(&self) -> bool {
        ReplayableSource::exhausted(self)
    }
    fn position(&self) -> Value {
        stored(ReplayableSource::position(self))
    }
    fn restore(&mut self, position: &Value) -> Result<()> {
        let position: S::Position = typed("position", position)?;
        ReplayableSource::restore(self, position)
    }
}

pub enum SourceRuntime {
    Receiver(Box<dyn Receiver>),
    Replayable(Box<dyn AnyReplayable>),
}

impl SourceRuntime {
    pub fn replayable(source: impl ReplayableSource) -> SourceRuntime {
        SourceRuntime::Replayable(Box::new(source))
    }
}

/// What a source factory returns: the schema of the records, the delivery promise and the runtime.
pub struct BuiltSource {
    pub schema: SchemaRef,
    pub guarantee: Guarantee,
    pub runtime: SourceRuntime,
    /// What this source cannot promise beyond its guarantee, in a sentence: `sluice validate`
    /// prints it under each of its paths and the gateway logs it at start.
    pub caveat: Option<String>,
}
