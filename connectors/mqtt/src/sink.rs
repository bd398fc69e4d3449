//! The `mqtt` sink: publishes each output row to a topic templated from its columns
//! (`alerts/{site}`), for actuation and alerting. With QoS 1 or 2 a batch counts as written only
//! when the broker has acknowledged every message (at-least-once: a batch re-run after a crash
//! publishes again).

use crate::client::{self, Client, Event, Retry};
use crate::connection::{Connection, Options};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_core::options::Joined;
use sluice_core::retry::Reconnect;
use sluice_core::{
    BuildContext, Component, ConfigError, Error, Result, Sink, SinkBatch, SinkConnector,
};
use sluice_formats::template::Template;
use tokio::sync::mpsc;

/// `[sinks.NAME] type = "mqtt"` (plus the connection keys: `host`, `port`, `protocol`, ...).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    /// Topic of each message; `{column}` is replaced by the row's value, e.g. `alerts/{site}`.
    pub topic: String,
    /// QoS of the published messages (default 1).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Publish with the retain flag (default false).
    #[serde(default)]
    pub retain: bool,
    /// The payload: the row's `payload` column (string or binary) when there is one, else the
    /// whole row as a JSON object.
    #[serde(default = "default_payload_column")]
    pub payload_column: String,
    /// How many QoS 1/2 publishes may wait for their acknowledgement (default 1000).
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// How long a batch waits without any progress (a message sent or acknowledged, whatever the
    /// connection's state) before it fails; the gateway then stops and re-runs the batch when it
    /// restarts (default `60s`).
    #[serde(
        default = "default_ack_timeout",
        deserialize_with = "sluice_core::time::serde_duration::deserialize"
    )]
    #[schemars(with = "sluice_core::time::DurationText")]
    pub ack_timeout: std::time::Duration,
}

fn default_ack_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

fn default_qos() -> u8 {
    1
}
fn default_payload_column() -> String {
    "payload".into()
}
fn default_inflight() -> u16 {
    1000
}

pub struct MqttSinkConnector;

impl SinkConnector for MqttSinkConnector {
    type Config = Joined<Joined<Connection, Reconnect>, MqttSinkConfig>;
    fn build(
        &self,
        cx: &BuildContext,
        at: &Component,
        options: Self::Config,
    ) -> Result<Box<dyn Sink>, ConfigError> {
        let Joined {
            shared:
                Joined {
                    shared: mut conn,
                    own: reconnect,
                },
            own: cfg,
        } = options;
        let path = at.path.as_str();
        if cfg.qos > 2 {
            return Err(ConfigError::new(
                format!("{path}.qos"),
                "0, 1 or 2",
                cfg.qos.to_string(),
            ));
        }
        let template = Template::parse(&format!("{path}.topic"), &cfg.topic, "alerts/{site}")?;
        let name = at.name.clone();
        // A re-run batch publishes again; a session carried across restarts would only bring
        // acknowledgements for packets this process never sent.
        conn.clean_session = true;
        let transport = conn.transport(path)?;
        let client_id = conn.client_id(&cx.app_name, &name);
        Ok(Box::new(MqttSink {
            options: Some(Options::new(&conn, client_id, transport, cfg.inflight)),
            retry: Retry {
                initial: reconnect.retry_initial,
                max: reconnect.retry_max,
                connect_timeout: conn.connect_timeout,
            },
            endpoint: conn.endpoint(),
            template,
            cfg,
            name,
            conn: None,
        }))
    }
}

pub struct MqttSink {
    options: Option<Options>,
    retry: Retry,
    endpoint: String,
    template: Template,
    cfg: MqttSinkConfig,
    name: String,
    conn: Option<(Client, mpsc::Receiver<Event>)>,
}

/// The topic and payload of every row of one batch.
/// Why `topic` cannot be published to, if it cannot (MQTT 3.1.1 §4.7, 5.0 §4.7).
fn bad_topic(topic: &str) -> Option<&'static str> {
    if topic.is_empty() {
        Some("an empty topic")
    } else if topic.contains(['+', '#']) {
        Some("a topic with a wildcard (`+` or `#`), which only subscriptions may use")
    } else if topic.contains('\0') {
        Some("a topic with a NUL character")
    } else if topic.len() > 65_535 {
        Some("a topic over 65,535 bytes")
    } else {
        None
    }
}

