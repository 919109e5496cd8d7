/**
 * Restore: choose one backup version (from the catalog, or from the bucket
 * listing when the catalog is gone), then stream GetObject (SSE-C, by version
 * ID — never "latest") → SHA-256 and size check → gunzip → safe extraction,
 * listing, or raw output. No temporary copy; memory stays bounded.
 *
 * Integrity is known only when the stream ends, so a mismatch is reported
 * after the files were written: the error says the restore is incomplete and
 * leaves what was written in place for the operator to judge.
 */
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { createGunzip } from "node:zlib";
import { HashingCounter } from "./backup.js";
import type { Catalog } from "./catalog.js";
import type { Compression, Config, JobConfig } from "./config.js";
import { describeError, ImmutdError, StorageError, UsageError } from "./errors.js";
import {
  type ExtractResult,
  type ExtractWarning,
  extractTar,
  type ListResult,
  listTar,
  type TarEntryInfo,
} from "./extract.js";
import { deriveSseKey } from "./keys.js";
import { isDatedInFuture, jobPrefix, parseObjectKey } from "./naming.js";
import type { ObjectStore, Target } from "./store/store.js";

export const RESTORE_EXIT_CODE = 3;

/** The restore did not complete: integrity failed, the stream broke, or entries were refused. */
export class RestoreError extends ImmutdError {
  override readonly exitCode = RESTORE_EXIT_CODE;
}

/** One version to restore, with what is known to check it against. */
export interface RestoreSource {
  job: string;
  bucket: string;
  key: string;
  versionId: string;
  compression: Compression;
  sseKey: Buffer;
  createdAt: Date;
  /** Expected size and SHA-256 when known (from the catalog); the bucket listing only knows the size. */
  size?: number;
  sha256?: string;
  /** Catalog id, when it came from the catalog. */
  id?: number;
}

export interface Selector {
  at?: Date;
  id?: number;
  versionId?: string;
}

/** Picks the backup to restore from the catalog: newest good one, or the one the selector names. */
export function selectFromCatalog(catalog: Catalog, job: string, sel: Selector): RestoreSource {
  const rows = catalog.listBackups({ job });
  let row = undefined as (typeof rows)[number] | undefined;
  if (sel.id !== undefined) {
    row = catalog.backup(sel.id);
    if (!row) throw new UsageError(`no backup with id ${sel.id} in the catalog (see immutd list)`);
    if (row.job !== job)
      throw new UsageError(`backup ${sel.id} belongs to job ${row.job}, not ${job}`);
  } else if (sel.versionId !== undefined) {
    row = rows.find((r) => r.versionId === sel.versionId);
    if (!row)
      throw new UsageError(
        `job ${job} has no backup with version ID ${sel.versionId} in the catalog`,
      );
  } else {
    const good = rows.filter(
      (r) => r.status === "ok" && (!sel.at || Date.parse(r.createdAt) <= sel.at.getTime()),
    );
    row = good.at(-1);
    if (!row) {
      throw new UsageError(
        sel.at
          ? `job ${job} has no good backup created at or before ${sel.at.toISOString()}`
          : `job ${job} has no good backup in the catalog (try --from-bucket if the catalog was lost)`,
      );
    }
  }
  const sseKey = catalog.backupKey(row.id);
  if (!sseKey) throw new UsageError(`backup ${row.id} has no key in the catalog`);
  return {
    id: row.id,
    job: row.job,
    bucket: row.bucket,
    key: row.key,
    versionId: row.versionId,
    compression: row.compression,
    sseKey,
    createdAt: new Date(row.createdAt),
    size: row.size,
    ...(row.sha256 !== null ? { sha256: row.sha256 } : {}),
  };
}

export interface FromBucketOptions {
  /** The current time (tests move it); default the system clock. */
  now?: Date;
  /** One line per version left out for looking planted (see selectFromBucket). */
  onWarning?: (message: string) => void;
}

/**
 * Without the catalog: lists the job's versions under its prefix and derives
 * the key from the master key. Delete markers and versions whose key immutd
 * did not make are ignored; a newer version or delete marker on a key does not
 * hide an older version, because each version is addressed by its own ID.
 * Keys dated after now (beyond the allowed clock skew) cannot be immutd's own
 * and would otherwise always win as "newest": they are skipped with a warning,
 * unless --version-id names one of their versions explicitly.
 */
