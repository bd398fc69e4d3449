//! `sluice-bench mqtt`: QoS 1 ingestion from a local mosquitto into a file sink, against
//! `mosquitto_sub -q 1` draining the same number of messages from the same broker.
//!
//! Both consumers drain a backlog the broker holds in a persistent session: the session is made
//! first, `mosquitto_pub` then queues N seeded 100-byte JSON messages while the consumer is away,
//! and the clock runs from the consumer's start until it has all N (for sluice: committed in the
//! file sink). So the publisher's speed is not part of either figure.

use crate::gateway::{spawn_gateway, stop_gateway};
use rand::{Rng, SeedableRng};
use sluice_testkit::{peak_rss_mb, Mosquitto};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A mosquitto for the bench, in its own folder on a free loopback port.
struct Broker {
    port: u16,
    _server: Mosquitto,
}

impl Broker {
    fn start(dir: &Path) -> anyhow::Result<Broker> {
        let server = Mosquitto::try_start(&dir.join("broker"), "")?;
        Ok(Broker {
            port: server.port,
            _server: server,
        })
    }

    /// Queue the messages of `file` (one per line) on `topic` with QoS 1, returning once the
    /// broker has acknowledged every one. (`mosquitto_pub -l` 2.0.11 disconnects at the end of
    /// its input with tens of thousands still unsent, so the bench publishes itself.)
    fn publish(&self, topic: &str, file: &Path) -> anyhow::Result<()> {
        let lines: Vec<Vec<u8>> = std::fs::read(file)?
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        let (port, topic) = (self.port, topic.to_string());
        // Its own runtime on its own thread: the bench's callers are synchronous.
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(publish_all(port, topic, lines))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the bench publisher panicked"))?
    }

    /// `mosquitto_sub` with a persistent session; with `count` it reads that many and exits.
    fn sub(&self, topic: &str, count: Option<u64>) -> Command {
        let mut c = Command::new("mosquitto_sub");
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-t", topic, "-q", "1", "-c", "-i", "bench-sub"])
            .stdout(Stdio::null());
        match count {
            Some(n) => c.args(["-C", &n.to_string()]),
            None => c.args(["-W", "1"]),
        };
        c
    }
}

async fn publish_all(port: u16, topic: String, lines: Vec<Vec<u8>>) -> anyhow::Result<()> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new("bench-pub", "127.0.0.1", port);
    options.set_inflight(1000);
    let (client, mut events) = AsyncClient::new(options, 1000);
    let total = lines.len();
    let sender = tokio::spawn(async move {
        for line in lines {
            client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, line)
                .await?;
        }
        anyhow::Ok(client)
    });
    let mut acked = 0;
    while acked < total {
        if let Event::Incoming(Packet::PubAck(_)) = events.poll().await? {
            acked += 1;
        }
    }
    let client = sender.await??;
    client.disconnect().await?;
    // Let the DISCONNECT go out.
    while !matches!(
        events.poll().await,
        Err(_) | Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))
    ) {}
    Ok(())
}

/// N seeded JSON readings of 100 bytes each, one per line.
fn workload(path: &Path, n: u64, seed: u64) -> anyhow::Result<()> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..n {
        let head = format!(
            "{{\"device\":\"dev-{:03}\",\"seq\":{i},\"temperature\":{:.2},\"pad\":\"",
            rng.random_range(0..100),
            rng.random_range(-10.0..40.0)
        );
        let pad = 100usize.saturating_sub(head.len() + 2);
        writeln!(out, "{head}{}\"}}", "x".repeat(pad))?;
    }
    out.flush()?;
    Ok(())
}

fn gateway_config(port: u16, sync: &str) -> String {
    format!(
        r#"
[app]
name = "bench-mqtt"
batch_interval = "1s"
checkpoint_dir = "checkpoint"
wal = {{ sync = "{sync}" }}

[sources.readings]
type = "mqtt"
host = "127.0.0.1"
port = {port}
topics = ["bench/sluice"]
qos = 1
client_id = "bench-sluice"
format = "json"
schema = "device string, seq bigint, temperature double, pad string"

[jobs.copy]
sql = "SELECT device, seq, temperature, pad FROM readings"
sinks = ["out"]

[sinks.out]
type = "file"
path = "out"
format = "json"
"#
    )
}

