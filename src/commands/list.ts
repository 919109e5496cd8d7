import type { Command } from "commander";
import type { BackupRow } from "../catalog.js";
import { UsageError } from "../errors.js";
import { formatBytes, formatTable } from "../progress.js";
import type { Cli, Context } from "./context.js";

export const listHelp = `
Lists the backups recorded in the catalog, oldest first, with the lock the
server last reported (LOCKED UNTIL, mode) and the status:
  ok          stored, size checked, locked as configured
  unlocked    the version exists but is not locked as configured (its lock
              could not be set or read back, or verify found it short or
              weak); verify reports it and locks it when the server lets it
  corrupt     the stored bytes are not what was sent
  missing     the version is gone
  expired     its lock has ended
  unverified  found by crash recovery; verify --deep settles it
Key material is never shown. --json prints an array of objects with the fields
id, job, target, bucket, key, versionId, size, sha256, compression,
createdAt, retainUntil, retentionMode, status, files, runId, manifestKey,
manifestVersionId (null for a backup without a manifest).
`;

export function listCommand(ctx: Context, opts: { job?: string; json?: boolean }): void {
  const rows = ctx.catalog().listBackups(opts.job !== undefined ? { job: opts.job } : {});
  // A job no longer in the config still lists its backups; a name that is
  // neither configured nor in the catalog is a typo (exit 2, not an empty list).
  const job = opts.job;
  if (job !== undefined && rows.length === 0 && !ctx.config.jobs.some((j) => j.name === job)) {
    throw new UsageError(
      `unknown job ${job}: not configured and not in the catalog; configured jobs: ${ctx.config.jobs.map((j) => j.name).join(", ")}`,
    );
  }
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
    return;
  }
  if (rows.length === 0) {
    process.stdout.write(opts.job ? `no backups of job ${opts.job}\n` : "no backups yet\n");
    return;
  }
  process.stdout.write(table(rows));
}

function table(rows: BackupRow[]): string {
  const head = ["ID", "JOB", "CREATED (UTC)", "SIZE", "LOCKED UNTIL", "STATUS", "KEY", "VERSION"];
  const body = rows.map((r) => [
    String(r.id),
    r.job,
    r.createdAt.slice(0, 19).replace("T", " "),
    formatBytes(r.size),
    r.retainUntil ? `${r.retainUntil.slice(0, 10)} ${r.retentionMode ?? ""}`.trim() : "-",
    r.status,
    r.key,
    r.versionId,
  ]);
  return formatTable(head, body);
}

export function registerList(p: Command, cli: Cli): void {
  p.command("list")
    .description("list the backups recorded in the catalog")
    .option("--job <name>", "only this job")
    .option("--json", "machine-readable output")
    .addHelpText("after", listHelp)
    .action((opts: { job?: string; json?: boolean }) =>
      cli.withContext((ctx) => listCommand(ctx, opts)),
    );
}
