/**
 * The lock of each new backup, and verify's view of locks, on the in-memory
 * store with a clock the tests move: the bucket default changed after the
 * preflight (as a before hook or a stolen key can), PutObjectRetention refused,
 * lagging or silently ignored, a short-locked older backup behind a good newer
 * one, a delete marker. The same against Ceph RGW is in lock.rgw.test.ts.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Catalog } from "../src/catalog/catalog.js";
import type { RetentionMode } from "../src/config/config.js";
import { Secret } from "../src/config/secret.js";
import { runBackup } from "../src/flows/backup.js";
import { runVerify } from "../src/flows/verify.js";
import { createLogger } from "../src/log.js";
import { MemoryBucket } from "../src/store/memory.js";
import type { ObjectStore, Target } from "../src/store/store.js";
import { fullConfig, jobConfig, targetConfig } from "./support/target.js";

const DAY = 86_400_000;
const work = mkdtempSync(join(tmpdir(), "immutd-lock-"));
const tree = join(work, "tree");
mkdirSync(tree);
writeFileSync(join(tree, "a.bin"), randomBytes(20_000));
const log = createLogger({ level: "silent" });
let n = 0;

/** A bucket whose default matches the config (COMPLIANCE 3 days), a job, a catalog and a fake clock. */
function setup(o: { keepLatestLocked?: boolean } = {}) {
  const clock = { t: Date.parse("2026-11-01T00:00:00Z") };
  const now = () => new Date(clock.t);
  const bucket = new MemoryBucket(`lock${n++}`, {
    defaultRetention: { mode: "COMPLIANCE", days: 3 },
  });
  bucket.now = now;
  const tc = targetConfig({
    name: "mem",
    bucket: bucket.name,
    retention: { mode: "COMPLIANCE", days: 3 },
  });
  const job = jobConfig({ name: "tree", target: "mem", paths: [tree] });
  const catalog = Catalog.open(join(work, `${bucket.name}.db`));
  const config = fullConfig({
    catalog: catalog.path,
    masterKey: new Secret(randomBytes(32)),
    host: "h",
    targets: { mem: tc },
    jobs: [job],
    keepLatestLocked: o.keepLatestLocked ?? false,
  });
  const target = bucket.target("mem");
  const backup = (t: Target = target) =>
    runBackup(job, { config, catalog, target: t, targetConfig: tc, log, now });
  const verify = () => runVerify({ config, catalog, targets: { mem: target }, log, now });
  return { clock, now, bucket, tc, catalog, target, backup, verify };
}

/** The target with its writer changing the bucket default just before uploading: the window a before hook has. */
function tamperBeforeUpload(
  target: Target,
  bucket: MemoryBucket,
  change: { mode: RetentionMode; days: number } | undefined,
): Target {
  const writer = new Proxy(target.writer, {
    get(t, p) {
      if (p === "upload") {
        return (req: Parameters<ObjectStore["upload"]>[0]) => {
          bucket.defaultRetention = change;
          return t.upload(req);
        };
      }
      const v = Reflect.get(t, p);
      return typeof v === "function" ? v.bind(t) : v;
    },
  });
  return { ...target, writer };
}

/** A store whose PutObjectRetention answers 200 but changes nothing (a server that ignores it). */
function ignoringRetention(store: ObjectStore): ObjectStore {
  return new Proxy(store, {
    get(t, p) {
      if (p === "extendRetention") return async () => {};
      const v = Reflect.get(t, p);
      return typeof v === "function" ? v.bind(t) : v;
    },
  });
}

