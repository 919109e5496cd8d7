#!/usr/bin/env bash
# Benchmark: immutd against its peers in the same run, on a local Ceph RGW
# (bluestore, https, SSE-C), and a check of the targets (exit 1 if one is
# missed; 0 if all are met; targets that need aws-cli are reported as not
# checked when it is missing).
#
# Rows, interleaved (run 1 of every row, then run 2 of every row, ...), so
# that a noisy neighbour slows all of them alike; the summary takes each
# row's median wall time and its highest peak RSS (GNU time's %M: for a
# pipeline, its largest process, not their sum) and CPU (%U + %S, the whole
# pipeline's):
#   backup, big-file tree (80% random data in 1-8 MiB files, 20% 4 KiB text),
#     for each compression: `immutd backup` and `tar -cf - | [gzip -6 | pigz -6 |
#     zstd -3 -T0] | aws s3 cp -` (and `| rclone rcat` if installed);
#   restore of that backup: `immutd restore --to` and `aws s3 cp - - | [gzip -d
#     | zstd -d] | tar -x`;
#   backup of a tree of IMMUTD_BENCH_SMALL_FILES (default 100,000) files of
#     0.5-4 KiB, uncompressed: `immutd backup` and `tar | aws s3 cp -`.
#   an incremental chain of the big-file tree, once, after them (incremental_case).
# Targets (ratio = immutd / peer, from the medians):
#   backup none <= 0.85 x tar | aws; gzip <= 1.0 x pigz -6 | aws;
#   zstd <= 1.0 x zstd -3 -T0 | aws; small files: wall <= 1.0 x tar | aws
#   (files/s >= 1.0 x); restore wall <= 1.0 x and CPU <= 1.5 x aws | [decoder |] tar -x;
#   peak RSS of every immutd backup <= that of tar | aws s3 cp - (none), and
#   <= the formula RSS_FORMULA below.
# aws-cli runs with AWS_REQUEST_CHECKSUM_CALCULATION=when_required: its default
# checksum mode gets HTTP 411 on every part from Ceph RGW 16, and with it
# aws-cli sends no part checksum at all (AWS itself would refuse that on a
# lock bucket; immutd sends Content-MD5 on every part), so it does less work.
# Usage: bash scripts/bench.sh [SIZE_MB (default 500)] [RUNS (default 3)]
#   IMMUTD_BENCH_COMPRESSIONS="none" runs only those (default "none gzip zstd").
#   IMMUTD_BENCH_PEERS="" runs no peer (default: "aws rclone", those installed).
#   IMMUTD_BENCH_SMALL_FILES=0 skips the small-file tree.
#   IMMUTD_BENCH_AGE="zstd" (default) also backs up with `encryption: age`; target <= 1.10 x SSE-C.
#   IMMUTD_BENCH_INCREMENTAL=0 skips the incremental chain (see incremental_case).
#   IMMUTD_BENCH_PART_MIB / IMMUTD_BENCH_QUEUE set partSizeMiB / queueSize for
#   every row (default 8 and 4, immutd's defaults; the RSS formula follows).
#   IMMUTD_BENCH_OUT=DIR: restores write below DIR (default the work directory;
#   a tmpfs such as /dev/shm takes the disk's noise out of the restore ratios).
#   IMMUTD_BENCH_TIMEOUT=SECONDS: a run that takes longer fails the bench,
#   naming its row (default 600). A Ceph whose OSD is full blocks writes, and
#   aws-cli then waits without end (seen: over 10 minutes).
#   IMMUTD_BENCH_S3_ENV=FILE uses that running test server (an env.json as
#   scripts/s3-test-server.sh writes it) instead of starting a bluestore one
#   (in IMMUTD_BENCH_S3_DIR, default a temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${1:-500}
runs=${2:-3}
# immutd's defaults (partSizeMiB 8, queueSize 4); aws-cli and rclone get the same.
part=${IMMUTD_BENCH_PART_MIB:-8}
queue=${IMMUTD_BENCH_QUEUE:-4}
run_limit=${IMMUTD_BENCH_TIMEOUT:-600}

