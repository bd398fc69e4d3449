//! The config model. The doc comments of these structs are the user documentation of each key
//! (`docs/configuration.md` follows them).

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use sluice_core::time::serde_duration;
use sluice_core::{Accepted, Format, FormatOf};
use std::time::Duration;

/// The whole file as written.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileModel {
    pub app: AppSection,
    #[serde(default)]
    pub sources: IndexMap<String, Value>,
    #[serde(default)]
    pub tables: IndexMap<String, TableConfig>,
    #[serde(default)]
    pub jobs: IndexMap<String, JobConfig>,
    #[serde(default)]
    pub sinks: IndexMap<String, Value>,
}

/// `[app]`: the application as a whole.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppSection {
    /// A name for logs and output files.
    pub name: String,
    /// How often a batch is cut, e.g. `"1s"` (Spark's `batchDuration`).
    #[serde(deserialize_with = "serde_duration::deserialize")]
    #[schemars(with = "sluice_core::time::DurationText")]
    pub batch_interval: Duration,
    /// Where the checkpoint (batch plans, committed batches, source positions, state) and the
    /// write-ahead log of received data live. With it, a restarted gateway resumes where it stopped:
    /// unfinished batches are re-run with identical inputs. Without it nothing survives a restart.
    #[serde(default)]
    pub checkpoint_dir: Option<String>,
    /// The write-ahead log (used with `checkpoint_dir`).
    #[serde(default)]
    pub wal: WalConfig,
    /// After a restart, the batch times that passed while the gateway was down: `coalesce`
    /// (default) goes on at the current time, so the first batch takes everything replayable
    /// sources have accumulated (bounded by `backpressure.max_rate`); `catch_up` (Spark's way) runs
    /// one batch per missed interval back to back, so processing-time windows slide as if there had
    /// been no gap — after a long stop that is many batches.
    #[serde(default)]
    pub missed_batches: MissedBatches,
    /// Rate limits and adaptive backpressure.
    #[serde(default)]
    pub backpressure: BackpressureConfig,
    /// The sink that receives records that failed to decode or arrived after the watermark.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// How much received input each receiver (socket, MQTT, generator) may hold before it is
    /// planned into a batch: past it, the receiver stops reading its peer until a batch takes some
    /// (default `512MiB`, measured as Arrow memory; at most 4 million records either way).
    #[serde(default = "default_receiver_buffer")]
    #[schemars(with = "sluice_core::options::SizeText")]
    pub receiver_buffer: bytesize::ByteSize,
    /// How long a graceful stop may take to drain received data (default 10 × batch_interval).
    #[serde(default, deserialize_with = "serde_duration::option::deserialize")]
    #[schemars(with = "Option<sluice_core::time::DurationText>")]
    pub graceful_stop_timeout: Option<Duration>,
    /// Several gateways run this same config and share the work: each Kafka source's partitions
    /// are divided among them by the broker (one consumer group), each Kinesis source's shards
    /// through a DynamoDB lease table, and each gateway's file and object-store outputs go under a
    /// folder named by its `instance`. Needs `checkpoint_dir`: a killed gateway's unfinished
    /// batches are finished from it when it restarts. See docs/kafka.md and docs/kinesis.md,
    /// "Scale-out".
    #[serde(default)]
    pub scale_out: bool,
    /// This gateway's name among those of a `scale_out` app (letters, digits, `-`, `_`, `.`).
    /// Default: the host name and a short hash of the checkpoint directory's absolute path, so
    /// it stays the same across restarts. Set it when a checkpoint directory moves to another
    /// machine.
    #[serde(default)]
    pub instance: Option<String>,
    /// Set by `sluice replay` (never by a file): the replay's own output identity, so its files,
    /// staging and Kafka transactional id never meet the live gateway's.
    #[serde(skip)]
    pub replay_scope: Option<String>,
}

