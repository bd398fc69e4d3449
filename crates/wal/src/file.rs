//! Whole files written so that a crash leaves either the old file or the new one, never a part.

use sluice_core::{Error, Result};
use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` durably: a temporary file beside it, synced, renamed over `path`, and
/// the directory synced.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::msg(format!("{} has no directory", path.display())))?;
    let fail = |what: &str, p: &Path, e: std::io::Error| {
        let hint = if e.raw_os_error() == Some(28) {
            " (the disk is full: free space, then restart; nothing committed was lost)"
        } else {
            ""
        };
        Error::msg(format!("cannot {what} {}: {e}{hint}", p.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| fail("create", dir, e))?;
    let tmp = path.with_extension("tmp");
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail("write", &tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| fail("rename", &tmp, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail("sync", dir, e))
}
