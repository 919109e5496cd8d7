/**
 * One backup run of one job: preflight the bucket, stream walk → tar → gzip →
 * hash → SSE-C multipart upload, then record the version in the catalog.
 *
 * The catalog sees the run before anything is uploaded ("running"), and a
 * backup row only once the server has named the version. Any failure or
 * cancellation aborts the multipart upload (ObjectStore.upload's contract) and
 * ends the run as failed or interrupted with its reason; nothing is ever
 * deleted or overwritten.
 */
import { createHash } from "node:crypto";
import { realpathSync } from "node:fs";
import { basename, dirname, isAbsolute, join, relative, resolve } from "node:path";
import { Transform, type TransformCallback } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGzip } from "node:zlib";
import {
  type ArchiveOptions,
  type ArchiveWarning,
  createArchive,
  missingPaths,
} from "./archive.js";
import { configuredLock, describeRetention, LOCK_SLACK_MS, lockProblems } from "./bucket-check.js";
import { type Catalog, UPLOAD_UNSETTLED } from "./catalog.js";
import { type Config, type JobConfig, jobExcludes, type TargetConfig } from "./config.js";
import { CancelledError, describeError, RefusedError, StorageError } from "./errors.js";
import { type HookEnv, runHook, type Spooled, spoolCommands } from "./hooks.js";
import { deriveSseKey, KEY_DERIVATION } from "./keys.js";
import { lockAtLeast } from "./lock.js";
import type { Logger } from "./log.js";
import { encodeManifest, MANIFEST_FORMAT, type Manifest, ManifestIndex } from "./manifest.js";
import { manifestKey, objectKey } from "./naming.js";
import { retry } from "./retry.js";
import { withReadFallback } from "./store/fallback.js";
import type { BucketLockState, Retention, Target } from "./store/store.js";

export interface BackupProgress {
  /** Archive bytes handed to the uploader so far (after compression). */
  bytes: number;
  /** File content bytes read so far. */
  read: number;
  files: number;
}

export interface BackupDeps {
  config: Config;
  catalog: Catalog;
  target: Target;
  targetConfig: TargetConfig;
  log: Logger;
  signal?: AbortSignal;
  onProgress?: (p: Readonly<BackupProgress>) => void;
  /** The clock; tests move it. */
  now?: () => Date;
}

export interface BackupResult {
  job: string;
  runId: number;
  status: "succeeded" | "failed" | "interrupted";
  key: string;
  backupId?: number;
  versionId?: string;
  /** Bytes stored (the archive as uploaded). */
  bytes: number;
  files: number;
  warnings: number;
  durationMs: number;
  retainUntil?: Date;
  error?: string;
}

/** Attempts of each retention call right after an upload, where providers may lag (250 ms doubling: ~8 s). */
const LOCK_ATTEMPTS = 6;

/** Warnings logged one by one before they are only counted, so a tree of unreadable files cannot flood the log. */
const LOGGED_WARNINGS = 100;

/**
 * Runs one job: the backup, with the job's hooks around it. `before` runs after
 * the preflight and its failure fails the run with nothing uploaded; `after`
 * (every outcome) and `onFailure` run once the run is recorded, and their own
 * failure is logged but does not change the run's result.
 * Throws LockHeldError (and records nothing) if the job is already running.
 */
export async function runBackup(job: JobConfig, deps: BackupDeps): Promise<BackupResult> {
  const result = await attempt(job, deps);
  const hooks = job.hooks;
  if (!hooks) return result;
  const env: HookEnv = {
    IMMUTD_JOB: job.name,
    IMMUTD_RUN_ID: String(result.runId),
    IMMUTD_KEY: result.key,
    IMMUTD_STATUS: result.status,
    ...(result.versionId ? { IMMUTD_VERSION_ID: result.versionId } : {}),
    ...(result.error ? { IMMUTD_ERROR: result.error } : {}),
  };
  const jlog = deps.log.child({ job: job.name, runId: result.runId });
  const after: [string, string | undefined][] = [
    ["onFailure", result.status === "succeeded" ? undefined : hooks.onFailure],
    ["after", hooks.after],
  ];
  for (const [name, cmd] of after) {
    if (!cmd) continue;
    try {
      await runHook(name, cmd, env, hooks.timeoutSeconds);
      jlog.info(`${name} hook succeeded`);
    } catch (err) {
      jlog.error(`${describeError(err)} (the run's result stands)`);
    }
  }
  return result;
}

