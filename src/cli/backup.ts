import type { Command } from "commander";
import type { JobConfig } from "../config/config.js";
import { Notifier, resultPayload } from "../daemon/notify.js";
import { reconcile } from "../daemon/recovery.js";
import {
  CancelledError,
  describeError,
  JobsFailedError,
  LockHeldError,
  UsageError,
  WarningsError,
} from "../errors.js";
import { type BackupResult, runBackup } from "../flows/backup.js";
import { displayName } from "../pipeline/file-names.js";
import { closeTarget, openTarget } from "../store/s3.js";
import type { Target } from "../store/store.js";
import type { Cli, Context } from "./context.js";
import { dryRunCommand } from "./dry-run.js";
import { estimateBackupTotal } from "./estimate.js";
import { markShown, plural, writeJson, writeResult } from "./output.js";
import { formatBytes, formatDuration, ProgressLine } from "./progress.js";
import { cancelOnStopSignals } from "./signals.js";

export const backupHelp = `
Runs the named jobs now, one after another (all jobs when none are named).
Each job becomes one new, encrypted, locked version in its target's bucket,
recorded in the catalog. A failing job does not stop the others.

On a terminal a progress line goes to stderr (source bytes read of the
total, percent, rate, files, time left, the current file; the total comes
from the previous run at once and from a quick walk of the paths beside the
backup, "~" while it is an estimate) and one summary per job to stdout;
otherwise nothing but log lines on stderr. --json prints one JSON document
on stdout when all jobs are done ({"jobs": [...]}, README "JSON output";
with --dry-run the walk's report per job).

Ctrl-C (SIGINT) or SIGTERM cancels: the multipart upload is aborted and the
run is recorded as interrupted; a second signal more than 1 s later exits at
once (signals within 1 s, as timeout(1) sends them to the process group, are
one request).

A job with incremental: { fullEvery } archives only the entries that changed
since its previous backup (README "Incremental backups"); the log says for
each run whether it is full or incremental, and why a full one is full (first
backup, chain at fullEvery, a missing or corrupt member or manifest, changed
paths or excludes, a member's lock that could not be extended).

A job that is already running (in the daemon, or another immutd backup) is
not started twice. A job without schedule (manual only) runs here like any other.

The notify webhooks (start, success, failure) are sent as the daemon sends
them; before it exits the command waits for them at most the largest
timeoutSeconds, and a receiver that fails never changes the exit code.

--dry-run walks each job's paths exactly as its backup would (the same
exclude, excludeFrom, excludeIfPresent and oneFileSystem) and prints the
number of entries, their total size before compression and how many entries
each exclude left out (--list: also every path). It runs no hook and no
command (their output is not counted), uploads nothing, records no run and
does not open the catalog. Files are not opened, so one a backup could not
read is found only by the backup. Exit 0, 5 with warnings (an unreadable
directory), 3 when a configured path is missing.

Crash recovery runs first for the named jobs (no daemon needed): a run left
"running" by a process that died is closed as interrupted, a version it left
at its key is recorded as "unverified" (verify --deep settles it), and the
multipart uploads of dead runs are aborted. Uploads of runs still going in
another process, and uploads no run in the catalog knows, are left alone.

Exit codes: 0 every job succeeded without warnings, 5 every job succeeded
but some with warnings (files that vanished, changed or could not be read
were left out; each is logged), 3 at least one failed or was cancelled,
75 a job was already running (and none failed), 2 unknown job name,
78 configuration error or a catalog that cannot be used (named, with what
to do).

Examples:
  immutd backup               # all jobs
  immutd backup etc db        # two jobs
  immutd backup --dry-run etc # what job etc would archive
  immutd backup --dry-run --list etc | grep cache
  immutd backup --json etc | jq -r '.jobs[0].versionId'
`;

/** One job of `backup --json` (README "JSON output"): every field present, null where unknown. */
export interface BackupJobDocument {
  job: string;
  status: BackupResult["status"] | "already-running" | "not-started";
  runId: number | null;
  bucket: string | null;
  key: string | null;
  versionId: string | null;
  backupId: number | null;
  bytes: number;
  files: number;
  warnings: number;
  durationMs: number;
  retainUntil: string | null;
  error: string | null;
}

