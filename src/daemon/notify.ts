/**
 * Webhook notifications on job start, success and failure. Fire and forget:
 * a slow or failing receiver never delays or fails a backup. Each delivery is
 * tried a few times with backoff; the daemon flushes pending ones at shutdown.
 * Webhook URLs often embed tokens, so logs name only their origin.
 */
import { setTimeout as sleep } from "node:timers/promises";
import type { NotifyConfig, NotifyEvent } from "../config/config.js";
import { urlOrigin } from "../config/secret.js";
import type { BackupResult } from "../flows/backup.js";
import type { Logger } from "../log.js";

export interface NotifyPayload {
  event: NotifyEvent;
  job: string;
  host: string;
  status: "running" | "succeeded" | "failed" | "interrupted";
  runId?: number;
  key?: string;
  versionId?: string;
  bytes?: number;
  files?: number;
  warnings?: number;
  durationMs?: number;
  error?: string;
  time: string;
}

const ATTEMPTS = 4;

export class Notifier {
  readonly #log: Logger;
  readonly #pending = new Set<Promise<void>>();
  readonly #fetch: typeof fetch;
  readonly #baseDelayMs: number;
  /** Aborted by close(): deliveries still going give up. */
  readonly #closed = new AbortController();

  constructor(log: Logger, opts: { fetch?: typeof fetch; baseDelayMs?: number } = {}) {
    this.#log = log;
    this.#fetch = opts.fetch ?? fetch;
    this.#baseDelayMs = opts.baseDelayMs ?? 1000;
  }

  send(targets: readonly NotifyConfig[], payload: NotifyPayload): void {
    for (const t of targets) {
      if (!t.events.includes(payload.event)) continue;
      const p = this.#deliver(t, payload).finally(() => this.#pending.delete(p));
      this.#pending.add(p);
    }
  }

  /** Waits for pending deliveries, at most timeoutMs. */
  async flush(timeoutMs: number): Promise<void> {
    if (this.#pending.size === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled([...this.#pending]),
      new Promise((r) => {
        timer = setTimeout(r, timeoutMs);
      }),
    ]);
    clearTimeout(timer);
  }

  /**
   * Waits for pending deliveries at most timeoutMs, then abandons the rest, so
   * that a one-shot command exits although a receiver stalls.
   */
  async close(timeoutMs: number): Promise<void> {
    if (this.#pending.size === 0) return;
    await this.flush(timeoutMs);
    this.#closed.abort();
    await Promise.allSettled([...this.#pending]);
  }

  async #deliver(t: NotifyConfig, payload: NotifyPayload): Promise<void> {
    const origin = urlOrigin(t.url);
    const req = request(t, payload);
    if (!req) return;
    let lastError = "";
    const closed = this.#closed.signal;
    for (let attempt = 1; attempt <= ATTEMPTS && !closed.aborted; attempt++) {
      try {
        const res = await this.#fetch(req.url, {
          method: req.method,
          headers: req.headers,
          ...(req.body !== undefined ? { body: req.body } : {}),
          signal: AbortSignal.any([AbortSignal.timeout(t.timeoutSeconds * 1000), closed]),
        });
        await res.arrayBuffer().catch(() => undefined);
        if (res.ok) {
          this.#log.debug(
            { job: payload.job, event: payload.event, to: origin },
            "notification delivered",
          );
          return;
        }
        lastError = `HTTP ${res.status}`;
        if (res.status >= 400 && res.status < 500 && res.status !== 429) break; // the receiver said no
      } catch (err) {
        // An error may quote the URL it was given (e.g. "Failed to parse URL from …").
        lastError =
          (err as Error).name === "TimeoutError"
            ? `timed out after ${t.timeoutSeconds} s`
            : closed.aborted
              ? "abandoned at exit"
              : (err as Error).message.replaceAll(req.url, origin).replaceAll(t.url, origin);
      }
      if (attempt < ATTEMPTS) {
        await sleep(this.#baseDelayMs * 2 ** (attempt - 1), undefined, { signal: closed }).catch(
          () => undefined, // closed: the loop ends
        );
      }
    }
    this.#log.warn(
      { job: payload.job, event: payload.event, to: origin },
      `notification to ${origin} failed: ${lastError}`,
    );
  }
}

