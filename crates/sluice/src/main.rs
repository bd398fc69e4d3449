//! The `sluice` command.

use clap::{Parser, Subcommand};
use sluice::{registry, AppConfig, Registry, RunOptions, Shutdown};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A streaming integration gateway: micro-batches and SQL jobs from a config file"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline until Ctrl-C / SIGTERM (or --duration).
    Run {
        config: PathBuf,
        /// Stop gracefully after this long, e.g. `30s`.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Stop after this many batches.
        #[arg(long)]
        batches: Option<u64>,
        /// A bounded run (backfills): every source stops at the ends its input has when it
        /// starts (Kafka: its partitions' ends), and the gateway exits once they are processed.
        #[arg(long)]
        until_caught_up: bool,
    },
    /// Reprocess a range of the input (Kafka's) through the same jobs and sinks, into a checkpoint
    /// of its own, with progress per partition; exits 0 when done.
    Replay {
        config: PathBuf,
        /// Where to start: `earliest`, a time (2026-11-20T08:00:00Z or milliseconds) or offsets
        /// `topic:partition=offset,...` (unlisted partitions: nothing).
        #[arg(long)]
        from: String,
        /// Where to stop (exclusive): `now` (default: the ends as the replay starts), a time or
        /// offsets.
        #[arg(long)]
        to: Option<String>,
        /// The replay's checkpoint directory (default: the config's, with `-replay-<time>`).
        #[arg(long)]
        checkpoint: Option<String>,
    },
    /// Check a config: keys, connector options and SQL. Exit 2 on a problem.
    Validate {
        config: PathBuf,
        /// Print each job's optimised plan.
        #[arg(long)]
        explain: bool,
    },
    /// Look into, or repair, a checkpoint directory.
    Checkpoint {
        #[command(subcommand)]
        which: CheckpointCmd,
    },
    /// The config file's reference, generated from the config types.
    Config {
        #[command(subcommand)]
        which: ConfigCmd,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the JSON Schema of a config file, for editors (taplo, VS Code's YAML extension):
    /// every key of `[app]`, `[tables]`, `[jobs]`, and each source's and sink's options by type.
    Schema,
}

#[derive(Subcommand)]
enum CheckpointCmd {
    /// Print the committed batches, unfinished plans, source positions, state sizes and WAL usage.
    Inspect { dir: PathBuf },
    /// After `run` refused a write-ahead log damaged in the middle: save each damaged segment
    /// aside, keep every whole record, and name the records lost. Stop the gateway first.
    Repair { dir: PathBuf },
    /// Skip a planned batch that fails the same way at every restart: its input is not processed,
    /// and the skip is recorded for good (`inspect` lists it). Stop the gateway first.
    Skip {
        dir: PathBuf,
        /// The batch time (ms since the epoch), as the error names it.
        batch: i64,
    },
}

/// A command's report on stdout (exit 0), or its error on stderr (exit 1).
fn printed(report: sluice_core::Result<String>) -> ExitCode {
    match report {
        Ok(r) => {
            print!("{r}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    sluice_core::time::parse_duration(s)
        .map_err(|e| format!("expected a duration such as 500ms, 10s or 5m: {e}"))
}

fn report(diags: &[sluice::Diagnostic]) -> ExitCode {
    for d in diags {
        eprintln!("error: {d}");
    }
    eprintln!("{} problem(s) found", diags.len());
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let reg = registry();
        match cli.command {
            Command::Validate { config, explain } => validate(&config, explain, &reg).await,
            Command::Run {
                config,
                duration,
                batches,
                until_caught_up,
            } => run(&config, duration, batches, until_caught_up, &reg).await,
            Command::Replay {
                config,
                from,
                to,
                checkpoint,
            } => replay(&config, &from, to.as_deref(), checkpoint, &reg).await,
            Command::Config {
                which: ConfigCmd::Schema,
            } => {
                let schema = sluice_config::reference::json_schema(&reg);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&schema).unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Command::Checkpoint { which } => printed(match which {
                CheckpointCmd::Inspect { dir } => sluice::inspect::inspect(&dir),
                CheckpointCmd::Skip { dir, batch } => sluice::inspect::skip(&dir, batch),
                CheckpointCmd::Repair { dir } => sluice::inspect::repair(&dir),
            }),
        }
    })
}

/// `sluice validate`: the checks, then each path's guarantee (and with `explain` each job's plan).
async fn validate(config: &Path, explain: bool, reg: &Registry) -> ExitCode {
    let p = match sluice::load(config, reg).await {
        Err(d) => return report(&d),
        Ok(p) => p,
    };
    println!("{}: ok", config.display());
    for l in p.describe() {
        println!("{l}");
    }
    if explain {
        for (job, plan) in p.explain() {
            println!("\njob `{job}`:\n{plan}");
        }
    }
    ExitCode::SUCCESS
}

/// `sluice run`: until a signal, `duration`, `batches`, or with `until_caught_up` the end of
/// every source's input as of the start.
async fn run(
    config: &Path,
    duration: Option<Duration>,
    batches: Option<u64>,
    until_caught_up: bool,
    reg: &Registry,
) -> ExitCode {
    // Signals first: a SIGTERM while the gateway starts is a graceful stop too.
    let shutdown = graceful_shutdown();
    let adjust = |cfg: &mut AppConfig| match until_caught_up {
        true => sluice::replay::until_caught_up(cfg, reg),
        false => Ok(()),
    };
    let pipeline = match build_adjusted(config, reg, adjust).await {
        Ok((p, ())) => p,
        Err(code) => return code,
    };
    match pipeline.run(run_options(duration, batches, shutdown)).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(sluice_core::Error::Config(e)) => {
            eprintln!("error: {}: {e}", config.display());
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `sluice replay`: the range `from..to` of every source, into a checkpoint of its own, with
/// progress bars; a summary at the end.
async fn replay(
    config: &Path,
    from: &str,
    to: Option<&str>,
    checkpoint: Option<String>,
    reg: &Registry,
) -> ExitCode {
    let shutdown = graceful_shutdown();
    let adjust = |cfg: &mut AppConfig| {
        let replay = sluice::replay::prepare(cfg, reg, from, to, checkpoint)?;
        Ok((replay, cfg.app.checkpoint_dir.clone().unwrap_or_default()))
    };
    let (pipeline, (replay, into)) = match build_adjusted(config, reg, adjust).await {
        Ok(built) => built,
        Err(code) => return code,
    };
    match replay.total() {
        Some(n) => eprintln!("replaying {n} records into checkpoint {into}"),
        None => eprintln!("replaying into checkpoint {into}"),
    }
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let started = std::time::Instant::now();
    let progress = tokio::spawn(async move {
        replay.follow(done_rx).await;
        replay
    });
    let result = pipeline.run(run_options(None, None, shutdown)).await;
    let _ = done_tx.send(true);
    let replay = progress.await.ok();
    match result {
        Ok(summary) => {
            let secs = started.elapsed().as_secs_f64();
            let planned = replay
                .and_then(|r| r.total())
                .map(|n| format!(" of {n} planned"))
                .unwrap_or_default();
            eprintln!(
                "replay done: {} records{planned} in {} batches, {:.1} s ({:.0} records/s), {} dead letters",
                summary.input_records,
                summary.batches,
                secs,
                summary.input_records as f64 / secs.max(1e-9),
                summary.dead_letters
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Load `config`, let `adjust` change it (its error: exit 2, naming the file) and build the
/// pipeline; a problem is reported and its exit code returned.
async fn build_adjusted<T>(
    config: &Path,
    reg: &Registry,
    adjust: impl FnOnce(&mut AppConfig) -> Result<T, String>,
) -> Result<(sluice::Pipeline, T), ExitCode> {
    let mut cfg = sluice_config::load(config, reg).map_err(|d| report(&d))?;
    let adjusted = adjust(&mut cfg).map_err(|e| {
        eprintln!("error: {}: {e}", config.display());
        ExitCode::from(2)
    })?;
    let pipeline = sluice::build(cfg, config, reg)
        .await
        .map_err(|d| report(&d))?;
    Ok((pipeline, adjusted))
}

/// A stop that Ctrl-C and SIGTERM ask for from now on.
fn graceful_shutdown() -> Shutdown {
    let shutdown = Shutdown::default();
    spawn_signal_handler(shutdown.clone());
    shutdown
}

/// Run options on the wall clock, stopped by `shutdown`.
fn run_options(duration: Option<Duration>, batches: Option<u64>, shutdown: Shutdown) -> RunOptions {
    RunOptions {
        duration,
        max_batches: batches,
        manual_clock: None,
        shutdown,
    }
}

/// Ctrl-C and SIGTERM ask for a graceful stop; a second one exits at once.
fn spawn_signal_handler(shutdown: Shutdown) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        for i in 0.. {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if i > 0 {
                eprintln!("second signal: exiting now");
                std::process::exit(130);
            }
            tracing::info!("stopping gracefully (signal again to exit at once)");
            shutdown.trigger();
        }
    });
}
