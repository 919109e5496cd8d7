/**
 * An archive worker (src/pipeline/workers/archive-worker.ts) that sends one
 * chunk of tar bytes with one index record, then fails as
 * IMMUTD_TEST_ARCHIVE_FAULT says: "exit" exits with code 3, "throw" throws
 * outside any handler.
 */
import { parentPort } from "node:worker_threads";
import type { FromWalk } from "../src/pipeline/workers/archive-thread.js";

const port = parentPort;
if (!port) throw new Error("a worker thread");
const mode = process.env.IMMUTD_TEST_ARCHIVE_FAULT ?? "exit";
const bytes = new Uint8Array(512);
const first: FromWalk = {
  op: "data",
  buf: bytes.buffer,
  length: bytes.length,
  events: [{ k: "index", t: { json: '{"path":"/x"}', count: 1, files: 1, last: "x" } }],
};
port.postMessage(first, [bytes.buffer]);
setTimeout(() => {
  if (mode === "throw") throw new Error("the walk broke");
  process.exit(3);
}, 50);
