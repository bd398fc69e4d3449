//! The sink: each (job, batch) written under deterministic keys, then recorded in the manifest.

use crate::config::Output;
use crate::encode::{self, Encoder};
use crate::errors;
use crate::manifest::{self, Entry, File, Open, Staged, ROOT};
use crate::store::{Store, Writer};
use async_trait::async_trait;
use sluice_core::arrow::array::RecordBatch;
use sluice_core::arrow::datatypes::SchemaRef;
use sluice_core::{Error, Format, Result, Sink, SinkBatch};
use sluice_formats::partition::Layout;
use std::collections::{BTreeMap, HashMap};

pub struct ObjectStoreSink {
    /// The component's name, for dead letters.
    pub(crate) name: String,
    pub(crate) cfg: Output,
    /// `cfg.format`, or the sink type's default.
    pub(crate) format: Format,
    pub(crate) store: Store,
    /// Where the files go, for messages (never with credentials).
    pub(crate) endpoint: String,
    pub(crate) layout: Layout,
    /// Each job's newest entry written by this run.
    pub(crate) last: HashMap<String, Entry>,
    /// Each job's output schema, as its batches arrive (what `close` encodes open files with).
    pub(crate) schemas: HashMap<String, SchemaRef>,
}

impl ObjectStoreSink {
    fn rolling(&self) -> bool {
        self.cfg.max_file_size.is_some() || self.cfg.max_file_age.is_some()
    }

    /// `key_prefix` for a batch time, then the partition folder, then the name.
    fn data_key(&self, job: &str, batch_time: i64, folder: &str) -> String {
        let mut key = String::new();
        if let Some(p) = &self.cfg.key_prefix {
            let when = chrono::DateTime::from_timestamp_millis(batch_time).unwrap_or_default();
            key.push_str(
                when.format(&p.replace("{job}", job))
                    .to_string()
                    .trim_matches('/'),
            );
            key.push('/');
        }
        if !folder.is_empty() {
            key.push_str(folder);
            key.push('/');
        }
        let ext = encode::extension(self.format, self.cfg.compression);
        let stem = self.cfg.prefix.as_deref().unwrap_or(job);
        key.push_str(&format!("{stem}-{batch_time}.{ext}"));
        key
    }

    fn encoder(&self, schema: &SchemaRef, key: &str) -> Result<Encoder> {
        Encoder::new(
            self.format,
            self.cfg.compression,
            self.cfg.row_group_rows,
            schema,
            key,
        )
    }

    /// A new data object at `key`, written while it is encoded.
    async fn object(&self, key: &str, encoder: Encoder) -> Result<ObjectWriter> {
        Ok(ObjectWriter {
            w: self.store.writer(key).await?,
            encoder,
            bytes: 0,
        })
    }

    /// Writes one partition's rows of one batch as a data object.
    async fn write_file(
        &self,
        key: String,
        schema: &SchemaRef,
        rows: &[RecordBatch],
        batch_time: i64,
    ) -> Result<File> {
        let o = self.object(&key, self.encoder(schema, &key)?).await?;
        let (rows, bytes) = o.write_all(rows, schema).await?;
        Ok(File {
            key,
            rows,
            bytes,
            first_batch: batch_time,
            last_batch: batch_time,
        })
    }

    /// Joins a file's staged pieces into its data object, one piece in memory at a time.
    async fn roll(
        &self,
        job: &str,
        folder: &str,
        open: &Open,
        schema: &SchemaRef,
        batch_time: i64,
    ) -> Result<File> {
        let key = self.data_key(job, open.first_batch, folder);
        let mut o = self.object(&key, self.encoder(schema, &key)?).await?;
        for piece in &open.pieces {
            if let Err(e) = self.copy_staged(&piece.key, &mut o).await {
                o.abort().await;
                return Err(e);
            }
        }
        let (rows, bytes) = o.finish(schema).await?;
        Ok(File {
            key,
            rows,
            bytes,
            first_batch: open.first_batch,
            last_batch: batch_time,
        })
    }

