/**
 * ls, find and the ranged restore --include on the real server, through the
 * CLI and the fault proxy (which logs every request, so "no archive GET" and
 * "only ranges" are counted, not assumed). Attacks: a forged manifest version
 * written with the writer credential, a catalog entry without a manifest.
 * Faults: connections reset in the middle of a range.
 */
import assert from "node:assert/strict";
import {
  existsSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { gzipSync } from "node:zlib";
import { GetObjectCommand, PutObjectCommand, type S3Client } from "@aws-sdk/client-s3";
import Database from "better-sqlite3";
import { fsPath } from "../src/pipeline/file-names.js";
import { deriveSseKey } from "../src/repo/keys.js";
import { decodeManifest } from "../src/repo/manifest.js";
import { listBackups, type TestConfig, writeConfig } from "./support/assurance.js";
import { runCli } from "./support/cli.js";
import { FaultProxy, isGetObject, type LoggedRequest } from "./support/fault-proxy.js";
import { client, createLockedBucket, type S3Env, s3env, uniqueBucket } from "./support/s3env.js";

interface Row {
  id: number;
  key: string;
  versionId: string;
  size: number;
  manifestKey: string;
  manifestVersionId: string;
}

const LONG = `${"d".repeat(70)}/${"long-name-".repeat(12)}.txt`;
const LATIN1 = Buffer.from([0x63, 0x61, 0x66, 0xe9]); // caf\xe9

const sse = (key: Buffer) => ({
  SSECustomerAlgorithm: "AES256",
  SSECustomerKey: key.toString("base64"),
});

describe("ls, find and ranged restore (CLI, Ceph RGW)", () => {
  let env: S3Env;
  let main: S3Client;
  let writer: S3Client;
  let proxy: FaultProxy;
  before(async () => {
    env = s3env();
    main = client(env, env.main);
    writer = client(env, env.writer);
    proxy = await FaultProxy.start(env.endpoint, {
      caFile: env.caFile,
      certFile: join(env.caFile, "..", "cert.pem"),
      keyFile: join(env.caFile, "..", "key.pem"),
    });
  });
  after(async () => {
    main?.destroy();
    writer?.destroy();
    await proxy?.close();
  });

  const masterKey = (cfg: TestConfig) =>
    Buffer.from(readFileSync(join(cfg.dir, "master.key"), "utf8").trim(), "hex");

  /** GetObjects of `key` in the proxy log since `from`. */
  const gets = (from: number, key: string): LoggedRequest[] =>
    proxy.log.slice(from).filter((r) => isGetObject(key)(r));

  /** A bucket, a config through the proxy, and one backup of a tree with awkward names. */
  async function backedUp(label: string, compression = "none", target: string[] = []) {
    const bucket = uniqueBucket(label);
    await createLockedBucket(env, bucket, 1);
    const cfg = writeConfig(
      { ...env, endpoint: proxy.endpoint },
      { bucket, job: [`compression: ${compression}`], target },
    );
    mkdirSync(join(cfg.data, "d".repeat(70)));
    writeFileSync(join(cfg.data, LONG), "long name\n");
    linkSync(join(cfg.data, "a.txt"), join(cfg.data, "z-hard.txt"));
    writeFileSync(Buffer.concat([fsPath(`${cfg.data}/`), LATIN1]), "latin1\n");
    const r = await runCli(["--config", cfg.file, "backup"]);
    assert.equal(r.code, 0, r.stderr);
    const rows = await listBackups<Row>(cfg);
    return { bucket, cfg, row: rows.at(-1) as Row };
  }

  it("ls lists a backup from its manifest without one archive GET, then from the cache without any GET", async () => {
    const { cfg, row } = await backedUp("ls");
    const from = proxy.log.length;
    const r = await runCli(["--config", cfg.file, "ls", "files"]);
    assert.equal(r.code, 0, r.stderr);
    const rel = cfg.data.slice(1);
    assert.match(r.stdout, new RegExp(`^-rw\\S+ \\d+/\\d+ +300 \\S+ \\S+ ${rel}/a\\.txt$`, "m"));
    assert.match(r.stdout, /\/caf\\351$/m);
    assert.match(r.stdout, /z-hard\.txt link to .*\/a\.txt$/m);
    assert.ok(r.stdout.includes(LONG));
    assert.equal(gets(from, row.key).length, 0);
    assert.equal(gets(from, row.manifestKey).length, 1);
    const again = proxy.log.length;
    const r2 = await runCli(["--config", cfg.file, "ls", "files", "--json"]);
    assert.equal(r2.code, 0, r2.stderr);
    const doc = JSON.parse(r2.stdout) as { backup: { versionId: string }; files: unknown[] };
    assert.equal(doc.backup.versionId, row.versionId);
    assert.equal(gets(again, row.manifestKey).length, 0, "the second ls reads the cache");
  });

  it("without the catalog, ls believes the oldest manifest version, not one forged with the writer credential", async () => {
    const { bucket, cfg, row } = await backedUp("lsforged");
    const mKey = deriveSseKey(masterKey(cfg), bucket, row.manifestKey);
    const res = await main.send(
      new GetObjectCommand({
        Bucket: bucket,
        Key: row.manifestKey,
        VersionId: row.manifestVersionId,
        ...sse(mKey),
      }),
    );
    const body = Buffer.from(
      await (res.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray(),
    );
    const m = decodeManifest(body);
    const forged = { ...m, files: [{ ...m.files[0], path: "etc/shadow-planted" }] };
    await writer.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: row.manifestKey,
        Body: gzipSync(JSON.stringify(forged)),
        ...sse(mKey),
      }),
    );
    rmSync(join(cfg.dir, "state"), { recursive: true, force: true });
    const r = await runCli(["--config", cfg.file, "ls", "files"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /\/a\.txt$/m);
    assert.doesNotMatch(r.stdout, /shadow-planted/);
    const f = await runCli(["--config", cfg.file, "find", "shadow-planted"]);
    assert.equal(f.code, 0, f.stderr);
    assert.equal(f.stdout, "");
  });

  it("find searches every backup; a backup without a manifest (0.1.0) is named, and ls points to restore --list", async () => {
    const { cfg } = await backedUp("find");
    writeFileSync(join(cfg.data, "new.conf"), "x = 1\n");
    assert.equal((await runCli(["--config", cfg.file, "backup"])).code, 0);
    const r = await runCli(["--config", cfg.file, "find", "a.txt"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim().split("\n").length, 2, r.stdout);
    const conf = await runCli(["--config", cfg.file, "find", "*.conf", "--job", "files", "--json"]);
    const hits = JSON.parse(conf.stdout) as { id: number; path: string; size: number }[];
    assert.equal(hits.length, 1);
    assert.equal(hits[0]?.id, 2);
    assert.match(hits[0]?.path ?? "", /new\.conf$/);
    // The first backup as a 0.1.0 catalog has it: no manifest.
    const db = new Database(join(cfg.dir, "state", "catalog.db"));
    db.prepare(
      "UPDATE backups SET manifest_key = NULL, manifest_version_id = NULL WHERE id = 1",
    ).run();
    db.close();
    const old = await runCli(["--config", cfg.file, "find", "a.txt"]);
    assert.equal(old.code, 0, old.stderr);
    assert.equal(old.stdout.trim().split("\n").length, 1);
    assert.match(old.stderr, /1 backup of job files have no manifest/);
    const ls = await runCli(["--config", cfg.file, "ls", "files", "--id", "1"]);
    assert.equal(ls.code, 1);
    assert.match(ls.stderr, /has no manifest.*restore files --id 1 --list/);
  });

  it("restore --include of an uncompressed backup reads only ranges and restores long names, hard links and Latin-1 names byte-exact", async () => {
    const { cfg, row } = await backedUp("ranged");
    const rel = cfg.data.slice(1);
    const dest = mkdtempSync(join(tmpdir(), "immutd-ranged-"));
    const from = proxy.log.length;
    const include = [`${rel}/${LONG}`, `${rel}/a.txt`, `${rel}/z-hard.txt`, `${rel}/caf?`];
    const r = await runCli([
      "--config",
      cfg.file,
      "restore",
      "files",
      ...include.flatMap((p) => ["--include", p]),
      "--to",
      dest,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(readFileSync(join(dest, rel, LONG), "utf8"), "long name\n");
    assert.equal(readFileSync(join(dest, rel, "z-hard.txt"), "utf8"), "alpha\n".repeat(50));
    assert.equal(
      readFileSync(Buffer.concat([fsPath(`${dest}/${rel}/`), LATIN1])).toString(),
      "latin1\n",
    );
    const archiveGets = gets(from, row.key);
    assert.ok(archiveGets.length > 0);
    let bytes = 0;
    for (const g of archiveGets) {
      const m = /^bytes=(\d+)-(\d+)$/.exec(g.range ?? "");
      assert.ok(m, `an archive GET without a closed range: ${g.range}`);
      bytes += Number(m[2]) - Number(m[1]) + 1;
    }
    // b.bin (100 KB) was not read.
    assert.ok(bytes < 20_000, `read ${bytes} of ${row.size} bytes`);
  });

  it("a manifest version with lying offsets: a later one written with the writer credential is ignored, the recorded one stops the restore before writing", async () => {
    const { bucket, cfg, row } = await backedUp("rangedlie");
    const rel = cfg.data.slice(1);
    const mKey = deriveSseKey(masterKey(cfg), bucket, row.manifestKey);
    const res = await main.send(
      new GetObjectCommand({
        Bucket: bucket,
        Key: row.manifestKey,
        VersionId: row.manifestVersionId,
        ...sse(mKey),
      }),
    );
    const m = decodeManifest(
      Buffer.from(
        await (res.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray(),
      ),
    );
    // The forger points a.txt at b.bin's header (same order kept, so the plan is plausible).
    const a = m.files.find((f) => f.path.endsWith("/a.txt"));
    const bin = m.files.find((f) => f.path.endsWith("/b.bin"));
    assert.ok(a && bin);
    [a.offset, bin.offset] = [bin.offset, a.offset];
    m.files.sort((x, y) => x.offset - y.offset);
    const put = await writer.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: row.manifestKey,
        Body: gzipSync(JSON.stringify(m)),
        ...sse(mKey),
      }),
    );
    const restoreA = async (extra: string[]) => {
      const dest = mkdtempSync(join(tmpdir(), "immutd-ranged-"));
      const args = ["--config", cfg.file, "restore", "files", ...extra];
      const r = await runCli([...args, "--include", `${rel}/a.txt`, "--to", dest]);
      return { r, dest };
    };
    // From the catalog (its recorded version) and from the bucket (the oldest): the true index.
    for (const extra of [[], ["--from-bucket"]]) {
      const { r, dest } = await restoreA(extra);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(readFileSync(join(dest, rel, "a.txt"), "utf8"), "alpha\n".repeat(50));
    }
    // A catalog that records the lying version (as if it had been written at backup time).
    const db = new Database(join(cfg.dir, "state", "catalog.db"));
    db.prepare("UPDATE backups SET manifest_version_id = ? WHERE id = ?").run(
      put.VersionId,
      row.id,
    );
    db.close();
    const { r, dest } = await restoreA([]);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /index does not match the archive/);
    assert.equal(existsSync(join(dest, rel, "a.txt")), false);
    assert.equal(existsSync(join(dest, rel, "b.bin")), false);
    // --whole-archive reads and verifies everything, and restores the right bytes.
    const whole = await restoreA(["--whole-archive"]);
    assert.equal(whole.r.code, 0, whole.r.stderr);
    assert.equal(readFileSync(join(whole.dest, rel, "a.txt"), "utf8"), "alpha\n".repeat(50));
  });

  it("a compressed backup says before starting that --include downloads the whole archive, and how many bytes", async () => {
    const { cfg, row } = await backedUp("rangedgz", "gzip");
    const dest = mkdtempSync(join(tmpdir(), "immutd-ranged-"));
    const r = await runCli([
      "--config",
      cfg.file,
      "restore",
      "files",
      "--include",
      `${cfg.data}/a.txt`,
      "--to",
      dest,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, new RegExp(`compressed \\(gzip\\).*whole archive.*${row.size} bytes`));
  });

  it("a range that stalls mid-body is given up after the idle timeout and resumed from the last byte received", async () => {
    const { cfg, row } = await backedUp("rangedstall", "none", ["idleTimeoutSeconds: 2"]);
    const rel = cfg.data.slice(1);
    const fault = proxy.fault({
      match: (q) => isGetObject(row.key)(q) && q.range !== undefined,
      times: 1,
      action: { kind: "stall", afterBytes: 30_000 },
    });
    const from = proxy.log.length;
    const dest = mkdtempSync(join(tmpdir(), "immutd-ranged-"));
    const r = await runCli([
      "--config",
      cfg.file,
      "restore",
      "files",
      "--include",
      `${rel}/b.bin`,
      "--to",
      dest,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(fault.hits, 1);
    assert.match(r.stderr, /resuming/);
    const ranges = gets(from, row.key).map((g) => g.range);
    assert.equal(ranges.length, 2, JSON.stringify(ranges));
    const [first, second] = ranges.map((x) => Number(/bytes=(\d+)-/.exec(x ?? "")?.[1]));
    assert.ok(
      first !== undefined && second !== undefined && second > first,
      JSON.stringify(ranges),
    );
    assert.deepEqual(readFileSync(join(dest, rel, "b.bin")), readFileSync(join(cfg.data, "b.bin")));
  });

  it("a connection reset in the middle of a range resumes it; a refused range fails with one clear line", async () => {
    const { cfg, row } = await backedUp("rangedreset");
    const rel = cfg.data.slice(1);
    const fault = proxy.fault({
      match: (q) => isGetObject(row.key)(q) && q.range !== undefined,
      times: 1,
      action: { kind: "reset", afterBytes: 30_000 },
    });
    const dest = mkdtempSync(join(tmpdir(), "immutd-ranged-"));
    const r = await runCli([
      "--config",
      cfg.file,
      "restore",
      "files",
      "--include",
      `${rel}/b.bin`,
      "--to",
      dest,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(fault.hits, 1);
    assert.match(r.stderr, /resuming/);
    assert.equal(readFileSync(join(dest, rel, "b.bin")).length, 100_000);
    assert.deepEqual(readFileSync(join(dest, rel, "b.bin")), readFileSync(join(cfg.data, "b.bin")));
    proxy.clear();
    proxy.fault({
      match: (q) => isGetObject(row.key)(q) && q.range !== undefined,
      action: { kind: "status", status: 403, code: "AccessDenied" },
    });
    const dest2 = mkdtempSync(join(tmpdir(), "immutd-ranged-"));
    const bad = await runCli([
      "--config",
      cfg.file,
      "restore",
      "files",
      "--include",
      `${rel}/b.bin`,
      "--to",
      dest2,
    ]);
    proxy.clear();
    assert.equal(bad.code, 3, bad.stderr);
    assert.match(bad.stderr, new RegExp(`${row.key}.*version ${row.versionId}`));
  });
});
