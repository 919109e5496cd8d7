/**
 * The source stage: walks the configured paths and writes what it finds, one
 * entry at a time, into an EntryWriter (the tar writer, src/pipeline/tar.ts).
 *
 * In: ArchiveOptions (paths, excludes, oneFileSystem, excludeIfPresent, extra
 * files, dryRun) and a stop signal. Out: entries to the writer, in the order
 * the archive holds them (byte order of names, a directory before its
 * contents), and what it saw through the callbacks (onListed, onSkip,
 * onWarning, onProgress); run() resolves with the counts. It decides which
 * entries go in and reads their content; it knows nothing of the tar format
 * beyond the headers it asks headerFor to build. It reads an entry only at
 * its turn, and only as fast as the writer accepts.
 * The walk's rules (names as bytes, what a live filesystem may do, what is
 * skipped and why) are those of src/pipeline/archive.ts, which composes this stage
 * with the writer.
 */

import {
  type BigIntStats,
  closeSync,
  type Dirent,
  constants as fsConstants,
  fstatSync,
  lstatSync,
  openSync,
  readdirSync,
  readSync,
} from "node:fs";
import { type FileHandle, lstat, open, readlink } from "node:fs/promises";
import path from "node:path";
import type { IndexText } from "../repo/manifest.js";
import { fileKind } from "./file-kind.js";
import { byteStringFrom, byteStringOf, displayName, fsPath, matchForm } from "./file-names.js";
import {
  type ArchiveEntry,
  type EntryHeader,
  type EntryWriter,
  headerFor,
  type OpenEntry,
} from "./tar.js";

export interface ArchiveWarning {
  /** Absolute path of the entry concerned, printable (displayName: "caf\351" for Latin-1 bytes). */
  path: string;
  message: string;
  /** The errno code ("EACCES", "ENOENT", ...) when the warning comes from a system call. */
  code?: string;
}

export interface ArchiveProgress {
  /** Regular files archived, hard-link entries included. */
  files: number;
  dirs: number;
  symlinks: number;
  /** File content bytes read so far (zero padding of shrunk or unreadable files not included). */
  bytes: number;
}

export interface ArchiveOptions {
  /** Absolute paths to archive (validated by the caller). Overlaps are archived once. */
  paths: readonly string[];
  /** Exclude patterns, see src/pipeline/exclude.ts. They never exclude a configured path itself. */
  exclude?: readonly string[];
  /**
   * Like `tar --one-file-system`: a directory on another device (st_dev) than
   * the configured path it lies under is archived as an empty directory (the
   * mount point, as GNU tar keeps it) and not descended into.
   */
  oneFileSystem?: boolean;
  /**
   * Marker names (like GNU tar's --exclude-tag): a directory holding an entry of
   * one of these names that is a regular file or a symlink (decided on readdir's
   * type, never followed: a dangling symlink counts too) keeps only its own
   * entry and the marker; everything else in it is left out. A directory of that
   * name is not a marker.
   */
  excludeIfPresent?: readonly string[];
  /** Walk and report without reading content or writing a tar (see the contract above). */
  dryRun?: boolean;
  /** Called for every entry archived (or, in a dry run, that would be). Must not throw. */
  onListed?: (entry: ListedEntry) => void;
  /** Called for every entry left out by an exclude, excludeIfPresent or oneFileSystem. */
  onSkip?: (skip: SkipReport) => void;
  /** Abort: stops the walk, closes open files, destroys the stream with signal.reason. */
  signal?: AbortSignal;
  /** Called synchronously for every warning; must not throw (a throw fails the archive). */
  onWarning?: (w: ArchiveWarning) => void;
  /** Called after each entry, and after each chunk of a large file, with a fresh snapshot; keep it cheap. */
  onProgress?: (p: Readonly<ArchiveProgress>) => void;
  /**
   * Files archived first under a name of the caller's choosing instead of their
   * path (command outputs spooled by the job runner). A missing or unreadable
   * one fails the archive: unlike a file of the tree, it is required content.
   */
  extraFiles?: readonly { name: string; path: string }[];
  /** Called synchronously as each entry is started; must not throw. */
  onEntry?: (e: Readonly<ArchiveEntry>) => void;
  /**
   * The entries' index records (src/repo/manifest.ts), encoded, in archive
   * order and before the tar bytes of the entries they describe; `last` is the
   * byte-string name of the batch's last entry. Batches of one on the main
   * thread; on the worker thread one batch per chunk of tar bytes, which is
   * what makes it cheaper than onEntry there (one string crosses, not an
   * object per entry). Must not throw.
   */
  onIndex?: (batch: IndexText & { last: string }) => void;
  /**
   * An incremental run's planner (src/pipeline/changes.ts): decides, from the
   * lstat, which entries go into the tar. One left out is neither opened nor
   * read; it is reported through `unchanged` in walk order, and a directory
   * left out is still descended into. Extra files always go in.
   */
  plan?: EntryPlan;
  /**
   * Where the walk and the tar writer run (src/pipeline/archive.ts): "worker"
   * (a thread of their own) or "main" (this one). Default: "worker" where it
   * may run, which is a real (not dry) run without a planner.
   */
  thread?: "worker" | "main";
  /**
   * Memory for the archive's bytes: a Buffer of exactly `size` bytes that
   * nothing else holds or will touch until the chunk made of it has left the
   * archive's stream, or undefined for a new one. Large files are read into
   * it and held chunks joined in it. The archive worker
   * (src/pipeline/workers/archive-worker.ts) gives the buffers that the
   * main thread gave back; on one thread, reuse is unsafe (see streamFile).
   */
  buffers?: (size: number) => Buffer | undefined;
}

