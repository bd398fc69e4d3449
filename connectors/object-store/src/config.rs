//! The keys of `[sinks.NAME] type = "file"` and `type = "object_store"`, whose doc comments are the
//! user documentation: [`Output`] (what is written and how it is laid out) is both sinks' own;
//! [`Remote`] (the store, its credentials and retries) is `object_store`'s alone.

use schemars::JsonSchema;
use serde::Deserialize;
use sluice_core::options::Joined;
use sluice_core::time::serde_duration;
pub use sluice_core::Secret;
use sluice_core::{Accepted, Format, FormatOf};
use std::time::Duration;

/// `type = "object_store"`: the file keys, then the store's.
pub type ObjectStoreSinkConfig = Joined<Output, Remote>;

/// `type = "file"`: the file keys alone, on a local folder.
pub type FileSinkConfig = Output;

/// What a sink writes files of, and where they go.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Where to write. `file`: a folder (relative to the working directory; created if missing).
    /// `object_store`: also `s3://bucket/prefix`, `webhdfs://host:port/path`,
    /// `hdfs://host:port/path` (a build with the `hdfs` feature) or `file:///abs/path`.
    pub path: String,
    /// `json` (JSON lines), `csv` (with a header), `parquet` or `avro` (object container file; the
    /// schema is derived from the job's output). Default: `json` for `file`, `parquet` for
    /// `object_store`.
    #[serde(default)]
    pub format: Option<FormatOf<FileFormats>>,
    /// Parquet: `zstd` (default), `snappy`, `gzip` or `none`. JSON and CSV: `none` (default),
    /// `gzip` or `zstd` (the file name gets `.gz` / `.zst`). Avro: `none` (default) or `deflate`.
    #[serde(default)]
    pub compression: Option<Compression>,
    /// Parquet: at most this many rows per row group (default 131072); a row group is also closed
    /// when its buffers reach 64 MiB, which bounds memory.
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
    /// File name prefix; default: the job's name. With a prefix the sink serves one writer (one job,
    /// or the dead-letter output): two would overwrite each other's files, so such a config is
    /// refused.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Columns whose values make `col=value/` folders (Hive-style partitions).
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Time folders as a strftime template in UTC, e.g. `dt=%Y-%m-%d/hour=%H`, placed before the
    /// column folders.
    #[serde(default)]
    pub time_partition: Option<String>,
    /// The timestamp column `time_partition` reads (event time); without it, the batch time.
    #[serde(default)]
    pub time_column: Option<String>,
    /// A prefix for every data file's key, below `path`: `{job}` is the job's name and strftime
    /// fields (`%Y/%m/%d`) are the batch time in UTC. Default: none.
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// Roll files across batches: close a file once its data reaches this size (`"128MiB"`),
    /// measured as Arrow data before encoding. Without `max_file_size` and `max_file_age`, each
    /// batch writes its own files.
    #[serde(default)]
    #[schemars(with = "Option<sluice_core::options::SizeText>")]
    pub max_file_size: Option<bytesize::ByteSize>,
    /// Roll files across batches: close a file once it spans this much batch time (`"10m"`).
    #[serde(default, deserialize_with = "serde_duration::option::deserialize")]
    #[schemars(with = "Option<sluice_core::time::DurationText>")]
    pub max_file_age: Option<Duration>,
    /// Write a file for a batch with no rows too (default false).
    #[serde(default)]
    pub write_empty: bool,
}

/// The store an `object_store` sink writes to: S3 (and S3-compatible stores), WebHDFS or HDFS.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    /// Objects larger than this are sent as multipart uploads of parts this size (default `8MiB`,
    /// at least `5MiB` for S3).
    #[serde(default = "default_part_size")]
    #[schemars(with = "sluice_core::options::SizeText")]
    pub part_size: bytesize::ByteSize,
    /// Parts of one object uploaded at once (default 4).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,

    /// S3: the endpoint URL, for S3-compatible stores (`http://127.0.0.1:9000`). Default: AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// S3: the signing region (default `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// S3: the access key. With `secret_access_key`, these credentials are used and nothing else;
    /// without, the standard AWS chain is (environment `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`,
    /// `~/.aws` profiles, web identity, instance metadata). Never logged.
    #[serde(default)]
    pub access_key_id: Option<Secret>,
    /// S3: the secret key (see `access_key_id`). Never logged.
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// S3: a session token for temporary credentials. Never logged.
    #[serde(default)]
    pub session_token: Option<Secret>,
    /// S3: address buckets as `bucket.endpoint` instead of `endpoint/bucket` (default false: path
    /// style, which S3-compatible stores expect).
    #[serde(default)]
    pub virtual_host_style: bool,
    /// WebHDFS: the user name requests are made as.
    #[serde(default)]
    pub hdfs_user: Option<String>,

    /// Attempts for a request that failed with a temporary error (5xx, throttling, a dropped
    /// connection) before the batch fails (default 8).
    #[serde(default = "default_max_retries")]
    pub max_retries: usize,
    /// First backoff between attempts (default 200ms), doubling with jitter.
    #[serde(
        default = "default_retry_initial",
        deserialize_with = "serde_duration::deserialize"
    )]
    #[schemars(with = "sluice_core::time::DurationText")]
    pub retry_initial: Duration,
    /// Longest backoff between attempts (default 10s).
    #[serde(
        default = "default_retry_max",
        deserialize_with = "serde_duration::deserialize"
    )]
    #[schemars(with = "sluice_core::time::DurationText")]
    pub retry_max: Duration,
}

/// The formats of the files a sink writes.
pub struct FileFormats;
impl Accepted for FileFormats {
    const FORMATS: &'static [Format] = &[Format::Json, Format::Csv, Format::Parquet, Format::Avro];
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Zstd,
    Snappy,
    Gzip,
    Deflate,
}

fn default_row_group_rows() -> usize {
    131_072
}
fn default_part_size() -> bytesize::ByteSize {
    bytesize::ByteSize::mib(8)
}
fn default_concurrency() -> usize {
    4
}
fn default_max_retries() -> usize {
    8
}
fn default_retry_initial() -> Duration {
    Duration::from_millis(200)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(10)
}
