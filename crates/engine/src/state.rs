//! Keyed state (Spark's `updateStateByKey` and `mapWithState`).
//!
//! The job's query reads the previous state as table `state`; its result is the new state. A key
//! whose non-key columns are all NULL is removed. With a `timeout`, a key whose state has not changed
//! for that long is emitted one last time with `timed_out = true` and dropped.

use ahash::RandomState;
use sluice_config::{StateConfig, StateEmit};
use sluice_core::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array,
};
use sluice_core::arrow::compute::{cast, concat_batches, take_record_batch};
use sluice_core::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use sluice_core::arrow::row::{RowConverter, SortField};
use std::collections::HashMap;
use std::sync::Arc;

struct Entry {
    row: Vec<u8>,
    since: i64,
    /// The update that last returned this key.
    seen: u64,
}

pub struct KeyedState {
    schema: SchemaRef,
    key: Vec<usize>,
    timeout: Option<i64>,
    emit: StateEmit,
    current: RecordBatch,
    /// When each row of `current` last changed.
    current_since: Vec<i64>,
    /// key row → its whole row and when it last changed
    rows: HashMap<Vec<u8>, Entry, RandomState>,
    /// Counts updates; an entry not seen in the latest one is dropped.
    generation: u64,
    out_schema: SchemaRef,
}

