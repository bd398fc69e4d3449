//! A `StreamingContext`-style builder: the DStream API of Spark, expressed with SQL snippets, that
//! builds the same pipeline a config file does (each operation becomes a job reading the previous).
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use sluice::StreamingContext;
//! let ssc = StreamingContext::new("wordcount", std::time::Duration::from_secs(1));
//! ssc.socket_text_stream("127.0.0.1", 9898)
//!     .flat_map("unnest(string_to_array(line, ' ')) AS word")
//!     .map("word, 1 AS n")
//!     .reduce_by_key("word", "sum(n)")
//!     .pprint();
//! ssc.start().await?;
//! ssc.await_termination().await?;
//! # Ok(()) }
//! ```

use crate::{registry, RunOptions, RunSummary, Shutdown};
use anyhow::{anyhow, Context as _};
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

struct Inner {
    app: Map<String, Value>,
    sources: Map<String, Value>,
    jobs: Map<String, Value>,
    sinks: Map<String, Value>,
    next_id: usize,
    running: Option<JoinHandle<sluice_core::Result<RunSummary>>>,
    options: RunOptions,
}

/// The entry point of a pipeline written in Rust.
#[derive(Clone)]
pub struct StreamingContext {
    inner: Arc<Mutex<Inner>>,
}

/// A stream of record batches: a source or the output of a job.
#[derive(Clone)]
pub struct DStream {
    ctx: StreamingContext,
    name: String,
}

impl StreamingContext {
    pub fn new(app_name: &str, batch_interval: Duration) -> Self {
        let mut app = Map::new();
        app.insert("name".into(), json!(app_name));
        app.insert(
            "batch_interval".into(),
            json!(format!("{}ms", batch_interval.as_millis())),
        );
        StreamingContext {
            inner: Arc::new(Mutex::new(Inner {
                app,
                sources: Map::new(),
                jobs: Map::new(),
                sinks: Map::new(),
                next_id: 0,
                running: None,
                options: RunOptions::default(),
            })),
        }
    }

    fn fresh(&self, kind: &str) -> String {
        let mut i = self.inner.lock().unwrap();
        i.next_id += 1;
        format!("{kind}_{}", i.next_id)
    }

    /// Any source type of the registry with its options, e.g. `source("generator", json!({...}))`.
    pub fn source(&self, ty: &str, mut options: Value) -> DStream {
        let name = self.fresh("source");
        options["type"] = json!(ty);
        self.inner
            .lock()
            .unwrap()
            .sources
            .insert(name.clone(), options);
        DStream {
            ctx: self.clone(),
            name,
        }
    }

    /// Text lines from a TCP server (Spark's `socketTextStream`); one `line` column.
    pub fn socket_text_stream(&self, host: &str, port: u16) -> DStream {
        self.source("socket", json!({ "host": host, "port": port }))
    }

    /// Lines of new files in a directory (Spark's `textFileStream`).
    pub fn text_file_stream(&self, dir: &str) -> DStream {
        self.source("file", json!({ "path": dir }))
    }

    /// One batch per interval from a list (Spark's `queueStream`).
    pub fn queue_stream(&self, batches: Vec<Vec<String>>) -> DStream {
        self.source("queue", json!({ "batches": batches }))
    }

    /// Stop after `n` batches, or run batches back to back from `start` (tests, backfills).
    pub fn with_options(&self, options: RunOptions) -> &Self {
        self.inner.lock().unwrap().options = options;
        self
    }

    /// A handle that stops the context gracefully.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.inner.lock().unwrap().options.shutdown.clone()
    }

    /// Build the pipeline (checking it as `sluice validate` would) and start it in the background.
    pub async fn start(&self) -> anyhow::Result<()> {
        let (raw, options) = {
            let i = self.inner.lock().unwrap();
            let raw = json!({
                "app": Value::Object(i.app.clone()),
                "sources": Value::Object(i.sources.clone()),
                "jobs": Value::Object(i.jobs.clone()),
                "sinks": Value::Object(i.sinks.clone()),
            });
            (raw, i.options.clone())
        };
        let reg = registry();
        let config = sluice_config::from_value(raw, &reg).map_err(|e| joined(&e))?;
        let pipeline = crate::build(config, std::path::Path::new("<StreamingContext>"), &reg)
            .await
            .map_err(|e| joined(&e))?;
        let handle = tokio::spawn(pipeline.run(options));
        self.inner.lock().unwrap().running = Some(handle);
        Ok(())
    }

    /// Wait until the pipeline stops (its shutdown handle, batch limit, or an error).
    pub async fn await_termination(&self) -> anyhow::Result<RunSummary> {
        let h = self
            .inner
            .lock()
            .unwrap()
            .running
            .take()
            .context("the context was not started")?;
        Ok(h.await.context("the pipeline task failed")??)
    }
}

