//! Bounded input: what `sluice run --until-caught-up` and `sluice replay` ask of a source's
//! connector. A connector that offers it ([`crate::SourceConnector::bounded`]) rewrites its own
//! options so its source stops at an end; the commands name no connector.

use serde_json::Value;

/// Where a replay's source sits, for the names its options get (a consumer group, ...).
#[derive(Clone, Debug)]
pub struct ReplayOf<'a> {
    pub app: &'a str,
    pub source: &'a str,
    /// The replay's own name (`replay-<time>`), unique per replay.
    pub scope: &'a str,
}

/// `--until-caught-up` for a connector whose `until = "end"` means its input's end as the source
/// starts: set it, unless the options already bound the run.
pub fn until_end(options: &mut Value) {
    if options.get("until").is_none() {
        options["until"] = "end".into();
    }
}

/// A source connector whose input can be bounded.
pub trait Bounded: Send + Sync {
    /// Change the source's `options` so it stops at the ends its input has when it starts.
    fn until_caught_up(&self, options: &mut Value) -> Result<(), String>;
    /// Change the source's `options` so it reads exactly its input from `from` to `to` (`None`:
    /// its ends as the replay starts), as the connector reads those positions (times, offsets,
    /// ...); returns how to follow the replay's progress. Blocking: it may ask the peer.
    fn replay(
        &self,
        of: &ReplayOf<'_>,
        options: &mut Value,
        from: &str,
        to: Option<&str>,
    ) -> Result<Box<dyn ReplayProgress>, String>;
}

/// How far a replay has come, part by part (a partition, a shard).
pub trait ReplayProgress: Send + Sync {
    /// Each part's label (`orders/3`) and the size of its range, in [`ReplayProgress::unit`]s.
    fn parts(&self) -> Vec<(String, u64)>;
    /// What the parts are measured in: `records` (default), or e.g. `s` (seconds of arrival
    /// time) where the peer cannot count a range's records before reading it.
    fn unit(&self) -> &'static str {
        "records"
    }
    /// How much of each part was processed so far, in the order of [`ReplayProgress::parts`].
    /// Blocking.
    fn done(&self) -> Vec<u64>;
}
