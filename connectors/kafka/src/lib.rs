//! Kafka for sluice, through librdkafka (rdkafka): the `kafka` source — direct, each batch an exact
//! set of offset ranges recorded in its plan, so a re-run reads the same records — and the `kafka`
//! sink — one transaction per (job, batch), so a re-run never writes twice. With `app.scale_out`,
//! several gateways share a source's partitions through a consumer group and a plan log.

mod config;
mod context;
mod fetch;
mod group;
mod planlog;
mod ranges;
mod replay;
mod sink;
mod source;

pub use config::{KafkaSinkConfig, KafkaSourceConfig, OnDataLoss, ValueFormats};
pub use ranges::PartRange;
pub use sink::KafkaSinkConnector;
pub use source::KafkaSourceConnector;
