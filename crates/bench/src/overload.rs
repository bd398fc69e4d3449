//! `sluice-bench overload`: the socket word count with a write-ahead log and backpressure on, fed
//! at `factor` × its measured capacity for `seconds`. Reports the gateway's peak RSS, the
//! scheduling delay at the start and at the end of the overload, and whether every line the peer
//! wrote was counted.
//!
//! Capacity is measured first: the same gateway fed as fast as the peer can write for 15 s;
//! capacity = records / processing time of its batches.

use crate::gateway::{spawn_gateway, stop_gateway, wordcount_config, LinePool, Seen as Batch};
use sluice_testkit::peak_rss_mb;
use std::net::TcpListener;
use std::time::{Duration, Instant};

struct Run {
    batches: Vec<Batch>,
    sent: u64,
    peak_rss_mb: f64,
}

/// One gateway run fed at `rate` lines/s (None: as fast as possible) for `seconds`.
fn feed(rate: Option<f64>, seconds: u64) -> anyhow::Result<Run> {
    let mut pool = LinePool::new();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let dir = tempfile::tempdir()?;
    let config = wordcount_config(&format!(
        "{{ type = \"socket\", host = \"127.0.0.1\", port = {port} }}"
    ))
    .replace(
        "batch_interval = \"1s\"",
        "batch_interval = \"1s\"\ncheckpoint_dir = \"checkpoint\"\nbackpressure = { enabled = true, initial_rate = 200000 }",
    );
    std::fs::write(dir.path().join("pipeline.toml"), config)?;
    let (child, seen, reader) = spawn_gateway(std::path::Path::new("pipeline.toml"), dir.path())?;
    let (mut s, _) = listener.accept()?;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut peak = 0.0f64;
    while started.elapsed() < Duration::from_secs(seconds) {
        let due = match rate {
            Some(r) => (started.elapsed().as_secs_f64() * r) as u64,
            None => sent + 20_000,
        };
        let mut behind = due.saturating_sub(sent) as usize;
        // Write in slices of at most 20,000 lines so the loop sees the clock while blocked.
        while behind > 0 && started.elapsed() < Duration::from_secs(seconds) {
            let k = pool.write(&mut s, behind.min(20_000))?;
            sent += k as u64;
            behind -= k;
        }
        peak = peak.max(peak_rss_mb(child.id()));
        if rate.is_some() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    drop(s);
    // Drain: wait until the gateway has counted every line written (or 60 s).
    let drain_until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < drain_until {
        let counted: u64 = seen.lock().unwrap().iter().map(|b| b.records).sum();
        if counted >= sent {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    peak = peak.max(peak_rss_mb(child.id()));
    stop_gateway(child)?;
    reader.join().ok();
    let batches = std::mem::take(&mut *seen.lock().unwrap());
    Ok(Run {
        batches,
        sent,
        peak_rss_mb: peak,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub async fn overload(seconds: u64, factor: f64) -> anyhow::Result<()> {
    let probe = feed(None, 15)?;
    let busy: Vec<&Batch> = probe
        .batches
        .iter()
        .filter(|b| b.records > 0)
        .skip(3)
        .collect();
    let records: u64 = busy.iter().map(|b| b.records).sum();
    let secs: f64 = busy.iter().map(|b| b.processing_ms).sum::<f64>() / 1e3;
    anyhow::ensure!(secs > 0.0, "the capacity probe processed nothing");
    let capacity = records as f64 / secs;
    let offered = capacity * factor;
    println!("capacity (WAL on, socket word count, 1 s batches): {capacity:.0} lines/s");
    println!("offering {offered:.0} lines/s ({factor}x) for {seconds} s with backpressure on");
    let run = feed(Some(offered), seconds)?;
    let start = run
        .batches
        .first()
        .map(|b| b.at)
        .unwrap_or_else(Instant::now);
    let window = |from: f64, to: f64| -> Vec<Batch> {
        run.batches
            .iter()
            .filter(|b| {
                let t = (b.at - start).as_secs_f64();
                t >= from && t < to
            })
            .copied()
            .collect()
    };
    let s = seconds as f64;
    let first = window(5.0, 15.0);
    let last = window(s - 10.0, s);
    let counted: u64 = run.batches.iter().map(|b| b.records).sum();
    let accepted = window(5.0, s).iter().map(|b| b.records).sum::<u64>() as f64 / (s - 5.0);
    println!(
        "accepted {accepted:.0} lines/s; the peer wrote {} lines, the gateway counted {counted} ({} lost)",
        run.sent,
        run.sent as i64 - counted as i64
    );
    println!(
        "scheduling delay, median: {:.0} ms in seconds 5-15, {:.0} ms in the last 10 s; max {:.0} ms",
        median(first.iter().map(|b| b.delay_ms).collect()),
        median(last.iter().map(|b| b.delay_ms).collect()),
        run.batches.iter().map(|b| b.delay_ms).fold(0.0, f64::max)
    );
    println!(
        "processing time, median: {:.0} ms; peak RSS {:.0} MB",
        median(run.batches.iter().map(|b| b.processing_ms).collect()),
        run.peak_rss_mb
    );
    Ok(())
}
