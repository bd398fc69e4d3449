//! The `socket` source: text lines from a TCP server, as Spark's `socketTextStream` reads them.
//!
//! sluice connects as a client (`nc -lk 9898` is the server in the word count example); when the
//! server is not there yet, or closes the connection, the receiver retries with exponential backoff
//! and says so in the logs. Lines are cut into blocks of at most `block_lines` lines or `block_interval`
//! of time; a block is stored (and the next read made) only once the engine has it, so a slow
//! pipeline stops reading the socket instead of buffering without bound.

use async_trait::async_trait;
use backon::BackoffBuilder;
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_core::arrow::record_batch::RecordBatch;
use sluice_core::options::Joined;
use sluice_core::retry::Reconnect;
use sluice_core::time::serde_duration;
use sluice_core::{
    BlockWriter, BuildContext, BuiltSource, Component, ConfigError, DeadLetter, Guarantee,
    Receiver, ReceiverStatus, Result, SourceConnector, SourceRuntime,
};
use sluice_formats::decoding::LineDecoding;
use sluice_formats::Decoder;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// `[sources.NAME] type = "socket"`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SocketSourceConfig {
    /// Host of the server to read from.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Longest line accepted; a longer one goes to the dead-letter output (default 1 MiB).
    #[serde(default = "default_max_line")]
    pub max_line_bytes: usize,
    /// A block is stored after this many lines, or after `block_interval`, whichever comes first
    /// (default 65536).
    #[serde(default = "default_block_lines")]
    pub block_lines: usize,
    /// A block is stored after this much time, or after `block_lines` (default 100ms; Spark's
    /// blockInterval is 200ms).
    #[serde(
        default = "default_block_interval",
        deserialize_with = "serde_duration::deserialize"
    )]
    #[schemars(with = "sluice_core::time::DurationText")]
    pub block_interval: Duration,
}

fn default_max_line() -> usize {
    1 << 20
}
fn default_block_lines() -> usize {
    65_536
}
fn default_block_interval() -> Duration {
    Duration::from_millis(100)
}

pub struct SocketSourceConnector;

impl SourceConnector for SocketSourceConnector {
    type Config = Joined<LineDecoding, Joined<Reconnect, SocketSourceConfig>>;
    fn build(
        &self,
        _cx: &BuildContext,
        at: &Component,
        options: Self::Config,
    ) -> Result<BuiltSource, ConfigError> {
        let Joined {
            shared,
            own: Joined {
                shared: reconnect,
                own: cfg,
            },
        } = options;
        let path = at.path.as_str();
        let decoder = shared.decoder(at)?;
        if cfg.block_lines == 0 {
            return Err(ConfigError::new(
                format!("{path}.block_lines"),
                "at least 1",
                "0",
            ));
        }
        Ok(BuiltSource {
            schema: decoder.schema(),
            guarantee: Guarantee::Unacknowledged,
            runtime: SourceRuntime::Receiver(Box::new(SocketReceiver {
                cfg,
                reconnect,
                decoder,
                name: at.name.clone(),
            })),
            caveat: None,
        })
    }
}

pub struct SocketReceiver {
    cfg: SocketSourceConfig,
    reconnect: Reconnect,
    decoder: Decoder,
    name: String,
}

/// Lines collected for the next block.
struct Pending {
    text: Vec<u8>,
    offsets: Vec<usize>,
    started: Option<Instant>,
}

impl Pending {
    fn len(&self) -> usize {
        self.offsets.len()
    }
}

