import { mkdirSync, readdirSync, statSync } from "node:fs";
import { isAbsolute, resolve } from "node:path";
import { encryptionOf } from "../config/config.js";
import { CancelledError, describeError, UsageError } from "../errors.js";
import {
  type BackupRef,
  backupsOf,
  listJob,
  type ManifestSource,
  manifestCacheDir,
  manifestOf,
} from "../flows/browse.js";
import {
  type ChainSource,
  chainFromBucket,
  chainFromCatalog,
  restoreChain,
} from "../flows/chain-restore.js";
import { restoreRanges } from "../flows/ranged.js";
import {
  type RestoreMode,
  type RestoreSource,
  type RestoreSummary,
  restore,
  type Selector,
  selectFromBucket,
  selectFromCatalog,
} from "../flows/restore.js";
import { isAgeEncrypted } from "../pipeline/cipher.js";
import type { ExtractWarning, TarEntryInfo } from "../pipeline/extract.js";
import { displayName } from "../pipeline/file-names.js";
import { KEY_DERIVATION } from "../repo/keys.js";
import type { Manifest } from "../repo/manifest.js";
import { archivesOf, type Listing, listScope, schemeOption } from "../repo/snapshots.js";
import { closeTarget, openTarget } from "../store/s3.js";
import type { VersionEntry } from "../store/store.js";
import { selectJobs } from "./backup.js";
import type { Context } from "./context.js";
import { requireIdentities } from "./identity.js";
import { plural, writeJson } from "./output.js";
import { formatBytes, formatDuration, ProgressLine } from "./progress.js";
import { cancelOnStopSignals } from "./signals.js";
import { parseTimeBound } from "./time.js";

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
pattern that matches nothing is an error (tar: "Not found in archive").
With --to, a backup that has a manifest and is stored uncompressed is
restored by reading only the selected entries' bytes (ranged GETs); the
whole-archive SHA-256 cannot be checked then, so instead every tar header
must name the path, type and size the manifest gives at that offset, and
any mismatch stops the restore before the entry is written (exit 3). A
compressed backup, or one without a manifest (immutd 0.1.0), is read whole:
immutd says so and how many bytes first. --whole-archive always reads and
verifies the whole archive. To see what a backup holds without
downloading it, use immutd ls JOB or immutd find PATTERN.

An age-encrypted backup (encryption: age or both) needs --identity FILE, an
age identity file of one of its recipients, or the job's
encryption.identityFile; a wrong identity fails before anything is written
(exit 3). Without immutd: age -d -i FILE < archive | zstd -d | tar -x.

Incremental backups (the job's incremental: option): restoring any point of
a chain streams the chain's full backup and then each incremental up to
that point, each once, and writes from each only the entries the point's
index takes from it, so deleted files, old names of renamed ones and
replaced types never appear. --include downloads only the members that
hold a selected entry. Every member's size and SHA-256 are checked; a
missing member makes the points after it unrestorable (exit 3, naming it).
--from-bucket checks the chain against every member's manifest. --stdout
writes only the named backup's own archive (for an incremental: the
entries that changed in that run).

Exactly one of:
  --to DIR    extract into DIR (created if missing; must be empty unless
              --overwrite). Nothing is written outside DIR: absolute paths,
              '..' and paths through symlinks in the archive are refused.
  --stdout    write the decrypted archive (tar, tar.gz or tar.zst, as stored) to stdout
  --list      print the archive's entries, write nothing

At a terminal a progress line goes to stderr (bytes downloaded of the
archive's size, percent, rate, time left, the current file); the summary
goes to stdout (to stderr with --stdout, whose stdout is the archive).
--json (with --to or --list) prints one JSON document on stdout instead of
the summary and the --list lines (README "JSON output").

Exit codes: 0 restored, 2 usage (no such job or backup), 3 the restore failed
or is incomplete (integrity mismatch, truncated download, wrong key, refused
entries, entries that could not be written, an --include that matched
nothing), 78 configuration error.

Examples:
  immutd restore etc --to /srv/restore/etc
  immutd restore etc --at 2026-11-20 --include /etc/nginx --to /tmp/nginx
  immutd restore etc --include /etc/hosts --whole-archive --to /tmp/hosts
  immutd restore etc --from-bucket --host web-1 --to /srv/restore
  immutd restore db --stdout | tar -tzvf -
  immutd restore etc --list --json | jq -r '.entries[].name'
  immutd restore etc --identity /root/recovery.age.txt --to /srv/restore/etc
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
  wholeArchive?: boolean;
  json?: boolean;
  identity?: string;
}