/** See ArchiveOptions.plan. Names are archive names (byte strings, directories end with "/"). */
export interface EntryPlan {
  /** True when the entry must be archived. */
  changed(name: string, st: BigIntStats): boolean;
  /** True when a symlink the stat called unchanged points elsewhere now. */
  retargeted(name: string, target: string): boolean;
  unchanged(name: string): void;
}

/** One entry as it goes into the tar, for an index of the archive (src/repo/manifest.ts). */

export interface ListedEntry {
  /** Absolute path, printable (displayName). */
  path: string;
  type: "file" | "directory" | "symlink" | "link";
  /** Content bytes (lstat's size for a file in a dry run; 0 for other types). */
  size: number;
}

export interface SkipReport {
  /** Absolute path, printable (displayName). */
  path: string;
  /** What left it out: `exclude "PATTERN"`, `excludeIfPresent "NAME"` or `oneFileSystem`. */
  rule: string;
}

export interface ArchiveResult extends ArchiveProgress {
  warnings: number;
}

/** Read size: large enough that per-chunk overhead vanishes at disk speed. */
const CHUNK = 1024 * 1024;
/** Files up to this size are read whole in one go, at their turn (see SourceWalk.prepare). */
const SMALL_FILE = 256 * 1024;
/**
 * O_NOFOLLOW: a file swapped for a symlink after lstat is not followed.
 * O_NONBLOCK: a file swapped for a FIFO does not hang open() (fstat then rejects it).
 */
const OPEN_FLAGS = fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK;

/** Why a file could not be opened for reading (reported as a warning, the file is skipped). */
type OpenFailure =
  | { kind: "error"; stage: "open" | "fstat"; err: unknown }
  | { kind: "not-file"; before: BigIntStats };

/** A small file read whole. */
type Loaded =
  | OpenFailure
  | { kind: "too-big" }
  | {
      kind: "read";
      before: BigIntStats;
      data: Buffer;
      readError: unknown;
      /** fstat after a complete read, null otherwise. */
      after: BigIntStats | null;
    };

/** A directory entry that goes in, with readdir's idea of its type. */
interface Child {
  abs: string;
  isFile: boolean;
}

/** What is known of an entry before its turn. */
interface Prepared {
  readonly st: BigIntStats | null;
  readonly statError: unknown;
  readonly loaded: Loaded | null;
  /** False when the planner (ArchiveOptions.plan) leaves the entry out. */
  readonly keep: boolean;
}

/**
 * The configured paths that do not exist (lstat says ENOENT, or ENOTDIR because
 * a parent is not a directory). A symlink whose target is missing does exist.
 */
