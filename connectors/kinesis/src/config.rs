//! The keys of `type = "kinesis"` sources and sinks. The doc comments are the user documentation
//! (docs/kinesis.md repeats them with examples).

use schemars::JsonSchema;
use serde::Deserialize;
use sluice_core::time::serde_duration;
use sluice_core::{Accepted, ConfigError, Format, FormatOf, Secret};
use std::collections::BTreeMap;
use std::time::Duration;

/// Where and as whom: the keys both the source and the sink have.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Aws {
    /// The stream's name.
    pub stream: String,
    /// The AWS region, e.g. `eu-west-1`. Default: the standard chain (`AWS_REGION`, the profile),
    /// else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// A Kinesis-compatible endpoint instead of AWS's, e.g. `http://127.0.0.1:4567`
    /// (kinesis-local, kinesalite, LocalStack).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// A static access key id. Without it the standard AWS credential chain is used: the
    /// environment (`AWS_ACCESS_KEY_ID`, ...), the profile (`AWS_PROFILE`, ~/.aws), web identity
    /// (EKS), then the instance or container metadata.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// The secret key that goes with `access_key_id` (never printed).
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// A session token for temporary static credentials (never printed).
    #[serde(default)]
    pub session_token: Option<Secret>,
}

impl Aws {
    pub fn check(&self, path: &str) -> Result<(), ConfigError> {
        if self.stream.trim().is_empty() {
            return Err(ConfigError::new(
                format!("{path}.stream"),
                "the name of a Kinesis stream",
                "an empty string",
            ));
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(_), None) => Err(ConfigError::new(
                format!("{path}.secret_access_key"),
                "a secret key with `access_key_id`",
                "none",
            )),
            (None, Some(_)) => Err(ConfigError::new(
                format!("{path}.access_key_id"),
                "an access key id with `secret_access_key`",
                "none",
            )),
            _ => Ok(()),
        }?;
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(ConfigError::new(
                    format!("{path}.endpoint"),
                    "a URL such as http://127.0.0.1:4567",
                    format!("\"{e}\""),
                ));
            }
        }
        Ok(())
    }

    /// Where requests go, for messages.
    pub fn shown(&self) -> String {
        match &self.endpoint {
            Some(e) => format!("stream `{}` at {e}", self.stream),
            None => format!(
                "stream `{}` in {}",
                self.stream,
                self.region.as_deref().unwrap_or("the default region")
            ),
        }
    }
}