struct Measured {
    seconds: f64,
    peak_rss_mb: f64,
    batches: usize,
    largest_batch: u64,
    max_processing_ms: f64,
    max_delay_ms: f64,
}

/// The gateway drains `n` queued messages; seconds until the last is committed.
fn sluice_drain(
    dir: &Path,
    broker: &Broker,
    n: u64,
    file: &Path,
    sync: &str,
) -> anyhow::Result<Measured> {
    let work = dir.join(format!("gateway-{sync}"));
    std::fs::create_dir_all(&work)?;
    let config = work.join("pipeline.toml");
    std::fs::write(&config, gateway_config(broker.port, sync))?;
    // First run: make the persistent session (subscription), then stop.
    let (child, _, reader) = spawn_gateway(&config, &work)?;
    std::thread::sleep(Duration::from_secs(2));
    stop_gateway(child)?;
    let _ = reader.join();
    let _ = std::fs::remove_dir_all(work.join("out"));
    broker.publish("bench/sluice", file)?;
    let started = Instant::now();
    let (child, seen, reader) = spawn_gateway(&config, &work)?;
    let pid = child.id();
    let deadline = started + Duration::from_secs(600);
    let mut rss = 0.0f64;
    loop {
        let done: u64 = seen.lock().unwrap().iter().map(|s| s.records).sum();
        rss = rss.max(peak_rss_mb(pid));
        if done >= n {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {done} of {n} messages in 600 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let seconds = started.elapsed().as_secs_f64();
    stop_gateway(child)?;
    let _ = reader.join();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let with_data: Vec<_> = seen.iter().filter(|s| s.records > 0).collect();
    let rows: u64 = sluice_object_store::manifest::committed_in(&work.join("out"))?
        .iter()
        .map(|e| e.rows)
        .sum();
    anyhow::ensure!(rows == n, "the sink holds {rows} rows, not {n}");
    Ok(Measured {
        seconds,
        peak_rss_mb: rss,
        batches: with_data.len(),
        largest_batch: with_data.iter().map(|s| s.records).max().unwrap_or(0),
        max_processing_ms: with_data
            .iter()
            .map(|s| s.processing_ms)
            .fold(0.0, f64::max),
        max_delay_ms: with_data.iter().map(|s| s.delay_ms).fold(0.0, f64::max),
    })
}

pub async fn bench_mqtt(dir: PathBuf, messages: u64, seed: u64) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("sluice-bench-mqtt")
        .tempdir_in(&dir)?;
    let file = tmp.path().join("messages.jsonl");
    workload(&file, messages, seed)?;
    println!("workload: {messages} QoS 1 messages of 100 bytes (seed {seed}), queued in a persistent session");

    // mosquitto_sub -q 1 on its own broker.
    let reference = {
        let broker = Broker::start(&tmp.path().join("ref"))?;
        let status = broker
            .sub("bench/ref", None)
            .stderr(Stdio::null())
            .status()?;
        let _ = status; // -W 1 exits with an error after its timeout: the session exists now.
        broker.publish("bench/ref", &file)?;
        let started = Instant::now();
        let status = broker.sub("bench/ref", Some(messages)).status()?;
        anyhow::ensure!(status.success(), "mosquitto_sub failed");
        started.elapsed().as_secs_f64()
    };
    let ref_rate = messages as f64 / reference;
    println!(
        "mosquitto_sub -q 1 -C {messages}: {reference:.2} s, {:.0} msg/s",
        ref_rate
    );
    for sync in ["interval", "every_block"] {
        let broker = Broker::start(&tmp.path().join(sync))?;
        let m = sluice_drain(tmp.path(), &broker, messages, &file, sync)?;
        let rate = messages as f64 / m.seconds;
        println!(
            "sluice (wal.sync = {sync}), into a JSON file sink: {:.2} s, {:.0} msg/s = {:.0}% of mosquitto_sub; peak RSS {:.0} MB",
            m.seconds,
            rate,
            100.0 * rate / ref_rate,
            m.peak_rss_mb
        );
        println!(
            "  {} batches with data, largest {} messages, max processing {:.0} ms, max scheduling delay {:.0} ms",
            m.batches, m.largest_batch, m.max_processing_ms, m.max_delay_ms
        );
    }
    Ok(())
}
