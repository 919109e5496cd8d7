/**
 * Shell commands around a backup: per-job `hooks` (before, after, onFailure)
 * and `commands` whose output is archived (a database dump). Each runs under
 * /bin/sh in its own process group with a timeout, and the run's facts in
 * IMMUTD_* variables. It inherits immutd's environment: secrets given to
 * immutd through the environment are visible to hooks, secrets given as
 * …File are not.
 */
import { spawn } from "node:child_process";
import { mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { CommandSource } from "../config/config.js";
import { CancelledError, ImmutdError } from "../errors.js";

/** A hook or command source failed; the message names which and why. */
export class HookError extends ImmutdError {}

export interface HookEnv {
  IMMUTD_JOB: string;
  IMMUTD_RUN_ID: string;
  IMMUTD_KEY: string;
  IMMUTD_STATUS?: string;
  IMMUTD_VERSION_ID?: string;
  IMMUTD_ERROR?: string;
}

/** Keeps the last bytes of a stream: enough to say why a command failed. */
class Tail {
  #buf = "";
  constructor(readonly max = 2000) {}
  push(chunk: Buffer): void {
    this.#buf = (this.#buf + chunk.toString("utf8")).slice(-this.max);
  }
  get text(): string {
    return this.#buf.trim();
  }
}

interface Spawned {
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  stderr: string;
  stdout: string;
}

function runShell(
  command: string,
  env: HookEnv,
  timeoutMs: number | undefined,
  signal: AbortSignal | undefined,
  stdoutFd?: number,
): Promise<Spawned> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const child = spawn("/bin/sh", ["-c", command], {
      env: { ...process.env, ...env },
      stdio: ["ignore", stdoutFd ?? "pipe", "pipe"],
      detached: true, // its own process group, so a timeout stops the whole pipeline
    });
    const out = new Tail();
    const err = new Tail();
    child.stdout?.on("data", (d: Buffer) => out.push(d));
    child.stderr?.on("data", (d: Buffer) => err.push(d));
    let timedOut = false;
    const kill = () => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, "SIGTERM");
      } catch {
        // already gone
      }
      setTimeout(() => {
        try {
          if (child.pid !== undefined) process.kill(-child.pid, "SIGKILL");
        } catch {
          // already gone
        }
      }, 5000).unref();
    };
    const timer =
      timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            kill();
          }, timeoutMs);
    const onAbort = () => kill();
    signal?.addEventListener("abort", onAbort, { once: true });
    child.on("error", (e) => {
      if (timer) clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      reject(e);
    });
    child.on("close", (code, sig) => {
      if (timer) clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      if (signal?.aborted) {
        reject(signal.reason ?? new CancelledError());
        return;
      }
      resolve({ code, signal: sig, timedOut, stderr: err.text, stdout: out.text });
    });
  });
}

function failure(what: string, r: Spawned, timeoutMs: number | undefined): string {
  const why = r.timedOut
    ? `timed out after ${Math.round((timeoutMs ?? 0) / 1000)} s`
    : r.signal
      ? `killed by ${r.signal}`
      : `exited with ${r.code}`;
  const detail = r.stderr || r.stdout;
  return `${what} ${why}${detail ? `: ${detail.split("\n").slice(-3).join(" | ")}` : ""}`;
}

/** Runs one hook; rejects with HookError if it fails or times out. Returns its output tail for the log. */
export async function runHook(
  name: string,
  command: string,
  env: HookEnv,
  timeoutSeconds: number,
  signal?: AbortSignal,
): Promise<string> {
  const timeoutMs = timeoutSeconds * 1000;
  const r = await runShell(command, env, timeoutMs, signal);
  if (r.code !== 0)
    throw new HookError(failure(`job ${env.IMMUTD_JOB}: ${name} hook`, r, timeoutMs));
  return r.stdout || r.stderr;
}

export interface Spooled {
  files: { name: string; path: string }[];
  /** Removes the spool directory; safe to call twice. */
  cleanup(): Promise<void>;
}

/**
 * Runs each command source and spools its stdout to a private temporary file.
 * A tar entry must state its size before its contents, and a command's output
 * size is known only at its end, so the output is kept on disk (mode 0600 in a
 * 0700 directory) until the archive has read it, and removed right after.
 */
export async function spoolCommands(
  job: string,
  sources: readonly CommandSource[],
  env: HookEnv,
  signal?: AbortSignal,
): Promise<Spooled> {
  const dir = await mkdtemp(join(tmpdir(), `immutd-${job}-`));
  const cleanup = () => rm(dir, { recursive: true, force: true });
  const files: { name: string; path: string }[] = [];
  try {
    for (const src of sources) {
      const path = join(dir, src.name);
      const fh = await open(path, "wx", 0o600);
      let r: Spawned;
      const timeoutMs = src.timeoutSeconds === undefined ? undefined : src.timeoutSeconds * 1000;
      try {
        r = await runShell(src.run, env, timeoutMs, signal, fh.fd);
      } finally {
        await fh.close();
      }
      if (r.code !== 0)
        throw new HookError(failure(`job ${job}: command ${src.name}`, r, timeoutMs));
      files.push({ name: `immutd-commands/${src.name}`, path });
    }
  } catch (err) {
    await cleanup();
    throw err;
  }
  return { files, cleanup };
}
