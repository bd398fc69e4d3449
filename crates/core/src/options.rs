//! Typed deserialization of a component's options with errors that name the key path, say what was
//! expected and what was found, and suggest the closest known key for a misspelt one.

use crate::error::{join_path, ConfigError};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The component's name in its key path (`sources.lines` → `lines`).
pub fn component_name(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

/// Deserialize `value` (the options of the component at `path`) into `T`.
///
/// `T` should use `#[serde(deny_unknown_fields)]` so misspelt keys are rejected with a suggestion.
pub fn parse<T: DeserializeOwned>(path: &str, value: Value) -> Result<T, ConfigError> {
    let found_root = value.clone();
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let inner_path = e.path().to_string();
        let inner_path = if inner_path == "." {
            String::new()
        } else {
            inner_path
        };
        let msg = e.inner().to_string();
        let full = join_path(path, &inner_path);
        from_serde_message(&full, &msg, lookup(&found_root, &inner_path))
    })
}

fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = root;
    if path.is_empty() {
        return Some(cur);
    }
    for seg in path.split('.') {
        cur = match seg.find('[') {
            Some(i) => {
                let (name, idx) = seg.split_at(i);
                let c = if name.is_empty() { cur } else { cur.get(name)? };
                let n: usize = idx.trim_matches(|c| c == '[' || c == ']').parse().ok()?;
                c.get(n)?
            }
            None => cur.get(seg)?,
        };
    }
    Some(cur)
}

/// Turns serde's messages into a `ConfigError`.
fn from_serde_message(path: &str, msg: &str, found: Option<&Value>) -> ConfigError {
    // "unknown field `prot`, expected one of `host`, `port`"  /  "expected `a` or `b`"
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (field, tail) = rest.split_once('`').unwrap_or((rest, ""));
        // serde_path_to_error's path already ends with the unknown key.
        return unknown_key(path, field, &backticked(tail));
    }
    if let Some(rest) = msg.strip_prefix("unknown variant `") {
        let (variant, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let known = backticked(tail);
        let err = ConfigError::new(
            path,
            format!("one of {}", list(&known)),
            format!("\"{variant}\""),
        );
        return match suggest(variant, &known) {
            Some(s) => err.with_hint(format!("did you mean \"{s}\"?")),
            None => err,
        };
    }
    // A credential's value is never shown, not even when it is wrong.
    if crate::secret::is_secret_key(path) && !msg.starts_with("missing field `") {
        return ConfigError::new(
            path,
            "a string (a secret)",
            "a value of another type (not shown)",
        );
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        return ConfigError::new(
            join_path(path, field),
            "a value (this key is required)",
            "nothing",
        );
    }
    // "invalid type: string \"abc\", expected u16" / "invalid value: ..., expected ..."
    for prefix in ["invalid type: ", "invalid value: ", "invalid length "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            if let Some((found, expected)) = rest.rsplit_once(", expected ") {
                return ConfigError::new(path, humanize_expected(expected), found.to_string());
            }
        }
    }
    ConfigError::new(
        path,
        "a valid value",
        found
            .map(describe)
            .unwrap_or_else(|| "an invalid value".into()),
    )
    .with_hint(msg.to_string())
}

/// `field` (at key path `path`, which ends with it) is not one of `known`.
fn unknown_key(path: &str, field: &str, known: &[String]) -> ConfigError {
    let err = ConfigError::new(
        path,
        if known.is_empty() {
            "no such key".to_string()
        } else {
            format!("one of {}", list(known))
        },
        format!("unknown key `{field}`"),
    );
    match suggest(field, known) {
        Some(s) => err.with_hint(format!("did you mean `{s}`?")),
        None => err,
    }
}

/// A component's options, read from its table.
pub trait Options: Sized {
    /// Read the options of the component at `path` from `value`, refusing unknown keys with a
    /// suggestion.
    fn parse(path: &str, value: Value) -> Result<Self, ConfigError>;
}

impl<T: DeserializeOwned> Options for T {
    fn parse(path: &str, value: Value) -> Result<Self, ConfigError> {
        parse(path, value)
    }
}

/// Options written in one table but read as two: keys shared by several connectors (`A`: the
/// decoding keys, an MQTT connection) beside the component's own (`B`). Each part refuses unknown
/// keys and keeps its key paths, which serde's `flatten` would not; a misspelt key is matched
/// against both parts' keys.
#[derive(Debug, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Joined<A, B> {
    #[serde(flatten)]
    pub shared: A,
    #[serde(flatten)]
    pub own: B,
}

/// The top-level keys of `T`'s schema, and whether they are all it accepts.
fn keys_of<T: schemars::JsonSchema>() -> (Vec<String>, bool) {
    let schema = schemars::SchemaGenerator::default().into_root_schema_for::<T>();
    let keys = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
    (keys, closed)
}

