/**
 * `immutd ls` and `immutd find`: what backups hold, answered from their
 * manifests (src/flows/browse.ts), never from the archives.
 */

import type { Command } from "commander";
import picomatch from "picomatch";
import type { JobConfig } from "../config/config.js";
import { encryptionOf } from "../config/config.js";
import { describeError, ImmutdError, UsageError } from "../errors.js";
import {
  type BackupRef,
  backupsFromCatalog,
  backupsOf,
  listJob,
  type ManifestSource,
  manifestCacheDir,
  manifestOf,
} from "../flows/browse.js";
import { displayName, matchForm } from "../pipeline/file-names.js";
import { fileName, linkName, type Manifest, type ManifestFile } from "../repo/manifest.js";
import { archivesOf } from "../repo/snapshots.js";
import { closeTarget, openTarget } from "../store/s3.js";
import type { VersionEntry } from "../store/store.js";
import type { Cli, Context } from "./context.js";
import { identitiesFrom } from "./identity.js";
import { writeJson } from "./output.js";
import { parseTimeBound } from "./time.js";

export const lsHelp = `
Lists the files of one backup of JOB from its manifest, as tar -tv does,
without downloading the archive: the newest backup, the newest created at
or before --at TIME (as for restore), or catalog entry --id N. Names that
are not UTF-8 are shown escaped (caf\\351), as restore --list shows them.

Where manifests come from: the catalog's backups of JOB when it has any
(the manifest version the catalog recorded), otherwise the manifests in the
bucket under this host (or --host H), read with the reader credential and
the master key; at a manifest key with several versions only the oldest,
immutd's own, is believed. Each manifest must name the archive version,
size and SHA-256 the catalog recorded (from the bucket: an archive version
that exists with that size). Manifests are cached decrypted in manifests/
beside the catalog file (0700), one file per version; deleting it is safe.

A backup made by immutd 0.1.0 has no manifest: use
immutd restore JOB --id N --list, which downloads the archive.

--json prints {"backup": {...}, "files": [...]} with the manifest's fields
(path, pathBytes, type, size, mode, uid, gid, mtime, link, linkBytes, offset).

An age-encrypted backup's file index is encrypted to its recipients: give
--identity FILE (or set encryption.identityFile); a wrong one is exit 3.

Exit codes: 0 listed, 1 the manifest is missing, unreadable or does not fit
its backup, 2 usage (no such job or backup), 78 configuration error.
`;

export const findHelp = `
Searches the manifests of every backup of every job (or of --job J) for
paths matching the glob PATTERN, without downloading archives, and prints
one line per match: backup time, catalog id (or - from the bucket), type,
size, mtime and path. A PATTERN without "/" matches the file name (like
find -name: "*.conf"); one with "/" matches the whole path, a leading "/"
ignored ("/etc/nginx/**"). Manifests come from the catalog or the bucket
and are cached as for immutd ls. Backups without a manifest (immutd 0.1.0)
are not searched; immutd says how many.

--json prints an array of {job, id, createdAt, key, versionId, path, type,
size, mtime, mode}.

An age-encrypted backup's file index is encrypted to its recipients: give
--identity FILE (or set encryption.identityFile); a wrong one is exit 3.

Exit codes: 0 searched (with or without matches), 1 a manifest could not
be read (the others were searched), 2 usage, 78 configuration error.
`;

export interface LsOptions {
  at?: string;
  id?: string;
  host?: string;
  json?: boolean;
  identity?: string;
}

export interface FindOptions {
  job?: string;
  host?: string;
  json?: boolean;
  identity?: string;
}

/** ls JOB: the files of one backup. */
export async function lsCommand(ctx: Context, jobName: string, o: LsOptions): Promise<void> {
  if (o.at !== undefined && o.id !== undefined)
    throw new UsageError("give at most one of --at and --id");
  if (o.id !== undefined && o.host !== undefined)
    throw new UsageError("--id names a catalog entry; --host reads the bucket");
  const job = jobOf(ctx, jobName);
  await withBackups(ctx, job, o, async (ms, refs, archives) => {
    const b = pick(job.name, refs, o);
    if (!b.manifest) {
      throw new ImmutdError(
        `backup ${b.id ?? ""} of job ${job.name} (${b.createdAt.toISOString()}, ${b.archiveKey}) has no manifest: it was made by immutd 0.1.0 or its manifest could not be written; list it with immutd restore ${job.name} --id ${b.id ?? "N"} --list (downloads the archive)`,
      );
    }
    const m = await manifestOf(ms, { ...b, manifest: b.manifest }, archives);
    if (o.json) {
      const backup = { id: b.id ?? null, job: job.name, createdAt: m.createdAt, ...m.archive };
      writeJson({ backup, files: m.files });
      return;
    }
    for (const f of m.files) process.stdout.write(`${tvLine(f)}\n`);
  });
}

