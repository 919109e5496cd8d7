/**
 * Crash recovery: what a process that died mid-run (kill -9, OOM, power loss)
 * left behind, reconciled with the catalog. One entry point, reconcile(), used
 * by the daemon's start and by `immutd backup` and `immutd verify` before they
 * do anything else, so a cron user without a daemon gets the same recovery.
 *
 * For each dead run (Catalog.deadRuns: left "running" by a process that is
 * gone, or marked interrupted by startRun without being reconciled):
 * - every version at the run's object key (known before its upload started)
 *   is recorded as a backup with status "unverified": size and retention as
 *   the server reports them, SHA-256 unknown. A process killed between
 *   CompleteMultipartUpload and its catalog row leaves a locked version that
 *   would otherwise be forgotten. Versions are read from ListObjectVersions by
 *   ID, never "latest"; delete markers are ignored. A version someone else
 *   planted at the key is recorded too: `verify --deep` settles each
 *   unverified backup (it must be SSE-C encrypted with the key immutd derives,
 *   have the recorded size and read to its end) to ok or corrupt.
 * - the run is then closed as interrupted, saying what was found. Versions
 *   are recorded before the run is closed, so a crash during recovery only
 *   means the next recovery looks again.
 *
 * Multipart uploads under each job's prefix are aborted only when the run
 * that owns their key is provably dead (Catalog.keyOwner, re-checked right
 * before each abort): its row says it finished, or it is "running" in a
 * process that no longer exists. An upload of a run that a live process (a
 * manual `immutd backup` next to the daemon) is still doing is left alone:
 * the run's row is written before its upload is created, so a live upload
 * always has its row. An upload whose key no run of this catalog knows is left
 * alone and logged, whatever its age: it may belong to another immutd with
 * the same host name and another catalog, and the bucket's
 * AbortIncompleteMultipartUpload lifecycle rule (which `immutd init` sets)
 * removes it if nobody completes it.
 *
 * Nothing here deletes or overwrites a version. Failures are logged and never
 * stop the backup or verification that called reconcile.
 */
import type { Catalog, RunRow } from "../catalog/catalog.js";
import { type Config, encryptionOf } from "../config/config.js";
import { describeError, StorageError } from "../errors.js";
import type { Logger } from "../log.js";
import { keyDerivationOf, sseKeyFor } from "../pipeline/cipher.js";
import { jobPrefix, parseObjectKey } from "../repo/naming.js";
import { isRefused } from "../store/fallback.js";
import { type RetryOptions, RetryPolicy, retry, withSignal } from "../store/retry.js";
import type { Retention, Target } from "../store/store.js";

export interface ReconcileDeps {
  config: Config;
  catalog: Catalog;
  log: Logger;
  /** The opened target of a configured target name. */
  target: (name: string) => Target;
  /** Only these jobs' dead runs and uploads (the jobs a command works on); every job when omitted. */
  jobs?: readonly string[];
  signal?: AbortSignal;
}

export interface RecoveredVersion {
  runId: number;
  job: string;
  key: string;
  versionId: string;
  backupId: number;
}

export interface ReconcileReport {
  /** Dead runs closed as interrupted. */
  runs: number[];
  /** Versions found at dead runs' keys and recorded as unverified. */
  recovered: RecoveredVersion[];
  aborted: { key: string; uploadId: string; runId: number }[];
  /** Uploads left alone: their run is alive, or no run of this catalog knows their key. */
  leftAlone: { key: string; uploadId: string; reason: "live" | "unknown" }[];
}

/** Run ended by recovery; the daemon test and operators search for this text. */
const CLOSED = "immutd stopped without finishing this run (crash, kill or power loss)";

