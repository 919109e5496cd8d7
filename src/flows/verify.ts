/**
 * Continuous proof that backups are still protected: `immutd verify`, and the
 * daemon's scheduled verification.
 *
 * A run checks, with the reader credentials:
 * - each target's bucket, with the same checks as a backup's preflight
 *   (src/retention/bucket-check.ts), plus its lifecycle rules where a credential may read them;
 * - every catalog backup still inside its retention: its recorded version
 *   exists, has the recorded size, opens with its SSE-C key, is locked at
 *   least as strictly as recorded and configured, and not shorter than recorded;
 * - with `deep`, the newest backups of each job: downloaded, SHA-256 compared
 *   with the catalog, and the archive read to its end.
 * Backups past their retain-until are marked expired. Every problem is a
 * Finding naming the job, object key and version; nothing is ever deleted.
 *
 * With keepLatestLocked, each job's newest good backup is then extended
 * (extendLatestLocks) so that it stays locked the retention period ahead of
 * now even if backups stop. The daemon can call extendLatestLocks on its own.
 *
 * Statuses move only as the server is observed: ok -> missing, corrupt or
 * expired; missing -> ok when the version is readable again; unverified (found
 * by crash recovery) -> ok or corrupt, by a deep check only.
 */
import { Writable } from "node:stream";
import { buffer } from "node:stream/consumers";
import type { BackupRow, Catalog } from "../catalog/catalog.js";
import type { Config, TargetConfig } from "../config/config.js";
import { CancelledError, describeError, explainReadRefusal, StorageError } from "../errors.js";
import type { Logger } from "../log.js";
import type { AgeIdentity } from "../pipeline/age.js";
import { isAgeEncrypted, schemeOf, sseKeyFor, storedSseKey } from "../pipeline/cipher.js";
import { type ChainNode, chainOf, pointsBrokenBy } from "../repo/chain.js";
import { KEY_DERIVATION } from "../repo/keys.js";
import { decodeManifest, manifestMismatch } from "../repo/manifest.js";
import {
  configuredLock,
  LOCK_SLACK_MS,
  lifecycleProblems,
  lockProblems,
  lockTarget,
  RETAIN_TOLERANCE_MS,
  stricterMode,
} from "../retention/bucket-check.js";
import { expireAfterDays } from "../retention/lifecycle.js";
import { lockAtLeast } from "../retention/lock.js";
import {
  type Assignment,
  type PolicyTime,
  REAL_TIME,
  toPolicy,
  toReal,
} from "../retention/tiers.js";
import { isRefused, withReadFallback } from "../store/fallback.js";
import { mapLimit } from "../store/parallel.js";
import { RetryPolicy, retry, withSignal } from "../store/retry.js";
import { listOnce } from "../store/shared-listing.js";
import type { BucketLockState, ObjectStore, Retention, Target } from "../store/store.js";
import { extendMembers } from "./incremental.js";
import { type RestoreSource, restore, selectFromCatalog } from "./restore.js";
import {
  checkKeepTag,
  keepHolds,
  type Promoted,
  promoteBackups,
  tierRuleFindings,
} from "./verify-keep.js";

export type FindingKind =
  /** The bucket: from src/retention/bucket-check.ts. */
  | "object-lock-disabled"
  | "versioning-disabled"
  | "no-default-retention"
  | "default-retention-weak"
  | "lifecycle-expires-current"
  /** The bucket's settings could not be read at all. */
  | "bucket-unreadable"
  /** The recorded version is gone before its retain-until. */
  | "missing"
  /** The version's size differs from the catalog's. */
  | "size-mismatch"
  /** The server refuses to read the version with its SSE-C key. */
  | "unreadable"
  /** The version has no retention. */
  | "not-locked"
  /** GOVERNANCE where COMPLIANCE was recorded or configured. */
  | "mode-weak"
  /** retain-until earlier than recorded. */
  | "retention-shortened"
  /** retain-until earlier than the backup's configured period (created + retention days). */
  | "retention-short"
  /** Deep: the downloaded bytes do not match the catalog's SHA-256 or size. */
  | "checksum-mismatch"
  /** Deep: the bytes match, but the archive cannot be read to its end. */
  | "archive-unreadable"
  /** The check itself failed (network, permissions): nothing is known about the backup. */
  | "check-failed"
  /** keepLatestLocked could not extend the newest backup's retention. */
  | "lock-extension-failed"
  /**
   * A member of an incremental chain (src/repo/chain.ts) is missing, corrupt,
   * unlocked, or locked shorter than a later member that needs it: the message
   * names every restore point it breaks.
   */
  | "chain-broken"
  /**
   * A warning, not a finding: a delete marker is the latest version of a
   * backup's key. Someone with write access hid it; the pinned version is still
   * there and restorable.
   */
  | "delete-marker"
  /** Recorded by crash recovery with its SHA-256 unknown: only --deep settles it. */
  | "unverified"
  /**
   * The backup's manifest (src/repo/manifest.ts) was never written, its recorded
   * version is gone, does not decode, names another archive version or
   * SHA-256, or is locked shorter than the archive.
   */
  | "manifest"
  /**
   * A warning, not a finding: the latest version at a manifest's key is not the
   * recorded one. Someone with write access wrote another (a forged manifest);
   * the recorded version is what immutd trusts.
   */
  | "manifest-replaced"
  /** The keep policy: the archive's immutd-keep tag is missing or for a shorter hold than its tiers (src/flows/verify-keep.ts). */
  | "keep-tag"
  /** The keep policy: a lifecycle rule that should expire backups after their tier is missing, weakened, or another rule expires them sooner. */
  | "lifecycle-tier-rule";

/** Kinds that go to the report's warnings, not its findings. */
const WARNING_KINDS: ReadonlySet<FindingKind> = new Set(["delete-marker", "manifest-replaced"]);

export interface Finding {
  kind: FindingKind;
  target: string;
  bucket: string;
  /** null for findings about the bucket. */
  job: string | null;
  key: string | null;
  versionId: string | null;
  backupId: number | null;
  /** What is wrong, in one line. */
  message: string;
}

export interface DeepResult {
  job: string;
  backupId: number;
  key: string;
  versionId: string;
  ok: boolean;
  bytes: number;
  entries: number;
  durationMs: number;
}

export interface LockExtension {
  job: string;
  target: string;
  backupId: number;
  key: string;
  versionId: string;
  /** extended: the retention was moved forward; unchanged: it already reached far enough. */
  action: "extended" | "unchanged" | "failed";
  /** The server's retain-until before, and after (ISO-8601). */
  from: string | null;
  to: string | null;
  message: string;
}

export interface VerifyReport {
  startedAt: string;
  finishedAt: string;
  durationMs: number;
  deep: boolean;
  job: string | null;
  targets: { name: string; bucket: string; lifecycleChecked: boolean }[];
  /** Backups checked against the server. */
  checked: number;
  /** Backups marked expired by this run. */
  expired: number;
  deepChecked: DeepResult[];
  extensions: LockExtension[];
  /** Backups whose lock and tag this run extended to tiers they had not been given (a missed tier, a longer policy). */
  promoted: Promoted[];
  findings: Finding[];
  /** What deserves attention but endangers no backup (delete markers); they do not change the exit code. */
  warnings: Finding[];
  /** What could not be checked, and why. */
  notes: string[];
}

