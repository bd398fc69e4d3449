//! `sluice-bench`: benchmarks with fixed, seeded workloads (see docs/performance.md). Each runs
//! the `sluice` binary built beside it (or a pipeline in this process) against the same workload
//! as its baseline, in the same invocation.

mod gateway;
mod kafka;
mod kinesis;
mod mqtt;
mod object_store;
mod overload;
mod wal;
mod wordcount;

use clap::{Parser, Subcommand};
use sluice::RunOptions;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "sluice-bench",
    version,
    about = "sluice's benchmarks: fixed, seeded workloads against a baseline in the same run"
)]
struct Cli {
    #[command(subcommand)]
    which: Which,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse().which).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[derive(Subcommand, Clone, Debug)]
enum Which {
    /// Socket word count: the highest rate at which 1-second batches keep up.
    Wordcount {
        /// Rates to try, in lines per second.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "250000,500000,1000000,1500000,2000000"
        )]
        rates: Vec<u64>,
        /// Seconds per rate.
        #[arg(long, default_value_t = 8)]
        seconds: u64,
    },
    /// Write-ahead log: durable append throughput per sync policy vs raw fdatasync'd writes.
    Wal {
        /// Directory on the disk to measure (a temporary folder is made inside).
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 1024)]
        megabytes: usize,
        #[arg(long, default_value_t = 256)]
        block_kb: usize,
        /// Appends awaiting durability at once (receivers storing concurrently).
        #[arg(long, default_value_t = 256)]
        depth: usize,
    },
    /// Overload: offer 3× the measured capacity with backpressure on; RSS, delay, loss.
    Overload {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Offered load as a multiple of the measured capacity.
        #[arg(long, default_value_t = 3.0)]
        factor: f64,
    },
    /// Restart time: SIGKILL a gateway holding `keys` state keys, restart, time the first batch.
    Restart {
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Lines per second (ten words each) while filling.
        #[arg(long, default_value_t = 200_000)]
        rate: u64,
    },
    /// MQTT QoS 1 ingestion into a file sink vs `mosquitto_sub -q 1`, both draining a queued
    /// backlog from the same local mosquitto (needs mosquitto and mosquitto-clients).
    Mqtt {
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Generated sensor records into objects on a local s3s-fs, against a raw PUT of the same
    /// bytes and the same pipeline into the blackhole sink (needs s3s-fs: scripts/deps.sh --tests).
    ObjectStore {
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 5_000_000)]
        records: u64,
        #[arg(long, default_value_t = 1_000_000)]
        rate: u64,
        /// The sink's `format`: parquet (zstd) or json (JSON lines, uncompressed).
        #[arg(long, default_value = "parquet")]
        format: String,
    },
    /// Kafka: JSON records preloaded in a topic on a local tansu, through decode, filter, a
    /// 10,000-row reference join and a 10 s windowed aggregate into a file sink, against a bare
    /// rdkafka consumer that only counts bytes (needs tansu: scripts/deps.sh --tests).
    Kafka {
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 2_000_000)]
        records: u64,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// tansu's storage engine: memory (faster; wrong ListOffsets answers, which this
        /// workload does not use) or sqlite.
        #[arg(long, default_value = "memory")]
        engine: String,
        /// The gateway's batch interval.
        #[arg(long, default_value = "500ms")]
        interval: String,
        /// The source's `prefetch_mib` (what one batch can take: about 370,000 of these records
        /// per 96 MiB).
        #[arg(long, default_value_t = 96)]
        prefetch_mib: usize,
        /// Only the bare consumer's rate.
        #[arg(long)]
        raw: bool,
    },
    /// Kinesis: JSON records preloaded over a stream's shards on a local kinesalite, through
    /// decode, filter and a 10 s windowed aggregate into a file sink, against a bare
    /// aws-sdk-kinesis GetRecords loop per shard (needs kinesalite: scripts/deps.sh --tests).
    Kinesis {
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 200_000)]
        records: u64,
        #[arg(long, default_value_t = 4)]
        shards: i32,
        /// The gateway's batch interval.
        #[arg(long, default_value = "500ms")]
        interval: String,
    },
    /// Cost of an empty batch (plan + run + commit) of the word count job.
    EmptyBatch {
        #[arg(long, default_value_t = 2000)]
        batches: u64,
    },
}

async fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Wordcount { rates, seconds } => {
            println!(
                "rate_lines_per_s,batches,max_processing_ms,median_processing_ms,sustained,lines_in,latency_p50_ms,latency_p99_ms,peak_rss_mb"
            );
            for rate in rates {
                let r = wordcount::wordcount_at(rate, seconds).await?;
                println!(
                    "{rate},{},{:.1},{:.1},{},{},{:.0},{:.0},{:.0}",
                    r.batches,
                    r.max_ms,
                    r.median_ms,
                    r.sustained,
                    r.lines,
                    r.latency_p50_ms,
                    r.latency_p99_ms,
                    r.peak_rss_mb
                );
            }
            Ok(())
        }
        Which::Wal {
            dir,
            megabytes,
            block_kb,
            depth,
        } => wal::bench_wal(dir, megabytes, block_kb, depth).await,
        Which::Overload { seconds, factor } => overload::overload(seconds, factor).await,
        Which::Restart { dir, keys, rate } => wal::bench_restart(dir, keys, rate).await,
        Which::Mqtt {
            dir,
            messages,
            seed,
        } => mqtt::bench_mqtt(dir, messages, seed).await,
        Which::ObjectStore {
            dir,
            records,
            rate,
            format,
        } => object_store::bench_object_store(dir, records, rate, &format).await,
        Which::Kafka {
            dir,
            records,
            partitions,
            engine,
            interval,
            prefetch_mib,
            raw,
        } => {
            kafka::bench_kafka(
                dir,
                records,
                partitions,
                &engine,
                &interval,
                prefetch_mib,
                raw,
            )
            .await
        }
        Which::Kinesis {
            dir,
            records,
            shards,
            interval,
        } => kinesis::bench_kinesis(dir, records, shards, &interval).await,
        Which::EmptyBatch { batches } => {
            let config = gateway::wordcount_config("{ type = \"queue\", batches = [] }");
            let p = gateway::build(&config).await?;
            let opts = RunOptions {
                max_batches: Some(batches),
                manual_clock: Some(sluice_core::BatchTime(0)),
                ..Default::default()
            };
            let started = Instant::now();
            let s = p.run(opts).await?;
            let mut times: Vec<f64> = s
                .stats
                .iter()
                .map(|b| b.processing.as_secs_f64() * 1e3)
                .collect();
            times.sort_by(f64::total_cmp);
            println!(
                "empty batches: {batches}, total {:.3} s, median {:.3} ms, p99 {:.3} ms per batch",
                started.elapsed().as_secs_f64(),
                times[times.len() / 2],
                times[times.len() * 99 / 100]
            );
            Ok(())
        }
    }
}
