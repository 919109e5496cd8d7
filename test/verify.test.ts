/**
 * verify and keepLatestLocked on the in-memory store, with a clock the tests
 * move: findings, statuses, bounded concurrency, deep checks, lock extension
 * that only ever moves forward. The same on Ceph RGW is in verify.rgw.test.ts.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Catalog } from "../src/catalog/catalog.js";
import type { TargetConfig } from "../src/config/config.js";
import { Secret } from "../src/config/secret.js";
import { runBackup } from "../src/flows/backup.js";
import { extendLatestLocks, judgeBackup, runVerify } from "../src/flows/verify.js";
import { createLogger } from "../src/log.js";
import { MemoryBucket } from "../src/store/memory.js";
import type { ObjectStore, Target } from "../src/store/store.js";
import { fullConfig, jobConfig, targetConfig } from "./support/target.js";

const DAY = 86_400_000;
const work = mkdtempSync(join(tmpdir(), "immutd-verify-"));
const tree = join(work, "tree");
mkdirSync(tree);
writeFileSync(join(tree, "a.txt"), "alpha\n".repeat(100));
writeFileSync(join(tree, "b.bin"), randomBytes(50_000));
const log = createLogger({ level: "silent" });
let n = 0;

/** A bucket, a catalog and `count` backups of job "tree" made one hour apart on a fake clock. */
async function setup(count: number, over: Partial<TargetConfig> = {}, keepLatestLocked = true) {
  const clock = { t: Date.parse("2026-11-01T00:00:00Z") };
  const now = () => new Date(clock.t);
  const bucket = new MemoryBucket(`v${n++}`, { defaultRetention: { mode: "COMPLIANCE", days: 7 } });
  bucket.now = now;
  const tc = targetConfig({
    name: "mem",
    bucket: bucket.name,
    retention: { mode: "COMPLIANCE", days: 7 },
    ...over,
  });
  const job = jobConfig({ name: "tree", target: "mem", paths: [tree] });
  const catalog = Catalog.open(join(work, `${bucket.name}.db`));
  const config = fullConfig({
    catalog: catalog.path,
    masterKey: new Secret(randomBytes(32)),
    host: "h",
    targets: { mem: tc },
    jobs: [job],
    keepLatestLocked,
  });
  const target = bucket.target("mem");
  for (let i = 0; i < count; i++) {
    const r = await runBackup(job, { config, catalog, target, targetConfig: tc, log, now });
    assert.equal(r.status, "succeeded", r.error);
    clock.t += 3_600_000;
  }
  const targets: Record<string, Target> = { mem: target };
  const verify = (o: { deep?: boolean; targets?: Record<string, Target> } = {}) =>
    runVerify({
      config,
      catalog,
      targets: o.targets ?? targets,
      log,
      now,
      ...(o.deep ? { deep: true } : {}),
    });
  return { clock, now, bucket, tc, job, catalog, config, target, targets, verify };
}

