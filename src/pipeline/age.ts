/**
 * The age v1 file format (age-encryption.org/v1), X25519 recipients only:
 * the encrypting Transform the backup's cipher stage runs, the decrypting one
 * restore and deep verify run, and both for small buffers (the manifest's
 * file index). What this writes decrypts with the standard `age -d -i`, and
 * what `age -r` writes decrypts here; test/age.test.ts checks both ways.
 *
 * The format, as this module implements it:
 * - A random 16-byte file key. For each recipient a stanza
 *   `-> X25519 <ephemeral share>` whose body is the file key sealed with
 *   ChaCha20-Poly1305 (zero nonce) under HKDF-SHA256(X25519(ephemeral,
 *   recipient), salt = share ‖ recipient, info "age-encryption.org/v1/X25519").
 * - The header ends `--- <MAC>`: HMAC-SHA256 over the header text up to and
 *   including `---`, keyed by HKDF-SHA256(file key, no salt, "header").
 * - Then a 16-byte nonce and the payload: 64 KiB plaintext chunks, each sealed
 *   with ChaCha20-Poly1305 under HKDF-SHA256(file key, nonce, "payload"), the
 *   chunk nonce an 11-byte big-endian counter and a last-chunk flag byte. Only
 *   the last chunk carries the flag, so a stream cut at a chunk boundary
 *   fails to decrypt instead of passing for a shorter archive.
 *
 * Every primitive is Node's own crypto (X25519, HKDF, HMAC, and the payload's
 * chacha20-poly1305, which OpenSSL runs at hundreds of MB/s where a JavaScript
 * ChaCha runs at tens); only bech32 for `age1…` / `AGE-SECRET-KEY-1…` comes
 * from @scure/base (src/repo/age-keys.ts).
 */

import {
  createCipheriv,
  createDecipheriv,
  createHmac,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  randomBytes,
  timingSafeEqual,
} from "node:crypto";
import { Transform, type TransformCallback } from "node:stream";
import { Worker } from "node:worker_threads";
import { moduleUrl } from "../paths.js";
import {
  AgeError,
  type AgeIdentity,
  type AgeRecipient,
  publicKeyObject,
  rawPublic,
} from "../repo/age-keys.js";
import { OrderedWindow } from "./ordered-window.js";
import { copied } from "./workers/lent.js";

export { AgeError, type AgeIdentity, type AgeRecipient } from "../repo/age-keys.js";

const VERSION_LINE = "age-encryption.org/v1";
const X25519_INFO = "age-encryption.org/v1/X25519";
const FILE_KEY_BYTES = 16;
const NONCE_BYTES = 16;
/** Plaintext bytes per payload chunk. */
export const AGE_CHUNK = 64 * 1024;
const TAG_BYTES = 16;
const SEALED_CHUNK = AGE_CHUNK + TAG_BYTES;
/** The most header bytes a reader buffers before it gives up: a hostile object must not exhaust memory. */
const MAX_HEADER_BYTES = 1024 * 1024;

function hkdf(ikm: Buffer, salt: Buffer, info: string): Buffer {
  return Buffer.from(hkdfSync("sha256", ikm, salt, Buffer.from(info, "utf8"), 32));
}

function seal(key: Buffer, nonce: Buffer, plain: Buffer): Buffer {
  const c = createCipheriv("chacha20-poly1305", key, nonce, { authTagLength: TAG_BYTES });
  const out = c.update(plain);
  c.final();
  return Buffer.concat([out, c.getAuthTag()]);
}

/** The plaintext, or undefined when the tag does not match. */
function open(key: Buffer, nonce: Buffer, sealed: Buffer): Buffer | undefined {
  if (sealed.length < TAG_BYTES) return undefined;
  const d = createDecipheriv("chacha20-poly1305", key, nonce, { authTagLength: TAG_BYTES });
  d.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
  const out = d.update(sealed.subarray(0, sealed.length - TAG_BYTES));
  try {
    d.final();
  } catch {
    return undefined;
  }
  return out;
}

/** age's base64: standard alphabet, no padding. */
function b64(b: Buffer): string {
  return b.toString("base64").replace(/=+$/, "");
}

/** Strict (canonical) unpadded base64, or undefined. */
function unb64(s: string): Buffer | undefined {
  if (!/^[A-Za-z0-9+/]*$/.test(s) || s.length % 4 === 1) return undefined;
  const b = Buffer.from(s, "base64");
  return b64(b) === s ? b : undefined;
}

const ZERO_NONCE = Buffer.alloc(12);

