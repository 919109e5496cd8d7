/**
 * The Dockerfile, replayed outside a container (no container engine runs where
 * the tests run). Parsed from the file itself, so the replay cannot drift:
 * - build stage: its COPY sources (which .dockerignore must let through), ENV
 *   and RUN lines run verbatim with /bin/sh in a scratch directory, with this
 *   Node.js standing in for the image's;
 * - runtime stage: its COPY lines into a scratch root; its one RUN (apt-get
 *   tini, useradd, two directories and a symlink) needs root on Debian and is
 *   emulated: the catalog directory and the `immutd` symlink are created as it
 *   says; tini is left out;
 * - then ENTRYPOINT + CMD (`immutd run`) as the USER, with the image's ENV,
 *   the data read-only to it: a real backup to the Ceph RGW, the HEALTHCHECK
 *   command, one-off `list` and `restore` commands, and SIGTERM.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  chownSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, isAbsolute, join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { createLockedBucket, s3env, targetYaml, uniqueBucket } from "./support/s3env.js";

const REPO = fileURLToPath(new URL("../../", import.meta.url));

interface Instruction {
  op: string;
  args: string;
}
interface Stage {
  image: string;
  name: string | undefined;
  instructions: Instruction[];
}

/** The Dockerfile as stages of instructions (continuations joined, comments dropped, ARGs substituted). */
function parseDockerfile(text: string): Stage[] {
  const logical: string[] = [];
  let pending = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line.startsWith("#") || (line === "" && pending === "")) continue;
    if (line.endsWith("\\")) {
      pending += `${line.slice(0, -1).trim()} `;
      continue;
    }
    logical.push(`${pending}${line}`.trim());
    pending = "";
  }
  const args: Record<string, string> = {};
  const stages: Stage[] = [];
  for (const line of logical.filter((l) => l !== "")) {
    const [, op = "", rest = ""] = /^(\S+)\s*(.*)$/.exec(line) ?? [];
    const args_ = rest.replace(/\$\{(\w+)\}/g, (_, n: string) => args[n] ?? "");
    if (op === "ARG" && stages.length === 0) {
      const [k = "", v = ""] = rest.split("=");
      args[k] = v;
    } else if (op === "FROM") {
      const [, image = "", name] = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args_) ?? [];
      stages.push({ image, name, instructions: [] });
    } else {
      assert.ok(stages.length > 0, `${op} before FROM`);
      stages.at(-1)?.instructions.push({ op, args: args_ });
    }
  }
  return stages;
}

function envPairs(args: string): [string, string][] {
  return [...args.matchAll(/(\w+)=("[^"]*"|\S+)/g)].map((m) => [
    m[1] ?? "",
    (m[2] ?? "").replace(/^"|"$/g, ""),
  ]);
}

/** Paths the .dockerignore (an allow list: "*" then "!path" lines) lets into the build context. */
function contextAllows(path: string): boolean {
  const lines = readFileSync(join(REPO, ".dockerignore"), "utf8")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  assert.equal(lines[0], "*", ".dockerignore starts by excluding everything");
  return lines.slice(1).some((l) => l.startsWith("!") && l.slice(1).replace(/\/$/, "") === path);
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      s.close(() => resolve(typeof a === "object" && a ? a.port : 0));
    });
  });
}

