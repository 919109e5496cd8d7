/**
 * The one error family of immutd. Every failure a user can cause or meet is one
 * of these kinds, and each kind maps to exactly one process exit code, decided
 * here and nowhere else (the CLI calls exitCodeFor).
 *
 * Messages are written for the operator: they name the file, job, key or object
 * at fault and never contain key material or secrets.
 */

export const ExitCode = {
  ok: 0,
  unexpected: 1,
  usage: 2,
  jobsFailed: 3,
  verifyFindings: 4,
  /**
   * Every job succeeded, but at least one with warnings (files that vanished,
   * changed or could not be read were left out): restic's "incomplete
   * snapshot", which it numbers 3; our 3 is "a job failed".
   */
  warnings: 5,
  lockHeld: 75,
  config: 78,
} as const;

export class ImmutdError extends Error {
  readonly exitCode: number = ExitCode.unexpected;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** Bad command line: unknown job, missing argument, conflicting options. */
export class UsageError extends ImmutdError {
  override readonly exitCode = ExitCode.usage;
}

/** The configuration file (or a file or variable it points to) is wrong. */
export class ConfigError extends ImmutdError {
  override readonly exitCode = ExitCode.config;
}

/**
 * The catalog cannot be used: it is a directory or special file, damaged,
 * read-only for a command that records, on a full disk, or failing I/O. The
 * message names the file and what to do. Exit 78, like a configuration error:
 * restarting (systemd) cannot fix it.
 */
export class CatalogError extends ImmutdError {
  override readonly exitCode = ExitCode.config;
}

/** Another immutd process holds the lock this one needs. */
export class LockHeldError extends ImmutdError {
  override readonly exitCode = ExitCode.lockHeld;
}

/**
 * The storage refused or failed a request. `transient` is true where trying
 * again later may succeed (network, 5xx, throttling); false where the server
 * said no (403, 400, missing bucket) and retrying cannot help.
 */
export class StorageError extends ImmutdError {
  readonly transient: boolean;
  readonly status: number | undefined;
  constructor(
    message: string,
    opts: { transient: boolean; status?: number | undefined; cause?: unknown },
  ) {
    super(message, { cause: opts.cause });
    this.transient = opts.transient;
    this.status = opts.status;
  }
}

/** A safety precondition does not hold, so immutd refuses to act (e.g. a bucket without Object Lock). */
export class RefusedError extends ImmutdError {}

/** Work was cancelled by a signal or shutdown. */
export class CancelledError extends ImmutdError {
  constructor(message = "cancelled") {
    super(message);
  }
}

/** One or more jobs of a multi-job command failed; each was reported on its own. */
export class JobsFailedError extends ImmutdError {
  override readonly exitCode = ExitCode.jobsFailed;
}

/** Every job of `immutd backup` succeeded, but some left files out (each was logged as a warning). */
export class WarningsError extends ImmutdError {
  override readonly exitCode = ExitCode.warnings;
}

/**
 * `verify`, `doctor` or `init` found that backups or the bucket are not as
 * protected as configured; each problem was reported on its own line.
 */
export class VerifyFindingsError extends ImmutdError {
  override readonly exitCode = ExitCode.verifyFindings;
}

export function exitCodeFor(err: unknown): number {
  return err instanceof ImmutdError ? err.exitCode : ExitCode.unexpected;
}

/** A short, secret-free one-line description of any thrown value. */
export function describeError(err: unknown): string {
  if (err instanceof Error) return err.message || err.name;
  return String(err);
}
