//! The `kafka` source, direct like Spark's: each batch's input is a list of offset ranges
//! `[from, until)`, one per partition, cut from the records already prefetched (never from
//! ListOffsets alone) and recorded in the batch plan before the batch runs. After a crash the
//! batch is re-run by fetching exactly those ranges again, so no write-ahead log is needed.
//! Processed offsets are committed to the consumer group after each batch, for lag monitoring.

use crate::config::{check_properties, shown, KafkaSourceConfig, OnDataLoss, Start, Until};
use crate::context::Ctx;
use crate::fetch::{Fetcher, Rec};
use crate::group::Membership;
use crate::planlog::PlanLog;
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
use serde::{Deserialize, Serialize};
use sluice_core::{
    BatchTime, BuildContext, BuiltSource, Component, ConfigError, DeadLetter, DeadLetters, Error,
    Guarantee, ReplayableSource, Result, SourceConnector, SourceRuntime,
};
use sluice_formats::payload::{check_envelope, PayloadDecoder, PayloadFormat};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Envelope columns, after the value's.
const ENVELOPE: &[&str] = &[
    "key",
    "topic",
    "partition",
    "offset",
    "timestamp",
    "timestamp_type",
    "headers",
];

/// Rows per output record batch.
const CHUNK: usize = 32 * 1024;

/// How long a metadata or offsets request may take before the batch goes on without it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub struct KafkaSourceConnector;

