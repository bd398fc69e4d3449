//! `sluice-bench wordcount`: the gateway (`sluice run`, a child process) on the socket word count
//! with 1-second batches, its socket fed at fixed rates with seeded lines (10 words from a
//! 10,000-word vocabulary); for each rate, whether every batch kept processing time below the batch
//! interval with every line counted, the processing times, line latencies and the gateway's peak
//! RSS.

use crate::gateway::{spawn_gateway, stop_gateway, wordcount_config, LinePool};
use sluice_testkit::peak_rss_mb;
use std::net::TcpListener;
use std::time::{Duration, Instant};

pub(crate) struct RateResult {
    pub batches: usize,
    pub max_ms: f64,
    pub median_ms: f64,
    pub sustained: bool,
    pub lines: u64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub peak_rss_mb: f64,
}

/// Runs the gateway as a child `sluice run` process (so its RSS is its own) reading a socket that
/// this process feeds at `rate` lines per second for `seconds`.
pub(crate) async fn wordcount_at(rate: u64, seconds: u64) -> anyhow::Result<RateResult> {
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
