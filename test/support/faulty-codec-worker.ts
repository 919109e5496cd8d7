/**
 * A codec worker (src/pipeline/workers/protocol.ts) that misbehaves as
 * IMMUTD_TEST_CODEC_FAULT says, "MODE:N" at its N-th block (counted per worker):
 *   answer: answers that block with an error;   throw: throws outside any handler;
 *   exit:   exits with code 7;                  hang-then-exit: never answers it, then exits;
 *   shuffle: answers even blocks late, so that blocks finish out of order (N unused).
 */
import { parentPort } from "node:worker_threads";
import { answerOf, type BlockRequest, compressBlock } from "../../src/pipeline/workers/protocol.js";

const [mode, at] = (process.env.IMMUTD_TEST_CODEC_FAULT ?? "none:0").split(":");
const nth = Number(at);
let seen = 0;
const port = parentPort;
if (!port) throw new Error("a worker thread");
const held: (() => void)[] = [];
port.on("message", (req: BlockRequest) => {
  seen++;
  const answer = () => {
    const out = compressBlock(req.codec, req.level, new Uint8Array(req.buf, 0, req.length));
    const { answer: a, transfer } = answerOf(req.id, out);
    port.postMessage(a, transfer);
  };
  if (seen === nth) {
    if (mode === "answer") return port.postMessage({ id: req.id, error: "injected failure" });
    if (mode === "throw") throw new Error("injected crash");
    if (mode === "exit") process.exit(7);
    if (mode === "hang-then-exit") return setImmediate(() => process.exit(0));
  }
  if (mode === "shuffle" && req.id % 2 === 0) {
    // Answered after the next block of this worker (or at once, if none comes).
    held.push(answer);
    setTimeout(() => held.shift()?.(), 5);
    return;
  }
  answer();
  held.shift()?.();
});
