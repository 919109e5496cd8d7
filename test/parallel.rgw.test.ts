/**
 * Parallel compression end to end on the real Ceph RGW: a zstd and a gzip
 * job compressed on several worker threads store exactly the blocks' frames
 * or members in order, which `zstd -d` / `gzip -d` read back into the tar an
 * uncompressed job stores, and which immutd restores and verify --deep
 * accepts; a multi-frame archive cut inside its last frame fails restore
 * (Node's zstd decoder alone can miss such a cut: parallel-codec.test.ts); and a codec worker that dies mid-upload fails the run with
 * an error naming the block, leaving no version and no open multipart upload.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { PutObjectCommand } from "@aws-sdk/client-s3";
import { restore } from "../src/flows/restore.js";
import { createArchive } from "../src/pipeline/archive.js";
import { HashingCounter } from "../src/pipeline/hash.js";
import { runStages } from "../src/pipeline/index.js";
import { BLOCK_BYTES, ParallelEncoder } from "../src/pipeline/parallel-codec.js";
import { s3Sink } from "../src/pipeline/sink.js";
import { compressBlock } from "../src/pipeline/workers/protocol.js";
import { deriveSseKey } from "../src/repo/keys.js";
import { closeTarget, openTarget } from "../src/store/s3.js";
import { CLI } from "./support/cli.js";
import { cliWorkspace } from "./support/cli-workspace.js";
import {
  client,
  createLockedBucket,
  rgwTarget,
  type S3Env,
  s3env,
  uniqueBucket,
} from "./support/s3env.js";

const MiB = 1024 * 1024;
const FAULTY = new URL("./support/faulty-codec-worker.js", import.meta.url);
const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

interface Row {
  id: number;
  job: string;
  key: string;
  versionId: string;
  compression: string;
  status: string;
}

/** Some text (compressible) and some noise: several blocks of either codec. */
function tree(dir: string, noiseMiB: number): string {
  const data = join(dir, "data");
  mkdirSync(join(data, "sub"), { recursive: true });
  // Noise first (the walk goes in name order): a failure mid-noise is mid-upload.
  writeFileSync(join(data, "a-noise.bin"), randomBytes(noiseMiB * MiB));
  writeFileSync(join(data, "log.txt"), Buffer.alloc(9 * MiB, "GET /index.html 200 0.003\n"));
  for (let i = 0; i < 50; i++) writeFileSync(join(data, "sub", `small-${i}.txt`), `file ${i}\n`);
  return data;
}

