/**
 * Incremental backups against the real Ceph RGW, as an operator runs them
 * (the CLI): six runs of a changing tree restore, each, to the tree as it
 * was; a chain member removed behind S3's back is a verify finding naming
 * every point it breaks and makes the next run a full backup; a forged
 * manifest claiming another parent is refused; kill -9 in the middle of an
 * incremental run leaves the chain usable.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  chmodSync,
  linkSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { GetObjectCommand, PutObjectCommand } from "@aws-sdk/client-s3";
import Database from "better-sqlite3";
import { deriveSseKey } from "../src/repo/keys.js";
import { decodeManifest, encodeManifest } from "../src/repo/manifest.js";
import { manifestKey } from "../src/repo/naming.js";
import { CLI, logRecords, runCli } from "./support/cli.js";
import { cliWorkspace } from "./support/cli-workspace.js";
import { HOLD_MARK, holdEnv } from "./support/hold-s3.js";
import { denySubusersRetention } from "./support/rgw-admin.js";
import { adminRemoveVersion, client, type S3Env, s3env } from "./support/s3env.js";

interface Setup {
  dir: string;
  cfg: string;
  data: string;
  bucket: string;
  masterKey: Buffer;
  catalog: string;
}

interface Row {
  id: number;
  key: string;
  versionId: string;
  size: number;
  status: string;
  parentId: number | null;
  chainId: number;
  manifestKey: string | null;
  manifestVersionId: string | null;
  retainUntil: string | null;
}

/**
 * The tree as a user sees it: per relative path its type, mode, mtime (s),
 * size, content hash, symlink target, and which hard-link group it is in.
 */
function snapshot(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const groups = new Map<number, string>();
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
      let group = "";
      if (st.nlink > 1) {
        const first = groups.get(st.ino);
        if (first === undefined) groups.set(st.ino, rel);
        group = ` links=${st.nlink} group=${first ?? rel}`;
      }
      out[rel] = `f ${mode} ${mtime} ${st.size} ${h}${group}`;
    }
  };
  walk("");
  return out;
}

