/**
 * A fault-injecting HTTPS proxy for tests, in front of the test RGW.
 *
 * It terminates TLS with the test server's own certificate (so clients trust it
 * with the same caFile) and re-originates every request to the RGW over TLS.
 * Headers, including Host, are forwarded unchanged, so SigV4 signatures made
 * for the proxy's address still verify at the RGW. Because it sees whole HTTP
 * requests, a fault can target one request: "the 3rd UploadPart", "every GET
 * of this key", and act on the request or on the response body.
 *
 * API (everything else is private):
 *   const p = await FaultProxy.start(upstreamEndpoint, { caFile, certFile, keyFile });
 *   p.endpoint                       https://127.0.0.1:PORT, for a target's endpoint
 *   const f = p.fault({ match, skip?, times?, action })
 *     match:  (r: { method, path, query: URLSearchParams }) => boolean
 *     skip:   matching requests let through before the fault applies (default 0)
 *     times:  how many matching requests get it (default 1; Infinity for all)
 *     action: { kind: "stall", afterBytes }   forward the response head and this
 *                                             many body bytes, then send nothing more
 *                                             (the connection stays open)
 *             { kind: "reset", afterBytes? }  the same, then close the connection
 *                                             abruptly (without afterBytes: before
 *                                             any answer)
 *             { kind: "hang" }                read the request, never answer
 *             { kind: "status", status, code?, message? }
 *                                             answer this status with an S3 XML error
 *                                             body (default code InternalError)
 *             { kind: "delay", ms }           forward after a pause
 *             { kind: "corrupt", atByte }     forward the answer with the body byte at
 *                                             this offset inverted (a tampering middlebox)
 *             { kind: "respond", status, headers, body }
 *                                             answer this instead of the server
 *             { kind: "dropIdle", ms }        forward the answer, but reset the
 *                                             connection once the client has not
 *                                             read for ms (a server dropping a
 *                                             connection whose reader is slow)
 *   f.hits                           how many requests the fault acted on
 *   p.log                            every request seen: arrival time, method, path,
 *                                    query, range, status
 *   p.clear()                        removes every fault
 *   await p.close()                  closes the listener and every connection
 *
 * Matchers for common S3 calls: isUploadPart(n?), isGetObject(key?).
 */
import { readFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer, request as httpsRequest, type Server } from "node:https";
import type { AddressInfo, Socket } from "node:net";

export interface RequestInfo {
  method: string;
  /** Decoded path, e.g. /bucket/key. */
  path: string;
  query: URLSearchParams;
  /** The Range header, if the request had one. */
  range?: string;
  /** The request carries an SSE-C key (x-amz-server-side-encryption-customer-key). */
  sseC?: boolean;
}

export type FaultAction =
  | { kind: "stall"; afterBytes: number }
  | { kind: "reset"; afterBytes?: number }
  | { kind: "hang" }
  | { kind: "status"; status: number; code?: string; message?: string }
  | { kind: "delay"; ms: number }
  | { kind: "corrupt"; atByte: number }
  | { kind: "respond"; status: number; headers?: Record<string, string>; body: Buffer }
  | { kind: "dropIdle"; ms: number };

export interface FaultSpec {
  match: (r: RequestInfo) => boolean;
  skip?: number;
  times?: number;
  action: FaultAction;
}

export interface Fault {
  readonly spec: FaultSpec;
  /** Requests this fault acted on. */
  hits: number;
  /** Matching requests seen (including skipped ones). */
  seen: number;
}

export interface LoggedRequest extends RequestInfo {
  /** When the request arrived (Date.now()). */
  at: number;
  /** Status sent to the client; undefined when none was (hang, reset, stall before the head). */
  status?: number;
  fault?: FaultAction["kind"];
}

export const isUploadPart =
  (partNumber?: number) =>
  (r: RequestInfo): boolean =>
    r.method === "PUT" &&
    r.query.has("uploadId") &&
    r.query.has("partNumber") &&
    (partNumber === undefined || r.query.get("partNumber") === String(partNumber));

/** Query flags of the S3 sub-resources that a GET of a key can carry instead of reading its bytes. */
const SUBRESOURCES = ["retention", "tagging", "acl", "legal-hold", "uploadId", "attributes"];

/** A GetObject (of key, if given), not a bucket or sub-resource GET. */
export const isGetObject =
  (key?: string) =>
  (r: RequestInfo): boolean =>
    r.method === "GET" &&
    /^\/[^/]+\/./.test(r.path) &&
    !SUBRESOURCES.some((q) => r.query.has(q)) &&
    (key === undefined || r.path.endsWith(`/${key}`));

export class FaultProxy {
  readonly endpoint: string;
  readonly log: LoggedRequest[] = [];
  readonly #server: Server;
  readonly #upstream: URL;
  readonly #ca: string;
  readonly #faults: Fault[] = [];
  readonly #sockets = new Set<Socket>();

  private constructor(server: Server, upstream: URL, ca: string) {
    this.#server = server;
    this.#upstream = upstream;
    this.#ca = ca;
    const { port } = server.address() as AddressInfo;
    this.endpoint = `https://127.0.0.1:${port}`;
  }

