//! The `kafka` source, direct like Spark's: each batch's input is a list of offset ranges
//! `[from, until)`, one per partition, cut from the records already prefetched (never from
//! ListOffsets alone) and recorded in the batch plan before the batch runs. After a crash the
//! batch is re-run by fetching exactly those ranges again, so no write-ahead log is needed.
//! Processed offsets are committed to the consumer group after each batch, for lag monitoring.
//!
//! `build` makes it from its options, `discovery` finds its partitions and where they start,
//! `rows` reads a planned range, `scale_out` shares the partitions with other gateways.

mod build;
mod discovery;
mod rows;
mod scale_out;

pub use build::KafkaSourceConnector;
use rows::CHUNK;

use crate::config::{check_properties, shown, KafkaSourceConfig, OnDataLoss, Start, Until};
use crate::context::Ctx;
use crate::fetch::{Fetcher, Rec};
use crate::group::Membership;
use crate::planlog::PlanLog;
use crate::ranges::{Offsets, PartRange, Planned, TopicParts, Tp};
use arrow::array::{
    Array, ArrayRef, BinaryBuilder, Int32Builder, Int64Builder, MapBuilder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sluice_core::options::Joined;
use sluice_core::{
    BatchTime, BuildContext, BuiltSource, Component, ConfigError, DeadLetter, DeadLetters, Error,
    Guarantee, ReplayableSource, Result, SourceConnector, SourceRuntime,
};
use sluice_formats::decoding::PayloadDecoding;
use sluice_formats::payload::{check_envelope, PayloadDecoder};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a metadata or offsets request may take before the batch goes on without it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

struct Part {
    /// The first offset the next batch takes (None: not known until the first record arrives,
    /// after a symbolic start such as `latest`).
    next: Option<i64>,
    /// A bounded run's stop offset (exclusive).
    end: Option<i64>,
}

pub struct KafkaSource {
    name: String,
    cfg: KafkaSourceConfig,
    start: Start,
    until: Option<Until>,
    pattern: Option<regex::Regex>,
    interval: Duration,
    decoder: PayloadDecoder,
    schema: SchemaRef,
    group_id: String,
    fetcher: Option<Fetcher>,
    /// Assigned partitions.
    parts: BTreeMap<Tp, Part>,
    /// Next offsets from the checkpoint, for partitions not yet assigned.
    restored: BTreeMap<Tp, i64>,
    /// Where the source starts was fixed (at the first start, kept in the checkpoint): a
    /// partition found later is new — created since — and is read from its beginning, so what
    /// arrives on it before the next metadata refresh, or while the gateway is down, is kept.
    fixed: bool,
    refreshed: Option<Instant>,
    /// With `app.scale_out`: the group membership and the plan log.
    scale: Option<Scale>,
}

/// A scale-out source's share of the group (see `group` and `planlog`).
struct Scale {
    instance: String,
    plan_topic: String,
    members: Option<Membership>,
    log: Option<Arc<Mutex<PlanLog>>>,
    /// Partitions taken from the group's assignment, started where the plan log says.
    adopted: BTreeSet<Tp>,
    /// Batches whose claim was void: nothing of theirs to commit.
    void: BTreeSet<i64>,
}

impl KafkaSource {
    fn fail(&self, msg: impl std::fmt::Display) -> Error {
        Error::msg(format!("source `{}`: {msg}", self.name))
    }

    /// The brokers and the pass-through properties.
    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.cfg.bootstrap_servers);
        for (k, v) in &self.cfg.properties {
            c.set(k, v);
        }
        c
    }

    fn fetcher(&mut self) -> Result<&Fetcher> {
        if self.fetcher.is_none() {
            let mut c = self.client_config();
            c.set("group.id", &self.group_id)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "error")
                .set("isolation.level", "read_committed")
                .set("enable.partition.eof", "false")
                // librdkafka pauses a partition's fetching for this long (default 1 s) once its
                // local queue is full; the prefetch thread drains it within milliseconds, and with
                // the default a preloaded topic was read at a third of the rate (measured).
                .set("fetch.queue.backoff.ms", "50")
                // librdkafka's own queue only carries records to the prefetch thread, which
                // drains it at once; its default 64 MiB only added to the gateway's memory.
                .set("queued.max.messages.kbytes", "16384");
            for (k, v) in &self.cfg.properties {
                c.set(k, v);
            }
            let ctx = Ctx::new(format!("source `{}`", self.name));
            let consumer: BaseConsumer<Ctx> = c.create_with_context(ctx).map_err(|e| {
                self.fail(format!(
                    "cannot create the Kafka consumer ({e}); properties: {}",
                    shown(&self.cfg.properties)
                ))
            })?;
            self.fetcher = Some(Fetcher::start(consumer, self.cfg.prefetch_mib << 20));
        }
        Ok(self.fetcher.as_ref().expect("just set"))
    }

    fn consumer(&self) -> Arc<BaseConsumer<Ctx>> {
        self.fetcher
            .as_ref()
            .expect("fetcher started")
            .consumer
            .clone()
    }
}

