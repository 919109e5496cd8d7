/**
 * `encryption: age` (and `both`) end to end on the real Ceph RGW, through the
 * CLI as an operator runs it: the stored object is an age file that the
 * standard `age -d -i` pipes into `zstd -d | tar -x`; no request of an
 * age-only job carries an SSE-C key (a bucket that refuses SSE-C, as AWS's
 * new buckets do, takes its backups); the manifest keeps sizes and SHA-256
 * readable and the file names sealed; restore, ls, find and verify --deep
 * with an identity, verify without one; a wrong identity fails with exit 3
 * and writes nothing; bytes altered in flight fail the restore; a reset part
 * upload and a stalled download are survived.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buffer } from "node:stream/consumers";
import { after, before, describe, it } from "node:test";
import { gunzipSync, gzipSync } from "node:zlib";
import { GetObjectCommand, HeadObjectCommand, PutObjectCommand } from "@aws-sdk/client-s3";
import Database from "better-sqlite3";
import { AgeEncrypt } from "../src/pipeline/age.js";
import { createArchive } from "../src/pipeline/archive.js";
import { HashingCounter } from "../src/pipeline/hash.js";
import { runStages } from "../src/pipeline/index.js";
import { s3Sink } from "../src/pipeline/sink.js";
import { parseRecipient } from "../src/repo/age-keys.js";
import { manifestKey, objectKey } from "../src/repo/naming.js";
import { closeTarget, openTarget } from "../src/store/s3.js";
import type { ObjectStore } from "../src/store/store.js";
import { CLI, runCli } from "./support/cli.js";
import { FaultProxy, isGetObject, isUploadPart } from "./support/fault-proxy.js";
import { holdEnv } from "./support/hold-s3.js";
import {
  client,
  createLockedBucket,
  rgwTarget,
  type S3Env,
  s3env,
  targetYaml,
  uniqueBucket,
} from "./support/s3env.js";

interface Setup {
  dir: string;
  cfg: string;
  data: string;
  bucket: string;
  /** Identity files: ours (immutd key generate --age) and age-keygen's; both are recipients of job a. */
  ours: string;
  theirs: string;
  /** An identity that is no recipient of anything. */
  stranger: string;
}

interface Row {
  id: number;
  job: string;
  key: string;
  versionId: string;
  size: number;
  sha256: string;
  manifestKey: string | null;
  manifestVersionId: string | null;
  createdAt: string;
}

const MiB = 1024 * 1024;
const FAULTY_AGE = new URL("./age-faulty-worker.js", import.meta.url);
const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

