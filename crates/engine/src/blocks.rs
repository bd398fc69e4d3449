//! Where receivers put what they receive until a batch takes it (the in-memory block store; the
//! write-ahead log replaces it when a checkpoint directory is configured).
//!
//! `store` waits while the receiver's unplanned records exceed the buffer capacity, so a receiver
//! that awaits it stops reading its peer: backpressure reaches the socket instead of memory.

use async_trait::async_trait;
use sluice_core::arrow::record_batch::RecordBatch;
use sluice_core::{BlockWriter, DeadLetters, ReceiverStatus, Result};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use tokio::sync::Notify;

pub struct ReceiverBlocks {
    name: String,
    blocks: Mutex<Vec<RecordBatch>>,
    buffered: AtomicUsize,
    capacity: usize,
    space: Notify,
    stopping: AtomicBool,
    stop: Notify,
    dead: DeadLetters,
    status: Mutex<ReceiverStatus>,
}

impl ReceiverBlocks {
    pub fn new(name: &str, capacity: usize, dead: DeadLetters) -> Self {
        ReceiverBlocks {
            name: name.to_string(),
            blocks: Mutex::new(Vec::new()),
            buffered: AtomicUsize::new(0),
            capacity,
            space: Notify::new(),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            dead,
            status: Mutex::new(ReceiverStatus::Starting),
        }
    }

    /// Take every block stored so far (the input of one batch).
    pub fn take(&self) -> Vec<RecordBatch> {
        let blocks = std::mem::take(&mut *self.blocks.lock().unwrap());
        self.buffered.store(0, Ordering::SeqCst);
        self.space.notify_waiters();
        blocks
    }

    pub fn request_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_waiters();
        self.space.notify_waiters();
    }
}

#[async_trait]
impl BlockWriter for ReceiverBlocks {
    async fn store(&self, block: RecordBatch) -> Result<()> {
        let n = block.num_rows();
        if n == 0 {
            return Ok(());
        }
        loop {
            let notified = self.space.notified();
            let buffered = self.buffered.load(Ordering::SeqCst);
            if buffered == 0
                || buffered + n <= self.capacity
                || self.stopping.load(Ordering::SeqCst)
            {
                self.blocks.lock().unwrap().push(block);
                self.buffered.fetch_add(n, Ordering::SeqCst);
                return Ok(());
            }
            notified.await;
        }
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
