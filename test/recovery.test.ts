/**
 * Crash recovery's decisions on the in-memory store (src/daemon/recovery.ts): which
 * runs are dead, what is recorded, which uploads may be aborted. The same on
 * the real server, with real kill -9, is in recovery.rgw.test.ts.
 */
import assert from "node:assert/strict";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { describe, it } from "node:test";
import { Catalog } from "../src/catalog/catalog.js";
import type { TargetConfig } from "../src/config/config.js";
import { Secret } from "../src/config/secret.js";
import { reconcile } from "../src/daemon/recovery.js";
import { StorageError } from "../src/errors.js";
import { runBackup } from "../src/flows/backup.js";
import { runVerify } from "../src/flows/verify.js";
import { createLogger } from "../src/log.js";
import { deriveSseKey } from "../src/repo/keys.js";
import { manifestKey, objectKey } from "../src/repo/naming.js";
import { MemoryBucket } from "../src/store/memory.js";
import { fullConfig, jobConfig, targetConfig } from "./support/target.js";

const work = mkdtempSync(join(tmpdir(), "immutd-recovery-"));
mkdirSync(join(work, "tree"));
writeFileSync(join(work, "tree", "a.txt"), "alpha\n");
const log = createLogger({ level: "silent" });
const masterKey = randomBytes(32);

/** A memory bucket, a catalog and a config with these jobs (host "h", target "memory"). */
function setup(name: string, jobNames: string[]) {
  const bucket = new MemoryBucket(name);
  const tc = targetConfig({ name: "memory", bucket: bucket.name });
  const jobs = jobNames.map((j) =>
    jobConfig({ name: j, target: "memory", paths: [join(work, "tree")] }),
  );
  const catalog = Catalog.open(join(work, `${name}.db`));
  const config = fullConfig({
    catalog: catalog.path,
    masterKey: new Secret(masterKey),
    host: "h",
    targets: { memory: tc },
    jobs,
  });
  return { bucket, target: bucket.target("memory"), catalog, config };
}

/** A run of job "tree" left "running" by a process that is gone; returns its key. */
function deadRun(catalog: Catalog): string {
  const k = objectKey({ prefix: "", host: "h", job: "tree", at: new Date(), compression: "gzip" });
  catalog.db
    .prepare(
      `INSERT INTO runs (job, target, object_key, started_at, status, pid) VALUES ('tree', 'memory', ?, ?, 'running', NULL)`,
    )
    .run(k, new Date().toISOString());
  return k;
}