describe("incremental backups (CLI, Ceph RGW)", () => {
  let env: S3Env;
  before(() => {
    env = s3env();
  });

  async function setup(
    label: string,
    incremental = "{ fullEvery: 10 }",
    o: { bucketDays?: number; days?: number; exclude?: string } = {},
  ): Promise<Setup> {
    const w = await cliWorkspace(env, label, {
      dirLabel: `incr-${label}`,
      ...(o.bucketDays !== undefined ? { bucketDays: o.bucketDays } : {}),
    });
    const data = join(w.dir, "data");
    mkdirSync(data);
    w.writeConfig({
      host: "incr-test",
      target: { days: o.days ?? 1 },
      jobs: `  - name: data
    target: local
    paths: [${data}]
    compression: zstd
    incremental: ${incremental}
${o.exclude ? `    exclude: ["${o.exclude}"]\n` : ""}`,
    });
    return {
      dir: w.dir,
      cfg: w.cfg,
      data,
      bucket: w.bucket,
      masterKey: w.masterKey,
      catalog: w.catalog,
    };
  }

  const cli = (s: Setup, ...args: string[]) => runCli(["--config", s.cfg, ...args]);

  async function backup(s: Setup): Promise<Record<string, unknown>[]> {
    const r = await cli(s, "backup", "data");
    assert.equal(r.code, 0, r.stderr);
    const logs = logRecords(r.stderr);
    assert.ok(
      logs.some((l) => l.msg === "backup succeeded"),
      r.stderr,
    );
    return logs;
  }

  function rows(s: Setup): Row[] {
    const db = new Database(s.catalog, { readonly: true });
    try {
      return db
        .prepare(
          `SELECT id, object_key AS key, version_id AS versionId, size, status, parent_id AS parentId,
             coalesce(chain_id, id) AS chainId, manifest_key AS manifestKey,
             manifest_version_id AS manifestVersionId, retain_until AS retainUntil
           FROM backups ORDER BY created_at, id`,
        )
        .all() as Row[];
    } finally {
      db.close();
    }
  }

  async function restoreTo(s: Setup, label: string, ...sel: string[]): Promise<string> {
    const to = join(s.dir, `restored-${label}`);
    const r = await cli(s, "restore", "data", ...sel, "--to", to);
    assert.equal(r.code, 0, `restore ${label}: ${r.stderr}`);
    return join(to, s.data.slice(1));
  }

  /** Run 1 (full) and five incrementals, each after a change the issue names; returns the tree after each. */
  async function sixRuns(s: Setup): Promise<Record<string, string>[]> {
    const d = s.data;
    const f = (p: string) => join(d, p);
    const seen: Record<string, string>[] = [];
    const t = new Date("2025-06-01T12:00:00Z");
    // 1: a tree of every kind.
    mkdirSync(f("dir/sub"), { recursive: true });
    mkdirSync(f("empty"));
    writeFileSync(f("a.txt"), "alpha\n");
    writeFileSync(f("b.txt"), "bravo\n");
    writeFileSync(f("dir/sub/c.txt"), "charlie\n");
    writeFileSync(f("big.bin"), randomBytes(2 * 1024 * 1024));
    writeFileSync(f("mode.txt"), "mode\n", { mode: 0o644 });
    writeFileSync(f("becomes-dir"), "a file for now\n");
    writeFileSync(f("to-rename.txt"), "renamed later\n");
    writeFileSync(f("hard1"), "shared inode\n");
    linkSync(f("hard1"), f("hard2"));
    symlinkSync("a.txt", f("link"));
    utimesSync(f("big.bin"), t, t);
    seen.push(snapshot(d));
    const first = await backup(s);
    assert.ok(first.some((l) => l.msg === "full backup: first backup of the job in this bucket"));
    await sleep(1100); // mtimes in whole seconds differ from the archived ones
    // 2: add, modify, delete, rename.
    writeFileSync(f("new.txt"), "new\n");
    writeFileSync(f("a.txt"), "alpha, modified\n");
    unlinkSync(f("b.txt"));
    renameSync(f("to-rename.txt"), f("renamed.txt"));
    seen.push(snapshot(d));
    await backup(s);
    await sleep(1100);
    // 3: a file becomes a directory; a symlink is retargeted; a mode-only change.
    unlinkSync(f("becomes-dir"));
    mkdirSync(f("becomes-dir"));
    writeFileSync(f("becomes-dir/inside.txt"), "inside\n");
    unlinkSync(f("link"));
    symlinkSync("new.txt", f("link"));
    chmodSync(f("mode.txt"), 0o600);
    seen.push(snapshot(d));
    await backup(s);
    await sleep(1100);
    // 4: a third hard link; an empty directory replaces another; a directory becomes a file.
    linkSync(f("hard1"), f("hard3"));
    rmSync(f("empty"), { recursive: true });
    mkdirSync(f("empty2"));
    rmSync(f("dir/sub"), { recursive: true });
    writeFileSync(f("dir/sub"), "was a directory\n");
    seen.push(snapshot(d));
    await backup(s);
    await sleep(1100);
    // 5: nothing changes.
    seen.push(snapshot(d));
    await backup(s);
    await sleep(1100);
    // 6: a file becomes a symlink, a symlink a file; a hard link is removed; content of a linked inode changes.
    unlinkSync(f("new.txt"));
    symlinkSync("renamed.txt", f("new.txt"));
    unlinkSync(f("link"));
    writeFileSync(f("link"), "no longer a symlink\n");
    unlinkSync(f("hard2"));
    writeFileSync(f("hard1"), "shared inode, changed\n");
    seen.push(snapshot(d));
    await backup(s);
    return seen;
  }

  it("six runs with adds, modifications, deletions, renames and type changes: every point restores to the tree as it was", async () => {
    const s = await setup("six");
    const trees = await sixRuns(s);
    const r = rows(s);
    assert.equal(r.length, 6);
    assert.equal(r[0]?.parentId, null, "run 1 is the full");
    for (let i = 1; i < 6; i++) {
      assert.equal(r[i]?.parentId, r[i - 1]?.id, `run ${i + 1} builds on run ${i}`);
      assert.equal(r[i]?.chainId, r[0]?.id, `run ${i + 1} is in the full's chain`);
    }
    // The unchanged run uploads a tiny archive next to the full.
    const full = r[0] as Row;
    const unchanged = r[4] as Row;
    assert.ok(
      unchanged.size < full.size / 100,
      `unchanged run: ${unchanged.size} vs full ${full.size}`,
    );
    // Every member is locked at least as long as the newest.
    const newest = Date.parse(r[5]?.retainUntil ?? "");
    for (const m of r)
      assert.ok(
        Date.parse(m.retainUntil ?? "") >= newest - 1000,
        `backup ${m.id} locked until ${m.retainUntil}`,
      );
    for (let i = 0; i < 6; i++) {
      const got = snapshot(await restoreTo(s, `p${i + 1}`, "--id", String(r[i]?.id)));
      assert.deepEqual(got, trees[i], `point ${i + 1}`);
    }
    // ls reads a point's complete index: point 2 has renamed.txt and no b.txt.
    const ls = await cli(s, "ls", "data", "--id", String(r[1]?.id), "--json");
    assert.equal(ls.code, 0, ls.stderr);
    const listed = (JSON.parse(ls.stdout) as { files: { path: string }[] }).files.map(
      (e) => e.path,
    );
    assert.ok(
      listed.some((p) => p.endsWith("/renamed.txt")),
      ls.stdout,
    );
    assert.ok(!listed.some((p) => p.endsWith("/b.txt") || p.endsWith("/to-rename.txt")), ls.stdout);
    const found = await cli(s, "find", "inside.txt", "--json");
    assert.equal(found.code, 0, found.stderr);
    assert.equal((JSON.parse(found.stdout) as unknown[]).length, 4, "in points 3 to 6");
    // Without the catalog: the newest point from the bucket alone, chain checked against every member's manifest.
    rmSync(s.catalog);
    const fromBucket = join(s.dir, "from-bucket");
    const b = await cli(s, "restore", "data", "--from-bucket", "--to", fromBucket);
    assert.equal(b.code, 0, b.stderr);
    assert.deepEqual(snapshot(join(fromBucket, s.data.slice(1))), trees[5]);
    // An earlier point from the bucket, by its version.
    const third = join(s.dir, "from-bucket-3");
    const b3 = await cli(
      s,
      "restore",
      "data",
      "--from-bucket",
      "--version-id",
      r[2]?.versionId as string,
      "--to",
      third,
    );
    assert.equal(b3.code, 0, b3.stderr);
    assert.deepEqual(snapshot(join(third, s.data.slice(1))), trees[2]);
    // catalog rebuild links the chain again; list shows it.
    const rb = await cli(s, "catalog", "rebuild");
    assert.equal(rb.code, 0, rb.stderr);
    const rebuilt = rows(s);
    assert.equal(rebuilt.length, 6);
    for (let i = 1; i < 6; i++) assert.equal(rebuilt[i]?.parentId, rebuilt[i - 1]?.id);
    const l = await cli(s, "list");
    assert.equal(l.code, 0, l.stderr);
    assert.match(l.stdout, /KIND/);
    assert.equal(l.stdout.match(/ incr /g)?.length, 5, l.stdout);
    const again = snapshot(await restoreTo(s, "rebuilt-4", "--id", String(rebuilt[3]?.id)));
    assert.deepEqual(again, trees[3]);
  });

  it("restore --include reads only the members that hold the selected files", async () => {
    const s = await setup("incl");
    const trees = await sixRuns(s);
    const r = rows(s);
    const to = join(s.dir, "incl");
    const res = await cli(s, "restore", "data", "--include", join(s.data, "big.bin"), "--to", to);
    assert.equal(res.code, 0, res.stderr);
    const done = logRecords(res.stderr).find((l) => l.msg === "restore finished");
    assert.equal(done?.members, 6);
    assert.equal(done?.streamed, 1, "big.bin never changed: only the full is read");
    assert.deepEqual(readdirSync(join(to, s.data.slice(1))), ["big.bin"]);
    assert.equal(snapshot(join(to, s.data.slice(1)))["big.bin"], trees[5]?.["big.bin"]);
    // --list of a point lists exactly what it holds, from every member that holds something.
    const listed = await cli(s, "restore", "data", "--id", String(r[2]?.id), "--list");
    assert.equal(listed.code, 0, listed.stderr);
    const names = listed.stdout
      .trim()
      .split("\n")
      .map(
        (l) =>
          l
            .replace(/ -> .*$/, "")
            .split(" ")
            .at(-1) ?? "",
      )
      .map((n) => n.replace(/\/$/, "").slice(s.data.length - 1))
      .filter((n) => n !== "")
      .sort();
    const want = Object.keys(trees[2] ?? {})
      .map((k) => `/${k}`)
      .sort();
    assert.deepEqual(names, want);
    assert.equal(r.length, 6);
  });

  it("a member removed behind S3's back: verify names every point it breaks, the next run is a full, earlier points still restore", async () => {
    const s = await setup("gone");
    const trees = await sixRuns(s);
    const r = rows(s);
    const gone = r[2] as Row;
    adminRemoveVersion(env, s.bucket, gone.key, gone.versionId);
    const v = await cli(s, "verify", "--json");
    assert.equal(v.code, 4, v.stderr + v.stdout);
    const report = JSON.parse(v.stdout) as {
      findings: { kind: string; key: string; message: string; backupId: number }[];
    };
    const chain = report.findings.filter((f) => f.kind === "chain-broken");
    assert.equal(chain.length, 1, v.stdout);
    for (const p of r.slice(2))
      assert.ok(chain[0]?.message.includes(p.key), `names point ${p.key}: ${chain[0]?.message}`);
    for (const p of r.slice(0, 2))
      assert.ok(!chain[0]?.message.includes(p.key), `does not name ${p.key}`);
    const logs = await backup(s);
    const full = logs.find((l) => l.kind === "full" && typeof l.reason === "string");
    assert.match(String(full?.reason), new RegExp(`${gone.key}.*missing`), JSON.stringify(logs));
    const after = rows(s);
    assert.equal(after.at(-1)?.parentId, null, "the run after the loss is a full backup");
    assert.equal(after.at(-1)?.chainId, after.at(-1)?.id);
    assert.deepEqual(snapshot(await restoreTo(s, "p2", "--id", String(r[1]?.id))), trees[1]);
    const broken = await cli(
      s,
      "restore",
      "data",
      "--id",
      String(r[4]?.id),
      "--to",
      join(s.dir, "broken"),
    );
    assert.equal(broken.code, 3, broken.stderr);
    assert.match(broken.stderr, new RegExp(`${gone.key}.*missing`));
  });

  it("a forged manifest claiming another parent is refused by a restore from the bucket", async () => {
    const s = await setup("forge");
    await sixRuns(s);
    const r = rows(s);
    const point = r[3] as Row;
    // The attacker holds the master key and the writer: a new backup key whose
    // archive is a copy of point 4's and whose manifest skips member 2.
    const w = client(env, env.writer);
    const rd = client(env, env.reader);
    const mKey = point.manifestKey as string;
    const original = decodeManifest(
      Buffer.from(
        (await (
          await rd.send(
            new GetObjectCommand({
              Bucket: s.bucket,
              Key: mKey,
              VersionId: point.manifestVersionId as string,
              SSECustomerAlgorithm: "AES256",
              SSECustomerKey: deriveSseKey(s.masterKey, s.bucket, mKey).toString("base64"),
            }),
          )
        ).Body?.transformToByteArray()) ?? new Uint8Array(),
      ),
    );
    const stamp = new Date(Date.now() - 1000);
    const key = point.key.replace(
      /\d{4}-\d{2}-\d{2}T\d{6}Z-[0-9a-f]{8}/,
      `${stamp.toISOString().slice(0, 10)}T${stamp.toISOString().slice(11, 19).replace(/:/g, "")}Z-0badf00d`,
    );
    const body = randomBytes(2048);
    const put = await w.send(
      new PutObjectCommand({
        Bucket: s.bucket,
        Key: key,
        Body: body,
        SSECustomerAlgorithm: "AES256",
        SSECustomerKey: deriveSseKey(s.masterKey, s.bucket, key).toString("base64"),
      }),
    );
    const chain = original.chain ?? [];
    const forged = {
      ...original,
      createdAt: `${stamp.toISOString().slice(0, 19)}.000Z`,
      archive: { ...original.archive, key, versionId: put.VersionId as string, size: body.length },
      chain: [chain[0], chain[2]].filter((x) => x !== undefined),
      parent: {
        key: chain[2]?.key ?? "",
        versionId: chain[2]?.versionId ?? "",
        manifestVersionId: chain[2]?.manifestVersionId ?? "",
      },
      files: original.files.map((f) =>
        f.member === undefined ? f : { ...f, member: Math.min(f.member, 1) },
      ),
    };
    await w.send(
      new PutObjectCommand({
        Bucket: s.bucket,
        Key: manifestKey(key),
        Body: encodeManifest(forged as typeof original),
        SSECustomerAlgorithm: "AES256",
        SSECustomerKey: deriveSseKey(s.masterKey, s.bucket, manifestKey(key)).toString("base64"),
      }),
    );
    w.destroy();
    rd.destroy();
    rmSync(s.catalog);
    const to = join(s.dir, "forged");
    const res = await cli(
      s,
      "restore",
      "data",
      "--from-bucket",
      "--version-id",
      put.VersionId as string,
      "--to",
      to,
    );
    assert.equal(res.code, 3, res.stderr);
    assert.match(
      res.stderr,
      /chain does not hold: member 2 .* does not name member 1 as its parent/,
    );
  });

  it("kill -9 during an incremental run leaves the chain usable: the next run builds on the last good point and restores exactly", async () => {
    const s = await setup("kill");
    writeFileSync(join(s.data, "a.txt"), "one\n");
    writeFileSync(join(s.data, "big.bin"), randomBytes(1024 * 1024));
    await backup(s);
    await sleep(1100);
    writeFileSync(join(s.data, "b.txt"), "two\n");
    await backup(s);
    await sleep(1100);
    writeFileSync(join(s.data, "c.txt"), "three\n");
    // Held after the server stored the archive (small: one PutObject), before the run records it: the worst moment.
    const gate = join(s.dir, "gate");
    const child = spawn(process.execPath, [CLI, "--config", s.cfg, "backup", "data"], {
      env: {
        ...process.env,
        ...holdEnv([{ command: "PutObjectCommand", when: "after", gate }]),
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (c: Buffer) => {
      stderr += c.toString();
    });
    const exited = new Promise((res) => child.on("exit", res));
    for (let i = 0; i < 600 && !stderr.includes(HOLD_MARK); i++) await sleep(100);
    assert.ok(stderr.includes(HOLD_MARK), stderr);
    child.kill("SIGKILL");
    await exited;
    await sleep(1100);
    writeFileSync(join(s.data, "d.txt"), "four\n");
    const tree = snapshot(s.data);
    const logs = await backup(s);
    const done = logs.find((l) => l.msg === "backup succeeded");
    assert.equal(done?.kind, "incremental", JSON.stringify(logs));
    const r = rows(s);
    const recovered = r.find((x) => x.status === "unverified");
    assert.ok(recovered, "crash recovery recorded the killed run's version");
    assert.equal(recovered.parentId, r[1]?.id, "as an incremental on the point it built on");
    const newest = r.at(-1) as Row;
    assert.equal(
      newest.parentId,
      r[1]?.id,
      "the next run builds on the last good point, not on the orphan",
    );
    assert.deepEqual(snapshot(await restoreTo(s, "after-kill")), tree);
    const v = await cli(s, "verify", "--json");
    const report = JSON.parse(v.stdout) as { findings: { kind: string }[] };
    assert.deepEqual(
      report.findings.filter((f) => f.kind === "chain-broken"),
      [],
      v.stdout,
    );
  });

  /** The reason the run logged for being a full backup. */
  function fullReason(logs: Record<string, unknown>[]): string {
    const l = logs.find((x) => x.kind === "full" && typeof x.reason === "string");
    return String(l?.reason);
  }

  it("starts a new full backup, with the reason logged, when the excludes change, the parent's manifest is gone, or the chain is as long as fullEvery", async () => {
    const s = await setup("why", "{ fullEvery: 3 }");
    writeFileSync(join(s.data, "a.txt"), "a\n");
    writeFileSync(join(s.data, "skip.log"), "log\n");
    await backup(s);
    assert.equal((await backup(s)).find((l) => l.msg === "backup succeeded")?.kind, "incremental");
    await backup(s);
    // fullEvery: 3 — the chain has its three members.
    assert.match(fullReason(await backup(s)), /the chain has 3 members \(fullEvery: 3\)/);
    // The excludes change: a deletion could not be told from a newly excluded path.
    writeFileSync(
      s.cfg,
      readFileSync(s.cfg, "utf8").replace(
        "incremental: { fullEvery: 3 }",
        'incremental: { fullEvery: 3 }\n    exclude: ["*.log"]',
      ),
    );
    assert.match(
      fullReason(await backup(s)),
      /paths or excludes changed since the previous backup/,
    );
    // The parent's manifest removed behind S3's back.
    const last = rows(s).at(-1) as Row;
    adminRemoveVersion(env, s.bucket, last.manifestKey as string, last.manifestVersionId as string);
    rmSync(join(s.dir, "manifests"), { recursive: true, force: true });
    assert.match(fullReason(await backup(s)), /manifest \(backup \d+\) is missing/);
    const r = rows(s);
    assert.deepEqual(
      r.map((x) => (x.parentId === null ? "full" : "incr")),
      ["full", "incr", "incr", "full", "full", "full"],
    );
  });

  it("starts a new full backup when an earlier member's lock cannot be extended", async () => {
    // Bucket default 2 days; the first run is configured for 1, the second for 2:
    // the first member must then be extended, which a policy denies the writer.
    const s = await setup("lockx", "{ fullEvery: 10 }", { bucketDays: 2, days: 1 });
    writeFileSync(join(s.data, "a.txt"), "a\n");
    await backup(s);
    writeFileSync(s.cfg, readFileSync(s.cfg, "utf8").replace("days: 1 }", "days: 2 }"));
    await denySubusersRetention(env, s.bucket);
    const logs = await backup(s);
    assert.match(fullReason(logs), /lock of an earlier chain member cannot be extended/);
    assert.equal(rows(s).at(-1)?.parentId, null);
  });
});