/** find PATTERN: matching paths across the backups of every (or one) job. */
export async function findCommand(ctx: Context, pattern: string, o: FindOptions): Promise<void> {
  const matches = pathMatcher(pattern);
  const jobs = o.job === undefined ? ctx.config.jobs : [jobOf(ctx, o.job)];
  const found: Record<string, unknown>[] = [];
  const failures: string[] = [];
  for (const job of jobs) {
    await withBackups(ctx, job, o, async (ms, refs, archives) => {
      const old = refs.filter((b) => !b.manifest);
      if (old.length > 0) {
        process.stderr.write(
          `immutd: ${old.length} backup${old.length === 1 ? "" : "s"} of job ${job.name} have no manifest (immutd 0.1.0) and were not searched; see immutd restore ${job.name} --id N --list\n`,
        );
      }
      for (const b of refs) {
        if (!b.manifest) continue;
        let m: Manifest;
        try {
          m = await manifestOf(ms, { ...b, manifest: b.manifest }, archives);
        } catch (err) {
          failures.push(describeError(err));
          continue;
        }
        for (const f of m.files) {
          if (!matches(fileName(f))) continue;
          const hit = { job: job.name, id: b.id ?? null, createdAt: m.createdAt, f, m };
          if (o.json) found.push(findRecord(hit));
          else process.stdout.write(`${findLine(hit)}\n`);
        }
      }
    });
  }
  if (o.json) writeJson(found);
  if (failures.length > 0) {
    throw new ImmutdError(
      `${failures.length} manifest${failures.length === 1 ? "" : "s"} not searched: ${failures.join("; ")}`,
    );
  }
}

function jobOf(ctx: Context, name: string): JobConfig {
  const job = ctx.config.jobs.find((j) => j.name === name);
  if (!job) throw new UsageError(`unknown job ${name}`);
  return job;
}

/**
 * Runs `fn` with the job's backups (oldest first): the catalog's when it has
 * any and no --host was given, otherwise the bucket's manifests under the host
 * (then with the archive versions, to check the manifests against).
 */
async function withBackups(
  ctx: Context,
  job: JobConfig,
  o: { host?: string | undefined; identity?: string | undefined },
  fn: (
    ms: ManifestSource,
    refs: BackupRef[],
    archives: Map<string, VersionEntry> | undefined,
  ) => Promise<void>,
): Promise<void> {
  const tc = ctx.config.targets[job.target];
  if (!tc) throw new UsageError(`job ${job.name}: unknown target ${job.target}`);
  const host = o.host;
  const identities = identitiesFrom(o.identity, encryptionOf(job, tc));
  const target = openTarget(tc);
  try {
    const ms: ManifestSource = {
      reader: target.reader,
      bucket: target.bucket,
      prefix: target.prefix,
      masterKey: ctx.config.masterKey.reveal(),
      cacheDir: manifestCacheDir(ctx.config.catalog),
      ...(identities ? { identities } : {}),
      scheme: encryptionOf(job, tc).scheme,
    };
    const known = host === undefined ? backupsFromCatalog(ctx.catalog(), job.name, tc.bucket) : [];
    if (known.length > 0) return await fn(ms, known, undefined);
    const h = host ?? ctx.config.host;
    // One listing of the job's prefix gives both the manifests and the archive versions.
    const listing = await listJob(ms, h, job.name);
    const refs = backupsOf(listing);
    await fn(ms, refs, refs.length > 0 ? archivesOf(listing) : undefined);
  } finally {
    closeTarget(target);
  }
}

/** The backup ls lists: --id, the newest at or before --at, or the newest. */
function pick(job: string, refs: BackupRef[], o: LsOptions): BackupRef {
  if (o.id !== undefined) {
    const b = /^\d+$/.test(o.id) ? refs.find((r) => r.id === Number(o.id)) : undefined;
    if (!b)
      throw new UsageError(`job ${job} has no backup with catalog id ${o.id} (see immutd list)`);
    return b;
  }
  const at = o.at === undefined ? undefined : parseTimeBound("--at", o.at);
  const b = refs.filter((r) => !at || r.createdAt.getTime() <= at.getTime()).at(-1);
  if (!b) {
    throw new UsageError(
      `job ${job} has no backup${at ? ` created at or before ${at.toISOString()}` : ""} in the catalog or the bucket (is the host right? see --host)`,
    );
  }
  return b;
}

