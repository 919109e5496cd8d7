/**
 * The catalog as a cache of the bucket, on the in-memory store: listing and
 * reading manifests (src/repo/snapshots.ts), rebuilding the catalog's rows from them
 * (src/catalog/rebuild.ts, Catalog.importBackups), the attacks on what is believed (a
 * later version at a manifest key, versions stored at the same moment, a
 * manifest under another job, a lost archive version, a hostile body, a size
 * that does not match), a failing server (nothing recorded), and catalogs
 * migrated from schema 2 and 3 taking rebuilt rows. The real server's side is
 * rebuild.rgw.test.ts.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { copyFileSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import { type BackupRow, Catalog } from "../src/catalog/catalog.js";
import { type ScanResult, scanTarget, toImported } from "../src/catalog/rebuild.js";
import { Secret } from "../src/config/secret.js";
import { StorageError } from "../src/errors.js";
import { maxAge, runAudit } from "../src/flows/audit.js";
import { runBackup } from "../src/flows/backup.js";
import { backupsFromBucket, listJob, manifestOf } from "../src/flows/browse.js";
import { createLogger } from "../src/log.js";
import { deriveSseKey } from "../src/repo/keys.js";
import { decodeManifest, encodeManifest } from "../src/repo/manifest.js";
import { manifestKey, objectKey } from "../src/repo/naming.js";
import {
  archivesOf,
  listBucket,
  listManifests,
  placeOf,
  readManifest,
} from "../src/repo/snapshots.js";
import { MemoryBucket, type MemoryStore } from "../src/store/memory.js";
import type { ObjectStore, Target } from "../src/store/store.js";
import { fullConfig, jobConfig, targetConfig } from "./support/target.js";

const work = mkdtempSync(join(tmpdir(), "immutd-rebuild-"));
const tree = join(work, "tree");
mkdirSync(join(tree, "sub"), { recursive: true });
writeFileSync(join(tree, "a.txt"), "alpha\n");
writeFileSync(join(tree, "sub", "b.bin"), randomBytes(30_000));
const log = createLogger({ level: "silent" });
let n = 0;

/** Rows as list shows them, without what a rebuild cannot know (the row id and its run). */
function comparable(rows: BackupRow[]) {
  return rows
    .map(({ id: _id, runId: _run, chainId: _chain, ...rest }) => rest)
    .sort((a, b) => (a.key < b.key ? -1 : 1));
}

/** A memory bucket with real backups of two jobs (gzip and uncompressed), made by runBackup. */
async function setup(backups = 2) {
  const name = `rb-${++n}`;
  const clock = { t: Date.parse("2026-11-01T00:00:00Z") };
  const now = () => new Date(clock.t);
  const bucket = new MemoryBucket(name, { defaultRetention: { mode: "COMPLIANCE", days: 7 } });
  bucket.now = now;
  const tc = targetConfig({
    name: "mem",
    bucket: name,
    retention: { mode: "COMPLIANCE", days: 7 },
  });
  const jobs = [
    jobConfig({ name: "etc", target: "mem", paths: [tree] }),
    jobConfig({ name: "raw", target: "mem", paths: [tree], compression: "none" }),
  ];
  const catalog = Catalog.open(join(work, `${name}.db`));
  const masterKey = randomBytes(32);
  const config = fullConfig({
    catalog: catalog.path,
    masterKey: new Secret(masterKey),
    host: "h1",
    targets: { mem: tc },
    jobs,
  });
  const target = bucket.target("mem");
  for (let i = 0; i < backups; i++) {
    for (const job of jobs) {
      const r = await runBackup(job, { config, catalog, target, targetConfig: tc, log, now });
      assert.equal(r.status, "succeeded", r.error);
      assert.equal(r.warnings, 0);
      clock.t += 61_000;
    }
  }
  const scan = (o: { host?: string } = {}) =>
    scanTarget(target, { masterKey, scope: { host: o.host ?? "h1" }, now: now() });
  return { bucket, clock, catalog, masterKey, target, scan, now };
}

/** A fresh catalog holding what scan found. */
function rebuilt(found: ScanResult, masterKey: Buffer) {
  const c = Catalog.open(join(work, `rebuilt-${++n}.db`));
  c.importBackups(found.backups.map((b) => toImported(b, masterKey)));
  return c;
}

