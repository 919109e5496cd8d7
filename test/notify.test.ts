import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { NotifyConfig } from "../src/config/config.js";
import { Notifier, type NotifyPayload } from "../src/daemon/notify.js";
import { createLogger } from "../src/log.js";
import { receiver } from "./support/receiver.js";

const payload: NotifyPayload = {
  event: "failure",
  job: "etc",
  host: "web-1",
  status: "failed",
  error: "bucket gone",
  time: "2026-11-25T03:00:00Z",
};
const hook = (over: Partial<NotifyConfig> = {}): NotifyConfig => ({
  url: "https://hooks.example/secret-token",
  events: ["failure"],
  format: "json",
  timeoutSeconds: 5,
  ...over,
});

describe("notifications", () => {
  it("posts JSON for subscribed events only, retries failures, and never throws", async () => {
    const calls: { url: string; body: unknown }[] = [];
    let fail = 2;
    const fakeFetch = (async (url: string, init: RequestInit) => {
      calls.push({ url, body: init.body });
      if (fail-- > 0) return new Response("busy", { status: 503 });
      return new Response(null, { status: 204 });
    }) as typeof fetch;
    const n = new Notifier(createLogger({ level: "silent" }), { fetch: fakeFetch, baseDelayMs: 1 });
    n.send([hook(), hook({ events: ["success"] })], payload);
    await n.flush(5000);
    assert.equal(calls.length, 3, "two 503s, then delivered; the success-only hook was not called");
    assert.deepEqual(JSON.parse(String(calls[2]?.body)), payload);
  });

  it("text and ping formats fit ntfy and Healthchecks; logs name only the origin", async () => {
    const bodies: unknown[] = [];
    const lines: string[] = [];
    const log = createLogger({
      level: "warn",
      destination: { write: (s: string) => lines.push(s) } as unknown as NodeJS.WritableStream,
    });
    const fakeFetch = (async (_url: string, init: RequestInit) => {
      bodies.push(init.body);
      return new Response(null, { status: 404 });
    }) as typeof fetch;
    const n = new Notifier(log, { fetch: fakeFetch, baseDelayMs: 1 });
    n.send([hook({ format: "text" }), hook({ format: "ping" })], payload);
    await n.flush(5000);
    assert.equal(bodies[0], "immutd: backup of etc on web-1 failed: bucket gone");
    assert.equal(bodies[1], undefined);
    assert.equal(bodies.length, 2, "a 404 is not retried");
    assert.ok(lines.join("").includes("https://hooks.example"));
    assert.ok(!lines.join("").includes("secret-token"));
  });

  it("a delivery error that quotes the URL is logged with the origin only", async () => {
    const lines: string[] = [];
    const log = createLogger({
      level: "warn",
      destination: { write: (s: string) => lines.push(s) } as unknown as NodeJS.WritableStream,
    });
    const fakeFetch = (async (url: string) => {
      throw new TypeError(`request to ${url} failed, reason: ECONNRESET`);
    }) as typeof fetch;
    const n = new Notifier(log, { fetch: fakeFetch, baseDelayMs: 1 });
    n.send([hook()], payload);
    await n.flush(5000);
    const text = lines.join("");
    assert.match(text, /request to https:\/\/hooks\.example failed, reason: ECONNRESET/);
    assert.ok(!text.includes("secret-token"), text);
  });
});

const success: NotifyPayload = {
  event: "success",
  job: "etc",
  host: "web-1",
  status: "succeeded",
  runId: 7,
  bytes: 2048,
  files: 12,
  warnings: 0,
  durationMs: 1500,
  versionId: "v-1",
  time: "2026-11-25T03:00:00Z",
};

