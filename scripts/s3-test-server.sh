#!/usr/bin/env bash
# A throwaway Ceph RGW (Object Lock S3) on 127.0.0.1 for tests and benchmarks:
# one monitor, one manager, one OSD and radosgw, everything under DIR, no
# systemd, no root needed. Users as in the tutorial: main user "Backups" with a
# write-only subuser (creator) and a read-only one (restorer).
#
# Usage: scripts/s3-test-server.sh start|stop|status|env [DIR]
#   DIR defaults to $IMMUTD_S3_DIR, else <repo>/.s3-test
#   IMMUTD_S3_STORE=memstore (default, RAM) | bluestore (sparse 20G file, benchmarks)
#   IMMUTD_S3_MEMSTORE_BYTES (default 4 GiB)
#   IMMUTD_S3_MON_PORT, IMMUTD_S3_HTTP_PORT, IMMUTD_S3_HTTPS_PORT (default: free ports)
#   IMMUTD_S3_LC_DEBUG_INTERVAL=N: a lifecycle "day" lasts N seconds and lifecycle
#     runs all day (Ceph's rgw lc debug interval), for the retention tests; unset
#     (default): real days. Never on a server other tests share: its rules would
#     remove their noncurrent versions within seconds.
# `start` writes DIR/env.json (read by test/support/s3env.ts) and DIR/env.sh; `stop`
# removes them. `status` exits 0 when S3 answers, 1 when not, 3 when nothing runs.
set -euo pipefail

cmd=${1:-}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=$(realpath -m -- "${2:-${IMMUTD_S3_DIR:-$repo/.s3-test}}")
conf=$dir/ceph.conf
# What start creates, and wipes before it starts again; nothing else in DIR.
parts=(ceph.conf keyring mon osd mgr rgw run log tls crash env.json env.sh)

# Fixed throwaway test credentials (never used outside this local server).
MAIN_AK=BACKUPSMAINACCESSKEY0 MAIN_SK=backups-main-secret-key-for-tests-only-0000
WRITER_AK=BACKUPSCREATORACCESS1 WRITER_SK=backups-creator-secret-key-for-tests-only-01
READER_AK=BACKUPSRESTORERACCES2 READER_SK=backups-restorer-secret-key-for-tests-only-2
OTHER_AK=OTHERUSERACCESSKEY003 OTHER_SK=other-user-secret-key-for-tests-only-000003

