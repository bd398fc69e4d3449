//! Keyed state (Spark's `updateStateByKey` and `mapWithState`).
//!
//! The job's query reads the previous state as table `state`. With `mode = "replace"` its result is
//! the new state; with `mode = "upsert"` its result holds only the keys the batch changes and is
//! merged into the state. Either way a key whose non-key columns are all NULL is removed, and with
//! a `timeout` a key whose state has not changed for that long is emitted one last time with
//! `timed_out = true` and dropped.
//!
//! For the checkpoint the state hands out either its whole content or, in upsert mode, only the
//! rows changed since the last checkpoint ([`StateWrite`]); a restart rebuilds it from the last
//! whole content and the changes after it, in order.

mod replace;
mod upsert;

use sluice_config::{StateConfig, StateEmit, StateMode};
use sluice_core::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array,
};
use sluice_core::arrow::compute::{cast, concat_batches, take_record_batch};
use sluice_core::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use sluice_core::arrow::row::{RowConverter, SortField};
use std::sync::Arc;

/// What a commit writes for a job's state; both carry a `__since` column (when each row last
/// changed).
pub enum StateWrite {
    /// The whole state: it replaces everything written before.
    Full(RecordBatch),
    /// The rows returned since the last write, in order; a row whose `__since` is NULL removes its
    /// key.
    Delta(RecordBatch),
}

/// What both modes share: the state's schema, its key and how it emits.
pub(crate) struct Shape {
    schema: SchemaRef,
    key: Vec<usize>,
    /// The non-key columns.
    values: Vec<usize>,
    timeout: Option<i64>,
    emit: StateEmit,
    out_schema: SchemaRef,
    /// The schema of a [`StateWrite`]: the state's columns and `__since`.
    since_schema: SchemaRef,
}

impl Shape {
    fn new(cfg: &StateConfig, schema: SchemaRef) -> Self {
        let key: Vec<usize> = cfg
            .key
            .iter()
            .map(|k| schema.index_of(k).expect("validated key"))
            .collect();
        let values = (0..schema.fields().len())
            .filter(|i| !key.contains(i))
            .collect();
        let with = |name: &str, t: DataType, nullable: bool| {
            let mut f: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            f.push(Field::new(name, t, nullable));
            Arc::new(Schema::new(f))
        };
        let out_schema = if cfg.timeout.is_some() {
            with("timed_out", DataType::Boolean, false)
        } else {
            schema.clone()
        };
        Shape {
            since_schema: with("__since", DataType::Int64, true),
            key,
            values,
            timeout: cfg.timeout.map(|d| d.as_millis() as i64),
            emit: cfg.emit,
            out_schema,
            schema,
        }
    }

    fn converter(&self, idx: &[usize]) -> Result<RowConverter, String> {
        RowConverter::new(
            idx.iter()
                .map(|&i| SortField::new(self.schema.field(i).data_type().clone()))
                .collect(),
        )
        .map_err(|e| e.to_string())
    }

    fn key_columns(&self, batch: &RecordBatch) -> Vec<ArrayRef> {
        self.key.iter().map(|&i| batch.column(i).clone()).collect()
    }

    /// Whether row `i` removes its key: all its non-key columns are NULL.
    fn removes(&self, batch: &RecordBatch, i: usize) -> bool {
        !self.values.is_empty() && self.values.iter().all(|&c| batch.column(c).is_null(i))
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

    /// Rows `idx` of `batch` as the job emits them (with `timed_out` when a timeout is set).
    fn emission(
        &self,
        batch: &RecordBatch,
        idx: Vec<u32>,
        timed_out: bool,
    ) -> Result<RecordBatch, String> {
        let n = idx.len();
        let rows = take_record_batch(batch, &UInt32Array::from(idx)).map_err(|e| e.to_string())?;
        self.mark(rows, timed_out, n)
    }

    fn mark(&self, rows: RecordBatch, timed_out: bool, n: usize) -> Result<RecordBatch, String> {
        if self.timeout.is_none() {
            return Ok(rows);
        }
        let mut cols = rows.columns().to_vec();
        cols.push(Arc::new(BooleanArray::from(vec![timed_out; n])));
        RecordBatch::try_new(self.out_schema.clone(), cols).map_err(|e| e.to_string())
    }

    /// `batch` with its `__since` column (NULL: the row removes its key).
    fn with_since(&self, batch: &RecordBatch, since: Int64Array) -> RecordBatch {
        let mut cols = batch.columns().to_vec();
        cols.push(Arc::new(since));
        RecordBatch::try_new(self.since_schema.clone(), cols).expect("state columns and __since")
    }

    /// Split a written part into the state's columns and `__since`.
    fn split_since(&self, part: &RecordBatch) -> Result<(RecordBatch, Int64Array), String> {
        let n = self.schema.fields().len();
        if part.num_columns() != n + 1 {
            return Err(format!(
                "the stored state has {} column(s), state.schema has {n}",
                part.num_columns().saturating_sub(1)
            ));
        }
        let since = part
            .column(n)
            .as_primitive_opt::<Int64Type>()
            .ok_or("the stored state has no `__since` column")?
            .clone();
        let batch = RecordBatch::try_new(self.schema.clone(), part.columns()[..n].to_vec())
            .map_err(|e| format!("the stored state does not match state.schema: {e}"))?;
        Ok((batch, since))
    }
}

enum Mode {
    Replace(replace::Replace),
    Upsert(upsert::Upsert),
}

pub struct KeyedState {
    shape: Shape,
    mode: Mode,
}

impl KeyedState {
    pub fn new(cfg: &StateConfig, schema: SchemaRef) -> Self {
        let shape = Shape::new(cfg, schema);
        let mode = match cfg.mode {
            StateMode::Replace => Mode::Replace(replace::Replace::new(&shape)),
            StateMode::Upsert => Mode::Upsert(
                upsert::Upsert::new(&shape).expect("key columns of a validated schema convert"),
            ),
        };
        KeyedState { shape, mode }
    }