/// One error holding every problem found, a line each.
fn joined<E: std::fmt::Display>(errors: &[E]) -> anyhow::Error {
    anyhow!(errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n"))
}

impl DStream {
    /// The table name of this stream in SQL.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn job(&self, kind: &str, sql: String, extra: Value) -> DStream {
        let name = self.ctx.fresh(kind);
        let mut job = json!({ "sql": sql, "sinks": [] });
        if let Value::Object(m) = extra {
            for (k, v) in m {
                job[k] = v;
            }
        }
        self.ctx
            .inner
            .lock()
            .unwrap()
            .jobs
            .insert(name.clone(), job);
        DStream {
            ctx: self.ctx.clone(),
            name,
        }
    }

    /// Any query over this stream, read as `{}` (Spark's `transform`).
    pub fn transform(&self, sql_with_placeholder: &str) -> DStream {
        self.job(
            "transform",
            sql_with_placeholder.replace("{}", &self.name),
            json!({}),
        )
    }

    /// `SELECT <columns> FROM this` (Spark's `map`).
    pub fn map(&self, columns: &str) -> DStream {
        self.job(
            "map",
            format!("SELECT {columns} FROM {}", self.name),
            json!({}),
        )
    }

    /// `SELECT <expression producing many rows, e.g. unnest(...)> FROM this` (Spark's `flatMap`).
    pub fn flat_map(&self, columns: &str) -> DStream {
        self.map(columns)
    }

    /// `SELECT * FROM this WHERE <predicate>` (Spark's `filter`).
    pub fn filter(&self, predicate: &str) -> DStream {
        self.job(
            "filter",
            format!("SELECT * FROM {} WHERE {predicate}", self.name),
            json!({}),
        )
    }

    /// `SELECT key, <aggregate> FROM this GROUP BY key` (Spark's `reduceByKey`).
    pub fn reduce_by_key(&self, key: &str, aggregate: &str) -> DStream {
        self.job(
            "reduce",
            format!(
                "SELECT {key}, {aggregate} FROM {} GROUP BY {key}",
                self.name
            ),
            json!({}),
        )
    }

    /// `SELECT count(*) FROM this` (Spark's `count`).
    pub fn count(&self) -> DStream {
        self.job(
            "count",
            format!("SELECT count(*) AS count FROM {}", self.name),
            json!({}),
        )
    }

    /// The same stream over a sliding window (Spark's `window`).
    pub fn window(&self, length: Duration, slide: Duration) -> DStream {
        self.job(
            "window",
            format!("SELECT * FROM {}", self.name),
            json!({ "window": { "length": format!("{}ms", length.as_millis()), "slide": format!("{}ms", slide.as_millis()) } }),
        )
    }

    /// Print the first 10 rows of every batch (Spark's `pprint`).
    pub fn pprint(&self) -> &Self {
        self.sink("console", json!({}))
    }

    /// Send the stream to any sink type of the registry.
    pub fn sink(&self, ty: &str, mut options: Value) -> &Self {
        let sink = self.ctx.fresh("sink");
        options["type"] = json!(ty);
        let mut i = self.ctx.inner.lock().unwrap();
        i.sinks.insert(sink.clone(), options);
        if !i.jobs.contains_key(&self.name) {
            drop(i);
            // A source printed directly: pass it through a job.
            let passthrough = self.map("*");
            let mut i = self.ctx.inner.lock().unwrap();
            i.jobs[&passthrough.name]["sinks"]
                .as_array_mut()
                .unwrap()
                .push(json!(sink));
            return self;
        }
        i.jobs[&self.name]["sinks"]
            .as_array_mut()
            .unwrap()
            .push(json!(sink));
        self
    }
}
