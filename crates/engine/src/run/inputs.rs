//! The sources' side of the batch loop: each source's input as one replayable source (a
//! receiver's write-ahead-logged blocks too), its rate, and the receivers' health.

use super::recovery::OpenCheckpoint;
use super::*;
use sluice_core::ReplayableSource;

/// A receiver that stopped with an error (refused credentials, a refused subscription) ends the
/// run before the next batch: that is not the batch's failure.
pub(super) fn receivers_healthy(sources: &[SourceRun]) -> Result<()> {
    for s in sources {
        if let Some(b) = &s.receiver {
            if let Some(e) = b.failure() {
                return Err(Error::msg(format!("receiver `{}` failed: {e}", s.name)));
            }
        }
    }
    Ok(())
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
pub(super) fn adapt_rates(
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

/// One source in the batch loop: its input (a replayable source, or a receiver's blocks as
/// one), the receiver's blocks for stopping and health, and its rate.
pub(super) struct SourceRun {
    pub(super) name: String,
    pub(super) input: Box<dyn AnyReplayable>,
    pub(super) receiver: Option<Arc<ReceiverBlocks>>,
    pub(super) rate: RateLimit,
    pub(super) cap: Option<f64>,
    pub(super) pid: Option<PidEstimator>,
}

/// A receiver's input as a replayable source: a batch takes the blocks received so far (its
/// range: their numbers), and a re-run after a restart reads the same blocks back from the
/// write-ahead log.
pub(super) struct Received {
    blocks: Arc<ReceiverBlocks>,
    log: Option<Arc<Log>>,
    /// The blocks the last plan took, until its batch reads them.
    taken: Option<(BlockRange, Vec<RecordBatch>)>,
}

#[async_trait::async_trait]
impl ReplayableSource for Received {
    type Range = BlockRange;
    type Position = ();

    async fn plan(&mut self, _time: BatchTime, max_records: Option<u64>) -> Result<BlockRange> {
        let (batches, range) = self.blocks.take(max_records)?;
        self.taken = Some((range, batches));
        Ok(range)
    }

    async fn read(&mut self, range: &BlockRange, _dead: &DeadLetters) -> Result<Vec<RecordBatch>> {
        if let Some((taken, batches)) = self.taken.take() {
            if taken == *range {
                return Ok(batches);
            }
        }
        if range.count == 0 {
            return Ok(Vec::new());
        }
        let log = self.log.as_ref().ok_or_else(|| {
            Error::msg("a batch plan names received blocks, but there is no write-ahead log")
        })?;
        Ok(log
            .read(range.from, range.end() - 1)?
            .into_iter()
            .map(|e| e.batch)
            .collect())
    }

    /// Blocks before the end of a committed batch are never read again.
    async fn commit(&mut self, range: &BlockRange) -> Result<()> {
        if let (Some(log), true) = (&self.log, range.count > 0) {
            log.trim(range.end() - 1)?;
        }
        Ok(())
    }

    fn position(&self) {}

    fn restore(&mut self, _position: ()) -> Result<()> {
        Ok(())
    }
}

impl Pipeline {
    /// Plan batch `t`: each source's range (within its rate) and position, written durably
    /// before anything is read.
    pub(super) async fn plan_batch(
        &mut self,
        t: BatchTime,
        sources: &mut [SourceRun],
        durable: &mut Option<OpenCheckpoint>,
    ) -> Result<Plan> {
        let interval = self.app.batch_interval;
        let mut plan = Plan {
            time: t.millis(),
            sources: BTreeMap::new(),
        };
        for s in sources.iter_mut() {
            let max = s
                .rate
                .current()
                .map(|rate| (rate * interval.as_secs_f64()).max(1.0) as u64);
            let range = s.input.plan(t, max).await?;
            let sp = SourcePlan {
                range,
                position: s.input.position(),
                rate: s.rate.current().map(|r| r as u64),
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
        Ok(plan)
    }

    /// Make each source's input: receivers start their tasks (writing blocks to the write-ahead
    /// log, if any, from where it stands), replayable sources resume from the newest plan, the
    /// origin kept at the first start, or fix that origin now.
    pub(super) async fn start_sources(
        &mut self,
        durable: &Option<OpenCheckpoint>,
        newest: Option<&Plan>,
    ) -> Result<(Vec<SourceRun>, Vec<tokio::task::JoinHandle<()>>)> {
        let mut sources: Vec<SourceRun> = Vec::new();
        let mut receivers = Vec::new();
        for i in 0..self.sources.len() {
            let name = self.sources[i].name.clone();
            let (rate, cap, pid) = self.rate_of(&name);
            let planned = newest.and_then(|p| p.sources.get(&name));
            let runtime = self.sources[i]
                .runtime
                .take()
                .expect("a pipeline runs once");
            let (input, receiver): (Box<dyn AnyReplayable>, _) = match runtime {
                SourceRuntime::Receiver(r) => {
                    let log = durable.as_ref().map(|d| d.logs[&name].clone());
                    let cursor = planned
                        .map(|p| block_range(&p.range).map(|r| r.end()))
                        .transpose()?;
                    let blocks = self.blocks_for(&name, &rate, log.clone(), cursor)?;
                    receivers.push(spawn_receiver(&name, r, blocks.clone()));
                    let input = Box::new(Received {
                        blocks: blocks.clone(),
                        log,
                        taken: None,
                    });
                    (input, Some(blocks))
                }
                SourceRuntime::Replayable(mut r) => {
                    resume(&name, &mut r, durable, planned).await?;
                    (r, None)
                }
            };
            sources.push(SourceRun {
                name,
                input,
                receiver,
                rate,
                cap,
                pid,
            });
        }
        Ok((sources, receivers))
    }

    /// A source's rate limit (its cap: `backpressure.source_max_rate` or `max_rate`), and with
    /// backpressure its estimator.
    fn rate_of(&self, source: &str) -> (RateLimit, Option<f64>, Option<PidEstimator>) {
        let bp = &self.app.backpressure;
        let cap = bp
            .source_max_rate
            .get(source)
            .copied()
            .or(bp.max_rate)
            .map(|r| r as f64);
        let first = if bp.enabled {
            bp.initial_rate.map(|r| r as f64).or(cap)
        } else {
            cap
        };
        let pid = bp
            .enabled
            .then(|| PidEstimator::new(self.app.batch_interval, bp.min_rate as f64));
        (RateLimit::new(first), cap, pid)
    }

    /// A receiver's blocks: in memory, or in its write-ahead log from `cursor` (the end of the
    /// newest plan's range) on.
    fn blocks_for(
        &self,
        source: &str,
        rate: &RateLimit,
        log: Option<Arc<Log>>,
        cursor: Option<u64>,
    ) -> Result<Arc<ReceiverBlocks>> {
        let mut blocks = ReceiverBlocks::new(
            source,
            RECEIVER_CAPACITY,
            self.app.receiver_buffer.as_u64() as usize,
            self.dead.clone(),
            rate.clone(),
        );
        if let Some(log) = log {
            let resume = log_resume(&log);
            blocks = blocks.with_log(log, cursor, resume)?;
        }
        Ok(Arc::new(blocks))
    }
}

/// Run a receiver's task, writing into `blocks`.
fn spawn_receiver(
    name: &str,
    receiver: Box<dyn sluice_core::Receiver>,
    blocks: Arc<ReceiverBlocks>,
) -> tokio::task::JoinHandle<()> {
    let writer: Arc<dyn sluice_core::BlockWriter> = blocks.clone();
    let name = name.to_string();
    tokio::spawn(async move {
        if let Err(e) = receiver.run(writer).await {
            // Fatal for the gateway (e.g. refused credentials): the next batch reports it and
            // the run ends with this error.
            tracing::error!(receiver = %name, error = %e, "receiver stopped with an error");
            blocks.fail(e);
        }
    })
}

/// Where a replayable source goes on: after the newest plan; else from the origin fixed at the
/// first start; else it fixes that origin now, kept in the checkpoint before any batch.
async fn resume(
    name: &str,
    r: &mut Box<dyn AnyReplayable>,
    durable: &Option<OpenCheckpoint>,
    planned: Option<&SourcePlan>,
) -> Result<()> {
    let cannot = |e: Error| {
        Error::msg(format!(
            "source `{name}` cannot resume from the checkpoint: {e}"
        ))
    };
    if let Some(p) = planned {
        return r.restore(&p.position).map_err(cannot);
    }
    let kept: Option<serde_json::Value> = match durable {
        Some(d) => d.store.get_json(&ck::origin_key(name))?,
        None => None,
    };
    if let Some(origin) = kept {
        tracing::info!(source = %name, "continuing from the origin fixed at the first start");
        return r.restore(&origin).map_err(cannot);
    }
    let origin = r.origin().await.map_err(|e| {
        // Connectors name their source in their own errors; others get the name here.
        let text = e.to_string();
        if text.starts_with(&format!("source `{name}`")) {
            e
        } else {
            Error::msg(format!("source `{name}`: {text}"))
        }
    })?;
    if let Some(d) = durable.as_ref().filter(|_| !origin.is_null()) {
        let mut c = Changes::default();
        c.put_json(&ck::origin_key(name), &origin);
        d.store.write(c)?;
    }
    Ok(())
}

/// A graceful stop: the receivers stop reading (within `timeout`) and what they hold is flushed,
/// so the last batch takes everything they received. (It takes the receivers' blocks, not the
/// sources: the run's future must hold no source across an await.)
pub(super) async fn stop_receivers(
    blocks: Vec<Arc<ReceiverBlocks>>,
    receivers: &mut Vec<tokio::task::JoinHandle<()>>,
    timeout: Duration,
) {
    for b in &blocks {
        b.request_stop();
    }
    let all = futures::future::join_all(receivers.drain(..));
    if tokio::time::timeout(timeout, all).await.is_err() {
        tracing::warn!("receivers did not stop within the graceful stop timeout");
    }
    for b in blocks {
        b.flush().await;
    }
}

/// Read each source's planned range (a source the plan does not name: nothing).
pub(super) async fn read_inputs(
    plan: &Plan,
    sources: &mut [SourceRun],
    dead: &DeadLetters,
) -> Result<HashMap<String, Vec<RecordBatch>>> {
    let mut streams = HashMap::new();
    for s in sources.iter_mut() {
        let batches = match plan.sources.get(&s.name) {
            Some(sp) => s.input.read(&sp.range, dead).await?,
            None => Vec::new(),
        };
        streams.insert(s.name.clone(), batches);
    }
    Ok(streams)
}
