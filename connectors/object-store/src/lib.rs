//! The sinks that write job output as files (`type = "file"`: a local folder; `type =
//! "object_store"`: S3 and S3-compatible stores, WebHDFS/HDFS through Apache OpenDAL, or a local
//! folder): Parquet, JSON lines, CSV or Avro, one implementation.
//!
//! Exactly once: every data file's key is a function of (job, batch time, partition folder), so a
//! batch re-run after a crash overwrites the same files, and a manifest under `_sluice/manifest/`
//! lists the files of each committed batch (see [`manifest`]). Files that span batches
//! (`max_file_size` / `max_file_age`) are staged per batch under `_sluice/staging/` and joined into
//! their data file when they roll, deterministically, so rolling keeps the guarantee.
//!
//! Modules: `config` (the keys), `location` (the `path`), `store` (a local folder written durably,
//! or an OpenDAL operator), `encode` and `avro` (formats, streamed into multipart uploads),
//! `manifest`, `legacy` (folders of the older `file` sink), `errors`, `sink`.

mod avro;
mod config;
mod encode;
mod errors;
mod legacy;
mod location;
pub mod manifest;
mod sink;
mod store;

pub use config::{Compression, FileFormats, FileSinkConfig, ObjectStoreSinkConfig, Output, Remote};
pub use location::Location;
pub use sink::ObjectStoreSink;
use sluice_core::Format;

use sluice_core::options::Joined;
use sluice_core::{BuildContext, Component, ConfigError, Result, Sink, SinkConnector};
use sluice_formats::partition::{valid_time_template, Layout};

pub struct ObjectStoreSinkConnector;

impl SinkConnector for ObjectStoreSinkConnector {
    type Config = ObjectStoreSinkConfig;
    fn build(
        &self,
        cx: &BuildContext,
        at: &Component,
        cfg: ObjectStoreSinkConfig,
    ) -> Result<Box<dyn Sink>, ConfigError> {
        let Joined { shared, own } = cfg;
        let path = at.path.as_str();
        if shared.path.starts_with("s3") && own.part_size.as_u64() < 5 * 1024 * 1024 {
            return Err(ConfigError::new(
                format!("{path}.part_size"),
                "at least 5MiB (S3's smallest multipart part)",
                own.part_size.to_string(),
            ));
        }
        build(cx, at, shared, Format::Parquet, &own)
    }
}

/// `type = "file"`: the same sink, on a local folder only.
pub struct FileSinkConnector;

impl SinkConnector for FileSinkConnector {
    type Config = FileSinkConfig;
    fn build(
        &self,
        cx: &BuildContext,
        at: &Component,
        cfg: FileSinkConfig,
    ) -> Result<Box<dyn Sink>, ConfigError> {
        let key = format!("{}.path", at.path);
        if !matches!(
            Location::parse(&key, &cfg.path, |p| cx.resolve(p))?,
            Location::Fs { .. }
        ) {
            return Err(ConfigError::new(
                key,
                "a folder (for s3://, webhdfs:// or hdfs://, use `type = \"object_store\"`)",
                format!("\"{}\"", cfg.path),
            ));
        }
        let remote: Remote = sluice_core::options::parse(&at.path, serde_json::json!({}))?;
        build(cx, at, cfg, Format::Json, &remote)
    }
}

/// The sink writing `out` with `remote`'s settings; `format` unless `out` names one.
fn build(
    cx: &BuildContext,
    at: &Component,
    out: Output,
    format: Format,
    remote: &Remote,
) -> Result<Box<dyn Sink>, ConfigError> {
    let path = at.path.as_str();
    let format = out.format.map_or(format, |f| f.get());
    check(path, &out, format)?;
    // Scale-out, or `sluice replay`: this gateway writes (and keeps its manifest and staging) under
    // a folder of its own.
    let root = match &cx.output_scope {
        Some(scope) => format!("{}/{scope}", out.path.trim_end_matches('/')),
        None => out.path.clone(),
    };
    let location = Location::parse(&format!("{path}.path"), &root, |p| cx.resolve(p))?;
    if matches!(location, Location::Fs { .. }) && cx.resolve(&out.path).is_file() {
        return Err(ConfigError::new(
            format!("{path}.path"),
            "a directory",
            format!("\"{}\", a file", out.path),
        ));
    }
    let store = location.store(path, &out.path, remote)?;
    let layout = Layout {
        columns: out.partition_by.clone(),
        time: out.time_partition.clone(),
        time_column: out.time_column.clone(),
    };
    Ok(Box::new(ObjectStoreSink {
        name: at.name.clone(),
        endpoint: location.endpoint(remote),
        cfg: out,
        format,
        store,
        layout,
        last: Default::default(),
        schemas: Default::default(),
    }))
}

/// The checks serde cannot make.
fn check(path: &str, cfg: &Output, format: Format) -> Result<(), ConfigError> {
    if let Some(c) = cfg.compression {
        let allowed = encode::allowed(format);
        if !allowed.contains(&c) {
            let names: Vec<String> = allowed
                .iter()
                .map(|a| format!("`{}`", format!("{a:?}").to_lowercase()))
                .collect();
            return Err(ConfigError::new(
                format!("{path}.compression"),
                format!("for format `{format}`: {}", names.join(", ")),
                format!("`{}`", format!("{c:?}").to_lowercase()),
            ));
        }
    }
    if let Some(t) = &cfg.time_partition {
        if !valid_time_template(t) {
            return Err(ConfigError::new(
                format!("{path}.time_partition"),
                "a strftime template such as \"dt=%Y-%m-%d/hour=%H\"",
                format!("\"{t}\""),
            ));
        }
    } else if cfg.time_column.is_some() {
        return Err(ConfigError::new(
            format!("{path}.time_column"),
            "`time_partition` as well (the template the column's time fills)",
            "time_column alone",
        ));
    }
    if let Some(p) = &cfg.key_prefix {
        if !valid_time_template(p) {
            return Err(ConfigError::new(
                format!("{path}.key_prefix"),
                "a prefix with `{job}` and strftime fields such as \"{job}/%Y/%m/%d\"",
                format!("\"{p}\""),
            ));
        }
    }
    Ok(())
}

pub use opendal;

/// The remote store a sink with these options writes to (for tools and benchmarks; a local folder
/// is read directly).
pub fn operator(
    options: serde_json::Value,
    base: &std::path::Path,
) -> Result<opendal::Operator, ConfigError> {
    use sluice_core::options::Options;
    let Joined { shared, own } = ObjectStoreSinkConfig::parse("sink", options)?;
    let location = Location::parse("sink.path", &shared.path, |p| base.join(p))?;
    location.operator("sink", &shared.path, &own)
}
