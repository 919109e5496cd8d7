// The closing note's figure for `immutd catalog rebuild` (not part of the test
// suite: timings on a shared machine are not tests). Makes N real backups
// (default 1,000) of a tiny tree into a fresh bucket on the test RGW, with 20
// jobs running at once in one process (runBackup, as the daemon runs them),
// then on a "new machine" (same config and master key, no catalog) times
// `immutd catalog rebuild` through the CLI and compares the rebuilt catalog
// with the original row for row (ids and runs aside).
//
// Usage (after npm run build, with the test server's env):
//   IMMUTD_TEST_S3_ENV=/path/env.json node scripts/rebuild-figure.ts [N]
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Catalog } from "../dist/src/catalog/catalog.js";
import { loadConfig } from "../dist/src/config/config.js";
import { runBackup } from "../dist/src/flows/backup.js";
import { createLogger } from "../dist/src/log.js";
import { closeTarget, openTarget } from "../dist/src/store/s3.js";
import {
  createLockedBucket,
  credYaml,
  s3env,
  targetYaml,
  uniqueBucket,
} from "../dist/test/support/s3env.js";

const total = Number(process.argv[2] ?? 1000);
const JOBS = 20;
const env = s3env();
const bucket = uniqueBucket("rbfig");
await createLockedBucket(env, bucket, 1);
const dir = mkdtempSync(join(tmpdir(), "immutd-rbfig-"));
mkdirSync(join(dir, "data"));
writeFileSync(join(dir, "data", "a.txt"), "alpha\n");
writeFileSync(join(dir, "master.key"), `${randomBytes(32).toString("hex")}\n`, { mode: 0o600 });
const jobs = Array.from({ length: JOBS }, (_, i) => `j${String(i).padStart(2, "0")}`);
const yaml = (catalog: string) => `catalog: ${catalog}
masterKeyFile: ${dir}/master.key
host: figure
targets:
${targetYaml(env, { bucket, writer: credYaml(env.writer), reader: credYaml(env.reader) })}jobs:
${jobs.map((j) => `  - name: ${j}\n    target: local\n    schedule: "0 3 * * *"\n    paths: [${dir}/data]\n`).join("")}`;
writeFileSync(join(dir, "old.yaml"), yaml(`${dir}/old/catalog.db`), { mode: 0o600 });
writeFileSync(join(dir, "new.yaml"), yaml(`${dir}/new/catalog.db`), { mode: 0o600 });

const { config } = loadConfig(join(dir, "old.yaml"));
const tc = config.targets.local;
if (!tc) throw new Error("no target");
const catalog = Catalog.open(config.catalog);
const target = openTarget(tc, { parallel: JOBS });
const log = createLogger({ level: "silent" });
const t0 = Date.now();
let made = 0;
await Promise.all(
  config.jobs.map(async (job, i) => {
    const share = Math.floor(total / JOBS) + (i < total % JOBS ? 1 : 0);
    for (let k = 0; k < share; k++) {
      const r = await runBackup(job, { config, catalog, target, targetConfig: tc, log });
      if (r.status !== "succeeded" || r.warnings) throw new Error(`${job.name}: ${r.error}`);
      if (++made % 100 === 0)
        process.stderr.write(`${made} backups, ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
    }
  }),
);
closeTarget(target);
const original = catalog.listBackups();
catalog.close();
process.stderr.write(
  `${original.length} backups made in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`,
);

const cli = (cfg: string, ...args: string[]) =>
  execFileSync(process.execPath, ["dist/src/cli.js", "--config", join(dir, cfg), ...args], {
    encoding: "utf8",
    maxBuffer: 256 * 1024 * 1024,
  });
const t1 = process.hrtime.bigint();
const out = cli("new.yaml", "catalog", "rebuild");
const seconds = Number(process.hrtime.bigint() - t1) / 1e9;
process.stderr.write(out);
type Row = { id: number; runId: number | null; key: string };
const comparable = (rows: Row[]) =>
  JSON.stringify(
    rows.map(({ id: _i, runId: _r, ...rest }) => rest).sort((a, b) => (a.key < b.key ? -1 : 1)),
  );
const rebuilt = JSON.parse(cli("new.yaml", "list", "--json")) as Row[];
const equal = comparable(rebuilt) === comparable(original as Row[]);
console.log(
  `catalog rebuild of ${rebuilt.length} backups (bucket ${bucket}): ${seconds.toFixed(2)} s; rebuilt rows equal the original row for row (ids and runs aside): ${equal}`,
);
if (!equal || rebuilt.length !== original.length) process.exit(1);
