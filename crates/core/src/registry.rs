//! The connector contract and registry: a connector declares its options as a type and builds a
//! source or sink from them; the registry maps a `type = "…"` name to it. The `sluice` binary
//! registers the connectors it ships; the engine only looks names up here.

use crate::bounded::Bounded;
use crate::error::ConfigError;
use crate::options::Options;
use crate::sink::Sink;
use crate::source::BuiltSource;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What a factory may need to know about the app.
#[derive(Clone, Debug)]
pub struct BuildContext {
    pub app_name: String,
    pub batch_interval: Duration,
    /// Directory relative paths are resolved against (the working directory).
    pub base_dir: PathBuf,
    /// `app.scale_out`: several gateways share this config's work (see [`BuildContext::instance`]).
    pub scale_out: bool,
    /// This gateway's name, stable across its restarts. With `scale_out`, shared sources tell
    /// their claims apart by it.
    pub instance: String,
    /// The name of this gateway's own share of every sink's output, when it shares them (the
    /// instance with `scale_out`; `replay-<time>` for `sluice replay`): file and object-store
    /// sinks write (and keep their manifest and staging) under `<path>/<scope>/`, and a Kafka sink's
    /// transactional id, with its exactly-once markers, gets `.<scope>`. None: the output is this
    /// gateway's alone.
    pub output_scope: Option<String>,
}

impl BuildContext {
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            self.base_dir.join(p)
        }
    }
}

/// Where a component sits in the config: its key path (`sources.lines`), for errors, and its name
/// (`lines`), for logs, dead letters and the names of what it writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Component {
    pub path: String,
    pub name: String,
}

impl Component {
    pub fn new(path: &str) -> Component {
        Component {
            path: path.to_string(),
            name: crate::options::component_name(path).to_string(),
        }
    }
    /// The key path of one of its options (`sources.lines.port`).
    pub fn key(&self, option: &str) -> String {
        crate::error::join_path(&self.path, option)
    }
}

/// A source connector: a wire protocol (or a file format) in, Arrow record batches out.
///
/// Its options are one type, `Config`: deserialized once, before `build`, with unknown keys
/// refused with a suggestion; its doc comments are the user documentation (`sluice config schema`
/// and the key tables in docs/ are generated from them).
pub trait SourceConnector: Send + Sync + 'static {
    /// A serde type that refuses unknown keys (`#[serde(deny_unknown_fields)]`), or keys shared
    /// with other connectors beside its own ([`crate::options::Joined`]).
    type Config: Options + JsonSchema;
    /// Build the source named by `at` from its options.
    fn build(
        &self,
        cx: &BuildContext,
        at: &Component,
        config: Self::Config,
    ) -> Result<BuiltSource, ConfigError>;
    /// Whether its input can be bounded (`--until-caught-up`, `sluice replay`), and how.
    fn bounded(&self) -> Option<&dyn Bounded> {
        None
    }
}

/// A sink connector: Arrow record batches in, a wire protocol (or files) out. Options as for
/// [`SourceConnector`].
pub trait SinkConnector: Send + Sync + 'static {
    /// See [`SourceConnector::Config`].
    type Config: Options + JsonSchema;
    fn build(
        &self,
        cx: &BuildContext,
        at: &Component,
        config: Self::Config,
    ) -> Result<Box<dyn Sink>, ConfigError>;
}

/// A source connector as the registry holds it: options still untyped.
pub trait SourceFactory: Send + Sync {
    /// Build the source at key path `path` (`sources.lines`) from its options (everything but
    /// `type`).
    fn build(
        &self,
        cx: &BuildContext,
        path: &str,
        options: serde_json::Value,
    ) -> Result<BuiltSource, ConfigError>;
    /// The JSON Schema of its options.
    fn schema(&self, generator: &mut SchemaGenerator) -> Schema;
    /// See [`SourceConnector::bounded`].
    fn bounded(&self) -> Option<&dyn Bounded>;
}

/// A sink connector as the registry holds it.
pub trait SinkFactory: Send + Sync {
    fn build(
        &self,
        cx: &BuildContext,
        path: &str,
        options: serde_json::Value,
    ) -> Result<Box<dyn Sink>, ConfigError>;
    fn schema(&self, generator: &mut SchemaGenerator) -> Schema;
}

/// A connector as the registry holds it: parses the options, then builds.
struct Typed<C>(C);

impl<C: SourceConnector> SourceFactory for Typed<C> {
    fn build(
        &self,
        cx: &BuildContext,
        path: &str,
        options: serde_json::Value,
    ) -> Result<BuiltSource, ConfigError> {
        let config = C::Config::parse(path, options)?;
        self.0.build(cx, &Component::new(path), config)
    }
    fn schema(&self, generator: &mut SchemaGenerator) -> Schema {
        generator.subschema_for::<C::Config>()
    }
    fn bounded(&self) -> Option<&dyn Bounded> {
        self.0.bounded()
    }
}

impl<C: SinkConnector> SinkFactory for Typed<C> {
    fn build(
        &self,
        cx: &BuildContext,
        path: &str,
        options: serde_json::Value,
    ) -> Result<Box<dyn Sink>, ConfigError> {
        let config = C::Config::parse(path, options)?;
        self.0.build(cx, &Component::new(path), config)
    }
    fn schema(&self, generator: &mut SchemaGenerator) -> Schema {
        generator.subschema_for::<C::Config>()
    }
}

#[derive(Default, Clone)]
pub struct Registry {
    sources: BTreeMap<String, Arc<dyn SourceFactory>>,
    sinks: BTreeMap<String, Arc<dyn SinkFactory>>,
}

impl Registry {
    pub fn register_source(&mut self, ty: &str, c: impl SourceConnector) -> &mut Self {
        self.sources.insert(ty.to_string(), Arc::new(Typed(c)));
        self
    }
    pub fn register_sink(&mut self, ty: &str, c: impl SinkConnector) -> &mut Self {
        self.sinks.insert(ty.to_string(), Arc::new(Typed(c)));
        self
    }
    pub fn source(&self, ty: &str) -> Option<&Arc<dyn SourceFactory>> {
        self.sources.get(ty)
    }
    pub fn sink(&self, ty: &str) -> Option<&Arc<dyn SinkFactory>> {
        self.sinks.get(ty)
    }
    pub fn source_types(&self) -> Vec<String> {
        self.sources.keys().cloned().collect()
    }
    pub fn sink_types(&self) -> Vec<String> {
        self.sinks.keys().cloned().collect()
    }
}
