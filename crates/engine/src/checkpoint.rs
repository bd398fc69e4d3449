//! The engine's use of the checkpoint directory: what a batch plan and a commit hold, the keys they
//! live under, and whether a checkpoint fits the pipeline that wants to resume from it.
//!
//! ```text
//! DIR/store/            RocksDB
//!   meta/fingerprint      sources (name → type) and stateful jobs (key, schema) that wrote it
//!   origin/<source>       where a replayable source began at the first start (e.g. the files
//!                         already there), written before any batch; used until a plan exists
//!   plan/<t>              the inputs of batch t, written before it runs; kept until a later commit
//!   last                  the newest committed batch
//!   done/<t>              the last 100 committed batches (for `sluice checkpoint inspect`)
//!   skip/<t>              a planned batch the operator skipped (`sluice checkpoint skip`), for good
//!   state/<job>           which files hold the job's keyed state, and its size
//!   window/<job>/<in>/<t> input of a processing-time window, one key per batch still in the window
//!   event/<job>           an event-time window's buffered rows; eventmeta/<job> its watermark
//! DIR/wal/<source>/     one write-ahead log per receiver
//! DIR/state/<job>/      keyed state (Arrow IPC with a `__since` column): `<t>.full.arrow`, the
//!                       whole state at batch t, then `<t>.delta.arrow` files, the rows changed
//! ```
//!
//! State lives in files rather than in the store: RocksDB logs every value before it flushes it,
//! and replays that log when it opens, so large values written every batch would slow a restart.

use crate::build::Pipeline;
use serde::{Deserialize, Serialize};
use sluice_core::{ConfigError, Error, Result};
use sluice_wal::Store;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The recorded inputs of one batch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub time: i64,
    pub sources: BTreeMap<String, SourcePlan>,
}

/// One source's part of a plan: what to read, and where the source stands after it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourcePlan {
    pub range: serde_json::Value,
    #[serde(default)]
    pub position: serde_json::Value,
    /// The source's rate limit (records/s) when the batch was planned; None: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
}

/// A committed batch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Done {
    pub time: i64,
    pub records: u64,
    pub processing_ms: u64,
    /// Wall clock of the commit, ms since the epoch.
    pub committed_at: i64,
    /// Whether it was a re-run after a restart (stored under its first name, `replay`).
    #[serde(rename = "replay")]
    pub rerun: bool,
    /// Skipped at the operator's request (`sluice checkpoint skip`): its input was not processed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

/// An operator's request to skip a planned batch that fails the same way at every restart
/// (`skip/<t>`, kept for good as the record of what was not processed).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Skip {
    /// Wall clock of the request, ms since the epoch.
    pub requested_at: i64,
    /// The batch's plan: exactly the input that was not processed.
    pub plan: Plan,
    /// Wall clock of the commit that skipped it, once done.
    #[serde(default)]
    pub done_at: Option<i64>,
}

/// What a checkpoint must agree on with the pipeline resuming from it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub sources: BTreeMap<String, String>,
    pub state: BTreeMap<String, StateShape>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateShape {
    pub key: Vec<String>,
    pub schema: String,
}

pub const KEEP_DONE: usize = 100;

/// A job's state in the checkpoint: its files, the whole state first, then the deltas after it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StateFiles {
    pub files: Vec<String>,
    /// Keys after the commit that wrote this.
    pub keys: usize,
    /// Bytes in `files`.
    pub bytes: u64,
}

pub fn state_dir(dir: &Path, job: &str) -> PathBuf {
    dir.join("state").join(job)
}
pub fn state_file(t: i64, full: bool) -> String {
    format!("{t:020}.{}.arrow", if full { "full" } else { "delta" })
}

/// A job's committed state: its file list and the batches in those files, in order.
pub fn read_state(
    dir: &Path,
    store: &Store,
    job: &str,
) -> Result<
    Option<(
        StateFiles,
        Vec<sluice_core::arrow::record_batch::RecordBatch>,
    )>,
