//! `sluice-bench kafka`: seeded JSON records (~200 B) preloaded in a topic on a local tansu, read
//! by the gateway's `kafka` source through a job that decodes them, drops half, joins a
//! 10,000-row reference table and aggregates per key per 10 s event-time window into a file sink —
//! against, in the same run and from the same broker, a bare rdkafka consumer that only counts
//! bytes (the physical limit of this path).

use crate::gateway::stop_gateway;
use crate::object_store::drain;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_testkit::tansu::start_tansu;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DEVICES: u64 = 10_000;
const TOPIC: &str = "bench";

/// Record `i` of the seeded sensor workload: (its device, as key; its JSON, ~200 B). The Kinesis
/// benchmark puts the same records.
pub(crate) fn record(i: u64, rng: &mut ChaCha8Rng) -> (String, String) {
    let device = format!("dev-{:05}", rng.random_range(0..DEVICES));
    let value = format!(
        r#"{{"id":{i},"device":"{device}","ts":{},"temperature":{:.2},"humidity":{:.1},"status":"ok","firmware":"v2.3.1","note":"{}"}}"#,
        1_700_000_000_000u64 + i / 20, // 20 records per ms: 2M records span 100 s of event time
        rng.random_range(-10.0..40.0f64),
        rng.random_range(10.0..90.0f64),
        "x".repeat(64)
    );
    (device, value)
}

fn config(bootstrap: &str, partitions: i32, interval: &str, prefetch_mib: usize) -> String {
    format!(
        r#"
[app]
name = "bench-kafka"
batch_interval = "{interval}"

[sources.readings]
type = "kafka"
bootstrap_servers = "{bootstrap}"
topics = ["{TOPIC}"]
start = "earliest"
format = "json"
schema = "id bigint, device string, ts bigint, temperature double, humidity double, status string, firmware string, note string"
metadata_refresh = "1h"
envelope = false
prefetch_mib = {prefetch_mib}

[tables.devices]
path = "devices.csv"

[jobs.kept]
sql = """
SELECT r.device, d.region, to_timestamp_millis(r.ts) AS at, r.temperature
FROM readings r JOIN devices d ON d.device = r.device
WHERE r.id % 2 = 0
"""

[jobs.per_device]
sql = """
SELECT device, region, window_start, count(*) AS n, avg(temperature) AS avg_temperature
FROM kept GROUP BY device, region, window_start
"""
event_time = {{ column = "at", length = "10s", watermark = "1s" }}
sinks = ["out"]

[sinks.out]
type = "file"
path = "out"
format = "json"
# {partitions} partitions
"#
    )
}

async fn preload(bootstrap: &str, records: u64, partitions: i32) -> anyhow::Result<(f64, u64)> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let made = admin
        .create_topics(
            &[NewTopic::new(TOPIC, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for r in made {
        r.map_err(|(t, e)| anyhow::anyhow!("cannot create topic {t}: {e}"))?;
    }
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "500000")
        .create()?;
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let started = Instant::now();
    let mut bytes = 0u64;
    for i in 0..records {
        let (key, value) = record(i, &mut rng);
        bytes += value.len() as u64;
        let mut rec = BaseRecord::to(TOPIC)
            .key(&key)
            .payload(&value)
            .partition((i % partitions as u64) as i32);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => anyhow::bail!("produce failed: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(300))?;
    Ok((started.elapsed().as_secs_f64(), bytes))
}

/// A bare consumer reading every partition from the start, counting records and bytes.
fn raw(bootstrap: &str, records: u64, partitions: i32) -> anyhow::Result<(f64, u64, u64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-raw")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let (mut n, mut bytes) = (0u64, 0u64);
    while n < records {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(900),
            "the bare consumer read only {n} of {records} records in 900 s"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            n += 1;
            bytes += m.payload().map_or(0, |p| p.len() as u64);
        }
    }
    Ok((started.elapsed().as_secs_f64(), n, bytes))
}

fn write_devices(dir: &Path) -> anyhow::Result<()> {
    let mut csv = String::from("device,region\n");
    for d in 0..DEVICES {
        csv.push_str(&format!("dev-{d:05},region-{}\n", d % 17));
    }
    std::fs::write(dir.join("devices.csv"), csv)?;
    Ok(())
}

pub async fn bench_kafka(
    dir: PathBuf,
    records: u64,
    partitions: i32,
    engine: &str,
    interval: &str,
    prefetch_mib: usize,
    raw_only: bool,
) -> anyhow::Result<()> {
    let storage = match engine {
        "memory" => "memory://tansu/",
        "sqlite" => "sqlite://tansu.db",
        _ => anyhow::bail!("--engine is memory or sqlite, not {engine}"),
    };
    let tmp = tempfile::Builder::new()
        .prefix("sluice-bench-kafka")
        .tempdir_in(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let broker = start_tansu(port, &tmp.path().join("broker"), storage)?;
    let bootstrap = format!("127.0.0.1:{port}");
    let result = async {
        println!(
            "workload: {records} seeded JSON records in {partitions} partitions on tansu 0.6 ({engine} engine); {interval} batches, prefetch {prefetch_mib} MiB"
        );
        let (produce_s, bytes) = preload(&bootstrap, records, partitions).await?;
        println!(
            "preload: {:.1} s, {:.0} records/s, {:.0} B per record",
            produce_s,
            records as f64 / produce_s,
            bytes as f64 / records as f64
        );
        let (raw_s, n, raw_bytes) = raw(&bootstrap, records, partitions)?;
        anyhow::ensure!(n == records && raw_bytes == bytes, "the bare consumer read {n} records / {raw_bytes} B, not {records} / {bytes}");
        println!(
            "bare rdkafka consumer: {:.2} s, {:.0} records/s, {:.1} MB/s",
            raw_s,
            records as f64 / raw_s,
            raw_bytes as f64 / 1e6 / raw_s
        );
        if raw_only {
            return Ok(());
        }
        let work = tmp.path().join("gateway");
        std::fs::create_dir_all(&work)?;
        write_devices(&work)?;
        let run = drain(
            &work,
            &config(&bootstrap, partitions, interval, prefetch_mib),
            records,
        )?;
        println!(
            "sluice (decode, filter half, 10k-row join, 10 s windows, file sink): {:.2} s, {:.0} records/s, peak RSS {:.0} MB",
            run.seconds,
            records as f64 / run.seconds,
            run.peak_rss_mb
        );
        println!(
        "batches with records (records/processing): {}",
        run.busy_batches()
    );
        println!(
            "sluice's rate is {:.0}% of the bare consumer's (target ≥ 60%; RSS target < 500 MB)",
            100.0 * raw_s / run.seconds
        );
        Ok(())
    }
    .await;
    stop_gateway(broker)?;
    result
}
