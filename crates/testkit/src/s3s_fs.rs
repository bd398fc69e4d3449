//! `s3s-fs`: the S3 server of the object-store tests and benchmark (installed by
//! `scripts/deps.sh --tests`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Start `s3s-fs` on 127.0.0.1:`port`, serving the buckets that are folders of `root`; returns
/// once it accepts connections.
pub fn start_s3s_fs(
    port: u16,
    root: &Path,
    access_key: &str,
    secret_key: &str,
) -> anyhow::Result<Child> {
    let installed = crate::tools_dir().join("bin/s3s-fs");
    let program = if installed.exists() {
        installed
    } else {
        "s3s-fs".into()
    };
    let mut child = Command::new(program)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", access_key, "--secret-key", secret_key])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start s3s-fs ({e}): run scripts/deps.sh --tests"))?;
    let up = crate::wait_listening("s3s-fs", port, Duration::from_secs(20), || Ok(()));
    if up.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    up.map(|()| child)
}
