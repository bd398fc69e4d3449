//! `sluice-bench wal` and `sluice-bench restart` (see docs/performance.md).
//!
//! `wal`: durable append throughput of the write-ahead log with each sync policy, against the raw
//! speed of the same disk measured in the same run: the same bytes written sequentially to a plain
//! file with `fdatasync` at the same cadence (after every block, or every sync interval).
//!
//! `restart`: a gateway with a stateful job of N keys is killed with SIGKILL; the time from
//! restarting it to its first committed batch is measured (state restore, log open, re-run).

use sluice_generator::{GeneratorConfig, Kind, Workload};
use sluice_wal::{Log, SyncPolicy};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Seeded blocks of text lines, about `block_kb` KiB each, as the socket receiver would store.
fn blocks(count: usize, block_kb: usize) -> Vec<arrow::record_batch::RecordBatch> {
    let cfg: GeneratorConfig = serde_json::from_value(serde_json::json!({
        "kind": "words", "seed": 7, "start_ms": 0
    }))
    .expect("generator config");
    assert_eq!(cfg.kind, Kind::Words);
    let mut w = Workload::new(&cfg);
    let decoder =
        sluice_formats::Decoder::for_component("bench", sluice_formats::Format::Text, None, None)
            .expect("text decoder");
    let lines_per_block = block_kb * 1024 / 70;
    (0..count)
        .map(|_| decoder.decode(&w.take(lines_per_block)).0)
        .collect()
}

fn policy_name(p: SyncPolicy) -> String {
    match p {
        SyncPolicy::EveryBlock => "every_block".into(),
        SyncPolicy::Interval(d) => format!("interval({}ms)", d.as_millis()),
    }
}

/// Raw sequential write of `sizes` bytes with `fdatasync` per block or per interval: MB/s.
fn raw(dir: &Path, sizes: &[usize], policy: SyncPolicy) -> anyhow::Result<f64> {
    let path = dir.join("raw.bin");
    let mut f = std::fs::File::create(&path)?;
    let chunk = vec![0x5au8; sizes.iter().copied().max().unwrap_or(0)];
    let started = Instant::now();
    let mut last = Instant::now();
    for &n in sizes {
        f.write_all(&chunk[..n])?;
        let due = match policy {
            SyncPolicy::EveryBlock => true,
            SyncPolicy::Interval(d) => last.elapsed() >= d,
        };
        if due {
            f.sync_data()?;
            last = Instant::now();
        }
    }
    f.sync_data()?;
    let secs = started.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(sizes.iter().sum::<usize>() as f64 / 1e6 / secs)
}

