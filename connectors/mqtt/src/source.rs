//! The `mqtt` source: subscribes to topic filters and stores what arrives in the WAL before it
//! acknowledges it (PUBACK for QoS 1, PUBREC for QoS 2), so a crash between receipt and
//! processing loses nothing: the broker redelivers what was not acknowledged.
//!
//! Exactly once within a persistent session: a redelivery (DUP set) of a message that is already
//! durable but whose acknowledgement was lost is recognised (see [`crate::redelivery`]),
//! acknowledged, and not stored again. What is needed for that, and the QoS 2 exchanges waiting for
//! PUBREL, are stored with each WAL block, so this holds across a restart too.

use crate::client::{self, Client, Event, Message, Released, Retry};
use crate::connection::{Connection, Options, Protocol};
use crate::redelivery::Remembered;
use arrow::array::{
    BooleanBuilder, MapBuilder, StringBuilder, TimestampMillisecondBuilder, UInt8Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_core::options::Joined;
use sluice_core::retry::Reconnect;
use sluice_core::time::serde_duration;
use sluice_core::{
    BlockWriter, BuildContext, BuiltSource, Component, ConfigError, DeadLetter, Error, Guarantee,
    Receiver, ReceiverStatus, Result, SourceConnector, SourceRuntime, WhenDurable,
};
use sluice_formats::decoding::PayloadDecoding;
use sluice_formats::payload::{check_envelope, PayloadDecoder};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// `[sources.NAME] type = "mqtt"` (plus the connection keys: `host`, `port`, `protocol`, ...).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// Topic filters (`+` and `#` wildcards; `$share/<group>/<filter>` for a shared
    /// subscription), each a string or `{ filter = "...", qos = 2 }`.
    pub topics: Vec<Subscription>,
    /// QoS of the filters given as plain strings (default 1).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Add the envelope columns `topic`, `qos`, `retain`, `received_at` (and with MQTT 5
    /// `content_type`, `user_properties`) after the payload's columns (default true).
    #[serde(default = "default_true")]
    pub envelope: bool,
    /// A block is stored after this many messages, or after `block_interval`, whichever comes
    /// first (default 10000).
    #[serde(default = "default_block_messages")]
    pub block_messages: usize,
    /// A block is stored after this much time, or after `block_messages` (default 20ms).
    #[serde(
        default = "default_block_interval",
        deserialize_with = "serde_duration::deserialize"
    )]
    #[schemars(with = "sluice_core::time::DurationText")]
    pub block_interval: Duration,
    /// How many QoS 1/2 messages may wait for their acknowledgement (MQTT 5's receive maximum;
    /// with 3.1.1 set the broker's own limit, mosquitto's `max_inflight_messages`, to at most
    /// this).
    /// Default 1000.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
}

/// One topic filter.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Subscription {
    Filter(String),
    WithQos { filter: String, qos: u8 },
}

fn default_qos() -> u8 {
    1
}
fn default_true() -> bool {
    true
}
fn default_block_messages() -> usize {
    10_000
}
fn default_block_interval() -> Duration {
    Duration::from_millis(20)
}
fn default_inflight() -> u16 {
    1000
}

const ENVELOPE: &[&str] = &[
    "topic",
    "qos",
    "retain",
    "received_at",
    "content_type",
    "user_properties",
];

pub struct MqttSourceConnector;

