//! The batch loop: the clock, cutting batches, running jobs, writing sinks, graceful stop.

use crate::blocks::ReceiverBlocks;
use crate::build::Pipeline;
use sluice_config::LateRecords;
use sluice_core::arrow::record_batch::RecordBatch;
use sluice_core::{BatchTime, DeadLetter, DeadLetters, Error, Result, SinkBatch, SourceRuntime};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Records a receiver may hold before `store` waits (backpressure).
const RECEIVER_CAPACITY: usize = 4_000_000;

/// Asks a running pipeline to stop gracefully (Ctrl-C, SIGTERM, or a library user).
#[derive(Clone)]
pub struct Shutdown(watch::Sender<bool>);

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown(watch::channel(false).0)
    }
}

impl Shutdown {
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
    fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}

#[derive(Default, Clone)]
pub struct RunOptions {
    /// Stop gracefully after this long.
    pub duration: Option<Duration>,
    /// Stop after this many batches.
    pub max_batches: Option<u64>,
    /// Run batches back to back from this time, without waiting for the clock (tests, backfills).
    pub manual_clock: Option<BatchTime>,
    pub shutdown: Shutdown,
}

/// What a run did, for logs and tests.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    pub batches: u64,
    pub input_records: u64,
    pub dead_letters: u64,
    pub late_records: u64,
    /// Each batch in order.
    pub stats: Vec<BatchStat>,
}

/// One batch's figures.
#[derive(Debug, Clone)]
pub struct BatchStat {
    pub time: BatchTime,
    /// Records read from all sources.
    pub records: u64,
    /// From the start of the batch to its last sink write.
    pub processing: Duration,
    /// When its output was written.
    pub finished: Instant,
}

enum Input {
    Receiver(Arc<ReceiverBlocks>),
    Replayable(Box<dyn sluice_core::ReplayableSource>),
}

