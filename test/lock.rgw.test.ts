/**
 * The lock of each backup against the real Ceph RGW, through the CLI: RGW 16
 * ignores Object Lock headers on multipart uploads, so a version gets whatever
 * the bucket default is when it completes. A before hook (it runs after the
 * preflight) changes that default with the main user's key, as an attacker
 * holding it could; immutd must still end with the version locked COMPLIANCE
 * for the configured days, or fail and record it "unlocked". verify reports
 * every backup locked short of its configured period and warns about delete
 * markers.
 */
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import {
  DeleteObjectCommand,
  GetObjectLockConfigurationCommand,
  GetObjectRetentionCommand,
  type S3Client,
} from "@aws-sdk/client-s3";
import { listBackups, type TestConfig, writeConfig } from "./support/assurance.js";
import { logRecords, runCli } from "./support/cli.js";
import { lockConfigHook, setDefaultRetention } from "./support/lock-config.js";
import { denySubusersRetention, removeBucketPolicy } from "./support/rgw-admin.js";
import { client, createLockedBucket, type S3Env, s3env, uniqueBucket } from "./support/s3env.js";

const DAY = 86_400_000;

interface Row {
  id: number;
  key: string;
  versionId: string;
  status: string;
  createdAt: string;
  retentionMode: string | null;
  retainUntil: string | null;
}

interface Report {
  findings: { kind: string; key: string | null; versionId: string | null; message: string }[];
  warnings: { kind: string; key: string | null; versionId: string | null; message: string }[];
}

