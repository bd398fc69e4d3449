//! Where a sink's files go: an OpenDAL operator for remote stores, or a local folder written with
//! the gateway's own durable file writes (`sluice_core::fs`): every file is written to a hidden
//! temporary name beside it, synced, renamed into place, and its folder synced, so that after a
//! power loss a manifest entry never lists a file that vanished. OpenDAL's local backend neither
//! syncs folders nor keeps its temporary names beside the file, hence this one.

use crate::errors;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use opendal::Operator;
use sluice_core::fs::{write_atomically, Access, AtomicFile};
use sluice_core::{Error, Result};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

pub enum Store {
    Remote {
        op: Operator,
        /// The same store with few retries: the start-up check should fail fast.
        check: Operator,
        part_size: usize,
        concurrency: usize,
    },
    Local {
        root: PathBuf,
    },
}

fn local_error(path: &Path, e: std::io::Error) -> Error {
    Error::msg(format!("{}: {e}", path.display()))
}

impl Store {
    /// A new file at `key`, written a piece at a time.
    pub async fn writer(&self, key: &str) -> Result<Writer> {
        match self {
            Store::Remote {
                op,
                part_size,
                concurrency,
                ..
            } => {
                let w = op
                    .writer_with(key)
                    .chunk(*part_size)
                    .concurrent((*concurrency).max(1))
                    .await
                    .map_err(errors::io)?;
                Ok(Writer::Remote(w))
            }
            Store::Local { root } => LocalWriter::create(&root.join(key)).map(Writer::Local),
        }
    }

    /// The file at `key`, or `None` when there is none.
    pub async fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Store::Remote { op, .. } => match op.read(key).await {
                Ok(b) => Ok(Some(b.to_vec())),
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(errors::io(e)),
            },
            Store::Local { root } => {
                let path = root.join(key);
                match std::fs::read(&path) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(local_error(&path, e)),
                }
            }
        }
    }

    /// Writes the file at `key` whole.
    pub async fn write(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        match self {
            Store::Remote { op, .. } => op.write(key, bytes).await.map(drop).map_err(errors::io),
            Store::Local { root } => {
                let path = root.join(key);
                write_atomically(&path, &bytes, Access::Shared).map_err(|e| local_error(&path, e))
            }
        }
    }

    pub async fn delete(&self, keys: &[String]) -> Result<()> {
        match self {
            Store::Remote { op, .. } => op
                .delete_iter(keys.iter().map(String::as_str))
                .await
                .map_err(errors::io),
            Store::Local { root } => {
                for key in keys {
                    let path = root.join(key);
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(local_error(&path, e)),
                    }
                }
                Ok(())
            }
        }
    }

    /// The file at `key` in pieces of about `size` bytes.
    pub async fn chunks(
        &self,
        key: &str,
        size: usize,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        match self {
            Store::Remote { op, .. } => {
                let stream = op
                    .reader_with(key)
                    .chunk(size)
                    .await
                    .map_err(errors::io)?
                    .into_bytes_stream(..)
                    .await
                    .map_err(errors::io)?;
                let key = key.to_string();
                Ok(stream
                    .map(move |c| c.map_err(|e| Error::msg(format!("reading {key}: {e}"))))
                    .boxed())
            }
            Store::Local { root } => {
                let path = root.join(key);
                let file = File::open(&path).map_err(|e| local_error(&path, e))?;
                Ok(futures::stream::try_unfold(Some(file), move |file| {
                    let path = path.clone();
                    async move {
                        let Some(mut file) = file else {
                            return Ok(None);
                        };
                        let mut buf = Vec::with_capacity(size);
                        (&mut file)
                            .take(size as u64)
                            .read_to_end(&mut buf)
                            .map_err(|e| local_error(&path, e))?;
                        Ok(match buf.len() {
                            0 => None,
                            _ => Some((Bytes::from(buf), Some(file))),
                        })
                    }
                })
                .boxed())
            }
        }
    }

    /// Whether the store can be reached and `folder` listed (at start, so that a wrong endpoint,
    /// bucket or secret fails there). Returns the error as OpenDAL gave it.
    pub async fn check(&self, folder: &str) -> std::result::Result<(), opendal::Error> {
        match self {
            Store::Remote { check, .. } => check.list_with(folder).limit(1).await.map(drop),
            Store::Local { .. } => Ok(()),
        }
    }
}

/// One file being written; aborted (nothing left behind) on error.
pub enum Writer {
    Remote(opendal::Writer),
    Local(LocalWriter),
}

impl Writer {
    pub async fn write(&mut self, bytes: Vec<u8>) -> Result<()> {
        match self {
            Writer::Remote(w) => w.write(bytes).await.map_err(errors::io),
            Writer::Local(w) => w.write(&bytes),
        }
    }

    /// Ends the file: from here on it is at its key (and, locally, durable).
    pub async fn close(&mut self) -> Result<()> {
        match self {
            Writer::Remote(w) => w.close().await.map(drop).map_err(errors::io),
            Writer::Local(w) => w.close(),
        }
    }

    pub async fn abort(&mut self) {
        match self {
            Writer::Remote(w) => {
                let _ = w.abort().await;
            }
            Writer::Local(w) => w.abort(),
        }
    }
}

/// A local file written through [`AtomicFile`]: at its path once closed, whole and durable.
pub struct LocalWriter {
    file: AtomicFile,
    path: PathBuf,
}

impl LocalWriter {
    fn create(path: &Path) -> Result<LocalWriter> {
        let file = AtomicFile::create(path, Access::Shared).map_err(|e| local_error(path, e))?;
        Ok(LocalWriter {
            file,
            path: path.to_path_buf(),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| local_error(&self.path, e))
    }

    fn close(&mut self) -> Result<()> {
        self.file.commit().map_err(|e| local_error(&self.path, e))
    }

    fn abort(&mut self) {
        self.file.abort();
    }
}
