/**
 * The tar writer stage: entries in, POSIX (pax) tar bytes out.
 *
 * In: one entry at a time from the source (src/pipeline/source.ts) through the
 * EntryWriter calls: header-only entries (directory, symlink, hard link) with
 * addVoid; a file read whole with addFile; any other file with beginFile,
 * then write() of its content, then endFile, which pads it with zeros to the
 * size its header declared (a tar header cannot be taken back). The caller
 * starts an entry only once the one before has finished; every call waits
 * while the consumer of `out` is behind.
 * Out: `out`, a plain Node Readable of the tar bytes (tar-stream's pack
 * underneath; the plain ustar headers of most entries are written by
 * src/pipeline/ustar.ts, byte for byte as tar-stream writes them),
 * and for every entry, as it starts, its index entry with the offset of its
 * first header block in the uncompressed tar (onEntry, for the manifest).
 * Names are byte strings (src/pipeline/file-names.ts); one that is not UTF-8 gets a
 * raw-byte pax header (src/pipeline/pax.ts). Ending early: `stop` aborted makes every
 * wait reject with its reason; destroy() tears the stream down; `out`
 * destroyed before the end of the archive calls onDestroyed.
 */

import type { BigIntStats } from "node:fs";
import { Readable } from "node:stream";
import { type Header, type Pack, pack as tarPack } from "tar-stream";
import { ChunkBatch } from "./chunk-batch.js";
import { fsPath, textOf } from "./file-names.js";
import { paxHeader, paxRecord } from "./pax.js";
import { BLOCK, padding, writePlainHeader } from "./ustar.js";

/** One entry as it goes into the tar, for an index of the archive (src/repo/manifest.ts). */
export interface ArchiveEntry {
  /** Byte string (src/pipeline/file-names.ts), as archived. */
  name: string;
  type: "file" | "directory" | "symlink" | "link";
  size: number;
  /** The full st_mode (type bits included). */
  mode: number;
  uid: number;
  gid: number;
  /** Seconds since the epoch. */
  mtime: number;
  /** Byte string: a symlink's target, or the earlier name of a hard link. */
  linkname?: string;
  /** Where the entry's first header block (its pax header, if it has one) starts in the uncompressed tar. */
  offset: number;
  /** What an incremental compares (src/pipeline/changes.ts); not written to the tar. */
  stat?: EntryStat;
}

/** Inode, mtime and ctime (nanoseconds) as decimal strings: what the next incremental compares. */
export interface EntryStat {
  ino: string;
  mtimeNs: string;
  ctimeNs: string;
}

/** The EntryStat of an lstat/fstat result. */
export function entryStat(st: BigIntStats): EntryStat {
  return { ino: String(st.ino), mtimeNs: String(st.mtimeNs), ctimeNs: String(st.ctimeNs) };
}

/**
 * `pax` records go into a pax extended header that tar-stream writes before
 * the entry. `name` and `linkname` are byte strings (see src/pipeline/file-names.ts).
 */
export type EntryHeader = Partial<Header> & {
  name: string;
  pax?: Record<string, string>;
  /** For the index only (ArchiveEntry.stat); never written to the tar. */
  stat?: EntryStat;
};
type EntrySink = ReturnType<Pack["entry"]>;

/** A file entry whose header is written and whose content is being written. */
export interface OpenEntry {
  readonly sink: EntrySink;
  readonly finished: Promise<void>;
  /** The size the header declared. */
  readonly size: number;
}

/** What the source writes entries into (see the contract above). */
export interface EntryWriter {
  addVoid(header: EntryHeader): Promise<void>;
  /** A file whose content was read whole; `data` shorter than header.size is padded with zeros. */
  addFile(header: EntryHeader, data: Buffer): Promise<void>;
  beginFile(header: EntryHeader): Promise<OpenEntry>;
  write(entry: OpenEntry, buf: Buffer): Promise<void>;
  endFile(entry: OpenEntry, written: number): Promise<void>;
}

