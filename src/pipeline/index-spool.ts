/**
 * The manifest's file index, spooled to disk while the archive is written.
 *
 * The index is written after the archive (its entries name their offsets in
 * the tar), so held in memory it grew with every file for the whole backup:
 * about 0.4 KiB of live objects per entry, and V8 grew its young generation
 * to suit a heap where everything survives, so the process's peak grew by
 * about 1.7 KiB per file (378 MiB for 100,000 small files). Here each entry
 * becomes its JSON text at once (the very text the manifest holds, as
 * JSON.stringify of the whole manifest would write it) and goes to a file in
 * 1 MiB batches, so memory per file is O(1); the manifest is then encoded
 * from a stream of the file (src/repo/manifest-stream.ts).
 *
 * The file: created beside the catalog (on the same disk as the catalog, never
 * a tmpfs by default) as `<catalog>.index-<pid>-<runId>-<random>.spool`, 0600,
 * with O_EXCL and O_NOFOLLOW (an existing file or symlink of that name is
 * refused, never followed), and unlinked at once: from then on it has no name,
 * only this process's descriptor, which it is written through and read back
 * from. So nothing is left behind whatever ends the run (SIGKILL, OOM, power
 * loss: the kernel frees an unlinked file with its last descriptor), no other
 * process can open, swap or delete it (no pid checks across containers or pid
 * reuse), and the walk never meets it (no exclude needed, nothing that would
 * change an incremental chain's walk fingerprint). The name shows only in
 * errors, which name the directory at fault.
 *
 * A write that fails (disk full, I/O error) fails the run at once through
 * `onError`, naming the file, so that no archive without a manifest is
 * completed; later entries are dropped.
 */
import { randomBytes } from "node:crypto";
import { closeSync, read, unlinkSync, writeSync } from "node:fs";
import { Transform } from "node:stream";
import { promisify } from "node:util";
import {
  countsAsFile,
  type IndexText,
  type IndexWriter,
  indexFile,
  type ManifestFile,
} from "../repo/manifest.js";
import { createPrivateFile } from "../repo/private-file.js";
import type { ArchiveEntry } from "./archive.js";

/** Bytes of JSON collected before they are written out. */
const BATCH = 1024 * 1024;

/** The error a spool's write or read fails with; it names the file. */
export class SpoolError extends Error {
  override name = "SpoolError";
}

export interface SpoolOptions {
  /** The catalog's path: the spool is named after it and lives beside it. */
  catalogPath: string;
  runId: number;
  /** Called once, with the first write failure (after endOfIndex's stage is destroyed with it). */
  onError?: (err: SpoolError) => void;
  /** The name's random part (tests fix it to meet a name that is taken). */
  suffix?: string;
  /** fs.writeSync; tests inject a full disk. */
  write?: (fd: number, buf: Buffer, off: number, len: number) => number;
}

export class IndexSpool implements IndexWriter {
  readonly path: string;
  #fd: number | undefined;
  #pending: string[] = [];
  #pendingBytes = 0;
  /** Bytes written to the file so far (what contents() reads back before the tail). */
  #written = 0;
  #entries = 0;
  #files = 0;
  #error: SpoolError | undefined;
  #stage: Transform | undefined;
  readonly #onError: ((err: SpoolError) => void) | undefined;
  readonly #write: NonNullable<SpoolOptions["write"]>;

  private constructor(path: string, fd: number, o: SpoolOptions) {
    this.path = path;
    this.#fd = fd;
    this.#onError = o.onError;
    this.#write = o.write ?? writeSync;
  }

  /** Creates the spool (0600, O_EXCL, then unlinked); throws SpoolError naming it when it cannot. */
  static open(o: SpoolOptions): IndexSpool {
    const path = spoolPath(o.catalogPath, o.runId, o.suffix);
    let fd: number;
    try {
      fd = createPrivateFile(path);
    } catch (err) {
      throw new SpoolError(
        `the manifest's index spool ${path} could not be created (${(err as Error).message}); nothing was uploaded`,
        { cause: err },
      );
    }
    try {
      unlinkSync(path);
    } catch (err) {
      closeSync(fd);
      throw new SpoolError(
        `the manifest's index spool ${path} could not be unlinked after creating it (${(err as Error).message}); nothing was uploaded`,
        { cause: err },
      );
    }
    return new IndexSpool(path, fd, o);
  }

