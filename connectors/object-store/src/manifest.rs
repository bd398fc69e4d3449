//! The manifest: which objects hold committed data, one small JSON object per (job, batch) under
//! `_sluice/manifest/<job>/`, like Spark's `_spark_metadata`.
//!
//! A batch's entry is written after its data objects, so a reader that takes the union of the
//! entries' `files` never sees a partial or duplicated batch. Each entry also carries the sink's
//! state for files that span batches (`open`: the staged pieces of each file not yet rolled) and
//! the batch time of the previous entry, and `_sluice/manifest/<job>/_latest` names the newest
//! entry: a restarted sink reads the hint and walks back to the last entry before the batch it is
//! writing, without listing the manifest.

use crate::store::Store;
use serde::{Deserialize, Serialize};
use sluice_core::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

pub const ROOT: &str = "_sluice";

/// A data object listed by the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct File {
    /// The key below the sink's `path`.
    pub key: String,
    pub rows: u64,
    pub bytes: u64,
    /// The batches whose rows it holds.
    pub first_batch: i64,
    pub last_batch: i64,
}

/// One batch's piece of a file that spans batches, in Arrow IPC under `_sluice/staging/`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Staged {
    pub batch: i64,
    pub key: String,
    pub rows: u64,
    pub bytes: u64,
}

/// A file still accumulating batches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Open {
    pub first_batch: i64,
    pub pieces: Vec<Staged>,
}

impl Open {
    pub fn bytes(&self) -> u64 {
        self.pieces.iter().map(|p| p.bytes).sum()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Entry {
    pub job: String,
    pub batch_time: i64,
    /// Rows of this batch.
    pub rows: u64,
    /// Objects completed with this batch (for a per-batch layout, this batch's).
    pub files: Vec<File>,
    /// Files spanning batches, by partition folder (`""` when flat).
    #[serde(default)]
    pub open: BTreeMap<String, Open>,
    /// Staged pieces that were rolled into `files`: deleted once a later batch is written.
    #[serde(default)]
    pub rolled: Vec<String>,
    /// The batch time of this job's previous entry.
    #[serde(default)]
    pub previous: Option<i64>,
}

fn entry_key(job: &str, batch_time: i64) -> String {
    format!("{ROOT}/manifest/{job}/{batch_time:020}.json")
}

fn latest_key(job: &str) -> String {
    format!("{ROOT}/manifest/{job}/_latest")
}

fn decode<T: for<'a> Deserialize<'a>>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::msg(format!("unreadable manifest object {key}: {e}")))
}

/// The job's newest entry before `batch_time`, if any.
pub async fn before(store: &Store, job: &str, batch_time: i64) -> Result<Option<Entry>> {
    let mut at = latest(store, job).await?;
    while let Some(t) = at {
        let key = entry_key(job, t);
        let bytes = store
            .read(&key)
            .await?
            .ok_or_else(|| Error::msg(format!("the manifest names {key}, which is missing")))?;
        let entry: Entry = decode(&key, &bytes)?;
        if entry.batch_time < batch_time {
            return Ok(Some(entry));
        }
        at = entry.previous;
    }
    Ok(None)
}

/// Writes the entry, then the hint naming it.
pub async fn write(store: &Store, entry: &Entry) -> Result<()> {
    write_entry(store, entry).await?;
    write_latest(store, &entry.job, entry.batch_time).await
}

pub(crate) async fn write_entry(store: &Store, entry: &Entry) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(entry).map_err(|e| Error::msg(e.to_string()))?;
    store
        .write(&entry_key(&entry.job, entry.batch_time), bytes)
        .await
}

pub(crate) async fn write_latest(store: &Store, job: &str, batch_time: i64) -> Result<()> {
    store
        .write(&latest_key(job), batch_time.to_string().into_bytes())
        .await
}

/// The batch time the job's hint names, if any.
pub(crate) async fn latest(store: &Store, job: &str) -> Result<Option<i64>> {
    match store.read(&latest_key(job)).await? {
        Some(hint) => decode(&latest_key(job), &hint).map(Some),
        None => Ok(None),
    }
}

/// Every committed entry of the folder `dir` (all jobs), in batch-time order: for readers and
/// tests of output on a local disk (copy a remote store's `_sluice/manifest/` and files first).
pub fn committed_in(dir: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    let jobs = match std::fs::read_dir(dir.join(ROOT).join("manifest")) {
        Ok(jobs) => jobs,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for job in jobs {
        for e in std::fs::read_dir(job?.path())? {
            let path = e?.path();
            if path.extension().is_some_and(|x| x == "json") {
                out.push(decode(&path.display().to_string(), &std::fs::read(&path)?)?);
            }
        }
    }
    out.sort_by(|a: &Entry, b: &Entry| (a.batch_time, &a.job).cmp(&(b.batch_time, &b.job)));
    Ok(out)
}