export interface VerifyDeps {
  config: Config;
  catalog: Catalog;
  /** Opened targets by name (openTarget): readers verify, writers extend locks. */
  targets: Readonly<Record<string, Target>>;
  log: Logger;
  deep?: boolean;
  /** Only this job's backups. */
  job?: string;
  /** Deep: how many newest good backups of each job to download (default: config.verify.deep.sample, else 1). */
  sample?: number;
  /**
   * Deep: the age identities that read age-encrypted archives to their end.
   * Without them an age backup's deep check downloads it and compares size
   * and SHA-256 of the stored bytes only (the host holds no identity).
   */
  identities?: readonly AgeIdentity[];
  signal?: AbortSignal;
  /** The clock; tests move it. */
  now?: () => Date;
  /**
   * The caller prints the report (immutd verify): findings, warnings and notes
   * are then logged at debug, so each is said once, in the report.
   */
  reportShown?: boolean;
  /** Called as the run goes: backups checked of those due, then bytes of the deep downloads. */
  onProgress?: (p: Readonly<VerifyProgress>) => void;
  /** The calendar keep policies count in (src/retention/tiers.ts); tests shorten its days. */
  policyTime?: PolicyTime;
}

export interface VerifyProgress {
  phase: "backups" | "deep";
  /** Backups done in this phase, of `total`. */
  done: number;
  total: number;
  /** Deep: archive bytes downloaded so far, of `totalBytes` (the sizes the catalog recorded). */
  bytes: number;
  totalBytes: number;
  /** The object being checked. */
  key?: string;
}

/** How far a server's retain-until may be off what was recorded or asked before it counts as changed (servers round). */
const TOLERANCE_MS = RETAIN_TOLERANCE_MS;

/**
 * What a verify run collects, and how: every finding is logged as an error,
 * every warning as a warning, as they are found; notes are logged at the end.
 */
interface Collected {
  findings: Finding[];
  warnings: Finding[];
  notes: string[];
  report(f: Finding): void;
  warn(f: Finding): void;
}

function collector(log: Logger, shown: boolean): Collected {
  const fields = (f: Finding) => ({
    kind: f.kind,
    target: f.target,
    job: f.job,
    key: f.key,
    versionId: f.versionId,
  });
  const c: Collected = {
    findings: [],
    warnings: [],
    notes: [],
    report: (f) => {
      c.findings.push(f);
      log[shown ? "debug" : "error"](fields(f), f.message);
    },
    warn: (f) => {
      c.warnings.push(f);
      log[shown ? "debug" : "warn"](fields(f), f.message);
    },
  };
  return c;
}

/** Which catalog backups a run checks, decided once at its start (`at`). */
interface Scope {
  /** Still to be checked: locked, or inside its configured period whatever its lock says. */
  live(r: BackupRow): boolean;
  /** In the bucket its target names now, so its stores can reach it. */
  reachable(r: BackupRow): boolean;
}

export async function runVerify(deps: VerifyDeps): Promise<VerifyReport> {
  const { config, catalog, log } = deps;
  const now = deps.now ?? (() => new Date());
  const started = now();
  const c = collector(log, deps.reportShown === true);
  const jobFilter = deps.job !== undefined ? { job: deps.job } : {};
  const targetsChecked = await checkTargets(deps, c);
  const expired = markExpired(deps, started);
  const holds = keepHolds(config, catalog, deps.job, deps.policyTime);
  const promoted = await promoteBackups(
    config,
    catalog,
    deps.targets,
    holds,
    started,
    log,
    deps.job,
  );
  for (const p of promoted) {
    if (p.problem)
      c.notes.push(`promoting backup ${p.backupId} (job ${p.job}) failed: ${p.problem}`);
  }
  const scope = scopeAt(deps, started);
  // Read again: markExpired has just changed statuses.
  const current = catalog.listBackups(jobFilter);
  const due = current.filter((r) => scope.live(r) && scope.reachable(r));
  const elsewhere = new Set(
    current
      .filter((r) => scope.live(r) && !scope.reachable(r) && config.targets[r.target])
      .map((r) => `${r.bucket} (target ${r.target})`),
  );
  for (const b of elsewhere) {
    c.notes.push(`backups in bucket ${b} were not checked: the target now names another bucket`);
  }
  // Each target's prefix is listed once for the manifests' latest versions and the delete markers.
  const listed = listedOnce(config, deps.targets);
  await checkBackups({ ...deps, targets: listed }, due, started, c, holds);
  for (const w of await hiddenBackups(due, config, listed, c.notes, {
    now: started,
    ...(deps.policyTime ? { time: deps.policyTime } : {}),
  }))
    c.warn(w);
  const deepChecked = deps.deep ? await deepChecks(deps, scope, c) : [];
  const extensions = await extendPhase(deps, now, c);
  for (const f of await chainFindings(deps, due, now())) c.report(f);
  const finished = now();
  const result: VerifyReport = {
    startedAt: started.toISOString(),
    finishedAt: finished.toISOString(),
    durationMs: finished.getTime() - started.getTime(),
    deep: deps.deep === true,
    job: deps.job ?? null,
    targets: targetsChecked,
    checked: due.length,
    expired: expired.length,
    deepChecked,
    extensions,
    promoted,
    findings: c.findings,
    warnings: c.warnings,
    notes: c.notes,
  };
  recordRun(deps, result, started, finished);
  return result;
}

/** The buckets of the configured jobs' targets and of the catalog's backups. */
async function checkTargets(deps: VerifyDeps, c: Collected): Promise<VerifyReport["targets"]> {
  const { config, catalog } = deps;
  const rows = catalog.listBackups(deps.job !== undefined ? { job: deps.job } : {});
  const jobs = config.jobs.filter((j) => deps.job === undefined || j.name === deps.job);
  const targetNames = new Set([...jobs.map((j) => j.target), ...rows.map((r) => r.target)]);
  const checked: VerifyReport["targets"] = [];
  for (const name of targetNames) {
    const tc = config.targets[name];
    const target = deps.targets[name];
    if (!tc || !target) {
      c.notes.push(
        `target ${name} is no longer configured: its backups in the catalog were not checked`,
      );
      continue;
    }
    deps.signal?.throwIfAborted();
    const lifecycleChecked = await checkBucket(tc, target, c.report, c.notes, config);
    checked.push({ name, bucket: tc.bucket, lifecycleChecked });
  }
  return checked;
}

function markExpired({ catalog, log, job }: VerifyDeps, at: Date): BackupRow[] {
  const expired = catalog.markExpired(at, job);
  for (const r of expired) {
    log.info(
      { job: r.job, key: r.key, versionId: r.versionId, retainUntil: r.retainUntil },
      "backup is past its retain-until: marked expired",
    );
  }
  return expired;
}

