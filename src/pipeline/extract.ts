/**
 * The restore step: reads an uncompressed tar stream (the caller verified and
 * gunzipped it) and writes its entries below a destination directory. It runs
 * on the worst night (a lost server, ransomware) on archives that may be
 * hostile: anyone who could write to the bucket could plant a version.
 *
 * Contract, in short:
 * - Faithful for good archives: regular files, directories, symlinks (target
 *   verbatim) and hard links, with modes, mtimes and (as root) owners.
 *   Directories are created 0700 while their contents are written and get
 *   their archived mode and mtime at the end, deepest first.
 * - Names are bytes: every name and link target is restored byte-exact, UTF-8
 *   or not (tar-stream's reader is taught to keep raw pax values, see
 *   src/pipeline/pax.ts; ustar and GNU long-name fields are read as raw bytes), and
 *   handed to node:fs as Buffers. All checks below work on those bytes ("/" is
 *   0x2f, "." 0x2e), so no decoding can turn a name into "../" or lose a NUL.
 *   Warnings and listings show names in displayName form, globs see matchForm.
 * - Never writes outside `dest`. An entry is refused (counted, warned about,
 *   its data consumed, extraction goes on) when its name is empty, absolute,
 *   contains NUL or a ".." component; when a hard link points to such a name,
 *   or to anything but a regular file this run extracted; when a parent
 *   component below `dest` is a symlink or not a directory (lstat, never
 *   followed). Files are created with O_CREAT|O_EXCL|O_NOFOLLOW; replacing an
 *   existing path unlinks it first, so nothing is ever written through a link.
 *   Attributes of hard links are never applied (they would change the shared
 *   inode). Limit: this guards against hostile archives, not against another
 *   local user racing us inside directories of `dest` they can write to.
 * - Memory is bounded: entry contents are streamed to disk with backpressure.
 *   Per-run bookkeeping grows with the tree (one small record per directory,
 *   one inode number per created file or symlink), never with file sizes.
 * - A truncated or corrupt stream rejects ("unexpected end of archive" when it
 *   ends mid-entry or before the end-of-archive blocks). Files completed before
 *   stay in `dest`; a file cut off half-way is removed. Abort rejects with
 *   signal.reason. In every case directory modes and mtimes of what was
 *   created are applied before the promise settles, and every fd is closed.
 */

import { execFile } from "node:child_process";
import {
  closeSync,
  fchmodSync,
  fchownSync,
  constants as fsConstants,
  fstatSync,
  futimesSync,
  openSync,
  type Stats,
  writeSync,
  writevSync,
} from "node:fs";
import {
  access,
  type FileHandle,
  lchown,
  link,
  lstat,
  lutimes,
  mkdir,
  open,
  realpath,
  symlink,
  unlink,
} from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import picomatch from "picomatch";
import { type Extract, type Header, extract as tarExtract } from "tar-stream";
import { ImmutdError, UsageError } from "../errors.js";
import { fileKind } from "./file-kind.js";
import { byteStringFrom, displayName, fsPath, matchForm, textOf } from "./file-names.js";
import { paxPathsAsByteStrings } from "./pax.js";

export interface ExtractWarning {
  /** The entry's name as stored in the archive, printable (see displayName in src/pipeline/file-names.ts). */
  path: string;
  message: string;
}

export interface ExtractProgress {
  /** Regular files, hard links and (with `devices`) special files created. */
  files: number;
  /** Directory entries extracted (created, or merged into an existing directory). */
  dirs: number;
  symlinks: number;
  /** File content bytes written. */
  bytes: number;
}

export interface ExtractOptions {
  /** Absolute path of an existing directory; a symlink to one is resolved once. */
  dest: string;
  /** Only entries matching these patterns (see compileIncludes); default all. */
  include?: readonly string[];
  /**
   * Replace what already exists in `dest` (default false: an existing path is a
   * warning and the entry is skipped). An existing directory is never replaced,
   * only merged into; with overwrite it also gets the archived mode and mtime.
   */
  overwrite?: boolean;
  /** Restore uid/gid; default: running as root. */
  owners?: boolean;
  /** Create device nodes and FIFOs (root only, via mknod/mkfifo); default false. */
  devices?: boolean;
  /** Abort: stops reading, closes every fd, destroys the input, rejects with signal.reason. */
  signal?: AbortSignal;
  /** Called synchronously for every warning; must not throw (a throw fails the extraction). */
  onWarning?: (w: ExtractWarning) => void;
  /** Called after each entry (and during large files) with a fresh snapshot; keep it cheap. */
  onProgress?: (p: Readonly<ExtractProgress>) => void;
  /**
   * Called with every entry's header before anything of it is written: its
   * name (byte string), type, size, and `end`, the input offset just past its
   * padded data. A throw stops the extraction with that error (a ranged
   * restore's check that the archive is what the manifest said, src/flows/ranged.ts).
   */
  onHeader?: (e: { name: string; type: string; size: number; end: number }) => void;
}

export interface ExtractResult extends ExtractProgress {
  /** Entries refused as unsafe (see the module comment); each also got a warning. */
  refused: number;
  /**
   * Selected entries not extracted for other reasons (already exists, a
   * directory in the way, device, name too long, I/O error). Like `refused`,
   * each makes the restore incomplete.
   */
  skipped: number;
  warnings: number;
  /** Include patterns that selected no entry at all, as given ("not found in archive"). */
  unmatched: string[];
}

export interface ListResult {
  listed: number;
  /** As ExtractResult.unmatched. */
  unmatched: string[];
}

export interface TarEntryInfo {
  /** As stored in the archive (not normalised), printable as `tar -t` prints it (displayName). */
  name: string;
  /** tar-stream's type name ("file", "directory", "symlink", "link", ...), "unknown" otherwise. */
  type: string;
  size: number;
  /** Permission bits (0o7777). */
  mode: number;
  mtime: Date;
  linkname?: string;
  uid: number;
  gid: number;
}

