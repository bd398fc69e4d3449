//! Bounded runs of the `kinesis` source: `--until-caught-up` reads each shard up to what had
//! arrived when the source started; a replay's `--from` / `--to` become its `start` and `until`
//! (times: Kinesis keeps no offsets a replay could be cut by). A replay's progress is followed per
//! shard in seconds of arrival time, from what the replay's own source has planned.

use crate::config::{parse_until, Aws, KinesisSourceConfig, Start};
use sluice_core::options::{Joined, Options};
use sluice_core::{ReplayOf, ReplayProgress};
use sluice_formats::decoding::PayloadDecoding;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

/// Per replay (`<scope>/<source>`), the arrival time (ms) of the last record planned per shard:
/// written by the replay's source, read by its progress bars, in the same process.
type Planned = Arc<Mutex<BTreeMap<String, i64>>>;
static PLANNED: LazyLock<Mutex<HashMap<String, Planned>>> = LazyLock::new(Default::default);

/// Where the source of `source` in a replay scoped `scope` notes its progress, if it is one.
pub(crate) fn planned(scope: Option<&str>, source: &str) -> Option<Planned> {
    let key = format!("{}/{source}", scope?);
    PLANNED.lock().expect("poisoned").get(&key).cloned()
}

pub(crate) fn until_caught_up(options: &mut serde_json::Value) {
    sluice_core::bounded::until_end(options);
}

pub(crate) fn replay(
    of: &ReplayOf<'_>,
    options: &mut serde_json::Value,
    from: &str,
    to: Option<&str>,
) -> Result<Box<dyn ReplayProgress>, String> {
    let joined: Joined<PayloadDecoding, Joined<Aws, KinesisSourceConfig>> =
        Options::parse("", options.clone()).map_err(|e| e.to_string())?;
    let aws = joined.own.shared;
    let seqs = |text: &str, what: &str| -> Result<BTreeMap<String, String>, String> {
        let mut m = BTreeMap::new();
        for part in text.split(',') {
            let (shard, seq) = part.split_once('=').ok_or_else(|| {
                format!("{what} `{part}`: expected shard=sequence, e.g. shardId-000000000001=4959…")
            })?;
            m.insert(shard.trim().to_string(), seq.trim().to_string());
        }
        Ok(m)
    };
    let from_seqs = if from.contains('=') {
        Some(seqs(from, "--from")?)
    } else {
        None
    };
    let to_seqs = match to {
        Some(t) if t.contains('=') => Some(seqs(t, "--to")?),
        _ => None,
    };
    let start = match (from, &from_seqs) {
        (_, Some(_)) | ("earliest" | "trim_horizon", _) => Start::TrimHorizon,
        _ => match Start::parse("", from) {
            Ok(Start::Time(ms)) => Start::Time(ms),
            _ => {
                return Err(format!(
                    "--from `{from}`: expected earliest (trim_horizon), a time \
                     (2026-11-20T08:00:00Z or milliseconds) or sequence numbers shard=sequence,..."
                ))
            }
        },
    };
    let until = match (to, &to_seqs) {
        (_, Some(_)) | (None, _) => parse_until("", "end"),
        (Some(t), None) => parse_until("", t),
    }
    .map_err(|_| {
        format!(
            "--to `{}`: expected end/now, a time or shard=sequence,...",
            to.unwrap_or("")
        )
    })?;
    // The replay's shards and the oldest time `trim_horizon` can mean (the retention period).
    let (shards, retention_h) = tokio::runtime::Handle::current().block_on(async {
        let client = crate::client::connect(&aws).await;
        let shards = crate::source::list_shards(&client, &aws.stream)
            .await
            .map_err(|e| format!("cannot list the shards of {}: {e:?}", aws.shown()))?;
        let summary = client
            .describe_stream_summary()
            .stream_name(&aws.stream)
            .send()
            .await
            .map_err(|e| format!("cannot describe {}: {e}", aws.shown()))?;
        let hours = summary
            .stream_description_summary
            .map_or(24, |s| s.retention_period_hours);
        Ok::<_, String>((shards, hours))
    })?;
    let from_ms = match start {
        Start::Time(ms) => ms,
        _ => until - i64::from(retention_h) * 3_600_000,
    };
    options["start"] = match start {
        Start::Time(ms) => ms.to_string().into(),
        _ => "trim_horizon".into(),
    };
    options["until"] = until.to_string().into();
    if let Some(m) = &from_seqs {
        options["start_sequences"] = serde_json::to_value(m).expect("a map");
    }
    let mut until_seqs = to_seqs.unwrap_or_default();
    if let Some(m) = &from_seqs {
        // Shards --from does not name contribute nothing: they stop before their first record.
        for shard in &shards {
            if !m.contains_key(shard) {
                until_seqs.insert(shard.clone(), "0".into());
            }
        }
    }
    if !until_seqs.is_empty() {
        options["until_sequences"] = serde_json::to_value(&until_seqs).expect("a map");
    }
    let planned: Planned = Default::default();
    PLANNED
        .lock()
        .expect("poisoned")
        .insert(format!("{}/{}", of.scope, of.source), planned.clone());
    Ok(Box::new(Progress {
        shards,
        from_ms,
        until_ms: until,
        planned,
    }))
}

struct Progress {
    shards: Vec<String>,
    from_ms: i64,
    until_ms: i64,
    planned: Planned,
}

impl ReplayProgress for Progress {
    /// Each shard, its range in seconds of arrival time.
    fn parts(&self) -> Vec<(String, u64)> {
        let secs = ((self.until_ms - self.from_ms).max(0) / 1000) as u64;
        self.shards.iter().map(|s| (s.clone(), secs)).collect()
    }

    fn unit(&self) -> &'static str {
        "s"
    }

    fn done(&self) -> Vec<u64> {
        let planned = self.planned.lock().expect("poisoned");
        self.shards
            .iter()
            .map(|s| {
                planned.get(s).map_or(0, |at| {
                    (((*at).min(self.until_ms) - self.from_ms).max(0) / 1000) as u64
                })
            })
            .collect()
    }
}
