/**
 * `compression: zstd` end to end on the real Ceph RGW: the key it gets, the
 * standard `zstd -d` reading the stored archive back into the very tar an
 * uncompressed backup stores, restore, --list, --include, --from-bucket and
 * verify --deep; and archives that are truncated or corrupted (by a faulty
 * compressor whose output immutd hashed and recorded, or planted by a writer)
 * failing restore and verify --deep in one clear line.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { PutObjectCommand } from "@aws-sdk/client-s3";
import Database from "better-sqlite3";
import { deriveSseKey } from "../src/repo/keys.js";
import { CLI, logRecords, runCli } from "./support/cli.js";
import {
  client,
  createLockedBucket,
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
  masterKey: Buffer;
}

interface Row {
  id: number;
  job: string;
  key: string;
  versionId: string;
  compression: string;
  status: string;
}

const MiB = 1024 * 1024;

describe("compression: zstd (CLI, Ceph RGW)", () => {
  let env: S3Env;
  before(() => {
    env = s3env();
  });

  async function setup(label: string): Promise<Setup> {
    const dir = mkdtempSync(join(tmpdir(), `immutd-zstd-${label}-`));
    const bucket = uniqueBucket(label);
    await createLockedBucket(env, bucket, 1);
    const masterKey = randomBytes(32);
    writeFileSync(join(dir, "master.key"), `${masterKey.toString("hex")}\n`, { mode: 0o600 });
    const data = join(dir, "data");
    mkdirSync(join(data, "sub"), { recursive: true });
    writeFileSync(join(data, "log.txt"), Buffer.alloc(2 * MiB, "GET /index.html 200\n"));
    writeFileSync(join(data, "sub", "noise.bin"), randomBytes(300_000));
    writeFileSync(join(data, "sub", "small.txt"), "small\n");
    symlinkSync("sub/small.txt", join(data, "link"));
    const cfg = join(dir, "config.yaml");
    // Two jobs of one tree: z in zstd, raw uncompressed, to compare their tars.
    writeFileSync(
      cfg,
      `catalog: ${dir}/catalog.db
masterKeyFile: ${dir}/master.key
host: zstd-test
targets:
${targetYaml(env, { bucket })}jobs:
  - name: z
    target: local
    paths: [${data}]
    compression: zstd
    compressionLevel: 5
  - name: raw
    target: local
    paths: [${data}]
    compression: none
`,
    );
    return { dir, cfg, data, bucket, masterKey };
  }

  const cli = (s: Setup, ...args: string[]) => runCli(["--config", s.cfg, ...args]);
  /** `restore JOB --stdout`, as bytes (runCli gives text). */
  const rawArchive = (s: Setup, ...args: string[]) => {
    const r = spawnSync(
      process.execPath,
      [CLI, "--config", s.cfg, "restore", ...args, "--stdout"],
      {
        maxBuffer: 64 * MiB,
        env: { ...process.env, IMMUTD_CONFIG: "" },
      },
    );
    assert.equal(r.status, 0, String(r.stderr));
    return r.stdout;
  };
  const rows = async (s: Setup) => JSON.parse((await cli(s, "list", "--json")).stdout) as Row[];
  const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");

  it("stores a .tar.zst that zstd -d reads into the uncompressed backup's tar, and restores, lists and verifies it", async () => {
    const s = await setup("round");
    const b = await cli(s, "backup");
    assert.equal(b.code, 0, b.stderr);
    const list = await rows(s);
    const z = list.find((r) => r.job === "z");
    assert.match(z?.key ?? "", /^zstd-test\/z\/\d{4}-\d\d-\d\dT\d{6}Z-[0-9a-f]{8}\.tar\.zst$/);
    assert.equal(z?.compression, "zstd");

    const stored = rawArchive(s, "z");
    assert.deepEqual([...stored.subarray(0, 4)], [0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
    const tar = rawArchive(s, "raw");
    assert.ok(stored.length < tar.length / 2, `zstd ${stored.length} of ${tar.length} bytes`);
    const d = spawnSync("zstd", ["-d", "-c", "-q"], { input: stored, maxBuffer: 64 * MiB });
    assert.equal(d.status, 0, String(d.stderr));
    assert.equal(sha256(d.stdout), sha256(tar), "zstd -d gives the tar byte for byte");

    const to = join(s.dir, "restored");
    const r = await cli(s, "restore", "z", "--to", to);
    assert.equal(r.code, 0, r.stderr);
    const back = join(to, s.data.slice(1));
    assert.equal(
      sha256(readFileSync(join(back, "log.txt"))),
      sha256(readFileSync(join(s.data, "log.txt"))),
    );
    assert.ok(
      readFileSync(join(back, "sub", "noise.bin")).equals(
        readFileSync(join(s.data, "sub", "noise.bin")),
      ),
    );
    const ls = await cli(s, "restore", "z", "--list");
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, /sub\/small\.txt/);
    assert.match(ls.stdout, /link -> sub\/small\.txt/);

    // A ranged restore needs an uncompressed archive: it says so and downloads the whole one.
    const inc = join(s.dir, "inc");
    const i = await cli(s, "restore", "z", "--include", "**/small.txt", "--to", inc);
    assert.equal(i.code, 0, i.stderr);
    assert.match(
      i.stderr,
      /is compressed \(zstd\): restoring --include must download the whole archive/,
    );
    assert.equal(readFileSync(join(inc, s.data.slice(1), "sub", "small.txt"), "utf8"), "small\n");

    // Without the catalog: the .tar.zst key is found and read as zstd.
    const fb = join(s.dir, "from-bucket");
    const f = await cli(s, "restore", "z", "--from-bucket", "--to", fb);
    assert.equal(f.code, 0, f.stderr);
    assert.equal(logRecords(f.stderr).find((l) => l.msg === "restore started")?.key, z?.key);
    assert.equal(readFileSync(join(fb, s.data.slice(1), "sub", "small.txt"), "utf8"), "small\n");

    const v = await cli(s, "verify", "--deep", "--job", "z");
    assert.equal(v.code, 0, v.stdout + v.stderr);
  });

  it("an archive cut short by a faulty compressor, hashed and recorded as it was, fails restore and verify --deep clearly", async () => {
    const s = await setup("cut");
    assert.equal((await cli(s, "backup", "z")).code, 0);
    const [row] = await rows(s);
    assert.ok(row);
    // What nbWorkers does: the stream ends early and what came out is uploaded,
    // hashed and recorded. Stored as a new version at the backup's own key (the
    // writer may do that; the lock keeps the old one), and the catalog row
    // points at it, SHA-256 and size included, as if immutd had written it.
    const good = rawArchive(s, "z");
    const cut = good.subarray(0, Math.floor(good.length / 2));
    const put = await client(env, env.writer).send(
      new PutObjectCommand({
        Bucket: s.bucket,
        Key: row.key,
        Body: cut,
        SSECustomerAlgorithm: "AES256",
        SSECustomerKey: deriveSseKey(s.masterKey, s.bucket, row.key).toString("base64"),
      }),
    );
    assert.ok(put.VersionId);
    const db = new Database(join(s.dir, "catalog.db"));
    db.prepare("UPDATE backups SET version_id = ?, size = ?, sha256 = ? WHERE id = ?").run(
      put.VersionId,
      cut.length,
      sha256(cut),
      row.id,
    );
    db.close();

    const r = await cli(s, "restore", "z", "--to", join(s.dir, "r"));
    assert.equal(r.code, 3, r.stderr);
    const line = r.stderr.split("\n").find((l) => l.startsWith("immutd: ")) ?? "";
    assert.ok(line.includes(row.key), r.stderr);
    assert.match(line, /unexpected end of file/, r.stderr);
    assert.match(line, new RegExp(`version ${put.VersionId}`));

    const l = await cli(s, "restore", "z", "--list");
    assert.equal(l.code, 3, l.stderr);

    const v = await cli(s, "verify", "--deep", "--job", "z");
    assert.equal(v.code, 4, v.stdout + v.stderr);
    assert.match(v.stdout, new RegExp(`FINDING  \\S+  z  ${row.key}  ${put.VersionId}`));
    assert.equal((await rows(s)).find((x) => x.id === row.id)?.status, "corrupt");
  });

  it("a writer's planted .tar.zst with flipped bytes fails a catalog-free restore on its checksum, naming the key", async () => {
    const s = await setup("flip");
    assert.equal((await cli(s, "backup", "z")).code, 0);
    const good = rawArchive(s, "z");
    const bad = Buffer.from(good);
    const mid = bad.length >> 1;
    for (let i = mid; i < mid + 32; i++) bad[i] = (bad[i] ?? 0) ^ 0xff;
    // Dated after the real backup but not in the future: the newest plausible key.
    const stamp = new Date(Date.now() + 60_000).toISOString().replace(/[-:]/g, "").slice(0, 15);
    const key = `zstd-test/z/${stamp.slice(0, 4)}-${stamp.slice(4, 6)}-${stamp.slice(6)}Z-deadbeef.tar.zst`;
    await client(env, env.writer).send(
      new PutObjectCommand({
        Bucket: s.bucket,
        Key: key,
        Body: bad,
        SSECustomerAlgorithm: "AES256",
        SSECustomerKey: deriveSseKey(s.masterKey, s.bucket, key).toString("base64"),
      }),
    );
    const r = await cli(s, "restore", "z", "--from-bucket", "--to", join(s.dir, "r"));
    assert.equal(r.code, 3, r.stderr);
    const line = r.stderr.split("\n").find((l) => l.startsWith("immutd: ")) ?? "";
    assert.ok(line.includes(key), r.stderr);
    assert.match(line, /Restored data doesn't match checksum/, r.stderr);
  });
});
