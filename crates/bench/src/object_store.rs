//! `sluice-bench object-store`: sensor records from the generator through a pass-through job into
//! Parquet (or JSON lines) objects on a local S3 server (s3s-fs), compared in the same run with the raw PUT rate of
//! the same bytes to the same server through the OpenDAL writer alone, and with the same pipeline
//! into the `blackhole` sink (the pipeline's cost without storage).

use crate::gateway::{spawn_gateway, stop_gateway};
use sluice_testkit::{peak_rss_mb, s3s_fs::start_s3s_fs};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

const AK: &str = "bench-key";
const SK: &str = "bench-secret";

struct Server {
    port: u16,
    root: PathBuf,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(dir: &Path) -> anyhow::Result<Server> {
        let root = dir.join("s3");
        std::fs::create_dir_all(root.join("bench"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = start_s3s_fs(port, &root, AK, SK)?;
        Ok(Server { port, root, child })
    }

    fn sink_options(&self, prefix: &str) -> serde_json::Value {
        serde_json::json!({
            "path": format!("s3://bench/{prefix}"),
            "endpoint": format!("http://127.0.0.1:{}", self.port),
            "access_key_id": AK,
            "secret_access_key": SK,
        })
    }
}

fn config(records: u64, rate: u64, sink: &str) -> String {
    format!(
        r#"
[app]
name = "bench-object-store"
batch_interval = "1s"

[sources.readings]
type = "generator"
kind = "sensors"
rate = {rate}
count = {records}
start_ms = 1700000000000
devices = 1000
format = "json"
schema = "device string, site string, ts int64, temperature double, humidity double"

[jobs.copy]
sql = "SELECT device, site, ts, temperature, humidity FROM readings"
sinks = ["out"]

[sinks.out]
{sink}
"#
    )
}

pub(crate) struct Drained {
    pub seconds: f64,
    pub peak_rss_mb: f64,
    /// Each batch's (records, processing ms).
    pub batches: Vec<(u64, f64)>,
}

impl Drained {
    /// The batches that had records, as `records/processing` (`20000/27ms 40000/71ms …`).
    pub fn busy_batches(&self) -> String {
        self.batches
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, ms)| format!("{n}/{ms:.0}ms"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Run the gateway on `toml` in `work` until its batches have taken `records` input records.
pub(crate) fn drain(work: &Path, toml: &str, records: u64) -> anyhow::Result<Drained> {
    std::fs::create_dir_all(work)?;
    let cfg = work.join("pipeline.toml");
    std::fs::write(&cfg, toml)?;
    let started = Instant::now();
    let (child, seen, reader) = spawn_gateway(&cfg, work)?;
    let pid = child.id();
    let mut rss = 0.0f64;
    loop {
        let done: u64 = seen.lock().unwrap().iter().map(|s| s.records).sum();
        rss = rss.max(peak_rss_mb(pid));
        if done >= records {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(900),
            "only {done} of {records} records in 900 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let seconds = started.elapsed().as_secs_f64();
    let batches = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| (s.records, s.processing_ms))
        .collect();
    stop_gateway(child)?;
    let _ = reader.join();
    Ok(Drained {
        seconds,
        peak_rss_mb: rss,
        batches,
    })
}

pub async fn bench_object_store(
    dir: PathBuf,
    records: u64,
    rate: u64,
    format: &str,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(format, "parquet" | "json"),
        "--format is parquet or json, not {format}"
    );
    let tmp = tempfile::Builder::new()
        .prefix("sluice-bench-object-store")
        .tempdir_in(&dir)?;
    let server = Server::start(tmp.path())?;
    println!(
        "workload: {records} sensor records (generator, seeded) → {format} on s3s-fs, 1 s batches"
    );

    let blackhole = drain(
        &tmp.path().join("blackhole"),
        &config(records, rate, "type = \"blackhole\""),
        records,
    )?;
    let mut sink = format!("type = \"object_store\"\nformat = \"{format}\"\n");
    for (k, v) in server.sink_options("out").as_object().unwrap() {
        sink.push_str(&format!("{k} = {v}\n"));
    }
    let run = drain(
        &tmp.path().join("gateway"),
        &config(records, rate, &sink),
        records,
    )?;

    // What the manifest says was written.
    let out = server.root.join("bench/out");
    let mut files = Vec::new();
    let mut rows = 0u64;
    for e in std::fs::read_dir(out.join("_sluice/manifest/copy"))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "json") {
            let entry: sluice_object_store::manifest::Entry =
                serde_json::from_slice(&std::fs::read(&p)?)?;
            rows += entry.rows;
            files.extend(entry.files);
        }
    }
    anyhow::ensure!(
        rows == records,
        "the manifest lists {rows} rows, not {records}"
    );
    let bytes: u64 = files.iter().map(|f| f.bytes).sum();
    let mb = bytes as f64 / 1e6;

    // The same bytes, PUT by the OpenDAL writer alone (same part size and concurrency).
    let op = sluice_object_store::operator(server.sink_options("raw"), tmp.path())?;
    let mut data = Vec::new();
    for f in &files {
        data.push((f.key.clone(), std::fs::read(out.join(&f.key))?));
    }
    let started = Instant::now();
    for (key, body) in data {
        let mut w = op.writer_with(&key).chunk(8 << 20).concurrent(4).await?;
        w.write(body).await?;
        w.close().await?;
    }
    let raw_seconds = started.elapsed().as_secs_f64();

    let rate_of = |s: f64| records as f64 / s;
    println!(
        "blackhole sink (no storage): {:.2} s, {:.0} records/s, peak RSS {:.0} MB",
        blackhole.seconds,
        rate_of(blackhole.seconds),
        blackhole.peak_rss_mb
    );
    println!(
        "object_store sink: {:.2} s, {:.0} records/s, {} objects, {:.1} MB of {format} = {:.1} MB/s, peak RSS {:.0} MB",
        run.seconds,
        rate_of(run.seconds),
        files.len(),
        mb,
        mb / run.seconds,
        run.peak_rss_mb
    );
    println!(
        "raw PUT of the same {} objects: {:.2} s, {:.1} MB/s; the sink's end-to-end rate is {:.1}% of it",
        files.len(),
        raw_seconds,
        mb / raw_seconds,
        100.0 * (mb / run.seconds) / (mb / raw_seconds)
    );
    println!(
        "storage's cost: the object_store run took {:+.2} s against the blackhole run; its rate is {:.0}% of the pipeline's without storage",
        run.seconds - blackhole.seconds,
        100.0 * blackhole.seconds / run.seconds
    );
    Ok(())
}
