//! The `path` key: which backend, and the store for it (a local folder, or an OpenDAL operator with
//! retries).

use crate::config::Remote;
use crate::store::Store;
use opendal::layers::RetryLayer;
use opendal::Operator;
use sluice_core::ConfigError;
use std::path::PathBuf;

/// Where a sink writes, parsed from `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    S3 { bucket: String, root: String },
    WebHdfs { endpoint: String, root: String },
    Hdfs { name_node: String, root: String },
    Fs { root: PathBuf },
}

impl Location {
    /// `resolve` turns a relative folder into an absolute one (against the working directory).
    pub fn parse(
        key: &str,
        path: &str,
        resolve: impl Fn(&str) -> PathBuf,
    ) -> Result<Location, ConfigError> {
        let bad = |what: &str| {
            ConfigError::new(
                key,
                format!("s3://bucket/prefix, webhdfs://host:port/path, hdfs://host:port/path, file:///path or a folder ({what})"),
                format!("\"{path}\""),
            )
        };
        let Some((scheme, rest)) = path.split_once("://") else {
            return Ok(Location::Fs {
                root: resolve(path),
            });
        };
        let (authority, root) = match rest.split_once('/') {
            Some((a, r)) => (a, format!("/{}", r.trim_end_matches('/'))),
            None => (rest, "/".to_string()),
        };
        match scheme {
            "s3" | "s3a" if !authority.is_empty() => Ok(Location::S3 {
                bucket: authority.to_string(),
                root,
            }),
            "s3" | "s3a" => Err(bad("the bucket is missing")),
            "webhdfs" if !authority.is_empty() => Ok(Location::WebHdfs {
                endpoint: format!("http://{authority}"),
                root,
            }),
            "hdfs" if !authority.is_empty() => Ok(Location::Hdfs {
                name_node: format!("hdfs://{authority}"),
                root,
            }),
            "webhdfs" | "hdfs" => Err(bad("host:port is missing")),
            "file" => Ok(Location::Fs {
                root: PathBuf::from(rest),
            }),
            other => Err(bad(&format!("unknown scheme `{other}`"))),
        }
    }

    /// Where requests go, for messages (never with credentials).
    pub fn endpoint(&self, remote: &Remote) -> String {
        match self {
            Location::S3 { bucket, .. } => format!(
                "{} (bucket `{bucket}`)",
                remote
                    .endpoint
                    .as_deref()
                    .unwrap_or("https://s3.amazonaws.com")
            ),
            Location::WebHdfs { endpoint, .. } => endpoint.clone(),
            Location::Hdfs { name_node, .. } => name_node.clone(),
            Location::Fs { root } => root.display().to_string(),
        }
    }

    /// The store: a local folder, or the remote store with `remote`'s settings. `key` is the
    /// component's path and `path` its `path` key, for errors.
    pub fn store(&self, key: &str, path: &str, remote: &Remote) -> Result<Store, ConfigError> {
        if let Location::Fs { root } = self {
            return Ok(Store::Local { root: root.clone() });
        }
        let check = Remote {
            max_retries: 1,
            ..remote.clone()
        };
        Ok(Store::Remote {
            op: self.operator(key, path, remote)?,
            check: self.operator(key, path, &check)?,
            part_size: remote.part_size.as_u64() as usize,
            concurrency: remote.concurrency,
        })
    }

