/**
 * `immutd restore` as an operator runs it, against the real Ceph RGW: a
 * faithful round trip, point-in-time and pinned-version selection, partial
 * restores, restores without the catalog, hostile archives and integrity failures.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import {
  chmodSync,
  existsSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { gzipSync } from "node:zlib";
import { DeleteObjectCommand, PutObjectCommand } from "@aws-sdk/client-s3";
import Database from "better-sqlite3";
import { pack } from "tar-stream";
import { deriveSseKey } from "../src/repo/keys.js";
import { byteTree, makeByteNamesTree } from "./support/byte-names.js";
import { logRecords, runCli } from "./support/cli.js";
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

/** A snapshot of a tree: type, mode, mtime, size, content hash, link target per relative path. */
function snapshot(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (rel: string) => {
    const p = rel ? join(root, rel) : root;
    const st = lstatSync(p);
    const mode = (st.mode & 0o7777).toString(8);
    const mtime = Math.floor(st.mtimeMs / 1000);
    if (st.isSymbolicLink()) out[rel] = `l ${readlinkSync(p)} ${mtime}`;
    else if (st.isDirectory()) {
      if (rel) out[rel] = `d ${mode} ${mtime}`;
      for (const n of readdirSync(p).sort()) walk(rel ? join(rel, n) : n);
    } else {
      const h = createHash("sha256").update(readFileSync(p)).digest("hex").slice(0, 16);
      out[rel] = `f ${mode} ${mtime} ${st.size} ${h} ${st.nlink}`;
    }
  };
  walk("");
  return out;
}