/** Content writes are gathered up to this size into one writev(). */
const BATCH = 1024 * 1024;
const BLOCK = 512;
/** A tar ends with two zero blocks. */
const END_MARKER = 2 * BLOCK;
const CREATE_FLAGS =
  fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW;
const DIR_FLAGS = fsConstants.O_RDONLY | fsConstants.O_DIRECTORY | fsConstants.O_NOFOLLOW;
/** Mode of parent directories the archive has no (selected) entry for. */
const DEFAULT_DIR_MODE = 0o755;
/** Failures that will hit every following entry too: they end the extraction. */
const FATAL_CODES = new Set(["ENOSPC", "EDQUOT", "EROFS", "EIO", "EMFILE", "ENFILE"]);
/** An errno code ("EACCES"), as opposed to Node's own ("ERR_INVALID_ARG_VALUE"). */
const ERRNO_CODE = /^E[A-Z0-9]+$/;
const GLOB_OPTIONS: picomatch.PicomatchOptions = { dot: true, windows: false };
const execFileAsync = promisify(execFile);

/**
 * Restores the tar stream `tar` below `opts.dest`. Resolves with the counts
 * once the end-of-archive blocks were read and every directory got its
 * attributes; see the module comment for what rejects.
 */
export async function extractTar(
  tar: NodeJS.ReadableStream,
  opts: ExtractOptions,
): Promise<ExtractResult> {
  const stop = new AbortController();
  const signal = opts.signal;
  const onAbort = () => stop.abort(signal?.reason);
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    if (signal?.aborted) {
      destroyInput(tar, signal.reason);
      throw signal.reason;
    }
    let root: string;
    let include: Includes | null;
    try {
      include = opts.include === undefined ? null : new Includes(opts.include);
      root = await resolveDest(opts.dest);
    } catch (err) {
      destroyInput(tar, err);
      throw err;
    }
    return await new Extractor(opts, root, include, stop).run(tar);
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
}

/**
 * One restore from several tar streams in turn (the members of a chain,
 * src/flows/chain-restore.ts): as extractTar, but each stream's entries are
 * written only where `keep` accepts their name (a byte string, trailing "/"
 * removed), a hard link may point to a file an earlier stream wrote, and
 * directory attributes are applied once, by finish(), after the last stream.
 * A failure of one stream ends the session: finish() still applies the
 * directory attributes and rejects with nothing further.
 */
export interface ExtractSession {
  add(tar: NodeJS.ReadableStream, keep: (name: string) => boolean): Promise<void>;
  finish(): Promise<ExtractResult>;
}

export async function openExtractSession(opts: ExtractOptions): Promise<ExtractSession> {
  const include = opts.include === undefined ? null : new Includes(opts.include);
  const root = await resolveDest(opts.dest);
  const stop = new AbortController();
  const signal = opts.signal;
  const onAbort = () => stop.abort(signal?.reason);
  signal?.addEventListener("abort", onAbort, { once: true });
  const ex = new Extractor(opts, root, include, stop);
  return {
    add: async (tar, keep) => {
      if (stop.signal.aborted) {
        destroyInput(tar, stop.signal.reason);
        throw stop.signal.reason;
      }
      await ex.one(tar, keep);
    },
    finish: async () => {
      try {
        return await ex.finish();
      } finally {
        signal?.removeEventListener("abort", onAbort);
      }
    },
  };
}

/**
 * Calls `onEntry` for every entry of the tar stream (selected by `include`, if
 * given) and resolves with how many were listed and which include patterns
 * selected nothing. Rejects like extractTar on a truncated or corrupt stream.
 */
export async function listTar(
  tar: NodeJS.ReadableStream,
  onEntry: (e: TarEntryInfo) => void,
  include?: readonly string[],
  keep?: (name: string) => boolean,
): Promise<ListResult> {
  const selected = include === undefined ? null : new Includes(include);
  let listed = 0;
  const reader = new TarReader(tar, new AbortController());
  await reader.run(async (h) => {
    if (keep && !keep(h.name.replace(/\/+$/, ""))) return;
    if (selected !== null) {
      const norm = normaliseName(h.name);
      if (!norm.ok || !selected.selects(norm.rel, true)) return;
    }
    onEntry(entryInfo(h));
    listed++;
  });
  return { listed, unmatched: selected?.unmatched() ?? [] };
}

/**
 * Compiles restore include patterns into a predicate over archive entry names
 * (byte strings, see src/pipeline/file-names.ts; a name that is not UTF-8 is matched in
 * its matchForm, so "caf*" selects Latin-1 "caf\xe9"). Pure. Patterns are picomatch globs (dot files included); a leading "/" is
 * ignored, since users think in absolute paths ("/etc/hosts" selects entry
 * "etc/hosts"), as is a trailing "/". A pattern that matches a directory also
 * selects everything below it ("srv/app" selects "srv/app/x/y"). No patterns
 * select everything, as does "/". Throws UsageError for an empty pattern or a
 * negation ("!"), which in an include list would read as "everything else".
 */
export function compileIncludes(patterns: readonly string[]): (name: string) => boolean {
  const includes = new Includes(patterns);
  return (name) => includes.selects(name, false);
}

/** One include pattern; `used` once it selected an entry. */
interface IncludeRule {
  readonly pattern: string;
  /** Null for a pattern that selects everything ("/"). */
  readonly isMatch: ((rel: string) => boolean) | null;
  used: boolean;
}

/** Include patterns (see compileIncludes) that also remember which of them selected something. */
class Includes {
  private readonly rules: IncludeRule[] = [];
  /** Rules that have not selected anything yet: only these are tested one by one. */
  private pending: IncludeRule[];
  /** All patterns at once, for the common case where every rule was used already. */
  private readonly any: ((rel: string) => boolean) | null;