describe("snapshots.ts: listing and reading manifests (memory store)", () => {
  it("lists one manifest key per backup, newest first per job, and the scope narrows it", async () => {
    const s = await setup();
    const all = await listManifests(s.target.reader, "");
    assert.equal(all.length, 4);
    assert.deepEqual(
      all.map((m) => m.job),
      ["etc", "etc", "raw", "raw"],
    );
    const etc = all.filter((m) => m.job === "etc");
    assert.ok((etc[0]?.createdAt.getTime() ?? 0) > (etc[1]?.createdAt.getTime() ?? 0));
    for (const m of all) {
      assert.equal(m.host, "h1");
      assert.equal(m.key, manifestKey(m.archiveKey));
      assert.deepEqual(m.extra, []);
      assert.deepEqual(m.tied, []);
      assert.equal(m.hidden, false);
    }
    assert.equal((await listManifests(s.target.reader, "", { host: "h1", job: "raw" })).length, 2);
    assert.equal((await listManifests(s.target.reader, "", { job: "raw" })).length, 2);
    assert.equal((await listManifests(s.target.reader, "", { host: "h2" })).length, 0);
    // The scope is a folder, not a string prefix: host "h" is not host "h1".
    assert.equal((await listManifests(s.target.reader, "", { host: "h" })).length, 0);
  });

  it("placeOf takes only manifest keys of the layout, under the prefix", () => {
    const key = `p/h1/etc/2026-11-01T000000Z-0123abcd.tar.gz${".manifest.json.gz"}`;
    assert.deepEqual(placeOf("p/", key), {
      host: "h1",
      job: "etc",
      archiveKey: key.slice(0, -".manifest.json.gz".length),
      createdAt: new Date("2026-11-01T00:00:00Z"),
    });
    assert.equal(placeOf("q/", key), undefined);
    assert.equal(placeOf("", key), undefined, "one folder too many");
    assert.equal(placeOf("p/", "p/h1/etc/2026-11-01T000000Z-0123abcd.tar.gz"), undefined);
    assert.equal(placeOf("p/", "p/h1/etc/notes.manifest.json.gz"), undefined);
  });

  it("believes the oldest version at a manifest key; later ones are extra, same-moment ones tied, a delete marker only hides", async () => {
    const s = await setup(1);
    const [m] = await listManifests(s.target.reader, "", { host: "h1", job: "etc" });
    assert.ok(m);
    const sseKey = deriveSseKey(s.masterKey, s.bucket.name, m.key);
    s.clock.t += 1000;
    const forged = await s.target.writer.putManifest({
      key: m.key,
      body: encodeManifest({ ...(await read(s, m)), files: [] }),
      sseKey,
    });
    (s.target.writer as MemoryStore).putDeleteMarker(m.key);
    const [again] = await listManifests(s.target.reader, "", { host: "h1", job: "etc" });
    assert.equal(again?.version.versionId, m.version.versionId);
    assert.deepEqual(
      again?.extra.map((v) => v.versionId),
      [forged.versionId],
    );
    assert.equal(again?.hidden, true);
    // A version stored at the very moment of the first: none can be told to be immutd's.
    s.clock.t = m.version.lastModified.getTime();
    const tie = await s.target.writer.putManifest({ key: m.key, body: Buffer.from("x"), sseKey });
    const [tied] = await listManifests(s.target.reader, "", { host: "h1", job: "etc" });
    assert.deepEqual(
      tied?.tied.map((v) => v.versionId),
      [tie.versionId],
    );
  });

  it("a manifest that does not decode is an error naming its key and version", async () => {
    const s = await setup(1);
    const [m] = await listManifests(s.target.reader, "", { host: "h1", job: "etc" });
    assert.ok(m);
    const key = m.key.replace(/-[0-9a-f]{8}\./, "-00000000.");
    const { versionId } = await s.target.writer.putManifest({
      key,
      body: Buffer.from("not gzip at all"),
      sseKey: deriveSseKey(s.masterKey, s.bucket.name, key),
    });
    const place = placeOf("", key);
    assert.ok(place);
    await assert.rejects(
      readManifest(s.target.reader, s.bucket.name, s.masterKey, { ...place, key, versionId }),
      (e: Error) =>
        e.message.includes(key) &&
        e.message.includes(versionId) &&
        /not a manifest/.test(e.message),
    );
  });

  it("listBucket reports archives without a manifest (backups made before manifests)", async () => {
    const s = await setup(1);
    const key = objectKey({ prefix: "", host: "h1", job: "old", at: s.now(), compression: "gzip" });
    const { versionId } = await s.target.writer.upload({
      key,
      body: Readable.from([Buffer.from("old")]),
      sseKey: deriveSseKey(s.masterKey, s.bucket.name, key),
    });
    const { manifests, bare } = await listBucket(s.target.reader, "", { host: "h1" });
    assert.equal(manifests.length, 2);
    assert.deepEqual(bare, [{ key, versionId, host: "h1", job: "old" }]);
  });
});

