/**
 * The digest worker thread (src/pipeline/workers/digest.ts starts it): SHA-256
 * of streams fed in pieces, and MD5 of whole parts, off the main thread.
 * Requests are answered in the order they arrive; a stream's pieces are
 * hashed in the order sent.
 */
import { createHash, type Hash } from "node:crypto";
import { parentPort } from "node:worker_threads";
import type { DigestRequest } from "./digest.js";

const port = parentPort;
if (!port) throw new Error("digest-worker.js runs only as a worker thread");
const streams = new Map<number, Hash>();
port.on("message", (req: DigestRequest) => {
  try {
    switch (req.op) {
      case "update": {
        const h = streams.get(req.stream) ?? createHash("sha256");
        streams.set(req.stream, h);
        h.update(new Uint8Array(req.buf, 0, req.length));
        // The batch goes back to be filled again (left here, it would wait for this thread's GC).
        port.postMessage({ id: req.id, input: req.buf }, [req.buf]);
        break;
      }
      case "final": {
        const h = streams.get(req.stream) ?? createHash("sha256");
        streams.delete(req.stream);
        port.postMessage({ id: req.id, digest: h.digest("hex") });
        break;
      }
      case "drop":
        streams.delete(req.stream);
        break;
      case "md5":
        port.postMessage({
          id: req.id,
          digest: createHash("md5")
            .update(new Uint8Array(req.buf, 0, req.length))
            .digest("base64"),
        });
        break;
    }
  } catch (err) {
    port.postMessage({ id: req.id, error: (err as Error).message ?? String(err) });
  }
});
