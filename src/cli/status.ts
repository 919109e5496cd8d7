import type { Command } from "commander";
import { findingKinds, type VerifyRunRow } from "../catalog/catalog.js";
import { nextRun } from "../config/schedule.js";
import { daemonLockPath, lockOwner } from "../daemon/lockfile.js";
import type { Cli, Context } from "./context.js";
import { writeJson } from "./output.js";
import { formatTable } from "./progress.js";

export const statusHelp = `
Shows whether the daemon runs (its pid, from its lock file, checked against
the process), the last verification (when, and its findings by kind) and the
next one, and each job's last run (when, result with its count of warnings,
error), its last success, its newest backup (full, or incr with its chain:
the id of the chain's full backup and how many members the chain has) and
its next scheduled run, from the catalog and the config. --json for scripts. A read-only catalog (a mounted copy) is shown as it is.
`;

/** The last verification of one kind, as status shows it. */
interface VerifySummary {
  startedAt: string;
  finishedAt: string;
  job: string | null;
  checked: number;
  ok: boolean;
  findings: number;
  kinds: Record<string, number>;
}

function verifySummary(v: VerifyRunRow | undefined): VerifySummary | null {
  if (!v) return null;
  const kinds: Record<string, number> = {};
  for (const kind of findingKinds(v)) kinds[kind] = (kinds[kind] ?? 0) + 1;
  return {
    startedAt: v.startedAt,
    finishedAt: v.finishedAt,
    job: v.job,
    checked: v.checked,
    ok: v.findings === 0,
    findings: v.findings,
    kinds,
  };
}

export function statusCommand(ctx: Context, opts: { json?: boolean }): void {
  const cfg = ctx.config;
  const catalog = ctx.catalog();
  const now = new Date();
  const lockFile = daemonLockPath(cfg.catalog);
  const owner = lockOwner(lockFile, cfg.catalog);
  const daemon = {
    // null: unknown (the lock file cannot be read, e.g. by another user)
    running: owner.state === "unknown" ? null : owner.state === "held",
    pid: owner.state === "held" || owner.state === "stale" ? owner.pid : null,
    lockFile,
    // "held" unchecked: the process exists but /proc could not tell what it is.
    ...(owner.state === "held" ? { checked: owner.checked } : {}),
    ...(owner.state === "stale" ? { stale: owner.why } : {}),
    ...(owner.state === "unknown" ? { unknown: owner.why } : {}),
  };
  // An auditor's config (no jobs) has nothing the daemon verifies.
  const verifies = cfg.jobs.length > 0;
  const at = (schedule: string | undefined) =>
    verifies && schedule ? (nextRun({ schedule }, now)?.toISOString() ?? null) : null;
  const verify = {
    last: verifySummary(catalog.lastVerifyRun()),
    lastDeep: verifySummary(catalog.lastVerifyRun({ deep: true })),
    schedule: cfg.verify.schedule ?? null,
    next: at(cfg.verify.schedule),
    deepSchedule: cfg.verify.deep?.schedule ?? null,
    nextDeep: at(cfg.verify.deep?.schedule),
  };
  const jobs = cfg.jobs.map((job) => {
    const { lastRun, lastSuccess } = catalog.jobSummary(job.name);
    const backups = catalog.listBackups({ job: job.name });
    const newest = backups.at(-1);
    return {
      job: job.name,
      schedule: job.schedule ?? null,
      lastRun: lastRun
        ? {
            id: lastRun.id,
            startedAt: lastRun.startedAt,
            status: lastRun.status,
            warnings: lastRun.warnings,
            error: lastRun.error,
          }
        : null,
      lastSuccess: lastSuccess?.startedAt ?? null,
      newestBackup: newest
        ? {
            id: newest.id,
            kind: newest.parentId === null ? "full" : "incremental",
            chainId: newest.chainId,
            chainMembers: backups.filter((b) => b.chainId === newest.chainId).length,
          }
        : null,
      nextRun: nextRun(job, now)?.toISOString() ?? null,
    };
  });
  if (opts.json) {
    writeJson({ daemon, verify, jobs });
    return;
  }
  const t = (s: string | null | undefined) => (s ? s.slice(0, 19).replace("T", " ") : "never");
  const out: string[] = [];
  if (owner.state === "held")
    out.push(
      `daemon: running, pid ${owner.pid}${owner.checked ? "" : " (its process could not be inspected)"}`,
    );
  else if (owner.state === "stale")
    out.push(`daemon: not running (stale lock file ${lockFile}: ${owner.why})`);
  else if (owner.state === "unknown") out.push(`daemon: unknown (${owner.why})`);
  else out.push("daemon: not running");
  const verified = (what: string, v: VerifySummary | null) => {
    if (!v) return `${what}: never`;
    const scope = v.job ? ` of job ${v.job}` : "";
    const kinds = Object.entries(v.kinds)
      .map(([k, n]) => `${n} ${k}`)
      .join(", ");
    return `${what}: ${t(v.finishedAt)} UTC${scope}, ${v.checked} checked, ${v.ok ? "ok" : `${v.findings} finding${v.findings === 1 ? "" : "s"} (${kinds})`}`;
  };
  out.push(verified("last verify", verify.last));
  if (verify.lastDeep || verify.deepSchedule)
    out.push(verified("last deep verify", verify.lastDeep));
  const scheduled = (next: string | null, schedule: string | null) =>
    schedule === null
      ? "off"
      : `${next ? `${t(next)} UTC` : "never (schedule does not fire)"}${daemon.running === false ? " (by the daemon, which is not running)" : ""}`;
  if (verifies) {
    out.push(`next verify: ${scheduled(verify.next, verify.schedule)}`);
    if (verify.deepSchedule !== null)
      out.push(`next deep verify: ${scheduled(verify.nextDeep, verify.deepSchedule)}`);
  }
  process.stdout.write(`${out.join("\n")}\n\n`);
  const head = [
    "JOB",
    "LAST RUN (UTC)",
    "RESULT",
    "LAST SUCCESS (UTC)",
    "NEXT RUN (UTC)",
    "NEWEST BACKUP",
  ];
  const body = jobs.map((r) => [
    r.job,
    t(r.lastRun?.startedAt),
    r.lastRun
      ? `${r.lastRun.status}${r.lastRun.warnings ? ` (${r.lastRun.warnings} warning${r.lastRun.warnings === 1 ? "" : "s"})` : ""}`
      : "-",
    t(r.lastSuccess),
    r.schedule === null ? "manual" : r.nextRun ? t(r.nextRun) : "never (schedule does not fire)",
    r.newestBackup
      ? r.newestBackup.kind === "full" && r.newestBackup.chainMembers === 1
        ? `${r.newestBackup.id} full`
        : `${r.newestBackup.id} ${r.newestBackup.kind === "full" ? "full" : "incr"} (chain ${r.newestBackup.chainId}, ${r.newestBackup.chainMembers} members)`
      : "-",
  ]);
  process.stdout.write(formatTable(head, body));
  for (const r of jobs) {
    if (r.lastRun?.error && r.lastRun.status !== "succeeded") {
      process.stdout.write(`\n${r.job}: last run ${r.lastRun.status}: ${r.lastRun.error}\n`);
    }
  }
}

export function registerStatus(p: Command, cli: Cli): void {
  p.command("status")
    .description(
      "whether the daemon runs, the last and next verify, each job's last run, last success and next run",
    )
    .option("--json", "machine-readable output")
    .addHelpText("after", statusHelp)
    .action((opts: { json?: boolean }) => cli.withContext((ctx) => statusCommand(ctx, opts)));
}