async function read(
  s: Awaited<ReturnType<typeof setup>>,
  m: {
    key: string;
    archiveKey: string;
    host: string;
    job: string;
    createdAt: Date;
    version: { versionId: string };
  },
) {
  return readManifest(s.target.reader, s.bucket.name, s.masterKey, {
    ...m,
    versionId: m.version.versionId,
  });
}

describe("catalog rebuild from the manifests (memory store)", () => {
  it("rebuilds every backup row for row (ids and runs aside), with the key derived from the master key", async () => {
    const s = await setup();
    const found = await s.scan();
    assert.deepEqual(found.findings, []);
    assert.deepEqual(found.warnings, []);
    const c = rebuilt(found, s.masterKey);
    const original = s.catalog.listBackups();
    assert.equal(original.length, 4);
    assert.deepEqual(comparable(c.listBackups()), comparable(original));
    for (const r of c.listBackups()) {
      assert.equal(r.runId, null);
      const o = original.find((x) => x.versionId === r.versionId);
      assert.ok(o);
      assert.deepEqual(c.backupKey(r.id), s.catalog.backupKey(o.id));
    }
    // Another host's name finds nothing of h1's.
    assert.equal((await s.scan({ host: "h2" })).backups.length, 0);
  });

  it("asks GetObjectRetention where HEAD does not report the lock (a provider without the header)", async () => {
    const s = await setup(1);
    let asked = 0;
    const reader = new Proxy(s.target.reader, {
      get(t, p) {
        if (p === "head")
          return async (...a: Parameters<ObjectStore["head"]>) => {
            const { retention: _r, ...rest } = await t.head(...a);
            return rest;
          };
        if (p === "retention")
          return (...a: Parameters<ObjectStore["retention"]>) => {
            asked++;
            return t.retention(...a);
          };
        const v = Reflect.get(t, p, t);
        return typeof v === "function" ? v.bind(t) : v;
      },
    }) as ObjectStore;
    const found = await scanTarget(
      { ...s.target, reader },
      { masterKey: s.masterKey, scope: { host: "h1" }, now: s.now() },
    );
    assert.equal(asked, 2);
    const c = rebuilt(found, s.masterKey);
    assert.deepEqual(comparable(c.listBackups()), comparable(s.catalog.listBackups()));
  });

  it("reports the retain-until the server reports now (extended since), and expired once it has passed", async () => {
    const s = await setup(1);
    const [row] = s.catalog.listBackups({ job: "etc" });
    assert.ok(row);
    const later = new Date(Date.parse(row.retainUntil ?? "") + 86_400_000);
    await s.target.writer.extendRetention(row.key, row.versionId, {
      mode: "COMPLIANCE",
      retainUntil: later,
    });
    let found = await s.scan();
    assert.equal(found.backups.find((b) => b.key === row.key)?.retainUntil, later.toISOString());
    s.clock.t = later.getTime() + 1;
    found = await s.scan();
    assert.equal(found.backups.find((b) => b.key === row.key)?.status, "expired");
  });

  it("a later version at a manifest key (written with the writer credential) is a warning and never read", async () => {
    const s = await setup(1);
    const [row] = s.catalog.listBackups({ job: "etc" });
    assert.ok(row?.manifestKey);
    const sseKey = deriveSseKey(s.masterKey, s.bucket.name, row.manifestKey);
    const [m] = await listManifests(s.target.reader, "", { host: "h1", job: "etc" });
    assert.ok(m);
    const real = await read(s, m);
    s.clock.t += 1000;
    const { versionId } = await s.target.writer.putManifest({
      key: row.manifestKey,
      body: encodeManifest({ ...real, archive: { ...real.archive, sha256: "0".repeat(64) } }),
      sseKey,
    });
    const found = await s.scan();
    assert.deepEqual(found.findings, []);
    assert.equal(found.warnings.length, 1);
    assert.equal(found.warnings[0]?.kind, "forged-version");
    assert.equal(found.warnings[0]?.versionId, versionId);
    assert.match(found.warnings[0]?.message ?? "", new RegExp(row.manifestKey));
    assert.equal(found.backups.find((b) => b.key === row.key)?.sha256, row.sha256);
  });

  it("versions stored at the same moment at a manifest key: none is believed", async () => {
    const s = await setup(1);
    const [row] = s.catalog.listBackups({ job: "etc" });
    assert.ok(row?.manifestKey);
    const [m] = await listManifests(s.target.reader, "", { host: "h1", job: "etc" });
    assert.ok(m);
    s.clock.t = m.version.lastModified.getTime();
    await s.target.writer.putManifest({
      key: row.manifestKey,
      body: encodeManifest({ ...(await read(s, m)), files: [] }),
      sseKey: deriveSseKey(s.masterKey, s.bucket.name, row.manifestKey),
    });
    const found = await s.scan();
    assert.deepEqual(
      found.findings.map((f) => f.kind),
      ["ambiguous"],
    );
    assert.equal(
      found.backups.some((b) => b.key === row.key),
      false,
    );
  });

  it("a manifest naming another job's archive, or stored under another job, is not believed", async () => {
    const s = await setup(1);
    const [etc] = await listManifests(s.target.reader, "", { host: "h1", job: "etc" });
    assert.ok(etc);
    const real = await read(s, etc);
    // Copied under job "raw" with its own key: it still names etc's archive.
    const moved = objectKey({
      prefix: "",
      host: "h1",
      job: "raw",
      at: s.now(),
      compression: "gzip",
    });
    await s.target.writer.putManifest({
      key: manifestKey(moved),
      body: encodeManifest(real),
      sseKey: deriveSseKey(s.masterKey, s.bucket.name, manifestKey(moved)),
    });
    // And one at a key of its own archive that says it is another host's.
    const other = objectKey({
      prefix: "",
      host: "h1",
      job: "etc",
      at: s.now(),
      compression: "gzip",
    });
    await s.target.writer.putManifest({
      key: manifestKey(other),
      body: encodeManifest({ ...real, host: "h2", archive: { ...real.archive, key: other } }),
      sseKey: deriveSseKey(s.masterKey, s.bucket.name, manifestKey(other)),
    });
    const found = await s.scan();
    const messages = found.findings.map((f) => f.message).sort();
    assert.equal(found.findings.length, 2, JSON.stringify(found.findings));
    assert.ok(found.findings.every((f) => f.kind === "unreadable"));
    assert.ok(messages.some((x) => /names archive/.test(x) && x.includes(manifestKey(moved))));
    assert.ok(messages.some((x) => /says host h2/.test(x)));
    assert.equal(found.backups.length, 2, "the real ones stay");
  });

  it("a manifest whose archive version is gone, or holds another size, is reported and not imported", async () => {
    const s = await setup(1);
    const [etc] = s.catalog.listBackups({ job: "etc" });
    assert.ok(etc);
    s.bucket.loseVersion(etc.key, etc.versionId);
    // An archive of the attacker's own, with a manifest that gives it another size.
    const key = objectKey({ prefix: "", host: "h1", job: "raw", at: s.now(), compression: "none" });
    const sseKey = deriveSseKey(s.masterKey, s.bucket.name, key);
    const up = await s.target.writer.upload({
      key,
      body: Readable.from([Buffer.alloc(512)]),
      sseKey,
    });
    const [raw] = await listManifests(s.target.reader, "", { host: "h1", job: "raw" });
    assert.ok(raw);
    const doc = await read(s, raw);
    await s.target.writer.putManifest({
      key: manifestKey(key),
      body: encodeManifest({
        ...doc,
        createdAt: s.now().toISOString(),
        archive: { ...doc.archive, key, versionId: up.versionId, size: 10_240 },
      }),
      sseKey: deriveSseKey(s.masterKey, s.bucket.name, manifestKey(key)),
    });
    const found = await s.scan();
    const kinds = found.findings.map((f) => f.kind).sort();
    assert.deepEqual(kinds, ["archive-mismatch", "archive-missing"]);
    const missing = found.findings.find((f) => f.kind === "archive-missing");
    assert.ok(missing?.message.includes(etc.key) && missing.message.includes(etc.versionId));
    assert.match(
      found.findings.find((f) => f.kind === "archive-mismatch")?.message ?? "",
      /holds 512 bytes, the manifest says 10240/,
    );
    assert.deepEqual(
      found.backups.map((b) => b.job),
      ["raw"],
    );
  });

  it("a hostile manifest body (not gzip, gzip of garbage, a wrong format) is a finding, not a crash", async () => {
    const s = await setup(1);
    const bodies = [
      Buffer.from("<html>hi</html>"),
      (await import("node:zlib")).gzipSync('{"formatVersion": 1, "files": "x"}'),
      (await import("node:zlib")).gzipSync('{"formatVersion": 99}'),
      (await import("node:zlib")).gzipSync("[1,2,3]"),
    ];
    for (const [i, body] of bodies.entries()) {
      const key = objectKey({
        prefix: "",
        host: "h1",
        job: "etc",
        at: new Date(s.now().getTime() + i * 1000),
        compression: "gzip",
      });
      await s.target.writer.putManifest({
        key: manifestKey(key),
        body,
        sseKey: deriveSseKey(s.masterKey, s.bucket.name, manifestKey(key)),
      });
    }
    // And two that decode but do not fit: another time than their key's, a SHA-256 that is none.
    const ours = s.catalog.listBackups({ job: "etc" })[0]?.manifestKey;
    const etc = (await listManifests(s.target.reader, "", { host: "h1", job: "etc" })).find(
      (m) => m.key === ours,
    );
    assert.ok(etc);
    const real = await read(s, etc);
    for (const [i, doc] of [
      { ...real, createdAt: "2020-01-01T00:00:00.000Z" },
      { ...real, archive: { ...real.archive, sha256: "<script>" } },
    ].entries()) {
      const key = objectKey({
        prefix: "",
        host: "h1",
        job: "etc",
        at: new Date(s.now().getTime() + (10 + i) * 1000),
        compression: "gzip",
      });
      await s.target.writer.putManifest({
        key: manifestKey(key),
        body: encodeManifest({
          ...doc,
          createdAt: i === 0 ? doc.createdAt : new Date(s.now().getTime() + 11_000).toISOString(),
          archive: { ...doc.archive, key },
        }),
        sseKey: deriveSseKey(s.masterKey, s.bucket.name, manifestKey(key)),
      });
    }
    const found = await s.scan();
    assert.match(
      found.findings.find((f) => /is not the time in its key/.test(f.message))?.message ?? "",
      /2020-01-01/,
    );
    assert.ok(found.findings.some((f) => /<script> is not a SHA-256/.test(f.message)));
    assert.equal(found.findings.length, 6, JSON.stringify(found.findings));
    assert.ok(found.findings.every((f) => f.kind === "unreadable" && /version /.test(f.message)));
    assert.equal(found.backups.length, 2);
  });

  it("a server that keeps failing fails the scan with one line naming key and version; nothing is recorded", async () => {
    const s = await setup(1);
    let heads = 0;
    const failing = new Proxy(s.target.reader, {
      get(t, p) {
        if (p === "head")
          return async () => {
            heads++;
            throw new StorageError("HTTP 500 InternalError", { transient: true, status: 500 });
          };
        const v = Reflect.get(t, p, t);
        return typeof v === "function" ? v.bind(t) : v;
      },
    }) as ObjectStore;
    const target: Target = { ...s.target, reader: failing };
    const [row] = s.catalog.listBackups();
    await assert.rejects(
      scanTarget(target, { masterKey: s.masterKey, scope: { host: "h1" } }),
      (e: Error) =>
        e instanceof StorageError &&
        /cannot read archive s3:\/\/.* version .*HTTP 500.*nothing was recorded/.test(e.message) &&
        row !== undefined,
    );
    assert.ok(heads >= 4, `retried: ${heads} HEADs`);
  });
});