/// `[sources.NAME] type = "kinesis"`: a direct source, as `kafka` is — no receiver and no
/// write-ahead log; each batch is a sequence-number range per shard, recorded in the batch plan
/// before it runs, and a re-run after a crash reads exactly those records again.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KinesisSourceConfig {
    /// Where the stream's shards start when the checkpoint does not know them: `trim_horizon`
    /// (the oldest record kept), `latest` (default: what arrives after the first start — fixed
    /// then, as a time, so nothing arriving while the gateway is down is skipped), or a time,
    /// RFC 3339 (`2026-11-20T08:00:00Z`) or milliseconds since the epoch (`AT_TIMESTAMP`). Shards
    /// made later by a split or merge start at their beginning, after their parents. The
    /// checkpoint, when present, wins.
    #[serde(default = "default_start")]
    pub start: String,
    /// Exact start positions for some shards, e.g. `{ "shardId-000000000001" = "4959...2850" }`:
    /// the record with this sequence number and those after it. They win over `start` (not over
    /// the checkpoint).
    #[serde(default)]
    pub start_sequences: BTreeMap<String, String>,
    /// Exact stop positions for some shards (a bounded run): each listed shard is read up to the
    /// record with this sequence number, which is not read. They bound those shards beside
    /// `until`.
    #[serde(default)]
    pub until_sequences: BTreeMap<String, String>,
    /// A bounded run (backfills, `--until-caught-up`, `sluice replay`): read each shard up to the
    /// first record that arrived at or after this — `end` (when the source starts) or a time
    /// (RFC 3339 or milliseconds since the epoch). Once every shard is there the gateway stops
    /// after the batch in flight.
    #[serde(default)]
    pub until: Option<String>,
    /// Add the envelope columns `stream`, `shard_id`, `sequence_number`, `sub_sequence_number`,
    /// `partition_key` and `approximate_arrival_timestamp` after the payload's (default true).
    #[serde(default = "default_true")]
    pub envelope: bool,
    /// At most this many records per shard in one batch (default: no limit). Backpressure, when
    /// enabled, lowers what a batch takes further, shared between shards by their backlog.
    #[serde(default)]
    pub max_records_per_shard: Option<u64>,
    /// Records held ahead of the batches, in MiB over all shards (default 64). Reading pauses
    /// above it.
    #[serde(default = "default_prefetch_mib")]
    pub prefetch_mib: usize,
    /// At most this many records per GetRecords call (default 10000, Kinesis's maximum).
    #[serde(default = "default_records_per_call")]
    pub records_per_call: i32,
    /// How long a shard's reader waits after a GetRecords call that returned nothing (default
    /// 250ms). Calls on one shard are never closer than 200 ms (Kinesis allows 5 per second).
    #[serde(
        default = "default_idle_wait",
        deserialize_with = "serde_duration::deserialize"
    )]
    #[schemars(with = "sluice_core::time::DurationText")]
    pub idle_wait: Duration,
    /// How often the shard list is read again for splits and merges (default 10s; also at once
    /// when a shard is read to its end).
    #[serde(
        default = "default_shard_refresh",
        deserialize_with = "serde_duration::deserialize"
    )]
    #[schemars(with = "sluice_core::time::DurationText")]
    pub shard_refresh: Duration,
    /// How long a batch re-run after a restart waits for its exact records (default 2m): the
    /// service being unreachable meanwhile only delays it; after this the run stops with an error.
    #[serde(
        default = "default_fetch_timeout",
        deserialize_with = "serde_duration::deserialize"
    )]
    #[schemars(with = "sluice_core::time::DurationText")]
    pub fetch_timeout: Duration,
    /// With `app.scale_out`: the DynamoDB table the gateways share the shards through (a lease
    /// per shard, and the claim of each batch's range), created when missing (on-demand
    /// billing). Default `sluice-<app>-<source>`.
    #[serde(default)]
    pub lease_table: Option<String>,
    /// With `app.scale_out`: a DynamoDB-compatible endpoint for the lease table instead of AWS's,
    /// e.g. `http://127.0.0.1:4568` (dynalite). Region and credentials are the stream's.
    #[serde(default)]
    pub dynamodb_endpoint: Option<String>,
    /// With `app.scale_out`: a lease whose owner has not renewed it for this long is taken by
    /// another gateway (default 10s; renewed every third of it).
    #[serde(
        default = "default_lease_duration",
        deserialize_with = "serde_duration::deserialize"
    )]
    #[schemars(with = "sluice_core::time::DurationText")]
    pub lease_duration: Duration,
    /// De-aggregate records written by the Kinesis Producer Library (KPL): each aggregate becomes
    /// its user records, with their own partition keys and sub-sequence numbers (default true). An
    /// aggregate whose checksum or contents are bad goes to the dead-letter output.
    #[serde(default = "default_true")]
    pub deaggregate: bool,
}

