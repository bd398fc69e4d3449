//! `sluice bench`: benchmarks with fixed, seeded workloads (see docs/performance.md).
//!
//! `wordcount` feeds a local socket at fixed rates with seeded lines (10 words from a 10,000-word
//! vocabulary), runs the word count on 1-second batches, and reports for each rate whether every
//! batch (after the first) finished within the batch interval, the processing times, and peak RSS.

use crate::{registry, RunOptions, Shutdown};
use clap::Subcommand;
use sluice_generator::{GeneratorConfig, Kind, Workload};
use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
                reset_peak_rss();
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
                    peak_rss_mb()
                );
            }
            Ok(())
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

fn wordcount_config(source: &str) -> String {
    format!(
        r#"
[app]
name = "bench"
batch_interval = "1s"
[sources.lines]
{}
[jobs.counts]
sql = "SELECT word, count(*) AS n FROM (SELECT unnest(string_to_array(line, ' ')) AS word FROM lines) GROUP BY word"
sinks = ["out"]
[sinks.out]
type = "blackhole"
"#,
        source
            .trim_start_matches("{ ")
            .trim_end_matches(" }")
            .replace(", ", "\n")
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
}

async fn wordcount_at(rate: u64, seconds: u64) -> anyhow::Result<RateResult> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    // A pool of seeded lines, written round-robin at `rate`.
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
    let mut pool = Vec::new();
    let mut offsets = vec![0usize];
    for line in w.take(200_000) {
        pool.extend_from_slice(line.as_bytes());
        pool.push(b'\n');
        offsets.push(pool.len());
    }
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let feed_start = Arc::new(std::sync::OnceLock::<Instant>::new());
    let feeder = {
        let (done, sent, feed_start) = (done.clone(), sent.clone(), feed_start.clone());
        std::thread::spawn(move || -> std::io::Result<()> {
            let (mut s, _) = listener.accept()?;
            let started = *feed_start.get_or_init(Instant::now);
            let mut next = 0usize;
            let n_lines = offsets.len() - 1;
            while !done.load(Ordering::Relaxed) {
                let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
                let mut behind = due.saturating_sub(sent.load(Ordering::Relaxed)) as usize;
                while behind > 0 {
                    let k = behind.min(n_lines - next);
                    s.write_all(&pool[offsets[next]..offsets[next + k]])?;
                    sent.fetch_add(k as u64, Ordering::Relaxed);
                    next = (next + k) % n_lines;
                    behind -= k;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        })
    };
    let config = wordcount_config(&format!(
        "{{ type = \"socket\", host = \"127.0.0.1\", port = {port} }}"
    ));
    let p = build(&config).await?;
    let shutdown = Shutdown::default();
    let opts = RunOptions {
        duration: Some(Duration::from_secs(seconds + 1)),
        shutdown,
        ..Default::default()
    };
    let summary = p.run(opts).await?;
    done.store(true, Ordering::Relaxed);
    let _ = feeder.join();
    // The first batch is partial and the last one drains: judge the ones in between.
    let n = summary.stats.len();
    let steady: Vec<f64> = summary
        .stats
        .iter()
        .skip(1)
        .take(n.saturating_sub(2))
        .map(|b| b.processing.as_secs_f64() * 1e3)
        .collect();
    // Latency of line i: from its paced send time (start + i / rate) to its batch's output. Lines
    // are counted in order across batches, sampled every 1,000th line.
    let mut latencies = Vec::new();
    if let Some(start) = feed_start.get() {
        let mut first = 0u64;
        for b in summary.stats.iter().take(n.saturating_sub(1)) {
            let mut i = first.div_ceil(1000) * 1000;
            while i < first + b.records {
                let sent_at = *start + Duration::from_secs_f64(i as f64 / rate as f64);
                latencies.push(b.finished.saturating_duration_since(sent_at).as_secs_f64() * 1e3);
                i += 1000;
            }
            first += b.records;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: usize| {
        latencies
            .get(latencies.len() * p / 100)
            .copied()
            .unwrap_or(0.0)
    };
    let mut sorted = steady.clone();
    sorted.sort_by(f64::total_cmp);
    let max_ms = sorted.last().copied().unwrap_or(0.0);
    let median_ms = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let lines_expected = rate * seconds;
    Ok(RateResult {
        batches: steady.len(),
        max_ms,
        median_ms,
        sustained: !steady.is_empty()
            && max_ms < 1000.0
            && summary.input_records + rate >= lines_expected,
        lines: summary.input_records,
        latency_p50_ms: pct(50),
        latency_p99_ms: pct(99),
    })
}

/// Reset the kernel's peak-RSS mark of this process (writing 5 to clear_refs), so each rate's peak
/// is its own.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set size of this process (VmHWM), in MB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}
