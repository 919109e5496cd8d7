#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a first immutable backup:
# installs what is missing, starts a throwaway local Ceph RGW with the
# tutorial's users, writes a config and a master key under .quickstart/,
# creates the locked bucket with `immutd init`, backs up this repository's
# src/, lists the result and verifies it.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

pkgs=()
command -v radosgw >/dev/null 2>&1 || pkgs+=(ceph-mon ceph-osd ceph-mgr radosgw ceph-common)
command -v npm >/dev/null 2>&1 || pkgs+=(npm) # Debian's npm only fetches a supported Node.js below
if [ "${#pkgs[@]}" -gt 0 ]; then
  echo "== installing from Debian: ${pkgs[*]} (Ceph is the local S3 server)"
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
. scripts/node.sh
immutd_install_deps
npm run --silent build
immutd_use_supported_node # Node.js 24 into .node/ if the one on PATH is too old

echo "== starting the local S3 server (Ceph RGW over https on 127.0.0.1)"
bash scripts/s3-test-server.sh start "$repo/.s3-test"
env_json="$repo/.s3-test/env.json"
val() { node -e "const e=require('$env_json'); console.log($1)"; }

qs="$repo/.quickstart"
mkdir -p "$qs"
chmod 700 "$qs"
[ -f "$qs/master.key" ] || node dist/src/cli.js key generate "$qs/master.key"
bucket=immutd-quickstart

cat > "$qs/config.yaml" <<YAML
catalog: $qs/catalog.db
masterKeyFile: $qs/master.key
targets:
  local:
    endpoint: $(val e.endpoint)
    bucket: $bucket
    forcePathStyle: true
    caFile: $(val e.caFile)
    retention: { mode: COMPLIANCE, days: 1 }
    credentials:
      writer: { accessKeyId: $(val e.writer.accessKeyId), secretAccessKey: $(val e.writer.secretAccessKey) }
      reader: { accessKeyId: $(val e.reader.accessKeyId), secretAccessKey: $(val e.reader.secretAccessKey) }
      admin: { accessKeyId: $(val e.main.accessKeyId), secretAccessKey: $(val e.main.secretAccessKey) }
jobs:
  - name: sample
    target: local
    schedule: "0 3 * * *"
    paths: [$repo/src]
    compression: zstd
YAML

# .quickstart/immutd: this checkout's immutd with the Node.js chosen above and this config.
cat > "$qs/immutd" <<SH
#!/bin/sh
IMMUTD_CONFIG="\${IMMUTD_CONFIG:-$qs/config.yaml}" exec "$(command -v node)" "$repo/dist/src/cli.js" "\$@"
SH
chmod 0755 "$qs/immutd"

echo "== immutd init (bucket with Object Lock, COMPLIANCE default retention, lifecycle rules)"
"$qs/immutd" init
echo "== immutd backup"
"$qs/immutd" backup
echo "== immutd list"
"$qs/immutd" list
echo "== immutd verify"
"$qs/immutd" verify
echo
echo "Try: .quickstart/immutd --help   Config: $qs/config.yaml"
echo "Stop the local S3 server: bash scripts/s3-test-server.sh stop"
