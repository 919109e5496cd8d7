import type { Command } from "commander";
import type { BackupRow } from "../catalog/catalog.js";
import { type FoundBackup, UNKNOWN_FILES } from "../catalog/rebuild.js";
import { UsageError } from "../errors.js";
import { describeRemoval, serverRemoval } from "../retention/plan.js";
import { printNotes, scanBucket } from "./catalog.js";
import type { Cli, Context } from "./context.js";
import { writeJson } from "./output.js";
import { formatBytes, formatTable } from "./progress.js";

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
TIERS are the keep-policy tiers a backup stands for (daily, weekly, monthly,
yearly; "-" none or no policy) and EXPIRES the earliest date the bucket's
lifecycle rules remove it (see \`immutd plan\`): "kept (newest)" while
keepLatestLocked keeps a job's newest backup locked, "never (no tag)" for a
backup without an immutd-keep tag.
KIND is full or incr: an incremental backup (the job's incremental: option)
holds only what changed since the backup before it, and restoring it reads
every earlier member of its chain; CHAIN is the id of the chain's full
backup. Key material is never shown. --json prints an array of objects with
the fields id, job, target, bucket, key, versionId, size, sha256,
compression, createdAt, retainUntil, retentionMode, status, files (null:
unknown, for an older age backup rebuilt without an identity), runId,
manifestKey, manifestVersionId (null for a backup without a manifest), tiers
("daily,weekly"; "" none; null before tiers), keepTag, expiresAfter (ISO date
or null), parentId (null for a full backup) and chainId.

--from-bucket lists what the bucket holds instead, from the manifests, with
the reader credential and the master key; the catalog is not opened, so this
works on a new machine or with a lost or damaged catalog. It shows this
host's backups (--host H: another machine's, --all-hosts: every host under
each target's prefix), newest first per job, checked as \`immutd catalog
rebuild\` checks them: a manifest whose archive version is missing or differs
is not listed but reported on stderr, as are later versions at a manifest key.
--json prints an array of objects with the fields host, job, target, bucket,
key, versionId, size, sha256, compression, createdAt, retentionMode,
retainUntil, status, files, keyDerivation, manifestKey, manifestVersionId,
parent (an incremental's parent archive {key, versionId}; null for a full
backup).
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
  const expires = expiryCells(ctx, rows);
  if (opts.json) {
    writeJson(
      rows.map((r) => ({
        ...r,
        // A rebuilt age backup whose count its sealed index kept (catalog rebuild --help).
        files: r.files === UNKNOWN_FILES ? null : r.files,
        expiresAfter: expires.get(r.id)?.date ?? null,
      })),
    );
    return;
  }
  if (rows.length === 0) {
    process.stdout.write(opts.job ? `no backups of job ${opts.job}\n` : "no backups yet\n");
    return;
  }
  process.stdout.write(table(rows, expires));
}

const HEAD = ["ID", "JOB", "CREATED (UTC)", "SIZE", "LOCKED UNTIL", "STATUS", "KEY", "VERSION"];

function table(rows: BackupRow[], expires: Map<number, { cell: string }>): string {
  const head = [...HEAD, "TIERS", "EXPIRES", "KIND", "CHAIN"];
  return formatTable(
    head,
    rows.map((r) => {
      const c = cells(r);
      return [
        ...c,
        r.tiers || "-",
        expires.get(r.id)?.cell ?? "-",
        chainKind(r),
        String(r.chainId),
      ];
    }),
  );
}

/** Each row's server removal (src/retention/plan.ts): a cell, and the ISO date for --json. */
function expiryCells(
  ctx: Context,
  rows: BackupRow[],
): Map<number, { cell: string; date: string | null }> {
  const newest = new Map<string, number>();
  for (const r of rows)
    if (["ok", "unlocked", "unverified", "expired"].includes(r.status)) newest.set(r.job, r.id);
  const out = new Map<number, { cell: string; date: string | null }>();
  for (const r of rows) {
    const tc = ctx.config.targets[r.target];
    const removal = serverRemoval(r, {
      graceDays: tc?.lifecycleGraceDays ?? 0,
      newest: newest.get(r.job) === r.id,
      keepLatestLocked:
        ctx.config.keepLatestLocked && ctx.config.jobs.some((j) => j.name === r.job),
    });
    out.set(r.id, {
      cell: describeRemoval(removal),
      date: removal.kind === "date" ? removal.date.toISOString() : null,
    });
  }
  return out;
}

/** full, or incr (an incremental: restoring it needs every earlier member of its chain). */
function chainKind(r: Pick<BackupRow, "parentId">): string {
  return r.parentId === null ? "full" : "incr";
}

export interface ListFromBucketOptions {
  job?: string;
  json?: boolean;
  host?: string;
  allHosts?: boolean;
}

/** `list --from-bucket`: the backups the manifests describe, without the catalog. */
export async function listFromBucketCommand(ctx: Context, o: ListFromBucketOptions): Promise<void> {
  if (o.host !== undefined && o.allHosts)
    throw new UsageError("give --host or --all-hosts, not both");
  const host = o.allHosts ? undefined : (o.host ?? ctx.config.host);
  const scope = {
    ...(host !== undefined ? { host } : {}),
    ...(o.job !== undefined ? { job: o.job } : {}),
  };
  const scan = await scanBucket(ctx, scope, undefined);
  if (o.json) {
    writeJson(scan.backups);
  } else if (scan.backups.length === 0) {
    process.stdout.write(
      `no backups with manifests in the bucket for ${o.allHosts ? "any host" : `host ${host}`}\n`,
    );
  } else {
    process.stdout.write(bucketTable(scan.backups));
  }
  printNotes(scan.warnings, scan.findings);
}

function bucketTable(rows: FoundBackup[]): string {
  const head = ["HOST", "JOB", "CREATED (UTC)", "SIZE", "LOCKED UNTIL", "STATUS", "KEY", "VERSION"];
  return formatTable(
    [...head, "KIND"],
    rows.map((r) => [r.host, ...cells(r).slice(1), r.parent === null ? "full" : "incr"]),
  );
}

/** A row's cells for ID (or host), job, created, size, lock, status, key, version. */
function cells(
  r: Pick<
    BackupRow,
    "job" | "createdAt" | "size" | "retainUntil" | "retentionMode" | "status" | "key" | "versionId"
  > & { id?: number },
): string[] {
  return [
    String(r.id ?? ""),
    r.job,
    r.createdAt.slice(0, 19).replace("T", " "),
    formatBytes(r.size),
    r.retainUntil ? `${r.retainUntil.slice(0, 10)} ${r.retentionMode ?? ""}`.trim() : "-",
    r.status,
    r.key,
    r.versionId,
  ];
}

export function registerList(p: Command, cli: Cli): void {
  p.command("list")
    .description("list the backups recorded in the catalog (or, with --from-bucket, in the bucket)")
    .option("--job <name>", "only this job")
    .option("--json", "machine-readable output")
    .option(
      "--from-bucket",
      "without the catalog: list the backups the bucket's manifests describe",
    )
    .option("--host <name>", "with --from-bucket: the host name the backups were made under")
    .option("--all-hosts", "with --from-bucket: every host under each target's prefix")
    .addHelpText("after", listHelp)
    .action((opts: ListFromBucketOptions & { fromBucket?: boolean }) =>
      cli.withContext((ctx) => {
        if (opts.fromBucket) return listFromBucketCommand(ctx, opts);
        if (opts.host !== undefined || opts.allHosts)
          throw new UsageError("--host and --all-hosts go with --from-bucket");
        return listCommand(ctx, opts);
      }),
    );
}
