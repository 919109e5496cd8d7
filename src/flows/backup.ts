/**
 * One backup run of one job: preflight the bucket, run the stages of
 * src/pipeline/ (source → tar → codec → cipher → hash → SSE-C multipart
 * upload), then record, lock and check the version and write its manifest.
 * This file is the catalog bookkeeping around the stages, one step a function.
 *
 * The catalog sees the run before anything is uploaded ("running"), and a
 * backup row only once the server has named the version. Any failure or
 * cancellation aborts the multipart upload (ObjectStore.upload's contract) and
 * ends the run as failed or interrupted with its reason; nothing is ever
 * deleted or overwritten.
 */
import { realpathSync } from "node:fs";
import { basename, dirname, isAbsolute, join, relative, resolve } from "node:path";
import { type Catalog, UPLOAD_UNSETTLED } from "../catalog/catalog.js";
import {
  type Config,
  DEFAULTS,
  encryptionOf,
  type JobConfig,
  jobExcludes,
  type TargetConfig,
} from "../config/config.js";
import { CancelledError, describeError, RefusedError, StorageError } from "../errors.js";
import type { Logger } from "../log.js";
import {
  type ArchiveOptions,
  type ArchiveWarning,
  createArchive,
  missingPaths,
} from "../pipeline/archive.js";
import { type Cipher, catalogSseKey, cipherFor, sseKeyFor } from "../pipeline/cipher.js";
import { encoderFor } from "../pipeline/codec.js";
import { HashingCounter } from "../pipeline/hash.js";
import { runStages, type Streamed } from "../pipeline/index.js";
import { IndexSpool } from "../pipeline/index-spool.js";
import { s3Sink } from "../pipeline/sink.js";
import { INCREMENTAL_FORMAT, MANIFEST_FORMAT } from "../repo/manifest.js";
import { encodeManifestStream, type ManifestHead } from "../repo/manifest-stream.js";
import { manifestKey, objectKey } from "../repo/naming.js";
import {
  configuredLock,
  describeRetention,
  LOCK_SLACK_MS,
  lockProblems,
} from "../retention/bucket-check.js";
import { keepNewBackup, tagVersion } from "../retention/keep.js";
import { type LockOutcome, lockAtLeast } from "../retention/lock.js";
import type { Assignment, PolicyTime } from "../retention/tiers.js";
import { withReadFallback } from "../store/fallback.js";
import { GROW_EVERY, largestUpload } from "../store/multipart.js";
import { retry } from "../store/retry.js";
import type { BucketLockState, Retention, Target } from "../store/store.js";
import { type HookEnv, runHook, type Spooled, spoolCommands } from "./hooks.js";
import { type ChainStep, chainStep, extendMembers } from "./incremental.js";

/** Restore hashes what it downloads with the same stage. */
export { HashingCounter } from "../pipeline/hash.js";

export interface BackupProgress {
  /** Archive bytes handed to the uploader so far (after compression). */
  bytes: number;
  /** File content bytes read so far. */
  read: number;
  files: number;
  /** The entry being archived (its archive name, a byte string: displayName prints it). */
  current?: string;
}

