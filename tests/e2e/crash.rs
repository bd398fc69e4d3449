//! Crash recovery with the real binary: SIGKILL at random points, restart, and compare the sink's
//! committed output record by record with what the input was (and with a run without crashes).
//!
//! Each test prints its seed and its figures; `SLUICE_CRASH_KILLS` raises the number of kills per
//! test (the soak run in docs/operations.md uses 200 in all).

use crate::common::sluice;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) fn kills(default: usize) -> usize {
    std::env::var("SLUICE_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub(crate) fn seed() -> u64 {
    std::env::var("SLUICE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| sluice_core::time::now_ms() as u64)
}

pub(crate) fn start(dir: &Path) -> Child {
    start_logged(dir, "gateway.log")
}

/// `sluice run pipeline.toml` in `dir`, with info logs appended to `dir/<log>`.
pub(crate) fn start_logged(dir: &Path, log: &str) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(log))
        .unwrap();
    sluice()
        .env("RUST_LOG", "info")
        .current_dir(dir)
        .arg("run")
        .arg("pipeline.toml")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start sluice")
}

/// The log `start` appends to in `dir`.
pub(crate) fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default()
}

/// Wait for `cond`, showing the gateway's log of `dir` when it times out.
pub(crate) fn wait_for_log(
    dir: &Path,
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            log_of(dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Graceful stop (SIGTERM); the gateway must exit 0.
pub(crate) fn stop(mut child: Child) {
    let ok = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM failed");
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful stop exited with {status}");
}

/// SIGKILL the gateway of `dir` while a batch is certainly between its plan and its commit. Random
/// kills mostly land between batches (a batch of these tests takes milliseconds), so on its own a
/// crash test could pass without ever re-running a planned batch. Here the temporary names the
/// file sink `out` will write job `copy`'s output of the next few seconds of batch times under are
/// made FIFOs: opening one for writing waits for a reader, so the first of those batches with rows
/// stops in its sink, after its plan was recorded. Then the kill, and the FIFOs go.
pub(crate) fn kill_mid_batch(dir: &Path, interval_ms: i64, started: impl FnOnce()) {
    kill_mid_batch_in(dir, &dir.join("out"), "copy", interval_ms, started)
}

/// [`kill_mid_batch`] for a file sink writing JSON in `out` and a job named `job`.
pub(crate) fn kill_mid_batch_in(
    dir: &Path,
    out: &Path,
    job: &str,
    interval_ms: i64,
    started: impl FnOnce(),
) {
    std::fs::create_dir_all(out).unwrap();
    let first = (sluice_core::time::now_ms() / interval_ms + 1 + 500 / interval_ms) * interval_ms;
    let mut fifos = Vec::new();
    for k in 0..(6_000 / interval_ms) {
        let p = out.join(format!(".{job}-{}.json.tmp", first + k * interval_ms));
        let made = std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo {}", p.display());
        fifos.push(p);
    }
    let mut child = start(dir);
    started();
    // Past the last FIFO's batch time: a batch with rows has stopped in one by then.
    std::thread::sleep(Duration::from_millis(6_500));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for p in fifos {
        let _ = std::fs::remove_file(p);
    }
}

/// The gateway of `dir` re-ran at least one batch planned before a kill (its log says so).
pub(crate) fn assert_rerun(dir: &Path) {
    let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default();
    let n = log
        .matches("re-running a batch planned before the restart")
        .count();
    assert!(n >= 1, "no planned batch was re-run after a kill:\n{log}");
    eprintln!("{n} planned batch(es) re-run after kills");
}

/// Start and SIGKILL the gateway once in the middle of a batch and `n` times at random moments,
/// then start it for good and stop it gracefully once `finished` holds (or after a minute, and the
/// comparison will say what is missing). At least one planned batch must have been re-run.
fn crash_loop(dir: &Path, n: usize, rng: &mut ChaCha8Rng, finished: impl Fn() -> bool) {
    kill_mid_batch(dir, 100, || {});
    for _ in 0..n {
        let mut child = start(dir);
        std::thread::sleep(Duration::from_millis(rng.random_range(250..1200)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let child = start(dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop(child);
    assert_rerun(dir);
}

/// The manifest of the file sink writing to `out`: its committed batches.
pub(crate) fn committed(out: &Path) -> Vec<sluice_object_store::manifest::Entry> {
    sluice_object_store::manifest::committed_in(out).unwrap()
}

/// Rows of every batch of `job` the file sink in `out` committed, as JSON lines.
pub(crate) fn committed_rows(out: &Path, job: &str) -> Vec<String> {
    let mut rows = Vec::new();
    for e in committed(out) {
        if e.job != job {
            continue;
        }
        for f in e.files {
            let text = std::fs::read_to_string(out.join(f.key)).unwrap();
            rows.extend(text.lines().map(str::to_string));
        }
    }
    rows
}

pub(crate) fn committed_count(out: &Path, job: &str) -> u64 {
    committed(out)
        .iter()
        .filter(|e| e.job == job)
        .map(|e| e.rows)
        .sum()
}

/// Rows of the newest committed batch of `job`.
fn last_batch_rows(out: &Path, job: &str) -> Vec<String> {
    let entries = committed(out);
    let last = entries
        .iter()
        .rfind(|e| e.job == job)
        .expect("a committed batch");
    let mut rows: Vec<String> = last
        .files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(out.join(&f.key))
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    rows.sort();
    rows
}

fn field(line: &str, name: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v[name].clone()
}

/// Counts of each row; reports duplicates and missing rows against `expected`.
fn compare(expected: &[String], got: &[String]) -> (Vec<String>, Vec<String>) {
    let mut want: HashMap<&str, i64> = HashMap::new();
    for e in expected {
        *want.entry(e).or_default() += 1;
    }
    let mut extra = Vec::new();
    for g in got {
        match want.get_mut(g.as_str()) {
            Some(n) if *n > 0 => *n -= 1,
            _ => extra.push(g.clone()),
        }
    }
    let missing = want
        .into_iter()
        .flat_map(|(k, n)| std::iter::repeat_n(k.to_string(), n.max(0) as usize))
        .collect();
    (missing, extra)
}

/// Every expected row once: none missing, none twice or unexpected.
pub(crate) fn assert_exactly_once(what: &str, expected: &[String], got: &[String]) {
    let (missing, extra) = compare(expected, got);
    eprintln!(
        "{what}: {} rows committed, {} missing, {} duplicated or unexpected",
        got.len(),
        missing.len(),
        extra.len()
    );
    let few = |v: &[String]| v[..v.len().min(5)].to_vec();
    assert!(missing.is_empty(), "missing: {:?}", few(&missing));
    assert!(extra.is_empty(), "duplicated: {:?}", few(&extra));
}

const GENERATOR: &str = r#"
[app]
name = "crash-generator"
batch_interval = "100ms"
checkpoint_dir = "checkpoint"
# Small WAL segments and a small store memtable: segments roll every few blocks and RocksDB
# flushes every few commits, so kills also land during rolls and flushes.
wal = { segment_bytes = 32768, store_write_buffer = "64KiB" }

[sources.readings]
type = "generator"
kind = "sensors"
rate = 2000
count = 6000
start_ms = 1700000000000
devices = 12
format = "json"
schema = "device string, site string, ts int64, temperature double, humidity double"

[jobs.copy]
sql = "SELECT device, ts, temperature FROM readings"
sinks = ["out"]

[jobs.totals]
sql = """
SELECT coalesce(s.device, b.device) AS device, coalesce(s.n, 0) + coalesce(b.n, 0) AS n,
       coalesce(s.total, 0) + coalesce(b.total, 0) AS total
FROM state s FULL JOIN (SELECT device, count(*) AS n, sum(ts % 1000) AS total FROM readings GROUP BY device) b
  ON s.device = b.device
"""
state = { key = ["device"], schema = "device string, n bigint, total bigint" }
sinks = ["out"]

[jobs.upserted]
sql = """
SELECT b.device, coalesce(s.n, 0) + b.n AS n, coalesce(s.total, 0) + b.total AS total
FROM (SELECT device, count(*) AS n, sum(ts % 1000) AS total FROM readings GROUP BY device) b
  LEFT JOIN state s ON s.device = b.device
"""
state = { key = ["device"], schema = "device string, n bigint, total bigint", mode = "upsert" }
sinks = ["out"]

[jobs.per_second]
sql = "SELECT window_start, device, count(*) AS n, max(temperature) AS hottest FROM readings GROUP BY window_start, device"
event_time = { column = "ts", length = "1s", watermark = "200ms" }
sinks = ["out"]

[sinks.out]
type = "file"
path = "out"
"#;

fn gen_run(kills: usize, rng: &mut ChaCha8Rng) -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(dir.join("pipeline.toml"), GENERATOR).unwrap();
    let out = dir.join("out");
    crash_loop(&dir, kills, rng, || committed_count(&out, "copy") >= 6000);
    // RocksDB's own log: memtable flushes for a full write buffer (not only those at recovery).
    let flushes: usize = std::fs::read_dir(dir.join("checkpoint/store"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("LOG"))
        .map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .matches("\"flush_reason\": \"Write Buffer Full\"")
                .count()
        })
        .sum();
    assert!(flushes > 0, "the store flushed its memtable during the run");
    eprintln!("{flushes} store flushes for a full write buffer");
    dir
}

/// The generator resumes after its last durable record: after crashes, every record exactly once,
/// and the keyed state and event-time windows equal a run without crashes.
#[test]
fn generator_survives_sigkill_exactly_once() {
    let seed = seed();
    let n = kills(8);
    eprintln!("seed {seed}, {n} kills");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let crashed = gen_run(n, &mut rng);
    let clean = gen_run(0, &mut rng);

    // Every record, once: compare with the generator's own stream.
    let cfg: sluice_generator::GeneratorConfig = serde_json::from_value(serde_json::json!({
        "kind": "sensors", "rate": 2000, "count": 6000, "start_ms": 1700000000000i64, "devices": 12
    }))
    .unwrap();
    let mut w = sluice_generator::Workload::new(&cfg);
    let expected: Vec<String> = w
        .take(6000)
        .iter()
        .map(|l| format!("{}|{}", field(l, "device"), field(l, "ts")))
        .collect();
    let key = |rows: Vec<String>| -> Vec<String> {
        rows.iter()
            .map(|l| format!("{}|{}", field(l, "device"), field(l, "ts")))
            .collect()
    };
    let got = key(committed_rows(&crashed.join("out"), "copy"));
    assert_exactly_once("generator", &expected, &got);
    let log = std::fs::read_to_string(crashed.join("gateway.log")).unwrap();
    assert!(
        n == 0 || log.contains("resuming from the checkpoint"),
        "{log}"
    );

    // The keyed state after the last batch, and every closed window, match the clean run.
    assert_eq!(
        last_batch_rows(&crashed.join("out"), "totals"),
        last_batch_rows(&clean.join("out"), "totals")
    );
    let totals = last_batch_rows(&crashed.join("out"), "totals");
    let sum: i64 = totals.iter().map(|l| field(l, "n").as_i64().unwrap()).sum();
    assert_eq!(sum, 6000);
    // The same state kept as upserts (whole state, then only the changed rows, per commit).
    assert_eq!(last_batch_rows(&crashed.join("out"), "upserted"), totals);
    let mut a = committed_rows(&crashed.join("out"), "per_second");
    let mut b = committed_rows(&clean.join("out"), "per_second");
    a.sort();
    b.sort();
    assert!(b.len() >= 12 * 2, "windows closed: {}", b.len());
    assert_eq!(a, b);
}

/// Files: every line of every file exactly once, whatever the kills.
#[test]
fn file_source_survives_sigkill_exactly_once() {
    let seed = seed();
    let n = kills(7);
    eprintln!("seed {seed}, {n} kills");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap().keep();
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(
        dir.join("pipeline.toml"),
        r#"
[app]
name = "crash-files"
batch_interval = "100ms"
checkpoint_dir = "checkpoint"

[sources.files]
type = "file"
path = "in"
include_existing = true
max_files_per_batch = 3

[jobs.copy]
sql = "SELECT line FROM files"
sinks = ["out"]

[sinks.out]
type = "file"
path = "out"
"#,
    )
    .unwrap();
    const FILES: usize = 80;
    const LINES: usize = 40;
    let writer = {
        let input = input.clone();
        std::thread::spawn(move || {
            for f in 0..FILES {
                let tmp = input.join(format!(".f{f:03}"));
                let text: String = (0..LINES).map(|l| format!("file {f} line {l}\n")).collect();
                std::fs::write(&tmp, text).unwrap();
                std::fs::rename(&tmp, input.join(format!("f{f:03}.txt"))).unwrap();
                std::thread::sleep(Duration::from_millis(60));
            }
        })
    };
    let out = dir.join("out");
    crash_loop(&dir, n, &mut rng, || {
        committed_count(&out, "copy") >= (FILES * LINES) as u64
    });
    writer.join().unwrap();
    let expected: Vec<String> = (0..FILES)
        .flat_map(|f| (0..LINES).map(move |l| format!("file {f} line {l}")))
        .collect();
    let got: Vec<String> = committed_rows(&out, "copy")
        .iter()
        .map(|l| field(l, "line").as_str().unwrap().to_string())
        .collect();
    assert_exactly_once("files", &expected, &got);
}

/// A socket peer never resends: after kills, no line twice, and only lines that were not yet durable
/// when a kill came are missing (counted and reported).
#[test]
fn socket_source_survives_sigkill_without_duplicates() {
    let seed = seed();
    let n = kills(7);
    eprintln!("seed {seed}, {n} kills");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(
        dir.join("pipeline.toml"),
        format!(
            r#"
[app]
name = "crash-socket"
batch_interval = "100ms"
checkpoint_dir = "checkpoint"
wal = {{ sync = "interval", sync_interval = "20ms", segment_bytes = 32768 }}

[sources.lines]
type = "socket"
host = "127.0.0.1"
port = {port}
block_interval = "20ms"
retry_initial = "20ms"
retry_max = "100ms"

[jobs.copy]
sql = "SELECT line FROM lines"
sinks = ["out"]

[sinks.out]
type = "file"
path = "out"
"#
        ),
    )
    .unwrap();
    const LINES: u64 = 8000;
    let sent = Arc::new(AtomicU64::new(0));
    let all_sent = Arc::new(AtomicBool::new(false));
    let connections = Arc::new(AtomicU64::new(0));
    {
        let (sent, all_sent, connections) = (sent.clone(), all_sent.clone(), connections.clone());
        std::thread::spawn(move || {
            // Each line goes out once, to whichever gateway is connected; a write that fails is
            // not retried (the peer of a socket source never resends).
            let mut next = 0u64;
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                connections.fetch_add(1, Ordering::SeqCst);
                while next < LINES {
                    let ok = writeln!(conn, "line {next:05}").is_ok();
                    next += 1;
                    if !ok {
                        break;
                    }
                    sent.store(next, Ordering::SeqCst);
                    if next.is_multiple_of(20) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                if next >= LINES {
                    all_sent.store(true, Ordering::SeqCst);
                    // Keep the last connection open until the gateway closes it.
                    let mut r = std::io::BufReader::new(conn);
                    let _ = r.fill_buf();
                }
            }
        });
    }
    let out = dir.join("out");
    crash_loop(&dir, n, &mut rng, || all_sent.load(Ordering::SeqCst));
    let got: Vec<String> = committed_rows(&out, "copy")
        .iter()
        .map(|l| field(l, "line").as_str().unwrap().to_string())
        .collect();
    let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
    for g in &got {
        *seen.entry(g.as_str()).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, &c)| c > 1).collect();
    let expected: Vec<String> = (0..LINES).map(|i| format!("line {i:05}")).collect();
    let (missing, extra) = compare(&expected, &got);
    eprintln!(
        "socket: {LINES} lines sent over {} connection(s), {} committed, {} missing ({:.1} per kill), {} duplicated",
        connections.load(Ordering::SeqCst),
        got.len(),
        missing.len(),
        missing.len() as f64 / n.max(1) as f64,
        dups.len()
    );
    assert!(dups.is_empty(), "duplicated: {dups:?}");
    assert!(
        extra.is_empty(),
        "unexpected: {:?}",
        &extra[..extra.len().min(5)]
    );
    // Lines in flight at a kill: the socket buffers, the open block (20 ms) and the group commit
    // (20 ms), at 2,000 lines/s; a generous bound of 400 per kill.
    assert!(
        missing.len() <= 400 * n,
        "{} lines missing after {n} kills",
        missing.len()
    );
    assert!(sent.load(Ordering::SeqCst) == LINES);
}
