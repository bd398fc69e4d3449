//! What a batch of the `kafka` source reads, as recorded in its plan: offset ranges per partition
//! (`[from, until)`), and with scale-out the batch they are claimed for in the plan log; and where
//! the source stands, the next offset per partition.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A topic partition.
pub(crate) type Tp = (String, i32);

/// A topic's name, partitions and error, as the metadata gives them.
pub(crate) type TopicParts = (String, Vec<i32>, Option<String>);

/// One partition's share of a batch: offsets `[from, until)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRange {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub until: i64,
}

/// A batch's input as recorded in its plan: the ranges, and with scale-out the batch they are
/// claimed for in the plan log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Planned {
    Ranges(Vec<PartRange>),
    Claimed { batch: i64, ranges: Vec<PartRange> },
}

/// Where the source stands: the next offset of each partition, by topic and partition number.
pub type Offsets = BTreeMap<String, BTreeMap<String, i64>>;