describe("importBackups and migrated catalogs", () => {
  it("adds rows in one transaction and never changes one it holds", async () => {
    const s = await setup(1);
    const found = await s.scan();
    const rows = found.backups.map((b) => toImported(b, s.masterKey));
    const before = s.catalog.listBackups();
    assert.equal(s.catalog.importBackups(rows), 0, "all already recorded");
    assert.deepEqual(s.catalog.listBackups(), before);
    // A failure halfway leaves nothing behind.
    const c = Catalog.open(join(work, `half-${++n}.db`));
    const broken = [rows[0], { ...rows[1], status: "bogus" }] as typeof rows;
    assert.throws(() => c.importBackups(broken));
    assert.deepEqual(c.counts(), { backups: 0, runs: 0 });
    assert.equal(c.importBackups(rows), 2);
  });

  it("a catalog of 0.1.0 (schema 2) migrates and takes rebuilt rows; its own rows stay as they were", async () => {
    const path = join(work, `old-${++n}.db`);
    copyFileSync(new URL("../../test/fixtures/catalog-0.1.0.db", import.meta.url), path);
    const c = Catalog.open(path);
    const old = c.listBackups();
    assert.ok(old.length > 0);
    const s = await setup(1);
    const found = await s.scan();
    const rows = found.backups.map((b) => toImported(b, s.masterKey));
    // One of them claims an old row's version: the old row wins.
    const first = old[0] as BackupRow;
    const clash = {
      ...(rows[0] as (typeof rows)[0]),
      bucket: first.bucket,
      key: first.key,
      versionId: first.versionId,
    };
    assert.equal(c.importBackups([...rows, clash]), 2);
    assert.deepEqual(
      c.listBackups().filter((r) => old.some((o) => o.id === r.id)),
      old,
    );
    assert.deepEqual(
      comparable(c.listBackups().filter((r) => r.runId === null && r.manifestKey !== null)),
      comparable(s.catalog.listBackups()),
    );
    assert.deepEqual(c.db.pragma("foreign_key_check"), []);
    assert.equal(c.db.pragma("integrity_check", { simple: true }), "ok");
  });

  it("a catalog of schema 3 migrates and a rebuild merged into it is consistent", async () => {
    const s = await setup(1);
    s.catalog.close();
    const path = join(work, `v3-${++n}.db`);
    copyFileSync(s.catalog.path, path);
    // What a schema-3 immutd left: no manifest columns.
    const raw = new Database(path);
    raw.exec(
      "ALTER TABLE backups DROP COLUMN manifest_key; ALTER TABLE backups DROP COLUMN manifest_version_id; PRAGMA user_version = 3",
    );
    // ... and that has lost the row of job raw's backup.
    raw.prepare("DELETE FROM backups WHERE job = 'raw'").run();
    raw.close();
    const c = Catalog.open(path);
    assert.equal(c.db.pragma("user_version", { simple: true }), 7);
    const before = c.listBackups();
    assert.equal(before.length, 1);
    assert.ok(before.every((r) => r.manifestKey === null && r.runId !== null));
    const found = await s.scan();
    assert.equal(c.importBackups(found.backups.map((b) => toImported(b, s.masterKey))), 1);
    const after = c.listBackups();
    assert.deepEqual(
      after.find((r) => r.id === before[0]?.id),
      before[0],
      "kept as it was",
    );
    const original = Catalog.open(s.catalog.path).listBackups();
    const added = after.filter((r) => r.job === "raw");
    assert.deepEqual(comparable(added), comparable(original.filter((r) => r.job === "raw")));
    assert.equal(c.db.pragma("integrity_check", { simple: true }), "ok");
    assert.deepEqual(c.db.pragma("foreign_key_check"), []);
    const manifest = decodeManifest(
      Buffer.from(
        await (
          await s.target.reader.get(
            found.backups[0]?.manifestKey ?? "",
            found.backups[0]?.manifestVersionId ?? "",
            deriveSseKey(s.masterKey, s.bucket.name, found.backups[0]?.manifestKey ?? ""),
          )
        )
          .toArray()
          .then((a) => Buffer.concat(a as Buffer[])),
      ),
    );
    assert.equal(manifest.archive.versionId, found.backups[0]?.versionId);
  });
});