describe("immutd restore (CLI, Ceph RGW)", () => {
  let env: S3Env;
  let cliEnv: NodeJS.ProcessEnv;
  before(() => {
    env = s3env();
    cliEnv = { TEST_READER_SECRET: env.reader.secretAccessKey };
  });

  async function setup(label: string): Promise<Setup> {
    const dir = mkdtempSync(join(tmpdir(), `immutd-restore-${label}-`));
    const bucket = uniqueBucket(label);
    await createLockedBucket(env, bucket, 1);
    const masterKey = randomBytes(32);
    writeFileSync(join(dir, "master.key"), `${masterKey.toString("hex")}\n`, { mode: 0o600 });
    const data = join(dir, "data");
    mkdirSync(data);
    const cfg = join(dir, "config.yaml");
    writeFileSync(
      cfg,
      `catalog: ${dir}/catalog.db
masterKeyFile: ${dir}/master.key
host: restore-test
targets:
${targetYaml(env, {
  bucket,
  reader: `{ accessKeyId: ${env.reader.accessKeyId}, secretAccessKey: "\${TEST_READER_SECRET}" }`,
})}jobs:
  - name: data
    target: local
    schedule: "@daily"
    paths: [${data}]
`,
    );
    return { dir, cfg, data, bucket, masterKey };
  }

  /**
   * Puts the finished `p` under the job's prefix as a backup that
   * `--from-bucket` finds, encrypted with the key derived from the master key
   * (an attacker who also holds the master key, or a foreign tar).
   */
  async function plantArchive(s: Setup, p: ReturnType<typeof pack>): Promise<void> {
    p.finalize();
    const chunks: Buffer[] = [];
    for await (const c of p) chunks.push(c as Buffer);
    const key = "restore-test/data/2026-01-01T000000Z-deadbeef.tar";
    await client(env, env.writer).send(
      new PutObjectCommand({
        Bucket: s.bucket,
        Key: key,
        Body: Buffer.concat(chunks),
        SSECustomerAlgorithm: "AES256",
        SSECustomerKey: deriveSseKey(s.masterKey, s.bucket, key).toString("base64"),
      }),
    );
  }

  const cli = (s: Setup, ...args: string[]) =>
    runCli(["--config", s.cfg, ...args], { env: cliEnv });
  async function backup(s: Setup): Promise<Record<string, unknown>> {
    const r = await cli(s, "backup");
    assert.equal(r.code, 0, r.stderr);
    const done = logRecords(r.stderr).find((l) => l.msg === "backup succeeded");
    assert.ok(done);
    return done;
  }

  it("round-trips every kind of entry faithfully", async () => {
    const s = await setup("rt");
    const d = s.data;
    mkdirSync(join(d, "nested", "deeper"), { recursive: true });
    mkdirSync(join(d, "empty"));
    writeFileSync(join(d, "big.bin"), randomBytes(3 * 1024 * 1024));
    writeFileSync(join(d, "exec.sh"), "#!/bin/sh\necho hi\n", { mode: 0o755 });
    writeFileSync(join(d, "private"), "secret\n", { mode: 0o600 });
    writeFileSync(join(d, "nested", "deeper", "Grüße-日本.txt"), "unicode\n");
    writeFileSync(join(d, "nested", `${"x".repeat(150)}.txt`), "long\n");
    symlinkSync("nested/deeper", join(d, "link-dir"));
    symlinkSync("/nonexistent/target", join(d, "dangling"));
    linkSync(join(d, "private"), join(d, "hardlink"));
    const t = new Date("2024-02-03T04:05:06Z");
    for (const p of ["big.bin", "exec.sh", "nested/deeper", "nested", "empty"])
      utimesSync(join(d, p), t, t);
    chmodSync(join(d, "empty"), 0o750);
    await backup(s);

    const to = join(s.dir, "restored");
    const r = await cli(s, "restore", "data", "--to", to);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(logRecords(r.stderr).some((l) => l.msg === "restore finished"));
    assert.deepEqual(snapshot(join(to, d.slice(1))), snapshot(d));

    // refuses a non-empty target without --overwrite
    const again = await cli(s, "restore", "data", "--to", to);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /is not empty .* --overwrite/);
  });

  it("backs up and restores names that are not UTF-8 byte-exact (0xff, Latin-1, newline)", async () => {
    const s = await setup("bytes");
    makeByteNamesTree(s.data);
    const b = await cli(s, "backup");
    assert.equal(b.code, 0, b.stderr);
    const warned = logRecords(b.stderr).filter((l) => l.level === "warn");
    assert.deepEqual(warned, [], "no name was skipped");

    const to = join(s.dir, "bytes");
    const r = await cli(s, "restore", "data", "--to", to);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(byteTree(join(to, s.data.slice(1))), byteTree(s.data));

    const ls = await cli(s, "restore", "data", "--list");
    assert.equal(ls.code, 0, ls.stderr);
    for (const shown of [
      "/caf\\351\n",
      "/new\\nline\n",
      "/d\\351r\\377/\n",
      "/utf8-link -> \\377\\376-target\n",
    ])
      assert.ok(ls.stdout.includes(shown), `${shown} in ${ls.stdout}`);

    // An include typed as text selects the Latin-1 directory "d\xe9r\xff".
    const part = join(s.dir, "part");
    const inc = await cli(s, "restore", "data", "--to", part, "--include", `${s.data}/dérÿ`);
    assert.equal(inc.code, 0, inc.stderr);
    const got = [...byteTree(join(part, s.data.slice(1))).keys()];
    const long = `d\xe9r\xff/${"x".repeat(120)}\xfe`;
    assert.deepEqual(got, ["", "d\xe9r\xff/", "d\xe9r\xff/to-caf\xe9", long]);
  });

  it("--at picks the right one of three backups; --list and --stdout work", async () => {
    const s = await setup("at");
    const made: Record<string, unknown>[] = [];
    for (const n of ["one", "two", "three"]) {
      writeFileSync(join(s.data, "version.txt"), `${n}\n`);
      made.push(await backup(s));
      await new Promise((r) => setTimeout(r, 1100)); // distinct seconds in the object keys
    }
    const list = JSON.parse((await cli(s, "list", "--json")).stdout) as {
      createdAt: string;
      id: number;
    }[];
    assert.equal(list.length, 3);
    const second = list[1] as { createdAt: string; id: number };
    const at = new Date(Date.parse(second.createdAt) + 500).toISOString();

    for (const fromBucket of [false, true]) {
      const to = join(s.dir, `at-${fromBucket}`);
      const r = await cli(
        s,
        "restore",
        "data",
        "--at",
        at,
        "--to",
        to,
        ...(fromBucket ? ["--from-bucket"] : []),
      );
      assert.equal(r.code, 0, r.stderr);
      assert.equal(
        readFileSync(join(to, s.data.slice(1), "version.txt"), "utf8"),
        "two\n",
        `fromBucket=${fromBucket}`,
      );
    }
    const newest = join(s.dir, "newest");
    assert.equal((await cli(s, "restore", "data", "--to", newest)).code, 0);
    assert.equal(readFileSync(join(newest, s.data.slice(1), "version.txt"), "utf8"), "three\n");

    const ls = await cli(s, "restore", "data", "--id", String(list[0]?.id), "--list");
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, /version\.txt/);
    const raw = await runCli(["--config", s.cfg, "restore", "data", "--stdout"], { env: cliEnv });
    assert.equal(raw.code, 0, raw.stderr);

    const none = await cli(s, "restore", "data", "--at", "2000-01-01", "--to", join(s.dir, "none"));
    assert.equal(none.code, 2);
    assert.match(none.stderr, /no good backup created at or before 2000-01-01T23:59:59/);
  });

  it("a pinned version is restored after a newer version and a delete marker hit its key", async () => {
    const s = await setup("pin");
    writeFileSync(join(s.data, "file.txt"), "original\n");
    const done = await backup(s);
    const key = String(done.key);
    const attacker = client(env, env.writer);
    const otherKey = randomBytes(32).toString("base64");
    await attacker.send(
      new PutObjectCommand({
        Bucket: s.bucket,
        Key: key,
        Body: gzipSync(Buffer.from("not a tar")),
        SSECustomerAlgorithm: "AES256",
        SSECustomerKey: otherKey,
      }),
    );
    await attacker.send(new DeleteObjectCommand({ Bucket: s.bucket, Key: key }));

    for (const args of [[], ["--from-bucket", "--version-id", String(done.versionId)]]) {
      const to = join(s.dir, `pin-${args.length}`);
      const r = await cli(s, "restore", "data", "--to", to, ...args);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(readFileSync(join(to, s.data.slice(1), "file.txt"), "utf8"), "original\n");
    }
  });

  it("--from-bucket skips a key dated 2099 that a writer planted, with a warning naming it", async () => {
    const s = await setup("future");
    writeFileSync(join(s.data, "file.txt"), "the real newest\n");
    const done = await backup(s);
    // The writer credential can put any key under the job prefix; it does not
    // know the master key, so the planted body is not even a readable archive.
    const planted = "restore-test/data/2099-01-01T000000Z-deadbeef.tar";
    await client(env, env.writer).send(
      new PutObjectCommand({ Bucket: s.bucket, Key: planted, Body: "not an archive" }),
    );
    const to = join(s.dir, "future");
    const r = await cli(s, "restore", "data", "--from-bucket", "--to", to);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(readFileSync(join(to, s.data.slice(1), "file.txt"), "utf8"), "the real newest\n");
    const warned = logRecords(r.stderr).filter((l) => l.level === "warn");
    assert.ok(
      warned.some((l) => String(l.msg).includes(planted) && /dated 2099-01-01/.test(String(l.msg))),
      r.stderr,
    );
    const started = logRecords(r.stderr).find((l) => l.msg === "restore started");
    assert.equal(started?.key, done.key);
  });

  it("--include restores only the matching file", async () => {
    const s = await setup("inc");
    mkdirSync(join(s.data, "a"));
    writeFileSync(join(s.data, "a", "wanted.txt"), "yes\n");
    writeFileSync(join(s.data, "other.txt"), "no\n");
    await backup(s);
    const to = join(s.dir, "inc");
    const r = await cli(s, "restore", "data", "--to", to, "--include", `${s.data}/a/wanted.txt`);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(readFileSync(join(to, s.data.slice(1), "a", "wanted.txt"), "utf8"), "yes\n");
    assert.ok(!existsSync(join(to, s.data.slice(1), "other.txt")));
  });

  it("entries that cannot be written make the restore exit 3 as incomplete", async () => {
    const s = await setup("incomplete");
    const p = pack();
    p.entry({ name: "dir/", type: "directory" });
    p.entry({ name: "dir", type: "symlink", linkname: "/etc" }); // a directory is in the way
    p.entry({ name: `long/${"n".repeat(300)}` }, "component over NAME_MAX\n");
    p.entry({ name: "safe.txt" }, "fine\n");
    await plantArchive(s, p);
    const to = join(s.dir, "incomplete");
    const r = await cli(s, "restore", "data", "--from-bucket", "--to", to);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /2 archive entries were not restored/);
    assert.equal(readFileSync(join(to, "safe.txt"), "utf8"), "fine\n");
  });

  it("an --include that matches nothing is exit 3 naming the pattern, after the whole stream", async () => {
    const s = await setup("inc-none");
    writeFileSync(join(s.data, "here.txt"), "yes\n");
    await backup(s);
    const missing = `${s.data}/not-there.txt`;
    const to = join(s.dir, "inc-none");
    const r = await cli(
      s,
      "restore",
      "data",
      "--to",
      to,
      "--include",
      `${s.data}/here.txt`,
      "--include",
      missing,
    );
    assert.equal(r.code, 3, r.stderr);
    assert.ok(r.stderr.includes(`include pattern "${missing}" matched nothing`), r.stderr);
    assert.equal(readFileSync(join(to, s.data.slice(1), "here.txt"), "utf8"), "yes\n");
    const ls = await cli(s, "restore", "data", "--list", "--include", missing);
    assert.equal(ls.code, 3, ls.stderr);
    assert.match(ls.stderr, /not found in archive/);
    const raw = await cli(s, "restore", "data", "--stdout", "--include", missing);
    assert.equal(raw.code, 2, raw.stderr);
  });

  it("a hostile archive planted in the bucket writes nothing outside DIR", async () => {
    const s = await setup("evil");
    const outside = mkdtempSync(join(tmpdir(), "immutd-outside-"));
    rmSync(outside, { recursive: true });
    const p = pack();
    p.entry({ name: "safe.txt" }, "fine\n");
    p.entry({ name: `${outside}/abs.txt` }, "absolute\n");
    p.entry({ name: "../escape.txt" }, "dotdot\n");
    p.entry({ name: "a/../../escape2.txt" }, "dotdot\n");
    p.entry({ name: "link", type: "symlink", linkname: outside });
    p.entry({ name: "link/through-symlink.txt" }, "through\n");
    await plantArchive(s, p);
    const parent = mkdtempSync(join(tmpdir(), "immutd-evil-"));
    const to = join(parent, "dest");
    const r = await cli(s, "restore", "data", "--from-bucket", "--to", to);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /4 archive entries were refused as unsafe/);
    assert.equal(readFileSync(join(to, "safe.txt"), "utf8"), "fine\n");
    assert.ok(!existsSync(outside), "nothing was created through the absolute path or the symlink");
    assert.ok(
      !existsSync(join(parent, "escape.txt")) && !existsSync(join(tmpdir(), "escape2.txt")),
    );
    assert.deepEqual(readdirSync(parent), ["dest"]);
  });

  it("a wrong master key and a corrupted catalog SHA-256 each fail clearly", async () => {
    const s = await setup("bad");
    writeFileSync(join(s.data, "f.txt"), "data\n");
    await backup(s);

    writeFileSync(join(s.dir, "wrong.key"), `${randomBytes(32).toString("hex")}\n`, {
      mode: 0o600,
    });
    const wrongCfg = join(s.dir, "wrong.yaml");
    writeFileSync(wrongCfg, readFileSync(s.cfg, "utf8").replace("master.key", "wrong.key"));
    const w = await runCli(
      ["--config", wrongCfg, "restore", "data", "--from-bucket", "--to", join(s.dir, "w")],
      {
        env: cliEnv,
      },
    );
    assert.equal(w.code, 3, w.stderr);
    assert.match(
      w.stderr,
      /refused the SSE-C key .* master key is not the one the backup was made with/,
    );

    const db = new Database(join(s.dir, "catalog.db"));
    db.prepare("UPDATE backups SET sha256 = ?").run("0".repeat(64));
    db.close();
    const c = await cli(s, "restore", "data", "--to", join(s.dir, "c"));
    assert.equal(c.code, 3, c.stderr);
    assert.match(
      c.stderr,
      /SHA-256 [0-9a-f]{64} differs from the catalog's 0{64}.*The restore is incomplete/,
    );
  });
});