. scripts/node.sh
immutd_install_deps
npm run --silent build
immutd_use_supported_node
# immutd runs as the systemd units and the container image run it: through its
# executable, with their NODE_OPTIONS (V8's young generation capped). The peers
# are no Node.js programs, so the variable does not touch them.
chmod +x dist/src/cli.js
immutd=$PWD/dist/src/cli.js
export NODE_OPTIONS=--max-semi-space-size=8
work=$(mktemp -d /tmp/immutd-bench.XXXXXX)
s3dir=${IMMUTD_BENCH_S3_DIR:-$work/s3}
small=${IMMUTD_BENCH_SMALL_FILES:-100000}
# Where the restore rows write (emptied before every run). On a disk the
# kernel's share (allocation, and for ext4 mounted with discard, the TRIM of
# the last run's files) can dwarf both immutd's and tar's own work and vary
# run to run by seconds; a tmpfs (IMMUTD_BENCH_OUT=/dev/shm) leaves what the
# programs themselves cost. A new directory below it, removed at the end.
out=$(mktemp -d "${IMMUTD_BENCH_OUT:-$work}/immutd-bench-restore.XXXXXX")
export out
if [ -n "${IMMUTD_BENCH_S3_ENV:-}" ]; then
  cleanup() { rm -rf "$work" "$out"; }
  export IMMUTD_TEST_S3_ENV="$IMMUTD_BENCH_S3_ENV"
  bucket=immutd-bench-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
else
  cleanup() { bash scripts/s3-test-server.sh stop "$s3dir" >/dev/null 2>&1 || true; rm -rf "$work" "$out"; }
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
sdata="$work/small"
if [ "$small" -gt 0 ]; then
  echo "== generating $small files of 0.5..4 KiB (half text, half random)"
  node -e '
const fs=require("fs"),path=require("path"),crypto=require("crypto");
const [dir,n]=[process.argv[1],Number(process.argv[2])];
const line="small file line, somewhat repetitive 0123456789\n".repeat(90);
const made=new Set();
for(let i=0;i<n;i++){const d=path.join(dir,String(i%100),String((i>>7)%50));if(!made.has(d)){fs.mkdirSync(d,{recursive:true});made.add(d);}
 const size=512+((i*2654435761)>>>0)%3585;
 fs.writeFileSync(path.join(d,"s"+i),i%2?crypto.randomBytes(size):line.slice(0,size));}
' "$sdata" "$small"
  sbytes=$(du -sb "$sdata" | cut -f1)
  echo "   $small files, $sbytes bytes"
fi

node dist/src/cli.js key generate "$work/master.key" 2>/dev/null
val() { node -e "const e=require('$IMMUTD_TEST_S3_ENV'); console.log($1)"; }
node dist/test/support/make-bucket.js "$bucket" 1 >/dev/null
# One config per row, each with its own job (restore takes the job's latest backup).
write_config() { # $1 name, $2 compression, $3 path
  cat > "$work/$1.yaml" <<YAML
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
  - { name: bench-$1, target: local, schedule: "@daily", paths: [$3], compression: $2 }
YAML
}
for comp in none gzip zstd; do write_config "$comp" "$comp" "$data"; done
[ "$small" -gt 0 ] && write_config small none "$sdata"
# age vs SSE-C: the same backup as the row "immutd:COMP" with `encryption:
# scheme: age`, for each COMP in IMMUTD_BENCH_AGE (default "zstd"; "" skips;
# only those also in IMMUTD_BENCH_COMPRESSIONS). Target: wall <= 1.10 x the
# SSE-C row's, from the medians.
age_comps=""
for comp in ${IMMUTD_BENCH_AGE-zstd}; do
  case " ${IMMUTD_BENCH_COMPRESSIONS:-none gzip zstd} " in *" $comp "*) age_comps="$age_comps $comp" ;; esac
