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
 * The file: `<catalog>.index-<pid>-<runId>.spool` beside the catalog (on the
 * same disk as the catalog, never a tmpfs by default), created 0600 with
 * O_EXCL (an existing file or symlink of that name is refused, never
 * followed), removed when the run ends, whether it succeeded or failed.
 * A run killed with SIGKILL leaves its file behind: the next run removes
 * every spool whose process is gone (sweepStaleSpools), and the walk
 * never archives a spool (src/flows/backup.ts excludes the pattern).
 *
 * A write that fails (disk full, I/O error) fails the run at once through
 * `onError`, naming the file, so that no archive without a manifest is
 * completed; later entries are dropped.
 */
import {
  closeSync,
  constants,
  createReadStream,
  openSync,
  readdirSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { basename, dirname, join } from "node:path";
import { Transform } from "node:stream";
import { type IndexWriter, indexFile, type ManifestFile } from "../repo/manifest.js";
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
  /** fs.writeSync; tests inject a full disk. */
  write?: (fd: number, buf: Buffer, off: number, len: number) => number;
}

export class IndexSpool implements IndexWriter {
  readonly path: string;
  #fd: number | undefined;
  #pending: string[] = [];
  #pendingBytes = 0;
  #entries = 0;
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

  /** Creates the spool (0600, O_EXCL); throws SpoolError naming it when it cannot. */
  static open(o: SpoolOptions): IndexSpool {
    const path = spoolPath(o.catalogPath, o.runId);
    let fd: number;
    try {
      fd = openSync(
        path,
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
        0o600,
      );
    } catch (err) {
      throw new SpoolError(
        `the manifest's index spool ${path} could not be created (${(err as Error).message}); nothing was uploaded`,
        { cause: err },
      );
    }
    return new IndexSpool(path, fd, o);
  }

  /** Entries spooled so far. */
  get entries(): number {
    return this.#entries;
  }

  add(e: Readonly<ArchiveEntry>): void {
    this.#push(JSON.stringify(indexFile(e)));
  }

  carry(f: ManifestFile): void {
    this.#push(JSON.stringify(f));
  }

  /**
   * A pass-through stage for the archive's bytes that, when they end, writes
   * out the last entries (all are known once the tar has ended), so that a
   * failure to write them fails the upload before it completes. A write
   * failure during the walk destroys it with the error, which tears the
   * pipeline down the same way.
   */
  endOfIndex(): Transform {
    const stage = new Transform({
      transform: (chunk, _enc, cb) => cb(null, chunk),
      flush: (cb) => {
        this.#flush();
        this.#close();
        cb(this.#error ?? null);
      },
    });
    this.#stage = stage;
    if (this.#error) stage.destroy(this.#error);
    return stage;
  }

  /**
   * The index as the contents of its JSON array (entries joined by commas,
   * no brackets), streamed from the file. Ends the writing; throws the
   * first write failure.
   */
  async *contents(): AsyncGenerator<Buffer> {
    this.#flush();
    this.#close();
    if (this.#error) throw this.#error;
    try {
      for await (const chunk of createReadStream(this.path, { highWaterMark: BATCH }))
        yield chunk as Buffer;
    } catch (err) {
      throw new SpoolError(
        `the manifest's index spool ${this.path} could not be read back (${(err as Error).message})`,
        { cause: err },
      );
    }
  }

  /** Closes and deletes the file; never throws (a file already gone is fine). */
  remove(): void {
    this.#close();
    try {
      unlinkSync(this.path);
    } catch {
      // Already gone, or the directory went away: the next run's sweep takes what is left.
    }
  }

  #push(json: string): void {
    if (this.#error) return;
    const text = this.#entries++ === 0 ? json : `,${json}`;
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
      for (let off = 0; off < buf.length; )
        off += this.#write(this.#fd, buf, off, buf.length - off);
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

/** `<catalog>.index-<pid>-<runId>.spool`. */
function spoolPath(catalogPath: string, runId: number): string {
  return `${catalogPath}.index-${process.pid}-${runId}.spool`;
}

/** The glob (exclude syntax, src/pipeline/exclude.ts) every spool of a catalog at `literalCatalog` matches. */
export function spoolPattern(literalCatalog: string): string {
  return `${literalCatalog}.index-*.spool`;
}

/**
 * Removes the spools of runs whose process is gone (killed before it could
 * remove its own). A spool of a live process (another run, this one's
 * included) is left alone. Returns the paths removed; never throws.
 */
export function sweepStaleSpools(catalogPath: string): string[] {
  const dir = dirname(catalogPath);
  const prefix = `${basename(catalogPath)}.index-`;
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    if (!name.startsWith(prefix) || !name.endsWith(".spool")) continue;
    const pid = Number(/^(\d+)-\d+\.spool$/.exec(name.slice(prefix.length))?.[1]);
    if (!Number.isSafeInteger(pid) || pid <= 0 || alive(pid)) continue;
    try {
      unlinkSync(join(dir, name));
      removed.push(join(dir, name));
    } catch {
      // Another run swept it first.
    }
  }
  return removed;
}

function alive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