/** Size of the padding writes, and half of `out`'s buffer. */
const CHUNK = 1024 * 1024;
/** The pack's chunks are passed on in writes of about this size (see TarWriter.pass). */
const OUT_BATCH = 256 * 1024;
const EMPTY = Buffer.alloc(0);
/** A shared, never-mutated block of zeros for padding files that came up short. */
const ZEROS = Buffer.alloc(CHUNK);
/**
 * True when `chunk`, as `out` gave it, may be handed to another thread
 * (transferred): it is the whole of an ArrayBuffer that nothing here uses
 * again. The shared zero padding and Node's pool slabs, which hold other
 * buffers, never are; a batch of joined chunks or a large file's read
 * buffer passed on whole is.
 */
export function ownsWhole(chunk: Buffer): boolean {
  return (
    chunk.byteOffset === 0 &&
    chunk.byteLength === chunk.buffer.byteLength &&
    chunk.byteLength > Buffer.poolSize &&
    chunk.buffer !== ZEROS.buffer
  );
}

/** Largest value of the 6-digit octal uid/gid fields of a ustar header. */
const USTAR_MAX_ID = 0o777777;
/** Sizes from 8 GiB do not fit the 11-digit octal size field. */
const USTAR_MAX_SIZE = 0o77777777777;
/** tar-stream encodes mtime with `| 0`, so only this range survives its ustar header. */
const MAX_HEADER_MTIME = 2 ** 31 - 1;
const NS_PER_S = 1_000_000_000n;
/** The ustar name and linkname fields hold this many bytes. */
const USTAR_NAME = 100;

export class TarWriter implements EntryWriter {
  readonly out: Readable;

  private readonly pack = tarPack();
  /** True once the end of the tar was pushed to `out`: destroying it later is not an abort. */
  private ended = false;
  /** `out` refused more data; the pack is paused until the consumer reads. */
  private paused = false;
  private wakeRoom: (() => void) | null = null;
  /** Bytes the pack has produced so far: every byte passes through its push(). */
  private written = 0;
  /** The pack's chunks not yet passed to `out` (see pass). */
  private readonly held = new ChunkBatch();
  private passQueued = false;
  private readonly passSoon = (): void => {
    this.passQueued = false;
    this.pass();
  };

  constructor(
    /** Aborted by anything that ends the archive early; every wait listens to it. */
    private readonly stop: AbortSignal,
    /** Called when `out` is destroyed before the archive is complete, or the pack fails. */
    onDestroyed: (reason: unknown) => void,
    private readonly onEntry?: (e: Readonly<ArchiveEntry>) => void,
    /** Memory to join held chunks in (ArchiveOptions.buffers). */
    private readonly buffers?: (size: number) => Buffer | undefined,
  ) {
    // tar-stream's pack is a streamx stream; callers get a plain Node Readable
    // so pipeline(), finished() and destroy semantics are the ones they know.
    this.out = new Readable({
      highWaterMark: 2 * CHUNK,
      read: () => {
        if (!this.paused) return;
        this.paused = false;
        this.pack.resume();
        const wake = this.wakeRoom;
        this.wakeRoom = null;
        wake?.();
      },
      destroy: (err, cb) => {
        if (!this.ended) {
          const reason =
            err ?? new Error("archive stream was destroyed before the archive was complete");
          onDestroyed(reason);
        }
        cb(err);
      },
    });
    const push = this.pack.push.bind(this.pack);
    this.pack.push = (data: Buffer | null) => {
      if (data) this.written += data.length;
      return push(data);
    };
    this.pack.on("data", (chunk) => {
      this.held.add(chunk as Buffer);
      if (this.held.length >= OUT_BATCH) this.pass();
      else if (!this.passQueued) {
        this.passQueued = true;
        setImmediate(this.passSoon);
      }
    });
    this.pack.on("end", () => {
      this.pass();
      this.ended = true;
      this.out.push(null);
    });
    this.pack.on("error", (err: Error) => onDestroyed(err));
  }

