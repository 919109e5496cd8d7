/**
 * The daemon in-process on the in-memory store: what it keeps per run and per
 * reload must not grow with the number of runs (a daemon runs for months).
 * Counts, not RSS: scripts/soak.sh measures memory against the real RGW.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable, Writable } from "node:stream";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import { runsInProgressHere } from "../src/catalog/catalog.js";
import { loadConfig } from "../src/config/config.js";
import { Daemon } from "../src/daemon/daemon.js";
import { createLogger } from "../src/log.js";
import { deriveSseKey } from "../src/repo/keys.js";
import { MemoryBucket } from "../src/store/memory.js";
import type { Target } from "../src/store/store.js";

/** A config file with one job over a small tree, never due by itself (tests trigger it). */
function setup() {
  const dir = mkdtempSync(join(tmpdir(), "immutd-daemon-unit-"));
  mkdirSync(join(dir, "tree"));
  writeFileSync(join(dir, "tree", "a.txt"), "alpha\n");
  writeFileSync(join(dir, "master.key"), `${randomBytes(32).toString("hex")}\n`, { mode: 0o600 });
  const file = join(dir, "config.yaml");
  writeFileSync(
    file,
    `catalog: ${dir}/catalog.db
masterKeyFile: ${dir}/master.key
host: unit
targets:
  mem:
    endpoint: https://s3.test.invalid
    bucket: mem
    retention: { mode: COMPLIANCE, days: 1 }
    credentials:
      writer: { accessKeyId: W, secretAccessKey: w-secret }
      reader: { accessKeyId: R, secretAccessKey: r-secret }
jobs:
  - { name: j, target: mem, schedule: "0 0 1 1 *", catchUp: false, paths: [${dir}/tree] }
`,
  );
  return { dir, file };
}

/** Log records the daemon wrote, and a way to wait for the nth of a kind. */
function recorder() {
  const records: Record<string, unknown>[] = [];
  const waiters: (() => void)[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split("\n").filter(Boolean)) {
        records.push(JSON.parse(line) as Record<string, unknown>);
      }
      for (const w of waiters.splice(0)) w();
      cb();
    },
  });
  const count = (msg: string) => records.filter((r) => r.msg === msg).length;
  const until = async (msg: string, n: number) => {
    while (count(msg) < n) {
      // a warning or error (a skipped or failed run) fails the test instead of hanging it
      const bad = records.find((r) => r.level === "error" || r.level === "warn");
      if (bad) throw new Error(`the daemon logged: ${JSON.stringify(bad)}`);
      await new Promise<void>((r) => waiters.push(r));
    }
  };
  return { log: createLogger({ level: "info", destination }), records, count, until };
}

const settled = () => new Promise((r) => setImmediate(r));

describe("daemon (memory store): nothing grows per run", () => {
  it("after 200 runs the catalog holds no per-run entry and one S3 client set serves them all; a reload retires the old clients", async () => {
    const { file } = setup();
    const bucket = new MemoryBucket("mem");
    let opened = 0;
    let destroyed = 0;
    const openTarget = (): Target => {
      opened++;
      const t = bucket.target("mem");
      for (const s of [t.writer, t.reader, t.admin]) {
        Object.assign(s as object, { client: { destroy: () => destroyed++ } });
      }
      return t;
    };
    const rec = recorder();
    const daemon = new Daemon({
      configFile: file,
      config: loadConfig(file).config,
      log: rec.log,
      openTarget,
    });
    const before = runsInProgressHere();
    await daemon.start();
    try {
      for (let n = 1; n <= 200; n++) {
        daemon.trigger("j", "test");
        await rec.until("backup succeeded", n);
        await settled(); // the run's end in the daemon (it is no longer "running")
      }
      assert.equal(bucket.versions.length, 400, "200 archives and their manifests");
      assert.equal(runsInProgressHere(), before, "the catalog keeps an entry per finished run");
      assert.equal(opened, 1, "a target (S3 clients, sockets) was opened per run");

      // each reload opens the target again for the next runs and destroys the old clients
      for (let i = 0; i < 3; i++) {
        writeFileSync(file, readFileSync(file, "utf8"));
        assert.equal(await daemon.reload(), true);
        daemon.trigger("j", "after reload");
        await rec.until("backup succeeded", 201 + i);
        await settled();
      }
      assert.equal(opened, 4);
      assert.equal(destroyed, 3 * 3, "the clients of replaced targets were left open");
    } finally {
      await daemon.stop("test over");
    }
    assert.equal(destroyed, 4 * 3);
  });
});

describe("daemon (memory store): crash recovery between starts", () => {
  it("a scheduled verify reconciles a manual backup that was killed while the daemon kept running", async () => {
    const { dir, file } = setup();
    const bucket = new MemoryBucket("mem");
    const target = bucket.target("mem");
    const rec = recorder();
    const config = loadConfig(file).config;
    const daemon = new Daemon({ configFile: file, config, log: rec.log, openTarget: () => target });
    await daemon.start();
    try {
      // What `immutd backup` killed by -9 leaves once the daemon is up: a run row
      // "running" under a pid that is gone, and a completed version at its key.
      const key = "unit/j/2026-12-01T000000Z-deadbeef.tar";
      const other = new Database(join(dir, "catalog.db"));
      other
        .prepare(
          `INSERT INTO runs (job, target, object_key, started_at, status, pid) VALUES ('j', 'mem', ?, ?, 'running', ?)`,
        )
        .run(key, new Date().toISOString(), 2 ** 22 + 12345);
      other.close();
      const sseKey = deriveSseKey(config.masterKey.reveal(), "mem", key);
      const { versionId } = await target.writer.upload({
        key,
        body: Readable.from([Buffer.alloc(10240)]),
        sseKey,
      });

      await daemon.verifyNow(false);
      const check = new Database(join(dir, "catalog.db"), { readonly: true });
      const rows = check
        .prepare(`SELECT version_id AS v, status FROM backups WHERE object_key = ?`)
        .all(key);
      const run = check.prepare(`SELECT status FROM runs WHERE object_key = ?`).get(key);
      check.close();
      assert.deepEqual(rows, [{ v: versionId, status: "unverified" }]);
      assert.deepEqual(run, { status: "interrupted" });
    } finally {
      await daemon.stop("test over");
    }
  });
});