/// `[app.wal]`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WalConfig {
    /// When received blocks are made durable (and acknowledged upstream): `interval` (default;
    /// one `fdatasync` per `sync_interval` for every block received meanwhile) or `every_block`.
    #[serde(default)]
    pub sync: WalSync,
    /// The group-commit interval of `sync = "interval"` (default 50ms). A kill loses at most the
    /// data of an unacknowledged peer received in the last interval.
    #[serde(
        default = "default_sync_interval",
        deserialize_with = "serde_duration::deserialize"
    )]
    #[schemars(with = "sluice_core::time::DurationText")]
    pub sync_interval: Duration,
    /// Size at which a log segment is closed and a new one started (default 64 MiB). Closed
    /// segments are deleted once every batch that read them is committed.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// The checkpoint store's (RocksDB's) memtable size: past it, what the commits wrote is
    /// flushed to a table file (default 64 MiB, RocksDB's). Smaller flushes more often.
    #[serde(default)]
    #[schemars(with = "Option<sluice_core::options::SizeText>")]
    pub store_write_buffer: Option<bytesize::ByteSize>,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            sync: WalSync::default(),
            sync_interval: default_sync_interval(),
            segment_bytes: default_segment_bytes(),
            store_write_buffer: None,
        }
    }
}

fn default_sync_interval() -> Duration {
    Duration::from_millis(50)
}
fn default_receiver_buffer() -> bytesize::ByteSize {
    bytesize::ByteSize::mib(512)
}

fn default_segment_bytes() -> u64 {
    64 << 20
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WalSync {
    #[default]
    Interval,
    EveryBlock,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MissedBatches {
    CatchUp,
    #[default]
    Coalesce,
}

/// `[app.backpressure]`: how fast sources may go (Spark's `spark.streaming.backpressure.*` and
/// `receiver.maxRate`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackpressureConfig {
    /// Adapt each source's rate to what the batches can process (PID estimator, default false).
    #[serde(default)]
    pub enabled: bool,
    /// Records per second each source may deliver in the first batch, before the estimator has
    /// measured anything (default: `max_rate`, else unlimited).
    #[serde(default)]
    pub initial_rate: Option<u64>,
    /// The estimator never goes below this many records per second (default 100).
    #[serde(default = "default_min_rate")]
    pub min_rate: u64,
    /// A hard cap in records per second for every source, with or without `enabled`.
    #[serde(default)]
    pub max_rate: Option<u64>,
    /// Per-source caps overriding `max_rate`: `{ lines = 5000 }`.
    #[serde(default)]
    pub source_max_rate: IndexMap<String, u64>,
}

impl Default for BackpressureConfig {
    fn default() -> Self {
        BackpressureConfig {
            enabled: false,
            initial_rate: None,
            min_rate: default_min_rate(),
            max_rate: None,
            source_max_rate: IndexMap::new(),
        }
    }
}

fn default_min_rate() -> u64 {
    100
}

/// `[tables.NAME]`: a reference table read from a file, joined by jobs (Spark's `transform` with a
/// static RDD). It is re-read when the file's modification time changes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Path of the file (relative to the working directory).
    pub path: String,
    /// `csv` (with a header row), `json` (JSON lines) or `parquet`. Default: from the extension.
    #[serde(default)]
    pub format: Option<FormatOf<TableFormats>>,
    /// Column types (`"device string, site string"`); optional for csv/json (inferred) and parquet.
    #[serde(default)]
    pub schema: Option<String>,
    /// Re-read the file when it changes (default true).
    #[serde(default = "yes")]
    pub reload: bool,
}

fn yes() -> bool {
    true
}

/// The formats of a reference table's file.
pub struct TableFormats;
impl Accepted for TableFormats {
    const FORMATS: &'static [Format] = &[Format::Csv, Format::Json, Format::Parquet];
}

/// `[jobs.NAME]`: one SQL query run on every batch (or every window slide).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// The query. It reads sources, reference tables and other jobs by name, and `state` in a
    /// stateful job.
    pub sql: String,
    /// Names of the sinks the output goes to.
    #[serde(default)]
    pub sinks: Vec<String>,
    /// A processing-time window over the inputs (Spark's `window`): `length` and `slide` are
    /// multiples of the batch interval; the job runs once per slide over the last `length` of input.
    #[serde(default)]
    pub window: Option<WindowConfig>,
    /// An event-time window on a timestamp column with a watermark.
    #[serde(default)]
    pub event_time: Option<EventTimeConfig>,
    /// Keyed state (Spark's `updateStateByKey` / `mapWithState`).
    #[serde(default)]
    pub state: Option<StateConfig>,
    /// Number of partitions DataFusion uses for the query (Spark's `repartition`).
    #[serde(default)]
    pub partitions: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    #[serde(deserialize_with = "serde_duration::deserialize")]
    #[schemars(with = "sluice_core::time::DurationText")]
    pub length: Duration,
    /// Default: the batch interval.
    #[serde(default, deserialize_with = "serde_duration::option::deserialize")]
    #[schemars(with = "Option<sluice_core::time::DurationText>")]
    pub slide: Option<Duration>,
}

