/**
 * The archive on a thread of its own: the walk and the tar writer (source.ts
 * and tar.ts, exactly as they run on the main thread) in a worker
 * (archive-worker.ts), and here a plain Readable of the tar bytes that they
 * send over, with their callbacks called on this thread.
 *
 * Why: on a tree of small files the walk is per-file system calls (open,
 * fstat, read, close: about 20 microseconds a file here, 1.8 s for 100,000)
 * and header encoding. On the main thread they took turns with everything
 * the upload does (TLS, the part buffers, the index spool); on their own
 * thread they run beside it. A side effect: a file system that hangs in a
 * system call stops only the walk, not the process's timers and signals.
 *
 * The contract is createArchive's (src/pipeline/archive.ts), with these
 * differences, which no caller relies on:
 * - Callbacks run on this thread in batches, always before the tar bytes
 *   they describe: each kind in the order the walk made them, onIndex's
 *   records after the other callbacks of the same chunk. onProgress sees
 *   the newest snapshot of each batch, not every one.
 * - A callback that throws fails the archive as before, though the walk may
 *   have gone a few entries further when it stops.
 * Memory: the worker hands chunks over (transfers them: no copy on this
 * side) and stops once WINDOW bytes are sent and not yet taken by this
 * stream's consumer; it reads on only as the consumer reads. The chunks are
 * lent (lent.ts): the upload gives each back once it has copied it, and the
 * worker fills it again, so that this thread allocates nothing per chunk.
 * Ending early (abort, the consumer destroying the stream, a callback
 * throwing): the worker is told to stop, and `done` rejects only once it has
 * closed every file and said so. The worker failing or exiting fails the
 * archive with an error naming it.
 */
import { Readable } from "node:stream";
import { Worker } from "node:worker_threads";
import { moduleUrl } from "../../paths.js";
import type { IndexText } from "../../repo/manifest.js";
import type { Archive } from "../archive.js";
import type {
  ArchiveOptions,
  ArchiveProgress,
  ArchiveResult,
  ArchiveWarning,
  ListedEntry,
  SkipReport,
} from "../source.js";
import type { ArchiveEntry } from "../tar.js";
import { lend } from "./lent.js";

const SCRIPT = moduleUrl("pipeline/workers/archive-worker.js");

/** Bytes the worker may have sent that this stream's consumer has not taken. */
export const WINDOW = 4 * 1024 * 1024;
/** This stream's own buffer: it asks for more once it holds less. */
const HIGH_WATER = 1024 * 1024;

/** What the worker is given (workerData): the options that are data, and which callbacks exist. */
export interface WalkInit {
  paths: readonly string[];
  exclude?: readonly string[];
  oneFileSystem?: boolean;
  excludeIfPresent?: readonly string[];
  extraFiles?: readonly { name: string; path: string }[];
  want: {
    entry: boolean;
    index: boolean;
    listed: boolean;
    skip: boolean;
    warning: boolean;
    progress: boolean;
  };
}

/** A callback the walk made, in the order it made them. */
export type WalkEvent =
  | { k: "entry"; e: ArchiveEntry }
  | { k: "index"; t: IndexText & { last: string } }
  | { k: "listed"; l: ListedEntry }
  | { k: "skip"; s: SkipReport }
  | { k: "warning"; w: ArchiveWarning }
  | { k: "progress"; p: ArchiveProgress };

/** An error as it crosses threads (structured clone keeps neither its class nor `code`). */
export interface SentError {
  name: string;
  message: string;
  code?: string;
  stack?: string;
}

export type FromWalk =
  | { op: "data"; buf: ArrayBuffer; length: number; events: WalkEvent[] }
  | { op: "events"; events: WalkEvent[] }
  | { op: "done"; result: ArchiveResult; events: WalkEvent[] }
  /** The walk failed on its own (an unreadable extra file, an internal error). */
  | { op: "failed"; error: SentError; events: WalkEvent[] }
  /** Answer to "stop": the walk has ended and every file it opened is closed. */
  | { op: "stopped" };

export type ToWalk =
  | { op: "credit"; bytes: number }
  /** A chunk's buffer, given back once the upload has copied it (lent.ts). */
  | { op: "reuse"; buf: ArrayBuffer }
  | { op: "stop" };

/** True when the archive may run in a worker: only data crosses, and no planner is consulted. */
export function canRunInWorker(opts: ArchiveOptions): boolean {
  return opts.thread !== "main" && !opts.dryRun && opts.plan === undefined;
}

