/**
 * `immutd run` as systemd or a container starts it, against the real Ceph RGW:
 * scheduling without overlap, SIGTERM (once, or twice as timeout(1) sends it;
 * also to `immutd backup`) and kill -9 in the middle of an upload, SIGHUP,
 * one daemon per catalog, hooks, command sources, /healthz, /metrics and webhooks.
 * Tests wait for the daemon's log records instead of sleeping.
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
  readFileSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import Database from "better-sqlite3";
import { nextRun } from "../src/config/schedule.js";
import { openTarget } from "../src/store/s3.js";
import { CLI, DaemonProcess, logRecords, runCli } from "./support/cli.js";
import { freePort, gauge } from "./support/metrics.js";
import {
  adminRemoveVersion,
  createLockedBucket,
  rgwTarget,
  type S3Env,
  s3env,
  targetYaml,
  uniqueBucket,
} from "./support/s3env.js";

/** A local webhook endpoint that keeps every JSON body it is sent. */
async function webhookReceiver() {
  const hits: Record<string, unknown>[] = [];
  const receiver = createServer((req, res) => {
    let body = "";
    req.on("data", (d: Buffer) => {
      body += d.toString();
    });
    req.on("end", () => {
      hits.push(JSON.parse(body) as Record<string, unknown>);
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", () => r()));
  return { hits, receiver, port: (receiver.address() as AddressInfo).port };
}

interface Env {
  dir: string;
  cfg: string;
  bucket: string;
  catalog: string;
}

describe("immutd run (daemon, Ceph RGW)", () => {
  let env: S3Env;
  let cliEnv: NodeJS.ProcessEnv;
  before(() => {
    env = s3env();
    cliEnv = { TEST_READER_SECRET: env.reader.secretAccessKey };
  });

  async function setup(label: string, jobs: string, top = ""): Promise<Env> {
    const dir = mkdtempSync(join(tmpdir(), `immutd-daemon-${label}-`));
    const bucket = uniqueBucket(label);
    await createLockedBucket(env, bucket, 1);
    writeFileSync(join(dir, "master.key"), `${randomBytes(32).toString("hex")}\n`, { mode: 0o600 });
    mkdirSync(join(dir, "small"));
    writeFileSync(join(dir, "small", "a.txt"), "alpha\n");
    const cfg = join(dir, "config.yaml");
    writeFileSync(
      cfg,
      `catalog: ${dir}/catalog.db
masterKeyFile: ${dir}/master.key
host: daemon-test
${top}
targets:
${targetYaml(env, {
  bucket,
  extra: ["partSizeMiB: 5", "queueSize: 2"],
  reader: `{ accessKeyId: ${env.reader.accessKeyId}, secretAccessKey: "\${TEST_READER_SECRET}" }`,
})}jobs:
${jobs.replaceAll("DIR", dir)}`,
    );
    return { dir, cfg, bucket, catalog: join(dir, "catalog.db") };
  }

  function runs(e: Env, job: string) {
    const db = new Database(e.catalog, { readonly: true });
    const rows = db
      .prepare(
        "SELECT id, status, started_at AS s, finished_at AS f, error FROM runs WHERE job = ? ORDER BY id",
      )
      .all(job) as {
      id: number;
      status: string;
      s: string;
      f: string | null;
      error: string | null;
    }[];
    db.close();
    return rows;
  }

  async function uploadsLeft(e: Env): Promise<number> {
    const t = openTarget(rgwTarget(env, e.bucket));
    return (await t.admin?.listUploads(""))?.length ?? -1;
  }

  /** A 3 GiB sparse file: cheap to read, slow enough to upload that a signal lands mid-way. */
  function bigFile(dir: string): void {
    mkdirSync(join(dir, "big"));
    const fd = openSync(join(dir, "big", "sparse.bin"), "w");
    ftruncateSync(fd, 3 * 1024 ** 3);
    closeSync(fd);
  }

  it("runs a job every two seconds without overlap, serves /healthz and /metrics, notifies, reloads, and is the only daemon", async () => {
    const { hits, receiver, port: hookPort } = await webhookReceiver();
    const httpPort = await freePort();
    const e = await setup(
      "tick",
      `  - name: tick
    target: local
    schedule: "*/2 * * * * *"
    paths: [DIR/small]
    notify: [{ url: "http://127.0.0.1:${hookPort}/hook", events: [start, success] }]
`,
      `http: { listen: "127.0.0.1:${httpPort}" }`,
    );
    const d = new DaemonProcess(["--config", e.cfg], cliEnv);
    try {
      await d.waitFor((r) => r.msg === "immutd daemon started", 30_000, "daemon start");
      for (let n = 1; n <= 3; n++) {
        await d.waitFor(
          () => d.count((r) => r.msg === "backup succeeded") >= n,
          30_000,
          `backup ${n}`,
        );
      }
      const health = await fetch(`http://127.0.0.1:${httpPort}/healthz`);
      assert.equal(health.status, 200);
      const metrics = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
      assert.match(metrics, /immutd_job_last_success_timestamp_seconds\{job="tick"\} \d+/);
      assert.match(metrics, /immutd_job_last_run_status\{job="tick",status="succeeded"\} 1/);
      assert.match(metrics, /immutd_job_next_run_timestamp_seconds\{job="tick"\} \d+/);
      // the newest backup's retain-until (1 day ahead: the bucket's retention), from the catalog
      const horizon = /immutd_job_lock_horizon_timestamp_seconds\{job="tick"\} (\d+)/.exec(metrics);
      assert.ok(horizon && Number(horizon[1]) > Date.now() / 1000 + 23 * 3600, metrics);

      // a second daemon on the same catalog refuses to start
      const second = await runCli(["--config", e.cfg, "run"], { env: cliEnv, timeoutMs: 30_000 });
      assert.equal(second.code, 75, second.stderr);
      assert.match(second.stderr, /already running \(pid \d+/);

      // an invalid config on SIGHUP is logged and the old one kept
      writeFileSync(`${e.cfg}.good`, "");
      const { readFileSync, copyFileSync } = await import("node:fs");
      copyFileSync(e.cfg, `${e.cfg}.good`);
      writeFileSync(e.cfg, readFileSync(e.cfg, "utf8").replace("schedule:", "shedule:"));
      d.child.kill("SIGHUP");
      await d.waitFor(
        (r) => String(r.msg).startsWith("config reload failed, keeping the running config"),
        10_000,
      );
      const before = d.count((r) => r.msg === "backup succeeded");
      await d.waitFor(
        () => d.count((r) => r.msg === "backup succeeded") > before,
        30_000,
        "a backup after the failed reload",
      );
      copyFileSync(`${e.cfg}.good`, e.cfg);

      d.child.kill("SIGTERM");
      const exit = await d.exited;
      assert.equal(exit.code, 0, d.stderr);
    } finally {
      d.child.kill("SIGKILL");
      receiver.close();
    }
    const rows = runs(e, "tick");
    assert.ok(rows.filter((r) => r.status === "succeeded").length >= 3);
    for (let i = 1; i < rows.length; i++) {
      const prev = rows[i - 1];
      const cur = rows[i];
      assert.ok(
        prev?.f && cur && prev.f <= cur.s,
        `run ${cur?.id} started before run ${prev?.id} finished`,
      );
    }
    const events = hits.filter((h) => h.job === "tick").map((h) => h.event);
    assert.ok(
      events.includes("start") && events.includes("success"),
      `webhook saw ${events.join(",")}`,
    );
    const success = hits.find((h) => h.event === "success");
    assert.equal(success?.status, "succeeded");
    assert.match(String(success?.versionId), /.+/);
  });

  it("SIGTERM during a large upload exits promptly, leaves no multipart upload, records the run interrupted", async () => {
    const e = await setup(
      "term",
      `  - name: big
    target: local
    schedule: "0 0 1 1 *"
    compression: none
    paths: [DIR/big]
`,
    );
    bigFile(e.dir);
    const d = new DaemonProcess(["--config", e.cfg], cliEnv); // catch-up starts the never-run job at once
    try {
      await d.waitFor((r) => r.msg === "backup started", 30_000, "backup start");
      await new Promise((r) => setTimeout(r, 1500)); // let some parts go up
      // while the daemon runs the job, a manual backup of it is refused with 75
      const manual = await runCli(["--config", e.cfg, "backup", "big"], { env: cliEnv });
      assert.equal(manual.code, 75, manual.stderr);
      const t0 = Date.now();
      d.child.kill("SIGTERM");
      const exit = await d.exited;
      assert.equal(exit.code, 0, d.stderr);
      assert.ok(
        Date.now() - t0 < 20_000,
        `stopped in ${Date.now() - t0} ms:\n${d.records.map((r) => JSON.stringify(r)).join("\n")}`,
      );
    } finally {
      d.child.kill("SIGKILL");
    }
    const rows = runs(e, "big");
    assert.equal(rows.at(-1)?.status, "interrupted");
    assert.equal(await uploadsLeft(e), 0);
  });

  it("after kill -9 mid-upload, the next start aborts the leftover upload and marks the run interrupted", async () => {
    const e = await setup(
      "kill",
      `  - name: big
    target: local
    schedule: "0 0 1 1 *"
    compression: none
    paths: [DIR/big]
`,
    );
    bigFile(e.dir);
    const d = new DaemonProcess(["--config", e.cfg], cliEnv);
    await d.waitFor((r) => r.msg === "backup started", 30_000, "backup start");
    const t = openTarget(rgwTarget(env, e.bucket));
    for (let i = 0; i < 100 && ((await t.admin?.listUploads(""))?.length ?? 0) === 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    d.child.kill("SIGKILL");
    await d.exited;
    assert.equal(await uploadsLeft(e), 1, "kill -9 left the multipart upload behind");
    assert.equal(runs(e, "big").at(-1)?.status, "running");

    // restart with catch-up off, so recovery is all it does
    const { readFileSync } = await import("node:fs");
    writeFileSync(
      e.cfg,
      readFileSync(e.cfg, "utf8").replace(
        "compression: none",
        "compression: none\n    catchUp: false",
      ),
    );
    const again = new DaemonProcess(["--config", e.cfg], cliEnv);
    try {
      await again.waitFor((r) => r.msg === "immutd daemon started", 30_000, "restart");
      assert.ok(
        again.records.some(
          (r) => r.msg === "aborted an incomplete multipart upload left by an interrupted run",
        ),
      );
      again.child.kill("SIGTERM");
      assert.equal((await again.exited).code, 0);
    } finally {
      again.child.kill("SIGKILL");
    }
    assert.equal(await uploadsLeft(e), 0);
    const last = runs(e, "big").at(-1);
    assert.equal(last?.status, "interrupted");
    assert.match(last?.error ?? "", /stopped without finishing/);
  });

  it("a failing before hook uploads nothing; command output is archived; after hooks see the result", async () => {
    const e = await setup(
      "hooks",
      `  - name: guarded
    target: local
    schedule: "@daily"
    paths: [DIR/small]
    hooks: { before: "echo refusing >&2; exit 3" }
  - name: dump
    target: local
    schedule: "@daily"
    commands: [{ name: db.sql, run: "echo 'CREATE TABLE t;'" }]
    hooks: { after: "echo \\"$IMMUTD_JOB $IMMUTD_STATUS $IMMUTD_VERSION_ID\\" > DIR/after.txt" }
  - name: baddump
    target: local
    schedule: "@daily"
    commands: [{ name: db.sql, run: "echo partial; exit 2" }]
`,
    );
    const r = await runCli(["--config", e.cfg, "backup"], { env: cliEnv });
    assert.equal(r.code, 3, r.stderr);
    const guarded = runs(e, "guarded").at(-1);
    assert.equal(guarded?.status, "failed");
    assert.match(guarded?.error ?? "", /before hook exited with 3: refusing/);
    const bad = runs(e, "baddump").at(-1);
    assert.equal(bad?.status, "failed");
    assert.match(bad?.error ?? "", /command db\.sql exited with 2/);
    const t = openTarget(rgwTarget(env, e.bucket));
    const versions = ((await t.admin?.listVersions("")) ?? []).filter(
      (v) => !v.key.endsWith(".manifest.json.gz"),
    );
    assert.deepEqual(
      versions.map((v) => v.key.split("/")[1]),
      ["dump"],
      "only the good job stored anything",
    );
    const { readFileSync } = await import("node:fs");
    const done = logRecords(r.stderr).find((l) => l.msg === "backup succeeded" && l.job === "dump");
    assert.equal(
      readFileSync(join(e.dir, "after.txt"), "utf8").trim(),
      `dump succeeded ${String(done?.versionId)}`,
    );
    const list = await runCli(["--config", e.cfg, "restore", "dump", "--list"], { env: cliEnv });
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, / 16 .* immutd-commands\/db\.sql/);

    const status = await runCli(["--config", e.cfg, "status", "--json"], { env: cliEnv });
    assert.equal(status.code, 0, status.stderr);
    const st = (
      JSON.parse(status.stdout) as { jobs: { job: string; lastRun: { status: string } | null }[] }
    ).jobs;
    assert.equal(st.find((s) => s.job === "guarded")?.lastRun?.status, "failed");
    assert.equal(st.find((s) => s.job === "dump")?.lastRun?.status, "succeeded");
  });
  it("scheduled verification reports a vanished backup in the log, /metrics and a failure webhook", async () => {
    const { hits, receiver, port: hookPort } = await webhookReceiver();
    const httpPort = await freePort();
    const e = await setup(
      "verify",
      `  - name: once
    target: local
    schedule: "0 0 1 1 *"
    paths: [DIR/small]
`,
      `http: { listen: "127.0.0.1:${httpPort}" }
verify: { schedule: "*/2 * * * * *" }
notify: [{ url: "http://127.0.0.1:${hookPort}/hook", events: [failure] }]`,
    );
    const d = new DaemonProcess(["--config", e.cfg], cliEnv);
    try {
      const done = await d.waitFor(
        (r) => r.msg === "backup succeeded",
        30_000,
        "the catch-up backup",
      );
      await d.waitFor((r) => r.msg === "verification passed", 30_000, "a clean verification");
      adminRemoveVersion(env, e.bucket, String(done.key), String(done.versionId));
      await d.waitFor(
        (r) => r.msg === "verification found problems",
        30_000,
        "a verification with findings",
      );
      const metrics = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
      assert.match(metrics, /immutd_verify_findings\{kind="missing"\} 1/);
      for (
        let i = 0;
        i < 50 && !hits.some((h) => String(h.error).startsWith("verify: missing"));
        i++
      ) {
        await new Promise((r) => setTimeout(r, 100));
      }
      const hit = hits.find((h) => String(h.error).startsWith("verify: missing"));
      assert.ok(hit, `webhook saw ${JSON.stringify(hits)}`);
      assert.equal(hit.job, "once");
      assert.equal(hit.versionId, done.versionId);
      d.child.kill("SIGTERM");
      assert.equal((await d.exited).code, 0, d.stderr);
    } finally {
      d.child.kill("SIGKILL");
      receiver.close();
    }
  });
  const idle = `  - name: idle
    target: local
    schedule: "0 0 1 1 *"
    catchUp: false
    paths: [DIR/small]
`;

  async function metricsText(port: number): Promise<string> {
    return (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  }

  it("verifies daily by default (next run in /metrics); `verify.schedule: off` is warned about at start", async () => {
    const httpPort = await freePort();
    const e = await setup("vdefault", idle, `http: { listen: "127.0.0.1:${httpPort}" }`);
    const d = new DaemonProcess(["--config", e.cfg], cliEnv);
    try {
      const started = await d.waitFor((r) => r.msg === "immutd daemon started", 30_000);
      assert.equal(started.verifySchedule, "0 4 * * *");
      const next = gauge(
        await metricsText(httpPort),
        'immutd_verify_next_run_timestamp_seconds{deep="false"}',
      );
      const expected = nextRun({ schedule: "0 4 * * *" }, new Date());
      assert.equal(next, (expected?.getTime() ?? 0) / 1000);
      assert.ok(!d.records.some((r) => String(r.msg).startsWith("verify.schedule is off")));
      d.child.kill("SIGTERM");
      assert.equal((await d.exited).code, 0, d.stderr);
    } finally {
      d.child.kill("SIGKILL");
    }

    writeFileSync(
      e.cfg,
      readFileSync(e.cfg, "utf8").replace("http: {", "verify: { schedule: off }\nhttp: {"),
    );
    const off = new DaemonProcess(["--config", e.cfg], cliEnv);
    try {
      const warn = await off.waitFor(
        (r) => String(r.msg).startsWith("verify.schedule is off"),
        30_000,
        "the warning about verify.schedule: off",
      );
      assert.equal(warn.level, "warn");
      assert.match(String(warn.msg), /never extends the newest locks \(keepLatestLocked\)/);
      const started = await off.waitFor((r) => r.msg === "immutd daemon started", 30_000);
      assert.equal(started.verifySchedule, "off");
      const text = await metricsText(httpPort);
      assert.equal(
        gauge(text, 'immutd_verify_next_run_timestamp_seconds{deep="false"}'),
        undefined,
      );
      off.child.kill("SIGTERM");
      assert.equal((await off.exited).code, 0, off.stderr);
    } finally {
      off.child.kill("SIGKILL");
    }
  });

  it("SIGHUP: a failed reload shows in /metrics and the log; a new http.listen is re-bound, one that cannot be bound is refused", async () => {
    const [port1, port2] = [await freePort(), await freePort()];
    const e = await setup("reload", idle, `http: { listen: "127.0.0.1:${port1}" }`);
    const good = readFileSync(e.cfg, "utf8");
    const d = new DaemonProcess(["--config", e.cfg], cliEnv);
    const reloads = (pred: (r: Record<string, unknown>) => boolean) => d.count(pred);
    const failed = (r: Record<string, unknown>) =>
      String(r.msg).startsWith("config reload failed, keeping the running config");
    const ok = (r: Record<string, unknown>) => r.msg === "config reloaded";
    const hup = async (text: string, pred: (r: Record<string, unknown>) => boolean) => {
      const n = reloads(pred);
      writeFileSync(e.cfg, text);
      d.child.kill("SIGHUP");
      await d.waitFor(() => reloads(pred) > n, 20_000, "the reload's outcome");
      return d.records.filter(pred).at(-1) as Record<string, unknown>;
    };
    // holds a third port, so a reload onto it cannot bind
    const squatter = createServer();
    await new Promise<void>((r) => squatter.listen(0, "127.0.0.1", () => r()));
    const taken = (squatter.address() as AddressInfo).port;
    try {
      await d.waitFor((r) => r.msg === "immutd daemon started", 30_000);
      let text = await metricsText(port1);
      assert.equal(gauge(text, "immutd_config_last_reload_successful"), 1);
      const loadedAt = gauge(text, "immutd_config_last_reload_success_timestamp_seconds") ?? 0;
      assert.ok(loadedAt > 0);

      // an invalid file: error in the log, 0 in /metrics, the last success time unchanged
      const bad = await hup(good.replace("schedule:", "shedule:"), failed);
      assert.equal(bad.level, "error");
      text = await metricsText(port1);
      assert.equal(gauge(text, "immutd_config_last_reload_successful"), 0);
      assert.equal(gauge(text, "immutd_config_last_reload_success_timestamp_seconds"), loadedAt);

      // a new http.listen is applied: served on the new port, no longer on the old one
      await new Promise((r) => setTimeout(r, 1000)); // a later second for the timestamp
      await hup(good.replace(`:${port1}"`, `:${port2}"`), ok);
      text = await metricsText(port2);
      assert.equal(gauge(text, "immutd_config_last_reload_successful"), 1);
      assert.ok(
        (gauge(text, "immutd_config_last_reload_success_timestamp_seconds") ?? 0) > loadedAt,
      );
      await assert.rejects(fetch(`http://127.0.0.1:${port1}/healthz`));

      // an http.listen that cannot be bound: refused out loud, the old listener kept
      const refused = await hup(good.replace(`:${port1}"`, `:${taken}"`), failed);
      assert.match(String(refused.msg), new RegExp(`127\\.0\\.0\\.1:${taken}.*EADDRINUSE`));
      assert.match(String(refused.msg), new RegExp(`stay on 127\\.0\\.0\\.1:${port2}`));
      text = await metricsText(port2);
      assert.equal(gauge(text, "immutd_config_last_reload_successful"), 0);
      assert.equal((await fetch(`http://127.0.0.1:${port2}/healthz`)).status, 200);

      d.child.kill("SIGTERM");
      assert.equal((await d.exited).code, 0, d.stderr);
    } finally {
      d.child.kill("SIGKILL");
      squatter.close();
    }
  });
  // Stop signals: the same signal twice within milliseconds (timeout(1) signals
  // the process group, so immutd gets it once for itself and once via its
  // parent) is one stop request; a second signal seconds later forces the exit.
  const bigJob = (extra = "") => `  - name: big
    target: local
    schedule: "0 0 1 1 *"
    compression: none
    paths: [DIR/big]
${extra}`;
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  /** Waits until the run's multipart upload exists on the server, i.e. there is something to orphan. */
  async function uploadStarted(e: Env, alive: () => boolean): Promise<void> {
    for (let i = 0; i < 300; i++) {
      if ((await uploadsLeft(e)) > 0) return;
      assert.ok(alive(), "immutd exited before its upload started");
      await sleep(100);
    }
    assert.fail("no multipart upload appeared within 30 s");
  }

  /** `immutd backup` as a script or timeout(1) runs it, with stderr collected as it comes. */
  function backupProcess(e: Env) {
    const child = spawn(process.execPath, [CLI, "--config", e.cfg, "backup"], {
      env: { ...process.env, IMMUTD_CONFIG: "", ...cliEnv },
      cwd: e.dir,
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    const exited = new Promise<{ code: number | null }>((r) =>
      child.on("close", (code) => r({ code })),
    );
    const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
    exited.finally(() => clearTimeout(timer));
    return { child, exited, stderr: () => stderr, alive: () => child.exitCode === null };
  }

  it("immutd backup: two SIGTERMs 20 ms apart cancel once: exit 3, upload aborted, run interrupted", async () => {
    const e = await setup("twice", bigJob());
    bigFile(e.dir);
    const b = backupProcess(e);
    await uploadStarted(e, b.alive);
    b.child.kill("SIGTERM");
    await sleep(20);
    b.child.kill("SIGTERM");
    const exit = await b.exited;
    // Never the forced exit (130). Either the second signal found the run still
    // cancelling and was taken as the same request (exit 3), or the cancel had
    // already been recorded and reported and the process was leaving (Node's
    // handlers are gone by then and the signal ends it, nothing left to clean up).
    if (exit.code === 3) {
      assert.ok(
        logRecords(b.stderr()).some((r) =>
          String(r.msg).includes("taken as the same stop request"),
        ),
        b.stderr(),
      );
    } else {
      assert.deepEqual(exit, { code: null, signal: "SIGTERM" }, b.stderr());
      assert.match(b.stderr(), /1 of 1 job did not succeed: big \(interrupted\)/);
    }
    const last = runs(e, "big").at(-1);
    assert.equal(last?.status, "interrupted");
    assert.match(last?.error ?? "", /received SIGTERM/);
    assert.equal(await uploadsLeft(e), 0, "the multipart upload was left behind");
  });

  it("immutd backup: a second SIGTERM 2 s after the first still forces the exit (130)", async () => {
    // A before hook that ignores SIGTERM keeps the cancelled run busy (the hook
    // is killed only after its 5 s grace), so the process is still there 2 s later.
    const e = await setup(
      "force",
      bigJob(`    hooks: { before: "trap '' TERM; touch hook-ran; sleep 30" }\n`),
    );
    bigFile(e.dir);
    const b = backupProcess(e);
    const marker = join(e.dir, "hook-ran");
    for (let i = 0; i < 300 && !existsSync(marker); i++) await sleep(100);
    assert.ok(existsSync(marker), `the before hook did not start:\n${b.stderr()}`);
    b.child.kill("SIGTERM");
    await sleep(2000);
    assert.ok(b.alive(), "still cleaning up after the first signal");
    b.child.kill("SIGTERM");
    assert.equal((await b.exited).code, 130, b.stderr());
    assert.match(b.stderr(), /SIGTERM again \d+ ms after the first: exiting now/);
  });

  it("immutd run: two SIGTERMs 20 ms apart stop the daemon cleanly (exit 0, upload aborted, run interrupted)", async () => {
    const e = await setup("daemon2x", bigJob());
    bigFile(e.dir);
    const d = new DaemonProcess(["--config", e.cfg], cliEnv); // catch-up starts the never-run job at once
    try {
      await uploadStarted(e, () => d.child.exitCode === null);
      d.child.kill("SIGTERM");
      await sleep(20);
      d.child.kill("SIGTERM");
      const exit = await d.exited;
      const log = `${d.stderr}\n${d.records.map((r) => JSON.stringify(r)).join("\n")}`;
      // Never the forced exit (130). Either the second signal found the daemon
      // still stopping and was taken as the same request (exit 0), or the stop had
      // already finished and the process was leaving: Node's own handlers are gone
      // by then and the signal ends it, with everything already cleaned up.
      if (exit.code === 0) {
        assert.ok(
          d.records.some((r) => String(r.msg).includes("taken as the same stop request")),
          log,
        );
      } else {
        assert.deepEqual(exit, { code: null, signal: "SIGTERM" }, log);
        assert.ok(
          d.records.some((r) => r.msg === "stopped"),
          log,
        );
      }
    } finally {
      d.child.kill("SIGKILL");
    }
    assert.equal(runs(e, "big").at(-1)?.status, "interrupted");
    assert.equal(await uploadsLeft(e), 0, "the multipart upload was left behind");
  });
});
