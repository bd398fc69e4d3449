//! Whole files written so that a crash leaves either the old file or the new one, never a part.

use sluice_core::fs::{write_atomically, Access};
use sluice_core::{Error, Result};
use std::path::Path;

/// Write `bytes` to `path` durably and privately (0600, in 0700 folders): a temporary file beside
/// it, synced, renamed over `path`, and the directory synced.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, bytes, Access::Private).map_err(|e| {
        let hint = if e.raw_os_error() == Some(28) {
            " (the disk is full: free space, then restart; nothing committed was lost)"
        } else {
            ""
        };
        Error::msg(format!("cannot write {}: {e}{hint}", path.display()))
    })
}
