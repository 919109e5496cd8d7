/**
 * One bucket listing per command, on the real server: every command that reads
 * the bucket without the catalog (restore --from-bucket of a chain point, a
 * pinned --version-id ranged restore, ls and find with --host) and verify walk
 * the ListObjectVersions pages of their prefix once, counted in the fault
 * proxy's request log. With more than one page of versions (1000 delete
 * markers sorted before the backups) the one listing still walks every page:
 * the backups are found on the second page, and verify still reports the
 * delete marker an attacker put on a backup there.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { DeleteObjectCommand, type S3Client } from "@aws-sdk/client-s3";
import { listBackups, type TestConfig, writeConfig } from "./support/assurance.js";
import { runCli } from "./support/cli.js";
import { FaultProxy } from "./support/fault-proxy.js";
import { client, createLockedBucket, type S3Env, s3env, uniqueBucket } from "./support/s3env.js";

interface Row {
  id: number;
  key: string;
  versionId: string;
}

describe("one listing per command (CLI, Ceph RGW)", () => {
  let env: S3Env;
  let main: S3Client;
  let proxy: FaultProxy;
  let bucket: string;
  let cfg: TestConfig;
  let rows: Row[];
  let rel: string;

  /** ListObjectVersions requests (pages) in the proxy log since `from`. */
  const listings = (from: number): number =>
    proxy.log.slice(from).filter((r) => r.method === "GET" && r.query.has("versions")).length;

  /** Runs the CLI and returns its result with the listing requests it made. */
  async function counted(...args: string[]) {
    const from = proxy.log.length;
    const r = await runCli(["--config", cfg.file, ...args]);
    return { ...r, listed: listings(from) };
  }

  before(async () => {
    env = s3env();
    main = client(env, env.main);
    proxy = await FaultProxy.start(env.endpoint, {
      caFile: env.caFile,
      certFile: join(env.caFile, "..", "cert.pem"),
      keyFile: join(env.caFile, "..", "key.pem"),
    });
    bucket = uniqueBucket("listonce");
    await createLockedBucket(env, bucket, 1);
    cfg = writeConfig(
      { ...env, endpoint: proxy.endpoint },
      { bucket, job: ["compression: none", "incremental: { fullEvery: 10 }"] },
    );
    rel = cfg.data.slice(1);
    // A full backup and two incrementals: the newest is a chain point of three members.
    for (const change of ["", "one\n", "two\n"]) {
      if (change) writeFileSync(join(cfg.data, "changed.txt"), change);
      const r = await runCli(["--config", cfg.file, "backup"]);
      assert.equal(r.code, 0, r.stderr);
    }
    rows = await listBackups<Row>(cfg);
    assert.equal(rows.length, 3);
  });
  after(async () => {
    main?.destroy();
    await proxy?.close();
  });

  it("restore --from-bucket of a chain point lists the job's prefix once and restores the point", async () => {
    const dest = mkdtempSync(join(tmpdir(), "immutd-listonce-"));
    const r = await counted("restore", "files", "--from-bucket", "--to", dest);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(readFileSync(join(dest, rel, "changed.txt"), "utf8"), "two\n");
    assert.equal(readFileSync(join(dest, rel, "a.txt"), "utf8"), "alpha\n".repeat(50));
    assert.equal(r.listed, 1, "ListObjectVersions requests");
  });

  it("a ranged restore --from-bucket of a pinned --version-id lists once and restores that version", async () => {
    const full = rows[0] as Row;
    const dest = mkdtempSync(join(tmpdir(), "immutd-listonce-"));
    const r = await counted(
      "restore",
      "files",
      "--from-bucket",
      "--version-id",
      full.versionId,
      "--include",
      `${rel}/a.txt`,
      "--to",
      dest,
    );
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /must download the whole archive/, "it was a ranged restore");
    assert.equal(readFileSync(join(dest, rel, "a.txt"), "utf8"), "alpha\n".repeat(50));
    assert.equal(r.listed, 1, "ListObjectVersions requests");
  });

  it("restore --from-bucket --id is refused as a usage error before any listing", async () => {
    const r = await counted("restore", "files", "--from-bucket", "--id", "1", "--list");
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--id names a catalog entry/);
    assert.equal(r.listed, 0);
  });

  it("ls and find from the bucket (--host) list once each", async () => {
    const ls = await counted("ls", "files", "--host", "assure");
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, /changed\.txt$/m);
    assert.equal(ls.listed, 1, "ls: ListObjectVersions requests");
    const find = await counted("find", "changed.txt", "--host", "assure");
    assert.equal(find.code, 0, find.stderr);
    assert.ok(find.stdout.trim().split("\n").length >= 2, find.stdout);
    assert.equal(find.listed, 1, "find: ListObjectVersions requests");
  });

  it("verify lists the target's prefix once for all its manifests and the delete markers", async () => {
    const r = await counted("verify");
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.equal(r.listed, 1, "ListObjectVersions requests");
  });

  it("with two pages of versions each command still lists once, walking both pages", async () => {
    // 1000 delete markers at keys that sort before the backups' (stamps start with
    // the year): RGW's pages hold 1000 entries, so every backup is on page two.
    const junk = Array.from({ length: 1000 }, (_, i) => `assure/files/0000-junk-${i}`);
    for (let i = 0; i < junk.length; i += 25)
      await Promise.all(
        junk
          .slice(i, i + 25)
          .map((Key) => main.send(new DeleteObjectCommand({ Bucket: bucket, Key }))),
      );
    // An attacker hides the newest backup's archive behind a delete marker.
    const newest = rows.at(-1) as Row;
    await main.send(new DeleteObjectCommand({ Bucket: bucket, Key: newest.key }));

    const dest = mkdtempSync(join(tmpdir(), "immutd-listonce-"));
    const restored = await counted("restore", "files", "--from-bucket", "--to", dest);
    assert.equal(restored.code, 0, restored.stderr);
    assert.equal(readFileSync(join(dest, rel, "changed.txt"), "utf8"), "two\n");
    assert.equal(restored.listed, 2, "restore: one listing of two pages");

    const ls = await counted("ls", "files", "--host", "assure");
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, /changed\.txt$/m);
    assert.equal(ls.listed, 2, "ls: one listing of two pages");

    const verify = await counted("verify");
    assert.match(
      verify.stdout + verify.stderr,
      new RegExp(`${newest.key.replaceAll(".", "\\.")} has a delete marker on top`),
    );
    assert.equal(verify.listed, 2, "verify: one listing of two pages");
  });

  // The faults below rely on the two pages the test above made.
  /** A ListObjectVersions request for a page after the first. */
  const secondPage = (r: { method: string; query: URLSearchParams }): boolean =>
    r.method === "GET" && r.query.has("versions") && r.query.has("key-marker");

  it("a 500 on the second page is retried and ls answers from both pages", async () => {
    const f = proxy.fault({ match: secondPage, action: { kind: "status", status: 500 } });
    const ls = await counted("ls", "files", "--host", "assure");
    proxy.clear();
    assert.equal(f.hits, 1);
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, /changed\.txt$/m, "the backups on page two are there");
    assert.equal(ls.listed, 3, "page one, page two refused, page two again");
  });

  it("a connection reset in the middle of the second page is retried and restore gets the point", async () => {
    const f = proxy.fault({ match: secondPage, action: { kind: "reset", afterBytes: 2000 } });
    const dest = mkdtempSync(join(tmpdir(), "immutd-listonce-"));
    const r = await counted("restore", "files", "--from-bucket", "--to", dest);
    proxy.clear();
    assert.equal(f.hits, 1);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(readFileSync(join(dest, rel, "changed.txt"), "utf8"), "two\n");
    assert.ok(r.listed >= 3, `the second page was asked for again (${r.listed} requests)`);
  });

  it("a second page that always fails makes ls fail naming the bucket, with no half answer", async () => {
    const f = proxy.fault({
      match: secondPage,
      times: Number.POSITIVE_INFINITY,
      action: { kind: "status", status: 500 },
    });
    const ls = await counted("ls", "files", "--host", "assure");
    proxy.clear();
    assert.ok(f.hits > 1, `retried (${f.hits})`);
    assert.notEqual(ls.code, 0, ls.stdout);
    assert.equal(ls.stdout, "", "nothing printed from the first page alone");
    assert.match(ls.stderr, new RegExp(bucket));
    assert.match(ls.stderr, /list/i);
  });
});