describe("Dockerfile (replayed outside a container; Ceph RGW)", () => {
  const stages = parseDockerfile(readFileSync(join(REPO, "Dockerfile"), "utf8"));
  const work = mkdtempSync(join(tmpdir(), "immutd-image-"));
  chmodSync(work, 0o755);
  after(() => rmSync(work, { recursive: true, force: true }));
  const buildRoot = join(work, "build");
  const image = join(work, "image");
  const inBuild = (p: string) => join(buildRoot, p);
  const inImage = (p: string) => join(image, p);

  it("has two stages on the official Node image: build, then a runtime stage", () => {
    assert.equal(stages.length, 2);
    for (const s of stages) assert.match(s.image, /^node:\d+-[a-z]+-slim$/);
    assert.equal(stages[0]?.name, "build");
  });

  it("build stage: npm ci, compile, prune to production dependencies and one SQLite binary", (t) => {
    const [build] = stages;
    assert.ok(build);
    const env: Record<string, string> = {
      PATH: `${dirname(process.execPath)}:/usr/local/bin:/usr/bin:/bin`,
      HOME: process.env.HOME ?? "/root",
    };
    // The build machine's way to the registry (what `docker build` gets from its host or proxy).
    for (const k of [
      "NODE_EXTRA_CA_CERTS",
      "HTTPS_PROXY",
      "https_proxy",
      "HTTP_PROXY",
      "http_proxy",
      "NO_PROXY",
      "no_proxy",
    ]) {
      const v = process.env[k];
      if (v !== undefined) env[k] = v;
    }
    let cwd = buildRoot;
    mkdirSync(cwd, { recursive: true });
    const started = Date.now();
    for (const { op, args } of build.instructions) {
      if (op === "WORKDIR") {
        cwd = isAbsolute(args) ? inBuild(args) : join(cwd, args);
        mkdirSync(cwd, { recursive: true });
      } else if (op === "ENV") {
        for (const [k, v] of envPairs(args)) env[k] = v;
      } else if (op === "COPY") {
        const parts = args.split(/\s+/);
        const dest = parts.pop() ?? "";
        assert.ok(!parts.some((p) => p.startsWith("--")), `COPY ${args}: no options expected`);
        for (const src of parts) {
          assert.ok(contextAllows(src), `.dockerignore lets ${src} into the build context`);
          const to = dest.endsWith("/") ? join(cwd, dest, src) : join(cwd, dest);
          cpSync(join(REPO, src), to, { recursive: true, verbatimSymlinks: true });
        }
      } else if (op === "RUN") {
        assert.ok(!args.includes("apt-get"), `RUN ${args}: the build stage needs no packages`);
        assert.ok(!/\s\/(?!dev\/null)/.test(args), `RUN ${args}: absolute path in the build stage`);
        const t0 = Date.now();
        const r = spawnSync("/bin/sh", ["-c", args], { cwd, env, encoding: "utf8" });
        assert.equal(r.status, 0, `RUN ${args}\n${r.stdout}\n${r.stderr}`);
        t.diagnostic(`RUN ${args.slice(0, 40)}…: ${((Date.now() - t0) / 1000).toFixed(0)} s`);
      } else {
        assert.fail(`unexpected ${op} in the build stage`);
      }
    }
    t.diagnostic(`build stage replayed in ${((Date.now() - started) / 1000).toFixed(0)} s`);

    const pkg = JSON.parse(readFileSync(inBuild("/build/package.json"), "utf8")) as {
      devDependencies: Record<string, string>;
    };
    for (const dev of Object.keys(pkg.devDependencies)) {
      assert.ok(!existsSync(inBuild(`/build/node_modules/${dev}`)), `${dev} pruned`);
    }
    // better-sqlite3: this platform's prebuilt binary only, nothing compiled, no sources
    const addon = inBuild("/build/node_modules/better-sqlite3");
    assert.deepEqual(readdirSync(join(addon, "prebuilds")), [`linux-${process.arch}.node`]);
    for (const gone of ["build", "deps", "src"]) {
      assert.ok(!existsSync(join(addon, gone)), `node_modules/better-sqlite3/${gone}`);
    }
  });

  it("runtime stage: `immutd run` as the non-root USER backs up read-only data, is healthy, stops on SIGTERM", async (t) => {
    const [, runtime] = stages;
    assert.ok(runtime);
    assert.ok(existsSync(inBuild("/build/dist/src/cli.js")), "the build stage ran");
    const env: Record<string, string> = {};
    let user: [number, number] = [0, 0];
    let entrypoint: string[] = [];
    let cmd: string[] = [];
    let healthcheck: string[] = [];
    for (const { op, args } of runtime.instructions) {
      if (op === "COPY") {
        const parts = args.split(/\s+/);
        const dest = parts.pop() ?? "";
        const from = parts[0]?.startsWith("--from=") ? parts.shift()?.slice(7) : undefined;
        for (const src of parts) {
          let source: string;
          if (from) {
            assert.equal(from, "build");
            source = inBuild(src);
          } else {
            assert.ok(contextAllows(src), `.dockerignore lets ${src} into the build context`);
            source = join(REPO, src);
          }
          const to = dest.endsWith("/")
            ? inImage(join(dest, src.split("/").pop() ?? ""))
            : inImage(dest);
          cpSync(source, to, { recursive: true, verbatimSymlinks: true });
        }
      } else if (op === "RUN") {
        // Emulated (see the file comment); make sure it still says what is emulated.
        assert.match(args, /install -d -o immutd -g immutd -m 0700 \/var\/lib\/immutd/);
        assert.match(args, /useradd --system --uid 10001 --gid immutd/);
        assert.match(args, /ln -s \/opt\/immutd\/dist\/src\/cli\.js \/usr\/local\/bin\/immutd/);
      } else if (op === "ENV") {
        for (const [k, v] of envPairs(args)) env[k] = v;
      } else if (op === "USER") {
        user = args.split(":").map(Number) as [number, number];
      } else if (op === "ENTRYPOINT") {
        entrypoint = JSON.parse(args) as string[];
      } else if (op === "CMD") {
        cmd = JSON.parse(args) as string[];
      } else if (op === "HEALTHCHECK") {
        healthcheck = JSON.parse(/\bCMD\s+(\[.*\])$/.exec(args)?.[1] ?? "[]") as string[];
      } else {
        assert.ok(["VOLUME", "EXPOSE"].includes(op), `unexpected ${op}`);
      }
    }
    const [uid, gid] = user;
    assert.ok(uid > 0 && gid > 0, "runs as a non-root user");
    assert.deepEqual(entrypoint.slice(0, 2), ["/usr/bin/tini", "--"]);
    assert.deepEqual([...entrypoint.slice(2), ...cmd], ["immutd", "run"]);
    assert.equal(env.IMMUTD_CONFIG, "/etc/immutd/config.yaml");

    // The RUN line's effects: the catalog directory, the command on PATH.
    mkdirSync(inImage("/var/lib"), { recursive: true });
    mkdirSync(inImage("/var/lib/immutd"), { mode: 0o700 });
    chownSync(inImage("/var/lib/immutd"), uid, gid);
    mkdirSync(inImage("/usr/local/bin"), { recursive: true });
    symlinkSync(inImage("/opt/immutd/dist/src/cli.js"), inImage("/usr/local/bin/immutd"));
    assert.ok(
      !existsSync(inImage("/opt/immutd/src")) && !existsSync(inImage("/opt/immutd/dist/test")),
    );
    // Completion and man page where Debian's bash-completion, zsh, fish and man look,
    // each what the image's own immutd prints.
    for (const [file, args] of [
      ["/usr/share/bash-completion/completions/immutd", ["completion", "bash"]],
      ["/usr/share/zsh/vendor-completions/_immutd", ["completion", "zsh"]],
      ["/usr/share/fish/vendor_completions.d/immutd.fish", ["completion", "fish"]],
      ["/usr/share/man/man1/immutd.1", ["man"]],
    ] as const) {
      const printed = spawnSync(
        process.execPath,
        [inImage("/opt/immutd/dist/src/cli.js"), ...args],
        {
          encoding: "utf8",
        },
      );
      assert.equal(printed.status, 0, printed.stderr);
      const installed = readFileSync(inImage(file), "utf8");
      // the page's date is the build's
      const undated = (s: string) => s.replace(/^\.TH .*$/m, "");
      assert.equal(undated(installed), undated(printed.stdout), file);
    }
    const du = spawnSync("du", ["-sm", inImage("/opt/immutd")], { encoding: "utf8" });
    t.diagnostic(`/opt/immutd in the image: ${du.stdout.split("\t")[0]} MiB`);

    // What the operator mounts: config (read-only), secrets, data (read-only), a restore target.
    const s3 = s3env();
    const bucket = uniqueBucket("image");
    await createLockedBucket(s3, bucket, 1);
    const port = await freePort();
    mkdirSync(inImage("/run/secrets"), { recursive: true });
    for (const [name, body] of [
      ["master.key", `${randomBytes(32).toString("hex")}\n`],
      ["writer", `${s3.writer.secretAccessKey}\n`],
      ["reader", `${s3.reader.secretAccessKey}\n`],
    ] as const) {
      writeFileSync(inImage(`/run/secrets/${name}`), body, { mode: 0o400 });
      chownSync(inImage(`/run/secrets/${name}`), uid, gid);
    }
    const data = inImage("/data/app");
    mkdirSync(join(data, "uploads"), { recursive: true });
    writeFileSync(join(data, "uploads/photo.jpg"), randomBytes(300_000));
    writeFileSync(join(data, "settings.json"), '{"theme":"dark"}\n');
    mkdirSync(inImage("/etc/immutd"), { recursive: true });
    writeFileSync(
      inImage(env.IMMUTD_CONFIG),
      `catalog: ${inImage("/var/lib/immutd/catalog.db")}
masterKeyFile: ${inImage("/run/secrets/master.key")}
host: app-1
http: { listen: "127.0.0.1:${port}" }
targets:
${targetYaml(s3, {
  bucket,
  name: "offsite",
  writer: `{ accessKeyId: ${s3.writer.accessKeyId}, secretAccessKeyFile: ${inImage("/run/secrets/writer")} }`,
  reader: `{ accessKeyId: ${s3.reader.accessKeyId}, secretAccessKeyFile: ${inImage("/run/secrets/reader")} }`,
})}jobs:
  - name: app
    target: offsite
    schedule: "0 3 * * *"
    paths: [${data}]
`,
      { mode: 0o644 },
    );
    const runEnv = {
      ...env,
      IMMUTD_CONFIG: inImage(env.IMMUTD_CONFIG),
      IMMUTD_HEALTHCHECK_URL: (env.IMMUTD_HEALTHCHECK_URL ?? "").replace(":9180", `:${port}`),
      PATH: `${inImage("/usr/local/bin")}:${dirname(process.execPath)}:/usr/bin:/bin`,
      HOME: inImage("/var/lib/immutd"),
    };
    const asUser = { uid, gid, env: runEnv, cwd: "/" };
    const immutd = inImage("/usr/local/bin/immutd");

    const daemon: ChildProcess = spawn(immutd, cmd, {
      ...asUser,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    daemon.stderr?.on("data", (d: Buffer) => {
      err += d.toString();
    });
    const exited = new Promise<number | null>((resolve) => daemon.on("close", (c) => resolve(c)));
    const succeeded = new Promise<Record<string, unknown>>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no backup within 60 s:\n${out}\n${err}`)),
        60_000,
      );
      daemon.stdout?.on("data", (d: Buffer) => {
        out += d.toString();
        for (const line of out.split("\n")) {
          if (!line.startsWith("{")) continue;
          const rec = JSON.parse(line) as Record<string, unknown>;
          if (rec.msg === "backup succeeded") {
            clearTimeout(timer);
            resolve(rec);
          }
        }
      });
      daemon.on("close", () => {
        clearTimeout(timer);
        reject(new Error(`daemon exited:\n${out}\n${err}`));
      });
    });
    try {
      // A job that never succeeded runs at start (catch-up).
      const done = await succeeded;
      assert.equal(done.warnings, 0, out);

      const [hcProgram = "", ...hcArgs] = healthcheck;
      assert.equal(hcProgram, "node");
      const healthy = spawnSync(hcProgram, hcArgs, { ...asUser, encoding: "utf8" });
      assert.equal(healthy.status, 0, `HEALTHCHECK: ${healthy.stderr}`);
      const wrong = { ...runEnv, IMMUTD_HEALTHCHECK_URL: `http://127.0.0.1:${port}/nope` };
      const unhealthy = spawnSync(hcProgram, hcArgs, { ...asUser, env: wrong, encoding: "utf8" });
      assert.equal(unhealthy.status, 1, "the HEALTHCHECK fails when the answer is not 2xx");

      // One-off commands, as `docker run --rm … immutd list` / `… restore` would run them.
      const list = spawnSync(immutd, ["list", "--json"], { ...asUser, encoding: "utf8" });
      assert.equal(list.status, 0, list.stderr);
      const rows = JSON.parse(list.stdout) as { job: string; status: string }[];
      assert.deepEqual(
        rows.map((r) => [r.job, r.status]),
        [["app", "ok"]],
      );
      const restoreTo = inImage("/restore");
      mkdirSync(restoreTo);
      chownSync(restoreTo, uid, gid);
      const restore = spawnSync(immutd, ["restore", "app", "--to", restoreTo], {
        ...asUser,
        encoding: "utf8",
      });
      assert.equal(restore.status, 0, restore.stderr);
      for (const f of ["uploads/photo.jpg", "settings.json"]) {
        assert.deepEqual(
          readFileSync(join(restoreTo, data, f)),
          readFileSync(join(data, f)),
          `${f} restored`,
        );
      }
    } finally {
      daemon.kill("SIGTERM");
    }
    assert.equal(await exited, 0, `exit code after SIGTERM\n${err}`);
  });
});