export async function missingPaths(paths: readonly string[]): Promise<string[]> {
  const results = await Promise.all(
    paths.map(async (p) => {
      try {
        await lstat(p);
        return null;
      } catch (err) {
        const code = errCode(err);
        if (code === "ENOENT" || code === "ENOTDIR") return p;
        throw err;
      }
    }),
  );
  return results.filter((p): p is string => p !== null);
}

/**
 * For tests only: `afterReaddir` runs once each directory has been read and
 * before any of its entries is looked at, so a test can change the tree
 * exactly between readdir and the walk's open or lstat.
 */
export const walkHooks: { afterReaddir?: (dir: Buffer) => void } = {};

/** One walk of the configured paths into a writer; run() once. */
export class SourceWalk {
  private readonly progress: ArchiveProgress = { files: 0, dirs: 0, symlinks: 0, bytes: 0 };
  private warnings = 0;
  /** dev:ino -> archive name of the first occurrence, for files with more than one link. */
  private readonly links = new Map<string, string>();
  /** Configured paths; when met inside another one they are left for their own turn. */
  private readonly tops: ReadonlySet<string>;

  constructor(
    private readonly opts: ArchiveOptions,
    /** The rule that excludes an entry (see SkipReport.rule), or null. */
    private readonly excluded: (matchPath: string, isDir: boolean) => string | null,
    private readonly tar: EntryWriter & { finish(): Promise<void> },
    /** Aborted by anything that ends the archive early. */
    private readonly stop: AbortSignal,
    /** Ends the archive early (aborts `stop`, tears the writer down). */
    private readonly fail: (reason: unknown) => void,
  ) {
    this.tops = new Set(opts.paths.map((p) => byteStringOf(path.resolve(p))));
  }

  async run(): Promise<ArchiveResult> {
    try {
      await Promise.resolve(); // let the composition finish before the walk starts
      for (const extra of this.opts.extraFiles ?? []) {
        const abs = byteStringOf(extra.path);
        const opened = await openForRead(abs);
        if (opened.kind !== "open") {
          throw new Error(`cannot read ${extra.path} for archive entry ${extra.name}`);
        }
        try {
          const name = byteStringOf(extra.name);
          await this.streamFile(abs, name, opened.fh, opened.before, null);
        } finally {
          await opened.fh.close().catch(ignore);
        }
      }
      const tops = [...this.tops].sort(byteOrder);
      for (const top of tops) {
        const prepared = this.prepare(top);
        await this.visit(top, true, prepared, prepared.st?.dev ?? null);
      }
      this.checkStop();
      await this.tar.finish();
      return { ...this.progress, warnings: this.warnings };
    } catch (err) {
      if (this.stop.aborted) throw this.stop.reason;
      this.fail(err);
      throw err;
    }
  }

  /** Archives one path whose lstat (and small content) `prepare` fetched. */
  private async visit(
    abs: string,
    isTop: boolean,
    prepared: Prepared,
    topDev: bigint | null,
  ): Promise<void> {
    this.checkStop();
    const { st } = prepared;
    if (st === null) {
      const gone = errCode(prepared.statError) === "ENOENT";
      const what = isTop
        ? "configured path no longer exists"
        : "entry vanished before it could be archived";
      this.warnErr(abs, prepared.statError, gone ? what : "cannot stat, skipped");
      return;
    }
    const name = abs.slice(1);
    const keep = prepared.keep;
    if (st.isDirectory()) await this.directory(abs, name, st, topDev ?? st.dev, keep);
    else if (!keep && (st.isFile() || st.isSymbolicLink())) await this.unchanged(abs, name, st);
    else if (st.isFile()) await this.file(abs, name, st, prepared.loaded);
    else if (st.isSymbolicLink()) await this.symlink(abs, name, st);
    else
      this.warn(abs, `${fileKind(st)} skipped: only files, directories and symlinks are archived`);
  }

