//! `sluice checkpoint inspect DIR`: what a checkpoint holds — committed batches, unfinished plans,
//! source positions, state sizes and write-ahead-log usage. Opens the store read-only, so it works
//! beside a running gateway. `sluice checkpoint repair DIR`: mend write-ahead logs damaged in the
//! middle (see `sluice_wal::repair`).

use sluice_core::{BatchTime, Error, Result};
use sluice_engine::checkpoint::{self as ck, Done, Fingerprint, Plan, StateFiles};
use sluice_wal::{store::dir_bytes, Store};
use std::fmt::Write;
use std::path::Path;

/// The store folder of the checkpoint in `dir`, if it is one.
fn checkpoint_store(dir: &Path) -> Result<std::path::PathBuf> {
    let store_dir = ck::store_dir(dir);
    if !Store::exists(&store_dir) {
        return Err(Error::msg(format!(
            "{} is not a sluice checkpoint directory (no {})",
            dir.display(),
            store_dir.display()
        )));
    }
    Ok(store_dir)
}

/// The folder of each receiver's write-ahead log in the checkpoint in `dir`, by name.
fn wal_logs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut logs: Vec<std::path::PathBuf> = match std::fs::read_dir(dir.join("wal")) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect(),
        Err(_) => Vec::new(),
    };
    logs.sort();
    logs
}

/// The report, as printed.
pub fn inspect(dir: &Path) -> Result<String> {
    let store_dir = checkpoint_store(dir)?;
    let store = Store::open_read_only(&store_dir)?;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "checkpoint {}", dir.display());
    if let Some(f) = store.get_json::<Fingerprint>("meta/fingerprint")? {
        let srcs: Vec<String> = f
            .sources
            .iter()
            .map(|(n, k)| format!("{n} ({k})"))
            .collect();
        let _ = writeln!(w, "sources: {}", srcs.join(", "));
    }
    let last: Option<Done> = store.get_json("last")?;
    match &last {
        None => {
            let _ = writeln!(w, "last committed batch: none");
        }
        Some(d) => {
            let _ = writeln!(
                w,
                "last committed batch: {} ({}), {} record(s)",
                d.time,
                BatchTime(d.time).to_local_string(),
                d.records
            );
        }
    }
    let done = store.scan("done/")?;
    let _ = writeln!(w, "committed batches kept: {} (newest last)", done.len());
    for (_, v) in done.iter().rev().take(10).rev() {
        let d: Done = serde_json::from_slice(v).map_err(|e| Error::msg(e.to_string()))?;
        let _ = writeln!(
            w,
            "  {}  {} record(s)  {} ms{}{}",
            d.time,
            d.records,
            d.processing_ms,
            if d.rerun { "  (re-run)" } else { "" },
            if d.skipped { "  (skipped)" } else { "" }
        );
    }
    for (k, v) in store.scan("plan/")? {
        let p: Plan = serde_json::from_slice(&v)
            .map_err(|e| Error::msg(format!("unreadable plan {k}: {e}")))?;
        let pending = last.as_ref().is_none_or(|d| p.time > d.time);
        let _ = writeln!(
            w,
            "plan {} ({}):",
            p.time,
            if pending {
                "planned, not committed: re-run at the next start"
            } else {
                "committed; holds the source positions"
            }
        );
        for (name, sp) in &p.sources {
            let rate = sp
                .rate
                .map_or("unlimited".to_string(), |r| format!("{r} records/s"));
            let _ = writeln!(
                w,
                "  {name}: range {} position {} rate limit {rate}",
                sp.range, sp.position
            );
        }
    }
    for (k, v) in store.scan("skip/")? {
        let s: ck::Skip = serde_json::from_slice(&v)
            .map_err(|e| Error::msg(format!("unreadable skip {k}: {e}")))?;
        let _ = writeln!(
            w,
            "skipped batch {} ({}) at the operator's request, {}; input not processed:",
            s.plan.time,
            BatchTime(s.plan.time).to_local_string(),
            if s.done_at.is_some() {
                "done"
            } else {
                "at the next start"
            }
        );
        for (name, sp) in &s.plan.sources {
            let _ = writeln!(w, "  {name}: {}", sp.range);
        }
    }
    for (k, v) in store.scan("state/")? {
        let job = k.trim_start_matches("state/");
        let f: StateFiles = serde_json::from_slice(&v)
            .map_err(|e| Error::msg(format!("unreadable state entry {k}: {e}")))?;
        let _ = writeln!(
            w,
            "state of job `{job}`: {} key(s), {} byte(s) in {} file(s) ({})",
            f.keys,
            f.bytes,
            f.files.len(),
            ck::state_dir(dir, job).display()
        );
    }
    let windows = store.scan("window/")?;
    if !windows.is_empty() {
        let bytes: usize = windows.iter().map(|(_, v)| v.len()).sum();
        let _ = writeln!(
            w,
            "window contents: {} batch(es), {bytes} byte(s)",
            windows.len()
        );
    }
    for (k, v) in store.scan("event/")? {
        let job = k.trim_start_matches("event/");
        let _ = writeln!(w, "event-time buffer of job `{job}`: {} byte(s)", v.len());
    }
    let _ = writeln!(w, "store size: {} byte(s)", dir_bytes(&store_dir));
    for p in wal_logs(dir) {
        let segs = std::fs::read_dir(&p).map(|r| r.count()).unwrap_or(0);
        let _ = writeln!(
            w,
            "write-ahead log `{}`: {segs} segment(s), {} byte(s)",
            p.file_name().unwrap_or_default().to_string_lossy(),
            dir_bytes(&p)
        );
    }
    Ok(out)
}

