/**
 * Manifests: the pure format (encode/decode, byte names, offsets into the
 * uncompressed tar, key naming) and the backup and verify sides on the
 * in-memory store. The real server's side is in manifest.rgw.test.ts.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { buffer } from "node:stream/consumers";
import { describe, it } from "node:test";
import { gunzipSync, gzipSync } from "node:zlib";
import { extract } from "tar-stream";
import { Catalog } from "../src/catalog/catalog.js";
import { Secret } from "../src/config/secret.js";
import { runBackup } from "../src/flows/backup.js";
import { runVerify } from "../src/flows/verify.js";
import { createLogger } from "../src/log.js";
import { type ArchiveEntry, createArchive } from "../src/pipeline/archive.js";
import { fsPath, textOf } from "../src/pipeline/file-names.js";
import { deriveSseKey } from "../src/repo/keys.js";
import {
  decodeManifest,
  encodeManifest,
  fileName,
  linkName,
  type Manifest,
  ManifestIndex,
  manifestMismatch,
} from "../src/repo/manifest.js";
import { assertManifestKey, manifestKey, objectKey, parseObjectKey } from "../src/repo/naming.js";
import { MemoryBucket } from "../src/store/memory.js";
import type { Target } from "../src/store/store.js";
import { fullConfig, jobConfig, targetConfig } from "./support/target.js";

const work = mkdtempSync(join(tmpdir(), "immutd-manifest-"));
const tree = join(work, "tree");
mkdirSync(join(tree, "sub"), { recursive: true });
writeFileSync(join(tree, "a.txt"), "alpha\n");
writeFileSync(join(tree, "sub", "b.bin"), randomBytes(70_000));
// A Latin-1 name (not UTF-8) and a name that needs escaping in its printable form.
writeFileSync(Buffer.concat([fsPath(`${tree}/caf`), Buffer.from([0xe9])]), "latin1");
writeFileSync(join(tree, "tab\there"), "tab");
symlinkSync(Buffer.from([0x74, 0xff]), join(tree, "link"));
const log = createLogger({ level: "silent" });
const DAY = 86_400_000;

async function archiveOf(paths: string[]): Promise<{ tar: Buffer; entries: ArchiveEntry[] }> {
  const entries: ArchiveEntry[] = [];
  const a = createArchive({ paths, onEntry: (e) => entries.push({ ...e }) });
  const chunks: Buffer[] = [];
  for await (const c of a.stream) chunks.push(c as Buffer);
  await a.done;
  return { tar: Buffer.concat(chunks), entries };
}

/** The name of the first entry tar-stream reads from `tar`. */
async function firstName(tar: Buffer): Promise<string> {
  const ex = extract();
  const name = new Promise<string>((resolve, reject) => {
    ex.on("entry", (h, stream) => {
      resolve(h.name);
      stream.resume();
      ex.destroy();
    });
    ex.on("error", reject);
  });
  Readable.from([tar]).pipe(ex as never);
  return name;
}

function sample(files: Manifest["files"]): Manifest {
  return {
    formatVersion: 1,
    host: "h",
    job: "j",
    createdAt: "2026-12-01T00:00:00.000Z",
    archive: {
      key: "h/j/2026-12-01T000000Z-0a0b0c0d.tar.gz",
      versionId: "v1",
      size: 10,
      sha256: "ab".repeat(32),
      compression: "gzip",
    },
    encryption: { scheme: "sse-c", keyDerivation: "hkdf-sha256/immutd/sse-c/v1" },
    parent: null,
    files,
  };
}