done
if [ -n "$age_comps" ]; then
  rcpt=$(node dist/src/cli.js key generate --age "$work/age.key" 2>/dev/null)
  for comp in $age_comps; do
    write_config "$comp-age" "$comp" "$data"
    sed -i "/^    retention:/a\\    encryption: { scheme: age, recipients: [$rcpt] }" "$work/$comp-age.yaml"
  done
fi

calc() { awk "BEGIN { print $1 }"; }
# Peak RSS of a backup at the default part size and queue, in MiB (README,
# "Where the time and memory go"): base 250, the process after loading (about
# 95: Node.js, the SDK, the modules) with its hashing worker and the walk's
# worker (about 25: its V8 heap), V8's young
# generation (capped by NODE_OPTIONS) and the file and TLS buffers that wait
# for V8's next collection (most with 100,000 small files: 244-255 measured
# with 8 MiB parts); the part buffers (queueSize + 1, reused); per
# compressing thread its worker with the codec's state and two blocks in
# flight, held as input and output: 20 for gzip (1 MiB blocks), 45 for zstd
# (4 MiB blocks, level 3). Independent of the data size (the file index is
# spooled to disk, not held).
threads=$(nproc)
base_mib=250
rss_formula() { # $1 compression
  local per_thread=0
  case $1 in gzip) per_thread=20 ;; zstd) per_thread=45 ;; esac
  echo $((base_mib + part * (queue + 1) + threads * per_thread))
}
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
have_aws=0
for p in "${peers[@]}"; do [ "$p" = aws ] && have_aws=1; done
head -c 32 /dev/urandom > "$work/ssec.key"
export AWS_ACCESS_KEY_ID=$(val e.writer.accessKeyId) AWS_SECRET_ACCESS_KEY=$(val e.writer.secretAccessKey)
export AWS_DEFAULT_REGION=$(val e.region) AWS_REQUEST_CHECKSUM_CALCULATION=when_required
export AWS_CONFIG_FILE="$work/aws.config" AWS_SHARED_CREDENTIALS_FILE=/dev/null
export READER_ID=$(val e.reader.accessKeyId) READER_SECRET=$(val e.reader.secretAccessKey)
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
decompressor() {
  case $1 in
  none) cat ;;
  gzip) gzip -d ;;
  zstd) zstd -q -d ;;
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
download() { # $1 key: with the reader's credential, as immutd restores
  AWS_ACCESS_KEY_ID=$READER_ID AWS_SECRET_ACCESS_KEY=$READER_SECRET aws s3 cp "s3://$bucket/$1" - \
    --only-show-errors --endpoint-url "$endpoint" --ca-bundle "$ca" --sse-c AES256 --sse-c-key "fileb://$work/ssec.key"
}
export -f compressor decompressor upload download
export bucket endpoint ca work data sdata part queue
# The S3 server's CPU time so far, in seconds (user + system of its Ceph
# processes: monitor, manager, OSD, RGW, found by their config file). The
# server runs on the same cores as the programs measured, so what it spends
# during a run is CPU time the client could not have: the bench prints it for
# every run and uses it for the budget lines of the summary.
# Not measured (and no budget printed) for a server whose processes are not
# on this machine: an IMMUTD_BENCH_S3_ENV without cephConf, or another host's.
ceph_conf=$(val "e.cephConf ?? ''")
if [ -n "$ceph_conf" ] && ! pgrep -f -- "-c $ceph_conf" >/dev/null; then
  echo "== no process of the S3 server ($ceph_conf) on this machine: its CPU is not measured"
  ceph_conf=""
