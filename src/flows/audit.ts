/**
 * The auditor: `immutd audit` and the daemon's `audit.schedule`. It runs on a
 * machine of its own with the reader credential and the master key, and judges
 * every host's backups from the bucket alone, so that a host an attacker owns
 * (whose catalog and `verify` he controls) cannot make it lie.
 *
 * For every host and job under the target's prefix (src/repo/snapshots.ts) it checks:
 * - each manifest: it decodes with the key derived for it, names the archive,
 *   host and job its key says (a finding `manifest-invalid` otherwise); a later
 *   version at its key (`manifest-forged`) or a delete marker on it
 *   (`manifest-hidden`) means someone with write access tampered with it;
 * - each backup still inside its configured period (created + the target's
 *   retention days): its archive version exists (`missing`), has the size the
 *   manifest names (`size-mismatch`), opens with its SSE-C key (`unreadable`),
 *   and is locked (`not-locked`, `mode-weak`, `retention-short`); a reader that
 *   may not read retention gets one `lock-unreadable` per job naming the permission;
 * - the newest backup whose archive checked out: not too old (`too-old`, see maxAgeMs).
 * A request that fails after its retries is `check-failed`: never silence, never "ok".
 *
 * The auditor trusts only the bucket's versions: the oldest version at a
 * manifest key is the one immutd wrote (snapshots.ts), and a manifest counts
 * only as far as its archive version exists with its size.
 */

import {
  type AuditConfig,
  type Config,
  DEFAULTS,
  type EncryptionScheme,
  encryptionOf,
  type TargetConfig,
} from "../config/config.js";
import { nextRun } from "../config/schedule.js";
import { CancelledError, describeError, explainReadRefusal, StorageError } from "../errors.js";
import { schemeOf, sseKeyFor } from "../pipeline/cipher.js";
import type { Manifest } from "../repo/manifest.js";
import {
  isGone,
  listBucket,
  ManifestError,
  type ManifestKey,
  readManifest,
  schemeOption,
} from "../repo/snapshots.js";
import { configuredLock, LOCK_SLACK_MS, lockShortfall } from "../retention/bucket-check.js";
import { mapLimit } from "../store/parallel.js";
import { retry } from "../store/retry.js";
import { S3Store } from "../store/s3.js";
import type { ObjectStore, Retention } from "../store/store.js";

export type AuditKind =
  | "too-old"
  | "missing"
  | "size-mismatch"
  | "unreadable"
  | "not-locked"
  | "mode-weak"
  | "retention-short"
  | "lock-unreadable"
  | "manifest-invalid"
  | "manifest-forged"
  | "manifest-hidden"
  | "check-failed";

export interface AuditFinding {
  kind: AuditKind;
  /** null only when the listing itself failed. */
  host: string | null;
  job: string | null;
  key: string | null;
  versionId: string | null;
  message: string;
}

/** What the auditor saw of one host's job. */
export interface AuditJob {
  host: string;
  job: string;
  /** Manifest keys found (each one backup). */
  backups: number;
  /** Creation time of the newest backup whose archive checked out; null if none did. */
  newest: string | null;
  /** The schedule that newest backup's manifest recorded (null: manual; undefined: not recorded). */
  schedule?: string | null;
  /** When the newest backup becomes too old (ISO); null when its age is not judged. */
  dueBy: string | null;
  findings: number;
}

export interface AuditReport {
  target: string;
  bucket: string;
  prefix: string;
  at: string;
  jobs: AuditJob[];
  findings: AuditFinding[];
  /** Things that are not findings (e.g. a job whose age is not judged). */
  notes: string[];
}

export interface AuditDeps {
  target: TargetConfig;
  /** Opened with the reader credential. */
  reader: ObjectStore;
  masterKey: Buffer;
  audit: AuditConfig;
  /** HEAD/GetObjectRetention requests at a time. */
  concurrency: number;
  now?: () => Date;
  signal?: AbortSignal;
  /** Called with each finding as it is found (the daemon logs them). */
  onFinding?: (f: AuditFinding) => void;
  /** The scheme configured for a job on this target: an age-only manifest is read without a key. */
  schemeOf?: (job: string) => EncryptionScheme;
}

/**
 * Audits the given targets of a config (each with a client of its reader
 * credential, closed afterwards), with the config's audit settings or their
 * defaults. The CLI and the daemon both run this.
 */
