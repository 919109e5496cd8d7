/**
 * Retrying a storage call with exponential backoff, for the answers that can
 * change by themselves: network and 5xx failures, and the AccessDenied or
 * NoSuchKey some providers give for a while after an upload or a retention
 * change (shared/S3-PITFALLS.md 10). Callers say which errors are worth another
 * try; everything else is thrown at once.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { StorageError } from "./errors.js";

export interface RetryOptions {
  /** Total attempts for transient errors (network, 5xx, throttling). */
  attempts: number;
  /** Total attempts for the "may lag" answers: 403 and 404. Default 1 (no retry). */
  lagAttempts?: number;
  /** First delay; doubled after each attempt. */
  baseMs: number;
  signal?: AbortSignal;
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
