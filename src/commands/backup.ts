import { type BackupResult, runBackup } from "../backup.js";
import type { JobConfig } from "../config.js";
import { CancelledError, JobsFailedError, LockHeldError, UsageError } from "../errors.js";
import { formatBytes, formatDuration, ProgressLine } from "../progress.js";
import { onStopSignals } from "../signals.js";
import { openTarget } from "../store/s3.js";
import type { Target } from "../store/store.js";
import type { Context } from "./context.js";

export const backupHelp = `
Runs the named jobs now, one after another (all jobs when none are named).
Each job becomes one new, encrypted, locked version in its target's bucket,
recorded in the catalog. A failing job does not stop the others.

On a terminal a progress line and a summary go to stderr; otherwise only
log lines are written. Ctrl-C (SIGINT) or SIGTERM cancels: the multipart
upload is aborted and the run is recorded as interrupted; a second signal
more than 1 s later exits at once (signals within 1 s, as timeout(1) sends
them to the process group, are one request).

A job that is already running (in the daemon, or another immutd backup) is
not started twice.

Exit codes: 0 every job succeeded, 3 at least one failed or was cancelled,
75 a job was already running (and none failed), 2 unknown job name,
78 configuration error.

Examples:
  immutd backup               # all jobs
  immutd backup etc db        # two jobs
`;

export async function backupCommand(ctx: Context, names: string[]): Promise<void> {
  const jobs = selectJobs(ctx.config.jobs, names);
  const controller = new AbortController();
  const removeSignals = onStopSignals({
    log: ctx.log,
    stop: (sig) => {
      ctx.log.warn(`${sig} received: cancelling; send it again to exit at once`);
      controller.abort(new CancelledError(`received ${sig}`));
    },
  });

  const targets = new Map<string, Target>();
  const results: BackupResult[] = [];
  const locked: string[] = [];
  try {
    for (const job of jobs) {
      if (controller.signal.aborted) break;
      const tc = ctx.config.targets[job.target];
      if (!tc) throw new UsageError(`job ${job.name}: unknown target ${job.target}`);
      let target = targets.get(tc.name);
      if (!target) {
        target = openTarget(tc);
        targets.set(tc.name, target);
      }
      const progress = new ProgressLine(job.name);
      let result: BackupResult;
      try {
        result = await runBackup(job, {
          config: ctx.config,
          catalog: ctx.catalog(),
          target,
          targetConfig: tc,
          log: ctx.log,
          signal: controller.signal,
          onProgress: (p) => progress.update(p),
        });
      } catch (err) {
        progress.clear();
        if (!(err instanceof LockHeldError)) throw err;
        ctx.log.error({ job: job.name }, err.message);
        locked.push(job.name);
        continue;
      }
      progress.clear();
      results.push(result);
      if (process.stderr.isTTY) process.stderr.write(`${summary(result, tc.bucket)}\n`);
    }
  } finally {
    removeSignals();
    for (const t of targets.values()) {
      for (const s of [t.writer, t.reader, t.admin])
        (s as { client?: { destroy(): void } })?.client?.destroy();
    }
  }
  const failed = results.filter((r) => r.status !== "succeeded");
  const skipped = jobs.length - results.length - locked.length;
  if (locked.length && !failed.length && !skipped) {
    throw new LockHeldError(`job(s) ${locked.join(", ")} already running elsewhere; not started`);
  }
  if (failed.length || skipped) {
    const names = [
      ...failed.map((r) => `${r.job} (${r.status})`),
      ...locked.map((n) => `${n} (already running)`),
    ];
    throw new JobsFailedError(
      `${failed.length + skipped + locked.length} of ${jobs.length} job(s) did not succeed: ${[...names, ...(skipped ? [`${skipped} not started`] : [])].join(", ")}`,
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
  const stats = `${formatBytes(r.bytes)}, ${r.files.toLocaleString("en-US")} files, ${r.warnings} warning(s) in ${formatDuration(r.durationMs)}`;
  if (r.status === "succeeded") {
    return `${r.job}: backup succeeded: ${stats}\n  s3://${bucket}/${r.key}\n  version ${r.versionId}, locked until ${r.retainUntil?.toISOString()}`;
  }
  return `${r.job}: backup ${r.status}: ${r.error}\n  (${stats}; nothing partial was left in the bucket)`;
}
