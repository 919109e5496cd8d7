/**
 * One daemon per catalog: a lock file beside the catalog holding the owner's
 * pid. Taken atomically with link(2) (fails if the file exists); a lock whose
 * process is gone (kill -9, power loss) is stale and taken over.
 */
import {
  linkSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { basename } from "node:path";
import { processAlive } from "../catalog/catalog.js";
import { LockHeldError } from "../errors.js";

/** The daemon's lock file: beside the catalog, one daemon per catalog. */
export function daemonLockPath(catalog: string): string {
  return `${catalog}.daemon.lock`;
}

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

/** Who holds a lock file, as `immutd status` tells it (never trusting the pid in it alone). */
export type LockOwner =
  | { state: "none" }
  | { state: "unknown"; why: string }
  | { state: "held"; pid: number; checked: boolean }
  | { state: "stale"; pid: number | null; why: string };

/**
 * Reads the lock at `path` without taking it. The pid in the file is believed
 * only if that process exists, is an `immutd … run` (its /proc cmdline) and,
 * where its open files can be read (same user, or root), has `file` (the
 * catalog) open: a pid reused after kill -9 or a reboot fails one of these.
 * Where /proc/PID cannot be read (hidepid, not Linux) but the process exists,
 * it is "held" with checked false.
 */
export function lockOwner(path: string, file: string): LockOwner {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return { state: "none" };
    return { state: "unknown", why: `cannot read ${path}: ${code ?? String(err)}` };
  }
  const pid = /^\d+\n?$/.test(text) ? Number.parseInt(text, 10) : Number.NaN;
  if (!Number.isSafeInteger(pid) || pid <= 0)
    return { state: "stale", pid: null, why: "it holds no pid" };
  if (!processAlive(pid)) return { state: "stale", pid, why: `process ${pid} is gone` };
  let argv: string[];
  try {
    argv = readFileSync(`/proc/${pid}/cmdline`, "utf8")
      .split("\0")
      .filter((a) => a !== "");
  } catch {
    return { state: "held", pid, checked: false };
  }
  if (!isDaemonCommand(argv))
    return {
      state: "stale",
      pid,
      why: `process ${pid} is not an immutd daemon (${argv.join(" ")})`,
    };
  const open = openFiles(pid);
  if (open && !open.has(realpathOr(file)))
    return { state: "stale", pid, why: `process ${pid} does not have ${file} open` };
  return { state: "held", pid, checked: true };
}

/** `immutd … run`: the program is immutd (its bin, or the same script as this process) and the command is run. */
function isDaemonCommand(argv: readonly string[]): boolean {
  if (!argv.includes("run")) return false;
  const self = realpathOr(process.argv[1] ?? "");
  return argv.some((a) => basename(a) === "immutd" || (self !== "" && realpathOr(a) === self));
}

/** The paths a process has open, or undefined if they cannot be read (another user's process). */
function openFiles(pid: number): Set<string> | undefined {
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return undefined;
  }
  const out = new Set<string>();
  for (const fd of fds) {
    try {
      out.add(readlinkSync(`/proc/${pid}/fd/${fd}`));
    } catch {
      // closed meanwhile
    }
  }
  return out;
}

function realpathOr(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return "";
  }
}
