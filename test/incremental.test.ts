/**
 * Incremental backups, the fast side: the planner's rules, the chain
 * decisions and their reasons, the format 3 manifest's checks (a forged
 * chain, a member outside it), the config option, an old catalog's
 * migration, and a chain made and restored on the in-memory store. The real
 * server's side is in incremental.rgw.test.ts.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  copyFileSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Catalog } from "../src/catalog/catalog.js";
import { parseConfig } from "../src/config/config.js";
import { Secret } from "../src/config/secret.js";
import { jobWalk, runBackup } from "../src/flows/backup.js";
import { chainFromCatalog, restoreChain } from "../src/flows/chain-restore.js";
import { selectFromCatalog } from "../src/flows/restore.js";
import { runVerify } from "../src/flows/verify.js";
import { createLogger } from "../src/log.js";
import { differs } from "../src/pipeline/changes.js";
import {
  type ChainNode,
  chainMismatch,
  decideChain,
  namesByMember,
  parentUnfit,
  pointsBrokenBy,
  walkFingerprint,
} from "../src/repo/chain.js";
import {
  decodeManifest,
  encodeManifest,
  type Manifest,
  type ManifestFile,
} from "../src/repo/manifest.js";
import { MemoryBucket } from "../src/store/memory.js";
import { fullConfig, jobConfig, targetConfig } from "./support/target.js";

const work = mkdtempSync(join(tmpdir(), "immutd-incremental-"));
const log = createLogger({ level: "silent" });
const DAY = 86_400_000;

function node(id: number, parentId: number | null, over: Partial<ChainNode> = {}): ChainNode {
  return {
    id,
    parentId,
    createdAt: new Date(Date.parse("2026-11-01T00:00:00Z") + id * DAY).toISOString(),
    status: "ok",
    key: `h/j/k${id}.tar`,
    versionId: `v${id}`,
    ...over,
  };
}

function manifest(over: Partial<Manifest> = {}): Manifest {
  return {
    formatVersion: 1,
    host: "h",
    job: "j",
    createdAt: "2026-11-01T00:00:00.000Z",
    archive: { key: "h/j/a.tar", versionId: "va", size: 10, sha256: "s", compression: "none" },
    encryption: { scheme: "sse-c", keyDerivation: "k" },
    parent: null,
    walk: "w",
    files: [],
    ...over,
  };
}

describe("planner: what counts as changed", () => {
  const dir = join(work, "planner");
  mkdirSync(dir);
  const file = join(dir, "f");
  writeFileSync(file, "content");
  const st = lstatSync(file, { bigint: true });
  const rec: ManifestFile = {
    path: "f",
    type: "file",
    size: Number(st.size),
    mode: Number(st.mode),
    uid: Number(st.uid),
    gid: Number(st.gid),
    mtime: 0,
    offset: 0,
    ino: String(st.ino),
    mtimeNs: String(st.mtimeNs),
    ctimeNs: String(st.ctimeNs),
  };
  it("an entry recorded exactly as it is now is unchanged", () => {
    assert.equal(differs(rec, st), false);
  });
  it("size, mtime, ctime, inode, mode, owner and type each make it changed", () => {
    for (const change of [
      { size: rec.size + 1 },
      { mtimeNs: "1" },
      { ctimeNs: "1" },
      { ino: "1" },
      { mode: rec.mode ^ 0o100 },
      { uid: rec.uid + 1 },
      { gid: rec.gid + 1 },
      { type: "directory" as const },
      { type: "symlink" as const },
    ])
      assert.equal(differs({ ...rec, ...change }, st), true, JSON.stringify(change));
  });
  it("an index without inode and change times (made before incrementals) never says unchanged", () => {
    const { ino: _i, ...old } = rec;
    assert.equal(differs(old, st), true);
  });
  it("a mode-only change moves ctime, so it is caught even if mode were not compared", () => {
    chmodSync(file, 0o600);
    const after = lstatSync(file, { bigint: true });
    assert.equal(differs({ ...rec, mode: Number(after.mode) }, after), true);
  });
});

describe("chain decisions", () => {
  it("a job's walk fingerprint is the one earlier versions wrote: what immutd excludes itself must not change it", () => {
    // Stored in every manifest and compared by the next run: a change here
    // (say, a pattern for immutd's own temporary files added to the walk's
    // excludes) would turn every incremental job's next run into a full
    // backup after an upgrade, "paths or excludes changed" though the user
    // changed nothing. The value is the one every chain so far was written with.
    const job = jobConfig({
      name: "fp",
      target: "t",
      paths: ["/nonexistent-immutd/data"],
      exclude: ["*.tmp"],
    });
    assert.equal(
      walkFingerprint(jobWalk(job, "/nonexistent-immutd/state/catalog.db")),
      "sha256:c6ef3032b70cd52aff3a775e233b2f2f",
    );
  });

  const now = new Date("2026-11-20T00:00:00Z");
  const runs = { fullEvery: { runs: 3, text: "3" } };
  const byId = (...ns: ChainNode[]) => new Map(ns.map((n) => [n.id, n]));
  it("a full backup without the option, on the first run, and once the chain is fullEvery long", () => {
    assert.equal(
      decideChain({
        incremental: undefined,
        previous: node(1, null),
        byId: byId(node(1, null)),
        now,
      }).kind,
      "full",
    );
    const first = decideChain({ incremental: runs, previous: undefined, byId: byId(), now });
    assert.deepEqual(first, { kind: "full", reason: "first backup of the job in this bucket" });
    const a = node(1, null);
    const b = node(2, 1);
    const c = node(3, 2);
    const inc = decideChain({ incremental: runs, previous: b, byId: byId(a, b), now });
    assert.equal(inc.kind, "incremental");
    assert.deepEqual(inc.kind === "incremental" ? inc.members.map((m) => m.id) : [], [1, 2]);
    const long = decideChain({ incremental: runs, previous: c, byId: byId(a, b, c), now });
    assert.equal(long.kind === "full" && long.reason, "the chain has 3 members (fullEvery: 3)");
  });
  it("a full once the chain's full is fullEvery old", () => {
    const a = node(1, null);
    const age = { fullEvery: { ms: 7 * DAY, text: "7d" } };
    const d = decideChain({ incremental: age, previous: a, byId: byId(a), now });
    assert.match(d.kind === "full" ? d.reason : "", /fullEvery: 7d/);
    const fresh = node(1, null, { createdAt: "2026-11-19T00:00:00.000Z" });
    assert.equal(
      decideChain({ incremental: age, previous: fresh, byId: byId(fresh), now }).kind,
      "incremental",
    );
  });
  it("a member that is missing, corrupt or unlocked, or not in the catalog, ends the chain", () => {
    const a = node(1, null, { status: "missing" });
    const b = node(2, 1);
    const d = decideChain({ incremental: runs, previous: b, byId: byId(a, b), now });
    assert.equal(d.kind === "full" && d.reason, "chain member h/j/k1.tar (backup 1) is missing");
    const orphan = node(5, 4);
    const o = decideChain({ incremental: runs, previous: orphan, byId: byId(orphan), now });
    assert.match(o.kind === "full" ? o.reason : "", /a member the catalog does not hold/);
  });
  it("a parent that walked other paths or excludes, or has no change data, is not built on", () => {
    const walk = walkFingerprint({ paths: ["/a"], exclude: ["*.log"] });
    assert.notEqual(walk, walkFingerprint({ paths: ["/a"], exclude: [] }));
    assert.notEqual(walk, walkFingerprint({ paths: ["/a", "/b"], exclude: ["*.log"] }));
    assert.match(parentUnfit(manifest({ walk: "other" }), walk) ?? "", /paths or excludes changed/);
    const { walk: _w, ...old } = manifest();
    assert.match(parentUnfit(old as Manifest, walk) ?? "", /made before incremental backups/);
    const bare = manifest({
      walk,
      files: [
        { path: "x", type: "file", size: 1, mode: 0o100644, uid: 0, gid: 0, mtime: 0, offset: 0 },
      ],
    });
    assert.match(parentUnfit(bare, walk) ?? "", /no inode and change times for x/);
  });
  it("a broken member breaks itself and every later point of its chain, not other chains", () => {
    const all = [node(1, null), node(2, 1), node(3, 2), node(4, 3), node(5, null), node(6, 5)];
    assert.deepEqual(
      pointsBrokenBy(all[1] as ChainNode, all).map((n) => n.id),
      [2, 3, 4],
    );
  });
});

describe("format 3 manifests", () => {
  const member = (i: number) => ({
    key: `h/j/m${i}.tar`,
    versionId: `v${i}`,
    size: 10,
    sha256: `s${i}`,
    compression: "none" as const,
    manifestVersionId: `mv${i}`,
    createdAt: `2026-11-0${i + 1}T00:00:00.000Z`,
  });
  const inc = (chain: ReturnType<typeof member>[], files: Partial<ManifestFile>[] = []): Manifest =>
    manifest({
      formatVersion: 3,
      createdAt: "2026-11-09T00:00:00.000Z",
      parent: {
        key: chain.at(-1)?.key ?? "",
        versionId: chain.at(-1)?.versionId ?? "",
        manifestVersionId: "x",
      },
      chain,
      files: files.map((f) => ({
        path: "p",
        type: "file",
        size: 0,
        mode: 0,
        uid: 0,
        gid: 0,
        mtime: 0,
        offset: 0,
        ...f,
      })),
    });
  it("decode accepts a well-formed chain and refuses what cannot be one", () => {
    const good = inc([member(0), member(1)], [{ member: 0 }, { member: 1 }, {}]);
    assert.deepEqual(decodeManifest(encodeManifest(good)).chain, good.chain);
    assert.throws(
      () => decodeManifest(encodeManifest(inc([member(0)], [{ member: 1 }]))),
      /outside the chain/,
    );
    assert.throws(
      () =>
        decodeManifest(
          encodeManifest({
            ...good,
            parent: { key: "h/j/m0.tar", versionId: "v0", manifestVersionId: "x" },
          }),
        ),
      /not its chain's last member/,
    );
    assert.throws(
      () => decodeManifest(encodeManifest({ ...good, formatVersion: 1 })),
      /format 1 manifest names a parent/,
    );
    assert.throws(() => decodeManifest(encodeManifest({ ...good, chain: [] })), /no chain/);
  });
  it("namesByMember sends each entry to the member holding it", () => {
    const m = inc(
      [member(0), member(1)],
      [{ path: "a", member: 0 }, { path: "d/", type: "directory", member: 1 }, { path: "b" }],
    );
    assert.deepEqual(
      namesByMember(m, () => true).map((s) => [...s]),
      [["a"], ["d"], ["b"]],
    );
    assert.deepEqual(
      namesByMember(m, (n) => n === "b").map((s) => s.size),
      [0, 0, 1],
    );
  });
  it("chainMismatch refuses a chain that does not lead back through each member's own manifest to a full", () => {
    const m0 = manifest({
      archive: { key: "h/j/m0.tar", versionId: "v0", size: 10, sha256: "s0", compression: "none" },
      createdAt: member(0).createdAt,
    });
    const m1 = inc([member(0)]);
    const real1 = {
      ...m1,
      createdAt: member(1).createdAt,
      archive: {
        key: "h/j/m1.tar",
        versionId: "v1",
        size: 10,
        sha256: "s1",
        compression: "none" as const,
      },
    };
    const point = inc([member(0), member(1)]);
    assert.equal(chainMismatch(point, [m0, real1]), undefined);
    // Claims member 0 as parent of member 1's place: member 1's own manifest says otherwise.
    const skipping = inc([member(0), member(2)]);
    const real2 = {
      ...real1,
      archive: { ...real1.archive, key: "h/j/m2.tar", versionId: "v2", sha256: "s2" },
      createdAt: member(2).createdAt,
      parent: { key: "h/j/m1.tar", versionId: "v1", manifestVersionId: "mv1" },
      chain: [member(0), member(1)],
    };
    assert.match(
      chainMismatch(skipping, [m0, real2]) ?? "",
      /does not name member 1 as its parent/,
    );
    // Another archive than named, another job, a first member that is not a full.
    assert.match(
      chainMismatch(point, [m0, { ...real1, archive: { ...real1.archive, sha256: "x" } }]) ?? "",
      /not the one named/,
    );
    assert.match(
      chainMismatch(point, [{ ...m0, job: "other" }, real1]) ?? "",
      /belongs to host h job other/,
    );
    assert.match(
      chainMismatch(point, [{ ...real1, archive: m0.archive, createdAt: m0.createdAt }, real1]) ??
        "",
      /not a full backup/,
    );
  });
});

describe("incremental: option", () => {
  const dir = mkdtempSync(join(work, "cfg-"));
  const key = join(dir, "k");
  writeFileSync(key, randomBytes(32).toString("hex"));
  const cfg = (inc: string) => `catalog: ${dir}/c.db
masterKeyFile: ${key}
targets:
  t:
    endpoint: https://s3.example.com
    bucket: bucket-one
    retention: { mode: COMPLIANCE, days: 30 }
    credentials:
      writer: { accessKeyId: a, secretAccessKey: b }
      reader: { accessKeyId: c, secretAccessKey: d }
jobs:
  - name: j
    target: t
    paths: [/etc]
    incremental: ${inc}
`;
  it("takes a count of runs or a duration", () => {
    assert.deepEqual(
      parseConfig(cfg("{ fullEvery: 7 }"), "/x.yaml", { env: {} }).config.jobs[0]?.incremental,
      {
        fullEvery: { runs: 7, text: "7" },
      },
    );
    assert.deepEqual(
      parseConfig(cfg('{ fullEvery: "7d" }'), "/x.yaml", { env: {} }).config.jobs[0]?.incremental,
      {
        fullEvery: { ms: 7 * DAY, text: "7d" },
      },
    );
  });
  it("refuses anything else, naming the key", () => {
    for (const bad of ['{ fullEvery: "7 days" }', "{ fullEvery: 0 }", "{ every: 7 }", "{}"])
      assert.throws(() => parseConfig(cfg(bad), "/x.yaml", { env: {} }), /incremental/, bad);
  });
});

describe("catalog migration", () => {
  it("an old catalog's backups become full backups, each its own chain", () => {
    const path = join(work, "old.db");
    copyFileSync(new URL("../../test/fixtures/catalog-0.1.0.db", import.meta.url), path);
    const c = Catalog.open(path);
    const [b] = c.listBackups();
    assert.equal(b?.parentId, null);
    assert.equal(b?.chainId, b?.id);
    c.close();
  });
});

describe("a chain on the in-memory store", () => {
  it("backs up only what changed, restores every point exactly, and verify names the points a lost member breaks", async () => {
    const tree = join(work, "tree");
    mkdirSync(join(tree, "d"), { recursive: true });
    writeFileSync(join(tree, "a"), "a1");
    writeFileSync(join(tree, "d", "b"), randomBytes(100_000));
    symlinkSync("a", join(tree, "l"));
    const clock = { t: Date.now() };
    const now = () => new Date(clock.t);
    const bucket = new MemoryBucket("incr-mem", {
      defaultRetention: { mode: "COMPLIANCE", days: 7 },
    });
    bucket.now = now;
    const tc = targetConfig({
      name: "mem",
      bucket: bucket.name,
      retention: { mode: "COMPLIANCE", days: 7 },
    });
    const job = jobConfig({
      name: "t",
      target: "mem",
      paths: [tree],
      incremental: { fullEvery: { runs: 5, text: "5" } },
    });
    const catalog = Catalog.open(join(work, "mem.db"));
    const config = fullConfig({
      catalog: catalog.path,
      masterKey: new Secret(randomBytes(32)),
      host: "h",
      targets: { mem: tc },
      jobs: [job],
    });
    const target = bucket.target("mem");
    const backup = async () => {
      clock.t += 60_000;
      const r = await runBackup(job, { config, catalog, target, targetConfig: tc, log, now });
      assert.equal(r.status, "succeeded", r.error);
      return r;
    };
    const read = (root: string) =>
      Object.fromEntries(
        readdirSync(root, { recursive: true, encoding: "utf8" })
          .sort()
          .map((p) => {
            const st = lstatSync(join(root, p));
            return [
              p,
              st.isSymbolicLink()
                ? "->"
                : st.isDirectory()
                  ? "dir"
                  : readFileSync(join(root, p)).toString("hex"),
            ];
          }),
      );
    const trees = [read(tree)];
    const first = await backup();
    assert.equal(first.kind, "full");
    await sleep(20);
    writeFileSync(join(tree, "a"), "a2");
    unlinkSync(join(tree, "l"));
    mkdirSync(join(tree, "l"));
    trees.push(read(tree));
    const second = await backup();
    assert.equal(second.kind, "incremental");
    assert.deepEqual(second.incremental, { parentId: first.backupId, changed: 3, unchanged: 2 });
    const third = await backup();
    assert.equal(third.incremental?.changed, 0);
    trees.push(read(tree));
    assert.ok(third.bytes < first.bytes / 20, `${third.bytes} vs ${first.bytes}`);
    for (const [i, r] of [first, second, third].entries()) {
      const src = selectFromCatalog(catalog, "t", { id: r.backupId as number });
      const ms = {
        reader: target.reader,
        bucket: bucket.name,
        prefix: "",
        masterKey: config.masterKey.reveal(),
      };
      const chain = await chainFromCatalog(catalog, src, ms);
      assert.equal(chain === undefined, i === 0);
      const dest = join(work, `restored-${i}`);
      mkdirSync(dest);
      if (chain)
        await restoreChain(target.reader, chain, {
          kind: "extract",
          dest,
          overwrite: false,
          devices: false,
        });
      else {
        const { restore } = await import("../src/flows/restore.js");
        await restore(target.reader, src, {
          kind: "extract",
          dest,
          overwrite: false,
          devices: false,
        });
      }
      assert.deepEqual(read(join(dest, tree.slice(1))), trees[i], `point ${i + 1}`);
    }
    // A point's index naming an entry its member does not hold is refused, not restored short.
    {
      const src = selectFromCatalog(catalog, "t", { id: third.backupId as number });
      const ms = {
        reader: target.reader,
        bucket: bucket.name,
        prefix: "",
        masterKey: config.masterKey.reveal(),
      };
      const chain = await chainFromCatalog(catalog, src, ms);
      assert.ok(chain);
      const ghost = {
        ...(chain.manifest.files[0] as ManifestFile),
        path: "not/in/the/archive",
        member: 0,
      };
      const forged = {
        ...chain,
        manifest: { ...chain.manifest, files: [...chain.manifest.files, ghost] },
      };
      const dest = join(work, "restored-ghost");
      mkdirSync(dest);
      await assert.rejects(
        restoreChain(target.reader, forged, {
          kind: "extract",
          dest,
          overwrite: false,
          devices: false,
        }),
        /lacks 1 of the entries the point's manifest says it holds \(first: not\/in\/the\/archive\)/,
      );
    }
    // keepLatestLocked keeps the whole newest chain locked: two days on, verify
    // extends the newest backup and every member before it as far.
    clock.t += 2 * DAY;
    const extended = await runVerify({ config, catalog, targets: { mem: target }, log, now });
    assert.deepEqual(extended.findings, []);
    const newestUntil = Date.parse(catalog.backup(third.backupId as number)?.retainUntil ?? "");
    assert.ok(newestUntil > clock.t + 7 * DAY - 60_000, "the newest backup was extended");
    for (const r of [first, second]) {
      const row = catalog.backup(r.backupId as number);
      assert.ok(
        Date.parse(row?.retainUntil ?? "") >= newestUntil,
        `backup ${row?.id} until ${row?.retainUntil}`,
      );
      const stored = bucket.versions.find((v) => v.versionId === row?.versionId);
      assert.ok(
        (stored?.retention?.retainUntil.getTime() ?? 0) >= newestUntil,
        "on the server too",
      );
    }
    // The second member vanishes: verify names the third point.
    const row2 = catalog.backup(second.backupId as number);
    bucket.versions.splice(
      bucket.versions.findIndex((v) => v.versionId === row2?.versionId),
      1,
    );
    const report = await runVerify({ config, catalog, targets: { mem: target }, log, now });
    const broken = report.findings.filter((f) => f.kind === "chain-broken");
    assert.equal(broken.length, 1);
    assert.match(broken[0]?.message ?? "", new RegExp(`backup ${third.backupId}`));
    const next = await backup();
    assert.equal(next.kind, "full");
    assert.match(next.fullReason ?? "", /is missing/);
    rmSync(join(work, "restored-0"), { recursive: true });
  });
});
