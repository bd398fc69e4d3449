//! The keys of `type = "kafka"` sources and sinks. The doc comments are the user documentation
//! (docs/kafka.md repeats them with examples).

use schemars::JsonSchema;
use serde::Deserialize;
use sluice_core::time::serde_duration;
use sluice_core::{Accepted, ConfigError, Format, FormatOf};
pub use sluice_formats::avro::Wire;
use std::collections::BTreeMap;
use std::time::Duration;

/// `[sources.NAME] type = "kafka"`: a direct source — no receiver and no write-ahead log; each batch
/// is a set of offset ranges recorded in the batch plan before it runs.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// `host:port[,host:port...]` of the brokers.
    pub bootstrap_servers: String,
    /// Topics to read, all their partitions (new partitions are picked up, see
    /// `metadata_refresh`). One of `topics`, `topic_pattern` and `assign` is required.
    #[serde(default)]
    pub topics: Vec<String>,
    /// A regular expression: every topic whose whole name matches is read (new topics too).
    #[serde(default)]
    pub topic_pattern: Option<String>,
    /// Explicit partitions, e.g. `assign = { orders = [0, 1] }`: only these are read.
    #[serde(default)]
    pub assign: BTreeMap<String, Vec<i32>>,
    /// The consumer group the processed offsets are committed to after each batch (for lag
    /// monitoring and hand-off; never auto-commit). Default `sluice-<app>-<source>`.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Where a partition starts when the checkpoint does not know it: `earliest`, `latest`
    /// (default), `committed` (the group's committed offset, `earliest` without one), or a time,
    /// RFC 3339 (`2026-11-20T08:00:00Z`) or milliseconds since the epoch: the first record at or
    /// after it. The checkpoint, when present, wins.
    #[serde(default = "default_start")]
    pub start: String,
    /// Exact start offsets for some partitions, e.g. `start_offsets = { orders = { "0" = 42 } }`;
    /// they win over `start` (not over the checkpoint).
    #[serde(default)]
    pub start_offsets: BTreeMap<String, BTreeMap<String, i64>>,
    /// A bounded run (backfills, `sluice replay`): stop each partition here — `end` (its end
    /// when the source starts) or a time (RFC 3339 or milliseconds: the first record at or after
    /// it is not read). Once every partition is there the gateway stops after the batch in flight.
    #[serde(default)]
    pub until: Option<String>,
    /// Exact stop offsets (exclusive) for some partitions, e.g. `{ orders = { "0" = 5000 } }`;
    /// they win over `until`. Partitions in neither are read without end.
    #[serde(default)]
    pub until_offsets: BTreeMap<String, BTreeMap<String, i64>>,
    /// Add the envelope columns `key` (binary), `topic`, `partition`, `offset`, `timestamp`,
    /// `timestamp_type` and `headers` (a map of string to binary) after the value's (default true).
    #[serde(default = "default_true")]
    pub envelope: bool,
    /// At most this many records per second per partition (a batch of interval `i` takes at most
    /// `rate × i` from each partition). Backpressure, when enabled, lowers it further, shared
    /// between partitions by their backlog.
    #[serde(default)]
    pub max_rate_per_partition: Option<u64>,
    /// When offsets the source needs are no longer on the broker (retention, deletion, a
    /// re-created topic): `fail` (default) stops the gateway with the partition and offsets;
    /// `earliest` logs how many records were lost and continues from the earliest offset there.
    #[serde(default)]
    pub on_data_loss: OnDataLoss,
    /// How often the topic list and partition counts are read again (default 30s).
    #[serde(
        default = "default_metadata_refresh",
        deserialize_with = "serde_duration::deserialize"
    )]
    #[schemars(with = "sluice_core::time::DurationText")]
    pub metadata_refresh: Duration,
    /// How long a batch re-run after a restart waits for its exact records (default 2m): the
    /// broker being down meanwhile only delays it; after this the run stops with an error.
    #[serde(
        default = "default_fetch_timeout",
        deserialize_with = "serde_duration::deserialize"
    )]
    #[schemars(with = "sluice_core::time::DurationText")]
    pub fetch_timeout: Duration,
    /// Fetched records held ahead of the batches, in MiB (default 128). Fetching pauses above it,
    /// so it bounds one batch: about 128 MiB / (record size + 64 B) records.
    #[serde(default = "default_prefetch_mib")]
    pub prefetch_mib: usize,
    /// With `app.scale_out`: the one-partition topic where the gateways of the group append each
    /// batch's offset ranges before reading them; its order decides which gateway owns a range.
    /// Created when missing (one partition, the broker's default replication factor). Default
    /// `<group_id>.plans`. Keep its retention far longer than a rebalance (the broker default, 7
    /// days, is plenty).
    #[serde(default)]
    pub plan_topic: Option<String>,
    /// librdkafka properties passed through, e.g. `{ "security.protocol" = "ssl",
    /// "ssl.ca.location" = "ca.pem" }` or SASL's `sasl.mechanism`, `sasl.username`,
    /// `sasl.password`. Values of keys naming a password or secret are never logged.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnDataLoss {
    #[default]
    Fail,
    Earliest,
}

