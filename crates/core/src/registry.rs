//! The connector registry: type name → factory. The `sluice` binary registers the built-in and
//! external connectors; the engine only looks names up here.

use crate::error::ConfigError;
use crate::sink::Sink;
use crate::source::BuiltSource;
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

pub trait SourceFactory: Send + Sync {
    /// Build the source called `name` from its options (everything but `type`). `path` is the key
    /// path of the options (`sources.lines`), for error messages.
    fn build(
        &self,
        cx: &BuildContext,
        path: &str,
        options: serde_json::Value,
    ) -> Result<BuiltSource, ConfigError>;
}

pub trait SinkFactory: Send + Sync {
    fn build(
        &self,
        cx: &BuildContext,
        path: &str,
        options: serde_json::Value,
    ) -> Result<Box<dyn Sink>, ConfigError>;
}

#[derive(Default, Clone)]
pub struct Registry {
    sources: BTreeMap<String, Arc<dyn SourceFactory>>,
    sinks: BTreeMap<String, Arc<dyn SinkFactory>>,
}

impl Registry {
    pub fn register_source(&mut self, ty: &str, f: impl SourceFactory + 'static) -> &mut Self {
        self.sources.insert(ty.to_string(), Arc::new(f));
        self
    }
    pub fn register_sink(&mut self, ty: &str, f: impl SinkFactory + 'static) -> &mut Self {
        self.sinks.insert(ty.to_string(), Arc::new(f));
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
