/**
 * The age payload worker thread (src/pipeline/age.ts starts one per
 * encrypting stream): seals batches of 64 KiB chunks with
 * ChaCha20-Poly1305, off the main thread. workerData.key is the stream's
 * payload key. Each request is a batch of plaintext moved here (not copied)
 * with the counter of its first chunk and whether its last chunk is the
 * stream's last; the answer moves the sealed bytes and the input buffer back.
 * Requests are answered in the order they arrive.
 */
import { parentPort, workerData } from "node:worker_threads";
import { type AgeBatchAnswer, type AgeBatchRequest, sealChunks } from "./age.js";

const port = parentPort;
if (!port) throw new Error("age-worker.js runs as a worker thread");
const key = Buffer.from(workerData.key as Uint8Array);
port.on("message", (r: AgeBatchRequest) => {
  let a: AgeBatchAnswer;
  try {
    const out = sealChunks(key, r.counter, Buffer.from(r.buf, 0, r.length), r.last);
    a = { id: r.id, out: out.buffer as ArrayBuffer, length: out.length, input: r.buf };
  } catch (err) {
    port.postMessage({ id: r.id, error: (err as Error).message, input: r.buf }, [r.buf]);
    return;
  }
  port.postMessage(a, [a.out, r.buf]);
});
