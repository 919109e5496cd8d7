/**
 * Where a command's output goes, in one place:
 *
 * - Results (tables, summaries, reports, `--json` documents) go to stdout;
 *   logs, progress and error messages go to stderr. The two never share a
 *   stream, so `immutd verify >report 2>>log` separates them, and a script
 *   reading stdout never meets a log line.
 * - With `--json` a command writes exactly one JSON document to stdout: its
 *   result, or, when it fails before it has one, an error object
 *   (`{"error": {"type", "message", "exitCode"}}`, errorDocument below). The
 *   process exit code is the one documented for the command either way.
 * - Counts read as English: plural(1, "file") is "1 file".
 */
import { describeError, ExitCode, exitCodeFor, ImmutdError } from "../errors.js";

/** `n` and its noun, singular for 1: "1 file", "2 files", "1,204 entries". */
export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n.toLocaleString("en-US")} ${n === 1 ? one : many}`;
}

/**
 * The per-process output state: whether the running command was given
 * --json, and whether it has already written its document (so a failure
 * afterwards does not add a second one) or shown a failure itself.
 */
const state = { json: false, written: false, shown: new WeakSet<object>() };

/** The command about to run was given --json (program.ts sets this before the action). */
export function setJsonMode(on: boolean): void {
  state.json = on;
}

export function jsonMode(): boolean {
  return state.json;
}

/** Writes the command's one JSON document to stdout (two-space indented, one trailing newline). */
export function writeJson(doc: unknown, out: NodeJS.WritableStream = process.stdout): void {
  state.written = true;
  out.write(`${JSON.stringify(doc, null, 2)}\n`);
}

/** Writes human-readable result text to stdout. */
export function writeResult(text: string, out: NodeJS.WritableStream = process.stdout): void {
  out.write(text.endsWith("\n") ? text : `${text}\n`);
}

/**
 * Marks `err` as already told to the user in full (a backup's summary at a
 * terminal said the job was interrupted and why): the CLI exits with its code
 * without printing it again.
 */
export function markShown<E extends object>(err: E): E {
  state.shown.add(err);
  return err;
}

/** The JSON error document a failed --json command prints; its fields are stable (README). */
export interface ErrorDocument {
  error: {
    /** The error kind: UsageError, ConfigError, CatalogError, StorageError, … ("Error" when unexpected). */
    type: string;
    message: string;
    /** The process exit code, as `immutd --help` lists them. */
    exitCode: number;
  };
}

export function errorDocument(err: unknown, exitCode = exitCodeFor(err)): ErrorDocument {
  const type = err instanceof Error ? err.name : "Error";
  const message =
    err instanceof ImmutdError ? err.message : `unexpected error: ${describeError(err)}`;
  return { error: { type, message, exitCode } };
}

/**
 * What the CLI prints for a command that failed with `err`: with --json and no
 * document written yet, the error document on stdout (and nothing on stderr:
 * the message is in it); otherwise the message on stderr, unless the command
 * already showed it. Returns the exit code.
 */
export function reportFailure(err: unknown, write = defaultWriters): number {
  const code = exitCodeFor(err);
  if (state.json) {
    if (!state.written) {
      state.written = true;
      write.stdout(`${JSON.stringify(errorDocument(err, code), null, 2)}\n`);
    }
    return code;
  }
  if (typeof err === "object" && err !== null && state.shown.has(err)) return code;
  write.stderr(
    err instanceof ImmutdError
      ? `immutd: ${err.message}\n`
      : `immutd: unexpected error: ${describeError(err)}\n`,
  );
  return code;
}

/** A usage error commander already printed on stderr: with --json, its document too. */
export function reportUsageError(message: string, write = defaultWriters): number {
  if (state.json && !state.written) {
    state.written = true;
    const doc: ErrorDocument = {
      error: { type: "UsageError", message, exitCode: ExitCode.usage },
    };
    write.stdout(`${JSON.stringify(doc, null, 2)}\n`);
  }
  return ExitCode.usage;
}

const defaultWriters = {
  stdout: (s: string) => process.stdout.write(s),
  stderr: (s: string) => process.stderr.write(s),
};

/** Forgets the state (tests that run several commands in one process). */
export function resetOutput(): void {
  state.json = false;
  state.written = false;
  state.shown = new WeakSet();
}

/**
 * Write errors on stdout that no one else handles. A reader that stopped
 * early (`immutd --help | head`, `immutd ls web | head`) closes the pipe,
 * and Node.js reports the next write as an 'error' event (EPIPE): unhandled,
 * that ended the process with a stack trace. EPIPE is taken as the reader's
 * choice, quietly, and the command goes on to its own exit code; any other
 * error (a full disk under `> file`) is one line on stderr and exit 1. A
 * stage that writes to stdout itself (`restore --stdout`) listens for its
 * own errors and reports them: then this one stays out.
 */
export function handleStdoutErrors(
  out: Pick<NodeJS.EventEmitter, "on" | "listenerCount"> = process.stdout,
  exit: (code: number) => void = (code) => process.exit(code),
  say: (line: string) => void = (line) => process.stderr.write(line),
): void {
  out.on("error", (err: NodeJS.ErrnoException) => {
    if (out.listenerCount("error") > 1 || err.code === "EPIPE") return;
    say(`immutd: cannot write to stdout: ${err.message}\n`);
    exit(ExitCode.unexpected);
  });
}
