/** The catalog's verification block: migration 2, statuses, lock extensions, verify runs. */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Catalog } from "../src/catalog/catalog.js";

const dir = mkdtempSync(join(tmpdir(), "immutd-catalog-v-"));

function withBackup(c: Catalog, retainUntil: Date | null, createdAt = new Date()) {
  const runId = c.startRun({ job: "j", target: "t", objectKey: "k", startedAt: createdAt });
  c.finishRun(runId, { status: "succeeded", bytes: 1, files: 1, warnings: 0 });
  return c.recordBackup({
    runId,
    job: "j",
    target: "t",
    bucket: "b",
    key: `k-${randomBytes(4).toString("hex")}`,
    versionId: randomBytes(6).toString("hex"),
    size: 1,
    sha256: "0".repeat(64),
    compression: "gzip",
    sseKey: randomBytes(32),
    keyDerivation: "x",
    createdAt,
    retentionMode: "COMPLIANCE",
    retainUntil,
    status: "ok",
    files: 1,
  });
}

describe("catalog: verification and lock extension", () => {
  it("migrates a version-1 catalog and keeps its backups", () => {
    const path = join(dir, "old.db");
    const c = Catalog.open(path);
    const id = withBackup(c, new Date("2030-01-01T00:00:00Z"));
    c.db.exec("DROP TABLE lock_extensions; DROP TABLE verify_runs;");
    c.db.pragma("user_version = 1");
    c.close();
    const again = Catalog.open(path);
    assert.equal(again.db.pragma("user_version", { simple: true }), 7);
    assert.equal(again.backup(id)?.status, "ok");
    assert.deepEqual(again.lockExtensions(), []);
    again.close();
  });

  it("marks only good backups past their retain-until expired", () => {
    const c = Catalog.open(join(dir, "exp.db"));
    const past = withBackup(c, new Date("2020-01-01T00:00:00Z"));
    const future = withBackup(c, new Date("2099-01-01T00:00:00Z"));
    const missing = withBackup(c, new Date("2020-01-01T00:00:00Z"));
    c.setBackupStatus(missing, "missing");
    assert.deepEqual(
      c.markExpired(new Date("2026-01-01T00:00:00Z")).map((r) => r.id),
      [past],
    );
    assert.deepEqual(
      [past, future, missing].map((id) => c.backup(id)?.status),
      ["expired", "ok", "missing"],
    );
    c.close();
  });

  it("records lock extensions and never moves a recorded retain-until earlier", () => {
    const c = Catalog.open(join(dir, "ext.db"));
    const id = withBackup(c, new Date("2030-01-01T00:00:00Z"));
    c.recordLockExtension({
      backupId: id,
      from: new Date("2030-01-01T00:00:00Z"),
      to: new Date("2030-02-01T00:00:00Z"),
      mode: "COMPLIANCE",
      at: new Date("2029-12-01T00:00:00Z"),
    });
    c.adoptRetainUntil(id, new Date("2030-01-15T00:00:00Z"), "COMPLIANCE");
    assert.equal(c.backup(id)?.retainUntil, "2030-02-01T00:00:00.000Z");
    const [e] = c.lockExtensions(id);
    assert.deepEqual(
      [e?.oldRetainUntil, e?.newRetainUntil, e?.mode, e?.extendedAt],
      [
        "2030-01-01T00:00:00.000Z",
        "2030-02-01T00:00:00.000Z",
        "COMPLIANCE",
        "2029-12-01T00:00:00.000Z",
      ],
    );
    c.close();
  });

  it("keeps verify runs, the latest (deep) one first", () => {
    const c = Catalog.open(join(dir, "runs.db"));
    const at = (s: string) => new Date(`2026-11-0${s}T00:00:00Z`);
    c.recordVerifyRun({
      startedAt: at("1"),
      finishedAt: at("1"),
      deep: true,
      job: null,
      checked: 3,
      findings: 0,
      report: {},
    });
    c.recordVerifyRun({
      startedAt: at("2"),
      finishedAt: at("2"),
      deep: false,
      job: "j",
      checked: 3,
      findings: 1,
      report: { findings: [{ kind: "missing" }] },
    });
    assert.equal(c.lastVerifyRun()?.findings, 1);
    assert.deepEqual(c.lastVerifyRun()?.report, { findings: [{ kind: "missing" }] });
    assert.equal(c.lastVerifyRun({ deep: true })?.startedAt, at("1").toISOString());
    c.close();
  });
});
