//! Bounded runs of the `kafka` source: `--until-caught-up` stops at the partitions' ends as of the
//! start; a replay's `--from` / `--to` are resolved into exact offset ranges per partition (so the
//! run is bounded and its progress measurable), followed through the replay group's committed
//! offsets.

use crate::config::{KafkaSourceConfig, Start, Until};
use crate::ranges::PartRange;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sluice_core::options::{Joined, Options};
use sluice_core::{ReplayOf, ReplayProgress};
use sluice_formats::decoding::PayloadDecoding;
use std::collections::BTreeMap;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The source's own options (its decoding keys aside), as the source reads them.
fn source_config(options: &serde_json::Value) -> Result<KafkaSourceConfig, String> {
    let joined: Joined<PayloadDecoding, KafkaSourceConfig> =
        Options::parse("", options.clone()).map_err(|e| e.to_string())?;
    Ok(joined.own)
}

fn consumer(cfg: &KafkaSourceConfig, group: &str) -> Result<BaseConsumer, String> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap_servers)
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c.create()
        .map_err(|e| format!("cannot create a Kafka client: {e}"))
}

/// The offset of the first record of `topic`/`partition` at or after `ms`, or `high` (the
/// partition's end) when there is none — never past `high`. Blocking.
pub(crate) fn offset_at_time<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    ms: i64,
    high: i64,
    timeout: Duration,
) -> KafkaResult<i64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(ms))?;
    Ok(
        match consumer
            .offsets_for_times(tpl, timeout)?
            .find_partition(topic, partition)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(n)) => n.min(high),
            _ => high,
        },
    )
}

/// A position given on the command line: `earliest`, `latest`/`now`/`end`, a time (RFC 3339 or
/// milliseconds) or offsets `topic:partition=offset,...`.
enum Point {
    Earliest,
    Latest,
    Time(i64),
    Offsets(BTreeMap<(String, i32), i64>),
}

fn point(s: &str, what: &str) -> Result<Point, String> {
    match s {
        "earliest" => return Ok(Point::Earliest),
        "latest" | "now" | "end" => return Ok(Point::Latest),
        _ => {}
    }
    if s.contains('=') {
        let mut m = BTreeMap::new();
        for part in s.split(',') {
            let bad =
                || format!("{what} `{part}`: expected topic:partition=offset, e.g. orders:0=1200");
            let (tp, off) = part.split_once('=').ok_or_else(bad)?;
            let (t, p) = tp.rsplit_once(':').ok_or_else(bad)?;
            let p: i32 = p.trim().parse().map_err(|_| bad())?;
            let off: i64 = off.trim().parse().map_err(|_| bad())?;
            m.insert((t.trim().to_string(), p), off);
        }
        return Ok(Point::Offsets(m));
    }
    match Start::parse("", s) {
        Ok(Start::Time(ms)) => Ok(Point::Time(ms)),
        _ => match Until::parse("", s) {
            Ok(Until::Time(ms)) => Ok(Point::Time(ms)),
            _ => Err(format!(
                "{what} `{s}`: expected earliest, latest/now, a time (2026-11-20T08:00:00Z or \
                 milliseconds) or offsets topic:partition=offset,..."
            )),
        },
    }
}

/// `--until-caught-up`: stop at the partitions' ends as of the start (unless `until` says
/// otherwise).
pub(crate) fn until_caught_up(options: &mut serde_json::Value) {
    sluice_core::bounded::until_end(options);
}

/// `sluice replay`: read exactly the offsets from `from` to `to`, in a consumer group of the
/// replay's own.
pub(crate) fn replay(
    of: &ReplayOf<'_>,
    options: &mut serde_json::Value,
    from: &str,
    to: Option<&str>,
) -> Result<Box<dyn ReplayProgress>, String> {
    let cfg = source_config(options)?;
    let ranges = replay_ranges(&cfg, from, to)?;
    let mut start: serde_json::Map<String, serde_json::Value> = Default::default();
    let mut until: serde_json::Map<String, serde_json::Value> = Default::default();
    for r in &ranges {
        start
            .entry(r.topic.clone())
            .or_insert_with(|| serde_json::json!({}))[r.partition.to_string()] = r.from.into();
        until
            .entry(r.topic.clone())
            .or_insert_with(|| serde_json::json!({}))[r.partition.to_string()] = r.until.into();
    }
    let group = format!("sluice-{}-{}-{}", of.app, of.source, of.scope);
    options["start_offsets"] = start.into();
    options["until_offsets"] = until.into();
    // Partitions that appear during the replay contribute nothing.
    options["start"] = "latest".into();
    options["until"] = "end".into();
    options["group_id"] = group.clone().into();
    Ok(Box::new(Progress {
        offsets: GroupOffsets {
            consumer: consumer(&cfg, &group)?,
        },
        ranges,
    }))
}