describe("manifest format", () => {
  it("records each entry's header offset in the uncompressed tar, and its metadata", async () => {
    const { tar, entries } = await archiveOf([tree]);
    assert.ok(entries.length >= 7, `entries: ${entries.length}`);
    let raw = 0;
    for (const e of entries) {
      const at = tar.subarray(e.offset);
      if (textOf(e.name) !== null && (e.linkname === undefined || textOf(e.linkname) !== null)) {
        assert.equal(await firstName(at), textOf(e.name));
        continue;
      }
      // A byte name: the entry starts with immutd's pax header holding the raw bytes.
      raw++;
      assert.equal(String.fromCharCode(at[156] as number), "x");
      const record = Buffer.concat([Buffer.from(" path="), fsPath(e.name), Buffer.from("\n")]);
      assert.ok(at.subarray(512, 1024).includes(record), `pax path of ${e.name}`);
    }
    assert.equal(raw, 2, "caf\\xe9 and the link to t\\xff");
    const b = entries.find((e) => e.name.endsWith("sub/b.bin"));
    assert.equal(b?.size, 70_000);
    assert.equal(b?.type, "file");
    const link = entries.find((e) => e.name.endsWith("/link"));
    assert.equal(link?.type, "symlink");
    assert.equal(link?.linkname, "t\xff");
  });

  it("round-trips byte names and link targets through encode and decode", async () => {
    const { entries } = await archiveOf([tree]);
    const index = new ManifestIndex();
    for (const e of entries) index.add(e);
    const decoded = decodeManifest(encodeManifest(sample(index.files)));
    assert.equal(decoded.files.length, entries.length);
    for (const [i, f] of decoded.files.entries()) {
      const e = entries[i] as ArchiveEntry;
      assert.equal(fileName(f), e.name);
      assert.equal(linkName(f), e.linkname);
      assert.equal(f.offset, e.offset);
    }
    const latin = decoded.files.find((f) => f.path.endsWith("caf\\351"));
    assert.ok(latin?.pathBytes, "a non-UTF-8 name keeps its bytes");
    const tab = decoded.files.find((f) => f.path.endsWith("tab\\there"));
    assert.ok(tab?.pathBytes, "an escaped name keeps its bytes");
    assert.equal(decoded.files.find((f) => f.path.endsWith("a.txt"))?.pathBytes, undefined);
  });

  it("refuses what is not a manifest, one line each", () => {
    assert.throws(() => decodeManifest(Buffer.from("plain")), /not a manifest/);
    assert.throws(() => decodeManifest(gzipSync("[1]")), /format undefined/);
    const m = sample([]) as unknown as Record<string, unknown>;
    assert.throws(
      () => decodeManifest(gzipSync(JSON.stringify({ ...m, formatVersion: 4 }))),
      /format 4 is not one/,
    );
    assert.throws(
      () => decodeManifest(gzipSync(JSON.stringify({ ...m, archive: { key: 1 } }))),
      /malformed manifest/,
    );
    assert.throws(
      () => decodeManifest(gzipSync(JSON.stringify({ ...m, files: [{ path: "x" }] }))),
      /malformed manifest/,
    );
  });

  it("decodes manifests of zstd archives, and those of gzip and uncompressed ones as before", () => {
    for (const compression of ["zstd", "gzip", "none"] as const) {
      const m = sample([]);
      const key = m.archive.key.replace(/\.tar\.gz$/, compression === "zstd" ? ".tar.zst" : ".tar");
      const doc = { ...m, archive: { ...m.archive, key, compression } };
      assert.equal(decodeManifest(encodeManifest(doc)).archive.compression, compression);
      // As written by an older immutd: gzip of the JSON, no field of the new codec.
      assert.equal(decodeManifest(gzipSync(JSON.stringify(doc))).archive.compression, compression);
    }
    const m = sample([]);
    for (const compression of ["lz4", "ZSTD", 1, null])
      assert.throws(
        () =>
          decodeManifest(
            gzipSync(JSON.stringify({ ...m, archive: { ...m.archive, compression } })),
          ),
        /malformed manifest/,
        String(compression),
      );
  });

  it("says what differs from the catalog's record", () => {
    const m = sample([]);
    const row = { key: m.archive.key, versionId: "v1", size: 10, sha256: "ab".repeat(32) };
    assert.equal(manifestMismatch(m, row), undefined);
    assert.match(manifestMismatch(m, { ...row, versionId: "v2" }) ?? "", /version v1, not v2/);
    assert.match(manifestMismatch(m, { ...row, sha256: "cd".repeat(32) }) ?? "", /SHA-256/);
    assert.match(manifestMismatch(m, { ...row, key: "other.tar" }) ?? "", /names archive/);
  });

  it("has a key no archive selection or recovery takes for an archive", () => {
    const key = objectKey({
      prefix: "p/",
      host: "h",
      job: "j",
      at: new Date(),
      compression: "gzip",
    });
    const mk = manifestKey(key);
    assert.ok(mk.startsWith(key));
    assert.equal(parseObjectKey(mk), undefined);
    assert.notEqual(mk, key);
    assert.doesNotThrow(() => assertManifestKey(mk));
    assert.throws(() => assertManifestKey(key), /refusing to write/);
    assert.throws(() => assertManifestKey("h/j/x.manifest.json.gz"), /refusing to write/);
  });

  it("keeps the index of 25,000 files small", () => {
    const files = Array.from({ length: 25_000 }, (_, i) => ({
      path: `srv/data/d${Math.floor(i / 100)}/file-${i}.dat`,
      type: "file" as const,
      size: 1000 + i,
      mode: 0o100644,
      uid: 1000,
      gid: 1000,
      mtime: 1_764_000_000 + i,
      offset: i * 2048,
    }));
    const body = encodeManifest(sample(files));
    assert.ok(body.length < 1024 * 1024, `${body.length} bytes`);
    assert.equal(JSON.parse(gunzipSync(body).toString()).files.length, 25_000);
  });
});

