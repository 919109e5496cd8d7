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
# Peers, in the same run and interleaved with immutd (run 1 of each, then run 2
# of each, …), so that a noisy neighbour slows all of them alike: for each
# compression the same tree through `tar -cf - | [gzip -6 | pigz -6 | zstd -3 -T0]`
# into `aws s3 cp -` (if aws-cli is installed) and `rclone rcat` (if rclone is),
# both with SSE-C and 16 MiB parts. Each row prints immutd's median wall time
# over the peer's (below 1: immutd is faster) and both peak RSS figures (GNU
# time's %M: the largest single process of a pipeline, not their sum).
# aws-cli runs with AWS_REQUEST_CHECKSUM_CALCULATION=when_required: its default
# checksum mode gets HTTP 411 on every part from Ceph RGW 16, and with it
# aws-cli sends no part checksum at all (AWS itself would refuse that on a
# lock bucket; immutd sends Content-MD5 on every part), so it does less work.
# The peer ratios are printed, not checked.
# Usage: bash scripts/bench.sh [SIZE_MB (default 500)] [RUNS (default 3)]
#   IMMUTD_BENCH_COMPRESSIONS="none" runs only those (default "none gzip zstd").
#   IMMUTD_BENCH_PEERS="" runs no peer (default: "aws rclone", those installed).
#   IMMUTD_BENCH_S3_ENV=FILE uses that running test server (an env.json as
#   scripts/s3-test-server.sh writes it) instead of starting a bluestore one.
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
if [ -n "${IMMUTD_BENCH_S3_ENV:-}" ]; then
  cleanup() { rm -rf "$work"; }
  export IMMUTD_TEST_S3_ENV="$IMMUTD_BENCH_S3_ENV"
  bucket=immutd-bench-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
else
  cleanup() { bash scripts/s3-test-server.sh stop "$s3dir" >/dev/null 2>&1 || true; rm -rf "$work"; }
  IMMUTD_S3_STORE=bluestore bash scripts/s3-test-server.sh start "$s3dir" >/dev/null
  export IMMUTD_TEST_S3_ENV="$s3dir/env.json"
  bucket=immutd-bench
fi
trap cleanup EXIT

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
node dist/test/support/make-bucket.js "$bucket" 1 >/dev/null
for comp in none gzip zstd; do
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
comps=${IMMUTD_BENCH_COMPRESSIONS:-none gzip zstd}

# The peers: tar, a compressor, an uploader; all read the same tree.
peers=()
for p in ${IMMUTD_BENCH_PEERS-aws rclone}; do
  case $p in
  aws) command -v aws >/dev/null 2>&1 && peers+=(aws) ;;
  rclone) command -v rclone >/dev/null 2>&1 && peers+=(rclone) ;;
  *) echo "unknown peer $p (aws, rclone)" >&2; exit 2 ;;
  esac