  /**
   * Passes the held chunks to `out` as one. The pack emits three chunks per
   * small file (header, content, padding), and every chunk costs each later
   * stage a call of its own: 100,000 files of 0.5-4 KiB made 305,000 of them.
   * Chunks are held until OUT_BATCH bytes are, or until the walk yields to the
   * event loop (setImmediate runs only once it waits for I/O or for room), so
   * nothing sits here while the walk waits.
   */
  private pass(): void {
    if (this.held.length === 0 || this.out.destroyed) return;
    if (!this.out.push(this.held.take(this.buffers))) {
      this.paused = true;
      this.pack.pause();
    }
  }

  /** Tears the tar down: the stream errors with the reason itself. */
  destroy(reason: unknown): void {
    if (!this.pack.destroyed) this.pack.destroy(reason as Error);
    if (!this.out.destroyed) this.out.destroy(reason as Error);
  }

  /** Writes the end-of-archive blocks and resolves once `out` has them all. */
  async finish(): Promise<void> {
    const end = this.waitFor((resolve) => {
      if (this.ended) resolve();
      else this.pack.once("end", resolve);
      return () => this.pack.off("end", resolve);
    });
    this.pack.finalize();
    await end;
  }

  /** Adds an entry without content (directory, symlink, hard link). */
  async addVoid(header: EntryHeader): Promise<void> {
    await this.room();
    if (this.addPlain(header, EMPTY)) return;
    const finished = entryFinished();
    this.entry(header, finished.callback).on("error", ignore);
    await this.stoppable(finished.promise);
  }

  /** Adds a file whose whole content is `data`, zero-padded to header.size if it came up short. */
  async addFile(header: EntryHeader, data: Buffer): Promise<void> {
    const size = header.size ?? 0;
    if (data.length > size)
      throw new Error(`${data.length} bytes of content for a tar entry of ${size}`);
    await this.room();
    if (this.addPlain(header, data)) return;
    const entry = await this.beginFile(header);
    if (data.length > 0) await this.write(entry, data);
    await this.endFile(entry, data.length);
  }

  /**
   * An entry whose header is plain ustar (src/pipeline/ustar.ts), pushed into
   * the pack as one buffer with its content and padding, without a tar-stream
   * entry stream; false when the header is not plain (nothing pushed). In
   * order for the reason `entry` gives.
   */
  private addPlain(header: EntryHeader, data: Buffer): boolean {
    if (this.stop.aborted) throw this.stop.reason;
    // tar-stream writes a symlink with size 0, and pads other header-only entries to their size.
    const size = header.type === "symlink" ? 0 : (header.size ?? 0);
    // addFile has checked that data fits in size; addVoid passes none.
    if (size > CHUNK || (header.type !== "file" && size !== 0)) return false;
    const buf = Buffer.allocUnsafe(BLOCK + size + padding(size));
    if (!writePlainHeader(header, buf, 0)) return false;
    data.copy(buf, BLOCK);
    buf.fill(0, BLOCK + data.length);
    this.onEntry?.(indexEntry(header, this.written));
    this.pack.push(buf);
    return true;
  }

  /** Writes the header of a file entry; exactly header.size bytes must follow. */
  async beginFile(header: EntryHeader): Promise<OpenEntry> {
    const size = header.size ?? 0;
    await this.room();
    const finished = entryFinished();
    const sink = this.entry(header, finished.callback);
    sink.on("error", ignore);
    return { sink, finished: finished.promise, size };
  }

  async write(entry: OpenEntry, buf: Buffer): Promise<void> {
    if (!entry.sink.write(buf)) await this.drained(entry.sink);
  }