  private async directory(
    abs: string,
    name: string,
    st: BigIntStats,
    topDev: bigint,
    keep: boolean,
  ): Promise<void> {
    // "/" itself would get an empty name; its contents are still archived.
    if (name !== "" && !keep) {
      this.opts.plan?.unchanged(`${name}/`);
      this.progress.dirs++;
      this.reportProgress();
    } else if (name !== "") {
      await this.addVoid(headerFor(`${name}/`, "directory", st, 0));
      this.progress.dirs++;
      this.listed(abs, "directory", 0);
      this.reportProgress();
    }
    if (this.opts.oneFileSystem && st.dev !== topDev) {
      this.skipped(abs, "oneFileSystem");
      return;
    }
    let entries: Dirent<Buffer>[];
    try {
      // Synchronous for the reason prepare gives: 5,000 directories of 20 small
      // files cost 0.5 s of thread-pool round trips in which the walk stood still.
      entries = readdirSync(fsPath(abs), { withFileTypes: true, encoding: "buffer" });
    } catch (err) {
      const gone = errCode(err) === "ENOENT";
      const what = gone
        ? "directory vanished while being archived"
        : "cannot read directory, its contents were skipped";
      this.warnErr(abs, err, what);
      return;
    }
    walkHooks.afterReaddir?.(fsPath(abs));
    const children = this.kept(abs, entries);
    for (const child of children)
      await this.visit(child.abs, false, this.prepare(child.abs, child.isFile), topDev);
  }

  /** A directory's entries that go in, in byte order; the others are reported through onSkip. */
  private kept(abs: string, entries: Dirent<Buffer>[]): Child[] {
    entries.sort((a, b) => Buffer.compare(a.name, b.name));
    const prefix = abs === "/" ? "/" : `${abs}/`;
    const marker = this.markerIn(entries);
    const children: Child[] = [];
    for (const entry of entries) {
      const child = prefix + byteStringFrom(entry.name);
      // Another configured path is archived in its own turn. Exclusion is
      // decided on readdir's file type, so an excluded entry costs no system call.
      if (this.tops.has(child)) continue;
      const rule =
        this.excluded(matchForm(child), entry.isDirectory()) ??
        (marker !== null && entry !== marker.entry ? marker.rule : null);
      if (rule !== null) {
        this.skipped(child, rule);
        continue;
      }
      children.push({ abs: child, isFile: entry.isFile() });
    }
    return children;
  }

  /** The first excludeIfPresent marker among a directory's entries (see ArchiveOptions). */
  private markerIn(
    entries: readonly Dirent<Buffer>[],
  ): { entry: Dirent<Buffer>; rule: string } | null {
    const names = this.opts.excludeIfPresent;
    if (!names?.length) return null;
    for (const name of names) {
      const wanted = Buffer.from(name);
      const entry = entries.find(
        (e) => (e.isFile() || e.isSymbolicLink()) && e.name.equals(wanted),
      );
      if (entry) return { entry, rule: `excludeIfPresent ${JSON.stringify(name)}` };
    }
    return null;
  }

  /**
   * lstat of `abs` and, for a small regular file with a single link, its whole
   * content, fetched as the entry's turn comes. Never throws: failures are
   * data, which visit reports. `regular`: readdir called it a regular file
   * (see direct).
   */
  private prepare(abs: string, regular = false): Prepared {
    if (this.stop.aborted)
      return { st: null, statError: this.stop.reason, loaded: null, keep: true };
    if (regular && this.opts.plan === undefined && !this.opts.dryRun) {
      const direct = this.direct(abs);
      if (direct !== null) return direct;
    }
    // lstat and small-file reads are synchronous. On a tree of small files the
    // walk is bound by per-call overhead, and a promise-based fs call costs
    // about ten times its system call (measured: 25,600 files of 4 KiB took
    // 2.4 s async, 0.4 s sync). The price: a hung network file system blocks
    // the whole process during such a call, not only the walk; large files
    // are still read asynchronously.
    let st: BigIntStats;
    try {
      st = lstatSync(fsPath(abs), { bigint: true });
    } catch (err) {
      return { st: null, statError: err, loaded: null, keep: true };
    }
    const plan = this.opts.plan;
    const keep =
      plan === undefined ||
      abs === "/" ||
      plan.changed(abs.slice(1) + (st.isDirectory() ? "/" : ""), st);
    const loaded = this.smallEnough(keep, st) ? this.load(abs) : null;
    return { st, statError: null, loaded, keep };
  }

