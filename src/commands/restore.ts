import { mkdirSync, readdirSync, statSync } from "node:fs";
import { isAbsolute, resolve } from "node:path";
import { CancelledError, UsageError } from "../errors.js";
import { formatBytes, formatDuration, ProgressLine } from "../progress.js";
import {
  type RestoreMode,
  type RestoreSource,
  restore,
  type Selector,
  selectFromBucket,
  selectFromCatalog,
} from "../restore.js";
import { cancelOnStopSignals } from "../signals.js";
import { closeTarget, openTarget } from "../store/s3.js";
import { parseTimeBound } from "../time.js";
import { selectJobs } from "./backup.js";
import type { Context } from "./context.js";

export const restoreHelp = `
Restores one backup of JOB. By default the newest good backup in the
catalog; --at TIME picks the newest created at or before TIME, --id N a
catalog entry (see immutd list), --version-id V one S3 version.

TIME is in UTC, as immutd list shows it, unless it ends in an offset (Z,
+01:00): 2026-11-25, 2026-11-25T03:00 or "2026-11-25 03:00:12". It covers
its whole last unit: a date the whole day, 03:00 up to 03:00:59.

Backups are always read by their recorded version ID, never as the "latest"
object: a newer version or a delete marker written by an attacker does not
change what is restored. The SHA-256 and size are checked against the catalog.
A download that breaks or stalls (the target's idleTimeoutSeconds) resumes
from the last byte received, by version ID, with the hash still over every
byte; a slow reader of --stdout is fine. Five breaks in a row without
progress fail the restore.

Without the catalog (a lost server: only the config and the master key are
left), --from-bucket lists the job's versions in the bucket with the reader
credentials and derives each backup's key from the master key. Use --host
when the backup was made on a machine with another host name. Keys dated
more than 10 minutes in the future were planted (immutd names keys at run
start): they are skipped with a warning unless --version-id names one.

File names are restored byte-exact, UTF-8 or not; --list and warnings show
them as tar -t does (caf\\351, new\\nline). An --include pattern matches a
name that is not UTF-8 with each byte read as Latin-1 ("caf?" or "café"
selects caf\\xe9).

--include PATTERN (repeatable, with --to or --list) selects paths; a
pattern that matches nothing is an error (tar: "Not found in archive"),
reported after the whole archive was read.

Exactly one of:
  --to DIR    extract into DIR (created if missing; must be empty unless
              --overwrite). Nothing is written outside DIR: absolute paths,
              '..' and paths through symlinks in the archive are refused.
  --stdout    write the decrypted archive (tar or tar.gz, as stored) to stdout
  --list      print the archive's entries, write nothing

Exit codes: 0 restored, 2 usage (no such job or backup), 3 the restore failed
or is incomplete (integrity mismatch, truncated download, wrong key, refused
entries, entries that could not be written, an --include that matched
nothing), 78 configuration error.

Examples:
  immutd restore etc --to /srv/restore/etc
  immutd restore etc --at 2026-11-20 --include /etc/nginx --to /tmp/nginx
  immutd restore etc --from-bucket --host web-1 --to /srv/restore
  immutd restore db --stdout | tar -tzvf -
`;

export interface RestoreCliOptions {
  to?: string;
  stdout?: boolean;
  list?: boolean;
  at?: string;
  id?: string;
  versionId?: string;
  include?: string[];
  overwrite?: boolean;
  devices?: boolean;
  fromBucket?: boolean;
  host?: string;
}

