/**
 * Where immutd's own files are, in both of its layouts: tsc's tree of modules
 * (dist/src/…, what the tests and the workers load) and the one-file bundle of
 * the command line (dist/src/immutd.js, scripts/bundle.mjs). Both this module
 * and the bundle sit directly in dist/src, so `import.meta.url` names the same
 * directory either way; every path to a worker script or to package.json is
 * built here, not next to the code that uses it, whose own place differs
 * between the two layouts.
 */
import { fileURLToPath } from "node:url";

/** dist/src/ as a file: URL (with its trailing slash). */
export const SRC_ROOT = new URL("./", import.meta.url);

/** A file under dist/src, e.g. moduleUrl("pipeline/age-worker.js"). */
export function moduleUrl(path: string): URL {
  return new URL(path, SRC_ROOT);
}

/** The package's package.json (version, engines). */
export const PACKAGE_JSON = fileURLToPath(new URL("../../package.json", SRC_ROOT));