/** restore JOB: check the options, pick the backup and the output, run it under the stop signals. */
export async function restoreCommand(
  ctx: Context,
  jobName: string,
  o: RestoreCliOptions,
): Promise<void> {
  checkOptions(o);
  const [job] = selectJobs(ctx.config.jobs, [jobName]);
  if (!job) throw new UsageError(`unknown job ${jobName}`);
  const tc = ctx.config.targets[job.target];
  if (!tc) throw new UsageError(`job ${job.name}: unknown target ${job.target}`);
  const sel = selector(o);
  const target = openTarget(tc);
  try {
    const host = o.host ?? ctx.config.host;
    // From the bucket, the job's prefix is listed once: the backup is picked,
    // its chain checked and its manifest read from that one listing.
    // (--id is refused by selectFromBucket before any listing.)
    const listing =
      o.fromBucket && sel.id === undefined
        ? await listScope(target.reader, target.prefix, { host, job: job.name })
        : undefined;
    const src: RestoreSource = o.fromBucket
      ? await selectFromBucket(target.reader, ctx.config, target, job, host, sel, {
          onWarning: (message) => ctx.log.warn({ job: job.name }, message),
          ...(listing ? { listing } : {}),
        })
      : selectFromCatalog(ctx.catalog(), job.name, sel);
    if (src.bucket !== tc.bucket) {
      throw new UsageError(
        `backup ${src.id ?? ""} is in bucket ${src.bucket}, but job ${job.name}'s target ${tc.name} now points at ${tc.bucket}`,
      );
    }
    // An age backup: the identity is read before anything is downloaded or written.
    const identities = isAgeEncrypted(src.keyDerivation ?? KEY_DERIVATION)
      ? requireIdentities(o.identity, encryptionOf(job, tc), `backup ${src.key}`)
      : undefined;
    const listed: TarEntryInfo[] = [];
    const { mode, dest } = outputMode(o, listed);
    const chain = mode.kind === "raw" ? undefined : await chainOf(ctx, target, src, listing);
    const manifest =
      !chain && mode.kind === "extract" && o.include?.length && !o.wholeArchive
        ? await rangedManifest(ctx, target, src, host, listing)
        : undefined;
    await withStopSignals(ctx, async (signal) => {
      // --list's own lines are its progress (a line redrawn beside them would garble both).
      const progress = new ProgressLine(
        `restore ${job.name}`,
        process.stderr,
        process.stderr.isTTY === true && (mode.kind !== "list" || o.json === true),
      );
      // A ranged restore reads only the selected entries: the archive's size is no total for it.
      if (src.size !== undefined && manifest === undefined) progress.setTotal({ bytes: src.size });
      let current: string | undefined;
      const where = { job: job.name, key: src.key, versionId: src.versionId };
      ctx.log.info({ ...where, createdAt: src.createdAt.toISOString(), dest }, "restore started");
      try {
        const opts = {
          ...(o.include?.length ? { include: o.include } : {}),
          ...(identities ? { identities } : {}),
          signal,
          onWarning: (w: ExtractWarning) =>
            ctx.log.warn({ job: job.name, path: w.path }, w.message),
          onProgress: (p: { bytes: number; files: number }) =>
            progress.update({
              ...p,
              ...(current !== undefined ? { current: () => `/${displayName(current ?? "")}` } : {}),
            }),
          onHeader: (h: { name: string }) => {
            current = h.name;
          },
          onResume: (r: { offset: number; attempt: number; error: string }) =>
            ctx.log.warn(
              { ...where, ...r },
              "download broken; resuming from the last byte received",
            ),
        };
        const s =
          chain && mode.kind !== "raw"
            ? await restoreChain(target.reader, chain, mode, opts)
            : manifest && mode.kind === "extract" && o.include
              ? await restoreRanges(target.reader, src, manifest, mode, {
                  ...opts,
                  include: o.include,
                })
              : await restore(target.reader, src, mode, opts);
        progress.clear();
        report(ctx, src, s, dest, manifest !== undefined, mode.kind === "raw", o.json === true);
        if (o.json)
          writeJson(restoreDocument(src, s, mode.kind, dest, manifest !== undefined, listed));
      } finally {
        progress.clear();
      }
    });
  } finally {
    closeTarget(target);
  }
}