    pub fn schema(&self) -> SchemaRef {
        self.shape.schema.clone()
    }

    /// What the job emits: the state's columns, plus `timed_out` when a timeout is set.
    pub fn out_schema(&self) -> SchemaRef {
        self.shape.out_schema.clone()
    }

    /// The key columns' names.
    pub fn key_names(&self) -> Vec<String> {
        self.shape
            .key
            .iter()
            .map(|&i| self.shape.schema.field(i).name().clone())
            .collect()
    }

    /// The state as the query reads it (table `state`).
    pub fn current(&self) -> Vec<RecordBatch> {
        match &self.mode {
            Mode::Replace(r) => vec![r.current()],
            Mode::Upsert(u) => u.current(),
        }
    }

    pub fn len(&self) -> usize {
        match &self.mode {
            Mode::Replace(r) => r.len(),
            Mode::Upsert(u) => u.len(),
        }
    }

    /// Apply the query's output of batch `t`; returns what the job emits.
    pub fn update(&mut self, t: i64, out: &[RecordBatch]) -> Result<Vec<RecordBatch>, String> {
        let batch = self.shape.conform(out)?;
        match &mut self.mode {
            Mode::Replace(r) => r.update(&self.shape, t, batch),
            Mode::Upsert(u) => u.update(&self.shape, t, batch),
        }
    }

    /// What the next commit writes, and forget the changes it holds.
    pub fn checkpoint(&mut self) -> StateWrite {
        match &mut self.mode {
            Mode::Replace(r) => StateWrite::Full(r.snapshot(&self.shape)),
            Mode::Upsert(u) => u.checkpoint(&self.shape),
        }
    }

    /// Continue from what commits wrote: a [`StateWrite::Full`] and the deltas after it, in order.
    pub fn restore(&mut self, parts: Vec<RecordBatch>) -> Result<(), String> {
        let merged = upsert::Upsert::restore(&self.shape, parts)?;
        match &mut self.mode {
            Mode::Replace(r) => {
                let whole = merged.whole(&self.shape)?;
                r.restore(&self.shape, &whole)
            }
            Mode::Upsert(u) => {
                *u = merged;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::arrow::array::StringArray;
    use std::collections::BTreeMap;

    fn state(mode: &str) -> KeyedState {
        let cfg: StateConfig = serde_json::from_value(serde_json::json!({
            "key": ["k"], "schema": "k string, v bigint", "mode": mode
        }))
        .unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
        ]));
        KeyedState::new(&cfg, schema)
    }

    fn rows(s: &KeyedState) -> BTreeMap<String, i64> {
        let mut m = BTreeMap::new();
        for b in s.current() {
            let k = b.column(0).as_string::<i32>();
            let v = b.column(1).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                assert!(
                    m.insert(k.value(i).to_string(), v.value(i)).is_none(),
                    "a key twice in the state"
                );
            }
        }
        m
    }

    /// Random upserts and removals against a map: the state, and a state rebuilt from what the
    /// checkpoints wrote (whole state, then deltas), always equal the map.
    #[test]
    fn upserts_and_restores_match_a_map() {
        for mode in ["upsert", "replace"] {
            let mut s = state(mode);
            let mut model: BTreeMap<String, i64> = BTreeMap::new();
            let mut written: Vec<RecordBatch> = Vec::new();
            let mut rng = 42u64;
            let mut next = || {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                rng >> 33
            };
            let (mut fulls, mut deltas) = (0, 0);
            for t in 0..200i64 {
                let n = (next() % 300) as usize;
                let mut ks = Vec::new();
                let mut vs = Vec::new();
                for _ in 0..n {
                    let k = format!("k{}", next() % 2000);
                    let v = (next() % 10 != 0).then(|| t * 1000 + (next() % 1000) as i64);
                    ks.push(k);
                    vs.push(v);
                }
                let out = if mode == "upsert" {
                    for (k, v) in ks.iter().zip(&vs) {
                        match v {
                            Some(v) => model.insert(k.clone(), *v),
                            None => model.remove(k),
                        };
                    }
                    (ks, vs)
                } else {
                    // Replace mode gets the whole new state.
                    for (k, v) in ks.iter().zip(&vs) {
                        match v {
                            Some(v) => model.insert(k.clone(), *v),
                            None => model.remove(k),
                        };
                    }
                    (
                        model.keys().cloned().collect(),
                        model.values().map(|&v| Some(v)).collect(),
                    )
                };
                let batch = RecordBatch::try_new(
                    s.schema(),
                    vec![
                        Arc::new(StringArray::from(out.0)),
                        Arc::new(Int64Array::from(out.1)),
                    ],
                )
                .unwrap();
                s.update(t, &[batch]).unwrap();
                assert_eq!(rows(&s), model, "{mode}, batch {t}");
                match s.checkpoint() {
                    StateWrite::Full(b) => {
                        fulls += 1;
                        written = vec![b];
                    }
                    StateWrite::Delta(b) => {
                        deltas += 1;
                        written.push(b);
                    }
                }
                if t % 7 == 3 {
                    let mut r = state(mode);
                    r.restore(written.clone()).unwrap();
                    assert_eq!(rows(&r), model, "{mode}, restored at batch {t}");
                    s = r;
                }
            }
            if mode == "upsert" {
                assert!(fulls > 1 && deltas > 10, "fulls {fulls}, deltas {deltas}");
            }
        }
    }
}
