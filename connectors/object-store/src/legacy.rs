//! Output folders of the `file` sink of sluice 0.1, which kept a manifest of its own: one
//! `{prefix}-{batch time}.json` per committed (job, batch) in `_sluice_metadata/`. When a sink opens
//! such a folder, those entries become entries of today's manifest (`_sluice/manifest/`), chained
//! and with the newest named by each job's hint, and the old folder goes, so a folder has one
//! manifest. A crash midway leaves the old folder, and the next start converts it again (the same
//! entries, rewritten).

use crate::manifest::{self, Entry, File};
use crate::store::Store;
use serde::Deserialize;
use sluice_core::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

pub const LEGACY_DIR: &str = "_sluice_metadata";

/// One committed (job, batch) as sluice 0.1's file sink recorded it.
#[derive(Deserialize)]
struct LegacyEntry {
    job: String,
    batch_time: i64,
    rows: u64,
    /// Paths relative to the output folder.
    files: Vec<String>,
}

/// Converts the legacy manifest of the folder `root` (written through `store`), if it has one;
/// returns how many entries were converted.
pub async fn upgrade(store: &Store, root: &Path) -> Result<usize> {
    let dir = root.join(LEGACY_DIR);
    let listing = match std::fs::read_dir(&dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::msg(format!("{}: {e}", dir.display()))),
    };
    let mut jobs: BTreeMap<String, Vec<LegacyEntry>> = BTreeMap::new();
    for e in listing {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "json") {
            let entry: LegacyEntry = serde_json::from_slice(&std::fs::read(&path)?)
                .map_err(|e| Error::msg(format!("bad manifest entry {}: {e}", path.display())))?;
            jobs.entry(entry.job.clone()).or_default().push(entry);
        }
    }
    let mut converted = 0;
    for (job, mut entries) in jobs {
        entries.sort_by_key(|e| e.batch_time);
        let mut previous = None;
        for old in &entries {
            let entry = Entry {
                job: job.clone(),
                batch_time: old.batch_time,
                rows: old.rows,
                files: files_of(root, old)?,
                previous,
                ..Default::default()
            };
            manifest::write_entry(store, &entry).await?;
            previous = Some(old.batch_time);
            converted += 1;
        }
        let newest = previous.expect("a job has entries");
        if manifest::latest(store, &job)
            .await?
            .is_none_or(|t| t < newest)
        {
            manifest::write_latest(store, &job, newest).await?;
        }
    }
    std::fs::remove_dir_all(&dir)?;
    sluice_core::fs::sync_dir(root)?;
    tracing::info!(folder = %root.display(), entries = converted, "converted the manifest of an older file sink (`{LEGACY_DIR}`) to `_sluice/manifest/`");
    Ok(converted)
}

/// The entry's files with their sizes and rows (counted when the entry has several files).
fn files_of(root: &Path, old: &LegacyEntry) -> Result<Vec<File>> {
    old.files
        .iter()
        .map(|key| {
            let path = root.join(key);
            let missing =
                |e| Error::msg(format!("{} (listed in {LEGACY_DIR}): {e}", path.display()));
            let bytes = std::fs::metadata(&path).map_err(missing)?.len();
            let rows = match old.files.len() {
                1 => old.rows,
                _ => rows_in(key, &std::fs::read(&path).map_err(missing)?)?,
            };
            Ok(File {
                key: key.clone(),
                rows,
                bytes,
                first_batch: old.batch_time,
                last_batch: old.batch_time,
            })
        })
        .collect()
}

/// Rows of a file sluice 0.1 wrote: JSON lines, CSV with a header, or Parquet.
fn rows_in(key: &str, bytes: &[u8]) -> Result<u64> {
    if key.ends_with(".parquet") {
        let reader =
            parquet::file::reader::SerializedFileReader::new(bytes::Bytes::copy_from_slice(bytes))
                .map_err(|e| Error::msg(format!("{key}: {e}")))?;
        use parquet::file::reader::FileReader;
        return Ok(reader.metadata().file_metadata().num_rows() as u64);
    }
    // Line breaks outside quotes (a CSV field with a line break is quoted; JSON escapes them).
    let mut quoted = false;
    let mut lines = 0u64;
    for &b in bytes {
        match b {
            b'"' if key.ends_with(".csv") => quoted = !quoted,
            b'\n' if !quoted => lines += 1,
            _ => {}
        }
    }
    Ok(match key.ends_with(".csv") {
        true => lines.saturating_sub(1),
        false => lines,
    })
}

#[cfg(test)]
mod tests {
    use super::rows_in;

    #[test]
    fn rows_are_counted_per_format() {
        assert_eq!(
            rows_in("a.json", b"{\"a\":\"x\\ny\"}\n{\"a\":2}\n").unwrap(),
            2
        );
        assert_eq!(rows_in("a.csv", b"a,b\n\"x\ny\",1\n2,3\n").unwrap(), 2);
        assert_eq!(rows_in("a.csv", b"a,b\n").unwrap(), 0);
    }
}