/** The payload of a finished backup, for its success or failure event. */
export function resultPayload(r: BackupResult, host: string): NotifyPayload {
  return {
    event: r.status === "succeeded" ? "success" : "failure",
    job: r.job,
    host,
    status: r.status,
    runId: r.runId,
    key: r.key,
    bytes: r.bytes,
    files: r.files,
    warnings: r.warnings,
    durationMs: r.durationMs,
    ...(r.versionId ? { versionId: r.versionId } : {}),
    ...(r.error ? { error: r.error } : {}),
    time: new Date().toISOString(),
  };
}

interface Request {
  url: string;
  method: "GET" | "POST";
  headers: Record<string, string>;
  body?: string;
}

/**
 * The HTTP request a receiver of this format expects, or undefined for an event
 * it has no word for (Uptime Kuma knows only up and down, not "started").
 */
export function request(t: NotifyConfig, p: NotifyPayload): Request | undefined {
  const title = `immutd ${p.job}: ${p.event}`;
  switch (t.format) {
    case "json":
      return {
        url: t.url,
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(p),
      };
    case "text":
      return {
        url: t.url,
        method: "POST",
        headers: { "content-type": "text/plain; charset=utf-8", title },
        body: textLine(p),
      };
    case "ping":
      return { url: t.url, method: "POST", headers: {} };
    case "ntfy": {
      // https://docs.ntfy.sh/publish/: the body is the message; Title, Priority
      // (1 min … 5 urgent) and Tags (emoji short codes become icons) as headers.
      const [priority, icon] =
        p.event === "start"
          ? ["2", "arrow_forward"]
          : p.event === "success"
            ? ["3", (p.warnings ?? 0) > 0 ? "warning" : "white_check_mark"]
            : ["5", "rotating_light"];
      return {
        url: t.url,
        method: "POST",
        headers: {
          "content-type": "text/plain; charset=utf-8",
          title,
          priority,
          tags: `${icon},immutd,${p.job}`,
        },
        body: textLine(p),
      };
    }
    case "uptime-kuma": {
      // A push monitor's URL (…/api/push/TOKEN): GET with status=up|down and msg;
      // ping is shown as the response time (here: the backup's duration in ms).
      if (p.event === "start") return undefined;
      const url = new URL(t.url);
      url.searchParams.set("status", p.event === "success" ? "up" : "down");
      url.searchParams.set("msg", textLine(p));
      url.searchParams.set("ping", p.durationMs !== undefined ? String(p.durationMs) : "");
      return { url: url.href, method: "GET", headers: {} };
    }
    case "apprise":
      // Apprise API (POST /notify/KEY): title, body and the message type.
      return {
        url: t.url,
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          title,
          body: textLine(p),
          type:
            p.event === "start"
              ? "info"
              : p.event === "failure"
                ? "failure"
                : (p.warnings ?? 0) > 0
                  ? "warning"
                  : "success",
          format: "text",
        }),
      };
  }
}

function textLine(p: NotifyPayload): string {
  switch (p.event) {
    case "start":
      return `immutd: backup of ${p.job} on ${p.host} started`;
    case "success":
      return `immutd: backup of ${p.job} on ${p.host} succeeded: ${p.bytes ?? 0} bytes, ${p.files ?? 0} files, ${p.warnings ? `${p.warnings} warning${p.warnings === 1 ? "" : "s"}, ` : ""}version ${p.versionId ?? "?"}`;
    case "failure":
      return `immutd: backup of ${p.job} on ${p.host} ${p.status}: ${p.error ?? "unknown error"}`;
  }
}
