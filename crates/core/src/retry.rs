//! Reconnecting with backoff: the keys every connector that keeps a connection to a peer shares
//! (the socket source, the MQTT source and sink, ...), joined into its options with
//! [`crate::options::Joined`].

use crate::time::serde_duration;
use serde::Deserialize;
use std::time::Duration;

/// How a dropped or refused connection is retried: exponential backoff from `retry_initial` to
/// `retry_max`, for as long as the gateway runs.
#[derive(Debug, Clone, Copy, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reconnect {
    /// First reconnect delay (default 100ms); doubles up to `retry_max`.
    #[serde(
        default = "default_retry_initial",
        deserialize_with = "serde_duration::deserialize"
    )]
    #[schemars(with = "crate::time::DurationText")]
    pub retry_initial: Duration,
    /// Longest reconnect delay (default 5s).
    #[serde(
        default = "default_retry_max",
        deserialize_with = "serde_duration::deserialize"
    )]
    #[schemars(with = "crate::time::DurationText")]
    pub retry_max: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            retry_initial: default_retry_initial(),
            retry_max: default_retry_max(),
        }
    }
}

fn default_retry_initial() -> Duration {
    Duration::from_millis(100)
}

fn default_retry_max() -> Duration {
    Duration::from_secs(5)
}
