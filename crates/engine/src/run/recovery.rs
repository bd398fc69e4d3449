//! Recovery: opening the checkpoint directory (its store and write-ahead logs), putting back
//! the jobs' state, windows and event-time buffers, and naming a batch that fails at every restart.

use super::*;

/// The checkpoint directory, open.
pub(super) struct OpenCheckpoint {
    pub(super) dir: PathBuf,
    pub(super) store: Store,
    /// Each stateful job's committed state files.
    pub(super) state_files: HashMap<String, ck::StateFiles>,
    pub(super) logs: HashMap<String, Arc<Log>>,
    pub(super) done: VecDeque<i64>,
    pub(super) plans: VecDeque<i64>,
    pub(super) fingerprint_written: bool,
}

impl Pipeline {
    /// The batches planned before a restart and never committed (re-run first, in order), and the
    /// newest plan (where the sources resume); the jobs' state is put back on the way.
    pub(super) fn unfinished_plans(
        &mut self,
        durable: &mut Option<OpenCheckpoint>,
    ) -> Result<(Vec<Plan>, Option<Plan>)> {
        let plans: Vec<Plan> = match durable {
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
        let last_done: Option<Done> = match durable {
            Some(d) => d.store.get_json("last")?,
            None => None,
        };
        let pending: Vec<Plan> = plans
            .iter()
            .filter(|p| last_done.as_ref().is_none_or(|d| p.time > d.time))
            .cloned()
            .collect();
        let newest = plans.last().cloned();
        if let (Some(d), Some(last)) = (durable.as_mut(), &last_done) {
            self.restore_jobs(d)?;
            tracing::info!(
                last_committed = last.time,
                at = %BatchTime(last.time).to_local_string(),
                unfinished = pending.len(),
                "resuming from the checkpoint"
            );
        }
        Ok((pending, newest))
    }

    pub(super) fn checkpoint_path(&self) -> Option<PathBuf> {
        self.app
            .checkpoint_dir
            .as_ref()
            .map(|d| self.base_dir.join(d))
    }

    pub(super) fn open_checkpoint(&self) -> Result<Option<OpenCheckpoint>> {
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
    pub(super) fn restore_jobs(&mut self, d: &mut OpenCheckpoint) -> Result<()> {
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
}

/// A batch that failed: named with its time, and how to get past it if it fails the same way at
/// every restart (its plan is re-run with the same input each time).
pub(super) fn poisoned(e: Error, t: BatchTime, checkpoint: Option<PathBuf>) -> Error {
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
