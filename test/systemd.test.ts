/**
 * systemd/: the unit passes `systemd-analyze verify`, carries the hardening
 * README promises (and reports the exposure score README states), reads the
 * config and the catalog where immutd's defaults put them, and the
 * `${CREDENTIALS_DIRECTORY}/NAME` form of the …File keys works the way systemd
 * sets that variable. The sysusers and tmpfiles snippets are applied to a
 * scratch root. Running the unit itself needs systemd as PID 1 (not here);
 * test/systemd.rgw.test.ts runs a backup with the unit's user-and-capability
 * setup instead.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import {
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { DEFAULT_CONFIG_PATH, parseConfig } from "../src/config/config.js";
import { CLI, runCli } from "./support/cli.js";
import { settings } from "./support/unit-file.js";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const UNIT = join(REPO, "systemd/immutd.service");
const unitText = readFileSync(UNIT, "utf8");
const work = mkdtempSync(join(tmpdir(), "immutd-systemd-"));
after(() => rmSync(work, { recursive: true, force: true }));

const service = settings(unitText);
const one = (key: string): string | undefined => {
  const v = service.get(key);
  assert.ok(!v || v.length === 1, `${key} is set more than once`);
  return v?.[0];
};

/** The unit with ExecStart pointing at an executable wrapper around this build's CLI. */
function unitForThisBuild(): string {
  const bin = join(work, "immutd");
  writeFileSync(bin, `#!/bin/sh\nexec "${process.execPath}" "${CLI}" "$@"\n`, { mode: 0o755 });
  const file = join(work, "immutd.service");
  const exec = one("ExecStart") ?? "";
  writeFileSync(file, unitText.replace(exec, exec.replace(/^\S+/, bin)));
  return file;
}

