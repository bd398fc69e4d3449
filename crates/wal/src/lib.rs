//! sluice-wal: what makes a restart lose nothing — the write-ahead log of received blocks
//! ([`Log`], one per receiver) and the checkpoint store of batch plans, commits, positions and
//! state ([`Store`], RocksDB).

mod file;
pub mod ipc;
pub mod log;
mod rocks_log;
pub mod store;

pub use file::write_durably;
pub use log::{repair, Entry, Log, Recovered, Repaired, SyncPolicy};
pub use sluice_core::{Error, Result};
pub use store::{Changes, Store};
