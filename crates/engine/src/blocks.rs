//! Where a receiver puts what it receives until a batch takes it.
//!
//! With a checkpoint directory every block is appended to the receiver's write-ahead log first, and
//! `store` resolves only once the block is durable — so a receiver acknowledges upstream only what a
//! restart can recover. Blocks are numbered; a batch plan records the range of numbers it took.
//!
//! `store` waits while the receiver's unplanned records exceed the buffer capacity or its rate
//! limit, so a receiver that awaits it stops reading its peer: backpressure reaches the socket
//! instead of memory.

use crate::rate::RateLimit;
use async_trait::async_trait;
use futures::future::{BoxFuture, FutureExt, Shared};
use sluice_core::arrow::record_batch::RecordBatch;
use sluice_core::{BlockWriter, DeadLetters, Error, ReceiverStatus, Result};
use sluice_wal::Log;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, Notify};

/// A block's sync: awaited by an acknowledging receiver, checked without waiting by batches.
type SharedWhenDurable = Shared<BoxFuture<'static, std::result::Result<(), String>>>;

fn durable(synced: oneshot::Receiver<Result<()>>) -> SharedWhenDurable {
    async move {
        match synced.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the WAL writer stopped".to_string()),
        }
    }
    .boxed()
    .shared()
}

/// Pushed blocks that may be on their way to the disk at once, per receiver.
const MAX_INFLIGHT: usize = 16;

/// A contiguous range of block numbers: `from..from + count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockRange {
    pub from: u64,
    pub count: u64,
}

impl BlockRange {
    pub fn end(&self) -> u64 {
        self.from + self.count
    }
}

struct Pending {
    /// Blocks received before a restart and not yet planned: numbers `cursor..disk_end`, read
    /// from the log one segment at a time as batches take them.
    disk_end: u64,
    /// The read part of that backlog not yet taken.
    loaded: VecDeque<(u64, RecordBatch)>,
    /// Durable blocks not yet planned, by number.
    blocks: BTreeMap<u64, RecordBatch>,
    /// The first number the next batch takes.
    cursor: u64,
    /// Next number handed out without a log.
    next: u64,
}

pub struct ReceiverBlocks {
    name: String,
    log: Option<Arc<Log>>,
    pending: Mutex<Pending>,
    /// Pushed blocks on their way to the disk, oldest first.
    inflight: Mutex<VecDeque<(u64, RecordBatch, SharedWhenDurable)>>,
    buffered: AtomicUsize,
    capacity: usize,
    /// The same in bytes (Arrow memory of the blocks held).
    buffered_bytes: AtomicUsize,
    capacity_bytes: usize,
    space: Notify,
    stopping: AtomicBool,
    stop: Notify,
    dead: DeadLetters,
    status: Mutex<ReceiverStatus>,
    resume: Option<serde_json::Value>,
    failed: Mutex<Option<String>>,
    pub rate: RateLimit,
    /// Blocks found in the log at start (received before a restart, not yet planned).
    pub recovered: usize,
}

impl ReceiverBlocks {
    /// `capacity` records or `capacity_bytes` bytes, whichever is reached first, may wait unplanned.
    pub fn new(
        name: &str,
        capacity: usize,
        capacity_bytes: usize,
        dead: DeadLetters,
        rate: RateLimit,
    ) -> Self {
        ReceiverBlocks {
            name: name.to_string(),
            log: None,
            pending: Mutex::new(Pending {
                disk_end: 0,
                loaded: VecDeque::new(),
                blocks: BTreeMap::new(),
                cursor: 0,
                next: 0,
            }),
            inflight: Mutex::new(VecDeque::new()),
            buffered: AtomicUsize::new(0),
            capacity,
            buffered_bytes: AtomicUsize::new(0),
            capacity_bytes,
            space: Notify::new(),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            dead,
            status: Mutex::new(ReceiverStatus::Starting),
            resume: None,
            failed: Mutex::new(None),
            rate,
            recovered: 0,
        }
    }

