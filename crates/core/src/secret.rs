//! Credentials in configs: read like strings (a number is taken as its digits, so a numeric
//! password set through a `SLUICE__…` variable works), printed as `***` everywhere.

use serde::{Deserialize, Deserializer};
use std::fmt;

/// A password, key or token. `Debug` and `Display` print `***`; [`Secret::expose`] gives the value
/// to the one place that needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the client library that sends it. Never format it into a message.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl schemars::JsonSchema for Secret {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Secret".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": ["string", "number"],
            "description": "A credential: read as a string, never printed (shown as `***`)."
        })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Int(i64),
            Uint(u64),
            Float(f64),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("invalid type: expected a string (a secret)"))?
        {
            Raw::Text(s) => Ok(Secret(s)),
            Raw::Int(n) => Ok(Secret(n.to_string())),
            Raw::Uint(n) => Ok(Secret(n.to_string())),
            Raw::Float(n) => Ok(Secret(n.to_string())),
        }
    }
}

/// Whether a config key (its last segment) holds a credential, whose value no message may show.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.rsplit('.').next().unwrap_or(key).to_ascii_lowercase();
    ["password", "secret", "token", "passphrase", "credential"]
        .iter()
        .any(|w| k.contains(w))
        || k == "access_key_id"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_secrets_too_and_nothing_prints_them() {
        let s: Secret = serde_json::from_value(serde_json::json!(123456)).unwrap();
        assert_eq!(s.expose(), "123456");
        let s: Secret = serde_json::from_value(serde_json::json!("hunter2")).unwrap();
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        let e = serde_json::from_value::<Secret>(serde_json::json!(["hunter2"]))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(is_secret_key("sources.m.password"));
        assert!(is_secret_key("sasl.password"));
        assert!(is_secret_key("sinks.s3.secret_access_key"));
        assert!(!is_secret_key("sinks.k.key"));
        assert!(!is_secret_key("sources.m.port"));
    }
}
