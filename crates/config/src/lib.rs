//! sluice-config: the config file model, its loading (TOML or YAML file + `SLUICE__` environment
//! overrides) and the structural checks that need no connector: every error names the file, the key
//! path, what was expected and what was found.
//!
//! Connector options (everything in `[sources.X]` / `[sinks.X]` but `type`) are checked by the
//! connector's factory; SQL is checked by planning it. `sluice validate` runs all three.

mod model;
pub mod reference;

pub use model::*;

use serde_json::Value;
use sluice_core::options::{describe, suggest};
use sluice_core::{ConfigError, Registry};
use std::fmt;
use std::path::{Path, PathBuf};

/// A config error with the file it came from.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub kind: DiagnosticKind,
}

#[derive(Debug, Clone)]
pub enum DiagnosticKind {
    /// The file could not be read or parsed.
    Syntax(String),
    /// A key holds the wrong thing.
    Key(ConfigError),
    /// A job's SQL does not plan.
    Sql { job: String, message: String },
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match &self.kind {
            DiagnosticKind::Syntax(m) => write!(f, "{file}: {m}"),
            DiagnosticKind::Key(e) => write!(f, "{file}: {e}"),
            DiagnosticKind::Sql { job, message } => {
                write!(
                    f,
                    "{file}: key `jobs.{job}.sql`: the SQL of job `{job}` does not plan: {message}"
                )
            }
        }
    }
}

impl std::error::Error for Diagnostic {}

/// Read a config file (`.toml`, `.yaml` or `.yml`) with `SLUICE__` environment overrides
/// (`SLUICE__SOURCES__LINES__PORT=9999` sets `sources.lines.port`) and check its structure.
pub fn load(path: &Path, registry: &Registry) -> Result<AppConfig, Vec<Diagnostic>> {
    let syntax = |m: String| {
        vec![Diagnostic {
            file: path.to_path_buf(),
            kind: DiagnosticKind::Syntax(m),
        }]
    };
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => config::FileFormat::Toml,
        Some("yaml") | Some("yml") => config::FileFormat::Yaml,
        other => {
            return Err(syntax(format!(
                "expected a .toml, .yaml or .yml file, found {}",
                other
                    .map(|e| format!("a .{e} file"))
                    .unwrap_or_else(|| "no extension".into())
            )))
        }
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| syntax(format!("cannot read the file: {e}")))?;
    load_str(&text, format, path, registry)
}

/// As [`load`], from text already read.
pub fn load_str(
    text: &str,
    format: config::FileFormat,
    path: &Path,
    registry: &Registry,
) -> Result<AppConfig, Vec<Diagnostic>> {
    let syntax = |m: String| {
        vec![Diagnostic {
            file: path.to_path_buf(),
            kind: DiagnosticKind::Syntax(m),
        }]
    };
    let mut builder = config::Config::builder().add_source(config::File::from_str(text, format));
    for (key, value) in env_overrides(std::env::vars()) {
        builder = builder
            .set_override(&key, value)
            .map_err(|e| syntax(format!("the environment override of `{key}`: {e}")))?;
    }
    let cfg = builder
        .build()
        .map_err(|e| syntax(format!("the file does not parse: {e}")))?;
    let raw: Value = cfg
        .try_deserialize()
        .map_err(|e| syntax(format!("the file does not parse: {e}")))?;
    from_value(raw, registry).map_err(|errs| {
        errs.into_iter()
            .map(|e| Diagnostic {
                file: path.to_path_buf(),
                kind: DiagnosticKind::Key(e),
            })
            .collect()
    })
}

