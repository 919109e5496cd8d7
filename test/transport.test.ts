/**
 * The transport's pure parts without a server: what a refusal names
 * (StorageError.refusal, explainReadRefusal) and how restore resumes a broken
 * download (offsets, the limit, refusals on resume). The same behaviour on the
 * real RGW through a fault proxy: transport.rgw.test.ts.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { type AddressInfo, createServer, type Socket } from "node:net";
import { Readable, Writable } from "node:stream";
import { describe, it } from "node:test";
import { explainReadRefusal, StorageError } from "../src/errors.js";
import { RestoreError, type RestoreSource, restore } from "../src/flows/restore.js";
import { S3Store } from "../src/store/s3.js";
import type { ObjectStore } from "../src/store/store.js";
import { targetConfig } from "./support/target.js";

const refused = (status: number, code?: string) =>
  new StorageError(`cannot read: HTTP ${status}`, { transient: false, status, code });

describe("StorageError.refusal", () => {
  it("tells a refused credential, a denied permission and a refused SSE-C key apart", () => {
    assert.equal(refused(403, "SignatureDoesNotMatch").refusal, "credential");
    assert.equal(refused(403, "InvalidAccessKeyId").refusal, "credential");
    assert.equal(refused(403, "AccessDenied").refusal, "permission");
    assert.equal(refused(400, "InvalidArgument").refusal, "sse-c key");
    assert.equal(refused(400).refusal, "sse-c key");
    assert.equal(refused(403).refusal, undefined, "a 403 without a code does not say");
    assert.equal(refused(404, "NoSuchVersion").refusal, undefined);
    assert.match(refused(403, "SignatureDoesNotMatch").refusalText() ?? "", /credential/);
    assert.doesNotMatch(
      refused(403, "SignatureDoesNotMatch").refusalText() ?? "",
      /refused the SSE-C/,
    );
  });

  it("asks the probe when a HEAD's 403 carries no code", async () => {
    const ok = async () => undefined;
    const badSecret = async () => {
      throw refused(403, "SignatureDoesNotMatch");
    };
    assert.equal((await explainReadRefusal(refused(403), ok))?.refused, "sse-c key");
    assert.equal((await explainReadRefusal(refused(403), badSecret))?.refused, "credential");
    assert.equal(
      (await explainReadRefusal(refused(403, "SignatureDoesNotMatch"), ok))?.refused,
      "credential",
      "a code is believed without a probe",
    );
    assert.equal(await explainReadRefusal(new Error("boom"), ok), undefined);
  });
});

/**
 * A store whose downloads follow a script: each get() answers from `start`
 * and, if the script says so, fails after that many bytes (transiently, as a
 * dropped connection does), or refuses the request.
 */
function scriptedStore(
  data: Buffer,
  script: ({ failAfter: number } | { refuse: StorageError } | "ok")[],
) {
  const starts: number[] = [];
  const store = {
    bucket: "b",
    async get(_k: string, _v: string, _s: Buffer, opts: { start?: number } = {}) {
      const start = opts.start ?? 0;
      starts.push(start);
      const step = script.shift() ?? "ok";
      if (typeof step === "object" && "refuse" in step) throw step.refuse;
      const limit = step === "ok" ? Number.POSITIVE_INFINITY : step.failAfter;
      let pos = start;
      let sent = 0;
      return new Readable({
        read() {
          if (pos >= data.length) return void this.push(null);
          if (sent >= limit) {
            this.destroy(
              new StorageError("download: connection reset", { transient: true, code: undefined }),
            );
            return;
          }
          const n = Math.min(64 * 1024, data.length - pos, limit - sent);
          this.push(data.subarray(pos, pos + n));
          pos += n;
          sent += n;
        },
      });
    },
  };
  return { store: store as unknown as ObjectStore, starts };
}

function source(data: Buffer): RestoreSource {
  return {
    job: "j",
    bucket: "b",
    key: "k.tar",
    versionId: "v1",
    compression: "none",
    sseKey: randomBytes(32),
    createdAt: new Date(),
    size: data.length,
    sha256: createHash("sha256").update(data).digest("hex"),
  };
}

const collect = () => {
  const chunks: Buffer[] = [];
  const out = new Writable({
    write(c: Buffer, _e, cb) {
      chunks.push(c);
      cb();
    },
  });
  return { out, bytes: () => Buffer.concat(chunks) };
};