function scopeAt({ config, targets }: VerifyDeps, at: Date): Scope {
  // A target's stores address its current bucket: backups recorded in a bucket the
  // target no longer names cannot be checked through it (and are not "missing").
  const reachable = (r: BackupRow) =>
    config.targets[r.target]?.bucket === r.bucket && targets[r.target] !== undefined;
  // Checked while locked, and while inside its configured period whatever its lock
  // says: a backup whose lock was shorter than configured (and may already have
  // run out) is reported, not marked expired and forgotten.
  const inPeriod = (r: BackupRow) => {
    const tc = config.targets[r.target];
    return tc !== undefined && configuredEnd(r, tc) > at.getTime();
  };
  const live = (r: BackupRow) =>
    ((r.status === "ok" ||
      r.status === "missing" ||
      r.status === "unlocked" ||
      r.status === "unverified") &&
      (r.retainUntil === null || Date.parse(r.retainUntil) > at.getTime() || inPeriod(r))) ||
    (r.status === "expired" && inPeriod(r));
  return { live, reachable };
}

/** Each due backup against the server, verify.concurrency at a time. */
async function checkBackups(
  deps: VerifyDeps,
  due: BackupRow[],
  at: Date,
  c: Collected,
  holds: ReadonlyMap<number, Assignment> = new Map(),
): Promise<void> {
  const { config, catalog, log } = deps;
  const masterKey = config.masterKey.reveal();
  let done = 0;
  const progress = (key?: string) =>
    deps.onProgress?.({
      phase: "backups",
      done,
      total: due.length,
      bytes: 0,
      totalBytes: 0,
      ...(key !== undefined ? { key } : {}),
    });
  progress();
  await mapLimit(due, config.verify.concurrency, deps.signal, async (row) => {
    progress(row.key);
    const tc = config.targets[row.target] as TargetConfig;
    const target = deps.targets[row.target] as Target;
    const seen = await checkBackup(
      row,
      tc,
      target,
      catalog,
      log,
      at,
      deps.signal,
      deps.deep,
      masterKey,
      holds.get(row.id),
    );
    for (const f of seen) {
      if (!WARNING_KINDS.has(f.kind)) c.report(f);
      else c.warn(f);
    }
    done++;
    progress();
  });
}

/**
 * Deep: every backup crash recovery found (still inside its retention) is
 * downloaded, whatever the sample; then each job's newest `sample` good ones.
 */
async function deepChecks(deps: VerifyDeps, scope: Scope, c: Collected): Promise<DeepResult[]> {
  const { config, catalog, log } = deps;
  const deepChecked: DeepResult[] = [];
  // What will be downloaded, planned first so that progress knows the total.
  const planned: { row: BackupRow; target: Target }[] = [];
  const plan = (row: BackupRow, target: Target) => {
    if (!planned.some((p) => p.row.id === row.id)) planned.push({ row, target });
  };
  for (const row of catalog
    .listBackups(deps.job !== undefined ? { job: deps.job } : {})
    .filter((r) => r.status === "unverified" && scope.live(r) && scope.reachable(r))) {
    const target = deps.targets[row.target];
    if (target) plan(row, target);
  }
  const sample = deps.sample ?? config.verify.deep?.sample ?? 1;
  for (const job of config.jobs.filter((j) => deps.job === undefined || j.name === deps.job)) {
    const good = catalog
      .listBackups({ job: job.name })
      // An unverified one planned above counts as good (once its check settles it, it is).
      .filter(
        (r) => (r.status === "ok" || planned.some((p) => p.row.id === r.id)) && scope.reachable(r),
      );
    if (good.length === 0) {
      c.notes.push(`job ${job.name} has no good backup to check deeply`);
      continue;
    }
    for (const row of good.slice(-sample).reverse()) {
      const target = deps.targets[row.target];
      if (target) plan(row, target);
    }
  }
  const totalBytes = planned.reduce((n, p) => n + p.row.size, 0);
  let before = 0;
  for (const [i, { row, target }] of planned.entries()) {
    deps.signal?.throwIfAborted();
    const onBytes = (bytes: number) =>
      deps.onProgress?.({
        phase: "deep",
        done: i,
        total: planned.length,
        bytes: before + bytes,
        totalBytes,
        key: row.key,
      });
    onBytes(0);
    const { result, finding } = await deepCheck(
      row,
      target.reader,
      catalog,
      log,
      deps.signal,
      onBytes,
      deps.identities,
    );
    if (!deps.identities?.length && isAgeEncrypted(catalog.backupKeyDerivation(row.id) ?? ""))
      c.notes.push(
        `job ${row.job}: backup ${row.id} is age-encrypted and no identity was given: its stored bytes match the recorded SHA-256, but the archive was not read (verify --deep --identity FILE reads it)`,
      );
    deepChecked.push(result);
    if (finding) c.report(finding);
    before += row.size;
  }
  return deepChecked;
}

/** keepLatestLocked: extends each job's newest good backup; a failed extension is a finding. */
async function extendPhase(
  deps: VerifyDeps,
  now: () => Date,
  c: Collected,
): Promise<LockExtension[]> {
  const { config, catalog, log } = deps;
  if (!config.keepLatestLocked) return [];
  const extensions = await extendLatestLocks({
    config,
    catalog,
    targets: deps.targets,
    log,
    ...(deps.job !== undefined ? { job: deps.job } : {}),
    ...(deps.signal ? { signal: deps.signal } : {}),
    now,
  });
  for (const e of extensions) {
    if (e.action !== "failed") continue;
    const tc = config.targets[e.target];
    c.report({
      kind: "lock-extension-failed",
      target: e.target,
      bucket: tc?.bucket ?? "",
      job: e.job,
      key: e.key,
      versionId: e.versionId,
      backupId: e.backupId,
      message: e.message,
    });
  }
  return extensions;
}

/**
 * Chains: a member that is missing, corrupt or unlocked (as this run found
 * it), or locked shorter than a later member of its chain, breaks every
 * restore point built on it; one finding per such member names them all.
 * Members without later points are left to their own findings.
 */
async function chainFindings(
  { config, catalog, job, targets }: VerifyDeps,
  due: readonly BackupRow[],
  now: Date,
): Promise<Finding[]> {
  const out: Finding[] = [];
  const dueIds = new Set(due.map((r) => r.id));
  const all = catalog.listBackups(job !== undefined ? { job } : {});
  const byId = new Map<number, BackupRow>(all.map((r) => [r.id, r]));
  const nodes = all as ChainNode[];
  for (const m of all) {
    if (!dueIds.has(m.id)) continue;
    const points = pointsBrokenBy(m, nodes).filter((p) => p.id !== m.id);
    if (points.length === 0) continue;
    let why: string | undefined;
    if (m.status === "missing" || m.status === "corrupt" || m.status === "unlocked")
      why = `is ${m.status}`;
    else {
      const until = m.retainUntil === null ? 0 : Date.parse(m.retainUntil);
      const needed = Math.max(
        ...points.map((p) => {
          const r = byId.get(p.id);
          return r?.retainUntil ? Date.parse(r.retainUntil) : 0;
        }),
      );
      if (until + TOLERANCE_MS < needed) {
        // Repaired where it can be (extend only): a point promoted to a longer tier,
        // or recovered after a crash, must not outlive the members it is built on.
        const target = targets[m.target];
        const mode = m.retentionMode ?? config.targets[m.target]?.retention.mode ?? "COMPLIANCE";
        const problem = target
          ? await extendMembers(
              [m],
              { mode, retainUntil: new Date(needed) },
              { catalog, target, now },
            )
          : "its target is not configured";
        if (problem)
          why = `is locked until ${m.retainUntil ?? "never"}, before the later members that need it (until ${new Date(needed).toISOString()}), and could not be extended: ${problem}`;
      }
    }
    if (!why) continue;
    const named = points.map((p) => `${p.key} (backup ${p.id}, ${p.createdAt})`).join(", ");
    const chain = chainOf(m, byId as ReadonlyMap<number, ChainNode>);
    out.push({
      kind: "chain-broken",
      target: m.target,
      bucket: config.targets[m.target]?.bucket ?? m.bucket,
      job: m.job,
      key: m.key,
      versionId: m.versionId,
      backupId: m.id,
      message: `chain member s3://${m.bucket}/${m.key} version ${m.versionId} (backup ${m.id}, member ${chain?.length ?? "?"} of chain ${m.chainId}) ${why}: ${points.length} later restore point${points.length === 1 ? "" : "s"} cannot be restored: ${named}`,
    });
  }
  return out;
}

