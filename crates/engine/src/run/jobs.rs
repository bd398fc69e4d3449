//! Running a batch's jobs in dependency order, with their windows, event time and state, and
//! handing each job's output to its sinks.

use super::*;

impl Pipeline {
    /// Run every job on this batch's streams and write their sinks. Returns which jobs ran.
    pub(super) async fn run_jobs(
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

pub(super) fn future_letters(job: &str, t: BatchTime, rows: &[RecordBatch]) -> Vec<DeadLetter> {
    let reason = format!(
        "future: event time more than max_future after the batch time ({} ms), or out of range",
        t.millis()
    );
    sluice_formats::dead_rows(job, &reason, rows)
}

pub(super) fn late_letters(job: &str, watermark: i64, late: &[RecordBatch]) -> Vec<DeadLetter> {
    let reason = format!("late: event time before the watermark ({watermark} ms)");
    sluice_formats::dead_rows(job, &reason, late)
}