impl SourceConnector for KafkaSourceConnector {
    type Config = KafkaSourceConfig;
    fn bounded(&self) -> Option<&dyn sluice_core::Bounded> {
        Some(self)
    }
    fn build(
        &self,
        cx: &BuildContext,
        at: &Component,
        cfg: KafkaSourceConfig,
    ) -> std::result::Result<BuiltSource, ConfigError> {
        let path = at.path.as_str();
        let name = at.name.clone();
        let ways = [
            !cfg.topics.is_empty(),
            cfg.topic_pattern.is_some(),
            !cfg.assign.is_empty(),
        ];
        if ways.iter().filter(|w| **w).count() != 1 {
            return Err(ConfigError::new(
                format!("{path}.topics"),
                "exactly one of `topics`, `topic_pattern` and `assign`",
                match ways.iter().filter(|w| **w).count() {
                    0 => "none of them".to_string(),
                    _ => "more than one".to_string(),
                },
            ));
        }
        let pattern = cfg
            .topic_pattern
            .as_deref()
            .map(|p| {
                regex::Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                    ConfigError::new(
                        format!("{path}.topic_pattern"),
                        "a regular expression",
                        format!("\"{p}\" ({e})"),
                    )
                })
            })
            .transpose()?;
        if cx.scale_out {
            if !cfg.assign.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.assign"),
                    "`topics` or `topic_pattern` with app.scale_out (the group divides the partitions)",
                    "explicit partitions",
                ));
            }
            if cfg.until.is_some() || !cfg.until_offsets.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.until"),
                    "no bounded run with app.scale_out (run backfills with `sluice replay`)",
                    "a bound",
                ));
            }
        }
        let start = Start::parse(path, &cfg.start)?;
        let until = cfg
            .until
            .as_deref()
            .map(|u| Until::parse(path, u))
            .transpose()?;
        for (key, map) in [
            ("until_offsets", &cfg.until_offsets),
            ("start_offsets", &cfg.start_offsets),
        ] {
            for (topic, parts) in map {
                for (p, offset) in parts {
                    if p.parse::<i32>().map_or(true, |p| p < 0) || *offset < 0 {
                        return Err(ConfigError::new(
                            format!("{path}.{key}.{topic}.\"{p}\""),
                            "a partition number mapped to an offset ≥ 0, e.g. { \"0\" = 42 }",
                            format!("\"{p}\" = {offset}"),
                        ));
                    }
                }
            }
        }
        for (topic, parts) in &cfg.start_offsets {
            for (p, offset) in parts {
                if p.parse::<i32>().map_or(true, |p| p < 0) || *offset < 0 {
                    return Err(ConfigError::new(
                        format!("{path}.start_offsets.{topic}.\"{p}\""),
                        "a partition number mapped to an offset ≥ 0, e.g. { \"0\" = 42 }",
                        format!("\"{p}\" = {offset}"),
                    ));
                }
            }
        }
        if cfg.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::new(
                format!("{path}.bootstrap_servers"),
                "host:port of at least one broker",
                "an empty string",
            ));
        }
        if cfg.max_rate_per_partition == Some(0) {
            return Err(ConfigError::new(
                format!("{path}.max_rate_per_partition"),
                "at least 1 record per second",
                "0",
            ));
        }
        check_properties(path, &cfg.properties)?;
        let decoder = match (&cfg.format, &cfg.avro_schema, &cfg.avro_schema_file) {
            (PayloadFormat::Avro, Some(_), Some(_)) | (PayloadFormat::Avro, None, None) => {
                return Err(ConfigError::new(
                    format!("{path}.avro_schema"),
                    "one of `avro_schema` (the writer schema as JSON) and `avro_schema_file` with format = \"avro\"",
                    if cfg.avro_schema.is_some() { "both" } else { "neither" },
                ))
            }
            (PayloadFormat::Avro, _, _) if cfg.schema.is_some() => {
                return Err(ConfigError::new(
                    format!("{path}.schema"),
                    "no `schema` with format = \"avro\" (the columns are the Avro schema's fields)",
                    "a schema",
                ))
            }
            (PayloadFormat::Avro, Some(text), None) => {
                PayloadDecoder::avro(path, "avro_schema", text, cfg.avro_wire)?
            }
            (PayloadFormat::Avro, None, Some(file)) => {
                let p = cx.resolve(file);
                let text = std::fs::read_to_string(&p).map_err(|e| {
                    ConfigError::new(
                        format!("{path}.avro_schema_file"),
                        "a readable file holding an Avro schema",
                        format!("{} ({e})", p.display()),
                    )
                })?;
                PayloadDecoder::avro(path, "avro_schema_file", &text, cfg.avro_wire)?
            }
            (_, Some(_), _) | (_, _, Some(_)) => {
                return Err(ConfigError::new(
                    format!("{path}.format"),
                    "format = \"avro\" with `avro_schema` / `avro_schema_file`",
                    format!("\"{}\"", cfg.format.name()),
                ))
            }
            _ => PayloadDecoder::new(
                path,
                "value",
                cfg.format,
                cfg.schema.as_deref(),
                cfg.delimiter,
            )?,
        };
        let mut fields = decoder.fields();
        if cfg.envelope {
            check_envelope(path, &fields, ENVELOPE)?;
            fields.extend(envelope_fields());
        }
        let group_id = cfg
            .group_id
            .clone()
            .unwrap_or_else(|| format!("sluice-{}-{name}", cx.app_name));
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let scale = cx.scale_out.then(|| Scale {
            instance: cx.instance.clone(),
            plan_topic: cfg
                .plan_topic
                .clone()
                .unwrap_or_else(|| format!("{group_id}.plans")),
            members: None,
            log: None,
            adopted: BTreeSet::new(),
            void: BTreeSet::new(),
        });
        Ok(BuiltSource {
            schema: schema.clone(),
            guarantee: Guarantee::Replayable,
            runtime: SourceRuntime::Replayable(Box::new(KafkaSource {
                schema,
                name,
                start,
                until,
                pattern,
                interval: cx.batch_interval,
                decoder,
                group_id,
                fetcher: None,
                parts: BTreeMap::new(),
                restored: BTreeMap::new(),
                fixed: false,
                refreshed: None,
                scale,
                cfg,
            })),
            caveat: None,
        })
    }
}

fn envelope_fields() -> Vec<Field> {
    vec![
        Field::new("key", DataType::Binary, true),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
        Field::new("timestamp_type", DataType::Utf8, false),
        Field::new("headers", headers_type(), false),
    ]
}

fn headers_type() -> DataType {
    let map = MapBuilder::new(None, StringBuilder::new(), BinaryBuilder::new()).finish();
    map.data_type().clone()
}

/// A topic partition.
type Tp = (String, i32);

/// A topic's name, partitions and error, as the metadata gives them.
type TopicParts = (String, Vec<i32>, Option<String>);

/// One partition's share of a batch: offsets `[from, until)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRange {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub until: i64,
}

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