describe("the lock of a new backup (memory store)", () => {
  for (const [what, change] of [
    ["shortened to 1 day", { mode: "COMPLIANCE", days: 1 }],
    ["switched to GOVERNANCE", { mode: "GOVERNANCE", days: 3 }],
    ["removed", undefined],
  ] as const) {
    it(`a bucket default ${what} after the preflight still ends COMPLIANCE for the configured 3 days`, async () => {
      const s = setup();
      const r = await s.backup(tamperBeforeUpload(s.target, s.bucket, change));
      assert.equal(r.status, "succeeded", r.error);
      const v = s.bucket.versions[0];
      const expected = { mode: "COMPLIANCE", retainUntil: new Date(s.clock.t + 3 * DAY) };
      assert.deepEqual(v?.retention, expected);
      const row = s.catalog.backup(r.backupId as number);
      assert.equal(row?.status, "ok");
      assert.equal(row?.retentionMode, "COMPLIANCE");
      assert.equal(row?.retainUntil, expected.retainUntil.toISOString());
      assert.deepEqual(r.retainUntil, expected.retainUntil);
    });
  }

  it("PutObjectRetention refused: the version is recorded unlocked, the run fails naming it, verify reports it", async () => {
    const s = setup();
    s.bucket.refuseRetention = new Set(["writer", "admin"]);
    const r = await s.backup(
      tamperBeforeUpload(s.target, s.bucket, { mode: "COMPLIANCE", days: 1 }),
    );
    assert.equal(r.status, "failed");
    const [v] = s.bucket.versions;
    assert.ok(v);
    assert.match(
      r.error ?? "",
      new RegExp(
        `^job tree: s3://${s.bucket.name}/${r.key} version ${v.versionId} could not be locked COMPLIANCE 3 days .*AccessDenied.*recorded as unlocked`,
      ),
    );
    assert.equal(s.catalog.run(r.runId)?.status, "failed");
    assert.equal(r.versionId, v.versionId, "the failed run still names its version");
    const [row] = s.catalog.listBackups();
    assert.equal(row?.id, r.backupId);
    assert.equal(row?.versionId, v.versionId, "the version is never forgotten");
    assert.equal(row?.status, "unlocked");
    assert.equal(
      row?.retainUntil,
      new Date(s.clock.t + DAY).toISOString(),
      "what the server holds",
    );

    // verify reports it, and cannot lock it either while the refusal lasts.
    s.bucket.defaultRetention = { mode: "COMPLIANCE", days: 3 };
    const first = await s.verify();
    assert.deepEqual(
      first.findings.map((f) => [f.kind, f.versionId]),
      [["retention-short", v.versionId]],
    );
    assert.match(first.findings[0]?.message ?? "", /locking it for its configured period failed/);
    assert.equal(s.catalog.backup(row.id)?.status, "unlocked");

    // Once the server takes it, verify locks it for its configured period.
    s.bucket.refuseRetention.clear();
    const second = await s.verify();
    assert.match(second.findings[0]?.message ?? "", /verify locked it COMPLIANCE until/);
    assert.equal(v.retention?.retainUntil.getTime(), Date.parse(row.createdAt) + 3 * DAY);
    assert.equal(s.catalog.backup(row.id)?.status, "ok");
    assert.deepEqual((await s.verify()).findings, []);
  });

  it("a server that accepts PutObjectRetention but does not apply it: unlocked, and the run fails", async () => {
    const s = setup();
    const t = tamperBeforeUpload(s.target, s.bucket, { mode: "GOVERNANCE", days: 3 });
    const r = await s.backup({
      ...t,
      writer: ignoringRetention(t.writer),
      admin: ignoringRetention(t.admin as ObjectStore),
    });
    assert.equal(r.status, "failed");
    assert.match(
      r.error ?? "",
      /the server accepted COMPLIANCE until .* but reports GOVERNANCE until/,
    );
    assert.equal(s.catalog.listBackups()[0]?.status, "unlocked");
    assert.equal(s.catalog.listBackups()[0]?.retentionMode, "GOVERNANCE");
  });

  it("retries PutObjectRetention while the provider answers AccessDenied right after the upload", async () => {
    const s = setup();
    s.bucket.retentionLag = 2;
    const r = await s.backup(tamperBeforeUpload(s.target, s.bucket, undefined));
    assert.equal(r.status, "succeeded", r.error);
    assert.equal(s.bucket.retentionLag, 0, "both refusals were met and retried");
    assert.equal(s.bucket.versions[0]?.retention?.mode, "COMPLIANCE");
  });

  it("a server clock a little behind is not a short lock; far behind, it is", async () => {
    const s = setup();
    s.bucket.refuseRetention = new Set(["writer", "admin"]);
    // The default counts from the server's clock: 2 minutes behind ours, within the slack.
    s.bucket.now = () => new Date(s.clock.t - 120_000);
    const near = await s.backup();
    assert.equal(near.status, "succeeded", near.error);
    assert.deepEqual((await s.verify()).findings, []);
    // 10 minutes behind: the lock really is short of upload + 3 days.
    s.bucket.now = () => new Date(s.clock.t - 600_000);
    s.clock.t += 3_600_000;
    const far = await s.backup();
    assert.equal(far.status, "failed");
    assert.match(far.error ?? "", /could not be locked/);
  });

  it("a bucket default longer than configured is kept: nothing is shortened or rewritten", async () => {
    const s = setup();
    s.bucket.defaultRetention = { mode: "COMPLIANCE", days: 30 };
    s.bucket.refuseRetention = new Set(["writer", "admin"]);
    const r = await s.backup();
    assert.equal(r.status, "succeeded", r.error);
    assert.deepEqual(r.retainUntil, new Date(s.clock.t + 30 * DAY));
  });
});