/** Records the run in the catalog and logs its notes and summary. */
function recordRun(
  { catalog, log, reportShown }: VerifyDeps,
  r: VerifyReport,
  started: Date,
  finished: Date,
) {
  const { findings, warnings, notes, extensions } = r;
  catalog.recordVerifyRun({
    startedAt: started,
    finishedAt: finished,
    deep: r.deep,
    job: r.job,
    checked: r.checked,
    findings: findings.length,
    report: { findings, warnings, notes, expired: r.expired, extensions },
  });
  for (const n of notes) log[reportShown ? "debug" : "warn"](n);
  log.info(
    {
      checked: r.checked,
      findings: findings.length,
      expired: r.expired,
      deep: r.deepChecked.length,
      warnings: warnings.length,
      extended: extensions.filter((e) => e.action === "extended").length,
      durationMs: r.durationMs,
    },
    findings.length ? `verify found ${findings.length} problem(s)` : "verify found no problems",
  );
}

/** Bucket settings and lifecycle; returns whether the lifecycle could be read. */
async function checkBucket(
  tc: TargetConfig,
  target: Target,
  report: (f: Finding) => void,
  notes: string[],
  config?: Config,
): Promise<boolean> {
  const base = {
    target: tc.name,
    bucket: tc.bucket,
    job: null,
    key: null,
    versionId: null,
    backupId: null,
  };
  let state: BucketLockState;
  try {
    state = await readLockState(target);
  } catch (err) {
    report({
      ...base,
      kind: "bucket-unreadable",
      message: `cannot read the settings of bucket ${tc.bucket} (target ${tc.name}): ${describeError(err)}`,
    });
    return false;
  }
  for (const p of lockProblems(state, tc))
    report({ ...base, kind: p.kind, message: `${p.message}; ${p.fix}` });
  const rules = await readLifecycle(target);
  if (rules === undefined) {
    notes.push(
      `the lifecycle rules of bucket ${tc.bucket} (target ${tc.name}) were not checked: neither the reader nor an admin credential may read them${target.admin ? "" : " (no admin credential is configured)"}`,
    );
    return false;
  }
  for (const p of lifecycleProblems(rules, tc))
    report({ ...base, kind: p.kind, message: `${p.message}; ${p.fix}` });
  for (const message of config ? tierRuleFindings(config, tc, rules) : [])
    report({ ...base, kind: "lifecycle-tier-rule", message });
  return true;
}

/**
 * The bucket's lock settings with the reader, else the writer (some readers
 * have no bucket-level permissions): the same fallback as a backup's preflight.
 */
export function readLockState(target: Target): Promise<BucketLockState> {
  return withReadFallback(target, (s) => retry(() => s.lockState(), RetryPolicy.bucket));
}

/** The lifecycle rules with the reader, else admin; undefined if no credential may read them (Ceph RGW subusers cannot). */
export async function readLifecycle(target: Target) {
  for (const s of [target.reader, target.admin]) {
    if (!s) continue;
    try {
      return await retry(() => s.lifecycle(), RetryPolicy.bucket);
    } catch (err) {
      if (!isRefused(err)) throw err;
    }
  }
  return undefined;
}

/** What the server showed for one backup; `error` when HEAD failed. */
export interface Observed {
  size?: number;
  retention?: Retention | undefined;
  /** refusal: what was refused (the credential, a permission, the SSE-C key), when the answer tells. */
  error?: { status: number | undefined; message: string; refusal?: string };
  retentionError?: string;
}

/** End of a backup's configured period: created + the target's retention days (ms). */
export function configuredEnd(row: BackupRow, tc: TargetConfig): number {
  return configuredLock(new Date(row.createdAt), tc.retention).retainUntil.getTime();
}

/** The lock a catalog backup must have: its configured period or its keep-policy hold if longer, in the stricter of the recorded and configured modes. */
function requiredLock(row: BackupRow, tc: TargetConfig, hold?: Assignment): Retention {
  return {
    mode: stricterMode(row.retentionMode ?? tc.retention.mode, tc.retention.mode),
    retainUntil: new Date(Math.max(configuredEnd(row, tc), hold?.keepUntil.getTime() ?? 0)),
  };
}

/** Findings that mean the version is not locked as configured: verify locks it (extendRetention) and the catalog says "unlocked" until it is. */
const LOCK_KINDS: ReadonlySet<FindingKind> = new Set([
  "not-locked",
  "mode-weak",
  "retention-short",
]);

/**
 * Pure: the findings for one backup given what the server showed, and the
 * status the catalog should then hold: "unlocked" while its lock falls short
 * of the configured mode or period (whatever newer backups exist).
 */
