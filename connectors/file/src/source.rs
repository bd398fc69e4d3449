//! The `file` source: new files in a directory.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sluice_core::arrow::record_batch::RecordBatch;
use sluice_core::options::Joined;
use sluice_core::{
    BatchTime, BuildContext, BuiltSource, Component, ConfigError, DeadLetters, Error, Guarantee,
    ReplayableSource, Result, SourceConnector, SourceRuntime,
};
use sluice_formats::decoding::LineDecoding;
use sluice_formats::{Decoder, Format};
use std::collections::HashSet;
use tokio::io::AsyncBufReadExt;

/// Lines decoded at a time while a file is read.
const CHUNK_LINES: usize = 8192;
use std::path::PathBuf;

/// `[sources.NAME] type = "file"`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The directory to watch.
    pub path: String,
    /// CSV: the first line of each file is a header to skip (default false).
    #[serde(default)]
    pub header: bool,
    /// Only files whose name ends with this (e.g. `.json`).
    #[serde(default)]
    pub suffix: Option<String>,
    /// Read the files already in the directory at start (default false: new files only, like
    /// Spark's `textFileStream`).
    #[serde(default)]
    pub include_existing: bool,
    /// At most this many files per batch (default: all new files).
    #[serde(default)]
    pub max_files_per_batch: Option<usize>,
}

pub struct FileSourceConnector;

impl SourceConnector for FileSourceConnector {
    type Config = Joined<LineDecoding, FileSourceConfig>;
    fn build(
        &self,
        cx: &BuildContext,
        at: &Component,
        options: Self::Config,
    ) -> Result<BuiltSource, ConfigError> {
        let Joined { shared, own: cfg } = options;
        let path = at.path.as_str();
        let decoder = shared.decoder(at)?;
        if cfg.max_files_per_batch == Some(0) {
            return Err(ConfigError::new(
                format!("{path}.max_files_per_batch"),
                "at least 1",
                "0",
            ));
        }
        let dir = cx.resolve(&cfg.path);
        Ok(BuiltSource {
            schema: decoder.schema(),
            guarantee: Guarantee::Replayable,
            runtime: SourceRuntime::Replayable(Box::new(FileSource {
                cfg,
                dir,
                decoder,
                seen: HashSet::new(),
                started: false,
            })),
            caveat: None,
        })
    }
}

pub struct FileSource {
    cfg: FileSourceConfig,
    dir: PathBuf,
    decoder: Decoder,
    seen: HashSet<String>,
    started: bool,
}

impl FileSource {
    fn list(&self) -> Result<Vec<(std::time::SystemTime, String)>> {
        let mut files = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
            Err(e) => {
                return Err(Error::msg(format!(
                    "cannot list {}: {e}",
                    self.dir.display()
                )))
            }
        };
        for e in entries {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            if self
                .cfg
                .suffix
                .as_ref()
                .is_some_and(|s| !name.ends_with(s.as_str()))
            {
                continue;
            }
            let meta = e.metadata()?;
            if !meta.is_file() {
                continue;
            }
            files.push((meta.modified()?, name));
        }
        files.sort();
        Ok(files)
    }
}

/// A batch's input: the files it reads, by name.
#[derive(Serialize, Deserialize)]
pub struct FileRange {
    pub files: Vec<String>,
}

/// The files already planned (or skipped at the first start), sorted.
#[derive(Serialize, Deserialize)]
pub struct FilePosition {
    pub seen: Vec<String>,
}

#[async_trait]
impl ReplayableSource for FileSource {
    type Range = FileRange;
    type Position = FilePosition;

    async fn plan(&mut self, _time: BatchTime, _max_records: Option<u64>) -> Result<FileRange> {
        if !self.started {
            ReplayableSource::origin(self).await?;
        }
        let files = self.list()?;
        let mut new: Vec<String> = files
            .into_iter()
            .map(|(_, n)| n)
            .filter(|n| !self.seen.contains(n))
            .collect();
        if let Some(m) = self.cfg.max_files_per_batch {
            new.truncate(m);
        }
        self.seen.extend(new.iter().cloned());
        Ok(FileRange { files: new })
    }

    async fn origin(&mut self) -> Result<Option<FilePosition>> {
        self.started = true;
        if !self.cfg.include_existing {
            let files = self.list()?;
            tracing::info!(
                dir = %self.dir.display(),
                skipped = files.len(),
                "file: new files only (include_existing = false); the files there now are skipped"
            );
            self.seen.extend(files.into_iter().map(|(_, n)| n));
        }
        Ok(Some(self.position()))
    }

    fn position(&self) -> FilePosition {
        let mut seen: Vec<String> = self.seen.iter().cloned().collect();
        seen.sort();
        FilePosition { seen }
    }

    fn restore(&mut self, position: FilePosition) -> Result<()> {
        self.seen = position.seen.into_iter().collect();
        self.started = true;
        Ok(())
    }

    async fn read(&mut self, range: &FileRange, dead: &DeadLetters) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for f in &range.files {
            let p = self.dir.join(f);
            let cannot =
                |e: std::io::Error| Error::msg(format!("cannot read {}: {e}", p.display()));
            // Streamed: a chunk of lines at a time is decoded, never the whole file as text.
            let file = tokio::fs::File::open(&p).await.map_err(cannot)?;
            let mut reader = tokio::io::BufReader::with_capacity(1 << 16, file);
            let mut raw = Vec::new();
            let mut chunk: Vec<String> = Vec::with_capacity(CHUNK_LINES);
            let mut first = true;
            loop {
                raw.clear();
                let n = reader.read_until(b'\n', &mut raw).await.map_err(cannot)?;
                if n > 0 {
                    let mut line = &raw[..];
                    if line.last() == Some(&b'\n') {
                        line = &line[..line.len() - 1];
                    }
                    if line.last() == Some(&b'\r') {
                        line = &line[..line.len() - 1];
                    }
                    let line = String::from_utf8_lossy(line).into_owned();
                    let header = first && self.cfg.header && self.decoder.format() == Format::Csv;
                    first = false;
                    let blank = self.decoder.format() != Format::Text && line.trim().is_empty();
                    if !header && !blank {
                        chunk.push(line);
                    }
                }
                if chunk.len() >= CHUNK_LINES || (n == 0 && !chunk.is_empty()) {
                    let lines: Vec<&str> = chunk.iter().map(String::as_str).collect();
                    let (batch, bad) = self.decoder.decode(&lines);
                    dead.extend(bad);
                    if batch.num_rows() > 0 {
                        out.push(batch);
                    }
                    chunk.clear();
                }
                if n == 0 {
                    break;
                }
            }
        }
        Ok(out)
    }
}
