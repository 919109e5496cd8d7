/**
 * Crash recovery against the real Ceph RGW (src/daemon/recovery.ts): `immutd backup`
 * killed with kill -9 at the worst moments, then `immutd backup`, `verify` or
 * the daemon started again without help. The child is stopped at an exact
 * request by test/support/hold-s3.ts and killed while the test watches the
 * bucket; no sleeping.
 */
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { before, describe, it } from "node:test";
import {
  CreateMultipartUploadCommand,
  GetObjectCommand,
  PutObjectCommand,
} from "@aws-sdk/client-s3";
import Database from "better-sqlite3";
import { deriveSseKey } from "../src/repo/keys.js";
import { openTarget } from "../src/store/s3.js";
import type { ObjectStore } from "../src/store/store.js";
import { CLI, DaemonProcess, logRecords, runCli } from "./support/cli.js";
import { HOLD_MARK, holdEnv } from "./support/hold-s3.js";
import {
  client,
  createLockedBucket,
  rgwTarget,
  type S3Env,
  s3env,
  targetYaml,
  uniqueBucket,
} from "./support/s3env.js";

const MiB = 1024 * 1024;
const HOST = "recovery-test";

interface Env {
  dir: string;
  cfg: string;
  bucket: string;
  catalog: string;
  masterKey: Buffer;
  /** The bucket as its owner sees it (the test's eyes, not immutd's). */
  admin: ObjectStore;
}

interface BackupRow {
  id: number;
  key: string;
  versionId: string;
  size: number;
  sha256: string | null;
  status: string;
  retentionMode: string | null;
  retainUntil: string | null;
  runId: number;
}