export async function auditTargets(
  config: Config,
  targets: readonly TargetConfig[],
  o: Pick<AuditDeps, "signal" | "onFinding" | "now"> & {
    /** Replaces the S3 reader (tests). */
    openReader?: (tc: TargetConfig) => ObjectStore;
  } = {},
): Promise<AuditReport[]> {
  const reports: AuditReport[] = [];
  for (const tc of targets) {
    const reader =
      o.openReader?.(tc) ??
      new S3Store(tc, tc.credentials.reader, { parallel: config.verify.concurrency });
    try {
      reports.push(
        await runAudit({
          ...o,
          target: tc,
          reader,
          masterKey: config.masterKey.reveal(),
          schemeOf: (job) => encryptionOf(config.jobs.find((j) => j.name === job) ?? {}, tc).scheme,
          audit: config.audit ?? { slackMinutes: DEFAULTS.auditSlackMinutes, overrides: [] },
          concurrency: config.verify.concurrency,
        }),
      );
    } finally {
      (reader as { client?: { destroy(): void } }).client?.destroy();
    }
  }
  return reports;
}

const RETRY = { attempts: 4, lagAttempts: 2, baseMs: 250 };
const HOUR_MS = 3_600_000;

/** One manifest key's result: its findings and, if its archive checked out, its backup. */
interface Checked {
  findings: AuditFinding[];
  good?: { createdAt: Date; manifest: Manifest };
  /** A manifest that decoded and fits its key, but is past its configured period (its archive was not checked). */
  expired?: { createdAt: Date; manifest: Manifest };
  /** Retention could not be read for lack of permission: reported once per job. */
  lockRefused?: string;
}

export async function runAudit(deps: AuditDeps): Promise<AuditReport> {
  const { target: tc, reader, signal } = deps;
  const now = (deps.now ?? (() => new Date()))();
  const report: AuditReport = {
    target: tc.name,
    bucket: tc.bucket,
    prefix: tc.prefix,
    at: now.toISOString(),
    jobs: [],
    findings: [],
    notes: [],
  };
  const add = (f: AuditFinding) => {
    report.findings.push(f);
    deps.onFinding?.(f);
  };
  let keys: ManifestKey[];
  try {
    const listed = await listBucket(reader, tc.prefix, {}, signal, now);
    keys = listed.manifests;
    for (const p of listed.planted)
      add({
        kind: "manifest-forged",
        host: p.host,
        job: p.job,
        key: p.key,
        versionId: p.versionId,
        message: `host ${p.host} job ${p.job}: s3://${tc.bucket}/${p.key} version ${p.versionId} is dated ${p.createdAt.toISOString()}, in the future: immutd names keys when a run starts, so someone with write access planted it to pose as the newest backup; it is not believed`,
      });
  } catch (err) {
    if (signal?.aborted) throw new CancelledError("audit cancelled");
    add({
      kind: "check-failed",
      host: null,
      job: null,
      key: null,
      versionId: null,
      message: `target ${tc.name}: cannot list s3://${tc.bucket}/${tc.prefix} with the reader credential, nothing was audited: ${describeError(err)}`,
    });
    return report;
  }
  const checked = new Map<ManifestKey, Checked>();
  await mapLimit(keys, deps.concurrency, signal, async (m) => {
    checked.set(m, await checkBackup(deps, m, now));
  });
  if (signal?.aborted) throw new CancelledError("audit cancelled");

  const groups = new Map<string, ManifestKey[]>();
  for (const m of keys) {
    const id = `${m.host}/${m.job}`;
    const list = groups.get(id);
    if (list) list.push(m);
    else groups.set(id, [m]);
  }
  for (const o of deps.audit.overrides) {
    if (o.job !== undefined && o.maxAgeHours !== null && !groups.has(`${o.host}/${o.job}`))
      groups.set(`${o.host}/${o.job}`, []);
  }
  for (const [id, list] of groups) {
    const [host, job] = id.split("/") as [string, string];
    const before = report.findings.length;
    let refused: string | undefined;
    for (const m of list) {
      const c = checked.get(m) as Checked;
      for (const f of c.findings) add(f);
      refused ??= c.lockRefused;
    }
    if (refused !== undefined) {
      add({
        kind: "lock-unreadable",
        host,
        job,
        key: null,
        versionId: null,
        message: `host ${host} job ${job}: the reader credential may not read retention (s3:GetObjectRetention), so no lock was checked: ${refused}`,
      });
    }
    // Sorted newest first (listManifests): the first that checked out is the newest backup.
    const good = list.map((m) => checked.get(m)?.good).find((g) => g !== undefined);
    // With no backup inside its period, the newest one past it still says how
    // often the job ran and when it last did: a job that stopped long ago must
    // not read as fine once its last backups leave their period.
    const newest = good ?? list.map((m) => checked.get(m)?.expired).find((g) => g !== undefined);
    const limit = maxAge(deps.audit, host, job, newest?.manifest);
    const dueBy = newest && limit ? limit(newest.createdAt) : null;
    if (!newest && limit) {
      add({
        kind: "too-old",
        host,
        job,
        key: null,
        versionId: null,
        message: `host ${host} job ${job}: no backup whose archive checks out (${list.length} manifests found)`,
      });
    } else if (newest && dueBy && dueBy.getTime() < now.getTime()) {
      add({
        kind: "too-old",
        host,
        job,
        key: newest.manifest.archive.key,
        versionId: newest.manifest.archive.versionId,
        message: `host ${host} job ${job}: the newest backup is from ${newest.createdAt.toISOString()}, older than allowed (due by ${dueBy.toISOString()}, ${limit?.why})${good ? "" : `, and past the target's ${tc.retention.days}-day retention`}: backups have stopped`,
      });
    } else if (!limit) {
      report.notes.push(
        `host ${host} job ${job}: its age is not judged (its newest manifest records no schedule and audit sets no maxAgeHours for it)`,
      );
    }
    report.jobs.push({
      host,
      job,
      backups: list.length,
      newest: newest ? newest.createdAt.toISOString() : null,
      ...(newest && newest.manifest.schedule !== undefined
        ? { schedule: newest.manifest.schedule }
        : {}),
      dueBy: dueBy ? dueBy.toISOString() : null,
      findings: report.findings.length - before,
    });
  }
  report.jobs.sort((a, b) => (a.host + a.job < b.host + b.job ? -1 : 1));
  return report;
}