impl Pipeline {
    /// Run until stopped (shutdown, duration or batch count), then drain and close the sinks.
    pub async fn run(mut self, opts: RunOptions) -> Result<RunSummary> {
        let interval = self.app.batch_interval;
        let mut stop_rx = opts.shutdown.subscribe();
        let mut inputs: Vec<(String, Input)> = Vec::new();
        let mut receivers = Vec::new();
        for s in &mut self.sources {
            match s.runtime.take().expect("a pipeline runs once") {
                SourceRuntime::Receiver(r) => {
                    let blocks = Arc::new(ReceiverBlocks::new(
                        &s.name,
                        RECEIVER_CAPACITY,
                        self.dead.clone(),
                    ));
                    let writer: Arc<dyn sluice_core::BlockWriter> = blocks.clone();
                    let name = s.name.clone();
                    receivers.push(tokio::spawn(async move {
                        if let Err(e) = r.run(writer).await {
                            tracing::error!(receiver = %name, error = %e, "receiver stopped with an error");
                        }
                    }));
                    inputs.push((s.name.clone(), Input::Receiver(blocks)));
                }
                SourceRuntime::Replayable(r) => inputs.push((s.name.clone(), Input::Replayable(r))),
            }
        }
        if let Some(dir) = &self.app.checkpoint_dir {
            tracing::warn!(%dir, "app.checkpoint_dir is not used by this build yet: no write-ahead log or checkpoint is kept");
        }
        let started = Instant::now();
        let mut t = match opts.manual_clock {
            Some(t0) => t0,
            None => BatchTime::now().next_multiple(interval),
        };
        let mut summary = RunSummary::default();
        tracing::info!(app = %self.app.name, interval = %sluice_core::time::format_duration(interval), "started");
        loop {
            let mut stopping = opts.max_batches.is_some_and(|m| summary.batches + 1 >= m);
            if opts.manual_clock.is_none() {
                let wait = (t.millis() - BatchTime::now().millis()).max(0) as u64;
                let deadline = opts.duration.map(|d| started + d);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                    _ = stop_rx.changed() => { stopping = true; }
                }
                if deadline.is_some_and(|d| Instant::now() + interval >= d) {
                    stopping = true;
                }
            } else if *stop_rx.borrow() {
                stopping = true;
            }
            if stopping {
                // Stop the receivers first, so the last batch holds everything they received.
                for (_, i) in &inputs {
                    if let Input::Receiver(b) = i {
                        b.request_stop();
                    }
                }
                let timeout = self.app.graceful_stop_timeout.unwrap_or(interval * 10);
                let all = futures::future::join_all(receivers.drain(..));
                if tokio::time::timeout(timeout, all).await.is_err() {
                    tracing::warn!("receivers did not stop within the graceful stop timeout");
                }
            }
            let began = Instant::now();
            let before = summary.input_records;
            self.run_batch(t, &mut inputs, &mut summary).await?;
            let finished = Instant::now();
            let took = finished - began;
            summary.stats.push(BatchStat {
                time: t,
                records: summary.input_records - before,
                processing: took,
                finished,
            });
            summary.batches += 1;
            tracing::debug!(
                batch = t.millis(),
                processing_us = took.as_micros() as u64,
                records = summary.input_records - before,
                "batch done"
            );
            if took > interval && opts.manual_clock.is_none() {
                tracing::warn!(
                    batch = t.millis(),
                    processing_ms = took.as_millis() as u64,
                    "batch took longer than the batch interval"
                );
            }
            if stopping {
                break;
            }
            t = t.plus(interval);
        }
        for s in self.sinks.values_mut() {
            s.close().await?;
        }
        tracing::info!(
            batches = summary.batches,
            records = summary.input_records,
            dead_letters = summary.dead_letters,
            late = summary.late_records,
            "stopped"
        );
        Ok(summary)
    }

    async fn run_batch(
        &mut self,
        t: BatchTime,
        inputs: &mut [(String, Input)],
        summary: &mut RunSummary,
    ) -> Result<()> {
        let mut streams: HashMap<String, Vec<RecordBatch>> = HashMap::new();
        for (name, input) in inputs.iter_mut() {
            let batches = match input {
                Input::Receiver(b) => b.take(),
                Input::Replayable(r) => {
                    let range = r.plan(t, None).await?;
                    r.read(&range, &self.dead).await?
                }
            };
            summary.input_records += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
            streams.insert(name.clone(), batches);
        }
        for table in &mut self.tables {
            table.refresh().await;
        }
        let tables: HashMap<String, Vec<RecordBatch>> = self
            .tables
            .iter()
            .map(|t| (t.name.clone(), t.batches.clone()))
            .collect();
        for job in &mut self.jobs {
            let out = job.run(t, &streams, &tables).await.map_err(|e| {
                Error::msg(format!(
                    "job `{}` failed in batch {}: {e}",
                    job.name,
                    t.millis()
                ))
            })?;
            if !out.late.is_empty() {
                let n: usize = out.late.iter().map(|b| b.num_rows()).sum();
                summary.late_records += n as u64;
                tracing::debug!(job = %job.name, late = n, "records later than the watermark");
                if job.late == LateRecords::DeadLetter {
                    let wm = out.watermark.unwrap_or_default();
                    self.dead.extend(late_letters(&job.name, wm, &out.late));
                }
            }
            let Some(batches) = out.batches else {
                streams.insert(job.name.clone(), Vec::new());
                continue;
            };
            for sink in &job.sinks {
                let s = self.sinks.get_mut(sink).expect("sink names checked");
                s.write(SinkBatch {
                    job: &job.name,
                    time: t,
                    schema: job.out_schema.clone(),
                    batches: &batches,
                    replay: false,
                })
                .await
                .map_err(|e| {
                    Error::msg(format!(
                        "sink `{sink}` failed for job `{}` in batch {}: {e}",
                        job.name,
                        t.millis()
                    ))
                })?;
            }
            streams.insert(job.name.clone(), batches);
        }
        let dead = self.dead.take();
        summary.dead_letters += dead.len() as u64;
        if !dead.is_empty() {
            match &self.app.dead_letter {
                Some(name) => {
                    let batch = DeadLetters::to_batch(t.millis(), &dead);
                    let s = self.sinks.get_mut(name).expect("dead-letter sink checked");
                    s.write(SinkBatch {
                        job: "dead_letter",
                        time: t,
                        schema: DeadLetters::schema(),
                        batches: &[batch],
                        replay: false,
                    })
                    .await?;
                }
                None => {
                    tracing::warn!(count = dead.len(), first = %dead[0].reason, "records rejected (no dead-letter sink configured)")
                }
            }
        }
        Ok(())
    }
}

fn late_letters(job: &str, watermark: i64, late: &[RecordBatch]) -> Vec<DeadLetter> {
    let json = sluice_formats::encode_json_lines(late).unwrap_or_default();
    String::from_utf8_lossy(&json)
        .lines()
        .map(|l| DeadLetter {
            origin: job.to_string(),
            reason: format!("late: event time before the watermark ({watermark} ms)"),
            payload: l.to_string(),
        })
        .collect()
}