describe("reconcile (memory store)", () => {
  it("recovers a dead run's version even after the next run's startRun interrupted it, and aborts only dead runs' uploads", async () => {
    const { bucket, target, catalog, config } = setup("rec", ["tree", "other"]);
    const key = (job: string, random: string) =>
      objectKey({ prefix: "", host: "h", job, at: new Date(), compression: "gzip", random });
    const run = (job: string, k: string, pid: number) =>
      Number(
        catalog.db
          .prepare(
            `INSERT INTO runs (job, target, object_key, started_at, status, pid) VALUES (?, 'memory', ?, ?, 'running', ?)`,
          )
          .run(job, k, new Date().toISOString(), pid).lastInsertRowid,
      );
    const deadPid = spawnSync("true").pid as number;
    const sleeper = spawn("sleep", ["60"]);
    try {
      // A run killed after its upload completed: the version is there, the row still "running".
      const deadKey = key("tree", "0000dead");
      const deadRun = run("tree", deadKey, deadPid);
      const archive = execFileSync("tar", ["-czf", "-", "-C", work, "tree"]);
      const { versionId } = await target.writer.upload({
        key: deadKey,
        body: Readable.from([archive]),
        sseKey: deriveSseKey(masterKey, bucket.name, deadKey),
      });
      // A run a live process is doing, and uploads: one of each kind.
      const liveKey = key("other", "00001ive");
      run("other", liveKey, sleeper.pid as number);
      const strangerKey = key("tree", "0000beef");
      for (const [id, k] of [
        ["u-dead", deadKey],
        ["u-live", liveKey],
        ["u-stranger", strangerKey],
      ] as const) {
        bucket.uploads.set(id, { key: k, initiated: new Date() });
      }
      // The next run of the job finds the dead one in its way and interrupts it (not reconciled).
      const next = catalog.startRun({
        job: "tree",
        target: "memory",
        objectKey: key("tree", "00000new"),
        startedAt: new Date(),
      });
      catalog.finishRun(next, { status: "failed", bytes: 0, files: 0, warnings: 0, error: "x" });
      assert.equal(catalog.run(deadRun)?.status, "interrupted");

      const report = await reconcile({ config, catalog, log, target: () => target });
      assert.deepEqual(
        report.recovered.map((r) => [r.runId, r.key, r.versionId]),
        [[deadRun, deadKey, versionId]],
      );
      assert.deepEqual(report.runs, [deadRun]);
      assert.match(catalog.run(deadRun)?.error ?? "", /recorded 1 version\(s\)/);
      const [row] = catalog.listBackups({ job: "tree" });
      assert.equal(row?.status, "unverified");
      assert.equal(row?.sha256, null);
      assert.equal(row?.size, archive.length);
      assert.equal(row?.retentionMode, "COMPLIANCE");
      assert.deepEqual([...bucket.uploads.keys()].sort(), ["u-live", "u-stranger"]);
      assert.deepEqual(report.leftAlone.map((u) => [u.uploadId, u.reason]).sort(), [
        ["u-live", "live"],
        ["u-stranger", "unknown"],
      ]);

      // Once reconciled, never again: nothing more is recorded or closed.
      const again = await reconcile({ config, catalog, log, target: () => target });
      assert.deepEqual([again.runs, again.recovered], [[], []]);

      // A plain verify reports it and leaves it unverified; a deep one settles it.
      const targets = { memory: target };
      const plain = await runVerify({ config, catalog, targets, log, job: "tree" });
      assert.deepEqual(
        plain.findings.map((f) => f.kind),
        ["unverified"],
      );
      assert.equal(catalog.backup(row.id)?.status, "unverified");
      const deep = await runVerify({ config, catalog, targets, log, job: "tree", deep: true });
      assert.deepEqual(deep.findings, []);
      const settled = catalog.backup(row.id);
      assert.equal(settled?.status, "ok");
      assert.equal(settled?.sha256, createHash("sha256").update(archive).digest("hex"));
    } finally {
      sleeper.kill();
      catalog.close();
    }
  });

  it("keyOwner: a run this process started is live, one recorded with our pid by an earlier process is dead, a key no run used is unknown", () => {
    const { catalog } = setup("owner", ["tree"]);
    const at = new Date();
    const mine = objectKey({ prefix: "", host: "h", job: "tree", at, compression: "gzip" });
    const reused = objectKey({ prefix: "", host: "h", job: "old", at, compression: "gzip" });
    const id = catalog.startRun({ job: "tree", target: "memory", objectKey: mine, startedAt: at });
    // An earlier immutd in this container had the same pid (pid 7 on every start).
    catalog.db
      .prepare(
        `INSERT INTO runs (job, target, object_key, started_at, status, pid) VALUES ('old', 'memory', ?, ?, 'running', ?)`,
      )
      .run(reused, at.toISOString(), process.pid);
    assert.deepEqual(catalog.keyOwner(mine), { state: "live", runId: id });
    assert.equal(catalog.keyOwner(reused).state, "dead");
    assert.deepEqual(catalog.keyOwner("h/tree/unknown.tar.gz"), { state: "unknown" });
    assert.deepEqual(
      catalog.deadRuns().map((r) => r.objectKey),
      [reused],
    );
    // Once finished, our own run's key is dead too: a leftover upload at it may go.
    catalog.finishRun(id, { status: "failed", bytes: 0, files: 0, warnings: 0, error: "x" });
    assert.equal(catalog.keyOwner(mine).state, "dead");
    catalog.close();
  });

  it("a version at a dead run's key that is not a readable archive is settled as corrupt, not ok", async () => {
    const { bucket, target, catalog, config } = setup("junk", ["tree"]);
    const k = deadRun(catalog);
    // Encrypted with the right key (a process killed mid-way could not do better) but truncated.
    await target.writer.upload({
      key: k,
      body: Readable.from([randomBytes(500)]),
      sseKey: deriveSseKey(masterKey, bucket.name, k),
    });
    await reconcile({ config, catalog, log, target: () => target });
    const deep = await runVerify({ config, catalog, targets: { memory: target }, log, deep: true });
    assert.deepEqual(
      deep.findings.map((f) => f.kind),
      ["archive-unreadable"],
    );
    assert.equal(catalog.listBackups()[0]?.status, "corrupt");
    catalog.close();
  });
});