describe("encryption: age (CLI, Ceph RGW)", () => {
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
  after(async () => {
    await proxy.close();
  });

  function recipientOf(file: string): string {
    const r = spawnSync("age-keygen", ["-y", file]);
    assert.equal(r.status, 0, String(r.stderr));
    return String(r.stdout).trim();
  }

  /**
   * Jobs: a (age to two recipients, zstd), both (age inside SSE-C, gzip),
   * plain (SSE-C, gzip), all of one tree; `viaProxy` sends the target's
   * requests through the fault proxy.
   */
  async function setup(label: string, o: { viaProxy?: boolean; bigMiB?: number } = {}) {
    const dir = mkdtempSync(join(tmpdir(), `immutd-age-${label}-`));
    const bucket = uniqueBucket(label);
    await createLockedBucket(env, bucket, 1);
    writeFileSync(join(dir, "master.key"), `${randomBytes(32).toString("hex")}\n`, {
      mode: 0o600,
    });
    const ours = join(dir, "ours.age.txt");
    const gen = await runCli(["key", "generate", "--age", ours]);
    assert.equal(gen.code, 0, gen.stderr);
    assert.match(gen.stdout, /^age1[0-9a-z]{58}\n$/);
    const theirs = join(dir, "theirs.age.txt");
    assert.equal(spawnSync("age-keygen", ["-o", theirs]).status, 0);
    const stranger = join(dir, "stranger.age.txt");
    assert.equal(spawnSync("age-keygen", ["-o", stranger]).status, 0);
    const data = join(dir, "data");
    mkdirSync(join(data, "secret-dir"), { recursive: true });
    writeFileSync(join(data, "log.txt"), Buffer.alloc(2 * MiB, "GET /index.html 200\n"));
    writeFileSync(join(data, "secret-dir", "passwords.txt"), "hunter2\n");
    writeFileSync(join(data, "noise.bin"), randomBytes((o.bigMiB ?? 0.3) * MiB));
    const rA = recipientOf(ours);
    const rB = recipientOf(theirs);
    const t = targetYaml(env, {
      bucket,
      extra: [`encryption: { scheme: age, recipients: [${rA}, ${rB}] }`, "partSizeMiB: 5"],
    });
    const cfg = join(dir, "config.yaml");
    writeFileSync(
      cfg,
      `catalog: ${dir}/catalog.db
masterKeyFile: ${dir}/master.key
host: age-test
targets:
${o.viaProxy ? t.replace(env.endpoint, proxy.endpoint) : t}jobs:
  - name: a
    target: local
    paths: [${data}]
    compression: zstd
  - name: both
    target: local
    paths: [${data}]
    encryption: { scheme: both, recipients: [${rA}] }
  - name: plain
    target: local
    paths: [${data}]
    encryption: { scheme: sse-c }
`,
    );
    return { dir, cfg, data, bucket, ours, theirs, stranger } satisfies Setup;
  }

  const cli = (s: Setup, ...args: string[]) => runCli(["--config", s.cfg, ...args]);
  const rows = async (s: Setup) => JSON.parse((await cli(s, "list", "--json")).stdout) as Row[];
  const row = async (s: Setup, job: string) => {
    const r = (await rows(s)).filter((x) => x.job === job).at(-1);
    assert.ok(r, `a backup of ${job}`);
    return r;
  };
  /** The stored bytes of a version, read with no SSE-C key. */
  const plainGet = async (s: Setup, key: string, versionId: string) => {
    const res = await client(env, env.reader).send(
      new GetObjectCommand({ Bucket: s.bucket, Key: key, VersionId: versionId }),
    );
    return buffer(res.Body as NodeJS.ReadableStream);
  };
  const sameFile = (s: Setup, root: string, rel: string) =>
    assert.equal(
      sha256(readFileSync(join(root, s.data.slice(1), rel))),
      sha256(readFileSync(join(s.data, rel))),
      rel,
    );

  it("stores an age file that `age -d -i` | zstd -d | tar -x restores, and restore/ls/find/verify with an identity", async () => {
    const s = await setup("round");
    const b = await cli(s, "backup");
    assert.equal(b.code, 0, b.stderr);
    const a = await row(s, "a");

    // The object as stored: an age file, readable without any SSE-C key.
    const stored = await plainGet(s, a.key, a.versionId);
    assert.equal(stored.subarray(0, 22).toString(), "age-encryption.org/v1\n");
    assert.equal(sha256(stored), a.sha256, "the catalog's SHA-256 is of the stored age file");
    assert.equal(stored.length, a.size);
    assert.equal(stored.indexOf("passwords.txt"), -1, "no file name in the clear");
    for (const id of [s.ours, s.theirs]) {
      const out = join(s.dir, `by-age-${id === s.ours ? "ours" : "theirs"}`);
      mkdirSync(out);
      const r = spawnSync(
        "sh",
        ["-c", `age -d -i "$1" | zstd -d | tar -x -C "$2"`, "sh", id, out],
        { input: stored, maxBuffer: 64 * MiB },
      );
      assert.equal(r.status, 0, String(r.stderr));
      sameFile(s, out, "log.txt");
      sameFile(s, out, "noise.bin");
      sameFile(s, out, "secret-dir/passwords.txt");
    }

    // The manifest: stored without SSE-C too; what verify needs is readable, the index is not.
    assert.ok(a.manifestKey && a.manifestVersionId);
    const mbody = await plainGet(s, a.manifestKey, a.manifestVersionId);
    const m = JSON.parse(gunzipSync(mbody).toString()) as Record<string, unknown> & {
      archive: { sha256: string; size: number; versionId: string };
      encryption: { scheme: string; recipients: string[] };
      files: unknown[];
      sealedFiles: string;
    };
    assert.equal(m.formatVersion, 2);
    assert.deepEqual(m.files, []);
    assert.equal(m.archive.sha256, a.sha256);
    assert.equal(m.archive.versionId, a.versionId);
    assert.equal(m.encryption.scheme, "age");
    assert.deepEqual(m.encryption.recipients, [recipientOf(s.ours), recipientOf(s.theirs)]);
    assert.doesNotMatch(JSON.stringify(m), /passwords|log\.txt|secret-dir/);
    const index = spawnSync("age", ["-d", "-i", s.theirs], {
      input: Buffer.from(m.sealedFiles, "base64"),
    });
    assert.equal(index.status, 0, String(index.stderr));
    assert.match(gunzipSync(index.stdout).toString(), /secret-dir\/passwords\.txt/);

    // both: SSE-C on the server (a HEAD without the key is refused), age inside.
    const both = await row(s, "both");
    await assert.rejects(
      client(env, env.reader).send(
        new HeadObjectCommand({ Bucket: s.bucket, Key: both.key, VersionId: both.versionId }),
      ),
    );

    for (const [job, id] of [
      ["a", s.ours],
      ["both", s.ours],
    ] as const) {
      const to = join(s.dir, `restored-${job}`);
      const r = await cli(s, "restore", job, "--identity", id, "--to", to);
      assert.equal(r.code, 0, r.stderr);
      sameFile(s, to, "noise.bin");
      sameFile(s, to, "secret-dir/passwords.txt");
    }
    const to = join(s.dir, "restored-theirs");
    const rt = await cli(s, "restore", "a", "--identity", s.theirs, "--to", to);
    assert.equal(rt.code, 0, rt.stderr);
    sameFile(s, to, "log.txt");
    const plain = await cli(s, "restore", "plain", "--to", join(s.dir, "restored-plain"));
    assert.equal(plain.code, 0, "an SSE-C job beside age ones needs no identity");

    const ls = await cli(s, "ls", "a", "--identity", s.theirs);
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, /secret-dir\/passwords\.txt/);
    const find = await cli(s, "find", "passwords.txt", "--job", "a", "--identity", s.ours);
    assert.equal(find.code, 0, find.stderr);
    assert.match(find.stdout, /passwords\.txt/);

    // The host holds no identity: verify, and a deep verify of the stored bytes, still pass.
    const v = await cli(s, "verify", "--json");
    assert.equal(v.code, 0, v.stdout + v.stderr);
    const deep = await cli(s, "verify", "--deep", "--job", "a", "--json");
    assert.equal(deep.code, 0, deep.stdout + deep.stderr);
    const dr = JSON.parse(deep.stdout) as { deepChecked: { ok: boolean }[]; notes: string[] };
    assert.equal(dr.deepChecked[0]?.ok, true);
    assert.ok(dr.notes.some((n) => /age-encrypted and no identity/.test(n)));
    const deepId = await cli(s, "verify", "--deep", "--job", "a", "--identity", s.ours, "--json");
    assert.equal(deepId.code, 0, deepId.stdout + deepId.stderr);
    const di = JSON.parse(deepId.stdout) as {
      deepChecked: { ok: boolean; entries: number }[];
      notes: string[];
    };
    assert.ok((di.deepChecked[0]?.entries ?? 0) >= 4, "the archive was read to its end");
    assert.ok(!di.notes.some((n) => /no identity/.test(n)));
  });

  it("a wrong identity, or none, fails clearly and writes nothing", async () => {
    const s = await setup("wrong");
    assert.equal((await cli(s, "backup", "a")).code, 0);
    const to = join(s.dir, "restored");
    const wrong = await cli(s, "restore", "a", "--identity", s.stranger, "--to", to);
    assert.equal(wrong.code, 3, wrong.stderr);
    assert.match(wrong.stderr, /no identity given matches any of its 2 recipients/);
    assert.match(wrong.stderr, /nothing was restored/);
    assert.deepEqual(existsSync(to) ? readdirSync(to) : [], [], "nothing written");
    const none = await cli(s, "restore", "a", "--to", to);
    assert.equal(none.code, 2, none.stderr);
    assert.match(none.stderr, /is age-encrypted: give --identity FILE/);
    const stdout = await cli(s, "restore", "a", "--identity", s.stranger, "--stdout");
    assert.equal(stdout.code, 3);
    assert.equal(stdout.stdout, "", "no byte on stdout");
    const ls = await cli(s, "ls", "a", "--identity", s.stranger);
    assert.equal(ls.code, 3, ls.stderr);
    assert.match(ls.stderr, /its file index.*no identity given matches/);
    const lsNone = await cli(s, "ls", "a");
    assert.equal(lsNone.code, 2);
    assert.match(lsNone.stderr, /give --identity FILE/);
    const notAnIdentity = join(s.dir, "garbage.txt");
    writeFileSync(notAnIdentity, "AGE-SECRET-KEY-1NOTAKEY\n");
    const bad = await cli(s, "restore", "a", "--identity", notAnIdentity, "--to", to);
    assert.equal(bad.code, 3);
    assert.match(bad.stderr, /garbage\.txt: line 1 is not an age X25519 identity/);
    assert.doesNotMatch(bad.stderr, /NOTAKEY/, "an identity line is never quoted");
  });

  it("no request of an age-only job carries an SSE-C key: a bucket that refuses SSE-C (403, as AWS) takes its backups", async () => {
    const s = await setup("blocked", { viaProxy: true });
    proxy.clear();
    proxy.log.length = 0;
    // AWS on a bucket whose encryption configuration blocks SSE-C answers writes so.
    proxy.fault({
      match: (r) => r.sseC === true && (r.method === "PUT" || r.method === "POST"),
      times: 1000,
      action: {
        kind: "status",
        status: 403,
        code: "AccessDenied",
        message:
          "Requests specifying Server Side Encryption with Customer provided keys must be made over a secure connection.",
      },
    });
    try {
      const start = proxy.log.length;
      const a = await cli(s, "backup", "a");
      assert.equal(a.code, 0, a.stderr);
      const mine = proxy.log.slice(start);
      assert.ok(
        mine.some((r) => r.method === "PUT" && r.path.includes("/a/")),
        "the upload went through the proxy",
      );
      assert.deepEqual(
        mine.filter((r) => r.sseC).map((r) => `${r.method} ${r.path}`),
        [],
        "no SSE-C key in any request",
      );
      const plain = await cli(s, "backup", "plain");
      assert.equal(plain.code, 3, "the SSE-C job is refused as the bucket says");
      assert.match(plain.stderr + plain.stdout, /AccessDenied|403/);
      const to = join(s.dir, "restored");
      const r = await cli(s, "restore", "a", "--identity", s.ours, "--to", to);
      assert.equal(r.code, 0, r.stderr);
      sameFile(s, to, "secret-dir/passwords.txt");
      assert.deepEqual(
        proxy.log.slice(start).filter((x) => x.sseC && x.path.includes("/a/")),
        [],
        "nor in the restore's",
      );
    } finally {
      proxy.clear();
    }
  });

  it("doctor: a bucket that refuses SSE-C fails an SSE-C target with the way out, and an age-only one sends no SSE-C key at all", async () => {
    const s = await setup("doctor", { viaProxy: true });
    proxy.clear();
    proxy.fault({
      match: (r) => r.sseC === true && r.method === "PUT",
      times: 1000,
      action: { kind: "status", status: 403, code: "AccessDenied", message: "SSE-C is blocked" },
    });
    const doctor = async (cfg: string) => {
      const r = await runCli(["--config", cfg, "doctor", "--json"]);
      const [report] = JSON.parse(r.stdout || "[]") as {
        checks: { name: string; status: string; message: string; fix?: string }[];
      }[];
      assert.ok(report, r.stderr);
      return { r, check: (name: string) => report.checks.find((c) => c.name === name) };
    };
    try {
      const mixed = await doctor(s.cfg);
      assert.equal(mixed.r.code, 4);
      const sse = mixed.check("sse-c");
      assert.equal(sse?.status, "FAIL");
      assert.match(sse?.message ?? "", /refuses SSE-C uploads/);
      assert.match(sse?.fix ?? "", /scheme: age/);
      assert.match(sse?.fix ?? "", /BlockedEncryptionTypes/);

      const ageOnly = join(s.dir, "age-only.yaml");
      writeFileSync(
        ageOnly,
        readFileSync(s.cfg, "utf8").replace(/\n {2}- name: both[\s\S]*$/, "\n"),
      );
      const start = proxy.log.length;
      const only = await doctor(ageOnly);
      assert.equal(only.check("sse-c")?.status, "OK");
      assert.match(only.check("sse-c")?.message ?? "", /not used/);
      assert.equal(only.check("writer upload")?.status, "OK");
      assert.equal(only.check("reader read")?.status, "OK");
      assert.deepEqual(
        proxy.log.slice(start).filter((x) => x.sseC),
        [],
        "no SSE-C key in any doctor request",
      );
    } finally {
      proxy.clear();
    }
  });

  it("bytes altered in flight fail the restore on their age chunk, and nothing of it is trusted", async () => {
    const s = await setup("tamper", { viaProxy: true, bigMiB: 1 });
    assert.equal((await cli(s, "backup", "a")).code, 0);
    const a = await row(s, "a");
    proxy.clear();
    proxy.fault({
      match: isGetObject(a.key),
      times: 100,
      action: { kind: "corrupt", atByte: 300_000 },
    });
    try {
      const r = await cli(s, "restore", "a", "--identity", s.ours, "--stdout");
      assert.equal(r.code, 3, r.stderr);
      assert.match(r.stderr, /age payload chunk \d+ does not authenticate/);
    } finally {
      proxy.clear();
    }
  });

  it("a reset part upload and a stalled download of an age backup are survived", async () => {
    const s = await setup("fault", { viaProxy: true, bigMiB: 12 });
    proxy.clear();
    const reset = proxy.fault({
      match: isUploadPart(2),
      action: { kind: "reset", afterBytes: 1 * MiB },
    });
    let a: Row;
    try {
      const b = await cli(s, "backup", "a");
      assert.equal(b.code, 0, b.stderr);
      assert.equal(reset.hits, 1, "part 2 was reset once and sent again");
      a = await row(s, "a");
      assert.ok(a.size > 10 * MiB);
    } finally {
      proxy.clear();
    }
    const stall = proxy.fault({
      match: isGetObject(a.key),
      action: { kind: "stall", afterBytes: 3 * MiB },
    });
    try {
      const cfg = readFileSync(s.cfg, "utf8").replace(
        "    credentials:",
        "    idleTimeoutSeconds: 2\n    credentials:",
      );
      writeFileSync(s.cfg, cfg);
      const to = join(s.dir, "restored");
      const r = await cli(s, "restore", "a", "--identity", s.theirs, "--to", to);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(stall.hits, 1);
      assert.match(r.stdout + r.stderr, /resuming from the last byte received/);
      sameFile(s, to, "noise.bin");
    } finally {
      proxy.clear();
    }
    const stored = await plainGet(s, a.key, a.versionId);
    const d = spawnSync("sh", ["-c", `age -d -i "$1" | zstd -d | tar -t`, "sh", s.ours], {
      input: stored,
      maxBuffer: 64 * MiB,
    });
    assert.equal(d.status, 0, String(d.stderr));
  });

  it("kill -9 right after an age upload completes: recovery records it as age (no SSE-C key), and only a deep check with an identity settles it", async () => {
    const s = await setup("crash", { bigMiB: 12 });
    const admin = openTarget(rgwTarget(env, s.bucket)).admin as ObjectStore;
    const child = spawn(process.execPath, [CLI, "--config", s.cfg, "backup", "a"], {
      env: {
        ...process.env,
        IMMUTD_CONFIG: "",
        ...holdEnv([
          {
            command: "CompleteMultipartUploadCommand",
            when: "after",
            gate: join(s.dir, "never"),
          },
        ]),
      },
      stdio: "ignore",
    });
    const exited = new Promise((r) => child.on("exit", r));
    let version: { key: string; versionId: string } | undefined;
    for (let i = 0; i < 1200 && !version; i++) {
      version = (await admin.listVersions("age-test/a/")).find(
        (v) => !v.deleteMarker && !v.key.endsWith(".gz"),
      );
      if (!version) await new Promise((r) => setTimeout(r, 100));
    }
    child.kill("SIGKILL");
    await exited;
    assert.ok(version, "the upload completed");
    const again = await cli(s, "backup", "a");
    assert.equal(again.code, 0, again.stderr);
    const db = new Database(join(s.dir, "catalog.db"), { readonly: true });
    const rec = db
      .prepare(
        "SELECT status, key_derivation AS kd, length(sse_key) AS n FROM backups WHERE version_id = ?",
      )
      .get(version.versionId) as { status: string; kd: string; n: number } | undefined;
    db.close();
    assert.deepEqual(rec, { status: "unverified", kd: "age-encryption.org/v1", n: 0 });
    const without = await cli(s, "verify", "--deep", "--job", "a", "--json");
    assert.equal(without.code, 4);
    assert.match(without.stdout, /only reading it with an identity settles it/);
    const withId = await cli(s, "verify", "--deep", "--job", "a", "--identity", s.theirs);
    assert.equal(withId.code, 0, withId.stdout + withId.stderr);
    const settled = (await rows(s)).find((r) => r.versionId === version?.versionId) as
      | (Row & { status: string })
      | undefined;
    assert.equal(settled?.status, "ok");
    const to = join(s.dir, "restored");
    const r = await cli(
      s,
      "restore",
      "a",
      "--id",
      String(settled?.id),
      "--identity",
      s.ours,
      "--to",
      to,
    );
    assert.equal(r.code, 0, r.stderr);
    sameFile(s, to, "noise.bin");
  });

  it("switching a target from SSE-C to age: old backups restore as SSE-C, new ones need an identity; without the catalog, rebuild and --from-bucket read both", async () => {
    const s = await setup("switch");
    const sseOnly = readFileSync(s.cfg, "utf8");
    writeFileSync(s.cfg, sseOnly.replace(/ {4}encryption: \{ scheme: age, [^\n]*\n/, ""));
    assert.equal((await cli(s, "backup", "a")).code, 0);
    const old = await row(s, "a");
    writeFileSync(s.cfg, sseOnly);
    assert.equal((await cli(s, "backup", "a")).code, 0);
    const fresh = await row(s, "a");
    assert.notEqual(old.id, fresh.id);
    const oldTo = join(s.dir, "old");
    const o = await cli(s, "restore", "a", "--id", String(old.id), "--to", oldTo);
    assert.equal(o.code, 0, `an SSE-C backup needs no identity: ${o.stderr}`);
    sameFile(s, oldTo, "log.txt");
    const n = await cli(s, "restore", "a", "--id", String(fresh.id), "--to", join(s.dir, "new"));
    assert.equal(n.code, 2);
    const v = await cli(s, "verify", "--job", "a");
    assert.equal(v.code, 0, v.stdout);

    // The catalog is lost: rebuild believes both manifests, and the bucket alone restores.
    const rebuilt = join(s.dir, "rebuilt.yaml");
    writeFileSync(rebuilt, sseOnly.replace(`${s.dir}/catalog.db`, `${s.dir}/rebuilt.db`));
    const rb = await runCli(["--config", rebuilt, "catalog", "rebuild", "--json"]);
    assert.equal(rb.code, 0, rb.stdout + rb.stderr);
    const again = JSON.parse(
      (await runCli(["--config", rebuilt, "list", "--json", "--job", "a"])).stdout,
    ) as Row[];
    assert.deepEqual(
      again.map((r) => [r.versionId, r.sha256]),
      [
        [old.versionId, old.sha256],
        [fresh.versionId, fresh.sha256],
      ],
    );
    const fromCatalog = join(s.dir, "from-rebuilt");
    const rr = await runCli([
      "--config",
      rebuilt,
      "restore",
      "a",
      "--identity",
      s.theirs,
      "--to",
      fromCatalog,
    ]);
    assert.equal(rr.code, 0, rr.stderr);
    sameFile(s, fromCatalog, "noise.bin");
    const fb = join(s.dir, "from-bucket");
    const r = await cli(s, "restore", "a", "--from-bucket", "--identity", s.ours, "--to", fb);
    assert.equal(r.code, 0, r.stderr);
    sameFile(s, fb, "secret-dir/passwords.txt");
    const ls = await runCli([
      "--config",
      rebuilt,
      "ls",
      "a",
      "--host",
      "age-test",
      "--identity",
      s.ours,
    ]);
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, /passwords\.txt/);

    // --from-bucket decrypts each backup as its manifest says, not as configured now:
    // the old SSE-C one needs no identity although the job is age now...
    const atOld = join(s.dir, "at-old");
    const ao = await cli(s, "restore", "a", "--from-bucket", "--at", old.createdAt, "--to", atOld);
    assert.equal(ao.code, 0, `an SSE-C backup needs no identity: ${ao.stderr}`);
    sameFile(s, atOld, "log.txt");
    // ...and after switching back to SSE-C, the age one is still opened with age.
    writeFileSync(s.cfg, sseOnly.replace(/ {4}encryption: \{ scheme: age, [^\n]*\n/, ""));
    const back = join(s.dir, "switched-back");
    const sb = await cli(s, "restore", "a", "--from-bucket", "--identity", s.ours, "--to", back);
    assert.equal(sb.code, 0, sb.stderr);
    sameFile(s, back, "secret-dir/passwords.txt");
  });

  it("catalog rebuild does not believe an age backup sealed to recipients the config does not name (forged with the writer credential)", async () => {
    const s = await setup("forged");
    const cfg = readFileSync(s.cfg, "utf8");
    const rS = recipientOf(s.stranger);
    // The attacker holds the writer credential and the target's settings, not the master key's use:
    // an age backup needs no SSE-C key, so he can make one with a config of his own.
    const forger = join(s.dir, "forger.yaml");
    writeFileSync(forger, cfg.replace(/recipients: \[age1[^\]]*\] \}/, `recipients: [${rS}] }`));
    assert.equal((await runCli(["--config", forger, "backup", "a"])).code, 0);
    const rebuild = async (text: string, db: string) => {
      const c = join(s.dir, `${db}.yaml`);
      writeFileSync(c, text.replace(`${s.dir}/catalog.db`, `${s.dir}/${db}.db`));
      const r = await runCli(["--config", c, "catalog", "rebuild", "--json"]);
      const listed = JSON.parse((await runCli(["--config", c, "list", "--json"])).stdout) as Row[];
      return { r, listed };
    };
    // The victim's target is age to rA and rB: the one to the stranger is refused by name.
    const mine = await rebuild(cfg, "mine");
    assert.notEqual(mine.r.code, 0, "a manifest not believed fails the rebuild");
    assert.match(
      mine.r.stdout + mine.r.stderr,
      new RegExp(`${rS}, not among the configured recipients`),
    );
    assert.deepEqual(mine.listed, []);
    // An SSE-C-only config (no recipients anywhere) believes no age manifest at all.
    const sseOnly = cfg
      .replace(/ {4}encryption: \{ scheme: age, [^\n]*\n/, "")
      .replace(/ {4}encryption: \{ scheme: both, [^\n]*\n/, "");
    assert.doesNotMatch(sseOnly, /age1/);
    const none = await rebuild(sseOnly, "none");
    assert.notEqual(none.r.code, 0);
    assert.match(none.r.stdout + none.r.stderr, /no age recipient is configured for this target/);
    assert.deepEqual(none.listed, []);
    // Its own recipients configured, the same backup is believed (the check is not blind).
    const theirs = await rebuild(readFileSync(forger, "utf8"), "theirs");
    assert.equal(theirs.r.code, 0, theirs.r.stdout + theirs.r.stderr);
    assert.equal(theirs.listed.length, 1);
  });

  for (const mode of ["exit", "throw"] as const) {
    it(`an age payload worker that ${mode === "exit" ? "exits" : "throws"} mid-upload fails the backup: no version and no open upload remain`, async () => {
      const bucket = uniqueBucket(`agewk${mode}`);
      await createLockedBucket(env, bucket, 1);
      const dir = mkdtempSync(join(tmpdir(), "immutd-age-worker-"));
      writeFileSync(join(dir, "noise.bin"), randomBytes(14 * MiB));
      const target = openTarget(rgwTarget(env, bucket));
      const key = "fault/job/archive.tar";
      let uploadId: string | undefined;
      // The 12th 1 MiB batch: two 5 MiB parts are on the server by then.
      process.env.IMMUTD_TEST_AGE_FAULT = `${mode}:12`;
      try {
        const hash = new HashingCounter();
        const g = spawnSync("age-keygen", [], { encoding: "utf8" });
        const recipient = /age1[0-9a-z]+/.exec(g.stdout + g.stderr)?.[0];
        assert.ok(recipient);
        await assert.rejects(
          runStages({
            archive: createArchive({ paths: [dir] }),
            between: [new AgeEncrypt([parseRecipient(recipient)], { worker: FAULTY_AGE })],
            hash,
            sink: s3Sink(target.writer, {
              key,
              sseKey: undefined,
              onUploadId: (id) => {
                uploadId = id;
              },
            }),
            cancelled: () => new Error("cancelled"),
          }),
          /age encryption worker (exited \(code 7\)|failed \(injected crash\)).*not stored/,
        );
        assert.ok(uploadId, "the multipart upload had begun");
        assert.ok(
          hash.bytes >= 5 * MiB,
          `parts were sent before the failure (${hash.bytes} bytes)`,
        );
        const admin = target.admin;
        assert.ok(admin);
        assert.deepEqual(await admin.listVersions("fault/"), [], "no version of the cut archive");
        assert.deepEqual(await admin.listUploads("fault/"), [], "the upload was aborted");
      } finally {
        delete process.env.IMMUTD_TEST_AGE_FAULT;
        closeTarget(target);
      }
    });
  }

  /** The setup's config with job a alone (age to rA, rB) and no master key at all. */
  function ageOnly(s: Setup): string {
    const text = readFileSync(s.cfg, "utf8")
      .replace(/^masterKeyFile: .*\n/m, "")
      .replace(/ {2}- name: both\n[\s\S]*$/, "");
    assert.doesNotMatch(text, /masterKey|sse-c|both/);
    return text;
  }
  type Listed = Row & { files: number | null };
  const rebuildInto = async (s: Setup, text: string, db: string, ...args: string[]) => {
    const c = join(s.dir, `${db}.yaml`);
    writeFileSync(c, text.replace(`${s.dir}/catalog.db`, `${s.dir}/${db}.db`));
    const r = await runCli(["--config", c, "catalog", "rebuild", "--json", ...args]);
    const listed = JSON.parse((await runCli(["--config", c, "list", "--json"])).stdout) as Listed[];
    return { r, listed };
  };

  it("an age-only config without any master key backs up, verifies, restores and rebuilds (with the file count in the clear)", async () => {
    const s = await setup("nokey");
    writeFileSync(s.cfg, ageOnly(s));
    const b = await cli(s, "backup", "a");
    assert.equal(b.code, 0, b.stderr);
    const [made] = (await rows(s)) as Listed[];
    assert.ok(made?.manifestKey && made.manifestVersionId);
    assert.equal(made.files, 3, "log.txt, noise.bin, passwords.txt");
    // The manifest tells the count, and still no name.
    const doc = JSON.parse(
      gunzipSync(await plainGet(s, made.manifestKey, made.manifestVersionId)).toString("utf8"),
    );
    assert.equal(doc.fileCount, 3);
    assert.deepEqual(doc.files, []);
    assert.ok(!JSON.stringify(doc).includes("passwords"));
    const v = await cli(s, "verify", "--job", "a");
    assert.equal(v.code, 0, v.stdout + v.stderr);
    const to = join(s.dir, "out");
    const r = await cli(s, "restore", "a", "--identity", s.ours, "--to", to);
    assert.equal(r.code, 0, r.stderr);
    sameFile(s, to, "secret-dir/passwords.txt");
    // Browsing and the bucket-side commands need no master key either.
    const ls = await cli(s, "ls", "a", "--identity", s.ours);
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, /secret-dir\/passwords\.txt/);
    const find = await cli(s, "find", "passwords.txt", "--job", "a", "--identity", s.ours);
    assert.equal(find.code, 0, find.stderr);
    assert.match(find.stdout, /passwords\.txt/);
    const fb = join(s.dir, "from-bucket");
    const rfb = await cli(s, "restore", "a", "--from-bucket", "--identity", s.ours, "--to", fb);
    assert.equal(rfb.code, 0, rfb.stderr);
    sameFile(s, fb, "secret-dir/passwords.txt");
    const lb = await cli(s, "list", "--from-bucket", "--json");
    assert.equal(lb.code, 0, lb.stderr);
    assert.ok(lb.stdout.includes(made.versionId), lb.stdout);
    // audit may find things to report about the test bucket (exit 4), but never fails on the key.
    const au = await cli(s, "audit");
    assert.ok(au.code === 0 || au.code === 4, `audit exit ${au.code}: ${au.stdout}${au.stderr}`);
    assert.doesNotMatch(au.stdout + au.stderr, /masterKey|master key/i);
    // Without the catalog: rebuild records the clear count, no identity needed.
    const rb = await rebuildInto(s, ageOnly(s), "rebuilt");
    assert.equal(rb.r.code, 0, rb.r.stdout + rb.r.stderr);
    assert.deepEqual(
      rb.listed.map((x) => [x.versionId, x.files]),
      [[made.versionId, 3]],
    );
    // Adding an SSE-C job without the master key is refused, naming that job.
    const bad = await runCli([
      "--config",
      (() => {
        const c = join(s.dir, "bad.yaml");
        writeFileSync(
          c,
          `${ageOnly(s)}  - name: plain\n    target: local\n    paths: [${s.data}]\n    encryption: { scheme: sse-c }\n`,
        );
        return c;
      })(),
      "backup",
      "plain",
    ]);
    assert.equal(bad.code, 78, bad.stderr);
    assert.match(
      bad.stderr,
      /missing masterKey \(or masterKeyFile\).*job "plain" \(scheme sse-c\)/,
    );
  });

  it("catalog rebuild of an older age manifest (no clear count): unknown without an identity, counted with one", async () => {
    const s = await setup("oldcount");
    writeFileSync(s.cfg, ageOnly(s));
    assert.equal((await cli(s, "backup", "a")).code, 0);
    const [made] = await rows(s);
    assert.ok(made?.manifestKey && made.manifestVersionId);
    // A manifest as immutd wrote format 2 before the count: the same backup, an hour
    // earlier, stored again with the writer credential (as the older immutd would have).
    const doc = JSON.parse(
      gunzipSync(await plainGet(s, made.manifestKey, made.manifestVersionId)).toString("utf8"),
    );
    delete doc.fileCount;
    const at = new Date(Math.floor(Date.parse(made.createdAt) / 1000) * 1000 - 3600_000);
    const key = objectKey({ prefix: "", host: "age-test", job: "a", at, compression: "zstd" });
    const w = client(env, env.writer);
    const put = await w.send(
      new PutObjectCommand({
        Bucket: s.bucket,
        Key: key,
        Body: await plainGet(s, made.key, made.versionId),
      }),
    );
    assert.ok(put.VersionId);
    doc.archive = { ...doc.archive, key, versionId: put.VersionId };
    doc.createdAt = at.toISOString();
    await w.send(
      new PutObjectCommand({
        Bucket: s.bucket,
        Key: manifestKey(key),
        Body: gzipSync(JSON.stringify(doc)),
      }),
    );
    const blind = await rebuildInto(s, ageOnly(s), "blind");
    assert.equal(blind.r.code, 0, blind.r.stdout + blind.r.stderr);
    assert.deepEqual(
      blind.listed.map((x) => [x.key, x.files]),
      [
        [key, null],
        [made.key, 3],
      ],
      "unknown, not 0",
    );
    const seen = await rebuildInto(s, ageOnly(s), "seen", "--identity", s.theirs);
    assert.equal(seen.r.code, 0, seen.r.stdout + seen.r.stderr);
    assert.deepEqual(
      seen.listed.map((x) => [x.key, x.files]),
      [
        [key, 3],
        [made.key, 3],
      ],
    );
    // The wrong identity leaves it unknown, and the rebuild still succeeds.
    const wrong = await rebuildInto(s, ageOnly(s), "wrong", "--identity", s.stranger);
    assert.equal(wrong.r.code, 0, wrong.r.stdout + wrong.r.stderr);
    assert.equal(wrong.listed.find((x) => x.key === key)?.files, null);
  });

  it("encryption.formerRecipients: a job switched back to sse-c keeps its age backups through rebuild; a forged one to another recipient is still refused", async () => {
    const s = await setup("former");
    writeFileSync(s.cfg, ageOnly(s));
    assert.equal((await cli(s, "backup", "a")).code, 0);
    const [aged] = await rows(s);
    assert.ok(aged);
    const rA = recipientOf(s.ours);
    const rB = recipientOf(s.theirs);
    const rS = recipientOf(s.stranger);
    // The attacker (writer credential) adds an age backup of his own to the stranger's key.
    const forger = join(s.dir, "forger.yaml");
    writeFileSync(
      forger,
      ageOnly(s).replace(/recipients: \[age1[^\]]*\] \}/, `recipients: [${rS}] }`),
    );
    assert.equal((await runCli(["--config", forger, "backup", "a"])).code, 0);
    // Back to SSE-C: the target's encryption names only the former recipients.
    const sse = (extra: string) =>
      readFileSync(s.cfg, "utf8")
        .replace(/encryption: \{ scheme: age, [^\n]*\n/, `encryption: { scheme: sse-c${extra} }\n`)
        .replace(/^catalog: .*\n/m, (l) => `${l}masterKeyFile: ${s.dir}/master.key\n`);
    const without = await rebuildInto(s, sse(""), "without");
    assert.equal(without.r.code, 4, without.r.stdout + without.r.stderr);
    assert.match(
      without.r.stdout + without.r.stderr,
      /no age recipient is configured for this target/,
    );
    const withFormer = await rebuildInto(s, sse(`, formerRecipients: [${rA}, ${rB}]`), "former");
    assert.equal(withFormer.r.code, 4, "the forged one is still not believed");
    assert.match(
      withFormer.r.stdout + withFormer.r.stderr,
      new RegExp(`${rS}, not among the configured recipients`),
    );
    assert.deepEqual(
      withFormer.listed.map((x) => x.versionId),
      [aged.versionId],
    );
    // Former recipients are never encrypted to: a new backup is SSE-C.
    const c = join(s.dir, "former.yaml");
    const nb = await runCli(["--config", c, "backup", "a"]);
    assert.equal(nb.code, 0, nb.stderr);
    const latest = (
      JSON.parse((await runCli(["--config", c, "list", "--json"])).stdout) as Row[]
    ).at(-1);
    assert.ok(latest && latest.versionId !== aged.versionId);
    const stored = await plainGet(s, latest.key, latest.versionId).catch((e: Error) => e);
    assert.ok(stored instanceof Error, "an SSE-C object cannot be read without its key");
    // And the restored old age backup opens with the former identity.
    const to = join(s.dir, "old");
    const r = await runCli([
      "--config",
      c,
      "restore",
      "a",
      "--id",
      String(withFormer.listed[0]?.id),
      "--identity",
      s.ours,
      "--to",
      to,
    ]);
    assert.equal(r.code, 0, r.stderr);
    sameFile(s, to, "log.txt");
  });

  it("a bucket that refuses every SSE-C request (403): rebuild, ls --host and list --from-bucket of an age-only target send none and succeed", async () => {
    const s = await setup("blockread", { viaProxy: true });
    proxy.clear();
    proxy.fault({
      match: (r) => r.sseC === true,
      times: 100000,
      action: { kind: "status", status: 403, code: "AccessDenied", message: "SSE-C is blocked" },
    });
    try {
      const start = proxy.log.length;
      const a = await cli(s, "backup", "a");
      assert.equal(a.code, 0, a.stderr);
      const made = await row(s, "a");
      const rebuilt = join(s.dir, "rebuilt.yaml");
      writeFileSync(
        rebuilt,
        readFileSync(s.cfg, "utf8").replace(`${s.dir}/catalog.db`, `${s.dir}/rebuilt.db`),
      );
      const rb = await runCli(["--config", rebuilt, "catalog", "rebuild", "--json"]);
      assert.equal(rb.code, 0, rb.stdout + rb.stderr);
      const again = JSON.parse(
        (await runCli(["--config", rebuilt, "list", "--json", "--job", "a"])).stdout,
      ) as Row[];
      assert.deepEqual(
        again.map((r) => [r.versionId, r.sha256]),
        [[made.versionId, made.sha256]],
      );
      const ls = await runCli([
        "--config",
        rebuilt,
        "ls",
        "a",
        "--host",
        "age-test",
        "--identity",
        s.ours,
      ]);
      assert.equal(ls.code, 0, ls.stderr);
      assert.match(ls.stdout, /passwords\.txt/);
      const lb = await runCli(["--config", rebuilt, "list", "--from-bucket", "--json"]);
      assert.equal(lb.code, 0, lb.stderr);
      assert.match(lb.stdout, new RegExp(made.versionId));
      const seen = proxy.log.slice(start);
      assert.ok(
        seen.some((r) => r.path.includes(".manifest") || r.path.includes("/a/")),
        "through the proxy",
      );
      assert.deepEqual(
        seen.filter((r) => r.sseC).map((r) => `${r.method} ${r.path}`),
        [],
        "no SSE-C key in any request",
      );
    } finally {
      proxy.clear();
    }
  });
});
