/**
 * The daemon's job metrics come from the catalog, whoever ran the job, and a
 * failing catalog keeps /metrics up; prom-client's process metrics keep their
 * own names; `immutd status` tells a live daemon from a stale lock file and
 * shows the last and next verify. The real daemon is in status.rgw.test.ts.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import Database from "better-sqlite3";
import { Catalog } from "../src/catalog/catalog.js";
import { startHttp } from "../src/daemon/http.js";
import { daemonLockPath, lockOwner } from "../src/daemon/lockfile.js";
import { Metrics } from "../src/daemon/metrics.js";
import { runCli } from "./support/cli.js";
import { gauge } from "./support/metrics.js";

const work = mkdtempSync(join(tmpdir(), "immutd-status-"));
after(() => rmSync(work, { recursive: true, force: true }));
let n = 0;
const fresh = () => join(work, `c${++n}`, "catalog.db");

/** A run as another process records it: a row with that process's pid. */
function foreignRun(
  path: string,
  r: { job: string; status: string; started: string; finished?: string; pid?: number },
) {
  const db = new Database(path);
  db.prepare(
    `INSERT INTO runs (job, target, object_key, started_at, finished_at, status, bytes, files, warnings, pid)
     VALUES (?, 't', 'k', ?, ?, ?, 2048, 3, 1, ?)`,
  ).run(r.job, r.started, r.finished ?? null, r.status, r.pid ?? 999_999_999);
  db.close();
}

/** A pid that existed and is gone now. */
function deadPid(): number {
  const r = spawnSync("sh", ["-c", "echo $$"], { encoding: "utf8" });
  return Number(r.stdout.trim());
}

