//! One MQTT connection, for either protocol version: a task that polls rumqttc's event loop
//! (reconnecting with backoff) and turns what it sees into [`Event`]s, and a [`Client`] handle to
//! acknowledge, subscribe and publish.
//!
//! rumqttc forgets which incoming QoS 2 messages it sent PUBREC for whenever the connection drops
//! (and, of course, when the process restarts); the broker then sends PUBREL for them and rumqttc
//! rejects it as unsolicited, reconnecting for ever. The driver keeps that set itself (`released`,
//! which the source also persists with its WAL blocks) and gives it back to rumqttc after every
//! CONNACK; a PUBREL it still did not know is added to the set, so the next connection completes it.

use crate::connection::Options;
use backon::BackoffBuilder;
use rumqttc::Outgoing;
use sluice_core::{Error, Result};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// A message received from the broker.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
    /// MQTT 5 content type.
    pub content_type: Option<String>,
    /// MQTT 5 user properties.
    pub user_properties: Vec<(String, String)>,
}

#[derive(Debug)]
pub enum Event {
    Connected {
        session_present: bool,
    },
    Message(Message),
    /// One of our QoS 1/2 publishes was acknowledged (PUBACK / PUBCOMP).
    Published,
    /// The broker answered one of our publishes with an MQTT 5 failure reason: not delivered.
    PublishFailed(String),
    /// The broker answered a SUBSCRIBE: the QoS granted per filter, None where it refused.
    SubAck(Vec<Option<u8>>),
    /// Our PUBACK / PUBREC for a received message was written out.
    Acked(u16),
    /// Our PUBCOMP was written out: the QoS 2 exchange of that packet id is over, so the broker
    /// will not send that message again, and may give the id to a new one.
    Completed(u16),
    /// A probe (UNSUBSCRIBE of a filter nobody uses) was written out with this packet id ...
    ProbeSent(u16),
    /// ... and the broker answered it: it has read everything written before the probe.
    ProbeAnswered(u16),
    /// The connection failed; the driver reconnects after a backoff. `refused` is set when the
    /// broker refused the credentials or the client id (retrying will not help).
    Down {
        error: String,
        refused: bool,
    },
}

/// QoS 2 packet ids we sent PUBREC for and the broker has not released yet.
pub type Released = Arc<Mutex<BTreeSet<u16>>>;

