/**
 * An age payload worker (src/pipeline/age-worker.ts) that misbehaves at its
 * N-th batch as IMMUTD_TEST_AGE_FAULT says, "MODE:N":
 *   answer: answers that batch with an error;  throw: throws outside any handler;
 *   exit:   exits with code 7.
 * Batches before it are sealed correctly.
 */
import { parentPort, workerData } from "node:worker_threads";
import { type AgeBatchRequest, sealChunks } from "../src/pipeline/age.js";

const [mode, at] = (process.env.IMMUTD_TEST_AGE_FAULT ?? "none:0").split(":");
const nth = Number(at);
let seen = 0;
const port = parentPort;
if (!port) throw new Error("a worker thread");
const key = Buffer.from(workerData.key as Uint8Array);
port.on("message", (r: AgeBatchRequest) => {
  seen++;
  if (seen === nth) {
    if (mode === "answer")
      return port.postMessage({ id: r.id, error: "injected failure", input: r.buf }, [r.buf]);
    if (mode === "throw") throw new Error("injected crash");
    if (mode === "exit") process.exit(7);
  }
  const out = sealChunks(key, r.counter, Buffer.from(r.buf, 0, r.length), r.last);
  const sealed = out.buffer as ArrayBuffer;
  port.postMessage({ id: r.id, out: sealed, length: out.length, input: r.buf }, [sealed, r.buf]);
});
