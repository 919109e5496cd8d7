/**
 * Private files (src/repo/private-file.ts), as the key files and the index
 * spool are created: always new (an existing file is refused, a symlink is
 * refused and its target left as it was), mode 0600 whatever the umask; and
 * a key file's refusal names the file.
 */
import assert from "node:assert/strict";
import {
  closeSync,
  existsSync,
  fstatSync,
  mkdtempSync,
  readFileSync,
  statSync,
  symlinkSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, it } from "node:test";
import { UsageError } from "../src/errors.js";
import { createPrivateFile, writeKeyFile } from "../src/repo/private-file.js";

const dir = mkdtempSync(join(tmpdir(), "immutd-private-"));
let n = 0;
const fresh = () => join(dir, `f${n++}`);

const umask = process.umask();
afterEach(() => {
  process.umask(umask);
});

describe("createPrivateFile", () => {
  for (const mask of [0, 0o022, 0o277]) {
    it(`creates mode 0600 under umask ${mask.toString(8).padStart(3, "0")}`, () => {
      process.umask(mask);
      const path = fresh();
      const fd = createPrivateFile(path);
      try {
        assert.equal(fstatSync(fd).mode & 0o777, 0o600);
        // Open for reading and writing, as the spool needs.
        writeSync(fd, "x");
      } finally {
        closeSync(fd);
      }
      assert.equal(statSync(path).mode & 0o777, 0o600);
      assert.equal(readFileSync(path, "utf8"), "x");
    });
  }

  it("refuses an existing file and leaves it as it was", () => {
    const path = fresh();
    writeFileSync(path, "old", { mode: 0o644 });
    assert.throws(() => createPrivateFile(path), { code: "EEXIST" });
    assert.equal(readFileSync(path, "utf8"), "old");
    assert.equal(statSync(path).mode & 0o777, 0o644);
  });

  it("refuses a symlink and leaves its target untouched", () => {
    const target = fresh();
    writeFileSync(target, "target", { mode: 0o644 });
    const link = fresh();
    symlinkSync(target, link);
    assert.throws(() => createPrivateFile(link), { code: "EEXIST" });
    assert.equal(readFileSync(target, "utf8"), "target");
    assert.equal(statSync(target).mode & 0o777, 0o644);
    // A dangling link: its target is not created through it.
    const nowhere = fresh();
    const dangling = fresh();
    symlinkSync(nowhere, dangling);
    assert.throws(() => createPrivateFile(dangling), { code: "EEXIST" });
    assert.equal(existsSync(nowhere), false);
  });
});

describe("writeKeyFile", () => {
  it("writes the contents to a new 0600 file", () => {
    process.umask(0);
    const path = fresh();
    writeKeyFile(path, "secret\n", "the key");
    assert.equal(readFileSync(path, "utf8"), "secret\n");
    assert.equal(statSync(path).mode & 0o777, 0o600);
  });

  it("refuses an existing file or a symlink, naming it, and writes nothing", () => {
    const path = fresh();
    writeFileSync(path, "old");
    assert.throws(
      () => writeKeyFile(path, "new", "the key"),
      (err) =>
        err instanceof UsageError &&
        err.message ===
          `refusing to overwrite ${path}: it exists (it may be the key to existing backups)`,
    );
    assert.equal(readFileSync(path, "utf8"), "old");
    const nowhere = fresh();
    const link = fresh();
    symlinkSync(nowhere, link);
    assert.throws(() => writeKeyFile(link, "new", "the identity"), /refusing to overwrite/);
    assert.equal(existsSync(nowhere), false);
  });

  it("says why it cannot create a file", () => {
    const path = join(dir, "missing", "key");
    assert.throws(
      () => writeKeyFile(path, "new", "the key"),
      (err) => err instanceof UsageError && err.message === `cannot create ${path}: ENOENT`,
    );
  });
});