fn messages(
    template: &Template,
    payload_column: &str,
    schema: &SchemaRef,
    batch: &arrow::record_batch::RecordBatch,
    sink: &str,
    dead: &sluice_core::DeadLetters,
) -> Result<Vec<(String, Vec<u8>)>> {
    let topics = template
        .render(batch)
        .map_err(|e| Error::msg(format!("mqtt sink `{sink}`: topic: {e}")))?;
    let payloads: Vec<Vec<u8>> = match schema.index_of(payload_column) {
        Ok(i) => sluice_formats::messages::column_bytes(batch.column(i))?,
        Err(_) => sluice_formats::messages::json_rows(batch)?,
    };
    let mut out = Vec::with_capacity(batch.num_rows());
    for (r, (payload, topic)) in payloads.into_iter().zip(topics).enumerate() {
        match bad_topic(&topic) {
            None => out.push((topic, payload)),
            Some(why) => {
                let row = batch.slice(r, 1);
                dead.extend(sluice_formats::dead_rows(
                    &format!("sink `{sink}`"),
                    &format!("{why} (topic `{topic}`)"),
                    std::slice::from_ref(&row),
                ));
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl Sink for MqttSink {
    async fn write(&mut self, batch: SinkBatch<'_>) -> Result<()> {
        if self.conn.is_none() {
            let options = self.options.take().expect("connects once");
            let capacity = self.cfg.inflight.max(1) as usize * 2;
            self.conn = Some(client::start(
                options,
                capacity,
                Default::default(),
                self.retry,
            ));
        }
        let (client, events) = self.conn.as_mut().expect("connected");
        let mut all = Vec::with_capacity(batch.num_rows());
        for b in batch.batches {
            all.extend(messages(
                &self.template,
                &self.cfg.payload_column,
                &batch.schema,
                b,
                &self.name,
                batch.dead,
            )?);
        }
        let expected = if self.cfg.qos == 0 { 0 } else { all.len() };
        let mut next = 0;
        let mut acked = 0;
        while next < all.len() || acked < expected {
            let (topic, payload) = all.get(next).cloned().unwrap_or_default();
            tokio::select! {
                r = client.publish(topic, self.cfg.qos, self.cfg.retain, payload), if next < all.len() => {
                    r?;
                    next += 1;
                }
                ev = tokio::time::timeout(self.cfg.ack_timeout, events.recv()) => match ev {
                    Err(_) => return Err(Error::msg(format!(
                        "mqtt sink `{}`: no progress in {} ({acked} of {expected} message(s) acknowledged by {}): \
                         the batch is not written; it is re-run when the gateway restarts",
                        self.name, sluice_core::time::format_duration(self.cfg.ack_timeout), self.endpoint
                    ))),
                    Ok(None) => return Err(Error::msg(format!("mqtt sink `{}`: the connection task ended", self.name))),
                    Ok(Some(Event::Published)) => acked += 1,
                    Ok(Some(Event::PublishFailed(why))) => return Err(Error::msg(format!(
                        "mqtt sink `{}`: {} did not take a message ({why}): the batch is not written",
                        self.name, self.endpoint
                    ))),
                    Ok(Some(Event::Connected { .. })) => {
                        tracing::info!(sink = %self.name, endpoint = %self.endpoint, "mqtt connected");
                    }
                    Ok(Some(Event::Down { error, refused })) => {
                        if refused {
                            return Err(crate::connection::refused("sink", &self.name, &self.endpoint, &error));
                        }
                        tracing::warn!(sink = %self.name, endpoint = %self.endpoint, %error, "mqtt connection down; retrying");
                    }
                    Ok(Some(_)) => {}
                },
            }
        }
        Ok(())
    }

    fn idempotent(&self) -> bool {
        false
    }

    fn unconfirmed(&self) -> bool {
        self.cfg.qos == 0
    }

    async fn close(&mut self) -> Result<()> {
        if let Some((client, _)) = &self.conn {
            client.disconnect().await;
        }
        Ok(())
    }
}