/** The header (through the MAC line's newline) that wraps `fileKey` to every recipient. */
function writeHeader(fileKey: Buffer, recipients: readonly AgeRecipient[]): Buffer {
  if (!recipients.length) throw new Error("age: at least one recipient is needed");
  let text = `${VERSION_LINE}\n`;
  for (const r of recipients) {
    const { privateKey, publicKey } = generateKeyPairSync("x25519");
    const share = rawPublic(publicKey);
    const shared = diffieHellman({ privateKey, publicKey: publicKeyObject(r.publicKey) });
    const wrapKey = hkdf(shared, Buffer.concat([share, r.publicKey]), X25519_INFO);
    text += `-> X25519 ${b64(share)}\n${wrapBody(b64(seal(wrapKey, ZERO_NONCE, fileKey)))}`;
  }
  text += "---";
  const mac = createHmac("sha256", hkdf(fileKey, Buffer.alloc(0), "header"))
    .update(text, "latin1")
    .digest();
  return Buffer.from(`${text} ${b64(mac)}\n`, "latin1");
}

/** A stanza body in 64-column lines; the last line is always shorter than 64 (possibly empty). */
function wrapBody(s: string): string {
  let out = "";
  for (let i = 0; i <= s.length; i += 64) out += `${s.slice(i, i + 64)}\n`;
  return out;
}

interface Stanza {
  args: string[];
  body: Buffer;
}

/** Where the header ends in `buf` (the index after its last newline), or -1 while incomplete. */
function headerEnd(buf: Buffer): number {
  let at = 0;
  for (;;) {
    const nl = buf.indexOf(0x0a, at);
    if (nl < 0) return -1;
    if (buf.subarray(at, at + 4).toString("latin1") === "--- ") return nl + 1;
    at = nl + 1;
  }
}

/** Parses a complete header; throws AgeError saying what is wrong. */
function parseHeader(
  h: Buffer,
  what: string,
): { stanzas: Stanza[]; macInput: Buffer; mac: Buffer } {
  const bad = (why: string) => new AgeError(`${what} is not a valid age file: ${why}`);
  const text = h.toString("latin1");
  const lines = text.slice(0, -1).split("\n");
  if (lines[0] !== VERSION_LINE)
    throw bad(
      `it does not start with "${VERSION_LINE}" (an archive written without age, or another format)`,
    );
  const stanzas: Stanza[] = [];
  let i = 1;
  for (;;) {
    const line = lines[i] ?? "";
    if (line.startsWith("--- ")) break;
    if (!line.startsWith("-> ")) throw bad(`header line ${i + 1} is neither a stanza nor the MAC`);
    const args = line.slice(3).split(" ");
    if (args.some((a) => a === "" || !/^[\x21-\x7e]+$/.test(a)))
      throw bad(`header line ${i + 1} has a malformed stanza`);
    let body = "";
    for (i++; ; i++) {
      const l = lines[i];
      if (l === undefined) throw bad("a stanza body does not end");
      if (l.length > 64) throw bad(`header line ${i + 1} is longer than 64 columns`);
      body += l;
      if (l.length < 64) break;
    }
    const decoded = unb64(body);
    if (!decoded) throw bad("a stanza body is not canonical base64");
    stanzas.push({ args, body: decoded });
    i++;
  }
  if (i !== lines.length - 1) throw bad("the header continues after its MAC");
  const macLine = lines[i] ?? "";
  const mac = unb64(macLine.slice(4));
  if (mac?.length !== 32) throw bad("its MAC is malformed");
  const macInput = Buffer.from(text.slice(0, text.length - macLine.length + 3 - 1), "latin1");
  return { stanzas, macInput, mac };
}

/** The file key the header wraps for one of `identities`; AgeError when none matches or the MAC fails. */
function unwrapFileKey(header: Buffer, identities: readonly AgeIdentity[], what: string): Buffer {
  const { stanzas, macInput, mac } = parseHeader(header, what);
  if (stanzas.some((s) => s.args[0] === "scrypt"))
    throw new AgeError(
      `${what} is encrypted with a passphrase (age -p); immutd decrypts only X25519 recipients`,
    );
  let fileKey: Buffer | undefined;
  for (const s of stanzas) {
    if (s.args[0] !== "X25519") continue;
    const share = s.args.length === 2 ? unb64(s.args[1] ?? "") : undefined;
    if (share?.length !== 32 || s.body.length !== FILE_KEY_BYTES + TAG_BYTES)
      throw new AgeError(`${what} is not a valid age file: a malformed X25519 stanza`);
    for (const id of identities) {
      let shared: Buffer;
      try {
        shared = diffieHellman({ privateKey: id.privateKey, publicKey: publicKeyObject(share) });
      } catch {
        throw new AgeError(`${what} is not a valid age file: an X25519 share of low order`);
      }
      if (shared.every((b) => b === 0))
        throw new AgeError(`${what} is not a valid age file: an X25519 share of low order`);
      const wrapKey = hkdf(shared, Buffer.concat([share, id.publicKey]), X25519_INFO);
      fileKey = open(wrapKey, ZERO_NONCE, s.body);
      if (fileKey) break;
    }
    if (fileKey) break;
  }
  if (!fileKey) {
    const n = stanzas.filter((s) => s.args[0] === "X25519").length;
    throw new AgeError(
      `${what}: no identity given matches any of its ${n} recipient${n === 1 ? "" : "s"} (wrong identity file?); nothing was decrypted`,
    );
  }
  const want = createHmac("sha256", hkdf(fileKey, Buffer.alloc(0), "header"))
    .update(macInput)
    .digest();
  if (!timingSafeEqual(want, mac))
    throw new AgeError(`${what}: its header MAC does not match (the header was altered)`);
  return fileKey;
}

