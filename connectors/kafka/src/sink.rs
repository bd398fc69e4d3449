//! The `kafka` sink. Output rows become records through the columns `value`, `key`, `topic`,
//! `partition` and `headers` (as Spark's Kafka sink does); without a `value` column the other
//! columns are serialised with `format`.
//!
//! Exactly once: each (job, batch) is one transaction, and the transaction also commits a marker:
//! the batch time as the offset of partition 0 of `topic` in the consumer group
//! `<transactional id>.<job>` (offset metadata would hold more, but brokers such as tansu drop it).
//! A batch re-run after a crash whose transaction had committed is recognised from the marker and
//! not written again; one whose transaction had not committed is aborted by the broker when the
//! restarted sink takes over the transactional id (read_committed readers never see it).

use crate::config::{check_properties, shown, KafkaSinkConfig};
use crate::context::Ctx;
use arrow::array::{Array, ArrayRef, AsArray, MapArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int32Type, SchemaRef};
use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sluice_core::Format;
use sluice_core::{
    BuildContext, Component, ConfigError, Error, Result, Sink, SinkBatch, SinkConnector,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Columns with a meaning of their own; the others are the value's when there is no `value`.
const SPECIAL: &[&str] = &["value", "key", "topic", "partition", "headers"];

pub struct KafkaSinkConnector;

impl SinkConnector for KafkaSinkConnector {
    type Config = KafkaSinkConfig;
    fn build(
        &self,
        cx: &BuildContext,
        at: &Component,
        cfg: KafkaSinkConfig,
    ) -> std::result::Result<Box<dyn Sink>, ConfigError> {
        let path = at.path.as_str();
        let name = at.name.clone();
        check_properties(path, &cfg.properties)?;
        if cfg.topic.trim().is_empty() {
            return Err(ConfigError::new(
                format!("{path}.topic"),
                "a topic name",
                "an empty string",
            ));
        }
        if cfg.avro_wire == crate::config::Wire::Confluent && cfg.avro_schema_id.is_none() {
            return Err(ConfigError::new(
                format!("{path}.avro_schema_id"),
                "the schema id to write with avro_wire = \"confluent\"",
                "none",
            ));
        }
        let mut transactional_id = cfg
            .transactional_id
            .clone()
            .unwrap_or_else(|| format!("sluice-{}-{name}", cx.app_name));
        if let Some(scope) = &cx.output_scope {
            // Each gateway (and a replay) its own producer identity and exactly-once markers: two
            // producers with one transactional id fence each other.
            transactional_id = format!("{transactional_id}.{scope}");
        }
        Ok(Box::new(KafkaSink {
            name,
            cfg,
            transactional_id,
            producer: None,
            transactional: false,
            markers: BTreeMap::new(),
            avro_logged: Default::default(),
        }))
    }
}

type Prod = ThreadedProducer<Ctx>;

pub struct KafkaSink {
    name: String,
    cfg: KafkaSinkConfig,
    transactional_id: String,
    producer: Option<Arc<Prod>>,
    transactional: bool,
    /// Job → its marker group and the last batch time written, read at the job's first batch.
    markers: BTreeMap<String, Marker>,
    /// Whether the Avro schema of the values was logged.
    avro_logged: std::sync::atomic::AtomicBool,
}

/// A job's exactly-once marker.
struct Marker {
    /// A consumer of the group `<transactional id>.<job>`: reads the marker and names the group
    /// in transactions.
    group: Arc<BaseConsumer<Ctx>>,
    /// The batch time of the job's last committed transaction (-1: none).
    last: i64,
}

/// A record's headers.
type Headers = Vec<(String, Option<Vec<u8>>)>;

/// One output record.
struct Out {
    topic: Option<String>,
    partition: Option<i32>,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Headers,
}

impl KafkaSink {
    fn fail(&self, msg: impl std::fmt::Display) -> Error {
        Error::msg(format!("sink `{}`: {msg}", self.name))
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.cfg.bootstrap_servers);
        for (k, v) in &self.cfg.properties {
            c.set(k, v);
        }
        c
    }

    fn producer(&self, transactional: bool) -> Result<Prod> {
        let mut c = self.client_config();
        c.set("enable.idempotence", "true");
        if transactional {
            c.set("transactional.id", &self.transactional_id).set(
                "transaction.timeout.ms",
                self.cfg.transaction_timeout.as_millis().to_string(),
            );
        }
        c.create_with_context(Ctx::new(format!("sink `{}`", self.name)))
            .map_err(|e| {
                self.fail(format!(
                    "cannot create the Kafka producer ({e}); properties: {}",
                    shown(&self.cfg.properties)
                ))
            })
    }

    fn marker_offsets(&self, time: i64) -> Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.cfg.topic, 0, Offset::Offset(time.max(0)))
            .map_err(|e| self.fail(e))?;
        Ok(tpl)
    }

    /// The marker of `job` (`probe`: the group the transaction check at start uses), read from
    /// the broker the first time.
    async fn marker(&mut self, job: &str) -> Result<&Marker> {
        if !self.markers.contains_key(job) {
            let group_id = format!("{}.{job}", self.transactional_id);
            let mut c = self.client_config();
            c.set("group.id", &group_id)
                .set("enable.auto.commit", "false");
            let group: Arc<BaseConsumer<Ctx>> = Arc::new(
                c.create_with_context(Ctx::new(format!("sink `{}`", self.name)))
                    .map_err(|e| self.fail(e))?,
            );
            let g = group.clone();
            let topic = self.cfg.topic.clone();
            let timeout = self.cfg.transaction_timeout;
            let read = blocking(move || {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&topic, 0);
                g.committed_offsets(tpl, timeout)
            })
            .await
            .map_err(|e| {
                self.fail(format!(
                    "cannot read the exactly-once marker (group `{group_id}`): {e}"
                ))
            })?;
            let last = match read.find_partition(&self.cfg.topic, 0).map(|e| e.offset()) {
                Some(Offset::Offset(n)) => n,
                _ => -1,
            };
            self.markers.insert(job.to_string(), Marker { group, last });
        }
        Ok(&self.markers[job])
    }

    /// Try transactions: init, then one transaction that commits the marker as it is. A broker
    /// that cannot do them, or an unreachable one, is an error.
    async fn open_transactional(&mut self) -> Result<bool> {
        let timeout = self.cfg.transaction_timeout;
        let probe = self.marker("probe").await?;
        let (last, cgm) = (probe.last, probe.group.group_metadata());
        let producer = Arc::new(self.producer(true)?);
        let tpl = self.marker_offsets(last)?;
        let cgm = cgm.ok_or_else(|| self.fail("no consumer group metadata"))?;
        let p = producer.clone();
        let tried = blocking(move || -> std::result::Result<(), KafkaError> {
            p.init_transactions(timeout)?;
            p.begin_transaction()?;
            p.send_offsets_to_transaction(&tpl, &cgm, timeout)?;
            match p.commit_transaction(timeout) {
                Ok(()) => Ok(()),
                Err(e) => {
                    let _ = p.abort_transaction(timeout);
                    Err(e)
                }
            }
        })
        .await;
        match tried {
            Ok(()) => {
                self.producer = Some(producer);
                Ok(true)
            }
            Err(e) if unreachable(&e) => Err(self.fail(format!(
                "cannot reach the brokers at {}: {e}",
                self.cfg.bootstrap_servers
            ))),
            // `validate` said exactly-once: a broker that cannot give it stops the gateway rather
            // than quietly writing re-run batches twice.
            Err(e) => Err(Error::Config(
                sluice_core::ConfigError::new(
                    format!("sinks.{}.exactly_once", self.name),
                    "a broker that does transactions (exactly_once = true, the default)",
                    format!(
                        "the brokers at {} refused a transaction: {e}",
                        self.cfg.bootstrap_servers
                    ),
                )
                .with_hint("set exactly_once = false to accept at-least-once (a batch re-run after a crash may be written twice), or use a broker with transactions"),
            )),
        }
    }

    /// Turn the output rows into records.
    fn records(&self, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<Out>> {
        let idx = |n: &str| schema.index_of(n).ok();
        let (value, key, topic, partition, headers) = (
            idx("value"),
            idx("key"),
            idx("topic"),
            idx("partition"),
            idx("headers"),
        );
        let rest: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !SPECIAL.contains(&schema.field(*i).name().as_str()))
            .collect();
        if value.is_none() && self.cfg.format.get() == Format::Text && rest.len() != 1 {
            return Err(self.fail(format!(
                "format \"text\" needs exactly one column besides key, topic, partition and \
                 headers (or a `value` column); the job gives {}",
                rest.len()
            )));
        }
        let mut out = Vec::new();
        for b in batches {
            let values: Vec<Vec<u8>> = match value {
                Some(i) => bytes_column(b.column(i), "value")
                    .map_err(|e| self.fail(e))?
                    .into_iter()
                    .map(Option::unwrap_or_default)
                    .collect(),
                None => {
                    let projected = b.project(&rest)?;
                    self.serialise(&projected)?
                }
            };
            let keys = match key {
                Some(i) => bytes_column(b.column(i), "key").map_err(|e| self.fail(e))?,
                None => vec![None; b.num_rows()],
            };
            let topics: Vec<Option<String>> = match topic.filter(|_| self.cfg.topic_column) {
                Some(i) => {
                    let c = cast(b.column(i), &DataType::Utf8)?;
                    let c = c.as_string::<i32>();
                    (0..c.len())
                        .map(|r| c.is_valid(r).then(|| c.value(r).to_string()))
                        .collect()
                }
                None => vec![None; b.num_rows()],
            };
            let partitions: Vec<Option<i32>> = match partition.filter(|_| self.cfg.partition_column)
            {
                Some(i) => {
                    let c = cast(b.column(i), &DataType::Int32)?;
                    let c = c.as_primitive::<Int32Type>();
                    (0..c.len())
                        .map(|r| c.is_valid(r).then(|| c.value(r)))
                        .collect()
                }
                None => vec![None; b.num_rows()],
            };
            let header_rows = match headers {
                Some(i) => header_column(b.column(i)).map_err(|e| self.fail(e))?,
                None => vec![Vec::new(); b.num_rows()],
            };
            for ((((value, key), topic), partition), headers) in values
                .into_iter()
                .zip(keys)
                .zip(topics)
                .zip(partitions)
                .zip(header_rows)
            {
                out.push(Out {
                    topic,
                    partition,
                    key,
                    value,
                    headers,
                });
            }
        }
        Ok(out)
    }

    /// One value per row from the columns that are not special.
    fn serialise(&self, b: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        use sluice_formats::messages;
        Ok(match self.cfg.format.get() {
            Format::Text => messages::column_bytes(b.column(0))?,
            Format::Json => messages::json_rows(b)?,
            Format::Csv => messages::csv_rows(b)?,
            Format::Raw | Format::Parquet => {
                unreachable!("not a value format (`format` refuses it)")
            }
            Format::Avro => {
                let enc = sluice_formats::avro::DatumEncoder::new(
                    &b.schema(),
                    self.cfg.avro_wire,
                    self.cfg.avro_schema_id.unwrap_or(0),
                )?;
                if !self
                    .avro_logged
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::info!(sink = %self.name, schema = %sluice_formats::avro::schema_json(&b.schema()), "kafka: the Avro schema of the values");
                }
                enc.encode(b)?
            }
        })
    }
}

