/**
 * Files only this user may read, created new: the master key and age
 * identity files that `immutd key generate` writes, and the manifest's index
 * spool (src/pipeline/index-spool.ts).
 *
 * A private file is always a new one: O_EXCL refuses a name that exists
 * (a key file may be the only key to existing backups) and O_NOFOLLOW a
 * symlink in its place (which could point the write anywhere). Its mode is
 * 0600 whatever the umask: the open asks for 0600, which a umask can only
 * narrow, and a umask that took the owner's own bits is undone on the
 * descriptor before anything is written.
 */
import {
  closeSync,
  constants,
  fchmodSync,
  fstatSync,
  fsyncSync,
  openSync,
  writeSync,
} from "node:fs";
import { UsageError } from "../errors.js";

/**
 * Creates `path` as a new file of mode 0600, open for reading and writing,
 * and returns its descriptor. Throws fs's own error (EEXIST, ELOOP, ENOENT…),
 * for the caller to name the file in its own words.
 */
export function createPrivateFile(path: string): number {
  const fd = openSync(
    path,
    constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
    0o600,
  );
  try {
    // Only when the umask took bits 0600 asked for: a filesystem that
    // ignores chmod (where the open already gave 0600) is never asked.
    if ((fstatSync(fd).mode & 0o777) !== 0o600) fchmodSync(fd, 0o600);
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  return fd;
}

/**
 * Writes a new key file: `contents`, synced to disk, in a private file.
 * Refuses, as a UsageError naming the file, to replace one that exists:
 * `holds` says what it may be ("the key", "the identity") to existing backups.
 */
export function writeKeyFile(path: string, contents: string, holds: string): void {
  let fd: number;
  try {
    fd = createPrivateFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "EEXIST")
      throw new UsageError(
        `refusing to overwrite ${path}: it exists (it may be ${holds} to existing backups)`,
      );
    throw new UsageError(`cannot create ${path}: ${code ?? (err as Error).message}`);
  }
  try {
    writeSync(fd, contents);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
