/**
 * SIGINT and SIGTERM, for every command that can be stopped (backup, restore,
 * verify, run): the first signal asks for a clean stop (cancel, abort the
 * multipart upload, record the run interrupted); a signal that comes more than
 * REPEAT_SIGNAL_MS after the first forces an exit without cleaning up.
 *
 * Signals that arrive together are one request, not an escalation:
 * timeout(1), systemd's KillMode=control-group, a terminal's Ctrl-C and
 * `kill -- -PGID` signal every process of the group, so immutd can get the
 * same signal twice within milliseconds (once for itself, once forwarded by a
 * wrapper such as `sh -c` or npx). Taking that as "exit now" left orphaned
 * multipart uploads and runs stuck "running".
 */
import type { Logger } from "../log.js";

/** Signals closer together than this (ms) are one stop request; a later one forces the exit. */
export const REPEAT_SIGNAL_MS = 1000;

/** Exit code of a forced exit (the shell's code for an interrupted process). */
export const FORCED_EXIT_CODE = 130;

export type SignalMeaning = "stop" | "same" | "force";

/**
 * Pure decision: what a signal at `at` (ms) means, given when the first one
 * came (undefined: this is the first).
 */
export function signalMeaning(firstAt: number | undefined, at: number): SignalMeaning {
  if (firstAt === undefined) return "stop";
  return at - firstAt > REPEAT_SIGNAL_MS ? "force" : "same";
}

export interface StopSignalOptions {
  /** Called once, on the first SIGINT or SIGTERM. */
  stop: (sig: NodeJS.Signals) => void;
  /** Where repeats and the forced exit are logged; without it, stderr. */
  log?: Logger;
  /** Replaces process.exit (tests). */
  exit?: (code: number) => void;
  /** The clock (ms); tests move it. */
  now?: () => number;
  /** Replaces `process` as the signal source (tests). */
  source?: Pick<NodeJS.Process, "on" | "off">;
}

/** Installs the SIGINT/SIGTERM handlers described above. Returns their remover. */
export function onStopSignals(o: StopSignalOptions): () => void {
  const now = o.now ?? Date.now;
  const exit = o.exit ?? ((code: number) => process.exit(code));
  const source = o.source ?? process;
  const say = (level: "warn" | "error", msg: string) =>
    o.log ? o.log[level](msg) : process.stderr.write(`immutd: ${msg}\n`);
  let firstAt: number | undefined;
  const handler = (sig: NodeJS.Signals) => {
    const at = now();
    const meaning = signalMeaning(firstAt, at);
    if (meaning === "stop") {
      firstAt = at;
      o.stop(sig);
      return;
    }
    const after = at - (firstAt as number);
    if (meaning === "same") {
      say(
        "warn",
        `${sig} again ${after} ms after the first: taken as the same stop request (signals within ${REPEAT_SIGNAL_MS} ms are one); send it again later to exit at once`,
      );
      return;
    }
    say("error", `${sig} again ${after} ms after the first: exiting now, without cleaning up`);
    exit(FORCED_EXIT_CODE);
  };
  source.on("SIGINT", handler);
  source.on("SIGTERM", handler);
  return () => {
    // Once a stop was asked for, the handlers stay until the process exits: a
    // repeat of that signal arriving after the command finished but before the
    // process is gone must not end it by the default action (killed by SIGTERM
    // instead of the command's own exit code).
    if (firstAt !== undefined) return;
    source.off("SIGINT", handler);
    source.off("SIGTERM", handler);
  };
}

/**
 * For a one-off command (backup, restore, verify): the first SIGINT or
 * SIGTERM logs `${sig} received: ${doing}; …` and aborts `controller` with
 * `reason(sig)`; repeats are as onStopSignals says (logged to `log`). Returns
 * the remover.
 */
export function cancelOnStopSignals(
  controller: AbortController,
  log: Logger,
  doing: string,
  reason: (sig: NodeJS.Signals) => Error,
  test: Pick<StopSignalOptions, "exit" | "now" | "source"> = {},
): () => void {
  return onStopSignals({
    ...test,
    log,
    stop: (sig) => {
      log.warn(`${sig} received: ${doing}; send it again after 1 s to exit at once`);
      controller.abort(reason(sig));
    },
  });
}
