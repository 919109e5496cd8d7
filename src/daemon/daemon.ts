/**
 * `immutd run`: the long-running scheduler. It runs each job on its cron
 * schedule (never overlapping itself, at most maxConcurrentJobs at once),
 * catches up on runs missed while it was down, recovers what a crash left
 * behind, and keeps going through any one job's failure.
 *
 * Lifecycle: start() takes the daemon lock (one per catalog), opens the
 * catalog, recovers, serves /healthz and /metrics, schedules. stop() stops
 * scheduling, cancels running jobs (their multipart uploads are aborted and the
 * runs recorded as interrupted) and waits for them a bounded time. reload()
 * swaps in a new config as a whole, or keeps the running one whole if the new
 * one is invalid or its http.listen cannot be bound; either way the outcome is
 * logged and in /metrics (immutd_config_last_reload_successful).
 */
import type { Server } from "node:http";
import { Cron } from "croner";
import { Catalog, prepareCatalog } from "../catalog/catalog.js";
import { byName, type Config, type JobConfig, loadConfig } from "../config/config.js";
import { missedRun, nextRun } from "../config/schedule.js";
import { CancelledError, describeError, LockHeldError } from "../errors.js";
import { auditTargets } from "../flows/audit.js";
import { runBackup } from "../flows/backup.js";
import { runVerify } from "../flows/verify.js";
import type { Logger } from "../log.js";
import { closeTarget, openTarget } from "../store/s3.js";
import type { ObjectStore, Target } from "../store/store.js";
import { startHttp } from "./http.js";
import { acquireLock, daemonLockPath, type Lock } from "./lockfile.js";
import { Metrics } from "./metrics.js";
import { Notifier, resultPayload } from "./notify.js";
import { reconcile } from "./recovery.js";

export interface DaemonOptions {
  configFile: string;
  config: Config;
  log: Logger;
  /** How long stop() waits for cancelled jobs to record themselves. */
  shutdownTimeoutMs?: number;
  /** Replaces S3 targets (tests). */
  openTarget?: (t: Config["targets"][string]) => Target;
  /** Replaces the auditor's S3 reader (tests). */
  openReader?: (t: Config["targets"][string]) => ObjectStore;
}

interface JobState {
  cron?: Cron;
  queued: boolean;
  running?: AbortController | undefined;
}

export class Daemon {
  #config: Config;
  readonly #file: string;
  readonly #log: Logger;
  readonly #open: NonNullable<DaemonOptions["openTarget"]>;
  readonly #openReader: DaemonOptions["openReader"];
  readonly #shutdownMs: number;
  readonly #metrics = new Metrics();
  readonly #notifier: Notifier;
  readonly #states = new Map<string, JobState>();
  readonly #targets = new Map<string, Target>();
  readonly #queue: string[] = [];
  readonly #runs = new Set<Promise<void>>();
  #catalog: Catalog | undefined;
  #lock: Lock | undefined;
  #http: Server | undefined;
  #active = 0;
  #stopping = false;
  #heartbeat = Date.now();
  #tick: NodeJS.Timeout | undefined;
  readonly #verifyCrons: { deep: boolean; cron: Cron }[] = [];
  #auditCron: Cron | undefined;
  #auditing: Promise<void> | undefined;
  #verifying: Promise<void> | undefined;
  readonly #verifyAbort = new AbortController();
  /** SIGHUPs are handled one after another: a reload may wait for a new listener. */
  #reloading: Promise<boolean> = Promise.resolve(true);

  constructor(opts: DaemonOptions) {
    this.#config = opts.config;
    this.#file = opts.configFile;
    this.#log = opts.log;
    this.#open = opts.openTarget ?? openTarget;
    this.#openReader = opts.openReader;
    this.#shutdownMs = opts.shutdownTimeoutMs ?? 30_000;
    this.#notifier = new Notifier(opts.log);
  }

  get metrics(): Metrics {
    return this.#metrics;
  }