export async function selectFromBucket(
  reader: ObjectStore,
  config: Config,
  target: Target,
  job: JobConfig,
  host: string,
  sel: Selector,
  opts: FromBucketOptions = {},
): Promise<RestoreSource> {
  if (sel.id !== undefined)
    throw new UsageError("--id names a catalog entry; with --from-bucket use --at or --version-id");
  const prefix = jobPrefix(target.prefix, host, job.name);
  const versions = (await reader.listVersions(prefix))
    .filter((v) => !v.deleteMarker)
    .map((v) => ({ v, parsed: parseObjectKey(v.key) }))
    .filter((x) => x.parsed !== undefined && x.v.key.slice(prefix.length).indexOf("/") < 0);
  let pick: (typeof versions)[number] | undefined;
  if (sel.versionId !== undefined) {
    pick = versions.find((x) => x.v.versionId === sel.versionId);
    if (!pick)
      throw new UsageError(`no version ${sel.versionId} under s3://${target.bucket}/${prefix}`);
  } else {
    const created = (x: (typeof versions)[number]) => x.parsed?.createdAt.getTime() ?? 0;
    const now = opts.now ?? new Date();
    const plausible = versions.filter((x) => {
      if (x.parsed === undefined || !isDatedInFuture(x.parsed.createdAt, now)) return true;
      opts.onWarning?.(
        `s3://${target.bucket}/${x.v.key} version ${x.v.versionId} skipped: its key is dated ${x.parsed.createdAt.toISOString()}, after now (${now.toISOString()}); immutd never dates a key in the future, so someone with write access planted it`,
      );
      return false;
    });
    const eligible = plausible.filter((x) => !sel.at || created(x) <= sel.at.getTime());
    eligible.sort(
      (a, b) => created(a) - created(b) || a.v.lastModified.getTime() - b.v.lastModified.getTime(),
    );
    pick = eligible.at(-1);
    if (!pick) {
      throw new UsageError(
        `no backup of job ${job.name} under s3://${target.bucket}/${prefix}${sel.at ? ` created at or before ${sel.at.toISOString()}` : ""} (is host "${host}" right? see --host)`,
      );
    }
  }
  return {
    job: job.name,
    bucket: target.bucket,
    key: pick.v.key,
    versionId: pick.v.versionId,
    compression: pick.parsed?.compression ?? "none",
    sseKey: deriveSseKey(config.masterKey.reveal(), target.bucket, pick.v.key),
    createdAt: pick.parsed?.createdAt ?? pick.v.lastModified,
    size: pick.v.size,
  };
}

export type RestoreMode =
  | { kind: "extract"; dest: string; overwrite: boolean; devices: boolean; owners?: boolean }
  | { kind: "list"; onEntry: (e: TarEntryInfo) => void }
  | { kind: "raw"; out: NodeJS.WritableStream };

export interface RestoreOptions {
  include?: readonly string[];
  signal?: AbortSignal;
  onWarning?: (w: ExtractWarning) => void;
  onProgress?: (p: { bytes: number; files: number }) => void;
  /** Called when a broken or stalled download is resumed from byte `offset`. */
  onResume?: (r: { offset: number; attempt: number; error: string }) => void;
}

export interface RestoreSummary {
  source: RestoreSource;
  /** Archive bytes downloaded. */
  bytes: number;
  sha256: string;
  result?: ExtractResult;
  listed?: number;
  durationMs: number;
}

