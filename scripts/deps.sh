#!/usr/bin/env bash
# Installs the system libraries sluice builds against, if missing (Debian/Ubuntu):
#   librocksdb-dev  RocksDB for the checkpoint store, linked dynamically (building the bundled C++
#                   copy would cost ~2,900 CPU-s per clean build; see docs/operations.md)
#   libclang-dev    bindgen, for the RocksDB bindings
#   procps          `kill`, used by the crash tests
#   mosquitto, mosquitto-clients
#                   the MQTT broker the mqtt tests start on a loopback port of their own, and
#                   mosquitto_pub / mosquitto_sub / mosquitto_passwd as independent clients
set -euo pipefail
need=()
for p in librocksdb-dev libclang-dev procps mosquitto mosquitto-clients; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