impl SocketReceiver {
    async fn connect(&self, out: &Arc<dyn BlockWriter>) -> Option<TcpStream> {
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(self.reconnect.retry_initial)
            .with_max_delay(self.reconnect.retry_max)
            .without_max_times()
            .build();
        let addr = format!("{}:{}", self.cfg.host, self.cfg.port);
        let mut attempt = 0;
        loop {
            if out.is_stopping() {
                return None;
            }
            match TcpStream::connect(&addr).await {
                Ok(s) => {
                    out.set_status(ReceiverStatus::Connected(addr.clone()));
                    return Some(s);
                }
                Err(e) => {
                    attempt += 1;
                    out.set_status(ReceiverStatus::Retrying {
                        attempt,
                        error: format!("{addr}: {e}"),
                    });
                    let delay = backoff.next().unwrap_or(self.reconnect.retry_max);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = out.stopped() => return None,
                    }
                }
            }
        }
    }

    /// Split complete lines off `buf` into `pending`; returns the number of bytes consumed.
    fn split_lines(&self, buf: &[u8], pending: &mut Pending, out: &Arc<dyn BlockWriter>) -> usize {
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', buf) {
            let mut line = &buf[start..nl];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            start = nl + 1;
            if line.len() > self.cfg.max_line_bytes {
                out.dead_letters().push(self.dead(
                    format!(
                        "line longer than max_line_bytes ({})",
                        self.cfg.max_line_bytes
                    ),
                    line,
                ));
                continue;
            }
            match std::str::from_utf8(line) {
                Ok(_) => {
                    pending.text.extend_from_slice(line);
                    pending.offsets.push(pending.text.len());
                }
                Err(_) => out
                    .dead_letters()
                    .push(self.dead("line is not valid UTF-8".into(), line)),
            }
        }
        if pending.started.is_none() && pending.len() > 0 {
            pending.started = Some(Instant::now());
        }
        start
    }

    fn dead(&self, reason: String, line: &[u8]) -> DeadLetter {
        let shown = &line[..line.len().min(4096)];
        DeadLetter {
            origin: self.name.clone(),
            reason,
            payload: String::from_utf8_lossy(shown).into_owned(),
        }
    }

    /// The most lines a block holds: `block_lines`, or less under a rate limit's block budget.
    fn block_limit(&self, out: &Arc<dyn BlockWriter>) -> usize {
        out.block_budget()
            .map_or(self.cfg.block_lines, |b| b.min(self.cfg.block_lines))
            .max(1)
    }

    /// The connection's data ended (peer closed, read error, or stop): its unterminated last line is
    /// a line too, as `readLine` returns it at EOF, rather than a prefix of the next connection's
    /// first line; everything pending is stored.
    async fn finish(
        &self,
        buf: &mut [u8],
        filled: &mut usize,
        pending: &mut Pending,
        out: &Arc<dyn BlockWriter>,
    ) -> Result<()> {
        if *filled > 0 {
            // `filled < buf.len()`: a full buffer without a newline is dropped when read.
            buf[*filled] = b'\n';
            self.split_lines(&buf[..*filled + 1], pending, out);
            *filled = 0;
        }
        while pending.len() > 0 {
            let b = self.block(pending, self.block_limit(out), out);
            out.push_at(b, serde_json::Value::Null).await?;
        }
        Ok(())
    }

    /// A line longer than the buffer that the connection's end cut: one dead letter.
    fn cut_short(&self, long: Option<(Vec<u8>, usize)>, out: &Arc<dyn BlockWriter>) {
        if let Some((head, total)) = long {
            let reason = format!(
                "line longer than the read buffer ({total} bytes, cut by the end of the connection)"
            );
            out.dead_letters().push(self.dead(reason, &head));
        }
    }

    /// The first `n` pending lines (all if fewer) as a decoded block.
    fn block(&self, pending: &mut Pending, n: usize, out: &Arc<dyn BlockWriter>) -> RecordBatch {
        let n = n.min(pending.len());
        let end = if n == 0 { 0 } else { pending.offsets[n - 1] };
        let text = std::str::from_utf8(&pending.text[..end]).expect("lines were checked");
        let mut lines: Vec<&str> = Vec::with_capacity(n);
        let mut prev = 0;
        for &o in &pending.offsets[..n] {
            lines.push(&text[prev..o]);
            prev = o;
        }
        let (batch, dead) = self.decoder.decode(&lines);
        out.dead_letters().extend(dead);
        if n == pending.len() {
            pending.text.clear();
            pending.offsets.clear();
            pending.started = None;
        } else {
            pending.text.drain(..end);
            pending.offsets.drain(..n);
            for o in &mut pending.offsets {
                *o -= end;
            }
        }
        batch
    }
}