export function judgeBackup(
  row: BackupRow,
  seen: Observed,
  tc: TargetConfig,
  hold?: Assignment,
): {
  findings: { kind: FindingKind; message: string }[];
  status: "ok" | "missing" | "unlocked" | undefined;
} {
  const what = `job ${row.job}: s3://${row.bucket}/${row.key} version ${row.versionId}`;
  const until = row.retainUntil ? ` (recorded as locked until ${row.retainUntil})` : "";
  if (seen.error) {
    const e = seen.error;
    if (e.status === 404) {
      return {
        findings: [{ kind: "missing", message: `${what} no longer exists on the server${until}` }],
        status: "missing",
      };
    }
    if (e.status === 400 || e.status === 403) {
      return {
        findings: [
          {
            kind: "unreadable",
            message: `${what}: ${e.refusal ?? `the server refuses to read it with its SSE-C key or this credential (HTTP ${e.status})`}: ${e.message}`,
          },
        ],
        status: undefined,
      };
    }
    return {
      findings: [{ kind: "check-failed", message: `${what}: could not be checked: ${e.message}` }],
      status: undefined,
    };
  }
  const out: { kind: FindingKind; message: string }[] = [];
  if (seen.size !== row.size) {
    out.push({
      kind: "size-mismatch",
      message: `${what} holds ${seen.size} bytes, the catalog recorded ${row.size}`,
    });
  }
  if (seen.retentionError !== undefined) {
    out.push({
      kind: "check-failed",
      message: `${what}: cannot read its retention: ${seen.retentionError}`,
    });
  } else if (!seen.retention) {
    out.push({
      kind: "not-locked",
      message: `${what} has no Object Lock retention: it can be deleted`,
    });
  } else {
    const r = seen.retention;
    const required = requiredLock(row, tc, hold);
    if (required.mode === "COMPLIANCE" && r.mode !== "COMPLIANCE") {
      out.push({
        kind: "mode-weak",
        message: `${what} is locked in ${r.mode} mode, not COMPLIANCE: users with the bypass permission can delete it`,
      });
    }
    if (row.retainUntil && r.retainUntil.getTime() < Date.parse(row.retainUntil) - TOLERANCE_MS) {
      out.push({
        kind: "retention-shortened",
        message: `${what} is locked until ${r.retainUntil.toISOString()}, earlier than the recorded ${row.retainUntil}`,
      });
    }
    if (r.retainUntil.getTime() < required.retainUntil.getTime() - LOCK_SLACK_MS) {
      out.push({
        kind: "retention-short",
        message: `${what} is locked until ${r.retainUntil.toISOString()}, short of its ${hold && hold.keepUntil.getTime() > configuredEnd(row, tc) ? `tiers (${hold.tiers.join(", ")})` : `configured ${tc.retention.days} days`} (until ${required.retainUntil.toISOString()}): it can be deleted early`,
      });
    }
  }
  // A retention that could not be read says nothing about the lock: only a missing version is back.
  if (seen.retentionError !== undefined)
    return { findings: out, status: row.status === "missing" ? "ok" : undefined };
  return { findings: out, status: out.some((f) => LOCK_KINDS.has(f.kind)) ? "unlocked" : "ok" };
}

async function checkBackup(
  row: BackupRow,
  tc: TargetConfig,
  target: Target,
  catalog: Catalog,
  log: Logger,
  now: Date,
  signal: AbortSignal | undefined,
  deep: boolean | undefined,
  masterKey: Buffer,
  hold?: Assignment,
): Promise<Finding[]> {
  const seen = await observe(row, target.reader, catalog, signal);
  const judged = judgeBackup(row, seen, tc, hold);
  let { findings, status } = judged;
  let locked: Retention | undefined;
  const heldUntil = Math.max(configuredEnd(row, tc), hold?.keepUntil.getTime() ?? 0);
  if (status === "unlocked" && heldUntil > now.getTime()) {
    const relocked = await relock(row, tc, target, catalog, seen, now, signal, hold);
    if (relocked.ok) status = "ok";
    locked = relocked.after;
    findings = findings.map((f) =>
      LOCK_KINDS.has(f.kind) ? { ...f, message: f.message + relocked.outcome } : f,
    );
  }
  // A deep run settles an unverified backup; until one does, it is a finding.
  if (row.status === "unverified" && !deep) {
    findings.push({
      kind: "unverified",
      message: `job ${row.job}: s3://${row.bucket}/${row.key} version ${row.versionId} was found by crash recovery and its SHA-256 is unknown; run immutd verify --deep --job ${row.job} to settle it`,
    });
  }
  recordObserved(row, catalog, log, status, seen.retention);
  if (!seen.error) {
    for (const message of (await checkKeepTag(row, target, hold, {
      deep: deep === true,
      catalog,
    })) ?? [])
      findings.push({ kind: "keep-tag", message });
  }
  findings.push(
    ...(await checkManifest(
      row,
      target,
      sseKeyFor(
        masterKey,
        row.bucket,
        row.manifestKey ?? "",
        schemeOf(catalog.backupKeyDerivation(row.id) ?? KEY_DERIVATION) ?? "sse-c",
      ),
      locked ?? seen.retention,
      now,
      signal,
    )),
  );
  return findings.map((f) => ({
    ...f,
    target: tc.name,
    bucket: row.bucket,
    job: row.job,
    key: row.key,
    versionId: row.versionId,
    backupId: row.id,
  }));
}

/** What the server shows for one backup: HEAD with its SSE-C key, then its retention. */
async function observe(
  row: BackupRow,
  reader: ObjectStore,
  catalog: Catalog,
  signal: AbortSignal | undefined,
): Promise<Observed> {
  const sseKey = storedSseKey(catalog.backupKey(row.id) as Buffer);
  const opts = withSignal(RetryPolicy.read, signal);
  const seen: Observed = {};
  try {
    seen.size = (await retry(() => reader.head(row.key, row.versionId, sseKey), opts)).size;
    try {
      seen.retention = await retry(() => reader.retention(row.key, row.versionId), opts);
    } catch (err) {
      seen.retentionError = describeError(err);
    }
  } catch (err) {
    if (signal?.aborted) throw new CancelledError("verify cancelled");
    const refusal = await explainReadRefusal(err, () => reader.retention(row.key, row.versionId));
    seen.error = {
      status: err instanceof StorageError ? err.status : undefined,
      message: describeError(err),
      ...(refusal ? { refusal: refusal.text } : {}),
    };
  }
  return seen;
}

/**
 * Locks an unlocked backup for its configured period now (extend-only);
 * `outcome` is the clause each lock finding gets, `after` the lock it has.
 */
async function relock(
  row: BackupRow,
  tc: TargetConfig,
  target: Target,
  catalog: Catalog,
  seen: Observed,
  now: Date,
  signal: AbortSignal | undefined,
  hold?: Assignment,
): Promise<{ ok: boolean; outcome: string; after: Retention | undefined }> {
  const lock = await lockAtLeast(target, row.key, row.versionId, requiredLock(row, tc, hold), {
    now,
    slackMs: LOCK_SLACK_MS,
    before: seen.retention,
    ...(signal ? { signal } : {}),
  });
  if (lock.changed && lock.after) {
    catalog.recordLockExtension({
      backupId: row.id,
      from: seen.retention?.retainUntil ?? null,
      to: lock.after.retainUntil,
      mode: lock.after.mode,
      at: now,
    });
  }
  const outcome = lock.problem
    ? `; locking it for its configured period failed: ${lock.problem}`
    : `; verify locked it ${lock.after?.mode} until ${lock.after?.retainUntil.toISOString()}`;
  return { ok: !lock.problem, outcome, after: lock.after };
}

/** The catalog follows what was seen: the status, and a retain-until the server extended. */
function recordObserved(
  row: BackupRow,
  catalog: Catalog,
  log: Logger,
  status: BackupRow["status"] | undefined,
  r: Retention | undefined,
): void {
  // An unverified backup's status is settled by the deep check alone.
  if (status !== undefined && status !== row.status && row.status !== "unverified") {
    catalog.setBackupStatus(row.id, status);
    if (status === "ok" && row.status === "missing") {
      log.warn(
        { job: row.job, key: row.key, versionId: row.versionId },
        "a backup recorded as missing is readable again",
      );
    }
  }
  if (
    r &&
    // A row recorded before its lock was read back (a kill in between) has none yet.
    (row.retainUntil === null ||
      r.retainUntil.getTime() > Date.parse(row.retainUntil) + TOLERANCE_MS)
  ) {
    catalog.adoptRetainUntil(row.id, r.retainUntil, r.mode);
  }
}

