/**
 * One job on the in-memory store with a clock the test moves: a bucket with a
 * 7-day COMPLIANCE default, its target `mem` (7 days), a tree with one file, a
 * catalog and the resolved config, and `backup` that runs the job once.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Catalog } from "../../src/catalog/catalog.js";
import type { Config, JobConfig } from "../../src/config/config.js";
import { Secret } from "../../src/config/secret.js";
import { type BackupResult, runBackup } from "../../src/flows/backup.js";
import { createLogger } from "../../src/log.js";
import { MemoryBucket } from "../../src/store/memory.js";
import { fullConfig, jobConfig, targetConfig } from "./target.js";

export async function memoryJob(o: {
  label: string;
  /** The clock's start, ISO 8601. */
  start: string;
  job: Partial<JobConfig>;
  config?: Partial<Config>;
}) {
  const work = mkdtempSync(join(tmpdir(), `immutd-${o.label}-`));
  const tree = join(work, "tree");
  mkdirSync(tree);
  writeFileSync(join(tree, "a"), "a0");
  const clock = { t: Date.parse(o.start) };
  const now = () => new Date(clock.t);
  const bucket = new MemoryBucket(o.label, { defaultRetention: { mode: "COMPLIANCE", days: 7 } });
  bucket.now = now;
  const tc = targetConfig({
    name: "mem",
    bucket: bucket.name,
    retention: { mode: "COMPLIANCE", days: 7 },
  });
  const job = jobConfig({ name: "t", target: "mem", paths: [tree], ...o.job });
  const catalog = Catalog.open(join(work, "catalog.db"));
  const config = fullConfig({
    catalog: catalog.path,
    masterKey: new Secret(randomBytes(32)),
    host: "h",
    targets: { mem: tc },
    jobs: [job],
    ...o.config,
  });
  const target = bucket.target("mem");
  const log = createLogger({ level: "silent" });
  const backup = async (): Promise<BackupResult> => {
    const r = await runBackup(job, { config, catalog, target, targetConfig: tc, log, now });
    assert.equal(r.status, "succeeded", r.error);
    return r;
  };
  return { work, tree, clock, now, bucket, tc, job, catalog, config, target, log, backup };
}
