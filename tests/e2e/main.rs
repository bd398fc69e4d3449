//! sluice's end-to-end tests: one test binary (one link of the whole stack).
//!
//! - `ops`: every DStream operation's declarative form, exact output on small deterministic input.
//! - `stateful`: windows, event time with a watermark, keyed state and timeouts.
//! - `bad_config`: `sluice validate` / `sluice run` on broken configs: exit 2 and the message.
//! - `connectors`: the real binary against a real TCP peer and real directories.

mod bad_config;
mod common;
mod connectors;
mod ops;
mod stateful;
