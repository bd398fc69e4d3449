//! `mode = "upsert"`: the query returns only the keys the batch changes (Spark's `mapWithState`).
//!
//! The state is a list of parts, each an Arrow batch with its keys in row format and a mask of the
//! rows still live. A batch appends one part (the rows it returned) and clears the older rows of
//! the keys it returned, so it costs what its own rows cost plus one hash probe per live key.
//! Parts are merged when dead rows outnumber live ones. The checkpoint gets only the rows returned
//! since the last one, and the whole state once those outgrow it.

use super::{Shape, StateWrite};
use ahash::RandomState;
use sluice_config::StateEmit;
use sluice_core::arrow::array::{
    new_null_array, Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt32Array,
};
use sluice_core::arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use sluice_core::arrow::row::{RowConverter, Rows};
use std::collections::{HashMap, HashSet};

/// Parts kept before they are merged into one.
const MAX_PARTS: usize = 16;
/// Deltas written before the checkpoint gets the whole state again (which it also does once the
/// deltas hold half as many rows as the whole state: a restart reads at most 1.5 times the state).
const MAX_DELTAS: usize = 64;

struct Part {
    batch: RecordBatch,
    since: Vec<i64>,
    keys: Rows,
    live: Vec<bool>,
    live_count: usize,
}

impl Part {
    fn live_batch(&self) -> Result<RecordBatch, String> {
        if self.live_count == self.live.len() {
            return Ok(self.batch.clone());
        }
        filter_record_batch(&self.batch, &BooleanArray::from(self.live.clone()))
            .map_err(|e| e.to_string())
    }

    fn live_rows(&self) -> impl Iterator<Item = usize> + '_ {
        self.live
            .iter()
            .enumerate()
            .filter_map(|(i, &l)| l.then_some(i))
    }

    fn kill(&mut self, i: usize) {
        if self.live[i] {
            self.live[i] = false;
            self.live_count -= 1;
        }
    }
}

pub(super) struct Upsert {
    conv: RowConverter,
    parts: Vec<Part>,
    /// Rows returned since the last checkpoint (with `__since`), or None: the next checkpoint
    /// writes the whole state.
    delta: Option<Vec<RecordBatch>>,
    /// Rows in the last whole state written, and in the deltas written after it.
    written_full: usize,
    written_delta: usize,
    deltas: usize,
}