describe("runVerify (memory store)", () => {
  it("finds nothing wrong with a healthy bucket, deep or not, and records the run", async () => {
    const s = await setup(3);
    const r = await s.verify({ deep: true });
    assert.deepEqual(r.findings, []);
    assert.equal(r.checked, 3);
    assert.equal(r.deepChecked.length, 1);
    assert.ok(r.deepChecked[0]?.ok);
    assert.ok((r.deepChecked[0]?.entries ?? 0) >= 3, "the archive was read to its end");
    assert.equal(r.deepChecked[0]?.key, s.catalog.listBackups().at(-1)?.key, "the newest backup");
    assert.equal(s.catalog.lastVerifyRun()?.findings, 0);
    assert.equal(s.catalog.lastVerifyRun({ deep: true })?.checked, 3);
  });

  it("names the job, key and version of a version lost behind S3's back, every run, until it is back", async () => {
    const s = await setup(2);
    const [first] = s.catalog.listBackups();
    assert.ok(first);
    const i = s.bucket.versions.findIndex((v) => v.versionId === first.versionId);
    const [lost] = s.bucket.versions.splice(i, 1);
    for (let run = 0; run < 2; run++) {
      const r = await s.verify();
      assert.equal(r.findings.length, 1, JSON.stringify(r.findings));
      const f = r.findings[0];
      assert.equal(f?.kind, "missing");
      assert.equal(f?.job, "tree");
      assert.equal(f?.key, first.key);
      assert.equal(f?.versionId, first.versionId);
      assert.equal(f?.backupId, first.id);
      assert.match(f?.message ?? "", new RegExp(`${first.versionId}.*no longer exists`));
      assert.equal(s.catalog.backup(first.id)?.status, "missing");
    }
    s.bucket.versions.push(lost as NonNullable<typeof lost>);
    assert.deepEqual((await s.verify()).findings, []);
    assert.equal(s.catalog.backup(first.id)?.status, "ok");
  });

  it("reports a removed default retention and a lifecycle rule that expires backups early", async () => {
    const s = await setup(1);
    s.bucket.defaultRetention = undefined;
    s.bucket.lifecycle = [{ id: "cleanup", enabled: true, prefix: "", expirationDays: 2 }];
    const r = await s.verify();
    assert.deepEqual(r.findings.map((f) => [f.kind, f.job, f.target]).sort(), [
      ["lifecycle-expires-current", null, "mem"],
      ["no-default-retention", null, "mem"],
    ]);
  });

  it("notes a lifecycle it may not read instead of failing (Ceph subusers cannot)", async () => {
    const s = await setup(1);
    const { admin: _admin, ...noAdmin } = s.target;
    const r = await s.verify({ targets: { mem: noAdmin } });
    assert.deepEqual(r.findings, []);
    assert.equal(r.targets[0]?.lifecycleChecked, false);
    assert.match(r.notes.join("\n"), /lifecycle rules of bucket .* were not checked/);
  });

  it("reports size, mode and shortened retention drift, and locks the weakened versions again", async () => {
    const s = await setup(3, {}, false);
    const rows = s.catalog.listBackups();
    const version = (i: number) => {
      const v = s.bucket.versions.find((x) => x.versionId === rows[i]?.versionId);
      assert.ok(v?.retention);
      return v as typeof v & { retention: NonNullable<typeof v.retention> };
    };
    version(0).data = Buffer.concat([version(0).data, Buffer.from("x")]);
    version(1).retention.mode = "GOVERNANCE";
    version(2).retention.retainUntil = new Date(version(2).retention.retainUntil.getTime() - DAY);
    const kinds = (await s.verify()).findings.map((f) => [f.kind, f.versionId]);
    assert.deepEqual(kinds, [
      ["size-mismatch", rows[0]?.versionId],
      ["mode-weak", rows[1]?.versionId],
      ["retention-shortened", rows[2]?.versionId],
      ["retention-short", rows[2]?.versionId],
    ]);
    // verify locked both for their configured period: only the size is left to report.
    assert.deepEqual(version(1).retention.mode, "COMPLIANCE");
    assert.equal(
      version(2).retention.retainUntil.getTime(),
      Date.parse(rows[2]?.createdAt ?? "") + 7 * DAY,
    );
    const again = (await s.verify()).findings.map((f) => [f.kind, f.versionId]);
    assert.deepEqual(again, [["size-mismatch", rows[0]?.versionId]]);
    assert.deepEqual(
      s.catalog.listBackups().map((r) => r.status),
      ["ok", "ok", "ok"],
    );
  });

  it("deep: a changed byte is a checksum mismatch and marks the backup corrupt", async () => {
    const s = await setup(2, {}, false);
    const newest = s.catalog.listBackups().at(-1);
    const v = s.bucket.versions.find((x) => x.versionId === newest?.versionId);
    assert.ok(v && newest);
    const data = Buffer.from(v.data);
    data[data.length - 40] = (data[data.length - 40] as number) ^ 0xff;
    v.data = data;
    const r = await s.verify({ deep: true });
    assert.deepEqual(
      r.findings.map((f) => [f.kind, f.key]),
      [["checksum-mismatch", newest.key]],
    );
    assert.equal(s.catalog.backup(newest.id)?.status, "corrupt");
    // The next deep run checks the newest good one instead, and finds nothing.
    const again = await s.verify({ deep: true });
    assert.deepEqual(again.findings, []);
    assert.notEqual(again.deepChecked[0]?.key, newest.key);
  });

  it("marks backups past their retain-until expired, without findings", async () => {
    const s = await setup(2, {}, false);
    s.clock.t += 8 * DAY;
    const r = await s.verify();
    assert.equal(r.expired, 2);
    assert.equal(r.checked, 0);
    assert.deepEqual(r.findings, []);
    assert.deepEqual(
      s.catalog.listBackups().map((b) => b.status),
      ["expired", "expired"],
    );
  });

  it("does not call backups missing when their target now names another bucket", async () => {
    const s = await setup(1);
    const moved = new MemoryBucket(`moved-${n++}`, {
      defaultRetention: { mode: "COMPLIANCE", days: 7 },
    });
    moved.now = s.now;
    const config = { ...s.config, targets: { mem: { ...s.tc, bucket: moved.name } } };
    const r = await runVerify({
      config,
      catalog: s.catalog,
      targets: { mem: moved.target("mem") },
      log,
      now: s.now,
    });
    assert.deepEqual(r.findings, []);
    assert.equal(r.checked, 0);
    assert.match(r.notes.join("\n"), new RegExp(`bucket ${s.bucket.name} .* not checked`));
  });

  it("checks with at most verify.concurrency requests at a time", async () => {
    const s = await setup(12);
    let inFlight = 0;
    let most = 0;
    const reader = s.target.reader;
    const counting: ObjectStore = Object.assign(
      Object.create(Object.getPrototypeOf(reader)),
      reader,
      {
        bucket: reader.bucket,
        head: async (...a: Parameters<ObjectStore["head"]>) => {
          inFlight++;
          most = Math.max(most, inFlight);
          await new Promise((r) => setTimeout(r, 5));
          inFlight--;
          return reader.head(...a);
        },
        retention: (...a: Parameters<ObjectStore["retention"]>) => reader.retention(...a),
        lockState: () => reader.lockState(),
        lifecycle: () => reader.lifecycle(),
      },
    );
    const r = await s.verify({ targets: { mem: { ...s.target, reader: counting } } });
    assert.equal(r.checked, 12);
    assert.equal(most, s.config.verify.concurrency);
  });

  it("judgeBackup: a 404 is missing, a refused key is unreadable, other errors say the check failed", () => {
    const row = {
      id: 1,
      runId: 1,
      job: "j",
      target: "t",
      bucket: "b",
      key: "k",
      versionId: "v",
      size: 10,
      sha256: "",
      compression: "gzip" as const,
      createdAt: "",
      retentionMode: "COMPLIANCE" as const,
      retainUntil: "2030-01-01T00:00:00.000Z",
      status: "ok" as const,
      files: 1,
      manifestKey: null,
      manifestVersionId: null,
      parentId: null,
      chainId: 1,
    };
    const tc = targetConfig();
    const kind = (status: number | undefined) =>
      judgeBackup(row, { error: { status, message: "x" } }, tc).findings[0]?.kind;
    assert.equal(kind(404), "missing");
    assert.equal(kind(400), "unreadable");
    assert.equal(kind(403), "unreadable");
    assert.equal(kind(undefined), "check-failed");
    assert.deepEqual(
      judgeBackup(row, { size: 10, retention: undefined }, tc).findings.map((f) => f.kind),
      ["not-locked"],
    );
    assert.deepEqual(
      judgeBackup(
        row,
        { size: 10, retention: { mode: "COMPLIANCE", retainUntil: new Date("2031-01-01") } },
        tc,
      ).findings,
      [],
    );
  });
});