describe("systemd/immutd.service", () => {
  it("passes systemd-analyze verify without a warning", () => {
    const r = spawnSync("systemd-analyze", ["verify", unitForThisBuild()], { encoding: "utf8" });
    assert.equal(r.error, undefined, "systemd-analyze must be installed (Debian: systemd)");
    assert.equal(r.status, 0, r.stderr);
    // verify exits 0 for settings it ignores ("Failed to parse …, ignoring"): any output is a defect.
    assert.equal(`${r.stdout}${r.stderr}`.trim(), "");
  });

  it("runs `immutd run` as user immutd with the default config and the catalog in its StateDirectory", () => {
    assert.equal(one("User"), "immutd");
    assert.equal(one("Group"), "immutd");
    assert.equal(one("Type"), "exec");
    const exec = (one("ExecStart") ?? "").split(/\s+/);
    assert.equal(exec[0], "/usr/local/bin/immutd");
    assert.deepEqual(exec.slice(1), ["--config", DEFAULT_CONFIG_PATH, "run"]);
    assert.equal(one("StateDirectory"), "immutd");
    assert.equal(one("StateDirectoryMode"), "0700");
    // the catalog immutd uses by default (config.example.yaml states it) is inside the StateDirectory
    const example = readFileSync(join(REPO, "config.example.yaml"), "utf8");
    const catalog = /^catalog: (\S+)$/m.exec(example)?.[1];
    assert.equal(catalog && dirname(catalog), `/var/lib/${one("StateDirectory")}`);
    assert.equal(one("ExecReload"), "/bin/kill -HUP $MAINPID");
  });

  it("restarts on failure but not after a configuration error (78), and outlasts the daemon's shutdown", () => {
    assert.equal(one("Restart"), "on-failure");
    assert.equal(one("RestartPreventExitStatus"), "78");
    assert.equal(one("KillMode"), "mixed");
    // immutd waits 30 s for running backups and exits by its own watchdog at 45 s
    // (src/cli/run.ts); systemd must not SIGKILL it before that.
    const stop = /^(\d+)s$/.exec(one("TimeoutStopSec") ?? "");
    assert.ok(stop && Number(stop[1]) > 45, `TimeoutStopSec=${one("TimeoutStopSec")}`);
  });

  it("can read everything and write only its catalog and private temporary directories", () => {
    const expected: Record<string, string> = {
      CapabilityBoundingSet: "CAP_DAC_READ_SEARCH",
      AmbientCapabilities: "CAP_DAC_READ_SEARCH",
      NoNewPrivileges: "yes",
      ProtectSystem: "strict",
      ProtectHome: "read-only",
      PrivateTmp: "yes",
      PrivateDevices: "yes",
      ProtectKernelTunables: "yes",
      ProtectKernelModules: "yes",
      ProtectControlGroups: "yes",
      RestrictSUIDSGID: "yes",
      RestrictNamespaces: "yes",
      LockPersonality: "yes",
      SystemCallArchitectures: "native",
      SystemCallErrorNumber: "EPERM",
      UMask: "0077",
    };
    for (const [key, value] of Object.entries(expected)) assert.equal(one(key), value, key);
    assert.deepEqual(service.get("SystemCallFilter"), [
      "@system-service",
      "~@privileged @resources",
    ]);
    // no extra writable paths, and nothing that would break Node.js or the capability
    for (const key of ["ReadWritePaths", "MemoryDenyWriteExecute", "PrivateUsers", "ProcSubset"]) {
      assert.equal(service.get(key), undefined, `${key} must not be set (see the unit's comments)`);
    }
    assert.deepEqual(service.get("Environment"), [
      "TMPDIR=/var/tmp",
      "NODE_OPTIONS=--max-semi-space-size=8",
    ]);
    // Node.js refuses to start at all with a flag NODE_OPTIONS does not allow.
    assert.ok(process.allowedNodeEnvironmentFlags.has("--max-semi-space-size"));
  });

  it("has the exposure score README reports", () => {
    const r = spawnSync("systemd-analyze", ["security", "--offline=true", unitForThisBuild()], {
      encoding: "utf8",
    });
    assert.equal(r.status, 0, r.stderr);
    const score = /Overall exposure level for immutd\.service: (\d+\.\d)/.exec(r.stdout)?.[1];
    assert.ok(score, r.stdout);
    assert.ok(Number(score) <= 2, `exposure ${score}: the unit lost some hardening`);
    const readme = readFileSync(join(REPO, "README.md"), "utf8");
    assert.ok(
      new RegExp(`exposure score of\\s+${score.replace(".", "\\.")}\\b`).test(readme),
      `README must report the measured exposure score ${score}`,
    );
  });

  it("loads master.key, writer and reader as credentials from /etc/immutd/credentials", () => {
    assert.deepEqual(service.get("LoadCredential"), [
      "master.key:/etc/immutd/credentials/master.key",
      "writer:/etc/immutd/credentials/writer",
      "reader:/etc/immutd/credentials/reader",
    ]);
  });
});

/** The reference as written in a config: `${CREDENTIALS_DIRECTORY}`. */
const CRED = `\${CREDENTIALS_DIRECTORY}`;

/** config.example.yaml with its secrets taken from $CREDENTIALS_DIRECTORY, as README's install steps say. */
function credentialsConfig(): string {
  return readFileSync(join(REPO, "config.example.yaml"), "utf8")
    .replace("masterKeyFile: /etc/immutd/master.key", `masterKeyFile: ${CRED}/master.key`)
    .replace(
      "secretAccessKeyFile: /etc/immutd/writer.secret",
      `secretAccessKeyFile: ${CRED}/writer`,
    )
    .replace(
      `secretAccessKey: \${IMMUTD_READER_SECRET_ACCESS_KEY}`,
      `secretAccessKeyFile: ${CRED}/reader`,
    );
}