/**
 * The manifest beside a backup's archive: its recorded version must exist,
 * decode with the key derived for the manifest's key, name this archive version
 * with its size and SHA-256, and be locked at least as long as the archive
 * (verify extends it to that, extend-only). A newer version at the manifest's
 * key is a warning: the writer credential can add one, never remove or change
 * the recorded one. Backups from before manifests (no manifest key) have nothing
 * to check.
 */
async function checkManifest(
  row: BackupRow,
  target: Target,
  /** The manifest's SSE-C key (none for an age-only backup). */
  sseKey: Buffer | undefined,
  archiveLock: Retention | undefined,
  now: Date,
  signal: AbortSignal | undefined,
): Promise<{ kind: FindingKind; message: string }[]> {
  const key = row.manifestKey;
  if (key === null) return [];
  const what = `job ${row.job}: manifest s3://${row.bucket}/${key}`;
  const versionId = row.manifestVersionId;
  if (versionId === null) {
    return [
      {
        kind: "manifest",
        message: `${what} was not written when backup ${row.id} ran; the archive is restorable without it`,
      },
    ];
  }
  const out: { kind: FindingKind; message: string }[] = [];
  const opts = withSignal(RetryPolicy.read, signal);
  try {
    const body = await retry(
      async () => buffer(await target.reader.get(key, versionId, sseKey, signal ? { signal } : {})),
      opts,
    );
    const mismatch = manifestMismatch(decodeManifest(body), row);
    if (mismatch)
      out.push({
        kind: "manifest",
        message: `${what} version ${versionId} does not describe backup ${row.id}: ${mismatch}`,
      });
  } catch (err) {
    if (signal?.aborted) throw new CancelledError("verify cancelled");
    const gone = err instanceof StorageError && err.status === 404;
    return [
      {
        kind: "manifest",
        message: gone
          ? `${what} version ${versionId} no longer exists on the server`
          : `${what} version ${versionId} cannot be read: ${describeError(err)}`,
      },
    ];
  }
  if (archiveLock) {
    const lock = await lockAtLeast(target, key, versionId, archiveLock, {
      now,
      slackMs: LOCK_SLACK_MS,
      ...(signal ? { signal } : {}),
    });
    if (lock.problem || !lock.after)
      out.push({
        kind: "manifest",
        message: `${what} version ${versionId} is not locked as long as its archive (until ${archiveLock.retainUntil.toISOString()}): ${lock.problem ?? "it has no retention"}`,
      });
  }
  try {
    const latest = (await retry(() => target.reader.listVersions(key), RetryPolicy.bucket)).find(
      (v) => v.key === key && v.isLatest,
    );
    if (latest && latest.versionId !== versionId)
      out.push({
        kind: "manifest-replaced",
        message: `${what}: its latest ${latest.deleteMarker ? "is a delete marker" : `version ${latest.versionId} is not the recorded one`}; someone with write access wrote it. Version ${versionId}, the one immutd recorded, is intact`,
      });
  } catch (err) {
    out.push({
      kind: "check-failed",
      message: `${what}: its versions could not be listed: ${describeError(err)}`,
    });
  }
  return out;
}

/**
 * Downloads one backup and reads its archive to the end (restore's list mode),
 * then compares size and SHA-256 with the catalog. A mismatch, or an archive
 * that does not read although its bytes match, marks the backup corrupt.
 */
async function deepCheck(
  row: BackupRow,
  reader: ObjectStore,
  catalog: Catalog,
  log: Logger,
  signal: AbortSignal | undefined,
  onBytes?: (bytes: number) => void,
  identities?: readonly AgeIdentity[],
): Promise<{ result: DeepResult; finding?: Finding }> {
  const src = selectFromCatalog(catalog, row.job, { id: row.id });
  // An age backup without an identity: its stored bytes are all the host can check.
  const sealed = isAgeEncrypted(src.keyDerivation ?? KEY_DERIVATION) && !identities?.length;
  // Compared here rather than inside restore, to tell a changed object from an unreadable archive.
  const { size: _size, sha256: _sha, ...unchecked } = src;
  const started = Date.now();
  let entries = 0;
  const what = `job ${row.job}: s3://${row.bucket}/${row.key} version ${row.versionId}`;
  const base = {
    target: row.target,
    bucket: row.bucket,
    job: row.job,
    key: row.key,
    versionId: row.versionId,
    backupId: row.id,
  };
  const result = (ok: boolean, bytes: number): DeepResult => ({
    job: row.job,
    backupId: row.id,
    key: row.key,
    versionId: row.versionId,
    ok,
    bytes,
    entries,
    durationMs: Date.now() - started,
  });
  // An unverified backup (sha256 null) can only be held to its size, its key and a readable archive.
  const mismatch = (bytes: number, sha256: string): Finding | undefined =>
    bytes !== row.size || (row.sha256 !== null && sha256 !== row.sha256)
      ? {
          ...base,
          kind: "checksum-mismatch",
          message: `${what}: downloaded ${bytes} bytes with SHA-256 ${sha256}, the catalog recorded ${row.size} bytes with ${row.sha256}; marked corrupt`,
        }
      : undefined;
  if (row.sha256 === null && sealed)
    return {
      result: result(false, 0),
      finding: {
        ...base,
        kind: "unverified",
        message: `${what} was found by crash recovery and is age-encrypted: only reading it with an identity settles it (immutd verify --deep --identity FILE)`,
      },
    };
  if (row.sha256 === null) {
    const refused = await foreignVersion(row, reader, catalog, signal);
    if (refused) return { result: result(false, 0), finding: { ...base, ...refused } };
  }
  try {
    const s = sealed
      ? await restore(
          reader,
          storedBytes(unchecked as RestoreSource),
          { kind: "raw", out: sink() },
          {
            ...(signal ? { signal } : {}),
            ...(onBytes ? { onProgress: (p: { bytes: number }) => onBytes(p.bytes) } : {}),
          },
        )
      : await restore(
          reader,
          unchecked as RestoreSource,
          { kind: "list", onEntry: () => entries++ },
          {
            ...(signal ? { signal } : {}),
            ...(identities ? { identities } : {}),
            ...(onBytes ? { onProgress: (p: { bytes: number }) => onBytes(p.bytes) } : {}),
          },
        );
    const bad = mismatch(s.bytes, s.sha256);
    if (bad) {
      catalog.setBackupStatus(row.id, "corrupt");
      return { result: result(false, s.bytes), finding: bad };
    }
    if (row.sha256 === null) {
      catalog.settleUnverified(row.id, s.sha256);
      log.warn(
        { job: row.job, key: row.key, versionId: row.versionId, bytes: s.bytes, sha256: s.sha256 },
        "a backup found by crash recovery decrypts, has its size and reads to the end: recorded its SHA-256, now ok",
      );
      return { result: result(true, s.bytes) };
    }
    log.info(
      { job: row.job, key: row.key, versionId: row.versionId, bytes: s.bytes, entries },
      sealed
        ? "deep check passed: SHA-256 matches (age-encrypted, not read: no identity given)"
        : "deep check passed: SHA-256 matches and the archive reads to the end",
    );
    return { result: result(true, s.bytes) };
  } catch (err) {
    if (signal?.aborted) throw new CancelledError("verify cancelled");
    // The archive did not read: hash the raw bytes to tell corruption from a bad download.
    const raw = await rawDigest(reader, unchecked as RestoreSource, signal);
    if ("error" in raw) {
      return {
        result: result(false, 0),
        finding: {
          ...base,
          kind: "check-failed",
          message: `${what}: download failed: ${raw.error}`,
        },
      };
    }
    catalog.setBackupStatus(row.id, "corrupt");
    return {
      result: result(false, raw.bytes),
      finding: mismatch(raw.bytes, raw.sha256) ?? {
        ...base,
        kind: "archive-unreadable",
        message: `${what}: its bytes match the catalog, but the archive does not read to the end (${describeError(err)}); marked corrupt`,
      },
    };
  }
}