  /**
   * A file readdir called regular, in a full (not incremental) real run: open
   * and fstat stand in for lstat, which saves a system call per file. What
   * O_NOFOLLOW opened and fstat calls a regular file is what lstat would
   * have described. Null, for prepare to take the usual way (whose lstat and
   * open then report what went wrong), when the open fails or finds no
   * regular file: the entry changed since readdir, or cannot be read.
   */
  private direct(abs: string): Prepared | null {
    let fd: number;
    try {
      fd = openSync(fsPath(abs), OPEN_FLAGS);
    } catch {
      return null;
    }
    try {
      let st: BigIntStats;
      try {
        st = fstatSync(fd, { bigint: true });
      } catch {
        return null;
      }
      if (!st.isFile()) return null;
      const loaded = this.smallEnough(true, st) ? readWhole(fd, st) : null;
      return { st, statError: null, loaded, keep: true };
    } finally {
      closeQuietly(fd);
    }
  }

  /** A file read whole ahead of its turn (one with more links may become a link entry: read at its turn, if at all). */
  private smallEnough(keep: boolean, st: BigIntStats): boolean {
    return (
      keep && !this.opts.dryRun && st.isFile() && st.nlink === 1n && st.size <= BigInt(SMALL_FILE)
    );
  }

  private load(abs: string): Loaded {
    if (this.stop.aborted) return { kind: "error", stage: "open", err: this.stop.reason };
    let fd: number;
    try {
      fd = openSync(fsPath(abs), OPEN_FLAGS);
    } catch (err) {
      return { kind: "error", stage: "open", err };
    }
    try {
      let before: BigIntStats;
      try {
        before = fstatSync(fd, { bigint: true });
      } catch (err) {
        return { kind: "error", stage: "fstat", err };
      }
      if (!before.isFile()) return { kind: "not-file", before };
      return readWhole(fd, before);
    } finally {
      closeQuietly(fd);
    }
  }

  /**
   * A file or symlink the planner left out: counted as archived (it is part of
   * the backup, held by an earlier member), not read. A symlink whose target
   * changed without its stat showing it is archived after all.
   */
  private async unchanged(abs: string, name: string, st: BigIntStats): Promise<void> {
    const plan = this.opts.plan as EntryPlan;
    if (st.isSymbolicLink()) {
      let target: string | undefined;
      try {
        target = byteStringFrom(await readlink(fsPath(abs), { encoding: "buffer" }));
      } catch {
        target = undefined;
      }
      if (target === undefined || plan.retargeted(name, target)) return this.symlink(abs, name, st);
      this.progress.symlinks++;
    } else {
      this.progress.files++;
    }
    plan.unchanged(name);
    this.reportProgress();
  }

  private async symlink(abs: string, name: string, st: BigIntStats): Promise<void> {
    let target: string;
    try {
      target = byteStringFrom(await readlink(fsPath(abs), { encoding: "buffer" }));
    } catch (err) {
      const gone = errCode(err) === "ENOENT";
      const what = gone ? "symlink vanished before it could be archived" : "cannot read symlink";
      this.warnErr(abs, err, what);
      return;
    }
    await this.addVoid(headerFor(name, "symlink", st, 0, target));
    this.progress.symlinks++;
    this.listed(abs, "symlink", 0);
    this.reportProgress();
  }

  private async file(
    abs: string,
    name: string,
    st: BigIntStats,
    loaded: Loaded | null,
  ): Promise<void> {
    // A further name of an inode already archived: a link entry, no open() needed.
    const linkKey = st.nlink > 1n ? `${st.dev}:${st.ino}` : null;
    const first = linkKey === null ? undefined : this.links.get(linkKey);
    if (first !== undefined) {
      await this.addVoid(headerFor(name, "link", st, 0, first));
      this.progress.files++;
      this.listed(abs, "link", 0);
      this.reportProgress();
      return;
    }
    if (this.opts.dryRun) {
      // No open(): what a backup could not read shows up only in a real run.
      if (linkKey !== null) this.links.set(linkKey, name);
      this.progress.files++;
      this.progress.bytes += Number(st.size);
      this.listed(abs, "file", Number(st.size));
      this.reportProgress();
      return;
    }

    if (loaded !== null && loaded.kind !== "too-big") {
      if (loaded.kind !== "read") {
        this.reportOpenFailure(abs, loaded);
        return;
      }
      // Read whole only with a single link (smallEnough): never a link entry's target.
      const { before, data, readError, after } = loaded;
      this.checkStop();
      const size = Number(before.size);
      await this.tar.addFile(headerFor(name, "file", before, size), data);
      this.progress.bytes += data.length;
      this.fileDone(abs, size);
      this.reportRead(abs, size, data.length, readError, before, after);
      return;
    }

    const opened = await openForRead(abs);
    if (opened.kind !== "open") {
      this.reportOpenFailure(abs, opened);
      return;
    }
    try {
      await this.streamFile(abs, name, opened.fh, opened.before, linkKey);
    } finally {
      await opened.fh.close().catch(ignore);
    }
  }