/// Event-time windows: rows are grouped into windows `[start, start + length)` by `column`; a window
/// is emitted once, when the watermark (the largest event time seen minus `watermark`) passes its end.
/// The input tables of the job get two more columns, `window_start` and `window_end`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTimeConfig {
    /// The timestamp column (type timestamp, or int64 milliseconds).
    pub column: String,
    /// Window length.
    #[serde(deserialize_with = "serde_duration::deserialize")]
    #[schemars(with = "sluice_core::time::DurationText")]
    pub length: Duration,
    /// Window slide; default: the length (tumbling windows).
    #[serde(default, deserialize_with = "serde_duration::option::deserialize")]
    #[schemars(with = "Option<sluice_core::time::DurationText>")]
    pub slide: Option<Duration>,
    /// How late a record may be; default 0s.
    #[serde(default, deserialize_with = "serde_duration::option::deserialize")]
    #[schemars(with = "Option<sluice_core::time::DurationText>")]
    pub watermark: Option<Duration>,
    /// What happens to records older than the watermark: `dead_letter` or `drop` (both count them).
    #[serde(default)]
    pub late: LateRecords,
    /// How far after the batch time (the processing clock) an event time may be; default `1h`.
    /// A record dated further ahead (a wrong clock, a typo'd year) would move the watermark
    /// there and make every later record late, so it is an outlier instead: it never moves the
    /// watermark, and goes to the dead-letter output (counted and logged without one).
    #[serde(
        default = "default_max_future",
        deserialize_with = "serde_duration::deserialize"
    )]
    #[schemars(with = "sluice_core::time::DurationText")]
    pub max_future: Duration,
}

fn default_max_future() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LateRecords {
    DeadLetter,
    #[default]
    Drop,
}

/// Keyed state: the query reads a table `state` (the previous state, with `schema`); its result
/// becomes the new state (`mode = "replace"`) or is merged into it (`mode = "upsert"`). A key whose
/// non-key columns are all NULL is removed.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The key columns.
    pub key: Vec<String>,
    /// The state's columns, e.g. `"word string, n bigint"`.
    pub schema: String,
    /// Keys whose state has not changed for this long get one final emission (with `timed_out` =
    /// true) and are dropped (Spark's `mapWithState` timeout).
    #[serde(default, deserialize_with = "serde_duration::option::deserialize")]
    #[schemars(with = "Option<sluice_core::time::DurationText>")]
    pub timeout: Option<Duration>,
    /// What the job emits each batch: `all` keys (Spark's updateStateByKey) or only `updated` ones.
    #[serde(default)]
    pub emit: StateEmit,
    /// How the query's result updates the state: `replace` (it is the whole new state, as in
    /// Spark's `updateStateByKey`) or `upsert` (it holds only the keys the batch changes; every
    /// other key keeps its state, as in Spark's `mapWithState`). With `upsert` a batch costs what
    /// its own keys cost, not what the whole state costs: use it for large states.
    #[serde(default)]
    pub mode: StateMode,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateMode {
    #[default]
    Replace,
    Upsert,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateEmit {
    #[default]
    All,
    Updated,
}

/// A source or sink: its `type` and its connector-specific options.
#[derive(Debug, Clone)]
pub struct Component {
    pub name: String,
    pub kind: String,
    pub options: Value,
}

#[derive(Debug, Clone)]
pub struct NamedTable {
    pub name: String,
    pub table: TableConfig,
}

#[derive(Debug, Clone)]
pub struct NamedJob {
    pub name: String,
    pub job: JobConfig,
}

/// A checked config.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub app: AppSection,
    pub sources: Vec<Component>,
    pub tables: Vec<NamedTable>,
    pub jobs: Vec<NamedJob>,
    pub sinks: Vec<Component>,
}
