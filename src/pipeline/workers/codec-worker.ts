/**
 * A codec worker thread (src/pipeline/parallel-codec.ts starts them): each
 * request is one block, answered with its compressed member or frame, in the
 * order asked. A failure answers that block with the error's message.
 */
import { parentPort } from "node:worker_threads";
import { answerOf, type BlockRequest, compressBlock } from "./protocol.js";

const port = parentPort;
if (!port) throw new Error("codec-worker.js runs only as a worker thread");
port.on("message", (req: BlockRequest) => {
  try {
    const out = compressBlock(req.codec, req.level, new Uint8Array(req.buf, 0, req.length));
    const { answer, transfer } = answerOf(req.id, out, req.buf);
    port.postMessage(answer, transfer);
  } catch (err) {
    const error = (err as Error).message ?? String(err);
    port.postMessage({ id: req.id, error, input: req.buf }, [req.buf]);
  }
});