function checkOptions(o: RestoreCliOptions): void {
  const outputs = [o.to !== undefined, o.stdout === true, o.list === true].filter(Boolean).length;
  if (outputs !== 1) throw new UsageError("give exactly one of --to DIR, --stdout or --list");
  const selectors = [o.at, o.id, o.versionId].filter((x) => x !== undefined).length;
  if (selectors > 1) throw new UsageError("give at most one of --at, --id and --version-id");
  if (o.host !== undefined && !o.fromBucket) throw new UsageError("--host goes with --from-bucket");
  if (o.include?.length && o.stdout === true)
    throw new UsageError("--include goes with --to or --list; --stdout writes the whole archive");
  if (o.json && o.stdout === true)
    throw new UsageError("--json goes with --to or --list; --stdout writes the archive to stdout");
  if (o.wholeArchive && !(o.include?.length && o.to !== undefined))
    throw new UsageError("--whole-archive goes with --include and --to");
  if (o.devices && process.getuid?.() !== 0) throw new UsageError("--devices needs root");
}

function selector(o: RestoreCliOptions): Selector {
  const sel: Selector = {};
  if (o.at !== undefined) sel.at = parseTimeBound("--at", o.at);
  if (o.id !== undefined) {
    if (!/^\d+$/.test(o.id))
      throw new UsageError(`--id ${o.id}: not a catalog id (a number from immutd list)`);
    sel.id = Number(o.id);
  }
  if (o.versionId !== undefined) sel.versionId = o.versionId;
  return sel;
}

/** Where the restore goes: DIR (prepared), a listing on stdout, or the raw archive on stdout. */
function outputMode(
  o: RestoreCliOptions,
  listed: TarEntryInfo[],
): { mode: RestoreMode; dest?: string } {
  if (o.to !== undefined) {
    const dest = isAbsolute(o.to) ? o.to : resolve(o.to);
    prepareDest(dest, o.overwrite === true);
    const overwrite = o.overwrite === true;
    return { mode: { kind: "extract", dest, overwrite, devices: o.devices === true }, dest };
  }
  if (o.list) {
    // With --json the entries go into the one document instead of lines.
    const onEntry = o.json
      ? (e: TarEntryInfo) => void listed.push(e)
      : (e: TarEntryInfo) => void process.stdout.write(listLine(e));
    return { mode: { kind: "list", onEntry } };
  }
  if (process.stdout.isTTY)
    throw new UsageError("--stdout would write binary data to the terminal; pipe it somewhere");
  return { mode: { kind: "raw", out: process.stdout } };
}

/** One --list line. */
function listLine(e: TarEntryInfo): string {
  const kind =
    e.type === "directory" ? "d" : e.type === "symlink" ? "l" : e.type === "link" ? "h" : "-";
  const link = e.linkname ? ` -> ${e.linkname}` : "";
  return `${kind}${e.mode.toString(8).padStart(4, "0")} ${String(e.uid).padStart(5)}:${String(e.gid).padEnd(5)} ${String(e.size).padStart(12)} ${e.mtime.toISOString().slice(0, 19)} ${e.name}${link}\n`;
}

/**
 * The manifest a ranged restore can use, or undefined (after saying why on
 * stderr) when the whole archive must be read: no manifest, a compressed
 * archive, or a manifest that does not fit the backup.
 */
