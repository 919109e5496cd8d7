/**
 * The backup runner's decisions on the in-memory store: what is refused, what
 * is recorded, how failures and cancellation end. The same behaviour on the
 * real server is in backup.rgw.test.ts.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { Catalog } from "../src/catalog/catalog.js";
import type { JobConfig } from "../src/config/config.js";
import { Secret } from "../src/config/secret.js";
import { runBackup } from "../src/flows/backup.js";
import { createLogger } from "../src/log.js";
import { deriveSseKey } from "../src/repo/keys.js";
import { MemoryBucket } from "../src/store/memory.js";
import { fullConfig, jobConfig, targetConfig } from "./support/target.js";

const work = mkdtempSync(join(tmpdir(), "immutd-backup-"));
const tree = join(work, "tree");
mkdirSync(join(tree, "sub"), { recursive: true });
writeFileSync(join(tree, "a.txt"), "alpha\n");
writeFileSync(join(tree, "sub", "b.bin"), randomBytes(200_000));
const masterKey = randomBytes(32);
const log = createLogger({ level: "silent" });

function setup(bucket: MemoryBucket, over: Partial<JobConfig> = {}) {
  const tc = targetConfig({
    name: "memory",
    bucket: bucket.name,
    retention: { mode: "COMPLIANCE", days: 1 },
  });
  const job = jobConfig({ name: "tree", target: "memory", paths: [tree], ...over });
  const catalog = Catalog.open(join(work, `${bucket.name}.db`));
  const config = fullConfig({
    catalog: catalog.path,
    masterKey: new Secret(masterKey),
    host: "h",
    targets: { memory: tc },
    jobs: [job],
  });
  return { tc, job, catalog, config, target: bucket.target("memory") };
}

describe("runBackup (memory store)", () => {
  it("uploads a gzip tar of the tree and records version, hash, key and retention", async () => {
    const bucket = new MemoryBucket("ok-bucket");
    const s = setup(bucket);
    const r = await runBackup(s.job, { ...s, targetConfig: s.tc, log });
    assert.equal(r.status, "succeeded", r.error);
    assert.equal(r.files, 2);
    const [stored] = bucket.versions;
    assert.ok(stored);
    const row = s.catalog.backup(r.backupId as number);
    assert.equal(row?.versionId, stored.versionId);
    assert.equal(row?.sha256, createHash("sha256").update(stored.data).digest("hex"));
    assert.equal(row?.size, stored.data.length);
    assert.equal(row?.retentionMode, "COMPLIANCE");
    assert.deepEqual(
      s.catalog.backupKey(r.backupId as number),
      deriveSseKey(masterKey, bucket.name, r.key),
    );
    const listing = execFileSync("tar", ["-tzf", "-"], { input: stored.data }).toString();
    assert.match(listing, /tree\/a\.txt/);
    assert.match(listing, /tree\/sub\/b\.bin/);
    assert.equal(s.catalog.run(r.runId)?.status, "succeeded");
  });

  it("refuses a bucket without Object Lock, records the failed run, uploads nothing", async () => {
    const bucket = new MemoryBucket("plain", { objectLock: false });
    const s = setup(bucket);
    const r = await runBackup(s.job, { ...s, targetConfig: s.tc, log });
    assert.equal(r.status, "failed");
    assert.match(r.error ?? "", /does not have Object Lock enabled/);
    assert.equal(bucket.versions.length, 0);
    assert.equal(s.catalog.run(r.runId)?.status, "failed");
  });

  it("refuses a default retention weaker than configured", async () => {
    for (const weak of [
      { mode: "GOVERNANCE", days: 30 },
      { mode: "COMPLIANCE", days: 0.5 },
    ] as const) {
      const bucket = new MemoryBucket(`weak-${weak.mode}`, { defaultRetention: weak });
      const s = setup(bucket);
      const r = await runBackup(s.job, { ...s, targetConfig: s.tc, log });
      assert.equal(r.status, "failed");
      assert.match(r.error ?? "", /weaker than the configured COMPLIANCE 1 days/);
      assert.equal(bucket.versions.length, 0);
    }
  });

  it("a cancelled run ends interrupted and stores nothing", async () => {
    const bucket = new MemoryBucket("cancel");
    const s = setup(bucket);
    const controller = new AbortController();
    controller.abort(new Error("shutdown"));
    const r = await runBackup(s.job, { ...s, targetConfig: s.tc, log, signal: controller.signal });
    assert.equal(r.status, "interrupted");
    assert.match(r.error ?? "", /cancelled: shutdown/);
    assert.equal(bucket.versions.length, 0);
    assert.equal(s.catalog.run(r.runId)?.status, "interrupted");
  });

  it("excludes the live catalog files when they lie under a backed-up path", async () => {
    const bucket = new MemoryBucket("selfcat");
    const s = setup(bucket, { paths: [work], compression: "none" });
    const r = await runBackup(s.job, { ...s, targetConfig: s.tc, log });
    assert.equal(r.status, "succeeded", r.error);
    const listing = execFileSync("tar", ["-tf", "-"], {
      input: bucket.versions[0]?.data,
    }).toString();
    assert.ok(!listing.includes("selfcat.db"), listing);
    assert.match(listing, /tree\/a\.txt/);
  });
});
