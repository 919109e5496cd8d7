#!/usr/bin/env bash
# Benchmark: stream a generated tree into a local Ceph RGW (bluestore, https,
# SSE-C) with `immutd backup`, and report throughput and peak memory.
# Targets checked here, not in the tests (timing tests flake on shared CPUs):
#   - throughput of an uncompressed backup >= 100 MB/s on 2 cores
#     (reference on this machine: plain lib-storage 137 MB/s, aws s3 cp 147 MB/s)
#   - peak RSS <= 3 x partSizeMiB x (queueSize + 1) + 150 MiB, whatever the data size
#     (lib-storage keeps each part plus a concatenation copy, and V8 frees
#     Buffers only at its next GC; measured: 303 MiB for 300 MB and 320 MiB for
#     1.5 GB with the default 16 MiB x 4, so memory does not grow with the data)
# Usage: bash scripts/bench.sh [SIZE_MB (default 500)] [RUNS (default 3)]
#   IMMUTD_BENCH_COMPRESSIONS="none" runs only those (default "none gzip").
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${1:-500}
runs=${2:-3}
part=16
queue=4

. scripts/node.sh
immutd_install_deps
npm run --silent build
immutd_use_supported_node
work=$(mktemp -d /tmp/immutd-bench.XXXXXX)
s3dir="$work/s3"
cleanup() { bash scripts/s3-test-server.sh stop "$s3dir" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
IMMUTD_S3_STORE=bluestore bash scripts/s3-test-server.sh start "$s3dir" >/dev/null
export IMMUTD_TEST_S3_ENV="$s3dir/env.json"

echo "== generating ${size_mb} MB: 80% random in 1 MiB..8 MiB files, 20% text in 4 KiB files"
data="$work/data"
node -e '
const fs=require("fs"),path=require("path"),crypto=require("crypto");
const [dir,mb]=[process.argv[1],Number(process.argv[2])];
let rand=mb*0.8*1048576, text=mb*0.2*1048576, i=0;
fs.mkdirSync(dir,{recursive:true});
while(rand>0){const d=path.join(dir,"bin",String(i%50));fs.mkdirSync(d,{recursive:true});
 const n=Math.min(rand,(1+(i%8))*1048576);fs.writeFileSync(path.join(d,"f"+i),crypto.randomBytes(n));rand-=n;i++;}
const line="the quick brown fox jumps over the lazy dog 0123456789\n";const page=line.repeat(Math.ceil(4096/line.length)).slice(0,4096);
while(text>0){const d=path.join(dir,"txt",String(i%200));fs.mkdirSync(d,{recursive:true});fs.writeFileSync(path.join(d,"t"+i+".txt"),page);text-=4096;i++;}
' "$data" "$size_mb"
bytes=$(du -sb "$data" | cut -f1)
files=$(find "$data" -type f | wc -l)
echo "   $files files, $bytes bytes"

node dist/src/cli.js key generate "$work/master.key" 2>/dev/null
val() { node -e "const e=require('$IMMUTD_TEST_S3_ENV'); console.log($1)"; }
bucket=immutd-bench
node dist/test/support/make-bucket.js "$bucket" 1 >/dev/null
for comp in none gzip; do
  cat > "$work/$comp.yaml" <<YAML
catalog: $work/catalog.db
masterKeyFile: $work/master.key
targets:
  local:
    endpoint: $(val e.endpoint)
    bucket: $bucket
    forcePathStyle: true
    caFile: $(val e.caFile)
    retention: { mode: COMPLIANCE, days: 1 }
    partSizeMiB: $part
    queueSize: $queue
    credentials:
      writer: { accessKeyId: $(val e.writer.accessKeyId), secretAccessKey: $(val e.writer.secretAccessKey) }
      reader: { accessKeyId: $(val e.reader.accessKeyId), secretAccessKey: $(val e.reader.secretAccessKey) }
jobs:
  - { name: bench, target: local, schedule: "@daily", paths: [$data], compression: $comp }
YAML
done

calc() { awk "BEGIN { print $1 }"; }
limit_mib=$((3 * part * (queue + 1) + 150))
fail=0
for comp in ${IMMUTD_BENCH_COMPRESSIONS:-none gzip}; do
  results=()
  for r in $(seq "$runs"); do
    /usr/bin/time -f "%e %M" -o "$work/time" node dist/src/cli.js --config "$work/$comp.yaml" --log-level warn backup >/dev/null 2>"$work/err" \
      || { cat "$work/err"; exit 1; }
    read -r secs rss_kb < "$work/time"
    results+=("$secs $rss_kb")
    printf '   %-5s run %d: %6.2f s  %6.1f MB/s  peak RSS %4d MiB\n' "$comp" "$r" "$secs" \
      "$(calc "$bytes / $secs / 1000000")" "$((rss_kb / 1024))"
  done
  med=$(printf '%s\n' "${results[@]}" | sort -n | sed -n "$(( (runs + 1) / 2 ))p")
  read -r secs rss_kb <<<"$med"
  mbps=$(calc "$bytes / $secs / 1000000")
  maxrss=$(printf '%s\n' "${results[@]}" | awk '{print $2}' | sort -n | tail -1)
  printf '== %-5s median %.2f s, %.1f MB/s; max peak RSS %d MiB (limit %d MiB)\n' "$comp" "$secs" "$mbps" "$((maxrss / 1024))" "$limit_mib"
  if [ "$((maxrss / 1024))" -gt "$limit_mib" ]; then echo "   FAIL: memory above limit"; fail=1; fi
  if [ "$comp" = none ] && [ "$(calc "($mbps < 100) ? 1 : 0")" = 1 ]; then echo "   FAIL: below 100 MB/s"; fail=1; fi
done
exit "$fail"
