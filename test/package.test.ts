/**
 * The npm package as a user gets it: `npm pack`, then README's global install
 * of the tarball into an empty prefix (outside this repository, so nothing
 * resolves to its node_modules), then the installed `immutd`: --version,
 * --help, `config check` of the shipped config.example.yaml, and a command
 * that opens the SQLite catalog (the native addon, prebuilt, loaded), and the
 * shipped shell completion and man page (README's install lines use them).
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const pkg = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as {
  name: string;
  version: string;
  bin: Record<string, string>;
  devDependencies: Record<string, string>;
};

/** npm's environment: this Node first on PATH, as a user's shell would have it. */
function npmEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PATH: `${dirname(realpathSync(process.execPath))}:${process.env.PATH}`,
  };
  delete env.NODE_PATH;
  return env;
}

function run(file: string, args: string[], opts: { cwd: string; env?: NodeJS.ProcessEnv }) {
  const r = spawnSync(file, args, {
    cwd: opts.cwd,
    env: opts.env ?? npmEnv(),
    encoding: "utf8",
    timeout: 600_000,
  });
  if (r.error) throw r.error;
  return r;
}

describe("npm package", () => {
  const work = mkdtempSync(join(tmpdir(), "immutd-package-"));
  after(() => rmSync(work, { recursive: true, force: true }));
  let tarball = "";

  it("packs compiled JavaScript, the example config, README, the systemd and monitoring files only", (t) => {
    // --ignore-scripts: the suite has just built dist/ (prepack would rebuild it under running tests).
    const out = execFileSync(
      "npm",
      ["pack", "--ignore-scripts", "--json", "--pack-destination", work],
      { cwd: REPO, env: npmEnv(), encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] },
    );
    const [info] = JSON.parse(out) as {
      filename: string;
      size: number;
      unpackedSize: number;
      files: { path: string }[];
    }[];
    assert.ok(info);
    tarball = join(work, info.filename);
    t.diagnostic(
      `${info.filename}: ${(info.size / 1024).toFixed(1)} kB packed, ${(info.unpackedSize / 1024).toFixed(1)} kB unpacked, ${info.files.length} files`,
    );
    const paths = info.files.map((f) => f.path);
    for (const p of paths) {
      assert.match(
        p,
        /^(dist\/src\/.+\.js(\.map)?|dist\/man\/immutd\.1|dist\/completion\/(immutd\.bash|_immutd|immutd\.fish)|package\.json|README\.md|config\.example\.yaml|systemd\/.+|monitoring\/.+)$/,
        `unexpected file in the package: ${p}`,
      );
    }
    for (const p of [
      pkg.bin.immutd,
      "config.example.yaml",
      "README.md",
      "systemd/immutd.service",
      "systemd/immutd-backup@.service",
      "systemd/immutd-backup@.timer",
      "systemd/immutd-verify.service",
      "systemd/immutd-verify.timer",
      "systemd/sysusers.d/immutd.conf",
      "systemd/tmpfiles.d/immutd.conf",
      "monitoring/immutd.rules.yml",
      "monitoring/grafana-dashboard.json",
      "dist/man/immutd.1",
      "dist/completion/immutd.bash",
      "dist/completion/_immutd",
      "dist/completion/immutd.fish",
    ]) {
      assert.ok(paths.includes(p ?? ""), `the package contains ${p}`);
    }
    // 1.2 MiB packed: the command-line bundle (dist/src/immutd.js, 3.6 MB of the
    // SDK and the rest, 0.7 MiB packed) beside the tree of modules the workers load.
    assert.ok(info.size < 1.5 * 1024 * 1024, "the package stays small");
  });

  it("installs into an empty prefix with README's command and gives a working immutd", (t) => {
    assert.ok(tarball, "packed");
    const prefix = join(work, "prefix");
    mkdirSync(join(prefix, "lib"), { recursive: true }); // npm -g --prefix wants it
    const started = Date.now();
    const install = run(
      "npm",
      ["install", "--global", "--prefix", prefix, "--no-audit", "--no-fund", tarball],
      { cwd: work },
    );
    assert.equal(install.status, 0, install.stderr);
    t.diagnostic(`npm install -g of the tarball: ${((Date.now() - started) / 1000).toFixed(0)} s`);

    const root = join(prefix, "lib/node_modules", pkg.name);
    const bin = join(prefix, "bin/immutd");
    assert.ok(lstatSync(bin).isSymbolicLink());
    assert.equal(realpathSync(bin), join(root, pkg.bin.immutd ?? ""));
    for (const dev of Object.keys(pkg.devDependencies)) {
      assert.ok(!existsSync(join(root, "node_modules", dev)), `dev dependency ${dev} installed`);
    }
    assert.ok(!existsSync(join(root, "src")) && !existsSync(join(root, "dist/test")));
    // better-sqlite3's prebuilt Node-API binary is used: nothing compiled at install time
    const addon = join(root, "node_modules/better-sqlite3");
    assert.ok(existsSync(join(addon, `prebuilds/linux-${process.arch}.node`)));
    assert.ok(!existsSync(join(addon, "build/Release/better_sqlite3.node")), "compiled at install");

    // The installed command, started through its shebang, from a directory outside the repo.
    const cwd = join(work, "run");
    mkdirSync(cwd);
    const env = { ...npmEnv(), IMMUTD_CONFIG: "" };
    const version = run(bin, ["--version"], { cwd, env });
    assert.equal(version.status, 0, version.stderr);
    assert.equal(version.stdout.trim(), pkg.version);
    const help = run(bin, ["--help"], { cwd, env });
    assert.equal(help.status, 0, help.stderr);
    assert.match(help.stdout, /^Usage: immutd /);
    for (const command of ["backup", "run", "status", "list", "restore", "config", "key"]) {
      assert.match(help.stdout, new RegExp(`^  ${command}\\b`, "m"), `--help lists ${command}`);
    }

    // The shipped completion scripts and man page are what this immutd prints, and
    // the bash one completes through the installed command.
    for (const [file, args] of [
      ["dist/completion/immutd.bash", ["completion", "bash"]],
      ["dist/completion/_immutd", ["completion", "zsh"]],
      ["dist/completion/immutd.fish", ["completion", "fish"]],
      ["dist/man/immutd.1", ["man"]],
    ] as const) {
      const printed = run(bin, [...args], { cwd, env });
      assert.equal(printed.status, 0, printed.stderr);
      const undated = (s: string) => s.replace(/^\.TH .*$/m, ""); // the page's date is the build's
      assert.equal(undated(readFileSync(join(root, file), "utf8")), undated(printed.stdout), file);
    }
    // npm links the page (package.json "man") where man(1) finds it under the prefix
    assert.equal(
      realpathSync(join(prefix, "share/man/man1/immutd.1")),
      join(root, "dist/man/immutd.1"),
    );
    const completes = run(
      "bash",
      [
        "-c",
        `source "$1"; COMP_WORDS=(immutd catalog re); COMP_CWORD=2; _immutd; echo "\${COMPREPLY[@]}"`,
        "bash",
        join(root, "dist/completion/immutd.bash"),
      ],
      { cwd, env: { ...env, PATH: `${join(prefix, "bin")}:${npmEnv().PATH}` } },
    );
    assert.deepEqual([completes.stdout, completes.stderr], ["rebuild\n", ""]);

    // The shipped example config, with its files moved under this scratch directory.
    const etc = join(work, "etc");
    mkdirSync(etc);
    const keygen = run(bin, ["key", "generate", join(etc, "master.key")], { cwd, env });
    assert.equal(keygen.status, 0, keygen.stderr);
    writeFileSync(join(etc, "writer.secret"), "writer-secret\n", { mode: 0o600 });
    const config = join(etc, "config.yaml");
    writeFileSync(
      config,
      readFileSync(join(root, "config.example.yaml"), "utf8")
        .replaceAll("/etc/immutd/", `${etc}/`)
        .replaceAll("/var/lib/immutd/", `${work}/state/`),
    );
    const secrets = {
      IMMUTD_WRITER_ACCESS_KEY_ID: "AKW",
      IMMUTD_READER_ACCESS_KEY_ID: "AKR",
      IMMUTD_READER_SECRET_ACCESS_KEY: "reader-secret",
    };
    const check = run(bin, ["config", "check", "--config", config], {
      cwd,
      env: { ...env, ...secrets },
    });
    assert.equal(check.status, 0, check.stderr);
    assert.match(check.stdout, /: valid\n/);
    assert.ok(!check.stdout.includes("reader-secret"));

    // `list` opens (creates) the catalog: better-sqlite3's binary loads in this Node.
    const list = run(bin, ["list", "--json", "--config", config], {
      cwd,
      env: { ...env, ...secrets },
    });
    assert.equal(list.status, 0, list.stderr);
    assert.deepEqual(JSON.parse(list.stdout), []);
    assert.ok(existsSync(join(work, "state/catalog.db")));
  });
});
