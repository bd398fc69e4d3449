//! Helpers: run a config in-process with the console captured, or run the real binary.

use sluice::{BatchTime, RunOptions, RunSummary};
use sluice_console::{ConsoleConnector, SharedBuffer};
use std::path::Path;
use std::process::{Command, Output};

/// A batch time that is a multiple of every window slide the tests use.
pub const T0: i64 = 1_700_000_040_000;

/// Run `toml` for `batches` batches back to back from `T0`; returns the console output.
pub async fn run_toml(toml: &str, batches: u64) -> (String, RunSummary) {
    try_run_toml(toml, batches)
        .await
        .unwrap_or_else(|e| panic!("pipeline failed: {e}"))
}

pub async fn try_run_toml(toml: &str, batches: u64) -> Result<(String, RunSummary), String> {
    let buf = SharedBuffer::default();
    let mut reg = sluice::registry();
    reg.register_sink("console", ConsoleConnector::capture(buf.clone()));
    let path = Path::new("test.toml");
    let cfg = sluice_config::load_str(toml, config::FileFormat::Toml, path, &reg).map_err(|d| {
        d.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let p = sluice::build(cfg, path, &reg).await.map_err(|d| {
        d.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let opts = RunOptions {
        max_batches: Some(batches),
        manual_clock: Some(BatchTime(T0)),
        ..Default::default()
    };
    let summary = p.run(opts).await.map_err(|e| e.to_string())?;
    Ok((buf.text(), summary))
}

/// The rows printed (header, rule and blank lines removed), one Vec per printed batch.
pub fn blocks(console: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for block in console
        .split("-------------------------------------------\nTime: ")
        .skip(1)
    {
        let body = block
            .split_once("-------------------------------------------\n")
            .map(|x| x.1)
            .unwrap_or("");
        out.push(
            body.lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
        );
    }
    out
}

/// Rows of all printed batches, in order.
pub fn rows(console: &str) -> Vec<String> {
    blocks(console).into_iter().flatten().collect()
}

pub fn sluice() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
    c.env("RUST_LOG", "warn").env_remove("SLUICE__APP__NAME");
    c
}

pub fn validate(path: &Path) -> Output {
    sluice()
        .arg("validate")
        .arg(path)
        .output()
        .expect("run sluice")
}

/// Write `toml` as `dir/pipeline.toml` and run it there for `duration` with info logs (and the
/// engine's per-batch debug lines); returns the exit code and the log.
pub fn run_in(dir: &Path, toml: &str, duration: &str) -> (Option<i32>, String) {
    std::fs::write(dir.join("pipeline.toml"), toml).unwrap();
    let out = sluice()
        .current_dir(dir)
        .env("RUST_LOG", "info,sluice_engine=debug")
        .args(["run", "pipeline.toml", "--duration", duration])
        .output()
        .expect("run sluice");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub use sluice_testkit::{kill9, repo, terminate, wait_for};
