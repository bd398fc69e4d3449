//! Batch time (milliseconds since the Unix epoch, like Spark's `Time`) and duration parsing.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The end of a batch interval, in milliseconds since the Unix epoch.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct BatchTime(pub i64);

impl BatchTime {
    pub fn now() -> Self {
        BatchTime(now_ms())
    }
    pub fn millis(self) -> i64 {
        self.0
    }
    pub fn plus(self, d: Duration) -> Self {
        BatchTime(self.0 + d.as_millis() as i64)
    }
    pub fn minus(self, d: Duration) -> Self {
        BatchTime(self.0 - d.as_millis() as i64)
    }
    /// The first multiple of `interval` strictly after `self` (Spark aligns batch times this way).
    pub fn next_multiple(self, interval: Duration) -> Self {
        let i = interval.as_millis().max(1) as i64;
        BatchTime((self.0 / i + 1) * i)
    }
    /// Whether this time is a multiple of `d` (window slides are aligned to the epoch).
    pub fn is_multiple_of(self, d: Duration) -> bool {
        let i = d.as_millis().max(1) as i64;
        self.0.rem_euclid(i) == 0
    }
    /// Local wall-clock form used by the console sink: `2026-11-22 13:51:24`, with `.mmm000` when the
    /// time has milliseconds (as Python's `str(datetime)` prints it in Spark's `pprint`).
    pub fn to_local_string(self) -> String {
        use chrono::{Local, TimeZone};
        let dt = Local
            .timestamp_millis_opt(self.0)
            .single()
            .unwrap_or_default();
        if self.0.rem_euclid(1000) == 0 {
            dt.format("%Y-%m-%d %H:%M:%S").to_string()
        } else {
            dt.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
        }
    }
}

impl fmt::Display for BatchTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ms", self.0)
    }
}

/// An instant given in a config or on the command line: milliseconds since the epoch, or an RFC
/// 3339 time (`2026-11-20T08:00:00Z`); as milliseconds since the epoch.
pub fn parse_instant(s: &str) -> Option<i64> {
    s.parse::<i64>().ok().or_else(|| {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis())
    })
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Parses `500ms`, `1s`, `5m`, `1h 30m` (humantime syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| e.to_string())
}

pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Serde helpers for duration fields written as strings (`"1s"`) in configs.
pub mod serde_duration {
    use serde::{de, Deserialize, Deserializer};
    use std::time::Duration;

    const EXPECTED: &str = "a duration such as \"500ms\", \"1s\" or \"5m\"";

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        from_value::<D::Error>(&v)
    }

    pub fn from_value<E: de::Error>(v: &serde_json::Value) -> Result<Duration, E> {
        match v {
            serde_json::Value::String(s) => super::parse_duration(s)
                .map_err(|_| E::invalid_value(de::Unexpected::Str(s), &EXPECTED)),
            other => Err(E::invalid_type(
                super::super::options::unexpected(other),
                &EXPECTED,
            )),
        }
    }

    pub mod option {
        use serde::{Deserialize, Deserializer};
        use std::time::Duration;
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let v = Option::<serde_json::Value>::deserialize(d)?;
            match v {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => super::from_value::<D::Error>(&v).map(Some),
            }
        }
    }
}

/// The JSON Schema of a duration option (`#[schemars(with = "sluice_core::time::DurationText")]`
/// on a `Duration` field read with [`serde_duration`]): a string such as `100ms`, `5s`, `1m`.
pub struct DurationText;

impl schemars::JsonSchema for DurationText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration: a number and a unit, e.g. `100ms`, `5s`, `1m 30s`, `2h`.",
            "pattern": "^\\s*[0-9]"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_multiple_aligns_to_interval() {
        let t = BatchTime(1_234);
        assert_eq!(t.next_multiple(Duration::from_secs(1)), BatchTime(2_000));
        assert_eq!(
            BatchTime(2_000).next_multiple(Duration::from_secs(1)),
            BatchTime(3_000)
        );
        assert!(BatchTime(10_000).is_multiple_of(Duration::from_secs(5)));
        assert!(!BatchTime(11_000).is_multiple_of(Duration::from_secs(5)));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("five").is_err());
    }
}