describe("the lock of each backup (CLI, Ceph RGW)", () => {
  let env: S3Env;
  let main: S3Client;
  before(() => {
    env = s3env();
    main = client(env, env.main);
  });
  after(() => main?.destroy());

  const cli = (cfg: TestConfig, ...args: string[]) => runCli(["--config", cfg.file, ...args]);
  const list = (cfg: TestConfig) => listBackups<Row>(cfg);
  /** `verify --json` with the exit code it must have, and its findings as [kind, key, version]. */
  async function verifyJson(cfg: TestConfig, code: number) {
    const r = await cli(cfg, "verify", "--json");
    assert.equal(r.code, code, r.stderr);
    const report = JSON.parse(r.stdout) as Report;
    return { report, findings: report.findings.map((f) => [f.kind, f.key, f.versionId]) };
  }
  async function retention(bucket: string, row: Row) {
    const res = await main.send(
      new GetObjectRetentionCommand({ Bucket: bucket, Key: row.key, VersionId: row.versionId }),
    );
    return { mode: res.Retention?.Mode, until: res.Retention?.RetainUntilDate?.getTime() ?? 0 };
  }
  const beforeHook = (bucket: string, change: string) => [
    "hooks:",
    `  before: '${lockConfigHook(bucket, change)}'`,
  ];

  for (const [what, change, left] of [
    ["shortens the bucket default to 1 day", "COMPLIANCE 1", { Mode: "COMPLIANCE", Days: 1 }],
    ["switches the bucket default to GOVERNANCE", "GOVERNANCE 3", { Mode: "GOVERNANCE", Days: 3 }],
    ["removes the bucket default", "none", undefined],
  ] as const) {
    it(`a before hook that ${what}: the version still ends COMPLIANCE for the configured 3 days`, async () => {
      const bucket = uniqueBucket("hook");
      await createLockedBucket(env, bucket, 3);
      const cfg = writeConfig(env, {
        bucket,
        days: 3,
        keepLatestLocked: false,
        job: beforeHook(bucket, change),
      });
      const started = Date.now();
      const r = await cli(cfg, "backup");
      assert.equal(r.code, 0, r.stderr);
      // The hook did change the bucket between the preflight and the upload.
      const lock = await main.send(new GetObjectLockConfigurationCommand({ Bucket: bucket }));
      assert.deepEqual(lock.ObjectLockConfiguration?.Rule?.DefaultRetention, left);

      const [row] = await list(cfg);
      assert.ok(row);
      assert.equal(row.status, "ok");
      const server = await retention(bucket, row);
      assert.equal(server.mode, "COMPLIANCE");
      assert.ok(
        server.until >= started + 3 * DAY && server.until < Date.now() + 3 * DAY + 60_000,
        `locked until ${new Date(server.until).toISOString()}, 3 days after the upload`,
      );
      assert.equal(row.retentionMode, "COMPLIANCE");
      assert.equal(
        Date.parse(row.retainUntil ?? ""),
        server.until,
        "the catalog holds what the server reports",
      );
      const set = logRecords(r.stderr).find((l) => /set it explicitly/.test(String(l.msg)));
      assert.equal(set?.versionId, row.versionId, "the explicit lock is logged");
    });
  }

  it("PutObjectRetention refused: exit 3 naming the version, list and verify show it unlocked, verify locks it once allowed", async () => {
    const bucket = uniqueBucket("unlk");
    await createLockedBucket(env, bucket, 3);
    await denySubusersRetention(env, bucket);
    const cfg = writeConfig(env, {
      bucket,
      days: 3,
      admin: null,
      keepLatestLocked: false,
      job: beforeHook(bucket, "COMPLIANCE 1"),
    });
    const r = await cli(cfg, "backup");
    assert.equal(r.code, 3, r.stderr);
    const [row] = await list(cfg);
    assert.ok(row, "the version is recorded, never forgotten");
    assert.equal(row.status, "unlocked");
    assert.match(
      r.stderr,
      new RegExp(
        `s3://${bucket}/${row.key} version ${row.versionId} could not be locked COMPLIANCE 3 days .*AccessDenied.*recorded as unlocked`,
      ),
    );
    const server = await retention(bucket, row);
    assert.equal(Date.parse(row.retainUntil ?? ""), server.until, "the 1 day the default gave");
    assert.ok(server.until < Date.now() + 1.1 * DAY);
    assert.match((await cli(cfg, "list")).stdout, new RegExp(`unlocked\\s+${row.key}`));

    // The bucket is fixed; the version is still short and verify cannot lock it yet.
    await setDefaultRetention(env, bucket, { mode: "COMPLIANCE", days: 3 });
    const { report, findings } = await verifyJson(cfg, 4);
    assert.deepEqual(findings, [["retention-short", row.key, row.versionId]]);
    assert.match(report.findings[0]?.message ?? "", /locking it for its configured period failed/);

    await removeBucketPolicy(env, bucket);
    const second = await cli(cfg, "verify");
    assert.equal(second.code, 4, second.stderr);
    assert.match(second.stdout, /verify locked it COMPLIANCE until/);
    const locked = await retention(bucket, row);
    assert.equal(locked.mode, "COMPLIANCE");
    assert.ok(Math.abs(locked.until - (Date.parse(row.createdAt) + 3 * DAY)) < 2000);
    const third = await cli(cfg, "verify");
    assert.equal(third.code, 0, third.stdout + third.stderr);
    assert.equal((await list(cfg))[0]?.status, "ok");
  });

  it("verify reports an older backup locked short of its configured period although a newer good one exists", async () => {
    const bucket = uniqueBucket("short");
    await createLockedBucket(env, bucket, 1);
    const cfg = writeConfig(env, { bucket, days: 1 });
    assert.equal((await cli(cfg, "backup")).code, 0);
    // The retention is raised to 3 days: the older backup now falls short of its period.
    await setDefaultRetention(env, bucket, { mode: "COMPLIANCE", days: 3 });
    writeFileSync(
      cfg.file,
      readFileSync(cfg.file, "utf8").replace(
        "retention: { mode: COMPLIANCE, days: 1 }",
        "retention: { mode: COMPLIANCE, days: 3 }",
      ),
    );
    const b = await cli(cfg, "backup");
    assert.equal(b.code, 0, b.stderr);
    const [older, newer] = (await list(cfg)) as [Row, Row];
    assert.equal(newer.status, "ok");

    const { report, findings } = await verifyJson(cfg, 4);
    assert.deepEqual(findings, [["retention-short", older.key, older.versionId]]);
    assert.match(report.findings[0]?.message ?? "", /short of its configured 3 days/);
    const locked = await retention(bucket, older);
    assert.ok(Math.abs(locked.until - (Date.parse(older.createdAt) + 3 * DAY)) < 2000);
    const again = await cli(cfg, "verify");
    assert.equal(again.code, 0, again.stdout + again.stderr);
  });

  it("a delete marker the writer puts on a backup's key is a verify warning; verify still exits 0", async () => {
    const bucket = uniqueBucket("dm");
    await createLockedBucket(env, bucket, 1);
    const cfg = writeConfig(env, { bucket, days: 1, keepLatestLocked: false });
    assert.equal((await cli(cfg, "backup")).code, 0);
    const [row] = await list(cfg);
    assert.ok(row);
    const writer = client(env, env.writer);
    try {
      const res = await writer.send(new DeleteObjectCommand({ Bucket: bucket, Key: row.key }));
      assert.equal(res.DeleteMarker, true);
    } finally {
      writer.destroy();
    }
    const r = await cli(cfg, "verify");
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(
      r.stdout,
      new RegExp(`WARNING  delete-marker  files  ${row.key}  ${row.versionId}`),
    );
    assert.match(r.stdout, /hid its latest version.*still there and restorable/);
    assert.match(r.stdout, /, 1 warning in /);
    const { report } = await verifyJson(cfg, 0);
    assert.deepEqual(
      report.warnings.map((w) => [w.kind, w.versionId]),
      [["delete-marker", row.versionId]],
    );
  });
});