/// Append every block with up to `depth` appends awaiting durability at once: MB/s of log bytes.
async fn wal(
    dir: &Path,
    blocks: &[arrow::record_batch::RecordBatch],
    policy: SyncPolicy,
    depth: usize,
) -> anyhow::Result<(f64, u64)> {
    let wal_dir = dir.join("wal");
    let _ = std::fs::remove_dir_all(&wal_dir);
    let (log, _) = Log::open(&wal_dir, policy, 64 << 20)?;
    let log = Arc::new(log);
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for (i, b) in blocks.iter().enumerate() {
        let (_, durable) = log.append(b, &serde_json::json!({ "next": i }))?;
        pending.push_back(durable);
        if pending.len() >= depth {
            pending.pop_front().expect("non-empty").await??;
        }
    }
    for p in pending {
        p.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let bytes = log.disk_bytes();
    log.close();
    Ok((bytes as f64 / 1e6 / secs, bytes))
}

pub async fn bench_wal(
    dir: PathBuf,
    megabytes: usize,
    block_kb: usize,
    depth: usize,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir)?;
    let dir = tempfile::tempdir_in(&dir)?;
    let count = megabytes * 1024 / block_kb;
    let data = blocks(count, block_kb);
    // The raw writer writes as many bytes per block as the log's records hold.
    let (_, wal_bytes) = wal(dir.path(), &data[..1], SyncPolicy::EveryBlock, 1).await?;
    let sizes = vec![wal_bytes as usize; count];
    println!(
        "disk: {} ; {count} blocks of ~{block_kb} KiB ({} bytes as log records), {depth} in flight",
        dir.path().display(),
        wal_bytes
    );
    println!("policy,wal_mb_per_s,raw_mb_per_s,ratio");
    for policy in [
        SyncPolicy::Interval(Duration::from_millis(50)),
        SyncPolicy::EveryBlock,
    ] {
        let raw_speed = raw(dir.path(), &sizes, policy)?;
        let (wal_speed, _) = wal(dir.path(), &data, policy, depth).await?;
        println!(
            "{},{wal_speed:.1},{raw_speed:.1},{:.2}",
            policy_name(policy),
            wal_speed / raw_speed
        );
    }
    // Opening the last log written (what a restart does): its newest segment is checked whole.
    let started = Instant::now();
    let (log, rec) = Log::open(&dir.path().join("wal"), SyncPolicy::EveryBlock, 64 << 20)?;
    println!(
        "open a {:.0} MB log ({} segments, last record {:?}): {:.0} ms",
        log.disk_bytes() as f64 / 1e6,
        log.segment_count(),
        rec.last_seq,
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

/// The restart benchmark's pipeline: a generator of `keys` distinct words, a running count per
/// word (state in upsert mode: a batch touches only its own words), and the raw lines kept in the
/// write-ahead log.
fn restart_config(keys: u64, rate: u64) -> String {
    format!(
        r#"
[app]
name = "restart-bench"
batch_interval = "1s"
checkpoint_dir = "checkpoint"

[sources.words]
type = "generator"
kind = "words"
words_per_line = 10
vocabulary = {keys}
rate = {rate}

[jobs.totals]
sql = """
SELECT b.word, coalesce(s.n, 0) + b.n AS n
FROM (SELECT word, count(*) AS n FROM (SELECT unnest(string_to_array(line, ' ')) AS word FROM words) GROUP BY word) b
  LEFT JOIN state s ON s.word = b.word
"""
state = {{ key = ["word"], schema = "word string, n bigint", emit = "updated", mode = "upsert" }}
sinks = ["out"]

[sinks.out]
type = "blackhole"
"#
    )
}

pub async fn bench_restart(dir: PathBuf, keys: u64, rate: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir)?;
    let dir = tempfile::tempdir_in(&dir)?;
    let exe = crate::gateway::sluice_bin()?;
    // 1. Fill: run until the state has `keys` keys (the vocabulary is drawn at random, so run
    //    long enough that nearly every word was seen).
    std::fs::write(dir.path().join("pipeline.toml"), restart_config(keys, rate))?;
    let run = |secs: u64| -> anyhow::Result<std::process::Child> {
        Ok(std::process::Command::new(&exe)
            .current_dir(dir.path())
            .env("RUST_LOG", "info,sluice_engine=debug")
            .args(["run", "pipeline.toml", "--duration", &format!("{secs}s")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?)
    };
    // Ten draws per line: after ~1.5 × keys × ln(keys) / 10 lines nearly every word was seen.
    let fill_secs = ((keys as f64 * (keys as f64).ln() * 1.5 / 10.0) / rate as f64)
        .ceil()
        .max(5.0) as u64;
    println!("filling: {keys} keys at {rate} lines/s for {fill_secs} s");
    let mut child = run(fill_secs + 60)?;
    let started = Instant::now();
    let report = sluice::inspect::inspect;
    let stderr = child.stderr.take().expect("piped");
    let lines = std::io::BufReader::new(stderr).lines();
    for l in lines {
        let l = l?;
        if l.contains("batch done") && started.elapsed() > Duration::from_secs(fill_secs) {
            break;
        }
    }
    child.kill()?; // SIGKILL, mid-run
    child.wait()?;
    println!("{}", report(&dir.path().join("checkpoint"))?);
    // 2. Restart and time each step up to the first committed batch.
    let t0 = Instant::now();
    let mut child = run(600)?;
    let stderr = child.stderr.take().expect("piped");
    let mut first = None;
    let steps = [
        ("checkpoint open", "checkpoint store and logs open"),
        ("state restored", "state restored"),
        (
            "resuming from the checkpoint",
            "state, windows and positions restored",
        ),
        ("started app", "receivers started"),
        (
            "re-running a batch",
            "re-running the batch planned before the kill",
        ),
        ("job ran", "job ran"),
    ];
    for l in std::io::BufReader::new(stderr).lines() {
        let l = l?;
        for (marker, what) in steps {
            if l.contains(marker) {
                let detail = ["records", "query_us", "state_us"]
                    .iter()
                    .filter_map(|f| Some(format!(" {f}={}", crate::gateway::field(&l, f)?)))
                    .collect::<String>();
                println!(
                    "{:>6.0} ms  {what}{detail}",
                    t0.elapsed().as_secs_f64() * 1e3
                );
            }
        }
        if l.contains("batch done") {
            let ms = crate::gateway::field(&l, "processing_us").unwrap_or(0) as f64 / 1e3;
            let records = crate::gateway::field(&l, "records").unwrap_or(0);
            println!(
                "{:>6.0} ms  first batch committed (its processing: {ms:.0} ms, {records} lines)",
                t0.elapsed().as_secs_f64() * 1e3
            );
            first = Some(t0.elapsed());
            break;
        }
    }
    child.kill()?;
    child.wait()?;
    let first = first.ok_or_else(|| anyhow::anyhow!("the restarted gateway committed no batch"))?;
    println!(
        "restart to first committed batch: {:.0} ms",
        first.as_secs_f64() * 1e3
    );
    Ok(())
}