async function attempt(job: JobConfig, deps: BackupDeps): Promise<BackupResult> {
  const { config, catalog, target, log } = deps;
  const now = deps.now ?? (() => new Date());
  const started = now();
  const key = objectKey({
    prefix: target.prefix,
    host: config.host,
    job: job.name,
    at: started,
    compression: job.compression,
  });
  const runId = catalog.startRun({
    job: job.name,
    target: target.name,
    objectKey: key,
    startedAt: started,
  });
  const jlog = log.child({ job: job.name, runId });
  const warnings: ArchiveWarning[] = [];
  const progress: BackupProgress = { bytes: 0, read: 0, files: 0 };
  const base: Pick<BackupResult, "job" | "runId" | "key" | "backupId" | "versionId"> = {
    job: job.name,
    runId,
    key,
  };
  let spooled: Spooled | undefined;
  // Set once the upload's first request is sent: from then on the server may hold
  // a version at the key even if this process never hears of it.
  let uploadSent = false;

  try {
    deps.signal?.throwIfAborted();
    const missing = await missingPaths(job.paths);
    if (missing.length) {
      throw new RefusedError(
        `job ${job.name}: configured path ${missing.join(", ")} does not exist; nothing was uploaded`,
      );
    }
    await preflight(target, deps.targetConfig);
    deps.signal?.throwIfAborted();
    const hookEnv: HookEnv = {
      IMMUTD_JOB: job.name,
      IMMUTD_RUN_ID: String(runId),
      IMMUTD_KEY: key,
    };
    if (job.hooks?.before) {
      await runHook("before", job.hooks.before, hookEnv, job.hooks.timeoutSeconds, deps.signal);
      jlog.info("before hook succeeded");
    }
    if (job.commands.length) {
      spooled = await spoolCommands(job.name, job.commands, hookEnv, deps.signal);
    }

    jlog.info(
      { key, paths: job.paths, commands: job.commands.map((c) => c.name) },
      "backup started",
    );
    const sseKey = deriveSseKey(config.masterKey.reveal(), target.bucket, key);
    const index = new ManifestIndex();
    const archive = createArchive({
      ...jobWalk(
        job,
        catalog.path,
        // Nor the spooled outputs a second time under their path.
        (spooled?.files ?? []).map((f) => literalPattern(f.path)),
      ),
      ...(spooled ? { extraFiles: spooled.files } : {}),
      ...(deps.signal ? { signal: deps.signal } : {}),
      onWarning: (w) => {
        warnings.push(w);
        if (warnings.length <= LOGGED_WARNINGS)
          jlog.warn({ path: w.path, code: w.code }, w.message);
        else if (warnings.length === LOGGED_WARNINGS + 1)
          jlog.warn("more warnings; only counting them from now on");
      },
      onProgress: (p) => {
        progress.files = p.files;
        progress.read = p.bytes;
      },
      onEntry: (e) => index.add(e),
    });
    const hasher = new HashingCounter((n) => {
      progress.bytes = n;
      deps.onProgress?.(progress);
    });
    const stages = job.compression === "gzip" ? [createGzip({ level: 6 })] : [];
    const onAbort = () => hasher.destroy(new CancelledError(`job ${job.name}: cancelled`));
    deps.signal?.addEventListener("abort", onAbort, { once: true });

    // Whichever stage fails first holds the real cause; the others fail because of it.
    // A stream torn down by another stage's failure (lib-storage stops reading the
    // body before it reports the part's error) fails with an AbortError or a
    // premature close: that is never the cause while another error is known.
    let firstError: unknown;
    let knockOn: unknown;
    const note = (err: unknown): never => {
      if (isKnockOn(err)) knockOn ??= err;
      else firstError ??= err;
      throw err;
    };
    const piping = pipeline([archive.stream as NodeJS.ReadableStream, ...stages, hasher]).catch(
      note,
    );
    let uploadId: string | undefined;
    uploadSent = true;
    const uploading = target.writer
      .upload({
        key,
        body: hasher,
        sseKey,
        onUploadId: (id) => {
          uploadId = id;
          catalog.setUploadId(runId, id);
        },
      })
      .catch((err: unknown) => {
        hasher.destroy(err instanceof Error ? err : new Error(String(err)));
        return note(err);
      });
    const [walk, , upload] = await Promise.allSettled([
      archive.done.catch(note),
      piping,
      uploading,
    ]);
    deps.signal?.removeEventListener("abort", onAbort);
    if (deps.signal?.aborted) throw new CancelledError(`job ${job.name}: cancelled`);
    firstError ??= knockOn;
    if (firstError !== undefined) throw firstError;
    if (upload.status !== "fulfilled" || walk.status !== "fulfilled")
      throw new Error("unreachable");
    const { versionId } = upload.value;
    progress.files = walk.value.files;
    jlog.debug({ versionId, uploadId }, "upload complete");

    const sha256 = hasher.digest();
    const what = `job ${job.name}: s3://${target.bucket}/${key} version ${versionId}`;
    // Recorded before anything else is asked of the server, so that the version is
    // never forgotten: "unlocked" until its lock is read back as configured.
    const backupId = catalog.recordBackup({
      runId,
      job: job.name,
      target: target.name,
      bucket: target.bucket,
      key,
      versionId,
      size: hasher.bytes,
      sha256,
      compression: job.compression,
      sseKey,
      keyDerivation: KEY_DERIVATION,
      createdAt: started,
      retentionMode: null,
      retainUntil: null,
      status: "unlocked",
      files: walk.value.files,
    });
    // A run that fails from here on still names its version (hooks get IMMUTD_VERSION_ID).
    base.backupId = backupId;
    base.versionId = versionId;
    // The lock is set explicitly, whatever the bucket default gave the version
    // (src/lock.ts). Not cancellable: once the version exists, locking it is the point.
    const completed = now();
    const wanted = configuredLock(completed, deps.targetConfig.retention);
    const lock = await lockAtLeast(target, key, versionId, wanted, {
      now: completed,
      attempts: LOCK_ATTEMPTS,
      slackMs: LOCK_SLACK_MS,
    });
    catalog.setBackupLock(backupId, lock.after ?? lock.before, lock.problem ? "unlocked" : "ok");
    // What the server stored must be what was sent (a client or server that stores
    // transfer framing inside the object would change its size).
    let size: number;
    try {
      size = await storedSize(target, key, versionId, sseKey);
    } catch (err) {
      if (err instanceof StorageError && err.status === 404)
        catalog.setBackupStatus(backupId, "missing");
      throw new StorageError(
        `${what}: its size could not be read back (${describeError(err)}); recorded as backup ${backupId}, which \`immutd verify\` checks`,
        { transient: false, cause: err },
      );
    }
    if (size !== hasher.bytes) {
      catalog.setBackupStatus(backupId, "corrupt");
      throw new StorageError(
        `${what} holds ${size} bytes but ${hasher.bytes} were sent; the stored version is marked corrupt`,
        { transient: false },
      );
    }
    if (lock.problem || !lock.after) {
      throw new RefusedError(
        `${what} could not be locked ${describeRetention(deps.targetConfig.retention)} (until ${wanted.retainUntil.toISOString()}): ${lock.problem ?? "it has no retention"}; it is recorded as unlocked (backup ${backupId}) and \`immutd verify\` reports it until it is`,
      );
    }
    if (lock.changed) {
      jlog.warn(
        {
          versionId,
          from: lock.before ? `${lock.before.mode} ${lock.before.retainUntil.toISOString()}` : null,
          retentionMode: lock.after.mode,
          retainUntil: lock.after.retainUntil.toISOString(),
        },
        "the bucket default gave the new version less than the configured lock: set it explicitly",
      );
    }
    const retention = lock.after;
    const manifestProblem = await writeManifest(deps, backupId, retention, {
      formatVersion: MANIFEST_FORMAT,
      host: config.host,
      job: job.name,
      createdAt: started.toISOString(),
      archive: { key, versionId, size, sha256, compression: job.compression },
      encryption: { scheme: "sse-c", keyDerivation: KEY_DERIVATION },
      parent: null,
      files: index.files,
    });
    if (manifestProblem) {
      warnings.push({
        path: `s3://${target.bucket}/${manifestKey(key)}`,
        message: manifestProblem,
      });
      jlog.warn({ versionId }, manifestProblem);
    }
    const durationMs = now().getTime() - started.getTime();
    catalog.addWarnings(runId, warnings);
    catalog.finishRun(runId, {
      status: "succeeded",
      bytes: hasher.bytes,
      files: walk.value.files,
      warnings: warnings.length,
    });
    jlog.info(
      {
        key,
        versionId,
        bytes: hasher.bytes,
        files: walk.value.files,
        warnings: warnings.length,
        durationMs,
        sha256,
        retentionMode: retention.mode,
        retainUntil: retention.retainUntil.toISOString(),
      },
      "backup succeeded",
    );
    return {
      ...base,
      status: "succeeded",
      backupId,
      versionId,
      bytes: hasher.bytes,
      files: walk.value.files,
      warnings: warnings.length,
      durationMs,
      retainUntil: retention.retainUntil,
    };
  } catch (err) {
    const cancelled = err instanceof CancelledError || deps.signal?.aborted === true;
    const status = cancelled ? "interrupted" : "failed";
    const error = cancelled
      ? `cancelled: ${describeError(deps.signal?.reason ?? err)}`
      : partsHint(describeError(err), deps.targetConfig);
    catalog.addWarnings(runId, warnings);
    // No backup row although the upload was sent: if its last answer was lost, the
    // version exists. The run stays on crash recovery's list until one has looked.
    const unsettled = uploadSent && base.backupId === undefined;
    catalog.finishRun(runId, {
      status,
      bytes: progress.bytes,
      files: progress.files,
      warnings: warnings.length,
      error: unsettled ? `${error}${UPLOAD_UNSETTLED}` : error,
    });
    jlog.error({ status }, `backup ${status}: ${error}`);
    return {
      ...base,
      status,
      bytes: progress.bytes,
      files: progress.files,
      warnings: warnings.length,
      durationMs: now().getTime() - started.getTime(),
      error,
    };
  } finally {
    await spooled?.cleanup();
  }
}