    /// Back the blocks with `log`. `cursor` is the first block no batch plan has taken (None: no
    /// plan took any); blocks from there on are already in the log (received before a restart) and
    /// go to the next batches, read from the log as they are taken (so a long backlog is never
    /// held in memory at once).
    pub fn with_log(
        mut self,
        log: Arc<Log>,
        cursor: Option<u64>,
        resume: Option<serde_json::Value>,
    ) -> Result<Self> {
        let end = log.next_seq();
        let first = log.first_seq();
        let p = self.pending.get_mut().unwrap();
        p.cursor = cursor.unwrap_or(first).min(end);
        p.disk_end = end;
        let recovered = (end - p.cursor) as usize;
        if recovered > 0 {
            tracing::info!(receiver = %self.name, blocks = recovered, "blocks received before the restart go to the next batches");
        }
        self.recovered = recovered;
        self.log = Some(log);
        self.resume = resume;
        Ok(self)
    }

    /// Take the durable blocks no batch has taken yet (the input of one batch) and their range.
    /// Of a backlog received before a restart, take about `max` records (at least one block).
    pub fn take(&self, max: Option<u64>) -> Result<(Vec<RecordBatch>, BlockRange)> {
        self.settle();
        let mut guard = self.pending.lock().unwrap();
        let p = &mut *guard;
        let from = p.cursor;
        let mut out = Vec::new();
        let mut from_disk = 0u64;
        while p.cursor < p.disk_end {
            if max.is_some_and(|m| from_disk >= m) && !out.is_empty() {
                break;
            }
            if p.loaded.is_empty() {
                let log = self.log.as_ref().expect("a backlog comes from a log");
                let entries = log.read_segment_from(p.cursor, p.disk_end)?;
                p.loaded = entries.into_iter().map(|e| (e.seq, e.batch)).collect();
            }
            let (seq, b) = p.loaded.pop_front().expect("loaded above");
            debug_assert_eq!(seq, p.cursor);
            from_disk += b.num_rows() as u64;
            out.push(b);
            p.cursor += 1;
        }
        let mut taken = 0;
        let mut taken_bytes = 0;
        if p.cursor >= p.disk_end {
            while let Some(b) = p.blocks.remove(&p.cursor) {
                taken += b.num_rows();
                taken_bytes += b.get_array_memory_size();
                out.push(b);
                p.cursor += 1;
            }
        }
        let range = BlockRange {
            from,
            count: p.cursor - from,
        };
        drop(guard);
        self.buffered.fetch_sub(taken, Ordering::SeqCst);
        self.buffered_bytes.fetch_sub(taken_bytes, Ordering::SeqCst);
        self.space.notify_waiters();
        Ok((out, range))
    }