/// Repair every write-ahead log of the checkpoint in `dir`; the report, as printed.
pub fn repair(dir: &Path) -> Result<String> {
    checkpoint_store(dir)?;
    let mut out = String::new();
    let w = &mut out;
    let mut damaged = 0;
    for log in wal_logs(dir) {
        for r in sluice_wal::repair(&log)? {
            damaged += 1;
            let lost: Vec<String> = r
                .lost_seqs
                .iter()
                .map(|s| {
                    if s.start() == s.end() {
                        s.start().to_string()
                    } else {
                        format!("{}..={}", s.start(), s.end())
                    }
                })
                .collect();
            let _ = writeln!(
                w,
                "repaired {}: kept {} whole record(s); dropped {} damaged byte range(s) ({}); lost record(s): {}; the original is saved as {}",
                r.segment.display(),
                r.kept,
                r.dropped.len(),
                r.dropped
                    .iter()
                    .map(|(o, n)| format!("{n} bytes at {o}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if lost.is_empty() { "none".into() } else { lost.join(", ") },
                r.saved_as.display()
            );
        }
    }
    if damaged == 0 {
        let _ = writeln!(w, "no damaged write-ahead-log segment in {}", dir.display());
    }
    Ok(out)
}

/// Record the operator's skip of planned batch `t` in the checkpoint in `dir`; the report.
pub fn skip(dir: &Path, t: i64) -> Result<String> {
    let store_dir = checkpoint_store(dir)?;
    let store = Store::open(&store_dir)
        .map_err(|e| Error::msg(format!("{e} (is the gateway still running? stop it first)")))?;
    let last: Option<Done> = store.get_json("last")?;
    if last.as_ref().is_some_and(|d| d.time >= t) {
        return Err(Error::msg(format!(
            "batch {t} is already committed (the last committed batch is {})",
            last.map_or(0, |d| d.time)
        )));
    }
    let Some(plan) = store.get_json::<Plan>(&ck::plan_key(t))? else {
        let pending: Vec<String> = store
            .scan("plan/")?
            .iter()
            .filter_map(|(k, _)| ck::key_time(k))
            .filter(|p| last.as_ref().is_none_or(|d| *p > d.time))
            .map(|p| p.to_string())
            .collect();
        return Err(Error::msg(format!(
            "no planned batch {t} in {}: the unfinished batches are [{}]",
            dir.display(),
            pending.join(", ")
        )));
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "batch {t} ({}) will be skipped at the next start; its input, not processed:",
        BatchTime(t).to_local_string()
    );
    for (source, sp) in &plan.sources {
        let _ = writeln!(out, "  {source}: {}", sp.range);
    }
    let mut c = sluice_wal::Changes::default();
    c.put_json(
        &ck::skip_key(t),
        &ck::Skip {
            requested_at: sluice_core::time::now_ms(),
            plan,
            done_at: None,
        },
    );
    store.write(c)?;
    Ok(out)
}