/// A string or binary column (others are cast to strings) as bytes.
fn bytes_column(c: &ArrayRef, name: &str) -> std::result::Result<Vec<Option<Vec<u8>>>, String> {
    let n = c.len();
    match c.data_type() {
        DataType::Binary => {
            let c = c.as_binary::<i32>();
            Ok((0..n)
                .map(|r| c.is_valid(r).then(|| c.value(r).to_vec()))
                .collect())
        }
        DataType::LargeBinary => {
            let c = c.as_binary::<i64>();
            Ok((0..n)
                .map(|r| c.is_valid(r).then(|| c.value(r).to_vec()))
                .collect())
        }
        _ => {
            let s = cast(c, &DataType::Utf8)
                .map_err(|e| format!("column `{name}` cannot be written as text: {e}"))?;
            let s = s.as_string::<i32>();
            Ok((0..n)
                .map(|r| s.is_valid(r).then(|| s.value(r).as_bytes().to_vec()))
                .collect())
        }
    }
}

/// A `headers` column: a map of string to string or binary.
fn header_column(c: &ArrayRef) -> std::result::Result<Vec<Headers>, String> {
    let Some(m) = c.as_any().downcast_ref::<MapArray>() else {
        return Err(format!(
            "column `headers` must be a map of string to string or binary (e.g. MAP(['k'], \
             ['v'])); it is {}",
            c.data_type()
        ));
    };
    let mut rows = Vec::with_capacity(m.len());
    for r in 0..m.len() {
        if m.is_null(r) {
            rows.push(Vec::new());
            continue;
        }
        let entries = m.value(r);
        let keys = cast(entries.column(0), &DataType::Utf8).map_err(|e| e.to_string())?;
        let keys = keys.as_string::<i32>();
        let values = bytes_column(entries.column(1), "headers")?;
        rows.push(
            (0..keys.len())
                .map(|i| keys.value(i).to_string())
                .zip(values)
                .collect(),
        );
    }
    Ok(rows)
}