die() { echo "s3-test-server: $*" >&2; exit 1; }
# ceph.conf, env.json and env.sh take the path unquoted.
[[ $dir =~ [[:space:]\"\'\\] ]] && die "DIR must not contain spaces, quotes or backslashes: $dir"

# Daemons started from this DIR: their pid files, plus any process still running
# with our ceph.conf (covers a DIR wiped while its daemons ran).
our_pids() {
  local f p
  {
    for f in "$dir"/run/*.pid; do [ -f "$f" ] && cat "$f" && echo; done
    grep -slzxF -- "$conf" /proc/[0-9]*/cmdline | cut -d/ -f3
  } 2>/dev/null | sort -un | while read -r p; do
    [ -n "$p" ] && grep -qzxF -- "$conf" "/proc/$p/cmdline" 2>/dev/null || continue
    case $(daemon_of "$p") in ceph-mon | ceph-osd | ceph-mgr | radosgw) echo "$p" ;; esac
  done
}
daemon_of() {
  local n
  n=$(head -zn1 "/proc/$1/cmdline" 2>/dev/null | tr -d '\0') || true
  echo "${n##*/}"
}

# SIGTERM, wait up to 20 s, then SIGKILL.
term_wait() {
  local p i left=("$@")
  [ "$#" -eq 0 ] && return 0
  kill -TERM "$@" 2>/dev/null || true
  for ((i = 0; i < 100 && ${#left[@]} > 0; i++)); do
    sleep 0.2
    set -- "${left[@]}"; left=()
    for p; do kill -0 "$p" 2>/dev/null && left+=("$p"); done
  done
  [ "${#left[@]}" -eq 0 ] && return 0
  kill -KILL "${left[@]}" 2>/dev/null || true
  for p in "${left[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
}

# In dependency order: radosgw hangs on exit while it still has requests to a
# stopped OSD, and an OSD waits for the monitor's ack of its shutdown.
stop() {
  local p rgw=() osd=() mon=()
  while read -r p; do
    case $(daemon_of "$p") in radosgw) rgw+=("$p") ;; ceph-mon) mon+=("$p") ;; *) osd+=("$p") ;; esac
  done < <(our_pids)
  term_wait "${rgw[@]}"
  term_wait "${osd[@]}"
  term_wait "${mon[@]}"
  # No env.json while stopped: tests then say "not running" instead of timing out.
  rm -f "$dir"/run/*.pid "$dir/env.json" "$dir/env.sh"
}

port_busy() { grep -qi "$(printf ':%04X ' "$1")" /proc/net/tcp /proc/net/tcp6 2>/dev/null; }
# PORT_ENV_VAR RESULT_VAR: the port from the environment, else a free one below
# the kernel's ephemeral range and away from Ceph's own 6800-7300.
taken=" "
pick_port() {
  local p=${!1:-}
  if [ -n "$p" ]; then
    [[ $p =~ ^[0-9]+$ ]] && [ "$p" -ge 1024 ] && [ "$p" -le 65535 ] || die "$1=$p is not a port number (1024-65535)"
    port_busy "$p" && die "port $p ($1) is in use"
  else
    while p=$((10000 + RANDOM % 20000)); port_busy "$p" || [[ $taken == *" $p "* ]]; do :; done
  fi
  taken+="$p "
  printf -v "$2" %s "$p"
}

logs_tail() {
  local f
  for f in "$dir"/log/*.out "$dir"/log/{mon.a,mgr.x,osd.0,client.admin,client.rgw}.log; do
    [ -s "$f" ] && { echo "--- $f"; tail -n 15 "$f"; }
  done >&2 || true
}
fail() { echo "s3-test-server: $*" >&2; logs_tail; stop; exit 1; }

start() {
  local t0=$SECONDS store=${IMMUTD_S3_STORE:-memstore} mon http https fsid
  command -v radosgw >/dev/null || die "radosgw not installed (apt-get install ceph-mon ceph-osd ceph-mgr radosgw ceph-common)"
  stop
  mkdir -p "$dir" && (cd "$dir" && rm -rf "${parts[@]}")
  mkdir -p "$dir"/{mon,osd,mgr,rgw,run,log,tls,crash}
  pick_port IMMUTD_S3_MON_PORT mon
  pick_port IMMUTD_S3_HTTP_PORT http
  pick_port IMMUTD_S3_HTTPS_PORT https
  fsid=$(uuidgen)

  local lc=${IMMUTD_S3_LC_DEBUG_INTERVAL:-} lcconf=""
  if [ -n "$lc" ]; then
    [[ $lc =~ ^[1-9][0-9]*$ ]] || die "IMMUTD_S3_LC_DEBUG_INTERVAL must be a number of seconds"
    lcconf="# A lifecycle day lasts $lc s, and lifecycle runs at any hour (IMMUTD_S3_LC_DEBUG_INTERVAL).
rgw lc debug interval = $lc"
  fi

  local objstore
  [[ ${IMMUTD_S3_MEMSTORE_BYTES:-0} =~ ^[0-9]+$ ]] || die "IMMUTD_S3_MEMSTORE_BYTES must be a number of bytes"
  case $store in
    memstore) objstore="osd objectstore = memstore
memstore device bytes = ${IMMUTD_S3_MEMSTORE_BYTES:-4294967296}" ;;
    bluestore) objstore="osd objectstore = bluestore
bluestore block create = true
bluestore block size = 20G" ;;
    *) die "IMMUTD_S3_STORE must be memstore or bluestore" ;;
  esac

  cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$mon]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
# No cephx on a throwaway cluster; clients must then accept crc mode, or
# radosgw never authenticates to the monitor.
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc secure
ms client mode = crc secure
run dir = $dir/run
admin socket = $dir/run/\$cluster-\$name.asok
log file = $dir/log/\$name.log
pid file = $dir/run/\$name.pid
crash dir = $dir/crash
mon data = $dir/mon
mgr data = $dir/mgr
osd data = $dir/osd
rgw data = $dir/rgw
keyring = $dir/keyring
mon cluster log file = $dir/log/cluster.log
# One OSD: single replicas, placement across OSDs not hosts, few PGs.
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd crush chooseleaf type = 0
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
# A nearly full CI disk must not stop the monitor.
mon data avail crit = 1
# radosgw creates its pools one monitor command at a time, each waiting for a
# paxos round (1 s by default): that was most of startup and of a first bucket.
paxos propose interval = 0.05
$objstore

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:$http ssl_endpoint=127.0.0.1:$https ssl_certificate=$dir/tls/cert.pem ssl_private_key=$dir/tls/key.pem
# Deleted data is freed after minutes, not hours: memstore would fill up, and
# a full OSD makes writes hang instead of fail.
rgw gc obj min wait = 60
rgw gc processor period = 30
rgw gc processor max time = 30
$lcconf
EOF

  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
    -keyout "$dir/tls/key.pem" -out "$dir/tls/cert.pem" 2>"$dir/log/openssl.out" || fail "openssl failed"

  local c=(-c "$conf")
  ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon]" "$dir/run/monmap" >/dev/null
  ceph-mon "${c[@]}" -i a --mkfs --monmap "$dir/run/monmap" >"$dir/log/mon-mkfs.out" 2>&1 || fail "ceph-mon --mkfs failed"
  ceph-mon "${c[@]}" -i a >"$dir/log/mon.out" 2>&1 || fail "ceph-mon failed to start"
  ceph-mgr "${c[@]}" -i x >"$dir/log/mgr.out" 2>&1 || fail "ceph-mgr failed to start"

  local uuid id
  uuid=$(uuidgen)
  id=$(timeout 30 ceph "${c[@]}" --connect-timeout 25 osd new "$uuid" 2>"$dir/log/osd-new.out") || fail "ceph osd new failed"
  ceph-osd "${c[@]}" -i "$id" --mkfs --osd-uuid "$uuid" >"$dir/log/osd-mkfs.out" 2>&1 || fail "ceph-osd --mkfs failed"
  ceph-osd "${c[@]}" -i "$id" >"$dir/log/osd.out" 2>&1 || fail "ceph-osd failed to start"
  radosgw "${c[@]}" -n client.rgw >"$dir/log/rgw.out" 2>&1 || fail "radosgw failed to start"

  local code=000 f p
  while [ $((SECONDS - t0)) -lt 60 ]; do
    for f in "$dir"/run/*.pid; do
      p=$(cat "$f") && [ -n "$p" ] && ! kill -0 "$p" 2>/dev/null && fail "$(basename "$f" .pid) exited"
    done
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$dir/tls/cert.pem" "https://127.0.0.1:$https/" || true)
    [ "$code" = 200 ] && break
    sleep 0.3
  done
  [ "$code" = 200 ] || fail "no answer from https://127.0.0.1:$https/ within 60 s (last status $code)"

  local a=(radosgw-admin "${c[@]}")
  {
    # Every test makes its own bucket; RGW's default of 1,000 buckets a user runs
    # out after a few suite runs against one long-lived server (TooManyBuckets).
    "${a[@]}" user create --uid=backups --display-name=Backups --access-key="$MAIN_AK" --secret-key="$MAIN_SK" \
      --max-buckets=1000000
    "${a[@]}" subuser create --uid=backups --subuser=backups:creator --access=write --key-type=s3 \
      --access-key="$WRITER_AK" --secret-key="$WRITER_SK"
    "${a[@]}" subuser create --uid=backups --subuser=backups:restorer --access=read --key-type=s3 \
      --access-key="$READER_AK" --secret-key="$READER_SK"
    "${a[@]}" user create --uid=other --display-name=Other --access-key="$OTHER_AK" --secret-key="$OTHER_SK" \
      --max-buckets=1000000
  } >"$dir/log/users.out" 2>&1 || fail "radosgw-admin failed (see $dir/log/users.out)"

  cat >"$dir/env.json" <<EOF
{
  "endpoint": "https://127.0.0.1:$https",
  "httpEndpoint": "http://127.0.0.1:$http",
  "region": "us-east-1",
  "caFile": "$dir/tls/cert.pem",
  "cephConf": "$conf",
  "lcDebugIntervalSeconds": ${lc:-null},
  "main": { "accessKeyId": "$MAIN_AK", "secretAccessKey": "$MAIN_SK" },
  "writer": { "accessKeyId": "$WRITER_AK", "secretAccessKey": "$WRITER_SK" },
  "reader": { "accessKeyId": "$READER_AK", "secretAccessKey": "$READER_SK" },
  "other": { "accessKeyId": "$OTHER_AK", "secretAccessKey": "$OTHER_SK" }
}
EOF
  cat >"$dir/env.sh" <<EOF
export IMMUTD_TEST_S3_ENV='$dir/env.json' IMMUTD_TEST_S3_REGION='us-east-1'
export IMMUTD_TEST_S3_ENDPOINT='https://127.0.0.1:$https' IMMUTD_TEST_S3_HTTP_ENDPOINT='http://127.0.0.1:$http'
export IMMUTD_TEST_S3_CA_FILE='$dir/tls/cert.pem' IMMUTD_TEST_S3_CEPH_CONF='$conf'
export IMMUTD_TEST_S3_MAIN_ACCESS_KEY_ID='$MAIN_AK' IMMUTD_TEST_S3_MAIN_SECRET_ACCESS_KEY='$MAIN_SK'
export IMMUTD_TEST_S3_WRITER_ACCESS_KEY_ID='$WRITER_AK' IMMUTD_TEST_S3_WRITER_SECRET_ACCESS_KEY='$WRITER_SK'
export IMMUTD_TEST_S3_READER_ACCESS_KEY_ID='$READER_AK' IMMUTD_TEST_S3_READER_SECRET_ACCESS_KEY='$READER_SK'
export IMMUTD_TEST_S3_OTHER_ACCESS_KEY_ID='$OTHER_AK' IMMUTD_TEST_S3_OTHER_SECRET_ACCESS_KEY='$OTHER_SK'
EOF

  cat <<EOF
Ceph RGW ($store) up in $((SECONDS - t0)) s: https://127.0.0.1:$https (CA $dir/tls/cert.pem), http://127.0.0.1:$http
  main    backups           $MAIN_AK / $MAIN_SK
  writer  backups:creator   $WRITER_AK / $WRITER_SK
  reader  backups:restorer  $READER_AK / $READER_SK
  env:    $dir/env.json  $dir/env.sh    stop: $0 stop $dir
EOF
}

status() {
  local pids
  mapfile -t pids < <(our_pids)
  if [ "${#pids[@]}" -eq 0 ]; then echo "not running ($dir)"; return 3; fi
  ps -o pid=,comm= -p "$(IFS=,; echo "${pids[*]}")"
  local ep
  ep=$(sed -n 's/.*"endpoint": "\(.*\)".*/\1/p' "$dir/env.json" 2>/dev/null) || true
  if [ -n "$ep" ] && curl -s -o /dev/null --max-time 3 --cacert "$dir/tls/cert.pem" "$ep/"; then
    echo "S3 answering at $ep"
  else
    echo "S3 not answering${ep:+ at $ep}"; return 1
  fi
}

case $cmd in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) [ -f "$dir/env.json" ] || die "no $dir/env.json (not started?)"; echo "$dir/env.json" ;;
  *) echo "usage: $0 start|stop|status|env [DIR]" >&2; exit 2 ;;
esac
