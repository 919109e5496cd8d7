/**
 * Nothing hangs and every failure names its cause: backups and restores on the
 * real Ceph RGW through the fault-injecting proxy (test/support/fault-proxy.ts),
 * which stalls, resets or fails chosen requests. The targets use short
 * timeouts (idleTimeoutSeconds: 2) so that each stall ends in seconds; every
 * CLI run is killed after a deadline, so a hang fails the test instead of
 * hanging the suite.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { AbortMultipartUploadCommand } from "@aws-sdk/client-s3";
import Database from "better-sqlite3";
import { CLI, logRecords, runCli } from "./support/cli.js";
import { type FaultAction, FaultProxy, isGetObject, isUploadPart } from "./support/fault-proxy.js";
import {
  client,
  createLockedBucket,
  credYaml,
  type S3Env,
  s3env,
  targetYaml,
  uniqueBucket,
} from "./support/s3env.js";

interface Setup {
  dir: string;
  cfg: string;
  bucket: string;
  /** SHA-256 of the one data file. */
  fileSha: string;
}

const IDLE_S = 2;
/** Far below what a hang would take, far above what the faults below cost. */
const DEADLINE_MS = 90_000;

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

describe("transport faults (CLI, Ceph RGW through a fault proxy)", () => {
  let env: S3Env;
  let proxy: FaultProxy;
  before(async () => {
    env = s3env();
    proxy = await FaultProxy.start(env.endpoint, {
      caFile: env.caFile,
      certFile: join(env.caFile, "..", "cert.pem"),
      keyFile: join(env.caFile, "..", "key.pem"),
    });
  });
  after(() => proxy.close());

  /** A job of one incompressible file of `mib` MiB, on a target behind the proxy. */
  async function setup(label: string, mib: number): Promise<Setup> {
    proxy.clear();
    const dir = mkdtempSync(join(tmpdir(), `immutd-transport-${label}-`));
    const bucket = uniqueBucket(label);
    await createLockedBucket(env, bucket, 1);
    writeFileSync(join(dir, "master.key"), `${randomBytes(32).toString("hex")}\n`, {
      mode: 0o600,
    });
    mkdirSync(join(dir, "data"));
    const body = randomBytes(mib << 20);
    writeFileSync(join(dir, "data", "blob"), body);
    const cfg = join(dir, "config.yaml");
    writeConfig(cfg, dir, bucket);
    return { dir, cfg, bucket, fileSha: sha(body) };
  }

  /** The job's config; `reader` replaces the reader credential (a YAML flow mapping). */
  function writeConfig(cfg: string, dir: string, bucket: string, reader?: string): void {
    writeFileSync(
      cfg,
      `catalog: ${dir}/catalog.db
masterKeyFile: ${dir}/master.key
host: transport
targets:
${targetYaml(
  { ...env, endpoint: proxy.endpoint },
  {
    bucket,
    extra: [
      "partSizeMiB: 5",
      "queueSize: 2",
      `idleTimeoutSeconds: ${IDLE_S}`,
      "connectTimeoutSeconds: 2",
    ],
    ...(reader ? { reader } : {}),
  },
)}jobs:
  - name: data
    target: local
    schedule: "@daily"
    compression: none
    paths: [${dir}/data]
`,
    );
  }

  const cli = (s: Setup, ...args: string[]) =>
    runCli(["--config", s.cfg, ...args], { timeoutMs: DEADLINE_MS });

  async function backup(s: Setup): Promise<void> {
    const r = await cli(s, "backup");
    assert.equal(r.code, 0, r.stderr);
  }

  function failedRun(s: Setup): { error: string; upload_id: string | null } {
    const db = new Database(join(s.dir, "catalog.db"), { readonly: true });
    try {
      return db.prepare("SELECT error, upload_id FROM runs ORDER BY id DESC LIMIT 1").get() as {
        error: string;
        upload_id: string | null;
      };
    } finally {
      db.close();
    }
  }

  function catalogSha(s: Setup): string {
    const db = new Database(join(s.dir, "catalog.db"), { readonly: true });
    try {
      return (db.prepare("SELECT sha256 FROM backups").get() as { sha256: string }).sha256;
    } finally {
      db.close();
    }
  }

  /** restore --stdout of a fresh backup whose GET stalls after 1 MiB and whose resume meets `action`. */
  async function resumeMeets(label: string, action: FaultAction) {
    const s = await setup(label, 6);
    await backup(s);
    proxy.fault({ match: isGetObject(), action: { kind: "stall", afterBytes: 1 << 20 } });
    const f = proxy.fault({ match: (q) => isGetObject()(q) && q.range !== undefined, action });
    const r = await cli(s, "restore", "data", "--stdout");
    return { r, hits: f.hits };
  }

  describe("restore", () => {
    it("resumes a GET that stalls mid-body with a ranged GET of the same version, SHA-256 checked", async () => {
      const s = await setup("stall", 12);
      await backup(s);
      const stall = proxy.fault({
        match: isGetObject(),
        action: { kind: "stall", afterBytes: 1 << 20 },
      });
      const reset = proxy.fault({
        match: isGetObject(),
        action: { kind: "reset", afterBytes: 3 << 20 },
      });
      const out = join(s.dir, "out");
      const r = await cli(s, "restore", "data", "--to", out);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(stall.hits, 1);
      assert.equal(reset.hits, 1);
      assert.equal(sha(readFileSync(join(out, s.dir, "data", "blob"))), s.fileSha);
      const gets = proxy.log.filter((l) => isGetObject()(l));
      assert.equal(gets.length, 3, JSON.stringify(gets));
      const [first, second, third] = gets;
      assert.equal(first?.range, undefined);
      assert.equal(second?.range, `bytes=${1 << 20}-`, "resumed from the last byte received");
      assert.ok(third?.range && Number(/bytes=(\d+)-/.exec(third.range)?.[1]) > 1 << 20);
      for (const g of gets) assert.equal(g.query.get("versionId"), first?.query.get("versionId"));
      const resumes = logRecords(r.stderr).filter((l) => String(l.msg).includes("resuming"));
      assert.equal(resumes.length, 2, r.stderr);
      const done = logRecords(r.stderr).find((l) => l.msg === "restore finished");
      assert.equal(done?.sha256, catalogSha(s), r.stderr);
    });

    it("fails cleanly, naming the version and the cause, when every resume stalls", async () => {
      const s = await setup("nores", 6);
      await backup(s);
      proxy.fault({ match: isGetObject(), action: { kind: "stall", afterBytes: 1 << 20 } });
      proxy.fault({
        match: isGetObject(),
        times: Number.POSITIVE_INFINITY,
        action: { kind: "stall", afterBytes: 0 },
      });
      const started = Date.now();
      const r = await cli(s, "restore", "data", "--stdout");
      assert.equal(r.signal, null, "ended by itself, not killed at the deadline");
      assert.equal(r.code, 3, r.stderr);
      assert.ok(Date.now() - started < 60_000);
      assert.match(
        r.stderr,
        /version \S+ failed: the download broke 5 times in a row at byte 1048576/,
      );
      assert.match(
        r.stderr,
        /no byte sent or received for 2 s \(targets\.local\.idleTimeoutSeconds\)/,
      );
    });

    it("refuses a resumed answer that is not the range it asked for (never appends byte 0 again)", async () => {
      const { r, hits } = await resumeMeets("range", {
        kind: "respond",
        status: 200,
        body: randomBytes(5 << 20),
      });
      assert.equal(r.code, 3, r.stderr);
      assert.equal(hits, 1);
      assert.match(
        r.stderr,
        /cannot resume the download of s3:\/\/\S+ version \S+ at byte 1048576: the server answered with the whole object/,
      );
    });

    it("catches bytes changed in transit after a resume with the SHA-256 over the whole stream", async () => {
      const { r, hits } = await resumeMeets("tamper", { kind: "corrupt", atByte: 4096 });
      assert.equal(r.code, 3, r.stderr);
      assert.equal(hits, 1);
      assert.match(r.stderr, /SHA-256 [0-9a-f]{64} differs from the catalog's/);
    });

    /** `restore --stdout` into a pipe whose reader starts after a pause longer than every timeout. */
    async function slowPipe(s: Setup): Promise<{ code: number | null; stderr: string }> {
      const out = join(s.dir, "raw.tar");
      const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const sh = spawn(
          "bash",
          [
            "-c",
            `set -o pipefail; "${process.execPath}" "${CLI}" --config "${s.cfg}" restore data --stdout | (sleep 6; cat > "${out}")`,
          ],
          { env: { ...process.env, IMMUTD_CONFIG: "" }, stdio: ["ignore", "ignore", "pipe"] },
        );
        let stderr = "";
        sh.stderr.on("data", (d: Buffer) => {
          stderr += d.toString();
        });
        const timer = setTimeout(() => sh.kill("SIGKILL"), DEADLINE_MS);
        sh.on("close", (code) => {
          clearTimeout(timer);
          resolve({ code, stderr });
        });
      });
      assert.equal(r.code, 0, r.stderr);
      assert.ok(
        logRecords(r.stderr).some((l) => String(l.msg).includes("resuming")),
        "the pause broke the connection at least once",
      );
      // Every byte arrived once, in order: the archive is the one that was backed up.
      assert.equal(sha(readFileSync(out)), catalogSha(s));
      return r;
    }

    it("survives a consumer slower than the download whose idle connection the server drops", async () => {
      const s = await setup("slow", 24);
      await backup(s);
      // The server's side of a slow reader: once the client stops reading, the
      // connection is dropped (RGW and load balancers do this to idle connections).
      proxy.fault({
        match: isGetObject(),
        times: Number.POSITIVE_INFINITY,
        action: { kind: "dropIdle", ms: 1500 },
      });
      await slowPipe(s);
    });

    it("survives a consumer that pauses longer than idleTimeoutSeconds (backpressure is not a stall)", async () => {
      const s = await setup("pause", 24);
      await backup(s);
      await slowPipe(s);
    });

    it("says the reader credential was refused, not the SSE-C key, when its secret is wrong", async () => {
      const s = await setup("cred", 1);
      await backup(s);
      writeConfig(s.cfg, s.dir, s.bucket, credYaml({ ...env.reader, secretAccessKey: "wrong" }));
      const r = await cli(s, "restore", "data", "--stdout");
      assert.equal(r.code, 3, r.stderr);
      assert.match(r.stderr, /refused the credential \(HTTP 403 SignatureDoesNotMatch\)/);
      assert.doesNotMatch(r.stderr, /refused the SSE-C key|catalog's key is wrong/);

      const v = await cli(s, "verify");
      assert.equal(v.code, 4, v.stderr);
      assert.match(
        v.stdout + v.stderr,
        /refused the credential \(HTTP 403 SignatureDoesNotMatch\)/,
      );
    });

    it("doctor does not credit SSE-C for a refusal that was the reader's credential", async () => {
      const s = await setup("doc", 1);
      writeConfig(s.cfg, s.dir, s.bucket, credYaml({ ...env.reader, secretAccessKey: "wrong" }));
      const r = await cli(s, "doctor", "--json");
      const [report] = JSON.parse(r.stdout || "[]") as {
        checks: { name: string; status: string; message: string }[];
      }[];
      const ssec = report?.checks.find((c) => c.name === "sse-c");
      assert.equal(ssec?.status, "FAIL", r.stdout + r.stderr);
      assert.match(ssec?.message ?? "", /cannot tell whether the server checks SSE-C keys/);
      assert.doesNotMatch(r.stdout, /refuses reads with a wrong key/);
    });

    it("still says the SSE-C key was refused when it is the key that is wrong", async () => {
      const s = await setup("ssec", 1);
      await backup(s);
      // The catalog's key for the backup replaced by another one (a wrong catalog).
      const db = new Database(join(s.dir, "catalog.db"));
      db.prepare("UPDATE backups SET sse_key = ?").run(randomBytes(32));
      db.close();
      const r = await cli(s, "restore", "data", "--stdout");
      assert.equal(r.code, 3, r.stderr);
      assert.match(r.stderr, /refused the SSE-C key \(HTTP 400 InvalidArgument\)/);
      const v = await cli(s, "verify");
      assert.match(v.stdout + v.stderr, /refused the SSE-C key/);
      assert.doesNotMatch(v.stdout + v.stderr, /refused the credential/);
    });
  });

  describe("backup", () => {
    it("ends a run whose UploadPart is never answered, naming the timeout", async () => {
      const s = await setup("hang", 12);
      const hang = proxy.fault({
        match: isUploadPart(2),
        times: Number.POSITIVE_INFINITY,
        action: { kind: "hang" },
      });
      const started = Date.now();
      const r = await cli(s, "backup");
      assert.equal(r.signal, null, "ended by itself, not killed at the deadline");
      assert.equal(r.code, 3, r.stderr);
      assert.ok(Date.now() - started < 60_000);
      assert.equal(
        hang.hits,
        4,
        "the SDK retried the part, each attempt ended by the idle timeout",
      );
      assert.match(
        r.stderr,
        /data: cannot upload s3:\/\/\S+\/transport\/data\/\S+\.tar .*no byte sent or received for 2 s \(targets\.local\.idleTimeoutSeconds\)/,
      );
      assert.match(failedRun(s).error, /no byte sent or received for 2 s/);
    });

    it("carries HTTP 500 and the S3 error code of failing parts into the run's error and exit message", async () => {
      const s = await setup("p500", 12);
      proxy.fault({
        match: isUploadPart(),
        times: Number.POSITIVE_INFINITY,
        action: { kind: "status", status: 500, code: "InternalError", message: "disk on fire" },
      });
      const r = await cli(s, "backup");
      assert.equal(r.code, 3, r.stderr);
      const exit = r.stderr.trim().split("\n").at(-1) ?? "";
      assert.match(
        exit,
        /did not succeed: data \(failed\)\. data: cannot upload .*InternalError, HTTP 500: disk on fire/,
      );
      assert.doesNotMatch(r.stderr, /operation was aborted/);
      const run = failedRun(s);
      assert.match(run.error, /InternalError, HTTP 500: disk on fire/);
      assert.ok(run.upload_id, "the upload ID is recorded although no part succeeded");
      const del = proxy.log.filter((l) => l.method === "DELETE" && l.query.has("uploadId"));
      assert.ok(
        del.some((l) => l.status === 204),
        "the upload was aborted",
      );
    });

    it("names a dropped connection, not a knock-on abort, when the server goes away during parts", async () => {
      const s = await setup("gone", 12);
      proxy.fault({
        match: isUploadPart(),
        times: Number.POSITIVE_INFINITY,
        action: { kind: "reset" },
      });
      const r = await cli(s, "backup");
      assert.equal(r.code, 3, r.stderr);
      const run = failedRun(s);
      assert.match(run.error, /cannot upload s3:\/\/\S+ .*: (ECONNRESET|EPIPE)/);
      assert.doesNotMatch(r.stderr, /operation was aborted/);
    });

    it("says when the abort fails too, names the upload ID and keeps it in the catalog", async () => {
      const s = await setup("abort", 12);
      proxy.fault({
        match: isUploadPart(),
        times: Number.POSITIVE_INFINITY,
        action: { kind: "status", status: 503, code: "ServiceUnavailable", message: "going away" },
      });
      proxy.fault({
        match: (q) => q.method === "DELETE",
        times: Number.POSITIVE_INFINITY,
        action: { kind: "reset" },
      });
      const r = await cli(s, "backup");
      assert.equal(r.code, 3, r.stderr);
      const run = failedRun(s);
      assert.ok(run.upload_id);
      assert.match(run.error, /ServiceUnavailable, HTTP 503: going away/);
      assert.ok(
        run.error.includes(`the abort of multipart upload ${run.upload_id} also failed`),
        run.error,
      );
      assert.ok(r.stderr.includes(run.upload_id), r.stderr);
      // Leave nothing behind on the shared server.
      const admin = client(env, env.main);
      const key = /s3:\/\/\S+?\/(\S+\.tar)/.exec(run.error)?.[1];
      await admin.send(
        new AbortMultipartUploadCommand({ Bucket: s.bucket, Key: key, UploadId: run.upload_id }),
      );
      admin.destroy();
    });
  });
});
