import type { Command } from "commander";
import { nextRun } from "../config/schedule.js";
import type { Cli, Context } from "./context.js";
import { formatTable } from "./progress.js";

export const statusHelp = `
Shows each job's last run (when, result with its count of warnings, error),
its last success and its next scheduled run, from the catalog and the config.
--json for scripts. A read-only catalog (a mounted copy) is shown as it is.
`;

export function statusCommand(ctx: Context, opts: { json?: boolean }): void {
  const catalog = ctx.catalog();
  const now = new Date();
  const rows = ctx.config.jobs.map((job) => {
    const { lastRun, lastSuccess } = catalog.jobSummary(job.name);
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
      nextRun: nextRun(job, now)?.toISOString() ?? null,
    };
  });
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
    return;
  }
  const head = ["JOB", "LAST RUN (UTC)", "RESULT", "LAST SUCCESS (UTC)", "NEXT RUN (UTC)"];
  const t = (s: string | null | undefined) => (s ? s.slice(0, 19).replace("T", " ") : "never");
  const body = rows.map((r) => [
    r.job,
    t(r.lastRun?.startedAt),
    r.lastRun
      ? `${r.lastRun.status}${r.lastRun.warnings ? ` (${r.lastRun.warnings} warning${r.lastRun.warnings === 1 ? "" : "s"})` : ""}`
      : "-",
    t(r.lastSuccess),
    r.schedule === null ? "manual" : r.nextRun ? t(r.nextRun) : "never (schedule does not fire)",
  ]);
  process.stdout.write(formatTable(head, body));
  for (const r of rows) {
    if (r.lastRun?.error && r.lastRun.status !== "succeeded") {
      process.stdout.write(`\n${r.job}: last run ${r.lastRun.status}: ${r.lastRun.error}\n`);
    }
  }
}

export function registerStatus(p: Command, cli: Cli): void {
  p.command("status")
    .description("each job's last run, last success and next run")
    .option("--json", "machine-readable output")
    .addHelpText("after", statusHelp)
    .action((opts: { json?: boolean }) => cli.withContext((ctx) => statusCommand(ctx, opts)));
}
