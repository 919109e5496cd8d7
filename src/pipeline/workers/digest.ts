/**
 * Hashing off the main thread: one worker thread per process
 * (digest-worker.ts), started on first use, that computes the SHA-256 of the
 * backup stream (hash.ts) and the Content-MD5 of each uploaded part
 * (src/store/s3.ts). The main thread only copies the bytes into a buffer
 * that it hands over (a memcpy, several times faster than either hash), so
 * hashing runs beside the tar walk, compression and TLS instead of in turn
 * with them. The worker keeps the process alive only while it has work.
 * If it fails or exits, every request waiting on it fails with that reason,
 * and the next request starts a new one.
 */
import { Worker } from "node:worker_threads";
import { moduleUrl } from "../../paths.js";

export type DigestRequest =
  | { op: "update"; id: number; stream: number; buf: ArrayBuffer; length: number }
  | { op: "final"; id: number; stream: number }
  | { op: "drop"; id: number; stream: number }
  | { op: "md5"; id: number; buf: ArrayBuffer | SharedArrayBuffer; offset: number; length: number };

type Answer = { id: number; digest?: string; error?: string; input?: ArrayBuffer };

const SCRIPT = moduleUrl("pipeline/workers/digest-worker.js");

let worker: Worker | undefined;
/** Counts the workers started: a stream hashed by one must never continue on the next. */
let generation = 0;
const waiting = new Map<number, { resolve: (a: Answer) => void; reject: (e: Error) => void }>();
let nextId = 1;

function start(): Worker {
  const w = new Worker(SCRIPT);
  generation++;
  const fail = (why: string) => {
    if (worker === w) worker = undefined;
    const e = new Error(`the hashing worker ${why}`);
    for (const j of waiting.values()) j.reject(e);
    waiting.clear();
  };
  w.on("message", (a: Answer) => {
    const j = waiting.get(a.id);
    if (!j) return;
    waiting.delete(a.id);
    if (waiting.size === 0) w.unref();
    if (a.error !== undefined) j.reject(new Error(`hashing failed: ${a.error}`));
    else j.resolve(a);
  });
  w.on("error", (err) => fail(`failed: ${err.message}`));
  w.on("exit", (code) => fail(`exited (code ${code})`));
  w.unref();
  return w;
}

function ask(req: DigestRequest, transfer: ArrayBuffer[] = []): Promise<Answer> {
  worker ??= start();
  const w = worker;
  return new Promise((resolve, reject) => {
    waiting.set(req.id, { resolve, reject });
    w.ref();
    w.postMessage(req, transfer);
  });
}

/** A copy of `b` in an ArrayBuffer of its own, to hand over. */
function own(b: Uint8Array): ArrayBuffer {
  return new Uint8Array(b).buffer as ArrayBuffer;
}

/** Bodies smaller than this are hashed in place: handing them over costs more than it saves. */
const INLINE_BELOW = 256 * 1024;

/** Base64 MD5 of `body` (a part's Content-MD5), computed in the worker. */
export function md5Base64(body: Uint8Array): Promise<string> | undefined {
  if (body.length < INLINE_BELOW) return undefined;
  // A part in shared memory (src/store/multipart.ts) is read in place; it must not change until this resolves.
  if (body.buffer instanceof SharedArrayBuffer) {
    const { buffer: buf, byteOffset: offset, length } = body;
    return ask({ op: "md5", id: nextId++, buf, offset, length }).then((a) => a.digest ?? "");
  }
  const buf = own(body);
  return ask({ op: "md5", id: nextId++, buf, offset: 0, length: body.length }, [buf]).then(
    (a) => a.digest ?? "",
  );
}

let nextStream = 1;

/**
 * The SHA-256 of a stream, fed in order: update() hands a copy of the bytes
 * over and resolves once the worker has hashed them (callers bound what is in
 * flight by awaiting); digest() resolves with the hex digest of everything fed.
 */
export class StreamSha256 {
  readonly #stream = nextStream++;
  #done = false;
  /** The worker generation holding this stream's state. */
  #gen: number | undefined;

  update(b: Uint8Array): Promise<ArrayBuffer | undefined> {
    return this.updateOwned(own(b), b.length);
  }

  /**
   * Hands `buf` itself over (it is detached here): its first `length` bytes
   * are the next ones. Resolves with the buffer, handed back to be reused.
   */
  updateOwned(buf: ArrayBuffer, length: number): Promise<ArrayBuffer | undefined> {
    return this.#ask({ op: "update", id: nextId++, stream: this.#stream, buf, length }, [buf]).then(
      (a) => a.input,
    );
  }

  digest(): Promise<string> {
    this.#done = true;
    return this.#ask({ op: "final", id: nextId++, stream: this.#stream }).then(
      (a) => a.digest ?? "",
    );
  }

  #ask(req: DigestRequest, transfer: ArrayBuffer[] = []): Promise<Answer> {
    worker ??= start();
    this.#gen ??= generation;
    if (this.#gen !== generation) {
      return Promise.reject(
        new Error("the hashing worker exited mid-stream: the SHA-256 of this stream is lost"),
      );
    }
    return ask(req, transfer);
  }

  /** Forgets the stream in the worker (after a failure). */
  drop(): void {
    if (this.#done || !worker) return;
    this.#done = true;
    worker.postMessage({ op: "drop", id: 0, stream: this.#stream });
  }
}

/** Stops the worker (tests use it to kill it mid-stream); waiting requests fail, the next one starts another. */
export async function terminateDigestWorker(): Promise<void> {
  await worker?.terminate();
}
