/**
 * Node.js's http and https modules, taken with require() rather than an ES
 * import. An ES import of node:http makes Node.js build the module's ES
 * wrapper, which reads every export, the lazy ones too: `WebSocket`,
 * `CloseEvent` and `MessageEvent` load undici, Node's fetch, on the spot. That
 * was 40 ms of every command's start-up (a third of compiling the whole
 * command line), for a fetch only a notification may need; require() hands
 * over the module object without touching them. test/bundle.test.ts checks
 * that a command that sends nothing loads no undici.
 */
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);

export const http = require("node:http") as typeof import("node:http");
export const https = require("node:https") as typeof import("node:https");
