//! Prefetching: a thread polls the consumer all the time and keeps the records of every assigned
//! partition in order, so a batch's plan is cut from records already here (its range is exactly
//! what it will read) and reading it costs no round trip.

use crate::context::Ctx;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, Timestamp};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One fetched record of a known partition.
pub struct Rec {
    pub offset: i64,
    /// Milliseconds; `timestamp_type` 0 = none, 1 = create time, 2 = log append time.
    pub timestamp: Option<i64>,
    pub timestamp_type: u8,
    /// The key's bytes, then the value's: one allocation per record (measured: the allocator's
    /// work was a fifth of the gateway's CPU with two).
    bytes: Box<[u8]>,
    /// The key's length in `bytes` (None: no key).
    key_len: Option<u32>,
    /// Whether the record has a value (a tombstone has none).
    has_value: bool,
    pub headers: Vec<(String, Option<Box<[u8]>>)>,
}

impl Rec {
    pub fn key(&self) -> Option<&[u8]> {
        self.key_len.map(|k| &self.bytes[..k as usize])
    }

    pub fn value(&self) -> Option<&[u8]> {
        self.has_value
            .then(|| &self.bytes[self.key_len.unwrap_or(0) as usize..])
    }

    fn size(&self) -> usize {
        64 + self.bytes.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()))
                .sum::<usize>()
    }
}

/// The fetched records of one partition.
#[derive(Default)]
pub struct Buffer {
    /// Fetching started here (None: at a symbolic offset, `earliest` / `latest`). Records before
    /// it are late arrivals from before a seek and dropped.
    pub fetch_from: Option<i64>,
    pub records: VecDeque<Rec>,
}

/// What the poll thread and the source share.
pub struct Shared {
    /// topic → partition → buffer. Only assigned partitions have one.
    pub buffers: Mutex<HashMap<String, HashMap<i32, Buffer>>>,
    bytes: AtomicUsize,
    /// Set when the consumer reported an offset out of range: the source checks its partitions'
    /// watermarks at the next plan.
    pub out_of_range: AtomicBool,
    stop: AtomicBool,
    /// Wakes readers waiting for records (a batch re-run gathering its range) ...
    pub arrived: tokio::sync::Notify,
    /// ... while one says it waits: the poll thread does not wake anyone per record otherwise.
    pub waiting: AtomicBool,
}

