/**
 * Against the real Ceph RGW: the daemon's job metrics come from the catalog
 * (a restart after a failed run still exports it; a manual `immutd backup` in
 * another process shows in the running daemon's /metrics), and `immutd status`
 * shows a live daemon's pid and calls a kill -9'd daemon's lock file stale.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { DaemonProcess, runCli } from "./support/cli.js";
import { freePort, gauge } from "./support/metrics.js";
import {
  createLockedBucket,
  type S3Env,
  s3env,
  targetYaml,
  uniqueBucket,
} from "./support/s3env.js";

interface Status {
  daemon: { running: boolean | null; pid: number | null; stale?: string };
  verify: { next: string | null };
  jobs: { job: string; lastRun: { status: string } | null }[];
}

describe("status and job metrics from the catalog (daemon, Ceph RGW)", () => {
  let env: S3Env;
  before(() => {
    env = s3env();
  });

  it("a restarted daemon exports the failed last run at once; a manual backup shows in its /metrics; status shows its pid, then a stale lock after kill -9", async () => {
    const dir = mkdtempSync(join(tmpdir(), "immutd-status-"));
    const bucket = uniqueBucket("status");
    await createLockedBucket(env, bucket, 1);
    writeFileSync(join(dir, "master.key"), `${randomBytes(32).toString("hex")}\n`, { mode: 0o600 });
    mkdirSync(join(dir, "small"));
    writeFileSync(join(dir, "small", "a.txt"), "alpha\n");
    const port = await freePort();
    const cfg = join(dir, "config.yaml");
    const config = (catchUp: boolean) =>
      writeFileSync(
        cfg,
        `catalog: ${dir}/catalog.db
masterKeyFile: ${dir}/master.key
host: status-test
http: { listen: "127.0.0.1:${port}" }
targets:
${targetYaml(env, { bucket })}jobs:
  - name: broken
    target: local
    schedule: "0 0 1 1 *"
    catchUp: ${catchUp}
    paths: [${dir}/nonexistent]
  - name: good
    target: local
    schedule: "0 0 1 1 *"
    catchUp: false
    paths: [${dir}/small]
`,
      );
    const metrics = async () => (await fetch(`http://127.0.0.1:${port}/metrics`)).text();

    // 1. the daemon's catch-up run of `broken` fails; the daemon stops
    config(true);
    const first = new DaemonProcess(["--config", cfg]);
    try {
      await first.waitFor(
        (r) => String(r.msg).startsWith("backup failed"),
        60_000,
        "the failed run",
      );
      first.child.kill("SIGTERM");
      assert.equal((await first.exited).code, 0, first.stderr);
    } finally {
      first.child.kill("SIGKILL");
    }

    // 2. restarted (no catch-up now): its first scrape has the failed run and running 0
    config(false);
    const d = new DaemonProcess(["--config", cfg]);
    try {
      await d.waitFor((r) => r.msg === "immutd daemon started", 30_000, "daemon start");
      let text = await metrics();
      assert.equal(
        gauge(text, 'immutd_job_last_run_status{job="broken",status="failed"}'),
        1,
        text,
      );
      assert.equal(gauge(text, 'immutd_job_last_run_status{job="broken",status="succeeded"}'), 0);
      assert.equal(gauge(text, 'immutd_job_running{job="broken"}'), 0);
      assert.equal(gauge(text, 'immutd_job_running{job="good"}'), 0);
      assert.equal(gauge(text, 'immutd_job_last_success_timestamp_seconds{job="good"}'), undefined);
      assert.ok(
        gauge(text, "process_cpu_seconds_total") !== undefined,
        "process metrics named as prom-client names them",
      );

      // 3. a manual backup in another process: the daemon's /metrics shows its success
      const manual = await runCli(["--config", cfg, "backup", "good"], { timeoutMs: 120_000 });
      assert.equal(manual.code, 0, manual.stderr);
      text = await metrics();
      const success = gauge(text, 'immutd_job_last_success_timestamp_seconds{job="good"}');
      assert.ok(success && success > Date.now() / 1000 - 600, text);
      assert.equal(gauge(text, 'immutd_job_last_run_status{job="good",status="succeeded"}'), 1);
      assert.equal(gauge(text, 'immutd_job_last_run_files{job="good"}'), 1);
      assert.ok((gauge(text, 'immutd_job_last_run_bytes{job="good"}') ?? 0) > 0);

      // 4. status sees the live daemon and its pid
      const live = await runCli(["--config", cfg, "status", "--json"]);
      assert.equal(live.code, 0, live.stderr);
      const st = JSON.parse(live.stdout) as Status;
      assert.deepEqual(
        { running: st.daemon.running, pid: st.daemon.pid },
        { running: true, pid: d.child.pid },
      );
      assert.equal(st.jobs.find((j) => j.job === "broken")?.lastRun?.status, "failed");
      assert.ok(st.verify.next, "the daily default verify has a next time");
      const human = await runCli(["--config", cfg, "status"]);
      assert.match(human.stdout, new RegExp(`^daemon: running, pid ${d.child.pid}$`, "m"));
      assert.match(human.stdout, /^next verify: \d{4}-\d\d-\d\d 04:00:00 UTC$/m);

      // 5. kill -9: the lock file stays, status says the daemon is not running
      d.child.kill("SIGKILL");
      await d.exited;
      assert.ok(existsSync(`${dir}/catalog.db.daemon.lock`), "kill -9 leaves the lock file");
      const dead = await runCli(["--config", cfg, "status", "--json"]);
      const after = JSON.parse(dead.stdout) as Status;
      assert.equal(after.daemon.running, false);
      assert.equal(after.daemon.pid, d.child.pid);
      assert.match(after.daemon.stale ?? "", /is gone/);
      const text2 = await runCli(["--config", cfg, "status"]);
      assert.match(text2.stdout, /^daemon: not running \(stale lock file .*\)$/m);
      assert.match(text2.stdout, /^next verify: .*\(by the daemon, which is not running\)$/m);
    } finally {
      d.child.kill("SIGKILL");
    }
  });
});