/// The `SLUICE__A__B=v` variables as (`a.b`, value) overrides. A value is read as a boolean or a
/// number where it looks like one, except for credentials (see `sluice_core::secret`), which
/// stay text: a numeric password, or one with leading zeros, is kept as typed.
fn env_overrides(vars: impl Iterator<Item = (String, String)>) -> Vec<(String, config::Value)> {
    let mut out: Vec<(String, config::Value)> = vars
        .filter_map(|(k, v)| {
            let key = k
                .strip_prefix("SLUICE__")?
                .to_lowercase()
                .replace("__", ".");
            let value: config::Value = if sluice_core::secret::is_secret_key(&key) {
                v.into()
            } else if let Ok(b) = v.parse::<bool>() {
                b.into()
            } else if let Ok(n) = v.parse::<i64>() {
                n.into()
            } else if let Some(f) = v.parse::<f64>().ok().filter(|f| f.is_finite()) {
                f.into()
            } else {
                v.into()
            };
            Some((key, value))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The job name sinks see for the dead-letter output's rows; no job may take it.
pub const DEAD_LETTER_WRITER: &str = "dead_letter";

/// Check a raw config tree and build the typed model.
pub fn from_value(raw: Value, registry: &Registry) -> Result<AppConfig, Vec<ConfigError>> {
    let file: FileModel = sluice_core::options::parse("", raw).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let app = file.app;
    if app.batch_interval.is_zero() {
        errors.push(ConfigError::new(
            "app.batch_interval",
            "a duration greater than zero",
            "\"0s\"",
        ));
    }
    let mut names: Vec<(String, &'static str)> = Vec::new();
    let mut check_name = |section: &'static str, name: &str, errors: &mut Vec<ConfigError>| {
        let ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            errors.push(ConfigError::new(
                format!("{section}.{name}"),
                "a name of lowercase letters, digits and `_` starting with a letter (it is a SQL table name)",
                format!("\"{name}\""),
            ));
        }
        if section != "sinks" {
            if let Some((_, other)) = names.iter().find(|(n, _)| n == name) {
                errors.push(ConfigError::new(
                    format!("{section}.{name}"),
                    "a name not used by another source, table or job (they share the SQL namespace)",
                    format!("`{name}` already defined in [{other}]"),
                ));
            }
            names.push((name.to_string(), section));
        }
    };

    let mut sources = Vec::new();
    for (name, v) in file.sources {
        check_name("sources", &name, &mut errors);
        match component("sources", &name, v, &registry.source_types()) {
            Ok(c) => sources.push(c),
            Err(e) => errors.push(e),
        }
    }
    let mut sinks = Vec::new();
    for (name, v) in file.sinks {
        check_name("sinks", &name, &mut errors);
        match component("sinks", &name, v, &registry.sink_types()) {
            Ok(c) => sinks.push(c),
            Err(e) => errors.push(e),
        }
    }
    let sink_names: Vec<String> = sinks.iter().map(|s: &Component| s.name.clone()).collect();
    let mut tables = Vec::new();
    for (name, t) in file.tables {
        check_name("tables", &name, &mut errors);
        tables.push(NamedTable { name, table: t });
    }
    let mut jobs = Vec::new();
    for (name, j) in file.jobs {
        check_name("jobs", &name, &mut errors);
        if name == DEAD_LETTER_WRITER {
            errors.push(
                ConfigError::new(
                    format!("jobs.{name}"),
                    format!("a job name other than `{DEAD_LETTER_WRITER}`, which names the dead-letter output in sinks (file names, manifests, Kafka markers)"),
                    format!("\"{name}\""),
                )
                .with_hint("rename the job, e.g. `dead_letters_report`"),
            );
        }
        errors.extend(check_job(&name, &j, &app, &sink_names));
        jobs.push(NamedJob { name, job: j });
    }
    if app.scale_out && app.checkpoint_dir.is_none() {
        errors.push(
            ConfigError::new("app.scale_out", "a `checkpoint_dir` with it", "no checkpoint_dir")
                .with_hint("a gateway of a scale-out app finishes its unfinished batches from its checkpoint when it restarts; set app.checkpoint_dir"),
        );
    }
    if let Some(i) = &app.instance {
        if i.is_empty()
            || !i
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            errors.push(ConfigError::new(
                "app.instance",
                "a name of letters, digits, `-`, `_` or `.`",
                format!("\"{i}\""),
            ));
        }
    }
    if let Some(dl) = &app.dead_letter {
        if !sink_names.contains(dl) {
            errors.push(unknown_ref("app.dead_letter", "sink", dl, &sink_names));
        }
    }
    if jobs.is_empty() {
        errors.push(ConfigError::new(
            "jobs",
            "at least one job (a [jobs.NAME] table with `sql`)",
            "none",
        ));
    }
    if errors.is_empty() {
        Ok(AppConfig {
            app,
            sources,
            tables,
            jobs,
            sinks,
        })
    } else {
        Err(errors)
    }
}

fn component(
    section: &str,
    name: &str,
    v: Value,
    known: &[String],
) -> Result<Component, ConfigError> {
    let path = format!("{section}.{name}");
    let Value::Object(mut map) = v else {
        return Err(ConfigError::new(
            path,
            "a table with a `type` key",
            describe(&v),
        ));
    };
    let kinds = known
        .iter()
        .map(|k| format!("\"{k}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let ty = match map.shift_remove("type") {
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(ConfigError::new(
                format!("{path}.type"),
                format!("one of {kinds}"),
                describe(&other),
            ))
        }
        None => {
            return Err(ConfigError::new(
                format!("{path}.type"),
                format!("one of {kinds}"),
                "nothing",
            ))
        }
    };
    if !known.contains(&ty) {
        let e = ConfigError::new(
            format!("{path}.type"),
            format!("one of {kinds}"),
            format!("\"{ty}\""),
        );
        return Err(match suggest(&ty, known) {
            Some(s) => e.with_hint(format!("did you mean \"{s}\"?")),
            None => e,
        });
    }
    Ok(Component {
        name: name.to_string(),
        kind: ty,
        options: Value::Object(map),
    })
}

fn unknown_ref(path: &str, what: &str, name: &str, known: &[String]) -> ConfigError {
    let e = ConfigError::new(
        path,
        format!(
            "the name of a {what} defined in this file ({})",
            if known.is_empty() {
                "none is".into()
            } else {
                known.join(", ")
            }
        ),
        format!("\"{name}\""),
    );
    match suggest(name, known) {
        Some(s) => e.with_hint(format!("did you mean \"{s}\"?")),
        None => e,
    }
}

fn check_job(name: &str, j: &JobConfig, app: &AppSection, sinks: &[String]) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let path = format!("jobs.{name}");
    if j.sql.trim().is_empty() {
        errors.push(ConfigError::new(
            format!("{path}.sql"),
            "a SQL query",
            "an empty string",
        ));
    }
    for (i, s) in j.sinks.iter().enumerate() {
        if !sinks.contains(s) {
            errors.push(unknown_ref(&format!("{path}.sinks[{i}]"), "sink", s, sinks));
        }
    }
    if let Some(w) = &j.window {
        check_window(&path, w, j, app, &mut errors);
    }
    if let Some(e) = &j.event_time {
        check_event_time(&path, e, app, &mut errors);
    }
    if let Some(s) = &j.state {
        check_state(&path, s, j, &mut errors);
    }
    if j.partitions == Some(0) {
        errors.push(ConfigError::new(
            format!("{path}.partitions"),
            "a number of partitions of at least 1",
            "0",
        ));
    }
    errors
}

