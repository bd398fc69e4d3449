//! One shard's reader: a task that calls GetRecords ahead of the batches, de-aggregates KPL
//! records and keeps the user records in order until a batch takes them. It paces itself to
//! Kinesis's 5 calls per second per shard, waits out throttling with backoff, renews an expired
//! iterator where it stands, pauses above the source's memory budget, and notes when the shard
//! is read to its end (a closed shard's NextShardIterator is null).

use crate::client::Trouble;
use crate::config::KinesisSourceConfig;
use crate::kpl;
use crate::ranges::{Pos, StartAt};
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use aws_sdk_kinesis::Client;
use backon::BackoffBuilder;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Bytes a record costs in the budget beyond its data.
const OVERHEAD: usize = 96;
/// Kinesis allows 5 GetRecords calls per second per shard.
const MIN_CALL_GAP: Duration = Duration::from_millis(200);

/// A user record as read.
pub struct Rec {
    pub pos: Pos,
    pub key: String,
    pub data: Vec<u8>,
    pub arrival: Option<i64>,
    /// A bad KPL aggregate: why (the record goes to the dead letters).
    pub bad: Option<String>,
}

impl Rec {
    fn cost(&self) -> usize {
        self.data.len() + self.key.len() + OVERHEAD
    }
}

/// Where a feed begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum From {
    Start(StartAt),
    /// This record and the ones after it.
    At(Pos),
    /// The records after this one.
    After(Pos),
}

impl From {
    fn admits(&self, p: &Pos) -> bool {
        match self {
            From::Start(_) => true,
            From::At(a) => p >= a,
            From::After(a) => p > a,
        }
    }
}

#[derive(Default)]
pub struct Buf {
    pub records: VecDeque<Rec>,
    /// The last position read from the shard.
    pub fetched: Option<Pos>,
    /// Read to its end: no record will follow the last one.
    pub ended: bool,
    /// The reason the reader last had to wait (throttling, unreachable), until a call succeeds.
    pub trouble: Option<String>,
    /// The reader stopped for good (the stream is gone, credentials refused).
    pub fatal: Option<String>,
    /// GetRecords' MillisBehindLatest of the last call.
    pub behind_ms: Option<i64>,
    /// A bounded run: every record that arrived before the bound was read; none after it is kept.
    pub reached: bool,
}

pub struct Shared {
    pub buf: Mutex<Buf>,
    pub arrived: Notify,
    /// A batch waits for this feed's records (a re-run): it reads whatever the budget holds, so
    /// the other feeds' read-ahead cannot starve the batch.
    pub urgent: std::sync::atomic::AtomicBool,
    /// Bytes held by every feed of the source, and the limit.
    budget: Arc<AtomicUsize>,
}

/// A running reader; dropping it stops the task and releases its records from the budget.
pub struct Feed {
    pub shared: Arc<Shared>,
    /// Where it began: whether it can serve a range is decided against it while nothing was
    /// taken yet.
    pub from: From,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
        let held: usize = self
            .shared
            .buf
            .lock()
            .expect("poisoned")
            .records
            .iter()
            .map(Rec::cost)
            .sum();
        self.shared.budget.fetch_sub(held, Ordering::Relaxed);
    }
}

/// What a reader needs to know.
#[derive(Clone)]
pub struct ReadOptions {
    pub client: Client,
    pub stream: String,
    pub source: String,
    pub budget: Arc<AtomicUsize>,
    pub budget_max: usize,
    pub records_per_call: i32,
    pub idle_wait: Duration,
    pub deaggregate: bool,
    /// A bounded run's end: records that arrived at or after it (ms since the epoch) are not read.
    pub until: Option<i64>,
    /// A bounded run's end in this shard: this record and those after it are not read.
    pub until_seq: Option<Pos>,
}

impl ReadOptions {
    pub fn new(
        client: Client,
        stream: &str,
        source: &str,
        budget: Arc<AtomicUsize>,
        cfg: &KinesisSourceConfig,
    ) -> ReadOptions {
        ReadOptions {
            client,
            stream: stream.to_string(),
            source: source.to_string(),
            budget,
            budget_max: cfg.prefetch_mib.max(1) << 20,
            records_per_call: cfg.records_per_call.clamp(1, 10_000),
            idle_wait: cfg.idle_wait,
            deaggregate: cfg.deaggregate,
            until: None,
            until_seq: None,
        }
    }
}