async function rangedManifest(
  ctx: Context,
  target: ReturnType<typeof openTarget>,
  src: RestoreSource,
  host: string,
  /** The command's listing of the job's prefix (--from-bucket); listed here only when needed and absent. */
  listing: Listing | undefined,
): Promise<Manifest | undefined> {
  const whole = (why: string) => {
    const size = src.size === undefined ? "" : ` (${formatBytes(src.size)}, ${src.size} bytes)`;
    process.stderr.write(
      `immutd: ${why}: restoring --include must download the whole archive${size}\n`,
    );
    return undefined;
  };
  if (src.compression !== "none")
    return whole(`backup ${src.key} is compressed (${src.compression})`);
  if (isAgeEncrypted(src.keyDerivation ?? KEY_DERIVATION))
    return whole(`backup ${src.key} is age-encrypted`);
  const ms: ManifestSource = {
    reader: target.reader,
    bucket: target.bucket,
    prefix: target.prefix,
    masterKey: ctx.config.masterKey.reveal(),
    cacheDir: manifestCacheDir(ctx.config.catalog),
    ...schemeOption(src.keyDerivation, undefined),
  };
  let ref: BackupRef | undefined;
  let archives: Map<string, VersionEntry> | undefined;
  if (src.manifest !== undefined) {
    ref = {
      job: src.job,
      createdAt: src.createdAt,
      archiveKey: src.key,
      archive: { versionId: src.versionId, size: src.size ?? 0, sha256: src.sha256 ?? null },
      manifest: src.manifest,
    };
  } else {
    const l = listing ?? (await listJob(ms, host, src.job));
    ref = backupsOf(l).find((b) => b.archiveKey === src.key);
    archives = archivesOf(l);
  }
  if (!ref?.manifest) return whole(`backup ${src.key} has no manifest (made by immutd 0.1.0?)`);
  try {
    const m = await manifestOf(ms, { ...ref, manifest: ref.manifest }, archives);
    if (m.archive.versionId !== src.versionId)
      return whole(`the manifest of ${src.key} names another version`);
    return m;
  } catch (err) {
    ctx.log.warn({ job: src.job, key: src.key }, describeError(err));
    return whole(`the manifest of ${src.key} cannot be used`);
  }
}

/** The chain an incremental backup needs (src/flows/chain-restore.ts); undefined for a full backup. */
async function chainOf(
  ctx: Context,
  target: ReturnType<typeof openTarget>,
  src: RestoreSource,
  /** The command's listing of the job's prefix: given with --from-bucket. */
  listing: Listing | undefined,
): Promise<ChainSource | undefined> {
  const ms: ManifestSource = {
    reader: target.reader,
    bucket: target.bucket,
    prefix: target.prefix,
    masterKey: ctx.config.masterKey.reveal(),
    cacheDir: manifestCacheDir(ctx.config.catalog),
    ...schemeOption(src.keyDerivation, undefined),
  };
  const chain = listing
    ? await chainFromBucket(ms, src, listing)
    : await chainFromCatalog(ctx.catalog(), src, ms);
  if (chain)
    ctx.log.info(
      { job: src.job, key: src.key, members: chain.members.length },
      "incremental backup: restoring its chain's members in order",
    );
  return chain;
}

/** Installs the SIGINT/SIGTERM handlers for one restore and runs it with their abort signal. */
async function withStopSignals(
  ctx: Context,
  run: (signal: AbortSignal) => Promise<void>,
): Promise<void> {
  const controller = new AbortController();
  const removeSignals = cancelOnStopSignals(
    controller,
    ctx.log,
    "stopping the restore",
    (sig) =>
      new CancelledError(`restore cancelled by ${sig}; files already written were left in place`),
  );
  try {
    await run(controller.signal);
  } finally {
    removeSignals();
  }
}

/** One entry of `restore --list --json`. */
export interface RestoreEntryDocument {
  name: string;
  type: string;
  size: number;
  mode: string;
  uid: number;
  gid: number;
  mtime: string;
  linkname: string | null;
}