/// `[sinks.NAME] type = "kafka"`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// `host:port[,host:port...]` of the brokers.
    pub bootstrap_servers: String,
    /// The topic records go to.
    pub topic: String,
    /// Route each record by the row's `topic` column instead (rows with a NULL one go to
    /// `topic`). Off by default: a `SELECT *` from a Kafka source carries each record's source
    /// topic in that column, and would otherwise write it back into the topic it came from.
    #[serde(default)]
    pub topic_column: bool,
    /// Send each record to the partition in the row's `partition` column (rows with a NULL one
    /// go through the partitioner). Off by default, for the same reason as `topic_column`: the
    /// source's partition numbers need not exist in the sink's topic.
    #[serde(default)]
    pub partition_column: bool,
    /// How rows without a `value` column become record values: `json` (default; one object per
    /// row), `csv` (no header), `text` (the single remaining column) or `avro` (one datum per row,
    /// with a record schema derived from the columns: docs/kafka.md shows the mapping).
    #[serde(default)]
    pub format: FormatOf<ValueFormats>,
    /// How Avro values are framed: `plain` (default) or `confluent` (a zero byte and
    /// `avro_schema_id` first, for readers that expect Confluent's wire format).
    #[serde(default)]
    pub avro_wire: Wire,
    /// The schema id written before each value with `avro_wire = "confluent"` (register the
    /// schema sluice logs at start under it).
    #[serde(default)]
    pub avro_schema_id: Option<u32>,
    /// Exactly once (default true): each batch is one Kafka transaction, keyed by job and batch
    /// time, so a batch re-run after a crash is never written twice (read_committed consumers see
    /// each record once). A broker without transactions stops the gateway at start; set
    /// `exactly_once = false` there for the idempotent producer (at-least-once).
    #[serde(default = "default_true")]
    pub exactly_once: bool,
    /// The producer's transactional id (default `sluice-<app>-<sink>`); one gateway per id.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// How long a transaction or a flush may take (default 60s).
    #[serde(
        default = "default_transaction_timeout",
        deserialize_with = "serde_duration::deserialize"
    )]
    #[schemars(with = "sluice_core::time::DurationText")]
    pub transaction_timeout: Duration,
    /// librdkafka producer properties passed through, e.g. `{ "compression.type" = "zstd",
    /// "linger.ms" = "20" }`, TLS and SASL as for the source.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// The formats of a record value the Kafka sink writes.
pub struct ValueFormats;
impl Accepted for ValueFormats {
    const FORMATS: &'static [Format] = &[Format::Json, Format::Csv, Format::Text, Format::Avro];
}

fn default_start() -> String {
    "latest".into()
}
fn default_true() -> bool {
    true
}
fn default_metadata_refresh() -> Duration {
    Duration::from_secs(30)
}
fn default_fetch_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_prefetch_mib() -> usize {
    128
}
fn default_transaction_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Where a bounded run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The end of each partition when the source starts reading it.
    End,
    /// Milliseconds since the epoch.
    Time(i64),
}