/**
 * The source read as the bytes the server stores (SSE-C undone by the server,
 * an age layer left as it is): what the recorded size and SHA-256 cover.
 */
function storedBytes(src: RestoreSource): RestoreSource {
  return { ...src, keyDerivation: KEY_DERIVATION };
}

/** The size and SHA-256 of a backup's decrypted bytes as stored, or why the download failed. */
async function rawDigest(
  reader: ObjectStore,
  src: RestoreSource,
  signal: AbortSignal | undefined,
): Promise<{ bytes: number; sha256: string } | { error: string }> {
  try {
    const raw = await restore(
      reader,
      storedBytes(src),
      { kind: "raw", out: sink() },
      signal ? { signal } : {},
    );
    return { bytes: raw.bytes, sha256: raw.sha256 };
  } catch (err) {
    if (signal?.aborted) throw new CancelledError("verify cancelled");
    return { error: describeError(err) };
  }
}

/**
 * The targets with readers whose listings under the target's prefix come from
 * one walk (src/store/shared-listing.ts): the manifest checks and hiddenBackups
 * read the same listing instead of one listing per manifest and another.
 */
function listedOnce(
  config: Config,
  targets: Readonly<Record<string, Target>>,
): Record<string, Target> {
  const out: Record<string, Target> = {};
  for (const [name, t] of Object.entries(targets)) {
    const tc = config.targets[name];
    out[name] = tc ? { ...t, reader: listOnce(t.reader, tc.prefix) } : t;
  }
  return out;
}

/**
 * Warnings for checked backups whose key's latest version is a delete marker:
 * Object Lock does not stop anyone with write access from adding one, so it
 * hides the backup from tools that look at "latest", while the pinned version
 * stays locked and restorable. One listing per target (under its prefix), with
 * the reader, shared with the manifest checks (listedOnce); a listing that
 * fails is a note.
 */
async function hiddenBackups(
  rows: readonly BackupRow[],
  config: Config,
  targets: Readonly<Record<string, Target>>,
  notes: string[],
  o: { now: Date; time?: PolicyTime },
): Promise<Finding[]> {
  const out: Finding[] = [];
  // A keep policy's tier rule expires a backup's current version once its hold
  // and the grace have passed (src/retention/lifecycle.ts): that marker is the
  // policy at work, not someone hiding it. Judged by the tag immutd recorded, so
  // a backup re-tagged shorter behind immutd's back still warns while it is early.
  const expiredByPolicy = (r: BackupRow, graceDays: number): boolean => {
    const days = r.keepTag ? expireAfterDays(r.keepTag, graceDays) : undefined;
    if (days === undefined) return false;
    const time = o.time ?? REAL_TIME;
    const due = toReal(
      time,
      new Date(toPolicy(time, new Date(r.createdAt)).getTime() + days * 86_400_000),
    );
    return due.getTime() <= o.now.getTime();
  };
  for (const name of new Set(rows.map((r) => r.target))) {
    const tc = config.targets[name] as TargetConfig;
    const target = targets[name] as Target;
    let hidden: Set<string>;
    try {
      const versions = await retry(() => target.reader.listVersions(tc.prefix), RetryPolicy.bucket);
      hidden = new Set(versions.filter((v) => v.deleteMarker && v.isLatest).map((v) => v.key));
    } catch (err) {
      notes.push(
        `delete markers in bucket ${tc.bucket} (target ${name}) were not checked: listing its versions failed: ${describeError(err)}`,
      );
      continue;
    }
    for (const r of rows) {
      if (r.target !== name || !hidden.has(r.key)) continue;
      if (expiredByPolicy(r, tc.lifecycleGraceDays)) continue;
      out.push({
        kind: "delete-marker",
        target: name,
        bucket: r.bucket,
        job: r.job,
        key: r.key,
        versionId: r.versionId,
        backupId: r.id,
        message: `job ${r.job}: s3://${r.bucket}/${r.key} has a delete marker on top: someone with write access (the writer credential, or a lifecycle rule) hid its latest version; version ${r.versionId} is still there and restorable by its version ID`,
      });
    }
  }
  return out;
}

/**
 * For a backup crash recovery found: a version that does not open with the key
 * immutd derives for its key, or is not SSE-C encrypted at all (Ceph RGW then
 * serves it in plain), was not written by immutd: marked corrupt. undefined if
 * it is encrypted with that key; a check-failed finding if the check itself
 * failed (a 403 may be this credential's permissions: it stays unverified).
 */
async function foreignVersion(
  row: BackupRow,
  reader: ObjectStore,
  catalog: Catalog,
  signal: AbortSignal | undefined,
): Promise<{ kind: FindingKind; message: string } | undefined> {
  const what = `job ${row.job}: s3://${row.bucket}/${row.key} version ${row.versionId}`;
  const sseKey = storedSseKey(catalog.backupKey(row.id) as Buffer);
  // age alone: the server holds no key to check, and anyone with the writer
  // credential can encrypt to public recipients, so only the deep check's
  // reading decides (with an identity).
  if (sseKey === undefined) return undefined;
  let encrypted: boolean;
  try {
    const opts = withSignal(RetryPolicy.read, signal);
    encrypted = (await retry(() => reader.head(row.key, row.versionId, sseKey), opts)).encrypted;
  } catch (err) {
    if (signal?.aborted) throw new CancelledError("verify cancelled");
    if (!(err instanceof StorageError && err.status === 400)) {
      return {
        kind: "check-failed",
        message: `${what}: could not be checked: ${describeError(err)}`,
      };
    }
    encrypted = false;
  }
  if (encrypted) return undefined;
  catalog.setBackupStatus(row.id, "corrupt");
  return {
    kind: "unreadable",
    message: `${what} was found by crash recovery but is not encrypted with the key immutd derives for it: immutd did not write it; marked corrupt`,
  };
}

function sink(): Writable {
  return new Writable({
    write(_chunk, _enc, cb) {
      cb();
    },
  });
}

export interface ExtendDeps {
  config: Config;
  catalog: Catalog;
  targets: Readonly<Record<string, Target>>;
  log: Logger;
  /** Only this job. */
  job?: string;
  signal?: AbortSignal;
  /** The clock; tests move it. */
  now?: () => Date;
}

