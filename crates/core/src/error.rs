//! Errors: `ConfigError` names the key path, what was expected and what was found; `Error` is the
//! runtime error of sources, sinks and jobs.

use std::fmt;

/// A configuration problem at one key path (`sources.lines.port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `sources.lines.port`.
    pub path: String,
    /// What the key should hold.
    pub expected: String,
    /// What the file holds instead.
    pub found: String,
    /// A hint: "did you mean `port`?", or how to fix it.
    pub hint: Option<String>,
}

impl ConfigError {
    pub fn new(
        path: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        ConfigError {
            path: path.into(),
            expected: expected.into(),
            found: found.into(),
            hint: None,
        }
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    /// Prefix the key path with a parent, e.g. `sources.lines` + `port`.
    pub fn under(mut self, parent: &str) -> Self {
        self.path = join_path(parent, &self.path);
        self
    }
}

pub fn join_path(parent: &str, child: &str) -> String {
    match (parent.is_empty(), child.is_empty()) {
        (true, _) => child.to_string(),
        (_, true) => parent.to_string(),
        _ if child.starts_with('[') => format!("{parent}{child}"),
        _ => format!("{parent}.{child}"),
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key `{}`: expected {}, found {}",
            self.path, self.expected, self.found
        )?;
        if let Some(h) = &self.hint {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Runtime errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("Arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn msg(s: impl Into<String>) -> Self {
        Error::Other(s.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