  /** A file too large to read whole: read in chunks as the consumer takes them. */
  private async streamFile(
    abs: string,
    name: string,
    fh: FileHandle,
    before: BigIntStats,
    linkKey: string | null,
  ): Promise<void> {
    this.checkStop();
    const entry = await this.beginFile(name, before, linkKey);
    const { size } = entry;
    let got = 0;
    let readError: unknown = null;
    while (got < size) {
      const len = Math.min(CHUNK, size - got);
      // A fresh buffer per read, unless opts.buffers gives one that has come
      // back from another thread (which no one here can still see): on one
      // thread, tar-stream and the stream consumers keep references, and no
      // stage says when it has let go of a chunk. Reuse
      // would save GC work (measured on Node 24: uploading 477 fresh 1 MiB
      // chunks ran 26-33 full GCs and 0.5 s more CPU than one reused chunk,
      // 1 GC), but a buffer refilled before the hash stage has copied it
      // changes the archive's bytes and their SHA-256 alike: corruption that
      // nothing downstream could see. SharedArrayBuffer-backed chunks, which
      // V8 leaves out of its GC triggers, were tried too: no full GC, but RSS
      // grew by 110 MiB as they piled up between scavenges.
      const buf = this.opts.buffers?.(len) ?? Buffer.allocUnsafe(len);
      let n: number;
      try {
        n = (await fh.read(buf, 0, len, got)).bytesRead;
      } catch (err) {
        readError = err;
        break;
      }
      this.checkStop();
      if (n === 0) break;
      got += n;
      this.progress.bytes += n;
      // Also within a large file: a progress display must not stand still for its whole read.
      this.reportProgress();
      await this.tar.write(entry, n === len ? buf : buf.subarray(0, n));
    }
    await this.endFile(entry, got, name);
    const after = readError === null && got === size ? await statOrNull(fh) : null;
    this.reportRead(abs, size, got, readError, before, after);
  }

  /**
   * Writes the header of a file entry. It declares fstat's size: from here on
   * exactly that many bytes must follow, whatever happens to the file, since a
   * tar header cannot be taken back (endFile pads with zeros).
   */
  private async beginFile(
    name: string,
    before: BigIntStats,
    linkKey: string | null,
  ): Promise<OpenEntry> {
    const entry = await this.tar.beginFile(headerFor(name, "file", before, Number(before.size)));
    if (linkKey !== null) this.links.set(linkKey, name);
    return entry;
  }

  /** Pads and closes the entry; `name` is its archive name (an extra file's is not its path). */
  private async endFile(entry: OpenEntry, written: number, name: string): Promise<void> {
    await this.tar.endFile(entry, written);
    this.fileDone(`/${name}`, entry.size);
  }

  /** Counts, lists and reports a file entry once all its bytes are in the archive. */
  private fileDone(abs: string, size: number): void {
    this.progress.files++;
    this.listed(abs, "file", size);
    this.reportProgress();
  }

  /** The warnings about a file that changed or failed while it was read (at most one). */
  private reportRead(
    abs: string,
    size: number,
    got: number,
    readError: unknown,
    before: BigIntStats,
    after: BigIntStats | null,
  ): void {
    if (readError !== null) {
      const what = `read failed after ${got} of ${size} bytes, archived content is incomplete (zero-filled)`;
      this.warnErr(abs, readError, what);
    } else if (got < size) {
      const what = `file shrank while being read: got ${got} of ${size} bytes, archived content is incomplete (zero-filled)`;
      this.warn(abs, what);
    } else if (after === null) {
      // The content is complete; a failed fstat on an open fd only loses the change check.
    } else if (after.size > before.size) {
      this.warn(
        abs,
        `file grew while being read: archived the first ${size} of ${after.size} bytes`,
      );
    } else if (after.size !== before.size || after.mtimeNs !== before.mtimeNs) {
      this.warn(abs, "file changed while being read, archived content may be inconsistent");
    }
  }

