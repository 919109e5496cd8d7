import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { compileExcludes } from "../src/pipeline/exclude.js";

type Case = [path: string, isDir: boolean, excluded: boolean];

function check(patterns: string[], cases: Case[]): void {
  const excluded = compileExcludes(patterns);
  for (const [p, isDir, want] of cases) {
    assert.equal(excluded(p, isDir), want, `${JSON.stringify(patterns)} on ${p} (dir: ${isDir})`);
  }
}

describe("compileExcludes", () => {
  it("excludes nothing without patterns", () => {
    check([], [["/etc/hosts", false, false]]);
  });

  it("matches a pattern without / against the basename at any depth", () => {
    check(
      ["*.swp", "node_modules"],
      [
        ["/home/u/.notes.txt.swp", false, true],
        ["/a.swp", false, true],
        ["/home/u/project/node_modules", true, true],
        ["/node_modules", true, true],
        ["/home/u/notes.txt", false, false],
        ["/home/u/node_modules_backup", true, false],
        ["/home/u/swp", false, false],
      ],
    );
  });

  it("lets * match dotfiles", () => {
    check(["*"], [["/home/u/.bashrc", false, true]]);
    check(["/home/u/*"], [["/home/u/.ssh", true, true]]);
  });

  it("matches an absolute pattern against the whole path, * not crossing /", () => {
    check(
      ["/var/log/*.gz"],
      [
        ["/var/log/syslog.1.gz", false, true],
        ["/var/log/.hidden.gz", false, true],
        ["/var/log/nginx/access.log.2.gz", false, false],
        ["/srv/var/log/x.gz", false, false],
        ["/var/log/syslog", false, false],
      ],
    );
  });

  it("lets ** cross directories", () => {
    check(
      ["/srv/**/tmp"],
      [
        ["/srv/tmp", true, true],
        ["/srv/a/b/tmp", true, true],
        ["/srv/a/b/tmpx", true, false],
      ],
    );
    check(
      ["/**/node_modules/**"],
      [
        ["/node_modules/x", false, true],
        ["/a/b/node_modules/c/d.js", false, true],
      ],
    );
  });

  it("keeps the directory of DIR/** and excludes what is below it", () => {
    check(
      ["/srv/app/data/cache/**"],
      [
        ["/srv/app/data/cache", true, false],
        ["/srv/app/data/cache/a", false, true],
        ["/srv/app/data/cache/sub", true, true],
        ["/srv/app/data/cache/sub/deep/file", false, true],
        ["/srv/app/data/cachet", false, false],
        ["/srv/app/data", true, false],
      ],
    );
    check(
      ["/home/*/.cache/**"],
      [
        ["/home/bob/.cache", true, false],
        ["/home/bob/.cache/pip/x.whl", false, true],
      ],
    );
  });

  it("drops the directory itself when the pattern names it without /**", () => {
    check(
      ["/srv/app/data/cache"],
      [
        ["/srv/app/data/cache", true, true],
        ["/srv/app/data/cache2", true, false],
      ],
    );
  });

  it("restricts a pattern with a trailing / to directories", () => {
    check(
      ["build/", "/srv/tmp/"],
      [
        ["/src/build", true, true],
        ["/src/build", false, false],
        ["/srv/tmp", true, true],
        ["/srv/tmp", false, false],
      ],
    );
  });

  it("supports braces, classes and escaped metacharacters", () => {
    check(
      ["*.{tmp,bak}", "core.[0-9]*", "/srv/weird\\*name"],
      [
        ["/x/a.tmp", false, true],
        ["/x/a.bak", false, true],
        ["/x/a.txt", false, false],
        ["/x/core.1234", false, true],
        ["/x/core.dump", false, false],
        ["/srv/weird*name", false, true],
        ["/srv/weirdXname", false, false],
      ],
    );
  });

  it("rejects a relative pattern containing /, naming it", () => {
    for (const bad of ["var/log/*.gz", "**/cache", "./tmp"]) {
      assert.throws(
        () => compileExcludes(["*.swp", bad]),
        (err: unknown) => err instanceof Error && err.message.includes(JSON.stringify(bad)),
        bad,
      );
    }
  });

  it("rejects empty, negated and match-everything patterns", () => {
    for (const bad of ["", "  ", "!*.log", "/"]) {
      assert.throws(() => compileExcludes([bad]), Error, JSON.stringify(bad));
    }
  });
});
