/**
 * Manifests on the real server, through the CLI: written beside the archive,
 * locked at least as long, decrypting with the key derived for the manifest's
 * own key, and an index that matches `tar -tv` of the archive. Then the
 * attacks (a forged manifest written with the writer credential, the recorded
 * version removed behind S3's back) and a fault (PutObject of the manifest
 * answered 500), each as verify reports it.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { gunzipSync, gzipSync } from "node:zlib";
import {
  GetObjectCommand,
  GetObjectRetentionCommand,
  PutObjectCommand,
  type S3Client,
} from "@aws-sdk/client-s3";
import { deriveSseKey } from "../src/repo/keys.js";
import { decodeManifest, type Manifest } from "../src/repo/manifest.js";
import { listBackups, type TestConfig, writeConfig } from "./support/assurance.js";
import { runCli } from "./support/cli.js";
import { FaultProxy } from "./support/fault-proxy.js";
import {
  adminRemoveVersion,
  client,
  createLockedBucket,
  type S3Env,
  s3env,
  uniqueBucket,
} from "./support/s3env.js";

interface Row {
  id: number;
  key: string;
  versionId: string;
  sha256: string;
  retainUntil: string;
  manifestKey: string | null;
  manifestVersionId: string | null;
}

interface Report {
  findings: { kind: string; message: string }[];
  warnings: { kind: string; message: string }[];
}

const sse = (key: Buffer) => ({
  SSECustomerAlgorithm: "AES256",
  SSECustomerKey: key.toString("base64"),
});

describe("manifests (CLI, Ceph RGW)", () => {
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

  async function getObject(bucket: string, key: string, versionId: string, sseKey: Buffer) {
    const res = await main.send(
      new GetObjectCommand({ Bucket: bucket, Key: key, VersionId: versionId, ...sse(sseKey) }),
    );
    return Buffer.from(
      await (res.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray(),
    );
  }

  async function verify(cfg: TestConfig): Promise<{ code: number | null; report: Report }> {
    const r = await runCli(["--config", cfg.file, "verify", "--json"]);
    return { code: r.code, report: JSON.parse(r.stdout) as Report };
  }

  async function backedUp(label: string) {
    const bucket = uniqueBucket(label);
    await createLockedBucket(env, bucket, 1);
    const cfg = writeConfig(env, { bucket });
    const r = await runCli(["--config", cfg.file, "backup"]);
    assert.equal(r.code, 0, r.stderr);
    const [row] = await listBackups<Row>(cfg);
    assert.ok(row?.manifestKey && row.manifestVersionId, JSON.stringify(row));
    const mKey = deriveSseKey(masterKey(cfg), bucket, row.manifestKey);
    return {
      bucket,
      cfg,
      row: row as Row & { manifestKey: string; manifestVersionId: string },
      mKey,
    };
  }

  it("backup writes a manifest, locked at least as long as the archive, whose index matches tar -tv", async () => {
    const { bucket, cfg, row, mKey } = await backedUp("mf");
    assert.equal(row.manifestKey, `${row.key}.manifest.json.gz`);
    const retention = async (key: string, versionId: string) =>
      (
        await main.send(
          new GetObjectRetentionCommand({ Bucket: bucket, Key: key, VersionId: versionId }),
        )
      ).Retention;
    const ra = await retention(row.key, row.versionId);
    const rm = await retention(row.manifestKey, row.manifestVersionId);
    assert.equal(rm?.Mode, "COMPLIANCE");
    assert.ok(
      (rm?.RetainUntilDate?.getTime() ?? 0) >= (ra?.RetainUntilDate?.getTime() ?? Infinity),
    );
    // The archive's key does not open it: it has its own derived key.
    const archiveKey = deriveSseKey(masterKey(cfg), bucket, row.key);
    await assert.rejects(getObject(bucket, row.manifestKey, row.manifestVersionId, archiveKey));
    const m = decodeManifest(await getObject(bucket, row.manifestKey, row.manifestVersionId, mKey));
    assert.equal(m.formatVersion, 1);
    assert.equal(m.host, "assure");
    assert.equal(m.job, "files");
    assert.deepEqual(
      { key: m.archive.key, versionId: m.archive.versionId, sha256: m.archive.sha256 },
      { key: row.key, versionId: row.versionId, sha256: row.sha256 },
    );
    assert.equal(m.encryption.scheme, "sse-c");
    assert.equal(m.parent, null);
    const archive = await getObject(bucket, row.key, row.versionId, archiveKey);
    const listing = execFileSync("tar", ["--numeric-owner", "-tvzf", "-"], { input: archive })
      .toString()
      .trim()
      .split("\n")
      .map((line) => {
        // drwx------ 1000/1000 0 2026-12-01 21:00 tmp/x/data/
        const [perm, owner, size, , , ...name] = line.split(/\s+/);
        return { perm, owner, size: Number(size), name: name.join(" ") };
      });
    assert.equal(m.files.length, listing.length);
    for (const [i, f] of m.files.entries()) {
      const t = listing[i];
      assert.equal(f.path, t?.name);
      assert.equal(`${f.uid}/${f.gid}`, t?.owner);
      assert.equal(f.size, t?.size);
      assert.equal(f.type === "directory", t?.perm?.startsWith("d"));
    }
    // And at each recorded offset of the uncompressed tar begins that entry's header.
    const tar = gunzipSync(archive);
    for (const f of m.files) {
      const name = tar
        .subarray(f.offset, f.offset + 100)
        .toString("utf8")
        .replace(/\0.*$/s, "");
      assert.equal(name, f.path);
    }
    const v = await verify(cfg);
    assert.equal(v.code, 0, JSON.stringify(v.report));
    assert.deepEqual(v.report.warnings, []);
  });

  it("a forged manifest written with the writer credential is a warning; the recorded version removed behind S3's back is a finding", async () => {
    const { bucket, cfg, row, mKey } = await backedUp("mfx");
    const m = decodeManifest(await getObject(bucket, row.manifestKey, row.manifestVersionId, mKey));
    const forged: Manifest = { ...m, files: [] };
    await writer.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: row.manifestKey,
        Body: gzipSync(JSON.stringify(forged)),
        ...sse(mKey),
      }),
    );
    let v = await verify(cfg);
    assert.equal(v.code, 0, JSON.stringify(v.report));
    assert.equal(v.report.warnings[0]?.kind, "manifest-replaced");
    assert.match(v.report.warnings[0]?.message ?? "", /is not the recorded one/);

    adminRemoveVersion(env, bucket, row.manifestKey, row.manifestVersionId);
    v = await verify(cfg);
    assert.equal(v.code, 4);
    assert.equal(v.report.findings[0]?.kind, "manifest");
    assert.match(v.report.findings[0]?.message ?? "", /no longer exists/);
  });

  it("a manifest PutObject answered 500 leaves the backup recorded, exits 5, and verify reports it", async () => {
    proxy.clear();
    const bucket = uniqueBucket("mf500");
    await createLockedBucket(env, bucket, 1);
    const cfg = writeConfig({ ...env, endpoint: proxy.endpoint }, { bucket });
    const fault = proxy.fault({
      match: (r) =>
        r.method === "PUT" && r.path.endsWith(".manifest.json.gz") && !r.query.has("retention"),
      times: 100,
      action: { kind: "status", status: 500, code: "InternalError" },
    });
    const r = await runCli(["--config", cfg.file, "backup"]);
    assert.equal(r.code, 5, r.stderr);
    assert.match(r.stderr, /manifest .* could not be written/);
    assert.ok(fault.hits >= 1);
    const [row] = await listBackups<Row>(cfg);
    assert.ok(row?.versionId);
    assert.equal(row?.manifestVersionId, null);
    proxy.clear();
    const v = await verify(cfg);
    assert.equal(v.code, 4);
    assert.equal(v.report.findings[0]?.kind, "manifest");
    assert.match(v.report.findings[0]?.message ?? "", /was not written/);
    // The archive itself is restorable without it.
    const restored = await runCli(["--config", cfg.file, "restore", "files", "--list"]);
    assert.equal(restored.code, 0, restored.stderr);
  });
});