describe("keepLatestLocked (memory store, fake clock)", () => {
  it("moves the newest backup's retain-until forward, never backwards, and records it", async () => {
    const s = await setup(2);
    const [older, newest] = s.catalog.listBackups();
    assert.ok(older && newest);
    const before = Date.parse(newest.retainUntil as string);
    const olderBefore = older.retainUntil;

    // Half a day later it is less than 7 days ahead: extended to now + 7 days + the 1-day margin.
    s.clock.t += DAY / 2;
    const [e] = await extendLatestLocks({
      config: s.config,
      catalog: s.catalog,
      targets: s.targets,
      log,
      now: s.now,
    });
    assert.equal(e?.action, "extended");
    const wanted = s.clock.t + 8 * DAY;
    assert.equal(Date.parse(e?.to as string), wanted);
    assert.equal(Date.parse(s.catalog.backup(newest.id)?.retainUntil as string), wanted);
    const [ext] = s.catalog.lockExtensions(newest.id);
    assert.equal(Date.parse(ext?.oldRetainUntil as string), before);
    assert.equal(Date.parse(ext?.newRetainUntil as string), wanted);
    const v = s.bucket.versions.find((x) => x.versionId === newest.versionId);
    assert.equal(v?.retention?.retainUntil.getTime(), wanted);

    // Later, but still 7 days ahead: nothing to do. An earlier "now" (a clock set back): nor then.
    s.clock.t += DAY / 2;
    const [later] = await extendLatestLocks({
      config: s.config,
      catalog: s.catalog,
      targets: s.targets,
      log,
      now: s.now,
    });
    assert.equal(later?.action, "unchanged");
    s.clock.t -= DAY;
    const [again] = await extendLatestLocks({
      config: s.config,
      catalog: s.catalog,
      targets: s.targets,
      log,
      now: s.now,
    });
    assert.equal(again?.action, "unchanged");
    assert.equal(v?.retention?.retainUntil.getTime(), wanted);
    assert.equal(s.catalog.lockExtensions(newest.id).length, 1);
    assert.equal(
      s.catalog.backup(older.id)?.retainUntil,
      olderBefore,
      "only the newest is extended",
    );
  });

  it("verify extends as part of its run, and locks the newest backup again if immutd was stopped too long", async () => {
    const s = await setup(1);
    const [only] = s.catalog.listBackups();
    s.clock.t += 30 * DAY; // the lock ran out while nothing ran
    const r = await s.verify();
    assert.equal(r.expired, 1);
    assert.equal(r.extensions[0]?.action, "extended");
    assert.equal(s.catalog.backup(only?.id as number)?.status, "ok");
    assert.equal(
      Date.parse(s.catalog.backup(only?.id as number)?.retainUntil as string),
      s.clock.t + 8 * DAY,
    );
  });

  it("a refused extension is a finding", async () => {
    const s = await setup(1);
    s.clock.t += DAY;
    const { admin: _a, ...noAdmin } = s.target;
    const readerOnly = { ...noAdmin, writer: s.target.reader };
    const r = await s.verify({ targets: { mem: readerOnly } });
    assert.deepEqual(
      r.findings.map((f) => f.kind),
      ["lock-extension-failed"],
    );
    assert.match(r.findings[0]?.message ?? "", /cannot extend the retention of .* AccessDenied/);
  });
});