function setup(name: string, targetOver: (t: Target) => Target = (t) => t) {
  const clock = { t: Date.parse("2026-11-01T00:00:00Z") };
  const now = () => new Date(clock.t);
  const bucket = new MemoryBucket(name, { defaultRetention: { mode: "COMPLIANCE", days: 7 } });
  bucket.now = now;
  const tc = targetConfig({
    name: "mem",
    bucket: bucket.name,
    retention: { mode: "COMPLIANCE", days: 7 },
  });
  const job = jobConfig({ name: "tree", target: "mem", paths: [tree] });
  const catalog = Catalog.open(join(work, `${name}.db`));
  const masterKey = randomBytes(32);
  const config = fullConfig({
    catalog: catalog.path,
    masterKey: new Secret(masterKey),
    host: "h",
    targets: { mem: tc },
    jobs: [job],
  });
  const target = targetOver(bucket.target("mem"));
  const backup = () => runBackup(job, { config, catalog, target, targetConfig: tc, log, now });
  const verify = () =>
    runVerify({ config, catalog, targets: { mem: bucket.target("mem") }, log, now });
  return { clock, bucket, catalog, masterKey, backup, verify };
}

describe("manifest per backup (memory store)", () => {
  it("writes the manifest beside the archive, encrypted with its own derived key, locked as long", async () => {
    const s = setup("m-ok");
    const r = await s.backup();
    assert.equal(r.status, "succeeded", r.error);
    assert.equal(r.warnings, 0);
    const row = s.catalog.backup(r.backupId as number);
    assert.equal(row?.manifestKey, manifestKey(r.key));
    const [archive, manifest] = s.bucket.versions;
    assert.equal(manifest?.key, row?.manifestKey);
    assert.equal(manifest?.versionId, row?.manifestVersionId);
    assert.ok(manifest?.retention && archive?.retention);
    assert.equal(manifest.retention.mode, "COMPLIANCE");
    assert.ok(manifest.retention.retainUntil >= archive.retention.retainUntil);
    const key = deriveSseKey(s.masterKey, s.bucket.name, manifest.key);
    const reader = s.bucket.target("mem").reader;
    const body = await buffer(await reader.get(manifest.key, manifest.versionId, key));
    assert.deepEqual(body, manifest.data);
    const archiveKey = deriveSseKey(s.masterKey, s.bucket.name, r.key);
    await assert.rejects(reader.get(manifest.key, manifest.versionId, archiveKey), /SSE-C key/);
    const m = decodeManifest(manifest.data);
    assert.equal(m.archive.versionId, archive.versionId);
    assert.equal(m.archive.sha256, row?.sha256);
    assert.equal(m.host, "h");
    assert.equal(m.job, "tree");
    assert.equal(m.parent, null);
    assert.ok(m.files.some((f) => f.path.endsWith("sub/b.bin") && f.size === 70_000));
    assert.deepEqual((await s.verify()).findings, []);
  });

  it("verify extends the manifest's lock together with the archive's", async () => {
    const s = setup("m-extend");
    const r = await s.backup();
    assert.equal(r.status, "succeeded", r.error);
    s.clock.t += 3 * DAY;
    const report = await s.verify();
    assert.deepEqual(report.findings, []);
    assert.equal(report.extensions[0]?.action, "extended");
    const [archive, manifest] = s.bucket.versions;
    assert.ok(archive?.retention && manifest?.retention);
    assert.ok(manifest.retention.retainUntil >= archive.retention.retainUntil);
  });

  it("a manifest version removed behind S3's back is a finding; old backups without one are not", async () => {
    const s = setup("m-gone");
    const r = await s.backup();
    assert.equal(r.status, "succeeded", r.error);
    const at = s.bucket.versions.findIndex((v) => v.key.endsWith(".manifest.json.gz"));
    s.bucket.versions.splice(at, 1);
    const report = await s.verify();
    assert.equal(report.findings[0]?.kind, "manifest");
    assert.match(report.findings[0]?.message ?? "", /no longer exists/);
    // keepLatestLocked cannot extend what is gone: said once more, about the manifest only.
    for (const f of report.findings.slice(1)) assert.match(f.message, /manifest s3:/);
    // A backup from before manifests: no key recorded, nothing to find.
    s.catalog.db
      .prepare("UPDATE backups SET manifest_key = NULL, manifest_version_id = NULL")
      .run();
    assert.deepEqual((await s.verify()).findings, []);
  });

  it("a manifest naming another archive is a finding; a newer version at its key is a warning", async () => {
    const s = setup("m-forged");
    const r = await s.backup();
    assert.equal(r.status, "succeeded", r.error);
    const stored = s.bucket.versions.find((v) => v.key.endsWith(".manifest.json.gz"));
    assert.ok(stored);
    const forged = decodeManifest(stored.data);
    forged.archive.sha256 = "00".repeat(32);
    // The writer may add a version at the manifest's key (it cannot change the recorded one).
    await s.bucket.target("mem").writer.putManifest({
      key: stored.key,
      body: encodeManifest(forged),
      sseKey: deriveSseKey(s.masterKey, s.bucket.name, stored.key),
    });
    let report = await s.verify();
    assert.deepEqual(report.findings, []);
    assert.equal(report.warnings[0]?.kind, "manifest-replaced");
    // The recorded version itself tampered with (a bucket-level attacker): a finding.
    stored.data = encodeManifest(forged);
    report = await s.verify();
    assert.equal(report.findings[0]?.kind, "manifest");
    assert.match(report.findings[0]?.message ?? "", /SHA-256/);
  });

  it("a manifest that cannot be written leaves the backup recorded, warns, and verify reports it", async () => {
    const s = setup("m-fail", (t) => ({
      ...t,
      writer: new Proxy(t.writer, {
        get: (store, prop) => {
          if (prop === "putManifest")
            return async () => {
              throw new Error("injected PutObject failure");
            };
          const v = Reflect.get(store, prop);
          return typeof v === "function" ? v.bind(store) : v;
        },
      }),
    }));
    const r = await s.backup();
    assert.equal(r.status, "succeeded", r.error);
    assert.equal(r.warnings, 1);
    const run = s.catalog.run(r.runId);
    assert.equal(run?.warnings, 1);
    const row = s.catalog.backup(r.backupId as number);
    assert.equal(row?.status, "ok");
    assert.equal(row?.manifestKey, manifestKey(r.key));
    assert.equal(row?.manifestVersionId, null);
    const report = await s.verify();
    assert.equal(report.findings[0]?.kind, "manifest");
    assert.match(report.findings[0]?.message ?? "", /was not written/);
  });
});
