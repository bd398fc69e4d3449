//! The `queue` source: batches listed in the config, one per batch interval.

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use sluice_core::arrow::record_batch::RecordBatch;
use sluice_core::options::Joined;
use sluice_core::{
    BatchTime, BuildContext, BuiltSource, Component, ConfigError, DeadLetters, Guarantee,
    ReplayableSource, Result, SourceConnector, SourceRuntime,
};
use sluice_formats::decoding::LineDecoding;
use sluice_formats::Decoder;

/// `[sources.NAME] type = "queue"`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// The records of each batch, in order: `batches = [["a b", "c"], [], ["d"]]`. After the last
    /// one, batches are empty (or start again with `repeat = true`).
    pub batches: Vec<Vec<String>>,
    #[serde(default)]
    pub repeat: bool,
}

pub struct QueueConnector;

impl SourceConnector for QueueConnector {
    type Config = Joined<LineDecoding, QueueConfig>;
    fn build(
        &self,
        _cx: &BuildContext,
        at: &Component,
        options: Self::Config,
    ) -> Result<BuiltSource, ConfigError> {
        let Joined { shared, own: cfg } = options;
        let decoder = shared.decoder(at)?;
        Ok(BuiltSource {
            schema: decoder.schema(),
            guarantee: Guarantee::Replayable,
            runtime: SourceRuntime::Replayable(Box::new(Queue {
                cfg,
                decoder,
                next: 0,
            })),
            caveat: None,
        })
    }
}

struct Queue {
    cfg: QueueConfig,
    decoder: Decoder,
    next: usize,
}

/// A batch's input: the index of its list of records.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct QueueRange {
    pub index: usize,
}

#[async_trait]
impl ReplayableSource for Queue {
    type Range = QueueRange;
    /// None: a queue starts from its first batch again after a restart.
    type Position = ();

    async fn plan(&mut self, _time: BatchTime, _max: Option<u64>) -> Result<QueueRange> {
        let index = self.next;
        self.next += 1;
        Ok(QueueRange { index })
    }

    async fn read(&mut self, range: &QueueRange, dead: &DeadLetters) -> Result<Vec<RecordBatch>> {
        let i = range.index;
        let n = self.cfg.batches.len();
        let records = match (self.cfg.batches.get(i), self.cfg.repeat && n > 0) {
            (Some(b), _) => b,
            (None, true) => &self.cfg.batches[i % n],
            (None, false) => return Ok(Vec::new()),
        };
        let (batch, bad) = self.decoder.decode(records);
        dead.extend(bad);
        Ok(if batch.num_rows() > 0 {
            vec![batch]
        } else {
            Vec::new()
        })
    }

    fn position(&self) {}

    fn restore(&mut self, _position: ()) -> Result<()> {
        Ok(())
    }
}