/** A glob over archive names: the file name when PATTERN has no "/", else the whole path. */
export function pathMatcher(pattern: string): (name: string) => boolean {
  if (pattern.trim() === "") throw new UsageError("find: PATTERN must not be empty");
  const body = pattern.replace(/^\/+/, "").replace(/\/+$/, "");
  const isMatch = picomatch(body === "" ? "**" : body, {
    dot: true,
    windows: false,
    basename: !body.includes("/"),
  });
  return (name) => isMatch(matchForm(name).replace(/\/+$/, ""));
}

const TYPE_CHAR: Record<string, string> = { directory: "d", symlink: "l", link: "h", file: "-" };

/**
 * A manifest's name as printed: shown from its bytes again (displayName), not
 * as the manifest spells it, so a forged manifest cannot put control
 * characters (terminal escapes, newlines) on the operator's terminal.
 */
function shown(f: ManifestFile): string {
  return displayName(fileName(f));
}

/** One `tar -tv` line: mode, owner, size, mtime, name, link. */
export function tvLine(f: ManifestFile): string {
  const mode = `${TYPE_CHAR[f.type] ?? "?"}${permissions(f.mode)}`;
  const owner = `${f.uid}/${f.gid}`;
  const target = linkName(f);
  const to = target === undefined ? "" : displayName(target);
  const link = target === undefined ? "" : f.type === "link" ? ` link to ${to}` : ` -> ${to}`;
  return `${mode} ${owner.padEnd(11)} ${String(f.size).padStart(12)} ${stamp(f.mtime)} ${shown(f)}${link}`;
}

function findLine(h: {
  id: number | null;
  createdAt: string;
  job: string;
  f: ManifestFile;
}): string {
  const when = h.createdAt.slice(0, 19).replace("T", " ");
  const id = h.id === null ? "-" : `#${h.id}`;
  return `${when} ${h.job} ${id.padStart(6)} ${TYPE_CHAR[h.f.type] ?? "?"} ${String(h.f.size).padStart(12)} ${stamp(h.f.mtime)} ${shown(h.f)}`;
}

function findRecord(h: {
  job: string;
  id: number | null;
  createdAt: string;
  f: ManifestFile;
  m: Manifest;
}): Record<string, unknown> {
  const { f, m } = h;
  return {
    job: h.job,
    id: h.id,
    createdAt: h.createdAt,
    key: m.archive.key,
    versionId: m.archive.versionId,
    path: f.path,
    ...(f.pathBytes !== undefined ? { pathBytes: f.pathBytes } : {}),
    type: f.type,
    size: f.size,
    mtime: f.mtime,
    mode: f.mode,
  };
}

function permissions(mode: number): string {
  const rwx = (bits: number, special: boolean, s: string) =>
    `${bits & 4 ? "r" : "-"}${bits & 2 ? "w" : "-"}${special ? (bits & 1 ? s : s.toUpperCase()) : bits & 1 ? "x" : "-"}`;
  return (
    rwx((mode >> 6) & 7, (mode & 0o4000) !== 0, "s") +
    rwx((mode >> 3) & 7, (mode & 0o2000) !== 0, "s") +
    rwx(mode & 7, (mode & 0o1000) !== 0, "t")
  );
}

/** mtime (seconds) as tar -tv prints it, in UTC. */
function stamp(seconds: number): string {
  return new Date(seconds * 1000).toISOString().slice(0, 16).replace("T", " ");
}

export function registerLs(p: Command, cli: Cli): void {
  p.command("ls")
    .description("list the files of one backup of JOB from its manifest (no archive download)")
    .argument("<job>", "the job whose backup to list")
    .option("--at <time>", "newest backup created at or before TIME (as for restore)")
    .option("--id <n>", "the backup with this catalog id")
    .option("--host <name>", "read the manifests in the bucket made under this host name")
    .option("--json", "machine-readable output")
    .option("--identity <file>", "age identity file: an age backup's file index is encrypted")
    .addHelpText("after", lsHelp)
    .action((job: string, opts: LsOptions) => cli.withContext((ctx) => lsCommand(ctx, job, opts)));
}

export function registerFind(p: Command, cli: Cli): void {
  p.command("find")
    .description("search the manifests of all backups for paths matching a glob")
    .argument("<pattern>", "glob: a file name (*.conf) or, with a /, a whole path")
    .option("--job <name>", "only this job")
    .option("--host <name>", "read the manifests in the bucket made under this host name")
    .option("--json", "machine-readable output")
    .option("--identity <file>", "age identity file: an age backup's file index is encrypted")
    .addHelpText("after", findHelp)
    .action((pattern: string, opts: FindOptions) =>
      cli.withContext((ctx) => findCommand(ctx, pattern, opts)),
    );
}