  /** Pads the entry with zeros from `written` to its declared size and closes it. */
  async endFile(entry: OpenEntry, written: number): Promise<void> {
    for (let pos = written; pos < entry.size; ) {
      const len = Math.min(CHUNK, entry.size - pos);
      pos += len;
      await this.write(entry, ZEROS.subarray(0, len));
    }
    entry.sink.end(null); // streamx: end(null) ends without writing more (its typings require an argument)
    await this.stoppable(entry.finished);
  }

  /**
   * Starts an entry in the pack. A name and link target that are valid UTF-8
   * go to tar-stream as text, as they always did. Otherwise the raw-byte pax
   * header (src/pipeline/pax.ts) is pushed into the pack first, and tar-stream writes
   * the entry under an ASCII stand-in name that fits plain ustar, so it adds
   * no pax header of its own (whose `path` would override ours). Pushing
   * directly is in order because the walk adds one entry at a time and waits
   * for it to finish: no other entry's bytes can be pending in the pack.
   */
  private entry(indexed: EntryHeader, callback: (err?: Error | null) => void): EntrySink {
    // The walk starts an entry only once the one before is finished and all its
    // bytes (padding included) are pushed, so `written` is where this one begins.
    this.onEntry?.(indexEntry(indexed, this.written));
    const { stat: _stat, ...header } = indexed;
    const name = textOf(header.name);
    const linkname = header.linkname === undefined ? null : textOf(header.linkname);
    if (name !== null && (header.linkname === undefined || linkname !== null)) {
      const text: EntryHeader = { ...header, name };
      if (linkname !== null) text.linkname = linkname;
      return this.pack.entry(text, callback);
    }
    const records = [paxRecord("path", fsPath(header.name))];
    if (header.linkname !== undefined) records.push(paxRecord("linkpath", fsPath(header.linkname)));
    for (const [key, value] of Object.entries(header.pax ?? {}))
      records.push(paxRecord(key, Buffer.from(value, "utf8")));
    const mtime = header.mtime ?? new Date(0);
    this.pack.push(
      paxHeader(Buffer.concat(records), {
        mode: header.mode ?? 0,
        uid: header.uid ?? 0,
        gid: header.gid ?? 0,
        mtime: Math.floor(mtime.getTime() / 1000),
      }),
    );
    const { pax: _records, ...plain } = header;
    const standIn: EntryHeader = { ...plain, name: asciiStandIn(header.name) };
    if (header.linkname !== undefined) standIn.linkname = asciiStandIn(header.linkname);
    return this.pack.entry(standIn, callback);
  }

  /**
   * Header-only entries ignore the pack's backpressure, so the walk itself waits
   * here while the consumer is behind; otherwise a slow upload and a tree of a
   * million empty files would buffer all their headers.
   */
  private async room(): Promise<void> {
    if (!this.paused) return;
    await this.waitFor((resolve) => {
      this.wakeRoom = resolve;
      return () => {
        if (this.wakeRoom === resolve) this.wakeRoom = null;
      };
    });
  }

  private drained(sink: EntrySink): Promise<void> {
    return this.waitFor((resolve, reject) => {
      const onClose = () => reject(new Error("tar entry closed before its content was written"));
      sink.once("drain", resolve);
      sink.once("close", onClose);
      return () => {
        sink.off("drain", resolve);
        sink.off("close", onClose);
      };
    });
  }

  private stoppable(promise: Promise<void>): Promise<void> {
    return this.waitFor((resolve, reject) => {
      promise.then(resolve, reject);
      return undefined;
    });
  }