  async start(): Promise<void> {
    const cfg = this.#config;
    // The lock file goes beside the catalog: its path must be usable and writable first.
    prepareCatalog(cfg.catalog, { write: true });
    this.#lock = acquireLock(
      daemonLockPath(cfg.catalog),
      `an immutd daemon for catalog ${cfg.catalog}`,
    );
    try {
      this.#catalog = Catalog.open(cfg.catalog);
      const catalog = this.#catalog;
      this.#metrics.lockHorizonsFrom(() => catalog.lockHorizons());
      // Runs are read from the catalog at each scrape: a restart or a manual
      // `immutd backup` (another process) shows at once, not after the daemon's own next run.
      this.#metrics.jobsFrom(() => catalog.jobStates(this.#config.jobs.map((j) => j.name)));
      this.#metrics.verifiesFrom(() => catalog.lastVerifyRuns());
      for (const w of this.#catalog.warnings) this.#log.warn(w);
      await this.#recover();
      if (cfg.http) {
        this.#http = await this.#listen(cfg.http.listen);
        this.#log.info({ listen: cfg.http.listen }, "serving /healthz and /metrics");
      }
      this.#metrics.configLoaded(true, new Date());
      this.#tick = setInterval(() => {
        this.#heartbeat = Date.now();
      }, 1000);
      this.#schedule();
      this.#catchUp();
      // The audit's metrics exist from the start, not only after its first scheduled run.
      if (cfg.audit?.schedule) void this.auditNow();
      this.#log.info(
        {
          jobs: cfg.jobs.map((j) => j.name),
          maxConcurrentJobs: cfg.maxConcurrentJobs,
          verifySchedule: cfg.verify.schedule ?? "off",
        },
        "immutd daemon started",
      );
    } catch (err) {
      this.#catalog?.close();
      this.#lock.release();
      throw err;
    }
  }

  health(): { ok: boolean; reasons: string[] } {
    const reasons: string[] = [];
    if (this.#stopping) reasons.push("shutting down");
    if (Date.now() - this.#heartbeat > 10_000) reasons.push("scheduler stalled");
    if (!this.#catalog?.writable()) reasons.push("catalog not writable");
    return { ok: reasons.length === 0, reasons };
  }

  /** Queues a job now (as its schedule would). Skipped while it runs or waits. */
  trigger(name: string, why: string): void {
    if (this.#stopping) return;
    const st = this.#states.get(name);
    if (!st) return;
    if (st.running || st.queued) {
      this.#log.warn({ job: name }, `${why}: the previous run is still going; this one is skipped`);
      return;
    }
    st.queued = true;
    this.#queue.push(name);
    this.#pump();
  }

  #pump(): void {
    while (!this.#stopping && this.#active < this.#config.maxConcurrentJobs && this.#queue.length) {
      const name = this.#queue.shift() as string;
      const st = this.#states.get(name);
      if (!st) continue;
      st.queued = false;
      this.#active++;
      const p = this.#run(name, st).finally(() => {
        this.#active--;
        this.#runs.delete(p);
        this.#pump();
      });
      this.#runs.add(p);
    }
  }

  async #run(name: string, st: JobState): Promise<void> {
    const cfg = this.#config;
    const job = cfg.jobs.find((j) => j.name === name);
    const tc = job ? cfg.targets[job.target] : undefined;
    if (!job || !tc || !this.#catalog) return;
    const controller = new AbortController();
    st.running = controller;
    this.#metrics.running(name, true);
    try {
      if (job.jitter > 0) await sleep(Math.random() * job.jitter * 1000, controller.signal);
      const target = this.#target(tc.name);
      const startedAt = new Date();
      const notify = [...cfg.notify, ...job.notify];
      this.#notifier.send(notify, {
        event: "start",
        job: name,
        host: cfg.host,
        status: "running",
        time: startedAt.toISOString(),
      });
      const r = await runBackup(job, {
        config: cfg,
        catalog: this.#catalog,
        target,
        targetConfig: tc,
        log: this.#log,
        signal: controller.signal,
      });
      this.#notifier.send(notify, resultPayload(r, cfg.host));
    } catch (err) {
      if (err instanceof LockHeldError) this.#log.warn({ job: name }, `${err.message}; skipped`);
      else if (!(err instanceof CancelledError)) {
        // runBackup records its own failures; anything here is a bug or the catalog failing (disk full).
        this.#log.error({ job: name, err }, `job ${name} could not run: ${describeError(err)}`);
        this.#notifier.send([...cfg.notify, ...job.notify], {
          event: "failure",
          job: name,
          host: cfg.host,
          status: "failed",
          error: `could not run: ${describeError(err)}`,
          time: new Date().toISOString(),
        });
      }
    } finally {
      st.running = undefined;
      this.#metrics.running(name, false);
      this.#updateNext(job);
    }
  }

  #target(name: string): Target {
    let t = this.#targets.get(name);
    if (!t) {
      const tc = this.#config.targets[name];
      if (!tc) throw new Error(`unknown target ${name}`);
      t = this.#open(tc);
      this.#targets.set(name, t);
    }
    return t;
  }

  #schedule(): void {
    const now = new Date();
    for (const job of this.#config.jobs) {
      const st = this.#states.get(job.name) ?? { queued: false };
      this.#states.set(job.name, st);
      st.cron?.stop();
      if (job.schedule === undefined) {
        delete st.cron;
        this.#log.info(
          { job: job.name, schedule: null },
          `job ${job.name} has no schedule: manual only, run it with immutd backup ${job.name}`,
        );
        this.#metrics.next(job.name, null);
        continue;
      }
      st.cron = new Cron(
        job.schedule,
        { ...(job.timezone ? { timezone: job.timezone } : {}) },
        () => this.trigger(job.name, "schedule"),
      );
      const next = nextRun(job, now);
      if (next === null) {
        this.#log.warn(
          { job: job.name, schedule: job.schedule },
          `job ${job.name}: schedule "${job.schedule}" will never fire`,
        );
      }
      this.#metrics.next(job.name, next);
    }
    for (const c of this.#verifyCrons.splice(0)) c.cron.stop();
    this.#auditCron?.stop();
    const auditSchedule = this.#config.audit?.schedule;
    this.#auditCron = auditSchedule ? new Cron(auditSchedule, () => this.auditNow()) : undefined;
    const v = this.#config.verify;
    // An auditor's daemon (no jobs) has no catalog backups to verify.
    const verifies = this.#config.jobs.length > 0;
    if (verifies && v.schedule) {
      this.#verifyCrons.push({
        deep: false,
        cron: new Cron(v.schedule, () => this.verifyNow(false)),
      });
    } else if (verifies) {
      this.#log.warn(
        this.#config.keepLatestLocked
          ? "verify.schedule is off: this daemon never verifies the backups and never extends the newest locks (keepLatestLocked), so they run out if backups stop; run `immutd verify` from a timer, or remove `schedule: off` (default: daily)"
          : "verify.schedule is off: this daemon never verifies the backups; run `immutd verify` from a timer, or remove `schedule: off` (default: daily)",
      );
    }
    if (verifies && v.deep) {
      this.#verifyCrons.push({
        deep: true,
        cron: new Cron(v.deep.schedule, () => this.verifyNow(true)),
      });
    }
    this.#updateVerifyNext();
    for (const [name, st] of this.#states) {
      if (!this.#config.jobs.some((j) => j.name === name)) {
        st.cron?.stop();
        if (!st.running) this.#states.delete(name);
      }
    }
  }

  #updateNext(job: JobConfig): void {
    this.#metrics.next(job.name, nextRun(job, new Date()));
  }

  #updateVerifyNext(): void {
    for (const deep of [false, true]) {
      const c = this.#verifyCrons.find((v) => v.deep === deep);
      this.#metrics.verifyNext(deep, c?.cron.nextRun() ?? null);
    }
  }

  /** A job whose last success is older than its last scheduled time (or that never ran) runs once now. */
  #catchUp(): void {
    const now = new Date();
    for (const job of this.#config.jobs) {
      if (!job.catchUp) continue;
      const last = this.#catalog?.jobSummary(job.name).lastSuccess;
      if (missedRun(job, last ? new Date(last.startedAt) : undefined, now)) {
        this.#log.info(
          { job: job.name, lastSuccess: last?.startedAt ?? null },
          "catching up on a missed run",
        );
        this.trigger(job.name, "catch-up");
      }
    }
  }

  /**
   * After a crash: src/daemon/recovery.ts reconciles every dead run (versions at its
   * key recorded as unverified, the run closed as interrupted) and aborts the
   * multipart uploads of runs that are provably dead; uploads of a manual
   * `immutd backup` that is still going are left alone.
   */
  async #recover(): Promise<void> {
    await reconcile({
      config: this.#config,
      catalog: this.#catalog as Catalog,
      log: this.#log,
      target: (name) => this.#target(name),
    });
  }

  /**
   * Runs `immutd verify` (deep or not) unless one is already running; findings
   * go to the log, to /metrics and to the failure webhooks. Never throws.
   */
  verifyNow(deep: boolean): Promise<void> {
    if (this.#stopping || !this.#catalog) return Promise.resolve();
    if (this.#verifying) {
      this.#log.warn(
        { deep },
        "verify: the previous verification is still running; this one is skipped",
      );
      return this.#verifying;
    }
    const cfg = this.#config;
    const catalog = this.#catalog;
    const run = async () => {
      const targets = byName<Target>();
      for (const name of Object.keys(cfg.targets)) targets[name] = this.#target(name);
      try {
        // As `immutd verify` does: a manual backup killed while the daemon runs is
        // reconciled here, not only at the next daemon start.
        await this.#recover();
        const report = await runVerify({
          config: cfg,
          catalog,
          targets,
          log: this.#log,
          deep,
          signal: this.#verifyAbort.signal,
        });
        this.#metrics.verified(report.findings, deep, new Date(report.finishedAt));
        for (const f of report.findings) {
          const job = f.job ? cfg.jobs.find((j) => j.name === f.job) : undefined;
          this.#notifier.send([...cfg.notify, ...(job?.notify ?? [])], {
            event: "failure",
            job: f.job ?? `target ${f.target}`,
            host: cfg.host,
            status: "failed",
            ...(f.key ? { key: f.key } : {}),
            ...(f.versionId ? { versionId: f.versionId } : {}),
            error: `verify: ${f.kind}: ${f.message}`,
            time: new Date().toISOString(),
          });
        }
        this.#log.info(
          {
            deep,
            checked: report.checked,
            findings: report.findings.length,
            extensions: report.extensions.length,
          },
          report.findings.length ? "verification found problems" : "verification passed",
        );
      } catch (err) {
        if (!this.#stopping)
          this.#log.error({ deep }, `verification could not run: ${describeError(err)}`);
      }
    };
    this.#verifying = run().finally(() => {
      this.#verifying = undefined;
      this.#updateVerifyNext();
    });
    return this.#verifying;
  }

  /**
   * Runs `immutd audit` over every target (src/flows/audit.ts) unless one is
   * running; its reports go to /metrics and each finding to the log. Never throws.
   */
  auditNow(): Promise<void> {
    if (this.#stopping) return Promise.resolve();
    if (this.#auditing) return this.#auditing;
    const cfg = this.#config;
    const run = async () => {
      try {
        const reports = await auditTargets(cfg, Object.values(cfg.targets), {
          signal: this.#verifyAbort.signal,
          onFinding: (f) =>
            this.#log.error(
              { kind: f.kind, host: f.host, job: f.job, key: f.key, versionId: f.versionId },
              `audit: ${f.message}`,
            ),
          ...(this.#openReader ? { openReader: this.#openReader } : {}),
        });
        this.#metrics.audited(reports, new Date());
        const findings = reports.reduce((n, r) => n + r.findings.length, 0);
        this.#log.info(
          {
            targets: reports.length,
            jobs: reports.reduce((n, r) => n + r.jobs.length, 0),
            findings,
          },
          findings ? "audit found problems" : "audit passed",
        );
      } catch (err) {
        if (!this.#stopping) this.#log.error(`audit could not run: ${describeError(err)}`);
      }
    };
    this.#auditing = run().finally(() => {
      this.#auditing = undefined;
    });
    return this.#auditing;
  }

  /**
   * Reads the config file again (SIGHUP). All or nothing: an invalid config, a
   * changed catalog path or an http.listen that cannot be bound keeps the
   * running config (and listener) whole. The outcome is logged and set in
   * /metrics. Resolves true if the new config runs.
   */
  reload(): Promise<boolean> {
    this.#reloading = this.#reloading.then(() => this.#reload());
    return this.#reloading;
  }

  async #reload(): Promise<boolean> {
    const at = new Date();
    const refuse = (why: string): false => {
      this.#log.error(`config reload failed, keeping the running config: ${why}`);
      this.#metrics.configLoaded(false, at);
      return false;
    };
    if (this.#stopping) return false;
    let next: Config;
    let warnings: string[];
    try {
      ({ config: next, warnings } = loadConfig(this.#file));
    } catch (err) {
      return refuse(describeError(err));
    }
    if (next.catalog !== this.#config.catalog) {
      return refuse(
        `the catalog path cannot change while running (${this.#config.catalog} to ${next.catalog}); restart immutd`,
      );
    }
    const from = this.#config.http?.listen;
    const to = next.http?.listen;
    let server: Server | undefined;
    if (to !== undefined && to !== from) {
      try {
        server = await this.#listen(to);
      } catch (err) {
        // The old listener is closed only once the new one is bound, so the same
        // port on another address (127.0.0.1:9180 to 0.0.0.0:9180) needs a restart.
        const samePort = from !== undefined && port(from) === port(to);
        return refuse(
          `${describeError(err)}${from ? `; /healthz and /metrics stay on ${from}` : ""}${samePort ? " (moving to the same port on another address needs a restart)" : ""}`,
        );
      }
      if (this.#stopping) {
        server.close();
        return false;
      }
    }
    for (const w of warnings) this.#log.warn(w);
    if (to !== from) {
      const old = this.#http;
      this.#http = server;
      if (old) {
        old.close();
        old.closeAllConnections();
      }
      if (to)
        this.#log.info({ listen: to, previous: from ?? null }, "serving /healthz and /metrics");
      else
        this.#log.info(
          { previous: from },
          "http.listen removed: no longer serving /healthz and /metrics",
        );
    }
    this.#config = next;
    this.#retireTargets();
    this.#schedule();
    this.#metrics.configLoaded(true, at);
    this.#log.info({ jobs: next.jobs.map((j) => j.name) }, "config reloaded");
    return true;
  }

  #listen(listen: string): Promise<Server> {
    return startHttp(listen, this.#metrics, () => this.health());
  }

  /**
   * New credentials or endpoints take effect for the next runs; the old clients
   * (their sockets) are destroyed once the runs and the verification using them end.
   */
  #retireTargets(): void {
    const old = [...this.#targets.values()];
    this.#targets.clear();
    const using = [...this.#runs, ...(this.#verifying ? [this.#verifying] : [])];
    void Promise.allSettled(using).then(() => {
      for (const t of old) closeTarget(t);
    });
  }

  /** Stops scheduling, cancels running jobs and waits for them (at most the shutdown timeout). */
  async stop(reason: string): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    this.#metrics.down();
    this.#log.info({ reason, running: this.#runs.size }, "stopping");
    for (const st of this.#states.values()) {
      st.cron?.stop();
      st.queued = false;
      st.running?.abort(new CancelledError(reason));
    }
    this.#queue.length = 0;
    for (const c of this.#verifyCrons) c.cron.stop();
    this.#auditCron?.stop();
    this.#verifyAbort.abort(new CancelledError(reason));
    const all = Promise.allSettled([
      ...this.#runs,
      ...(this.#verifying ? [this.#verifying] : []),
      ...(this.#auditing ? [this.#auditing] : []),
    ]);
    const deadline = new AbortController();
    const timedOut = await Promise.race([
      all.then(() => false),
      sleep(this.#shutdownMs, deadline.signal).then(
        () => true,
        () => false,
      ),
    ]);
    deadline.abort(); // clears the timer, which would otherwise keep the process alive
    if (timedOut)
      this.#log.error(`jobs did not stop within ${this.#shutdownMs / 1000} s; exiting anyway`);
    await this.#notifier.flush(5000);
    if (this.#tick) clearInterval(this.#tick);
    await new Promise<void>((r) => (this.#http ? this.#http.close(() => r()) : r()));
    this.#http?.closeAllConnections?.();
    for (const t of this.#targets.values()) closeTarget(t);
    if (!timedOut) this.#catalog?.close();
    this.#lock?.release();
    this.#log.info("stopped");
  }
}

function port(listen: string): string | undefined {
  return listen.split(":").pop();
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
