/**
 * Fault injection for tests that run the CLI as a child process: loaded with
 * `node --import` (see holdEnv), it holds one kind of S3 request of that
 * process, before it is sent or after its answer came back, until a gate file
 * exists. A test can so stop a process at exactly the worst moment (a version
 * completed but not yet recorded; an upload created and held open; a daemon
 * between two steps of its recovery) and kill it there, or let it go on.
 *
 * IMMUTD_TEST_HOLD = JSON [{ command, when, gate }], e.g.
 * [{"command":"CompleteMultipartUploadCommand","when":"after","gate":"/tmp/x/go"}].
 * Each hold applies once. On holding it writes `immutd-test-hold: <command> <when>`
 * to stderr; a gate that never appears releases after 5 minutes (no hang).
 * Production code knows nothing of this.
 *
 * The installed CLI runs from one bundle (dist/src/immutd.js), with its own copy
 * of the AWS SDK that no patch from outside reaches. A held process therefore
 * loads the command line from tsc's separate modules instead (the same code,
 * before bundling), whose SDK is the one patched here: a resolve hook swaps the
 * bundle for dist/src/cli/program.js, its entry point.
 */
import { existsSync } from "node:fs";
import { registerHooks } from "node:module";
import { setTimeout as sleep } from "node:timers/promises";
import { S3Client } from "@aws-sdk/client-s3";

interface Hold {
  command: string;
  when: "before" | "after";
  gate: string;
  used?: boolean;
}

export const HOLD_MARK = "immutd-test-hold:";

/** The environment that makes a child CLI hold these requests. */
export function holdEnv(holds: Omit<Hold, "used">[]): NodeJS.ProcessEnv {
  const self = new URL(import.meta.url).href;
  return {
    NODE_OPTIONS: `--import=${self}`,
    IMMUTD_TEST_HOLD: JSON.stringify(holds),
  };
}

async function wait(h: Hold): Promise<void> {
  h.used = true;
  process.stderr.write(`${HOLD_MARK} ${h.command} ${h.when}\n`);
  for (let i = 0; i < 3000 && !existsSync(h.gate); i++) await sleep(100);
}

const holds = JSON.parse(process.env.IMMUTD_TEST_HOLD ?? "[]") as Hold[];
if (holds.length) {
  const bundle = new URL("../../src/immutd.js", import.meta.url).href;
  const entry = new URL("../../src/cli/program.js", import.meta.url).href;
  registerHooks({
    resolve(specifier, context, next) {
      const r = next(specifier, context);
      return r.url === bundle ? { ...r, url: entry } : r;
    },
  });
  const send = S3Client.prototype.send;
  const find = (name: string, when: Hold["when"]) =>
    holds.find((h) => !h.used && h.command === name && h.when === when);
  S3Client.prototype.send = async function (this: S3Client, ...args: unknown[]) {
    const name = (args[0] as object).constructor.name;
    const before = find(name, "before");
    if (before) await wait(before);
    const res = await (send as (...a: unknown[]) => Promise<unknown>).apply(this, args);
    const after = find(name, "after");
    if (after) await wait(after);
    return res;
  } as typeof send;
}
