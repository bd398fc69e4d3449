//! The `console` sink: Spark's `pprint()` layout.
//!
//! ```text
//! -------------------------------------------
//! Time: 2026-11-22 13:51:24
//! -------------------------------------------
//! ('hi', 1)
//! ('henrique', 1)
//!
//! ```
//!
//! A header for every batch a job runs in (empty ones too), at most `num` rows, then `...` when there
//! are more, and a blank line. Rows of two or more columns print as Python tuples of the values'
//! `repr` (`'text'`, `1`, `2.5`, `True`, `None`); a one-column row prints its value as Python's
//! `print` would (text without quotes). Timestamps print as `'2026-11-22 13:51:24.000'` (UTC).
//! A batch re-run after a restart says so: `Time: ... (re-run)`.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_core::arrow::array::{Array, ArrayRef, AsArray};
use sluice_core::arrow::compute::cast;
use sluice_core::arrow::datatypes::{DataType, TimeUnit};
use sluice_core::arrow::util::display::{ArrayFormatter, FormatOptions};
use sluice_core::{BuildContext, Component, ConfigError, Result, Sink, SinkBatch, SinkConnector};
use std::io::Write;
use std::sync::{Arc, Mutex};

/// `[sinks.NAME] type = "console"`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Rows shown per batch (default 10, as `pprint()`).
    #[serde(default = "default_num")]
    pub num: usize,
    /// `stdout` (default) or `stderr`.
    #[serde(default)]
    pub target: Target,
}

fn default_num() -> usize {
    10
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    #[default]
    Stdout,
    Stderr,
}

/// Builds console sinks: on stdout/stderr, or all into one shared buffer (tests, embedding).
#[derive(Default)]
pub struct ConsoleConnector {
    capture: Option<SharedBuffer>,
}

impl ConsoleConnector {
    /// Console sinks that write into `buf` instead of stdout/stderr.
    pub fn capture(buf: SharedBuffer) -> Self {
        ConsoleConnector { capture: Some(buf) }
    }
}

impl SinkConnector for ConsoleConnector {
    type Config = ConsoleConfig;
    fn build(
        &self,
        _cx: &BuildContext,
        _at: &Component,
        cfg: ConsoleConfig,
    ) -> Result<Box<dyn Sink>, ConfigError> {
        let out: Box<dyn Write + Send> = match (&self.capture, cfg.target) {
            (Some(buf), _) => Box::new(buf.clone()),
            (None, Target::Stdout) => Box::new(std::io::stdout()),
            (None, Target::Stderr) => Box::new(std::io::stderr()),
        };
        Ok(Box::new(ConsoleSink::new(cfg.num, out)))
    }
}

/// A cloneable in-memory writer.
#[derive(Clone, Default)]
pub struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct ConsoleSink {
    num: usize,
    out: Box<dyn Write + Send>,
}

impl ConsoleSink {
    pub fn new(num: usize, out: Box<dyn Write + Send>) -> Self {
        ConsoleSink { num, out }
    }
}

const RULE: &str = "-------------------------------------------";

/// Renders the first `num` rows (and `...` when there are more) of a batch, pprint-style.
pub fn render(batch: &SinkBatch<'_>, num: usize) -> String {
    let mut s = String::new();
    let rerun = if batch.rerun { " (re-run)" } else { "" };
    s.push_str(&format!(
        "{RULE}\nTime: {}{rerun}\n{RULE}\n",
        batch.time.to_local_string()
    ));
    let mut shown = 0;
    'outer: for b in batch.batches {
        let cols: Vec<Vec<String>> = b
            .columns()
            .iter()
            .map(|c| column_values(c, b.num_columns() == 1))
            .collect();
        for r in 0..b.num_rows() {
            if shown == num {
                s.push_str("...\n");
                break 'outer;
            }
            if cols.len() == 1 {
                s.push_str(&cols[0][r]);
            } else {
                s.push('(');
                for (i, c) in cols.iter().enumerate() {
                    if i > 0 {
                        s.push_str(", ");
                    }
                    s.push_str(&c[r]);
                }
                s.push(')');
            }
            s.push('\n');
            shown += 1;
        }
    }
    s.push('\n');
    s
}

