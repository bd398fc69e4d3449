//! The `file` source and sink.
//!
//! - Source: a directory; each new file (moved in atomically) is read once, in order of modification
//!   time then name. Files whose name starts with `.` or `_` are ignored (temporary files, as Spark
//!   does). Replayable: a batch's input is its list of files.
//! - Sink: one file per job per batch, `<prefix>-<batch time ms>.<ext>` (Spark's `saveAsTextFiles`),
//!   optionally under `col=value/` partition folders; written to a temporary name and renamed, so
//!   readers never see a partial file and a re-run batch replaces its file. Each committed (job,
//!   batch) then gets a manifest entry in `_sluice_metadata/` (see [`committed`]).

mod sink;
mod source;

pub use sink::{
    committed, FileSinkConfig, FileSinkConnector, ManifestEntry, OutputFormat, MANIFEST_DIR,
};
pub use source::{FileSourceConfig, FileSourceConnector};
