/**
 * `immutd backup` (what a systemd timer or cron runs) sends its webhooks, and a
 * receiver that stalls or answers 500 neither fails nor hangs it; against the
 * real Ceph RGW.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { logRecords, runCli } from "./support/cli.js";
import { receiver } from "./support/receiver.js";
import {
  createLockedBucket,
  type S3Env,
  s3env,
  targetYaml,
  uniqueBucket,
} from "./support/s3env.js";

describe("immutd backup's notifications (CLI, Ceph RGW)", () => {
  let env: S3Env;
  let srv: Awaited<ReturnType<typeof receiver>>;
  before(async () => {
    env = s3env();
    srv = await receiver((q, res) => {
      if (q.url.startsWith("/stall")) return; // accepts, never answers
      if (q.url.startsWith("/broken")) res.writeHead(500).end("internal");
      else res.writeHead(200).end("OK");
    });
  });
  after(() => srv.close());

  it("sends start and success to ntfy and Uptime Kuma; a stalled and a 500 receiver cost one timeout, not the backup", async () => {
    const bucket = uniqueBucket("notify");
    await createLockedBucket(env, bucket, 1);
    const dir = mkdtempSync(join(tmpdir(), "immutd-notify-"));
    writeFileSync(join(dir, "master.key"), `${randomBytes(32).toString("hex")}\n`, { mode: 0o600 });
    mkdirSync(join(dir, "data"));
    writeFileSync(join(dir, "data/a.txt"), "alpha\n");
    const cfg = join(dir, "config.yaml");
    writeFileSync(
      cfg,
      `catalog: ${dir}/catalog.db
masterKeyFile: ${dir}/master.key
host: timer-host
targets:
${targetYaml(env, { bucket })}notify:
  - { url: "${srv.url}/stall/tok-stall", format: json, timeoutSeconds: 2, events: [start, success, failure] }
  - { url: "${srv.url}/broken/tok-broken", format: apprise, timeoutSeconds: 2 }
jobs:
  - name: files
    target: local
    paths: [${dir}/data]
    notify:
      - { url: "${srv.url}/immutd-topic-tok", format: ntfy, events: [start, success, failure] }
      - { url: "${srv.url}/api/push/kumatok", format: uptime-kuma }
`,
    );
    const r = await runCli(["--log-format", "json", "--config", cfg, "backup", "files"], {
      timeoutMs: 60_000, // hang detection: a stalled receiver must not keep the command alive
    });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(logRecords(r.stderr).some((l) => l.msg === "backup succeeded"));

    const ntfy = srv.seen.filter((s) => s.url === "/immutd-topic-tok");
    assert.deepEqual(
      ntfy.map((s) => s.headers.title),
      ["immutd files: start", "immutd files: success"],
    );
    assert.match(
      ntfy[1]?.body ?? "",
      /^immutd: backup of files on timer-host succeeded: \d+ bytes, 1 files, version \S+$/,
    );
    const kuma = srv.seen.filter((s) => s.url.startsWith("/api/push/kumatok"));
    assert.equal(kuma.length, 1, "success only: Kuma has no start");
    assert.equal(new URL(kuma[0]?.url ?? "", srv.url).searchParams.get("status"), "up");
    assert.ok(
      srv.seen.some((s) => s.url.startsWith("/stall")),
      "the stalled receiver was tried",
    );
    assert.ok(
      srv.seen.some((s) => s.url.startsWith("/broken")),
      "the 500 receiver was tried",
    );

    // The receivers' tokens are never logged; the failures are, by origin.
    assert.ok(!/tok-stall|tok-broken|topic-tok|kumatok/.test(r.stderr + r.stdout), r.stderr);
    assert.match(r.stderr, /notification to http:\/\/127\.0\.0\.1:\d+ failed: HTTP 500/);
  });
});