impl SourceConnector for MqttSourceConnector {
    type Config = Joined<Joined<Connection, Reconnect>, Joined<PayloadDecoding, MqttSourceConfig>>;
    fn build(
        &self,
        cx: &BuildContext,
        at: &Component,
        options: Self::Config,
    ) -> Result<BuiltSource, ConfigError> {
        let Joined {
            shared:
                Joined {
                    shared: conn,
                    own: reconnect,
                },
            own: Joined {
                shared: decoding,
                own: cfg,
            },
        } = options;
        let path = at.path.as_str();
        let name = at.name.clone();
        let mut filters = Vec::new();
        for (i, t) in cfg.topics.iter().enumerate() {
            let (filter, qos) = match t {
                Subscription::Filter(f) => (f.clone(), cfg.qos),
                Subscription::WithQos { filter, qos } => (filter.clone(), *qos),
            };
            if qos > 2 {
                return Err(ConfigError::new(
                    format!("{path}.topics[{i}].qos"),
                    "0, 1 or 2",
                    qos.to_string(),
                ));
            }
            if filter.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.topics[{i}]"),
                    "a topic filter such as \"sensors/+/temperature\"",
                    "\"\"",
                ));
            }
            filters.push((filter, qos));
        }
        if filters.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.topics"),
                "at least one topic filter",
                "[]",
            ));
        }
        if cfg.qos > 2 {
            return Err(ConfigError::new(
                format!("{path}.qos"),
                "0, 1 or 2",
                cfg.qos.to_string(),
            ));
        }
        if cfg.block_messages == 0 {
            return Err(ConfigError::new(
                format!("{path}.block_messages"),
                "at least 1",
                "0",
            ));
        }
        let decoder = decoding.decoder(cx, at, "payload")?;
        let mut fields = decoder.fields();
        if cfg.envelope {
            check_envelope(path, &fields, ENVELOPE)?;
            fields.push(Field::new("topic", DataType::Utf8, false));
            fields.push(Field::new("qos", DataType::UInt8, false));
            fields.push(Field::new("retain", DataType::Boolean, false));
            fields.push(Field::new(
                "received_at",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ));
            if conn.protocol == Protocol::V5 {
                fields.push(Field::new("content_type", DataType::Utf8, true));
                fields.push(Field::new("user_properties", user_properties_type(), false));
            }
        }
        let transport = conn.transport(path)?;
        let client_id = conn.client_id(&cx.app_name, &name);
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        Ok(BuiltSource {
            schema: schema.clone(),
            // With a clean session the broker forgets what it had not delivered at a disconnect
            // (and a crash): only a kept session resends until the gateway acknowledges.
            caveat: (filters.iter().any(|(_, q)| *q == 1) && !conn.clean_session).then(|| {
                "QoS 1 filters: a new message that reuses the packet id of one whose acknowledgement \
                 the broker has not yet shown it read, with the same topic and payload, and is itself \
                 redelivered after a reconnect, is taken for that one (MQTT cannot tell them apart; \
                 QoS 2 can)"
                    .to_string()
            }),
            guarantee: if filters.iter().all(|(_, q)| *q > 0) && !conn.clean_session {
                Guarantee::Acknowledged
            } else {
                Guarantee::Unacknowledged
            },
            runtime: SourceRuntime::Receiver(Box::new(MqttReceiver {
                options: Some(Options::new(&conn, client_id, transport, cfg.inflight)),
                retry: Retry {
                    initial: reconnect.retry_initial,
                    max: reconnect.retry_max,
                    connect_timeout: conn.connect_timeout,
                },
                endpoint: conn.endpoint(),
                clean_session: conn.clean_session,
                v5: conn.protocol == Protocol::V5,
                filters,
                decoder,
                schema,
                cfg,
                name,
            })),
        })
    }
}

fn user_properties_type() -> DataType {
    arrow::array::Array::data_type(
        &MapBuilder::new(None, StringBuilder::new(), StringBuilder::new()).finish(),
    )
    .clone()
}

pub struct MqttReceiver {
    options: Option<Options>,
    retry: Retry,
    endpoint: String,
    clean_session: bool,
    v5: bool,
    filters: Vec<(String, u8)>,
    decoder: PayloadDecoder,
    schema: SchemaRef,
    cfg: MqttSourceConfig,
    name: String,
}

/// Messages collected for the next block, and acknowledgements that wait for it.
#[derive(Default)]
struct Pending {
    messages: Vec<Message>,
    received_at: Vec<i64>,
    /// Acknowledgements of redeliveries already stored: sent with this block's.
    extra_acks: Vec<(u8, u16)>,
    started: Option<Instant>,
}

