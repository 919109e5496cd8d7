/**
 * Chains of backups: a full backup and the incrementals built on it, each
 * holding only the entries that changed since the member before it, each with
 * the complete index of its point in time (src/repo/manifest.ts format 3).
 * Pure: whether the next run is full or incremental and why, which members a
 * restore point needs, which points a broken member breaks, and whether an
 * incremental's manifest agrees with the manifests of the members it names.
 *
 * A member is worthless without every member before it, so the chain is the
 * unit of locking (src/flows/incremental.ts extends every earlier member to
 * the newest one's retain-until), of verification (a broken member breaks
 * every later point) and of keepLatestLocked.
 */
import { createHash } from "node:crypto";
import type { IncrementalConfig } from "../config/config.js";
import {
  type ChainMember,
  fileName,
  INCREMENTAL_FORMAT,
  MANIFEST_FORMAT,
  type Manifest,
  type ManifestFile,
} from "./manifest.js";

/** A backup as the chain logic sees it (a catalog row, or one rebuilt from the bucket). */
export interface ChainNode {
  id: number;
  parentId: number | null;
  createdAt: string;
  status: string;
  key: string;
  versionId: string;
}

export type ChainDecision =
  | { kind: "full"; reason: string }
  | {
      kind: "incremental";
      /** The previous backup, the new one's parent. */
      parent: ChainNode;
      /** Every member the new one builds on, the full first, the parent last. */
      members: ChainNode[];
    };

/**
 * What was walked, as a short digest: paths, excludes (every pattern the walk
 * is given), oneFileSystem and excludeIfPresent. A parent that walked anything
 * else cannot tell a deletion from a newly excluded path.
 */
export function walkFingerprint(w: {
  paths: readonly string[];
  exclude?: readonly string[] | undefined;
  oneFileSystem?: boolean | undefined;
  excludeIfPresent?: readonly string[] | undefined;
}): string {
  const doc = JSON.stringify([
    [...w.paths],
    [...(w.exclude ?? [])],
    w.oneFileSystem === true,
    [...(w.excludeIfPresent ?? [])],
  ]);
  return `sha256:${createHash("sha256").update(doc).digest("hex").slice(0, 32)}`;
}

/**
 * The members of the chain `node` ends, the full first and `node` last, from
 * `byId`; undefined when a parent is not known (the chain is broken there)
 * or the links loop.
 */
export function chainOf(
  node: ChainNode,
  byId: ReadonlyMap<number, ChainNode>,
): ChainNode[] | undefined {
  const out: ChainNode[] = [node];
  const seen = new Set([node.id]);
  let at = node;
  while (at.parentId !== null) {
    const parent = byId.get(at.parentId);
    if (!parent || seen.has(parent.id)) return undefined;
    seen.add(parent.id);
    out.push(parent);
    at = parent;
  }
  return out.reverse();
}

/** Statuses a member may have and still be built on: stored, checked and locked. */
const SOUND = new Set(["ok"]);

/**
 * Full or incremental, from the catalog alone (the parent's manifest, its
 * archive versions and locks are checked by the caller, each a reason for a
 * full of its own). `previous` is the job's newest backup in the target's
 * bucket, `byId` every backup of the job.
 */
export function decideChain(o: {
  incremental: IncrementalConfig | undefined;
  previous: ChainNode | undefined;
  byId: ReadonlyMap<number, ChainNode>;
  now: Date;
}): ChainDecision {
  const inc = o.incremental;
  if (!inc) return { kind: "full", reason: "the job has no incremental option" };
  const prev = o.previous;
  if (!prev) return { kind: "full", reason: "first backup of the job in this bucket" };
  const members = chainOf(prev, o.byId);
  if (!members)
    return {
      kind: "full",
      reason: `the chain of the previous backup (id ${prev.id}) has a member the catalog does not hold`,
    };
  for (const m of members) {
    if (!SOUND.has(m.status))
      return {
        kind: "full",
        reason: `chain member ${m.key} (backup ${m.id}) is ${m.status}`,
      };
  }
  const full = members[0] as ChainNode;
  if (inc.fullEvery.runs !== undefined && members.length >= inc.fullEvery.runs)
    return {
      kind: "full",
      reason: `the chain has ${members.length} members (fullEvery: ${inc.fullEvery.runs})`,
    };
  if (inc.fullEvery.ms !== undefined) {
    const age = o.now.getTime() - Date.parse(full.createdAt);
    if (age >= inc.fullEvery.ms)
      return {
        kind: "full",
        reason: `the chain's full backup is from ${full.createdAt} (fullEvery: ${inc.fullEvery.text})`,
      };
  }
  return { kind: "incremental", parent: prev, members };
}

/**
 * Why a parent's manifest cannot be built on, as a phrase; undefined when it
 * can: it walked something else, or its index lacks what changes are told by
 * (made before incremental backups).
 */
