/**
 * Storage calls over many objects, a bounded number at a time (verify's,
 * rebuild's and the audit's HEADs and GETs).
 */
import { CancelledError } from "../errors.js";

/** Runs fn over items with at most `limit` at a time; stops starting new ones once the signal is aborted. */
export async function mapLimit<T>(
  items: readonly T[],
  limit: number,
  signal: AbortSignal | undefined,
  fn: (item: T) => Promise<void>,
  what = "verify",
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      if (signal?.aborted) throw new CancelledError(`${what} cancelled`);
      const item = items[next++] as T;
      await fn(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}