impl MqttReceiver {
    /// A SUBACK: the QoS granted for each filter subscribed, in order. A refusal stops the source;
    /// a lower QoS than asked is logged with what it means.
    fn granted(
        &self,
        granted: Vec<Option<u8>>,
        subscribing: &mut std::collections::VecDeque<(String, u8)>,
    ) -> Result<()> {
        for g in granted {
            let Some((filter, asked)) = subscribing.pop_front() else {
                break;
            };
            match g {
                None => {
                    return Err(Error::msg(format!(
                        "mqtt source `{}`: {} refused the subscription to `{filter}` (SUBACK failure): \
                         check the broker's ACL for this client, and the filter",
                        self.name, self.endpoint
                    )))
                }
                Some(q) if q < asked => tracing::warn!(
                    source = %self.name, filter, asked, granted = q,
                    "mqtt: the broker granted a lower QoS than asked: {}",
                    if q == 0 { "messages on this filter are at-most-once (the broker never resends them)" } else { "QoS 1: the broker may resend a message, which the source recognises" }
                ),
                Some(_) => tracing::debug!(source = %self.name, filter, "mqtt: subscribed"),
            }
        }
        Ok(())
    }

    /// Decode one block; returns the batch and the acknowledgements it carries.
    fn block(
        &self,
        pending: &mut Pending,
        out: &Arc<dyn BlockWriter>,
    ) -> (RecordBatch, Vec<(u8, u16)>) {
        let messages = std::mem::take(&mut pending.messages);
        let received = std::mem::take(&mut pending.received_at);
        let mut acks: Vec<(u8, u16)> = std::mem::take(&mut pending.extra_acks);
        pending.started = None;
        acks.extend(
            messages
                .iter()
                .filter(|m| m.qos > 0)
                .map(|m| (m.qos, m.pkid)),
        );
        // Which messages become rows; the others are dead letters (still acknowledged).
        let payloads: Vec<&[u8]> = messages.iter().map(|m| &m.payload[..]).collect();
        let decoded = self.decoder.decode(&payloads);
        for (i, reason) in decoded.failed {
            out.dead_letters().push(self.dead(&messages[i], reason));
        }
        let kept = decoded.kept;
        let mut columns = decoded.columns;
        if self.cfg.envelope {
            let mut topic = StringBuilder::new();
            let mut qos = UInt8Builder::new();
            let mut retain = BooleanBuilder::new();
            let mut at = TimestampMillisecondBuilder::new();
            let mut content_type = StringBuilder::new();
            let mut props = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
            for &i in &kept {
                let m = &messages[i];
                topic.append_value(&m.topic);
                qos.append_value(m.qos);
                retain.append_value(m.retain);
                at.append_value(received[i]);
                if self.v5 {
                    content_type.append_option(m.content_type.as_deref());
                    for (k, v) in &m.user_properties {
                        props.keys().append_value(k);
                        props.values().append_value(v);
                    }
                    props.append(true).expect("map entries");
                }
            }
            columns.push(Arc::new(topic.finish()));
            columns.push(Arc::new(qos.finish()));
            columns.push(Arc::new(retain.finish()));
            columns.push(Arc::new(at.finish()));
            if self.v5 {
                columns.push(Arc::new(content_type.finish()));
                columns.push(Arc::new(props.finish()));
            }
        }
        let batch =
            RecordBatch::try_new(self.schema.clone(), columns).expect("columns match the schema");
        (batch, acks)
    }

    fn dead(&self, m: &Message, reason: String) -> DeadLetter {
        let shown = &m.payload[..m.payload.len().min(4096)];
        DeadLetter {
            origin: self.name.clone(),
            reason: format!("{reason} (topic {})", m.topic),
            payload: String::from_utf8_lossy(shown).into_owned(),
        }
    }

