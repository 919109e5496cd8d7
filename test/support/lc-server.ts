/**
 * A Ceph RGW whose lifecycle "day" lasts seconds (Ceph's rgw lc debug
 * interval), for the retention tests. Never the shared test server: its
 * lifecycle rules would remove other tests' noncurrent versions within
 * seconds. IMMUTD_TEST_S3_LC_ENV names the env.json of one already running
 * (started with IMMUTD_S3_LC_DEBUG_INTERVAL); otherwise the test starts its
 * own with scripts/s3-test-server.sh and stops it afterwards, so that
 * `npm test` runs it too.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { S3Env } from "./s3env.js";

const REPO = fileURLToPath(new URL("../../../", import.meta.url));

export interface LcServer {
  env: S3Env;
  /** Real seconds per lifecycle day. */
  daySeconds: number;
  stop(): void;
}

export function lcServer(daySeconds = 5): LcServer {
  const given = process.env.IMMUTD_TEST_S3_LC_ENV;
  if (given) {
    if (!existsSync(given)) throw new Error(`IMMUTD_TEST_S3_LC_ENV=${given}: no such file`);
    const env = JSON.parse(readFileSync(given, "utf8")) as S3Env & {
      lcDebugIntervalSeconds?: number | null;
    };
    if (!env.lcDebugIntervalSeconds)
      throw new Error(
        `${given} is a server without a short lifecycle day: start one with IMMUTD_S3_LC_DEBUG_INTERVAL=N scripts/s3-test-server.sh start DIR`,
      );
    return { env, daySeconds: env.lcDebugIntervalSeconds, stop: () => {} };
  }
  const dir = mkdtempSync(join(tmpdir(), "immutd-lc-s3-"));
  const script = join(REPO, "scripts/s3-test-server.sh");
  try {
    execFileSync("bash", [script, "start", dir], {
      stdio: "pipe",
      env: {
        ...process.env,
        IMMUTD_S3_LC_DEBUG_INTERVAL: String(daySeconds),
        IMMUTD_S3_MEMSTORE_BYTES: String(1 << 30),
        IMMUTD_S3_DIR: dir,
      },
      timeout: 180_000,
    });
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(
      `could not start a short-lifecycle RGW: ${(err as { stderr?: Buffer }).stderr?.toString() ?? err}`,
    );
  }
  const env = JSON.parse(readFileSync(join(dir, "env.json"), "utf8")) as S3Env;
  return {
    env,
    daySeconds,
    stop: () => {
      execFileSync("bash", [script, "stop", dir], { stdio: "pipe", timeout: 120_000 });
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