done
head -c 32 /dev/urandom > "$work/ssec.key"
export AWS_ACCESS_KEY_ID=$(val e.writer.accessKeyId) AWS_SECRET_ACCESS_KEY=$(val e.writer.secretAccessKey)
export AWS_DEFAULT_REGION=$(val e.region) AWS_REQUEST_CHECKSUM_CALCULATION=when_required
export AWS_CONFIG_FILE="$work/aws.config" AWS_SHARED_CREDENTIALS_FILE=/dev/null
printf '[default]\ns3 =\n  multipart_chunksize = %dMB\n  max_concurrent_requests = %d\n' "$part" "$queue" > "$AWS_CONFIG_FILE"
export RCLONE_CONFIG=/dev/null RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Ceph
# rclone 1.60 HEADs a multipart upload's version when it completes (--s3-no-head
# or not), which the write-only subuser may not: it uploads as the bucket owner.
export RCLONE_CONFIG_BENCH_ENDPOINT=$(val e.endpoint) RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=$(val e.main.accessKeyId)
export RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=$(val e.main.secretAccessKey) RCLONE_CONFIG_BENCH_SSE_CUSTOMER_ALGORITHM=AES256
export RCLONE_CONFIG_BENCH_SSE_CUSTOMER_KEY_BASE64=$(base64 -w0 < "$work/ssec.key")
ca=$(val e.caFile) endpoint=$(val e.endpoint)
compressor() {
  case $1 in
  none) cat ;;
  gzip) gzip -6 ;;
  pigz) pigz -6 ;;
  zstd) zstd -q -3 -T0 ;;
  esac
}
upload() { # $1 peer, $2 key
  case $1 in
  aws) aws s3 cp - "s3://$bucket/$2" --only-show-errors --endpoint-url "$endpoint" --ca-bundle "$ca" \
    --sse-c AES256 --sse-c-key "fileb://$work/ssec.key" ;;
  # rclone's S3 client cannot load AWS_CA_BUNDLE into its own transport: --ca-cert instead;
  rclone) env -u AWS_CA_BUNDLE rclone rcat "bench:$bucket/$2" --ca-cert "$ca" --s3-no-check-bucket \
    --s3-chunk-size "${part}M" --s3-upload-concurrency "$queue" ;;
  esac
}
export -f compressor upload
export bucket endpoint ca work data part queue
# measure NAME CMD...: runs CMD under GNU time, appends "secs rss_kb" to $work/res/NAME.
mkdir -p "$work/res"
measure() {
  local name=$1
  shift
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  cat "$work/time" >> "$work/res/$name"
  read -r secs rss_kb < "$work/time"
  printf '   %-22s %6.2f s  %6.1f MB/s  peak RSS %4d MiB\n' "$name" "$secs" \
    "$(calc "$bytes / $secs / 1000000")" "$((rss_kb / 1024))"
}
peer_rows() { # the peer pipelines of one compression
  local c=$1 p
  for p in "${peers[@]}"; do
    case $c in
    gzip) echo "$p:gzip-6 $p:pigz-6" ;;
    *) echo "$p:$c" ;;
    esac
  done
}
for r in $(seq "$runs"); do
  echo "== run $r of $runs"
  for comp in $comps; do
    measure "immutd:$comp" node dist/src/cli.js --config "$work/$comp.yaml" --log-level warn backup
    for row in $(peer_rows "$comp"); do
      p=${row%%:*} c=${row#*:} c=${c%-6}
      measure "$row" bash -c "set -o pipefail; tar -cf - -C \"\$data\" . | compressor $c | upload $p peer/$row/run$r"
    done
  done
done

# median NAME: "secs rss_kb" of the median run by time; maxrss NAME: the largest peak.
median() { sort -n "$work/res/$1" | sed -n "$(( (runs + 1) / 2 ))p"; }
maxrss() { awk '{print $2}' "$work/res/$1" | sort -n | tail -1; }
fail=0
echo "== medians of $runs run(s); ratio = immutd wall / peer wall; RSS in MiB"
for comp in $comps; do
  read -r secs _ <<<"$(median "immutd:$comp")"
  mbps=$(calc "$bytes / $secs / 1000000")
  rss=$(($(maxrss "immutd:$comp") / 1024))
  printf '%-8s immutd %.2f s, %.1f MB/s; max peak RSS %d MiB (limit %d MiB)\n' "$comp" "$secs" "$mbps" "$rss" "$limit_mib"
  for row in $(peer_rows "$comp"); do
    read -r psecs _ <<<"$(median "$row")"
    printf '         vs %-16s %6.2f s  ratio %.2f  peer peak RSS %d MiB\n' "$row" "$psecs" \
      "$(calc "$secs / $psecs")" "$(($(maxrss "$row") / 1024))"
  done
  if [ "$rss" -gt "$limit_mib" ]; then echo "   FAIL: memory above limit"; fail=1; fi
  if [ "$comp" = none ] && [ "$(calc "($mbps < 100) ? 1 : 0")" = 1 ]; then echo "   FAIL: below 100 MB/s"; fail=1; fi
done
exit "$fail"