/// Asks the fetch thread to wake waiters as records arrive, until dropped.
struct Waiting(Arc<crate::fetch::Shared>);

impl Waiting {
    fn new(shared: &Arc<crate::fetch::Shared>) -> Waiting {
        shared
            .waiting
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Waiting(shared.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0
            .waiting
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Run a blocking librdkafka call off the async workers.
async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, E> + Send + 'static,
) -> std::result::Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[async_trait]
impl ReplayableSource for KafkaSource {
    type Range = Planned;
    type Position = Offsets;

    async fn plan(&mut self, time: BatchTime, max_records: Option<u64>) -> Result<Planned> {
        let due = self.refresh().await?;
        if self.scale.is_some() {
            self.sync_group().await?;
        }
        self.check_data_loss(due).await?;
        let per_part = self
            .cfg
            .max_rate_per_partition
            .map(|r| ((r as f64) * self.interval.as_secs_f64()).max(1.0) as usize);
        let Some(f) = &self.fetcher else {
            return Ok(Planned::Ranges(Vec::new()));
        };
        let buffers = f.shared.buffers.lock().expect("poisoned");
        // What each partition has ready — its records from `next` up to its end, as a range of
        // buffer positions — and its share of `max_records` by backlog.
        let ready: Vec<(&Tp, &crate::fetch::Buffer, usize, usize)> = self
            .parts
            .iter()
            .filter_map(|(tp, part)| {
                let b = buffers.get(&tp.0)?.get(&tp.1)?;
                let skip = part
                    .next
                    .map_or(0, |next| b.records.partition_point(|r| r.offset < next));
                let before_end = part.end.map_or(b.records.len(), |end| {
                    b.records.partition_point(|r| r.offset < end)
                });
                Some((tp, b, skip, before_end.saturating_sub(skip)))
            })
            .collect();
        let total: usize = ready.iter().map(|r| r.3).sum();
        let mut ranges = Vec::new();
        let mut nexts = Vec::new();
        for (tp, b, skip, n) in ready {
            let mut take = n;
            if let Some(cap) = per_part {
                take = take.min(cap);
            }
            if let Some(max) = max_records {
                let share = ((max as f64) * (n as f64) / (total.max(1) as f64)).ceil() as usize;
                take = take.min(share.max(1));
            }
            if take == 0 {
                continue;
            }
            let from = self.parts[tp].next.unwrap_or(b.records[skip].offset);
            let until = b.records[skip + take - 1].offset + 1;
            ranges.push(PartRange {
                topic: tp.0.clone(),
                partition: tp.1,
                from,
                until,
            });
            nexts.push((tp.clone(), until));
        }
        drop(buffers);
        for (tp, until) in nexts {
            self.parts.get_mut(&tp).expect("known").next = Some(until);
        }
        let planned = match self.scale {
            Some(_) => Planned::Claimed {
                batch: time.millis(),
                ranges,
            },
            None => Planned::Ranges(ranges),
        };
        Ok(planned)
    }

    async fn read(&mut self, range: &Planned, dead: &DeadLetters) -> Result<Vec<RecordBatch>> {
        let ranges = match range {
            Planned::Ranges(r) => r,
            Planned::Claimed { batch, ranges } => {
                if !ranges.is_empty() && !self.claim(*batch, ranges).await? {
                    return Ok(Vec::new());
                }
                ranges
            }
        };
        let mut out = Vec::new();
        for r in ranges {
            self.gather(r).await?;
            let recs = self.fetcher.as_ref().expect("gathered").shared.take(
                &r.topic,
                r.partition,
                r.from,
                r.until,
            );
            for chunk in recs.chunks(CHUNK) {
                out.push(self.rows(&r.topic, r.partition, chunk, dead)?);
            }
        }
        Ok(out)
    }

    async fn commit(&mut self, range: &Planned) -> Result<()> {
        let (batch, ranges) = match range {
            Planned::Ranges(r) => (None, r),
            Planned::Claimed { batch, ranges } => (Some(*batch), ranges),
        };
        if let (Some(b), Some(scale)) = (batch, self.scale.as_mut()) {
            if scale.void.remove(&b) {
                return Ok(());
            }
        }
        // Scale-out: as a member of the group, and only the partitions it still has, so a
        // gateway finishing an old batch never moves the group's offsets back.
        let members = self.scale.as_ref().and_then(|s| s.members.as_ref());
        let owned = members.map(Membership::owned);
        let mut tpl = TopicPartitionList::new();
        for r in ranges {
            if owned
                .as_ref()
                .is_some_and(|o| !o.contains(&(r.topic.clone(), r.partition)))
            {
                continue;
            }
            tpl.add_partition_offset(&r.topic, r.partition, Offset::Offset(r.until))
                .map_err(|e| self.fail(e))?;
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        let committed = match members {
            Some(m) => m.commit(&tpl),
            None if self.scale.is_some() => return Ok(()),
            None => self.consumer().commit(&tpl, CommitMode::Async),
        };
        if let Err(e) = committed {
            tracing::debug!(source = %self.name, error = %e, "kafka: cannot commit the group's offsets");
        }
        Ok(())
    }

    fn project(&mut self, columns: &BTreeSet<String>) {
        self.decoder.project(columns);
    }

    async fn origin(&mut self) -> Result<Option<Offsets>> {
        if self.scale.is_some() {
            // The group's plan log says where each partition goes on.
            return Ok(None);
        }
        self.refresh().await?;
        self.fixed = true;
        Ok(Some(ReplayableSource::position(self)))
    }

    async fn prepare(&mut self) -> Result<()> {
        // Find the partitions and start fetching them (or join the group) at once.
        self.refresh().await?;
        if self.scale.is_some() {
            self.sync_group().await?;
        }
        // The first plan refreshes again, with the data-loss check that goes with it.
        self.refreshed = None;
        Ok(())
    }

    fn exhausted(&self) -> bool {
        let Some(f) = &self.fetcher else {
            return false;
        };
        if self.parts.is_empty() || self.parts.values().any(|p| p.end.is_none()) {
            return false;
        }
        let fetched = f.consumer.position().ok();
        self.parts.iter().all(|((t, p), part)| {
            let end = part.end.expect("checked above");
            let planned = part.next.is_some_and(|n| n >= end);
            // Past the end with only control records (transaction markers) left before it.
            let passed = part.next.is_some()
                && fetched
                    .as_ref()
                    .and_then(|tpl| tpl.find_partition(t, *p))
                    .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= end))
                && {
                    let buffers = f.shared.buffers.lock().expect("poisoned");
                    buffers
                        .get(t)
                        .and_then(|b| b.get(p))
                        .is_none_or(|b| b.records.front().is_none_or(|r| r.offset >= end))
                };
            planned || passed
        })
    }

    fn position(&self) -> Offsets {
        let mut m = Offsets::new();
        for (tp, n) in &self.restored {
            m.entry(tp.0.clone())
                .or_default()
                .insert(tp.1.to_string(), *n);
        }
        for (tp, part) in &self.parts {
            if let Some(n) = part.next {
                m.entry(tp.0.clone())
                    .or_default()
                    .insert(tp.1.to_string(), n);
            }
        }
        m
    }

    fn restore(&mut self, position: Offsets) -> Result<()> {
        for (topic, parts) in position {
            for (p, n) in parts {
                let p: i32 = p
                    .parse()
                    .map_err(|_| self.fail(format!("bad partition `{p}` in topic `{topic}`")))?;
                self.restored.insert((topic.clone(), p), n);
            }
        }
        self.fixed = true;
        Ok(())
    }
}
