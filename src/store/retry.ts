/**
 * Retrying a storage call with exponential backoff, for the answers that can
 * change by themselves: network and 5xx failures, and the AccessDenied or
 * NoSuchKey some providers give for a while after an upload or a retention
 * change (shared/S3-PITFALLS.md 10). Callers say which errors are worth another
 * try; everything else is thrown at once.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { StorageError } from "../errors.js";

export interface RetryOptions {
  /** Total attempts for transient errors (network, 5xx, throttling). */
  attempts: number;
  /** Total attempts for the "may lag" answers: 403 and 404. Default 1 (no retry). */
  lagAttempts?: number;
  /** First delay; doubled after each attempt. */
  baseMs: number;
  signal?: AbortSignal;
}

/**
 * The named policies every caller picks from, so that "how hard do we try"
 * is decided here and reads the same everywhere. Each is a total number of
 * attempts, the first delay 250 ms, doubled after each attempt.
 */
export const RetryPolicy = {
  /**
   * Reading objects and versions that exist (verify, recovery, manifests):
   * transient errors get four attempts; a 403 or 404 one more, since some
   * providers answer so for a moment after an upload or a retention change.
   */
  read: { attempts: 4, lagAttempts: 2, baseMs: 250 },
  /** Bucket settings and listings: a 403 there is a permission, not a lag, so it is not retried. */
  bucket: { attempts: 4, baseMs: 250 },
  /**
   * Bucket settings just written or just created (init): every attempt also
   * for a 403 or 404, since a new bucket may not be visible everywhere yet.
   */
  settle: { attempts: 4, lagAttempts: 4, baseMs: 250 },
  /** Doctor's canary: a few quick tries, lag included; doctor reports what still fails. */
  probe: { attempts: 3, lagAttempts: 3, baseMs: 250 },
} as const satisfies Record<string, RetryOptions>;

/** A policy that also stops at `signal` (cancellation); the policy itself where there is none. */
export function withSignal(policy: RetryOptions, signal: AbortSignal | undefined): RetryOptions {
  return signal ? { ...policy, signal } : policy;
}

export async function retry<T>(fn: () => Promise<T>, o: RetryOptions): Promise<T> {
  let delay = o.baseMs;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      const lag = err instanceof StorageError && (err.status === 403 || err.status === 404);
      const transient = err instanceof StorageError && err.transient;
      const limit = transient ? o.attempts : lag ? (o.lagAttempts ?? 1) : 1;
      if (attempt >= limit || o.signal?.aborted) throw err;
      await sleep(delay, undefined, o.signal ? { signal: o.signal } : {}).catch(() => {
        throw err;
      });
      delay *= 2;
    }
  }
}
