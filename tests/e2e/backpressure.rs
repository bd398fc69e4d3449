//! Rate limits with the real binary: a receiver held to `max_rate` stops reading its socket, so
//! the peer blocks instead of the gateway buffering without bound.

use crate::common::{run_in, sluice};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn number_after(line: &str, key: &str) -> u64 {
    let rest = &line[line.find(key).expect(key) + key.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Records of each batch but the last (the graceful stop drains what was received at once).
fn batch_records(log: &str) -> Vec<u64> {
    let mut v: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("batch done"))
        .map(|l| number_after(l, " records="))
        .collect();
    v.pop();
    v
}

/// Runs the pipeline and returns its exit code, log and how long the process lived: the receivers
/// lived no longer, so a limit of `r` per second lets at most `r × seconds` through, plus what the
/// bucket gives on credit. Records per batch are not bounded: a batch cut late on a busy machine
/// holds more than one interval's records, and the next one fewer.
fn run_timed(dir: &std::path::Path, toml: &str) -> (Option<i32>, String, f64) {
    let started = std::time::Instant::now();
    let (code, log) = run_in(dir, toml, "3s");
    (code, log, started.elapsed().as_secs_f64())
}

#[test]
fn max_rate_slows_the_socket_peer() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    const LINES: u64 = 40_000;
    let sent = Arc::new(AtomicU64::new(0));
    {
        let sent = sent.clone();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let line = format!("{}\n", "x".repeat(1000));
            for i in 0..LINES {
                if conn.write_all(line.as_bytes()).is_err() {
                    break;
                }
                sent.store(i + 1, Ordering::SeqCst);
            }
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let (code, log, seconds) = run_timed(
        dir.path(),
        &format!(
            r#"
[app]
name = "limited"
batch_interval = "200ms"
checkpoint_dir = "checkpoint"
backpressure = {{ max_rate = 1000 }}

[sources.lines]
type = "socket"
host = "127.0.0.1"
port = {port}
block_lines = 100

[jobs.n]
sql = "SELECT count(*) AS n FROM lines"
sinks = ["out"]

[sinks.out]
type = "blackhole"
"#
        ),
    );
    assert_eq!(code, Some(0), "{log}");
    let batches = batch_records(&log);
    let peer = sent.load(Ordering::SeqCst);
    let read: u64 = batches.iter().sum();
    eprintln!(
        "lines per 200 ms batch at max_rate 1000: {batches:?} ({read} in {seconds:.2} s); \
         the peer wrote {peer} of {LINES}"
    );
    assert!(read > 0);
    // 1,000/s while the process lived, plus one block (100 lines) the bucket lets through on credit.
    assert!(
        read as f64 <= 1000.0 * seconds + 100.0,
        "{read} lines in {seconds:.2} s"
    );
    // The peer blocked: what it wrote is what was read plus the kernel's socket buffers.
    assert!(peer < LINES, "the peer was never slowed");
}

#[test]
fn generator_respects_max_rate_with_adaptive_backpressure() {
    let dir = tempfile::tempdir().unwrap();
    let (code, log, seconds) = run_timed(
        dir.path(),
        r#"
[app]
name = "adaptive"
batch_interval = "200ms"
checkpoint_dir = "ck"
backpressure = { enabled = true, initial_rate = 500, max_rate = 2000 }

[sources.g]
type = "generator"
kind = "words"
rate = 100000

[jobs.n]
sql = "SELECT count(*) AS n FROM g"
sinks = ["out"]

[sinks.out]
type = "blackhole"
"#,
    );
    assert_eq!(code, Some(0), "{log}");
    let batches = batch_records(&log);
    let read: u64 = batches.iter().sum();
    eprintln!(
        "records per 200 ms batch (initial 500/s, max 2000/s): {batches:?} ({read} in {seconds:.2} s)"
    );
    assert!(read > 0);
    // 2,000/s at most while the process lived, plus one generator block (1,000) on credit.
    assert!(
        read as f64 <= 2000.0 * seconds + 1000.0,
        "{read} records in {seconds:.2} s"
    );
    // Each plan records the source's rate limit; `checkpoint inspect` shows the newest.
    let out = sluice()
        .current_dir(dir.path())
        .args(["checkpoint", "inspect", "ck"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let rate = number_after(&report, "rate limit ");
    assert!((100..=2000).contains(&rate), "{report}");
}