  private reportOpenFailure(abs: string, failure: OpenFailure): void {
    if (failure.kind === "not-file") {
      const kind = fileKind(failure.before);
      this.warn(abs, `file was replaced by a ${kind} while being archived, skipped`);
    } else if (failure.stage === "fstat") {
      this.warnErr(abs, failure.err, "cannot stat open file, skipped");
    } else {
      const code = errCode(failure.err);
      const why =
        code === "ENOENT"
          ? "file vanished before it could be archived"
          : code === "ELOOP"
            ? "file was replaced by a symlink, skipped"
            : "cannot open file, skipped";
      this.warnErr(abs, failure.err, why);
    }
  }

  /** Adds an entry without content (directory, symlink, hard link); none in a dry run. */
  private async addVoid(header: EntryHeader): Promise<void> {
    if (this.opts.dryRun) return;
    await this.tar.addVoid(header);
  }

  private checkStop(): void {
    if (this.stop.aborted) throw this.stop.reason;
  }

  private listed(abs: string, type: ListedEntry["type"], size: number): void {
    this.opts.onListed?.({ path: displayName(abs), type, size });
  }

  private skipped(abs: string, rule: string): void {
    this.opts.onSkip?.({ path: displayName(abs), rule });
  }

  private reportProgress(): void {
    this.opts.onProgress?.({ ...this.progress });
  }

  private warn(abs: string, message: string, code?: string): void {
    this.warnings++;
    const p = displayName(abs);
    this.opts.onWarning?.(code === undefined ? { path: p, message } : { path: p, message, code });
  }

  private warnErr(p: string, err: unknown, what: string): void {
    const detail = err instanceof Error ? err.message : String(err);
    this.warn(p, `${what}: ${detail}`, errCode(err));
  }
}

/**
 * The content of an open small file whose fstat is `before`, and a second
 * fstat after a complete read (the change check of reportRead).
 */
function readWhole(fd: number, before: BigIntStats): Loaded {
  const size = Number(before.size);
  if (size > SMALL_FILE) return { kind: "too-big" }; // grew since lstat: stream it
  const buf = Buffer.allocUnsafe(size);
  let got = 0;
  let readError: unknown = null;
  while (got < size) {
    try {
      const n = readSync(fd, buf, got, size - got, got);
      if (n === 0) break;
      got += n;
    } catch (err) {
      readError = err;
      break;
    }
  }
  let after: BigIntStats | null = null;
  if (readError === null && got === size) {
    try {
      after = fstatSync(fd, { bigint: true });
    } catch {
      after = null;
    }
  }
  return { kind: "read", before, data: buf.subarray(0, got), readError, after };
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // nothing to do: the fd is gone either way
  }
}

/**
 * Opens a regular file for reading without following a symlink or blocking on
 * a FIFO that replaced it since lstat, and fstats what was actually opened.
 */
async function openForRead(
  abs: string,
): Promise<{ kind: "open"; fh: FileHandle; before: BigIntStats } | OpenFailure> {
  let fh: FileHandle;
  try {
    fh = await open(fsPath(abs), OPEN_FLAGS);
  } catch (err) {
    return { kind: "error", stage: "open", err };
  }
  let before: BigIntStats;
  try {
    before = await fh.stat({ bigint: true });
  } catch (err) {
    await fh.close().catch(ignore);
    return { kind: "error", stage: "fstat", err };
  }
  if (before.isFile()) return { kind: "open", fh, before };
  await fh.close().catch(ignore);
  return { kind: "not-file", before };
}

async function statOrNull(fh: FileHandle): Promise<BigIntStats | null> {
  try {
    return await fh.stat({ bigint: true });
  } catch {
    return null;
  }
}

function byteOrder(a: string, b: string): number {
  return Buffer.compare(fsPath(a), fsPath(b));
}

/** For closing files on the way out: a failed close loses nothing the walk still needs. */
function ignore(): void {}

function errCode(err: unknown): string | undefined {
  if (typeof err === "object" && err !== null && "code" in err && typeof err.code === "string")
    return err.code;
  return undefined;
}