export async function restore(
  reader: ObjectStore,
  src: RestoreSource,
  mode: RestoreMode,
  opts: RestoreOptions = {},
): Promise<RestoreSummary> {
  const started = Date.now();
  const where = `s3://${src.bucket}/${src.key} version ${src.versionId}`;
  const body = await ResumingDownload.open(reader, src, where, opts);
  let files = 0;
  const hasher = new HashingCounter((n) => opts.onProgress?.({ bytes: n, files }));
  const tarStages = src.compression === "gzip" ? [createGunzip()] : [];

  let result: ExtractResult | undefined;
  let listing: ListResult | undefined;
  let failure: unknown;
  try {
    if (mode.kind === "raw") {
      await pipeline([body, hasher, mode.out]);
    } else {
      // The tar reader consumes its input to the very end, so the hash covers every byte.
      const tar = tarStages[0] ?? hasher;
      const piping = pipeline([body, hasher, ...tarStages]).catch((e: unknown) => {
        failure ??= e;
      });
      if (mode.kind === "list") {
        listing = await listTar(tar, mode.onEntry, opts.include);
      } else {
        result = await extractTar(tar, {
          dest: mode.dest,
          overwrite: mode.overwrite,
          devices: mode.devices,
          ...(mode.owners !== undefined ? { owners: mode.owners } : {}),
          ...(opts.include ? { include: opts.include } : {}),
          ...(opts.signal ? { signal: opts.signal } : {}),
          ...(opts.onWarning ? { onWarning: opts.onWarning } : {}),
          onProgress: (p) => {
            files = p.files;
          },
        });
      }
      await piping;
    }
  } catch (err) {
    failure ??= err;
  }
  const incomplete =
    mode.kind === "extract"
      ? " The restore is incomplete: files already written were left in place."
      : "";
  if (failure !== undefined) {
    if (opts.signal?.aborted) throw opts.signal.reason;
    throw new RestoreError(
      `restore of ${where} failed: ${(failure as Error).message ?? String(failure)}.${incomplete}`,
      {
        cause: failure,
      },
    );
  }
  if (src.size !== undefined && hasher.bytes !== src.size) {
    throw new RestoreError(
      `${where}: received ${hasher.bytes} bytes, but the backup has ${src.size}; the download was truncated.${incomplete}`,
    );
  }
  const sha256 = hasher.digest();
  if (src.sha256 !== undefined && sha256 !== src.sha256) {
    throw new RestoreError(
      `${where}: SHA-256 ${sha256} differs from the catalog's ${src.sha256}: the data is not what was backed up.${incomplete}`,
    );
  }
  const missing = incompleteness(result, listing);
  if (missing.length > 0) {
    const rest = mode.kind === "extract" ? " Everything else was restored." : "";
    throw new RestoreError(`${where}: ${missing.join("; ")}.${rest}`);
  }
  return {
    source: src,
    bytes: hasher.bytes,
    sha256,
    ...(result ? { result } : {}),
    ...(listing !== undefined ? { listed: listing.listed } : {}),
    durationMs: Date.now() - started,
  };
}

/**
 * Why a restore that read its whole stream is still incomplete: entries refused
 * as unsafe, entries that could not be written, include patterns that matched
 * nothing (tar's "Not found in archive"). Empty when nothing is missing.
 */
function incompleteness(result?: ExtractResult, listing?: ListResult): string[] {
  const missing: string[] = [];
  const entries = (n: number) => `${n} archive entr${n === 1 ? "y was" : "ies were"}`;
  if (result && result.refused > 0) {
    missing.push(
      `${entries(result.refused)} refused as unsafe (absolute paths, '..' or paths through symlinks; see the warnings) and not written`,
    );
  }
  if (result && result.skipped > 0) {
    missing.push(
      `${entries(result.skipped)} not restored (see the warnings: e.g. a directory in the way, a name too long below DIR, an I/O error)`,
    );
  }
  const unmatched = result?.unmatched ?? listing?.unmatched ?? [];
  if (unmatched.length > 0) {
    const quoted = unmatched.map((p) => JSON.stringify(p)).join(", ");
    missing.push(
      `include pattern${unmatched.length === 1 ? "" : "s"} ${quoted} matched nothing: not found in archive`,
    );
  }
  return missing;
}

/**
 * How many times in a row a download is resumed without receiving a byte in
 * between before the restore fails. Any progress resets the count, so a slow
 * consumer (whose paused connection the server or the idle timeout may drop
 * each time) costs one resume per pause, never a failure.
 */
export const DOWNLOAD_RESUMES = 4;

/**
 * The bytes of one version as a single stream across broken connections: when
 * the body fails (connection reset or dropped, idle timeout), it is fetched
 * again with a ranged GET of the same version ID and SSE-C key from the first
 * byte not yet received. Downstream sees one continuous stream, so the
 * SHA-256 and the size are still checked over every byte. A new request is
 * made only once the consumer asks for more: a consumer that is slow is not
 * a stall, and reading resumes when it reads again.
 */
class ResumingDownload extends Readable {
  readonly #reader: ObjectStore;
  readonly #src: RestoreSource;
  readonly #where: string;
  readonly #opts: RestoreOptions;
  #source: Readable | undefined;
  #offset = 0;
  /** Resumes since the last byte arrived. */
  #failures = 0;
  #opening = false;
  /** The consumer asked for bytes that have not been pushed yet. */
  #wanted = false;

  private constructor(reader: ObjectStore, src: RestoreSource, where: string, o: RestoreOptions) {
    super();
    this.#reader = reader;
    this.#src = src;
    this.#where = where;
    this.#opts = o;
  }

  /** Opens the download; a refusal of the first request is thrown here as a RestoreError. */
  static async open(
    reader: ObjectStore,
    src: RestoreSource,
    where: string,
    o: RestoreOptions,
  ): Promise<ResumingDownload> {
    const d = new ResumingDownload(reader, src, where, o);
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