    fn block_limit(&self, out: &Arc<dyn BlockWriter>) -> usize {
        out.block_budget()
            .map_or(self.cfg.block_messages, |b| b.min(self.cfg.block_messages))
            .max(1)
    }
}

/// What is stored with every block: enough to recognise redeliveries after a restart.
fn position(remembered: &Remembered, released: &Released) -> serde_json::Value {
    serde_json::json!({
        "stored": remembered.entries(),
        "released": released.lock().unwrap().iter().collect::<Vec<_>>(),
    })
}

fn restore(position: Option<serde_json::Value>, cap: usize) -> (Remembered, Released) {
    let position = position.unwrap_or_default();
    let stored = position["stored"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect::<Vec<_>>())
        .unwrap_or_default();
    let released = Released::default();
    if let Some(a) = position["released"].as_array() {
        let mut r = released.lock().unwrap();
        r.extend(a.iter().filter_map(|v| v.as_u64()).map(|v| v as u16));
    }
    (Remembered::restore(stored, cap), released)
}

/// The acknowledgements of a block, once it is durable.
fn acks_when(
    stored: WhenDurable<'_>,
    acks: Vec<(u8, u16)>,
) -> BoxFuture<'_, Result<Vec<(u8, u16)>>> {
    Box::pin(async move {
        stored.await?;
        Ok(acks)
    })
}

/// What the receiver asks of the client. Sent through a task of its own: the client's request
/// queue empties only while its event loop runs, and that waits for the receiver to take its events,
/// so the receiver must never wait on the queue itself.
enum Request {
    Subscribe(Vec<(String, u8)>),
    /// Acknowledgements, then a probe whose answer proves the broker read them.
    Ack(Vec<(u8, u16)>),
}

fn spawn_outbox(client: Client) -> (mpsc::UnboundedSender<Request>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Some(r) = rx.recv().await {
            let sent = match r {
                Request::Subscribe(filters) => {
                    let mut r = Ok(());
                    for (f, q) in filters {
                        r = r.and(client.subscribe(&f, q).await);
                    }
                    r
                }
                Request::Ack(acks) => {
                    let mut r = Ok(());
                    let any = !acks.is_empty();
                    for (qos, pkid) in acks {
                        r = r.and(client.ack(qos, pkid).await);
                    }
                    if any {
                        r = r.and(client.probe().await);
                    }
                    r
                }
            };
            if sent.is_err() {
                return;
            }
        }
    });
    (tx, task)
}

/// Queue a durable block's acknowledgements (QoS 2 ones wait for PUBREL from then on).
fn send_acks(
    outbox: &mpsc::UnboundedSender<Request>,
    released: &Released,
    acks: Vec<(u8, u16)>,
) -> Result<()> {
    {
        let mut r = released.lock().unwrap();
        r.extend(acks.iter().filter(|(q, _)| *q == 2).map(|(_, p)| *p));
    }
    outbox
        .send(Request::Ack(acks))
        .map_err(|_| Error::msg("the MQTT client stopped"))
}

