/**
 * The identity systemd/immutd.service gives immutd, without systemd: a
 * dedicated non-root user whose only capability is CAP_DAC_READ_SEARCH
 * (ambient, bounding set, no new privileges), secrets in a credentials
 * directory laid out as systemd lays it out, the catalog in a 0700 state
 * directory it owns. setpriv(1) sets this up; a real backup to the Ceph RGW
 * must then read files only root may read, and the same user without the
 * capability must not. Mount sandboxing (ProtectSystem= etc.) needs systemd
 * itself and is not exercised here.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { CLI, logRecords } from "./support/cli.js";
import {
  createLockedBucket,
  type S3Env,
  s3env,
  targetYaml,
  uniqueBucket,
} from "./support/s3env.js";

const UID = 61234; // no such user: the unit's DynamicUser-free "immutd" stand-in

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI as UID, with CAP_DAC_READ_SEARCH (as the unit grants it) or with no capability. */
function asService(args: string[], env: NodeJS.ProcessEnv, withCap: boolean): Promise<Run> {
  const caps = withCap ? "-all,+dac_read_search" : "-all";
  const setpriv = [
    `--reuid=${UID}`,
    `--regid=${UID}`,
    "--clear-groups",
    `--inh-caps=${caps}`,
    ...(withCap ? [`--ambient-caps=${caps}`] : []),
    `--bounding-set=${caps}`,
    "--no-new-privs",
    "--",
    process.execPath,
    CLI,
    ...args,
  ];
  return new Promise((resolve, reject) => {
    const child = spawn("setpriv", setpriv, {
      env: { PATH: process.env.PATH, IMMUTD_CONFIG: "", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

describe("immutd.service's user and capability (setpriv, Ceph RGW)", () => {
  let env: S3Env;
  before(() => {
    env = s3env();
    assert.equal(process.getuid?.(), 0, "setting up another user and a capability needs root");
    assert.equal(spawnSync("setpriv", ["--version"]).status, 0, "setpriv (util-linux) is needed");
  });

  const dirs: string[] = [];
  after(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  function setup(bucket: string) {
    const dir = mkdtempSync(join(tmpdir(), "immutd-unit-"));
    dirs.push(dir);
    chmodSync(dir, 0o755);
    // What only root may read: a 0600 file in a 0700 directory, and a 0000 file.
    const data = join(dir, "data");
    mkdirSync(data, { mode: 0o755 });
    mkdirSync(join(data, "root-only"), { mode: 0o700 });
    writeFileSync(join(data, "root-only/secret.txt"), "root's secret\n", { mode: 0o600 });
    writeFileSync(join(data, "locked.txt"), "mode 0000\n", { mode: 0o000 });
    writeFileSync(join(data, "public.txt"), "anyone\n", { mode: 0o644 });
    // /run/credentials/immutd.service as systemd makes it: 0500 dir, 0400 files, the service's user.
    const creds = join(dir, "credentials");
    mkdirSync(creds);
    for (const [id, body] of [
      ["master.key", `${randomBytes(32).toString("hex")}\n`],
      ["writer", `${env.writer.secretAccessKey}\n`],
      ["reader", `${env.reader.secretAccessKey}\n`],
    ] as const) {
      writeFileSync(join(creds, id), body, { mode: 0o400 });
      chownSync(join(creds, id), UID, UID);
    }
    chmodSync(creds, 0o500);
    chownSync(creds, UID, UID);
    // StateDirectory=immutd (0700, the user's) and the private TMPDIR.
    for (const d of ["state", "tmp"]) {
      mkdirSync(join(dir, d), { mode: 0o700 });
      chownSync(join(dir, d), UID, UID);
    }
    const config = join(dir, "config.yaml");
    writeFileSync(
      config,
      `catalog: ${dir}/state/catalog.db
masterKeyFile: \${CREDENTIALS_DIRECTORY}/master.key
host: unit-test
targets:
${targetYaml(env, {
  bucket,
  name: "offsite",
  writer: `{ accessKeyId: ${env.writer.accessKeyId}, secretAccessKeyFile: "\${CREDENTIALS_DIRECTORY}/writer" }`,
  reader: `{ accessKeyId: ${env.reader.accessKeyId}, secretAccessKeyFile: "\${CREDENTIALS_DIRECTORY}/reader" }`,
})}jobs:
  - name: data
    target: offsite
    schedule: "0 3 * * *"
    paths: [${data}]
`,
      { mode: 0o640 },
    );
    chownSync(config, 0, UID); // root:immutd 0640, as README's install steps make it
    // systemd sets HOME from the user's passwd entry (the AWS SDK needs one).
    const runEnv = {
      CREDENTIALS_DIRECTORY: creds,
      TMPDIR: join(dir, "tmp"),
      HOME: join(dir, "state"),
    };
    return { dir, data, config, runEnv };
  }

  it("reads files only root may read with CAP_DAC_READ_SEARCH, and not without it", async () => {
    const bucket = uniqueBucket("unit");
    await createLockedBucket(env, bucket, 1);
    const { config, runEnv } = setup(bucket);
    const args = ["--config", config, "--log-format", "json"];

    const withCap = await asService([...args, "backup", "data"], runEnv, true);
    assert.equal(withCap.code, 0, withCap.stderr);
    const done = logRecords(withCap.stderr).find((r) => r.msg === "backup succeeded");
    assert.equal(done?.warnings, 0, withCap.stderr);
    const listing = await asService([...args, "restore", "data", "--list"], runEnv, true);
    assert.equal(listing.code, 0, listing.stderr);
    for (const f of ["root-only/secret.txt", "locked.txt", "public.txt"]) {
      assert.ok(listing.stdout.includes(f), `${f} archived:\n${listing.stdout}`);
    }

    // The same user without the capability: the run goes on, but root's files
    // are warnings, and the exit code (5) tells a script so.
    const without = await asService([...args, "backup", "data"], runEnv, false);
    assert.equal(without.code, 5, without.stderr);
    const warned = logRecords(without.stderr)
      .filter((r) => r.level === "warn" || r.level === 40)
      .map((r) => String(r.path ?? ""));
    assert.ok(
      warned.some((p) => p.endsWith("locked.txt")) && warned.some((p) => p.includes("root-only")),
      `unreadable without the capability:\n${without.stderr}`,
    );
  });

  it("the capability reads but does not write: the data stays untouched", async () => {
    const { data } = setup(uniqueBucket("unitw"));
    const r = spawnSync(
      "setpriv",
      [
        `--reuid=${UID}`,
        `--regid=${UID}`,
        "--clear-groups",
        "--inh-caps=-all,+dac_read_search",
        "--ambient-caps=-all,+dac_read_search",
        "--bounding-set=-all,+dac_read_search",
        "--no-new-privs",
        "--",
        "/bin/sh",
        "-c",
        'cat "$1/root-only/secret.txt" && ! (: >"$1/new.txt") 2>/dev/null && ! (: >>"$1/public.txt") 2>/dev/null',
        "sh",
        data,
      ],
      { encoding: "utf8" },
    );
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, "root's secret\n");
  });
});