/**
 * When a job's newest backup becomes too old, as a function of its creation
 * time, with a phrase saying why; undefined when its age is not judged.
 * In order: an override for the host and job, one for the host, the schedule
 * its manifest recorded (too old = past the second scheduled time after it,
 * plus audit.slackMinutes: one missed run is tolerated, two are not; capped
 * by audit.maxAgeHours when that is set), audit.maxAgeHours. Pure.
 */
export function maxAge(
  audit: AuditConfig,
  host: string,
  job: string,
  manifest: Pick<Manifest, "schedule" | "timezone"> | undefined,
): { (createdAt: Date): Date; why: string } | undefined {
  const o =
    audit.overrides.find((x) => x.host === host && x.job === job) ??
    audit.overrides.find((x) => x.host === host && x.job === undefined);
  const hours = (h: number, why: string) =>
    Object.assign((c: Date) => new Date(c.getTime() + h * HOUR_MS), { why });
  if (o)
    return o.maxAgeHours === null
      ? undefined
      : hours(o.maxAgeHours, `override maxAgeHours ${o.maxAgeHours}`);
  const schedule = manifest?.schedule;
  if (typeof schedule === "string") {
    const tz = manifest?.timezone !== undefined ? { timezone: manifest.timezone } : {};
    const slack = audit.slackMinutes * 60_000;
    // The schedule comes from the host's own manifests, which a host an
    // attacker owns can write with a cron that rarely fires: the auditor's
    // own maxAgeHours, when set, caps what the schedule allows.
    const cap = audit.maxAgeHours;
    return Object.assign(
      (c: Date) => {
        const first = nextRun({ schedule, ...tz }, c);
        const second = first ? nextRun({ schedule, ...tz }, first) : null;
        // A schedule that never fires again: the backup cannot become overdue.
        const due = (second ?? new Date(8.64e15)).getTime() + slack;
        return new Date(cap === undefined ? due : Math.min(due, c.getTime() + cap * HOUR_MS));
      },
      {
        why: `two runs of schedule "${schedule}" plus ${audit.slackMinutes} minutes${cap === undefined ? "" : `, at most audit.maxAgeHours ${cap}`}`,
      },
    );
  }
  if (audit.maxAgeHours !== undefined)
    return hours(audit.maxAgeHours, `audit.maxAgeHours ${audit.maxAgeHours}`);
  return undefined;
}