/// `[sinks.NAME] type = "kinesis"`: `PutRecords` in calls of at most 500 records and 5 MiB;
/// only the entries Kinesis refused are sent again, with backoff. At-least-once: a batch re-run
/// after a crash is sent again (Kinesis has no transactions).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KinesisSinkConfig {
    /// The partition key of each record: a template where `{column}` is the row's value, e.g.
    /// `"{user_id}"`. Default: the row's `partition_key` column if it has one, else a hash of the
    /// record's data (the same data always goes to the same shard).
    #[serde(default)]
    pub partition_key: Option<String>,
    /// The explicit hash key of each record (a decimal 128-bit number choosing the shard), as a
    /// template like `partition_key`. Default: none (Kinesis hashes the partition key).
    #[serde(default)]
    pub explicit_hash_key: Option<String>,
    /// How rows become record data when they have no `data` column: `json` (default; one object
    /// per row), `csv` (no header) or `text` (the single remaining column). A `data` column
    /// (string or binary) is the record's data as it is. The columns `partition_key` and
    /// `explicit_hash_key` are never part of the data.
    #[serde(default)]
    pub format: FormatOf<DataFormats>,
    /// How many times a call's refused entries (throttling, internal errors) are sent again
    /// before the batch fails (default 10); waits grow from 100 ms to 5 s.
    #[serde(default = "default_max_retries")]
    pub max_retries: usize,
}

/// The formats of a Kinesis record the sink writes.
pub struct DataFormats;
impl Accepted for DataFormats {
    const FORMATS: &'static [Format] = &[Format::Json, Format::Csv, Format::Text];
}

/// Where shards unknown to the checkpoint start, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    TrimHorizon,
    Latest,
    /// Milliseconds since the epoch.
    Time(i64),
}

impl Start {
    pub fn parse(path: &str, s: &str) -> Result<Start, ConfigError> {
        match s {
            "trim_horizon" => Ok(Start::TrimHorizon),
            "latest" => Ok(Start::Latest),
            _ => sluice_core::time::parse_instant(s)
                .map(Start::Time)
                .ok_or_else(|| {
                    ConfigError::new(
                        format!("{path}.start"),
                        "`trim_horizon`, `latest`, an RFC 3339 time (2026-11-20T08:00:00Z) \
                         or milliseconds since the epoch",
                        format!("\"{s}\""),
                    )
                }),
        }
    }
}

/// Check the sequence numbers of `start_sequences` / `until_sequences` (`key`).
pub fn check_sequences(
    path: &str,
    key: &str,
    map: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (shard, seq) in map {
        if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ConfigError::new(
                format!("{path}.{key}.\"{shard}\""),
                "a sequence number (decimal digits), e.g. \"49590338271490256608559692538361571095921575989136588898\"",
                format!("\"{seq}\""),
            ));
        }
    }
    Ok(())
}

/// A bounded run's end, milliseconds since the epoch (`end`: now).
pub fn parse_until(path: &str, s: &str) -> Result<i64, ConfigError> {
    match s {
        "end" => Ok(sluice_core::time::now_ms()),
        _ => match Start::parse(path, s) {
            Ok(Start::Time(ms)) => Ok(ms),
            _ => Err(ConfigError::new(
                format!("{path}.until"),
                "`end`, an RFC 3339 time (2026-11-20T08:00:00Z) or milliseconds since the epoch",
                format!("\"{s}\""),
            )),
        },
    }
}

fn default_start() -> String {
    "latest".into()
}
fn default_true() -> bool {
    true
}
fn default_prefetch_mib() -> usize {
    64
}
fn default_records_per_call() -> i32 {
    10_000
}
fn default_idle_wait() -> Duration {
    Duration::from_millis(250)
}
fn default_shard_refresh() -> Duration {
    Duration::from_secs(10)
}
fn default_fetch_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_lease_duration() -> Duration {
    Duration::from_secs(10)
}
fn default_max_retries() -> usize {
    10
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions_parse_and_bad_ones_are_named() {
        assert_eq!(
            Start::parse("s", "trim_horizon").unwrap(),
            Start::TrimHorizon
        );
        assert_eq!(
            Start::parse("s", "2026-11-20T08:00:00Z").unwrap(),
            Start::Time(1_795_161_600_000)
        );
        let e = Start::parse("sources.k", "earliest").unwrap_err();
        assert_eq!(e.path, "sources.k.start");
        assert!(e.expected.contains("trim_horizon"), "{e}");
    }
}
