//! Driving a child process: signals, waiting for a condition, and its memory figures.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Wait for `cond`, panicking after `limit` (a guard against hangs, not a timing assertion).
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run `command` to its end; panic with its stderr unless it succeeded.
pub fn succeed(command: &mut Command) -> std::process::Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Send a signal (`TERM`, `KILL`, `STOP`, …) to a child.
pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill (apt-get install procps)");
    assert!(ok.success(), "kill -{sig} {} failed", child.id());
}

/// SIGTERM (a graceful stop) and wait for the exit.
pub fn terminate(child: &mut Child) -> ExitStatus {
    signal(child, "TERM");
    child.wait().expect("wait for the child")
}

/// SIGKILL and wait for the exit.
pub fn kill9(child: &mut Child) {
    signal(child, "KILL");
    let _ = child.wait();
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