  constructor(patterns: readonly string[]) {
    const bodies: string[] = [];
    let all = patterns.length === 0;
    for (const pattern of patterns) {
      if (pattern.trim() === "") throw new UsageError("include pattern must not be empty");
      if (pattern.startsWith("!")) {
        throw new UsageError(
          `include pattern ${JSON.stringify(pattern)}: negation ("!") is not supported`,
        );
      }
      const body = pattern
        .replace(/\/{2,}/g, "/")
        .replace(/^\/+/, "")
        .replace(/^(\.\/)+/, "")
        .replace(/\/+$/, "");
      if (body === "") all = true;
      else bodies.push(body);
      const isMatch = body === "" ? null : picomatch(body, GLOB_OPTIONS);
      this.rules.push({ pattern, isMatch, used: false });
    }
    this.pending = [...this.rules];
    this.any = all ? null : picomatch(bodies, GLOB_OPTIONS);
  }

  /** True when `name` is selected; with `mark`, the patterns that select it count as used. */
  selects(name: string, mark: boolean): boolean {
    const rel = matchForm(name)
      .replace(/\/{2,}/g, "/")
      .replace(/^(\.\/)+/, "")
      .replace(/\/+$/, "");
    if (mark && this.pending.length > 0) {
      for (const rule of this.pending) if (ruleSelects(rule.isMatch, rel)) rule.used = true;
      this.pending = this.pending.filter((r) => !r.used);
    }
    return ruleSelects(this.any, rel);
  }

  /** The patterns that selected no entry so far, in the order given. */
  unmatched(): string[] {
    return this.rules.filter((r) => !r.used).map((r) => r.pattern);
  }
}