export async function restoreCommand(
  ctx: Context,
  jobName: string,
  o: RestoreCliOptions,
): Promise<void> {
  const outputs = [o.to !== undefined, o.stdout === true, o.list === true].filter(Boolean).length;
  if (outputs !== 1) throw new UsageError("give exactly one of --to DIR, --stdout or --list");
  const selectors = [o.at, o.id, o.versionId].filter((x) => x !== undefined).length;
  if (selectors > 1) throw new UsageError("give at most one of --at, --id and --version-id");
  if (o.host !== undefined && !o.fromBucket) throw new UsageError("--host goes with --from-bucket");
  if (o.include?.length && o.stdout === true)
    throw new UsageError("--include goes with --to or --list; --stdout writes the whole archive");
  if (o.devices && process.getuid?.() !== 0) throw new UsageError("--devices needs root");
  const [job] = selectJobs(ctx.config.jobs, [jobName]);
  if (!job) throw new UsageError(`unknown job ${jobName}`);
  const tc = ctx.config.targets[job.target];
  if (!tc) throw new UsageError(`job ${job.name}: unknown target ${job.target}`);

  const sel: Selector = {};
  if (o.at !== undefined) sel.at = parseTimeBound("--at", o.at);
  if (o.id !== undefined) {
    if (!/^\d+$/.test(o.id))
      throw new UsageError(`--id ${o.id}: not a catalog id (a number from immutd list)`);
    sel.id = Number(o.id);
  }
  if (o.versionId !== undefined) sel.versionId = o.versionId;

  const target = openTarget(tc);
  try {
    const src: RestoreSource = o.fromBucket
      ? await selectFromBucket(
          target.reader,
          ctx.config,
          target,
          job,
          o.host ?? ctx.config.host,
          sel,
          { onWarning: (message) => ctx.log.warn({ job: job.name }, message) },
        )
      : selectFromCatalog(ctx.catalog(), job.name, sel);
    if (src.bucket !== tc.bucket) {
      throw new UsageError(
        `backup ${src.id ?? ""} is in bucket ${src.bucket}, but job ${job.name}'s target ${tc.name} now points at ${tc.bucket}`,
      );
    }

    let mode: RestoreMode;
    let dest: string | undefined;
    if (o.to !== undefined) {
      dest = isAbsolute(o.to) ? o.to : resolve(o.to);
      prepareDest(dest, o.overwrite === true);
      mode = {
        kind: "extract",
        dest,
        overwrite: o.overwrite === true,
        devices: o.devices === true,
      };
    } else if (o.list) {
      mode = {
        kind: "list",
        onEntry: (e) => {
          const kind =
            e.type === "directory"
              ? "d"
              : e.type === "symlink"
                ? "l"
                : e.type === "link"
                  ? "h"
                  : "-";
          const link = e.linkname ? ` -> ${e.linkname}` : "";
          process.stdout.write(
            `${kind}${e.mode.toString(8).padStart(4, "0")} ${String(e.uid).padStart(5)}:${String(e.gid).padEnd(5)} ${String(e.size).padStart(12)} ${e.mtime.toISOString().slice(0, 19)} ${e.name}${link}\n`,
          );
        },
      };
    } else {
      if (process.stdout.isTTY)
        throw new UsageError("--stdout would write binary data to the terminal; pipe it somewhere");
      mode = { kind: "raw", out: process.stdout };
    }

    const controller = new AbortController();
    const removeSignals = cancelOnStopSignals(
      controller,
      ctx.log,
      "stopping the restore",
      (sig) =>
        new CancelledError(`restore cancelled by ${sig}; files already written were left in place`),
    );
    const progress = new ProgressLine(`restore ${job.name}`);
    ctx.log.info(
      {
        job: job.name,
        key: src.key,
        versionId: src.versionId,
        createdAt: src.createdAt.toISOString(),
        dest,
      },
      "restore started",
    );
    try {
      const s = await restore(target.reader, src, mode, {
        ...(o.include?.length ? { include: o.include } : {}),
        signal: controller.signal,
        onWarning: (w) => ctx.log.warn({ job: job.name, path: w.path }, w.message),
        onProgress: (p) => progress.update(p),
        onResume: (r) =>
          ctx.log.warn(
            { job: job.name, key: src.key, versionId: src.versionId, ...r },
            "download broken; resuming from the last byte received",
          ),
      });
      progress.clear();
      const r = s.result;
      ctx.log.info(
        {
          job: job.name,
          key: src.key,
          versionId: src.versionId,
          bytes: s.bytes,
          sha256: s.sha256,
          durationMs: s.durationMs,
          ...(r
            ? {
                files: r.files,
                dirs: r.dirs,
                symlinks: r.symlinks,
                skipped: r.skipped,
                warnings: r.warnings,
              }
            : {}),
          ...(s.listed !== undefined ? { listed: s.listed } : {}),
        },
        "restore finished",
      );
      if (process.stderr.isTTY) {
        const what = r
          ? `${r.files.toLocaleString("en-US")} files, ${r.dirs} dirs, ${r.symlinks} symlinks, ${formatBytes(r.bytes)} into ${dest}`
          : s.listed !== undefined
            ? `${s.listed} entries listed`
            : `${formatBytes(s.bytes)} written to stdout`;
        process.stderr.write(
          `restored ${job.name} from ${src.createdAt.toISOString()} (version ${src.versionId}): ${what} in ${formatDuration(s.durationMs)}; SHA-256 ${src.sha256 ? "verified" : "not recorded (from bucket), size verified"}\n`,
        );
      }
    } finally {
      progress.clear();
      removeSignals();
    }
  } finally {
    closeTarget(target);
  }
}

/** DIR is created if missing; an existing one must be an empty directory unless --overwrite. */
function prepareDest(dest: string, overwrite: boolean): void {
  let entries: string[];
  try {
    if (!statSync(dest).isDirectory()) throw new UsageError(`--to ${dest}: not a directory`);
    entries = readdirSync(dest);
  } catch (err) {
    if (err instanceof UsageError) throw err;
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
      throw new UsageError(
        `--to ${dest}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      );
    }
    mkdirSync(dest, { recursive: true, mode: 0o700 });
    return;
  }
  if (entries.length > 0 && !overwrite) {
    throw new UsageError(
      `--to ${dest} is not empty (${entries.length} entries); restore into an empty directory, or add --overwrite to replace files in it`,
    );
  }
}