/// Whether an error means the brokers could not be reached (rather than refused transactions).
fn unreachable(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::TimedOutQueue
                | RDKafkaErrorCode::BrokerNotAvailable
                | RDKafkaErrorCode::CoordinatorNotAvailable
                | RDKafkaErrorCode::NotCoordinator
                | RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::SaslAuthenticationFailed
        )
    )
}

/// Run a blocking librdkafka call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, KafkaError> + Send + 'static,
) -> std::result::Result<T, KafkaError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(KafkaError::Canceled).inspect_err(|_| tracing::error!("{e}")))
}

/// Queue every record, waiting while librdkafka's queue is full.
fn produce(p: &Prod, default_topic: &str, records: &[Out]) -> std::result::Result<(), KafkaError> {
    for r in records {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let mut rec: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(r.topic.as_deref().unwrap_or(default_topic))
                .payload(&r.value[..])
                .headers(headers);
        if let Some(k) = &r.key {
            rec = rec.key(&k[..]);
        }
        if let Some(p) = r.partition {
            rec = rec.partition(p);
        }
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }
    Ok(())
}

#[async_trait]
impl Sink for KafkaSink {
    async fn open(&mut self) -> Result<()> {
        if self.cfg.exactly_once {
            self.transactional = self.open_transactional().await?;
            if self.transactional {
                tracing::info!(sink = %self.name, transactional_id = %self.transactional_id, "kafka: exactly-once (one transaction per batch)");
                return Ok(());
            }
        }
        let producer = Arc::new(self.producer(false)?);
        // Fail at start, not at the first batch, when the brokers cannot be reached.
        let p = producer.clone();
        let topic = self.cfg.topic.clone();
        let timeout = self.cfg.transaction_timeout.min(Duration::from_secs(30));
        blocking(move || p.client().fetch_metadata(Some(&topic), timeout))
            .await
            .map_err(|e| {
                self.fail(format!(
                    "cannot reach the brokers at {}: {e}",
                    self.cfg.bootstrap_servers
                ))
            })?;
        if !self.cfg.exactly_once {
            tracing::info!(sink = %self.name, "kafka: at-least-once (exactly_once = false)");
        }
        self.producer = Some(producer);
        Ok(())
    }