export interface BackupDeps {
  config: Config;
  catalog: Catalog;
  target: Target;
  targetConfig: TargetConfig;
  log: Logger;
  signal?: AbortSignal;
  onProgress?: (p: Readonly<BackupProgress>) => void;
  /**
   * The caller shows the run's outcome itself (immutd backup at a terminal
   * prints a summary): a failed or interrupted run is then logged at info, not
   * error, so the fact is said once.
   */
  outcomeShown?: boolean;
  /** The clock; tests move it. */
  now?: () => Date;
  /** The calendar a keep policy counts in (src/retention/tiers.ts); tests shorten its days. Default: real days. */
  policyTime?: PolicyTime;
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
  /** Full or incremental (src/flows/incremental.ts), known once the run got that far. */
  kind?: "full" | "incremental";
  /** Why a full backup, when incremental backups are configured or the chain could not go on. */
  fullReason?: string;
  /** An incremental's parent backup and how many entries it archived and carried over. */
  incremental?: { parentId: number; changed: number; unchanged: number };
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

/** What one attempt carries from step to step. */
interface Run {
  readonly job: JobConfig;
  readonly deps: BackupDeps;
  readonly now: () => Date;
  readonly started: Date;
  readonly key: string;
  readonly runId: number;
  readonly jlog: Logger;
  readonly warnings: ArchiveWarning[];
  readonly progress: BackupProgress;
  readonly base: Pick<
    BackupResult,
    "job" | "runId" | "key" | "backupId" | "versionId" | "kind" | "fullReason" | "incremental"
  >;
  /**
   * Set once the upload's first request is sent: from then on the server may hold
   * a version at the key even if this process never hears of it.
   */
  uploadSent: boolean;
  /** The job's keep policy's say on this backup (tiers, hold, tag), once decided; undefined without a policy. */
  keep?: Assignment;
  /** The manifest's index, spooled beside the catalog (src/pipeline/index-spool.ts); removed when the run ends. */
  spool?: IndexSpool;
}

/** The stages' result with what the run needs of them afterwards. */
interface Uploaded extends Streamed {
  cipher: Cipher;
  index: IndexSpool;
  chain: ChainStep;
}

/** The recorded and locked version. */
interface Stored {
  backupId: number;
  retention: Retention;
  /** The size the server reports, equal to the bytes sent. */
  size: number;
}

async function attempt(job: JobConfig, deps: BackupDeps): Promise<BackupResult> {
  const run = startRun(job, deps);
  let spooled: Spooled | undefined;
  try {
    spooled = await prepare(run);
    const uploaded = await upload(run, spooled);
    const stored = await recordVersion(run, uploaded);
    return await succeeded(run, uploaded, stored);
  } catch (err) {
    return failed(run, err);
  } finally {
    run.spool?.remove();
    await spooled?.cleanup();
  }
}

/** Names the object and records the run as running before anything else happens. */
function startRun(job: JobConfig, deps: BackupDeps): Run {
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
  return {
    job,
    deps,
    now,
    started,
    key,
    runId,
    jlog: log.child({ job: job.name, runId }),
    warnings: [],
    progress: { bytes: 0, read: 0, files: 0 },
    base: { job: job.name, runId, key },
    uploadSent: false,
  };
}

/** Everything before the upload: the paths exist, the bucket protects, the before hook, the commands' outputs. */
async function prepare(run: Run): Promise<Spooled | undefined> {
  const { job, deps } = run;
  deps.signal?.throwIfAborted();
  const missing = await missingPaths(job.paths);
  if (missing.length) {
    throw new RefusedError(
      `job ${job.name}: configured path ${missing.join(", ")} does not exist; nothing was uploaded`,
    );
  }
  await preflight(deps.target, deps.targetConfig);
  deps.signal?.throwIfAborted();
  const hookEnv: HookEnv = {
    IMMUTD_JOB: job.name,
    IMMUTD_RUN_ID: String(run.runId),
    IMMUTD_KEY: run.key,
  };
  if (job.hooks?.before) {
    await runHook("before", job.hooks.before, hookEnv, job.hooks.timeoutSeconds, deps.signal);
    run.jlog.info("before hook succeeded");
  }
  if (!job.commands.length) return undefined;
  return await spoolCommands(job.name, job.commands, hookEnv, deps.signal);
}

/** The stages composed (src/pipeline/): the walk's bytes into one new version at the key. */
async function upload(run: Run, spooled: Spooled | undefined): Promise<Uploaded> {
  const { job, deps, key, runId, jlog, progress } = run;
  const { config, catalog, target } = deps;
  jlog.info({ key, paths: job.paths, commands: job.commands.map((c) => c.name) }, "backup started");
  const cipher = cipherFor(
    config.masterKey.reveal(),
    target.bucket,
    key,
    encryptionOf(job, deps.targetConfig),
  );
  // Unlinked at once: whatever ends the run, nothing is left (src/pipeline/index-spool.ts).
  const index = IndexSpool.open({ catalogPath: catalog.path, runId });
  run.spool = index;
  const chain = await chainStep(job, jobWalk(job, catalog.path), index, {
    catalog,
    target,
    targetConfig: deps.targetConfig,
    masterKey: config.masterKey.reveal(),
    host: config.host,
    now: run.now(),
  });
  if (chain.kind === "incremental")
    jlog.info(
      {
        kind: "incremental",
        parentId: chain.parentRow?.id,
        parent: chain.parentRow?.key,
        members: chain.members?.length,
      },
      "incremental backup: only entries changed since the previous backup are archived",
    );
  else if (job.incremental)
    jlog.info({ kind: "full", reason: chain.reason }, `full backup: ${chain.reason}`);
  else jlog.debug({ kind: "full", reason: chain.reason }, "full backup");
  run.base.kind = chain.kind;
  if (chain.parentRow) catalog.setRunParent(runId, chain.parentRow.id);
  if (chain.kind === "full" && job.incremental && chain.reason) run.base.fullReason = chain.reason;
  deps.signal?.throwIfAborted();
  const archive = createArchive({
    ...jobWalk(
      job,
      catalog.path,
      // Nor the spooled outputs a second time under their path.
      (spooled?.files ?? []).map((f) => literalPattern(f.path)),
    ),
    ...(spooled ? { extraFiles: spooled.files } : {}),
    ...(deps.signal ? { signal: deps.signal } : {}),
    onWarning: (w) => warned(run, w),
    onProgress: (p) => {
      progress.files = p.files;
      progress.read = p.bytes;
      deps.onProgress?.(progress);
    },
    onIndex: (batch) => {
      index.addText(batch);
      progress.current = batch.last;
    },
    ...(chain.plan ? { plan: chain.plan } : {}),
  });
  const hash = new HashingCounter((n) => {
    progress.bytes = n;
    deps.onProgress?.(progress);
  });
  let uploadId: string | undefined;
  const sink = s3Sink(target.writer, {
    key,
    sseKey: cipher.sseKey,
    onUploadId: (id) => {
      uploadId = id;
      catalog.setUploadId(runId, id);
    },
  });
  run.uploadSent = true;
  const streamed = await runStages({
    archive,
    between: [
      index.endOfIndex(),
      ...encoderFor(
        job.compression,
        job.compressionLevel,
        job.compressionThreads ?? DEFAULTS.compressionThreads,
      ),
      ...cipher.stages,
    ],
    hash,
    sink,
    ...(deps.signal ? { signal: deps.signal } : {}),
    cancelled: () => new CancelledError(`job ${job.name}: cancelled`),
  });
  progress.files = streamed.walk.files;
  jlog.debug({ versionId: streamed.versionId, uploadId }, "upload complete");
  if (chain.plan && chain.parentRow)
    run.base.incremental = {
      parentId: chain.parentRow.id,
      changed: chain.plan.counts.changed,
      unchanged: chain.plan.counts.unchanged,
    };
  return { ...streamed, cipher, index, chain };
}

/** A walk warning: kept for the catalog, logged one by one up to LOGGED_WARNINGS. */
function warned(run: Run, w: ArchiveWarning): void {
  run.warnings.push(w);
  const n = run.warnings.length;
  if (n <= LOGGED_WARNINGS) run.jlog.warn({ path: w.path, code: w.code }, w.message);
  else if (n === LOGGED_WARNINGS + 1)
    run.jlog.warn("more warnings; only counting them from now on");
}

/**
 * Records the new version in the catalog before anything else is asked of the
 * server, so that it is never forgotten ("unlocked" until its lock is read
 * back as configured), then locks it and checks its stored size.
 */
async function recordVersion(run: Run, u: Uploaded): Promise<Stored> {
  const { job, deps, key } = run;
  const { catalog, target } = deps;
  const backupId = catalog.recordBackup({
    runId: run.runId,
    job: job.name,
    target: target.name,
    bucket: target.bucket,
    key,
    versionId: u.versionId,
    size: u.bytes,
    sha256: u.sha256,
    compression: job.compression,
    sseKey: catalogSseKey(u.cipher),
    keyDerivation: u.cipher.keyDerivation,
    createdAt: run.started,
    retentionMode: null,
    retainUntil: null,
    status: "unlocked",
    files: u.walk.files,
    parentId: u.chain.parentRow?.id ?? null,
  });
  // A run that fails from here on still names its version (hooks get IMMUTD_VERSION_ID).
  run.base.backupId = backupId;
  run.base.versionId = u.versionId;
  const { lock, wanted } = await lockVersion(run, backupId, u.versionId);
  const size = await checkStoredSize(run, backupId, u);
  const retention = lockedAsConfigured(run, backupId, u.versionId, lock, wanted);
  await extendChain(run, u, retention);
  return { backupId, retention, size };
}

/**
 * An incremental is worthless without the members before it: each gets a
 * retain-until no earlier than the new member's (extend only). A failure is
 * a warning of the run (the new member is stored and locked); verify reports
 * the member locked shorter than the points that need it until it is fixed.
 */
async function extendChain(run: Run, u: Uploaded, retention: Retention): Promise<void> {
  const members = u.chain.members;
  if (!members?.length) return;
  const problem = await extendMembers(members, retention, {
    catalog: run.deps.catalog,
    target: run.deps.target,
    now: run.now(),
  });
  if (!problem) return;
  const message = `the earlier members of the chain could not all be locked until ${retention.retainUntil.toISOString()} with the new backup: ${problem}; \`immutd verify\` reports the chain until they are`;
  run.warnings.push({ path: `s3://${run.deps.target.bucket}/${members[0]?.key ?? ""}`, message });
  run.jlog.warn(message);
}

/**
 * Sets the configured lock explicitly, whatever the bucket default gave the
 * version (src/retention/lock.ts), and records what the server reports. Not
 * cancellable: once the version exists, locking it is the point.
 */
async function lockVersion(
  run: Run,
  backupId: number,
  versionId: string,
): Promise<{ lock: LockOutcome; wanted: Retention }> {
  const { deps, key } = run;
  const completed = run.now();
  // The keep policy's tiers decide the lock (never below the configured one) and the tag.
  const { keep, wanted, lock, tagProblem } = await keepNewBackup({
    catalog: deps.catalog,
    target: deps.target,
    job: run.job,
    tc: deps.targetConfig,
    backupId,
    key,
    versionId,
    floor: configuredLock(completed, deps.targetConfig.retention),
    now: completed,
    attempts: LOCK_ATTEMPTS,
    slackMs: LOCK_SLACK_MS,
    ...(deps.policyTime ? { time: deps.policyTime } : {}),
  });
  if (keep) run.keep = keep;
  if (keep && tagProblem) {
    const message = `${versionName(run, versionId)}: ${tagProblem}; it is locked for its tiers (${keep.tiers.join(", ") || "none"}) but no lifecycle rule removes it until it is tagged (\`immutd verify\` tags it)`;
    run.warnings.push({ path: `s3://${deps.target.bucket}/${key}`, message });
    run.jlog.warn({ versionId }, message);
  }
  return { lock, wanted };
}

/** The version's retention, or the refusal the run fails with when it could not be locked. */
function lockedAsConfigured(
  run: Run,
  backupId: number,
  versionId: string,
  lock: LockOutcome,
  wanted: Retention,
): Retention {
  const retention = run.deps.targetConfig.retention;
  if (lock.problem || !lock.after) {
    throw new RefusedError(
      `${versionName(run, versionId)} could not be locked ${describeRetention(retention)} (until ${wanted.retainUntil.toISOString()}): ${lock.problem ?? "it has no retention"}; it is recorded as unlocked (backup ${backupId}) and \`immutd verify\` reports it until it is`,
    );
  }
  if (lock.changed) {
    run.jlog.warn(
      {
        versionId,
        from: lock.before ? `${lock.before.mode} ${lock.before.retainUntil.toISOString()}` : null,
        retentionMode: lock.after.mode,
        retainUntil: lock.after.retainUntil.toISOString(),
      },
      "the bucket default gave the new version less than the configured lock: set it explicitly",
    );
  }
  return lock.after;
}

/**
 * What the server stored must be what was sent (a client or server that stores
 * transfer framing inside the object would change its size).
 */
async function checkStoredSize(run: Run, backupId: number, u: Uploaded): Promise<number> {
  const { catalog, target } = run.deps;
  const what = versionName(run, u.versionId);
  let size: number;
  try {
    size = await storedSize(target, run.key, u.versionId, u.cipher.sseKey);
  } catch (err) {
    if (err instanceof StorageError && err.status === 404)
      catalog.setBackupStatus(backupId, "missing");
    throw new StorageError(
      `${what}: its size could not be read back (${describeError(err)}); recorded as backup ${backupId}, which \`immutd verify\` checks`,
      { transient: false, cause: err },
    );
  }
  if (size !== u.bytes) {
    catalog.setBackupStatus(backupId, "corrupt");
    throw new StorageError(
      `${what} holds ${size} bytes but ${u.bytes} were sent; the stored version is marked corrupt`,
      { transient: false },
    );
  }
  return size;
}

function versionName(run: Run, versionId: string): string {
  return `job ${run.job.name}: s3://${run.deps.target.bucket}/${run.key} version ${versionId}`;
}

/** The manifest (a failure to write it is a warning), then the run recorded as succeeded. */
async function succeeded(run: Run, u: Uploaded, stored: Stored): Promise<BackupResult> {
  const { job, deps, key, warnings } = run;
  const { backupId, retention } = stored;
  const chain = u.chain;
  const manifestProblem = await writeManifest(
    deps,
    u.cipher,
    backupId,
    retention,
    run.keep?.tag,
    {
      formatVersion: chain.kind === "incremental" ? INCREMENTAL_FORMAT : MANIFEST_FORMAT,
      host: deps.config.host,
      job: job.name,
      createdAt: run.started.toISOString(),
      archive: {
        key,
        versionId: u.versionId,
        size: stored.size,
        sha256: u.sha256,
        compression: job.compression,
      },
      encryption: { scheme: u.cipher.scheme, keyDerivation: u.cipher.keyDerivation },
      // encodeManifestStream (in writeManifest) adds the index, sealed with age to the recipients for age.
      parent:
        chain.kind === "incremental" && chain.parentRow
          ? {
              key: chain.parentRow.key,
              versionId: chain.parentRow.versionId,
              manifestVersionId: chain.parentRow.manifestVersionId as string,
            }
          : null,
      ...(chain.kind === "incremental" && chain.chain ? { chain: chain.chain } : {}),
      walk: chain.walk,
      schedule: job.schedule ?? null,
      ...(job.timezone !== undefined ? { timezone: job.timezone } : {}),
    },
    u.index,
  );
  if (manifestProblem) {
    warnings.push({
      path: `s3://${deps.target.bucket}/${manifestKey(key)}`,
      message: manifestProblem,
    });
    run.jlog.warn({ versionId: u.versionId }, manifestProblem);
  }
  const durationMs = run.now().getTime() - run.started.getTime();
  const counts = { bytes: u.bytes, files: u.walk.files, warnings: warnings.length };
  deps.catalog.addWarnings(run.runId, warnings);
  deps.catalog.finishRun(run.runId, { status: "succeeded", ...counts });
  const { versionId, sha256 } = u;
  const retainUntil = retention.retainUntil;
  run.jlog.info(
    {
      key,
      versionId,
      ...counts,
      durationMs,
      sha256,
      retentionMode: retention.mode,
      retainUntil: retainUntil.toISOString(),
      kind: chain.kind,
      ...(run.base.incremental ? run.base.incremental : {}),
    },
    "backup succeeded",
  );
  return {
    ...run.base,
    status: "succeeded",
    backupId,
    versionId,
    ...counts,
    durationMs,
    retainUntil,
  };
}

/** Records the run as failed or interrupted with its reason; the result says what is known. */
function failed(run: Run, err: unknown): BackupResult {
  const { deps, progress, warnings } = run;
  const cancelled = err instanceof CancelledError || deps.signal?.aborted === true;
  const status = cancelled ? "interrupted" : "failed";
  const error = cancelled
    ? `cancelled: ${describeError(deps.signal?.reason ?? err)}`
    : partsHint(describeError(err), deps.targetConfig);
  deps.catalog.addWarnings(run.runId, warnings);
  // No backup row although the upload was sent: if its last answer was lost, the
  // version exists. The run stays on crash recovery's list until one has looked.
  const unsettled = run.uploadSent && run.base.backupId === undefined;
  const counts = { bytes: progress.bytes, files: progress.files, warnings: warnings.length };
  deps.catalog.finishRun(run.runId, {
    status,
    ...counts,
    error: unsettled ? `${error}${UPLOAD_UNSETTLED}` : error,
  });
  run.jlog[deps.outcomeShown ? "info" : "error"]({ status }, `backup ${status}: ${error}`);
  const durationMs = run.now().getTime() - run.started.getTime();
  return { ...run.base, status, ...counts, durationMs, error };
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
  archiveCipher: Cipher,
  backupId: number,
  retention: Retention,
  tag: string | undefined,
  manifest: ManifestHead,
  index: IndexSpool,
): Promise<string | undefined> {
  const { target, catalog, config } = deps;
  const key = manifestKey(manifest.archive.key);
  const what = `manifest s3://${target.bucket}/${key}`;
  catalog.setBackupManifest(backupId, key, null);
  // The manifest is stored as its archive is: SSE-C unless age alone, the index sealed with age.
  const sseKey = sseKeyFor(config.masterKey.reveal(), target.bucket, key, archiveCipher.scheme);
  const recipients = archiveCipher.recipients;
  let body: Buffer;
  try {
    body = await encodeManifestStream(manifest, index.contents(), recipients, index.files);
  } catch (err) {
    return `${what} could not be written (${describeError(err)}); the archive is recorded and restorable (backup ${backupId}), \`immutd verify\` reports the missing manifest`;
  }
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
  // Read back first: a failed tag must not skip the check that the bytes arrived.
  try {
    const size = await storedSize(target, key, versionId, sseKey);
    if (size !== body.length)
      return `${what} version ${versionId} holds ${size} bytes but ${body.length} were sent`;
  } catch (err) {
    return `${what} version ${versionId} could not be read back (${describeError(err)})`;
  }
  // The manifest expires with its archive: the same keep tag.
  const tagProblem = tag ? await tagVersion(target, key, versionId, tag) : undefined;
  if (tagProblem) return `${what} version ${versionId}: ${tagProblem}`;
  return undefined;
}

/**
 * Refuses to upload into a bucket that would not protect the backup: versioning
 * off, Object Lock off, no default retention, or a weaker one than configured.
 */
export async function preflight(target: Target, t: TargetConfig): Promise<BucketLockState> {
  const state = await withReadFallback(target, (s) => s.lockState());
  // The same checks as verify and doctor (src/retention/bucket-check.ts); the first problem is the refusal.
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
  sseKey: Buffer | undefined,
): Promise<number> {
  const { size } = await retry(
    () => withReadFallback(target, (s) => s.head(key, versionId, sseKey)),
    { attempts: LOCK_ATTEMPTS, lagAttempts: LOCK_ATTEMPTS, baseMs: 250 },
  );
  return size;
}

function partsHint(message: string, t: TargetConfig): string {
  if (!/Exceeded \d+ parts/.test(message)) return message;
  const maxGiB = (largestUpload(t.partSizeMiB * 1024 * 1024) / 1024 ** 3).toFixed(0);
  return `the archive is larger than ${maxGiB} GiB, the most a multipart upload can hold in 10,000 parts starting at ${t.partSizeMiB} MiB (they double every ${GROW_EVERY.toLocaleString("en-US")} parts, up to 5 GiB); raise targets.${t.name}.partSizeMiB`;
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
  // Not the runs' index spools: they are unlinked as soon as they are created
  // (src/pipeline/index-spool.ts), and a pattern here would change every
  // incremental chain's walk fingerprint.
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
