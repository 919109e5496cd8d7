import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import { Catalog, MAX_STORED_WARNINGS, runsInProgressHere } from "../src/catalog/catalog.js";
import { CatalogError, ConfigError } from "../src/errors.js";

const dir = mkdtempSync(join(tmpdir(), "immutd-catalog-"));
const isRoot = process.getuid?.() === 0;

const backup = (runId: number, versionId: string) => ({
  runId,
  job: "etc",
  target: "offsite",
  bucket: "b",
  key: "h/etc/k.tar",
  versionId,
  size: 10,
  sha256: "00",
  compression: "none" as const,
  sseKey: Buffer.alloc(32, 9),
  keyDerivation: "x",
  createdAt: new Date("2026-01-01T00:00:00Z"),
  retentionMode: "COMPLIANCE" as const,
  retainUntil: new Date("2026-01-31T00:00:00Z"),
  status: "ok" as const,
  files: 3,
});

/** Starts a run of job etc, as a backup does first. */
const startRun = (c: Catalog) =>
  c.startRun({ job: "etc", target: "offsite", objectKey: "k", startedAt: new Date() });

/** A tiny tmpfs of our own (root only), unmounted when the test ends. */
function smallDisk(t: { after(fn: () => void): void }, kib: number): string {
  const mnt = mkdtempSync(join(tmpdir(), "immutd-full-"));
  execFileSync("mount", ["-t", "tmpfs", "-o", `size=${kib}k,mode=0700`, "tmpfs", mnt]);
  t.after(() => execFileSync("umount", ["-l", mnt]));
  return mnt;
}

/** Fills the filesystem of `dir` to the last byte. */
function fill(dir: string): void {
  try {
    execFileSync("dd", ["if=/dev/zero", `of=${join(dir, "fill")}`, "bs=1024"], { stdio: "ignore" });
  } catch {
    // dd ends with "No space left on device": that is the point
  }
}