    async fn write(&mut self, batch: SinkBatch<'_>) -> Result<()> {
        let t = batch.time.millis();
        if self.transactional && self.marker(batch.job).await?.last >= t {
            tracing::info!(sink = %self.name, job = batch.job, batch = t, "kafka: this batch's transaction committed before the restart; not written again");
            return Ok(());
        }
        let records = self.records(&batch.schema, batch.batches)?;
        let producer = self.producer.clone().ok_or_else(|| self.fail("not open"))?;
        let timeout = self.cfg.transaction_timeout;
        let topic = self.cfg.topic.clone();
        if !self.transactional {
            let p = producer.clone();
            blocking(move || {
                produce(&p, &topic, &records)?;
                p.flush(timeout)
            })
            .await
            .map_err(|e| self.fail(e))?;
            let failed = producer.context().take_failures();
            if let Some(first) = failed.first() {
                return Err(self.fail(format!(
                    "{} record(s) of batch {t} were not delivered: {first}",
                    failed.len()
                )));
            }
            return Ok(());
        }
        let tpl = self.marker_offsets(t)?;
        let cgm = self
            .marker(batch.job)
            .await?
            .group
            .group_metadata()
            .ok_or_else(|| self.fail("no consumer group metadata"))?;
        let done = blocking(move || {
            producer.begin_transaction()?;
            let sent = produce(&producer, &topic, &records)
                .and_then(|()| producer.send_offsets_to_transaction(&tpl, &cgm, timeout))
                .and_then(|()| producer.commit_transaction(timeout));
            if sent.is_err() {
                let _ = producer.abort_transaction(timeout);
            }
            sent
        })
        .await;
        if let Err(e) = done {
            return Err(self.fail(format!("the transaction of batch {t} failed: {e}")));
        }
        self.markers.get_mut(batch.job).expect("read above").last = t;
        Ok(())
    }