describe(`secrets through LoadCredential= and ${CRED}`, () => {
  const ids = (service.get("LoadCredential") ?? []).map((c) => c.split(":")[0] ?? "");
  const env = { IMMUTD_WRITER_ACCESS_KEY_ID: "AKW", IMMUTD_READER_ACCESS_KEY_ID: "AKR" };

  it("resolves to /run/credentials/immutd.service/NAME, the value systemd gives the variable", () => {
    const read: string[] = [];
    const text = credentialsConfig();
    parseConfig(text, "config.yaml", {
      env: { ...env, CREDENTIALS_DIRECTORY: "/run/credentials/immutd.service" },
      readSecretFile: (p) => {
        read.push(p);
        return Buffer.from(p.endsWith("master.key") ? `${"cd".repeat(32)}\n` : "secret\n");
      },
    });
    assert.deepEqual(
      read.sort(),
      ids.map((id) => `/run/credentials/immutd.service/${id}`).sort(),
      "the config reads exactly the credentials the unit loads",
    );
  });

  it("`immutd config check` reads credential files laid out as systemd does (0400 in 0500), without warnings", async () => {
    const creds = join(work, "credentials");
    mkdirSync(creds, { recursive: true });
    for (const id of ids) {
      const body = id === "master.key" ? `${"cd".repeat(32)}\n` : `${id}-secret\n`;
      writeFileSync(join(creds, id), body, { mode: 0o400 });
    }
    chmodSync(creds, 0o500);
    const file = join(work, "config.yaml");
    writeFileSync(file, credentialsConfig());
    const r = await runCli(["--log-format", "json", "config", "check", "--config", file], {
      env: { ...env, CREDENTIALS_DIRECTORY: creds },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, "", "no warning (e.g. about the files' modes)");
    assert.match(r.stdout, new RegExp(`masterKey: <redacted> \\(from ${creds}/master\\.key\\)`));
    assert.ok(!r.stdout.includes("writer-secret"));
  });

  it("outside the service, without $CREDENTIALS_DIRECTORY, says which variable is missing (exit 78)", async () => {
    const file = join(work, "config-unset.yaml");
    writeFileSync(file, credentialsConfig());
    const r = await runCli(["config", "check", "--config", file], { env });
    assert.equal(r.code, 78);
    assert.match(
      r.stderr,
      /config-unset\.yaml:\d+:\d+: environment variable CREDENTIALS_DIRECTORY is not set/,
    );
  });
});

describe("systemd/sysusers.d and systemd/tmpfiles.d", () => {
  it("create the immutd system user and /etc/immutd (0750 root:immutd) with credentials/ (0700 root)", () => {
    assert.equal(process.getuid?.(), 0, "this test applies the snippets to a scratch root as root");
    const root = join(work, "root");
    mkdirSync(join(root, "etc"), { recursive: true });
    execFileSync(
      "systemd-sysusers",
      [`--root=${root}`, join(REPO, "systemd/sysusers.d/immutd.conf")],
      { stdio: "pipe" },
    );
    const passwd = readFileSync(join(root, "etc/passwd"), "utf8");
    const user = /^immutd:x:(\d+):(\d+):[^:]*:([^:]*):([^:\n]*)$/m.exec(passwd);
    assert.ok(user, passwd);
    const [, uid, gid, home, shell] = user;
    assert.ok(Number(uid) < 1000, "a system user");
    assert.equal(home, "/var/lib/immutd");
    assert.equal(shell, "/usr/sbin/nologin");
    const group = /^immutd:x:(\d+):/m.exec(readFileSync(join(root, "etc/group"), "utf8"));
    assert.equal(group?.[1], gid);

    execFileSync(
      "systemd-tmpfiles",
      [`--root=${root}`, "--create", join(REPO, "systemd/tmpfiles.d/immutd.conf")],
      { stdio: "pipe" },
    );
    const conf = statSync(join(root, "etc/immutd"));
    assert.equal((conf.mode & 0o7777).toString(8), "750");
    assert.deepEqual([conf.uid, conf.gid], [0, Number(gid)]);
    const creds = statSync(join(root, "etc/immutd/credentials"));
    assert.equal((creds.mode & 0o7777).toString(8), "700");
    assert.deepEqual([creds.uid, creds.gid], [0, 0]);
  });
});
