//! Kinesis for sluice, on `aws-sdk-kinesis`: the `kinesis` source — direct, each batch a
//! sequence-number range per shard recorded in its plan, so a re-run reads the same records; all
//! shards, parents read to their end before their children; KPL aggregates de-aggregated — and the
//! `kinesis` sink — PutRecords with only refused entries retried (at-least-once).

mod client;
mod config;
mod kpl;
mod ranges;
mod replay;
mod sink;
mod source;

pub use client::connect;
pub use config::{Aws, DataFormats, KinesisSinkConfig, KinesisSourceConfig};
pub use kpl::aggregate;
pub use ranges::{Pos, Position, ShardRange};
pub use sink::KinesisSinkConnector;
pub use source::KinesisSourceConnector;
