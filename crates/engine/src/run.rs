//! The batch loop: the clock, planning and running batches, committing them, recovery, graceful stop.
//!
//! With a checkpoint directory, batch `t` goes through three steps: its plan (the exact input of
//! every source) is written durably; the jobs run and the sinks write (deterministic names, so a
//! re-run overwrites); then one atomic commit records the batch as done with the new state and
//! window contents. A restart re-runs every planned batch that has no commit, from its plan.

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

enum Input {
    Receiver(Arc<ReceiverBlocks>),
    Replayable(Box<dyn AnyReplayable>),
}

struct SourceRun {
    name: String,
    input: Input,
    rate: RateLimit,
    cap: Option<f64>,
    pid: Option<PidEstimator>,
}

/// The checkpoint directory, open.
struct OpenCheckpoint {
    dir: PathBuf,
    store: Store,
    /// Each stateful job's committed state files.
    state_files: HashMap<String, ck::StateFiles>,
    logs: HashMap<String, Arc<Log>>,
    done: VecDeque<i64>,
    plans: VecDeque<i64>,
    fingerprint_written: bool,
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
        let plans: Vec<Plan> = match &durable {
            Some(d) => d
                .store
                .scan("plan/")?
                .into_iter()
                .map(|(k, v)| {
                    serde_json::from_slice(&v)
                        .map_err(|e| Error::msg(format!("unreadable batch plan {k}: {e}")))
                })
                .collect::<Result<_>>()?,
            None => Vec::new(),
        };
        if let Some(d) = durable.as_mut() {
            d.plans = plans.iter().map(|p| p.time).collect();
        }
        let last_done: Option<Done> = match &durable {
            Some(d) => d.store.get_json("last")?,
            None => None,
        };
        let pending: Vec<Plan> = plans
            .iter()
            .filter(|p| last_done.as_ref().is_none_or(|d| p.time > d.time))
            .cloned()
            .collect();
        let newest = plans.last().cloned();
        if let (Some(d), Some(last)) = (&mut durable, &last_done) {
            self.restore_jobs(d)?;
            tracing::info!(
                last_committed = last.time,
                at = %BatchTime(last.time).to_local_string(),
                unfinished = pending.len(),
                "resuming from the checkpoint"
            );
        }

