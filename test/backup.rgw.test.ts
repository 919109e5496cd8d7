/**
 * The backup pipeline against the real Ceph RGW (scripts/s3-test-server.sh):
 * Object Lock enforcement, SSE-C, checksums and aborts are the server's to
 * prove, so these tests run only against it.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough, type Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand } from "@aws-sdk/client-s3";
import { Catalog } from "../src/catalog/catalog.js";
import type { Config, JobConfig, TargetConfig } from "../src/config/config.js";
import { Secret } from "../src/config/secret.js";
import { runBackup } from "../src/flows/backup.js";
import { createLogger } from "../src/log.js";
import { deriveSseKey } from "../src/repo/keys.js";
import { openTarget } from "../src/store/s3.js";
import {
  client,
  createLockedBucket,
  rgwTarget,
  type S3Env,
  s3env,
  uniqueBucket,
} from "./support/s3env.js";
import { fullConfig, jobConfig } from "./support/target.js";

const MiB = 1024 * 1024;

/** A tree with every kind of entry and more than three 5 MiB parts of incompressible data. */
function makeFixture(root: string): void {
  mkdirSync(join(root, "data", "nested", "deeper"), { recursive: true });
  mkdirSync(join(root, "data", "empty"));
  writeFileSync(join(root, "data", "big.bin"), randomBytes(17 * MiB));
  writeFileSync(join(root, "data", "nested", "notes.txt"), "hello\n".repeat(1000));
  writeFileSync(join(root, "data", "nested", "deeper", "Grüße.txt"), "unicode\n");
  writeFileSync(join(root, "data", `${"long-name-".repeat(15)}.txt`), "long\n");
  symlinkSync("nested/notes.txt", join(root, "data", "link-to-notes"));
}

/** What `tar -t` must list for the tree: absolute paths without the leading "/", directories with "/". */
function expectedListing(dir: string): string[] {
  const out: string[] = [`${dir.slice(1)}/`];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    const st = lstatSync(p);
    if (st.isDirectory()) out.push(...expectedListing(p));
    else out.push(p.slice(1));
  }
  return out.sort();
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