describe("reconcile of a zstd run (memory store)", () => {
  it("records a dead run's .tar.zst version as zstd, and a deep verify reads it as zstd and settles it ok", async () => {
    const { bucket, target, catalog, config } = setup("zst", ["tree"]);
    const k = objectKey({
      prefix: "",
      host: "h",
      job: "tree",
      at: new Date(),
      compression: "zstd",
    });
    catalog.db
      .prepare(
        `INSERT INTO runs (job, target, object_key, started_at, status, pid) VALUES ('tree', 'memory', ?, ?, 'running', NULL)`,
      )
      .run(k, new Date().toISOString());
    const archive = execFileSync("sh", ["-c", `tar -cf - -C ${work} tree | zstd -q -c`]);
    await target.writer.upload({
      key: k,
      body: Readable.from([archive]),
      sseKey: deriveSseKey(masterKey, bucket.name, k),
    });
    const report = await reconcile({ config, catalog, log, target: () => target });
    assert.deepEqual(
      report.recovered.map((r) => r.key),
      [k],
    );
    assert.equal(catalog.listBackups()[0]?.compression, "zstd");
    const deep = await runVerify({ config, catalog, targets: { memory: target }, log, deep: true });
    assert.deepEqual(deep.findings, []);
    assert.equal(catalog.listBackups()[0]?.status, "ok");
    catalog.close();
  });
});

describe("reconcile and manifests (memory store)", () => {
  it("a manifest at a dead run's key plus its suffix is not taken for the archive", async () => {
    const { bucket, target, catalog, config } = setup("mfrec", ["tree"]);
    const k = deadRun(catalog);
    // Only the manifest's key holds a version (listing the archive's key as a prefix finds it).
    await target.writer.putManifest({
      key: manifestKey(k),
      body: Buffer.from("m"),
      sseKey: deriveSseKey(masterKey, bucket.name, manifestKey(k)),
    });
    await reconcile({ config, catalog, log, target: () => target });
    assert.deepEqual(catalog.listBackups(), []);
    catalog.close();
  });
});

describe("a run whose upload failed after the server stored it (memory store)", () => {
  it("stays on recovery's list, and the next reconcile records the version without changing the run's own error", async () => {
    const { target, catalog, config } = setup("lost-answer", ["tree"]);
    // The server completes the upload but its answer never arrives (reset, or an
    // idle timeout while it assembles the parts): the run fails with no row.
    const complete = target.writer.upload.bind(target.writer);
    const lossy = {
      ...target,
      writer: Object.assign(Object.create(target.writer), {
        upload: async (req: Parameters<typeof complete>[0]) => {
          await complete(req);
          throw new StorageError("cannot upload: connection reset (ECONNRESET)", {
            transient: true,
          });
        },
      }),
    };
    const job = config.jobs[0] as (typeof config.jobs)[number];
    const result = await runBackup(job, {
      config,
      catalog,
      target: lossy,
      targetConfig: config.targets.memory as TargetConfig,
      log,
    });
    assert.equal(result.status, "failed");
    assert.deepEqual(catalog.listBackups(), [], "the run itself never heard of the version");
    const [dead] = catalog.deadRuns();
    assert.equal(dead?.id, result.runId, "the failed run is on crash recovery's list");

    const report = await reconcile({ config, catalog, log, target: () => target });
    assert.equal(report.recovered.length, 1);
    assert.deepEqual(
      catalog.listBackups().map((b) => [b.key, b.status]),
      [[result.key, "unverified"]],
    );
    const run = catalog.run(result.runId);
    assert.equal(run?.status, "failed");
    assert.match(
      run?.error ?? "",
      /^.*ECONNRESET.*; crash recovery checked its key; recovery recorded 1 version/,
    );
    assert.deepEqual(catalog.deadRuns(), [], "reconciled once");
  });

  it("a run that failed before anything was sent is not on the list", async () => {
    const { target, catalog, config } = setup("nothing-sent", ["tree"]);
    const job = { ...(config.jobs[0] as (typeof config.jobs)[number]), paths: ["/nonexistent/x"] };
    const result = await runBackup(job, {
      config,
      catalog,
      target,
      targetConfig: config.targets.memory as TargetConfig,
      log,
    });
    assert.equal(result.status, "failed");
    assert.deepEqual(catalog.deadRuns(), []);
  });
});
