/**
 * `immutd catalog rebuild` and `list --from-bucket` on the real server, through
 * the CLI: backups of two jobs, the catalog deleted, rebuilt on a "new machine"
 * whose config has the master key and the reader credential but a writer
 * credential that does not work, rows equal to the original row for row (ids
 * and runs aside), then restore as usual. Attacks: a forged later manifest
 * version written with the writer credential, manifests naming another
 * job's archive or another host, an archive version lost behind S3's back, a
 * hostile body, a delete marker on an archive. Faults through a proxy: a few
 * 500s are retried; a HEAD that keeps failing is one clear error and leaves
 * the catalog empty.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import {
  copyFileSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { DeleteObjectCommand, PutObjectCommand, type S3Client } from "@aws-sdk/client-s3";
import { deriveSseKey } from "../src/repo/keys.js";
import { encodeManifest, type Manifest } from "../src/repo/manifest.js";
import { manifestKey, objectKey, parseObjectKey } from "../src/repo/naming.js";
import { readManifest } from "../src/repo/snapshots.js";
import { closeTarget, openTarget } from "../src/store/s3.js";
import { listBackups, type TestConfig, writeConfig } from "./support/assurance.js";
import { CLI, runCli } from "./support/cli.js";
import { FaultProxy } from "./support/fault-proxy.js";
import {
  adminRemoveVersion,
  client,
  createLockedBucket,
  rgwTarget,
  type S3Env,
  s3env,
  uniqueBucket,
} from "./support/s3env.js";

interface Row {
  id: number;
  runId: number | null;
  job: string;
  key: string;
  versionId: string;
  sha256: string;
  size: number;
  manifestKey: string | null;
  manifestVersionId: string | null;
  [k: string]: unknown;
}

const sse = (key: Buffer) => ({
  SSECustomerAlgorithm: "AES256",
  SSECustomerKey: key.toString("base64"),
});

/** Rows without what a rebuild cannot know (row id, run), in key order. */
const comparable = (rows: Row[]) =>
  rows
    .map(({ id: _i, runId: _r, chainId: _c, ...rest }) => rest)
    .sort((a, b) => (a.key < b.key ? -1 : 1));

const BOGUS_WRITER = "not-the-writer-secret-0000000000000000000";

const SECOND_JOB = `  - name: raw
    target: local
    schedule: "0 4 * * *"
    compression: none
    paths: [DATA]
`;

