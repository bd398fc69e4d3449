//! sluice's end-to-end tests: one test binary (one link of the whole stack).
//!
//! - `ops`: every DStream operation's declarative form, exact output on small deterministic input.
//! - `stateful`: windows, event time with a watermark, keyed state and timeouts.
//! - `bad_config`: `sluice validate` / `sluice run` on broken configs: exit 2 and the message.
//! - `connectors`: the real binary against a real TCP peer and real directories.
//! - `backpressure`: rate limits that reach the socket peer.
//! - `crash`: SIGKILL the real binary at random points, restart, compare outputs record by record.
//! - `mqtt`: the MQTT source and sink against a real mosquitto broker, with SIGKILLs.
//! - `object_store`: the object-storage sink against a real S3 server (s3s-fs), with SIGKILLs.
//! - `object_store_ceph`: the same sink against Ceph RGW (one-node cluster started by the test).
//! - `kafka`: the Kafka source and sink against a real broker (tansu), with SIGKILLs.
//! - `kinesis`: the Kinesis source and sink against kinesis-local and kinesalite, with SIGKILLs.
//! - `edges`: issue 18's edges — files at start, directory syncs, private files and secrets.
//! - `durability`: torn tails, corruption and a full disk on the real WAL and checkpoint files.
//! - `upgrade`: checkpoints and output folders of an older sluice, kept as fixtures, recover.

mod backpressure;
mod bad_config;
mod common;
mod connectors;
mod crash;
mod durability;
mod edges;
mod kafka;
mod kinesis;
mod mqtt;
mod object_store;
mod object_store_ceph;
mod ops;
mod stateful;
mod upgrade;
