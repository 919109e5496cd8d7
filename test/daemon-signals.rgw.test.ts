/**
 * Stop signals against the real Ceph RGW, for `immutd backup` and `immutd run`:
 * the same signal twice within milliseconds (timeout(1) signals the process
 * group, so immutd gets it once for itself and once via its parent) is one
 * stop request: the multipart upload is aborted and the run recorded
 * interrupted. A second signal seconds later still forces the exit.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  closeSync,
  existsSync,
  ftruncateSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import Database from "better-sqlite3";
import { openTarget } from "../src/store/s3.js";
import { CLI, DaemonProcess, logRecords } from "./support/cli.js";
import {
  createLockedBucket,
  rgwTarget,
  type S3Env,
  s3env,
  targetYaml,
  uniqueBucket,
} from "./support/s3env.js";

interface Env {
  dir: string;
  cfg: string;
  bucket: string;
  catalog: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("stop signals (Ceph RGW)", () => {
  let env: S3Env;
  before(() => {
    env = s3env();
  });

  /** A job `big` over a 3 GiB sparse file: cheap to read, slow enough to upload that signals land mid-way. */
  async function setup(label: string, jobExtra = ""): Promise<Env> {
    const dir = mkdtempSync(join(tmpdir(), `immutd-signals-${label}-`));
    const bucket = uniqueBucket(label);
    await createLockedBucket(env, bucket, 1);
    writeFileSync(join(dir, "master.key"), `${randomBytes(32).toString("hex")}\n`, { mode: 0o600 });
    mkdirSync(join(dir, "big"));
    const fd = openSync(join(dir, "big", "sparse.bin"), "w");
    ftruncateSync(fd, 3 * 1024 ** 3);
    closeSync(fd);
    const cfg = join(dir, "config.yaml");
    writeFileSync(
      cfg,
      `catalog: ${dir}/catalog.db
masterKeyFile: ${dir}/master.key
host: signals-test
targets:
${targetYaml(env, { bucket, extra: ["partSizeMiB: 5", "queueSize: 2"] })}jobs:
  - name: big
    target: local
    schedule: "0 0 1 1 *"
    compression: none
    paths: [${dir}/big]
${jobExtra}`,
    );
    return { dir, cfg, bucket, catalog: join(dir, "catalog.db") };
  }

  function lastRun(e: Env) {
    const db = new Database(e.catalog, { readonly: true });
    const row = db
      .prepare("SELECT status, error FROM runs WHERE job = 'big' ORDER BY id DESC LIMIT 1")
      .get() as { status: string; error: string | null } | undefined;
    db.close();
    return row;
  }

  async function uploads(e: Env): Promise<number> {
    const t = openTarget(rgwTarget(env, e.bucket));
    return (await t.admin?.listUploads(""))?.length ?? -1;
  }

  /** Waits until the run's multipart upload exists on the server, i.e. there is something to orphan. */
  async function uploadStarted(e: Env, alive: () => boolean): Promise<void> {
    for (let i = 0; i < 300; i++) {
      if ((await uploads(e)) > 0) return;
      assert.ok(alive(), "immutd exited before its upload started");
      await sleep(100);
    }
    assert.fail("no multipart upload appeared within 30 s");
  }

  /** `immutd backup` as a script or timeout(1) runs it, with stderr collected. */
  function backup(e: Env, cwd?: string) {
    const child = spawn(process.execPath, [CLI, "--config", e.cfg, "backup"], {
      env: { ...process.env, IMMUTD_CONFIG: "" },
      ...(cwd ? { cwd } : {}),
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
      child.on("close", (code, signal) => r({ code, signal })),
    );
    const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
    exited.finally(() => clearTimeout(timer));
    return { child, exited, stderr: () => stderr, alive: () => child.exitCode === null };
  }

  it("immutd backup: two SIGTERMs 20 ms apart cancel once: exit 3, upload aborted, run interrupted", async () => {
    const e = await setup("twice");
    const b = backup(e);
    await uploadStarted(e, b.alive);
    b.child.kill("SIGTERM");
    await sleep(20);
    b.child.kill("SIGTERM");
    const exit = await b.exited;
    assert.equal(exit.code, 3, b.stderr());
    const recs = logRecords(b.stderr());
    assert.ok(
      recs.some((r) => String(r.msg).includes("taken as the same stop request")),
      b.stderr(),
    );
    assert.equal(lastRun(e)?.status, "interrupted");
    assert.match(lastRun(e)?.error ?? "", /received SIGTERM/);
    assert.equal(await uploads(e), 0, "the multipart upload was left behind");
  });

  it("immutd backup: a second SIGTERM 2 s after the first still forces the exit (130)", async () => {
    // A before hook that ignores SIGTERM keeps the cancelled run busy (the hook
    // is killed only after its 5 s grace), so the process is still there 2 s later.
    const e = await setup(
      "force",
      `    hooks: { before: "trap '' TERM; touch hook-ran; sleep 30" }\n`,
    );
    const b = backup(e, e.dir);
    const marker = join(e.dir, "hook-ran");
    for (let i = 0; i < 300 && !existsSync(marker); i++) await sleep(100);
    assert.ok(existsSync(marker), `the before hook did not start:\n${b.stderr()}`);
    b.child.kill("SIGTERM");
    await sleep(2000);
    assert.ok(b.alive(), "still cleaning up after the first signal");
    b.child.kill("SIGTERM");
    const exit = await b.exited;
    assert.equal(exit.code, 130, b.stderr());
    assert.match(b.stderr(), /SIGTERM again \d+ ms after the first: exiting now/);
  });

  it("immutd run: two SIGTERMs 20 ms apart stop the daemon cleanly (exit 0, upload aborted, run interrupted)", async () => {
    const e = await setup("daemon");
    const d = new DaemonProcess(["--config", e.cfg]); // catch-up starts the never-run job at once
    try {
      await uploadStarted(e, () => d.child.exitCode === null);
      d.child.kill("SIGTERM");
      await sleep(20);
      d.child.kill("SIGTERM");
      const exit = await d.exited;
      assert.equal(
        exit.code,
        0,
        `${d.stderr}\n${d.records.map((r) => JSON.stringify(r)).join("\n")}`,
      );
      assert.ok(d.records.some((r) => String(r.msg).includes("taken as the same stop request")));
    } finally {
      d.child.kill("SIGKILL");
    }
    assert.equal(lastRun(e)?.status, "interrupted");
    assert.equal(await uploads(e), 0, "the multipart upload was left behind");
  });
});
