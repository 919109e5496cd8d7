/**
 * Request-level proof of the upload path (shared/S3-PITFALLS.md 1-4): SSE-C
 * headers on CreateMultipartUpload and on every UploadPart, a checksum on every
 * part, the abort after a failure, and no SSE-C key over plain http. A local
 * server that ignores missing checksums would not show these, so the requests
 * are recorded here before they leave the SDK.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { describe, it } from "node:test";
import { type HttpRequest, HttpResponse } from "@smithy/protocol-http";
import { RefusedError, StorageError } from "../src/errors.js";
import { lend } from "../src/pipeline/workers/lent.js";
import { largestUpload, MAX_PARTS, MultipartUpload, partSizeOf } from "../src/store/multipart.js";
import { S3Store } from "../src/store/s3.js";
import { targetConfig } from "./support/target.js";

interface Seen {
  method: string;
  query: Record<string, unknown>;
  headers: Record<string, string>;
  body: Buffer | undefined;
  /** The sizes of the pieces a streamed body arrived in (none for a Buffer body). */
  writes: number[];
  protocol: string;
}

/** A fake S3 endpoint: answers the multipart calls and records every request. */
function recorder(opts: { failPart?: number; failOnce?: number } = {}) {
  const seen: Seen[] = [];
  let failedOnce = false;
  const handler = {
    async handle(req: HttpRequest) {
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(req.headers)) headers[k.toLowerCase()] = v;
      let body: Buffer | undefined;
      const writes: number[] = [];
      if (req.body instanceof Uint8Array) body = Buffer.from(req.body);
      else if (typeof req.body === "string") body = Buffer.from(req.body);
      else if (req.body instanceof Readable) {
        const chunks: Buffer[] = [];
        for await (const c of req.body as AsyncIterable<Buffer>) {
          chunks.push(c);
          writes.push(c.length);
        }
        body = Buffer.concat(chunks);
      }
      seen.push({
        method: req.method,
        query: req.query as Record<string, unknown>,
        headers,
        body,
        writes,
        protocol: req.protocol,
      });
      const q = req.query as Record<string, unknown>;
      const xml = (s: string, extra: Record<string, string> = {}) =>
        new HttpResponse({
          statusCode: 200,
          headers: { "content-type": "application/xml", ...extra },
          body: Readable.from([Buffer.from(`<?xml version="1.0" encoding="UTF-8"?>${s}`)]),
        });
      const empty = (status: number, extra: Record<string, string> = {}) =>
        new HttpResponse({ statusCode: status, headers: extra, body: Readable.from([]) });
      if (req.method === "POST" && "uploads" in q) {
        return {
          response: xml(
            "<InitiateMultipartUploadResult><Bucket>bucket</Bucket><Key>k</Key><UploadId>U1</UploadId></InitiateMultipartUploadResult>",
          ),
        };
      }
      if (req.method === "PUT" && q.partNumber) {
        if (Number(q.partNumber) === opts.failOnce && !failedOnce) {
          failedOnce = true;
          return { response: empty(500) };
        }
        if (Number(q.partNumber) === opts.failPart) {
          return {
            response: new HttpResponse({
              statusCode: 403,
              headers: { "content-type": "application/xml" },
              body: Readable.from([
                Buffer.from("<Error><Code>AccessDenied</Code><Message>no</Message></Error>"),
              ]),
            }),
          };
        }
        return { response: empty(200, { etag: `"etag-${String(q.partNumber)}"` }) };
      }
      if (req.method === "POST" && q.uploadId) {
        return {
          response: xml(
            '<CompleteMultipartUploadResult><Bucket>bucket</Bucket><Key>k</Key><ETag>"x-3"</ETag></CompleteMultipartUploadResult>',
            {
              "x-amz-version-id": "V123",
            },
          ),
        };
      }
      if (req.method === "DELETE" && q.uploadId) return { response: empty(204) };
      if (req.method === "PUT")
        return { response: empty(200, { etag: '"e"', "x-amz-version-id": "V1" }) };
      return { response: empty(404) };
    },
  };
  return { seen, handler };
}

