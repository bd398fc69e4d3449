//! Files that a commit relies on: written whole (a temporary file, synced, renamed), with every
//! directory entry they add synced too, so that after a power loss a committed batch's output or
//! state file is there, not only the commit that lists it. Checkpoint files are private to the
//! gateway's user (they hold the input in plain text).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Who may read what [`create_dir`] and [`write_atomically`] make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The umask's choice (output meant for other programs).
    Shared,
    /// Directories 0700, files 0600 (checkpoints and write-ahead logs).
    Private,
}

impl Access {
    fn dir_mode(self) -> u32 {
        match self {
            Access::Shared => 0o777,
            Access::Private => 0o700,
        }
    }
    fn file_mode(self) -> u32 {
        match self {
            Access::Shared => 0o666,
            Access::Private => 0o600,
        }
    }
}

/// `fsync` a directory, so the entries added to or renamed into it survive a power loss.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Create `dir` and any missing parents, syncing the parent of each directory created.
pub fn create_dir(dir: &Path, access: Access) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir(parent, access)?;
    }
    match DirBuilder::new().mode(access.dir_mode()).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Open a file to append to, creating it with `access`'s mode.
pub fn open_append(path: &Path, access: Access) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(access.file_mode())
        .open(path)
}

/// A file that appears at its path whole or not at all: written to a hidden temporary file beside
/// it (`.<name>.tmp`), then synced, renamed over the path, and the directory synced. A crash leaves
/// the old file or the new one, never a part.
pub struct AtomicFile {
    file: File,
    tmp: PathBuf,
    path: PathBuf,
}

impl AtomicFile {
    /// Creates the temporary file (and `path`'s directory, synced, if missing).
    pub fn create(path: &Path, access: Access) -> std::io::Result<AtomicFile> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{} has no directory", path.display()),
                )
            })?;
        create_dir(dir, access)?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(".{name}.tmp"));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(access.file_mode())
            .open(&tmp)?;
        Ok(AtomicFile {
            file,
            tmp,
            path: path.to_path_buf(),
        })
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)
    }

    /// Puts the file in place, durably; on an error the temporary file is removed.
    pub fn commit(&mut self) -> std::io::Result<()> {
        let dir = self.path.parent().expect("checked at create");
        let done = self
            .file
            .sync_all()
            .and_then(|()| std::fs::rename(&self.tmp, &self.path))
            .and_then(|()| sync_dir(dir));
        if done.is_err() {
            self.abort();
        }
        done
    }

    /// Removes the temporary file: the path keeps what it had.
    pub fn abort(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Write `bytes` to `path` whole ([`AtomicFile`]).
pub fn write_atomically(path: &Path, bytes: &[u8], access: Access) -> std::io::Result<()> {
    let mut f = AtomicFile::create(path, access)?;
    match f.write_all(bytes) {
        Ok(()) => f.commit(),
        Err(e) => {
            f.abort();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_files_and_folders_are_for_the_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let f = root.join("a/b/c.bin");
        write_atomically(&f, b"x", Access::Private).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"x");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&f), 0o600);
        assert_eq!(mode(&root.join("a")), 0o700);
        assert_eq!(mode(&root.join("a/b")), 0o700);
        // Overwriting leaves no temporary file behind.
        write_atomically(&f, b"yz", Access::Private).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"yz");
        assert_eq!(std::fs::read_dir(root.join("a/b")).unwrap().count(), 1);
    }
}