impl Shared {
    /// Remove and return the records of a partition in `[from, until)`; records before `from`
    /// are dropped.
    pub fn take(&self, topic: &str, partition: i32, from: i64, until: i64) -> Vec<Rec> {
        let mut buffers = self.buffers.lock().expect("poisoned");
        let Some(b) = buffers.get_mut(topic).and_then(|t| t.get_mut(&partition)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut freed = 0;
        while let Some(r) = b.records.front() {
            if r.offset >= until {
                break;
            }
            let r = b.records.pop_front().expect("non-empty");
            freed += r.size();
            if r.offset >= from {
                out.push(r);
            }
        }
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
        out
    }

    /// Forget a partition's records (it is being assigned again elsewhere).
    pub fn reset(&self, topic: &str, partition: i32, fetch_from: Option<i64>) {
        let mut buffers = self.buffers.lock().expect("poisoned");
        let b = buffers
            .entry(topic.to_string())
            .or_default()
            .entry(partition)
            .or_default();
        let freed: usize = b.records.iter().map(Rec::size).sum();
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
        b.records.clear();
        b.fetch_from = fetch_from;
    }

    /// Forget a partition altogether; returns whether it was known.
    fn forget(&self, topic: &str, partition: i32) -> bool {
        let mut buffers = self.buffers.lock().expect("poisoned");
        let Some(b) = buffers.get_mut(topic).and_then(|t| t.remove(&partition)) else {
            return false;
        };
        let freed: usize = b.records.iter().map(Rec::size).sum();
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
        true
    }

    pub fn buffered_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// The consumer and its poll thread; stops the thread when dropped.
pub struct Fetcher {
    pub consumer: Arc<BaseConsumer<Ctx>>,
    pub shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Fetcher {
    pub fn start(consumer: BaseConsumer<Ctx>, prefetch_bytes: usize) -> Fetcher {
        let consumer = Arc::new(consumer);
        let shared = Arc::new(Shared {
            buffers: Mutex::new(HashMap::new()),
            bytes: AtomicUsize::new(0),
            out_of_range: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            arrived: tokio::sync::Notify::new(),
            waiting: AtomicBool::new(false),
        });
        let thread = {
            let consumer = consumer.clone();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("kafka-fetch".into())
                .spawn(move || poll_loop(&consumer, &shared, prefetch_bytes))
                .expect("spawn a thread")
        };
        Fetcher {
            consumer,
            shared,
            thread: Some(thread),
        }
    }

    /// Start fetching a partition at `offset` (also when it is already being fetched: a seek).
    pub fn assign(&self, topic: &str, partition: i32, offset: Offset) -> Result<(), KafkaError> {
        let fetch_from = match offset {
            Offset::Offset(n) => Some(n),
            _ => None,
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, offset)?;
        let known = {
            let buffers = self.shared.buffers.lock().expect("poisoned");
            buffers
                .get(topic)
                .is_some_and(|t| t.contains_key(&partition))
        };
        if known {
            self.consumer.incremental_unassign(&tpl)?;
        }
        self.shared.reset(topic, partition, fetch_from);
        self.consumer.incremental_assign(&tpl)
    }
}

impl Fetcher {
    /// Stop fetching a partition and drop its records.
    pub fn unassign(&self, topic: &str, partition: i32) -> Result<(), KafkaError> {
        if self.shared.forget(topic, partition) {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(topic, partition);
            self.consumer.incremental_unassign(&tpl)?;
        }
        Ok(())
    }
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn poll_loop(consumer: &BaseConsumer<Ctx>, shared: &Shared, prefetch_bytes: usize) {
    while !shared.stop.load(Ordering::Relaxed) {
        // A re-run waiting for a planned range reads past the budget: the records it waits for
        // may be behind other partitions' read-ahead (and the read-ahead of the partitions it
        // already took), which nothing else would drain.
        if shared.buffered_bytes() >= prefetch_bytes && !shared.waiting.load(Ordering::Relaxed) {
            // Enough ahead of the batches: librdkafka's own queue fills and its fetching pauses.
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                consumer.context().healthy();
                let rec = Rec {
                    offset: m.offset(),
                    timestamp: m.timestamp().to_millis(),
                    timestamp_type: match m.timestamp() {
                        Timestamp::NotAvailable => 0,
                        Timestamp::CreateTime(_) => 1,
                        Timestamp::LogAppendTime(_) => 2,
                    },
                    bytes: {
                        let (k, v) = (m.key().unwrap_or(b""), m.payload().unwrap_or(b""));
                        let mut b = Vec::with_capacity(k.len() + v.len());
                        b.extend_from_slice(k);
                        b.extend_from_slice(v);
                        b.into_boxed_slice()
                    },
                    key_len: m.key().map(|k| k.len() as u32),
                    has_value: m.payload().is_some(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.map(Box::from)))
                                .collect()
                        })
                        .unwrap_or_default(),
                };
                let size = rec.size();
                let mut buffers = shared.buffers.lock().expect("poisoned");
                let Some(b) = buffers
                    .get_mut(m.topic())
                    .and_then(|t| t.get_mut(&m.partition()))
                else {
                    continue;
                };
                let late = b.fetch_from.is_some_and(|f| rec.offset < f)
                    || b.records.back().is_some_and(|l| rec.offset <= l.offset);
                if !late {
                    b.records.push_back(rec);
                    shared.bytes.fetch_add(size, Ordering::Relaxed);
                }
                drop(buffers);
                if shared.waiting.load(Ordering::Relaxed) {
                    shared.arrived.notify_waiters();
                }
            }
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset,
            ))) => {
                shared.out_of_range.store(true, Ordering::Relaxed);
                shared.arrived.notify_waiters();
            }
            Some(Err(e)) => {
                // Connection trouble is reported (and retried) through the context's error
                // callback; anything else is logged here.
                tracing::debug!(error = %e, "kafka consumer error");
            }
        }
    }
}
