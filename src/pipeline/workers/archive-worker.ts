/**
 * The archive worker thread (archive-thread.ts starts it, with the options in
 * workerData): the walk and tar writer as they run on the main thread, their
 * bytes transferred (in buffers the main thread gave back where it has, else
 * as they are when nothing here holds them, else copied), their callbacks as
 * batches of events.
 * It sends at most WINDOW bytes ahead of what the main thread's consumer has
 * taken, and on "stop" ends the walk, closes its files and says "stopped".
 */
import { parentPort, workerData } from "node:worker_threads";
import { IndexTextBatch } from "../../repo/manifest.js";
import { archiveHere } from "../archive.js";
import type { ArchiveOptions } from "../source.js";
import { ownsWhole } from "../tar.js";
import {
  type FromWalk,
  sendable,
  type ToWalk,
  type WalkEvent,
  type WalkInit,
  WINDOW,
} from "./archive-thread.js";

const port = parentPort;
if (!port) throw new Error("archive-worker.js runs only as a worker thread");
const init = workerData as WalkInit;

/** Events are sent with the next chunk, or on their own once this many wait. */
const EVENT_BATCH = 512;
let events: WalkEvent[] = [];
let progress: WalkEvent | undefined;
/**
 * Index records since the last chunk (onIndex): one string per batch
 * crosses, not an object per entry. A batch goes after the other events of
 * its chunk; all of them before the chunk's bytes.
 */
const index = new IndexTextBatch();
let last = "";
/** The index records so far, as one event. */
const flushIndex = (): void => {
  const t = index.take();
  if (t !== undefined) events.push({ k: "index", t: { ...t, last } });
};
const event = (ev: WalkEvent): void => {
  events.push(ev);
  if (events.length >= EVENT_BATCH) post({ op: "events", events: take() });
};
const take = (): WalkEvent[] => {
  flushIndex();
  if (progress !== undefined) events.push(progress);
  progress = undefined;
  const out = events;
  events = [];
  return out;
};
const post = (m: FromWalk, transfer: ArrayBuffer[] = []): void => port.postMessage(m, transfer);

const stop = new AbortController();
const opts: ArchiveOptions = { paths: init.paths, thread: "main", signal: stop.signal };
if (init.exclude) opts.exclude = init.exclude;
if (init.oneFileSystem) opts.oneFileSystem = true;
if (init.excludeIfPresent) opts.excludeIfPresent = init.excludeIfPresent;
if (init.extraFiles) opts.extraFiles = init.extraFiles;
const { want } = init;
if (want.entry || want.index)
  opts.onEntry = (e) => {
    if (want.entry) event({ k: "entry", e });
    if (want.index) {
      index.add(e);
      last = e.name;
      if (index.count >= EVENT_BATCH) post({ op: "events", events: take() });
    }
  };
if (want.listed) opts.onListed = (l) => event({ k: "listed", l });
if (want.skip) opts.onSkip = (s) => event({ k: "skip", s });
if (want.warning) opts.onWarning = (w) => event({ k: "warning", w });
if (want.progress)
  opts.onProgress = (p) => {
    progress = { k: "progress", p };
  };

/** Buffers the main thread gave back (lent.ts), to fill again; at most MAX_SPARES. */
const spares: ArrayBuffer[] = [];
const MAX_SPARES = 16;
/** Spares handed to the walk (opts.buffers) and not yet sent. */
const given = new WeakSet<ArrayBuffer>();
/** A spare of at least `size` bytes, taken from the list. */
function spare(size: number): ArrayBuffer | undefined {
  const i = spares.findIndex((b) => b.byteLength >= size);
  return i < 0 ? undefined : spares.splice(i, 1)[0];
}
opts.buffers = (size) => {
  const buf = spare(size);
  if (buf === undefined) return undefined;
  given.add(buf);
  return Buffer.from(buf, 0, size);
};
const archive = archiveHere(opts);
let unacked = 0;
archive.stream.on("data", (chunk: Buffer) => {
  // Handed over as it is when it is memory that buffers() gave (nothing here
  // uses it again) or a whole buffer nothing else uses; else copied: the chunk
  // may be a view of the shared zero padding or of a pool.
  const { length } = chunk;
  let buf: ArrayBuffer;
  if (chunk.byteOffset === 0 && given.delete(chunk.buffer as ArrayBuffer)) {
    buf = chunk.buffer as ArrayBuffer;
  } else if (ownsWhole(chunk)) {
    buf = chunk.buffer as ArrayBuffer;
  } else {
    const into = spare(length) ?? new ArrayBuffer(length);
    new Uint8Array(into).set(chunk);
    buf = into;
  }
  // After this the buffer is detached here (its length reads 0).
  post({ op: "data", buf, length, events: take() }, [buf]);
  unacked += length;
  if (unacked >= WINDOW) archive.stream.pause();
});
// Its failure is `done`'s, reported below.
archive.stream.on("error", () => {});

port.on("message", (m: ToWalk) => {
  if (m.op === "credit") {
    unacked -= m.bytes;
    if (unacked < WINDOW && archive.stream.isPaused()) archive.stream.resume();
  } else if (m.op === "reuse") {
    if (spares.length < MAX_SPARES) spares.push(m.buf);
  } else {
    stop.abort(new Error("the archive was stopped by the main thread"));
  }
});

// "close" too: a stop that comes after the walk's end destroys the stream instead of ending it.
const ended = new Promise<void>((resolve) => {
  archive.stream.once("end", resolve);
  archive.stream.once("close", resolve);
});
Promise.all([archive.done, ended])
  .then(
    ([result]) => post({ op: "done", result, events: take() }),
    (err) =>
      post(
        stop.signal.aborted
          ? { op: "stopped" }
          : { op: "failed", error: sendable(err), events: take() },
      ),
  )
  .finally(() => port.close());