impl Upsert {
    pub fn new(shape: &Shape) -> Result<Self, String> {
        Ok(Upsert {
            conv: shape.converter(&shape.key)?,
            parts: Vec::new(),
            delta: None,
            written_full: 0,
            written_delta: 0,
            deltas: 0,
        })
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.live_count).sum()
    }

    pub fn current(&self) -> Vec<RecordBatch> {
        self.parts
            .iter()
            .filter(|p| p.live_count > 0)
            .map(|p| p.live_batch().expect("a mask as long as its batch"))
            .collect()
    }

    /// The whole state with `__since`, as one batch.
    pub fn whole(&self, shape: &Shape) -> Result<RecordBatch, String> {
        let mut batches = Vec::with_capacity(self.parts.len());
        let mut since = Vec::with_capacity(self.len());
        for p in &self.parts {
            batches.push(p.live_batch()?);
            since.extend(p.live_rows().map(|i| p.since[i]));
        }
        let batch = concat_batches(&shape.schema, &batches).map_err(|e| e.to_string())?;
        Ok(shape.with_since(&batch, Int64Array::from(since)))
    }

    fn part(&self, shape: &Shape, batch: RecordBatch, since: Vec<i64>) -> Result<Part, String> {
        let keys = self
            .conv
            .convert_columns(&shape.key_columns(&batch))
            .map_err(|e| e.to_string())?;
        let n = batch.num_rows();
        Ok(Part {
            batch,
            since,
            keys,
            live: vec![true; n],
            live_count: n,
        })
    }

    /// Merge the query's output of batch `t` into the state; returns what the job emits.
    pub fn update(
        &mut self,
        shape: &Shape,
        t: i64,
        batch: RecordBatch,
    ) -> Result<Vec<RecordBatch>, String> {
        let n = batch.num_rows();
        let keys = self
            .conv
            .convert_columns(&shape.key_columns(&batch))
            .map_err(|e| e.to_string())?;
        // The last row of each key wins.
        let mut last: HashMap<&[u8], usize, RandomState> =
            HashMap::with_capacity_and_hasher(n, RandomState::new());
        for i in 0..n {
            last.insert(keys.row(i).data(), i);
        }
        let picked: Vec<usize> = (0..n).filter(|&i| last[keys.row(i).data()] == i).collect();
        if !last.is_empty() {
            for p in &mut self.parts {
                for i in 0..p.live.len() {
                    if p.live[i] && last.contains_key(p.keys.row(i).data()) {
                        p.kill(i);
                    }
                }
            }
        }
        let mut expired = Vec::new();
        if let Some(to) = shape.timeout {
            for p in &mut self.parts {
                let old: Vec<usize> = p.live_rows().filter(|&i| t - p.since[i] >= to).collect();
                if old.is_empty() {
                    continue;
                }
                for &i in &old {
                    p.kill(i);
                }
                let idx = UInt32Array::from(old.iter().map(|&i| i as u32).collect::<Vec<_>>());
                expired.push(take_record_batch(&p.batch, &idx).map_err(|e| e.to_string())?);
            }
        }

        // Each returned row's `__since`: NULL for a row that removes its key.
        let since: Int64Array = picked
            .iter()
            .map(|&i| (!shape.removes(&batch, i)).then_some(t))
            .collect();
        let kept: Vec<u32> = picked
            .iter()
            .zip(since.iter())
            .filter_map(|(&i, s)| s.map(|_| i as u32))
            .collect();
        let added = take_record_batch(&batch, &UInt32Array::from(kept.clone()))
            .map_err(|e| e.to_string())?;
        let mut new_keys = self.conv.empty_rows(kept.len(), 0);
        for &i in &kept {
            new_keys.push(keys.row(i as usize));
        }
        let m = added.num_rows();
        self.parts.push(Part {
            batch: added.clone(),
            since: vec![t; m],
            keys: new_keys,
            live: vec![true; m],
            live_count: m,
        });

        // What the checkpoint must learn: every returned row, and a removal for each expired key.
        let returned = take_record_batch(
            &batch,
            &UInt32Array::from(picked.iter().map(|&i| i as u32).collect::<Vec<_>>()),
        )
        .map_err(|e| e.to_string())?;
        let mut changes = vec![shape.with_since(&returned, since)];
        for e in &expired {
            let none = Int64Array::from(vec![None; e.num_rows()]);
            changes.push(shape.with_since(&removal(shape, e)?, none));
        }
        self.record(changes);
        self.merge_if_sparse(shape)?;

        let mut outs = match shape.emit {
            StateEmit::Updated => vec![shape.mark(added, false, m)?],
            StateEmit::All => {
                let all =
                    concat_batches(&shape.schema, &self.current()).map_err(|e| e.to_string())?;
                let k = all.num_rows();
                vec![shape.mark(all, false, k)?]
            }
        };
        for e in expired {
            let k = e.num_rows();
            outs.push(shape.mark(e, true, k)?);
        }
        Ok(outs.into_iter().filter(|b| b.num_rows() > 0).collect())
    }

    /// Keep `changes` for the next checkpoint, unless they outgrow the state (then it writes the
    /// whole state, and memory stays bounded without a checkpoint).
    fn record(&mut self, changes: Vec<RecordBatch>) {
        let Some(delta) = &mut self.delta else { return };
        delta.extend(changes);
        let rows: usize = delta.iter().map(|b| b.num_rows()).sum();
        if rows > self.len().max(1024) {
            self.delta = None;
        }
    }

    /// Merge all parts into one when dead rows outnumber live ones, or there are too many parts.
    fn merge_if_sparse(&mut self, shape: &Shape) -> Result<(), String> {
        let live = self.len();
        let total: usize = self.parts.iter().map(|p| p.live.len()).sum();
        if self.parts.len() <= MAX_PARTS && total - live <= live.max(1024) {
            return Ok(());
        }
        self.merge(shape)
    }

    /// Merge all parts into one that holds only live rows.
    fn merge(&mut self, shape: &Shape) -> Result<(), String> {
        let live = self.len();
        let mut keys = self.conv.empty_rows(live, 0);
        for p in &self.parts {
            for i in p.live_rows() {
                keys.push(p.keys.row(i));
            }
        }
        let whole = self.whole(shape)?;
        let (batch, since) = shape.split_since(&whole)?;
        self.parts = vec![Part {
            batch,
            since: since.values().to_vec(),
            keys,
            live: vec![true; live],
            live_count: live,
        }];
        Ok(())
    }

    /// What the next commit writes.
    pub fn checkpoint(&mut self, shape: &Shape) -> StateWrite {
        let rows = self
            .delta
            .as_ref()
            .map(|d| d.iter().map(|b| b.num_rows()).sum::<usize>());
        let full = match rows {
            None => true,
            Some(r) => {
                self.deltas >= MAX_DELTAS
                    || self.written_delta + r > (self.written_full / 2).max(1024)
            }
        };
        let out = if full {
            let whole = self.whole(shape).expect("live parts concatenate");
            self.written_full = whole.num_rows();
            self.written_delta = 0;
            self.deltas = 0;
            StateWrite::Full(whole)
        } else {
            let d = self.delta.take().unwrap_or_default();
            let batch =
                concat_batches(&shape.since_schema, &d).expect("deltas share the state's schema");
            self.written_delta += batch.num_rows();
            self.deltas += 1;
            StateWrite::Delta(batch)
        };
        self.delta = Some(Vec::new());
        out
    }

    /// Rebuild from a whole state and the deltas after it (each with `__since`), in order.
    pub fn restore(shape: &Shape, written: Vec<RecordBatch>) -> Result<Self, String> {
        let mut u = Upsert::new(shape)?;
        // Each file's keys are converted on a thread of its own.
        let built = std::thread::scope(|sc| {
            let u = &u;
            let handles: Vec<_> = written
                .iter()
                .map(|w| {
                    sc.spawn(move || {
                        let (batch, since) = shape.split_since(w)?;
                        let part = u.part(shape, batch, since.values().to_vec())?;
                        Ok::<_, String>((part, since.nulls().cloned()))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a state part converts without panicking"))
                .collect::<Result<Vec<_>, String>>()
        })?;
        let mut removals = Vec::with_capacity(built.len());
        for (part, nulls) in built {
            u.parts.push(part);
            removals.push(nulls);
        }
        // Newest first: a key's newest row wins, and a removal row removes it.
        let mut dead: Vec<Vec<usize>> = vec![Vec::new(); u.parts.len()];
        {
            let mut seen: HashSet<&[u8], RandomState> = HashSet::default();
            for (pi, p) in u.parts.iter().enumerate().rev() {
                let is_base = pi == 0;
                for i in (0..p.live.len()).rev() {
                    let k = p.keys.row(i).data();
                    let shadowed = if is_base {
                        seen.contains(k)
                    } else {
                        !seen.insert(k)
                    };
                    if shadowed || removals[pi].as_ref().is_some_and(|n| n.is_null(i)) {
                        dead[pi].push(i);
                    }
                }
            }
        }
        for (p, dead) in u.parts.iter_mut().zip(dead) {
            for i in dead {
                p.kill(i);
            }
        }
        u.written_full = written.first().map_or(0, |b| b.num_rows());
        u.written_delta = written.iter().skip(1).map(|b| b.num_rows()).sum();
        u.deltas = written.len().saturating_sub(1);
        u.delta = (!written.is_empty()).then(Vec::new);
        if u.parts.len() > 1 {
            u.merge(shape)?;
        }
        Ok(u)
    }
}

/// Rows that remove the keys of `rows`: the key columns kept, every other column NULL.
fn removal(shape: &Shape, rows: &RecordBatch) -> Result<RecordBatch, String> {
    let n = rows.num_rows();
    let cols: Vec<ArrayRef> = (0..shape.schema.fields().len())
        .map(|c| {
            if shape.key.contains(&c) {
                rows.column(c).clone()
            } else {
                new_null_array(shape.schema.field(c).data_type(), n)
            }
        })
        .collect();
    RecordBatch::try_new(shape.schema.clone(), cols).map_err(|e| e.to_string())
}
