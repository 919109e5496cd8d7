/**
 * The planner stage of an incremental run: compares each entry the walk meets
 * with the parent backup's complete index (src/repo/manifest.ts) and decides
 * whether it goes into the archive. Pure apart from what it is told: the walk
 * (src/pipeline/source.ts) asks, with the entry's lstat, before it opens or
 * reads anything.
 *
 * An entry goes in when the parent's index has no entry of that name, or one
 * of another type (file, directory, symlink), or one whose size (files),
 * mtime, ctime (nanoseconds), inode, mode, owner or group differ, or a symlink
 * whose target differs. ctime moves with every content, mode, owner, link
 * count or rename change, and cannot be set back from user space, so a file
 * whose mtime was reset by `touch -d` is caught all the same; the inode catches
 * a file replaced by another with the same times.
 *
 * An entry left out is carried into the new index as the parent's index has
 * it, with the member of the chain whose archive holds its bytes, so the new
 * index is complete: deletions are the names it lacks, renames a new name, and
 * a type change a new entry of the other type. The names of one inode (hard
 * links) share one stat, so they go in or stay out together, and a link entry
 * always lands in the member that holds its first name.
 */
import type { BigIntStats } from "node:fs";
import {
  fileName,
  type IndexWriter,
  linkName,
  type Manifest,
  type ManifestFile,
} from "../repo/manifest.js";
import type { EntryPlan } from "./source.js";

export interface ChangeCounts {
  /** Entries written into this run's archive. */
  changed: number;
  /** Entries carried over from earlier members. */
  unchanged: number;
}

export interface ChangePlan extends EntryPlan {
  readonly counts: ChangeCounts;
}

/**
 * A planner against `parent`'s index. Entries left out are added to `index`
 * (IndexWriter.carry) with their member resolved for the new chain, whose
 * members are the parent's chain followed by the parent.
 */
export function planChanges(parent: Manifest, index: IndexWriter): ChangePlan {
  const byName = new Map<string, ManifestFile>();
  for (const f of parent.files) byName.set(fileName(f), f);
  const parentMember = parent.chain?.length ?? 0;
  const counts: ChangeCounts = { changed: 0, unchanged: 0 };
  return {
    counts,
    changed(name: string, st: BigIntStats): boolean {
      const f = byName.get(name);
      const changed = f === undefined || differs(f, st);
      if (changed) counts.changed++;
      return changed;
    },
    retargeted(name: string, target: string): boolean {
      const f = byName.get(name);
      const moved = f === undefined || linkName(f) !== target;
      if (moved) counts.changed++;
      return moved;
    },
    unchanged(name: string): void {
      const f = byName.get(name);
      if (f === undefined)
        throw new Error(`planner: ${name} was left out but is not in the parent's index`);
      counts.unchanged++;
      index.carry({ ...f, member: f.member ?? parentMember });
    },
  };
}

/** True when the entry on disk is not the one the index records (see the module comment). */
export function differs(f: ManifestFile, st: BigIntStats): boolean {
  if (f.ino === undefined || f.mtimeNs === undefined || f.ctimeNs === undefined) return true;
  const type = st.isDirectory()
    ? "directory"
    : st.isSymbolicLink()
      ? "symlink"
      : st.isFile()
        ? "file"
        : "other";
  const recorded = f.type === "link" ? "file" : f.type;
  if (type !== recorded) return true;
  if (f.type === "file" && f.size !== Number(st.size)) return true;
  return (
    f.ino !== String(st.ino) ||
    f.mtimeNs !== String(st.mtimeNs) ||
    f.ctimeNs !== String(st.ctimeNs) ||
    f.mode !== Number(st.mode) ||
    f.uid !== Number(st.uid) ||
    f.gid !== Number(st.gid)
  );
}
