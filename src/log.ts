/**
 * Logging: pino JSON lines, one object per event, with child loggers carrying
 * {job, runId}. The daemon logs to stdout (journald and Docker collect it); the
 * one-off commands log to stderr, because their stdout is their output
 * (`list --json`, `config check`). On a terminal the lines are shown in a short
 * human form instead of JSON. A command whose printed report is its result
 * (verify, doctor) has its flow log what the report says at debug only, so a
 * cron mail that gets both streams says each fact once (src/cli/output.ts).
 *
 * Secrets are kept out in three layers: config secrets are Secret objects that
 * serialise as "<redacted>", errors are logged by message only (SDK errors carry
 * no request headers), and `redact` censors every path that could hold a key.
 */
import { Writable } from "node:stream";
import pino from "pino";
import { describeError, ImmutdError } from "./errors.js";

export type Logger = pino.Logger;
export type LogFormat = "json" | "pretty";

export const REDACT_PATHS = [
  "secretAccessKey",
  "*.secretAccessKey",
  "sseKey",
  "*.sseKey",
  "masterKey",
  "*.masterKey",
  "SSECustomerKey",
  "*.SSECustomerKey",
  'headers["x-amz-server-side-encryption-customer-key"]',
  '*.headers["x-amz-server-side-encryption-customer-key"]',
  "authorization",
  "*.authorization",
];

export interface LogOptions {
  level?: string;
  format?: LogFormat;
  destination?: NodeJS.WritableStream;
}

export function createLogger(opts: LogOptions = {}): Logger {
  const dest = opts.destination ?? process.stderr;
  const stream = opts.format === "pretty" ? prettyStream(dest) : dest;
  return pino(
    {
      level: opts.level ?? "info",
      base: { pid: process.pid },
      redact: { paths: REDACT_PATHS, censor: "<redacted>" },
      serializers: { err: serializeError },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    stream,
  );
}

/** Errors as {type, message}; a stack only for unexpected errors, where it helps a bug report. */
export function serializeError(err: unknown): Record<string, unknown> {
  if (!(err instanceof Error)) return { message: String(err) };
  const out: Record<string, unknown> = { type: err.name, message: describeError(err) };
  if (!(err instanceof ImmutdError)) out.stack = err.stack;
  return out;
}

const SKIP = new Set(["level", "time", "pid", "hostname", "msg", "job", "runId"]);

/** "12:03:04 WARN  [etc] cannot read /x (path=/x)" lines for people at a terminal. */
function prettyStream(dest: NodeJS.WritableStream): Writable {
  return new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString("utf8").split("\n")) {
        if (!line) continue;
        let rec: Record<string, unknown>;
        try {
          rec = JSON.parse(line);
        } catch {
          dest.write(`${line}\n`);
          continue;
        }
        const time = typeof rec.time === "string" ? rec.time.slice(11, 19) : "";
        const level = String(rec.level ?? "")
          .toUpperCase()
          .padEnd(5);
        const job = rec.job ? `[${rec.job}] ` : "";
        const extra = Object.entries(rec)
          .filter(([k]) => !SKIP.has(k))
          .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : String(v)}`)
          .join(" ");
        // \r and erase-line first: a progress line may be on screen.
        dest.write(
          `\r\x1b[2K${time} ${level} ${job}${rec.msg ?? ""}${extra ? `  ${extra}` : ""}\n`,
        );
      }
      cb();
    },
  });
}
