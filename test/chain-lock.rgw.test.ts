/**
 * verify's chain-lock repair against the real Ceph RGW, as an operator runs
 * it (the CLI, keepLatestLocked off so nothing else extends a lock): the
 * newest point of a chain is locked longer behind immutd's back (the owner
 * extends it, as a tier promotion or a recovery would, without its parents);
 * verify extends the older members on the server to that date. When the
 * writer may not extend locks, the members are reported as breaking the
 * point instead. The memory-store side is in chain-lock.test.ts.
 */
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { GetObjectRetentionCommand, PutObjectRetentionCommand } from "@aws-sdk/client-s3";
import Database from "better-sqlite3";
import { cliWorkspace } from "./support/cli-workspace.js";
import { denySubusersRetention } from "./support/rgw-admin.js";
import { client, type S3Env, s3env } from "./support/s3env.js";

const DAY = 86_400_000;

interface Row {
  id: number;
  key: string;
  versionId: string;
  parentId: number | null;
  manifestKey: string;
  manifestVersionId: string;
  retainUntil: string;
}

describe("verify extends an older chain member to a later point's lock (CLI, Ceph RGW)", () => {
  let env: S3Env;
  before(() => {
    env = s3env();
  });

  /** A chain of three (one full, two incrementals), the newest locked 20 days longer by the owner. */
  async function chainWithLongerPoint(label: string) {
    const w = await cliWorkspace(env, label, { dirLabel: `chain-lock-${label}` });
    const { dir, bucket, cli } = w;
    const data = join(dir, "data");
    mkdirSync(data);
    w.writeConfig({
      host: "chain-lock-test",
      top: "keepLatestLocked: false\n",
      jobs: `  - name: data
    target: local
    paths: [${data}]
    incremental: { fullEvery: 10 }
`,
    });
    for (const content of ["one", "two", "three"]) {
      writeFileSync(join(data, "f.txt"), content);
      const r = await cli("backup", "data");
      assert.equal(r.code, 0, r.stderr);
    }
    const rows = () => {
      const db = new Database(join(dir, "catalog.db"), { readonly: true });
      try {
        return db
          .prepare(
            `SELECT id, object_key AS key, version_id AS versionId, parent_id AS parentId,
               manifest_key AS manifestKey, manifest_version_id AS manifestVersionId,
               retain_until AS retainUntil FROM backups ORDER BY created_at, id`,
          )
          .all() as Row[];
      } finally {
        db.close();
      }
    };
    const [m1, m2, point] = rows();
    assert.ok(m1 && m2 && point);
    assert.equal(point.parentId, m2.id);
    assert.equal(m2.parentId, m1.id);
    const owner = client(env, env.main);
    const until = new Date(Date.now() + 21 * DAY);
    for (const [Key, VersionId] of [
      [point.key, point.versionId],
      [point.manifestKey, point.manifestVersionId],
    ])
      await owner.send(
        new PutObjectRetentionCommand({
          Bucket: bucket,
          Key,
          VersionId,
          Retention: { Mode: "COMPLIANCE", RetainUntilDate: until },
        }),
      );
    const serverUntil = async (Key: string, VersionId: string) => {
      const r = await owner.send(new GetObjectRetentionCommand({ Bucket: bucket, Key, VersionId }));
      return r.Retention?.RetainUntilDate?.getTime() ?? 0;
    };
    for (const m of [m1, m2])
      assert.ok((await serverUntil(m.key, m.versionId)) < until.getTime() - 10 * DAY);
    return { bucket, cli, rows, until, serverUntil, members: [m1, m2], point, owner };
  }

  it("verify extends both older members (archive and manifest) to the newest point's lock and reports nothing", async () => {
    const s = await chainWithLongerPoint("chainx");
    const r = await s.cli("verify", "--json");
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    const report = JSON.parse(r.stdout) as { findings: unknown[]; extensions: unknown[] };
    assert.deepEqual(report.findings, []);
    assert.deepEqual(report.extensions, [], "keepLatestLocked is off");
    const wanted = s.until.getTime() - 1000;
    for (const m of s.members) {
      assert.ok((await s.serverUntil(m.key, m.versionId)) >= wanted, `backup ${m.id} archive`);
      assert.ok(
        (await s.serverUntil(m.manifestKey, m.manifestVersionId)) >= wanted,
        `backup ${m.id} manifest`,
      );
    }
    for (const m of s.rows().slice(0, 2))
      assert.ok(Date.parse(m.retainUntil) >= wanted, `catalog: backup ${m.id} ${m.retainUntil}`);
    s.owner.destroy();
  });

  it("a writer that may not extend locks: verify names the members as breaking the point (exit 4)", async () => {
    const s = await chainWithLongerPoint("chainy");
    await denySubusersRetention(env, s.bucket);
    const r = await s.cli("verify", "--json");
    assert.equal(r.code, 4, `${r.stdout}\n${r.stderr}`);
    const report = JSON.parse(r.stdout) as { findings: { kind: string; message: string }[] };
    const broken = report.findings.filter((f) => f.kind === "chain-broken");
    assert.equal(broken.length, 2, JSON.stringify(report.findings));
    for (const f of broken) {
      assert.match(f.message, /could not be extended/);
      assert.match(f.message, new RegExp(`backup ${s.point.id}`));
    }
    for (const m of s.members)
      assert.ok((await s.serverUntil(m.key, m.versionId)) < s.until.getTime() - 10 * DAY);
    s.owner.destroy();
  });
});
