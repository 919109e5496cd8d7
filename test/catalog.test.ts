import assert from "node:assert/strict";
import { copyFileSync, mkdtempSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import { Catalog, MAX_STORED_WARNINGS } from "../src/catalog.js";
import { ConfigError } from "../src/errors.js";

const dir = mkdtempSync(join(tmpdir(), "immutd-catalog-"));

describe("catalog", () => {
  it("migrates a catalog made by immutd 0.1.0 (schema 2) keeping every row, key and lock extension", () => {
    // test/fixtures/catalog-0.1.0.db was written by 0.1.0's Catalog: one run, one
    // backup, one lock extension that references the backup.
    const path = join(dir, "old.db");
    copyFileSync(new URL("../../test/fixtures/catalog-0.1.0.db", import.meta.url), path);
    const c = Catalog.open(path);
    assert.equal(c.db.pragma("user_version", { simple: true }), 3);
    const [b] = c.listBackups();
    assert.equal(b?.versionId, "v1");
    assert.equal(b?.sha256, "a".repeat(64));
    assert.equal(b?.status, "ok");
    assert.deepEqual(c.backupKey(b?.id ?? 0), Buffer.alloc(32, 7));
    const ext = c.db.prepare("SELECT backup_id AS id FROM lock_extensions").all() as {
      id: number;
    }[];
    assert.deepEqual(ext, [{ id: b?.id }]);
    assert.deepEqual(c.db.pragma("foreign_key_check"), []);
    assert.equal(c.db.pragma("foreign_keys", { simple: true }), 1);
    // The new statuses are accepted, and a NULL SHA-256 only with one of them.
    c.setBackupStatus(b?.id ?? 0, "unverified");
    assert.throws(
      () => c.db.prepare("UPDATE backups SET sha256 = NULL, status = 'ok'").run(),
      /CHECK/,
    );
    c.close();
  });

  it("is created 0600 (with its WAL files) in a new 0700 directory, in WAL mode", () => {
    const path = join(dir, "sub", "catalog.db");
    const c = Catalog.open(path);
    c.startRun({ job: "j", target: "t", objectKey: "k", startedAt: new Date() });
    assert.equal(statSync(path).mode & 0o777, 0o600);
    assert.equal(statSync(`${path}-wal`).mode & 0o777, 0o600);
    assert.equal(statSync(join(dir, "sub")).mode & 0o777, 0o700);
    assert.equal(c.db.pragma("journal_mode", { simple: true }), "wal");
    assert.equal(c.db.pragma("user_version", { simple: true }), 3);
    c.close();
  });

  it("records runs and backups, lists without key material, keeps the key for restore", () => {
    const c = Catalog.open(join(dir, "c2.db"));
    const runId = c.startRun({
      job: "etc",
      target: "offsite",
      objectKey: "h/etc/k.tar",
      startedAt: new Date(),
    });
    assert.equal(c.run(runId)?.status, "running");
    const sseKey = Buffer.alloc(32, 9);
    const id = c.recordBackup({
      runId,
      job: "etc",
      target: "offsite",
      bucket: "b",
      key: "h/etc/k.tar",
      versionId: "v1",
      size: 10,
      sha256: "00",
      compression: "none",
      sseKey,
      keyDerivation: "x",
      createdAt: new Date("2026-01-01T00:00:00Z"),
      retentionMode: "COMPLIANCE",
      retainUntil: new Date("2026-01-31T00:00:00Z"),
      status: "ok",
      files: 3,
    });
    c.finishRun(runId, { status: "succeeded", bytes: 10, files: 3, warnings: 0 });
    const rows = c.listBackups({ job: "etc" });
    assert.equal(rows.length, 1);
    assert.equal(rows[0]?.versionId, "v1");
    assert.ok(
      !("sseKey" in (rows[0] ?? {})) && !JSON.stringify(rows).includes(sseKey.toString("base64")),
    );
    assert.deepEqual(c.backupKey(id), sseKey);
    assert.equal(c.run(runId)?.status, "succeeded");
    assert.equal(c.listBackups({ job: "other" }).length, 0);
    c.close();
  });

  it("stores at most MAX_STORED_WARNINGS warnings per run but counts all", () => {
    const c = Catalog.open(join(dir, "c3.db"));
    const runId = c.startRun({ job: "j", target: "t", objectKey: "k", startedAt: new Date() });
    const ws = Array.from({ length: MAX_STORED_WARNINGS + 5 }, (_, i) => ({
      path: `/f${i}`,
      message: "m",
    }));
    c.addWarnings(runId, ws);
    c.finishRun(runId, { status: "succeeded", bytes: 0, files: 0, warnings: ws.length });
    assert.equal(c.runWarnings(runId).length, MAX_STORED_WARNINGS);
    assert.equal(c.run(runId)?.warnings, ws.length);
    c.close();
  });

  it("a run recorded with this pid by an earlier process is abandoned, not ours (pid reuse)", () => {
    const path = join(dir, "pid-reuse.db");
    // An earlier immutd with the same pid (a container's PID 7) left a run "running".
    const raw = new Database(path);
    const before = Catalog.open(path);
    before.close();
    raw
      .prepare(
        `INSERT INTO runs (job, target, object_key, started_at, status, pid) VALUES ('j', 't', 'old', ?, 'running', ?)`,
      )
      .run(new Date(0).toISOString(), process.pid);
    raw.close();
    const c = Catalog.open(path);
    assert.deepEqual(
      c.abandonedRuns().map((r) => r.objectKey),
      ["old"],
      "the daemon's start-up recovery sees it",
    );
    // A run this process starts is never abandoned, and starting one ends the stale one.
    const mine = c.startRun({ job: "j", target: "t", objectKey: "new", startedAt: new Date() });
    assert.deepEqual(c.abandonedRuns(), []);
    const runs = c.db.prepare("SELECT id, object_key AS k, status FROM runs ORDER BY id").all();
    assert.deepEqual(runs, [
      { id: 1, k: "old", status: "interrupted" },
      { id: mine, k: "new", status: "running" },
    ]);
    c.close();
  });

  it("refuses a catalog from a newer immutd", () => {
    const path = join(dir, "future.db");
    const db = new Database(path);
    db.pragma("user_version = 99");
    db.close();
    assert.throws(
      () => Catalog.open(path),
      (e: unknown) => e instanceof ConfigError && /schema version 99/.test(e.message),
    );
  });
});