/// Python `repr` of each value (or `str` for a lone text column).
fn column_values(c: &ArrayRef, bare: bool) -> Vec<String> {
    let n = c.len();
    let mut out = Vec::with_capacity(n);
    match c.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let s = cast(c, &DataType::Utf8).expect("string cast");
            let s = s.as_string::<i32>();
            for i in 0..n {
                out.push(if s.is_null(i) {
                    "None".into()
                } else if bare {
                    s.value(i).to_string()
                } else {
                    py_str_repr(s.value(i))
                });
            }
        }
        DataType::Boolean => {
            let b = c.as_boolean();
            for i in 0..n {
                out.push(match (b.is_null(i), b.is_null(i) || b.value(i)) {
                    (true, _) => "None".into(),
                    (false, true) => "True".into(),
                    (false, false) => "False".into(),
                });
            }
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let f = cast(c, &DataType::Float64).expect("float cast");
            let f = f.as_primitive::<sluice_core::arrow::datatypes::Float64Type>();
            for i in 0..n {
                out.push(if f.is_null(i) {
                    "None".into()
                } else {
                    py_float_repr(f.value(i))
                });
            }
        }
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => {
            let t = match c.data_type() {
                DataType::Timestamp(_, _) => {
                    cast(c, &DataType::Timestamp(TimeUnit::Millisecond, None)).expect("ts cast")
                }
                _ => c.clone(),
            };
            let opts =
                FormatOptions::default().with_timestamp_format(Some("%Y-%m-%d %H:%M:%S%.3f"));
            let f = ArrayFormatter::try_new(t.as_ref(), &opts).expect("formatter");
            for i in 0..n {
                out.push(if t.is_null(i) {
                    "None".into()
                } else if bare {
                    f.value(i).to_string()
                } else {
                    py_str_repr(&f.value(i).to_string())
                });
            }
        }
        _ => {
            let opts = FormatOptions::default().with_null("None");
            let f = ArrayFormatter::try_new(c.as_ref(), &opts).expect("formatter");
            for i in 0..n {
                out.push(f.value(i).to_string());
            }
        }
    }
    out
}

/// Python's `repr(str)`: single quotes unless the text has a `'` and no `"`.
pub fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut r = String::with_capacity(s.len() + 2);
    r.push(quote);
    for ch in s.chars() {
        match ch {
            '\\' => r.push_str("\\\\"),
            '\n' => r.push_str("\\n"),
            '\r' => r.push_str("\\r"),
            '\t' => r.push_str("\\t"),
            c if c == quote => {
                r.push('\\');
                r.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                r.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => r.push(c),
        }
    }
    r.push(quote);
    r
}

/// Python's `repr(float)`: shortest round-trip digits, always with a `.0` or exponent.
pub fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let s = format!("{f}");
    if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    }
}

#[async_trait]
impl Sink for ConsoleSink {
    async fn write(&mut self, batch: SinkBatch<'_>) -> Result<()> {
        let text = render(&batch, self.num);
        self.out.write_all(text.as_bytes())?;
        self.out.flush()?;
        Ok(())
    }

    fn idempotent(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_reprs() {
        assert_eq!(py_str_repr("hi"), "'hi'");
        assert_eq!(py_str_repr("it's"), "\"it's\"");
        assert_eq!(py_str_repr("a'b\"c"), "'a\\'b\"c'");
        assert_eq!(py_float_repr(1.0), "1.0");
        assert_eq!(py_float_repr(0.1), "0.1");
        assert_eq!(py_float_repr(-2.5), "-2.5");
    }
}

/// `[sinks.NAME] type = "blackhole"`: discards output and counts rows (benchmarks, dry runs).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlackholeConfig {}

pub struct BlackholeConnector(pub Arc<std::sync::atomic::AtomicU64>);

impl SinkConnector for BlackholeConnector {
    type Config = BlackholeConfig;
    fn build(
        &self,
        _cx: &BuildContext,
        _at: &Component,
        _cfg: BlackholeConfig,
    ) -> Result<Box<dyn Sink>, ConfigError> {
        Ok(Box::new(Blackhole(self.0.clone())))
    }
}

struct Blackhole(Arc<std::sync::atomic::AtomicU64>);

#[async_trait]
impl Sink for Blackhole {
    async fn write(&mut self, batch: SinkBatch<'_>) -> Result<()> {
        self.0.fetch_add(
            batch.num_rows() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    }
    fn idempotent(&self) -> bool {
        true
    }
}