describe("catalog", () => {
  it("migrates a catalog made by immutd 0.1.0 (schema 2) keeping every row, key and lock extension", () => {
    // test/fixtures/catalog-0.1.0.db was written by 0.1.0's Catalog: one run, one
    // backup, one lock extension that references the backup.
    const path = join(dir, "old.db");
    copyFileSync(new URL("../../test/fixtures/catalog-0.1.0.db", import.meta.url), path);
    const c = Catalog.open(path);
    assert.equal(c.db.pragma("user_version", { simple: true }), 7);
    const [b] = c.listBackups();
    assert.equal(b?.versionId, "v1");
    // A backup from before manifests has none (and verify does not ask for one).
    assert.equal(b?.manifestKey, null);
    assert.equal(b?.manifestVersionId, null);
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

  it("migrates schema 3 to 4: backups keep their rows and get manifest columns", () => {
    const path = join(dir, "v3.db");
    const c3 = Catalog.open(path);
    const runId = c3.startRun({
      job: "j",
      target: "t",
      objectKey: "h/j/k.tar",
      startedAt: new Date(),
    });
    const id = c3.recordBackup({
      runId,
      job: "j",
      target: "t",
      bucket: "b",
      key: "h/j/k.tar",
      versionId: "v1",
      size: 1,
      sha256: "b".repeat(64),
      compression: "none",
      sseKey: Buffer.alloc(32, 3),
      keyDerivation: "x",
      createdAt: new Date(),
      retentionMode: null,
      retainUntil: null,
      status: "ok",
      files: 1,
    });
    // Back to what a schema-3 immutd left: no manifest columns.
    c3.db.exec(
      "ALTER TABLE backups DROP COLUMN manifest_key; ALTER TABLE backups DROP COLUMN manifest_version_id; PRAGMA user_version = 3",
    );
    c3.close();
    const c = Catalog.open(path);
    assert.equal(c.db.pragma("user_version", { simple: true }), 7);
    const b = c.backup(id);
    assert.equal(b?.sha256, "b".repeat(64));
    assert.equal(b?.manifestKey, null);
    c.setBackupManifest(id, "h/j/k.tar.manifest.json.gz", null);
    c.setBackupManifest(id, "h/j/k.tar.manifest.json.gz", "mv1");
    assert.equal(c.backup(id)?.manifestVersionId, "mv1");
    c.close();
  });

  it("migrates schema 4 to 5: rows and manifest columns kept, compression zstd accepted", () => {
    const path = join(dir, "v4.db");
    const c4 = Catalog.open(path);
    const runId = startRun(c4);
    const id = c4.recordBackup({ ...backup(runId, "v1"), compression: "gzip" });
    c4.setBackupManifest(id, "h/etc/k.tar.manifest.json.gz", "mv1");
    c4.close();
    // Back to what a schema-4 immutd left: the CHECK without zstd.
    const raw = new Database(path);
    raw.exec(
      "ALTER TABLE backups RENAME COLUMN compression TO c_old; ALTER TABLE backups ADD COLUMN compression TEXT NOT NULL DEFAULT 'none' CHECK (compression IN ('none','gzip')); UPDATE backups SET compression = c_old; ALTER TABLE backups DROP COLUMN c_old; PRAGMA user_version = 4",
    );
    assert.throws(
      () => raw.exec("UPDATE backups SET compression = 'zstd'"),
      /CHECK/,
      "schema 4 refuses zstd",
    );
    raw.close();
    const c = Catalog.open(path);
    assert.equal(c.db.pragma("user_version", { simple: true }), 7);
    assert.equal(c.backup(id)?.compression, "gzip");
    assert.equal(c.backup(id)?.manifestVersionId, "mv1");
    const z = c.recordBackup({
      ...backup(runId, "v2"),
      key: "h/etc/k.tar.zst",
      compression: "zstd",
    });
    assert.equal(c.backup(z)?.compression, "zstd");
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
    assert.equal(c.db.pragma("user_version", { simple: true }), 7);
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

  it("leaves the mode of an existing catalog alone and warns with the chmod that fixes it", () => {
    const sub = join(dir, "wide");
    mkdirSync(sub, { mode: 0o750 });
    chmodSync(sub, 0o750);
    const path = join(sub, "catalog.db");
    Catalog.open(path).close();
    chmodSync(path, 0o644);
    const c = Catalog.open(path);
    assert.equal(statSync(path).mode & 0o777, 0o644);
    assert.equal(statSync(sub).mode & 0o777, 0o750);
    assert.equal(c.warnings.length, 1);
    assert.match(c.warnings[0] ?? "", new RegExp(`${path} has mode 0644.*chmod 600 ${path}$`));
    c.close();
  });

  it("a catalog path that is a directory is a CatalogError, and the directory keeps its mode", () => {
    const shared = join(dir, "shared");
    mkdirSync(shared);
    chmodSync(shared, 0o1777);
    assert.throws(
      () => Catalog.open(shared),
      (e: unknown) =>
        e instanceof CatalogError && e.exitCode === 78 && /is a directory/.test(e.message),
    );
    assert.equal(statSync(shared).mode & 0o7777, 0o1777);
  });

  it("a read-only catalog is read from a copy; every write names the catalog and why (exit 78)", {
    skip: !isRoot && "needs root for a read-only bind mount",
  }, (t) => {
    const src = join(dir, "rw");
    const path = join(src, "catalog.db");
    const c = Catalog.open(path);
    const runId = startRun(c);
    c.recordBackup(backup(runId, "v1"));
    c.close();
    const ro = mkdtempSync(join(tmpdir(), "immutd-ro-"));
    execFileSync("mount", ["--bind", "-o", "ro", src, ro]);
    t.after(() => execFileSync("umount", ["-l", ro]));

    const r = Catalog.open(join(ro, "catalog.db"));
    assert.match(r.readOnly ?? "", /is not writable: EROFS/);
    assert.deepEqual(
      r.listBackups().map((b) => b.versionId),
      ["v1"],
    );
    assert.deepEqual(r.backupKey(1), Buffer.alloc(32, 9));
    for (const write of [
      () => r.startRun({ job: "etc", target: "offsite", objectKey: "k2", startedAt: new Date() }),
      () => r.setBackupStatus(1, "missing"),
      () => r.db.exec("DELETE FROM backups"),
    ]) {
      assert.throws(write, (e: unknown) => {
        assert.ok(e instanceof CatalogError, String(e));
        assert.equal(e.exitCode, 78);
        assert.match(e.message, new RegExp(`catalog ${ro}/catalog.db is read-only \\(.*EROFS\\)`));
        return true;
      });
    }
    assert.equal(r.listBackups()[0]?.status, "ok");
    r.close();
  });

  it("on a full disk a run's failure is still recorded; the backup it could not record is named", {
    skip: !isRoot && "needs root to mount a small tmpfs",
  }, (t) => {
    const mnt = smallDisk(t, 256);
    const path = join(mnt, "catalog.db");
    Catalog.open(path).close(); // an existing catalog: its WAL merged into the file
    const c = Catalog.open(path);
    const runId = startRun(c);
    fill(mnt);
    let error = "";
    assert.throws(
      () => c.recordBackup(backup(runId, "v-unrecorded")),
      (e: unknown) => {
        assert.ok(e instanceof CatalogError, String(e));
        error = e.message;
        return true;
      },
    );
    assert.match(error, new RegExp(`^catalog ${path}: the disk is full`));
    assert.match(
      error,
      /s3:\/\/b\/h\/etc\/k\.tar version v-unrecorded is in the bucket but not in the catalog/,
    );
    c.addWarnings(
      runId,
      Array.from({ length: 500 }, (_, i) => ({ path: `/f${i}`, message: "x".repeat(200) })),
    );
    c.finishRun(runId, { status: "failed", bytes: 0, files: 0, warnings: 500, error });
    c.close();
    const after = Catalog.open(path);
    assert.equal(after.run(runId)?.status, "failed");
    assert.equal(after.run(runId)?.error, error);
    assert.equal(after.run(runId)?.warnings, 500);
    after.close();
  });

  it("on a full disk where nothing can be written, the error says the run could not be recorded", {
    skip: !isRoot && "needs root to mount a small tmpfs",
  }, (t) => {
    const mnt = smallDisk(t, 256);
    // A new catalog: its schema is still in the WAL, so no checkpoint can make room.
    const c = Catalog.open(join(mnt, "catalog.db"));
    const runId = startRun(c);
    fill(mnt);
    assert.throws(
      () =>
        c.finishRun(runId, {
          status: "failed",
          bytes: 0,
          files: 0,
          warnings: 0,
          error: "S3 said no",
        }),
      (e: unknown) =>
        e instanceof CatalogError &&
        new RegExp(
          `^catalog ${mnt}/catalog.db: the disk is full .*: run ${runId} ended failed \\(S3 said no\\) but the catalog could not record that; it shows as running until`,
        ).test(e.message),
    );
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

describe("a run the catalog could not close", () => {
  it("is no longer this process's own, so this daemon's next reconcile sees it as dead", () => {
    const c = Catalog.open(join(dir, "unclosable.db"));
    const before = runsInProgressHere();
    const id = c.startRun({ job: "j", target: "t", objectKey: "h/j/k.tar", startedAt: new Date() });
    assert.equal(runsInProgressHere(), before + 1);
    assert.deepEqual(c.deadRuns(), [], "a run this process is doing is live");
    c.db.pragma("query_only = ON"); // every write now fails, as on a disk that stays full
    assert.throws(() =>
      c.finishRun(id, { status: "failed", bytes: 0, files: 0, warnings: 0, error: "x" }),
    );
    c.db.pragma("query_only = OFF");
    assert.equal(runsInProgressHere(), before);
    assert.deepEqual(
      c.deadRuns().map((r) => r.id),
      [id],
    );
    c.close();
  });
});
