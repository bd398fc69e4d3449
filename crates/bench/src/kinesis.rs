//! `sluice-bench kinesis`: seeded JSON records (~200 B) preloaded over the shards of a stream on a
//! local kinesalite (the faster of the two Kinesis peers), read by the gateway's `kinesis` source
//! through a job that decodes them, drops half and aggregates per device per 10 s event-time window
//! into a file sink — against, in the same run and from the same stream, a bare `aws-sdk-kinesis`
//! GetRecords loop per shard that only counts bytes, paced as the source is (at most 5 calls per
//! second per shard, 10,000 records per call).

use crate::kafka::record;
use crate::object_store::drain;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use aws_sdk_kinesis::Client;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sluice_testkit::kinesis::{Kinesis, Peer};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const STREAM: &str = "bench";

fn config(endpoint: &str, interval: &str) -> String {
    format!(
        r#"
[app]
name = "bench-kinesis"
batch_interval = "{interval}"

[sources.readings]
type = "kinesis"
stream = "{STREAM}"
endpoint = "{endpoint}"
access_key_id = "bench"
secret_access_key = "bench"
start = "trim_horizon"
format = "json"
schema = "id bigint, device string, ts bigint, temperature double, humidity double, status string, firmware string, note string"
envelope = false
shard_refresh = "1h"

[jobs.kept]
sql = """
SELECT device, to_timestamp_millis(ts) AS at, temperature FROM readings WHERE id % 2 = 0
"""

[jobs.per_device]
sql = """
SELECT device, window_start, count(*) AS n, avg(temperature) AS avg_temperature
FROM kept GROUP BY device, window_start
"""
event_time = {{ column = "at", length = "10s", watermark = "1s" }}
sinks = ["out"]

[sinks.out]
type = "file"
path = "out"
format = "json"
"#
    )
}

async fn client(endpoint: &str) -> Client {
    sluice_kinesis::connect(&sluice_kinesis::Aws {
        stream: STREAM.into(),
        region: None,
        endpoint: Some(endpoint.into()),
        access_key_id: Some("bench".into()),
        secret_access_key: Some(
            serde_json::from_value(serde_json::json!("bench")).expect("a secret"),
        ),
        session_token: None,
    })
    .await
}

async fn shards(c: &Client) -> anyhow::Result<Vec<String>> {
    let out = c.list_shards().stream_name(STREAM).send().await?;
    Ok(out
        .shards
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.shard_id)
        .collect())
}

async fn preload(c: &Client, records: u64, shards: i32) -> anyhow::Result<(f64, u64)> {
    c.create_stream()
        .stream_name(STREAM)
        .shard_count(shards)
        .send()
        .await?;
    loop {
        let s = c
            .describe_stream_summary()
            .stream_name(STREAM)
            .send()
            .await?;
        if s.stream_description_summary
            .is_some_and(|d| d.stream_status.as_str() == "ACTIVE")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let started = Instant::now();
    let mut bytes = 0;
    let mut i = 0;
    while i < records {
        let mut pending: Vec<PutRecordsRequestEntry> = Vec::new();
        while pending.len() < 500 && i < records {
            let (key, value) = record(i, &mut rng);
            bytes += value.len() as u64;
            pending.push(
                PutRecordsRequestEntry::builder()
                    .partition_key(key)
                    .data(Blob::new(value))
                    .build()?,
            );
            i += 1;
        }
        while !pending.is_empty() {
            let out = c
                .put_records()
                .stream_name(STREAM)
                .set_records(Some(pending.clone()))
                .send()
                .await?;
            pending = pending
                .into_iter()
                .zip(out.records)
                .filter(|(_, r)| r.error_code.is_some())
                .map(|(e, _)| e)
                .collect();
        }
    }
    Ok((started.elapsed().as_secs_f64(), bytes))
}

/// One task per shard: GetRecords from TRIM_HORIZON until the shard gives nothing more.
async fn raw(c: &Client, shards: &[String]) -> anyhow::Result<(f64, u64, u64)> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for shard in shards {
        let c = c.clone();
        let shard = shard.clone();
        tasks.push(tokio::spawn(async move {
            let mut it = c
                .get_shard_iterator()
                .stream_name(STREAM)
                .shard_id(&shard)
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await?
                .shard_iterator;
            let (mut n, mut bytes) = (0u64, 0u64);
            let mut last: Option<Instant> = None;
            while let Some(i) = it {
                if let Some(t) = last {
                    let gap = t.elapsed();
                    if gap < Duration::from_millis(200) {
                        tokio::time::sleep(Duration::from_millis(200) - gap).await;
                    }
                }
                last = Some(Instant::now());
                let out = c
                    .get_records()
                    .shard_iterator(i)
                    .limit(10_000)
                    .send()
                    .await?;
                if out.records.is_empty() {
                    break;
                }
                n += out.records.len() as u64;
                bytes += out
                    .records
                    .iter()
                    .map(|r| r.data.as_ref().len() as u64)
                    .sum::<u64>();
                it = out.next_shard_iterator;
            }
            Ok::<_, anyhow::Error>((n, bytes))
        }));
    }
    let (mut n, mut bytes) = (0, 0);
    for t in tasks {
        let (a, b) = t.await??;
        n += a;
        bytes += b;
    }
    Ok((started.elapsed().as_secs_f64(), n, bytes))
}

pub async fn bench_kinesis(
    dir: PathBuf,
    records: u64,
    shard_count: i32,
    interval: &str,
) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("sluice-bench-kinesis")
        .tempdir_in(&dir)?;
    let peer = Kinesis::start(Peer::Kinesalite, &tmp.path().join("peer"))?;
    let endpoint = peer.endpoint();
    let c = client(&endpoint).await;
    println!("workload: {records} seeded JSON records over {shard_count} shards on kinesalite 3.3.3; {interval} batches");
    let (put_s, bytes) = preload(&c, records, shard_count).await?;
    println!(
        "preload: {put_s:.1} s, {:.0} records/s, {:.0} B per record",
        records as f64 / put_s,
        bytes as f64 / records as f64
    );
    let ids = shards(&c).await?;
    let (raw_s, n, raw_bytes) = raw(&c, &ids).await?;
    anyhow::ensure!(
        n == records && raw_bytes == bytes,
        "the bare loop read {n} records / {raw_bytes} B, not {records} / {bytes}"
    );
    println!(
        "bare aws-sdk-kinesis GetRecords loop (a task per shard): {raw_s:.2} s, {:.0} records/s, {:.1} MB/s",
        records as f64 / raw_s,
        raw_bytes as f64 / 1e6 / raw_s
    );
    let work = tmp.path().join("gateway");
    let run = drain(&work, &config(&endpoint, interval), records)?;
    println!(
        "sluice (decode, filter half, 10 s windows per device, file sink): {:.2} s, {:.0} records/s, peak RSS {:.0} MB",
        run.seconds,
        records as f64 / run.seconds,
        run.peak_rss_mb
    );
    println!(
        "batches with records (records/processing): {}",
        run.busy_batches()
    );
    println!(
        "sluice's rate is {:.0}% of the bare loop's (target ≥ 60%; RSS target < 300 MB)",
        100.0 * raw_s / run.seconds
    );
    Ok(())
}