> {
    let Some(files) = store.get_json::<StateFiles>(&state_key(job))? else {
        return Ok(None);
    };
    let parts = files
        .files
        .iter()
        .map(|f| {
            let p = state_dir(dir, job).join(f);
            let bytes = std::fs::read(&p).map_err(|e| {
                Error::msg(format!(
                    "cannot read the state file {} of job `{job}` (the checkpoint lists it): {e}",
                    p.display()
                ))
            })?;
            sluice_wal::ipc::read_owned(bytes)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some((files, parts)))
}

/// Delete the files in a job's state directory that `keep` does not list (left by a batch that
/// crashed before its commit, or replaced by a newer whole state).
pub fn remove_unlisted_state(dir: &Path, job: &str, keep: &StateFiles) {
    let Ok(rd) = std::fs::read_dir(state_dir(dir, job)) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep.files.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

pub fn plan_key(t: i64) -> String {
    format!("plan/{t:020}")
}
pub fn skip_key(t: i64) -> String {
    format!("skip/{t:020}")
}
pub fn origin_key(source: &str) -> String {
    format!("origin/{source}")
}
pub fn done_key(t: i64) -> String {
    format!("done/{t:020}")
}
pub fn state_key(job: &str) -> String {
    format!("state/{job}")
}
pub fn window_prefix(job: &str, input: &str) -> String {
    format!("window/{job}/{input}/")
}
pub fn window_key(job: &str, input: &str, t: i64) -> String {
    format!("{}{t:020}", window_prefix(job, input))
}
pub fn event_key(job: &str) -> String {
    format!("event/{job}")
}
pub fn event_meta_key(job: &str) -> String {
    format!("eventmeta/{job}")
}

/// The time in a `…/<t>` key.
pub fn key_time(key: &str) -> Option<i64> {
    key.rsplit('/').next()?.parse().ok()
}

pub fn store_dir(dir: &Path) -> PathBuf {
    dir.join("store")
}
pub fn wal_dir(dir: &Path, source: &str) -> PathBuf {
    dir.join("wal").join(source)
}

impl Pipeline {
    pub(crate) fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            sources: self
                .sources
                .iter()
                .map(|s| (s.name.clone(), s.kind.clone()))
                .collect(),
            state: self
                .jobs
                .iter()
                .filter_map(|j| {
                    let s = j.state.as_ref()?;
                    let schema = s
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| format!("{} {}", f.name(), f.data_type()))
                        .collect::<Vec<_>>()
                        .join(", ");
                    Some((
                        j.name.clone(),
                        StateShape {
                            key: s.key_names(),
                            schema,
                        },
                    ))
                })
                .collect(),
        }
    }
}

/// Why `old` (the checkpoint's) cannot be resumed by `new` (the config's), if it cannot. Added
/// sources and jobs, new sinks, changed SQL or intervals are compatible; a removed or retyped
/// source, and a stateful job whose key or schema changed (or that was removed), are not.
pub fn incompatibility(old: &Fingerprint, new: &Fingerprint) -> Vec<String> {
    let mut why = Vec::new();
    for (name, kind) in &old.sources {
        match new.sources.get(name) {
            None => why.push(format!(
                "source `{name}` (type {kind}) was removed: its unprocessed input is in the checkpoint"
            )),
            Some(k) if k != kind => why.push(format!(
                "source `{name}` changed type from {kind} to {k}"
            )),
            _ => {}
        }
    }
    for (job, shape) in &old.state {
        match new.state.get(job) {
            None => why.push(format!(
                "stateful job `{job}` was removed (or lost its state)"
            )),
            Some(s) if s.key != shape.key => why.push(format!(
                "the state key of job `{job}` changed from [{}] to [{}]",
                shape.key.join(", "),
                s.key.join(", ")
            )),
            Some(s) if s.schema != shape.schema => why.push(format!(
                "the state schema of job `{job}` changed from ({}) to ({})",
                shape.schema, s.schema
            )),
            _ => {}
        }
    }
    why
}

/// Refuse a checkpoint written by an incompatible pipeline, saying what changed.
pub fn check_compatible(dir: &Path, store: &Store, new: &Fingerprint) -> Result<()> {
    let Some(old) = store.get_json::<Fingerprint>("meta/fingerprint")? else {
        return Ok(());
    };
    let why = incompatibility(&old, new);
    if why.is_empty() {
        return Ok(());
    }
    Err(Error::Config(
        ConfigError::new(
            "app.checkpoint_dir",
            "a checkpoint written by this pipeline or a compatible change of it",
            format!("{} in {}", why.join("; "), dir.display()),
        )
        .with_hint(format!(
            "to start fresh, dropping the saved state and unprocessed input: delete {} or set app.checkpoint_dir to a new directory",
            dir.display()
        )),
    ))
}