function chunkNonce(counter: number, last: boolean): Buffer {
  const n = Buffer.alloc(12);
  // 11-byte big-endian counter: 2^48 chunks (16 EiB) are far beyond any archive.
  n.writeUIntBE(counter, 5, 6);
  n[11] = last ? 1 : 0;
  return n;
}

/**
 * Seals `plain` as consecutive payload chunks numbered from `counter`; when
 * `last`, its final chunk carries the last-chunk flag (an empty `plain` is
 * then one empty last chunk, as age writes an empty file). The result has a
 * buffer of its own (offset 0), so that a worker can move it.
 */
export function sealChunks(key: Buffer, counter: number, plain: Buffer, last: boolean): Buffer {
  const n = Math.max(1, Math.ceil(plain.length / AGE_CHUNK));
  const out = Buffer.allocUnsafeSlow(plain.length + n * TAG_BYTES);
  let o = 0;
  for (let i = 0; i < n; i++) {
    const c = createCipheriv(
      "chacha20-poly1305",
      key,
      chunkNonce(counter + i, last && i === n - 1),
      {
        authTagLength: TAG_BYTES,
      },
    );
    o += c.update(plain.subarray(i * AGE_CHUNK, (i + 1) * AGE_CHUNK)).copy(out, o);
    c.final();
    o += c.getAuthTag().copy(out, o);
  }
  return out;
}

/** A batch of plaintext for the payload worker (age-worker.ts). */
export interface AgeBatchRequest {
  id: number;
  /** The counter of the batch's first chunk. */
  counter: number;
  buf: ArrayBuffer;
  length: number;
  /** Whether the batch's final chunk is the stream's last. */
  last: boolean;
}

export type AgeBatchAnswer =
  | { id: number; out: ArrayBuffer; length: number; input: ArrayBuffer }
  | { id: number; error: string; input: ArrayBuffer };

/** Payload chunks per batch handed to the worker: 1 MiB of plaintext. */
const BATCH_CHUNKS = 16;
const BATCH = BATCH_CHUNKS * AGE_CHUNK;
/** Batches handed over and not yet handed on, at most. */
const IN_FLIGHT = 4;
const WORKER = moduleUrl("pipeline/age-worker.js");

export interface AgeEncryptOptions {
  /** The payload worker script (default age-worker.js; tests pass a failing one). */
  worker?: URL;
}

/**
 * Encrypts a byte stream to `recipients`.
 *
 * The payload is sealed on a worker thread of its own (age-worker.ts), so
 * that the main thread, which also runs the tar walk, the stream plumbing and
 * TLS, only copies: the bytes are gathered into 1 MiB batches (16 chunks),
 * each moved to the worker with its first chunk's counter, and the sealed
 * batches are pushed in order, at most IN_FLIGHT batches ahead, so memory
 * stays bounded and the output is byte for byte what one thread would write.
 * A full batch is held until a further byte (or the end) says whether its
 * last chunk is the stream's last. A worker that fails or exits fails the
 * stream (and so the backup: the sink aborts the upload); nothing sealed
 * after the failure is pushed.
 */
export class AgeEncrypt extends Transform {
  readonly #payloadKey: Buffer;
  readonly #script: URL;
  #prefix: Buffer | undefined;
  #batch: Buffer | undefined;
  #fill = 0;
  /** The counter of the next batch's first chunk. */
  #counter = 0;
  #id = 0;
  /** Batches handed to the worker and not yet handed on, in input order. */
  readonly #inFlight = new OrderedWindow<Buffer>(IN_FLIGHT);
  /** Hands a sealed batch on, the header and nonce first. */
  readonly #push = (out: Buffer): void => {
    if (this.#prefix) this.push(this.#prefix);
    this.#prefix = undefined;
    this.push(out);
  };
  /** Input batches the worker handed back, to fill again. */
  readonly #free: ArrayBuffer[] = [];
  #worker: Worker | undefined;
  readonly #jobs = new Map<number, { resolve: (b: Buffer) => void; reject: (e: Error) => void }>();
  #dead: Error | undefined;

