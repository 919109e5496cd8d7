/**
 * The reader→writer fallback: reads go with the reader credential, and only
 * where the server refuses the reader itself (HTTP 403: a reader without
 * bucket-level permissions, as a Ceph subuser with --access=read may be) are
 * they asked again with the writer. Any other failure (a 404, a 5xx, a
 * network error) is the answer, not a permission, and is thrown as it came:
 * asking the writer then would hide a fault behind a second credential.
 */
import { StorageError } from "../errors.js";
import type { ObjectStore, Target } from "./store.js";

/** The server refused this credential (HTTP 403), as opposed to failing. */
export function isRefused(err: unknown): boolean {
  return err instanceof StorageError && err.status === 403;
}

/** `fn` with the reader; with the writer only if the reader is refused (403). */
export async function withReadFallback<T>(
  target: Pick<Target, "reader" | "writer">,
  fn: (s: ObjectStore) => Promise<T>,
): Promise<T> {
  try {
    return await fn(target.reader);
  } catch (err) {
    if (isRefused(err)) return await fn(target.writer);
    throw err;
  }
}
