//! Built-in sources that need no server:
//!
//! - `generator`: deterministic, seeded records at a fixed rate — IoT sensor readings (JSON),
//!   web server log lines, or lines of words — for the quickstart, demos and benchmarks.
//! - `queue`: a fixed list of batches given in the config, one per batch interval (Spark's
//!   `queueStream`); replayable, for deterministic pipelines and examples.

mod generator;
mod queue;

pub use generator::{GeneratorConfig, GeneratorConnector, Kind, Workload};
pub use queue::{QueueConfig, QueueConnector};
