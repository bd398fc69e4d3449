//! The batch loop: the clock, planning and running batches, committing them, recovery, graceful stop.
//!
//! With a checkpoint directory, batch `t` goes through three steps: its plan (the exact input of
//! every source) is written durably; the jobs run and the sinks write (deterministic names, so a
//! re-run overwrites); then one atomic commit records the batch as done with the new state and
//! window contents. A restart re-runs every planned batch that has no commit, from its plan.

mod commit;
mod inputs;
mod jobs;
mod recovery;

use inputs::{adapt_rates, read_inputs, receivers_healthy, stop_receivers, SourceRun};
use recovery::{poisoned, OpenCheckpoint};

use crate::blocks::{BlockRange, ReceiverBlocks};
use crate::build::Pipeline;
use crate::checkpoint::{self as ck, Done, Plan, SourcePlan};
use crate::rate::{PidEstimator, RateLimit};
use crate::state::StateWrite;
use sluice_config::{LateRecords, MissedBatches, WalSync};
use sluice_core::arrow::record_batch::RecordBatch;
use sluice_core::{
    AnyReplayable, BatchTime, DeadLetter, DeadLetters, Error, Result, SinkBatch, SourceRuntime,
};
use sluice_wal::{ipc, Changes, Log, Store, SyncPolicy};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
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
    /// Kept even when nothing listens yet: a pipeline that starts running later stops at once.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
    fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}

#[derive(Default, Clone)]
pub struct RunOptions {
    /// Stop gracefully after this long.
    pub duration: Option<Duration>,
    /// Stop after this many batches (re-runs of unfinished batches after a restart included).
    pub max_batches: Option<u64>,
    /// Run batches back to back from this time, without waiting for the clock (tests, backfills).
    pub manual_clock: Option<BatchTime>,
    pub shutdown: Shutdown,
}

/// What a run did, for logs and tests.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    pub batches: u64,
    /// Batches re-run from their plan after a restart.
    pub rerun: u64,
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
    /// From the start of the batch to its commit.
    pub processing: Duration,
    /// When its output was written.
    pub finished: Instant,
}

