/**
 * A job's source options end to end on the real Ceph RGW: a manual-only job
 * (no schedule) with oneFileSystem over a tree with a tmpfs mounted inside,
 * excludeIfPresent and excludeFrom is dry-run, backed up, restored, and the
 * restored tree compared with what the options promise; the dry run's counts
 * are those of the archive that was uploaded.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { logRecords, runCli } from "./support/cli.js";
import {
  createLockedBucket,
  type S3Env,
  s3env,
  targetYaml,
  uniqueBucket,
} from "./support/s3env.js";

const isRoot = process.getuid?.() === 0;

/** Type, mode, size and content hash (or link target) per relative path. */
function snapshot(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (rel: string) => {
    const p = rel ? join(root, rel) : root;
    const st = lstatSync(p);
    const mode = (st.mode & 0o7777).toString(8);
    if (st.isSymbolicLink()) out[rel] = `l ${readlinkSync(p)}`;
    else if (st.isDirectory()) {
      if (rel) out[rel] = `d ${mode}`;
      for (const n of readdirSync(p).sort()) walk(rel ? join(rel, n) : n);
    } else {
      const h = createHash("sha256").update(readFileSync(p)).digest("hex").slice(0, 16);
      out[rel] = `f ${mode} ${st.size} ${h}`;
    }
  };
  walk("");
  return out;
}

describe("source options round trip (CLI, Ceph RGW)", {
  skip: !isRoot && "needs root to mount",
}, () => {
  let env: S3Env;
  const mounts: string[] = [];
  before(() => {
    env = s3env();
  });
  after(() => {
    for (const m of mounts.reverse()) execFileSync("umount", ["-l", m]);
  });

  it("backs up only what oneFileSystem, excludeIfPresent and excludeFrom leave, restores it, and the dry run counted the same", async () => {
    const dir = mkdtempSync(join(tmpdir(), "immutd-srcopt-"));
    const bucket = uniqueBucket("srcopt");
    await createLockedBucket(env, bucket, 1);
    writeFileSync(join(dir, "master.key"), `${randomBytes(32).toString("hex")}\n`, {
      mode: 0o600,
    });
    const data = join(dir, "data");
    const put = (rel: string, content: string | Buffer) => {
      mkdirSync(join(data, rel, ".."), { recursive: true });
      writeFileSync(join(data, rel), content);
    };
    put("keep/a.txt", "alpha\n");
    put("keep/big.bin", randomBytes(2 * 1024 * 1024 + 17));
    put("keep/x.log", "dropped by the pattern file\n");
    put("cache/.nobackup", "");
    put("cache/blob", randomBytes(4096));
    put("cache/sub/deep", "gone");
    mkdirSync(join(data, "mnt"));
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=4m,mode=0750", "tmpfs", join(data, "mnt")]);
    mounts.push(join(data, "mnt"));
    put("mnt/on-tmpfs.txt", "another device\n");
    symlinkSync("keep/a.txt", join(data, "link"));
    writeFileSync(join(dir, "patterns"), "# from a file\n*.log\n\n");

    const cfg = join(dir, "config.yaml");
    writeFileSync(
      cfg,
      `catalog: ${dir}/catalog.db
masterKeyFile: ${dir}/master.key
host: srcopt
targets:
${targetYaml(env, { bucket })}jobs:
  - name: data
    target: local
    paths: [${data}]
    oneFileSystem: true
    excludeIfPresent: .nobackup
    excludeFrom: ${dir}/patterns
`,
    );
    const cli = (...args: string[]) => runCli(["--config", cfg, ...args]);

    const dry = await cli("backup", "--dry-run", "data");
    assert.equal(dry.code, 0, dry.stderr);
    // data/ cache/ cache/.nobackup keep/ keep/a.txt keep/big.bin link mnt/
    assert.match(
      dry.stdout,
      /^data: would archive 8 entries \(3 files, 4 directories, 1 symlink\)/m,
    );
    assert.match(dry.stdout, /exclude "\*\.log"\s+1$/m);
    assert.match(dry.stdout, /excludeIfPresent "\.nobackup"\s+2$/m);
    assert.match(dry.stdout, /oneFileSystem\s+1$/m);

    const b = await cli("--log-format", "json", "backup", "data");
    assert.equal(b.code, 0, b.stderr);
    const done = logRecords(b.stderr).find((l) => l.msg === "backup succeeded");
    assert.ok(done, b.stderr);
    assert.equal(done.files, 3, "files in the uploaded archive");

    const to = join(dir, "restored");
    const r = await cli("restore", "data", "--to", to);
    assert.equal(r.code, 0, r.stderr);
    const restored = snapshot(join(to, data.slice(1)));
    const expected = snapshot(data);
    // What the options promise to leave out: the mount's contents, the marked
    // directory's contents except the marker, the pattern file's matches.
    for (const rel of [
      "mnt/on-tmpfs.txt",
      "cache/blob",
      "cache/sub",
      "cache/sub/deep",
      "keep/x.log",
    ]) {
      assert.ok(rel in expected, `control: ${rel} is in the source`);
      delete expected[rel];
    }
    // The mount point is archived as the directory it is on the tmpfs (its mode).
    assert.equal(restored.mnt, "d 750");
    assert.deepEqual(restored, expected);
    rmSync(to, { recursive: true });
  });
});
