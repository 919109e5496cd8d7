/**
 * The archive step: walks the configured paths and produces a POSIX (pax) tar
 * stream (the source and tar stages of src/pipeline/ composed), never touching the local disk and holding at most a few MiB in memory
 * whatever the size of the tree.
 *
 * Contract, in short:
 * - Entry names are the absolute paths without their leading "/" (GNU tar's
 *   habit: /etc/hosts -> "etc/hosts"); directory names end with "/". Only the
 *   configured paths and what lies below them are archived, not their parents.
 *   Directory contents are emitted in byte order of their names, so the same
 *   tree always gives the same archive.
 * - Names are bytes, as Linux has them: any name the kernel gives is archived
 *   byte-exact, UTF-8 or not (a newline, 0xff, Latin-1 "caf\xe9"). Valid UTF-8
 *   names and link targets are written exactly as tar-stream always wrote
 *   them; others get a raw-byte pax header (see src/pipeline/pax.ts), as GNU tar
 *   --format=posix writes them. Excludes see such names in matchForm (see
 *   src/pipeline/file-names.ts), warnings in displayName.
 * - Regular files, directories, symlinks (never followed) and hard links (the
 *   second and later names of one inode become "link" entries) are archived.
 *   Sockets, FIFOs and devices are skipped with a warning.
 * - A live filesystem changes under the walk. Such changes, and per-entry I/O
 *   errors, never fail the archive: they become warnings (onWarning, and the
 *   count in `done`) and the archive stays a well-formed tar that GNU tar reads.
 * - Abort (opts.signal), a consumer destroying the stream, or an internal error
 *   stop the walk, close every open file and destroy the stream; `done` then
 *   rejects (with signal.reason on abort).
 * - What is left out, and why, is reported through onSkip: an exclude pattern
 *   (the entry, and so its whole subtree, counts once), excludeIfPresent (the
 *   directory's other entries, each counted once) and oneFileSystem (a
 *   directory on another device, counted once; its own entry is archived).
 * - `dryRun` walks exactly as an archive does (same excludes, same warnings for
 *   what cannot be listed) but reads no file content and writes no tar: file
 *   sizes are lstat's, and `stream` ends empty. `immutd backup --dry-run` uses it.
 */

import type { Readable } from "node:stream";
import { IndexTextBatch } from "../repo/manifest.js";
import { compileExcludeIndex } from "./exclude.js";
import { type ArchiveOptions, type ArchiveResult, SourceWalk, walkHooks } from "./source.js";
import { type ArchiveEntry, TarWriter } from "./tar.js";
import { archiveInWorker, canRunInWorker } from "./workers/archive-thread.js";

export {
  type ArchiveOptions,
  type ArchiveProgress,
  type ArchiveResult,
  type ArchiveWarning,
  type ListedEntry,
  missingPaths,
  type SkipReport,
} from "./source.js";
export type { ArchiveEntry };

export interface Archive {
  /** The tar bytes. Destroying it stops the walk (and rejects `done`). */
  stream: Readable;
  /**
   * Resolves once the whole tar (end-of-archive blocks included) has been handed
   * to `stream` and every file is closed; rejects on abort, on the consumer
   * destroying the stream early, or on an internal error (which also destroys
   * the stream). Never an unhandled rejection by itself: awaiting it is optional.
   */
  done: Promise<ArchiveResult>;
}

/**
 * The archive of opts.paths. The walk and the tar writer run on a worker
 * thread of their own (src/pipeline/workers/archive-thread.ts) unless
 * opts.thread says "main", or the run is a dry one or has a planner (whose
 * callbacks answer synchronously from this thread's data), or a test hook
 * of the walk is set (it runs where the walk does).
 */
export function createArchive(opts: ArchiveOptions): Archive {
  if (!canRunInWorker(opts) || walkHooks.afterReaddir !== undefined) return archiveHere(opts);
  // Compiled here too (the worker compiles its own), so that a bad pattern
  // throws synchronously, as archiveHere's does, before any thread starts.
  compileExcludeIndex(opts.exclude ?? []);
  return archiveInWorker(opts);
}

/** The archive with the walk and the tar writer on this thread (see createArchive). */
export function archiveHere(opts: ArchiveOptions): Archive {
  // Compiled before any stream exists, so a bad pattern throws here synchronously.
  const exclude = opts.exclude ?? [];
  const which = compileExcludeIndex(exclude);
  const excluded = (p: string, isDir: boolean): string | null => {
    const i = which(p, isDir);
    return i < 0 ? null : `exclude ${JSON.stringify(exclude[i])}`;
  };
  // Aborted by anything that ends the archive early; every wait listens to it.
  const stop = new AbortController();
  /** Ends the archive early: everything waiting wakes up and gives up. */
  const fail = (reason: unknown): void => {
    if (stop.signal.aborted) return;
    stop.abort(reason);
    // The stream errors with the reason itself (signal.reason on abort), as promised.
    tar.destroy(reason);
  };
  const tar = new TarWriter(stop.signal, fail, entryCallback(opts), opts.buffers);
  const walk = new SourceWalk(opts, excluded, tar, stop.signal, fail);

  const signal = opts.signal;
  const onAbort = () => fail(signal?.reason);
  signal?.addEventListener("abort", onAbort, { once: true });
  const done = walk.run().finally(() => signal?.removeEventListener("abort", onAbort));
  done.catch(() => {});
  if (signal?.aborted) onAbort();
  return { stream: tar.out, done };
}

/** onEntry and onIndex (in batches of one) as the one callback the tar writer makes. */
function entryCallback(opts: ArchiveOptions): ((e: Readonly<ArchiveEntry>) => void) | undefined {
  const { onEntry, onIndex } = opts;
  if (onIndex === undefined) return onEntry;
  const batch = new IndexTextBatch();
  return (e) => {
    onEntry?.(e);
    batch.add(e);
    const t = batch.take();
    if (t !== undefined) onIndex({ ...t, last: e.name });
  };
}