#[derive(Clone)]
pub enum Client {
    V311(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

fn qos_of(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5_of(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// The filter probes unsubscribe from.
const PROBE_FILTER: &str = "$sluice/probe";

fn client_error(e: impl std::fmt::Display) -> Error {
    Error::msg(format!("MQTT client stopped: {e}"))
}

impl Client {
    /// Acknowledge a received message (PUBACK for QoS 1, PUBREC for QoS 2; nothing for QoS 0).
    pub async fn ack(&self, qos: u8, pkid: u16) -> Result<()> {
        match self {
            Client::V311(c) => {
                let mut p = rumqttc::Publish::new("", qos_of(qos), Vec::new());
                p.pkid = pkid;
                c.ack(&p).await.map_err(client_error)
            }
            Client::V5(c) => {
                let mut p =
                    rumqttc::v5::mqttbytes::v5::Publish::new("", qos5_of(qos), Vec::new(), None);
                p.pkid = pkid;
                c.ack(&p).await.map_err(client_error)
            }
        }
    }

    /// Ask the broker for an answer that proves it has read what was written before: an
    /// UNSUBSCRIBE of a filter this client never subscribes to (a broker answers UNSUBACK whether
    /// or not anything matched, and reads a connection's packets in order).
    pub async fn probe(&self) -> Result<()> {
        match self {
            Client::V311(c) => c.unsubscribe(PROBE_FILTER).await.map_err(client_error),
            Client::V5(c) => c.unsubscribe(PROBE_FILTER).await.map_err(client_error),
        }
    }

    pub async fn subscribe(&self, filter: &str, qos: u8) -> Result<()> {
        match self {
            Client::V311(c) => c.subscribe(filter, qos_of(qos)).await.map_err(client_error),
            Client::V5(c) => c
                .subscribe(filter, qos5_of(qos))
                .await
                .map_err(client_error),
        }
    }

    pub async fn publish(
        &self,
        topic: String,
        qos: u8,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<()> {
        match self {
            Client::V311(c) => c
                .publish(topic, qos_of(qos), retain, payload)
                .await
                .map_err(client_error),
            Client::V5(c) => c
                .publish(topic, qos5_of(qos), retain, payload)
                .await
                .map_err(client_error),
        }
    }

    pub async fn disconnect(&self) {
        let _ = match self {
            Client::V311(c) => c.disconnect().await.map_err(client_error),
            Client::V5(c) => c.disconnect().await.map_err(client_error),
        };
    }
}

/// Reconnect delays: exponential from `initial` up to `max`, for ever.
#[derive(Clone, Copy)]
pub struct Retry {
    pub initial: Duration,
    pub max: Duration,
    pub connect_timeout: Duration,
}

/// Start the connection's driver task. Events arrive on the returned channel (`capacity` of them
/// may wait); dropping the receiver stops the task.
pub fn start(
    options: Options,
    capacity: usize,
    released: Released,
    retry: Retry,
) -> (Client, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel(capacity.max(16));
    let capacity = capacity.max(16);
    match options {
        Options::V311(o) => {
            let (client, mut el) = rumqttc::AsyncClient::new(*o, capacity);
            el.network_options
                .set_connection_timeout(retry.connect_timeout.as_secs().max(1));
            tokio::spawn(drive(el, tx, released, retry));
            (Client::V311(client), rx)
        }
        Options::V5(mut o) => {
            o.set_connection_timeout(retry.connect_timeout.as_secs().max(1));
            let (client, el) = rumqttc::v5::AsyncClient::new(*o, capacity);
            tokio::spawn(drive(el, tx, released, retry));
            (Client::V5(client), rx)
        }
    }
}

/// What one poll of an event loop meant to the driver.
enum Polled {
    ConnAck {
        session_present: bool,
    },
    Message(Message),
    /// PUBACK / PUBCOMP for one of our publishes.
    Published,
    PublishFailed(String),
    SubAck(Vec<Option<u8>>),
    /// We sent PUBCOMP: the QoS 2 exchange of an incoming message is over.
    PubCompSent(u16),
    /// We sent PUBACK / PUBREC for a received message.
    AckSent(u16),
    ProbeSent(u16),
    ProbeAnswered(u16),
    Other,
}

/// Why a poll failed.
struct Failure {
    error: String,
    /// A PUBREL (or ack) for a packet id the client did not know.
    unsolicited: Option<u16>,
    /// Credentials or client id refused.
    refused: bool,
}

/// The two rumqttc event loops, as the driver needs them.
trait EventLoop: Send + 'static {
    fn poll(&mut self) -> impl std::future::Future<Output = Result<Polled, Failure>> + Send;
    /// Tell the client we sent PUBREC for `pkid` (so it answers the broker's PUBREL).
    fn released(&mut self, pkid: u16);
}

impl EventLoop for rumqttc::EventLoop {
    async fn poll(&mut self) -> Result<Polled, Failure> {
        use rumqttc::{ConnectReturnCode as Code, ConnectionError, Event as Ev, Packet};
        match rumqttc::EventLoop::poll(self).await {
            Ok(Ev::Incoming(Packet::ConnAck(c))) => Ok(Polled::ConnAck {
                session_present: c.session_present,
            }),
            Ok(Ev::Incoming(Packet::Publish(p))) => Ok(Polled::Message(Message {
                topic: p.topic,
                payload: p.payload.to_vec(),
                qos: p.qos as u8,
                retain: p.retain,
                dup: p.dup,
                pkid: p.pkid,
                content_type: None,
                user_properties: Vec::new(),
            })),
            Ok(Ev::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => Ok(Polled::Published),
            Ok(Ev::Incoming(Packet::SubAck(a))) => Ok(Polled::SubAck(
                a.return_codes
                    .iter()
                    .map(|c| match c {
                        rumqttc::SubscribeReasonCode::Success(q) => Some(*q as u8),
                        rumqttc::SubscribeReasonCode::Failure => None,
                    })
                    .collect(),
            )),
            Ok(Ev::Outgoing(Outgoing::PubComp(pkid))) => Ok(Polled::PubCompSent(pkid)),
            Ok(Ev::Outgoing(Outgoing::PubAck(pkid) | Outgoing::PubRec(pkid))) => {
                Ok(Polled::AckSent(pkid))
            }
            Ok(Ev::Outgoing(Outgoing::Unsubscribe(pkid))) => Ok(Polled::ProbeSent(pkid)),
            Ok(Ev::Incoming(Packet::UnsubAck(a))) => Ok(Polled::ProbeAnswered(a.pkid)),
            Ok(_) => Ok(Polled::Other),
            Err(e) => Err(Failure {
                unsolicited: match &e {
                    ConnectionError::MqttState(rumqttc::StateError::Unsolicited(p)) => Some(*p),
                    _ => None,
                },
                refused: matches!(
                    &e,
                    ConnectionError::ConnectionRefused(
                        Code::BadUserNamePassword | Code::NotAuthorized | Code::BadClientId
                    )
                ),
                error: e.to_string(),
            }),
        }
    }

    fn released(&mut self, pkid: u16) {
        let mut p = rumqttc::Publish::new("", rumqttc::QoS::ExactlyOnce, Vec::new());
        p.pkid = pkid;
        let _ = self
            .state
            .handle_incoming_packet(rumqttc::Packet::Publish(p));
        self.state.events.pop_back();
    }
}

impl EventLoop for rumqttc::v5::EventLoop {
    async fn poll(&mut self) -> Result<Polled, Failure> {
        use rumqttc::v5::mqttbytes::v5::{
            ConnectReturnCode as Code, Packet, PubAckReason, PubCompReason, PubRecReason,
            SubscribeReasonCode,
        };
        use rumqttc::v5::{ConnectionError, Event as Ev, StateError};
        match rumqttc::v5::EventLoop::poll(self).await {
            Ok(Ev::Incoming(Packet::ConnAck(c))) => Ok(Polled::ConnAck {
                session_present: c.session_present,
            }),
            Ok(Ev::Incoming(Packet::Publish(p))) => {
                let (content_type, user_properties) = match p.properties {
                    Some(pr) => (pr.content_type, pr.user_properties),
                    None => (None, Vec::new()),
                };
                Ok(Polled::Message(Message {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload.to_vec(),
                    qos: p.qos as u8,
                    retain: p.retain,
                    dup: p.dup,
                    pkid: p.pkid,
                    content_type,
                    user_properties,
                }))
            }
            // MQTT 5 acknowledgements carry a reason: only success (and "no subscribers", which
            // is one) means the broker took the message.
            Ok(Ev::Incoming(Packet::PubAck(a))) => Ok(match a.reason {
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Polled::Published,
                r => Polled::PublishFailed(format!("PUBACK {r:?}")),
            }),
            Ok(Ev::Incoming(Packet::PubRec(a))) => Ok(match a.reason {
                PubRecReason::Success | PubRecReason::NoMatchingSubscribers => Polled::Other,
                r => Polled::PublishFailed(format!("PUBREC {r:?}")),
            }),
            Ok(Ev::Incoming(Packet::PubComp(a))) => Ok(match a.reason {
                PubCompReason::Success => Polled::Published,
                r => Polled::PublishFailed(format!("PUBCOMP {r:?}")),
            }),
            Ok(Ev::Incoming(Packet::SubAck(a))) => Ok(Polled::SubAck(
                a.return_codes
                    .iter()
                    .map(|c| match c {
                        SubscribeReasonCode::Success(q) => Some(*q as u8),
                        _ => None,
                    })
                    .collect(),
            )),
            Ok(Ev::Outgoing(Outgoing::PubComp(pkid))) => Ok(Polled::PubCompSent(pkid)),
            Ok(Ev::Outgoing(Outgoing::PubAck(pkid) | Outgoing::PubRec(pkid))) => {
                Ok(Polled::AckSent(pkid))
            }
            Ok(Ev::Outgoing(Outgoing::Unsubscribe(pkid))) => Ok(Polled::ProbeSent(pkid)),
            Ok(Ev::Incoming(Packet::UnsubAck(a))) => Ok(Polled::ProbeAnswered(a.pkid)),
            Ok(_) => Ok(Polled::Other),
            Err(e) => Err(Failure {
                unsolicited: match &e {
                    ConnectionError::MqttState(StateError::Unsolicited(p)) => Some(*p),
                    _ => None,
                },
                refused: matches!(
                    &e,
                    ConnectionError::ConnectionRefused(
                        Code::BadUserNamePassword
                            | Code::NotAuthorized
                            | Code::ClientIdentifierNotValid
                    )
                ),
                error: e.to_string(),
            }),
        }
    }

    fn released(&mut self, pkid: u16) {
        let mut p = rumqttc::v5::mqttbytes::v5::Publish::new(
            "",
            rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
            Vec::new(),
            None,
        );
        p.pkid = pkid;
        let _ = self
            .state
            .handle_incoming_packet(rumqttc::v5::mqttbytes::v5::Packet::Publish(p));
        self.state.events.pop_back();
    }
}

/// Poll `el` for ever (reconnecting with backoff), forwarding events until the receiver is dropped.
async fn drive(mut el: impl EventLoop, tx: mpsc::Sender<Event>, released: Released, retry: Retry) {
    let mut backoff = Backoff::new(retry);
    loop {
        let ev = match el.poll().await {
            Ok(Polled::ConnAck { session_present }) => {
                backoff.reset();
                let pending: Vec<u16> = released.lock().unwrap().iter().copied().collect();
                for pkid in pending {
                    el.released(pkid);
                }
                Event::Connected { session_present }
            }
            Ok(Polled::Message(m)) => Event::Message(m),
            Ok(Polled::Published) => Event::Published,
            Ok(Polled::PublishFailed(why)) => Event::PublishFailed(why),
            Ok(Polled::SubAck(codes)) => Event::SubAck(codes),
            Ok(Polled::AckSent(pkid)) => Event::Acked(pkid),
            Ok(Polled::ProbeSent(pkid)) => Event::ProbeSent(pkid),
            Ok(Polled::ProbeAnswered(pkid)) => Event::ProbeAnswered(pkid),
            Ok(Polled::PubCompSent(pkid)) => {
                released.lock().unwrap().remove(&pkid);
                Event::Completed(pkid)
            }
            Ok(Polled::Other) => continue,
            Err(f) => {
                if let Some(pkid) = f.unsolicited {
                    // Most likely a PUBREL whose PUBREC state was lost: known from the next
                    // connection on.
                    released.lock().unwrap().insert(pkid);
                }
                let down = Event::Down {
                    error: f.error,
                    refused: f.refused,
                };
                if tx.send(down).await.is_err() {
                    return;
                }
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
        };
        if tx.send(ev).await.is_err() {
            return;
        }
    }
}

/// Exponential reconnect delays, reset by a successful connect.
struct Backoff {
    retry: Retry,
    delays: backon::ExponentialBackoff,
}

impl Backoff {
    fn new(retry: Retry) -> Self {
        Backoff {
            retry,
            delays: Self::delays(retry),
        }
    }

    fn delays(retry: Retry) -> backon::ExponentialBackoff {
        backon::ExponentialBuilder::default()
            .with_min_delay(retry.initial)
            .with_max_delay(retry.max)
            .without_max_times()
            .build()
    }

    fn next(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.retry.max)
    }

    fn reset(&mut self) {
        self.delays = Self::delays(self.retry);
    }
}