const MiB = 1024 * 1024;
const sseKey = randomBytes(32);
const keyB64 = sseKey.toString("base64");
const keyMd5 = createHash("md5").update(sseKey).digest("base64");

function body(size: number, sent: Buffer[] = []): Readable {
  return Readable.from(
    (function* () {
      for (let left = size; left > 0; left -= MiB) {
        const chunk = randomBytes(Math.min(MiB, left));
        sent.push(chunk);
        yield chunk;
      }
    })(),
  );
}

describe("S3 upload requests", () => {
  it("md5 mode: SSE-C headers on create and every part, a correct Content-MD5 on every part", async () => {
    const { seen, handler } = recorder();
    const store = new S3Store(targetConfig(), targetConfig().credentials.reader, {
      requestHandler: handler,
    });
    const res = await store.upload({ key: "k", body: body(12 * MiB), sseKey });
    assert.equal(res.versionId, "V123");
    const create = seen.filter((s) => s.method === "POST" && "uploads" in s.query);
    const parts = seen.filter((s) => s.method === "PUT" && s.query.partNumber);
    assert.equal(create.length, 1);
    assert.equal(parts.length, 3, "12 MiB in 5 MiB parts is three parts");
    for (const s of [...create, ...parts]) {
      assert.equal(s.headers["x-amz-server-side-encryption-customer-algorithm"], "AES256");
      assert.equal(s.headers["x-amz-server-side-encryption-customer-key"], keyB64);
      assert.equal(s.headers["x-amz-server-side-encryption-customer-key-md5"], keyMd5);
    }
    for (const p of parts) {
      assert.ok(p.body, "part body is buffered, so its checksum is a header");
      assert.equal(p.headers["content-md5"], createHash("md5").update(p.body).digest("base64"));
      assert.ok(!p.headers["content-encoding"]?.includes("aws-chunked"), "no aws-chunked trailers");
      assert.equal(
        p.headers["x-amz-content-sha256"],
        "UNSIGNED-PAYLOAD",
        "over TLS, no second SHA-256 pass",
      );
      assert.match(
        p.headers.authorization ?? "",
        /SignedHeaders=[^,]*content-md5/,
        "Content-MD5 is signed",
      );
    }
  });

  it("a part goes to the socket in 1 MiB slices, and again in full after a 500", async () => {
    const { seen, handler } = recorder({ failOnce: 2 });
    const store = new S3Store(targetConfig(), targetConfig().credentials.reader, {
      requestHandler: handler,
    });
    const sent: Buffer[] = [];
    const res = await store.upload({ key: "k", body: body(12 * MiB, sent), sseKey });
    assert.equal(res.versionId, "V123");
    const parts = seen.filter((s) => s.method === "PUT" && s.query.partNumber);
    assert.deepEqual(
      parts.map((p) => Number(p.query.partNumber)).sort(),
      [1, 2, 2, 3],
      "part 2 was retried once",
    );
    for (const p of parts) {
      assert.ok(p.body && p.writes.length > 1, "a part body is streamed, not one Buffer");
      assert.ok(Math.max(...p.writes) <= MiB, `slices of at most 1 MiB: ${p.writes}`);
      assert.equal(p.headers["content-length"], String(p.body.length));
      assert.equal(p.headers["content-md5"], createHash("md5").update(p.body).digest("base64"));
    }
    const [first, retried] = parts.filter((p) => Number(p.query.partNumber) === 2);
    assert.ok(first?.body && retried?.body?.equals(first.body), "the retry sent the same bytes");
    const byNumber = new Map(parts.map((p) => [Number(p.query.partNumber), p.body]));
    const uploaded = Buffer.concat([1, 2, 3].map((n) => byNumber.get(n) ?? Buffer.alloc(0)));
    assert.ok(uploaded.equals(Buffer.concat(sent)), "the parts are the archive, in order");
  });

  it("crc32 mode: an x-amz-checksum-crc32 header on every part", async () => {
    const { seen, handler } = recorder();
    const tc = targetConfig({ checksum: "crc32" });
    const store = new S3Store(tc, tc.credentials.reader, { requestHandler: handler });
    await store.upload({ key: "k", body: body(11 * MiB), sseKey });
    const parts = seen.filter((s) => s.method === "PUT" && s.query.partNumber);
    assert.equal(parts.length, 3);
    for (const p of parts) {
      assert.match(p.headers["x-amz-checksum-crc32"] ?? "", /^[A-Za-z0-9+/]{6}==$/);
      assert.equal(p.headers["x-amz-server-side-encryption-customer-key"], keyB64);
    }
  });

  it("part sizes double every growEvery parts; the bytes arrive whole and in order", async () => {
    const { seen, handler } = recorder();
    const store = new S3Store(targetConfig(), targetConfig().credentials.reader, {
      requestHandler: handler,
    });
    const sent: Buffer[] = [];
    // Chunks of an odd size, so that part boundaries fall inside chunks.
    const chunk = 3 * MiB + 7;
    const total = 42 * MiB + 5;
    const src = Readable.from(
      (function* () {
        for (let left = total; left > 0; left -= chunk) {
          const c = randomBytes(Math.min(chunk, left));
          sent.push(c);
          yield c;
        }
      })(),
    );
    const up = new MultipartUpload({
      client: store.client,
      params: { Bucket: "bucket", Key: "k", ContentType: "application/x-tar" },
      body: src,
      partSize: 5 * MiB,
      queueSize: 2,
      growEvery: 2,
    });
    assert.equal((await up.done()).VersionId, "V123");
    const parts = seen
      .filter((s) => s.method === "PUT" && s.query.partNumber)
      .sort((a, b) => Number(a.query.partNumber) - Number(b.query.partNumber));
    assert.deepEqual(
      parts.map((p) => (p.body?.length ?? 0) / MiB),
      [5, 5, 10, 10, 12 + 5 / MiB],
      "5, 5, then 10, 10, then the rest",
    );
    assert.ok(
      Buffer.concat(parts.map((p) => p.body ?? Buffer.alloc(0))).equals(Buffer.concat(sent)),
    );
    const complete = seen.find((s) => s.method === "POST" && s.query.uploadId);
    const listed = [...(complete?.body?.toString() ?? "").matchAll(/<PartNumber>(\d+)</g)];
    assert.deepEqual(
      listed.map((m) => Number(m[1])),
      [1, 2, 3, 4, 5],
    );
  });

  it("gives each lent chunk back once it is copied into a part, and the parts hold its bytes", async () => {
    const { seen, handler } = recorder();
    const store = new S3Store(targetConfig(), targetConfig().credentials.reader, {
      requestHandler: handler,
    });
    const sent: Buffer[] = [];
    const lent: Buffer[] = [];
    const back: ArrayBuffer[] = [];
    const src = Readable.from(
      (function* () {
        for (let i = 0; i < 12; i++) {
          const c = randomBytes(MiB + 3); // parts of 5 MiB end inside chunks
          sent.push(Buffer.from(c));
          // Every other chunk lent, as the archive worker's are.
          if (i % 2 === 0) lent.push(lend(c, (buf) => back.push(buf)));
          yield c;
        }
      })(),
    );
    const up = new MultipartUpload({
      client: store.client,
      params: { Bucket: "bucket", Key: "k", ContentType: "application/x-tar" },
      body: src,
      partSize: 5 * MiB,
      queueSize: 2,
    });
    await up.done();
    const parts = seen
      .filter((s) => s.method === "PUT" && s.query.partNumber)
      .sort((a, b) => Number(a.query.partNumber) - Number(b.query.partNumber));
    assert.ok(
      Buffer.concat(parts.map((p) => p.body ?? Buffer.alloc(0))).equals(Buffer.concat(sent)),
    );
    assert.equal(back.length, lent.length, "every lent chunk came back, the others did not");
    assert.deepEqual(
      back.map((b) => b.byteLength),
      lent.map(() => MiB + 3),
    );
  });

  it("the default growth: 8 MiB parts to 16 GiB, 484 GiB in 10,000 parts, never above 5 GiB", () => {
    const GiB = 1024 ** 3;
    assert.equal(partSizeOf(8 * MiB, 1), 8 * MiB);
    assert.equal(partSizeOf(8 * MiB, 2000), 8 * MiB);
    assert.equal(partSizeOf(8 * MiB, 2001), 16 * MiB);
    assert.equal(partSizeOf(8 * MiB, MAX_PARTS), 128 * MiB);
    assert.equal(partSizeOf(5120 * MiB, 2001), 5120 * MiB, "never above S3's 5 GiB part");
    assert.equal(largestUpload(8 * MiB), 2000 * (8 + 16 + 32 + 64 + 128) * MiB);
    assert.ok(largestUpload(8 * MiB) > 480 * GiB, "three times the old 16 MiB x 10,000 (156 GiB)");
    assert.ok(largestUpload(5120 * MiB) <= MAX_PARTS * 5120 * MiB);
    for (let n = 1; n <= MAX_PARTS; n++) assert.ok(partSizeOf(5 * MiB, n) >= 5 * MiB);
  });

  it("part 10,001 is never sent: the upload fails before it, naming the limit, and is not completed", async () => {
    const { seen, handler } = recorder();
    const store = new S3Store(targetConfig(), targetConfig().credentials.reader, {
      requestHandler: handler,
    });
    for (const total of [16 * MiB, 15 * MiB + 1]) {
      seen.length = 0;
      const up = new MultipartUpload({
        client: store.client,
        params: { Bucket: "bucket", Key: "k", ContentType: "application/x-tar" },
        body: body(total),
        partSize: 5 * MiB,
        queueSize: 2,
        maxParts: 3,
      });
      await assert.rejects(
        up.done(),
        /^Error: Exceeded 3 parts: the archive is larger than 15728640 bytes$/,
      );
      const parts = seen.filter((s) => s.method === "PUT" && s.query.partNumber);
      assert.deepEqual(parts.map((p) => Number(p.query.partNumber)).sort(), [1, 2, 3]);
      assert.ok(!seen.some((s) => s.method === "POST" && s.query.uploadId), "never completed");
    }
  });

  it("a small archive goes up as one PutObject, still with SSE-C and Content-MD5", async () => {
    const { seen, handler } = recorder();
    const store = new S3Store(targetConfig(), targetConfig().credentials.reader, {
      requestHandler: handler,
    });
    const res = await store.upload({ key: "k", body: body(1000), sseKey });
    assert.equal(res.versionId, "V1");
    assert.equal(seen.length, 1);
    assert.equal(seen[0]?.headers["x-amz-server-side-encryption-customer-key"], keyB64);
    assert.ok(seen[0]?.headers["content-md5"]);
  });

  it("a rejected part aborts the multipart upload before the upload fails", async () => {
    const { seen, handler } = recorder({ failPart: 2 });
    const store = new S3Store(targetConfig(), targetConfig().credentials.reader, {
      requestHandler: handler,
    });
    await assert.rejects(store.upload({ key: "k", body: body(16 * MiB), sseKey }), StorageError);
    assert.ok(
      seen.some((s) => s.method === "DELETE" && s.query.uploadId === "U1"),
      "AbortMultipartUpload sent",
    );
    assert.ok(!seen.some((s) => s.method === "POST" && s.query.uploadId), "never completed");
  });

  it("a body that fails mid-way aborts the multipart upload", async () => {
    const { seen, handler } = recorder();
    const store = new S3Store(targetConfig(), targetConfig().credentials.reader, {
      requestHandler: handler,
    });
    const failing = Readable.from(
      (function* () {
        for (let i = 0; i < 12; i++) yield randomBytes(MiB);
        throw new Error("disk went away");
      })(),
    );
    await assert.rejects(store.upload({ key: "k", body: failing, sseKey }), /disk went away/);
    assert.ok(seen.some((s) => s.method === "DELETE" && s.query.uploadId === "U1"));
    assert.ok(!seen.some((s) => s.method === "POST" && s.query.uploadId));
  });

  it("refuses to send an SSE-C key over plain http unless allowed", async () => {
    const { seen, handler } = recorder();
    const tc = targetConfig({ endpoint: "http://127.0.0.1:1" });
    const store = new S3Store(tc, tc.credentials.reader, { requestHandler: handler });
    await assert.rejects(store.upload({ key: "k", body: body(1000), sseKey }), RefusedError);
    await assert.rejects(store.head("k", "v", sseKey), RefusedError);
    assert.equal(
      seen.filter((s) => s.headers["x-amz-server-side-encryption-customer-key"]).length,
      0,
    );

    const allowed = targetConfig({ endpoint: "http://127.0.0.1:1", allowInsecureSseC: true });
    const ok = new S3Store(allowed, allowed.credentials.reader, { requestHandler: handler });
    await ok.upload({ key: "k", body: body(1000), sseKey });
    assert.equal(seen.at(-1)?.protocol, "http:");
  });
});

