/**
 * The restore pipeline's source stage: the decrypted bytes of one archive
 * version as a stream, read by version ID with its SSE-C key, either whole or
 * as a list of byte ranges (a ranged restore, src/flows/ranged.ts), and resumed
 * across broken or stalled connections either way.
 */
import { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { describeError, ImmutdError, StorageError } from "../errors.js";
import type { ObjectStore } from "../store/store.js";

export const RESTORE_EXIT_CODE = 3;

/** The restore did not complete: integrity failed, the stream broke, or entries were refused. */
export class RestoreError extends ImmutdError {
  override readonly exitCode = RESTORE_EXIT_CODE;
}

/** One stored version and the key to read it. */
export interface VersionRef {
  bucket: string;
  key: string;
  versionId: string;
  /** undefined: the version is stored without SSE-C (age alone). */
  sseKey: Buffer | undefined;
}

export interface DownloadOptions {
  signal?: AbortSignal;
  /** Called when a broken or stalled download is resumed from byte `offset` of the version. */
  onResume?: (r: { offset: number; attempt: number; error: string }) => void;
}

/** Bytes `start` up to (not including) `end` of a version. */
export interface ByteRange {
  start: number;
  end: number;
}

/** Where a version is, for messages. */
export function whereOf(v: VersionRef): string {
  return `s3://${v.bucket}/${v.key} version ${v.versionId}`;
}

/** The whole version as one stream; a refusal of the first request is thrown here as a RestoreError. */
export function download(
  reader: ObjectStore,
  v: VersionRef,
  o: DownloadOptions = {},
): Promise<Readable> {
  return ResumingDownload.open(reader, v, undefined, o);
}

/**
 * The given ranges of a version, one after the other, as one stream, then
 * `tail` (e.g. the tar end-of-archive blocks). One request per range, each
 * opened when the previous one ended, each resumed on its own.
 */
export async function downloadRanges(
  reader: ObjectStore,
  v: VersionRef,
  ranges: readonly ByteRange[],
  tail: Buffer,
  o: DownloadOptions = {},
): Promise<Readable> {
  const [first, ...rest] = ranges;
  const opened = first ? await ResumingDownload.open(reader, v, first, o) : undefined;
  async function* chunks(): AsyncGenerator<Buffer> {
    if (opened) yield* opened;
    for (const r of rest) yield* await ResumingDownload.open(reader, v, r, o);
    if (tail.length > 0) yield tail;
  }
  return Readable.from(chunks(), { objectMode: false });
}

/**
 * How many times in a row a download is resumed without receiving a byte in
 * between before the restore fails. Any progress resets the count, so a slow
 * consumer (whose paused connection the server or the idle timeout may drop
 * each time) costs one resume per pause, never a failure.
 */
export const DOWNLOAD_RESUMES = 4;

/**
 * The bytes of one version (or of one range of it) as a single stream across
 * broken connections: when the body fails (connection reset or dropped, idle
 * timeout), it is fetched again with a ranged GET of the same version ID and
 * SSE-C key from the first byte not yet received. Downstream sees one continuous stream, so the
 * SHA-256 and the size are still checked over every byte. A new request is
 * made only once the consumer asks for more: a consumer that is slow is not
 * a stall, and reading resumes when it reads again.
 */
class ResumingDownload extends Readable {
  readonly #reader: ObjectStore;
  readonly #src: VersionRef;
  readonly #where: string;
  readonly #end: number | undefined;
  readonly #opts: DownloadOptions;
  #source: Readable | undefined;
  #offset: number;
  /** Resumes since the last byte arrived. */
  #failures = 0;
  #opening = false;
  /** The consumer asked for bytes that have not been pushed yet. */
  #wanted = false;

  private constructor(
    reader: ObjectStore,
    src: VersionRef,
    range: ByteRange | undefined,
    o: DownloadOptions,
  ) {
    super();
    this.#reader = reader;
    this.#src = src;
    this.#where = whereOf(src);
    this.#offset = range?.start ?? 0;
    this.#end = range?.end;
    this.#opts = o;
  }

  /** Opens the download; a refusal of the first request is thrown here as a RestoreError. */
  static async open(
    reader: ObjectStore,
    src: VersionRef,
    range: ByteRange | undefined,
    o: DownloadOptions,
  ): Promise<ResumingDownload> {
    const d = new ResumingDownload(reader, src, range, o);
    try {
      d.#attach(await d.#get());
    } catch (err) {
      throw d.#explain(err);
    }
    return d;
  }

  #get(): Promise<Readable> {
    return this.#reader.get(this.#src.key, this.#src.versionId, this.#src.sseKey, {
      ...(this.#opts.signal ? { signal: this.#opts.signal } : {}),
      start: this.#offset,
      ...(this.#end !== undefined ? { end: this.#end } : {}),
    });
  }

  /** A refusal as one line saying what was refused (credential, permission, SSE-C key); other errors as they are. */
  #explain(err: unknown): unknown {
    if (!(err instanceof StorageError)) return err;
    const why = err.refusalText();
    if (why === undefined) return err;
    const hint =
      err.refusal === "credential"
        ? " Check the target's credentials.reader in the config."
        : err.refusal === "sse-c key"
          ? " With --from-bucket this means the master key is not the one the backup was made with; otherwise the catalog's key is wrong."
          : "";
    return new RestoreError(`cannot read ${this.#where}: ${why}.${hint}`, { cause: err });
  }

  #attach(s: Readable): void {
    this.#source = s;
    s.on("data", (c: Buffer) => {
      this.#offset += c.length;
      this.#failures = 0;
      if (!this.push(c)) {
        this.#wanted = false;
        s.pause();
      }
    });
    s.on("end", () => this.push(null));
    s.on("error", (err) => {
      if (s === this.#source) this.#onBreak(err);
    });
    if (!this.#wanted) s.pause();
  }

  override _read(): void {
    this.#wanted = true;
    if (this.#source) this.#source.resume();
    else void this.#resume();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.#source?.destroy();
    cb(err);
  }

  #onBreak(err: Error): void {
    this.#source = undefined;
    if (this.destroyed) return;
    const signal = this.#opts.signal;
    if (signal?.aborted) this.destroy(signal.reason as Error);
    else if (err instanceof StorageError && !err.transient) this.destroy(err);
    else if (this.#count(err) && this.#wanted) void this.#resume();
  }

  /** Counts one more resume without progress; false (and the stream failed) past the limit. */
  #count(err: unknown): boolean {
    this.#failures++;
    if (this.#failures > DOWNLOAD_RESUMES) {
      this.destroy(
        new Error(
          `the download broke ${this.#failures} times in a row at byte ${this.#offset} without progress (last: ${describeError(err)})`,
          { cause: err },
        ),
      );
      return false;
    }
    this.#opts.onResume?.({
      offset: this.#offset,
      attempt: this.#failures,
      error: describeError(err),
    });
    return true;
  }

  /** Re-requests the version from the first byte not yet received. */
  async #resume(): Promise<void> {
    if (this.#opening || this.destroyed) return;
    if (this.#end !== undefined && this.#offset >= this.#end) {
      this.push(null); // every byte of the range arrived before the connection broke
      return;
    }
    this.#opening = true;
    try {
      for (;;) {
        // The first resume is immediate (a dropped idle connection); repeated ones back off.
        if (this.#failures > 1) {
          const signal = this.#opts.signal;
          await sleep(500 * 2 ** (this.#failures - 2), undefined, signal ? { signal } : {});
        }
        try {
          const s = await this.#get();
          if (this.destroyed) s.destroy();
          else this.#attach(s);
          return;
        } catch (err) {
          if (this.destroyed) return;
          // The ranged GET failed after the SDK's own retries: one more failure in the row.
          if (!(err instanceof StorageError && err.transient) || this.#opts.signal?.aborted) {
            this.destroy(this.#explain(this.#opts.signal?.reason ?? err) as Error);
            return;
          }
          if (!this.#count(err)) return;
        }
      }
    } catch (err) {
      this.destroy(err as Error); // the backoff was cancelled
    } finally {
      this.#opening = false;
      if (this.#source && this.#wanted) this.#source.resume();
    }
  }
}