describe("restore: resuming a broken download", () => {
  const data = randomBytes(1 << 20);

  it("resumes from the first byte not received and checks the SHA-256 over the whole stream", async () => {
    const { store, starts } = scriptedStore(data, [
      { failAfter: 100_000 },
      { failAfter: 300_000 },
      "ok",
    ]);
    const sink = collect();
    const resumes: number[] = [];
    const s = await restore(
      store,
      source(data),
      { kind: "raw", out: sink.out },
      {
        onResume: (r) => resumes.push(r.offset),
      },
    );
    assert.deepEqual(starts, [0, 100_000, 400_000]);
    assert.deepEqual(resumes, [100_000, 400_000]);
    assert.ok(sink.bytes().equals(data));
    assert.equal(s.bytes, data.length);
  });

  it("fails after 5 breaks in a row without progress, naming the byte and the cause", async () => {
    const { store, starts } = scriptedStore(data, [
      { failAfter: 200_000 },
      ...Array.from({ length: 10 }, () => ({ failAfter: 0 })),
    ]);
    const err = await restore(store, source(data), { kind: "raw", out: collect().out }).then(
      () => assert.fail("restore succeeded"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof RestoreError);
    assert.match(err.message, /broke 5 times in a row at byte 200000 .*connection reset/);
    assert.equal(starts.length, 5, "the first request and 4 resumes; the 5th break ends it");
    assert.deepEqual(new Set(starts.slice(1)), new Set([200_000]));
  });

  it("does not count breaks that made progress against the limit", async () => {
    const { store } = scriptedStore(
      data,
      Array.from({ length: 12 }, () => ({ failAfter: 65_536 })),
    );
    const sink = collect();
    await restore(store, source(data), { kind: "raw", out: sink.out });
    assert.ok(sink.bytes().equals(data));
  });

  it("stops at a refusal on resume and says what was refused", async () => {
    const { store } = scriptedStore(data, [
      { failAfter: 100_000 },
      { refuse: refused(403, "InvalidAccessKeyId") },
    ]);
    const err = await restore(store, source(data), { kind: "raw", out: collect().out }).then(
      () => assert.fail("restore succeeded"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof RestoreError);
    assert.match(err.message, /refused the credential \(HTTP 403 InvalidAccessKeyId\)/);
  });
});

describe("S3Store timeouts", () => {
  it("gives up on an endpoint that accepts connections and never answers, naming the setting", {
    timeout: 60_000,
  }, async () => {
    // TCP connects, TLS never starts: only the idle timeout can end this.
    const server = createServer(() => {});
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as AddressInfo).port;
    const sockets = new Set<Socket>();
    server.on("connection", (c) => sockets.add(c));
    try {
      const t = targetConfig({ endpoint: `https://127.0.0.1:${port}`, idleTimeoutSeconds: 1 });
      const store = new S3Store(t, t.credentials.reader);
      const err = await store.lockState().then(
        () => assert.fail("answered"),
        (e: unknown) => e,
      );
      assert.ok(err instanceof StorageError);
      assert.match(
        err.message,
        /bucket bucket at https:\/\/127\.0\.0\.1:\d+ \(target test\): no byte sent or received for 1 s \(targets\.test\.idleTimeoutSeconds\)/,
      );
      assert.equal(err.transient, true);
      // lockState asks for versioning and the Object Lock configuration at once.
      assert.equal(
        sockets.size,
        8,
        "the SDK tried each of the 2 requests 4 times, each ended by the timeout",
      );
      store.client.destroy();
    } finally {
      for (const c of sockets) c.destroy();
      server.close();
    }
  });

  it("gives up on a connect that is never answered, naming connectTimeoutSeconds", {
    timeout: 60_000,
  }, async () => {
    // A loopback listener whose accept queue is full and that never accepts: the
    // kernel drops further SYNs, so a connect neither succeeds nor fails. Node
    // accepts every connection itself, so a small Python helper holds the socket.
    const holder = spawn("python3", [
      "-c",
      [
        "import socket,sys,time",
        "s=socket.socket();s.bind(('127.0.0.1',0));s.listen(0)",
        "p=s.getsockname()[1];f=[]",
        "for i in range(4):",
        "  c=socket.socket();c.setblocking(False)",
        "  try: c.connect(('127.0.0.1',p))",
        "  except BlockingIOError: pass",
        "  f.append(c)",
        "print(p,flush=True);time.sleep(120)",
      ].join("\n"),
    ]);
    try {
      const port = await new Promise<number>((resolve, reject) => {
        holder.stdout.once("data", (d: Buffer) => resolve(Number(d.toString().trim())));
        holder.once("error", reject);
      });
      const t = targetConfig({
        endpoint: `https://127.0.0.1:${port}`,
        connectTimeoutSeconds: 1,
        idleTimeoutSeconds: 30,
      });
      const store = new S3Store(t, t.credentials.reader);
      const started = Date.now();
      const err = await store.lockState().then(
        () => assert.fail("answered"),
        (e: unknown) => e,
      );
      assert.ok(err instanceof StorageError);
      assert.match(
        err.message,
        /bucket bucket at https:\/\/127\.0\.0\.1:\d+ \(target test\): no connection within 1 s \(targets\.test\.connectTimeoutSeconds\)/,
      );
      assert.equal(err.transient, true);
      // 4 attempts of 1 s plus the SDK's backoff, far below the 30 s idle timeout.
      assert.ok(Date.now() - started < 25_000, `took ${Date.now() - started} ms`);
      store.client.destroy();
    } finally {
      holder.kill();
    }
  });
});
