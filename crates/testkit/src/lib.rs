//! sluice-testkit: what the end-to-end tests (`tests/e2e`) and the benchmarks (`sluice-bench`)
//! share — the real servers they start on loopback ports of their own (tansu, s3s-fs, mosquitto,
//! Ceph RGW), the helpers that drive a gateway process, and a reader of what file sinks wrote.
//!
//! Dev-only (`publish = false`): the `sluice` binary never links it.

pub mod ceph;
pub mod kinesis;
pub mod mosquitto;
pub mod output;
pub mod process;
pub mod s3s_fs;
pub mod tansu;

pub use mosquitto::Mosquitto;
pub use process::{kill9, peak_rss_mb, signal, status_mb, succeed, terminate, wait_for};

use std::path::PathBuf;

/// Where `scripts/deps.sh --tests` installs the servers and clients the tests and benchmarks
/// start: `$SLUICE_TOOLS`, by default `~/.cache/sluice-tools` (outside the clone).
pub fn tools_dir() -> PathBuf {
    std::env::var("SLUICE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/sluice-tools")
        })
}

/// A loopback TCP port free at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

/// The repository root (`configs/`, `tests/services/` live there).
pub fn repo() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

/// Wait until 127.0.0.1:`port` accepts connections, for at most `limit`; `alive` is asked
/// between tries and stops the wait with its error (a server that exited).
pub(crate) fn wait_listening(
    what: &str,
    port: u16,
    limit: std::time::Duration,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        alive()?;
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{what} did not start on port {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}