describe("versions stored at the same moment as immutd's manifest", () => {
  it("are believed by neither ls/find nor the audit: the backup reads as one without a manifest, and the audit reports manifest-forged", async () => {
    const s = await setup(1);
    const [m] = await listManifests(s.target.reader, "", { host: "h1", job: "etc" });
    assert.ok(m);
    const source = {
      reader: s.target.reader,
      bucket: s.bucket.name,
      prefix: "",
      masterKey: s.masterKey,
    };
    const before = await backupsFromBucket(source, "h1", "etc");
    assert.equal(before[0]?.manifest?.versionId, m.version.versionId);
    s.clock.t = m.version.lastModified.getTime();
    const sseKey = deriveSseKey(s.masterKey, s.bucket.name, m.key);
    const forged = await read(s, m);
    await s.target.writer.putManifest({
      key: m.key,
      body: encodeManifest({ ...forged, files: [] }),
      sseKey,
    });
    const after = await backupsFromBucket(source, "h1", "etc");
    assert.equal(after.length, 1);
    assert.equal(after[0]?.manifest, null);
    const report = await runAudit({
      target: targetConfig({
        name: "mem",
        bucket: s.bucket.name,
        retention: { mode: "COMPLIANCE", days: 7 },
      }),
      reader: s.target.reader,
      masterKey: s.masterKey,
      audit: { slackMinutes: 60, overrides: [] },
      concurrency: 4,
      now: s.now,
    });
    const forgedFindings = report.findings.filter(
      (f) => f.kind === "manifest-forged" && f.job === "etc",
    );
    assert.equal(forgedFindings.length, 1, JSON.stringify(report.findings));
    assert.match(forgedFindings[0]?.message ?? "", /same moment/);
  });
});