export async function reconcile(deps: ReconcileDeps): Promise<ReconcileReport> {
  const { config, catalog, log } = deps;
  const report: ReconcileReport = { runs: [], recovered: [], aborted: [], leftAlone: [] };
  const scope = deps.jobs ? new Set(deps.jobs) : undefined;
  const dead = catalog.deadRuns().filter((r) => !scope || scope.has(r.job));
  for (const run of dead) {
    deps.signal?.throwIfAborted();
    const found = await recoverRun(run, deps, report);
    // Re-checked: a run another process recovered and closed meanwhile stays as it closed it.
    if (found === undefined || !catalog.runIsDead(run.id)) continue;
    const what = found.length
      ? `; recovery recorded ${found.length} version(s) at ${run.objectKey} as unverified (${found.join(", ")}): immutd verify --deep settles them`
      : "";
    catalog.closeDeadRun(run.id, `${CLOSED}${what}`);
    report.runs.push(run.id);
    log.warn(
      { job: run.job, runId: run.id, key: run.objectKey, recovered: found },
      "marked a run left running by a previous process as interrupted",
    );
  }
  for (const job of config.jobs) {
    if (scope && !scope.has(job.name)) continue;
    deps.signal?.throwIfAborted();
    await abortDeadUploads(job.name, job.target, deps, report);
  }
  return report;
}

/**
 * Records each version at a dead run's key that the catalog does not hold
 * yet; returns the version IDs it recorded, or undefined if the bucket could
 * not be read (the run stays dead, and the next recovery tries again).
 */
async function recoverRun(
  run: RunRow,
  deps: ReconcileDeps,
  report: ReconcileReport,
): Promise<string[] | undefined> {
  const { config, catalog, log } = deps;
  const key = run.objectKey;
  const tc = config.targets[run.target];
  if (!key) return [];
  const jlog = log.child({ job: run.job, runId: run.id });
  if (!tc) {
    jlog.warn(
      { key },
      `target ${run.target} of dead run ${run.id} is no longer configured: whether a version at ${key} exists was not checked`,
    );
    return [];
  }
  const target = deps.target(tc.name);
  const opts = withSignal(RetryPolicy.read, deps.signal);
  let versions: { versionId: string; size: number }[];
  try {
    versions = (await retry(() => target.reader.listVersions(key), opts)).filter(
      (v) => v.key === key && !v.deleteMarker,
    );
  } catch (err) {
    jlog.warn(
      { key },
      `crash recovery could not list the versions at s3://${tc.bucket}/${key}: ${describeError(err)}; trying again next time`,
    );
    return undefined;
  }
  // As the run would have encrypted it: the job's scheme now (a dead run is recent).
  const scheme = encryptionOf(config.jobs.find((j) => j.name === run.job) ?? {}, tc).scheme;
  const sseKey = sseKeyFor(config.masterKey.reveal(), tc.bucket, key, scheme);
  const ids: string[] = [];
  for (const v of versions) {
    const { size, retention } = await inspect(target, tc.bucket, key, v, sseKey, opts, jlog);
    const backupId = catalog.recordRecovered({
      runId: run.id,
      job: run.job,
      target: tc.name,
      bucket: tc.bucket,
      key,
      versionId: v.versionId,
      size,
      sha256: null,
      compression: parseObjectKey(key)?.compression ?? "none",
      sseKey: sseKey ?? Buffer.alloc(0),
      keyDerivation: keyDerivationOf(scheme),
      createdAt: new Date(run.startedAt),
      retentionMode: retention?.mode ?? null,
      retainUntil: retention?.retainUntil ?? null,
      status: "unverified",
      files: 0,
      parentId: catalog.runParent(run.id),
    });
    if (backupId === undefined) continue; // already in the catalog (the run recorded it before it died)
    ids.push(v.versionId);
    report.recovered.push({
      runId: run.id,
      job: run.job,
      key,
      versionId: v.versionId,
      backupId,
    });
    jlog.warn(
      {
        key,
        versionId: v.versionId,
        backupId,
        size,
        retentionMode: retention?.mode ?? null,
        retainUntil: retention?.retainUntil.toISOString() ?? null,
      },
      "recorded a version left by an interrupted run as unverified (its SHA-256 is unknown until verify --deep)",
    );
  }
  return ids;
}

