import { inspect } from "node:util";

/**
 * A value that must never reach a log line, an error message or printed output.
 * It serializes as "<redacted>" through JSON, util.inspect and string coercion;
 * only reveal() hands out the value, at the one place that sends it.
 */
export class Secret<T = string> {
  readonly #value: T;
  constructor(value: T) {
    this.#value = value;
  }
  reveal(): T {
    return this.#value;
  }
  toJSON(): string {
    return "<redacted>";
  }
  toString(): string {
    return "<redacted>";
  }
  [inspect.custom](): string {
    return "<redacted>";
  }
}

/**
 * What of a URL may be shown: its origin (scheme, host, port). Webhook URLs
 * carry their token in the path or query (Slack, ntfy, Healthchecks) and any
 * URL may carry user:password@; none of that may reach a log line or printed
 * output. Logs and `config check` both show URLs through this.
 */
export function urlOrigin(url: string): string {
  try {
    const origin = new URL(url).origin;
    return origin === "null" ? "(url without an origin)" : origin;
  } catch {
    return "(invalid url)";
  }
}

/**
 * Text (a hook or command line) with what a URL in it may hide replaced: the
 * password of every URL (`pg_dump postgres://app:pw@db/app` shows as
 * `pg_dump postgres://<redacted>@db/app`), and the path and query of http(s)
 * URLs, where monitoring pings and webhooks carry their tokens
 * (`curl https://hc-ping.com/UUID` shows as `curl https://hc-ping.com/<redacted>`).
 */
export function redactUserinfo(text: string): string {
  return text.replace(
    /\b([a-z][a-z0-9+.-]*):\/\/([^\s/?#'"]*)([^\s'"]*)/gi,
    (_m, scheme: string, authority: string, rest: string) => {
      const at = authority.lastIndexOf("@");
      const host = at >= 0 ? `<redacted>@${authority.slice(at + 1)}` : authority;
      const web = /^https?$/i.test(scheme) && rest !== "" && rest !== "/";
      return `${scheme}://${host}${web ? "/<redacted>" : rest}`;
    },
  );
}
