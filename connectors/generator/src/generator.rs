//! The `generator` source.

use async_trait::async_trait;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_core::options::Joined;
use sluice_core::time::now_ms;
use sluice_core::{
    BlockWriter, BuildContext, BuiltSource, Component, ConfigError, Guarantee, Receiver,
    ReceiverStatus, Result, SourceConnector, SourceRuntime,
};
use sluice_formats::decoding::LineDecoding;
use sluice_formats::Decoder;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// JSON readings: `{"device":"dev-007","site":"site-2","ts":1763819484000,"temperature":21.3,"humidity":40.2}`.
    Sensors,
    /// Web server log lines in the combined log format.
    Weblog,
    /// Lines of `words_per_line` words drawn from a vocabulary of `vocabulary` words.
    Words,
}

/// `[sources.NAME] type = "generator"`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// What to generate: `sensors`, `weblog` or `words`.
    pub kind: Kind,
    /// Records per second (default 100).
    #[serde(default = "default_rate")]
    pub rate: u64,
    /// Seed: the same seed gives the same records (default 42).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Stop after this many records (default: never).
    #[serde(default)]
    pub count: Option<u64>,
    /// Event time of the first record in ms since the epoch (default: when the source starts);
    /// record i has time `start_ms + i * 1000 / rate`.
    #[serde(default)]
    pub start_ms: Option<i64>,
    /// Sensors: number of devices (default 20), spread over `sites` sites.
    #[serde(default = "default_devices")]
    pub devices: u32,
    /// Sensors: number of sites (default 4).
    #[serde(default = "default_sites")]
    pub sites: u32,
    /// Sensors: fraction of readings that are anomalies, far from the site's mean (default 0.005).
    #[serde(default = "default_anomalies")]
    pub anomaly_rate: f64,
    /// Words: vocabulary size (default 10000).
    #[serde(default = "default_vocabulary")]
    pub vocabulary: u32,
    /// Words: words per line (default 10).
    #[serde(default = "default_words")]
    pub words_per_line: u32,
}

fn default_rate() -> u64 {
    100
}
fn default_seed() -> u64 {
    42
}
fn default_devices() -> u32 {
    20
}
fn default_sites() -> u32 {
    4
}
fn default_anomalies() -> f64 {
    0.005
}
fn default_vocabulary() -> u32 {
    10_000
}
fn default_words() -> u32 {
    10
}

pub struct GeneratorConnector;

impl SourceConnector for GeneratorConnector {
    type Config = Joined<LineDecoding, GeneratorConfig>;
    fn build(
        &self,
        _cx: &BuildContext,
        at: &Component,
        options: Self::Config,
    ) -> Result<BuiltSource, ConfigError> {
        let Joined { shared, own: cfg } = options;
        let path = at.path.as_str();
        if cfg.rate == 0 {
            return Err(ConfigError::new(
                format!("{path}.rate"),
                "records per second, at least 1",
                "0",
            ));
        }
        if cfg.devices == 0 || cfg.sites == 0 || cfg.vocabulary == 0 {
            return Err(ConfigError::new(
                path,
                "devices, sites and vocabulary of at least 1",
                "0",
            ));
        }
        if !(0.0..=1.0).contains(&cfg.anomaly_rate) {
            return Err(ConfigError::new(
                format!("{path}.anomaly_rate"),
                "a fraction from 0 to 1",
                cfg.anomaly_rate.to_string(),
            ));
        }
        let decoder = shared.decoder(at)?;
        Ok(BuiltSource {
            schema: decoder.schema(),
            guarantee: Guarantee::Unacknowledged,
            runtime: SourceRuntime::Receiver(Box::new(GeneratorReceiver { cfg, decoder })),
            caveat: None,
        })
    }
}

/// The deterministic record stream, usable outside a pipeline (benchmarks feed sockets with it).
pub struct Workload {
    cfg: GeneratorConfig,
    rng: ChaCha8Rng,
    start_ms: i64,
    next: u64,
    words: Vec<String>,
}

