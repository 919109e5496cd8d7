/**
 * One daemon per catalog: a lock file beside the catalog holding the owner's
 * pid. Taken atomically with link(2) (fails if the file exists); a lock whose
 * process is gone (kill -9, power loss) is stale and taken over.
 */
import { linkSync, readFileSync, unlinkSync, writeFileSync } from "node:fs";
import { processAlive } from "../catalog/catalog.js";
import { LockHeldError } from "../errors.js";

export interface Lock {
  path: string;
  release(): void;
}

export function acquireLock(path: string, what: string): Lock {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, `${process.pid}\n`, { mode: 0o600 });
  try {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        linkSync(tmp, path);
        return {
          path,
          release: () => {
            try {
              if (readFileSync(path, "utf8").trim() === String(process.pid)) unlinkSync(path);
            } catch {
              // already gone
            }
          },
        };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
        const owner = Number.parseInt(readFileSync(path, "utf8"), 10);
        if (Number.isInteger(owner) && owner !== process.pid && processAlive(owner)) {
          throw new LockHeldError(`${what} is already running (pid ${owner}, lock ${path})`);
        }
        unlinkSync(path); // stale: its process is gone
      }
    }
    throw new LockHeldError(
      `${what}: could not take ${path}; another process is starting at the same time`,
    );
  } finally {
    try {
      unlinkSync(tmp);
    } catch {
      // ignore
    }
  }
}