fi
clk_tck=$(getconf CLK_TCK)
server_cpu() {
  local pid ticks=0 stat
  [ -n "$ceph_conf" ] || { echo 0; return; }
  for pid in $(pgrep -f -- "-c $ceph_conf" || true); do
    # Fields after the command name, which is in parentheses: utime is the 12th, stime the 13th.
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    set -- ${stat##*) }
    ticks=$((ticks + ${12} + ${13}))
  done
  calc "$ticks / $clk_tck"
}
# measure NAME CMD...: runs CMD under GNU time, appends "secs rss_kb cpu_secs
# server_cpu_secs" to $work/res/NAME.
mkdir -p "$work/res"
measure() {
  local name=$1 n=$bytes s0 s1 cpu srv
  shift
  case $name in *small*) n=${sbytes:-1} ;; esac
  s0=$(server_cpu)
  # timeout signals the run's whole process group (a pipeline's every process);
  # GNU time then reports a status of 124 (or 137 after the KILL).
  /usr/bin/time -f "%e %M %U %S" -o "$work/time" timeout -k 10 "$run_limit" "$@" >/dev/null 2>"$work/err" || {
    local rc=$?
    cat "$work/err" >&2
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
      echo "bench: $name did not finish in ${run_limit} s (IMMUTD_BENCH_TIMEOUT): is the S3 server still accepting writes? (a full OSD blocks them; \`ceph -c CONF health detail\` says)" >&2
    fi
    exit 1
  }
  s1=$(server_cpu)
  read -r secs rss_kb usr sys < "$work/time"
  cpu=$(calc "$usr + $sys") srv=$(calc "$s1 - $s0")
  echo "$secs $rss_kb $cpu $srv" >> "$work/res/$name"
  printf '   %-22s %6.2f s  %6.1f MB/s  CPU %6.2f s  peak RSS %4d MiB' "$name" "$secs" \
    "$(calc "$n / $secs / 1000000")" "$cpu" "$((rss_kb / 1024))"
  if [ -n "$ceph_conf" ]; then printf '  server CPU %5.2f s\n' "$srv"; else echo; fi
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
fresh() { rm -rf "$1" && mkdir -p "$1"; }
decoder_label() { case $1 in none) echo "tar -x" ;; gzip) echo "gzip -d" ;; zstd) echo "zstd -d" ;; esac; }
# The hashing floor: CPU seconds per GB (10^9 bytes) that MD5 (each part's
# Content-MD5) and SHA-256 (the archive's, for the catalog) take together in
# one thread of the Node.js that runs immutd, and SHA-256 alone (a restore's
# check). Every byte an immutd backup uploads passes through both, on top of
# whatever else it does; the peers hash nothing.
read -r hash_both hash_sha <<<"$(node -e '
const crypto = require("crypto");
const buf = crypto.randomBytes(1 << 20), mib = 512;
const cpu = (f) => { const t = process.cpuUsage(); f(); const d = process.cpuUsage(t); return (d.user + d.system) / 1e6; };
const md5 = cpu(() => { const h = crypto.createHash("md5"); for (let i = 0; i < mib; i++) h.update(buf); h.digest(); });
const sha = cpu(() => { const h = crypto.createHash("sha256"); for (let i = 0; i < mib; i++) h.update(buf); h.digest(); });
const gb = (mib * 1048576) / 1e9;
console.log(((md5 + sha) / gb).toFixed(3), (sha / gb).toFixed(3));')"
# Start-up: the CPU time of `immutd --version` (Node.js and the modules every
# command loads), which every row pays before its first byte.
/usr/bin/time -f "%U %S" -o "$work/time" "$immutd" --version >/dev/null
read -r usr sys < "$work/time"
startup=$(calc "$usr + $sys")
echo "== hashing, CPU s per GB on one core: MD5 + SHA-256 $hash_both, SHA-256 $hash_sha; start-up CPU $startup s"
cores=$(nproc)
for r in $(seq "$runs"); do
  echo "== run $r of $runs"
  for comp in $comps; do
    measure "immutd:$comp" "$immutd" --config "$work/$comp.yaml" --log-level warn backup
    case " $age_comps " in *" $comp "*)
      measure "immutd:$comp-age" "$immutd" --config "$work/$comp-age.yaml" --log-level warn backup ;;
    esac
    for row in $(peer_rows "$comp"); do
      p=${row%%:*} c=${row#*:} c=${c%-6}
      measure "$row" bash -c "set -o pipefail; tar -cf - -C \"\$data\" . | compressor $c | upload $p peer/$row/run$r"
    done
  done
  for comp in $comps; do
    fresh "$out"
    measure "immutd:restore-$comp" "$immutd" --config "$work/$comp.yaml" --log-level warn \
      restore "bench-$comp" --to "$out"
    if [ "$have_aws" = 1 ]; then
      obj=aws:$comp
      [ "$comp" = gzip ] && obj=aws:gzip-6
      fresh "$out"
      measure "aws:restore-$comp" bash -c "set -o pipefail; download peer/$obj/run$r | decompressor $comp | tar -xf - -C \"\$out\""
    fi
  done
  rm -rf "$out"
  if [ "$small" -gt 0 ]; then
    measure "immutd:small" "$immutd" --config "$work/small.yaml" --log-level warn backup
    if [ "$have_aws" = 1 ]; then
      measure "aws:small" bash -c "set -o pipefail; tar -cf - -C \"\$sdata\" . | upload aws peer/small/run$r"
    fi
  fi
done

# Incremental backups (README "Incremental backups"), one chain per bench run,
# after the rows above: a copy of the big-file tree backed up with
# `incremental: { fullEvery: 10 }`, zstd: the full; the tree unchanged; five
# runs each after 1% of the files were rewritten (a chain of 7 members); then
# a restore of the newest point (all 7 members) and one of the full alone,
# twice each, alternating. Ratios against the chain's own full, in this run.
# Uploaded bytes are the archive's (the log's "bytes"), manifests aside.
#   IMMUTD_BENCH_INCREMENTAL=0 skips it.
incremental_case() {
  [ "${IMMUTD_BENCH_INCREMENTAL:-1}" = 0 ] && return 0
  local dir="$work/incr" cfg="$work/incr.yaml" i full_id
  echo "== incremental chain (zstd, fullEvery 10): full, unchanged, 5 x 1% changed; restores"
  rm -rf "$dir" && cp -a "$data" "$dir"
  write_config incr zstd "$dir"
  sed -i 's/compression: zstd }$/compression: zstd, incremental: { fullEvery: 10 } }/' "$cfg"
  : > "$work/res/incr-runs"
  incr_backup() { # $1 label: measures one run, appends "secs bytes kind" to res/incr-runs
    measure "immutd:incr-$1" "$immutd" --config "$cfg" backup bench-incr
    tail -1 "$work/res/immutd:incr-$1" | cut -d' ' -f1 | tr '\n' ' ' >> "$work/res/incr-runs"
    node -e 'const s=require("fs").readFileSync(process.argv[1],"utf8");
for(const l of s.split("\n")){try{const j=JSON.parse(l);if(j.msg==="backup succeeded"){console.log(j.bytes+" "+j.kind);process.exit(0)}}catch{}}
console.error(s);process.exit(1)' "$work/err" >> "$work/res/incr-runs"
  }
  # Rewrites 1% of the files (every 100th from offset $1) with new content of the same kind.
  incr_change() {
    node -e 'const fs=require("fs"),path=require("path"),crypto=require("crypto");
const [dir,off]=[process.argv[1],Number(process.argv[2])];
const all=[];const walk=(d)=>{for(const e of fs.readdirSync(d,{withFileTypes:true})){const p=path.join(d,e.name);e.isDirectory()?walk(p):all.push(p);}};walk(dir);all.sort();
for(let i=off;i<all.length;i+=100){const p=all[i];const s=fs.statSync(p).size;
 fs.writeFileSync(p,p.endsWith(".txt")?Buffer.from(crypto.randomBytes(s/2).toString("hex")):crypto.randomBytes(s));}' "$dir" "$1"
  }
  incr_backup full
  sleep 1.1 # mtimes in whole seconds must differ from the archived ones
  incr_backup unchanged
  for i in 1 2 3 4 5; do
    sleep 1.1
    incr_change $((i * 7))
    incr_backup "changed$i"
  done
  if [ "$(cut -d' ' -f3 "$work/res/incr-runs" | tr '\n' ' ')" != "full incremental incremental incremental incremental incremental incremental " ]; then
    echo "incremental case: the runs were not one full and six incrementals:" >&2
    cat "$work/res/incr-runs" >&2
    exit 1
  fi
  full_id=$(node dist/src/cli.js --config "$cfg" list --job bench-incr --json 2>/dev/null |
    node -e 'let s="";process.stdin.on("data",c=>s+=c).on("end",()=>{const j=JSON.parse(s);const r=Array.isArray(j)?j:j.backups;console.log(r.map(b=>b.id).sort((a,b)=>a-b)[0])})')
  for i in 1 2; do
    fresh "$out"
    measure "immutd:incr-restore-full" "$immutd" --config "$cfg" --log-level warn \
      restore bench-incr --id "$full_id" --to "$out"
    fresh "$out"
    measure "immutd:incr-restore-chain" "$immutd" --config "$cfg" --log-level warn \
      restore bench-incr --to "$out"
  done
  rm -rf "$out" "$dir"
}
# The case's figures, printed with the other ratios.
incremental_summary() {
  [ "${IMMUTD_BENCH_INCREMENTAL:-1}" = 0 ] && return 0
  local fs fb us ub cs cb _k rf rc
  { read -r fs fb _k; read -r us ub _k; read -r cs cb _k; } < "$work/res/incr-runs"
  rf=$(awk '{s+=$1} END {print s}' "$work/res/immutd:incr-restore-full")
  rc=$(awk '{s+=$1} END {print s}' "$work/res/immutd:incr-restore-chain")
  printf 'incr     full backup %.2f s, %d bytes uploaded\n' "$fs" "$fb"
  printf '         unchanged run: uploaded %.3g%% of the full, wall ratio %.2f vs the full\n' \
    "$(calc "$ub / $fb * 100")" "$(calc "$us / $fs")"
  printf '         1%% changed run: uploaded %.3g%% of the full, wall ratio %.2f vs the full\n' \
    "$(calc "$cb / $fb * 100")" "$(calc "$cs / $fs")"
  printf '         restore of the newest of 7 members: %.2f s vs the full alone %.2f s (2 each): ratio %.2f\n' \
    "$rc" "$rf" "$(calc "$rc / $rf")"
}
incremental_case

# median NAME: "secs rss_kb cpu" of the median run by time; maxrss NAME: the largest peak; median_cpu NAME.
median() { sort -n "$work/res/$1" | sed -n "$(( (runs + 1) / 2 ))p"; }
maxrss() { awk '{print $2}' "$work/res/$1" | sort -n | tail -1; }
median_cpu() { awk '{print $3}' "$work/res/$1" | sort -n | sed -n "$(( (runs + 1) / 2 ))p"; }
fail=0
# target NAME RATIO LIMIT: prints the verdict, records a miss.
target() {
  if [ "$(calc "($2 <= $3) ? 1 : 0")" = 1 ]; then
    printf '   target %-40s %.3g <= %.3g  met\n' "$1" "$2" "$3"
  else
    printf '   target %-40s %.3g >  %.3g  MISSED\n' "$1" "$2" "$3"
    fail=1
  fi
}
nocheck() { printf '   target %-40s not checked (no aws-cli peer)\n' "$1"; }
# budget ROW PEER LIMIT HASHED_BYTES PER_GB: what the target leaves immutd of
# this machine. At the target's wall time (LIMIT x the median of PEER's) the
# cores give cores x that many CPU seconds, and the S3 server, on the same
# cores, takes what it took in ROW's median run: the rest is the most CPU
# immutd could use and still meet the target. No run here keeps both cores
# busy all the time (the server also waits for its disk), so the budget is
# also given at the share of the cores that the peer's own run kept busy
# ((its CPU + the server's) / its wall). Printed beside what immutd used, its
# start-up, and what hashing HASHED_BYTES alone costs (PER_GB s/GB): where
# the budget is below what immutd cannot do without, the target is out of
# reach on this machine.
budget() {
  local row=$1 peer=$2 limit=$3 hashed=$4 per_gb=$5 _s _r rcpu rserver psecs pcpu pserver at busy
  [ -n "$ceph_conf" ] || return 0
  read -r _s _r rcpu rserver <<<"$(median "$row")"
  read -r psecs _r pcpu pserver <<<"$(median "$peer")"
  at=$(calc "$limit * $psecs")
  busy=$(calc "($pcpu + $pserver) / $psecs")
  printf '         budget at the target (%.2f s): %d cores: %.2f s of CPU; %.2f cores busy as in the peer'"'"'s run: %.2f s\n' \
    "$at" "$cores" "$(calc "$cores * $at - $rserver")" "$busy" "$(calc "$busy * $at - $rserver")"
  printf '           (server CPU %.2f s taken off); immutd used %.2f s: start-up %.2f s, hashing alone %.2f s\n' \
    "$rserver" "$rcpu" "$startup" "$(calc "$hashed / 1e9 * $per_gb")"
}
# server NAME: the S3 server's CPU in the median run of NAME.
server() { median "$1" | awk '{print $4}'; }
aws_rss=0
[ "$have_aws" = 1 ] && [ -f "$work/res/aws:none" ] && aws_rss=$(($(maxrss aws:none) / 1024))
echo "== medians of $runs run(s), interleaved on a shared machine; ratio = immutd / peer; RSS in MiB"
for comp in $comps; do
  read -r secs _ <<<"$(median "immutd:$comp")"
  rss=$(($(maxrss "immutd:$comp") / 1024))
  limit=$(rss_formula "$comp")
  printf '%-8s backup: immutd %.2f s, %.1f MB/s, CPU %.2f s, peak RSS %d MiB (formula %d MiB)\n' "$comp" "$secs" \
    "$(calc "$bytes / $secs / 1000000")" "$(median_cpu "immutd:$comp")" "$rss" "$limit"
  [ -n "$ceph_conf" ] && printf '         server CPU in that run %.2f s\n' "$(server "immutd:$comp")"
  for row in $(peer_rows "$comp"); do
    read -r psecs _ <<<"$(median "$row")"
    printf '         vs %-16s %6.2f s  ratio %.2f  CPU %.2f s  peer peak RSS %d MiB' "$row" "$psecs" \
      "$(calc "$secs / $psecs")" "$(median_cpu "$row")" "$(($(maxrss "$row") / 1024))"
    if [ -n "$ceph_conf" ]; then printf '  server CPU %.2f s\n' "$(server "$row")"; else echo; fi
  done
  target "$comp: peak RSS <= formula" "$rss" "$limit"
  peer=aws:$comp limit_ratio=1.0
  case $comp in none) limit_ratio=0.85 ;; gzip) peer=aws:pigz-6 ;; esac
  if [ "$have_aws" = 1 ]; then
    read -r psecs _ <<<"$(median "$peer")"
    # Hashed: the archive as uploaded; for none the tree's bytes (a little under
    # the tar's), compressed rows are not given a floor (their size varies).
    [ "$comp" = none ] && budget "immutd:$comp" "$peer" "$limit_ratio" "$bytes" "$hash_both"
    target "$comp: wall vs $peer" "$(calc "$secs / $psecs")" "$limit_ratio"
    target "$comp: peak RSS vs aws:none ($aws_rss MiB)" "$rss" "$aws_rss"
  else
    nocheck "$comp: wall vs $peer"
  fi
  read -r rsecs _ <<<"$(median "immutd:restore-$comp")"
  rcpu=$(median_cpu "immutd:restore-$comp")
  printf '%-8s restore: immutd %.2f s, CPU %.2f s, peak RSS %d MiB\n' "$comp" "$rsecs" "$rcpu" \
    "$(($(maxrss "immutd:restore-$comp") / 1024))"
  if [ "$have_aws" = 1 ]; then
    read -r asecs _ <<<"$(median "aws:restore-$comp")"
    acpu=$(median_cpu "aws:restore-$comp")
    printf '         vs aws s3 cp | %-8s %6.2f s  ratio %.2f  CPU %.2f s (ratio %.2f)  peer peak RSS %d MiB\n' \
      "$(decoder_label "$comp")" \
      "$asecs" "$(calc "$rsecs / $asecs")" "$acpu" "$(calc "$rcpu / $acpu")" "$(($(maxrss "aws:restore-$comp") / 1024))"
    [ "$comp" = none ] && budget "immutd:restore-$comp" "aws:restore-$comp" 1.0 "$bytes" "$hash_sha"
    target "$comp restore: wall vs aws s3 cp | tar -x" "$(calc "$rsecs / $asecs")" 1.0
    target "$comp restore: CPU vs aws s3 cp | tar -x" "$(calc "$rcpu / $acpu")" 1.5
  else
    nocheck "$comp restore"
  fi