impl KeyedState {
    pub fn new(cfg: &StateConfig, schema: SchemaRef) -> Self {
        let key = cfg
            .key
            .iter()
            .map(|k| schema.index_of(k).expect("validated key"))
            .collect();
        let out_schema = if cfg.timeout.is_some() {
            let mut f: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            f.push(Field::new("timed_out", DataType::Boolean, false));
            Arc::new(Schema::new(f))
        } else {
            schema.clone()
        };
        KeyedState {
            current: RecordBatch::new_empty(schema.clone()),
            current_since: Vec::new(),
            schema,
            key,
            timeout: cfg.timeout.map(|d| d.as_millis() as i64),
            emit: cfg.emit,
            rows: HashMap::default(),
            generation: 0,
            out_schema,
        }
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// What the job emits: the state's columns, plus `timed_out` when a timeout is set.
    pub fn out_schema(&self) -> SchemaRef {
        self.out_schema.clone()
    }

    pub fn current(&self) -> RecordBatch {
        self.current.clone()
    }

    /// Cast the query's output to the state's schema (column by column, by position).
    fn conform(&self, out: &[RecordBatch]) -> Result<RecordBatch, String> {
        let mut parts = Vec::with_capacity(out.len());
        for b in out {
            if b.num_columns() != self.schema.fields().len() {
                return Err(format!(
                    "the query returns {} column(s) but state.schema has {}",
                    b.num_columns(),
                    self.schema.fields().len()
                ));
            }
            let cols = b
                .columns()
                .iter()
                .zip(self.schema.fields())
                .map(|(c, f)| {
                    cast(c, f.data_type()).map_err(|e| format!("column `{}`: {e}", f.name()))
                })
                .collect::<Result<Vec<ArrayRef>, String>>()?;
            parts.push(RecordBatch::try_new(self.schema.clone(), cols).map_err(|e| e.to_string())?);
        }
        concat_batches(&self.schema, &parts).map_err(|e| e.to_string())
    }

    /// Apply the query's output of batch `t`; returns what the job emits.
    pub fn update(&mut self, t: i64, out: &[RecordBatch]) -> Result<Vec<RecordBatch>, String> {
        let batch = self.conform(out)?;
        let n = batch.num_rows();
        let fields = |idx: &[usize]| {
            idx.iter()
                .map(|&i| SortField::new(self.schema.field(i).data_type().clone()))
                .collect::<Vec<_>>()
        };
        let all: Vec<usize> = (0..self.schema.fields().len()).collect();
        let key_conv = RowConverter::new(fields(&self.key)).map_err(|e| e.to_string())?;
        let row_conv = RowConverter::new(fields(&all)).map_err(|e| e.to_string())?;
        let key_cols: Vec<ArrayRef> = self.key.iter().map(|&i| batch.column(i).clone()).collect();
        let keys = key_conv
            .convert_columns(&key_cols)
            .map_err(|e| e.to_string())?;
        let whole = row_conv
            .convert_columns(batch.columns())
            .map_err(|e| e.to_string())?;
        let value_cols: Vec<usize> = all
            .iter()
            .copied()
            .filter(|i| !self.key.contains(i))
            .collect();

        // The last row of each key that is not removed, in order of first appearance (keys borrow
        // from the converted rows: nothing is copied for keys already in the state).
        let mut last: HashMap<&[u8], (usize, usize), RandomState> =
            HashMap::with_capacity_and_hasher(n, RandomState::new());
        let mut order: Vec<Option<&[u8]>> = Vec::with_capacity(n);
        for i in 0..n {
            let removed =
                !value_cols.is_empty() && value_cols.iter().all(|&c| batch.column(c).is_null(i));
            let k = keys.row(i).data();
            if removed {
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
            if self.timeout.is_some_and(|to| t - since >= to) {
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
        let emit_rows = match self.emit {
            StateEmit::All => keep,
            StateEmit::Updated => changed,
        };
        let mut outs = vec![self.emission(&batch, emit_rows, false)?];
        if !expired.is_empty() {
            outs.push(self.emission(&batch, expired, true)?);
        }
        Ok(outs.into_iter().filter(|b| b.num_rows() > 0).collect())
    }

    /// The key columns' names.
    pub fn key_names(&self) -> Vec<String> {
        self.key
            .iter()
            .map(|&i| self.schema.field(i).name().clone())
            .collect()
    }

    /// The state with a `__since` column (when each key last changed), for the checkpoint.
    pub fn snapshot(&self) -> RecordBatch {
        let mut fields: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("__since", DataType::Int64, false));
        let mut cols = self.current.columns().to_vec();
        cols.push(Arc::new(Int64Array::from(self.current_since.clone())));
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).expect("state snapshot")
    }

    /// Continue from a [`KeyedState::snapshot`].
    pub fn restore(&mut self, snap: &RecordBatch) -> Result<(), String> {
        let n = self.schema.fields().len();
        if snap.num_columns() != n + 1 {
            return Err(format!(
                "the stored state has {} column(s), state.schema has {n}",
                snap.num_columns() - 1
            ));
        }
        let since = snap
            .column(n)
            .as_primitive_opt::<Int64Type>()
            .ok_or("the stored state has no `__since` column")?
            .values()
            .to_vec();
        let batch = RecordBatch::try_new(self.schema.clone(), snap.columns()[..n].to_vec())
            .map_err(|e| format!("the stored state does not match state.schema: {e}"))?;
        let conv = |idx: &[usize]| {
            RowConverter::new(
                idx.iter()
                    .map(|&i| SortField::new(self.schema.field(i).data_type().clone()))
                    .collect(),
            )
            .map_err(|e| e.to_string())
        };
        let all: Vec<usize> = (0..n).collect();
        let key_cols: Vec<ArrayRef> = self.key.iter().map(|&i| batch.column(i).clone()).collect();
        let keys = conv(&self.key)?
            .convert_columns(&key_cols)
            .map_err(|e| e.to_string())?;
        let whole = conv(&all)?
            .convert_columns(batch.columns())
            .map_err(|e| e.to_string())?;
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

    pub fn len(&self) -> usize {
        self.current.num_rows()
    }

    fn emission(
        &self,
        batch: &RecordBatch,
        idx: Vec<u32>,
        timed_out: bool,
    ) -> Result<RecordBatch, String> {
        let n = idx.len();
        let rows = take_record_batch(batch, &UInt32Array::from(idx)).map_err(|e| e.to_string())?;
        if self.timeout.is_none() {
            return Ok(rows);
        }
        let mut cols = rows.columns().to_vec();
        cols.push(Arc::new(BooleanArray::from(vec![timed_out; n])));
        RecordBatch::try_new(self.out_schema.clone(), cols).map_err(|e| e.to_string())
    }
}
