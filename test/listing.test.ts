/**
 * One listing per command on the in-memory store (its request counter): verify
 * shares one listing of the target's prefix between the manifest checks and
 * the delete-marker check, and still reports what each of them found; listOnce
 * (src/store/shared-listing.ts) answers narrower listings exactly as the store
 * would, and forgets a walk that failed. The same per command, through the CLI
 * and with two pages of versions, is in listing.rgw.test.ts.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Catalog } from "../src/catalog/catalog.js";
import { Secret } from "../src/config/secret.js";
import { runBackup } from "../src/flows/backup.js";
import { backupsOf, listJob } from "../src/flows/browse.js";
import { runVerify } from "../src/flows/verify.js";
import { createLogger } from "../src/log.js";
import { archivesOf, listManifests } from "../src/repo/snapshots.js";
import { MemoryBucket } from "../src/store/memory.js";
import { listOnce } from "../src/store/shared-listing.js";
import type { ObjectStore, VersionEntry } from "../src/store/store.js";
import { fullConfig, jobConfig, targetConfig } from "./support/target.js";

const work = mkdtempSync(join(tmpdir(), "immutd-listing-"));
const tree = join(work, "tree");
mkdirSync(tree);
writeFileSync(join(tree, "a.txt"), "alpha\n".repeat(100));
const log = createLogger({ level: "silent" });

async function setup(count: number) {
  const clock = { t: Date.parse("2026-11-01T00:00:00Z") };
  const now = () => new Date(clock.t);
  const bucket = new MemoryBucket("listing", {
    defaultRetention: { mode: "COMPLIANCE", days: 7 },
  });
  bucket.now = now;
  const tc = targetConfig({
    name: "mem",
    bucket: bucket.name,
    retention: { mode: "COMPLIANCE", days: 7 },
  });
  const job = jobConfig({ name: "tree", target: "mem", paths: [tree] });
  const catalog = Catalog.open(join(work, `${randomBytes(4).toString("hex")}.db`));
  const config = fullConfig({
    catalog: catalog.path,
    masterKey: new Secret(randomBytes(32)),
    host: "h",
    targets: { mem: tc },
    jobs: [job],
  });
  const target = bucket.target("mem");
  for (let i = 0; i < count; i++) {
    const r = await runBackup(job, { config, catalog, target, targetConfig: tc, log, now });
    assert.equal(r.status, "succeeded", r.error);
    clock.t += 3_600_000;
  }
  const verify = () => runVerify({ config, catalog, targets: { mem: target }, log, now });
  return { bucket, catalog, config, target, verify };
}

describe("one listing per command (memory store)", () => {
  it("verify lists once for three backups and still reports a hidden backup and a hidden manifest", async () => {
    const s = await setup(3);
    const rows = s.catalog.listBackups();
    const newest = rows.at(-1);
    const oldest = rows[0];
    assert.ok(newest && oldest?.manifestKey);
    const writer = s.bucket.store("writer");
    writer.putDeleteMarker(newest.key);
    writer.putDeleteMarker(oldest.manifestKey);
    const before = s.bucket.listings;
    const r = await s.verify();
    assert.equal(s.bucket.listings - before, 1, "listVersions calls");
    const warned = r.warnings.map((w) => [w.kind, w.backupId]).sort();
    assert.deepEqual(
      warned,
      [
        ["delete-marker", newest.id],
        ["manifest-replaced", oldest.id],
      ].sort(),
      JSON.stringify(r.warnings),
    );
  });

  it("a job's one listing gives the same backups and archive versions the old separate listings did", async () => {
    const s = await setup(2);
    const ms = {
      reader: s.target.reader,
      bucket: s.bucket.name,
      prefix: "",
      masterKey: s.config.masterKey.reveal(),
    };
    const before = s.bucket.listings;
    const l = await listJob(ms, "h", "tree");
    const refs = backupsOf(l);
    const archives = archivesOf(l);
    assert.equal(s.bucket.listings - before, 1);
    const manifests = await listManifests(s.target.reader, "", { host: "h", job: "tree" });
    assert.deepEqual(
      refs.map((b) => [b.archiveKey, b.manifest?.versionId]),
      manifests.map((m) => [m.archiveKey, m.version.versionId]).reverse(),
    );
    const stored = (await s.target.reader.listVersions("h/tree/")).filter((v) => !v.deleteMarker);
    assert.deepEqual([...archives.keys()].sort(), stored.map((v) => v.versionId).sort());
  });
});

describe("listOnce", () => {
  it("answers listings under its prefix from one walk, exactly as the store would", async () => {
    const s = await setup(2);
    s.bucket.store("writer").putDeleteMarker(s.catalog.listBackups()[0]?.key ?? "");
    const reader = s.target.reader;
    const shared = listOnce(reader, "");
    const keys = [...new Set(s.bucket.versions.map((v) => v.key))];
    const before = s.bucket.listings;
    const answers = await Promise.all(keys.map((k) => shared.listVersions(k)));
    assert.equal(s.bucket.listings - before, 1, "concurrent callers share one walk");
    for (const [i, k] of keys.entries())
      assert.deepEqual(answers[i], await reader.listVersions(k), k);
    assert.deepEqual(await shared.listVersions("h/"), await reader.listVersions("h/"));
    // Other methods are the store's own, bound to it.
    assert.equal((await shared.bucketExists()) === (await reader.bucketExists()), true);
  });

  it("lists a prefix outside its own on its own, and lists again after a walk failed", async () => {
    let calls = 0;
    const asked: string[] = [];
    const entry: VersionEntry = {
      key: "p/a",
      versionId: "v1",
      size: 1,
      lastModified: new Date(0),
      isLatest: true,
      deleteMarker: false,
    };
    const store = {
      async listVersions(prefix: string): Promise<VersionEntry[]> {
        asked.push(prefix);
        if (++calls === 1) throw new Error("reset");
        return [entry];
      },
    } as unknown as ObjectStore;
    const shared = listOnce(store, "p/");
    await assert.rejects(shared.listVersions("p/a"), /reset/);
    assert.deepEqual(await shared.listVersions("p/a"), [entry], "the failed walk is not kept");
    assert.deepEqual(await shared.listVersions("p/"), [entry]);
    assert.deepEqual(await shared.listVersions("q/"), [entry]);
    assert.deepEqual(asked, ["p/", "p/", "q/"]);
  });

  it("a walk that fails on its second page rejects every waiter, and the next call walks afresh", async () => {
    const s = await setup(2);
    const reader = s.target.reader;
    let walks = 0;
    // The first walk gets its first page (the store's whole answer) and then
    // fails, as a page-2 error of ListObjectVersions would.
    const failing = new Proxy(reader, {
      get(target, name) {
        if (name === "listVersions")
          return async (prefix: string) => {
            const page1 = await target.listVersions(prefix);
            if (++walks === 1) throw new Error(`page 2 of ${prefix}: InternalError, HTTP 500`);
            return page1;
          };
        const value: unknown = Reflect.get(target, name, target);
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
    const shared = listOnce(failing, "");
    const keys = [...new Set(s.bucket.versions.map((v) => v.key))];
    const settled = await Promise.allSettled(keys.map((k) => shared.listVersions(k)));
    assert.equal(walks, 1, "the waiters shared one walk");
    for (const r of settled) {
      assert.equal(r.status, "rejected", "no waiter gets a half listing");
      assert.match(String(r.status === "rejected" ? r.reason : ""), /page 2/);
    }
    assert.deepEqual(await shared.listVersions("h/"), await reader.listVersions("h/"));
    assert.equal(walks, 2, "the next call walked again instead of getting the old rejection");
  });
});