        let bp = self.app.backpressure.clone();
        let mut sources: Vec<SourceRun> = Vec::new();
        let mut receivers = Vec::new();
        for s in &mut self.sources {
            let cap = bp
                .source_max_rate
                .get(&s.name)
                .copied()
                .or(bp.max_rate)
                .map(|r| r as f64);
            let first = if bp.enabled {
                bp.initial_rate.map(|r| r as f64).or(cap)
            } else {
                cap
            };
            let rate = RateLimit::new(first);
            let pid = bp
                .enabled
                .then(|| PidEstimator::new(interval, bp.min_rate as f64));
            let planned = newest.as_ref().and_then(|p| p.sources.get(&s.name));
            let input = match s.runtime.take().expect("a pipeline runs once") {
                SourceRuntime::Receiver(r) => {
                    let mut blocks = ReceiverBlocks::new(
                        &s.name,
                        RECEIVER_CAPACITY,
                        self.app.receiver_buffer.as_u64() as usize,
                        self.dead.clone(),
                        rate.clone(),
                    );
                    if let Some(d) = &durable {
                        let log = d.logs[&s.name].clone();
                        let cursor = planned
                            .map(|p| block_range(&p.range).map(|r| r.end()))
                            .transpose()?;
                        let resume = log_resume(&log);
                        blocks = blocks.with_log(log, cursor, resume)?;
                    }
                    let blocks = Arc::new(blocks);
                    let writer: Arc<dyn sluice_core::BlockWriter> = blocks.clone();
                    let name = s.name.clone();
                    let failed = blocks.clone();
                    receivers.push(tokio::spawn(async move {
                        if let Err(e) = r.run(writer).await {
                            // Fatal for the gateway (e.g. refused credentials): the next batch
                            // reports it and the run ends with this error.
                            tracing::error!(receiver = %name, error = %e, "receiver stopped with an error");
                            failed.fail(e);
                        }
                    }));
                    Input::Receiver(blocks)
                }
                SourceRuntime::Replayable(mut r) => {
                    let resume = |r: &mut Box<dyn AnyReplayable>, position| {
                        r.restore(position).map_err(|e| {
                            Error::msg(format!(
                                "source `{}` cannot resume from the checkpoint: {e}",
                                s.name
                            ))
                        })
                    };
                    if let Some(p) = planned {
                        resume(&mut r, &p.position)?;
                    } else {
                        let kept: Option<serde_json::Value> = match &durable {
                            Some(d) => d.store.get_json(&ck::origin_key(&s.name))?,
                            None => None,
                        };
                        match kept {
                            Some(origin) => {
                                tracing::info!(source = %s.name, "continuing from the origin fixed at the first start");
                                resume(&mut r, &origin)?;
                            }
                            None => {
                                let origin = r
                                    .origin()
                                    .await
                                    .map_err(|e| Error::msg(format!("source `{}`: {e}", s.name)))?;
                                if let Some(d) = durable.as_ref().filter(|_| !origin.is_null()) {
                                    let mut c = Changes::default();
                                    c.put_json(&ck::origin_key(&s.name), &origin);
                                    d.store.write(c)?;
                                }
                            }
                        }
                    }
                    Input::Replayable(r)
                }
            };
            sources.push(SourceRun {
                name: s.name.clone(),
                input,
                rate,
                cap,
                pid,
            });
        }

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
            if let Input::Replayable(r) = &mut s.input {
                r.prepare().await?;
            }
        }
        let resume_at = newest.as_ref().map(|p| BatchTime(p.time).plus(interval));
        let now_t = BatchTime::now().next_multiple(interval);
        // The newest batch time already passed: coalesced missed batches run at once, as one.
        let passed = now_t.minus(interval);
        let mut t = match (opts.manual_clock, resume_at) {
            (Some(t0), Some(r)) => t0.max(r),
            (Some(t0), None) => t0,
            (None, Some(r)) => match self.app.missed_batches {
                MissedBatches::CatchUp => r,
                MissedBatches::Coalesce => r.max(passed),
            },
            (None, None) => now_t,
        };
        if let (None, Some(r)) = (opts.manual_clock, resume_at) {
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
        // Input received before a restart is overdue: its batch runs at once, without waiting for
        // the clock to reach the batch time.
        let mut overdue = sources
            .iter()
            .any(|s| matches!(&s.input, Input::Receiver(b) if b.recovered > 0));
        let mut exhausted = false;
        loop {
            let mut stopping =
                exhausted || opts.max_batches.is_some_and(|m| summary.batches + 1 >= m);
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
                // Stop the receivers first, so the last batch holds everything they received.
                for s in &sources {
                    if let Input::Receiver(b) = &s.input {
                        b.request_stop();
                    }
                }
                let timeout = self.app.graceful_stop_timeout.unwrap_or(interval * 10);
                let all = futures::future::join_all(receivers.drain(..));
                if tokio::time::timeout(timeout, all).await.is_err() {
                    tracing::warn!("receivers did not stop within the graceful stop timeout");
                }
                let pushed: Vec<Arc<ReceiverBlocks>> = sources
                    .iter()
                    .filter_map(|s| match &s.input {
                        Input::Receiver(b) => Some(b.clone()),
                        Input::Replayable(_) => None,
                    })
                    .collect();
                for b in pushed {
                    b.flush().await;
                }
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
            if !exhausted
                && !sources.is_empty()
                && sources
                    .iter()
                    .all(|s| matches!(&s.input, Input::Replayable(r) if r.exhausted()))
            {
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

    fn checkpoint_path(&self) -> Option<PathBuf> {
        self.app
            .checkpoint_dir
            .as_ref()
            .map(|d| self.base_dir.join(d))
    }

    fn open_checkpoint(&self) -> Result<Option<OpenCheckpoint>> {
        let Some(dir) = self.checkpoint_path() else {
            return Ok(None);
        };
        // The store, logs and state hold input in plain text: their folders are the owner's only.
        let store_dir = ck::store_dir(&dir);
        sluice_core::fs::create_dir(&store_dir, sluice_core::fs::Access::Private)
            .map_err(|e| Error::msg(format!("cannot create {}: {e}", store_dir.display())))?;
        let store = Store::open_with(
            &store_dir,
            self.app.wal.store_write_buffer.map(|b| b.as_u64() as usize),
        )?;
        ck::check_compatible(&dir, &store, &self.fingerprint())?;
        let policy = match self.app.wal.sync {
            WalSync::EveryBlock => SyncPolicy::EveryBlock,
            WalSync::Interval => SyncPolicy::Interval(self.app.wal.sync_interval),
        };
        let mut logs = HashMap::new();
        for s in &self.sources {
            if matches!(s.runtime, Some(SourceRuntime::Receiver(_))) {
                let (log, rec) = Log::open(
                    &ck::wal_dir(&dir, &s.name),
                    policy,
                    self.app.wal.segment_bytes,
                )?;
                if let Some((file, offset, bytes)) = rec.torn {
                    tracing::warn!(source = %s.name, file = %file.display(), offset, bytes, "the write-ahead log ended in a torn write; recovered to the last whole block");
                }
                logs.insert(s.name.clone(), Arc::new(log));
            }
        }
        let done = store
            .scan("done/")?
            .iter()
            .filter_map(|(k, _)| ck::key_time(k))
            .collect();
        tracing::info!(dir = %dir.display(), wal_bytes = logs.values().map(|l| l.disk_bytes()).sum::<u64>(), "checkpoint open");
        Ok(Some(OpenCheckpoint {
            dir,
            state_files: HashMap::new(),
            store,
            logs,
            done,
            plans: VecDeque::new(), // filled by `run` from the plans it reads
            fingerprint_written: false,
        }))
    }

    /// Put back state, window contents and event-time buffers from the checkpoint.
    fn restore_jobs(&mut self, d: &mut OpenCheckpoint) -> Result<()> {
        let store = &d.store;
        for job in &mut self.jobs {
            let name = job.name.clone();
            let bad = |what: &str, e: String| {
                Error::msg(format!(
                    "job `{name}`: cannot restore its {what} from the checkpoint: {e}"
                ))
            };
            if let Some(state) = &mut job.state {
                let reading = Instant::now();
                if let Some((files, parts)) = ck::read_state(&d.dir, store, &name)? {
                    let read_us = reading.elapsed().as_micros() as u64;
                    state.restore(parts).map_err(|e| bad("state", e))?;
                    tracing::info!(job = %name, keys = state.len(), files = files.files.len(), read_us, restore_us = reading.elapsed().as_micros() as u64 - read_us, "state restored");
                    ck::remove_unlisted_state(&d.dir, &name, &files);
                    d.state_files.insert(name.clone(), files);
                }
            }
            if let Some(w) = &mut job.window {
                for (input, _) in &job.inputs {
                    for (k, v) in store.scan(&ck::window_prefix(&name, input))? {
                        let t = ck::key_time(&k).ok_or_else(|| bad("window", k.clone()))?;
                        w.restore(input, BatchTime(t), vec![ipc::read(&v)?]);
                    }
                }
            }
            if let Some(e) = &mut job.event {
                let marks: Option<[Option<i64>; 2]> = store.get_json(&ck::event_meta_key(&name))?;
                if let Some(marks) = marks {
                    let buffer = store
                        .get(&ck::event_key(&name))?
                        .map(|b| ipc::read(&b))
                        .transpose()?;
                    e.restore(buffer, marks);
                }
            }
        }
        Ok(())
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
        let interval = self.app.batch_interval;
        let mut streams: HashMap<String, Vec<RecordBatch>> = HashMap::new();
        let skip: Option<ck::Skip> = match (&plan, durable.as_ref()) {
            (Some(p), Some(d)) => d.store.get_json(&ck::skip_key(p.time))?,
            _ => None,
        };
        let plan = match plan {
            Some(p) if skip.is_some() => {
                tracing::warn!(batch = p.time, plan = %serde_json::to_string(&p.sources).unwrap_or_default(), "skipping this batch as the operator asked (sluice checkpoint skip): its input is not processed");
                p
            }
            Some(p) => {
                for s in sources.iter_mut() {
                    let batches = match (&mut s.input, p.sources.get(&s.name)) {
                        (_, None) => Vec::new(),
                        (Input::Receiver(_), Some(sp)) => {
                            let r = block_range(&sp.range)?;
                            let log = &durable.as_ref().expect("plans come from a checkpoint").logs
                                [&s.name];
                            if r.count == 0 {
                                Vec::new()
                            } else {
                                log.read(r.from, r.end() - 1)?
                                    .into_iter()
                                    .map(|e| e.batch)
                                    .collect()
                            }
                        }
                        (Input::Replayable(r), Some(sp)) => r.read(&sp.range, &self.dead).await?,
                    };
                    streams.insert(s.name.clone(), batches);
                }
                p
            }
            None => {
                let mut plan = Plan {
                    time: t.millis(),
                    sources: BTreeMap::new(),
                };
                for s in sources.iter_mut() {
                    let sp = match &mut s.input {
                        Input::Receiver(b) => {
                            let max = s
                                .rate
                                .current()
                                .map(|rate| (rate * interval.as_secs_f64()).max(1.0) as u64);
                            let (batches, range) = b.take(max)?;
                            streams.insert(s.name.clone(), batches);
                            SourcePlan {
                                range: serde_json::to_value(range).expect("plain struct"),
                                position: serde_json::Value::Null,
                                rate: s.rate.current().map(|r| r as u64),
                            }
                        }
                        Input::Replayable(r) => {
                            let max = s
                                .rate
                                .current()
                                .map(|rate| (rate * interval.as_secs_f64()).max(1.0) as u64);
                            let range = r.plan(t, max).await?;
                            SourcePlan {
                                range,
                                position: r.position(),
                                rate: s.rate.current().map(|r| r as u64),
                            }
                        }
                    };
                    plan.sources.insert(s.name.clone(), sp);
                }
                if let Some(d) = durable.as_mut() {
                    let mut c = Changes::default();
                    c.put_json(&ck::plan_key(t.millis()), &plan);
                    if !d.fingerprint_written {
                        c.put_json("meta/fingerprint", &self.fingerprint());
                        d.fingerprint_written = true;
                    }
                    d.store.write(c)?;
                    d.plans.push_back(t.millis());
                }
                for s in sources.iter_mut() {
                    if let Input::Replayable(r) = &mut s.input {
                        let range = &plan.sources[&s.name].range;
                        streams.insert(s.name.clone(), r.read(range, &self.dead).await?);
                    }
                }
                plan
            }
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
            match &mut s.input {
                Input::Replayable(r) => r.commit(&sp.range).await?,
                Input::Receiver(_) => {
                    if let Some(d) = durable.as_ref() {
                        let r = block_range(&sp.range)?;
                        if r.count > 0 {
                            d.logs[&s.name].trim(r.end() - 1)?;
                        }
                    }
                }
            }
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

    /// Record batch `t` as done, with everything a restart needs to continue after it, in one write.
    fn commit(
        &mut self,
        d: &mut OpenCheckpoint,
        done: &Done,
        ran: &[bool],
        skip: Option<ck::Skip>,
    ) -> Result<()> {
        let t = done.time;
        let mut c = Changes::default();
        if let Some(mut skip) = skip {
            skip.done_at = Some(done.committed_at);
            c.put_json(&ck::skip_key(t), &skip);
        }
        c.put_json("last", done);
        c.put_json(&ck::done_key(t), done);
        d.done.push_back(t);
        while d.done.len() > ck::KEEP_DONE {
            c.delete(&ck::done_key(d.done.pop_front().expect("non-empty")));
        }
        // Plans before this one are no longer needed; this one holds the source positions.
        while d.plans.front().is_some_and(|&p| p < t) {
            c.delete(&ck::plan_key(d.plans.pop_front().expect("non-empty")));
        }
        let mut replaced = Vec::new();
        for (job, &ran) in self.jobs.iter_mut().zip(ran) {
            if let (Some(state), true) = (&mut job.state, ran) {
                let (batch, full) = match state.checkpoint() {
                    StateWrite::Full(b) => (b, true),
                    StateWrite::Delta(b) => (b, false),
                };
                let name = ck::state_file(t, full);
                let bytes = ipc::write(&batch)?;
                sluice_wal::write_durably(&ck::state_dir(&d.dir, &job.name).join(&name), &bytes)?;
                let files = d.state_files.entry(job.name.clone()).or_default();
                if full {
                    files.files.clear();
                    files.bytes = 0;
                    replaced.push(job.name.clone());
                }
                files.files.push(name);
                files.bytes += bytes.len() as u64;
                files.keys = state.len();
                c.put_json(&ck::state_key(&job.name), files);
            }
            if let Some(w) = &mut job.window {
                for (input, _) in &job.inputs {
                    if let Some(added) = w.added(input, BatchTime(t)) {
                        if let Some(first) = added.first() {
                            let all = sluice_core::arrow::compute::concat_batches(
                                &first.schema(),
                                added,
                            )?;
                            c.put(&ck::window_key(&job.name, input, t), &ipc::write(&all)?);
                        }
                    }
                }
                for (input, bt) in w.evicted.drain(..) {
                    c.delete(&ck::window_key(&job.name, &input, bt.millis()));
                }
            }
            if let Some(e) = &job.event {
                let (buffer, marks) = e.snapshot();
                match buffer {
                    Some(b) => c.put(&ck::event_key(&job.name), &ipc::write(&b)?),
                    None => c.delete(&ck::event_key(&job.name)),
                }
                c.put_json(&ck::event_meta_key(&job.name), &marks);
            }
        }
        d.store.write(c)?;
        for job in replaced {
            ck::remove_unlisted_state(&d.dir, &job, &d.state_files[&job]);
        }
        Ok(())
    }

    /// Run every job on this batch's streams and write their sinks. Returns which jobs ran.
    async fn run_jobs(
        &mut self,
        t: BatchTime,
        mut streams: HashMap<String, Vec<RecordBatch>>,
        rerun: bool,
        summary: &mut RunSummary,
    ) -> Result<Vec<bool>> {
        for table in &mut self.tables {
            table.refresh().await;
        }
        let tables: HashMap<String, Vec<RecordBatch>> = self
            .tables
            .iter()
            .map(|t| (t.name.clone(), t.batches.clone()))
            .collect();
        let mut ran = Vec::with_capacity(self.jobs.len());
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
            if !out.future.is_empty() {
                let letters = future_letters(&job.name, t, &out.future);
                tracing::warn!(job = %job.name, rows = letters.len(), "event times too far after the batch time (max_future): outliers, not used for the watermark");
                self.dead.extend(letters);
            }
            ran.push(out.batches.is_some());
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
                    rerun,
                    dead: &self.dead,
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
                        job: sluice_config::DEAD_LETTER_WRITER,
                        time: t,
                        schema: DeadLetters::schema(),
                        batches: &[batch],
                        rerun,
                        dead: &self.dead,
                    })
                    .await?;
                }
                None => {
                    tracing::warn!(count = dead.len(), first = %dead[0].reason, "records rejected (no dead-letter sink configured)")
                }
            }
        }
        Ok(ran)
    }
}