/** A pattern selects a name it matches and everything below a directory it matches. */
function ruleSelects(isMatch: ((rel: string) => boolean) | null, rel: string): boolean {
  if (isMatch === null) return true;
  if (rel === "") return false;
  if (isMatch(rel)) return true;
  for (let i = rel.indexOf("/"); i !== -1; i = rel.indexOf("/", i + 1)) {
    if (isMatch(rel.slice(0, i))) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------
// Reading the tar stream

/** tar-stream's header as it really arrives: unknown typeflags give a null type. */
type RawHeader = Omit<Header, "type" | "linkname" | "pax"> & {
  type: Header["type"] | null;
  linkname: string | null;
  pax?: Record<string, string> | null;
};

/** tar-stream's entry stream (a streamx Readable); destroying it destroys the whole extract. */
type Source = AsyncIterable<unknown> & { header: Header; offset: number };

/** One entry's content. Every entry must be read to its end before the next one comes. */
class EntryData {
  private consumed = false;

  constructor(
    private readonly src: Source,
    private readonly reader: TarReader,
  ) {}

  /**
   * Hands each chunk to `sink` in order. Errors of the tar stream reject (as
   * the reader's failure); `sink` must not throw unless the extraction is over.
   */
  async pump(sink: (chunk: Buffer) => Promise<void> | undefined): Promise<void> {
    if (this.consumed) return;
    this.consumed = true;
    const it = this.src[Symbol.asyncIterator]();
    for (;;) {
      let r: IteratorResult<unknown>;
      try {
        r = await it.next();
      } catch (err) {
        throw this.reader.streamFailure(err);
      }
      if (r.done === true) return;
      const pending = sink(r.value as Buffer);
      if (pending !== undefined) await pending;
    }
  }

  /** Reads and discards what is left. */
  drain(): Promise<void> {
    return this.pump(() => undefined);
  }
}

/**
 * Drives tar-stream's parser: feeds it the input with backpressure, hands out
 * entries one at a time, turns its errors into clear ones, and checks that the
 * stream really ended with the end-of-archive blocks (tar-stream accepts a
 * stream cut at an entry boundary as complete).
 */
class TarReader {
  private readonly ex = byteNameExtract();
  /** Bytes received, and the last END_MARKER of them. */
  private total = 0;
  private tail = Buffer.alloc(0);
  /** Offset just past the data (padded) of the last entry seen. */
  lastEnd = 0;
  private current: string | null = null;

  constructor(
    private readonly input: NodeJS.ReadableStream,
    private readonly stop: AbortController,
  ) {}

  async run(handle: (h: RawHeader, data: EntryData) => Promise<void>): Promise<void> {
    const stopSignal = this.stop.signal;
    const onStop = () => {
      this.ex.destroy(stopSignal.reason as Error);
      destroyInput(this.input, stopSignal.reason);
    };
    if (stopSignal.aborted) {
      onStop();
      throw stopSignal.reason;
    }
    stopSignal.addEventListener("abort", onStop, { once: true });
    // The iterator registers tar-stream's error listeners: create it before any data flows.
    const entries = this.ex[Symbol.asyncIterator]();
    const feeding = this.feed();
    try {
      for (;;) {
        let r: IteratorResult<unknown>;
        try {
          r = await entries.next();
        } catch (err) {
          throw this.streamFailure(err);
        }
        if (r.done === true) break;
        const src = r.value as Source;
        const h = src.header as unknown as RawHeader;
        this.current = h.name;
        const dataBlocks = h.type === "directory" ? 0 : Math.ceil(h.size / BLOCK) * BLOCK;
        this.lastEnd = src.offset + BLOCK + dataBlocks;
        const data = new EntryData(src, this);
        await handle(h, data);
        // tar-stream gives directories no data (its stream for one would never end).
        if (h.type !== "directory") await data.drain();
      }
      await feeding;
      if (stopSignal.aborted) throw stopSignal.reason;
      this.checkEnd();
    } catch (err) {
      if (!stopSignal.aborted) this.stop.abort(err);
      throw stopSignal.reason;
    } finally {
      stopSignal.removeEventListener("abort", onStop);
      if (stopSignal.aborted && !this.ex.destroyed) this.ex.destroy(stopSignal.reason as Error);
    }
  }

  /** Copies the input into the parser. Never rejects: failures stop the run. */
  private async feed(): Promise<void> {
    try {
      for await (const chunk of this.input) {
        if (this.stop.signal.aborted) return;
        const buf = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
        if (buf.length === 0) continue;
        this.track(buf);
        if (!this.ex.write(buf) && !(await this.drained())) return;
      }
      if (!this.stop.signal.aborted) this.ex.end(null);
    } catch (err) {
      if (!this.stop.signal.aborted) this.stop.abort(err);
    }
  }

  /** True when the parser wants more; false when it is gone (its error surfaces elsewhere). */
  private drained(): Promise<boolean> {
    const ex = this.ex;
    const stopSignal = this.stop.signal;
    return new Promise((resolve) => {
      if (ex.destroyed || ex.destroying || stopSignal.aborted) {
        resolve(false);
        return;
      }
      const done = (ok: boolean) => {
        ex.off("drain", onDrain);
        ex.off("close", onClose);
        stopSignal.removeEventListener("abort", onClose);
        resolve(ok);
      };
      const onDrain = () => done(true);
      const onClose = () => done(false);
      ex.on("drain", onDrain);
      ex.on("close", onClose);
      stopSignal.addEventListener("abort", onClose);
    });
  }

  private track(buf: Buffer): void {
    this.total += buf.length;
    const take = buf.length > END_MARKER ? buf.subarray(buf.length - END_MARKER) : buf;
    const tail = Buffer.concat([this.tail, take]);
    this.tail = tail.length > END_MARKER ? tail.subarray(tail.length - END_MARKER) : tail;
  }

  private checkEnd(): void {
    const marked =
      this.total - this.lastEnd >= END_MARKER &&
      this.tail.length === END_MARKER &&
      this.tail.every((b) => b === 0);
    if (marked) return;
    const after =
      this.current === null
        ? "before the first entry"
        : `after entry "${displayName(this.current)}"`;
    throw new ImmutdError(
      `unexpected end of archive: the stream ended ${after} at byte ${this.total} without the end-of-archive blocks (truncated download or archive?)`,
    );
  }

  /** The error to report for a failure of the tar stream (parser, entry data or input). */
  streamFailure(err: unknown): unknown {
    if (this.stop.signal.aborted) return this.stop.signal.reason;
    const msg = err instanceof Error ? err.message : String(err);
    const where = this.current === null ? "" : ` in or after entry "${displayName(this.current)}"`;
    if (msg === "Unexpected end of data") {
      return new ImmutdError(
        `unexpected end of archive: the stream ended${where} at byte ${this.total}, in the middle of an entry or header (truncated download or archive?)`,
        { cause: err },
      );
    }
    return new ImmutdError(`corrupt archive${where} (near byte ${this.total}): ${msg}`, {
      cause: err,
    });
  }
}

// ---------------------------------------------------------------------------
// Writing entries

interface DirMeta {
  mode: number;
  /** Seconds since the epoch; null leaves the time alone. */
  mtime: number | null;
  uid: number | null;
  gid: number | null;
}

type Kind = "file" | "symlink" | "link" | "special";

class Extractor {
  private readonly progress: ExtractProgress = { files: 0, dirs: 0, symlinks: 0, bytes: 0 };
  private refused = 0;
  private skipped = 0;
  private warnings = 0;
  private owners: boolean;
  private readonly overwrite: boolean;
  private readonly isRoot = process.getuid?.() === 0;
  /** Relative paths known to be real directories (lstat'ed or created); never replaced later. */
  private readonly safeDirs = new Set<string>();
  /** Directories this run created (or may change, with overwrite) -> attributes to apply at the end. */
  private readonly pendingDirs = new Map<string, DirMeta>();
  /** Files and symlinks this run created: only these may be hard link targets or be replaced freely. */
  private readonly created = new InodeSet();
  private reader: TarReader | null = null;
  /** The current stream's filter (ExtractSession); null: every entry. */
  private keep: ((name: string) => boolean) | null = null;

  constructor(
    private readonly opts: ExtractOptions,
    private readonly root: string,
    private readonly include: Includes | null,
    private readonly stop: AbortController,
  ) {
    this.owners = opts.owners ?? this.isRoot;
    this.overwrite = opts.overwrite ?? false;
  }

  async run(tar: NodeJS.ReadableStream): Promise<ExtractResult> {
    try {
      await this.one(tar, null);
    } finally {
      // Also after a failure or abort: what was created should not stay 0700.
      await this.finishDirs();
    }
    return this.result();
  }

  /** Extracts one stream's entries (those `keep` accepts); directory attributes wait for finish(). */
  async one(tar: NodeJS.ReadableStream, keep: ((name: string) => boolean) | null): Promise<void> {
    this.reader = new TarReader(tar, this.stop);
    this.keep = keep;
    await this.reader.run((h, data) => this.entry(h, data));
  }

  async finish(): Promise<ExtractResult> {
    await this.finishDirs();
    if (this.stop.signal.aborted) throw this.stop.signal.reason;
    return this.result();
  }

  private result(): ExtractResult {
    return {
      ...this.progress,
      refused: this.refused,
      skipped: this.skipped,
      warnings: this.warnings,
      unmatched: this.include?.unmatched() ?? [],
    };
  }

  private async entry(h: RawHeader, data: EntryData): Promise<void> {
    this.checkStop();
    const raw = h.name;
    if (this.keep !== null && !this.keep(raw.replace(/\/+$/, ""))) return;
    this.opts.onHeader?.({
      name: raw,
      type: h.type ?? "unknown",
      size: h.size,
      end: this.reader?.lastEnd ?? 0,
    });
    const norm = normaliseName(raw);
    if (!norm.ok) return this.refuse(raw, norm.reason);
    const rel = norm.rel;
    if (rel === "") {
      // Not a loss (tar -C dir . writes one): not counted as skipped.
      if (h.type === "directory")
        return this.warn(
          raw,
          "entry for the archive root skipped: the destination keeps its own attributes",
        );
      return this.refuse(raw, "name refers to the destination directory itself");
    }
    if (this.include !== null && !this.include.selects(rel, true)) return;
    try {
      switch (h.type) {
        case "file":
        case "contiguous-file":
          await this.file(raw, rel, h, data);
          break;
        case "directory":
          await this.directory(raw, rel, h);
          break;
        case "symlink":
          await this.symlink(raw, rel, h);
          break;
        case "link":
          await this.hardLink(raw, rel, h);
          break;
        case "character-device":
        case "block-device":
        case "fifo":
          await this.special(raw, rel, h);
          break;
        default:
          this.skip(raw, "unsupported entry type, skipped");
      }
    } catch (err) {
      if (this.stop.signal.aborted) throw this.stop.signal.reason;
      const code = errCode(err);
      if (code === undefined || !ERRNO_CODE.test(code) || FATAL_CODES.has(code)) {
        if (code === undefined || err instanceof ImmutdError) throw err;
        throw new ImmutdError(`cannot restore "${displayName(raw)}": ${describe(err)}`, {
          cause: err,
        });
      }
      this.skip(raw, `not restored: ${describe(err)}`);
    }
    this.reportProgress();
  }

  /**
   * A regular file. Its open, fstat, writes, fchown, fchmod, futimes and close
   * are synchronous calls: as promises each is a round trip through libuv's
   * thread pool, and for 15,000 files of a 300 MB restore those round trips
   * (7 per file, one file at a time) took three times as long as `tar -x`.
   * The price is the backup's (README: "Small files"): while a call waits,
   * the process waits; a restore is a one-off command, and its socket is
   * read only as fast as the disk takes the bytes anyway.
   */
  private async file(raw: string, rel: string, h: RawHeader, data: EntryData): Promise<void> {
    const abs = await this.parents(raw, rel, true);
    if (abs === null) return;
    const fd = await this.createFile(raw, abs);
    if (fd === null) return;
    let open = true;
    let complete = false;
    try {
      this.created.add(fstatSync(fd));
      const writeError = await this.copy(data, fd);
      if (writeError !== null) throw writeError;
      const ownersSet = await this.chownEntry(raw, h, (uid, gid) => fchownSync(fd, uid, gid));
      // After chown, which clears setuid/setgid.
      await this.attr(raw, "mode", () => fchmodSync(fd, fileMode(h, ownersSet)));
      const mtime = entryMtime(h);
      if (mtime !== null) {
        await this.attr(raw, "mtime", () => futimesSync(fd, new Date(), timeArg(mtime)));
      }
      // close() can report a failed delayed write (NFS): part of writing the file.
      open = false;
      closeSync(fd);
      complete = true;
    } finally {
      if (open) {
        try {
          closeSync(fd);
        } catch {}
      }
      // A file cut off half-way must not look restored.
      if (!complete) await unlink(fsPath(abs)).catch(() => {});
    }
    this.progress.files++;
  }

  /**
   * Streams the entry's content into `fd`, gathering chunks into one writev of
   * up to BATCH bytes. A write error stops writing, not reading: the rest is
   * consumed and the error returned.
   */
  private async copy(data: EntryData, fd: number): Promise<unknown> {
    let batch: Buffer[] = [];
    let batched = 0;
    let writeError: unknown = null;
    const flush = () => {
      const bufs = batch;
      const size = batched;
      batch = [];
      batched = 0;
      if (size === 0 || writeError !== null) return;
      try {
        writeAll(fd, bufs, size);
        this.progress.bytes += size;
        this.reportProgress();
      } catch (err) {
        writeError = err;
      }
    };
    await data.pump((chunk) => {
      if (writeError !== null) return undefined;
      batch.push(chunk);
      batched += chunk.length;
      if (batched >= BATCH) flush();
      return undefined;
    });
    flush();
    return writeError;
  }

  /** Opens a new file at `abs`, replacing what is there when allowed; null when skipped. */
  private async createFile(raw: string, abs: string): Promise<number | null> {
    try {
      return openSync(fsPath(abs), CREATE_FLAGS, 0o600);
    } catch (err) {
      if (errCode(err) !== "EEXIST") throw err;
    }
    if (!(await this.clearWay(raw, abs, "file"))) return null;
    return openSync(fsPath(abs), CREATE_FLAGS, 0o600);
  }

  private async directory(raw: string, rel: string, h: RawHeader): Promise<void> {
    const abs = await this.parents(raw, rel, true);
    if (abs === null) return;
    const meta: DirMeta = {
      mode: validMode(h.mode) ?? DEFAULT_DIR_MODE,
      mtime: entryMtime(h),
      uid: entryId(h.uid, h.pax?.uid),
      gid: entryId(h.gid, h.pax?.gid),
    };
    if (!this.safeDirs.has(rel)) {
      const st = await lstatOrNull(abs);
      if (st === null) {
        await this.makeDir(rel, abs, meta);
      } else if (st.isDirectory()) {
        this.safeDirs.add(rel);
      } else {
        if (!(await this.clearWay(raw, abs, "directory", st))) return;
        await this.makeDir(rel, abs, meta);
      }
    }
    // Directories this run created take the archived attributes; existing ones only with overwrite.
    if (this.pendingDirs.has(rel) || this.overwrite) this.pendingDirs.set(rel, meta);
    this.progress.dirs++;
  }

  private async symlink(raw: string, rel: string, h: RawHeader): Promise<void> {
    const target = h.linkname ?? "";
    if (target === "") return this.skip(raw, "symlink without a target, skipped");
    if (target.includes("\0")) return this.refuse(raw, "symlink target contains a NUL byte");
    const abs = await this.parents(raw, rel, true);
    if (abs === null) return;
    try {
      await symlink(fsPath(target), fsPath(abs));
    } catch (err) {
      if (errCode(err) !== "EEXIST") throw err;
      if (!(await this.clearWay(raw, abs, "symlink"))) return;
      await symlink(fsPath(target), fsPath(abs));
    }
    this.created.add(await lstat(fsPath(abs)));
    await this.chownEntry(raw, h, (uid, gid) => lchown(fsPath(abs), uid, gid));
    const mtime = entryMtime(h);
    if (mtime !== null)
      await this.attr(raw, "mtime", () => lutimes(fsPath(abs), new Date(), timeArg(mtime)));
    this.progress.symlinks++;
  }

  /**
   * A further name for a file extracted earlier in this run. The link entry's
   * own attributes are ignored: applying them would change the shared inode.
   */
  private async hardLink(raw: string, rel: string, h: RawHeader): Promise<void> {
    const linkname = h.linkname ?? "";
    const target = normaliseName(linkname);
    if (!target.ok || target.rel === "") {
      const why = target.ok ? "names the destination itself" : target.reason;
      return this.refuse(raw, `unsafe hard link target "${displayName(linkname)}" (${why})`);
    }
    const shown = displayName(target.rel);
    if (this.include !== null && !this.include.selects(target.rel, false)) {
      const what = `hard link target "${shown}" is not selected by the include patterns; its content is stored only under that name: include it too`;
      return this.skip(raw, what);
    }
    const targetAbs = await this.parents(raw, target.rel, false);
    if (targetAbs === null) return;
    const tst = await lstatOrNull(targetAbs);
    if (tst === null) return this.refuse(raw, `hard link target "${shown}" was not extracted`);
    if (!tst.isFile()) {
      return this.refuse(
        raw,
        `hard link target "${shown}" is a ${fileKind(tst)}, not a regular file`,
      );
    }
    if (!this.created.has(tst)) {
      return this.refuse(raw, `hard link target "${shown}" was not extracted by this restore`);
    }
    const abs = await this.parents(raw, rel, true);
    if (abs === null) return;
    try {
      await link(fsPath(targetAbs), fsPath(abs));
    } catch (err) {
      if (errCode(err) !== "EEXIST") throw err;
      const st = await lstatOrNull(abs);
      const same = st !== null && st.dev === tst.dev && st.ino === tst.ino;
      if (!same) {
        if (!(await this.clearWay(raw, abs, "link", st ?? undefined))) return;
        await link(fsPath(targetAbs), fsPath(abs));
      }
    }
    this.progress.files++;
  }

  /** Device nodes and FIFOs, only on request and as root (mknod(2) is not in Node). */
  private async special(raw: string, rel: string, h: RawHeader): Promise<void> {
    const what = h.type === "fifo" ? "FIFO" : (h.type ?? "special file").replace("-", " ");
    if (this.opts.devices !== true) {
      return this.skip(
        raw,
        `${what} skipped (device and FIFO entries are only created on request)`,
      );
    }
    if (!this.isRoot) return this.skip(raw, `${what} skipped: creating it needs root`);
    const abs = await this.parents(raw, rel, true);
    if (abs === null) return;
    // mknod(1) and mkfifo(1) take the path as an argument, which Node passes as UTF-8.
    const absText = textOf(abs);
    if (absText === null) return this.skip(raw, `${what} not created: its path is not valid UTF-8`);
    const existing = await lstatOrNull(abs);
    if (existing !== null && !(await this.clearWay(raw, abs, "special", existing))) return;
    // The owner is set afterwards, so the setuid/setgid bits are never kept here.
    const mode = ((validMode(h.mode) ?? 0o600) & 0o1777).toString(8);
    try {
      if (h.type === "fifo") {
        await execFileAsync("mkfifo", ["-m", mode, absText]);
      } else {
        const type = h.type === "block-device" ? "b" : "c";
        const major = String(h.devmajor ?? 0);
        const minor = String(h.devminor ?? 0);
        await execFileAsync("mknod", ["-m", mode, absText, type, major, minor]);
      }
    } catch (err) {
      const stderr = (err as { stderr?: unknown }).stderr;
      const detail =
        typeof stderr === "string" && stderr.trim() !== "" ? stderr.trim() : describe(err);
      return this.skip(raw, `${what} not created: ${detail}`);
    }
    this.created.add(await lstat(fsPath(abs)));
    await this.chownEntry(raw, h, (uid, gid) => lchown(fsPath(abs), uid, gid));
    const mtime = entryMtime(h);
    if (mtime !== null)
      await this.attr(raw, "mtime", () => lutimes(fsPath(abs), new Date(), timeArg(mtime)));
    this.progress.files++;
  }

  /**
   * Checks every parent of `rel` below the root with lstat (cached per run):
   * a symlink or non-directory refuses the entry. Missing parents are created
   * (0700 now, DEFAULT_DIR_MODE at the end) when `create`, otherwise refuse.
   * Returns the absolute path of `rel`, or null when the entry was refused.
   */
  private async parents(raw: string, rel: string, create: boolean): Promise<string | null> {
    for (let slash = rel.indexOf("/"); slash !== -1; slash = rel.indexOf("/", slash + 1)) {
      const dir = rel.slice(0, slash);
      if (this.safeDirs.has(dir)) continue;
      const abs = path.join(this.root, dir);
      const st = await lstatOrNull(abs);
      if (st === null) {
        if (!create) {
          this.refuse(raw, `parent "${displayName(dir)}" does not exist`);
          return null;
        }
        await this.makeDir(dir, abs, null);
        continue;
      }
      if (st.isDirectory()) {
        this.safeDirs.add(dir);
        continue;
      }
      const kind = st.isSymbolicLink() ? "a symlink" : `a ${fileKind(st)}`;
      const why = `parent "${displayName(dir)}" is ${kind}, not a directory: refusing to write through it`;
      this.refuse(raw, why);
      return null;
    }
    return path.join(this.root, rel);
  }

  private async makeDir(rel: string, abs: string, meta: DirMeta | null): Promise<void> {
    await mkdir(fsPath(abs), 0o700);
    this.safeDirs.add(rel);
    this.pendingDirs.set(
      rel,
      meta ?? { mode: DEFAULT_DIR_MODE, mtime: null, uid: null, gid: null },
    );
  }

  /**
   * Something exists at `abs` where the entry goes. Removes it (never a
   * directory) when overwrite is on or this run created it (a later entry of the
   * same name wins, as with tar); otherwise warns and returns false.
   */
  private async clearWay(
    raw: string,
    abs: string,
    kind: Kind | "directory",
    known?: Stats,
  ): Promise<boolean> {
    const st = known ?? (await lstatOrNull(abs));
    if (st === null) return true;
    if (st.isDirectory()) {
      this.skip(
        raw,
        `a directory exists at this path and is never replaced by a ${kindName(kind)}`,
      );
      return false;
    }
    if (!this.overwrite && !this.created.has(st)) {
      this.skip(raw, `a ${fileKind(st)} already exists at this path (overwrite is off), skipped`);
      return false;
    }
    await unlink(fsPath(abs));
    return true;
  }

  /**
   * Applies owners (when requested) through `chown`; true when they were set.
   * A failure is a warning; EPERM means we cannot at all (not root): warned
   * once, then owners are no longer tried.
   */
  private async chownEntry(
    raw: string,
    h: RawHeader,
    chown: (uid: number, gid: number) => Promise<void> | void,
  ): Promise<boolean> {
    if (!this.owners) return false;
    const uid = entryId(h.uid, h.pax?.uid);
    const gid = entryId(h.gid, h.pax?.gid);
    if (uid === null || gid === null) {
      this.warn(raw, "invalid uid/gid in the archive, owner not restored");
      return false;
    }
    try {
      await chown(uid, gid);
      return true;
    } catch (err) {
      const code = errCode(err) ?? "";
      if (FATAL_CODES.has(code)) throw err;
      if (code === "EPERM") {
        this.owners = false;
        const why = `cannot restore owners (${describe(err)}); owners are not restored from here on`;
        this.warn(raw, why);
      } else {
        this.warn(raw, `cannot set owner ${uid}:${gid}: ${describe(err)}`);
      }
      return false;
    }
  }

  /** An attribute that failed is a warning; the entry itself is restored. */
  private async attr(raw: string, what: string, fn: () => Promise<void> | void): Promise<void> {
    try {
      await fn();
    } catch (err) {
      if (FATAL_CODES.has(errCode(err) ?? "")) throw err;
      this.warn(raw, `cannot set ${what}: ${describe(err)}`);
    }
  }

  /** Directory attributes, deepest first, through an fd opened without following symlinks. */
  private async finishDirs(): Promise<void> {
    const dirs = [...this.pendingDirs].map(([rel, meta]) => ({ rel, meta, depth: depthOf(rel) }));
    dirs.sort((a, b) => b.depth - a.depth);
    for (const { rel, meta } of dirs) {
      let fh: FileHandle;
      try {
        fh = await open(fsPath(path.join(this.root, rel)), DIR_FLAGS);
      } catch (err) {
        this.warn(`${rel}/`, `cannot set directory attributes: ${describe(err)}`);
        continue;
      }
      try {
        if (this.owners && meta.uid !== null && meta.gid !== null) {
          const { uid, gid } = meta;
          await this.attr(`${rel}/`, "owner", () => fh.chown(uid, gid));
        }
        await this.attr(`${rel}/`, "mode", () => fh.chmod(meta.mode));
        const { mtime } = meta;
        if (mtime !== null)
          await this.attr(`${rel}/`, "mtime", () => fh.utimes(new Date(), timeArg(mtime)));
      } catch (err) {
        this.warn(`${rel}/`, `cannot set directory attributes: ${describe(err)}`);
      } finally {
        await fh.close().catch(() => {});
      }
    }
    this.pendingDirs.clear();
  }

  private refuse(raw: string, reason: string): void {
    this.refused++;
    this.warn(raw, `refused: ${reason}`);
  }

  private skip(raw: string, message: string): void {
    this.skipped++;
    this.warn(raw, message);
  }

  private warn(name: string, message: string): void {
    this.warnings++;
    this.opts.onWarning?.({ path: displayName(name), message });
  }

  private reportProgress(): void {
    this.opts.onProgress?.({ ...this.progress });
  }

  private checkStop(): void {
    if (this.stop.signal.aborted) throw this.stop.signal.reason;
  }
}

/** Inode numbers (per device) of what this run created. */
class InodeSet {
  private readonly byDev = new Map<number, Set<number>>();

  add(st: { dev: number; ino: number }): void {
    let set = this.byDev.get(st.dev);
    if (set === undefined) {
      set = new Set();
      this.byDev.set(st.dev, set);
    }
    set.add(st.ino);
  }

  has(st: { dev: number; ino: number }): boolean {
    return this.byDev.get(st.dev)?.has(st.ino) ?? false;
  }
}

// ---------------------------------------------------------------------------
// Helpers

type Normalised = { ok: true; rel: string } | { ok: false; reason: string };

/**
 * An archive name as a relative path below the destination: "." components and
 * repeated or trailing "/" dropped. Unsafe names come back with the reason.
 */
function normaliseName(raw: string): Normalised {
  if (raw === "") return { ok: false, reason: "empty name" };
  if (raw.includes("\0")) return { ok: false, reason: "name contains a NUL byte" };
  if (raw.startsWith("/")) return { ok: false, reason: "absolute name" };
  const parts: string[] = [];
  for (const part of raw.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") return { ok: false, reason: 'name contains a ".." component' };
    parts.push(part);
  }
  return { ok: true, rel: parts.join("/") };
}

/**
 * tar-stream's extractor, handing out every name and link target as a byte
 * string (src/pipeline/file-names.ts): ustar and GNU long-name fields through its
 * `filenameEncoding` option, pax `path`/`linkpath` values by rewriting each
 * pax header before its own decoder (which knows only UTF-8) reads it. The
 * hook is tar-stream v3's internal `_decodeLongHeader`, called with the
 * header's data once the whole of it is buffered; if a tar-stream release
 * renames it, this throws at once instead of silently mangling names (and
 * the byte-name tests in test/extract.test.ts fail).
 */
function byteNameExtract(): Extract {
  const ex = tarExtract({ filenameEncoding: "latin1" } as Parameters<typeof tarExtract>[0]);
  const inner = ex as unknown as {
    _header: { type?: unknown } | null;
    _decodeLongHeader: ((buf: Buffer) => void) | undefined;
  };
  const decode = inner._decodeLongHeader;
  if (typeof decode !== "function") {
    throw new Error("tar-stream has no _decodeLongHeader: names that are not UTF-8 cannot be read");
  }
  inner._decodeLongHeader = function (this: typeof inner, buf: Buffer) {
    const type = this._header?.type;
    const pax = type === "pax-header" || type === "pax-global-header";
    decode.call(this, pax ? paxPathsAsByteStrings(buf) : buf);
  };
  return ex;
}

async function resolveDest(dest: string): Promise<string> {
  if (!path.isAbsolute(dest)) {
    throw new UsageError(
      `restore destination must be an absolute path, got ${JSON.stringify(dest)}`,
    );
  }
  let root: string;
  try {
    root = byteStringFrom(await realpath(dest, { encoding: "buffer" }));
  } catch (err) {
    throw new UsageError(`restore destination ${dest} is not usable: ${describe(err)}`, {
      cause: err,
    });
  }
  const st = await lstat(fsPath(root));
  if (!st.isDirectory()) throw new UsageError(`restore destination ${dest} is not a directory`);
  try {
    await access(fsPath(root), fsConstants.W_OK | fsConstants.X_OK);
  } catch (err) {
    throw new UsageError(`restore destination ${dest} is not writable: ${describe(err)}`, {
      cause: err,
    });
  }
  return root;
}

function writeAll(fd: number, bufs: Buffer[], size: number): void {
  let written = bufs.length === 1 ? writeSync(fd, bufs[0] as Buffer) : writevSync(fd, bufs);
  if (written === size) return;
  const all = Buffer.concat(bufs);
  while (written < size) {
    const n = writeSync(fd, all, written, size - written);
    if (n === 0) throw Object.assign(new Error("write made no progress"), { code: "EIO" });
    written += n;
  }
}

function entryInfo(h: RawHeader): TarEntryInfo {
  const mtime = entryMtime(h);
  const info: TarEntryInfo = {
    name: displayName(h.name),
    type: h.type ?? "unknown",
    size: h.size,
    mode: validMode(h.mode) ?? 0,
    mtime: new Date(mtime === null ? Number.NaN : mtime * 1000),
    uid: entryId(h.uid, h.pax?.uid) ?? -1,
    gid: entryId(h.gid, h.pax?.gid) ?? -1,
  };
  if (h.linkname !== null && h.linkname !== undefined && h.linkname !== "")
    info.linkname = displayName(h.linkname);
  return info;
}

/** Seconds since the epoch; pax "mtime" (sub-second, out of ustar range) wins. Null if unusable. */
function entryMtime(h: RawHeader): number | null {
  const pax = h.pax?.mtime;
  if (pax !== undefined && /^-?\d+(\.\d+)?$/.test(pax)) return Number(pax);
  const ms = h.mtime instanceof Date ? h.mtime.getTime() : Number.NaN;
  return Number.isFinite(ms) ? ms / 1000 : null;
}

/**
 * For utimes: seconds as a number keep sub-millisecond precision, but Node
 * takes a negative number for "now"; times before 1970 go as a Date.
 */
function timeArg(seconds: number): number | Date {
  return seconds >= 0 ? seconds : new Date(seconds * 1000);
}

/** A uid or gid; a pax value wins (ustar fields hold only up to 0o7777777). */
function entryId(field: number, pax: string | undefined): number | null {
  const value = pax !== undefined && /^\d+$/.test(pax) ? Number(pax) : field;
  return Number.isSafeInteger(value) && value >= 0 ? value : null;
}

function validMode(mode: number): number | null {
  return Number.isInteger(mode) && mode >= 0 ? mode & 0o7777 : null;
}

/** setuid/setgid only go with the right owner: without it they would grant our identity. */
function fileMode(h: RawHeader, ownersSet: boolean): number {
  const mode = validMode(h.mode) ?? 0o600;
  return ownersSet ? mode : mode & ~0o6000;
}

function depthOf(rel: string): number {
  let depth = 0;
  for (let i = rel.indexOf("/"); i !== -1; i = rel.indexOf("/", i + 1)) depth++;
  return depth;
}

async function lstatOrNull(p: string): Promise<Stats | null> {
  try {
    return await lstat(fsPath(p));
  } catch (err) {
    if (errCode(err) === "ENOENT") return null;
    throw err;
  }
}

/**
 * Stops the caller's stream. With `reason` as its error, so a pipeline() it is
 * part of rejects with the same reason rather than "premature close"; but only
 * when someone listens for errors, since an unheard "error" would crash.
 */
function destroyInput(input: NodeJS.ReadableStream, reason: unknown): void {
  const destroy = (input as { destroy?: (err?: Error) => void }).destroy;
  if (typeof destroy !== "function") return;
  if (input.listenerCount("error") > 0) destroy.call(input, reason as Error);
  else destroy.call(input);
}

function kindName(kind: Kind | "directory"): string {
  switch (kind) {
    case "file":
      return "file";
    case "directory":
      return "directory";
    case "symlink":
      return "symlink";
    case "link":
      return "hard link";
    case "special":
      return "special file";
  }
}

function errCode(err: unknown): string | undefined {
  if (typeof err === "object" && err !== null && "code" in err && typeof err.code === "string")
    return err.code;
  return undefined;
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message || err.name : String(err);
}
