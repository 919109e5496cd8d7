#!/usr/bin/env bash
# Soak test of the daemon's memory: `immutd run` with JOBS jobs, each backing
# up a small directory every second, for SECONDS seconds against a Ceph RGW;
# the daemon's RSS (and its V8 heap, from /metrics) is sampled every 10 s.
# Memory must level off after the first minutes; a curve that keeps climbing
# is a leak. Not a test: timing and RSS depend on the machine.
#
# Usage: bash scripts/soak.sh [SECONDS (default 600)] [JOBS (default 20)] [OUT]
#   OUT (default soak-rss.tsv): one line per sample, "elapsed_s rss_mib heap_used_mib
#   backups_succeeded". With $IMMUTD_TEST_S3_ENV set the RGW it names is used
#   (a bucket is created on it); otherwise a throwaway one is started, as
#   scripts/bench.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
jobs=${2:-20}
out=$(realpath -m "${3:-soak-rss.tsv}")

. scripts/node.sh
immutd_install_deps
npm run --silent build
immutd_use_supported_node
work=$(mktemp -d /tmp/immutd-soak.XXXXXX)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  [ -n "${own_s3:-}" ] && bash scripts/s3-test-server.sh stop "$work/s3" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
if [ -z "${IMMUTD_TEST_S3_ENV:-}" ]; then
  own_s3=1
  bash scripts/s3-test-server.sh start "$work/s3" >/dev/null
  export IMMUTD_TEST_S3_ENV="$work/s3/env.json"
fi

node dist/src/cli.js key generate "$work/master.key" 2>/dev/null
bucket=immutd-soak-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
node dist/test/support/make-bucket.js "$bucket" 1 >/dev/null
port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
{
  cat <<YAML
catalog: $work/catalog.db
masterKeyFile: $work/master.key
maxConcurrentJobs: $jobs
http: { listen: "127.0.0.1:$port" }
targets:
YAML
  # the target block the tests use (test/support/s3env.ts): writer and reader credentials
  node --input-type=module -e "const m = await import('./dist/test/support/s3env.js');
    process.stdout.write(m.targetYaml(m.s3env(), { bucket: '$bucket' }))"
  echo "jobs:"
  for i in $(seq "$jobs"); do
    mkdir -p "$work/data/$i"
    for f in a b c; do head -c 4096 /dev/urandom >"$work/data/$i/$f"; done
    echo "  - { name: j$i, target: local, schedule: \"* * * * * *\", paths: [$work/data/$i] }"
  done
} >"$work/config.yaml"

node dist/src/cli.js --config "$work/config.yaml" --log-level info run >"$work/log" 2>&1 &
pid=$!
echo "== immutd run (pid $pid): $jobs jobs every second for $seconds s; samples in $out"
: >"$out"
metric() { { curl -sf "http://127.0.0.1:$port/metrics" || true; } | awk -v m="$1" '$1 == m { print $2 }'; }
for _ in $(seq 300); do
  grep -q '"msg":"immutd daemon started"' "$work/log" && break
  kill -0 "$pid" 2>/dev/null || { echo "daemon exited:"; tail -5 "$work/log"; exit 1; }
  sleep 0.2
done
start=$(date +%s)
while :; do
  now=$(($(date +%s) - start))
  kill -0 "$pid" 2>/dev/null || { echo "daemon exited:"; tail -5 "$work/log"; exit 1; }
  rss=$(awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status")
  heap=$(metric nodejs_heap_size_used_bytes | awk '{ printf "%.1f", $1 / 1048576 }')
  ok=$(grep -c '"msg":"backup succeeded"' "$work/log" || true)
  echo "$now $rss ${heap:--} $ok" | tee -a "$out"
  [ "$now" -ge "$seconds" ] && break
  sleep 10
done
failed=$(grep -c '"msg":"backup failed' "$work/log" || true)
echo "== $ok backups succeeded, $failed failed; RSS first/last: $(head -1 "$out" | cut -d' ' -f2) / $rss MiB"
