/** Helpers for tests that scrape a daemon's /metrics. */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";

/** A TCP port on 127.0.0.1 that was free a moment ago (for http.listen). */
export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", () => r()));
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

/** The value of one series (`name{labels}` exactly as exposed) in a scrape, undefined if absent. */
export function gauge(text: string, series: string): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}