type Answer = { status: number; xml: string };

/**
 * A fake endpoint for the two bucket GETs lockState sends; each answers once
 * both have arrived, so lockState hangs (and the test times out) if it asks
 * in turn rather than at once.
 */
function lockEndpoint(versioning: Answer, objectLock: Answer, versioningLate = false) {
  const asked: string[] = [];
  let bothAsked: () => void = () => {};
  const both = new Promise<void>((resolve) => {
    bothAsked = resolve;
  });
  const handler = {
    async handle(req: HttpRequest) {
      const q = req.query as Record<string, unknown>;
      const which = "versioning" in q ? "versioning" : "object-lock" in q ? "object-lock" : "?";
      asked.push(which);
      if (asked.includes("versioning") && asked.includes("object-lock")) bothAsked();
      await both;
      // Late: versioning's answer comes after the other one has been read.
      if (versioningLate && which === "versioning") await new Promise((r) => setTimeout(r, 50));
      const a = which === "versioning" ? versioning : objectLock;
      return {
        response: new HttpResponse({
          statusCode: a.status,
          headers: { "content-type": "application/xml" },
          body: Readable.from([Buffer.from(`<?xml version="1.0" encoding="UTF-8"?>${a.xml}`)]),
        }),
      };
    },
  };
  return { asked, handler };
}

