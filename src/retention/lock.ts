/**
 * Making one version locked at least as asked, extend-only: read its retention,
 * decide what to change (src/retention/bucket-check.ts, pure), set it with
 * PutObjectRetention, read it back. Used for every new backup (Ceph RGW 16
 * ignores Object Lock headers on multipart uploads, so a version otherwise gets
 * whatever the bucket default is at that moment, which anyone able to change the
 * bucket's lock configuration can have shortened, switched to GOVERNANCE or
 * removed), by verify for backups locked shorter than configured, and by
 * keepLatestLocked.
 *
 * Never shortens: the request is the later date and the stricter mode of what
 * the server reports and what is asked, and the server refuses to shorten
 * COMPLIANCE anyway. The writer sets it (Ceph RGW's write-only subuser may; on
 * AWS it needs s3:PutObjectRetention), the admin credential only where the
 * writer is refused. Some providers answer AccessDenied or NoSuchKey for a
 * moment right after an upload or a retention change, so every call retries
 * those with backoff before the lock counts as failed.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { describeError } from "../errors.js";
import { isRefused, withReadFallback } from "../store/fallback.js";
import { type RetryOptions, retry } from "../store/retry.js";
import type { ObjectStore, Retention, Target } from "../store/store.js";
import { lockRequest, lockShortfall } from "./bucket-check.js";

export interface LockOutcome {
  /** The retention the server reported before (undefined: none). */
  before: Retention | undefined;
  /** The retention it reports now. */
  after: Retention | undefined;
  /** True if immutd set a retention. */
  changed: boolean;
  /** Why the version is not locked as asked, as a phrase; undefined when it is. */
  problem?: string;
}

export interface LockOptions {
  now: Date;
  /** Attempts for each call on a 403/404 (a provider's lag) and on transient errors. */
  attempts?: number;
  baseMs?: number;
  signal?: AbortSignal;
  /** The retention already read, to save a request. */
  before?: Retention | undefined;
  /** How much shorter than `wanted` an existing retention may be and still do (LOCK_SLACK_MS; default: rounding only). */
  slackMs?: number;
}

/** Makes key@versionId locked at least as strictly and as long as `wanted`. Never throws for a refusal: it reports it. */
export async function lockAtLeast(
  target: Target,
  key: string,
  versionId: string,
  wanted: Retention,
  o: LockOptions,
): Promise<LockOutcome> {
  const opts: RetryOptions = {
    attempts: o.attempts ?? 4,
    lagAttempts: o.attempts ?? 4,
    baseMs: o.baseMs ?? 250,
    ...(o.signal ? { signal: o.signal } : {}),
  };
  let before: Retention | undefined;
  try {
    before = "before" in o ? o.before : await readRetention(target, key, versionId, opts);
  } catch (err) {
    return {
      before: undefined,
      after: undefined,
      changed: false,
      problem: `cannot read its retention: ${describeError(err)}`,
    };
  }
  const req = lockRequest(before, wanted, o.now, o.slackMs);
  if (!req) return { before, after: before, changed: false };
  const asked = `${req.retention.mode} until ${req.retention.retainUntil.toISOString()}`;
  try {
    await withSetter(target, (s) =>
      retry(
        () =>
          s.extendRetention(key, versionId, req.retention, {
            upgradeGovernance: req.upgradeGovernance,
          }),
        opts,
      ),
    );
  } catch (err) {
    return {
      before,
      after: before,
      changed: false,
      problem: `setting its retention to ${asked} failed: ${describeError(err)}`,
    };
  }
  // Read back: some providers show a new retention only after a moment.
  let after: Retention | undefined;
  let readError: unknown;
  const reads = o.attempts ?? 4;
  for (let i = 1, delay = opts.baseMs; ; i++, delay *= 2) {
    try {
      after = await readRetention(target, key, versionId, opts);
      readError = undefined;
      if (lockShortfall(after, req.retention) === undefined) break;
    } catch (err) {
      readError = err;
    }
    if (i >= reads) break;
    await sleep(delay);
  }
  if (readError !== undefined) {
    return {
      before,
      after: undefined,
      changed: true,
      problem: `the server accepted ${asked}, but reading it back failed: ${describeError(readError)}`,
    };
  }
  const short = lockShortfall(after, wanted, o.slackMs);
  return {
    before,
    after,
    changed: true,
    ...(short
      ? {
          problem: `the server accepted ${asked}, but reports ${after ? `${after.mode} until ${after.retainUntil.toISOString()}` : "no retention"}`,
        }
      : {}),
  };
}

/** The version's retention with the reader, else the writer where the reader is refused. */
export async function readRetention(
  target: Target,
  key: string,
  versionId: string,
  opts: RetryOptions,
): Promise<Retention | undefined> {
  return withReadFallback(target, (s) => retry(() => s.retention(key, versionId), opts));
}

/** Runs a retention change with the writer, then the admin credential if the writer is refused (403). */
async function withSetter(target: Target, fn: (s: ObjectStore) => Promise<void>): Promise<void> {
  const setters = [target.writer, ...(target.admin ? [target.admin] : [])];
  let lastError: unknown;
  for (const s of setters) {
    try {
      await fn(s);
      return;
    } catch (err) {
      lastError = err;
      if (!isRefused(err)) break;
    }
  }
  throw lastError;
}