export function parentUnfit(parent: Manifest, walk: string): string | undefined {
  if (parent.walk === undefined)
    return "the previous backup's manifest does not record what it walked (made before incremental backups)";
  if (parent.walk !== walk) return "paths or excludes changed since the previous backup";
  const bare = parent.files.find(
    (f) => f.ino === undefined || f.mtimeNs === undefined || f.ctimeNs === undefined,
  );
  if (bare)
    return `the previous backup's index has no inode and change times for ${bare.path} (made before incremental backups)`;
  return undefined;
}

/** The chain an incremental built on `parent` names: the parent's own chain, then the parent. */
export function membersAfter(parent: Manifest, manifestVersionId: string): ChainMember[] {
  return [
    ...(parent.chain ?? []),
    {
      key: parent.archive.key,
      versionId: parent.archive.versionId,
      size: parent.archive.size,
      sha256: parent.archive.sha256,
      compression: parent.archive.compression,
      manifestVersionId,
      createdAt: parent.createdAt,
    },
  ];
}

/** The member (index into `[...chain, self]`) whose archive holds an index entry. */
export function memberOf(m: Manifest, f: ManifestFile): number {
  return f.member ?? m.chain?.length ?? 0;
}

/**
 * Per member of `m`'s chain (the full first, `m`'s own archive last), the
 * archive names of the entries `m`'s point in time takes from it, among those
 * `select` accepts. A restore streams exactly the members with a non-empty set.
 */
export function namesByMember(m: Manifest, select: (name: string) => boolean): Set<string>[] {
  const out = Array.from({ length: (m.chain?.length ?? 0) + 1 }, () => new Set<string>());
  for (const f of m.files) {
    const name = fileName(f);
    if (!select(name)) continue;
    out[memberOf(m, f)]?.add(trimSlash(name));
  }
  return out;
}

export function trimSlash(name: string): string {
  return name.replace(/\/+$/, "");
}

/**
 * Whether an incremental's manifest agrees with the manifests of the members
 * it names (`members[i]` the decoded manifest of `m.chain[i]`): each member's
 * archive is the one named, with the same size and SHA-256; the first is a
 * full; each later one names the one before it as parent and the same chain
 * before that. A manifest written to claim another parent (or a chain that
 * does not lead back to one full) is refused with the reason.
 */
export function chainMismatch(m: Manifest, members: readonly Manifest[]): string | undefined {
  if (m.formatVersion !== INCREMENTAL_FORMAT) return undefined;
  const chain = m.chain ?? [];
  if (members.length !== chain.length)
    return `it names ${chain.length} earlier members, ${members.length} were read`;
  for (let i = 0; i < chain.length; i++) {
    const c = chain[i] as ChainMember;
    const mm = members[i] as Manifest;
    const name = `member ${i + 1} (${c.key})`;
    if (mm.host !== m.host || mm.job !== m.job)
      return `${name} belongs to host ${mm.host} job ${mm.job}, not to this backup's`;
    if (
      mm.archive.key !== c.key ||
      mm.archive.versionId !== c.versionId ||
      mm.archive.size !== c.size ||
      mm.archive.sha256 !== c.sha256
    )
      return `${name}: its manifest describes archive ${mm.archive.key} version ${mm.archive.versionId} (${mm.archive.size} bytes, SHA-256 ${mm.archive.sha256}), not the one named`;
    if (
      Date.parse(mm.createdAt) >=
      Date.parse(i + 1 < chain.length ? (chain[i + 1] as ChainMember).createdAt : m.createdAt)
    )
      return `${name} is not older than the member after it`;
    if (i === 0) {
      if (mm.formatVersion !== MANIFEST_FORMAT || mm.parent !== null)
        return `${name} is not a full backup`;
      continue;
    }
    const prev = chain[i - 1] as ChainMember;
    if (mm.parent?.key !== prev.key || mm.parent.versionId !== prev.versionId)
      return `${name} does not name member ${i} as its parent`;
    const own = mm.chain ?? [];
    if (
      own.length !== i ||
      own.some((x, j) => x.key !== chain[j]?.key || x.versionId !== chain[j]?.versionId)
    )
      return `${name} names another chain before it`;
  }
  return undefined;
}

/**
 * The restore points a broken member breaks: itself and every backup whose
 * chain passes through it, oldest first.
 */
export function pointsBrokenBy(member: ChainNode, all: readonly ChainNode[]): ChainNode[] {
  const byId = new Map(all.map((n) => [n.id, n]));
  return all
    .filter((n) => chainOf(n, byId)?.some((x) => x.id === member.id) ?? n.id === member.id)
    .sort((a, b) => Date.parse(a.createdAt) - Date.parse(b.createdAt) || a.id - b.id);
}