/// A receiver that stopped with an error (refused credentials, a refused subscription) ends the
/// run before the next batch: that is not the batch's failure.
fn receivers_healthy(sources: &[SourceRun]) -> Result<()> {
    for s in sources {
        if let Input::Receiver(b) = &s.input {
            if let Some(e) = b.failure() {
                return Err(Error::msg(format!("receiver `{}` failed: {e}", s.name)));
            }
        }
    }
    Ok(())
}

/// A batch that failed: named with its time, and how to get past it if it fails the same way at
/// every restart (its plan is re-run with the same input each time).
fn poisoned(e: Error, t: BatchTime, checkpoint: Option<PathBuf>) -> Error {
    match checkpoint {
        Some(dir) => Error::msg(format!(
            "batch {} ({}) failed: {e}. It is re-run with the same input when the gateway restarts; \
             if it fails the same way every time, fix the cause (the job's SQL, the sink), or skip it \
             with `sluice checkpoint skip {} {}`: the skip is recorded in the checkpoint, and \
             `sluice checkpoint inspect` lists it with the input that was not processed",
            t.millis(),
            t.to_local_string(),
            dir.display(),
            t.millis()
        )),
        None => Error::msg(format!("batch {} failed: {e}", t.millis())),
    }
}

fn block_range(v: &serde_json::Value) -> Result<BlockRange> {
    serde_json::from_value(v.clone())
        .map_err(|e| Error::msg(format!("bad block range {v} in a batch plan: {e}")))
}