describe("job metrics from the catalog", () => {
  it("a fresh Metrics (a restarted daemon) exports the last run, last success and running at its first scrape", async () => {
    const path = fresh();
    const catalog = Catalog.open(path);
    try {
      foreignRun(path, {
        job: "etc",
        status: "succeeded",
        started: "2026-11-30T03:00:00.000Z",
        finished: "2026-11-30T03:00:05.000Z",
      });
      foreignRun(path, {
        job: "etc",
        status: "failed",
        started: "2026-12-01T03:00:00.000Z",
        finished: "2026-12-01T03:00:02.500Z",
      });
      // a run left "running" by a process that is gone is not running
      foreignRun(path, { job: "db", status: "running", started: "2026-12-01T04:00:00.000Z" });
      const m = new Metrics();
      m.jobsFrom(() => catalog.jobStates(["etc", "db", "never"]));
      const text = await m.exposition();
      assert.equal(gauge(text, 'immutd_job_last_run_status{job="etc",status="failed"}'), 1);
      assert.equal(gauge(text, 'immutd_job_last_run_status{job="etc",status="succeeded"}'), 0);
      assert.equal(
        gauge(text, 'immutd_job_last_success_timestamp_seconds{job="etc"}'),
        Date.parse("2026-11-30T03:00:00Z") / 1000,
      );
      assert.equal(gauge(text, 'immutd_job_last_run_duration_seconds{job="etc"}'), 2.5);
      assert.equal(gauge(text, 'immutd_job_last_run_bytes{job="etc"}'), 2048);
      assert.equal(gauge(text, 'immutd_job_last_run_files{job="etc"}'), 3);
      assert.equal(gauge(text, 'immutd_job_last_run_warnings{job="etc"}'), 1);
      for (const job of ["etc", "db", "never"])
        assert.equal(gauge(text, `immutd_job_running{job="${job}"}`), 0, job);
      assert.equal(gauge(text, 'immutd_job_last_run_status{job="db",status="failed"}'), undefined);
      assert.equal(
        gauge(text, 'immutd_job_last_success_timestamp_seconds{job="never"}'),
        undefined,
      );
    } finally {
      catalog.close();
    }
  });

  it("a run of another live process shows as running; a success recorded later shows at the next scrape", async () => {
    const path = fresh();
    const catalog = Catalog.open(path);
    const other = spawn("sleep", ["60"]);
    try {
      const jobs = ["etc"];
      const m = new Metrics();
      m.jobsFrom(() => catalog.jobStates(jobs));
      // crashes left a dozen dead "running" rows behind; the newest run is live
      for (let h = 10; h < 22; h++)
        foreignRun(path, { job: "etc", status: "running", started: `2026-11-20T${h}:00:00.000Z` });
      foreignRun(path, {
        job: "etc",
        status: "running",
        started: "2026-12-01T03:00:00.000Z",
        pid: other.pid as number,
      });
      let text = await m.exposition();
      assert.equal(gauge(text, 'immutd_job_running{job="etc"}'), 1);
      const db = new Database(path);
      db.prepare(
        `UPDATE runs SET status = 'succeeded', finished_at = '2026-12-01T03:01:00.000Z' WHERE pid = ?`,
      ).run(other.pid);
      db.close();
      text = await m.exposition();
      assert.equal(gauge(text, 'immutd_job_running{job="etc"}'), 0);
      assert.equal(
        gauge(text, 'immutd_job_last_success_timestamp_seconds{job="etc"}'),
        Date.parse("2026-12-01T03:00:00Z") / 1000,
      );
      assert.equal(gauge(text, 'immutd_job_last_run_duration_seconds{job="etc"}'), 60);
      // a job removed from the config loses its series
      jobs.length = 0;
      text = await m.exposition();
      assert.doesNotMatch(text, /job="etc"/);
    } finally {
      other.kill("SIGKILL");
      catalog.close();
    }
  });

  it("the daemon's own jitter wait counts as running before the run row exists", async () => {
    const path = fresh();
    const catalog = Catalog.open(path);
    try {
      const m = new Metrics();
      m.jobsFrom(() => catalog.jobStates(["etc"]));
      m.running("etc", true);
      assert.equal(gauge(await m.exposition(), 'immutd_job_running{job="etc"}'), 1);
      m.running("etc", false);
      assert.equal(gauge(await m.exposition(), 'immutd_job_running{job="etc"}'), 0);
    } finally {
      catalog.close();
    }
  });

  it("a catalog that fails while scraping keeps /metrics up with the last values", async () => {
    const path = fresh();
    const catalog = Catalog.open(path);
    foreignRun(path, {
      job: "etc",
      status: "failed",
      started: "2026-12-01T03:00:00.000Z",
      finished: "2026-12-01T03:00:01.000Z",
    });
    const m = new Metrics();
    m.jobsFrom(() => catalog.jobStates(["etc"]));
    m.lockHorizonsFrom(() => catalog.lockHorizons());
    let server: Server | undefined;
    try {
      server = await startHttp("127.0.0.1:0", m, () => ({ ok: true, reasons: [] }));
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/metrics`;
      assert.equal(
        gauge(
          await (await fetch(url)).text(),
          'immutd_job_last_run_status{job="etc",status="failed"}',
        ),
        1,
      );
      catalog.close(); // every query now throws
      assert.throws(() => catalog.jobStates(["etc"]));
      const res = await fetch(url);
      assert.equal(res.status, 200);
      const text = await res.text();
      assert.equal(gauge(text, 'immutd_job_last_run_status{job="etc",status="failed"}'), 1);
      assert.equal(gauge(text, "immutd_up"), 1);
    } finally {
      server?.close();
    }
  });

  it("one query per scrape, however many jobs", async () => {
    const path = fresh();
    const catalog = Catalog.open(path);
    try {
      let queries = 0;
      const m = new Metrics();
      m.jobsFrom(() => {
        queries++;
        return catalog.jobStates(["a", "b", "c"]);
      });
      await m.exposition();
      assert.equal(queries, 1);
    } finally {
      catalog.close();
    }
  });
});

describe("verify metrics from the catalog", () => {
  it("a restarted daemon exports the last verify's findings and each kind's last time; a later verify (a timer's) replaces them", async () => {
    const path = fresh();
    const catalog = Catalog.open(path);
    try {
      const record = (at: string, deep: boolean, kinds: string[]) =>
        catalog.recordVerifyRun({
          startedAt: new Date(at),
          finishedAt: new Date(Date.parse(at) + 5000),
          deep,
          job: null,
          checked: 4,
          findings: kinds.length,
          report: { findings: kinds.map((kind) => ({ kind, message: kind })) },
        });
      record("2026-11-29T05:00:00Z", true, []);
      record("2026-12-01T04:00:00Z", false, ["missing", "missing", "not-locked"]);
      const m = new Metrics();
      m.verifiesFrom(() => catalog.lastVerifyRuns());
      let text = await m.exposition();
      assert.equal(gauge(text, 'immutd_verify_findings{kind="missing"}'), 2);
      assert.equal(gauge(text, 'immutd_verify_findings{kind="not-locked"}'), 1);
      assert.equal(
        gauge(text, 'immutd_verify_last_run_timestamp_seconds{deep="false"}'),
        Date.parse("2026-12-01T04:00:05Z") / 1000,
      );
      assert.equal(
        gauge(text, 'immutd_verify_last_run_timestamp_seconds{deep="true"}'),
        Date.parse("2026-11-29T05:00:05Z") / 1000,
      );
      record("2026-12-02T04:00:00Z", false, []);
      text = await m.exposition();
      assert.equal(gauge(text, 'immutd_verify_findings{kind="none"}'), 0);
      assert.equal(gauge(text, 'immutd_verify_findings{kind="missing"}'), undefined);
      catalog.close();
      text = await m.exposition(); // the catalog fails: the last values stay
      assert.equal(gauge(text, 'immutd_verify_findings{kind="none"}'), 0);
    } finally {
      if (catalog.db.open) catalog.close();
    }
  });
});

describe("process metrics", () => {
  it("keep prom-client's names (no immutd_process_process_ prefix) and pass promtool check metrics", async () => {
    const text = await new Metrics().exposition();
    assert.match(text, /^process_cpu_seconds_total \d/m);
    assert.match(text, /^process_resident_memory_bytes \d/m);
    assert.match(text, /^nodejs_heap_size_used_bytes \d/m);
    assert.doesNotMatch(text, /immutd_process_/);
    // prom-client's nodejs_active_*_total gauges break promtool's naming lint
    // (a gauge named _total); they are prom-client's, left as it names them.
    const lint = spawnSync("promtool", ["check", "metrics"], {
      input: text
        .split("\n")
        .filter((l) => !/nodejs_active_\w+_total/.test(l))
        .join("\n"),
      encoding: "utf8",
    });
    assert.equal(lint.error, undefined, "promtool is needed: apt-get install prometheus");
    assert.equal(lint.status, 0, lint.stdout + lint.stderr);
  });
});

describe("the daemon lock, as status reads it", () => {
  const lock = () => {
    const dir = mkdtempSync(join(work, "lock-"));
    return { file: join(dir, "catalog.db"), path: daemonLockPath(join(dir, "catalog.db")) };
  };

  it("no file: not running; a dead pid, junk or a live process that is not immutd: stale", () => {
    const l = lock();
    assert.deepEqual(lockOwner(l.path, l.file), { state: "none" });
    const dead = deadPid();
    writeFileSync(l.path, `${dead}\n`);
    assert.deepEqual(lockOwner(l.path, l.file), {
      state: "stale",
      pid: dead,
      why: `process ${dead} is gone`,
    });
    writeFileSync(l.path, "12x\n");
    assert.equal(lockOwner(l.path, l.file).state, "stale");
    // a pid reused by an unrelated process (this test runner is alive, and not `immutd run`)
    writeFileSync(l.path, `${process.pid}\n`);
    const reused = lockOwner(l.path, l.file);
    assert.equal(reused.state, "stale");
    assert.match(reused.state === "stale" ? reused.why : "", /is not an immutd daemon/);
  });

  it("a live `immutd … run` that does not have this catalog open is not its daemon", async () => {
    const l = lock();
    // its argv looks like the daemon's (an `immutd` and a `run`), but it holds no catalog
    const other = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60000)", "immutd", "run"]);
    try {
      await new Promise((r) => other.once("spawn", r));
      // until the child's exec shows in /proc (under load it can lag the spawn event)
      for (let i = 0; i < 100; i++) {
        if (readFileSync(`/proc/${other.pid}/cmdline`, "utf8").includes("immutd")) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      writeFileSync(l.path, `${other.pid}\n`);
      const owner = lockOwner(l.path, l.file);
      assert.equal(owner.state, "stale", JSON.stringify(owner));
      assert.match(owner.state === "stale" ? owner.why : "", /does not have .*catalog\.db open/);
    } finally {
      other.kill("SIGKILL");
    }
  });
});

describe("immutd status", () => {
  function setup() {
    const d = mkdtempSync(join(work, "cli-"));
    writeFileSync(join(d, "master.key"), `${"cd".repeat(32)}\n`, { mode: 0o600 });
    const cfg = join(d, "config.yaml");
    writeFileSync(
      cfg,
      `catalog: ${d}/catalog.db
masterKeyFile: ${d}/master.key
host: st
verify: { schedule: "0 4 * * *", deep: { schedule: "0 5 * * 0", sample: 1 } }
targets:
  offsite:
    endpoint: https://s3.immutd-test.invalid
    bucket: bkt-st
    retention: { mode: COMPLIANCE, days: 1 }
    credentials:
      writer: { accessKeyId: AKW, secretAccessKey: w }
      reader: { accessKeyId: AKR, secretAccessKey: r }
jobs:
  - name: files
    target: offsite
    schedule: "0 3 * * *"
    paths: [${d}]
`,
    );
    return { d, cfg, catalog: join(d, "catalog.db") };
  }

  it("--json: no daemon, the last verify with its findings by kind, the next verify from verify.schedule", async () => {
    const { cfg, catalog } = setup();
    const c = Catalog.open(catalog);
    c.recordVerifyRun({
      startedAt: new Date("2026-12-01T04:00:00Z"),
      finishedAt: new Date("2026-12-01T04:00:09Z"),
      deep: false,
      job: null,
      checked: 7,
      findings: 3,
      report: {
        findings: [
          { kind: "missing", message: "m" },
          { kind: "missing", message: "m2" },
          { kind: "not-locked", message: "n" },
        ],
      },
    });
    c.close();
    writeFileSync(daemonLockPath(catalog), `${deadPid()}\n`); // a daemon killed with -9
    const r = await runCli(["--config", cfg, "status", "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const st = JSON.parse(r.stdout) as {
      daemon: { running: boolean; pid: number | null; stale?: string };
      verify: {
        last: { finishedAt: string; ok: boolean; findings: number; kinds: Record<string, number> };
        lastDeep: unknown;
        next: string;
        nextDeep: string;
      };
      jobs: { job: string }[];
    };
    assert.equal(st.daemon.running, false);
    assert.match(st.daemon.stale ?? "", /is gone/);
    assert.equal(st.verify.last.ok, false);
    assert.equal(st.verify.last.findings, 3);
    assert.deepEqual(st.verify.last.kinds, { missing: 2, "not-locked": 1 });
    assert.equal(st.verify.lastDeep, null);
    assert.match(st.verify.next, /T04:00:00\.000Z$/);
    assert.ok(Date.parse(st.verify.next) > Date.now());
    assert.equal(new Date(st.verify.nextDeep).getUTCDay(), 0);
    assert.deepEqual(
      st.jobs.map((j) => j.job),
      ["files"],
    );

    const text = await runCli(["--config", cfg, "status"]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /^daemon: not running \(stale lock file .*: process \d+ is gone\)$/m);
    assert.match(
      text.stdout,
      /^last verify: 2026-12-01 04:00:09 UTC, 7 checked, 3 findings \(2 missing, 1 not-locked\)$/m,
    );
    assert.match(text.stdout, /^last deep verify: never$/m);
    assert.match(
      text.stdout,
      /^next verify: \d{4}-\d\d-\d\d 04:00:00 UTC \(by the daemon, which is not running\)$/m,
    );
  });

  it("never verified, verify off: says so", async () => {
    const { cfg } = setup();
    writeFileSync(
      cfg,
      readFileSync(cfg, "utf8").replace(/^verify: .*$/m, "verify: { schedule: off }"),
    );
    const r = await runCli(["--config", cfg, "status"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^daemon: not running$/m);
    assert.match(r.stdout, /^last verify: never$/m);
    assert.match(r.stdout, /^next verify: off$/m);
  });
});
