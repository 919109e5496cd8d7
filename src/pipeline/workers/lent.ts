/**
 * Chunks lent by a worker thread: buffers a worker handed over (transferred)
 * and wants back to fill again, once the last stage that reads them has
 * copied their bytes (the multipart upload, into its part buffer).
 *
 * Why: every chunk the archive worker sends is memory this thread did not
 * allocate but must free, at its next garbage collection; 300 MB of them
 * were a share of the 0.8-0.9 s this thread spent in GC during a backup.
 * Given back, the same few buffers go round instead.
 *
 * Why it is safe: giving a chunk back transfers its memory away. A reference
 * still held on this thread then sees an empty (detached) buffer, never
 * bytes that changed under it, so a mistake shows as a failure (a short
 * part, a size that does not match), not as a corrupt backup. A chunk that
 * is never given back (a stage replaced it, the upload failed) is garbage
 * like any other.
 */
const lenders = new WeakMap<Buffer, (buf: ArrayBuffer) => void>();

/** Marks `chunk` (a view of the whole or the start of a transferred buffer) as lent; `giveBack` gets its memory. */
export function lend(chunk: Buffer, giveBack: (buf: ArrayBuffer) => void): Buffer {
  lenders.set(chunk, giveBack);
  return chunk;
}

/**
 * For the last reader of a stream: it has copied all of `chunk` and keeps no
 * reference. A lent chunk goes back to its lender; any other is left alone.
 */
export function copied(chunk: Buffer): void {
  const giveBack = lenders.get(chunk);
  if (giveBack === undefined) return;
  lenders.delete(chunk);
  giveBack(chunk.buffer as ArrayBuffer);
}
