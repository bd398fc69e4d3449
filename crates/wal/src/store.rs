//! The checkpoint store: batch plans, completed batches, source positions and job state, in one
//! RocksDB database. Every change is one `WriteBatch` written with `sync`, so a commit is atomic
//! and durable. RocksDB's log is opened with `TolerateCorruptedTailRecords`, which recovers a torn
//! tail to the last whole write but would also stop silently at a bad record in the middle: so
//! `rocks_log::check` reads the log files first and refuses corruption in the middle, naming the
//! file and byte offset.

use crate::{Error, Result};
use rocksdb::{DBRecoveryMode, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};

pub struct Store {
    db: DB,
    path: PathBuf,
}

/// Changes written together.
#[derive(Default)]
pub struct Changes {
    batch: WriteBatch,
}

impl Changes {
    pub fn put(&mut self, key: &str, value: &[u8]) {
        self.batch.put(key.as_bytes(), value);
    }
    pub fn put_json<T: Serialize>(&mut self, key: &str, value: &T) {
        self.put(key, &serde_json::to_vec(value).expect("serializable"));
    }
    pub fn delete(&mut self, key: &str) {
        self.batch.delete(key.as_bytes());
    }
    pub fn len(&self) -> usize {
        self.batch.len()
    }
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
}

fn db_err(path: &Path, e: rocksdb::Error) -> Error {
    let s = e.to_string();
    let hint = if s.contains("Corruption") {
        ". The checkpoint is damaged in the middle, not just cut at the end; restore it from a backup \
         or delete the directory to start fresh"
    } else if s.contains("No space") {
        ". The disk is full: free space and restart; the last commit is intact"
    } else {
        ""
    };
    Error::msg(format!("checkpoint store {}: {s}{hint}", path.display()))
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        Self::open_with(path, None)
    }

    /// [`Store::open`] with a memtable of `write_buffer` bytes (None: RocksDB's 64 MiB).
    pub fn open_with(path: &Path, write_buffer: Option<usize>) -> Result<Store> {
        crate::rocks_log::check(path)?;
        let mut opts = Options::default();
        if let Some(b) = write_buffer {
            opts.set_write_buffer_size(b);
        }
        opts.create_if_missing(true);
        opts.set_paranoid_checks(true);
        opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
        opts.set_keep_log_file_num(2);
        opts.set_max_total_wal_size(64 << 20);
        let db = DB::open(&opts, path).map_err(|e| db_err(path, e))?;
        Ok(Store {
            db,
            path: path.to_path_buf(),
        })
    }

    /// Open an existing store without taking its lock (a running gateway may hold it).
    pub fn open_read_only(path: &Path) -> Result<Store> {
        let mut opts = Options::default();
        opts.set_paranoid_checks(true);
        let db = DB::open_for_read_only(&opts, path, false).map_err(|e| db_err(path, e))?;
        Ok(Store {
            db,
            path: path.to_path_buf(),
        })
    }

    /// Whether a store exists at `path` (without creating one).
    pub fn exists(path: &Path) -> bool {
        path.join("CURRENT").exists()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.db
            .get(key.as_bytes())
            .map_err(|e| db_err(&self.path, e))
    }

    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get(key)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| {
                Error::msg(format!(
                    "checkpoint store {}: key `{key}` holds unreadable data: {e}",
                    self.path.display()
                ))
            }),
        }
    }

    /// Every (key, value) whose key starts with `prefix`, in key order.
    pub fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        let it = self
            .db
            .iterator(IteratorMode::From(prefix.as_bytes(), Direction::Forward));
        for kv in it {
            let (k, v) = kv.map_err(|e| db_err(&self.path, e))?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            out.push((String::from_utf8_lossy(&k).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    /// Write `changes` atomically and durably.
    pub fn write(&self, changes: Changes) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(changes.batch, &wo)
            .map_err(|e| db_err(&self.path, e))
    }

    /// Bytes the store's files take on disk.
    pub fn disk_bytes(&self) -> u64 {
        dir_bytes(&self.path)
    }
}

/// Bytes of the files directly in `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