    pub fn request_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_waiters();
        self.space.notify_waiters();
    }

    /// A block's sync finished with `r`: it becomes takeable, or the receiver has failed.
    fn landed(&self, seq: u64, block: RecordBatch, r: Result<()>) -> Result<()> {
        match r {
            Ok(()) => {
                self.pending.lock().unwrap().blocks.insert(seq, block);
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Wait for a block's sync, then [`ReceiverBlocks::landed`].
    async fn land(&self, seq: u64, block: RecordBatch, durable: SharedWhenDurable) -> Result<()> {
        let r = durable.await.map_err(Error::msg);
        self.landed(seq, block, r)
    }

    /// Move pushed blocks that became durable (in order) to the blocks a batch can take.
    fn settle(&self) {
        let mut inflight = self.inflight.lock().unwrap();
        while let Some((_, _, durable)) = inflight.front_mut() {
            let r = match durable.clone().now_or_never() {
                None => break,
                Some(r) => r.map_err(Error::msg),
            };
            let (seq, block, _) = inflight.pop_front().expect("front exists");
            // A failure is recorded; the next batch reports it.
            let _ = self.landed(seq, block, r);
        }
    }

    /// Wait until every pushed block is durable (before the last batch of a graceful stop).
    pub async fn flush(&self) {
        loop {
            let next = self.inflight.lock().unwrap().pop_front();
            let Some((seq, block, durable)) = next else {
                return;
            };
            // A failure is recorded; the last batch reports it.
            let _ = self.land(seq, block, durable).await;
        }
    }

    /// Wait for room (records and bytes) and the rate limit before storing `block`. Returns its
    /// size in bytes, for the caller to count once it holds the block.
    async fn admit(&self, block: &RecordBatch) -> Result<usize> {
        if let Some(e) = self.failure() {
            return Err(Error::msg(e));
        }
        let n = block.num_rows();
        let bytes = block.get_array_memory_size();
        loop {
            let notified = self.space.notified();
            let buffered = self.buffered.load(Ordering::SeqCst);
            let held = self.buffered_bytes.load(Ordering::SeqCst);
            if buffered == 0
                || (buffered + n <= self.capacity && held + bytes <= self.capacity_bytes)
                || self.stopping.load(Ordering::SeqCst)
            {
                break;
            }
            notified.await;
        }
        if !self.stopping.load(Ordering::SeqCst) {
            self.rate.acquire(n as u64).await;
        }
        Ok(bytes)
    }

    /// Why storing failed (the log could not be written), if it did.
    pub fn failure(&self) -> Option<String> {
        self.failed.lock().unwrap().clone()
    }

    /// Record a failure of this receiver: the next batch that takes from it reports it.
    pub(crate) fn fail(&self, e: Error) -> Error {
        *self.failed.lock().unwrap() = Some(e.to_string());
        e
    }
}

#[async_trait]
impl BlockWriter for ReceiverBlocks {
    async fn store_at(&self, block: RecordBatch, position: serde_json::Value) -> Result<()> {
        let n = block.num_rows();
        if n == 0 {
            return Ok(());
        }
        let bytes = self.admit(&block).await?;
        // Counted before it can be taken, so `take` never subtracts what was not added.
        self.buffered.fetch_add(n, Ordering::SeqCst);
        self.buffered_bytes.fetch_add(bytes, Ordering::SeqCst);
        match &self.log {
            Some(log) => {
                let (seq, synced) = log.append(&block, &position).map_err(|e| self.fail(e))?;
                self.land(seq, block, durable(synced)).await
            }
            None => {
                let mut p = self.pending.lock().unwrap();
                p.next += 1;
                let seq = p.next - 1;
                p.blocks.insert(seq, block);
                Ok(())
            }
        }
    }

    async fn append_at(
        &self,
        block: RecordBatch,
        position: serde_json::Value,
    ) -> Result<sluice_core::WhenDurable<'_>> {
        let n = block.num_rows();
        let Some(log) = &self.log else {
            self.store_at(block, position).await?;
            return Ok(Box::pin(async { Ok(()) }));
        };
        if n == 0 {
            return Ok(Box::pin(async { Ok(()) }));
        }
        let bytes = self.admit(&block).await?;
        self.buffered.fetch_add(n, Ordering::SeqCst);
        self.buffered_bytes.fetch_add(bytes, Ordering::SeqCst);
        let (seq, synced) = log.append(&block, &position).map_err(|e| self.fail(e))?;
        let synced = durable(synced);
        // Batches land it once synced (`take` settles), whether or not the receiver is waiting.
        self.inflight
            .lock()
            .unwrap()
            .push_back((seq, block, synced.clone()));
        self.settle();
        Ok(Box::pin(async move { synced.await.map_err(Error::msg) }))
    }

    async fn push_at(&self, block: RecordBatch, position: serde_json::Value) -> Result<()> {
        let n = block.num_rows();
        let Some(log) = &self.log else {
            return self.store_at(block, position).await;
        };
        if n == 0 {
            return Ok(());
        }
        let bytes = self.admit(&block).await?;
        let (seq, synced) = log.append(&block, &position).map_err(|e| self.fail(e))?;
        self.buffered.fetch_add(n, Ordering::SeqCst);
        self.buffered_bytes.fetch_add(bytes, Ordering::SeqCst);
        let full = {
            let mut inflight = self.inflight.lock().unwrap();
            inflight.push_back((seq, block, durable(synced)));
            inflight.len() > MAX_INFLIGHT
        };
        self.settle();
        if full {
            // Wait for the oldest, so at most MAX_INFLIGHT blocks are unsynced.
            let oldest = self.inflight.lock().unwrap().pop_front();
            if let Some((seq, block, durable)) = oldest {
                self.land(seq, block, durable).await?;
            }
        }
        Ok(())
    }

    fn block_budget(&self) -> Option<usize> {
        self.rate.block_budget()
    }

    fn resume_position(&self) -> Option<serde_json::Value> {
        self.resume.clone()
    }

    fn dead_letters(&self) -> &DeadLetters {
        &self.dead
    }

    fn set_status(&self, status: ReceiverStatus) {
        let mut s = self.status.lock().unwrap();
        if *s != status {
            match &status {
                ReceiverStatus::Retrying { attempt, error } => {
                    tracing::warn!(receiver = %self.name, attempt, %error, "receiver not connected; retrying")
                }
                ReceiverStatus::Connected(peer) => {
                    tracing::info!(receiver = %self.name, %peer, "receiver connected")
                }
                other => tracing::debug!(receiver = %self.name, status = ?other, "receiver status"),
            }
            *s = status;
        }
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    async fn stopped(&self) {
        loop {
            let n = self.stop.notified();
            if self.is_stopping() {
                return;
            }
            n.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::arrow::array::{AsArray, Int64Array};
    use sluice_core::arrow::datatypes::Int64Type;
    use sluice_wal::SyncPolicy;

    fn block(from: i64) -> RecordBatch {
        let col = Int64Array::from((from..from + 10).collect::<Vec<_>>());
        RecordBatch::try_from_iter([("n", Arc::new(col) as _)]).unwrap()
    }

    fn values(blocks: &[RecordBatch]) -> Vec<i64> {
        blocks
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect()
    }

    /// A backlog found in the log at start spans many segments; batches take it a bounded
    /// number of records at a time, in order, then go on with new blocks.
    #[tokio::test]
    async fn a_backlog_is_taken_from_the_log_in_bounded_batches() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = Log::open(dir.path(), SyncPolicy::EveryBlock, 2_000).unwrap();
            for i in 0..50 {
                let (_, durable) = log
                    .append(&block(i * 10), &serde_json::Value::Null)
                    .unwrap();
                durable.await.unwrap().unwrap();
            }
            log.close();
        }
        let (log, _) = Log::open(dir.path(), SyncPolicy::EveryBlock, 2_000).unwrap();
        assert!(log.segment_count() > 5, "{} segments", log.segment_count());
        let blocks = ReceiverBlocks::new(
            "r",
            1000,
            usize::MAX,
            DeadLetters::default(),
            RateLimit::new(None),
        )
        .with_log(Arc::new(log), Some(5), None)
        .unwrap();
        assert_eq!(blocks.recovered, 45);
        let (b, r) = blocks.take(Some(25)).unwrap();
        assert_eq!(r, BlockRange { from: 5, count: 3 });
        assert_eq!(values(&b), (50..80).collect::<Vec<_>>());
        blocks.store(block(500)).await.unwrap();
        let (b, r) = blocks.take(Some(1_000)).unwrap();
        assert_eq!(r, BlockRange { from: 8, count: 43 });
        assert_eq!(values(&b), (80..510).collect::<Vec<_>>());
        let (b, r) = blocks.take(None).unwrap();
        assert!(b.is_empty());
        assert_eq!(r, BlockRange { from: 51, count: 0 });
    }

    /// Issue 18: the buffer was bounded in records only (4 million), so large records could fill
    /// memory; it is bounded in bytes too.
    #[tokio::test]
    async fn a_receiver_waits_once_its_unplanned_input_reaches_the_byte_bound() {
        use futures::FutureExt;
        let one = block(0);
        let bytes = one.get_array_memory_size();
        let blocks = ReceiverBlocks::new(
            "r",
            1_000_000,
            bytes + bytes / 2,
            DeadLetters::default(),
            RateLimit::new(None),
        );
        blocks.store(block(0)).await.unwrap();
        assert!(
            blocks.store(block(10)).now_or_never().is_none(),
            "a second block would pass the byte bound: the receiver waits"
        );
        let (b, _) = blocks.take(None).unwrap();
        assert_eq!(values(&b), (0..10).collect::<Vec<_>>());
        assert!(
            blocks.store(block(10)).now_or_never().is_some(),
            "room again"
        );
    }
}
