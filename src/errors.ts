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
 * said no (403, 400, missing bucket) and retrying cannot help. `code` is the S3
 * error code the server sent (AccessDenied, SignatureDoesNotMatch, …); answers
 * without a body (HEAD, a dropped connection) have none.
 */
export class StorageError extends ImmutdError {
  readonly transient: boolean;
  readonly status: number | undefined;
  readonly code: string | undefined;
  constructor(
    message: string,
    opts: {
      transient: boolean;
      status?: number | undefined;
      code?: string | undefined;
      cause?: unknown;
    },
  ) {
    super(message, { cause: opts.cause });
    this.transient = opts.transient;
    this.status = opts.status;
    this.code = opts.code;
  }

  /**
   * What a request was refused for: the credential (wrong secret, unknown access
   * key), a permission (AccessDenied), the SSE-C key, or undefined when the
   * answer does not say (no refusal, or a 403 without a body, as HEAD gets).
   * Ceph RGW answers a wrong SSE-C key with 400 InvalidArgument; AWS and MinIO
   * answer it with 403 AccessDenied, so "permission" cannot rule the key out there.
   */
  get refusal(): "credential" | "permission" | "sse-c key" | undefined {
    if (this.code !== undefined && CREDENTIAL_CODES.has(this.code)) return "credential";
    if (this.code === "AccessDenied") return "permission";
    if (this.status === 400 && (this.code === undefined || SSE_KEY_CODES.has(this.code)))
      return "sse-c key";
    return undefined;
  }

  /** One clause saying what was refused, for a read with an SSE-C key; undefined if this is no refusal. */
  refusalText(): string | undefined {
    const code = this.code ? ` ${this.code}` : "";
    switch (this.refusal) {
      case "credential":
        return `the server refused the credential (HTTP ${this.status}${code}): its access key ID or secret is wrong, so the SSE-C key was never checked`;
      case "permission":
        return `the server denied access (HTTP ${this.status}${code}): the credential lacks permission to read it (AWS and MinIO also answer a wrong SSE-C key this way)`;
      case "sse-c key":
        return `the server refused the SSE-C key (HTTP ${this.status}${code})`;
      default:
        return this.status === 403
          ? "the server refused the request (HTTP 403 without an error code): the credential or the SSE-C key is wrong"
          : undefined;
    }
  }
}

/**
 * What a read with an SSE-C key (HEAD, GET) was refused for, and refusalText's
 * clause for it. A HEAD's 403 carries no error code, so `probe` makes a request
 * of the same credential that needs no SSE-C key (or the right one): if that
 * succeeds, the credential is fine and the key is what was refused.
 */
export async function explainReadRefusal(
  err: unknown,
  probe: () => Promise<unknown>,
): Promise<{ refused: StorageError["refusal"]; text: string } | undefined> {
  if (!(err instanceof StorageError)) return undefined;
  const own = err.refusalText();
  if (err.refusal !== undefined || err.status !== 403 || own === undefined)
    return own === undefined ? undefined : { refused: err.refusal, text: own };
  try {
    await probe();
  } catch (probeErr) {
    const p = probeErr instanceof StorageError ? probeErr : undefined;
    const text = p?.refusalText();
    return text !== undefined ? { refused: p?.refusal, text } : { refused: undefined, text: own };
  }
  return {
    refused: "sse-c key",
    text: "the server refused the SSE-C key (HTTP 403; the credential itself is accepted)",
  };
}

/**
 * Why a request other than a read with an SSE-C key was refused, in a few
 * words: Object Lock, a permission (403, or AccessDenied in the message), or
 * the error's own description. Never a credential: errors carry none.
 */
export function refusalWords(err: unknown): string {
  const m = describeError(err);
  if (/object lock/i.test(m)) return "forbidden by Object Lock";
  if (/AccessDenied/.test(m) || (err instanceof StorageError && err.status === 403))
    return "access denied";
  return m;
}

const CREDENTIAL_CODES = new Set([
  "SignatureDoesNotMatch",
  "InvalidAccessKeyId",
  "InvalidToken",
  "ExpiredToken",
  "RequestTimeTooSkewed",
]);
const SSE_KEY_CODES = new Set(["InvalidArgument", "InvalidRequest"]);

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
