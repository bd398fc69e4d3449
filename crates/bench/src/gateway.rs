//! Running the gateway for a benchmark: the `sluice` binary as a child process whose per-batch
//! `batch done` log lines are collected, or a pipeline built in this process.

use sluice_generator::{GeneratorConfig, Kind, Workload};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The word count with `source` (a TOML inline table) as table `lines`.
pub fn wordcount_config(source: &str) -> String {
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

pub(crate) async fn build(config: &str) -> anyhow::Result<sluice_engine::Pipeline> {
    let reg = sluice::registry();
    let path = std::path::Path::new("<bench>");
    let cfg = sluice_config::load_str(config, config::FileFormat::Toml, path, &reg)
        .map_err(|d| anyhow::anyhow!("{}", d[0]))?;
    sluice::build(cfg, path, &reg)
        .await
        .map_err(|d| anyhow::anyhow!("{}", d[0]))
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

/// The `sluice` binary the benchmarks run: `$SLUICE_BIN`, else the one beside this binary (build both
/// with `cargo build --release -p sluice -p sluice-bench`).
pub(crate) fn sluice_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("SLUICE_BIN") {
        return Ok(p.into());
    }
    let beside = std::env::current_exe()?.with_file_name("sluice");
    anyhow::ensure!(
        beside.exists(),
        "no sluice binary at {}: build it with `cargo build --release -p sluice -p sluice-bench`, or set SLUICE_BIN",
        beside.display()
    );
    Ok(beside)
}

/// Start `sluice run config` (in `cwd`) as a child process with the engine's per-batch debug log,
/// and collect its `batch done` lines.
pub(crate) fn spawn_gateway(
    config: &Path,
    cwd: &Path,
) -> anyhow::Result<(std::process::Child, SeenLog, std::thread::JoinHandle<()>)> {
    let mut child = std::process::Command::new(sluice_bin()?)
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