describe("catalog rebuild (CLI, Ceph RGW)", () => {
  let env: S3Env;
  let main: S3Client;
  let writer: S3Client;
  let proxy: FaultProxy;
  before(async () => {
    env = s3env();
    main = client(env, env.main);
    writer = client(env, env.writer);
    proxy = await FaultProxy.start(env.endpoint, {
      caFile: env.caFile,
      certFile: join(env.caFile, "..", "cert.pem"),
      keyFile: join(env.caFile, "..", "key.pem"),
    });
  });
  after(async () => {
    main?.destroy();
    writer?.destroy();
    await proxy?.close();
  });

  const masterKey = (cfg: TestConfig) =>
    Buffer.from(readFileSync(join(cfg.dir, "master.key"), "utf8").trim(), "hex");

  /** A config with two jobs, backed up `times` times each. */
  async function backedUp(label: string, times = 2, over: Partial<S3Env> = {}) {
    const bucket = uniqueBucket(label);
    await createLockedBucket(env, bucket, 1);
    const cfg = writeConfig({ ...env, ...over }, { bucket });
    writeFileSync(
      cfg.file,
      `${readFileSync(cfg.file, "utf8")}${SECOND_JOB.replace("DATA", cfg.data)}`,
    );
    for (let i = 0; i < times; i++) {
      const r = await runCli(["--config", cfg.file, "backup"]);
      assert.equal(r.code, 0, r.stderr);
    }
    return { bucket, cfg, rows: await listBackups<Row>(cfg) };
  }

  /** The same config on a new machine: master key and reader credential, a writer that does not work, no catalog. */
  function newMachine(cfg: TestConfig, over: Partial<S3Env> = {}): TestConfig {
    const text = readFileSync(cfg.file, "utf8");
    const dir = mkdtempSync(join(tmpdir(), "immutd-newmachine-"));
    copyFileSync(join(cfg.dir, "master.key"), join(dir, "master.key"));
    let out = text.replaceAll(cfg.dir, dir).replace(env.writer.secretAccessKey, BOGUS_WRITER);
    out = out.replace(/\n\s+admin: .*/, "");
    if (over.endpoint) out = out.replace(env.endpoint, over.endpoint);
    // The data paths stay the old machine's (nothing is backed up here).
    out = out.replaceAll(`${dir}/data`, cfg.data);
    const file = join(dir, "config.yaml");
    writeFileSync(file, out, { mode: 0o600 });
    return { dir, file, data: cfg.data, secrets: cfg.secrets };
  }

  const cli = (cfg: TestConfig, ...args: string[]) => runCli(["--config", cfg.file, ...args]);

  it("rebuilds a lost catalog with the reader credential, row for row; restore works as usual; a non-empty catalog is refused unless --merge", async () => {
    const { cfg, rows } = await backedUp("rb");
    assert.equal(rows.length, 4);
    const fresh = newMachine(cfg);
    // Listing from the bucket needs no catalog, not even a readable one.
    writeFileSync(join(fresh.dir, "state-is-a-file"), "");
    const broken = { ...fresh, file: join(fresh.dir, "broken.yaml") };
    writeFileSync(
      broken.file,
      readFileSync(fresh.file, "utf8").replace(
        /catalog: .*/,
        `catalog: ${fresh.dir}/state-is-a-file/catalog.db`,
      ),
    );
    const ls = await cli(broken, "list", "--from-bucket", "--json");
    assert.equal(ls.code, 0, ls.stderr);
    const listed = JSON.parse(ls.stdout) as Row[];
    assert.equal(listed.length, 4);
    assert.ok(listed.every((r) => r.host === "assure" && r.status === "ok"));
    const lsRaw = await cli(broken, "list", "--from-bucket", "--job", "raw");
    assert.equal(lsRaw.code, 0, lsRaw.stderr);
    assert.equal(lsRaw.stdout.trim().split("\n").length, 3, lsRaw.stdout);

    const r = await cli(fresh, "catalog", "rebuild");
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /4 backups of host assure rebuilt/);
    for (const s of cfg.secrets) assert.ok(!r.stdout.includes(s) && !r.stderr.includes(s));
    const rebuilt = await listBackups<Row>(fresh);
    assert.deepEqual(comparable(rebuilt), comparable(rows));
    assert.ok(rebuilt.every((x) => x.runId === null));

    const again = await cli(fresh, "catalog", "rebuild");
    assert.equal(again.code, 2);
    assert.match(again.stderr, /already holds 4 backups .* --merge/);
    const merged = await cli(fresh, "catalog", "rebuild", "--merge");
    assert.equal(merged.code, 0, merged.stderr);
    assert.match(merged.stdout, /0 backups .* \(4 already recorded, left as they were\)/);
    assert.deepEqual(await listBackups<Row>(fresh), rebuilt);

    const dest = join(fresh.dir, "restored");
    const restored = await cli(fresh, "restore", "raw", "--to", dest);
    assert.equal(restored.code, 0, restored.stderr);
    assert.ok(readdirSync(dest, { recursive: true }).some((f) => String(f).endsWith("b.bin")));
    // verify keeps the newest backups locked with the writer credential: the new machine gets it back.
    writeFileSync(
      fresh.file,
      readFileSync(fresh.file, "utf8").replace(BOGUS_WRITER, env.writer.secretAccessKey),
    );
    const verified = await cli(fresh, "verify", "--deep");
    assert.equal(verified.code, 0, verified.stdout + verified.stderr);
  });

  it("attacks: a forged later version, manifests naming another job's archive or host, a lost archive version, a hostile body", async () => {
    const { bucket, cfg, rows } = await backedUp("rbx", 1);
    const mk = masterKey(cfg);
    const [files, raw] = [rows.find((r) => r.job === "files"), rows.find((r) => r.job === "raw")];
    assert.ok(files?.manifestKey && files.manifestVersionId && raw?.manifestKey);
    const place = {
      key: files.manifestKey,
      archiveKey: files.key,
      host: "assure",
      job: "files",
      createdAt: (parseObjectKey(files.key) as { createdAt: Date }).createdAt,
    };
    // Read with the reader credential through the code under test's own store (an S3 reader).
    const target = openTarget(rgwTarget(env, bucket));
    const real: Manifest = await readManifest(target.reader, bucket, mk, {
      ...place,
      versionId: files.manifestVersionId,
    });
    const put = (key: string, body: Buffer) =>
      writer.send(
        new PutObjectCommand({
          Bucket: bucket,
          Key: key,
          Body: body,
          ...sse(deriveSseKey(mk, bucket, key)),
        }),
      );
    // 1. A later version at files' manifest key, with another SHA-256.
    await put(
      files.manifestKey,
      encodeManifest({ ...real, archive: { ...real.archive, sha256: "0".repeat(64) } }),
    );
    // 2. A manifest under job raw that names files' archive.
    const at = new Date(Date.parse(real.createdAt) + 5000);
    const moved = objectKey({ prefix: "", host: "assure", job: "raw", at, compression: "gzip" });
    await put(manifestKey(moved), encodeManifest(real));
    // 3. One that says it is another host's.
    const other = objectKey({ prefix: "", host: "assure", job: "files", at, compression: "gzip" });
    await put(
      manifestKey(other),
      encodeManifest({ ...real, host: "web-9", archive: { ...real.archive, key: other } }),
    );
    // 4. A hostile body.
    const hostile = objectKey({
      prefix: "",
      host: "assure",
      job: "files",
      at: new Date(at.getTime() + 1000),
      compression: "gzip",
    });
    await put(manifestKey(hostile), Buffer.from("\x1f\x8b not really gzip"));
    // 5. raw's archive version lost behind S3's back.
    adminRemoveVersion(env, bucket, raw.key, raw.versionId);
    // 6. A delete marker on files' archive key hides nothing from a read by version ID.
    await main.send(new DeleteObjectCommand({ Bucket: bucket, Key: files.key }));

    const fresh = newMachine(cfg);
    const r = await cli(fresh, "catalog", "rebuild", "--json");
    assert.equal(r.code, 4, r.stderr);
    const report = JSON.parse(r.stdout) as {
      added: number;
      findings: { kind: string; key: string; message: string }[];
      warnings: { kind: string; key: string; message: string }[];
    };
    assert.equal(report.added, 1);
    assert.deepEqual(
      report.warnings.map((w) => w.kind),
      ["forged-version"],
    );
    const kinds = Object.fromEntries(report.findings.map((f) => [f.key, f.kind]));
    assert.deepEqual(kinds, {
      [manifestKey(moved)]: "unreadable",
      [manifestKey(other)]: "unreadable",
      [manifestKey(hostile)]: "unreadable",
      [raw.manifestKey]: "archive-missing",
    });
    for (const f of report.findings) assert.match(f.message, /s3:\/\/.* version \S+: /);
    const rebuilt = await listBackups<Row>(fresh);
    assert.deepEqual(comparable(rebuilt), comparable([files]));
    closeTarget(target);
  });

  it("faults: a few 500s are retried; a HEAD that keeps failing is one clear error and records nothing", async () => {
    proxy.clear();
    const { cfg, rows } = await backedUp("rbf", 1);
    const fresh = newMachine(cfg, { endpoint: proxy.endpoint });
    const flaky = proxy.fault({
      match: (q) => q.method === "GET" && q.path.endsWith(".manifest.json.gz"),
      times: 2,
      action: { kind: "status", status: 500, code: "InternalError" },
    });
    const r = await cli(fresh, "catalog", "rebuild");
    assert.equal(r.code, 0, r.stderr);
    assert.equal(flaky.hits, 2);
    assert.deepEqual(comparable(await listBackups<Row>(fresh)), comparable(rows));

    proxy.clear();
    const down = newMachine(cfg, { endpoint: proxy.endpoint });
    const dead = proxy.fault({
      match: (q) => q.method === "HEAD",
      times: Number.POSITIVE_INFINITY,
      action: { kind: "status", status: 503, code: "SlowDown" },
    });
    const failed = await cli(down, "catalog", "rebuild");
    assert.equal(failed.code, 1, failed.stderr);
    assert.ok(dead.hits >= 4, `${dead.hits} HEADs: retried`);
    const lines = failed.stderr
      .trim()
      .split("\n")
      .filter((l) => l.startsWith("immutd: "));
    assert.equal(lines.length, 1, failed.stderr);
    assert.match(
      lines[0] ?? "",
      /cannot read archive s3:\/\/\S+ version \S+ .*nothing was recorded/,
    );
    proxy.clear();
    assert.deepEqual(await listBackups<Row>(down), []);
    rmSync(down.dir, { recursive: true, force: true });
  });

  it("faults: a manifest download that stalls is retried; kill -9 mid-rebuild leaves the catalog empty", async () => {
    proxy.clear();
    const { cfg, rows } = await backedUp("rbs", 1);
    const stalling = newMachine(cfg, { endpoint: proxy.endpoint });
    writeFileSync(
      stalling.file,
      readFileSync(stalling.file, "utf8").replace(
        "partSizeMiB: 5",
        "partSizeMiB: 5\n    idleTimeoutSeconds: 2",
      ),
    );
    const stall = proxy.fault({
      match: (q) => q.method === "GET" && q.path.endsWith(".manifest.json.gz"),
      action: { kind: "stall", afterBytes: 20 },
    });
    const r = await cli(stalling, "catalog", "rebuild");
    assert.equal(r.code, 0, r.stderr);
    assert.equal(stall.hits, 1);
    assert.deepEqual(comparable(await listBackups<Row>(stalling)), comparable(rows));

    proxy.clear();
    const killed = newMachine(cfg, { endpoint: proxy.endpoint });
    proxy.fault({
      match: (q) => q.method === "HEAD",
      times: Number.POSITIVE_INFINITY,
      action: { kind: "delay", ms: 10_000 },
    });
    const seen = proxy.log.length;
    const child = spawn(process.execPath, [CLI, "--config", killed.file, "catalog", "rebuild"], {
      stdio: "ignore",
    });
    const ended = new Promise((resolve) => child.on("close", (_code, sig) => resolve(sig)));
    // Every manifest read, the HEADs of their archives on the way: the worst moment.
    while (!proxy.log.slice(seen).some((q) => q.method === "HEAD"))
      await new Promise((resolve) => setTimeout(resolve, 100));
    child.kill("SIGKILL");
    assert.equal(await ended, "SIGKILL", "killed while rebuilding");
    proxy.clear();
    assert.deepEqual(await listBackups<Row>(killed), []);
    const again = await cli(killed, "catalog", "rebuild");
    assert.equal(again.code, 0, again.stderr);
    assert.deepEqual(comparable(await listBackups<Row>(killed)), comparable(rows));
  });
});
