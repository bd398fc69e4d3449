//! sluice-core: the vocabulary every other crate shares — batch time, durations, the record model,
//! errors that name a key path, the source / receiver / sink traits and the connector registry.
//!
//! Connectors depend on this crate (and `sluice-formats`) only; the engine never names a connector.

pub mod bounded;
pub mod dead_letter;
pub mod error;
pub mod format;
pub mod fs;
pub mod options;
pub mod registry;
pub mod retry;
pub mod schema;
pub mod secret;
pub mod sink;
pub mod source;
pub mod time;

pub use arrow;
pub use bounded::{Bounded, ReplayOf, ReplayProgress};
pub use dead_letter::{DeadLetter, DeadLetters};
pub use error::{ConfigError, Error, Result};
pub use format::{Accepted, Format, FormatOf};
pub use registry::{
    BuildContext, Component, Registry, SinkConnector, SinkFactory, SourceConnector, SourceFactory,
};
pub use schemars::{self, JsonSchema};
pub use secret::Secret;
pub use sink::{Sink, SinkBatch};
pub use source::{
    AnyReplayable, BlockWriter, BuiltSource, Guarantee, Receiver, ReceiverStatus, ReplayableSource,
    SourceRuntime, WhenDurable,
};
pub use time::BatchTime;