/** createArchive's contract, with the walk and tar writer in a worker; see the module comment. */
export function archiveInWorker(opts: ArchiveOptions, script: URL = SCRIPT): Archive {
  const init: WalkInit = {
    paths: opts.paths,
    want: {
      entry: opts.onEntry !== undefined,
      index: opts.onIndex !== undefined,
      listed: opts.onListed !== undefined,
      skip: opts.onSkip !== undefined,
      warning: opts.onWarning !== undefined,
      progress: opts.onProgress !== undefined,
    },
  };
  if (opts.exclude) init.exclude = opts.exclude;
  if (opts.oneFileSystem) init.oneFileSystem = true;
  if (opts.excludeIfPresent) init.excludeIfPresent = opts.excludeIfPresent;
  if (opts.extraFiles) init.extraFiles = opts.extraFiles;

  const worker = new Worker(script, { workerData: init, ...workerArgv() });
  let resolveDone: (r: ArchiveResult) => void = () => {};
  let rejectDone: (e: unknown) => void = () => {};
  const done = new Promise<ArchiveResult>((resolve, reject) => {
    resolveDone = resolve;
    rejectDone = reject;
  });
  done.catch(() => {});
  /** Why the archive ends early; set once. */
  let failure: { reason: unknown } | undefined;
  /** The worker has sent its last word (or is gone): nothing more is expected of it. */
  let over = false;
  /** How `done` settles, once the worker has exited (its threads and their descriptors gone too). */
  let settle: (() => void) | undefined;
  /** All of the tar is pushed: destroying the stream now is no abort. */
  let ended = false;
  /** Credit held back while the consumer is behind; returned when it reads. */
  let owed = 0;

  const send = (m: ToWalk, transfer: ArrayBuffer[] = []): void => {
    if (!over) worker.postMessage(m, transfer);
  };
  /** A chunk's memory back to the worker, to fill again (lent.ts); dropped once the worker is done. */
  const giveBack = (buf: ArrayBuffer): void => {
    if (failure === undefined) send({ op: "reuse", buf }, [buf]);
  };
  /** The worker's last word: `done` settles with `how` once it has exited. */
  const finish = (how: () => void): void => {
    if (over) return;
    over = true;
    settle = how;
    opts.signal?.removeEventListener("abort", onAbort);
    // Its walk has ended and its files are closed; nothing it could still do is wanted.
    void worker.terminate();
  };
  /** Ends the archive early: the stream errors at once, `done` rejects once the worker has stopped. */
  const fail = (reason: unknown): void => {
    if (failure !== undefined || ended) return;
    failure = { reason };
    if (!stream.destroyed) stream.destroy(reason as Error);
    send({ op: "stop" });
  };
  const onAbort = (): void => fail(opts.signal?.reason);

  const stream = new Readable({
    highWaterMark: HIGH_WATER,
    read: () => {
      if (owed === 0) return;
      send({ op: "credit", bytes: owed });
      owed = 0;
    },
    destroy: (err, cb) => {
      if (!ended)
        fail(err ?? new Error("archive stream was destroyed before the archive was complete"));
      cb(err);
    },
  });

  const deliver = (events: readonly WalkEvent[]): void => {
    for (const ev of events) {
      switch (ev.k) {
        case "entry":
          opts.onEntry?.(ev.e);
          break;
        case "index":
          opts.onIndex?.(ev.t);
          break;
        case "listed":
          opts.onListed?.(ev.l);
          break;
        case "skip":
          opts.onSkip?.(ev.s);
          break;
        case "warning":
          opts.onWarning?.(ev.w);
          break;
        case "progress":
          opts.onProgress?.(ev.p);
          break;
      }
    }
  };

  worker.on("message", (m: FromWalk) => {
    if (over) return;
    if (m.op !== "stopped" && failure === undefined) {
      try {
        deliver(m.events);
      } catch (err) {
        fail(err);
      }
    }
    switch (m.op) {
      case "data":
        if (failure !== undefined) return;
        if (stream.push(lend(Buffer.from(m.buf, 0, m.length), giveBack)))
          send({ op: "credit", bytes: m.length });
        else owed += m.length;
        return;
      case "events":
        return;
      case "done":
        if (failure !== undefined) return finish(() => rejectDone(failure?.reason));
        ended = true;
        stream.push(null);
        return finish(() => resolveDone(m.result));
      case "failed": {
        const err = revive(m.error);
        fail(err);
        return finish(() => rejectDone(failure?.reason));
      }
      case "stopped":
        return finish(() => rejectDone(failure?.reason));
    }
  });
  // Uncaught in the worker: it exits next, with its files closed by the walk's own unwinding or not at all.
  worker.on("error", (err) => fail(new Error(`the archive worker failed: ${err.message}`)));
  worker.on("exit", (code) => {
    if (!over) {
      fail(new Error(`the archive worker exited unexpectedly (code ${code})`));
      finish(() => rejectDone(failure?.reason));
    }
    settle?.();
  });

  opts.signal?.addEventListener("abort", onAbort, { once: true });
  if (opts.signal?.aborted) onAbort();
  return { stream, done };
}

/**
 * The worker inherits Node's options, except under `node --input-type=... -e`,
 * whose option only a main thread may have (the worker fails with it): then
 * the others, given explicitly.
 */
function workerArgv(): { execArgv?: string[] } {
  const argv = process.execArgv;
  if (!argv.some((a) => a.startsWith("--input-type"))) return {};
  return { execArgv: argv.filter((a) => !a.startsWith("--input-type")) };
}

export function sendable(err: unknown): SentError {
  if (!(err instanceof Error)) return { name: "Error", message: String(err) };
  const out: SentError = { name: err.name, message: err.message };
  const code = (err as { code?: unknown }).code;
  if (typeof code === "string") out.code = code;
  if (err.stack !== undefined) out.stack = err.stack;
  return out;
}

function revive(e: SentError): Error {
  const err = new Error(e.message) as Error & { code?: string };
  err.name = e.name;
  if (e.code !== undefined) err.code = e.code;
  if (e.stack !== undefined) err.stack = e.stack;
  return err;
}