/// `jobs.NAME.window`: length and slide are multiples of the batch interval.
fn check_window(
    path: &str,
    w: &WindowConfig,
    j: &JobConfig,
    app: &AppSection,
    errors: &mut Vec<ConfigError>,
) {
    let bi = app.batch_interval;
    let multiple = |d: std::time::Duration| {
        !bi.is_zero() && d.as_millis().is_multiple_of(bi.as_millis()) && !d.is_zero()
    };
    let fmt = sluice_core::time::format_duration;
    if !multiple(w.length) {
        errors.push(ConfigError::new(
            format!("{path}.window.length"),
            format!("a multiple of app.batch_interval ({})", fmt(bi)),
            format!("\"{}\"", fmt(w.length)),
        ));
    }
    let slide = w.slide.unwrap_or(bi);
    if !multiple(slide) {
        errors.push(ConfigError::new(
            format!("{path}.window.slide"),
            format!("a multiple of app.batch_interval ({})", fmt(bi)),
            format!("\"{}\"", fmt(slide)),
        ));
    } else if slide > w.length {
        errors.push(ConfigError::new(
            format!("{path}.window.slide"),
            format!(
                "a slide no longer than the window length ({})",
                fmt(w.length)
            ),
            format!("\"{}\"", fmt(slide)),
        ));
    }
    if j.event_time.is_some() {
        errors.push(ConfigError::new(
            format!("{path}.window"),
            "either `window` (processing time) or `event_time`, not both",
            "both",
        ));
    }
}

