//! Committing a batch: everything a restart needs to continue after it, in one atomic write.

use super::*;

impl Pipeline {
    /// Record batch `t` as done, with everything a restart needs to continue after it, in one write.
    pub(super) fn commit(
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
}
