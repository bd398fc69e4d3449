#!/usr/bin/env bash
# Starts a one-node Ceph cluster with an S3 gateway (RGW) on 127.0.0.1, in a folder of its own, for
# the object-store tests' Ceph suite (tests/e2e/object_store_ceph.rs):
#
#   tests/services/ceph-rgw.sh start DIR RGW_PORT ACCESS_KEY SECRET_KEY   # returns once S3 answers
#   tests/services/ceph-rgw.sh stop DIR
#
# One monitor, one OSD on `memstore` (RAM, nothing on disk but logs), cephx keys in one keyring
# file, the beast frontend on RGW_PORT, and one RGW user with the given keys. Needs the Debian
# packages ceph-mon, ceph-osd and radosgw (scripts/deps.sh --tests installs them).
set -euo pipefail

cmd="${1:?start|stop}"
dir="$(realpath -m "${2:?DIR}")"
conf="$dir/ceph.conf"

stop() {
  for pidfile in "$dir"/run/*.pid; do
    [ -e "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  # Daemons exit within a second of SIGTERM; make sure none outlives the test.
  sleep 1
  for pidfile in "$dir"/run/*.pid; do
    [ -e "$pidfile" ] || continue
    kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

if [ "$cmd" = stop ]; then
  stop
  exit 0
fi

rgw_port="${3:?RGW_PORT}"
access_key="${4:?ACCESS_KEY}"
secret_key="${5:?SECRET_KEY}"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mon_port="$(free_port)"
fsid="$(uuidgen)"
mkdir -p "$dir"/{run,log,mon/ceph-a,osd/ceph-0}

cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon_port
public addr = 127.0.0.1
ms bind ipv6 = false
run dir = $dir/run
pid file = $dir/run/\$name.pid
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
mon data = $dir/mon/\$cluster-\$id
osd data = $dir/osd/\$cluster-\$id
keyring = $dir/keyring
osd objectstore = memstore
memstore device bytes = 2147483648
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon warn on pool no redundancy = false
mon allow pool size one = true
[client.rgw.sluice]
rgw frontends = beast endpoint=127.0.0.1:$rgw_port
rgw dns name = 127.0.0.1
rgw enable usage log = false
EOF

# Every daemon's key in one keyring, imported into the monitor when it is made.
key() { ceph-authtool "$dir/keyring" --gen-key -n "$@" >/dev/null; }
ceph-authtool --create-keyring "$dir/keyring" >/dev/null
key mon. --cap mon 'allow *'
key client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *'
key osd.0 --cap mon 'allow profile osd' --cap osd 'allow *'
key client.rgw.sluice --cap mon 'allow rw' --cap osd 'allow rwx'
monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$dir/monmap" >/dev/null
ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring"
ceph-mon -c "$conf" -i a

osd_id="$(ceph -c "$conf" osd create)"
ceph-osd -c "$conf" -i "$osd_id" --mkfs >/dev/null 2>&1
ceph-osd -c "$conf" -i "$osd_id"

radosgw -c "$conf" -n client.rgw.sluice
radosgw-admin -c "$conf" user create --uid sluice --display-name sluice \
  --access-key "$access_key" --secret "$secret_key" >/dev/null

# Ready when an anonymous request gets an S3 answer (403 or 200) from the gateway.
for _ in $(seq 1 600); do
  code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$rgw_port/" || true)"
  if [ "$code" = 200 ] || [ "$code" = 403 ]; then
    exit 0
  fi
  sleep 0.5
done
echo "ceph-rgw: the gateway on 127.0.0.1:$rgw_port did not answer in 300 s; logs in $dir/log" >&2
stop
exit 1