done
for comp in $age_comps; do
  read -r secs _ <<<"$(median "immutd:$comp")"
  read -r asecs _ <<<"$(median "immutd:$comp-age")"
  printf '%-8s backup with age: immutd %.2f s, CPU %.2f s, peak RSS %d MiB; with SSE-C %.2f s, CPU %.2f s; ratio %.3f\n' \
    "$comp" "$asecs" "$(median_cpu "immutd:$comp-age")" "$(($(maxrss "immutd:$comp-age") / 1024))" "$secs" \
    "$(median_cpu "immutd:$comp")" "$(calc "$asecs / $secs")"
  target "$comp: wall with age vs with SSE-C" "$(calc "$asecs / $secs")" 1.10
done
if [ "$small" -gt 0 ]; then
  read -r secs _ <<<"$(median immutd:small)"
  rss=$(($(maxrss immutd:small) / 1024))
  printf 'small    backup of %d files: immutd %.2f s, %.0f files/s, CPU %.2f s, peak RSS %d MiB (formula %d MiB)\n' "$small" "$secs" \
    "$(calc "$small / $secs")" "$(median_cpu immutd:small)" "$rss" "$(rss_formula none)"
  target "small files: peak RSS <= formula" "$rss" "$(rss_formula none)"
  if [ "$have_aws" = 1 ]; then
    read -r psecs _ <<<"$(median aws:small)"
    printf '         vs tar | aws s3 cp -  %6.2f s  %.0f files/s  ratio (files/s) %.2f  peer peak RSS %d MiB\n' "$psecs" \
      "$(calc "$small / $psecs")" "$(calc "$psecs / $secs")" "$(($(maxrss aws:small) / 1024))"
    budget immutd:small aws:small 1.0 "$sbytes" "$hash_both"
    target "small files: wall vs tar | aws" "$(calc "$secs / $psecs")" 1.0
    target "small files: peak RSS vs aws:small ($(($(maxrss aws:small) / 1024)) MiB)" "$rss" "$(($(maxrss aws:small) / 1024))"
  else
    nocheck "small files"
  fi
fi
# Side by side: the peak RSS of each backup row, the same case's tar | aws s3 cp -
# (the uncompressed one for the compressed rows, as the target reads) and the formula.
if [ "$have_aws" = 1 ]; then
  echo "== peak RSS (MiB): immutd / tar | aws s3 cp - / formula"
  for comp in $comps; do
    printf '   %-8s %5d %5d %5d\n' "$comp" "$(($(maxrss "immutd:$comp") / 1024))" "$aws_rss" "$(rss_formula "$comp")"
  done
  [ "$small" -gt 0 ] && printf '   %-8s %5d %5d %5d\n' small "$(($(maxrss immutd:small) / 1024))" \
    "$(($(maxrss aws:small) / 1024))" "$(rss_formula none)"
fi
incremental_summary
exit "$fail"