impl Until {
    pub fn parse(path: &str, s: &str) -> Result<Until, ConfigError> {
        match s {
            "end" => Ok(Until::End),
            _ => match Start::parse(path, s) {
                Ok(Start::Time(ms)) => Ok(Until::Time(ms)),
                _ => Err(ConfigError::new(
                    format!("{path}.until"),
                    "`end`, an RFC 3339 time (2026-11-20T08:00:00Z) or milliseconds since the epoch",
                    format!("\"{s}\""),
                )),
            },
        }
    }
}

/// Where partitions unknown to the checkpoint start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Earliest,
    Latest,
    Committed,
    /// Milliseconds since the epoch.
    Time(i64),
}

impl Start {
    pub fn parse(path: &str, s: &str) -> Result<Start, ConfigError> {
        match s {
            "earliest" => Ok(Start::Earliest),
            "latest" => Ok(Start::Latest),
            "committed" => Ok(Start::Committed),
            _ => sluice_core::time::parse_instant(s)
                .map(Start::Time)
                .ok_or_else(|| {
                    ConfigError::new(
                        format!("{path}.start"),
                        "`earliest`, `latest`, `committed`, an RFC 3339 time \
                         (2026-11-20T08:00:00Z) or milliseconds since the epoch",
                        format!("\"{s}\""),
                    )
                }),
        }
    }
}

/// Keys sluice sets itself; passing them through `properties` would break its guarantees.
const OWN_KEYS: &[(&str, &str)] = &[
    ("bootstrap.servers", "set `bootstrap_servers`"),
    ("group.id", "set `group_id`"),
    (
        "enable.auto.commit",
        "offsets are committed after each batch",
    ),
    ("enable.auto.offset.store", "offsets are stored by sluice"),
    ("auto.offset.reset", "set `start` and `on_data_loss`"),
    ("transactional.id", "set `transactional_id`"),
    ("enable.idempotence", "set `exactly_once`"),
];

/// Check the pass-through properties of the component at `path`.
pub fn check_properties(path: &str, props: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for k in props.keys() {
        if let Some((_, instead)) = OWN_KEYS.iter().find(|(own, _)| own == k) {
            return Err(ConfigError::new(
                format!("{path}.properties.\"{k}\""),
                "a librdkafka property sluice does not set itself",
                format!("`{k}`"),
            )
            .with_hint(format!("remove it: {instead}")));
        }
    }
    Ok(())
}

/// Whether a property's value must never be shown.
pub fn is_secret(key: &str) -> bool {
    sluice_core::secret::is_secret_key(key) || key.ends_with(".key.pem")
}

/// The pass-through properties as `k=v, ...` for errors, with secrets masked.
pub fn shown(props: &BTreeMap<String, String>) -> String {
    props
        .iter()
        .map(|(k, v)| {
            if is_secret(k) {
                format!("{k}=***")
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions_parse_and_bad_ones_are_named() {
        assert_eq!(Start::parse("s", "earliest").unwrap(), Start::Earliest);
        assert_eq!(
            Start::parse("s", "2026-11-20T08:00:00Z").unwrap(),
            Start::Time(1_795_161_600_000)
        );
        assert_eq!(Start::parse("s", "1000").unwrap(), Start::Time(1000));
        let e = Start::parse("sources.k", "yesterday").unwrap_err();
        assert_eq!(e.path, "sources.k.start");
        assert!(e.found.contains("yesterday"));
    }

    #[test]
    fn properties_sluice_owns_are_refused_with_the_key_to_use() {
        let props = BTreeMap::from([("group.id".to_string(), "x".to_string())]);
        let e = check_properties("sources.k", &props).unwrap_err();
        assert_eq!(e.path, "sources.k.properties.\"group.id\"");
        assert!(e.hint.unwrap().contains("group_id"));
        assert!(is_secret("sasl.password"));
        let props = BTreeMap::from([
            ("sasl.password".to_string(), "hunter2".to_string()),
            ("linger.ms".to_string(), "5".to_string()),
        ]);
        assert_eq!(shown(&props), "linger.ms=5, sasl.password=***");
    }
}