impl Workload {
    pub fn new(cfg: &GeneratorConfig) -> Self {
        let words = if cfg.kind == Kind::Words {
            let mut r = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed);
            (0..cfg.vocabulary)
                .map(|i| {
                    let len = r.random_range(3..9);
                    let stem: String = (0..len)
                        .map(|_| (b'a' + r.random_range(0..26)) as char)
                        .collect();
                    format!("{stem}{i}")
                })
                .collect()
        } else {
            Vec::new()
        };
        Workload {
            cfg: cfg.clone(),
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            start_ms: cfg.start_ms.unwrap_or_else(now_ms),
            next: 0,
            words,
        }
    }

    fn gaussian(&mut self) -> f64 {
        // Box–Muller.
        let u1: f64 = self.rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = self.rng.random();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Append the next record to `out`.
    pub fn next_into(&mut self, out: &mut String) {
        use std::fmt::Write;
        let i = self.next;
        self.next += 1;
        let ts = self.start_ms + (i as i128 * 1000 / self.cfg.rate as i128) as i64;
        match self.cfg.kind {
            Kind::Sensors => {
                let d = self.rng.random_range(0..self.cfg.devices);
                let site = d % self.cfg.sites;
                let mut temp = 18.0 + 2.0 * site as f64 + 0.5 * self.gaussian();
                if self.rng.random::<f64>() < self.cfg.anomaly_rate {
                    temp += 15.0 + 5.0 * self.rng.random::<f64>();
                }
                let hum = 40.0 + 5.0 * self.gaussian();
                let _ = write!(
                    out,
                    r#"{{"device":"dev-{d:03}","site":"site-{site}","ts":{ts},"temperature":{:.2},"humidity":{:.1}}}"#,
                    temp, hum
                );
            }
            Kind::Weblog => {
                const PATHS: [&str; 6] = [
                    "/",
                    "/index.html",
                    "/api/orders",
                    "/api/users",
                    "/static/app.js",
                    "/login",
                ];
                const CODES: [u16; 6] = [200, 200, 200, 304, 404, 500];
                let host = self.rng.random_range(1..255);
                let p = PATHS[self.rng.random_range(0..PATHS.len())];
                let c = CODES[self.rng.random_range(0..CODES.len())];
                let size = self.rng.random_range(200..20_000);
                let t = chrono::DateTime::from_timestamp_millis(ts).unwrap_or_default();
                let _ = write!(
                    out,
                    r#"192.0.2.{host} - - [{}] "GET {p} HTTP/1.1" {c} {size}"#,
                    t.format("%d/%b/%Y:%H:%M:%S +0000")
                );
            }
            Kind::Words => {
                for w in 0..self.cfg.words_per_line {
                    if w > 0 {
                        out.push(' ');
                    }
                    let k = self.rng.random_range(0..self.words.len());
                    out.push_str(&self.words[k]);
                }
            }
        }
    }

    /// The next `n` records.
    pub fn take(&mut self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let mut s = String::new();
                self.next_into(&mut s);
                s
            })
            .collect()
    }

    /// Generate and drop the next `n` records (to resume after them).
    pub fn skip(&mut self, n: u64) {
        let mut s = String::new();
        for _ in 0..n {
            s.clear();
            self.next_into(&mut s);
        }
    }

    pub fn produced(&self) -> u64 {
        self.next
    }
}

/// The most records the generator puts in one block.
const BLOCK_RECORDS: u64 = 1000;

pub struct GeneratorReceiver {
    cfg: GeneratorConfig,
    decoder: Decoder,
}

#[async_trait]
impl Receiver for GeneratorReceiver {
    async fn run(self: Box<Self>, out: Arc<dyn BlockWriter>) -> Result<()> {
        out.set_status(ReceiverStatus::Connected("generator".into()));
        // After a restart, continue right after the last durable record: same records, same times.
        let mut cfg = self.cfg.clone();
        let resume = out.resume_position();
        let skip = resume
            .as_ref()
            .and_then(|p| p["next"].as_u64())
            .unwrap_or(0);
        if let Some(start) = resume.as_ref().and_then(|p| p["start_ms"].as_i64()) {
            cfg.start_ms = Some(start);
        }
        let mut w = Workload::new(&cfg);
        w.skip(skip);
        let tick = Duration::from_millis(100);
        let started = tokio::time::Instant::now();
        let mut ticks = 0u64;
        loop {
            ticks += 1;
            tokio::select! {
                _ = tokio::time::sleep_until(started + tick * ticks as u32) => {}
                _ = out.stopped() => break,
            }
            // Records due by now, so the average rate is exact.
            let due =
                skip + (self.cfg.rate as u128 * (tick.as_millis() * ticks as u128) / 1000) as u64;
            let due = self.cfg.count.map_or(due, |c| due.min(c));
            // Blocks of at most BLOCK_RECORDS, so a rate limit paces them finely.
            while due > w.produced() && !out.is_stopping() {
                let most = out
                    .block_budget()
                    .map_or(BLOCK_RECORDS, |b| b as u64)
                    .min(BLOCK_RECORDS);
                let n = (due - w.produced()).min(most.max(1)) as usize;
                let lines = w.take(n);
                let (batch, dead) = self.decoder.decode(&lines);
                out.dead_letters().extend(dead);
                let position = serde_json::json!({ "next": w.produced(), "start_ms": w.start_ms });
                out.push_at(batch, position).await?;
            }
            if self.cfg.count.is_some_and(|c| w.produced() >= c) {
                out.set_status(ReceiverStatus::Stopped);
                out.stopped().await;
                break;
            }
        }
        Ok(())
    }
}
