//! `mode = "replace"`: the query's result is the whole new state (Spark's `updateStateByKey`).
//! A batch costs what the whole state costs; "updated" means the row differs from the key's last.

use super::Shape;
use ahash::RandomState;
use sluice_config::StateEmit;
use sluice_core::arrow::array::{Int64Array, RecordBatch, UInt32Array};
use sluice_core::arrow::compute::take_record_batch;
use sluice_core::arrow::row::Rows;
use std::collections::HashMap;

struct Entry {
    row: Vec<u8>,
    since: i64,
    /// The update that last returned this key.
    seen: u64,
}

pub(super) struct Replace {
    current: RecordBatch,
    /// When each row of `current` last changed.
    current_since: Vec<i64>,
    /// key row → its whole row and when it last changed
    rows: HashMap<Vec<u8>, Entry, RandomState>,
    /// Counts updates; an entry not seen in the latest one is dropped.
    generation: u64,
}

impl Replace {
    pub fn new(shape: &Shape) -> Self {
        Replace {
            current: RecordBatch::new_empty(shape.schema.clone()),
            current_since: Vec::new(),
            rows: HashMap::default(),
            generation: 0,
        }
    }

    pub fn current(&self) -> RecordBatch {
        self.current.clone()
    }

    pub fn len(&self) -> usize {
        self.current.num_rows()
    }

    /// Make the query's output of batch `t` the state; returns what the job emits.
    pub fn update(
        &mut self,
        shape: &Shape,
        t: i64,
        batch: RecordBatch,
    ) -> Result<Vec<RecordBatch>, String> {
        let n = batch.num_rows();
        let (keys, whole) = key_and_whole_rows(shape, &batch)?;

        // The last row of each key that is not removed, in order of first appearance (keys borrow
        // from the converted rows: nothing is copied for keys already in the state).
        let mut last: HashMap<&[u8], (usize, usize), RandomState> =
            HashMap::with_capacity_and_hasher(n, RandomState::new());
        let mut order: Vec<Option<&[u8]>> = Vec::with_capacity(n);
        for i in 0..n {
            let k = keys.row(i).data();
            if shape.removes(&batch, i) {
                if let Some((_, at)) = last.remove(k) {
                    order[at] = None;
                }
                continue;
            }
            match last.get_mut(k) {
                Some(e) => e.0 = i,
                None => {
                    last.insert(k, (i, order.len()));
                    order.push(Some(k));
                }
            }
        }
        self.generation += 1;
        let generation = self.generation;
        let (mut keep, mut changed, mut expired) = (Vec::new(), Vec::new(), Vec::new());
        let mut kept_since = Vec::new();
        for k in order.into_iter().flatten() {
            let i = last[k].0;
            let row = whole.row(i).data();
            let (is_changed, since) = match self.rows.get_mut(k) {
                Some(e) => {
                    let changed = e.row != row;
                    if changed {
                        e.row.clear();
                        e.row.extend_from_slice(row);
                        e.since = t;
                    }
                    e.seen = generation;
                    (changed, e.since)
                }
                None => {
                    self.rows.insert(
                        k.to_vec(),
                        Entry {
                            row: row.to_vec(),
                            since: t,
                            seen: generation,
                        },
                    );
                    (true, t)
                }
            };
            if shape.timeout.is_some_and(|to| t - since >= to) {
                expired.push(i as u32);
                self.rows.remove(k);
                continue;
            }
            keep.push(i as u32);
            kept_since.push(since);
            if is_changed {
                changed.push(i as u32);
            }
        }
        // Keys the query no longer returns are gone.
        self.rows.retain(|_, e| e.seen == generation);
        self.current_since = kept_since;
        self.current = take_record_batch(&batch, &UInt32Array::from(keep.clone()))
            .map_err(|e| e.to_string())?;
        let emit_rows = match shape.emit {
            StateEmit::All => keep,
            StateEmit::Updated => changed,
        };
        let mut outs = vec![shape.emission(&batch, emit_rows, false)?];
        if !expired.is_empty() {
            outs.push(shape.emission(&batch, expired, true)?);
        }
        Ok(outs.into_iter().filter(|b| b.num_rows() > 0).collect())
    }

    /// The state with its `__since` column, for the checkpoint.
    pub fn snapshot(&self, shape: &Shape) -> RecordBatch {
        shape.with_since(&self.current, Int64Array::from(self.current_since.clone()))
    }

    /// Continue from a [`Replace::snapshot`].
    pub fn restore(&mut self, shape: &Shape, snap: &RecordBatch) -> Result<(), String> {
        let (batch, since) = shape.split_since(snap)?;
        let since = since.values().to_vec();
        let (keys, whole) = key_and_whole_rows(shape, &batch)?;
        self.rows = (0..batch.num_rows())
            .map(|i| {
                (
                    keys.row(i).as_ref().to_vec(),
                    Entry {
                        row: whole.row(i).as_ref().to_vec(),
                        since: since[i],
                        seen: self.generation,
                    },
                )
            })
            .collect();
        self.current = batch;
        self.current_since = since;
        Ok(())
    }
}

/// The key columns and the whole rows of `batch`, in row format (comparable as bytes).
fn key_and_whole_rows(shape: &Shape, batch: &RecordBatch) -> Result<(Rows, Rows), String> {
    let all: Vec<usize> = (0..shape.schema.fields().len()).collect();
    let keys = shape
        .converter(&shape.key)?
        .convert_columns(&shape.key_columns(batch))
        .map_err(|e| e.to_string())?;
    let whole = shape
        .converter(&all)?
        .convert_columns(batch.columns())
        .map_err(|e| e.to_string())?;
    Ok((keys, whole))
}