    /// The OpenDAL operator of a remote store (not of a local folder).
    pub fn operator(&self, key: &str, path: &str, cfg: &Remote) -> Result<Operator, ConfigError> {
        install_http_transport();
        let op = match self {
            Location::S3 { bucket, root } => {
                let mut b = opendal::services::S3::default()
                    .bucket(bucket)
                    .root(root)
                    .region(cfg.region.as_deref().unwrap_or("us-east-1"));
                if let Some(e) = &cfg.endpoint {
                    b = b.endpoint(e);
                }
                match (&cfg.access_key_id, &cfg.secret_access_key) {
                    (Some(id), Some(secret)) => {
                        // These and nothing else: no environment, no profile files.
                        b = b
                            .access_key_id(id.expose())
                            .secret_access_key(secret.expose())
                            .disable_config_load();
                        if let Some(t) = &cfg.session_token {
                            b = b.session_token(t.expose());
                        }
                    }
                    (None, None) => {}
                    _ => {
                        return Err(ConfigError::new(
                            format!("{key}.secret_access_key"),
                            "access_key_id and secret_access_key together, or neither (the AWS chain)",
                            "only one of them",
                        ))
                    }
                }
                if cfg.virtual_host_style {
                    b = b.enable_virtual_host_style();
                }
                Operator::new(b)
            }
            Location::WebHdfs { endpoint, root } => {
                let mut b = opendal::services::Webhdfs::default()
                    .endpoint(endpoint)
                    .root(root);
                if let Some(u) = &cfg.hdfs_user {
                    b = b.user_name(u);
                }
                Operator::new(b)
            }
            #[cfg(feature = "hdfs")]
            Location::Hdfs { name_node, root } => Operator::new(
                opendal::services::HdfsNative::default()
                    .name_node(name_node)
                    .root(root),
            ),
            #[cfg(not(feature = "hdfs"))]
            Location::Hdfs { .. } => {
                return Err(ConfigError::new(
                    format!("{key}.path"),
                    "webhdfs://host:port/path (this build has no native HDFS client: build with `--features sluice-object-store/hdfs`)",
                    format!("\"{path}\""),
                ))
            }
            Location::Fs { .. } => {
                return Err(ConfigError::new(
                    format!("{key}.path"),
                    "a remote store (a local folder is read directly)",
                    format!("\"{path}\""),
                ))
            }
        }
        .map_err(|e| ConfigError::new(format!("{key}.path"), "a usable store", e.to_string()))?;
        let endpoint = self.endpoint(cfg);
        let component = key.to_string();
        Ok(op.layer(
            RetryLayer::new()
                .with_jitter()
                .with_max_times(cfg.max_retries)
                .with_min_delay(cfg.retry_initial)
                .with_max_delay(cfg.retry_max)
                .with_notify(move |e: opendal::layers::RetryEvent<'_>| {
                    tracing::warn!(
                        component = %component, endpoint = %endpoint, op = ?e.op,
                        attempt = e.attempt, retry_in_ms = e.retry_after.as_millis() as u64,
                        error = %e.err, "object store request failed; retrying"
                    );
                }),
        ))
    }
}

/// OpenDAL's HTTP client: reqwest with rustls on the `ring` provider.
fn install_http_transport() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Another component may have installed a provider first; either serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
        opendal_http_transport_reqwest::install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_backend() {
        let p = |s: &str| Location::parse("sinks.out.path", s, |f| PathBuf::from("/cfg").join(f));
        assert_eq!(
            p("s3://lake/raw/events/").unwrap(),
            Location::S3 {
                bucket: "lake".into(),
                root: "/raw/events".into()
            }
        );
        assert_eq!(
            p("s3://lake").unwrap(),
            Location::S3 {
                bucket: "lake".into(),
                root: "/".into()
            }
        );
        assert_eq!(
            p("webhdfs://nn:9870/data").unwrap(),
            Location::WebHdfs {
                endpoint: "http://nn:9870".into(),
                root: "/data".into()
            }
        );
        assert_eq!(
            p("file:///tmp/x").unwrap(),
            Location::Fs {
                root: "/tmp/x".into()
            }
        );
        assert_eq!(
            p("out").unwrap(),
            Location::Fs {
                root: "/cfg/out".into()
            }
        );
        let e = p("gs://b/x").unwrap_err().to_string();
        assert!(e.contains("unknown scheme `gs`"), "{e}");
        assert!(p("s3:///x").is_err());
    }
}
