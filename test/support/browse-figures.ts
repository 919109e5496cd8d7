/**
 * Figures for ls and the ranged restore, measured once on the test RGW (not a
 * test: timings on shared CPUs vary). One uncompressed backup of 25,000 small
 * files plus 500 MB of large ones, then:
 *   - `immutd ls` (cold, then from the manifest cache): wall time and the GETs
 *     of the archive (must be 0);
 *   - `restore --include` of one small file: archive bytes requested.
 * Run: npm run build && IMMUTD_TEST_S3_ENV=/path/to/env.json node dist/test/support/browse-figures.js
 * The CLI's wall time includes starting Node and loading the SDK (`immutd
 * list` alone takes as long on a loaded machine); time lsCommand in-process
 * to see the ls work itself.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { listBackups, writeConfig } from "./assurance.js";
import { runCli } from "./cli.js";
import { FaultProxy, isGetObject } from "./fault-proxy.js";
import { createLockedBucket, s3env, uniqueBucket } from "./s3env.js";

const FILES = 25_000;
const BIG_MB = 500;

const env = s3env();
const proxy = await FaultProxy.start(env.endpoint, {
  caFile: env.caFile,
  certFile: join(env.caFile, "..", "cert.pem"),
  keyFile: join(env.caFile, "..", "key.pem"),
});
try {
  const bucket = uniqueBucket("figures");
  await createLockedBucket(env, bucket, 1);
  const cfg = writeConfig(
    { ...env, endpoint: proxy.endpoint },
    { bucket, job: ["compression: none"] },
  );
  for (let i = 0; i < FILES; i++) {
    const d = join(cfg.data, "small", String(i % 250));
    if (i < 250) mkdirSync(d, { recursive: true });
    writeFileSync(join(d, `f${i}.txt`), `file ${i}\n`);
  }
  mkdirSync(join(cfg.data, "big"));
  for (let i = 0; i < BIG_MB / 10; i++)
    writeFileSync(join(cfg.data, "big", `b${i}`), randomBytes(10 * 1024 * 1024));
  let t = Date.now();
  const b = await runCli(["--config", cfg.file, "backup"], { timeoutMs: 1_800_000 });
  assert.equal(b.code, 0, b.stderr);
  console.log(`backup: ${Date.now() - t} ms`);
  const [row] = await listBackups<{ key: string; size: number; files: number }>(cfg);
  assert.ok(row);
  console.log(`archive ${row.key}: ${row.size} bytes, ${row.files} files`);

  for (const label of ["ls (cold: manifest downloaded)", "ls (manifest cached)"]) {
    const from = proxy.log.length;
    t = Date.now();
    const r = await runCli(["--config", cfg.file, "ls", "files"]);
    const ms = Date.now() - t;
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split("\n").length;
    const archiveGets = proxy.log.slice(from).filter((q) => isGetObject(row.key)(q)).length;
    const allGets = proxy.log.slice(from).filter((q) => q.method === "GET").length;
    console.log(
      `${label}: ${ms} ms wall (process start included), ${lines} lines, ${archiveGets} archive GETs, ${allGets} GETs in all`,
    );
  }

  const dest = mkdtempSync(join(tmpdir(), "immutd-figures-"));
  const rel = `${cfg.data.slice(1)}/small/17/f17.txt`;
  const from = proxy.log.length;
  t = Date.now();
  const r = await runCli([
    "--config",
    cfg.file,
    "restore",
    "files",
    "--include",
    rel,
    "--to",
    dest,
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(readFileSync(join(dest, rel), "utf8"), "file 17\n");
  let bytes = 0;
  const gets = proxy.log.slice(from).filter((q) => isGetObject(row.key)(q));
  for (const g of gets) {
    const m = /^bytes=(\d+)-(\d+)$/.exec(g.range ?? "");
    assert.ok(m, `unranged archive GET: ${g.range}`);
    bytes += Number(m[2]) - Number(m[1]) + 1;
  }
  console.log(
    `restore --include of one file: ${Date.now() - t} ms, ${gets.length} archive GETs, ${bytes} archive bytes requested of ${row.size}`,
  );
} finally {
  await proxy.close();
}
