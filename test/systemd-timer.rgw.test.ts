/**
 * The ExecStart lines of systemd/immutd-backup@.service and immutd-verify.service,
 * run outside systemd as the unit's user would run them (not root, here user
 * nobody) against the real Ceph RGW: the exit codes the units turn into
 * success or failure (README "Without a daemon: systemd timers").
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { Catalog } from "../src/catalog/catalog.js";
import { DEFAULT_CONFIG_PATH } from "../src/config/config.js";
import { runCli } from "./support/cli.js";
import {
  createLockedBucket,
  type S3Env,
  s3env,
  targetYaml,
  uniqueBucket,
} from "./support/s3env.js";
import { settings } from "./support/unit-file.js";

const NOBODY = 65534;
const REPO = fileURLToPath(new URL("../../", import.meta.url));

/** A unit's ExecStart arguments (after the binary) for instance `job`, with `config` for the default path. */
function execArgs(unit: string, config: string, job = ""): string[] {
  const s = settings(readFileSync(join(REPO, "systemd", unit), "utf8"));
  const [line] = s.get("ExecStart") ?? [];
  const [, ...args] = (line ?? "").split(" ");
  return args.map((a) => (a === DEFAULT_CONFIG_PATH ? config : a.replaceAll("%i", job)));
}

describe("the timer units' commands, run as their user (Ceph RGW)", () => {
  let env: S3Env;
  let dir: string;
  let cfg: string;
  const run = (args: string[]) => runCli(args, { uid: NOBODY, gid: NOBODY, timeoutMs: 120_000 });

  before(async () => {
    env = s3env();
    const bucket = uniqueBucket("timer");
    await createLockedBucket(env, bucket, 1);
    dir = mkdtempSync(join(tmpdir(), "immutd-timer-"));
    chmodSync(dir, 0o755);
    writeFileSync(join(dir, "master.key"), `${randomBytes(32).toString("hex")}\n`, { mode: 0o600 });
    mkdirSync(join(dir, "data"));
    writeFileSync(join(dir, "data/a.txt"), "alpha\n");
    mkdirSync(join(dir, "locked"));
    writeFileSync(join(dir, "locked/ok.txt"), "readable\n");
    writeFileSync(join(dir, "locked/root-only"), "secret\n", { mode: 0o600 }); // root's: nobody cannot read it
    for (const f of ["", "master.key", "data", "data/a.txt"])
      chownSync(join(dir, f), NOBODY, NOBODY);
    cfg = join(dir, "config.yaml");
    writeFileSync(
      cfg,
      `catalog: ${dir}/state/catalog.db
masterKeyFile: ${dir}/master.key
host: timer-host
targets:
${targetYaml(env, { bucket })}jobs:
  - { name: files, target: local, paths: [${dir}/data] }
  - { name: partial, target: local, paths: [${dir}/locked] }
  - { name: broken, target: local, paths: [${dir}/missing] }
`,
      { mode: 0o644 },
    );
  });

  it("immutd-backup@files: exit 0, and immutd-verify then exits 0", async () => {
    const args = execArgs("immutd-backup@.service", cfg, "files");
    assert.deepEqual(args.slice(-2), ["backup", "files"]);
    const r = await run(args);
    assert.equal(r.code, 0, r.stderr);
    const v = await run(execArgs("immutd-verify.service", cfg));
    assert.equal(v.code, 0, v.stderr);
  });

  it("immutd-backup@partial: a file left out is exit 5, which the unit counts as a failure", async () => {
    const r = await run(execArgs("immutd-backup@.service", cfg, "partial"));
    assert.equal(r.code, 5, r.stderr);
    assert.match(r.stderr, /root-only/);
    const unit = settings(readFileSync(join(REPO, "systemd/immutd-backup@.service"), "utf8"));
    assert.equal(unit.get("SuccessExitStatus"), undefined, "5 is not declared a success");
  });

  it("immutd-backup@broken exits 3, a mistyped instance 2, a broken config 78", async () => {
    assert.equal((await run(execArgs("immutd-backup@.service", cfg, "broken"))).code, 3);
    const typo = await run(execArgs("immutd-backup@.service", cfg, "flies"));
    assert.equal(typo.code, 2);
    assert.match(typo.stderr, /unknown job flies/);
    const bad = join(dir, "bad.yaml");
    writeFileSync(bad, "jobs: [", { mode: 0o644 });
    assert.equal((await run(execArgs("immutd-backup@.service", bad, "files"))).code, 78);
  });

  it("exits 75 while the job runs elsewhere (the daemon, or a manual backup)", async () => {
    // A run recorded by a live process (this test's) is what the daemon leaves while it runs the job.
    const catalog = Catalog.open(join(dir, "state/catalog.db"));
    try {
      catalog.startRun({
        job: "files",
        target: "local",
        objectKey: "timer-host/files/elsewhere",
        startedAt: new Date(),
      });
      const r = await run(execArgs("immutd-backup@.service", cfg, "files"));
      assert.equal(r.code, 75, r.stderr);
      assert.match(r.stderr, /job files is already running/);
    } finally {
      catalog.close();
    }
  });
});