/** A child `immutd backup` whose stderr the test can wait on. */
class Child {
  readonly child: ChildProcess;
  stderr = "";
  readonly exited: Promise<number | null>;
  constructor(args: string[], env: NodeJS.ProcessEnv) {
    this.child = spawn(process.execPath, [CLI, ...args], {
      env: { ...process.env, IMMUTD_CONFIG: "", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child.stdout?.resume();
    this.child.stderr?.on("data", (d: Buffer) => {
      this.stderr += d.toString();
    });
    this.exited = new Promise((r) => this.child.on("close", (code) => r(code)));
  }
}

/** Polls until check() returns a value, failing after timeoutMs. */
async function until<T>(
  what: string,
  check: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 60_000,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

describe("crash recovery (Ceph RGW)", () => {
  let env: S3Env;
  before(() => {
    env = s3env();
  });

  async function setup(label: string, jobs: string): Promise<Env> {
    const dir = mkdtempSync(join(tmpdir(), `immutd-recovery-${label}-`));
    const bucket = uniqueBucket(label);
    await createLockedBucket(env, bucket, 1);
    const masterKey = randomBytes(32);
    writeFileSync(join(dir, "master.key"), `${masterKey.toString("hex")}\n`, { mode: 0o600 });
    mkdirSync(join(dir, "small"));
    writeFileSync(join(dir, "small", "a.txt"), "alpha\n");
    mkdirSync(join(dir, "big"));
    writeFileSync(join(dir, "big", "random.bin"), randomBytes(12 * MiB));
    const cfg = join(dir, "config.yaml");
    writeFileSync(
      cfg,
      `catalog: ${dir}/catalog.db
masterKeyFile: ${dir}/master.key
host: ${HOST}
targets:
${targetYaml(env, { bucket, extra: ["partSizeMiB: 5", "queueSize: 1"] })}jobs:
${jobs.replaceAll("DIR", dir)}`,
    );
    const admin = openTarget(rgwTarget(env, bucket)).admin as ObjectStore;
    return { dir, cfg, bucket, catalog: join(dir, "catalog.db"), masterKey, admin };
  }

  const job = (name: string, path: string, extra = "") =>
    `  - name: ${name}\n    target: local\n    schedule: "0 0 1 1 *"\n    catchUp: false\n    paths: [DIR/${path}]\n${extra}`;

  function query<T>(e: Env, sql: string, ...args: unknown[]): T[] {
    const db = new Database(e.catalog, { readonly: true });
    try {
      return db.prepare(sql).all(...args) as T[];
    } finally {
      db.close();
    }
  }
  const backups = (e: Env) =>
    query<BackupRow>(
      e,
      `SELECT id, object_key AS key, version_id AS versionId, size, sha256, status, run_id AS runId,
         retention_mode AS retentionMode, retain_until AS retainUntil FROM backups ORDER BY id`,
    );
  const runs = (e: Env, job: string) =>
    query<{ id: number; status: string; key: string; error: string | null }>(
      e,
      "SELECT id, status, object_key AS key, error FROM runs WHERE job = ? ORDER BY id",
      job,
    );

  /** `immutd backup JOB` stopped at a request; resolves once it is held there (its run row exists). */
  async function heldBackup(e: Env, name: string, command: string, when: "before" | "after") {
    const gate = join(e.dir, `gate-${randomBytes(4).toString("hex")}`);
    const c = new Child(["--config", e.cfg, "backup", name], holdEnv([{ command, when, gate }]));
    await until(`${name} held at ${command} ${when}`, () =>
      c.stderr.includes(`${HOLD_MARK} ${command} ${when}`) ? true : undefined,
    );
    return { c, release: () => writeFileSync(gate, "") };
  }

  async function kill9(c: Child): Promise<void> {
    c.child.kill("SIGKILL");
    await c.exited;
  }

  it("kill -9 right after CompleteMultipartUpload: the next backup records the version unverified with the server's size and retention; verify --deep settles it", async () => {
    // 12 MiB in 5 MiB parts: a multipart upload (a small archive is one PutObject).
    const e = await setup("complete", job("data", "big", "    compression: none\n"));
    const gate = join(e.dir, "never");
    const c = new Child(
      ["--config", e.cfg, "backup", "data"],
      holdEnv([{ command: "CompleteMultipartUploadCommand", when: "after", gate }]),
    );
    // Watch the bucket: the moment a version exists, the process dies (before its catalog row).
    const version = await until("a version in the bucket", async () => {
      const v = (await e.admin.listVersions(`${HOST}/data/`)).find((x) => !x.deleteMarker);
      if (v) c.child.kill("SIGKILL");
      return v;
    });
    await c.exited;
    assert.deepEqual(backups(e), [], "the killed process recorded no backup");
    const [dead] = runs(e, "data");
    assert.equal(dead?.status, "running");
    assert.equal(dead?.key, version.key);

    const sseKey = deriveSseKey(e.masterKey, e.bucket, version.key);
    const serverSize = (await e.admin.head(version.key, version.versionId, sseKey)).size;
    const serverRetention = await e.admin.retention(version.key, version.versionId);
    assert.ok(serverRetention, "the bucket default locked it");

    // No daemon: the next backup of the job reconciles the dead run first.
    const again = await runCli(["--config", e.cfg, "backup", "data"]);
    assert.equal(again.code, 0, again.stderr);
    const recovered = backups(e).find((b) => b.versionId === version.versionId);
    assert.deepEqual(recovered && { ...recovered, id: 0 }, {
      id: 0,
      key: version.key,
      versionId: version.versionId,
      size: serverSize,
      sha256: null,
      status: "unverified",
      retentionMode: serverRetention.mode,
      retainUntil: serverRetention.retainUntil.toISOString(),
      runId: dead.id,
    });
    const closed = runs(e, "data")[0];
    assert.equal(closed?.status, "interrupted");
    assert.match(
      closed?.error ?? "",
      /stopped without finishing this run.*recorded 1 version\(s\) at .* as unverified/,
    );
    assert.ok(
      logRecords(again.stderr).some(
        (r) => r.versionId === version.versionId && /as unverified/.test(String(r.msg)),
      ),
      again.stderr,
    );

    const list = await runCli(["--config", e.cfg, "list", "--json"]);
    assert.equal(list.code, 0, list.stderr);
    const listed = (JSON.parse(list.stdout) as BackupRow[]).find(
      (b) => b.versionId === version.versionId,
    );
    assert.equal(listed?.status, "unverified");
    assert.equal(listed?.sha256, null);

    // A plain verify is not silent about it; a deep one settles it.
    const shallow = await runCli(["--config", e.cfg, "verify", "--job", "data", "--json"]);
    assert.equal(shallow.code, 4, shallow.stderr);
    const findings = (
      JSON.parse(shallow.stdout) as { findings: { kind: string; versionId: string }[] }
    ).findings;
    assert.deepEqual(
      findings.map((f) => [f.kind, f.versionId]),
      [["unverified", version.versionId]],
    );
    const deep = await runCli(["--config", e.cfg, "verify", "--job", "data", "--deep"]);
    assert.equal(deep.code, 0, `${deep.stdout}\n${deep.stderr}`);
    const res = await client(env, env.main).send(
      new GetObjectCommand({
        Bucket: e.bucket,
        Key: version.key,
        VersionId: version.versionId,
        SSECustomerAlgorithm: "AES256",
        SSECustomerKey: sseKey.toString("base64"),
      }),
    );
    const bytes = await readAll(res.Body as Readable);
    const settled = backups(e).find((b) => b.versionId === version.versionId);
    assert.equal(settled?.status, "ok");
    assert.equal(settled?.sha256, createHash("sha256").update(bytes).digest("hex"));
    const later = await runCli(["--config", e.cfg, "verify", "--job", "data"]);
    assert.equal(later.code, 0, later.stdout);
  });

  it("kill -9 during the retention read-back: the version is already recorded (unlocked, with its SHA-256) and the next verify (no daemon) settles its lock", async () => {
    // A backup row is written as soon as CompleteMultipartUpload names the version,
    // before any retention call: a kill from then on cannot lose the version.
    const e = await setup("readback", job("data", "big", "    compression: none\n"));
    const { c } = await heldBackup(e, "data", "GetObjectRetentionCommand", "before");
    await kill9(c);
    const [version] = await e.admin.listVersions(`${HOST}/data/`);
    assert.ok(version, "the upload had completed");
    const [row] = backups(e);
    assert.deepEqual(
      [row?.versionId, row?.status, row?.size],
      [version.versionId, "unlocked", version.size],
    );
    assert.match(row?.sha256 ?? "", /^[0-9a-f]{64}$/);

    const v = await runCli(["--config", e.cfg, "verify", "--job", "data"]);
    assert.notEqual(v.code, 1, v.stderr);
    const retention = await e.admin.retention(version.key, version.versionId);
    assert.equal(retention?.mode, "COMPLIANCE");
    assert.deepEqual(
      backups(e).map((b) => [b.versionId, b.status, b.retainUntil]),
      [[version.versionId, "ok", retention?.retainUntil.toISOString()]],
    );
    assert.equal(runs(e, "data")[0]?.status, "interrupted");
    const deep = await runCli(["--config", e.cfg, "verify", "--job", "data", "--deep"]);
    assert.equal(deep.code, 0, `${deep.stdout}\n${deep.stderr}`);
    assert.equal(backups(e)[0]?.sha256, row?.sha256);
  });

  it("kill -9 mid-upload: the next verify (no daemon) aborts the dead run's upload and leaves one no run knows", async () => {
    const e = await setup("midway", job("big", "big", "    compression: none\n"));
    const { c } = await heldBackup(e, "big", "UploadPartCommand", "after");
    await kill9(c);
    const [left] = await e.admin.listUploads("");
    assert.ok(left, "kill -9 left the multipart upload");
    assert.equal(runs(e, "big")[0]?.status, "running");
    // Someone else's upload under the job's prefix: no run of this catalog knows its key.
    const stranger = `${HOST}/big/2026-01-01T000000Z-0badc0de.tar`;
    const created = await client(env, env.writer).send(
      new CreateMultipartUploadCommand({ Bucket: e.bucket, Key: stranger }),
    );

    const v = await runCli(["--config", e.cfg, "verify", "--job", "big"]);
    assert.notEqual(v.code, 1, v.stderr);
    const uploads = await e.admin.listUploads("");
    assert.deepEqual(
      uploads.map((u) => [u.key, u.uploadId]),
      [[stranger, created.UploadId]],
      "the dead run's upload is aborted, the stranger's is left alone",
    );
    const logs = logRecords(v.stderr);
    assert.ok(
      logs.some(
        (r) => r.uploadId === left.uploadId && /^aborted an incomplete/.test(String(r.msg)),
      ),
    );
    assert.ok(
      logs.some(
        (r) =>
          r.uploadId === created.UploadId &&
          /^left a multipart upload alone: no run/.test(String(r.msg)),
      ),
    );
    const [run] = runs(e, "big");
    assert.equal(run?.status, "interrupted");
    assert.deepEqual(backups(e), [], "nothing was completed, nothing is recorded");
  });

  it("a daemon starting while a manual backup holds its upload open leaves that upload alone", async () => {
    const e = await setup("race", job("race", "big", "    compression: none\n"));
    // The daemon is held between reading the catalog and listing the uploads:
    // the manual backup starts in that window (the race of issue 10, point 6).
    const daemonGate = join(e.dir, "daemon-go");
    const d = new DaemonProcess(
      ["--config", e.cfg],
      holdEnv([{ command: "ListMultipartUploadsCommand", when: "before", gate: daemonGate }]),
    );
    let manual: Awaited<ReturnType<typeof heldBackup>> | undefined;
    try {
      await until("the daemon's recovery held", () =>
        d.stderr.includes(`${HOLD_MARK} ListMultipartUploadsCommand before`) ? true : undefined,
      );
      manual = await heldBackup(e, "race", "CreateMultipartUploadCommand", "after");
      const [live] = await e.admin.listUploads("");
      assert.ok(live, "the manual backup's upload exists");
      writeFileSync(daemonGate, "");
      await d.waitFor((r) => r.msg === "immutd daemon started", 60_000, "daemon start");
      assert.deepEqual(
        (await e.admin.listUploads("")).map((u) => u.uploadId),
        [live.uploadId],
        "the daemon did not abort the live upload",
      );
      assert.ok(
        d.records.some(
          (r) =>
            r.uploadId === live.uploadId && /left a multipart upload alone/.test(String(r.msg)),
        ),
      );
      manual.release();
      assert.equal(await manual.c.exited, 0, manual.c.stderr);
      d.child.kill("SIGTERM");
      assert.equal((await d.exited).code, 0, d.stderr);
    } finally {
      d.child.kill("SIGKILL");
      manual?.c.child.kill("SIGKILL"); // held for minutes otherwise, when an assertion failed
    }
    assert.deepEqual(
      backups(e).map((b) => b.status),
      ["ok"],
    );
    assert.deepEqual(await e.admin.listUploads(""), []);
  });

  it("versions a writer planted at a dead run's key are recorded unverified and deep verify marks them corrupt, never ok", async () => {
    const e = await setup("planted", job("planted", "small"));
    // Held before its one PutObject (the archive is smaller than a part): the run row names the key.
    const { c } = await heldBackup(e, "planted", "PutObjectCommand", "before");
    await kill9(c);
    const [run] = runs(e, "planted");
    assert.ok(run?.key && run.status === "running");
    const key = run.key;
    // The attacker has the writer credential, not the master key: one version
    // under an SSE-C key of its own, one in plain (a valid tar.gz, so only the
    // encryption check can tell it from a backup).
    const writer = client(env, env.writer);
    const md5 = (b: Buffer) => createHash("md5").update(b).digest("base64");
    const foreignKey = randomBytes(32);
    const junk = randomBytes(3000);
    const a = await writer.send(
      new PutObjectCommand({
        Bucket: e.bucket,
        Key: key,
        Body: junk,
        ContentMD5: md5(junk),
        SSECustomerAlgorithm: "AES256",
        SSECustomerKey: foreignKey.toString("base64"),
        SSECustomerKeyMD5: md5(foreignKey),
      }),
    );
    const tarGz = execFileSync("tar", ["-czf", "-", "-C", e.dir, "small"]);
    const b = await writer.send(
      new PutObjectCommand({ Bucket: e.bucket, Key: key, Body: tarGz, ContentMD5: md5(tarGz) }),
    );

    const shallow = await runCli(["--config", e.cfg, "verify", "--job", "planted", "--json"]);
    assert.equal(shallow.code, 4, shallow.stderr);
    const rows = backups(e);
    assert.deepEqual(
      rows.map((r) => [r.versionId, r.status, r.sha256, r.size]).sort(),
      [
        [a.VersionId, "unverified", null, junk.length],
        [b.VersionId, "unverified", null, tarGz.length],
      ].sort(),
    );
    const deep = await runCli([
      "--config",
      e.cfg,
      "verify",
      "--job",
      "planted",
      "--deep",
      "--json",
    ]);
    assert.equal(deep.code, 4, deep.stderr);
    const report = JSON.parse(deep.stdout) as {
      findings: { kind: string; versionId: string }[];
      deepChecked: { versionId: string; ok: boolean }[];
    };
    // The key HEAD refuses is reported by the plain check too; each version is "unreadable" and nothing else.
    assert.deepEqual(
      [...new Set(report.findings.map((f) => `${f.kind} ${f.versionId}`))].sort(),
      [`unreadable ${a.VersionId}`, `unreadable ${b.VersionId}`].sort(),
    );
    assert.ok(report.deepChecked.every((d) => !d.ok));
    assert.deepEqual(
      backups(e).map((r) => r.status),
      ["corrupt", "corrupt"],
    );
    // A restore of the job picks neither: it has no good backup.
    const restore = await runCli(["--config", e.cfg, "restore", "planted", "--stdout"]);
    assert.equal(restore.code, 2, restore.stderr);
    assert.match(restore.stderr, /no good backup/);
  });
});