/// A replay's ranges and its group's committed offsets.
struct Progress {
    offsets: GroupOffsets,
    ranges: Vec<PartRange>,
}

impl ReplayProgress for Progress {
    fn parts(&self) -> Vec<(String, u64)> {
        self.ranges
            .iter()
            .map(|r| {
                (
                    format!("{}/{}", r.topic, r.partition),
                    (r.until - r.from) as u64,
                )
            })
            .collect()
    }

    fn done(&self) -> Vec<u64> {
        let at = self.offsets.committed(&self.ranges);
        self.ranges
            .iter()
            .zip(at)
            .map(|(r, at)| (at.min(r.until) - r.from).max(0) as u64)
            .collect()
    }
}

/// The exact ranges a replay of source options `options` reads: every partition of its topics
/// from `from` up to `to` (default: the end now). Blocking; call off the async workers.
fn replay_ranges(
    cfg: &KafkaSourceConfig,
    from: &str,
    to: Option<&str>,
) -> Result<Vec<PartRange>, String> {
    let from = point(from, "--from")?;
    let to = point(to.unwrap_or("now"), "--to")?;
    let c = consumer(cfg, "sluice-replay-planner")?;
    let mut tps: Vec<(String, i32)> = Vec::new();
    if !cfg.assign.is_empty() {
        for (t, ps) in &cfg.assign {
            tps.extend(ps.iter().map(|p| (t.clone(), *p)));
        }
    } else {
        let re = cfg
            .topic_pattern
            .as_deref()
            .map(|p| regex::Regex::new(&format!("^(?:{p})$")))
            .transpose()
            .map_err(|e| e.to_string())?;
        let md = c
            .fetch_metadata(None, TIMEOUT)
            .map_err(|e| format!("cannot read the topics: {e}"))?;
        for t in md.topics() {
            let chosen = match &re {
                Some(re) => re.is_match(t.name()) && !t.name().starts_with("__"),
                None => cfg.topics.iter().any(|x| x == t.name()),
            };
            if chosen && t.error().is_none() {
                tps.extend(
                    t.partitions()
                        .iter()
                        .map(|p| (t.name().to_string(), p.id())),
                );
            }
        }
    }
    if tps.is_empty() {
        return Err("no partitions to replay: do the source's topics exist?".into());
    }
    let resolve = |p: &Point, low: i64, high: i64, t: &str, part: i32| -> Result<i64, String> {
        Ok(match p {
            Point::Earliest => low,
            Point::Latest => high,
            Point::Offsets(m) => m.get(&(t.to_string(), part)).copied().unwrap_or(high),
            Point::Time(ms) => offset_at_time(&c, t, part, *ms, high, TIMEOUT)
                .map_err(|e| format!("cannot find offsets by time: {e}"))?
                .max(low),
        })
    };
    let mut out = Vec::new();
    for (t, p) in tps {
        let (low, high) = c
            .fetch_watermarks(&t, p, TIMEOUT)
            .map_err(|e| format!("cannot read the offsets of {t}/{p}: {e}"))?;
        let start = resolve(&from, low, high, &t, p)?.clamp(low, high);
        let end = resolve(&to, low, high, &t, p)?.clamp(start, high);
        out.push(PartRange {
            topic: t,
            partition: p,
            from: start,
            until: end,
        });
    }
    Ok(out)
}

/// Follows a consumer group's committed offsets (a replay commits after each batch).
struct GroupOffsets {
    consumer: BaseConsumer,
}

impl GroupOffsets {
    /// The committed offset of each range's partition (its `from` where none yet). Blocking.
    fn committed(&self, ranges: &[PartRange]) -> Vec<i64> {
        let mut tpl = TopicPartitionList::new();
        for r in ranges {
            tpl.add_partition(&r.topic, r.partition);
        }
        let got = self.consumer.committed_offsets(tpl, TIMEOUT).ok();
        ranges
            .iter()
            .map(|r| {
                match got
                    .as_ref()
                    .and_then(|g| g.find_partition(&r.topic, r.partition))
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(n)) => n.max(r.from),
                    _ => r.from,
                }
            })
            .collect()
    }
}