const err = (status: number, code: string): Answer => ({
  status,
  xml: `<Error><Code>${code}</Code><Message>${code}</Message></Error>`,
});
const ENABLED: Answer = {
  status: 200,
  xml: "<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>",
};
const LOCKED: Answer = {
  status: 200,
  xml: "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>COMPLIANCE</Mode><Days>30</Days></DefaultRetention></Rule></ObjectLockConfiguration>",
};

describe("S3Store lockState", () => {
  const store = (handler: { handle(req: HttpRequest): Promise<{ response: HttpResponse }> }) =>
    new S3Store(targetConfig(), targetConfig().credentials.reader, { requestHandler: handler });

  it("asks for versioning and the Object Lock configuration at once and reads both", {
    timeout: 10_000,
  }, async () => {
    const { asked, handler } = lockEndpoint(ENABLED, LOCKED);
    assert.deepEqual(await store(handler).lockState(), {
      versioning: "Enabled",
      objectLock: true,
      defaultRetention: { mode: "COMPLIANCE", days: 30 },
    });
    assert.deepEqual([...asked].sort(), ["object-lock", "versioning"]);
  });

  it("reports versioning's failure when both fail, whichever answers first", async () => {
    for (const late of [false, true]) {
      const { handler } = lockEndpoint(err(403, "AccessDenied"), err(404, "NoSuchBucket"), late);
      await assert.rejects(store(handler).lockState(), (e: unknown) => {
        assert.ok(e instanceof StorageError);
        assert.match(e.message, /read versioning of/);
        assert.match(e.message, /AccessDenied/);
        assert.doesNotMatch(e.message, /NoSuchBucket/);
        return true;
      });
    }
  });

  it("reports the Object Lock configuration's failure when only it fails", async () => {
    const { handler } = lockEndpoint(ENABLED, err(403, "AccessDenied"));
    await assert.rejects(store(handler).lockState(), (e: unknown) => {
      assert.ok(e instanceof StorageError);
      assert.match(e.message, /read the Object Lock configuration of/);
      return true;
    });
  });

  it("reads a bucket without an Object Lock configuration as unlocked, not as a failure", async () => {
    const { handler } = lockEndpoint(ENABLED, err(404, "ObjectLockConfigurationNotFoundError"));
    assert.deepEqual(await store(handler).lockState(), {
      versioning: "Enabled",
      objectLock: false,
    });
  });
});
