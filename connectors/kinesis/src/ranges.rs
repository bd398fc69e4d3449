//! What a batch of the `kinesis` source reads, as recorded in its plan — per shard, the records
//! from one position through another, both included — and where the source stands: per shard the
//! last position planned, or that the shard was read to its end.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// A user record's place in its shard: the Kinesis sequence number (a decimal string of up to 128
/// bits) and, for the records of one KPL aggregate, its index in it (0 otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pos {
    pub seq: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sub: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Pos {
    pub fn new(seq: impl Into<String>, sub: u64) -> Pos {
        Pos {
            seq: seq.into(),
            sub,
        }
    }
}

impl Ord for Pos {
    /// Sequence numbers are decimal without leading zeros: a longer one is larger.
    fn cmp(&self, other: &Pos) -> Ordering {
        (self.seq.len(), &self.seq, self.sub).cmp(&(other.seq.len(), &other.seq, other.sub))
    }
}

impl PartialOrd for Pos {
    fn partial_cmp(&self, other: &Pos) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.sub == 0 {
            f.write_str(&self.seq)
        } else {
            write!(f, "{}/{}", self.seq, self.sub)
        }
    }
}

/// One shard's share of a batch: its user records from `first` through `last`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRange {
    pub shard: String,
    pub first: Pos,
    pub last: Pos,
    /// How many user records that is (checked when the range is read again). With scale-out, 0
    /// for a range that only says the shard ended (`end`) after `after`.
    pub records: u64,
    /// With scale-out: the record before the range (None: the shard's start), which names its
    /// claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Pos>,
    /// With scale-out: the range ends the shard, so its lease is finished once claimed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub end: bool,
}

/// A batch's input as recorded in its plan: the ranges, and with scale-out the batch they are
/// claimed for in the lease table.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Planned {
    Ranges(Vec<ShardRange>),
    Claimed { batch: i64, ranges: Vec<ShardRange> },
}

/// Where a shard stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Next {
    /// The next batch takes the records after this one.
    After(Pos),
    /// Read to its end (closed by a split or merge) and every record planned: its children may
    /// start.
    Done,
}

/// Where shards unknown to the position start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    TrimHorizon,
    /// `AT_TIMESTAMP`, milliseconds since the epoch.
    AtTimestamp(i64),
}

/// Where the source stands: fixed at its first start (`start`), then per shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub start: StartAt,
    #[serde(default)]
    pub shards: BTreeMap<String, Next>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_by_number_then_sub_sequence() {
        let a = Pos::new(
            "49590338271490256608559692538361571095921575989136588898",
            0,
        );
        let b = Pos::new(
            "49590338271490256608559692538361571095921575989136588898",
            3,
        );
        let c = Pos::new(
            "49590338271490256608559692540925702759324208523137515618",
            0,
        );
        let short = Pos::new("999", 9);
        assert!(a < b && b < c && short < a);
        assert_eq!(b.to_string(), format!("{}/3", a.seq));
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json, serde_json::json!({ "seq": a.seq }));
        let p = Position {
            start: StartAt::AtTimestamp(5),
            shards: BTreeMap::from([("shardId-000000000000".into(), Next::Done)]),
        };
        let back: Position = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
