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

pub(super) fn block_range(v: &serde_json::Value) -> Result<BlockRange> {
    serde_json::from_value(v.clone())
        .map_err(|e| Error::msg(format!("bad block range {v} in a batch plan: {e}")))
}

/// The position stored with a log's newest block.
pub(super) fn log_resume(log: &Log) -> Option<serde_json::Value> {
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
    /// Make each source's input: receivers start their tasks (writing blocks to the write-ahead
    /// log, if any, from where it stands), replayable sources resume from the newest plan, the
    /// origin kept at the first start, or fix that origin now.
    pub(super) async fn start_sources(
        &mut self,
        durable: &Option<OpenCheckpoint>,
        newest: Option<&Plan>,
    ) -> Result<(Vec<SourceRun>, Vec<tokio::task::JoinHandle<()>>)> {
        let interval = self.app.batch_interval;
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
            let planned = newest.and_then(|p| p.sources.get(&s.name));
            let (input, receiver): (Box<dyn AnyReplayable>, _) = match s
                .runtime
                .take()
                .expect("a pipeline runs once")
            {
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
                    let log = durable.as_ref().map(|d| d.logs[&s.name].clone());
                    let input = Box::new(Received {
                        blocks: blocks.clone(),
                        log,
                        taken: None,
                    });
                    (input, Some(blocks))
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
                    (r, None)
                }
            };
            sources.push(SourceRun {
                name: s.name.clone(),
                input,
                receiver,
                rate,
                cap,
                pid,
            });
        }

        Ok((sources, receivers))
    }
}
