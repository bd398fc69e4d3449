//! `sluice replay`: reprocess a range of a config's Kafka input through the same jobs and sinks,
//! into a checkpoint of its own, with a progress bar per partition; and the bounded-run change
//! `sluice run --until-caught-up` makes to a config.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sluice_config::AppConfig;
use sluice_kafka::{GroupOffsets, PartRange};
use std::time::Duration;

/// Every source must be bounded: each `kafka` source stops at its partitions' ends as they are
/// when it starts.
pub fn until_caught_up(cfg: &mut AppConfig) -> Result<(), String> {
    for s in &mut cfg.sources {
        if s.kind != "kafka" {
            return Err(format!(
                "--until-caught-up needs every source to be bounded; source `{}` ({}) is not (only kafka sources are)",
                s.name, s.kind
            ));
        }
        if s.options.get("until").is_none() {
            s.options["until"] = "end".into();
        }
    }
    Ok(())
}

/// What a replay changes in the config, and how to follow it.
pub struct Replay {
    /// (source name, its options, its replay group, its ranges)
    sources: Vec<(String, serde_json::Value, String, Vec<PartRange>)>,
}

/// Point every kafka source of `cfg` at exactly the ranges `from..to`, with a group and a
/// checkpoint of their own (`checkpoint`, default `<checkpoint_dir>-replay-<time>`).
pub async fn prepare(
    cfg: &mut AppConfig,
    from: &str,
    to: Option<&str>,
    checkpoint: Option<String>,
) -> Result<Replay, String> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S").to_string();
    let mut sources = Vec::new();
    for s in &mut cfg.sources {
        if s.kind != "kafka" {
            return Err(format!(
                "replay reprocesses Kafka input; source `{}` is a {} source (remove it or use a config with kafka sources only)",
                s.name, s.kind
            ));
        }
        let options = s.options.clone();
        let (f, t) = (from.to_string(), to.map(str::to_string));
        let ranges = tokio::task::spawn_blocking(move || {
            sluice_kafka::replay_ranges(&options, &f, t.as_deref())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("source `{}`: {e}", s.name))?;
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
        let group = format!("sluice-{}-{}-replay-{stamp}", cfg.app.name, s.name);
        let o = &mut s.options;
        o["start_offsets"] = start.into();
        o["until_offsets"] = until.into();
        // Partitions that appear during the replay contribute nothing.
        o["start"] = "latest".into();
        o["until"] = "end".into();
        o["group_id"] = group.clone().into();
        sources.push((s.name.clone(), s.options.clone(), group, ranges));
    }
    if sources.is_empty() {
        return Err("replay needs at least one kafka source".into());
    }
    // A replay is one gateway reading exact ranges, never a share of a group; its output has an
    // identity of its own (folders, staging, transactional id and markers), so the live gateway's
    // is never overwritten, fenced or taken over.
    cfg.app.scale_out = false;
    cfg.app.replay_scope = Some(format!("replay-{stamp}"));
    cfg.app.checkpoint_dir = Some(checkpoint.unwrap_or_else(|| {
        format!(
            "{}-replay-{stamp}",
            cfg.app.checkpoint_dir.as_deref().unwrap_or("checkpoint")
        )
    }));
    Ok(Replay { sources })
}

impl Replay {
    pub fn total(&self) -> u64 {
        self.sources
            .iter()
            .flat_map(|s| &s.3)
            .map(|r| (r.until - r.from) as u64)
            .sum()
    }

    /// Show a bar per partition (records done of its range, percent, rate, ETA), updated from the
    /// replay group's committed offsets, until `done` resolves.
    pub async fn follow(&self, done: tokio::sync::watch::Receiver<bool>) {
        let multi = MultiProgress::new();
        let style = ProgressStyle::with_template(
            "{prefix:>24} [{bar:30}] {human_pos}/{human_len} ({percent}%) {per_sec} ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> ");
        let mut followed = Vec::new();
        for (name, options, group, ranges) in &self.sources {
            let Ok(offsets) = GroupOffsets::new(options, group) else {
                continue;
            };
            let bars: Vec<ProgressBar> = ranges
                .iter()
                .map(|r| {
                    let b = multi.add(ProgressBar::new((r.until - r.from) as u64));
                    b.set_style(style.clone());
                    b.set_prefix(format!("{name} {}/{}", r.topic, r.partition));
                    b
                })
                .collect();
            followed.push((std::sync::Arc::new(offsets), ranges.clone(), bars));
        }
        loop {
            for (offsets, ranges, bars) in &followed {
                let (o, r) = (offsets.clone(), ranges.clone());
                if let Ok(at) = tokio::task::spawn_blocking(move || o.committed(&r)).await {
                    for ((bar, r), at) in bars.iter().zip(ranges).zip(at) {
                        bar.set_position((at.min(r.until) - r.from).max(0) as u64);
                    }
                }
            }
            if *done.borrow() {
                break;
            }
            let mut d = done.clone();
            let _ = tokio::time::timeout(Duration::from_millis(500), d.changed()).await;
        }
        for (_, _, bars) in &followed {
            for b in bars {
                b.finish();
            }
        }
    }
}