/**
 * Writes, locks and reads back the manifest of a backup that is recorded and
 * locked. Its failure does not fail the run: the archive is restorable without
 * it. It returns the problem as a warning (so `immutd backup` exits 5), and the
 * row keeps the manifest's key without a version, which verify reports.
 * The manifest is locked with the archive's own retention, so it lasts as long.
 */
async function writeManifest(
  deps: BackupDeps,
  backupId: number,
  retention: Retention,
  manifest: Manifest,
): Promise<string | undefined> {
  const { target, catalog, config } = deps;
  const key = manifestKey(manifest.archive.key);
  const what = `manifest s3://${target.bucket}/${key}`;
  catalog.setBackupManifest(backupId, key, null);
  const sseKey = deriveSseKey(config.masterKey.reveal(), target.bucket, key);
  const body = encodeManifest(manifest);
  let versionId: string;
  try {
    ({ versionId } = await retry(() => target.writer.putManifest({ key, body, sseKey }), {
      attempts: LOCK_ATTEMPTS,
      baseMs: 250,
    }));
  } catch (err) {
    return `${what} could not be written (${describeError(err)}); the archive is recorded and restorable (backup ${backupId}), \`immutd verify\` reports the missing manifest`;
  }
  catalog.setBackupManifest(backupId, key, versionId);
  const now = (deps.now ?? (() => new Date()))();
  const lock = await lockAtLeast(target, key, versionId, retention, {
    now,
    attempts: LOCK_ATTEMPTS,
    slackMs: LOCK_SLACK_MS,
  });
  if (lock.problem || !lock.after)
    return `${what} version ${versionId} could not be locked until ${retention.retainUntil.toISOString()}: ${lock.problem ?? "it has no retention"}; \`immutd verify\` reports it until it is`;
  try {
    const size = await storedSize(target, key, versionId, sseKey);
    if (size !== body.length)
      return `${what} version ${versionId} holds ${size} bytes but ${body.length} were sent`;
  } catch (err) {
    return `${what} version ${versionId} could not be read back (${describeError(err)})`;
  }
  return undefined;
}

