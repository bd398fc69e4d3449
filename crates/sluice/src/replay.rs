//! `sluice replay`: reprocess a range of a config's input through the same jobs and sinks, into a
//! checkpoint of its own, with a progress bar per part of the range; and the change `sluice run
//! --until-caught-up` makes to a config. Each source's connector bounds its own options
//! ([`sluice_core::Bounded`]); this module names no connector.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sluice_config::AppConfig;
use sluice_core::{Bounded, Registry, ReplayOf, ReplayProgress};
use std::sync::Arc;
use std::time::Duration;

/// The bounding side of a source's connector, or why it has none.
fn bounded<'a>(
    registry: &'a Registry,
    source: &str,
    kind: &str,
    command: &str,
) -> Result<&'a dyn Bounded, String> {
    let bounded = |ty: &str| registry.source(ty).and_then(|f| f.bounded());
    bounded(kind).ok_or_else(|| {
        let can: Vec<String> = registry
            .source_types()
            .into_iter()
            .filter(|t| bounded(t).is_some())
            .collect();
        format!(
            "{command} needs every source to be bounded; source `{source}` ({kind}) is not (the types that can be: {})",
            can.join(", ")
        )
    })
}

/// Every source must be bounded: each stops at the ends its input has when it starts.
pub fn until_caught_up(cfg: &mut AppConfig, registry: &Registry) -> Result<(), String> {
    for s in &mut cfg.sources {
        bounded(registry, &s.name, &s.kind, "--until-caught-up")?
            .until_caught_up(&mut s.options)
            .map_err(|e| format!("source `{}`: {e}", s.name))?;
    }
    Ok(())
}

/// What a replay reads, and how to follow it.
pub struct Replay {
    /// (source name, its progress)
    sources: Vec<(String, Arc<dyn ReplayProgress>)>,
}

/// Point every source of `cfg` at exactly its input `from..to`, with a checkpoint of its own
/// (`checkpoint`, default `<checkpoint_dir>-replay-<time>`) and an output identity of its own.
pub fn prepare(
    cfg: &mut AppConfig,
    registry: &Registry,
    from: &str,
    to: Option<&str>,
    checkpoint: Option<String>,
) -> Result<Replay, String> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S").to_string();
    let scope = format!("replay-{stamp}");
    let mut sources = Vec::new();
    for s in &mut cfg.sources {
        let connector = bounded(registry, &s.name, &s.kind, "replay")?;
        let of = ReplayOf {
            app: &cfg.app.name,
            source: &s.name,
            scope: &scope,
        };
        // The connector may ask its peer where `from` and `to` are: off the async workers.
        let progress =
            tokio::task::block_in_place(|| connector.replay(&of, &mut s.options, from, to))
                .map_err(|e| format!("source `{}`: {e}", s.name))?;
        sources.push((s.name.clone(), Arc::from(progress)));
    }
    if sources.is_empty() {
        return Err("replay needs at least one source".into());
    }
    // A replay is one gateway reading exact ranges, never a share of a group; its output has an
    // identity of its own (folders, staging, transactional id and markers), so the live gateway's
    // is never overwritten, fenced or taken over.
    cfg.app.scale_out = false;
    cfg.app.replay_scope = Some(scope);
    cfg.app.checkpoint_dir = Some(checkpoint.unwrap_or_else(|| {
        format!(
            "{}-replay-{stamp}",
            cfg.app.checkpoint_dir.as_deref().unwrap_or("checkpoint")
        )
    }));
    Ok(Replay { sources })
}

impl Replay {
    /// The records planned, if every source counts its range in records.
    pub fn total(&self) -> Option<u64> {
        if self.sources.iter().any(|(_, p)| p.unit() != "records") {
            return None;
        }
        Some(
            self.sources
                .iter()
                .flat_map(|(_, p)| p.parts())
                .map(|(_, n)| n)
                .sum(),
        )
    }

    /// Show a bar per part (records done of its range, percent, rate, ETA), updated from the
    /// sources' progress, until `done` resolves.
    pub async fn follow(&self, done: tokio::sync::watch::Receiver<bool>) {
        let multi = MultiProgress::new();
        let style = ProgressStyle::with_template(
            "{prefix:>24} [{bar:30}] {human_pos}/{human_len} ({percent}%) {per_sec} ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> ");
        let mut followed = Vec::new();
        for (name, progress) in &self.sources {
            let bars: Vec<ProgressBar> = progress
                .parts()
                .into_iter()
                .map(|(label, records)| {
                    let b = multi.add(ProgressBar::new(records));
                    b.set_style(style.clone());
                    b.set_prefix(match progress.unit() {
                        "records" => format!("{name} {label}"),
                        unit => format!("{name} {label} ({unit})"),
                    });
                    b
                })
                .collect();
            followed.push((progress.clone(), bars));
        }
        loop {
            for (progress, bars) in &followed {
                let p = progress.clone();
                if let Ok(at) = tokio::task::spawn_blocking(move || p.done()).await {
                    for (bar, at) in bars.iter().zip(at) {
                        bar.set_position(at);
                    }
                }
            }
            if *done.borrow() {
                break;
            }
            let mut d = done.clone();
            let _ = tokio::time::timeout(Duration::from_millis(500), d.changed()).await;
        }
        for (_, bars) in &followed {
            for b in bars {
                b.finish();
            }
        }
    }
}
