/**
 * Keep policies on the shared Ceph RGW, at real-day scale: a backup run locks
 * its archive and manifest for the longest tier and tags both with
 * PutObjectTagging after the upload (RGW 16 drops x-amz-tagging on
 * CreateMultipartUpload), with the write-only subuser. Attackers: the writer
 * re-tags a backup to a shorter hold (the lock still refuses deletion; verify
 * reports the tag and sets it again); the admin weakens a tier rule (verify
 * reports it). Fault: every PutObjectTagging answered 500: the backup still
 * succeeds, locked, with a warning and no recorded tag, and verify tags it.
 * Expiry by lifecycle itself is in retention-lifecycle.rgw.test.ts.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Catalog } from "../src/catalog/catalog.js";
import type { KeepPolicy, TargetConfig } from "../src/config/config.js";
import { Secret } from "../src/config/secret.js";
import { runBackup } from "../src/flows/backup.js";
import { runInit } from "../src/flows/init.js";
import { runVerify } from "../src/flows/verify.js";
import { createLogger } from "../src/log.js";
import { KEEP_TAG } from "../src/retention/tiers.js";
import { closeTarget, openTarget } from "../src/store/s3.js";
import { writeConfig } from "./support/assurance.js";
import { CLI, runCli } from "./support/cli.js";
import { faultProxyFor } from "./support/cli-workspace.js";
import type { FaultProxy } from "./support/fault-proxy.js";
import { HOLD_MARK, holdEnv } from "./support/hold-s3.js";
import { createLockedBucket, rgwTarget, type S3Env, s3env, uniqueBucket } from "./support/s3env.js";
import { fullConfig, jobConfig } from "./support/target.js";

const POLICY: KeepPolicy = { daily: 7, weekly: 4, monthly: 12 };
const log = createLogger({ level: "silent" });

describe("keep policy on RGW: locks, tags, attackers, faults", { timeout: 300_000 }, () => {
  let env: S3Env;
  let proxy: FaultProxy;
  const work = mkdtempSync(join(tmpdir(), "immutd-keep-rgw-"));
  const tree = join(work, "tree");
  mkdirSync(tree);
  writeFileSync(join(tree, "a.bin"), randomBytes(100_000));

  before(async () => {
    env = s3env();
    proxy = await faultProxyFor(env);
  });
  after(() => proxy.close());

  async function setup(over: Partial<TargetConfig> = {}) {
    const bucket = uniqueBucket("keep");
    await createLockedBucket(env, bucket, 1);
    const tc = rgwTarget(env, bucket, over);
    const target = openTarget(tc);
    const job = jobConfig({
      name: "tree",
      target: tc.name,
      paths: [tree],
      keep: POLICY,
      timezone: "UTC",
    });
    const catalog = Catalog.open(join(work, `${bucket}.db`));
    const config = fullConfig({
      catalog: catalog.path,
      masterKey: new Secret(randomBytes(32)),
      host: "h",
      targets: { [tc.name]: tc },
      jobs: [job],
    });
    const init = await runInit({ target, targetConfig: tc, log, policies: [POLICY] });
    assert.deepEqual(init.problems, []);
    const backup = () => runBackup(job, { config, catalog, target, targetConfig: tc, log });
    const verify = (o: { deep?: true } = {}) =>
      runVerify({ config, catalog, targets: { [tc.name]: target }, log, ...o });
    return { bucket, tc, target, job, catalog, config, backup, verify };
  }

  it("locks the first backup of the day, week and month for 12 months and tags archive and manifest (writer, after the upload)", async () => {
    const s = await setup();
    try {
      const r = await s.backup();
      assert.equal(r.status, "succeeded", r.error);
      const [row] = s.catalog.listBackups();
      assert.ok(row);
      assert.equal(row.tiers, "daily,weekly,monthly");
      assert.equal(row.keepTag, "monthly-12");
      const created = new Date(row.createdAt);
      const monthLater = new Date(created);
      monthLater.setUTCMonth(monthLater.getUTCMonth() + 12);
      for (const [key, versionId] of [
        [row.key, row.versionId],
        [row.manifestKey as string, row.manifestVersionId as string],
      ] as const) {
        const lock = await s.target.reader.retention(key, versionId);
        assert.equal(lock?.mode, "COMPLIANCE");
        assert.ok(
          Math.abs((lock?.retainUntil.getTime() ?? 0) - monthLater.getTime()) < 60_000,
          `${key} locked until ${lock?.retainUntil.toISOString()}, not ${monthLater.toISOString()}`,
        );
        assert.equal((await s.target.reader.tags(key, versionId))[KEEP_TAG], "monthly-12");
      }
      // A second backup the same day stands for no tier: the floor.
      const r2 = await s.backup();
      assert.equal(r2.status, "succeeded", r2.error);
      const second = s.catalog.listBackups()[1];
      assert.equal(second?.keepTag, "floor-1");
      assert.equal(
        (await s.target.reader.tags(second?.key as string, second?.versionId as string))[KEEP_TAG],
        "floor-1",
      );
      const rules = await s.target.admin?.lifecycle();
      assert.deepEqual(
        rules
          ?.filter((x) => x.tag)
          .map((x) => `${x.tag?.value}:${x.expirationDays}`)
          .sort(),
        ["daily-7:14", "floor-1:8", "monthly-12:379", "weekly-4:35"],
      );
      assert.deepEqual((await s.verify()).findings, []);
    } finally {
      s.catalog.close();
      closeTarget(s.target);
    }
  });

  it("attacker: the writer re-tags a backup to expire early: the lock holds, verify reports it and tags it again", async () => {
    const s = await setup();
    try {
      assert.equal((await s.backup()).status, "succeeded");
      const [row] = s.catalog.listBackups();
      assert.ok(row);
      await s.target.writer.putTags(row.key, row.versionId, { [KEEP_TAG]: "floor-1" });
      assert.equal((await s.target.reader.tags(row.key, row.versionId))[KEEP_TAG], "floor-1");
      // The tag protects nothing and endangers nothing: deleting the version is refused, for the admin too.
      const admin = s.target.admin as NonNullable<typeof s.target.admin>;
      const { DeleteObjectCommand } = await import("@aws-sdk/client-s3");
      await assert.rejects(
        (admin as unknown as { client: { send(c: unknown): Promise<unknown> } }).client.send(
          new DeleteObjectCommand({ Bucket: s.bucket, Key: row.key, VersionId: row.versionId }),
        ),
        /AccessDenied|locked|retention/i,
      );
      const report = await s.verify({ deep: true });
      const f = report.findings.filter((x) => x.kind === "keep-tag");
      assert.equal(f.length, 1, JSON.stringify(report.findings));
      assert.equal(f[0]?.versionId, row.versionId);
      assert.match(
        f[0]?.message ?? "",
        /is tagged immutd-keep=floor-1, not immutd-keep=monthly-12/,
      );
      assert.equal((await s.target.reader.tags(row.key, row.versionId))[KEEP_TAG], "monthly-12");
      assert.deepEqual((await s.verify()).findings, []);
    } finally {
      s.catalog.close();
      closeTarget(s.target);
    }
  });

  it("verify reads keep tags back only on --deep: a plain run sends no GetObjectTagging, --deep one per backup and finds a tag removed or changed", async () => {
    const s = await setup();
    const viaProxy = openTarget({ ...s.tc, endpoint: proxy.endpoint });
    const tagReads = async (deep: boolean) => {
      const from = proxy.log.length;
      const report = await runVerify({
        config: s.config,
        catalog: s.catalog,
        targets: { [s.tc.name]: viaProxy },
        log,
        ...(deep ? { deep: true } : {}),
      });
      const reads = proxy.log
        .slice(from)
        .filter((r) => r.method === "GET" && r.query.has("tagging")).length;
      return { report, reads };
    };
    try {
      for (let i = 0; i < 3; i++) assert.equal((await s.backup()).status, "succeeded");
      const rows = s.catalog.listBackups();
      assert.ok(rows.every((r) => r.keepTag !== null));
      const plain = await tagReads(false);
      assert.deepEqual(plain.report.findings, []);
      assert.equal(plain.reads, 0, "a plain verify trusts the tags the catalog recorded");
      const deep = await tagReads(true);
      assert.deepEqual(deep.report.findings, []);
      assert.equal(deep.reads, 3, "--deep reads each backup's tag");
      // Attacker (the writer): the first backup's tag changed, the second's removed.
      const [a, b] = rows as [(typeof rows)[0], (typeof rows)[0]];
      await s.target.writer.putTags(a.key, a.versionId, { [KEEP_TAG]: "floor-1" });
      await s.target.writer.putTags(b.key, b.versionId, {});
      const found = await tagReads(true);
      const f = found.report.findings.filter((x) => x.kind === "keep-tag");
      assert.equal(f.length, 2, JSON.stringify(found.report.findings));
      assert.match(
        f.find((x) => x.versionId === a.versionId)?.message ?? "",
        new RegExp(`is tagged immutd-keep=floor-1, not immutd-keep=${a.keepTag}`),
      );
      assert.match(
        f.find((x) => x.versionId === b.versionId)?.message ?? "",
        new RegExp(`has no immutd-keep tag, not immutd-keep=${b.keepTag}`),
      );
      assert.equal((await s.target.reader.tags(a.key, a.versionId))[KEEP_TAG], a.keepTag);
      assert.equal((await s.target.reader.tags(b.key, b.versionId))[KEEP_TAG], b.keepTag);
      assert.deepEqual((await tagReads(true)).report.findings, []);
    } finally {
      s.catalog.close();
      closeTarget(s.target);
      closeTarget(viaProxy);
    }
  });

  it("attacker: a tier rule weakened with the admin credential is a verify finding, and init restores it", async () => {
    const s = await setup();
    try {
      assert.equal((await s.backup()).status, "succeeded");
      const admin = s.target.admin as NonNullable<typeof s.target.admin>;
      const rules = await admin.lifecycle();
      await admin.putLifecycle(
        rules.map((r) => {
          if (r.tag?.value !== "monthly-12") return r;
          const { native: _native, ...rest } = r;
          return { ...rest, expirationDays: 10 };
        }),
      );
      const report = await s.verify();
      const f = report.findings.filter((x) => x.kind === "lifecycle-tier-rule");
      assert.equal(f.length, 1, JSON.stringify(report.findings));
      assert.match(
        f[0]?.message ?? "",
        /immutd-keep-monthly-12 expires current versions tagged immutd-keep=monthly-12 after 10 days, sooner than their monthly-12 hold \(372 days\)/,
      );
      const init = await runInit({ target: s.target, targetConfig: s.tc, log, policies: [POLICY] });
      assert.ok(init.changed);
      assert.deepEqual((await s.verify()).findings, []);
    } finally {
      s.catalog.close();
      closeTarget(s.target);
    }
  });

  it("fault: every PutObjectTagging answered 500: the backup succeeds locked, warns, records no tag; verify tags it", async () => {
    const bucket = uniqueBucket("keepf");
    await createLockedBucket(env, bucket, 1);
    const direct = rgwTarget(env, bucket);
    const viaProxy = { ...direct, endpoint: proxy.endpoint };
    const fault = proxy.fault({
      match: (r) => r.method === "PUT" && r.query.has("tagging"),
      times: Number.POSITIVE_INFINITY,
      action: { kind: "status", status: 500 },
    });
    const target = openTarget(viaProxy);
    const good = openTarget(direct);
    const job = jobConfig({
      name: "tree",
      target: direct.name,
      paths: [tree],
      keep: POLICY,
      timezone: "UTC",
    });
    const catalog = Catalog.open(join(work, `${bucket}.db`));
    const config = fullConfig({
      catalog: catalog.path,
      masterKey: new Secret(randomBytes(32)),
      host: "h",
      targets: { [direct.name]: direct },
      jobs: [job],
    });
    try {
      await runInit({ target: good, targetConfig: direct, log, policies: [POLICY] });
      const r = await runBackup(job, { config, catalog, target, targetConfig: viaProxy, log });
      assert.equal(r.status, "succeeded", r.error);
      assert.ok(fault.hits >= 1);
      assert.ok(r.warnings >= 1);
      const [row] = catalog.listBackups();
      assert.ok(row);
      assert.equal(row.keepTag, null);
      assert.equal(row.tiers, "daily,weekly,monthly");
      const lock = await good.reader.retention(row.key, row.versionId);
      assert.ok((lock?.retainUntil.getTime() ?? 0) > Date.now() + 300 * 86_400_000);
      assert.deepEqual(await good.reader.tags(row.key, row.versionId), {});
      proxy.clear();
      const report = await runVerify({ config, catalog, targets: { [direct.name]: good }, log });
      assert.deepEqual(
        report.findings.map((f) => f.kind),
        [],
        JSON.stringify(report.findings),
      );
      assert.equal((await good.reader.tags(row.key, row.versionId))[KEEP_TAG], "monthly-12");
      assert.equal(catalog.listBackups()[0]?.keepTag, "monthly-12");
    } finally {
      proxy.clear();
      catalog.close();
      closeTarget(target);
      closeTarget(good);
    }
  });

  it("CLI: init writes the tier rules, list shows tiers and expiry, plan --json what goes when and the steady state, doctor says OK", async () => {
    const bucket = uniqueBucket("keepcli");
    const cfg = writeConfig(env, {
      bucket,
      job: ["timezone: UTC", "keep: { daily: 7, weekly: 4 }"],
    });
    const cli = (...a: string[]) => runCli(["--config", cfg.file, ...a]);
    const init = await cli("init");
    assert.equal(init.code, 0, init.stderr + init.stdout);
    assert.match(
      init.stdout,
      /add\s+lifecycle immutd-keep-weekly-4\s+current versions tagged immutd-keep=weekly-4 expire after 35 days, then are removed 1 day later \(never while locked\)/,
    );
    for (let i = 0; i < 2; i++) {
      const b = await cli("backup", "files");
      assert.equal(b.code, 0, b.stderr);
    }
    const list = await cli("list");
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, /VERSION\s+TIERS\s+EXPIRES/);
    // KIND and CHAIN (incremental backups) follow the keep columns.
    assert.match(list.stdout, /\S+\s+daily,weekly\s+\d{4}-\d{2}-\d{2}\s+full\s+\d+ *\n/);
    assert.match(list.stdout, /\s-\s+kept \(newest\)\s+full\s+\d+ *\n/);
    const json = JSON.parse((await cli("list", "--json")).stdout) as {
      keepTag: string;
      expiresAfter: string | null;
    }[];
    assert.deepEqual(
      json.map((r) => r.keepTag),
      ["weekly-4", "floor-1"],
    );
    const first = json[0]?.expiresAfter ?? "";
    // weekly-4: 28 days + 7 grace + 1 day after creation.
    assert.ok(Math.abs(Date.parse(first) - (Date.now() + 36 * 86_400_000)) < 3_600_000, first);
    assert.equal(json[1]?.expiresAfter, null);
    const plan = await cli("plan", "--json");
    assert.equal(plan.code, 0, plan.stderr);
    const [p] = JSON.parse(plan.stdout) as {
      job: string;
      noExpiry: string | null;
      backups: { tag: string; removedAfter: string | null; note: string | null }[];
      steadyState: { backups: number; bytes: number; byTag: Record<string, number> };
    }[];
    assert.equal(p?.noExpiry, null);
    assert.deepEqual(
      p?.backups.map((b) => [b.tag, b.note]),
      [
        ["weekly-4", null],
        ["floor-1", "newest"],
      ],
    );
    // One run a day, {daily: 7, weekly: 4}, floor 1, grace 7: the daily ones for 15 days, weekly ones for 36.
    assert.ok(
      (p?.steadyState.backups ?? 0) >= 17 && (p?.steadyState.backups ?? 0) <= 21,
      JSON.stringify(p?.steadyState),
    );
    assert.ok((p?.steadyState.bytes ?? 0) > 0);
    const text = await cli("plan");
    assert.match(
      text.stdout,
      /job files \(target local\): keep daily 7, weekly 4\n {2}steady state: \d+ backups, about/,
    );
    const doctor = await cli("doctor", "--json");
    const checks = JSON.parse(doctor.stdout) as
      | { checks?: { name: string; status: string }[] }[]
      | { name: string; status: string }[];
    const flat = JSON.stringify(checks);
    assert.match(flat, /"name":"keep policy","status":"OK"/);
    assert.match(flat, /"name":"keep tagging","status":"OK"/);
  });

  it("fault: kill -9 at the archive's PutObjectTagging: the version is recorded and locked for its tiers; the next verify tags it", async () => {
    const bucket = uniqueBucket("keepk");
    const cfg = writeConfig(env, {
      bucket,
      job: ["timezone: UTC", "keep: { daily: 7, monthly: 6 }"],
    });
    const init = await runCli(["--config", cfg.file, "init"]);
    assert.equal(init.code, 0, init.stdout + init.stderr);
    const gate = join(cfg.dir, "gate");
    const child = spawn(process.execPath, [CLI, "--config", cfg.file, "backup", "files"], {
      env: {
        ...process.env,
        IMMUTD_CONFIG: "",
        ...holdEnv([{ command: "PutObjectTaggingCommand", when: "before", gate }]),
      },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    const exited = new Promise((r) => child.on("close", r));
    for (let i = 0; !stderr.includes(`${HOLD_MARK} PutObjectTaggingCommand before`); i++) {
      assert.ok(i < 3000, `never reached PutObjectTagging: ${stderr}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    child.kill("SIGKILL");
    await exited;
    const rows = JSON.parse((await runCli(["--config", cfg.file, "list", "--json"])).stdout) as {
      key: string;
      versionId: string;
      status: string;
      keepTag: string | null;
      retainUntil: string;
    }[];
    assert.equal(rows.length, 1);
    const [row] = rows;
    assert.ok(row);
    // Locked for its monthly tier before the tag was asked for; no tag recorded.
    assert.deepEqual([row.status, row.keepTag], ["ok", null]);
    assert.ok(Date.parse(row.retainUntil) > Date.now() + 150 * 86_400_000, row.retainUntil);
    const t = openTarget(rgwTarget(env, bucket));
    try {
      assert.deepEqual(await t.reader.tags(row.key, row.versionId), {});
      const v = await runCli(["--config", cfg.file, "verify"]);
      assert.equal(v.code, 0, v.stdout + v.stderr);
      assert.match(
        v.stdout,
        /PROMOTED {2}files {2}\S+: stands for daily, monthly, tagged immutd-keep=monthly-6/,
      );
      assert.equal((await t.reader.tags(row.key, row.versionId))[KEEP_TAG], "monthly-6");
    } finally {
      closeTarget(t);
    }
  });
});