export async function backupCommand(
  ctx: Context,
  names: string[],
  opts: { json?: boolean } = {},
): Promise<void> {
  const jobs = selectJobs(ctx.config.jobs, names);
  const controller = new AbortController();
  const removeSignals = cancelOnStopSignals(
    controller,
    ctx.log,
    "cancelling",
    (sig) => new CancelledError(`received ${sig}`),
  );

  const targets = new Map<string, Target>();
  const target = (name: string): Target => {
    let t = targets.get(name);
    if (!t) {
      const tc = ctx.config.targets[name];
      if (!tc) throw new UsageError(`unknown target ${name}`);
      t = openTarget(tc);
      targets.set(name, t);
    }
    return t;
  };
  const results: BackupResult[] = [];
  const locked: string[] = [];
  // The same webhooks as the daemon's runs (a systemd timer or cron has no daemon).
  const notifier = new Notifier(ctx.log);
  const notify = (job: JobConfig) => [...ctx.config.notify, ...job.notify];
  // At a terminal each job's summary (stdout) is its outcome; without one, the log line is.
  const summaries = process.stderr.isTTY === true && !opts.json;
  try {
    // Without a daemon (cron), this is where a crashed run of these jobs is recovered.
    await reconcile({
      config: ctx.config,
      catalog: ctx.catalog(),
      log: ctx.log,
      target,
      jobs: jobs.map((j) => j.name),
      signal: controller.signal,
    }).catch((err: unknown) => {
      if (!controller.signal.aborted) ctx.log.warn(`crash recovery failed: ${describeError(err)}`);
    });
    for (const job of jobs) {
      if (controller.signal.aborted) break;
      const tc = ctx.config.targets[job.target];
      if (!tc) throw new UsageError(`job ${job.name}: unknown target ${job.target}`);
      const progress = new ProgressLine(job.name);
      const stopEstimate = estimateBackupTotal(job, ctx.catalog(), progress);
      let result: BackupResult;
      const host = ctx.config.host;
      const time = new Date().toISOString();
      notifier.send(notify(job), { event: "start", job: job.name, host, status: "running", time });
      try {
        result = await runBackup(job, {
          config: ctx.config,
          catalog: ctx.catalog(),
          target: target(tc.name),
          targetConfig: tc,
          log: ctx.log,
          signal: controller.signal,
          ...(summaries ? { outcomeShown: true } : {}),
          onProgress: (p) =>
            progress.update({
              bytes: p.read,
              files: p.files,
              ...(p.current !== undefined
                ? { current: () => `/${displayName(p.current ?? "")}` }
                : {}),
            }),
        });
      } catch (err) {
        stopEstimate();
        progress.clear();
        if (!(err instanceof LockHeldError)) throw err;
        ctx.log.error({ job: job.name }, err.message);
        locked.push(job.name);
        continue;
      }
      stopEstimate();
      progress.clear();
      notifier.send(notify(job), resultPayload(result, host));
      results.push(result);
      if (summaries) writeResult(summary(result, tc.bucket));
    }
  } finally {
    // A stalled receiver delays the exit by at most one attempt's timeout, never
    // fails it; signals stay handled meanwhile (a second one exits at once).
    const all = [...ctx.config.notify, ...jobs.flatMap((j) => j.notify)];
    await notifier.close(Math.max(0, ...all.map((n) => n.timeoutSeconds)) * 1000);
    removeSignals();
    for (const t of targets.values()) closeTarget(t);
  }
  if (opts.json) writeJson({ jobs: jobDocuments(ctx, jobs, results, locked) });
  const failed = results.filter((r) => r.status !== "succeeded");
  const skipped = jobs.length - results.length - locked.length;
  if (locked.length && !failed.length && !skipped) {
    throw new LockHeldError(
      `${locked.length === 1 ? "job" : "jobs"} ${locked.join(", ")} already running elsewhere; not started`,
    );
  }
  if (failed.length || skipped) {
    const names = [
      ...failed.map((r) => `${r.job} (${r.status})`),
      ...locked.map((n) => `${n} (already running)`),
    ];
    // The cause of each failure too: the exit message is often all a cron mail shows.
    const causes = failed.filter((r) => r.error).map((r) => `. ${r.job}: ${r.error}`);
    const err = new JobsFailedError(
      `${failed.length + skipped + locked.length} of ${plural(jobs.length, "job")} did not succeed: ${[...names, ...(skipped ? [`${skipped} not started`] : [])].join(", ")}${causes.join("")}`,
    );
    // One job whose summary said it all: the exit message would only repeat it.
    throw jobs.length === 1 && summaries && failed.length === 1 ? markShown(err) : err;
  }
  // Exit 5, not 0: a script must see that files were left out of a backup.
  const warned = results.filter((r) => r.warnings > 0);
  if (warned.length) {
    throw new WarningsError(
      `${warned.length} of ${plural(jobs.length, "job")} succeeded with warnings (files left out, see the log or the run's warnings): ${warned.map((r) => `${r.job} (${plural(r.warnings, "warning")}, run ${r.runId})`).join(", ")}`,
    );
  }
}

