/**
 * The upload's own part loop (src/store/multipart.ts): parts go out
 * queueSize at a time from queueSize + 1 reused buffers, so a server that
 * stops answering stops the reading of the body after that many parts; the
 * parts are the body in order, each with its own Content-MD5 (computed in
 * place on the hashing worker), and a part's buffer is not refilled before
 * its request has settled (a retried part sends the same bytes).
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { describe, it } from "node:test";
import type { HttpRequest } from "@smithy/protocol-http";
import { HttpResponse } from "@smithy/protocol-http";
import { S3Store } from "../src/store/s3.js";
import { targetConfig } from "./support/target.js";

const MiB = 1024 * 1024;

interface Part {
  n: number;
  body: Buffer;
  md5: string | undefined;
}

/** A fake endpoint whose part answers wait for `gate` (resolved by the test). */
function server() {
  const parts: Part[] = [];
  let open: () => void = () => {};
  let gate = new Promise<void>((r) => (open = r));
  const state = { received: 0, completed: undefined as string | undefined };
  const handler = {
    async handle(req: HttpRequest) {
      const q = req.query as Record<string, string>;
      const chunks: Buffer[] = [];
      if (typeof req.body === "string") chunks.push(Buffer.from(req.body));
      else if (req.body instanceof Uint8Array) chunks.push(Buffer.from(req.body));
      else if (req.body instanceof Readable)
        for await (const c of req.body as AsyncIterable<Buffer>) chunks.push(Buffer.from(c));
      const body = Buffer.concat(chunks);
      const xml = (s: string, headers: Record<string, string> = {}) =>
        new HttpResponse({
          statusCode: 200,
          headers: { "content-type": "application/xml", ...headers },
          body: Readable.from([Buffer.from(s)]),
        });
      if (req.method === "POST" && "uploads" in q)
        return {
          response: xml(
            "<InitiateMultipartUploadResult><UploadId>U</UploadId></InitiateMultipartUploadResult>",
          ),
        };
      if (req.method === "PUT" && q.partNumber) {
        state.received++;
        const md5 = Object.entries(req.headers).find(([k]) => k.toLowerCase() === "content-md5");
        parts.push({ n: Number(q.partNumber), body, md5: md5?.[1] });
        await gate;
        return {
          response: new HttpResponse({
            statusCode: 200,
            headers: { etag: `"e${q.partNumber}"` },
            body: Readable.from([]),
          }),
        };
      }
      if (req.method === "POST" && q.uploadId) {
        state.completed = body.toString();
        return {
          response: xml("<CompleteMultipartUploadResult/>", { "x-amz-version-id": "V" }),
        };
      }
      return { response: new HttpResponse({ statusCode: 404, body: Readable.from([]) }) };
    },
  };
  return {
    parts,
    state,
    handler,
    release: () => {
      open();
      gate = Promise.resolve();
    },
  };
}

describe("the upload's part loop", () => {
  it("reads at most queueSize + 1 parts ahead of a server that stops answering, then sends the body in order", async () => {
    const s = server();
    const tc = targetConfig({ partSizeMiB: 5, queueSize: 2 });
    const store = new S3Store(tc, tc.credentials.writer ?? tc.credentials.reader, {
      requestHandler: s.handler,
    });
    const data = randomBytes(40 * MiB + 12345);
    let pulled = 0;
    const body = Readable.from(
      (function* () {
        for (let off = 0; off < data.length; off += 256 * 1024) {
          const c = data.subarray(off, off + 256 * 1024);
          pulled += c.length;
          yield c;
        }
      })(),
    );
    const done = store.upload({ key: "k", body, sseKey: randomBytes(32) });
    // Wait until the parts are at the server and the body stops moving while it holds its answers.
    while (s.state.received < 2) await new Promise((r) => setTimeout(r, 50));
    let last = -1;
    while (pulled !== last) {
      last = pulled;
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(s.state.received, 2, "queueSize parts on the wire");
    // Two parts sent, one full and waiting, one filling: plus the stream's own buffer.
    assert.ok(pulled <= 4 * 5 * MiB, `read ${pulled} bytes ahead`);
    s.release();
    assert.equal((await done).versionId, "V");

    const byNumber = [...s.parts].sort((a, b) => a.n - b.n);
    assert.deepEqual(
      byNumber.map((p) => p.n),
      [1, 2, 3, 4, 5, 6, 7, 8, 9],
    );
    assert.ok(Buffer.concat(byNumber.map((p) => p.body)).equals(data), "the parts are the body");
    for (const p of byNumber)
      assert.equal(p.md5, createHash("md5").update(p.body).digest("base64"), `part ${p.n}`);
    assert.match(
      s.state.completed ?? "",
      /<PartNumber>1<\/PartNumber>.*<PartNumber>9<\/PartNumber>/s,
    );
  });
});
