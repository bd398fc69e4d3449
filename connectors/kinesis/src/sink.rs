//! The `kinesis` sink: each output row becomes one Kinesis record, sent with PutRecords in calls
//! of at most 500 records and 5 MiB. Kinesis answers per entry; only the entries it refused
//! (throttling, an internal error) are sent again, with backoff. At-least-once: a batch re-run after
//! a crash is sent again.

use crate::client::{self, Trouble};
use crate::config::{Aws, KinesisSinkConfig};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use aws_sdk_kinesis::Client;
use backon::BackoffBuilder;
use md5::{Digest, Md5};
use sluice_core::options::Joined;
use sluice_core::{
    BuildContext, Component, ConfigError, Error, Format, Result, Sink, SinkBatch, SinkConnector,
};
use sluice_formats::template::Template;
use std::time::Duration;

/// PutRecords' limits: records per call, bytes per call, bytes per record (data and key).
const MAX_RECORDS: usize = 500;
const MAX_CALL_BYTES: usize = 5 << 20;
const MAX_RECORD_BYTES: usize = 1 << 20;
/// Columns that route a record and are never part of its data.
const ROUTING: &[&str] = &["partition_key", "explicit_hash_key"];

pub struct KinesisSinkConnector;

impl SinkConnector for KinesisSinkConnector {
    type Config = Joined<Aws, KinesisSinkConfig>;
    fn build(
        &self,
        _cx: &BuildContext,
        at: &Component,
        options: Self::Config,
    ) -> std::result::Result<Box<dyn Sink>, ConfigError> {
        let Joined {
            shared: aws,
            own: cfg,
        } = options;
        aws.check(&at.path)?;
        let key = cfg
            .partition_key
            .as_deref()
            .map(|t| Template::parse(&at.key("partition_key"), t, "{user_id}"))
            .transpose()?;
        let hash = cfg
            .explicit_hash_key
            .as_deref()
            .map(|t| Template::parse(&at.key("explicit_hash_key"), t, "{hash}"))
            .transpose()?;
        Ok(Box::new(KinesisSink {
            name: at.name.clone(),
            aws,
            cfg,
            key,
            hash,
            client: None,
        }))
    }
}

pub struct KinesisSink {
    name: String,
    aws: Aws,
    cfg: KinesisSinkConfig,
    key: Option<Template>,
    hash: Option<Template>,
    client: Option<Client>,
}

/// One record to send.
struct Entry {
    data: Vec<u8>,
    key: String,
    hash: Option<String>,
}

impl Entry {
    fn size(&self) -> usize {
        self.data.len() + self.key.len()
    }
}

impl KinesisSink {
    fn fail(&self, msg: impl std::fmt::Display) -> Error {
        Error::msg(format!(
            "sink `{}` ({}): {msg}",
            self.name,
            self.aws.shown()
        ))
    }

    fn trouble(&self, t: Trouble) -> Error {
        self.fail(t.explained())
    }

    /// The records of one output batch.
    fn entries(&self, schema: &SchemaRef, b: &RecordBatch) -> Result<Vec<Entry>> {
        use sluice_formats::messages;
        let datas: Vec<Vec<u8>> = match schema.index_of("data") {
            Ok(i) => messages::column_bytes(b.column(i))?,
            Err(_) => {
                let rest: Vec<usize> = (0..schema.fields().len())
                    .filter(|i| !ROUTING.contains(&schema.field(*i).name().as_str()))
                    .collect();
                let rows = b.project(&rest)?;
                match self.cfg.format.get() {
                    Format::Text if rest.len() == 1 => messages::column_bytes(rows.column(0))?,
                    Format::Text => {
                        return Err(self.fail(format!(
                            "format \"text\" needs exactly one column besides partition_key and \
                             explicit_hash_key (or a `data` column); the job gives {}",
                            rest.len()
                        )))
                    }
                    Format::Csv => messages::csv_rows(&rows)?,
                    _ => messages::json_rows(&rows)?,
                }
            }
        };
        let keys: Vec<String> = match (&self.key, schema.index_of("partition_key")) {
            (Some(t), _) => t
                .render(b)
                .map_err(|e| self.fail(format!("partition_key: {e}")))?,
            (None, Ok(i)) => messages::column_bytes(b.column(i))?
                .into_iter()
                .map(|k| String::from_utf8_lossy(&k).into_owned())
                .collect(),
            (None, Err(_)) => datas.iter().map(|d| hex(&Md5::digest(d))).collect(),
        };
        let hashes: Vec<Option<String>> = match (&self.hash, schema.index_of("explicit_hash_key")) {
            (Some(t), _) => t
                .render(b)
                .map_err(|e| self.fail(format!("explicit_hash_key: {e}")))?
                .into_iter()
                .map(Some)
                .collect(),
            (None, Ok(i)) => messages::column_bytes(b.column(i))?
                .into_iter()
                .map(|k| (!k.is_empty()).then(|| String::from_utf8_lossy(&k).into_owned()))
                .collect(),
            (None, Err(_)) => vec![None; b.num_rows()],
        };
        Ok(datas
            .into_iter()
            .zip(keys)
            .zip(hashes)
            .map(|((data, key), hash)| Entry { data, key, hash })
            .collect())
    }