describe("backup against Ceph RGW", () => {
  let env: S3Env;
  const work = mkdtempSync(join(tmpdir(), "immutd-rgw-"));
  const fixture = join(work, "fixture");
  const logLines: string[] = [];
  const logStream = new PassThrough();
  logStream.on("data", (d: Buffer) => logLines.push(d.toString()));
  const log = createLogger({ level: "debug", destination: logStream });
  const masterKey = randomBytes(32);
  let catalog: Catalog;

  const config = (tc: TargetConfig, job: JobConfig): Config =>
    fullConfig({
      catalog: join(work, "catalog.db"),
      masterKey: new Secret(masterKey),
      targets: { [tc.name]: tc },
      jobs: [job],
    });
  const job = (over: Partial<JobConfig> = {}): JobConfig =>
    jobConfig({
      name: "data",
      target: "rgw",
      paths: [join(fixture, "data")],
      exclude: [],
      compression: "gzip",
      ...over,
    });
  const backup = (tc: TargetConfig, j: JobConfig, signal?: AbortSignal) =>
    runBackup(j, {
      config: config(tc, j),
      catalog,
      target: openTarget(tc),
      targetConfig: tc,
      log,
      ...(signal ? { signal } : {}),
    });

  before(() => {
    env = s3env();
    mkdirSync(fixture);
    makeFixture(fixture);
    catalog = Catalog.open(join(work, "catalog.db"));
  });
  after(() => catalog?.close());

  it("stores one locked, encrypted version whose bytes match the catalog and the tree", async () => {
    const bucket = uniqueBucket("bk");
    await createLockedBucket(env, bucket, 1);
    const tc = rgwTarget(env, bucket);
    const started = Date.now();
    const r = await backup(tc, job());
    assert.equal(r.status, "succeeded", r.error);
    assert.ok(
      r.bytes > 3 * 5 * MiB,
      `archive of ${r.bytes} bytes spans more than three 5 MiB parts`,
    );

    // exactly one version under the key (and its manifest beside it), in COMPLIANCE mode until ~ upload + 1 day
    const versions = await openTarget(tc).admin?.listVersions("");
    const row = catalog.backup(r.backupId as number);
    assert.ok(row);
    assert.deepEqual(
      versions?.map((v) => [v.key, v.versionId, v.deleteMarker]),
      [
        [r.key, r.versionId, false],
        [`${r.key}.manifest.json.gz`, row.manifestVersionId, false],
      ],
    );
    assert.equal(row.retentionMode, "COMPLIANCE");
    const until = Date.parse(row.retainUntil as string);
    const dayMs = 24 * 3600 * 1000;
    assert.ok(
      Math.abs(until - (started + dayMs)) < 5 * 60 * 1000,
      `retain-until ${row.retainUntil} ≈ upload + 1 day`,
    );
    assert.equal(row.size, r.bytes);
    assert.match(r.key, /^testhost\/data\/\d{4}-\d{2}-\d{2}T\d{6}Z-[0-9a-f]{8}\.tar\.gz$/);

    const reader = client(env, env.reader);
    // without the key the server refuses to hand out the data
    await assert.rejects(
      reader.send(new GetObjectCommand({ Bucket: bucket, Key: r.key, VersionId: r.versionId })),
    );
    // with the derived key (master key + bucket + object key: no catalog needed) the bytes match
    const sseKey = deriveSseKey(masterKey, bucket, r.key);
    assert.deepEqual(catalog.backupKey(r.backupId as number), sseKey);
    const res = await reader.send(
      new GetObjectCommand({
        Bucket: bucket,
        Key: r.key,
        VersionId: r.versionId,
        SSECustomerAlgorithm: "AES256",
        SSECustomerKey: sseKey.toString("base64"),
      }),
    );
    const bytes = await readAll(res.Body as Readable);
    assert.equal(createHash("sha256").update(bytes).digest("hex"), row.sha256);
    const listing = execFileSync("tar", ["-tzf", "-"], { input: bytes, maxBuffer: 64 * MiB })
      .toString()
      .split("\n")
      .filter(Boolean)
      .sort();
    assert.deepEqual(listing, expectedListing(join(fixture, "data")));

    // nobody can delete the locked version: not the writer, not the reader, not the main user
    for (const [who, cred] of [
      ["writer", env.writer],
      ["reader", env.reader],
      ["main", env.main],
    ] as const) {
      await assert.rejects(
        client(env, cred).send(
          new DeleteObjectCommand({
            Bucket: bucket,
            Key: r.key,
            VersionId: r.versionId,
            BypassGovernanceRetention: true,
          }),
        ),
        (e: Error) => e.name === "AccessDenied",
        `${who} must not delete a locked version`,
      );
    }
    const still = await openTarget(tc).admin?.listVersions("");
    assert.equal(still?.length, 2, "the archive and its manifest");

    // no key material or secret in any log line
    const logs = logLines.join("");
    for (const secret of [
      sseKey.toString("base64"),
      sseKey.toString("hex"),
      masterKey.toString("hex"),
      env.writer.secretAccessKey,
      env.reader.secretAccessKey,
    ]) {
      assert.ok(!logs.includes(secret), "a secret reached the log");
    }
    assert.match(logs, /"msg":"backup succeeded"/);
  });

  it("the server verifies the Content-MD5 immutd sends with every part", async () => {
    // If RGW ignored the header, md5 mode would protect nothing: prove a wrong one is refused.
    const bucket = uniqueBucket("md5");
    await createLockedBucket(env, bucket, 1);
    const body = randomBytes(1000);
    const wrong = createHash("md5").update("something else").digest("base64");
    await assert.rejects(
      client(env, env.writer).send(
        new PutObjectCommand({ Bucket: bucket, Key: "x", Body: body, ContentMD5: wrong }),
      ),
      (e: Error) => e.name === "BadDigest",
    );
  });

  it("refuses a bucket without Object Lock and uploads nothing", async () => {
    const bucket = uniqueBucket("nolock");
    await createLockedBucket(env, bucket, 1, false);
    const tc = rgwTarget(env, bucket);
    const r = await backup(tc, job());
    assert.equal(r.status, "failed");
    assert.match(r.error ?? "", /does not have Object Lock enabled.*nothing was uploaded/);
    const admin = openTarget(tc).admin;
    assert.deepEqual(await admin?.listVersions(""), []);
    assert.deepEqual(await admin?.listUploads(""), []);
    assert.equal(catalog.run(r.runId)?.status, "failed");
    assert.match(catalog.run(r.runId)?.error ?? "", /Object Lock/);
  });

  it("an upload cancelled mid-way leaves no incomplete multipart upload and records the run interrupted", async () => {
    const bucket = uniqueBucket("cancel");
    await createLockedBucket(env, bucket, 1);
    const tc = rgwTarget(env, bucket);
    const controller = new AbortController();
    const j = job({ compression: "none" });
    const t = openTarget(tc);
    const running = runBackup(j, {
      config: config(tc, j),
      catalog,
      target: t,
      targetConfig: tc,
      log,
      signal: controller.signal,
      onProgress: (p) => {
        if (p.bytes > 11 * MiB && !controller.signal.aborted)
          controller.abort(new Error("test cancels"));
      },
    });
    const r = await running;
    assert.equal(r.status, "interrupted");
    assert.equal(catalog.run(r.runId)?.status, "interrupted");
    assert.ok(catalog.run(r.runId)?.uploadId, "the multipart upload had started");
    const admin = openTarget(tc).admin;
    assert.deepEqual(await admin?.listUploads(""), [], "no incomplete multipart upload left");
    assert.deepEqual(await admin?.listVersions(""), []);
  });

  it("a configured path that does not exist fails the job with a clear message", async () => {
    const bucket = uniqueBucket("nopath");
    await createLockedBucket(env, bucket, 1);
    const r = await backup(
      rgwTarget(env, bucket),
      job({ paths: [join(fixture, "data"), "/nonexistent/immutd"] }),
    );
    assert.equal(r.status, "failed");
    assert.match(
      r.error ?? "",
      /job data: configured path \/nonexistent\/immutd does not exist; nothing was uploaded/,
    );
  });

  it("sockets and FIFOs become warnings on the run, and the backup succeeds", async () => {
    const bucket = uniqueBucket("warn");
    await createLockedBucket(env, bucket, 1);
    const dir = join(work, "special");
    mkdirSync(dir);
    writeFileSync(join(dir, "ok.txt"), "ok");
    assert.equal(spawnSync("mkfifo", [join(dir, "fifo")]).status, 0);
    const r = await backup(rgwTarget(env, bucket), job({ name: "special", paths: [dir] }));
    assert.equal(r.status, "succeeded", r.error);
    assert.equal(r.warnings, 1);
    assert.match(catalog.runWarnings(r.runId)[0]?.path ?? "", /fifo$/);
  });
});