/// `jobs.NAME.event_time`: a window length, a slide that divides it, and a place for late records.
fn check_event_time(
    path: &str,
    e: &EventTimeConfig,
    app: &AppSection,
    errors: &mut Vec<ConfigError>,
) {
    let fmt = sluice_core::time::format_duration;
    if e.length.is_zero() {
        errors.push(ConfigError::new(
            format!("{path}.event_time.length"),
            "a duration greater than zero",
            "\"0s\"",
        ));
    }
    if let Some(s) = e.slide {
        if s.is_zero() || s > e.length || !e.length.as_millis().is_multiple_of(s.as_millis()) {
            errors.push(ConfigError::new(
                format!("{path}.event_time.slide"),
                format!(
                    "a duration that divides the window length ({})",
                    fmt(e.length)
                ),
                format!("\"{}\"", fmt(s)),
            ));
        }
    }
    if e.late == LateRecords::DeadLetter && app.dead_letter.is_none() {
        errors.push(
            ConfigError::new(
                format!("{path}.event_time.late"),
                "\"drop\" when the app has no dead-letter sink",
                "\"dead_letter\"",
            )
            .with_hint("set app.dead_letter to a sink name, or late = \"drop\""),
        );
    }
}

/// `jobs.NAME.state`: a schema that parses, key columns of it, and no window.
fn check_state(path: &str, s: &StateConfig, j: &JobConfig, errors: &mut Vec<ConfigError>) {
    match sluice_core::schema::parse_schema(&s.schema) {
        Err(e) => errors.push(ConfigError::new(
            format!("{path}.state.schema"),
            e,
            format!("\"{}\"", s.schema),
        )),
        Ok(schema) => {
            if s.key.is_empty() {
                errors.push(ConfigError::new(
                    format!("{path}.state.key"),
                    "at least one key column",
                    "an empty list",
                ));
            }
            for (i, k) in s.key.iter().enumerate() {
                if schema.field_with_name(k).is_err() {
                    let cols: Vec<String> =
                        schema.fields().iter().map(|f| f.name().clone()).collect();
                    let e = ConfigError::new(
                        format!("{path}.state.key[{i}]"),
                        format!("a column of state.schema ({})", cols.join(", ")),
                        format!("\"{k}\""),
                    );
                    errors.push(match suggest(k, &cols) {
                        Some(c) => e.with_hint(format!("did you mean \"{c}\"?")),
                        None => e,
                    });
                }
            }
        }
    }
    if j.window.is_some() || j.event_time.is_some() {
        errors.push(ConfigError::new(
            format!("{path}.state"),
            "a job with `state` and without `window` / `event_time` (window the input in an upstream job)",
            "both",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_credentials_stay_text_and_other_values_are_typed() {
        let vars = [
            ("SLUICE__SOURCES__M__PASSWORD", "007123"),
            ("SLUICE__SOURCES__M__PORT", "1883"),
            ("SLUICE__APP__SCALE_OUT", "true"),
            ("OTHER", "x"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let got = env_overrides(vars.into_iter());
        let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["app.scale_out", "sources.m.password", "sources.m.port"]
        );
        assert_eq!(got[1].1.clone().into_string().unwrap(), "007123");
        assert_eq!(got[2].1.clone().into_int().unwrap(), 1883);
        assert!(got[0].1.clone().into_bool().unwrap());
    }
}