describe("what rebuild, ls/find and the audit believe (attacks with the writer credential or a host's own manifests)", () => {
  const auditOf = (s: Awaited<ReturnType<typeof setup>>, audit = {}) =>
    runAudit({
      target: targetConfig({
        name: "mem",
        bucket: s.bucket.name,
        retention: { mode: "COMPLIANCE", days: 7 },
      }),
      reader: s.target.reader,
      masterKey: s.masterKey,
      audit: { slackMinutes: 60, overrides: [], ...audit },
      concurrency: 4,
      now: s.now,
    });
  const source = (s: Awaited<ReturnType<typeof setup>>) => ({
    reader: s.target.reader,
    bucket: s.bucket.name,
    prefix: "",
    masterKey: s.masterKey,
  });

  /** A complete backup (archive and manifest) planted at a key dated `at`, as someone with the writer credential and the master key can. */
  async function plant(s: Awaited<ReturnType<typeof setup>>, at: Date) {
    const [m] = await listManifests(s.target.reader, "", { host: "h1", job: "etc" });
    assert.ok(m);
    const real = await read(s, m);
    const key = objectKey({ prefix: "", host: "h1", job: "etc", at, compression: "gzip" });
    const body = randomBytes(512);
    const { versionId } = await s.target.writer.upload({
      key,
      body: Readable.from([body]),
      sseKey: deriveSseKey(s.masterKey, s.bucket.name, key),
    });
    const mkey = manifestKey(key);
    await s.target.writer.putManifest({
      key: mkey,
      body: encodeManifest({
        ...real,
        createdAt: at.toISOString(),
        archive: { ...real.archive, key, versionId, size: body.length },
      }),
      sseKey: deriveSseKey(s.masterKey, s.bucket.name, mkey),
    });
    return key;
  }

  it("a job whose backups stopped longer ago than the retention days stays too-old", async () => {
    const s = await setup(1);
    const ok = await auditOf(s, { maxAgeHours: 48 });
    assert.deepEqual(
      ok.findings.filter((f) => f.kind === "too-old"),
      [],
    );
    s.clock.t += 40 * 86_400_000; // 40 days on, retention is 7
    const late = await auditOf(s, { maxAgeHours: 48 });
    const tooOld = late.findings.filter((f) => f.kind === "too-old").map((f) => f.job);
    assert.deepEqual(tooOld.sort(), ["etc", "raw"], JSON.stringify(late.findings));
    assert.match(late.findings.find((f) => f.kind === "too-old")?.message ?? "", /retention/);
  });

  it("audit.maxAgeHours caps the limit a host's own manifest schedule gives", async () => {
    const s = await setup(1);
    s.clock.t += 3 * 86_400_000;
    // jobConfig's schedule runs daily: two missed runs are past after three days.
    const yearly = maxAge({ slackMinutes: 0, overrides: [], maxAgeHours: 24 }, "h1", "etc", {
      schedule: "0 0 1 1 *",
    });
    const created = new Date("2026-01-02T00:00:00Z");
    assert.equal(yearly?.(created).toISOString(), "2026-01-03T00:00:00.000Z");
    const uncapped = maxAge({ slackMinutes: 0, overrides: [] }, "h1", "etc", {
      schedule: "0 0 1 1 *",
    });
    assert.equal(uncapped?.(created).toISOString(), "2028-01-01T00:00:00.000Z");
  });

  it("a backup planted at a key dated in the future is reported and never taken for the newest", async () => {
    const s = await setup(1);
    s.clock.t += 30 * 86_400_000;
    const key = await plant(s, new Date("2099-01-01T03:00:00Z"));
    const report = await auditOf(s, { maxAgeHours: 48 });
    const etc = report.jobs.find((j) => j.job === "etc");
    assert.ok(etc?.newest && etc.newest < "2099", JSON.stringify(etc));
    assert.ok(
      report.findings.some((f) => f.kind === "manifest-forged" && f.key === manifestKey(key)),
      JSON.stringify(report.findings),
    );
    assert.ok(report.findings.some((f) => f.kind === "too-old" && f.job === "etc"));
    const scan = await s.scan();
    assert.ok(scan.findings.some((f) => f.kind === "planted" && f.key === manifestKey(key)));
    assert.ok(!scan.backups.some((b) => b.key === key));
    const refs = await backupsFromBucket(source(s), "h1", "etc");
    assert.ok(!refs.some((r) => r.archiveKey === key));
  });

  it("a manifest naming a later version at an old archive key is not believed", async () => {
    const s = await setup(1);
    const [bareKey] = (await s.target.reader.listVersions("h1/raw/")).map((v) => v.key);
    assert.ok(bareKey);
    // Stand in for a 0.1.0 backup: an archive key whose manifest was never written.
    const at = (placeOf("", manifestKey(bareKey)) as { createdAt: Date }).createdAt;
    const old = objectKey({
      prefix: "",
      host: "h1",
      job: "etc",
      at: new Date(at.getTime() - 86_400_000),
      compression: "gzip",
    });
    const sse = deriveSseKey(s.masterKey, s.bucket.name, old);
    await s.target.writer.upload({
      key: old,
      body: Readable.from([randomBytes(100)]),
      sseKey: sse,
    });
    s.clock.t += 5000;
    const body = randomBytes(200);
    const forged = await s.target.writer.upload({
      key: old,
      body: Readable.from([body]),
      sseKey: sse,
    });
    const [m] = await listManifests(s.target.reader, "", { host: "h1", job: "etc" });
    assert.ok(m);
    const real = await read(s, m);
    const mkey = manifestKey(old);
    await s.target.writer.putManifest({
      key: mkey,
      body: encodeManifest({
        ...real,
        createdAt: new Date(at.getTime() - 86_400_000).toISOString(),
        archive: { ...real.archive, key: old, versionId: forged.versionId, size: body.length },
      }),
      sseKey: deriveSseKey(s.masterKey, s.bucket.name, mkey),
    });
    const scan = await s.scan();
    const f = scan.findings.find((x) => x.key === mkey);
    assert.ok(f, JSON.stringify(scan.findings));
    assert.match(f.message, /first version at its archive key/);
    assert.ok(!scan.backups.some((b) => b.key === old));
    const refs = await backupsFromBucket(source(s), "h1", "etc");
    const ref = refs.find((r) => r.archiveKey === old);
    assert.ok(ref?.manifest);
    const archives = archivesOf(await listJob(source(s), "h1", "etc"));
    await assert.rejects(
      manifestOf(source(s), { ...ref, manifest: ref.manifest }, archives),
      /first version at its archive key/,
    );
    const report = await auditOf(s);
    assert.ok(
      report.findings.some((x) => x.kind === "manifest-invalid" && x.key === mkey),
      JSON.stringify(report.findings),
    );
  });

  it("keys whose host, job or file name is not what immutd writes are not listed (no terminal escapes from key names)", () => {
    const tail = "2026-11-01T000000Z-0123abcd.tar.gz.manifest.json.gz";
    assert.equal(placeOf("", `h\x1b[2J/etc/${tail}`), undefined);
    assert.equal(placeOf("", `h1/e\x07tc/${tail}`), undefined);
    assert.equal(placeOf("", `h1/etc/\x1b[1A${tail}`), undefined);
    assert.equal(placeOf("", `h1/etc/x${tail}`), undefined);
    assert.ok(placeOf("", `h1/etc/${tail}`));
  });

  it("a manifest whose fields are not what immutd writes does not decode (escapes in uid, a text mtime, a bad createdAt)", async () => {
    const s = await setup(1);
    const [m] = await listManifests(s.target.reader, "", { host: "h1", job: "etc" });
    assert.ok(m);
    const real = await read(s, m);
    const file = real.files[0] as (typeof real.files)[number];
    const bad: unknown[] = [
      { ...real, files: [{ ...file, uid: "\x1b]0;owned\x07" }] },
      { ...real, files: [{ ...file, mtime: "x" }] },
      { ...real, files: [{ ...file, type: "file\x1b[2J" }] },
      { ...real, files: [{ ...file, link: 5 }] },
      { ...real, createdAt: "2026-11-01T00:00:00Z\x1b[2J" },
      { ...real, createdAt: "yesterday" },
    ];
    for (const doc of bad)
      assert.throws(
        () => decodeManifest(encodeManifest(doc as never)),
        /malformed manifest/,
        JSON.stringify(doc).slice(0, 80),
      );
    assert.equal(decodeManifest(encodeManifest(real)).files.length, real.files.length);
  });
});
