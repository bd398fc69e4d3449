//! Broker connection settings shared by the MQTT source and sink, and the rumqttc options built from
//! them for either protocol version.

use schemars::JsonSchema;
use serde::Deserialize;
use sluice_core::time::serde_duration;
use sluice_core::ConfigError;

use std::time::Duration;

/// How sluice connects to the broker (the same keys for the source and the sink).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    /// Broker host.
    pub host: String,
    /// Broker port (default 1883; 8883 is the usual TLS port).
    #[serde(default = "default_port")]
    pub port: u16,
    /// `"3.1.1"` (default) or `"5"`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Client id (default `sluice-<app>-<component>`). The broker keeps a persistent session per
    /// client id: two gateways sharing a subscription need different ids.
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name, if the broker asks for one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (never logged).
    #[serde(default)]
    pub password: Option<sluice_core::Secret>,
    /// Keep-alive interval (default 30s).
    #[serde(
        default = "default_keep_alive",
        deserialize_with = "serde_duration::deserialize"
    )]
    #[schemars(with = "sluice_core::time::DurationText")]
    pub keep_alive: Duration,
    /// Start a new session at every connect. Default false for the source: the broker keeps the
    /// subscription and the messages published while the gateway is down (QoS 1 and 2), and
    /// redelivers what was not acknowledged. The sink always starts clean.
    #[serde(default)]
    pub clean_session: bool,
    /// MQTT 5: how long the broker keeps the session after a disconnect (default 1d).
    #[serde(
        default = "default_session_expiry",
        deserialize_with = "serde_duration::deserialize"
    )]
    #[schemars(with = "sluice_core::time::DurationText")]
    pub session_expiry: Duration,
    /// TLS, e.g. `tls = { ca_file = "ca.pem" }`, plus `cert_file` / `key_file` for a client
    /// certificate.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// Time allowed for the TCP/TLS connect and the CONNACK (default 5s).
    #[serde(
        default = "default_connect_timeout",
        deserialize_with = "serde_duration::deserialize"
    )]
    #[schemars(with = "sluice_core::time::DurationText")]
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, JsonSchema)]
pub enum Protocol {
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5")]
    V5,
}

/// `tls = { ... }`: PEM files.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// CA certificate(s) the broker's certificate must chain to.
    pub ca_file: String,
    /// Client certificate, for brokers that require one (with `key_file`).
    #[serde(default)]
    pub cert_file: Option<String>,
    /// The client certificate's private key.
    #[serde(default)]
    pub key_file: Option<String>,
}

fn default_port() -> u16 {
    1883
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_session_expiry() -> Duration {
    Duration::from_secs(86_400)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// The error that ends a component whose broker refused it (CONNACK with an error code): retrying
/// would not help.
pub fn refused(
    component: &str,
    name: &str,
    endpoint: impl std::fmt::Display,
    error: impl std::fmt::Display,
) -> sluice_core::Error {
    sluice_core::Error::msg(format!(
        "mqtt {component} `{name}`: {endpoint} refused the connection ({error}); check username, \
         password and client_id"
    ))
}

/// What the broker is called in logs and errors (never with credentials).
impl Connection {
    /// User name and password for the client library (the only place the password is exposed).
    fn credentials(&self) -> Option<(String, String)> {
        let user = self.username.clone()?;
        let password = self.password.as_ref().map(|p| p.expose().to_string());
        Some((user, password.unwrap_or_default()))
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }

    /// The client id, defaulting to `sluice-<app>-<component>`.
    pub fn client_id(&self, app: &str, component: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("sluice-{app}-{component}"))
    }

    /// Read the TLS files now, so a missing file is a config error rather than a connect failure.
    pub fn transport(&self, path: &str) -> Result<Option<rumqttc::Transport>, ConfigError> {
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        let read = |key: &str, file: &str| {
            std::fs::read(file).map_err(|e| {
                ConfigError::new(
                    format!("{path}.tls.{key}"),
                    "a readable PEM file",
                    format!("\"{file}\" ({e})"),
                )
            })
        };
        let ca = read("ca_file", &tls.ca_file)?;
        let client_auth = match (&tls.cert_file, &tls.key_file) {
            (Some(c), Some(k)) => Some((read("cert_file", c)?, read("key_file", k)?)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    format!("{path}.tls.key_file"),
                    "the client certificate's key file, with cert_file",
                    "nothing",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    format!("{path}.tls.cert_file"),
                    "the client certificate, with key_file",
                    "nothing",
                ))
            }
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Some(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth,
            },
        )))
    }
}

/// rumqttc options for either protocol, with manual acknowledgements.
pub enum Options {
    V311(Box<rumqttc::MqttOptions>),
    V5(Box<rumqttc::v5::MqttOptions>),
}

impl Options {
    /// `inflight`: how many QoS 1/2 messages may be unacknowledged in each direction (MQTT 5's
    /// receive maximum; for 3.1.1 the broker's own setting decides what it sends us).
    pub fn new(
        c: &Connection,
        client_id: String,
        transport: Option<rumqttc::Transport>,
        inflight: u16,
    ) -> Options {
        match c.protocol {
            Protocol::V311 => {
                let mut o = rumqttc::MqttOptions::new(client_id, c.host.clone(), c.port);
                o.set_keep_alive(c.keep_alive)
                    .set_clean_session(c.clean_session)
                    .set_manual_acks(true)
                    .set_inflight(inflight.max(1))
                    .set_max_packet_size(256 << 20, 256 << 20)
                    .set_request_channel_capacity(inflight as usize * 2 + 64);
                if let Some((user, password)) = c.credentials() {
                    o.set_credentials(user, password);
                }
                if let Some(t) = transport {
                    o.set_transport(t);
                }
                Options::V311(Box::new(o))
            }
            Protocol::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(client_id, c.host.clone(), c.port);
                o.set_keep_alive(c.keep_alive)
                    .set_clean_start(c.clean_session)
                    .set_manual_acks(true)
                    .set_receive_maximum(Some(inflight.max(1)))
                    .set_outgoing_inflight_upper_limit(inflight.max(1))
                    .set_max_packet_size(Some(256 << 20))
                    .set_request_channel_capacity(inflight as usize * 2 + 64);
                if !c.clean_session {
                    o.set_session_expiry_interval(Some(
                        c.session_expiry.as_secs().min(u32::MAX as u64) as u32,
                    ));
                }
                if let Some((user, password)) = c.credentials() {
                    o.set_credentials(user, password);
                }
                if let Some(t) = transport {
                    o.set_transport(t);
                }
                Options::V5(Box::new(o))
            }
        }
    }
}