/**
 * keepLatestLocked: when the retain-until of a configured job's newest good
 * backup is earlier than now + the target's retention days, moves it to that
 * plus one day (so a frequent verify extends at most once a day).
 * A newest backup whose lock already ran out (immutd was stopped too long) is
 * locked again if it still exists.
 * Never shortens (it compares with what the server reports first, and the
 * server refuses anyway), keeps the version's mode, and records every
 * extension in the catalog. Uses the writer credential (Ceph RGW lets its
 * write-only subuser set retention; on AWS it needs s3:PutObjectRetention),
 * falling back to admin if the writer is refused.
 */
export async function extendLatestLocks(deps: ExtendDeps): Promise<LockExtension[]> {
  const { config, catalog, log } = deps;
  const now = deps.now ?? (() => new Date());
  const out: LockExtension[] = [];
  for (const job of config.jobs) {
    if (deps.job !== undefined && job.name !== deps.job) continue;
    deps.signal?.throwIfAborted();
    // An expired newest backup still counts: if it still exists, locking it again is the point.
    const row = catalog
      .listBackups({ job: job.name })
      .filter((r) => r.status === "ok" || r.status === "expired")
      .at(-1);
    if (!row) continue;
    const tc = config.targets[row.target];
    const target = deps.targets[row.target];
    if (!tc || !target || tc.bucket !== row.bucket) continue;
    const e = await extendOne(row, tc, target, catalog, now(), deps.signal);
    out.push(e);
    const chained = await extendChainOf(row, e, tc, target, catalog, now());
    if (chained) out.push(chained);
    const fields = { job: e.job, key: e.key, versionId: e.versionId, from: e.from, to: e.to };
    if (e.action === "extended") log.info(fields, e.message);
    else if (e.action === "failed") log.error(fields, e.message);
    else log.debug(fields, e.message);
  }
  return out;
}

/**
 * keepLatestLocked keeps the whole newest chain locked: every earlier member
 * of the newest backup's chain is extended (extend only) to its retain-until.
 * A failure is returned as a failed extension; undefined when there is
 * nothing to do or all went well.
 */
async function extendChainOf(
  row: BackupRow,
  e: LockExtension,
  tc: TargetConfig,
  target: Target,
  catalog: Catalog,
  now: Date,
): Promise<LockExtension | undefined> {
  if (row.parentId === null || e.action === "failed" || e.to === null) return undefined;
  const byId = new Map<number, BackupRow>(
    catalog.listBackups({ job: row.job }).map((r) => [r.id, r]),
  );
  const chain = chainOf(row, byId as ReadonlyMap<number, ChainNode>);
  const members = (chain ?? []).slice(0, -1).map((n) => byId.get(n.id) as BackupRow);
  if (members.length === 0) return undefined;
  const mode = catalog.backup(row.id)?.retentionMode ?? tc.retention.mode;
  const problem = await extendMembers(
    members,
    { mode, retainUntil: new Date(e.to) },
    { catalog, target, now },
  );
  if (!problem) return undefined;
  const first = members[0] as BackupRow;
  return {
    job: row.job,
    target: tc.name,
    backupId: first.id,
    key: first.key,
    versionId: first.versionId,
    action: "failed",
    from: null,
    to: e.to,
    message: `cannot extend the earlier members of the newest backup's chain to ${e.to}: ${problem}`,
  };
}

async function extendOne(
  row: BackupRow,
  tc: TargetConfig,
  target: Target,
  catalog: Catalog,
  now: Date,
  signal: AbortSignal | undefined,
): Promise<LockExtension> {
  const base = {
    job: row.job,
    target: tc.name,
    backupId: row.id,
    key: row.key,
    versionId: row.versionId,
  };
  const what = `s3://${row.bucket}/${row.key} version ${row.versionId}`;
  const opts = withSignal(RetryPolicy.read, signal);
  const { needed, extendTo: wanted } = lockTarget(now, tc.retention.days);
  let current: Retention | undefined;
  try {
    current = await retry(() => target.reader.retention(row.key, row.versionId), opts);
  } catch (err) {
    return {
      ...base,
      action: "failed",
      from: null,
      to: null,
      message: `cannot read the retention of ${what} to extend it: ${describeError(err)}`,
    };
  }
  const from = current?.retainUntil.toISOString() ?? null;
  if (current && current.retainUntil.getTime() >= needed.getTime()) {
    catalog.adoptRetainUntil(row.id, current.retainUntil, current.mode);
    const failed = await extendManifest(row, target, current, now, signal);
    if (failed) return { ...base, action: "failed", from, to: from, message: failed };
    return {
      ...base,
      action: "unchanged",
      from,
      to: from,
      message: `newest backup already locked until ${from}, at least ${tc.retention.days} days ahead`,
    };
  }
  // Keep the version's mode here: a weak mode is judgeBackup's finding, and its
  // repair (checkBackup) is where the raise to COMPLIANCE is tried.
  const mode = current?.mode ?? tc.retention.mode;
  const lock = await lockAtLeast(
    target,
    row.key,
    row.versionId,
    { mode, retainUntil: wanted },
    { now, before: current, ...(signal ? { signal } : {}) },
  );
  const after = lock.after;
  if (lock.problem || !after) {
    return {
      ...base,
      action: "failed",
      from,
      to: after?.retainUntil.toISOString() ?? null,
      message: `cannot extend the retention of ${what} from ${from ?? "none"} to ${wanted.toISOString()}: ${lock.problem ?? "it has no retention"}`,
    };
  }
  catalog.recordLockExtension({
    backupId: row.id,
    from: current?.retainUntil ?? null,
    to: after.retainUntil,
    mode: after.mode,
    at: now,
  });
  if (row.status === "expired") catalog.setBackupStatus(row.id, "ok");
  const failed = await extendManifest(row, target, after, now, signal);
  if (failed)
    return {
      ...base,
      action: "failed",
      from,
      to: after.retainUntil.toISOString(),
      message: failed,
    };
  return {
    ...base,
    action: "extended",
    from,
    to: after.retainUntil.toISOString(),
    message: `newest backup's lock extended from ${from ?? "none"} to ${after.retainUntil.toISOString()}`,
  };
}

/** Locks a backup's manifest (if it has one) at least as long as its archive; the problem as a phrase, undefined if locked. */
async function extendManifest(
  row: BackupRow,
  target: Target,
  archiveLock: Retention,
  now: Date,
  signal: AbortSignal | undefined,
): Promise<string | undefined> {
  if (row.manifestKey === null || row.manifestVersionId === null) return undefined;
  const lock = await lockAtLeast(target, row.manifestKey, row.manifestVersionId, archiveLock, {
    now,
    slackMs: LOCK_SLACK_MS,
    ...(signal ? { signal } : {}),
  });
  if (!lock.problem && lock.after) return undefined;
  return `cannot extend the retention of manifest s3://${row.bucket}/${row.manifestKey} version ${row.manifestVersionId} to ${archiveLock.retainUntil.toISOString()} with its archive's: ${lock.problem ?? "it has no retention"}`;
}
