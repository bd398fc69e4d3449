//! The object-storage sink (`type = "object_store"`): job output to S3 and S3-compatible stores,
//! WebHDFS/HDFS or a local folder through Apache OpenDAL, as Parquet, JSON lines, CSV or Avro.
//!
//! Exactly once: every data object's key is a function of (job, batch time, partition folder), so
//! a batch re-run after a crash overwrites the same objects, and a manifest under `_sluice/manifest/`
//! lists the objects of each committed batch (see [`manifest`]). Files that span batches
//! (`max_file_size` / `max_file_age`) are staged per batch under `_sluice/staging/` and joined into
//! their data object when they roll, deterministically, so rolling keeps the guarantee.
//!
//! Modules: `config` (the keys), `location` (the `path` and the OpenDAL operator), `encode` and
//! `avro` (formats, streamed into multipart uploads), `manifest`, `errors`, `sink`.

mod avro;
mod config;
mod encode;
mod errors;
mod location;
pub mod manifest;
mod sink;

pub use config::{Compression, Format, ObjectStoreSinkConfig};
pub use location::Location;
pub use sink::ObjectStoreSink;

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
        let path = at.path.as_str();
        check(path, &cfg)?;
        // Scale-out, or `sluice replay`: this gateway writes (and keeps its manifest and staging) under
        // a folder of its own.
        let root = match &cx.output_scope {
            Some(scope) => format!("{}/{scope}", cfg.path.trim_end_matches('/')),
            None => cfg.path.clone(),
        };
        let location = Location::parse(&format!("{path}.path"), &root, |p| cx.resolve(p))?;
        let op = location.operator(path, &cfg)?;
        let check_op = location.operator(
            path,
            &ObjectStoreSinkConfig {
                max_retries: 1,
                ..cfg.clone()
            },
        )?;
        let layout = Layout {
            columns: cfg.partition_by.clone(),
            time: cfg.time_partition.clone(),
            time_column: cfg.time_column.clone(),
        };
        Ok(Box::new(ObjectStoreSink {
            endpoint: location.endpoint(&cfg),
            cfg,
            op,
            check_op,
            layout,
            last: Default::default(),
            schemas: Default::default(),
        }))
    }
}

/// The checks serde cannot make.
fn check(path: &str, cfg: &ObjectStoreSinkConfig) -> Result<(), ConfigError> {
    if let Some(c) = cfg.compression {
        let allowed = encode::allowed(cfg.format);
        if !allowed.contains(&c) {
            let names: Vec<String> = allowed
                .iter()
                .map(|a| format!("`{}`", format!("{a:?}").to_lowercase()))
                .collect();
            return Err(ConfigError::new(
                format!("{path}.compression"),
                format!("for format `{}`: {}", cfg.format.ext(), names.join(", ")),
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
    if cfg.path.starts_with("s3") && cfg.part_size.as_u64() < 5 * 1024 * 1024 {
        return Err(ConfigError::new(
            format!("{path}.part_size"),
            "at least 5MiB (S3's smallest multipart part)",
            cfg.part_size.to_string(),
        ));
    }
    Ok(())
}

pub use opendal;

/// The store a sink with these options writes to (for tools and benchmarks): `path` relative to
/// `base` when it is a folder.
pub fn operator(
    options: serde_json::Value,
    base: &std::path::Path,
) -> Result<opendal::Operator, ConfigError> {
    let cfg: ObjectStoreSinkConfig = sluice_core::options::parse("sink", options)?;
    let location = Location::parse("sink.path", &cfg.path, |p| base.join(p))?;
    location.operator("sink", &cfg)
}
