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
    r.register_source("socket", sluice_socket::SocketSourceConnector)
        .register_source("file", sluice_file::FileSourceConnector)
        .register_source("generator", sluice_generator::GeneratorConnector)
        .register_source("queue", sluice_generator::QueueConnector)
        .register_source("mqtt", sluice_mqtt::MqttSourceConnector)
        .register_source("kafka", sluice_kafka::KafkaSourceConnector)
        .register_source("kinesis", sluice_kinesis::KinesisSourceConnector)
        .register_sink("console", sluice_console::ConsoleConnector::default())
        .register_sink("file", sluice_object_store::FileSinkConnector)
        .register_sink("mqtt", sluice_mqtt::MqttSinkConnector)
        .register_sink(
            "object_store",
            sluice_object_store::ObjectStoreSinkConnector,
        )
        .register_sink("kafka", sluice_kafka::KafkaSinkConnector)
        .register_sink("kinesis", sluice_kinesis::KinesisSinkConnector)
        .register_sink(
            "blackhole",
            sluice_console::BlackholeConnector(Default::default()),
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

#[cfg(test)]
mod tests {
    /// The key tables in docs/ are what the config types' doc comments generate. After changing a
    /// config type, refresh them with `SLUICE_BLESS=1 cargo test -p sluice --lib`.
    #[test]
    fn the_docs_key_tables_are_generated_from_the_config_types() {
        let tables = sluice_config::reference::tables(&super::registry());
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
        let bless = std::env::var_os("SLUICE_BLESS").is_some();
        let mut stale = Vec::new();
        let mut used = 0;
        for entry in std::fs::read_dir(&docs).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "md") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            used += text.matches("<!-- generated: ").count();
            let fresh = sluice_config::reference::refresh_docs(&text, &tables)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if fresh != text {
                if bless {
                    std::fs::write(&path, fresh).unwrap();
                } else {
                    stale.push(path.display().to_string());
                }
            }
        }
        assert!(
            stale.is_empty(),
            "the key tables of {stale:?} differ from what the config types generate: \
             run `SLUICE_BLESS=1 cargo test -p sluice --lib` and commit the result"
        );
        assert!(
            used >= tables.len(),
            "{used} generated sections for {} tables: every table should be in the docs",
            tables.len()
        );
    }

    #[test]
    fn every_section_of_the_config_file_has_a_schema() {
        let schema = sluice_config::reference::json_schema(&super::registry());
        for key in ["app", "sources", "tables", "jobs", "sinks"] {
            assert!(schema["properties"][key].is_object(), "{key}");
        }
        let sources = schema["properties"]["sources"]["additionalProperties"]["oneOf"]
            .as_array()
            .unwrap();
        let types: Vec<&str> = sources
            .iter()
            .map(|s| s["properties"]["type"]["const"].as_str().unwrap())
            .collect();
        assert_eq!(types, super::registry().source_types());
        let kafka = sources
            .iter()
            .find(|s| s["properties"]["type"]["const"] == "kafka")
            .unwrap();
        assert!(kafka["properties"]["bootstrap_servers"]["description"].is_string());
        assert!(kafka["required"]
            .as_array()
            .unwrap()
            .contains(&"bootstrap_servers".into()));
    }
}
