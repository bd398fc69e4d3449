//! `sluice` as a library: the registry of built-in connectors, loading a config into a pipeline,
//! and a `StreamingContext`-style builder for pipelines written in Rust.

pub mod context;
pub mod inspect;
pub mod replay;

pub use context::{DStream, StreamingContext};
pub use sluice_config::{AppConfig, Diagnostic, DiagnosticKind};
pub use sluice_core::{BatchTime, Registry};
pub use sluice_engine::{Pipeline, RunOptions, RunSummary, Shutdown};

use std::path::Path;

/// Every connector this binary ships. A new connector is one crate and one line here.
pub fn registry() -> Registry {
    let mut r = Registry::default();
    r.register_source("socket", sluice_socket::SocketSourceFactory)
        .register_source("file", sluice_file::FileSourceFactory)
        .register_source("generator", sluice_generator::GeneratorFactory)
        .register_source("queue", sluice_generator::QueueFactory)
        .register_source("mqtt", sluice_mqtt::MqttSourceFactory)
        .register_source("kafka", sluice_kafka::KafkaSourceFactory)
        .register_sink("console", sluice_console::ConsoleFactory::default())
        .register_sink("file", sluice_file::FileSinkFactory)
        .register_sink("mqtt", sluice_mqtt::MqttSinkFactory)
        .register_sink("object_store", sluice_object_store::ObjectStoreSinkFactory)
        .register_sink("kafka", sluice_kafka::KafkaSinkFactory)
        .register_sink(
            "blackhole",
            sluice_console::BlackholeFactory(Default::default()),
        );
    r
}

/// Read, check and build the pipeline of a config file; relative paths resolve against the working
/// directory.
pub async fn load(path: &Path, registry: &Registry) -> Result<Pipeline, Vec<Diagnostic>> {
    let config = sluice_config::load(path, registry)?;
    build(config, path, registry).await
}

/// Build a checked config; errors are attributed to `path`.
pub async fn build(
    config: AppConfig,
    path: &Path,
    registry: &Registry,
) -> Result<Pipeline, Vec<Diagnostic>> {
    let base = std::env::current_dir().unwrap_or_default();
    Pipeline::build(config, registry, base).await.map_err(|e| {
        e.0.into_iter()
            .map(|kind| Diagnostic {
                file: path.to_path_buf(),
                kind,
            })
            .collect()
    })
}
