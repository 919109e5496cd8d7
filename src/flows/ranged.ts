/**
 * A ranged restore: `restore --include` of a few entries of an uncompressed
 * archive reads only their bytes. The manifest's index gives each entry's
 * first header block (a pax or GNU long-name header comes first, when the
 * entry has one); the entry ends where the next indexed entry begins, the last
 * one at the end of the archive. The selected ranges (merged where they touch)
 * are fetched with ranged GETs of the archive's version ID and SSE-C key, each
 * resumed on its own after a stall or reset (src/pipeline/download.ts), and
 * fed with two zero blocks to the ordinary tar reader and extractor.
 *
 * Integrity: a ranged read cannot check the whole-archive SHA-256. What is
 * checked instead, before anything of an entry is written: the tar header's
 * checksum (tar-stream), that the header at each offset names the path, type
 * and size the manifest gives, and that the entry's headers and padded data
 * fill its range exactly. A manifest whose offsets point elsewhere stops the
 * restore with a RestoreError (entries before it were checked the same way).
 * What this does not prove is that the bytes are the archive's as backed up;
 * that is the SHA-256's job: `immutd verify`, or `restore --whole-archive`.
 */
import { pipeline } from "node:stream/promises";
import { type ByteRange, downloadRanges, RestoreError, whereOf } from "../pipeline/download.js";
import { compileIncludes } from "../pipeline/extract.js";
import { displayName } from "../pipeline/file-names.js";
import { fileName, type Manifest, type ManifestFile } from "../repo/manifest.js";
import type { ObjectStore } from "../store/store.js";
import { HashingCounter } from "./backup.js";
import {
  checkComplete,
  failed,
  incompleteText,
  type RestoreMode,
  type RestoreOptions,
  type RestoreSource,
  type RestoreSummary,
  readTar,
  type TarOutcome,
} from "./restore.js";

const BLOCK = 512;
/** The end-of-archive blocks appended after the last range when it does not reach the archive's end. */
const END_MARKER = Buffer.alloc(2 * BLOCK);

/** One selected entry and where its range lies in the concatenated stream. */
export interface PlannedEntry {
  file: ManifestFile;
  /** Byte string of its name. */
  name: string;
  /** Offset in the stream of ranges just past the entry's range. */
  streamEnd: number;
  /** Its range runs to the end of the archive (it is the last entry). */
  last: boolean;
}

export interface RangePlan {
  entries: PlannedEntry[];
  /** Archive ranges to fetch, in order, merged where they touch. */
  ranges: ByteRange[];
  /** Appended after the ranges: the end-of-archive blocks, unless the last range carries the archive's own. */
  tail: Buffer;
  /** Archive bytes the ranges hold. */
  bytes: number;
}

/**
 * The ranges that restore the entries `include` selects. Throws a
 * RestoreError when the index is not in increasing offset order inside the
 * archive (a manifest that cannot be right).
 */
export function planRanges(m: Manifest, include: readonly string[]): RangePlan {
  const selects = compileIncludes(include);
  const files = m.files;
  const entries: PlannedEntry[] = [];
  const ranges: ByteRange[] = [];
  let bytes = 0;
  for (let i = 0; i < files.length; i++) {
    const f = files[i] as ManifestFile;
    const next = files[i + 1];
    const end = next ? next.offset : m.archive.size;
    if (!(f.offset >= 0 && f.offset + BLOCK <= end && end <= m.archive.size)) {
      throw new RestoreError(
        `manifest of ${m.archive.key}: entry "${f.path}" has offset ${f.offset}, out of order or outside the ${m.archive.size}-byte archive; restore with --whole-archive`,
      );
    }
    const name = fileName(f);
    if (!selects(name)) continue;
    const prev = ranges.at(-1);
    if (prev && prev.end === f.offset) prev.end = end;
    else ranges.push({ start: f.offset, end });
    bytes += end - f.offset;
    entries.push({ file: f, name, streamEnd: bytes, last: next === undefined });
  }
  const last = entries.at(-1);
  return { entries, ranges, tail: last?.last ? Buffer.alloc(0) : END_MARKER, bytes };
}

/**
 * The check run on every header the tar reader meets in the stream of ranges
 * (ExtractOptions.onHeader): the n-th header must be the n-th planned entry,
 * and end exactly where its range ends. `done()` says whether every planned
 * entry was seen.
 */
export function rangeChecker(plan: RangePlan, where: string) {
  let n = 0;
  const refuse = (what: string) =>
    new RestoreError(
      `${where}: the manifest's index does not match the archive: ${what}; it was not written. The manifest's offsets are wrong (damaged or forged): restore with --whole-archive, which checks the SHA-256`,
    );
  return {
    onHeader(h: { name: string; type: string; size: number; end: number }): void {
      const e = plan.entries[n++];
      if (!e) throw refuse(`an entry "${displayName(h.name)}" follows the last one asked for`);
      const f = e.file;
      const same =
        trimSlash(h.name) === trimSlash(e.name) &&
        h.type === f.type &&
        (f.type !== "file" || h.size === f.size);
      if (!same) {
        throw refuse(
          `at the offset of "${f.path}" (${f.type}, ${f.size} bytes) the archive has "${displayName(h.name)}" (${h.type}, ${h.size} bytes)`,
        );
      }
      const fits = e.last ? h.end + END_MARKER.length <= e.streamEnd : h.end === e.streamEnd;
      if (!fits) throw refuse(`entry "${f.path}" does not end where the next indexed entry begins`);
    },
    done(): boolean {
      return n === plan.entries.length;
    },
  };
}

function trimSlash(name: string): string {
  return name.replace(/\/+$/, "");
}

/**
 * Restores the entries `opts.include` selects from an uncompressed archive by
 * reading only their ranges (see the module comment). The caller checked that
 * `m` is the manifest of `src` (src/flows/browse.ts manifestOf). `sha256` in the
 * summary is empty: no whole-archive hash was computed.
 */
export async function restoreRanges(
  reader: ObjectStore,
  src: RestoreSource,
  m: Manifest,
  mode: Extract<RestoreMode, { kind: "extract" }>,
  opts: RestoreOptions & { include: readonly string[] },
): Promise<RestoreSummary & { ranges: number }> {
  const started = Date.now();
  const where = whereOf(src);
  if (m.archive.compression !== "none" || m.archive.versionId !== src.versionId)
    throw new RestoreError(
      `${where}: a ranged restore needs the uncompressed archive its manifest names`,
    );
  const plan = planRanges(m, opts.include);
  const check = rangeChecker(plan, where);
  let files = 0;
  const counter = new HashingCounter((n) => opts.onProgress?.({ bytes: n, files }));
  const body = await downloadRanges(reader, src, plan.ranges, plan.tail, opts);
  let failure: unknown;
  let out: TarOutcome = {};
  const piping = pipeline([body, counter]).catch((e: unknown) => {
    failure ??= e;
  });
  try {
    out = await readTar(counter, mode, { ...opts, onHeader: check.onHeader }, (n) => {
      files = n;
    });
    await piping;
  } catch (err) {
    failure ??= err;
  }
  if (failure === undefined && !check.done())
    failure = new RestoreError(`${where}: the archive ended before every entry the manifest lists`);
  if (failure !== undefined) throw failed(where, failure, incompleteText(mode), opts.signal);
  checkComplete(where, mode, out);
  return {
    source: src,
    bytes: counter.bytes - plan.tail.length,
    sha256: "",
    ...(out.result ? { result: out.result } : {}),
    ranges: plan.ranges.length,
    durationMs: Date.now() - started,
  };
}