#[async_trait]
impl Receiver for SocketReceiver {
    async fn run(self: Box<Self>, out: Arc<dyn BlockWriter>) -> Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        let mut filled = 0;
        // A line longer than the buffer being skipped: its first bytes, and its length so far.
        let mut long: Option<(Vec<u8>, usize)> = None;
        let mut pending = Pending {
            text: Vec::new(),
            offsets: Vec::new(),
            started: None,
        };
        'connections: while let Some(mut stream) = self.connect(&out).await {
            loop {
                let flush_in = pending
                    .started
                    .map(|s| self.cfg.block_interval.saturating_sub(s.elapsed()))
                    .unwrap_or(Duration::from_secs(3600));
                let read = tokio::select! {
                    r = stream.read(&mut buf[filled..]) => Some(r),
                    _ = tokio::time::sleep(flush_in) => None,
                    _ = out.stopped() => break 'connections,
                };
                match read {
                    None => {}
                    Some(Ok(0)) => {
                        self.cut_short(long.take(), &out);
                        out.set_status(ReceiverStatus::Retrying {
                            attempt: 0,
                            error: "connection closed by peer".into(),
                        });
                        self.finish(&mut buf, &mut filled, &mut pending, &out)
                            .await?;
                        continue 'connections;
                    }
                    Some(Ok(n)) => {
                        filled += n;
                        if let Some((head, total)) = &mut long {
                            // The rest of a line longer than the buffer: skipped to its end, and
                            // the line is one dead letter — none of it becomes a record.
                            match memchr::memchr(b'\n', &buf[..filled]) {
                                None => {
                                    *total += filled;
                                    filled = 0;
                                    continue;
                                }
                                Some(nl) => {
                                    *total += nl;
                                    let reason = format!(
                                        "line longer than the read buffer ({total} bytes; the first {} kept here)",
                                        head.len()
                                    );
                                    out.dead_letters().push(self.dead(reason, head));
                                    buf.copy_within(nl + 1..filled, 0);
                                    filled -= nl + 1;
                                    long = None;
                                }
                            }
                        }
                        let used = self.split_lines(&buf[..filled], &mut pending, &out);
                        buf.copy_within(used..filled, 0);
                        filled -= used;
                        if filled == buf.len() {
                            // A line longer than the buffer: its start is kept for the dead
                            // letter, the rest skipped up to its newline.
                            long = Some((buf[..filled.min(4096)].to_vec(), filled));
                            filled = 0;
                        }
                    }
                    Some(Err(e)) => {
                        self.cut_short(long.take(), &out);
                        out.set_status(ReceiverStatus::Retrying {
                            attempt: 0,
                            error: e.to_string(),
                        });
                        self.finish(&mut buf, &mut filled, &mut pending, &out)
                            .await?;
                        continue 'connections;
                    }
                }
                let due = pending
                    .started
                    .is_some_and(|s| s.elapsed() >= self.cfg.block_interval);
                // Full blocks; under a rate limit, blocks of what the limit lets through at once,
                // so the receiver waits between them instead of storing a whole buffer on credit.
                while pending.len() >= self.block_limit(&out) {
                    let b = self.block(&mut pending, self.block_limit(&out), &out);
                    out.push_at(b, serde_json::Value::Null).await?;
                }
                if due && pending.len() > 0 {
                    let b = self.block(&mut pending, usize::MAX, &out);
                    out.push_at(b, serde_json::Value::Null).await?;
                }
            }
        }
        // Stopping: what was received is stored before the receiver ends (graceful stop drains it).
        self.finish(&mut buf, &mut filled, &mut pending, &out)
            .await?;
        out.set_status(ReceiverStatus::Stopped);
        Ok(())
    }
}
