/**
 * Webhook notifications on job start, success and failure. Fire and forget:
 * a slow or failing receiver never delays or fails a backup. Each delivery is
 * tried a few times with backoff; the daemon flushes pending ones at shutdown.
 * Webhook URLs often embed tokens, so logs name only their origin.
 */
import type { NotifyConfig, NotifyEvent } from "./config.js";
import type { Logger } from "./log.js";
import { urlOrigin } from "./secret.js";

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

  async #deliver(t: NotifyConfig, payload: NotifyPayload): Promise<void> {
    const origin = urlOrigin(t.url);
    const body =
      t.format === "json"
        ? JSON.stringify(payload)
        : t.format === "text"
          ? textLine(payload)
          : undefined;
    const headers: Record<string, string> =
      t.format === "json"
        ? { "content-type": "application/json" }
        : t.format === "text"
          ? {
              "content-type": "text/plain; charset=utf-8",
              title: `immutd ${payload.job}: ${payload.event}`,
            }
          : {};
    let lastError = "";
    for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
      try {
        const res = await this.#fetch(t.url, {
          method: "POST",
          headers,
          ...(body !== undefined ? { body } : {}),
          signal: AbortSignal.timeout(t.timeoutSeconds * 1000),
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
            ? "timed out"
            : (err as Error).message.replaceAll(t.url, origin);
      }
      if (attempt < ATTEMPTS)
        await new Promise((r) => setTimeout(r, this.#baseDelayMs * 2 ** (attempt - 1)));
    }
    this.#log.warn(
      { job: payload.job, event: payload.event, to: origin },
      `notification to ${origin} failed: ${lastError}`,
    );
  }
}

function textLine(p: NotifyPayload): string {
  switch (p.event) {
    case "start":
      return `immutd: backup of ${p.job} on ${p.host} started`;
    case "success":
      return `immutd: backup of ${p.job} on ${p.host} succeeded: ${p.bytes ?? 0} bytes, ${p.files ?? 0} files, version ${p.versionId ?? "?"}`;
    case "failure":
      return `immutd: backup of ${p.job} on ${p.host} ${p.status}: ${p.error ?? "unknown error"}`;
  }
}