describe("verify and locks (memory store)", () => {
  it("reports an older backup locked shorter than configured although a newer good one exists, even once its lock ran out", async () => {
    const s = setup({ keepLatestLocked: true });
    // The older one as earlier immutd versions recorded it: "ok", locked for the 1 day the default gave.
    s.bucket.refuseRetention = new Set(["writer", "admin"]);
    await s.backup(tamperBeforeUpload(s.target, s.bucket, { mode: "COMPLIANCE", days: 1 }));
    const oldId = s.catalog.listBackups()[0]?.id as number;
    s.catalog.setBackupStatus(oldId, "ok");
    s.bucket.refuseRetention.clear();
    s.bucket.defaultRetention = { mode: "COMPLIANCE", days: 3 };
    s.clock.t += 3_600_000;
    const newer = await s.backup();
    assert.equal(newer.status, "succeeded", newer.error);

    // A day and a half later the short lock has run out, the configured period has not.
    s.clock.t += 1.5 * DAY;
    const r = await s.verify();
    const oldRow = s.catalog.backup(oldId);
    assert.ok(oldRow);
    assert.deepEqual(
      r.findings.map((f) => [f.kind, f.versionId]),
      [["retention-short", oldRow.versionId]],
    );
    assert.match(r.findings[0]?.message ?? "", /short of its configured 3 days/);
    const v = s.bucket.versions.find((x) => x.versionId === oldRow.versionId);
    assert.equal(v?.retention?.retainUntil.getTime(), Date.parse(oldRow.createdAt) + 3 * DAY);
    assert.equal(oldRow.status, "ok", "locked again, and no longer expired");
    assert.throws(() => s.bucket.deleteVersion(oldRow.key, oldRow.versionId), /object lock/);
  });

  it("a delete marker on a backup's key is a warning, not a finding", async () => {
    const s = setup();
    const r = await s.backup();
    assert.equal(r.status, "succeeded", r.error);
    s.bucket.store("writer").putDeleteMarker(r.key);
    const report = await s.verify();
    assert.deepEqual(report.findings, []);
    assert.deepEqual(
      report.warnings.map((w) => [w.kind, w.key, w.versionId]),
      [["delete-marker", r.key, r.versionId]],
    );
    assert.match(
      report.warnings[0]?.message ?? "",
      /hid its latest version.*still there and restorable/,
    );
  });
});

describe("a backup row recorded before its lock was read back (memory store)", () => {
  it("verify takes the server's lock into the catalog, so list shows it and it expires on time", async () => {
    const s = setup();
    const r = await s.backup();
    assert.equal(r.status, "succeeded");
    const id = r.backupId as number;
    // What a kill between the row and the read-back leaves: unlocked, no retention known.
    s.catalog.db
      .prepare(
        `UPDATE backups SET status = 'unlocked', retain_until = NULL, retention_mode = NULL WHERE id = ?`,
      )
      .run(id);
    await s.verify();
    const row = s.catalog.backup(id);
    assert.equal(row?.status, "ok");
    assert.equal(row?.retentionMode, "COMPLIANCE");
    assert.equal(row?.retainUntil, r.retainUntil?.toISOString());
    s.clock.t += 4 * DAY;
    await s.verify();
    assert.equal(s.catalog.backup(id)?.status, "expired");
  });
});
