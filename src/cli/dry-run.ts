/**
 * `immutd backup --dry-run`: walks each job's tree exactly as its backup would
 * (src/flows/backup.ts jobWalk: the same excludes, excludeFrom, excludeIfPresent and
 * oneFileSystem, the live catalog left out) with the archive walker in its dry
 * mode, and prints what would be archived. Nothing else of a backup happens:
 * no hook, no command, no upload, no catalog run, no lock; the catalog is not
 * even opened.
 */

import type { JobConfig } from "../config/config.js";
import { JobsFailedError, WarningsError } from "../errors.js";
import { jobWalk } from "../flows/backup.js";
import { type ArchiveResult, createArchive, missingPaths } from "../pipeline/archive.js";
import { selectJobs } from "./backup.js";
import type { Context } from "./context.js";
import { plural, writeJson } from "./output.js";
import { formatBytes, formatTable } from "./progress.js";

export interface DryRunReport {
  job: string;
  /** Entries that would be archived (files, hard links, directories, symlinks). */
  entries: number;
  files: number;
  dirs: number;
  symlinks: number;
  /** Content bytes of the files (lstat sizes), before compression. */
  bytes: number;
  warnings: number;
  /** Rule (`exclude "PATTERN"`, `excludeIfPresent "NAME"`, `oneFileSystem`) -> entries it left out. */
  skipped: Record<string, number>;
  /** Commands the job has: a dry run does not run them, so their output is not counted. */
  commandsNotRun: string[];
  /** Set when the job could not be walked (a configured path is missing). */
  error?: string;
}

export async function dryRunCommand(
  ctx: Context,
  names: string[],
  opts: { list?: boolean; json?: boolean },
): Promise<void> {
  const jobs = selectJobs(ctx.config.jobs, names);
  const reports: DryRunReport[] = [];
  for (const job of jobs) {
    const report = await dryRunJob(ctx, job, opts.list === true);
    reports.push(report);
    if (!opts.json) process.stdout.write(describe(report));
  }
  // --json: {"jobs": [DryRunReport...]} (README "JSON output").
  if (opts.json) writeJson({ jobs: reports });
  const failed = reports.filter((r) => r.error !== undefined);
  if (failed.length) {
    throw new JobsFailedError(
      `dry run: ${failed.length} of ${plural(jobs.length, "job")} could not be walked: ${failed.map((r) => `${r.job}: ${r.error}`).join("; ")}`,
    );
  }
  const warned = reports.filter((r) => r.warnings > 0);
  if (warned.length) {
    throw new WarningsError(
      `dry run: ${warned.map((r) => `${r.job} (${plural(r.warnings, "warning")})`).join(", ")}: a backup would leave those entries out (see the log)`,
    );
  }
}

async function dryRunJob(ctx: Context, job: JobConfig, list: boolean): Promise<DryRunReport> {
  const report: DryRunReport = {
    job: job.name,
    entries: 0,
    files: 0,
    dirs: 0,
    symlinks: 0,
    bytes: 0,
    warnings: 0,
    skipped: {},
    commandsNotRun: job.commands.map((c) => c.name),
  };
  const missing = await missingPaths(job.paths);
  if (missing.length) {
    report.error = `configured path ${missing.join(", ")} does not exist`;
    return report;
  }
  const jlog = ctx.log.child({ job: job.name });
  const archive = createArchive({
    ...jobWalk(job, ctx.config.catalog),
    dryRun: true,
    onWarning: (w) => jlog.warn({ path: w.path, code: w.code }, w.message),
    onSkip: (s) => {
      report.skipped[s.rule] = (report.skipped[s.rule] ?? 0) + 1;
    },
    ...(list
      ? {
          onListed: (e) => process.stdout.write(`${e.path}${e.type === "directory" ? "/" : ""}\n`),
        }
      : {}),
  });
  archive.stream.resume(); // a dry walk writes no tar, only its end: let it drain
  const done: ArchiveResult = await archive.done;
  Object.assign(report, {
    entries: done.files + done.dirs + done.symlinks,
    files: done.files,
    dirs: done.dirs,
    symlinks: done.symlinks,
    bytes: done.bytes,
    warnings: done.warnings,
  });
  return report;
}

function describe(r: DryRunReport): string {
  if (r.error !== undefined) return `${r.job}: dry run: ${r.error}; a backup would fail\n`;
  const n = (x: number) => x.toLocaleString("en-US");
  let out =
    `${r.job}: would archive ${plural(r.entries, "entry", "entries")} (${plural(r.files, "file")}, ` +
    `${plural(r.dirs, "directory", "directories")}, ${plural(r.symlinks, "symlink")}), ${formatBytes(r.bytes)} before compression` +
    `${r.warnings ? `, ${plural(r.warnings, "warning")}` : ""}\n`;
  if (r.commandsNotRun.length) {
    out += `  commands not run (their output is not counted): ${r.commandsNotRun.join(", ")}\n`;
  }
  const rows = Object.entries(r.skipped).map(([rule, count]) => [rule, n(count)]);
  if (rows.length) {
    out += formatTable(["LEFT OUT BY", "ENTRIES"], rows)
      .split("\n")
      .map((l) => (l ? `  ${l}` : l))
      .join("\n");
  } else out += "  nothing excluded\n";
  return out;
}