async function checkBackup(deps: AuditDeps, m: ManifestKey, now: Date): Promise<Checked> {
  const { target: tc, reader, masterKey, signal } = deps;
  const findings: AuditFinding[] = [];
  const where = `host ${m.host} job ${m.job}: manifest s3://${tc.bucket}/${m.key}`;
  const finding = (
    kind: AuditKind,
    message: string,
    key = m.key,
    versionId = m.version.versionId,
  ) => findings.push({ kind, host: m.host, job: m.job, key, versionId, message });
  if (m.hidden)
    finding(
      "manifest-hidden",
      `${where} is hidden behind a delete marker (someone with write access put it there; version ${m.version.versionId} is still there)`,
    );
  if (m.extra.length > 0)
    finding(
      "manifest-forged",
      `${where} has ${m.extra.length} later version(s) (${m.extra.map((v) => v.versionId).join(", ")}) that immutd never writes: forged by someone with write access; the audit reads version ${m.version.versionId}`,
    );
  if (m.tied.length > 0)
    finding(
      "manifest-forged",
      `${where} has ${m.tied.length + 1} versions stored at the same moment (${[m.version, ...m.tied].map((v) => v.versionId).join(", ")}); immutd writes one, so someone with write access wrote the others, and which is immutd's cannot be told`,
    );
  const opts = { ...RETRY, ...(signal ? { signal } : {}) };
  let manifest: Manifest;
  try {
    manifest = await readManifest(
      reader,
      tc.bucket,
      masterKey,
      { ...m, versionId: m.version.versionId },
      { ...(signal ? { signal } : {}), ...schemeOption(undefined, deps.schemeOf?.(m.job)) },
    );
  } catch (err) {
    if (signal?.aborted) throw new CancelledError("audit cancelled");
    const text = describeError(err);
    if (isGone(err))
      finding("missing", `${where} version ${m.version.versionId} no longer exists: ${text}`);
    else if (err instanceof StorageError)
      finding("check-failed", `${where} version ${m.version.versionId} could not be read: ${text}`);
    else if (err instanceof ManifestError && err.reason === "misplaced")
      finding(
        "manifest-invalid",
        `host ${m.host} job ${m.job}: does not belong at its key: ${text}`,
      );
    else
      finding(
        "manifest-invalid",
        `${where} version ${m.version.versionId} is not a valid manifest: ${err instanceof ManifestError ? err.detail : text}`,
      );
    return { findings };
  }
  const created = new Date(manifest.createdAt);
  const wanted = configuredLock(created, tc.retention);
  // Past its configured period a version may have gone legitimately (lifecycle).
  if (wanted.retainUntil.getTime() <= now.getTime())
    return { findings, expired: { createdAt: created, manifest } };
  const { key, versionId, size } = manifest.archive;
  const what = `host ${m.host} job ${m.job}: s3://${tc.bucket}/${key} version ${versionId}`;
  // The scheme the manifest names: an age-only archive is stored without SSE-C.
  const sseKey = sseKeyFor(
    masterKey,
    tc.bucket,
    key,
    schemeOf(manifest.encryption.keyDerivation) ?? "sse-c",
  );
  try {
    const seen = await retry(() => reader.head(key, versionId, sseKey), opts);
    if (sseKey && !seen.encrypted) {
      // Some servers (RGW 16) serve a plain object whatever SSE-C headers the request carries.
      finding(
        "unreadable",
        `${what} is not SSE-C encrypted: immutd never stores a version so, so someone with write access wrote the version its manifest names`,
        key,
        versionId,
      );
      return { findings };
    }
    if (seen.size !== size) {
      finding(
        "size-mismatch",
        `${what} holds ${seen.size} bytes, its manifest says ${size}`,
        key,
        versionId,
      );
      return { findings };
    }
  } catch (err) {
    if (signal?.aborted) throw new CancelledError("audit cancelled");
    if (isGone(err)) {
      finding(
        "missing",
        `${what} no longer exists, though its configured period runs until ${wanted.retainUntil.toISOString()} (its manifest version ${m.version.versionId} names it)`,
        key,
        versionId,
      );
    } else {
      const refusal = await explainReadRefusal(err, () => reader.retention(key, versionId));
      const kind = refusal ? "unreadable" : "check-failed";
      finding(
        kind,
        `${what} could not be checked: ${refusal?.text ?? describeError(err)}`,
        key,
        versionId,
      );
    }
    return { findings };
  }
  let lock: Retention | undefined;
  try {
    lock = await retry(() => reader.retention(key, versionId), opts);
  } catch (err) {
    if (signal?.aborted) throw new CancelledError("audit cancelled");
    if (err instanceof StorageError && err.status === 403)
      return { findings, good: { createdAt: created, manifest }, lockRefused: describeError(err) };
    finding(
      "check-failed",
      `${what}: cannot read its retention: ${describeError(err)}`,
      key,
      versionId,
    );
    return { findings, good: { createdAt: created, manifest } };
  }
  const short = lockShortfall(lock, wanted, LOCK_SLACK_MS);
  if (short !== undefined) {
    const kind: AuditKind = !lock
      ? "not-locked"
      : wanted.mode === "COMPLIANCE" && lock.mode !== "COMPLIANCE"
        ? "mode-weak"
        : "retention-short";
    finding(
      kind,
      `${what} is not locked for target ${tc.name}'s ${tc.retention.mode} ${tc.retention.days} days: ${short}`,
      key,
      versionId,
    );
  }
  return { findings, good: { createdAt: created, manifest } };
}