  static async start(
    upstream: string,
    tls: { caFile: string; certFile: string; keyFile: string },
  ): Promise<FaultProxy> {
    const server = createServer({
      cert: readFileSync(tls.certFile),
      key: readFileSync(tls.keyFile),
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const p = new FaultProxy(server, new URL(upstream), readFileSync(tls.caFile, "utf8"));
    server.on("secureConnection", (s: Socket) => {
      p.#sockets.add(s);
      s.on("close", () => p.#sockets.delete(s));
    });
    server.on("request", (req: IncomingMessage, res: ServerResponse) => p.#handle(req, res));
    return p;
  }

  fault(spec: FaultSpec): Fault {
    const f: Fault = { spec, hits: 0, seen: 0 };
    this.#faults.push(f);
    return f;
  }

  clear(): void {
    this.#faults.length = 0;
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #pick(info: RequestInfo): FaultAction | undefined {
    for (const f of this.#faults) {
      if (!f.spec.match(info)) continue;
      f.seen++;
      if (f.seen <= (f.spec.skip ?? 0)) continue;
      if (f.hits >= (f.spec.times ?? 1)) continue;
      f.hits++;
      return f.spec.action;
    }
    return undefined;
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "https://proxy.invalid");
    const info: RequestInfo = {
      method: req.method ?? "GET",
      path: decodeURIComponent(url.pathname),
      query: url.searchParams,
      ...(req.headers.range ? { range: req.headers.range } : {}),
      ...(req.headers["x-amz-server-side-encryption-customer-key"] ? { sseC: true } : {}),
    };
    const action = this.#pick(info);
    const entry: LoggedRequest = {
      ...info,
      at: Date.now(),
      ...(action ? { fault: action.kind } : {}),
    };
    this.log.push(entry);
    // A TLS socket cannot send a TCP RST (Node's resetAndDestroy refuses it); destroying
    // it closes the connection mid-answer, which the client sees as a dropped connection.
    const reset = () => req.socket.destroy();

    if (action?.kind === "hang") {
      req.resume(); // take the body, answer nothing
      return;
    }
    if (action?.kind === "reset" && action.afterBytes === undefined) {
      reset();
      return;
    }
    if (action?.kind === "status") {
      req.resume();
      await new Promise((r) => req.on("end", r));
      const code = action.code ?? "InternalError";
      const body = `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${action.message ?? "injected by the fault proxy"}</Message><RequestId>fault-proxy</RequestId></Error>`;
      entry.status = action.status;
      res.writeHead(action.status, {
        "content-type": "application/xml",
        "content-length": Buffer.byteLength(body),
      });
      res.end(body);
      return;
    }
    if (action?.kind === "respond") {
      req.resume();
      entry.status = action.status;
      res.writeHead(action.status, {
        "content-length": action.body.length,
        ...action.headers,
      });
      res.end(action.body);
      return;
    }
    if (action?.kind === "delay") await new Promise((r) => setTimeout(r, action.ms));

    const headers = { ...req.headers };
    // The proxy answers 100-continue to the client itself (Node's server does).
    delete headers.expect;
    const up = httpsRequest({
      host: this.#upstream.hostname,
      port: this.#upstream.port,
      method: req.method,
      path: req.url,
      headers,
      ca: this.#ca,
      agent: false,
    });
    up.on("error", () => res.destroy());
    res.on("close", () => up.destroy());
    up.on("response", (ur) => {
      if (ur.statusCode !== undefined) entry.status = ur.statusCode;
      res.writeHead(ur.statusCode ?? 502, ur.headers);
      const limit =
        action?.kind === "stall" || action?.kind === "reset" ? action.afterBytes : undefined;
      if (action?.kind === "corrupt") {
        let seen = 0;
        ur.on("data", (chunk: Buffer) => {
          const at = action.atByte - seen;
          seen += chunk.length;
          if (at >= 0 && at < chunk.length) {
            const copy = Buffer.from(chunk);
            copy[at] = (copy[at] ?? 0) ^ 0xff;
            res.write(copy);
          } else res.write(chunk);
        });
        ur.on("end", () => res.end());
        return;
      }
      if (action?.kind === "dropIdle") {
        let timer: NodeJS.Timeout | undefined;
        ur.on("data", (chunk: Buffer) => {
          if (res.write(chunk)) return;
          ur.pause();
          timer = setTimeout(reset, action.ms);
          res.once("drain", () => {
            clearTimeout(timer);
            ur.resume();
          });
        });
        ur.on("end", () => res.end());
        res.on("close", () => clearTimeout(timer));
        return;
      }
      if (limit === undefined) {
        ur.pipe(res);
        return;
      }
      let sent = 0;
      if (limit === 0) res.flushHeaders();
      ur.on("data", (chunk: Buffer) => {
        if (sent >= limit) return;
        const part = chunk.subarray(0, limit - sent);
        sent += part.length;
        res.write(part);
        if (sent < limit) return;
        ur.pause(); // hold the rest
        if (action?.kind === "reset") setTimeout(reset, 20); // after the bytes are out
      });
    });
    req.pipe(up);
  }
}
