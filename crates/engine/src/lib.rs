//! sluice-engine: the micro-batch engine.
//!
//! Every `batch_interval` the engine cuts batch `t`: it takes the blocks receivers stored since the
//! last batch and asks each replayable source for its range, runs every job (in dependency order) on
//! DataFusion, and hands each job's output to its sinks. Processing-time windows, event-time windows
//! with a watermark, keyed state and reference tables are kept here. The engine never names a
//! connector: sources and sinks come from the [`sluice_core::Registry`].

mod blocks;
mod build;
pub mod checkpoint;
mod event_time;
mod job;
mod rate;
mod reference;
mod run;
mod state;

pub use build::{BuildError, Pipeline};
pub use run::{BatchStat, RunOptions, RunSummary, Shutdown};
