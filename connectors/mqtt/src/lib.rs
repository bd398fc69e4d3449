//! MQTT for sluice: the `mqtt` source (IoT sensors; QoS 1/2 acknowledged only once the WAL holds
//! the message, persistent sessions, shared subscriptions) and the `mqtt` sink (alerts and
//! actuation on topics templated from columns). Both speak MQTT 3.1.1 or 5 through rumqttc.

mod client;
mod connection;
mod redelivery;
mod sink;
mod source;

pub use connection::{Connection, Protocol, Tls};
pub use sink::{MqttSinkConfig, MqttSinkConnector};
pub use source::{MqttSourceConfig, MqttSourceConnector, Subscription};