  /**
   * A promise that also settles (rejects with the stop reason) when the archive
   * ends early, so no wait can outlive an abort. `setup` returns its cleanup,
   * which runs whichever way the wait ends (no listener piles up on long-lived emitters).
   */
  private waitFor(
    setup: (resolve: () => void, reject: (err: unknown) => void) => (() => void) | undefined,
  ): Promise<void> {
    const stop = this.stop;
    return new Promise<void>((resolve, reject) => {
      if (stop.aborted) {
        reject(stop.reason);
        return;
      }
      let settled = false;
      let cleanup: (() => void) | undefined;
      const settle = (fn: () => void) => {
        if (settled) return;
        settled = true;
        stop.removeEventListener("abort", onAbort);
        cleanup?.();
        fn();
      };
      const onAbort = () => settle(() => reject(stop.reason));
      stop.addEventListener("abort", onAbort);
      cleanup = setup(
        () => settle(resolve),
        (err) => settle(() => reject(err)),
      );
      if (settled) cleanup?.();
    });
  }
}

/** The header of an entry of this type from its lstat/fstat, with pax records where ustar falls short. */
export function headerFor(
  name: string,
  type: "file" | "directory" | "symlink" | "link",
  st: BigIntStats,
  size: number,
  linkname?: string,
): EntryHeader {
  const pax: Record<string, string> = {};
  const uid = Number(st.uid);
  const gid = Number(st.gid);
  if (uid > USTAR_MAX_ID) pax.uid = String(uid);
  if (gid > USTAR_MAX_ID) pax.gid = String(gid);
  if (size > USTAR_MAX_SIZE) pax.size = String(size);
  let seconds = st.mtimeNs / NS_PER_S;
  if (st.mtimeNs % NS_PER_S < 0n) seconds -= 1n; // floor, not truncation, before 1970
  let mtime = new Date(Number(seconds) * 1000);
  if (seconds < 0n || seconds > MAX_HEADER_MTIME) {
    pax.mtime = String(seconds);
    mtime = new Date(seconds < 0n ? 0 : MAX_HEADER_MTIME * 1000);
  }
  const header: EntryHeader = {
    name,
    type,
    size,
    // The full st_mode (type bits included) is never 0, so tar-stream does not
    // replace a chmod 000 entry's mode with its 0644 default; only 0o7777 is written.
    mode: Number(st.mode),
    uid: Math.min(uid, USTAR_MAX_ID),
    gid: Math.min(gid, USTAR_MAX_ID),
    mtime,
  };
  if (linkname !== undefined) header.linkname = linkname;
  header.stat = entryStat(st);
  // tar-stream writes a pax header whenever `pax` is set, even when empty.
  if (Object.keys(pax).length > 0) header.pax = pax;
  return header;
}

function indexEntry(header: EntryHeader, offset: number): ArchiveEntry {
  const pax = header.pax ?? {};
  const e: ArchiveEntry = {
    name: header.name,
    type: (header.type ?? "file") as ArchiveEntry["type"],
    size: Number(pax.size ?? header.size ?? 0),
    mode: header.mode ?? 0,
    uid: Number(pax.uid ?? header.uid ?? 0),
    gid: Number(pax.gid ?? header.gid ?? 0),
    mtime: Number(pax.mtime ?? Math.floor((header.mtime?.getTime() ?? 0) / 1000)),
    offset,
  };
  if (header.linkname !== undefined) e.linkname = header.linkname;
  if (header.stat !== undefined) e.stat = header.stat;
  return e;
}

function entryFinished(): { promise: Promise<void>; callback: (err?: Error | null) => void } {
  let callback: (err?: Error | null) => void = () => {};
  const promise = new Promise<void>((resolve, reject) => {
    callback = (err) => (err ? reject(err) : resolve());
  });
  promise.catch(() => {}); // observed through waitFor; unobserved when the walk stops first
  return { promise, callback };
}

/**
 * What a reader that ignores pax headers sees for a name that is not UTF-8:
 * printable ASCII, every other byte as "_", cut to the ustar field.
 */
function asciiStandIn(name: string): string {
  return name.replace(/[^\x20-\x7e]/g, "_").slice(0, USTAR_NAME);
}

/**
 * For tar entry sinks: they error only when the pack is destroyed, which
 * already ended the archive; unlistened, the error would crash.
 */
function ignore(): void {}