#[async_trait]
impl Receiver for MqttReceiver {
    async fn run(mut self: Box<Self>, out: Arc<dyn BlockWriter>) -> Result<()> {
        let cap = self.cfg.inflight.max(1) as usize;
        // Acknowledged messages are forgotten once a probe proves the broker read their
        // acknowledgements; the cap only matters with a broker that never answers.
        let (mut remembered, released) = restore(out.resume_position(), cap * 64);
        let options = self.options.take().expect("run once");
        let (client, mut events) = client::start(options, cap * 2, released.clone(), self.retry);
        let (outbox, sending) = spawn_outbox(client.clone());
        let mut pending = Pending::default();
        let mut durable = FuturesOrdered::new();
        let mut connected_once = false;
        // Filters subscribed and not yet answered, in order (one SUBACK each).
        let mut subscribing: std::collections::VecDeque<(String, u8)> = Default::default();
        // Redeliveries of stored messages since the last block (logged with it).
        let mut redelivered = 0u64;
        loop {
            let flush_in = pending
                .started
                .map(|s| self.cfg.block_interval.saturating_sub(s.elapsed()))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                biased;
                Some(r) = durable.next(), if !durable.is_empty() => {
                    let acks: Vec<(u8, u16)> = r?;
                    send_acks(&outbox, &released, acks)?;
                }
                ev = events.recv() => match ev {
                    None => return Err(Error::msg("the MQTT connection task ended")),
                    Some(Event::Connected { session_present }) => {
                        tracing::info!(
                            source = %self.name, endpoint = %self.endpoint, session_present,
                            "mqtt connected"
                        );
                        out.set_status(ReceiverStatus::Connected(self.endpoint.clone()));
                        if !session_present || self.clean_session || !connected_once {
                            outbox
                                .send(Request::Subscribe(self.filters.clone()))
                                .map_err(|_| Error::msg("the MQTT client stopped"))?;
                            subscribing.extend(self.filters.iter().cloned());
                        }
                        connected_once = true;
                    }
                    Some(Event::Message(m)) => {
                        if m.dup && m.qos > 0 && remembered.recognise(&m) {
                            redelivered += 1;
                            pending.extra_acks.push((m.qos, m.pkid));
                        } else {
                            remembered.stored(&m);
                            pending.messages.push(m);
                            pending.received_at.push(sluice_core::time::now_ms());
                        }
                        if pending.started.is_none() {
                            pending.started = Some(Instant::now());
                        }
                    }
                    Some(Event::Down { error, refused }) => {
                        remembered.connection_lost();
                        if refused {
                            return Err(crate::connection::refused("source", &self.name, &self.endpoint, &error));
                        }
                        tracing::warn!(source = %self.name, endpoint = %self.endpoint, %error, "mqtt connection down; retrying");
                        out.set_status(ReceiverStatus::Retrying { attempt: 0, error: format!("{}: {error}", self.endpoint) });
                    }
                    Some(Event::SubAck(granted)) => self.granted(granted, &mut subscribing)?,
                    Some(Event::PublishFailed(_)) => {}
                    Some(Event::Acked(pkid)) => remembered.acked(pkid),
                    Some(Event::Completed(pkid)) => remembered.completed(pkid),
                    Some(Event::ProbeSent(pkid)) => remembered.probe_sent(pkid),
                    Some(Event::ProbeAnswered(pkid)) => remembered.probe_answered(pkid),
                    Some(Event::Published) => {}
                },
                _ = tokio::time::sleep(flush_in) => {}
                _ = out.stopped() => break,
            }
            let due = pending
                .started
                .is_some_and(|s| s.elapsed() >= self.cfg.block_interval);
            if pending.messages.len() >= self.block_limit(&out) || due {
                if redelivered > 0 {
                    tracing::info!(
                        source = %self.name, count = redelivered,
                        "mqtt redeliveries of stored messages acknowledged, not stored again"
                    );
                    redelivered = 0;
                }
                let (batch, acks) = self.block(&mut pending, &out);
                let at = position(&remembered, &released);
                durable.push_back(acks_when(out.append_at(batch, at).await?, acks));
            }
        }
        // Stopping: store what was received, acknowledge it once durable, then disconnect.
        if !pending.messages.is_empty() || !pending.extra_acks.is_empty() {
            let (batch, acks) = self.block(&mut pending, &out);
            let at = position(&remembered, &released);
            durable.push_back(acks_when(out.append_at(batch, at).await?, acks));
        }
        // The connection keeps running (its events drained) until the last acknowledgements are out.
        let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
        while let Some(r) = durable.next().await {
            send_acks(&outbox, &released, r?)?;
        }
        drop(outbox);
        let _ = sending.await;
        client.disconnect().await;
        drain.abort();
        out.set_status(ReceiverStatus::Stopped);
        Ok(())
    }
}