    /// Streams a staged piece into `o`: one IPC message (at most [`SLICE_BYTES`] of rows) in memory.
    async fn copy_staged(&self, key: &str, o: &mut ObjectWriter) -> Result<()> {
        use futures::TryStreamExt;
        let mut chunks = self.store.chunks(key, SLICE_BYTES).await?;
        let mut decoder = sluice_core::arrow::ipc::reader::StreamDecoder::new();
        while let Some(chunk) = chunks.try_next().await? {
            let mut buf = sluice_core::arrow::buffer::Buffer::from(chunk);
            while !buf.is_empty() {
                if let Some(batch) = decoder.decode(&mut buf)? {
                    o.write(std::slice::from_ref(&batch)).await?;
                }
            }
        }
        decoder.finish()?;
        Ok(())
    }

    /// The job's entry before `batch_time`: this run's last one, or the manifest's.
    async fn previous(&mut self, job: &str, batch_time: i64) -> Result<Option<Entry>> {
        if let Some(e) = self.last.get(job) {
            if e.batch_time < batch_time {
                return Ok(Some(e.clone()));
            }
        }
        manifest::before(&self.store, job, batch_time).await
    }

    /// Deletes staged pieces that a committed entry rolled into its files.
    async fn delete_rolled(&self, entry: &Entry) -> Result<()> {
        if !entry.rolled.is_empty() {
            self.store.delete(&entry.rolled).await?;
        }
        Ok(())
    }

    async fn write_batch(&mut self, batch: SinkBatch<'_>) -> Result<()> {
        let t = batch.time.millis();
        let job = batch.job.to_string();
        let rows = batch.num_rows() as u64;
        let rolling = self.rolling();
        if !rolling && rows == 0 && !self.cfg.write_empty {
            return Ok(());
        }
        let previous = self.previous(&job, t).await?;
        if let Some(p) = &previous {
            // `t` being written means `p` is committed: nothing re-runs it.
            self.delete_rolled(p).await?;
        }
        let split = self
            .layout
            .split(&batch.schema, batch.batches, t)
            .map_err(|e| Error::msg(e.to_string()))?;
        batch
            .dead
            .extend(split.dead_letters(&format!("sink `{}` (job `{job}`)", self.name)));
        let rows = rows - split.rejected_rows() as u64;
        let parts = split.parts;
        let mut entry = Entry {
            job: job.clone(),
            batch_time: t,
            rows,
            previous: previous.as_ref().map(|p| p.batch_time),
            ..Default::default()
        };
        if !rolling {
            for (folder, part) in &parts {
                let key = self.data_key(&job, t, folder);
                entry
                    .files
                    .push(self.write_file(key, &batch.schema, part, t).await?);
            }
        } else {
            let mut open = previous.map(|p| p.open).unwrap_or_default();
            for (n, (folder, part)) in parts.iter().enumerate() {
                let n_rows: usize = part.iter().map(|b| b.num_rows()).sum();
                if n_rows == 0 {
                    continue;
                }
                let key = format!("{ROOT}/staging/{job}/{t}/{n}.arrow");
                let o = self.object(&key, Encoder::staging(&batch.schema)?).await?;
                let (_, bytes) = o.write_all(part, &batch.schema).await?;
                open.entry(folder.clone())
                    .or_insert_with(|| Open {
                        first_batch: t,
                        pieces: Vec::new(),
                    })
                    .pieces
                    .push(Staged {
                        batch: t,
                        key,
                        rows: n_rows as u64,
                        bytes,
                    });
            }
            let due: Vec<String> = open
                .iter()
                .filter(|(_, o)| self.due(o, t))
                .map(|(f, _)| f.clone())
                .collect();
            if due.is_empty() && rows == 0 {
                // Nothing changed: no entry.
                return Ok(());
            }
            for folder in due {
                let o = open.remove(&folder).expect("due folders are open");
                entry
                    .files
                    .push(self.roll(&job, &folder, &o, &batch.schema, t).await?);
                entry.rolled.extend(o.pieces.into_iter().map(|p| p.key));
            }
            entry.open = open;
        }
        manifest::write(&self.store, &entry).await?;
        if batch.rerun {
            tracing::info!(job = %job, batch = t, files = entry.files.len(), "re-run batch rewrote its objects");
        }
        self.schemas.insert(job.clone(), batch.schema.clone());
        self.last.insert(job, entry);
        Ok(())
    }

    fn due(&self, open: &Open, t: i64) -> bool {
        self.cfg
            .max_file_size
            .is_some_and(|max| open.bytes() >= max.as_u64())
            || self
                .cfg
                .max_file_age
                .is_some_and(|age| t - open.first_batch >= age.as_millis() as i64)
    }