impl Feed {
    pub fn start(opts: &ReadOptions, shard: &str, from: From) -> Feed {
        let shared = Arc::new(Shared {
            buf: Mutex::new(Buf::default()),
            arrived: Notify::new(),
            urgent: Default::default(),
            budget: opts.budget.clone(),
        });
        let reader = Reader {
            opts: opts.clone(),
            shard: shard.to_string(),
            from: from.clone(),
            shared: shared.clone(),
        };
        Feed {
            shared,
            from,
            task: tokio::spawn(reader.run()),
        }
    }

    /// Whether the feed holds, or will read, every record from `first` on.
    pub fn serves(&self, first: &Pos) -> bool {
        let buf = self.shared.buf.lock().expect("poisoned");
        match buf.records.front() {
            Some(r) => &r.pos <= first && self.from.admits(first),
            None => match (&buf.fetched, &self.from) {
                (Some(f), _) => f < first,
                (None, From::Start(_)) => false,
                (None, from) => from.admits(first),
            },
        }
    }

    /// Take the records from `first` through `last` (those before `first` are dropped).
    pub fn take(&self, first: &Pos, last: &Pos) -> Vec<Rec> {
        let mut buf = self.shared.buf.lock().expect("poisoned");
        let mut out = Vec::new();
        let mut freed = 0;
        while buf.records.front().is_some_and(|r| &r.pos <= last) {
            let r = buf.records.pop_front().expect("checked");
            freed += r.cost();
            if &r.pos >= first {
                out.push(r);
            }
        }
        self.shared.budget.fetch_sub(freed, Ordering::Relaxed);
        out
    }
}

struct Reader {
    opts: ReadOptions,
    shard: String,
    from: From,
    shared: Arc<Shared>,
}

impl Reader {
    fn set(&self, f: impl FnOnce(&mut Buf)) {
        f(&mut self.shared.buf.lock().expect("poisoned"));
        self.shared.arrived.notify_waiters();
    }

    /// Where reading resumes: after the last record read, else where the feed began.
    fn resume(&self) -> From {
        match &self.shared.buf.lock().expect("poisoned").fetched {
            Some(p) => From::After(p.clone()),
            None => self.from.clone(),
        }
    }

