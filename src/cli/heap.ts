/**
 * How fast V8's old generation grows between full collections.
 *
 * V8 picks the factor itself (up to 4x the live heap). A backup's live heap is
 * small (about 28 MiB: the SDK, the modules, the entries in flight), but it
 * creates garbage per file and per chunk, and each collection it skips keeps
 * more of it and of the buffers it owns. A fixed factor of 1.2, set when the
 * executable starts, lowered the peak RSS of a backup of 100,000 small files
 * from 328-334 to 243-259 MiB and of 300 MB of large files from 243-298 to
 * 215-231 MiB, for 14-19% more CPU time and 5-8% more wall time (README:
 * "Where the time and memory go"). Set only once the command is known (in its
 * action), the same backup peaked 20-30 MiB higher: V8 has sized the heap's
 * next limit by then. So every command starts with it.
 *
 * Restores and deep verifies give V8 its own choice back as they begin. With
 * the factor, a 300 MB restore took 25-50% more CPU (5.2-5.5 s against 3.6-4.4
 * s; zstd 5.6-6.8 against 4.9-5.3) and 5-35% more wall time, for no lower
 * peak (181-191 MiB either way): what a download holds is its buffers in
 * flight, not garbage that more frequent collections would free.
 *
 * The flag, unlike the young generation's size, still takes effect after V8
 * has started. An explicit `node --heap-growing-percent=N` wins over both
 * (NODE_OPTIONS refuses the flag).
 */
import { setFlagsFromString } from "node:v8";

/** The old generation grows by 1 + this / 100 between full collections. */
export const HEAP_GROWING_PERCENT = 20;

/** Whether the user chose the factor on node's command line (V8 takes - or _ in a flag's name). */
function chosen(execArgv: readonly string[]): boolean {
  return execArgv.some((a) => a.replaceAll("_", "-").startsWith("--heap-growing-percent"));
}

/** The backup's factor; false (and nothing set) when node was given one. */
export function growHeapSlowly(execArgv: readonly string[] = process.execArgv): boolean {
  if (chosen(execArgv)) return false;
  setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
  return true;
}

/** V8's own factor (0 is V8's default: its heuristic); false when node was given one. */
export function leaveHeapToV8(execArgv: readonly string[] = process.execArgv): boolean {
  if (chosen(execArgv)) return false;
  setFlagsFromString("--heap-growing-percent=0");
  return true;
}
