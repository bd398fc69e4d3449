//! The `file` source: a directory; each new file (moved in atomically) is read once, in order of
//! modification time then name. Files whose name starts with `.` or `_` are ignored (temporary
//! files and manifests, as Spark does). Replayable: a batch's input is its list of files.
//!
//! The `file` sink is the object-store sink on a local folder (`sluice_object_store::FileSinkConnector`).

mod source;

pub use source::{FileSourceConfig, FileSourceConnector};