    /// What the config asks for: `open` refuses a broker that cannot give it.
    fn idempotent(&self) -> bool {
        match self.producer {
            None => self.cfg.exactly_once,
            Some(_) => self.transactional,
        }
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(p) = self.producer.take() {
            let timeout = self.cfg.transaction_timeout;
            blocking(move || p.flush(timeout))
                .await
                .map_err(|e| self.fail(e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    fn sink(format: Format) -> KafkaSink {
        KafkaSink {
            name: "out".into(),
            cfg: KafkaSinkConfig {
                bootstrap_servers: "127.0.0.1:1".into(),
                topic: "t".into(),
                topic_column: true,
                partition_column: true,
                format: sluice_core::FormatOf::new(format),
                avro_wire: Default::default(),
                avro_schema_id: None,
                exactly_once: true,
                transactional_id: None,
                transaction_timeout: Duration::from_secs(1),
                properties: BTreeMap::new(),
            },
            transactional_id: "x".into(),
            producer: None,
            transactional: false,
            markers: BTreeMap::new(),
            avro_logged: Default::default(),
        }
    }

    fn batch(columns: Vec<(&str, ArrayRef)>) -> (SchemaRef, RecordBatch) {
        let schema: SchemaRef = Arc::new(Schema::new(
            columns
                .iter()
                .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        ));
        let b = RecordBatch::try_new(
            schema.clone(),
            columns.into_iter().map(|(_, a)| a).collect(),
        )
        .unwrap();
        (schema, b)
    }

    #[test]
    fn rows_without_value_are_serialised_and_special_columns_map_to_the_record() {
        let (schema, b) = batch(vec![
            (
                "device",
                Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
            ),
            ("n", Arc::new(Int64Array::from(vec![1, 2]))),
            ("key", Arc::new(StringArray::from(vec![Some("k1"), None]))),
            (
                "topic",
                Arc::new(StringArray::from(vec![None, Some("other")])),
            ),
        ]);
        let out = sink(Format::Json)
            .records(&schema, std::slice::from_ref(&b))
            .unwrap();
        assert_eq!(out[0].value, br#"{"device":"a","n":1}"#);
        assert_eq!(out[0].key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(out[1].key, None);
        assert_eq!(out[1].topic.as_deref(), Some("other"));
        // Without `topic_column` the rows' topics are ignored: everything goes to `topic`.
        let mut plain = sink(Format::Json);
        plain.cfg.topic_column = false;
        let out = plain.records(&schema, std::slice::from_ref(&b)).unwrap();
        assert!(
            out.iter().all(|r| r.topic.is_none()),
            "all to the sink's topic"
        );
        let out = sink(Format::Csv)
            .records(&schema, std::slice::from_ref(&b))
            .unwrap();
        assert_eq!(out[1].value, b"b,2");
        let out = sink(Format::Avro)
            .records(&schema, std::slice::from_ref(&b))
            .unwrap();
        let rest = Arc::new(b.project(&[0, 1]).unwrap().schema().as_ref().clone());
        let avro = sluice_formats::payload::PayloadDecoder::avro(
            "t",
            "avro_schema",
            &sluice_formats::avro::schema_json(&rest).to_string(),
            Default::default(),
        )
        .unwrap();
        let values: Vec<&[u8]> = out.iter().map(|o| &o.value[..]).collect();
        let d = avro.decode(&values);
        assert_eq!(d.kept, vec![0, 1]);
        assert_eq!(d.columns[0].as_string::<i32>().value(1), "b");
        assert_eq!(
            d.columns[1]
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(1),
            2
        );
        let e = sink(Format::Text).records(&schema, &[b]).err().unwrap();
        assert!(e.to_string().contains("exactly one column"), "{e}");
    }

    #[test]
    fn a_value_column_is_the_record_and_csv_line_breaks_stay_in_one_record() {
        let (schema, b) = batch(vec![(
            "value",
            Arc::new(Int64Array::from(vec![7, 8])) as ArrayRef,
        )]);
        let out = sink(Format::Json).records(&schema, &[b]).unwrap();
        assert_eq!(out[1].value, b"8");
        let (schema, b) = batch(vec![(
            "s",
            Arc::new(StringArray::from(vec!["x\ny", "z"])) as ArrayRef,
        )]);
        let out = sink(Format::Csv).records(&schema, &[b]).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].value, b"\"x\ny\"");
        assert_eq!(out[1].value, b"z");
    }

    async fn write(
        sink: &mut Box<dyn Sink>,
        schema: &SchemaRef,
        b: &RecordBatch,
        t: i64,
    ) -> Result<()> {
        sink.write(SinkBatch {
            job: "j",
            time: sluice_core::BatchTime(t),
            schema: schema.clone(),
            batches: std::slice::from_ref(b),
            rerun: false,
            dead: &Default::default(),
        })
        .await
    }

    /// Transactions against librdkafka's in-process mock cluster (tansu's sqlite engine has none):
    /// the sink finds them and commits one per batch. The mock neither keeps offsets committed in
    /// a transaction nor hides aborted records (measured), so the re-run marker is tested on a
    /// broker that keeps them (tests/e2e/kafka.rs).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_batch_is_one_committed_transaction_on_a_broker_with_transactions() {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::mocking::MockCluster;
        use rdkafka::Message;
        use sluice_core::{BuildContext, Component, SinkConnector};

        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("out", 1, 1).unwrap();
        let bootstrap = cluster.bootstrap_servers();
        let cx = BuildContext {
            app_name: "app".into(),
            batch_interval: Duration::from_secs(1),
            base_dir: ".".into(),
            scale_out: false,
            instance: "test".into(),
            output_scope: None,
        };
        let options = serde_json::json!({
            "bootstrap_servers": bootstrap,
            "topic": "out",
            "transaction_timeout": "10s",
        });
        let (schema, b) = batch(vec![(
            "value",
            Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef,
        )]);
        let connector = KafkaSinkConnector;
        let at = Component::new("sinks.out");
        let config =
            <KafkaSinkConfig as sluice_core::options::Options>::parse(&at.path, options.clone())
                .unwrap();
        let mut first = connector.build(&cx, &at, config).unwrap();
        first.open().await.unwrap();
        assert!(first.idempotent(), "the mock cluster has transactions");
        write(&mut first, &schema, &b, 1000).await.unwrap();
        write(&mut first, &schema, &b, 2000).await.unwrap();
        first.close().await.unwrap();

        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "check")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["out"]).unwrap();
        let seen = tokio::task::spawn_blocking(move || {
            let mut seen = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            let mut extra = None;
            while std::time::Instant::now() < deadline
                && extra.is_none_or(|e| std::time::Instant::now() < e)
            {
                if seen.len() >= 6 && extra.is_none() {
                    // Anything more would be a duplicate: look a little longer.
                    extra = Some(std::time::Instant::now() + Duration::from_secs(1));
                }
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                    seen.push(
                        String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                    );
                }
            }
            seen
        })
        .await
        .unwrap();
        assert_eq!(seen, ["a", "b", "c", "a", "b", "c"]);
    }
}