/** `restore --json` (README "JSON output"): every field present, null where it does not apply. */
export interface RestoreDocument {
  job: string;
  backupId: number | null;
  createdAt: string;
  bucket: string;
  key: string;
  versionId: string;
  mode: "extract" | "list";
  dest: string | null;
  /** Archive bytes downloaded. */
  bytes: number;
  sha256: string;
  /** "catalog": SHA-256 compared with the catalog's; "size": only the size (from the bucket); "headers": a ranged restore, tar headers checked against the manifest. */
  integrity: "catalog" | "size" | "headers";
  ranges: number | null;
  durationMs: number;
  files: number | null;
  dirs: number | null;
  symlinks: number | null;
  skipped: number | null;
  refused: number | null;
  warnings: number | null;
  entries: RestoreEntryDocument[] | null;
}

function restoreDocument(
  src: RestoreSource,
  s: RestoreSummary & { ranges?: number },
  mode: RestoreMode["kind"],
  dest: string | undefined,
  ranged: boolean,
  listed: readonly TarEntryInfo[],
): RestoreDocument {
  const r = s.result;
  return {
    job: src.job,
    backupId: src.id ?? null,
    createdAt: src.createdAt.toISOString(),
    bucket: src.bucket,
    key: src.key,
    versionId: src.versionId,
    mode: mode === "list" ? "list" : "extract",
    dest: dest ?? null,
    bytes: s.bytes,
    sha256: s.sha256,
    integrity: ranged ? "headers" : src.sha256 ? "catalog" : "size",
    ranges: s.ranges ?? null,
    durationMs: s.durationMs,
    files: r?.files ?? null,
    dirs: r?.dirs ?? null,
    symlinks: r?.symlinks ?? null,
    skipped: r?.skipped ?? null,
    refused: r?.refused ?? null,
    warnings: r?.warnings ?? null,
    entries:
      mode === "list"
        ? listed.map((e) => ({
            name: displayName(e.name),
            type: e.type,
            size: e.size,
            mode: e.mode.toString(8).padStart(4, "0"),
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime.toISOString(),
            linkname: e.linkname !== undefined ? displayName(e.linkname) : null,
          }))
        : null,
  };
}

/**
 * The "restore finished" log line, and at a terminal one summary line: on
 * stdout, or on stderr when stdout carries the archive (--stdout); none with --json.
 */
function report(
  ctx: Context,
  src: RestoreSource,
  s: RestoreSummary & { ranges?: number; streamed?: number; members?: number },
  dest: string | undefined,
  ranged: boolean,
  raw: boolean,
  json: boolean,
): void {
  const r = s.result;
  ctx.log.info(
    {
      job: src.job,
      key: src.key,
      versionId: src.versionId,
      bytes: s.bytes,
      ...(s.sha256 ? { sha256: s.sha256 } : {}),
      ...(s.ranges !== undefined ? { ranges: s.ranges } : {}),
      ...(s.members !== undefined ? { members: s.members, streamed: s.streamed } : {}),
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
  if (!process.stderr.isTTY || json) return;
  const what = r
    ? `${plural(r.files, "file")}, ${plural(r.dirs, "dir")}, ${plural(r.symlinks, "symlink")}, ${formatBytes(r.bytes)} into ${dest}`
    : s.listed !== undefined
      ? `${plural(s.listed, "entry", "entries")} listed`
      : `${formatBytes(s.bytes)} written to stdout`;
  const members = s.members;
  const chained =
    members !== undefined
      ? `${s.streamed ?? 0} of the chain's ${members} members read, each one's size and SHA-256 verified`
      : "";
  const integrity =
    members !== undefined
      ? chained
      : ranged
        ? `read ${formatBytes(s.bytes)} in ${s.ranges} ranges; headers checked against the manifest, whole-archive SHA-256 not checked (immutd verify does)`
        : `SHA-256 ${src.sha256 ? "verified" : "not recorded (from bucket), size verified"}`;
  (raw ? process.stderr : process.stdout).write(
    `restored ${src.job} from ${src.createdAt.toISOString()} (version ${src.versionId}): ${what} in ${formatDuration(s.durationMs)}; ${integrity}\n`,
  );
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
