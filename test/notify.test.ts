import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { NotifyConfig } from "../src/config.js";
import { createLogger } from "../src/log.js";
import { Notifier, type NotifyPayload } from "../src/notify.js";

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
