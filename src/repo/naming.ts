/**
 * Object keys of backups: `<prefix><host>/<job>/<UTC yyyy-mm-ddTHHMMSSZ>-<8 hex>.tar[.gz|.zst]`.
 * Pure. The random suffix makes a key unique even for two runs in one second, so
 * immutd never writes a second version under a key it has used.
 */
import { randomBytes } from "node:crypto";
import type { Compression } from "../config/config.js";

/**
 * Host and job names: what the config accepts, and so all that can stand
 * between the slashes of a key immutd wrote. Keys whose segments are anything
 * else were not written by immutd (and may carry terminal escapes).
 */
export const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** What follows `.tar` in a key, per compression: the extension `zstd -d`, `gunzip` and `tar -a` go by. */
const EXTENSIONS: Record<Compression, string> = { none: "", gzip: ".gz", zstd: ".zst" };

export function jobPrefix(prefix: string, host: string, job: string): string {
  return `${prefix}${host}/${job}/`;
}

export function objectKey(opts: {
  prefix: string;
  host: string;
  job: string;
  at: Date;
  compression: Compression;
  random?: string;
}): string {
  const stamp = opts.at
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d{3}/, "");
  // 20261125T065430Z -> 2026-11-25T065430Z: dashes in the date keep it readable, none in the time.
  const readable = `${stamp.slice(0, 4)}-${stamp.slice(4, 6)}-${stamp.slice(6, 8)}${stamp.slice(8)}`;
  const random = opts.random ?? randomBytes(4).toString("hex");
  const ext = `.tar${EXTENSIONS[opts.compression]}`;
  return `${jobPrefix(opts.prefix, opts.host, opts.job)}${readable}-${random}${ext}`;
}

/**
 * The manifest of a backup lives at its archive key plus this suffix
 * (`….tar.gz.manifest.json.gz`): beside the archive under the job prefix, and
 * never matching KEY_TAIL (which ends in `.tar`, `.tar.gz` or `.tar.zst`), so neither a
 * catalog-free restore's selection nor crash recovery (which lists versions at an
 * archive's exact key) takes it for an archive.
 */
export const MANIFEST_SUFFIX = ".manifest.json.gz";

export function manifestKey(archiveKey: string): string {
  return `${archiveKey}${MANIFEST_SUFFIX}`;
}

/** Throws unless key is a manifest key: the guard that keeps ObjectStore.putManifest away from archives. */
export function assertManifestKey(key: string): void {
  const archive = key.endsWith(MANIFEST_SUFFIX) ? key.slice(0, -MANIFEST_SUFFIX.length) : "";
  if (!parseObjectKey(archive)) {
    throw new Error(
      `refusing to write ${key} as a manifest: not an archive key plus ${MANIFEST_SUFFIX}`,
    );
  }
}

const KEY_TAIL = /(\d{4})-(\d{2})-(\d{2})T(\d{2})(\d{2})(\d{2})Z-[0-9a-f]{8}\.tar(\.gz|\.zst)?$/;

/** True when `name` is exactly the last segment of an archive key immutd makes (stamp, random, extension). */
export function isArchiveFileName(name: string): boolean {
  return KEY_TAIL.exec(name)?.index === 0;
}

/** Reads the creation time and compression back from a key immutd made; undefined for any other key. */
export function parseObjectKey(
  key: string,
): { createdAt: Date; compression: Compression } | undefined {
  const m = KEY_TAIL.exec(key);
  if (!m) return undefined;
  const [, y, mo, d, h, mi, s, ext] = m;
  return {
    createdAt: new Date(`${y}-${mo}-${d}T${h}:${mi}:${s}Z`),
    compression: ext === ".zst" ? "zstd" : ext === ".gz" ? "gzip" : "none",
  };
}

/**
 * How far a key's date may lie ahead of this machine's clock before the key is
 * taken for a planted one: the clocks of the backed-up host and of the host
 * restoring may disagree by this much (NTP keeps them far closer).
 */
export const KEY_CLOCK_SKEW_MS = 10 * 60 * 1000;

/**
 * True when a key claims a creation time after `now` (plus KEY_CLOCK_SKEW_MS).
 * immutd names a key when the run starts, so no backup of its own can be dated
 * in the future; such a key was written by someone else with write access,
 * typically to be picked as "newest" by a catalog-free restore.
 */
export function isDatedInFuture(createdAt: Date, now: Date): boolean {
  return createdAt.getTime() > now.getTime() + KEY_CLOCK_SKEW_MS;
}