    /// Send one call's entries until Kinesis has taken every one (only the refused are sent
    /// again).
    async fn put(&self, client: &Client, mut pending: Vec<Entry>) -> Result<()> {
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .with_max_times(self.cfg.max_retries)
            .build();
        loop {
            let entries: Vec<PutRecordsRequestEntry> = pending
                .iter()
                .map(|e| {
                    PutRecordsRequestEntry::builder()
                        .data(Blob::new(e.data.clone()))
                        .partition_key(&e.key)
                        .set_explicit_hash_key(e.hash.clone())
                        .build()
                        .expect("data and key are set")
                })
                .collect();
            let answer = client
                .put_records()
                .stream_name(&self.aws.stream)
                .set_records(Some(entries))
                .send()
                .await;
            let why = match answer {
                Ok(out) if out.failed_record_count.unwrap_or(0) == 0 => return Ok(()),
                Ok(out) => {
                    let mut refused = Vec::new();
                    let mut reason = String::new();
                    for (e, r) in pending.into_iter().zip(out.records) {
                        if let Some(code) = r.error_code {
                            if reason.is_empty() {
                                reason = format!("{code}: {}", r.error_message.unwrap_or_default());
                            }
                            refused.push(e);
                        }
                    }
                    pending = refused;
                    format!("{} records refused ({reason})", pending.len())
                }
                Err(e) => match Trouble::of(&e) {
                    Trouble::Transient(why) => why,
                    t => return Err(self.trouble(t)),
                },
            };
            match backoff.next() {
                Some(wait) => {
                    tracing::warn!(sink = %self.name, error = %why, retry_in = ?wait, "kinesis: PutRecords incomplete; sending the rest again");
                    tokio::time::sleep(wait).await;
                }
                None => {
                    return Err(self.fail(format!(
                        "PutRecords still failing after {} retries (max_retries): {why}",
                        self.cfg.max_retries
                    )))
                }
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[async_trait]
impl Sink for KinesisSink {
    async fn open(&mut self) -> Result<()> {
        let client = client::connect(&self.aws).await;
        client
            .describe_stream_summary()
            .stream_name(&self.aws.stream)
            .send()
            .await
            .map_err(|e| self.trouble(Trouble::of(&e)))?;
        self.client = Some(client);
        Ok(())
    }

    async fn write(&mut self, batch: SinkBatch<'_>) -> Result<()> {
        let client = match &self.client {
            Some(c) => c.clone(),
            None => {
                self.open().await?;
                self.client.clone().expect("opened")
            }
        };
        let mut call: Vec<Entry> = Vec::new();
        let mut bytes = 0;
        for b in batch.batches {
            for (r, e) in self.entries(&batch.schema, b)?.into_iter().enumerate() {
                if e.size() > MAX_RECORD_BYTES || e.key.is_empty() || e.key.len() > 256 {
                    let why = if e.key.is_empty() || e.key.len() > 256 {
                        format!(
                            "a partition key of {} bytes (Kinesis takes 1 to 256)",
                            e.key.len()
                        )
                    } else {
                        format!(
                            "a record of {} bytes (Kinesis takes at most 1 MiB)",
                            e.size()
                        )
                    };
                    batch.dead.extend(sluice_formats::dead_rows(
                        &format!("sink `{}`", self.name),
                        &why,
                        std::slice::from_ref(&b.slice(r, 1)),
                    ));
                    continue;
                }
                if call.len() == MAX_RECORDS || bytes + e.size() > MAX_CALL_BYTES {
                    self.put(&client, std::mem::take(&mut call)).await?;
                    bytes = 0;
                }
                bytes += e.size();
                call.push(e);
            }
        }
        if !call.is_empty() {
            self.put(&client, call).await?;
        }
        Ok(())
    }

    fn idempotent(&self) -> bool {
        false
    }
}