describe("notification formats, as a receiver sees them", () => {
  async function deliver(format: NotifyConfig["format"], path: string, p: NotifyPayload) {
    const srv = await receiver();
    try {
      const n = new Notifier(createLogger({ level: "silent" }), { baseDelayMs: 1 });
      n.send([hook({ url: `${srv.url}${path}`, format, events: [p.event] })], p);
      await n.flush(5000);
      return srv.seen;
    } finally {
      await srv.close();
    }
  }

  it("ntfy: the line as the body, with Title, Priority and Tags headers", async () => {
    const [ok] = await deliver("ntfy", "/immutd-web-1", success);
    assert.equal(ok?.method, "POST");
    assert.equal(ok?.url, "/immutd-web-1");
    assert.equal(
      ok?.body,
      "immutd: backup of etc on web-1 succeeded: 2048 bytes, 12 files, version v-1",
    );
    assert.equal(ok?.headers.title, "immutd etc: success");
    assert.equal(ok?.headers.priority, "3");
    assert.equal(ok?.headers.tags, "white_check_mark,immutd,etc");
    const [bad] = await deliver("ntfy", "/immutd-web-1", payload);
    assert.equal(bad?.headers.title, "immutd etc: failure");
    assert.equal(bad?.headers.priority, "5", "a failure is urgent");
    assert.equal(bad?.headers.tags, "rotating_light,immutd,etc");
    assert.equal(bad?.body, "immutd: backup of etc on web-1 failed: bucket gone");
    const [warned] = await deliver("ntfy", "/t", { ...success, warnings: 2 });
    assert.equal(warned?.headers.tags, "warning,immutd,etc");
    assert.match(warned?.body ?? "", /12 files, 2 warnings, version v-1$/);
  });

  it("uptime-kuma: GET the push URL with status=up|down, msg and ping (ms), keeping its own query", async () => {
    const [up] = await deliver("uptime-kuma", "/api/push/Tok3n?x=1", success);
    assert.equal(up?.method, "GET");
    assert.equal(up?.body, "");
    const u = new URL(up?.url ?? "", "http://h");
    assert.equal(u.pathname, "/api/push/Tok3n");
    assert.equal(u.searchParams.get("x"), "1");
    assert.equal(u.searchParams.get("status"), "up");
    assert.equal(u.searchParams.get("ping"), "1500");
    assert.equal(
      u.searchParams.get("msg"),
      "immutd: backup of etc on web-1 succeeded: 2048 bytes, 12 files, version v-1",
    );
    const [down] = await deliver("uptime-kuma", "/api/push/Tok3n", payload);
    const d = new URL(down?.url ?? "", "http://h");
    assert.equal(d.searchParams.get("status"), "down");
    assert.equal(d.searchParams.get("msg"), "immutd: backup of etc on web-1 failed: bucket gone");
    assert.equal(d.searchParams.get("ping"), "");
    // Kuma has no "started": a start would read as a success.
    const start = await deliver("uptime-kuma", "/api/push/Tok3n", {
      ...payload,
      event: "start",
      status: "running",
    });
    assert.deepEqual(start, []);
  });

  it("apprise: Apprise API JSON with title, body and type", async () => {
    const [ok] = await deliver("apprise", "/notify/immutd", success);
    assert.equal(ok?.method, "POST");
    assert.equal(ok?.url, "/notify/immutd");
    assert.equal(ok?.headers["content-type"], "application/json");
    assert.deepEqual(JSON.parse(ok?.body ?? ""), {
      title: "immutd etc: success",
      body: "immutd: backup of etc on web-1 succeeded: 2048 bytes, 12 files, version v-1",
      type: "success",
      format: "text",
    });
    const [bad] = await deliver("apprise", "/notify/immutd", payload);
    assert.equal(JSON.parse(bad?.body ?? "").type, "failure");
    const [warned] = await deliver("apprise", "/notify", { ...success, warnings: 1 });
    assert.equal(JSON.parse(warned?.body ?? "").type, "warning");
    const [start] = await deliver("apprise", "/notify", {
      ...payload,
      event: "start",
      status: "running",
    });
    assert.equal(JSON.parse(start?.body ?? "").type, "info");
  });

  it("ping (Healthchecks) POSTs no body; json the whole payload", async () => {
    const [ping] = await deliver("ping", "/ping/uuid/fail", payload);
    assert.equal(ping?.method, "POST");
    assert.equal(ping?.body, "");
    const [json] = await deliver("json", "/hook", success);
    assert.deepEqual(JSON.parse(json?.body ?? ""), success);
  });

  it("a token in the URL never reaches the log, for every format, on 500s and on timeouts", async () => {
    const srv = await receiver((q, res) => {
      if (q.url.includes("stall")) return; // never answers
      res.writeHead(500).end("boom");
    });
    try {
      const lines: string[] = [];
      const log = createLogger({
        level: "debug",
        destination: { write: (s: string) => lines.push(s) } as unknown as NodeJS.WritableStream,
      });
      const n = new Notifier(log, { baseDelayMs: 1 });
      const formats = ["json", "text", "ping", "ntfy", "uptime-kuma", "apprise"] as const;
      n.send(
        formats.flatMap((format) => [
          hook({ url: `${srv.url}/api/push/s3cr3t-${format}?token=q5ecret`, format }),
          hook({ url: `${srv.url}/stall/s3cr3t-${format}`, format, timeoutSeconds: 1 }),
        ]),
        payload,
      );
      await n.flush(30_000);
      const text = lines.join("");
      assert.equal(srv.seen.filter((s) => !s.url.includes("stall")).length, 4 * formats.length);
      assert.equal((text.match(/failed: HTTP 500/g) ?? []).length, formats.length, text);
      assert.equal((text.match(/failed: timed out after 1 s/g) ?? []).length, formats.length);
      assert.ok(!/s3cr3t|q5ecret|boom/.test(text), text);
    } finally {
      await srv.close();
    }
  });

  it("close() abandons a delivery to a receiver that never answers, so a command can exit", async () => {
    const srv = await receiver(() => undefined);
    try {
      const n = new Notifier(createLogger({ level: "silent" }), { baseDelayMs: 1 });
      n.send([hook({ url: `${srv.url}/x`, timeoutSeconds: 300 })], payload);
      const started = Date.now();
      await n.close(200);
      // hang detection, not a speed test: 300 s per attempt would be far longer
      assert.ok(Date.now() - started < 20_000);
      assert.equal(srv.seen.length, 1, "no retry after close");
    } finally {
      await srv.close();
    }
  });
});
