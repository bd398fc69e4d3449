//! One job at run time: its query, and the windows or state around it.

use crate::event_time::EventTime;
use crate::state::KeyedState;
use sluice_config::LateRecords;
use sluice_core::arrow::datatypes::SchemaRef;
use sluice_core::arrow::record_batch::RecordBatch;
use sluice_core::BatchTime;
use sluice_sql::JobQuery;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// A source or another job: new data every batch.
    Stream,
    /// A reference table.
    Table,
    /// The job's own state.
    State,
}

/// Processing-time window: the last `length` of each streaming input, evaluated every `slide`.
pub struct ProcWindow {
    pub length: Duration,
    pub slide: Duration,
    history: HashMap<String, VecDeque<(BatchTime, Vec<RecordBatch>)>>,
    /// (input, batch time) of what the last push dropped, for the checkpoint.
    pub evicted: Vec<(String, BatchTime)>,
}

impl ProcWindow {
    pub fn new(length: Duration, slide: Duration) -> Self {
        ProcWindow {
            length,
            slide,
            history: HashMap::new(),
            evicted: Vec::new(),
        }
    }

    fn push(&mut self, t: BatchTime, table: &str, batches: Vec<RecordBatch>) -> Vec<RecordBatch> {
        let h = self.history.entry(table.to_string()).or_default();
        h.push_back((t, batches));
        let oldest = t.minus(self.length);
        while h.front().is_some_and(|(bt, _)| *bt <= oldest) {
            let (bt, _) = h.pop_front().expect("checked");
            self.evicted.push((table.to_string(), bt));
        }
        h.iter().flat_map(|(_, b)| b.iter().cloned()).collect()
    }
}

impl ProcWindow {
    /// What input `table` added in batch `t`, if it is still in the window.
    pub fn added(&self, table: &str, t: BatchTime) -> Option<&[RecordBatch]> {
        self.history
            .get(table)?
            .iter()
            .find(|(bt, _)| *bt == t)
            .map(|(_, b)| b.as_slice())
    }

    /// Put back one batch's input of a window after a restart (oldest first).
    pub fn restore(&mut self, table: &str, t: BatchTime, batches: Vec<RecordBatch>) {
        self.history
            .entry(table.to_string())
            .or_default()
            .push_back((t, batches));
    }
}

pub struct JobRuntime {
    pub name: String,
    pub query: JobQuery,
    pub sinks: Vec<String>,
    pub inputs: Vec<(String, InputKind)>,
    pub window: Option<ProcWindow>,
    pub event: Option<EventTime>,
    pub late: LateRecords,
    pub state: Option<KeyedState>,
    /// What the job emits (the query's schema, or the state's with `timed_out`).
    pub out_schema: SchemaRef,
}

/// The result of one job in one batch.
pub struct JobOutput {
    /// None when the job did not run in this batch (between window slides, no window closed).
    pub batches: Option<Vec<RecordBatch>>,
    /// Rows later than the watermark.
    pub late: Vec<RecordBatch>,
    /// The watermark they were later than.
    pub watermark: Option<i64>,
    /// Rows dated too far ahead of the batch time (event-time jobs' `max_future`).
    pub future: Vec<RecordBatch>,
}

impl JobRuntime {
    pub async fn run(
        &mut self,
        t: BatchTime,
        streams: &HashMap<String, Vec<RecordBatch>>,
        tables: &HashMap<String, Vec<RecordBatch>>,
    ) -> Result<JobOutput, String> {
        let mut late = Vec::new();
        let mut future = Vec::new();
        let mut watermark = None;
        let mut runs = true;
        for (name, kind) in &self.inputs {
            let data = match kind {
                InputKind::Table => tables.get(name).cloned().unwrap_or_default(),
                InputKind::State => self.state.as_ref().map(|s| s.current()).unwrap_or_default(),
                InputKind::Stream => {
                    let batch = streams.get(name).cloned().unwrap_or_default();
                    if let Some(w) = &mut self.window {
                        w.push(t, name, batch)
                    } else if let Some(e) = self.event.as_mut().filter(|e| e.table == *name) {
                        watermark = e.watermark();
                        let p = e.process(batch, t.millis());
                        late = p.late;
                        future = p.future;
                        match p.closed {
                            Some(rows) => rows,
                            None => {
                                runs = false;
                                Vec::new()
                            }
                        }
                    } else {
                        batch
                    }
                }
            };
            let slot = self.query.slot(name).expect("every input has a slot");
            slot.set(data).map_err(|e| format!("input `{name}`: {e}"))?;
        }
        if let Some(w) = &self.window {
            runs &= t.is_multiple_of(w.slide);
        }
        if !runs {
            return Ok(JobOutput {
                batches: None,
                late,
                watermark,
                future,
            });
        }
        let began = std::time::Instant::now();
        let out = self
            .query
            .run()
            .await
            .map_err(|e| e.strip_backtrace().to_string())?;
        let queried = began.elapsed();
        let out = match &mut self.state {
            Some(s) => s.update(t.millis(), &out)?,
            None => out,
        };
        tracing::debug!(job = %self.name, query_us = queried.as_micros() as u64, state_us = (began.elapsed() - queried).as_micros() as u64, "job ran");
        Ok(JobOutput {
            batches: Some(out),
            late,
            watermark,
            future,
        })
    }
}