/// A batch's input as recorded in its plan: the ranges, and with scale-out the batch they are
/// claimed for in the plan log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Planned {
    Ranges(Vec<PartRange>),
    Claimed { batch: i64, ranges: Vec<PartRange> },
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

    /// Every `metadata_refresh`: read the partitions of the configured topics and start fetching
    /// the new ones. Returns whether it was due.
    async fn refresh(&mut self) -> Result<bool> {
        let due = self
            .refreshed
            .is_none_or(|t| t.elapsed() >= self.cfg.metadata_refresh);
        if !due {
            return Ok(false);
        }
        self.fetcher()?;
        let consumer = self.consumer();
        let wanted: Vec<Tp> = if !self.cfg.assign.is_empty() {
            self.cfg
                .assign
                .iter()
                .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p)))
                .collect()
        } else {
            let topics = self.cfg.topics.clone();
            let all = self.pattern.is_some();
            let found = blocking(move || -> std::result::Result<Vec<TopicParts>, String> {
                let md = if all {
                    consumer.fetch_metadata(None, REQUEST_TIMEOUT)
                } else if topics.len() == 1 {
                    consumer.fetch_metadata(Some(&topics[0]), REQUEST_TIMEOUT)
                } else {
                    consumer.fetch_metadata(None, REQUEST_TIMEOUT)
                }
                .map_err(|e| e.to_string())?;
                Ok(md
                    .topics()
                    .iter()
                    .map(|t| {
                        (
                            t.name().to_string(),
                            t.partitions().iter().map(|p| p.id()).collect(),
                            t.error()
                                .map(|e| rdkafka::types::RDKafkaErrorCode::from(e).to_string()),
                        )
                    })
                    .collect())
            })
            .await;
            let found = match found {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(source = %self.name, error = %e, "kafka: cannot read the topics' partitions; retrying at the next batch");
                    return Ok(false);
                }
            };
            let mut wanted = Vec::new();
            for (topic, parts, error) in found {
                let chosen = match &self.pattern {
                    Some(re) => re.is_match(&topic) && !topic.starts_with("__"),
                    None => self.cfg.topics.contains(&topic),
                };
                if !chosen {
                    continue;
                }
                if let Some(e) = error {
                    if self.refreshed.is_none() {
                        tracing::warn!(source = %self.name, topic, error = %e, "kafka: topic not readable yet");
                    }
                    continue;
                }
                wanted.extend(parts.into_iter().map(|p| (topic.clone(), p)));
            }
            if self.refreshed.is_none() && self.pattern.is_none() {
                for t in &self.cfg.topics {
                    if !wanted.iter().any(|(w, _)| w == t) {
                        tracing::warn!(source = %self.name, topic = %t, "kafka: topic not found (yet); it is read once it exists");
                    }
                }
            }
            wanted
        };
        self.refreshed = Some(Instant::now());
        if self.scale.is_some() {
            // The group divides the partitions: follow its assignment (`sync_group`).
            let mut topics: BTreeSet<String> = wanted.into_iter().map(|(t, _)| t).collect();
            topics.extend(self.cfg.topics.iter().cloned());
            self.subscribe(topics.into_iter().collect())?;
            return Ok(true);
        }
        let new: Vec<Tp> = wanted
            .into_iter()
            .filter(|tp| !self.parts.contains_key(tp))
            .collect();
        if !new.is_empty() {
            self.start_partitions(new).await?;
        }
        Ok(true)
    }

    /// Scale-out: join the group (once) and subscribe to `topics`.
    fn subscribe(&mut self, topics: Vec<String>) -> Result<()> {
        let config = self.client_config();
        let component = format!("source `{}`", self.name);
        let scale = self.scale.as_mut().expect("scale-out");
        if scale.members.is_none() {
            tracing::info!(source = %self.name, group = %self.group_id, instance = %scale.instance, plan_log = %scale.plan_topic, "kafka: scale-out: joining the consumer group");
            scale.members = Some(
                Membership::join(config, &self.group_id, &component).map_err(|e| {
                    Error::msg(format!("{component}: cannot join the consumer group: {e}"))
                })?,
            );
        }
        let members = scale.members.as_mut().expect("joined");
        members
            .subscribe(topics)
            .map_err(|e| Error::msg(format!("{component}: cannot subscribe: {e}")))
    }

    /// Scale-out: follow the group's assignment — drop the partitions given to another gateway,
    /// start the new ones where the plan log says the group's last valid range ended.
    async fn sync_group(&mut self) -> Result<()> {
        let scale = self.scale.as_mut().expect("scale-out");
        let Some(members) = &scale.members else {
            return Ok(());
        };
        let owned = members.owned();
        scale.adopted.retain(|tp| owned.contains(tp));
        let new: Vec<Tp> = owned
            .iter()
            .filter(|tp| !scale.adopted.contains(*tp))
            .cloned()
            .collect();
        let gone: Vec<Tp> = self
            .parts
            .keys()
            .filter(|tp| !owned.contains(*tp))
            .cloned()
            .collect();
        for (topic, partition) in gone {
            if let Some(f) = &self.fetcher {
                f.unassign(&topic, partition).map_err(|e| self.fail(e))?;
            }
            tracing::info!(source = %self.name, topic, partition, "kafka: partition handed over to another gateway of the group");
            self.parts.remove(&(topic, partition));
        }
        if !new.is_empty() {
            self.start_partitions(new.clone()).await?;
            self.scale.as_mut().expect("scale-out").adopted.extend(new);
        }
        Ok(())
    }

    /// Scale-out: the plan log, opened (and read through) on first use.
    async fn plan_log(&mut self) -> Result<Arc<Mutex<PlanLog>>> {
        let config = self.client_config();
        let scale = self.scale.as_mut().expect("scale-out");
        if let Some(l) = &scale.log {
            return Ok(l.clone());
        }
        let (topic, instance) = (scale.plan_topic.clone(), scale.instance.clone());
        let log = blocking(move || PlanLog::open(&config, &topic, &instance))
            .await
            .map_err(|e| self.fail(e))?;
        let log = Arc::new(Mutex::new(log));
        self.scale.as_mut().expect("scale-out").log = Some(log.clone());
        Ok(log)
    }

    /// Scale-out: append a batch's ranges to the plan log (unless there already) and say whether
    /// they are this gateway's to read. When they are not, the partitions still here continue
    /// where the group's last valid range ended.
    async fn claim(&mut self, batch: i64, ranges: &[PartRange]) -> Result<bool> {
        let log = self.plan_log().await?;
        let rs = ranges.to_vec();
        let (valid, positions) = blocking(move || -> std::result::Result<_, String> {
            let mut l = log.lock().expect("poisoned");
            let valid = l.claim(batch, &rs)?;
            let positions: Vec<(Tp, Option<i64>)> = rs
                .iter()
                .map(|r| {
                    let tp = (r.topic.clone(), r.partition);
                    let until = l.valid_until(&tp);
                    (tp, until)
                })
                .collect();
            Ok((valid, positions))
        })
        .await
        .map_err(|e| self.fail(e))?;
        if valid {
            return Ok(true);
        }
        tracing::warn!(source = %self.name, batch, "kafka: another gateway of the group claimed some of this batch's ranges first (a rebalance): it reads nothing from this source, and its partitions continue where the group's plan log says");
        self.scale.as_mut().expect("scale-out").void.insert(batch);
        for (tp, until) in positions {
            if let (Some(u), Some(part)) = (until, self.parts.get_mut(&tp)) {
                part.next = Some(u);
                self.fetcher
                    .as_ref()
                    .expect("a partition is fetched")
                    .assign(&tp.0, tp.1, Offset::Offset(u))
                    .map_err(|e| Error::msg(format!("source `{}`: {e}", self.name)))?;
            }
        }
        Ok(false)
    }

    /// Decide where each new partition starts and start fetching it.
    async fn start_partitions(&mut self, new: Vec<Tp>) -> Result<()> {
        let mut starts: Vec<(Tp, Offset, String)> = Vec::new();
        let mut ask: Vec<Tp> = Vec::new();
        // Scale-out: the group's plan log knows where each partition goes on; the checkpoint's
        // position may be stale (another gateway had the partition meanwhile).
        let logged: BTreeMap<Tp, i64> = if self.scale.is_some() {
            let log = self.plan_log().await?;
            let asked = new.clone();
            blocking(move || -> std::result::Result<_, String> {
                let mut l = log.lock().expect("poisoned");
                l.read_through()?;
                Ok(asked
                    .into_iter()
                    .filter_map(|tp| l.valid_until(&tp).map(|u| (tp, u)))
                    .collect())
            })
            .await
            .map_err(|e| self.fail(e))?
        } else {
            BTreeMap::new()
        };
        for tp in new {
            if let Some(&n) = logged.get(&tp) {
                starts.push((
                    tp,
                    Offset::Offset(n),
                    format!("the group's plan log: offset {n}"),
                ));
            } else if let Some(&n) = self.restored.get(&tp).filter(|_| self.scale.is_none()) {
                starts.push((tp, Offset::Offset(n), format!("checkpoint offset {n}")));
            } else if let Some(&n) = self
                .cfg
                .start_offsets
                .get(&tp.0)
                .and_then(|m| m.get(&tp.1.to_string()))
            {
                starts.push((tp, Offset::Offset(n), format!("start_offsets {n}")));
            } else if self.fixed && self.scale.is_none() {
                starts.push((
                    tp,
                    Offset::Beginning,
                    "a partition new since the first start: earliest".into(),
                ));
            } else {
                match self.start {
                    Start::Earliest => starts.push((tp, Offset::Beginning, "earliest".into())),
                    Start::Latest => starts.push((tp, Offset::End, "latest".into())),
                    Start::Committed | Start::Time(_) => ask.push(tp),
                }
            }
        }
        if !ask.is_empty() {
            let consumer = self.consumer();
            let start = self.start;
            let asked = ask.clone();
            let answer = blocking(move || {
                let mut tpl = TopicPartitionList::new();
                for (t, p) in &asked {
                    match start {
                        Start::Time(ms) => {
                            tpl.add_partition_offset(t, *p, Offset::Offset(ms))?;
                        }
                        _ => {
                            tpl.add_partition(t, *p);
                        }
                    }
                }
                match start {
                    Start::Time(_) => consumer.offsets_for_times(tpl, REQUEST_TIMEOUT),
                    _ => consumer.committed_offsets(tpl, REQUEST_TIMEOUT),
                }
            })
            .await
            .map_err(|e| {
                self.fail(format!(
                    "cannot read the start offsets (`start = \"{}\"`): {e}",
                    self.cfg.start
                ))
            })?;
            for tp in ask {
                let found = answer
                    .find_partition(&tp.0, tp.1)
                    .map(|e| e.offset())
                    .unwrap_or(Offset::Invalid);
                let (offset, why) = match (self.start, found) {
                    (Start::Time(ms), Offset::Offset(n)) => {
                        (Offset::Offset(n), format!("time {ms}: offset {n}"))
                    }
                    (Start::Time(ms), _) => (
                        Offset::End,
                        format!("time {ms}: no record at or after it, latest"),
                    ),
                    (_, Offset::Offset(n)) => (Offset::Offset(n), format!("committed offset {n}")),
                    _ => (
                        Offset::Beginning,
                        "no committed offset: earliest".to_string(),
                    ),
                };
                starts.push((tp, offset, why));
            }
        }
        // `earliest` and `latest` become offsets now, so the first plan records every partition's
        // position, records or not: a restart never applies `start` again.
        let starts = self.resolve(starts).await;
        let tps: Vec<Tp> = starts.iter().map(|(tp, _, _)| tp.clone()).collect();
        let bounds = self.bounds(&tps).await?;
        let fetcher = self.fetcher.as_ref().expect("fetcher started");
        for ((topic, partition), offset, why) in starts {
            let tp = (topic.clone(), partition);
            let (offset, end) = match bounds.get(&tp) {
                // A bounded run needs to know where each partition starts, to know when it is done.
                Some(&(low, high, end)) => (
                    match offset {
                        Offset::Beginning => Offset::Offset(low),
                        Offset::End => Offset::Offset(high),
                        o => o,
                    },
                    Some(end),
                ),
                None => (offset, None),
            };
            fetcher.assign(&topic, partition, offset).map_err(|e| {
                Error::msg(format!(
                    "source `{}`: cannot fetch {topic}/{partition}: {e}",
                    self.name
                ))
            })?;
            if why.starts_with("checkpoint")
                && (self.cfg.start != "latest" || !self.cfg.start_offsets.is_empty())
            {
                tracing::info!(source = %self.name, topic, partition, start = %why, "kafka: the checkpoint's offset wins over `start`");
            } else {
                tracing::info!(source = %self.name, topic, partition, start = %why, "kafka: reading partition");
            }
            let next = match offset {
                Offset::Offset(n) => Some(n),
                _ => None,
            };
            self.parts.insert((topic, partition), Part { next, end });
        }
        Ok(())
    }

    /// Replace `Beginning` / `End` with the partition's low / high watermark. A partition whose
    /// watermarks cannot be read keeps the symbolic start (and is recorded from its first record).
    async fn resolve(&self, starts: Vec<(Tp, Offset, String)>) -> Vec<(Tp, Offset, String)> {
        let symbolic: Vec<Tp> = starts
            .iter()
            .filter(|(_, o, _)| matches!(o, Offset::Beginning | Offset::End))
            .map(|(tp, _, _)| tp.clone())
            .collect();
        if symbolic.is_empty() {
            return starts;
        }
        let consumer = self.consumer();
        let marks = blocking(
            move || -> rdkafka::error::KafkaResult<BTreeMap<Tp, (i64, i64)>> {
                let mut out = BTreeMap::new();
                for (t, p) in symbolic {
                    let m = consumer.fetch_watermarks(&t, p, REQUEST_TIMEOUT)?;
                    out.insert((t, p), m);
                }
                Ok(out)
            },
        )
        .await;
        let marks = match marks {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(source = %self.name, error = %e, "kafka: cannot read the partitions' watermarks; their start is recorded from their first record");
                return starts;
            }
        };
        starts
            .into_iter()
            .map(|(tp, o, why)| match (o, marks.get(&tp)) {
                (Offset::Beginning, Some(&(low, _))) => {
                    (tp, Offset::Offset(low), format!("{why} (offset {low})"))
                }
                (Offset::End, Some(&(_, high))) => {
                    (tp, Offset::Offset(high), format!("{why} (offset {high})"))
                }
                other => (tp, other.0, why),
            })
            .collect()
    }

    /// For a bounded run: each partition's (low watermark, high watermark, stop offset), for those
    /// of `tps` that have a stop (`until_offsets`, or `until`).
    async fn bounds(&self, tps: &[Tp]) -> Result<BTreeMap<Tp, (i64, i64, i64)>> {
        let wanted: Vec<Tp> = tps
            .iter()
            .filter(|tp| self.until.is_some() || self.explicit_end(tp).is_some())
            .cloned()
            .collect();
        if wanted.is_empty() {
            return Ok(BTreeMap::new());
        }
        let consumer = self.consumer();
        let until = self.until;
        let asked = wanted.clone();
        let found = blocking(
            move || -> rdkafka::error::KafkaResult<Vec<(i64, i64, Option<i64>)>> {
                let mut out = Vec::new();
                for (t, p) in &asked {
                    let (low, high) = consumer.fetch_watermarks(t, *p, REQUEST_TIMEOUT)?;
                    let at = match until {
                        Some(Until::Time(ms)) => Some(crate::replay::offset_at_time(
                            &*consumer,
                            t,
                            *p,
                            ms,
                            high,
                            REQUEST_TIMEOUT,
                        )?),
                        _ => None,
                    };
                    out.push((low, high, at));
                }
                Ok(out)
            },
        )
        .await
        .map_err(|e| {
            self.fail(format!(
                "cannot read where the bounded run ends (`until`): {e}"
            ))
        })?;
        Ok(wanted
            .into_iter()
            .zip(found)
            .map(|(tp, (low, high, at))| {
                let end = self.explicit_end(&tp).or(at).unwrap_or(high);
                tracing::info!(source = %self.name, topic = %tp.0, partition = tp.1, end, "kafka: bounded run: the partition is read up to this offset");
                (tp, (low, high, end))
            })
            .collect())
    }

    fn explicit_end(&self, tp: &Tp) -> Option<i64> {
        self.cfg
            .until_offsets
            .get(&tp.0)
            .and_then(|m| m.get(&tp.1.to_string()))
            .copied()
    }

    /// After the consumer reported an offset out of range, and with each metadata refresh
    /// (`due`; some brokers answer a fetch past the end with nothing rather than an error):
    /// compare the next offset of each partition that has nothing fetched with what the broker
    /// still has, and fail or skip ahead as `on_data_loss` says.
    async fn check_data_loss(&mut self, due: bool) -> Result<()> {
        let Some(f) = &self.fetcher else {
            return Ok(());
        };
        let reported = f
            .shared
            .out_of_range
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        if !reported && !due {
            return Ok(());
        }
        let tps: Vec<(Tp, i64)> = {
            let buffers = f.shared.buffers.lock().expect("poisoned");
            self.parts
                .iter()
                .filter_map(|(tp, part)| {
                    let b = buffers.get(&tp.0).and_then(|t| t.get(&tp.1))?;
                    if !b.records.is_empty() {
                        return None;
                    }
                    Some((tp.clone(), part.next.or(b.fetch_from)?))
                })
                .collect()
        };
        for (tp, next) in tps {
            let consumer = self.consumer();
            let (t, p) = tp.clone();
            let Ok((low, high)) =
                blocking(move || consumer.fetch_watermarks(&t, p, REQUEST_TIMEOUT)).await
            else {
                continue;
            };
            if next >= low && next <= high {
                continue;
            }
            let (topic, partition) = &tp;
            let what = if next < low {
                format!("offsets {next}..{low} of {topic}/{partition} are no longer on the broker (retention or deletion)")
            } else {
                format!("{topic}/{partition} ends at offset {high} but the source was at {next} (was the topic re-created?)")
            };
            match self.cfg.on_data_loss {
                OnDataLoss::Fail => {
                    return Err(self.fail(format!(
                        "data loss: {what}. Set on_data_loss = \"earliest\" to continue from offset {low}, skipping what is lost"
                    )))
                }
                OnDataLoss::Earliest => {
                    let lost = if next < low { low - next } else { 0 };
                    tracing::warn!(source = %self.name, topic, partition, lost, from = low, "kafka: data loss ({what}); continuing from the earliest offset (on_data_loss = \"earliest\")");
                    self.fetcher
                        .as_ref()
                        .expect("started")
                        .assign(topic, *partition, Offset::Offset(low))
                        .map_err(|e| self.fail(e))?;
                    self.parts.get_mut(&tp).expect("known").next = Some(low);
                }
            }
        }
        Ok(())
    }

    fn rows(
        &self,
        topic: &str,
        partition: i32,
        recs: &[Rec],
        dead: &DeadLetters,
    ) -> Result<RecordBatch> {
        let payloads: Vec<&[u8]> = recs.iter().map(|r| r.value().unwrap_or(b"")).collect();
        let decoded = self.decoder.decode(&payloads);
        for (i, reason) in decoded.failed {
            let r = &recs[i];
            let shown = &payloads[i][..payloads[i].len().min(4096)];
            dead.push(DeadLetter {
                origin: self.name.clone(),
                reason: format!(
                    "{reason} (topic {topic} partition {partition} offset {})",
                    r.offset
                ),
                payload: String::from_utf8_lossy(shown).into_owned(),
            });
        }
        let mut columns: Vec<ArrayRef> = decoded.columns;
        if self.cfg.envelope {
            let n = decoded.kept.len();
            let mut key = BinaryBuilder::with_capacity(n, 0);
            let mut topics = StringBuilder::with_capacity(n, n * topic.len());
            let mut partitions = Int32Builder::with_capacity(n);
            let mut offsets = Int64Builder::with_capacity(n);
            let mut ts = TimestampMillisecondBuilder::with_capacity(n);
            let mut ts_type = StringBuilder::with_capacity(n, n * 6);
            let mut headers = MapBuilder::new(None, StringBuilder::new(), BinaryBuilder::new());
            for &i in &decoded.kept {
                let r = &recs[i];
                key.append_option(r.key());
                topics.append_value(topic);
                partitions.append_value(partition);
                offsets.append_value(r.offset);
                ts.append_option(r.timestamp);
                ts_type.append_value(match r.timestamp_type {
                    1 => "create",
                    2 => "log_append",
                    _ => "none",
                });
                for (k, v) in &r.headers {
                    headers.keys().append_value(k);
                    headers.values().append_option(v.as_deref());
                }
                headers
                    .append(true)
                    .map_err(|e| Error::msg(e.to_string()))?;
            }
            columns.push(Arc::new(key.finish()));
            columns.push(Arc::new(topics.finish()));
            columns.push(Arc::new(partitions.finish()));
            columns.push(Arc::new(offsets.finish()));
            columns.push(Arc::new(ts.finish()));
            columns.push(Arc::new(ts_type.finish()));
            columns.push(Arc::new(headers.finish()));
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// Wait until the prefetched records of `r` are all here, fetching them again if they are
    /// not (a re-run after a restart).
    async fn gather(&mut self, r: &PartRange) -> Result<()> {
        self.fetcher()?;
        let tp = (r.topic.clone(), r.partition);
        let served = {
            let f = self.fetcher.as_ref().expect("started");
            let buffers = f.shared.buffers.lock().expect("poisoned");
            match buffers.get(&r.topic).and_then(|t| t.get(&r.partition)) {
                None => false,
                Some(b) => match (b.fetch_from, b.records.front()) {
                    (Some(f), _) if f > r.from => false,
                    (None, Some(first)) if first.offset > r.from => false,
                    _ => self.parts.contains_key(&tp),
                },
            }
        };
        if !served {
            tracing::info!(source = %self.name, topic = %r.topic, partition = r.partition, from = r.from, until = r.until, "kafka: fetching a planned range again");
            self.fetcher
                .as_ref()
                .expect("started")
                .assign(&r.topic, r.partition, Offset::Offset(r.from))
                .map_err(|e| self.fail(e))?;
            let next = self.restored.get(&tp).copied().or(Some(r.until));
            let end = self
                .bounds(std::slice::from_ref(&tp))
                .await?
                .get(&tp)
                .map(|b| b.2);
            self.parts.insert(tp.clone(), Part { next, end });
        }
        let began = Instant::now();
        let mut warned = Instant::now();
        let _waiting = Waiting::new(&self.fetcher.as_ref().expect("started").shared);
        loop {
            let f = self.fetcher.as_ref().expect("started");
            let arrived = f.shared.arrived.notified();
            let have = {
                let buffers = f.shared.buffers.lock().expect("poisoned");
                buffers
                    .get(&r.topic)
                    .and_then(|t| t.get(&r.partition))
                    .and_then(|b| b.records.back())
                    .map(|l| l.offset)
            };
            if have.is_some_and(|o| o >= r.until - 1) {
                return Ok(());
            }
            if f.shared
                .out_of_range
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                let consumer = self.consumer();
                let (t, p) = tp.clone();
                if let Ok((low, _)) =
                    blocking(move || consumer.fetch_watermarks(&t, p, REQUEST_TIMEOUT)).await
                {
                    if low >= r.until {
                        return match self.cfg.on_data_loss {
                            OnDataLoss::Fail => Err(self.fail(format!(
                                "data loss: the planned offsets {}..{} of {}/{} are no longer on the broker (it starts at {low}). Set on_data_loss = \"earliest\" to skip them",
                                r.from, r.until, r.topic, r.partition
                            ))),
                            OnDataLoss::Earliest => {
                                tracing::warn!(source = %self.name, topic = %r.topic, partition = r.partition, lost = r.until - r.from, "kafka: data loss: a planned range is no longer on the broker; skipped (on_data_loss = \"earliest\")");
                                Ok(())
                            }
                        };
                    }
                }
            }
            if began.elapsed() >= self.cfg.fetch_timeout {
                let trouble = f.consumer.context().trouble();
                return Err(self.fail(format!(
                    "the records {}..{} of {}/{} planned before the restart did not arrive within {} (fetch_timeout){}",
                    r.from,
                    r.until,
                    r.topic,
                    r.partition,
                    sluice_core::time::format_duration(self.cfg.fetch_timeout),
                    trouble.map(|t| format!("; broker: {t}")).unwrap_or_default()
                )));
            }
            if warned.elapsed() >= Duration::from_secs(10) {
                warned = Instant::now();
                tracing::warn!(source = %self.name, topic = %r.topic, partition = r.partition, from = r.from, until = r.until, got_until = ?have, "kafka: still waiting for a planned range");
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), arrived).await;
        }
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

/// Where the source stands: the next offset of each partition, by topic and partition number.
pub type Offsets = BTreeMap<String, BTreeMap<String, i64>>;

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