impl Pipeline {
    /// Run until stopped (shutdown, duration or batch count), then drain and close the sinks.
    pub async fn run(mut self, opts: RunOptions) -> Result<RunSummary> {
        let interval = self.app.batch_interval;
        let mut stop_rx = opts.shutdown.subscribe();
        let mut durable = self.open_checkpoint()?;
        for (name, s) in &mut self.sinks {
            s.open()
                .await
                .map_err(|e| Error::msg(format!("sink `{name}`: {e}")))?;
        }
        let (pending, newest) = self.unfinished_plans(&mut durable)?;

        let (mut sources, mut receivers) = self.start_sources(&durable, newest.as_ref()).await?;

        let started = Instant::now();
        let mut summary = RunSummary::default();
        for s in &self.sources {
            if let Some(c) = &s.caveat {
                tracing::warn!(source = %s.name, guarantee = %s.guarantee, "{c}");
            }
        }
        tracing::info!(app = %self.app.name, interval = %sluice_core::time::format_duration(interval), "started");
        for plan in pending {
            let t = BatchTime(plan.time);
            tracing::info!(
                batch = plan.time,
                "re-running a batch planned before the restart"
            );
            receivers_healthy(&sources)?;
            self.run_batch(t, Some(plan), &mut sources, &mut durable, &mut summary)
                .await
                .map_err(|e| poisoned(e, t, self.checkpoint_path()))?;
            summary.rerun += 1;
        }
        // Replayable sources start reading ahead now, so the first batch is not empty.
        for s in sources.iter_mut() {
            s.input.prepare().await?;
        }
        let mut t = self.first_batch_time(opts.manual_clock, newest.as_ref());
        // Input received before a restart is overdue: its batch runs at once, without waiting for
        // the clock to reach the batch time.
        let mut overdue = sources
            .iter()
            .any(|s| s.receiver.as_ref().is_some_and(|b| b.recovered > 0));
        let mut exhausted = false;
        loop {
            // A stop asked for before this loop began waiting (while the gateway started, or
            // during the last batch) is seen here, not only as a change.
            let mut stopping = exhausted
                || opts.max_batches.is_some_and(|m| summary.batches + 1 >= m)
                || *stop_rx.borrow_and_update();
            if opts.manual_clock.is_none() {
                let wait = if std::mem::take(&mut overdue) {
                    0
                } else {
                    (t.millis() - BatchTime::now().millis()).max(0) as u64
                };
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
                let blocks = sources.iter().filter_map(|s| s.receiver.clone()).collect();
                let timeout = self.app.graceful_stop_timeout.unwrap_or(interval * 10);
                stop_receivers(blocks, &mut receivers, timeout).await;
            }
            let scheduled = Instant::now();
            let delay_ms = (BatchTime::now().millis() - t.millis()).max(0) as f64;
            let before = summary.input_records;
            receivers_healthy(&sources)?;
            let per_source = self
                .run_batch(t, None, &mut sources, &mut durable, &mut summary)
                .await
                .map_err(|e| poisoned(e, t, self.checkpoint_path()))?;
            let took = scheduled.elapsed();
            if opts.manual_clock.is_none() {
                adapt_rates(&mut sources, &per_source, took, delay_ms);
            }
            if !exhausted && !sources.is_empty() && sources.iter().all(|s| s.input.exhausted()) {
                tracing::info!("every source has reached the end of its bounded run; stopping");
                exhausted = true;
            }
            tracing::debug!(
                batch = t.millis(),
                processing_us = took.as_micros() as u64,
                delay_ms = delay_ms as u64,
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
        if let Some(d) = &durable {
            for log in d.logs.values() {
                log.close();
            }
        }
        tracing::info!(
            batches = summary.batches,
            rerun = summary.rerun,
            records = summary.input_records,
            dead_letters = summary.dead_letters,
            late = summary.late_records,
            "stopped"
        );
        Ok(summary)
    }

    /// The first new batch's time: the next multiple of the interval, or after a restart the
    /// one after the newest plan — with the batches missed while stopped run one by one
    /// (`catch_up`) or as one (`coalesce`).
    fn first_batch_time(
        &self,
        manual_clock: Option<BatchTime>,
        newest: Option<&Plan>,
    ) -> BatchTime {
        let interval = self.app.batch_interval;
        let resume_at = newest.map(|p| BatchTime(p.time).plus(interval));
        let now_t = BatchTime::now().next_multiple(interval);
        // The newest batch time already passed: coalesced missed batches run at once, as one.
        let passed = now_t.minus(interval);
        let t = match (manual_clock, resume_at) {
            (Some(t0), Some(r)) => t0.max(r),
            (Some(t0), None) => t0,
            (None, Some(r)) => match self.app.missed_batches {
                MissedBatches::CatchUp => r,
                MissedBatches::Coalesce => r.max(passed),
            },
            (None, None) => now_t,
        };
        if let (None, Some(r)) = (manual_clock, resume_at) {
            let missed = (passed.millis() - r.millis()) / interval.as_millis() as i64 + 1;
            if missed > 1 && self.app.missed_batches == MissedBatches::CatchUp {
                tracing::info!(missed, "catching up on the batches missed while stopped");
            } else if missed > 1 {
                tracing::info!(
                    missed,
                    batch = t.millis(),
                    "the batches missed while stopped run as one"
                );
            }
        }
        t
    }

    /// Plan (unless `plan` is given: a re-run), run and commit batch `t`. Returns the records each
    /// source delivered.
    async fn run_batch(
        &mut self,
        t: BatchTime,
        plan: Option<Plan>,
        sources: &mut [SourceRun],
        durable: &mut Option<OpenCheckpoint>,
        summary: &mut RunSummary,
    ) -> Result<HashMap<String, u64>> {
        let began = Instant::now();
        let rerun = plan.is_some();
        let skip: Option<ck::Skip> = match (&plan, durable.as_ref()) {
            (Some(p), Some(d)) => d.store.get_json(&ck::skip_key(p.time))?,
            _ => None,
        };
        let plan = match plan {
            Some(p) => p,
            None => self.plan_batch(t, sources, durable).await?,
        };
        let streams = if skip.is_some() {
            tracing::warn!(batch = plan.time, plan = %serde_json::to_string(&plan.sources).unwrap_or_default(), "skipping this batch as the operator asked (sluice checkpoint skip): its input is not processed");
            HashMap::new()
        } else {
            read_inputs(&plan, sources, &self.dead).await?
        };
        let mut per_source = HashMap::new();
        let mut records = 0;
        for (name, b) in &streams {
            let n = b.iter().map(|b| b.num_rows() as u64).sum::<u64>();
            per_source.insert(name.clone(), n);
            records += n;
        }
        summary.input_records += records;

        let ran = if skip.is_some() {
            vec![false; self.jobs.len()]
        } else {
            self.run_jobs(t, streams, rerun, summary).await?
        };
        if durable.is_none() {
            // Nothing to delete from a checkpoint: forget what the windows dropped.
            for job in &mut self.jobs {
                if let Some(w) = &mut job.window {
                    w.evicted.clear();
                }
            }
        }
        if let Some(d) = durable.as_mut() {
            let done = Done {
                time: t.millis(),
                records,
                processing_ms: began.elapsed().as_millis() as u64,
                committed_at: sluice_core::time::now_ms(),
                rerun,
                skipped: skip.is_some(),
            };
            let committing = Instant::now();
            self.commit(d, &done, &ran, skip)?;
            tracing::debug!(
                batch = t.millis(),
                commit_us = committing.elapsed().as_micros() as u64,
                "batch committed"
            );
        }
        for s in sources.iter_mut() {
            let Some(sp) = plan.sources.get(&s.name) else {
                continue;
            };
            s.input.commit(&sp.range).await?;
        }
        let finished = Instant::now();
        summary.stats.push(BatchStat {
            time: t,
            records,
            processing: finished - began,
            finished,
        });
        summary.batches += 1;
        Ok(per_source)
    }
}