describe("parallel compression (CLI, Ceph RGW)", () => {
  let env: S3Env;
  before(() => {
    env = s3env();
  });

  it("stores the blocks' frames and members in order; zstd -d, gzip -d, restore and verify --deep read them", async () => {
    const w = await cliWorkspace(env, "par", { dirLabel: "parallel" });
    const { dir, cfg, cli } = w;
    const data = tree(dir, 3);
    const job = (name: string, more: string) =>
      `  - name: ${name}\n    target: local\n    paths: [${data}]\n${more}`;
    w.writeConfig({
      host: "par-test",
      jobs: `${job("z", "    compression: zstd\n    compressionThreads: 3\n")}${job("g", "    compression: gzip\n    compressionLevel: 4\n    compressionThreads: 2\n")}${job("raw", "    compression: none\n")}`,
    });
    const raw = (name: string) => {
      const r = spawnSync(process.execPath, [CLI, "--config", cfg, "restore", name, "--stdout"], {
        maxBuffer: 128 * MiB,
        env: { ...process.env, IMMUTD_CONFIG: "" },
      });
      assert.equal(r.status, 0, String(r.stderr));
      return r.stdout;
    };
    const b = await cli("backup");
    assert.equal(b.code, 0, b.stderr);
    const rows = JSON.parse((await cli("list", "--json")).stdout) as Row[];
    assert.deepEqual(rows.map((r) => r.job).sort(), ["g", "raw", "z"]);

    const tar = raw("raw");
    for (const [name, codec, level, tool] of [
      ["z", "zstd", 3, "zstd"],
      ["g", "gzip", 4, "gzip"],
    ] as const) {
      const stored = raw(name);
      const blocks: Buffer[] = [];
      for (let off = 0; off < tar.length; off += BLOCK_BYTES[codec])
        blocks.push(compressBlock(codec, level, tar.subarray(off, off + BLOCK_BYTES[codec])));
      assert.ok(blocks.length >= 3, `${blocks.length} blocks`);
      assert.ok(
        stored.equals(Buffer.concat(blocks)),
        `${name}: the stored archive is the tar's blocks, each compressed on its own, in order`,
      );
      const d = spawnSync(tool, ["-d", "-c", "-q"], { input: stored, maxBuffer: 128 * MiB });
      assert.equal(d.status, 0, String(d.stderr));
      assert.equal(sha256(d.stdout), sha256(tar), `${tool} -d gives the tar byte for byte`);
      assert.equal(spawnSync(tool, ["-t", "-q"], { input: stored }).status, 0, `${tool} -t`);

      const to = join(dir, `restored-${name}`);
      const r = await cli("restore", name, "--to", to);
      assert.equal(r.code, 0, r.stderr);
      const back = join(to, data.slice(1));
      for (const f of ["log.txt", "a-noise.bin", "sub/small-49.txt"])
        assert.ok(readFileSync(join(back, f)).equals(readFileSync(join(data, f))), f);
    }
    const v = await cli("verify", "--deep");
    assert.equal(v.code, 0, v.stdout + v.stderr);
  });

  it("a multi-frame zstd archive cut inside a later frame, with the cut's own size and SHA-256, fails restore", async () => {
    const w = await cliWorkspace(env, "parc", { dirLabel: "parallel-cut" });
    const { dir, bucket, masterKey, cfg, cli } = w;
    // Random data last: its frames are raw blocks, where Node's decoder misses a cut.
    const data = tree(dir, 0);
    writeFileSync(join(data, "sub", "z-noise.bin"), randomBytes(10 * MiB));
    w.writeConfig({
      host: "par-test",
      jobs: `  - name: z
    target: local
    paths: [${data}]
    compression: zstd
    compressionThreads: 2
`,
    });
    assert.equal((await cli("backup")).code, 0);
    const [row] = JSON.parse((await cli("list", "--json")).stdout) as Row[];
    assert.ok(row);
    const r0 = spawnSync(process.execPath, [CLI, "--config", cfg, "restore", "z", "--stdout"], {
      maxBuffer: 128 * MiB,
      env: { ...process.env, IMMUTD_CONFIG: "" },
    });
    const good = r0.stdout;
    // Frame boundaries: the archive is the tar's 4 MiB blocks, each compressed on its own.
    const tar = spawnSync("zstd", ["-d", "-c", "-q"], { input: good, maxBuffer: 128 * MiB }).stdout;
    const ends: number[] = [];
    for (let off = 0, end = 0; off < tar.length; off += BLOCK_BYTES.zstd) {
      end += compressBlock("zstd", 3, tar.subarray(off, off + BLOCK_BYTES.zstd)).length;
      ends.push(end);
    }
    assert.equal(ends.at(-1), good.length);
    assert.ok(ends.length >= 3, `${ends.length} frames`);
    // 100 bytes into the last frame: the tar in the frames before it is whole.
    const cut = good.subarray(0, (ends.at(-2) ?? 0) + 100);
    const put = await client(env, env.writer).send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: row.key,
        Body: cut,
        SSECustomerAlgorithm: "AES256",
        SSECustomerKey: deriveSseKey(masterKey, bucket, row.key).toString("base64"),
      }),
    );
    assert.ok(put.VersionId);
    // Restored as immutd restores a version it recorded with this size and SHA-256.
    const target = openTarget(rgwTarget(env, bucket));
    try {
      const source = (versionId: string, body: Buffer) => ({
        job: "z",
        bucket,
        key: row.key,
        versionId,
        compression: "zstd" as const,
        sseKey: deriveSseKey(masterKey, bucket, row.key),
        createdAt: new Date(),
        size: body.length,
        sha256: sha256(body),
      });
      let listed = 0;
      const list = { kind: "list" as const, onEntry: () => void listed++ };
      await restore(target.reader, source(row.versionId, good), list);
      assert.ok(listed >= 53, `the whole archive lists (${listed} entries)`);
      await assert.rejects(
        restore(target.reader, source(put.VersionId, cut), list),
        (err: Error) => {
          assert.ok(err.message.includes(row.key), err.message);
          assert.match(err.message, /unexpected end of file: the zstd stream ends inside a frame/);
          return true;
        },
      );
    } finally {
      closeTarget(target);
    }
  });

  for (const mode of ["exit", "throw"] as const) {
    it(`a codec worker that ${mode === "exit" ? "exits" : "throws"} mid-upload fails the run, naming the block; no version and no open upload remain`, async () => {
      const dir = mkdtempSync(join(tmpdir(), "immutd-parallel-fault-"));
      const bucket = uniqueBucket("parf");
      await createLockedBucket(env, bucket, 1);
      const data = tree(dir, 14);
      const target = openTarget(rgwTarget(env, bucket));
      const key = "fault/job/archive.tar.zst";
      let uploadId: string | undefined;
      process.env.IMMUTD_TEST_CODEC_FAULT = `${mode}:6`;
      try {
        const hash = new HashingCounter();
        await assert.rejects(
          runStages({
            archive: createArchive({ paths: [data] }),
            // 1 MiB blocks, so that the 5 MiB parts before the failure are on the server.
            between: [
              new ParallelEncoder({
                codec: "zstd",
                level: 1,
                threads: 2,
                blockBytes: MiB,
                worker: FAULTY,
              }),
            ],
            hash,
            sink: s3Sink(target.writer, {
              key,
              sseKey: randomBytes(32),
              onUploadId: (id) => {
                uploadId = id;
              },
            }),
            cancelled: () => new Error("cancelled"),
          }),
          (err: Error) => {
            assert.match(
              err.message,
              /^zstd compression worker \d of 2 (exited \(code 7\)|failed: injected crash)/,
            );
            assert.match(
              err.message,
              /\(block \d+, input bytes from \d+\); the archive is incomplete and is not stored/,
            );
            return true;
          },
        );
        assert.ok(uploadId, "the multipart upload had begun");
        assert.ok(hash.bytes > 5 * MiB, `parts were sent before the failure (${hash.bytes} bytes)`);
        const admin = target.admin;
        assert.ok(admin);
        assert.deepEqual(await admin.listVersions("fault/"), [], "no version of the cut archive");
        assert.deepEqual(await admin.listUploads("fault/"), [], "the upload was aborted");
      } finally {
        delete process.env.IMMUTD_TEST_CODEC_FAULT;
        closeTarget(target);
      }
    });
  }
});