impl<A, B> Options for Joined<A, B>
where
    A: Options + schemars::JsonSchema,
    B: Options + schemars::JsonSchema,
{
    fn parse(path: &str, value: Value) -> Result<Self, ConfigError> {
        let (shared_keys, _) = keys_of::<A>();
        let (own_keys, closed) = keys_of::<B>();
        let (mut shared, mut own) = (serde_json::Map::new(), serde_json::Map::new());
        if let Value::Object(m) = value {
            for (k, v) in m {
                if shared_keys.contains(&k) {
                    shared.insert(k, v);
                } else {
                    own.insert(k, v);
                }
            }
        }
        // A misspelt key lands in the component's own part: suggest among every key.
        if let Some(k) = own.keys().find(|k| closed && !own_keys.contains(k)) {
            let known: Vec<String> = shared_keys.into_iter().chain(own_keys).collect();
            return Err(unknown_key(&join_path(path, k), k, &known));
        }
        Ok(Joined {
            own: B::parse(path, own.into())?,
            shared: A::parse(path, shared.into())?,
        })
    }
}

fn humanize_expected(e: &str) -> String {
    match e {
        "u16" => "an integer from 0 to 65535".into(),
        "u32" | "u64" | "usize" => "a non-negative integer".into(),
        "i32" | "i64" => "an integer".into(),
        "f64" | "f32" => "a number".into(),
        "a boolean" => "true or false".into(),
        other => other.to_string(),
    }
}

fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn list(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The closest of `known` to `word`, if it is close enough to be a likely typo.
pub fn suggest(word: &str, known: &[String]) -> Option<String> {
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(word, k), k))
        .filter(|(s, _)| *s >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.clone())
}

/// A short description of a JSON value for "found ..." messages.
pub fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing".into(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) => format!("number `{n}`"),
        Value::String(s) => format!("string \"{s}\""),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a table".into(),
    }
}

pub(crate) fn unexpected(v: &Value) -> serde::de::Unexpected<'_> {
    use serde::de::Unexpected;
    match v {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Unexpected::Signed(i),
            (_, Some(f)) => Unexpected::Float(f),
            _ => Unexpected::Other("number"),
        },
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

/// The JSON Schema of a size option (`#[schemars(with = "sluice_core::options::SizeText")]` on a
/// `bytesize::ByteSize` field): bytes as an integer, or a string such as `64MiB`.
pub struct SizeText;

impl schemars::JsonSchema for SizeText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Size".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": ["string", "integer"],
            "description": "A size: bytes as an integer, or a number and a unit, e.g. `512MiB`, `64 MB`."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Opts {
        host: String,
        port: u16,
    }

    #[test]
    fn unknown_key_gets_a_suggestion() {
        let e =
            parse::<Opts>("sources.x", serde_json::json!({"host": "h", "prot": 1})).unwrap_err();
        assert_eq!(e.path, "sources.x.prot");
        assert_eq!(e.hint.as_deref(), Some("did you mean `port`?"));
    }

    #[test]
    fn wrong_type_names_path_and_found() {
        let e = parse::<Opts>("s", serde_json::json!({"host": "h", "port": "abc"})).unwrap_err();
        assert_eq!(e.path, "s.port");
        assert_eq!(e.expected, "an integer from 0 to 65535");
        assert_eq!(e.found, "string \"abc\"");
    }

    #[test]
    fn missing_key_is_named() {
        let e = parse::<Opts>("s", serde_json::json!({"host": "h"})).unwrap_err();
        assert_eq!(e.path, "s.port");
        assert_eq!(e.found, "nothing");
    }

    #[derive(Deserialize, Debug, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Shared {
        format: Option<String>,
    }

    #[test]
    fn joined_options_split_keep_paths_and_suggest_across_both_parts() {
        type Both = Joined<Shared, Opts>;
        let ok = <Both as Options>::parse(
            "sources.x",
            serde_json::json!({"host": "h", "port": 1, "format": "json"}),
        )
        .unwrap();
        assert_eq!(ok.shared.format.as_deref(), Some("json"));
        assert_eq!(ok.own.port, 1);
        let e = <Both as Options>::parse(
            "sources.x",
            serde_json::json!({"host": "h", "port": 1, "fromat": "json"}),
        )
        .unwrap_err();
        assert_eq!(e.path, "sources.x.fromat");
        assert_eq!(e.hint.as_deref(), Some("did you mean `format`?"));
        assert!(
            e.expected.contains("`format`") && e.expected.contains("`port`"),
            "{}",
            e.expected
        );
        let e = <Both as Options>::parse(
            "sources.x",
            serde_json::json!({"host": "h", "port": "x", "format": "json"}),
        )
        .unwrap_err();
        assert_eq!(e.path, "sources.x.port");
    }
}