/**
 * Refuses to upload into a bucket that would not protect the backup: versioning
 * off, Object Lock off, no default retention, or a weaker one than configured.
 */
export async function preflight(target: Target, t: TargetConfig): Promise<BucketLockState> {
  const state = await withReadFallback(target, (s) => s.lockState());
  // The same checks as verify and doctor (src/bucket-check.ts); the first problem is the refusal.
  const [problem] = lockProblems(state, t);
  if (problem) throw new RefusedError(`${problem.message}; nothing was uploaded`);
  return state;
}

/**
 * The stored size of the new version. Some providers answer AccessDenied or
 * NoSuchKey for a moment after an upload, so those are retried with backoff.
 */
async function storedSize(
  target: Target,
  key: string,
  versionId: string,
  sseKey: Buffer,
): Promise<number> {
  const { size } = await retry(
    () => withReadFallback(target, (s) => s.head(key, versionId, sseKey)),
    { attempts: LOCK_ATTEMPTS, lagAttempts: LOCK_ATTEMPTS, baseMs: 250 },
  );
  return size;
}

function isKnockOn(err: unknown): boolean {
  const e = err as { name?: string; code?: string } | undefined;
  return e?.name === "AbortError" || e?.code === "ERR_STREAM_PREMATURE_CLOSE";
}

