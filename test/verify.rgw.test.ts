/**
 * `immutd verify` and keepLatestLocked against the real Ceph RGW: a healthy
 * bucket exits 0; a version the storage administrator removes behind S3's back
 * (radosgw-admin) and a removed default retention are findings (exit 4) that
 * name what is wrong; --deep compares the download with the catalog; the
 * newest backup's lock moves forward and never backwards.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  GetObjectRetentionCommand,
  PutObjectLockConfigurationCommand,
  type S3Client,
} from "@aws-sdk/client-s3";
import { Catalog } from "../src/catalog/catalog.js";
import { loadConfig } from "../src/config/config.js";
import { extendLatestLocks } from "../src/flows/verify.js";
import { createLogger } from "../src/log.js";
import { deriveSseKey } from "../src/repo/keys.js";
import { openTarget } from "../src/store/s3.js";
import { listBackups, type TestConfig, writeConfig } from "./support/assurance.js";
import { logRecords, runCli } from "./support/cli.js";
import {
  adminRemoveVersion,
  client,
  createLockedBucket,
  type S3Env,
  s3env,
  uniqueBucket,
} from "./support/s3env.js";

const DAY = 86_400_000;

interface Row {
  id: number;
  bucket: string;
  key: string;
  versionId: string;
  status: string;
  retainUntil: string;
}

describe("immutd verify (CLI, Ceph RGW)", () => {
  let env: S3Env;
  let main: S3Client;
  before(() => {
    env = s3env();
    main = client(env, env.main);
  });
  after(() => main?.destroy());

  /** A locked bucket with `n` backups made by the CLI. */
  async function withBackups(n: number, o: { keepLatestLocked?: boolean } = {}) {
    const bucket = uniqueBucket("vfy");
    await createLockedBucket(env, bucket, 1);
    const cfg = writeConfig(env, { bucket, ...o });
    for (let i = 0; i < n; i++) {
      const r = await runCli(["--config", cfg.file, "backup"]);
      assert.equal(r.code, 0, r.stderr);
    }
    return { bucket, cfg, rows: await list(cfg) };
  }
  const list = (cfg: TestConfig) => listBackups<Row>(cfg);
  const verify = (cfg: TestConfig, ...args: string[]) =>
    runCli(["--config", cfg.file, "verify", ...args]);

  it("exits 0 on a healthy bucket, shallow and deep", async () => {
    const { cfg } = await withBackups(2);
    const r = await verify(cfg);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.match(r.stdout, /2 backups checked, 1 bucket.*no findings/);
    const deep = await verify(cfg, "--deep", "--json");
    assert.equal(deep.code, 0, deep.stderr);
    const report = JSON.parse(deep.stdout) as {
      findings: unknown[];
      deepChecked: { ok: boolean }[];
    };
    assert.deepEqual(report.findings, []);
    assert.equal(report.deepChecked[0]?.ok, true);
    // No secret and no SSE-C key (in any encoding) reaches the output.
    const masterKey = Buffer.from(cfg.secrets[0] as string, "hex");
    const sseKeys = (await list(cfg)).map((row) => deriveSseKey(masterKey, row.bucket, row.key));
    const forbidden = [
      ...cfg.secrets,
      ...sseKeys.flatMap((k) => [k.toString("hex"), k.toString("base64")]),
    ];
    const out = r.stdout + r.stderr + deep.stdout + deep.stderr;
    for (const secret of forbidden) assert.ok(!out.includes(secret), "a secret reached the output");
  });

  it("exits 4 and names the backup whose version the storage administrator removed", async () => {
    const { bucket, cfg, rows } = await withBackups(2, { keepLatestLocked: false });
    const gone = rows[0] as Row;
    adminRemoveVersion(env, bucket, gone.key, gone.versionId);
    const r = await verify(cfg);
    assert.equal(r.code, 4, r.stderr + r.stdout);
    assert.match(r.stdout, new RegExp(`FINDING  missing  files  ${gone.key}  ${gone.versionId}`));
    assert.match(r.stderr, /verify found 1 problem/);
    // The report is the result: the finding is not logged on stderr a second time.
    assert.equal(
      logRecords(r.stderr).find((l) => l.kind === "missing"),
      undefined,
      r.stderr,
    );
    assert.equal((await list(cfg)).find((x) => x.id === gone.id)?.status, "missing");
    // Reported again on the next run: a lost backup does not go quiet.
    const again = await verify(cfg, "--json");
    assert.equal(again.code, 4);
    const report = JSON.parse(again.stdout) as {
      findings: { kind: string; key: string; versionId: string }[];
    };
    assert.deepEqual(
      report.findings.map((f) => [f.kind, f.key, f.versionId]),
      [["missing", gone.key, gone.versionId]],
    );
  });

  it("reports a bucket whose default retention was removed", async () => {
    const { bucket, cfg } = await withBackups(1);
    await main.send(
      new PutObjectLockConfigurationCommand({
        Bucket: bucket,
        ObjectLockConfiguration: { ObjectLockEnabled: "Enabled" },
      }),
    );
    const r = await verify(cfg, "--json");
    assert.equal(r.code, 4, r.stderr);
    const report = JSON.parse(r.stdout) as {
      findings: { kind: string; target: string; message: string }[];
    };
    assert.deepEqual(
      report.findings.map((f) => [f.kind, f.target]),
      [["no-default-retention", "local"]],
    );
    assert.match(
      report.findings[0]?.message ?? "",
      new RegExp(`bucket ${bucket}.*no default retention`),
    );
  });

  it("--deep reports a backup whose bytes no longer match the catalog and marks it corrupt", async () => {
    const { cfg, rows } = await withBackups(1, { keepLatestLocked: false });
    const row = rows[0] as Row;
    const catalog = Catalog.open(join(cfg.dir, "state", "catalog.db"));
    catalog.db.prepare("UPDATE backups SET sha256 = ? WHERE id = ?").run("0".repeat(64), row.id);
    catalog.close();
    const r = await verify(cfg, "--deep");
    assert.equal(r.code, 4, r.stderr + r.stdout);
    assert.match(
      r.stdout,
      new RegExp(`FINDING  checksum-mismatch  files  ${row.key}  ${row.versionId}`),
    );
    assert.equal((await list(cfg))[0]?.status, "corrupt");
  });

  it("keepLatestLocked extends a 1-day lock to 2 days with the writer subuser, and a shorter target is a no-op", async () => {
    const { bucket, cfg, rows } = await withBackups(2, { keepLatestLocked: false });
    const [older, newest] = rows as [Row, Row];
    const retention = async (r: Row) =>
      (
        await main.send(
          new GetObjectRetentionCommand({ Bucket: bucket, Key: r.key, VersionId: r.versionId }),
        )
      ).Retention;
    const before = await retention(newest);
    const olderBefore = await retention(older);
    const { config } = loadConfig(cfg.file);
    const tc = config.targets.local;
    assert.ok(tc);
    // Only the writer (creator subuser) and reader: no admin to fall back on.
    const { admin: _admin, ...target } = openTarget(tc);
    const catalog = Catalog.open(config.catalog);
    const log = createLogger({ level: "silent" });
    try {
      const [e] = await extendLatestLocks({ config, catalog, targets: { local: target }, log });
      assert.equal(e?.action, "extended", e?.message);
      const after = await retention(newest);
      assert.equal(after?.Mode, "COMPLIANCE");
      const days = ((after?.RetainUntilDate?.getTime() ?? 0) - Date.now()) / DAY;
      assert.ok(days > 1.99 && days < 2.01, `locked ${days} days ahead`);
      assert.equal(catalog.backup(newest.id)?.retainUntil, after?.RetainUntilDate?.toISOString());
      const [ext] = catalog.lockExtensions(newest.id);
      assert.equal(ext?.oldRetainUntil, before?.RetainUntilDate?.toISOString());
      assert.deepEqual(await retention(older), olderBefore, "only the newest backup is extended");

      // Half a day earlier "now": needs only now + 1 day, which the lock exceeds: no request, no change.
      const [again] = await extendLatestLocks({
        config,
        catalog,
        targets: { local: target },
        log,
        now: () => new Date(Date.now() - DAY / 2),
      });
      assert.equal(again?.action, "unchanged");
      assert.deepEqual(await retention(newest), after);
      assert.equal(catalog.lockExtensions(newest.id).length, 1);
    } finally {
      catalog.close();
      for (const s of [target.writer, target.reader])
        (s as { client?: S3Client }).client?.destroy();
    }
  });
});