    fn context(&self, e: Error) -> Error {
        Error::msg(format!("{}: {e}", self.endpoint))
    }
}

#[async_trait]
impl Sink for ObjectStoreSink {
    async fn open(&mut self) -> Result<()> {
        if let Store::Local { root } = &self.store {
            crate::legacy::upgrade(&self.store, root)
                .await
                .map_err(|e| self.context(e))?;
        }
        match self.store.check(&format!("{ROOT}/")).await {
            Ok(()) => Ok(()),
            Err(e)
                if e.kind() == opendal::ErrorKind::NotFound
                    && !format!("{e:?}").contains("NoSuchBucket") =>
            {
                Ok(())
            }
            Err(e) => Err(self.context(errors::io(e))),
        }
    }

    async fn write(&mut self, batch: SinkBatch<'_>) -> Result<()> {
        self.write_batch(batch).await.map_err(|e| self.context(e))
    }

    fn idempotent(&self) -> bool {
        true
    }

    fn fixed_name_option(&self) -> Option<&'static str> {
        self.cfg.prefix.as_ref().map(|_| "prefix")
    }

    /// Rolls the files still open, so a stopped gateway leaves every committed row in a data
    /// object: their entry is the job's last one, rewritten with the files added.
    async fn close(&mut self) -> Result<()> {
        let jobs: Vec<String> = self.last.keys().cloned().collect();
        for job in jobs {
            let mut entry = self.last[&job].clone();
            let open: BTreeMap<String, Open> = std::mem::take(&mut entry.open);
            let schema = self.schemas[&job].clone();
            for (folder, o) in open {
                let f = self
                    .roll(&job, &folder, &o, &schema, entry.batch_time)
                    .await
                    .map_err(|e| self.context(e))?;
                entry.files.push(f);
                entry.rolled.extend(o.pieces.into_iter().map(|p| p.key));
            }
            if entry != self.last[&job] {
                manifest::write(&self.store, &entry)
                    .await
                    .map_err(|e| self.context(e))?;
            }
            // The last batch is committed: what it rolled can go.
            self.delete_rolled(&entry)
                .await
                .map_err(|e| self.context(e))?;
            self.last.insert(job, entry);
        }
        Ok(())
    }
}

/// Rows are encoded (and staged) in slices of about this much Arrow data, so an encoder's output
/// and a staged piece's IPC messages stay small whatever the size of a batch.
const SLICE_BYTES: usize = 4 << 20;

/// `batch` as zero-copy slices of about [`SLICE_BYTES`] each.
fn slices(batch: &RecordBatch) -> impl Iterator<Item = RecordBatch> + '_ {
    let rows = batch.num_rows();
    let bytes = batch.get_array_memory_size().max(1);
    let per = (rows * SLICE_BYTES / bytes).clamp(1, rows.max(1));
    (0..rows)
        .step_by(per)
        .map(move |at| batch.slice(at, per.min(rows - at)))
}

/// One data object being uploaded while it is encoded; aborted (its parts discarded) on error.
struct ObjectWriter {
    w: Writer,
    encoder: Encoder,
    bytes: u64,
}

impl ObjectWriter {
    async fn write(&mut self, batches: &[RecordBatch]) -> Result<()> {
        let result = async {
            for b in batches.iter().flat_map(slices) {
                self.encoder.write(&b)?;
                let out = self.encoder.take();
                if !out.is_empty() {
                    self.bytes += out.len() as u64;
                    self.w.write(out).await?;
                }
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            self.abort().await;
        }
        result
    }

    /// Ends the object; returns (rows, bytes).
    async fn finish(self, schema: &SchemaRef) -> Result<(u64, u64)> {
        let ObjectWriter {
            mut w,
            encoder,
            mut bytes,
        } = self;
        let rows = encoder.rows();
        let result = async {
            let out = encoder.finish(schema)?;
            bytes += out.len() as u64;
            w.write(out).await?;
            w.close().await?;
            Ok((rows, bytes))
        }
        .await;
        if result.is_err() {
            w.abort().await;
        }
        result
    }

    async fn write_all(
        mut self,
        batches: &[RecordBatch],
        schema: &SchemaRef,
    ) -> Result<(u64, u64)> {
        self.write(batches).await?;
        self.finish(schema).await
    }

    async fn abort(&mut self) {
        self.w.abort().await;
    }
}
