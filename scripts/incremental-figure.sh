#!/usr/bin/env bash
# One-off figures for incremental backups (README "Incremental backups"), not a
# test: a generated tree (bench.sh's mix: 80% random in 1..8 MiB files, 20%
# text in 4 KiB files) backed up with `incremental: { fullEvery: 10 }`, zstd:
#   1. the full backup;
#   2. the same tree unchanged: bytes uploaded and wall time against the full's;
#   3. after 1% of the files changed (rewritten with new content);
#   4..7. four more runs with 1% changed each: a chain of 7 members;
# then a restore of the newest point (7 members streamed) against a restore
# of the full alone. Every backup and restore is the CLI, timed from outside.
# Usage: IMMUTD_BENCH_S3_ENV=/work/s3/env.json bash scripts/incremental-figure.sh [SIZE_MB (500)]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${1:-500}
: "${IMMUTD_BENCH_S3_ENV:?set IMMUTD_BENCH_S3_ENV to the env.json of a running test server}"
export IMMUTD_TEST_S3_ENV="$IMMUTD_BENCH_S3_ENV"
. scripts/node.sh
immutd_use_supported_node
work=$(mktemp -d /tmp/immutd-incr-figure.XXXXXX)
trap 'rm -rf "$work"' EXIT
bucket=immutd-incr-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
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
echo "tree: $(find "$data" -type f | wc -l) files, $(du -sb "$data" | cut -f1) bytes"
node dist/src/cli.js key generate "$work/master.key" 2>/dev/null
node dist/test/support/make-bucket.js "$bucket" 1 >/dev/null
val() { node -e "const e=require('$IMMUTD_TEST_S3_ENV'); console.log($1)"; }
cat > "$work/config.yaml" <<YAML
catalog: $work/catalog.db
masterKeyFile: $work/master.key
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
jobs:
  - { name: d, target: local, paths: [$data], compression: zstd, incremental: { fullEvery: 10 } }
YAML
now() { date +%s.%N; }
calc() { awk "BEGIN { print $1 }"; }
# Rewrites 1% of the files (every 100th, by a rotating offset) with new content of the same kind.
change() {
  node -e '
const fs=require("fs"),path=require("path"),crypto=require("crypto");
const [dir,off]=[process.argv[1],Number(process.argv[2])];
const all=[];const walk=(d)=>{for(const e of fs.readdirSync(d,{withFileTypes:true})){const p=path.join(d,e.name);e.isDirectory()?walk(p):all.push(p);}};walk(dir);all.sort();
let bytes=0,n=0;for(let i=off;i<all.length;i+=100){const p=all[i];const s=fs.statSync(p).size;
 fs.writeFileSync(p,p.endsWith(".txt")?Buffer.from(crypto.randomBytes(s/2).toString("hex")):crypto.randomBytes(s));bytes+=s;n++;}
console.log(`changed ${n} of ${all.length} files, ${bytes} bytes`);' "$data" "$1"
}
declare -a secs bytes
run() {
  local t0 t1 out
  t0=$(now)
  out=$(node dist/src/cli.js --config "$work/config.yaml" backup d 2>&1)
  t1=$(now)
  local b
  b=$(echo "$out" | node -e 'let s="";process.stdin.on("data",c=>s+=c).on("end",()=>{for(const l of s.split("\n")){try{const j=JSON.parse(l);if(j.msg==="backup succeeded"){console.log(j.bytes+" "+j.kind+" "+(j.changed??"-"));return}}catch{}}console.log("FAILED");console.error(s)})')
  secs+=("$(calc "$t1 - $t0")")
  bytes+=("${b%% *}")
  echo "run $1: $(calc "$t1 - $t0") s, uploaded ${b} (bytes kind changed)"
}
run 1
sleep 1.1
run 2
for i in 3 4 5 6 7; do
  sleep 1.1
  change $((i * 7))
  run "$i"
done
restore() {
  local dest="$work/r-$1" t0 t1
  t0=$(now)
  node dist/src/cli.js --config "$work/config.yaml" restore d "${@:2}" --to "$dest" 2>/dev/null
  t1=$(now)
  calc "$t1 - $t0"
  rm -rf "$dest"
}
full_restore=$(restore full --id 1)
chain_restore=$(restore chain)
full_restore2=$(restore full2 --id 1)
chain_restore2=$(restore chain2)
echo "unchanged run: $(calc "${bytes[1]} / ${bytes[0]} * 100")% of the full's bytes, $(calc "${secs[1]} / ${secs[0]}") of its wall time"
echo "1% changed run: $(calc "${bytes[2]} / ${bytes[0]} * 100")% of the full's bytes, $(calc "${secs[2]} / ${secs[0]}") of its wall time"
echo "restore: full ${full_restore}s / ${full_restore2}s, newest of 7 members ${chain_restore}s / ${chain_restore2}s: ratio $(calc "($chain_restore + $chain_restore2) / ($full_restore + $full_restore2)")"
