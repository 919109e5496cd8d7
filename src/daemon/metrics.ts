/**
 * Prometheus metrics of the daemon (prom-client): per job the last success,
 * last run's status, duration, bytes, files and warnings, whether it is
 * running now (all read from the catalog at each scrape, so they are there
 * right after a restart and count a manual `immutd backup` as well) and its
 * lock horizon (also from the catalog); the next scheduled time; verification's
 * findings and schedule; the auditor's newest backup, due time and findings per
 * host and job; whether the last config reload worked (named as Prometheus
 * names its own); and prom-client's default process and Node.js metrics under
 * their usual names (process_cpu_seconds_total, nodejs_heap_size_used_bytes, …),
 * which Node.js dashboards expect.
 */
import { collectDefaultMetrics, Gauge, Registry } from "prom-client";
import { findingKinds, type JobState, type VerifyRunRow } from "../catalog/catalog.js";
import type { AuditReport } from "../flows/audit.js";

const STATUSES = ["succeeded", "failed", "interrupted"] as const;

export class Metrics {
  readonly registry = new Registry();
  readonly #lastSuccess = this.#gauge(
    "immutd_job_last_success_timestamp_seconds",
    "Unix time the job's last successful backup started",
  );
  readonly #lastStatus = new Gauge({
    name: "immutd_job_last_run_status",
    help: "1 for the status of the job's last finished run, 0 for the others",
    labelNames: ["job", "status"],
    registers: [this.registry],
  });
  readonly #duration = this.#gauge(
    "immutd_job_last_run_duration_seconds",
    "Duration of the job's last run",
  );
  readonly #bytes = this.#gauge(
    "immutd_job_last_run_bytes",
    "Bytes uploaded by the job's last run",
  );
  readonly #files = this.#gauge(
    "immutd_job_last_run_files",
    "Files archived by the job's last run",
  );
  readonly #warnings = this.#gauge(
    "immutd_job_last_run_warnings",
    "Warnings of the job's last run",
  );
  readonly #next = this.#gauge(
    "immutd_job_next_run_timestamp_seconds",
    "Unix time of the job's next scheduled run",
  );
  readonly #running = this.#gauge("immutd_job_running", "1 while the job runs");
  /** The configured jobs' state in the catalog, read at each scrape (see exposition()). */
  #readJobs: () => readonly JobState[] = () => [];
  /** The latest verify run of each kind in the catalog, read at each scrape. */
  #readVerifies: () => readonly VerifyRunRow[] = () => [];
  /** Jobs this process is running now, also while a run waits out its jitter (no run row yet). */
  readonly #runningHere = new Set<string>();
  #readHorizons: () => readonly { job: string; retainUntil: string }[] = () => [];
  readonly #lockHorizon: Gauge<"job"> = new Gauge({
    name: "immutd_job_lock_horizon_timestamp_seconds",
    help: "Unix time the lock of the job's newest good backup runs out (its retain-until)",
    labelNames: ["job"],
    registers: [this.registry],
    collect: () => {
      let rows: readonly { job: string; retainUntil: string }[];
      try {
        rows = this.#readHorizons();
      } catch {
        return; // the catalog failed (/healthz says so): keep the last values
      }
      this.#lockHorizon.reset();
      for (const r of rows) this.#lockHorizon.set({ job: r.job }, Date.parse(r.retainUntil) / 1000);
    },
  });
  readonly #findings = new Gauge({
    name: "immutd_verify_findings",
    help: "Findings of the last verification, by kind (0 when it passed)",
    labelNames: ["kind"],
    registers: [this.registry],
  });
  readonly #verifiedAt = new Gauge({
    name: "immutd_verify_last_run_timestamp_seconds",
    help: "Unix time the last verification finished",
    labelNames: ["deep"],
    registers: [this.registry],
  });
  readonly #verifyNext = new Gauge({
    name: "immutd_verify_next_run_timestamp_seconds",
    help: "Unix time of the next scheduled verification (absent: not scheduled)",
    labelNames: ["deep"],
    registers: [this.registry],
  });
  readonly #auditNewest = new Gauge({
    name: "immutd_audit_newest_backup_timestamp_seconds",
    help: "Audit: creation time of the host's job's newest backup whose archive checked out (absent: none did)",
    labelNames: ["target", "host", "job"],
    registers: [this.registry],
  });
  readonly #auditDue = new Gauge({
    name: "immutd_audit_newest_backup_due_timestamp_seconds",
    help: "Audit: when that newest backup becomes too old (absent: its age is not judged)",
    labelNames: ["target", "host", "job"],
    registers: [this.registry],
  });
  readonly #auditFindings = new Gauge({
    name: "immutd_audit_findings",
    help: "Audit: findings of the last audit per host, job and kind (kind none, 0: the job had none)",
    labelNames: ["target", "host", "job", "kind"],
    registers: [this.registry],
  });
  readonly #auditSuccess = new Gauge({
    name: "immutd_audit_last_run_success",
    help: "1 if the last audit of the target could make every check (no check-failed finding), else 0",
    labelNames: ["target"],
    registers: [this.registry],
  });
  readonly #auditAt = new Gauge({
    name: "immutd_audit_last_run_timestamp_seconds",
    help: "Unix time the last audit of the target finished",
    labelNames: ["target"],
    registers: [this.registry],
  });
  readonly #reloadOk = new Gauge({
    name: "immutd_config_last_reload_successful",
    help: "1 if the last config load (start or SIGHUP) worked, 0 if a reload failed and the previous config still runs",
    registers: [this.registry],
  });
  readonly #reloadAt = new Gauge({
    name: "immutd_config_last_reload_success_timestamp_seconds",
    help: "Unix time of the last successful config load (start or SIGHUP)",
    registers: [this.registry],
  });
  readonly #up = new Gauge({
    name: "immutd_up",
    help: "1 while the scheduler is alive",
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry });
    this.#up.set(1);
  }

  #gauge(name: string, help: string): Gauge<"job"> {
    return new Gauge({ name, help, labelNames: ["job"], registers: [this.registry] });
  }

  /** Where the lock horizons come from (the catalog), read at each scrape. */
  lockHorizonsFrom(read: () => readonly { job: string; retainUntil: string }[]): void {
    this.#readHorizons = read;
  }

  /** Where the jobs' runs come from (one catalog query), read at each scrape. */
  jobsFrom(read: () => readonly JobState[]): void {
    this.#readJobs = read;
  }

  /** Where the verify runs come from (the catalog: also `immutd verify` from a timer), read at each scrape. */
  verifiesFrom(read: () => readonly VerifyRunRow[]): void {
    this.#readVerifies = read;
  }

  /** Whether this process runs the job now (from before its jitter to after its run is recorded). */
  running(job: string, yes: boolean): void {
    if (yes) this.#runningHere.add(job);
    else this.#runningHere.delete(job);
    this.#running.set({ job }, yes ? 1 : 0);
  }

  /**
   * The text for GET /metrics: the job series are read from the catalog first
   * (one query). If the catalog fails, the last values stay (/healthz says
   * the catalog is not writable) and the scrape still answers.
   */
  async exposition(): Promise<string> {
    this.#refreshJobs();
    this.#refreshVerifies();
    return this.registry.metrics();
  }

  #refreshJobs(): void {
    let jobs: readonly JobState[];
    try {
      jobs = this.#readJobs();
    } catch {
      return;
    }
    const perJob = [
      this.#lastSuccess,
      this.#lastStatus,
      this.#duration,
      this.#bytes,
      this.#files,
      this.#warnings,
      this.#running,
    ];
    for (const g of perJob) g.reset(); // a job removed from the config loses its series
    for (const { job, lastRun, lastSuccess, running } of jobs) {
      this.#running.set({ job }, running || this.#runningHere.has(job) ? 1 : 0);
      if (lastSuccess) this.#lastSuccess.set({ job }, Date.parse(lastSuccess) / 1000);
      if (!lastRun) continue;
      for (const s of STATUSES)
        this.#lastStatus.set({ job, status: s }, lastRun.status === s ? 1 : 0);
      this.#duration.set({ job }, lastRun.durationMs / 1000);
      this.#bytes.set({ job }, lastRun.bytes);
      this.#files.set({ job }, lastRun.files);
      this.#warnings.set({ job }, lastRun.warnings);
    }
  }

  /** The newest verify's findings, and each kind's (deep or not) last time; kept if the catalog fails. */
  #refreshVerifies(): void {
    let runs: readonly VerifyRunRow[];
    try {
      runs = this.#readVerifies();
    } catch {
      return;
    }
    const [newest] = runs;
    if (!newest) return;
    this.#setFindings(findingKinds(newest).map((kind) => ({ kind })));
    for (const r of runs)
      this.#verifiedAt.set({ deep: String(r.deep) }, Date.parse(r.finishedAt) / 1000);
  }

  next(job: string, at: Date | null): void {
    if (at) this.#next.set({ job }, at.getTime() / 1000);
    else this.#next.remove({ job });
  }

  verified(findings: readonly { kind: string }[], deep: boolean, at: Date): void {
    this.#setFindings(findings);
    this.#verifiedAt.set({ deep: String(deep) }, at.getTime() / 1000);
  }

  #setFindings(findings: readonly { kind: string }[]): void {
    this.#findings.reset();
    const counts = new Map<string, number>();
    for (const f of findings) counts.set(f.kind, (counts.get(f.kind) ?? 0) + 1);
    if (counts.size === 0) this.#findings.set({ kind: "none" }, 0);
    for (const [kind, n] of counts) this.#findings.set({ kind }, n);
  }

  verifyNext(deep: boolean, at: Date | null): void {
    if (at) this.#verifyNext.set({ deep: String(deep) }, at.getTime() / 1000);
    else this.#verifyNext.remove({ deep: String(deep) });
  }

  /** An audit of every target finished (src/flows/audit.ts): its reports replace the previous audit's series. */
  audited(reports: readonly AuditReport[], at: Date): void {
    for (const g of [this.#auditNewest, this.#auditDue, this.#auditFindings, this.#auditSuccess])
      g.reset();
    for (const r of reports) {
      const target = r.target;
      for (const j of r.jobs) {
        const labels = { target, host: j.host, job: j.job };
        if (j.newest) this.#auditNewest.set(labels, Date.parse(j.newest) / 1000);
        if (j.dueBy) this.#auditDue.set(labels, Date.parse(j.dueBy) / 1000);
        if (j.findings === 0) this.#auditFindings.set({ ...labels, kind: "none" }, 0);
      }
      for (const f of r.findings)
        this.#auditFindings.inc({ target, host: f.host ?? "", job: f.job ?? "", kind: f.kind });
      const failed = r.findings.some((f) => f.kind === "check-failed");
      this.#auditSuccess.set({ target }, failed ? 0 : 1);
      this.#auditAt.set({ target }, at.getTime() / 1000);
    }
  }

  /** A config load (the first at start, then each SIGHUP) worked or failed at `at`. */
  configLoaded(ok: boolean, at: Date): void {
    this.#reloadOk.set(ok ? 1 : 0);
    if (ok) this.#reloadAt.set(at.getTime() / 1000);
  }

  down(): void {
    this.#up.set(0);
  }
}
