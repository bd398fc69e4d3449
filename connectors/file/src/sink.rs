//! The `file` sink.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_core::arrow::array::RecordBatch;
use sluice_core::arrow::datatypes::SchemaRef;
use sluice_core::{
    BuildContext, Component, ConfigError, Error, Result, Sink, SinkBatch, SinkConnector,
};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One JSON object per line (`.json`).
    #[default]
    Json,
    /// CSV with a header row (`.csv`).
    Csv,
    /// Apache Parquet, zstd-compressed (`.parquet`).
    Parquet,
}

impl OutputFormat {
    fn ext(self) -> &'static str {
        match self {
            OutputFormat::Json => "json",
            OutputFormat::Csv => "csv",
            OutputFormat::Parquet => "parquet",
        }
    }
}

/// `[sinks.NAME] type = "file"`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The output directory (created if missing).
    pub path: String,
    /// `json` (JSON lines), `csv` or `parquet`.
    #[serde(default)]
    pub format: OutputFormat,
    /// File name prefix; default: the job's name. With a prefix the sink serves one writer (one job,
    /// or the dead-letter output): two would overwrite each other's files, so such a config is
    /// refused.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Columns whose values make `col=value/` sub-folders (Hive-style partitions).
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Write a file for a batch with no rows too (default false).
    #[serde(default)]
    pub write_empty: bool,
}

pub struct FileSinkConnector;

impl SinkConnector for FileSinkConnector {
    type Config = FileSinkConfig;
    fn build(
        &self,
        cx: &BuildContext,
        at: &Component,
        cfg: FileSinkConfig,
    ) -> Result<Box<dyn Sink>, ConfigError> {
        let path = at.path.as_str();
        let dir = cx.resolve(&cfg.path);
        if dir.exists() && !dir.is_dir() {
            return Err(ConfigError::new(
                format!("{path}.path"),
                "a directory",
                format!("\"{}\", a file", cfg.path),
            ));
        }
        // Scale-out, or `sluice replay`: this gateway writes (and keeps its manifest) in a folder of its own.
        let dir = match &cx.output_scope {
            Some(scope) => dir.join(scope),
            None => dir,
        };
        let name = at.name.clone();
        Ok(Box::new(FileSink { cfg, dir, name }))
    }
}

pub struct FileSink {
    cfg: FileSinkConfig,
    dir: PathBuf,
    name: String,
}

/// The folder, inside the output directory, of the manifest of committed batches (one small JSON
/// file per job and batch, like Spark's `_spark_metadata`). Readers that list only the files named
/// there never see a half-written batch; the source skips `_`-prefixed names.
pub const MANIFEST_DIR: &str = "_sluice_metadata";

/// One committed (job, batch) of a file sink.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, JsonSchema)]
pub struct ManifestEntry {
    pub job: String,
    pub batch_time: i64,
    pub rows: u64,
    /// Paths relative to the output directory.
    pub files: Vec<String>,
}

/// The committed batches of the file sink writing to `dir`, in batch-time order.
pub fn committed(dir: &Path) -> Result<Vec<ManifestEntry>> {
    let mut out = Vec::new();
    let m = dir.join(MANIFEST_DIR);
    let entries = match std::fs::read_dir(&m) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for e in entries {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "json") {
            let entry: ManifestEntry = serde_json::from_slice(&std::fs::read(&p)?)
                .map_err(|e| Error::msg(format!("bad manifest entry {}: {e}", p.display())))?;
            out.push(entry);
        }
    }
    out.sort_by(|a, b| (a.batch_time, &a.job).cmp(&(b.batch_time, &b.job)));
    Ok(out)
}

fn encode(format: OutputFormat, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    Ok(match format {
        OutputFormat::Json => sluice_formats::encode_json_lines(batches)?,
        OutputFormat::Csv => sluice_formats::encode_csv(schema, batches)?,
        OutputFormat::Parquet => {
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                .build();
            let mut w =
                parquet::arrow::ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))
                    .map_err(|e| Error::msg(e.to_string()))?;
            for b in batches {
                w.write(b).map_err(|e| Error::msg(e.to_string()))?;
            }
            w.into_inner().map_err(|e| Error::msg(e.to_string()))?
        }
    })
}

/// Write `bytes` to `path` whole (temporary file, rename, directory synced: see `sluice_core::fs`).
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    sluice_core::fs::write_atomically(path, bytes, sluice_core::fs::Access::Shared)
        .map_err(|e| Error::msg(format!("cannot write {}: {e}", path.display())))
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&mut self, batch: SinkBatch<'_>) -> Result<()> {
        if batch.num_rows() == 0 && !self.cfg.write_empty {
            return Ok(());
        }
        let prefix = self
            .cfg
            .prefix
            .clone()
            .unwrap_or_else(|| batch.job.to_string());
        let stem = format!("{prefix}-{}", batch.time.millis());
        let name = format!("{stem}.{}", self.cfg.format.ext());
        let mut files = Vec::new();
        let layout = sluice_formats::partition::Layout {
            columns: self.cfg.partition_by.clone(),
            ..Default::default()
        };
        let split = layout.split(&batch.schema, batch.batches, batch.time.millis())?;
        batch
            .dead
            .extend(split.dead_letters(&format!("sink `{}` (job `{}`)", self.name, batch.job)));
        let rejected = split.rejected_rows();
        for (part, rows) in split.parts {
            let rel = if part.is_empty() {
                name.clone()
            } else {
                format!("{part}/{name}")
            };
            let bytes = encode(self.cfg.format, &batch.schema, &rows)?;
            write_atomically(&self.dir.join(&rel), &bytes)?;
            files.push(rel);
        }
        // The manifest entry comes last: a batch is committed in this sink once it exists.
        let entry = ManifestEntry {
            job: batch.job.to_string(),
            batch_time: batch.time.millis(),
            rows: (batch.num_rows() - rejected) as u64,
            files,
        };
        let bytes = serde_json::to_vec(&entry).map_err(|e| Error::msg(e.to_string()))?;
        write_atomically(
            &self.dir.join(MANIFEST_DIR).join(format!("{stem}.json")),
            &bytes,
        )?;
        if batch.rerun {
            tracing::info!(sink = %self.dir.display(), batch = batch.time.millis(), "re-run batch overwrote its files");
        }
        Ok(())
    }

    fn idempotent(&self) -> bool {
        true
    }

    fn fixed_name_option(&self) -> Option<&'static str> {
        self.cfg.prefix.as_ref().map(|_| "prefix")
    }
}