  /** Entries spooled so far. */
  get entries(): number {
    return this.#entries;
  }

  /** Regular files and hard links spooled so far: the count the catalog records (countFiles). */
  get files(): number {
    return this.#files;
  }

  add(e: Readonly<ArchiveEntry>): void {
    this.carry(indexFile(e));
  }

  addText(t: IndexText): void {
    if (t.count === 0) return;
    this.#files += t.files;
    this.#push(t.json, t.count);
  }

  carry(f: ManifestFile): void {
    if (countsAsFile(f)) this.#files++;
    this.#push(JSON.stringify(f));
  }

  /**
   * A pass-through stage for the archive's bytes. The entries go to the file
   * in whole batches; what is left when the tar ends (less than a batch) stays
   * in memory, so a small backup writes nothing to the spool, and a full
   * catalog disk fails it only where the index is large. A write failure
   * during the walk destroys this stage with the error, which tears the
   * pipeline down before the upload completes; after the end it fails.
   */
  endOfIndex(): Transform {
    const stage = new Transform({
      transform: (chunk, _enc, cb) => cb(null, chunk),
      flush: (cb) => cb(this.#error ?? null),
    });
    this.#stage = stage;
    if (this.#error) stage.destroy(this.#error);
    return stage;
  }

  /**
   * The index as the contents of its JSON array (entries joined by commas,
   * no brackets): the file's batches, then the tail still in memory. Throws
   * the first write failure.
   */
  async *contents(): AsyncGenerator<Buffer> {
    if (this.#error) throw this.#error;
    const fd = this.#fd;
    if (fd === undefined)
      throw new SpoolError(`the manifest's index spool ${this.path} was closed before it was read`);
    const readAt = promisify(read);
    try {
      for (let position = 0; position < this.#written; ) {
        const buf = Buffer.allocUnsafe(Math.min(BATCH, this.#written - position));
        const { bytesRead } = await readAt(fd, buf, 0, buf.length, position);
        if (bytesRead === 0) throw new Error(`ended at byte ${position} of ${this.#written}`);
        position += bytesRead;
        yield buf.subarray(0, bytesRead);
      }
    } catch (err) {
      throw new SpoolError(
        `the manifest's index spool ${this.path} could not be read back (${(err as Error).message})`,
        { cause: err },
      );
    }
    if (this.#pending.length) yield Buffer.from(this.#pending.join(""), "utf8");
  }

  /** Closes the file, which frees it (it has no name); never throws. */
  remove(): void {
    this.#close();
  }

  /** `json`: `count` records joined by commas. */
  #push(json: string, count = 1): void {
    if (this.#error) return;
    const text = this.#entries === 0 ? json : `,${json}`;
    this.#entries += count;
    this.#pending.push(text);
    this.#pendingBytes += text.length;
    if (this.#pendingBytes >= BATCH) this.#flush();
  }

  #flush(): void {
    if (this.#error || this.#fd === undefined || this.#pending.length === 0) return;
    const buf = Buffer.from(this.#pending.join(""), "utf8");
    this.#pending = [];
    this.#pendingBytes = 0;
    try {
      for (let off = 0; off < buf.length; ) {
        const n = this.#write(this.#fd, buf, off, buf.length - off);
        off += n;
        this.#written += n;
      }
    } catch (err) {
      this.#error = new SpoolError(
        `the manifest's index could not be written to ${this.path} (${(err as Error).message}); the backup is abandoned, nothing is kept of it`,
        { cause: err },
      );
      this.#stage?.destroy(this.#error);
      this.#onError?.(this.#error);
    }
  }

  #close(): void {
    if (this.#fd === undefined) return;
    const fd = this.#fd;
    this.#fd = undefined;
    try {
      closeSync(fd);
    } catch {
      // Nothing more is written to it.
    }
  }
}

/** `<catalog>.index-<pid>-<runId>-<random>.spool`: never an existing name, even across pid namespaces. */
function spoolPath(catalogPath: string, runId: number, suffix?: string): string {
  const random = suffix ?? randomBytes(6).toString("hex");
  return `${catalogPath}.index-${process.pid}-${runId}-${random}.spool`;
}
