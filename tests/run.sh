#!/usr/bin/env bash
# Runs every test of sluice: unit tests and the end-to-end suite (tests/e2e), which starts the real
# `sluice` binary against real peers on 127.0.0.1. Installs what the tests need first.
#
# The target dir defaults to a cache outside the clone, so a second run rebuilds only sluice's crates.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# System libraries (RocksDB, libclang, procps); later connector suites add their servers here.
scripts/deps.sh --tests
# The two heaviest end-to-end tests (a 208 MB object; a Ceph cluster) run on their own, after the
# rest, so that their disk and CPU load does not slow every other test (it once exposed an MQTT
# defect, since fixed: docs/mqtt.md, "Known limits").
heavy=(object_store_writes_200_mb_with_bounded_memory object_store_on_ceph_rgw)
cargo test --workspace "$@" -- $(printf -- '--skip %s ' "${heavy[@]}")
# (`--workspace` again, not `-p sluice`: the same feature set, so nothing is compiled twice.)
cargo test --workspace "$@" -- "${heavy[@]}"
# HDFS: only against a NameNode you name (none can be run here), e.g. SLUICE_TEST_WEBHDFS=127.0.0.1:9870.
if [ -n "${SLUICE_TEST_WEBHDFS:-}" ]; then
  cargo test -p sluice --test e2e -- --ignored object_store_on_webhdfs
fi