  constructor(recipients: readonly AgeRecipient[], o: AgeEncryptOptions = {}) {
    // Room for two sealed batches downstream, so that a sealed batch is not
    // held back (and the worker idle) while the hash stage takes the last one.
    super({ readableHighWaterMark: 2 * (BATCH + BATCH_CHUNKS * TAG_BYTES) });
    const fileKey = randomBytes(FILE_KEY_BYTES);
    const nonce = randomBytes(NONCE_BYTES);
    this.#prefix = Buffer.concat([writeHeader(fileKey, recipients), nonce]);
    this.#payloadKey = hkdf(fileKey, nonce, "payload");
    this.#script = o.worker ?? WORKER;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.#fill === BATCH) this.#dispatch(false);
      if (!this.#batch) {
        const reused = this.#free.pop();
        this.#batch = reused ? Buffer.from(reused) : Buffer.allocUnsafeSlow(BATCH);
      }
      const n = chunk.copy(this.#batch, this.#fill, at);
      this.#fill += n;
      at += n;
    }
    copied(chunk); // all of it is in batches now (workers/lent.ts)
    this.#inFlight.handOn(this.#push).then(() => cb(), cb);
  }

  override _flush(cb: TransformCallback): void {
    this.#dispatch(true);
    this.#inFlight.drain(this.#push).then(
      () => {
        this.#close();
        cb();
      },
      (err: Error) => cb(err),
    );
  }

  override _destroy(err: Error | null, cb: (e: Error | null) => void): void {
    this.#close();
    cb(err);
  }

  /** The whole output for `plain` at once, on this thread (for small buffers; not mixed with writes). */
  *sealAll(plain: Buffer): Generator<Buffer> {
    if (this.#prefix) yield this.#prefix;
    this.#prefix = undefined;
    yield sealChunks(this.#payloadKey, 0, plain, true);
  }

  #dispatch(last: boolean): void {
    const batch = this.#batch ?? Buffer.allocUnsafeSlow(0);
    const length = this.#fill;
    const counter = this.#counter;
    this.#counter += Math.ceil(length / AGE_CHUNK);
    this.#batch = undefined;
    this.#fill = 0;
    this.#inFlight.add(
      this.#run({ id: this.#id++, counter, buf: batch.buffer as ArrayBuffer, length, last }),
    );
  }

  #run(req: AgeBatchRequest): Promise<Buffer> {
    if (this.#dead) return Promise.reject(this.#dead);
    const w = this.#worker ?? this.#start();
    return new Promise((resolve, reject) => {
      this.#jobs.set(req.id, { resolve, reject });
      w.ref();
      w.postMessage(req, [req.buf]);
    });
  }

  #start(): Worker {
    const w = new Worker(this.#script, { workerData: { key: new Uint8Array(this.#payloadKey) } });
    const die = (why: string) => {
      if (this.#dead || !this.#worker) return;
      this.#dead = new Error(
        `age encryption worker ${why} with ${this.#jobs.size} batch(es) unsealed; the archive is incomplete and is not stored`,
      );
      for (const j of this.#jobs.values()) j.reject(this.#dead);
      this.#jobs.clear();
    };
    w.on("message", (a: AgeBatchAnswer) => {
      const job = this.#jobs.get(a.id);
      if (!job) return;
      this.#jobs.delete(a.id);
      if (this.#jobs.size === 0) w.unref();
      if (a.input.byteLength === BATCH && this.#free.length < IN_FLIGHT) this.#free.push(a.input);
      if ("error" in a) job.reject(new Error(`age encryption failed: ${a.error}`));
      else job.resolve(Buffer.from(a.out, 0, a.length));
    });
    w.on("error", (err) => die(`failed (${err.message})`));
    w.on("exit", (code) => die(`exited (code ${code})`));
    // The worker keeps the process alive only while it holds batches.
    w.unref();
    this.#worker = w;
    return w;
  }

  #close(): void {
    const w = this.#worker;
    this.#worker = undefined;
    for (const j of this.#jobs.values()) j.reject(new Error("age encryption stopped"));
    this.#jobs.clear();
    if (w) void w.terminate();
  }
}

/**
 * Decrypts an age stream with one of `identities`. Fails the stream with an
 * AgeError when no identity matches, when a chunk does not authenticate
 * (tampered, swapped) or when the stream ends without its last chunk.
 * `what` names the object in errors.
 */
export class AgeDecrypt extends Transform {
  readonly #identities: readonly AgeIdentity[];
  readonly #what: string;
  #buf: Buffer = Buffer.alloc(0);
  #payloadKey: Buffer | undefined;
  #counter = 0;
  #done = false;

  constructor(identities: readonly AgeIdentity[], what: string) {
    super();
    this.#identities = identities;
    this.#what = what;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    let out: Buffer | undefined;
    try {
      out = this.#take(chunk);
    } catch (err) {
      cb(err as Error);
      return;
    }
    cb(null, out);
  }

  override _flush(cb: TransformCallback): void {
    let out: Buffer;
    try {
      out = this.#end();
    } catch (err) {
      cb(err as Error);
      return;
    }
    cb(null, out);
  }

  /** A whole age file at once (for small buffers; not mixed with writes). */
  openAll(data: Buffer): Buffer {
    const first = this.#take(data) ?? Buffer.alloc(0);
    return Buffer.concat([first, this.#end()]);
  }

  /** Plaintext of every chunk that `chunk` completes and that is known not to be the last. */
  #take(chunk: Buffer): Buffer | undefined {
    this.#buf = this.#buf.length ? Buffer.concat([this.#buf, chunk]) : chunk;
    if (!this.#payloadKey && !this.#readHeader()) return undefined;
    const out: Buffer[] = [];
    let at = 0;
    // More than a sealed chunk is buffered: the first one is not the last.
    while (this.#buf.length - at > SEALED_CHUNK) {
      out.push(this.#open(this.#buf.subarray(at, at + SEALED_CHUNK), false));
      at += SEALED_CHUNK;
    }
    this.#buf = this.#buf.subarray(at);
    return out.length ? Buffer.concat(out) : undefined;
  }

  /** The last chunk's plaintext; throws when the stream was cut short. */
  #end(): Buffer {
    if (!this.#payloadKey && !this.#readHeader())
      throw new AgeError(`${this.#what} ends inside its age header (truncated, or not age)`);
    if (this.#buf.length === 0 && this.#counter > 0)
      throw new AgeError(`${this.#what} is truncated: its age stream ends without the final chunk`);
    if (this.#buf.length === TAG_BYTES && this.#counter > 0)
      throw new AgeError(`${this.#what} is not a valid age file: an empty last chunk`);
    const last = this.#open(this.#buf, true);
    this.#done = true;
    return last;
  }

  /** Whether the header and nonce were read (and removed from the buffer). */
  #readHeader(): boolean {
    const end = headerEnd(this.#buf);
    if (end < 0) {
      if (this.#buf.length > MAX_HEADER_BYTES || !VERSION_LINE.startsWith(this.#prefixText()))
        throw new AgeError(
          `${this.#what} is not a valid age file: it does not start with "${VERSION_LINE}"`,
        );
      return false;
    }
    if (this.#buf.length < end + NONCE_BYTES) return false;
    const fileKey = unwrapFileKey(this.#buf.subarray(0, end), this.#identities, this.#what);
    this.#payloadKey = hkdf(fileKey, this.#buf.subarray(end, end + NONCE_BYTES), "payload");
    this.#buf = this.#buf.subarray(end + NONCE_BYTES);
    return true;
  }

  #prefixText(): string {
    return this.#buf
      .subarray(0, Math.min(this.#buf.length, VERSION_LINE.length))
      .toString("latin1");
  }

  #open(sealed: Buffer, last: boolean): Buffer {
    if (this.#done) throw new AgeError(`${this.#what}: data after the final age chunk`);
    const plain = open(this.#payloadKey as Buffer, chunkNonce(this.#counter, last), sealed);
    if (!plain)
      throw new AgeError(
        `${this.#what}: age payload chunk ${this.#counter} does not authenticate (altered, reordered or truncated)`,
      );
    this.#counter++;
    return plain;
  }
}

/** Encrypts a small buffer (the manifest's file index) to `recipients`. */
export function ageEncrypt(plain: Buffer, recipients: readonly AgeRecipient[]): Buffer {
  const e = new AgeEncrypt(recipients);
  return Buffer.concat([...e.sealAll(plain)]);
}

/** Decrypts a small buffer; throws AgeError as AgeDecrypt fails. */
export function ageDecrypt(data: Buffer, identities: readonly AgeIdentity[], what: string): Buffer {
  return new AgeDecrypt(identities, what).openAll(data);
}