/**
 * What the server shows of one version a dead run left: its size (the
 * listing's where HEAD fails) and its retention. Each failure is logged and
 * the version is recorded all the same: verify --deep reports it.
 */
async function inspect(
  target: Target,
  bucket: string,
  key: string,
  v: { versionId: string; size: number },
  sseKey: Buffer | undefined,
  opts: RetryOptions,
  jlog: Logger,
): Promise<{ size: number; retention: Retention | undefined }> {
  const where = `s3://${bucket}/${key} version ${v.versionId}`;
  let size = v.size;
  try {
    const head = await retry(() => target.reader.head(key, v.versionId, sseKey), opts);
    size = head.size;
    if (sseKey && !head.encrypted) {
      jlog.warn(
        { key, versionId: v.versionId },
        `${where} is not encrypted with the key immutd derives for it: immutd did not write it`,
      );
    }
  } catch (err) {
    // Recorded all the same (with the listing's size): verify --deep will report it.
    jlog.warn(
      { key, versionId: v.versionId },
      err instanceof StorageError && err.refusalText() !== undefined
        ? `${where} could not be read: ${err.refusalText()}`
        : `${where} does not open with the key immutd derives for it: ${describeError(err)}`,
    );
  }
  let retention: Retention | undefined;
  try {
    retention = await retry(() => target.reader.retention(key, v.versionId), opts);
  } catch (err) {
    jlog.warn(
      { key, versionId: v.versionId },
      `cannot read the retention of ${where}: ${describeError(err)}; verify checks it again`,
    );
  }
  return { size, retention };
}

async function abortDeadUploads(
  job: string,
  targetName: string,
  deps: ReconcileDeps,
  report: ReconcileReport,
): Promise<void> {
  const { config, catalog, log } = deps;
  const tc = config.targets[targetName];
  if (!tc) return;
  const prefix = jobPrefix(tc.prefix, config.host, job);
  try {
    const target = deps.target(tc.name);
    const uploads = await target.reader.listUploads(prefix);
    for (const u of uploads) {
      // Decided per upload, at the moment of aborting: never from an earlier snapshot.
      const owner = catalog.keyOwner(u.key);
      const fields = { job, key: u.key, uploadId: u.uploadId, runId: owner.runId ?? null };
      if (owner.state === "live") {
        report.leftAlone.push({ key: u.key, uploadId: u.uploadId, reason: "live" });
        log.info(
          fields,
          "left a multipart upload alone: its run is still going in another process",
        );
        continue;
      }
      if (owner.state === "unknown") {
        report.leftAlone.push({ key: u.key, uploadId: u.uploadId, reason: "unknown" });
        log.warn(
          { ...fields, initiated: u.initiated?.toISOString() ?? null },
          `left a multipart upload alone: no run in catalog ${catalog.path} uses ${u.key} (another immutd with host ${config.host}?); the bucket's AbortIncompleteMultipartUpload rule removes it`,
        );
        continue;
      }
      try {
        await target.writer.abortUpload(u.key, u.uploadId);
      } catch (err) {
        if (deps.signal?.aborted) throw err;
        log.warn(
          fields,
          `could not abort multipart upload ${u.uploadId} of ${u.key} left by run ${owner.runId}: ${describeError(err)}${permissionHint(err)}; trying again next time`,
        );
        continue;
      }
      report.aborted.push({ key: u.key, uploadId: u.uploadId, runId: owner.runId as number });
      log.warn(fields, "aborted an incomplete multipart upload left by an interrupted run");
    }
  } catch (err) {
    if (deps.signal?.aborted) throw err;
    log.warn(
      { job },
      `could not check for leftover multipart uploads under ${prefix}: ${describeError(err)}${permissionHint(err)}`,
    );
  }
}

function permissionHint(err: unknown): string {
  return isRefused(err) ? " (the reader lists uploads, the writer aborts them)" : "";
}