    async fn iterator(&self, from: &From) -> Result<Option<String>, Trouble> {
        let mut req = self
            .opts
            .client
            .get_shard_iterator()
            .stream_name(&self.opts.stream)
            .shard_id(&self.shard);
        req = match from {
            From::Start(StartAt::TrimHorizon) => {
                req.shard_iterator_type(ShardIteratorType::TrimHorizon)
            }
            From::Start(StartAt::AtTimestamp(ms)) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(*ms)),
            // Of an aggregate's records, some may come after the position: read the aggregate again
            // and drop the user records up to it.
            From::At(p) | From::After(p) => req
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(&p.seq),
        };
        match req.send().await {
            Ok(out) => Ok(out.shard_iterator),
            Err(e) => Err(Trouble::of(&e)),
        }
    }

    async fn run(self) {
        let mut backoff = new_backoff();
        let mut iterator: Option<String> = None;
        let mut last_call: Option<Instant> = None;
        loop {
            while self.opts.budget.load(Ordering::Relaxed) > self.opts.budget_max
                && !self.shared.urgent.load(Ordering::Relaxed)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if let Some(t) = last_call {
                let gap = t.elapsed();
                if gap < MIN_CALL_GAP {
                    tokio::time::sleep(MIN_CALL_GAP - gap).await;
                }
            }
            let result = match &iterator {
                None => {
                    let from = self.resume();
                    self.iterator(&from).await.map(|it| {
                        iterator = it;
                        None
                    })
                }
                Some(it) => {
                    last_call = Some(Instant::now());
                    self.opts
                        .client
                        .get_records()
                        .shard_iterator(it)
                        .limit(self.opts.records_per_call)
                        .send()
                        .await
                        .map(Some)
                        .map_err(|e| Trouble::of(&e))
                }
            };
            match result {
                Ok(None) => {
                    if iterator.is_none() {
                        // A closed shard with nothing left from that point: it is read.
                        self.set(|b| b.ended = true);
                        return;
                    }
                }
                Ok(Some(out)) => {
                    backoff = new_backoff();
                    let n = out.records.len();
                    let past_bound = self.keep(out.records);
                    let behind = out.millis_behind_latest;
                    iterator = out.next_shard_iterator;
                    let ended = iterator.is_none();
                    // Nothing left, and what arrives from now on is past the bound.
                    let caught_up = n == 0
                        && behind.unwrap_or(0) == 0
                        && self
                            .opts
                            .until
                            .is_some_and(|u| sluice_core::time::now_ms() > u);
                    let reached = past_bound || caught_up;
                    self.set(|b| {
                        b.trouble = None;
                        b.behind_ms = behind;
                        b.ended = ended && !past_bound;
                        b.reached = reached;
                    });
                    if ended && !past_bound {
                        tracing::info!(source = %self.opts.source, shard = %self.shard, "kinesis: shard read to its end");
                        return;
                    }
                    if reached {
                        tracing::info!(source = %self.opts.source, shard = %self.shard, "kinesis: shard read up to the bound (until)");
                        return;
                    }
                    if n == 0 {
                        tokio::time::sleep(self.opts.idle_wait).await;
                    }
                }
                Err(Trouble::Expired) => {
                    tracing::debug!(source = %self.opts.source, shard = %self.shard, "kinesis: iterator expired; renewing it");
                    iterator = None;
                }
                Err(Trouble::Transient(why)) => {
                    let wait = backoff.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(source = %self.opts.source, shard = %self.shard, error = %why, retry_in = ?wait, "kinesis: GetRecords failed; retrying");
                    self.set(|b| b.trouble = Some(why));
                    tokio::time::sleep(wait).await;
                }
                Err(Trouble::NotFound(why) | Trouble::Denied(why) | Trouble::Fatal(why)) => {
                    tracing::error!(source = %self.opts.source, shard = %self.shard, error = %why, "kinesis: reading the shard failed");
                    self.set(|b| b.fatal = Some(why));
                    return;
                }
            }
        }
    }

    /// Keep the user records of a GetRecords answer that come after where the feed resumed (and
    /// before the bound); true if a record past the bound was met.
    fn keep(&self, records: Vec<aws_sdk_kinesis::types::Record>) -> bool {
        let from = self.resume();
        let mut out: Vec<Rec> = Vec::with_capacity(records.len());
        for r in records {
            let arrival = r
                .approximate_arrival_timestamp
                .map(|t| t.to_millis().unwrap_or(0));
            let seq = r.sequence_number;
            let data = r.data.into_inner();
            if self.opts.deaggregate && kpl::is_aggregate(&data) {
                match kpl::deaggregate(&data) {
                    Ok(users) => {
                        for (i, u) in users.into_iter().enumerate() {
                            out.push(Rec {
                                pos: Pos::new(seq.clone(), i as u64),
                                key: u.partition_key,
                                data: u.data,
                                arrival,
                                bad: None,
                            });
                        }
                        continue;
                    }
                    Err(why) => {
                        out.push(Rec {
                            pos: Pos::new(seq, 0),
                            key: r.partition_key.clone().unwrap_or_default(),
                            data,
                            arrival,
                            bad: Some(why),
                        });
                        continue;
                    }
                }
            }
            out.push(Rec {
                pos: Pos::new(seq, 0),
                key: r.partition_key.clone().unwrap_or_default(),
                data,
                arrival,
                bad: None,
            });
        }
        out.retain(|r| from.admits(&r.pos));
        let mut past_bound = false;
        let until = self.opts.until;
        let until_seq = self.opts.until_seq.as_ref();
        if let Some(i) = out.iter().position(|r| {
            until.is_some_and(|u| r.arrival.is_some_and(|a| a >= u))
                || until_seq.is_some_and(|u| &r.pos >= u)
        }) {
            out.truncate(i);
            past_bound = true;
        }
        let cost: usize = out.iter().map(Rec::cost).sum();
        self.opts.budget.fetch_add(cost, Ordering::Relaxed);
        let mut buf = self.shared.buf.lock().expect("poisoned");
        if let Some(last) = out.last() {
            buf.fetched = Some(last.pos.clone());
        }
        buf.records.extend(out);
        past_bound
    }
}

fn new_backoff() -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}