/// The position stored with a log's newest block.
fn log_resume(log: &Log) -> Option<serde_json::Value> {
    log.last_position().filter(|p| !p.is_null())
}

/// Feed each source's estimator with the batch just done and set its next rate.
fn adapt_rates(
    sources: &mut [SourceRun],
    per_source: &HashMap<String, u64>,
    took: Duration,
    scheduling_ms: f64,
) {
    let now = sluice_core::time::now_ms();
    for s in sources {
        let Some(pid) = &mut s.pid else { continue };
        let n = per_source.get(&s.name).copied().unwrap_or(0);
        if let Some(rate) = pid.compute(now, n, took.as_secs_f64() * 1000.0, scheduling_ms) {
            let rate = s.cap.map_or(rate, |c| rate.min(c));
            tracing::debug!(source = %s.name, rate = rate as u64, "rate limit");
            s.rate.set(Some(rate));
        }
    }
}

fn future_letters(job: &str, t: BatchTime, rows: &[RecordBatch]) -> Vec<DeadLetter> {
    let reason = format!(
        "future: event time more than max_future after the batch time ({} ms), or out of range",
        t.millis()
    );
    sluice_formats::dead_rows(job, &reason, rows)
}

fn late_letters(job: &str, watermark: i64, late: &[RecordBatch]) -> Vec<DeadLetter> {
    let reason = format!("late: event time before the watermark ({watermark} ms)");
    sluice_formats::dead_rows(job, &reason, late)
}