function partsHint(message: string, t: TargetConfig): string {
  if (!/Exceeded \d+ parts/.test(message)) return message;
  const maxGiB = ((t.partSizeMiB * 10_000) / 1024).toFixed(0);
  return `the archive is larger than ${maxGiB} GiB, the most a multipart upload of ${t.partSizeMiB} MiB parts can hold (10,000 parts); raise targets.${t.name}.partSizeMiB`;
}

/**
 * What the walk of a job's tree is told: its paths, every exclude (the job's,
 * its excludeFrom files', the live catalog's, then `extra`), oneFileSystem and
 * excludeIfPresent. A backup and `backup --dry-run` both walk with exactly this.
 */
export function jobWalk(
  job: JobConfig,
  catalogPath: string,
  extra: readonly string[] = [],
): Pick<ArchiveOptions, "paths" | "exclude" | "oneFileSystem" | "excludeIfPresent"> {
  return {
    paths: job.paths,
    // Never archive the live catalog.
    exclude: [...jobExcludes(job), ...catalogFiles(catalogPath, job.paths), ...extra],
    oneFileSystem: job.oneFileSystem,
    excludeIfPresent: job.excludeIfPresent,
  };
}

/**
 * The catalog database and its companions: never archive the live files immutd
 * is writing (they hold every SSE-C key). The walk may meet them under another
 * name than the configured one: the catalog path can lead through symlinks
 * (SQLite puts -wal and -shm beside the real file), and so can a job's path.
 * The walk never follows a symlink below a job path, so an entry's walked
 * path is the job path plus its real path's remainder below the job path's
 * real path: each job path gets that name excluded too.
 */
function catalogFiles(path: string, jobPaths: readonly string[]): string[] {
  const real = realPath(path);
  const names = new Set([path, real]);
  for (const p of jobPaths) {
    const rel = relative(realPath(p), real);
    if (rel !== "" && rel !== ".." && !rel.startsWith("../") && !isAbsolute(rel))
      names.add(join(resolve(p), rel));
  }
  return [...names].flatMap((n) =>
    ["", "-wal", "-shm", "-journal"].map((s) => literalPattern(n + s)),
  );
}

/** The path with every symlink resolved; a missing last component is kept as it is. */
function realPath(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    try {
      return join(realpathSync(dirname(p)), basename(p));
    } catch {
      return resolve(p);
    }
  }
}

/** An exclude pattern that matches exactly this absolute path. */
function literalPattern(path: string): string {
  return path.replace(/[*?[\]{}()!+@\\]/g, "\\$&");
}

/** Passes bytes through while counting them and hashing them with SHA-256: exactly what is uploaded. */
export class HashingCounter extends Transform {
  bytes = 0;
  readonly #hash = createHash("sha256");
  readonly #onBytes: ((n: number) => void) | undefined;
  #digest: string | undefined;

  constructor(onBytes?: (n: number) => void) {
    super();
    this.#onBytes = onBytes;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.#hash.update(chunk);
    this.bytes += chunk.length;
    this.#onBytes?.(this.bytes);
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    this.#digest = this.#hash.digest("hex");
    cb();
  }

  /** Hex SHA-256 of everything that passed; only after the stream ended. */
  digest(): string {
    if (this.#digest === undefined) throw new Error("digest() before the stream ended");
    return this.#digest;
  }
}