export function selectJobs(all: JobConfig[], names: string[]): JobConfig[] {
  if (names.length === 0) return all;
  const unknown = names.filter((n) => !all.some((j) => j.name === n));
  if (unknown.length) {
    throw new UsageError(
      `unknown job${unknown.length > 1 ? "s" : ""} ${unknown.join(", ")}; configured jobs: ${all.map((j) => j.name).join(", ")}`,
    );
  }
  return all.filter((j) => names.includes(j.name));
}

function summary(r: BackupResult, bucket: string): string {
  const stats = `${formatBytes(r.bytes)}, ${plural(r.files, "file")}, ${plural(r.warnings, "warning")} in ${formatDuration(r.durationMs)}`;
  if (r.status === "succeeded") {
    return `${r.job}: backup succeeded: ${stats}\n  s3://${bucket}/${r.key}\n  version ${r.versionId}, locked until ${r.retainUntil?.toISOString()}`;
  }
  return `${r.job}: backup ${r.status}: ${r.error}\n  (${stats}; nothing partial was left in the bucket)`;
}

/** `backup --json`: one document per selected job, in the order of the config (the order they ran). */
function jobDocuments(
  ctx: Context,
  jobs: readonly JobConfig[],
  results: readonly BackupResult[],
  locked: readonly string[],
): BackupJobDocument[] {
  return jobs.map((job) => {
    const r = results.find((x) => x.job === job.name);
    const bucket = ctx.config.targets[job.target]?.bucket ?? null;
    if (!r) {
      const running = locked.includes(job.name);
      return {
        job: job.name,
        status: running ? "already-running" : "not-started",
        runId: null,
        bucket,
        key: null,
        versionId: null,
        backupId: null,
        bytes: 0,
        files: 0,
        warnings: 0,
        durationMs: 0,
        retainUntil: null,
        error: running ? "already running elsewhere; not started" : "not started (cancelled)",
      };
    }
    return {
      job: r.job,
      status: r.status,
      runId: r.runId,
      bucket,
      key: r.key,
      versionId: r.versionId ?? null,
      backupId: r.backupId ?? null,
      bytes: r.bytes,
      files: r.files,
      warnings: r.warnings,
      durationMs: r.durationMs,
      retainUntil: r.retainUntil?.toISOString() ?? null,
      error: r.error ?? null,
    };
  });
}

export function registerBackup(p: Command, cli: Cli): void {
  p.command("backup")
    .description("run backup jobs now")
    .argument("[jobs...]", "job names (default: all jobs)")
    .option(
      "--dry-run",
      "walk the jobs' paths as a backup would and print what it would archive; nothing is run, uploaded or recorded",
    )
    .option("--list", "with --dry-run: print every path that would be archived")
    .option("--json", "print the jobs' results as one JSON document (README: JSON output)")
    .addHelpText("after", backupHelp)
    .action((jobs: string[], opts: { dryRun?: boolean; list?: boolean; json?: boolean }) =>
      cli.withContext((ctx) => {
        if (opts.list && !opts.dryRun) throw new UsageError("--list needs --dry-run");
        if (opts.json && opts.list)
          throw new UsageError("--list prints paths; it goes without --json");
        return opts.dryRun ? dryRunCommand(ctx, jobs, opts) : backupCommand(ctx, jobs, opts);
      }),
    );
}
