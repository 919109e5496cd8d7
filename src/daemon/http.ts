/**
 * The daemon's optional HTTP endpoint: /healthz (200 while the scheduler is
 * alive and the catalog writable, 503 otherwise) and /metrics (Prometheus).
 * Bind it to loopback or a private interface: it has no authentication.
 */
import type { Server } from "node:http";
import { ConfigError } from "../errors.js";
import { http } from "../node-http.js";
import type { Metrics } from "./metrics.js";

export interface Health {
  ok: boolean;
  reasons: string[];
}

export async function startHttp(
  listen: string,
  metrics: Metrics,
  health: () => Health,
): Promise<Server> {
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(listen);
  if (!m) throw new ConfigError(`http.listen ${listen}: must be HOST:PORT`);
  const [, host, port] = m;
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" }).end();
      return;
    }
    if (path === "/healthz") {
      const h = health();
      res
        .writeHead(h.ok ? 200 : 503, { "content-type": "text/plain; charset=utf-8" })
        .end(h.ok ? "ok\n" : `unhealthy: ${h.reasons.join("; ")}\n`);
      return;
    }
    if (path === "/metrics") {
      metrics.exposition().then(
        (text) => res.writeHead(200, { "content-type": metrics.registry.contentType }).end(text),
        () => res.writeHead(500).end(),
      );
      return;
    }
    res
      .writeHead(404, { "content-type": "text/plain" })
      .end("not found: try /healthz or /metrics\n");
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) =>
      reject(new ConfigError(`http.listen ${listen}: cannot listen: ${err.code ?? err.message}`)),
    );
    server.listen(Number(port), host, () => resolve());
  });
  return server;
}
