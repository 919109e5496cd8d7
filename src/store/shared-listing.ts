/**
 * One listing shared by the checks of a run. `verify` asks for the versions of
 * every manifest key it checks and then for everything under the target's
 * prefix (delete markers on backups); each of those is a walk of
 * ListObjectVersions pages. listOnce answers every listing under `prefix`
 * from a single walk of `prefix` (all pages, delete markers included),
 * filtered to the prefix asked for: the same entries, with the same isLatest
 * flags, that listing the narrower prefix would give.
 *
 * Contract: the walk starts on the first listVersions under `prefix`;
 * concurrent callers wait for the same walk. A walk that fails is forgotten,
 * so a caller's retry lists again instead of getting the old failure. A
 * prefix outside `prefix` is listed on its own. Every other method is the
 * store's own.
 */
import type { ObjectStore, VersionEntry } from "./store.js";

export function listOnce(store: ObjectStore, prefix: string): ObjectStore {
  let walk: Promise<VersionEntry[]> | undefined;
  const all = (): Promise<VersionEntry[]> => {
    if (!walk) {
      const started = store.listVersions(prefix);
      walk = started;
      started.catch(() => {
        if (walk === started) walk = undefined;
      });
    }
    return walk;
  };
  const listVersions = async (under: string): Promise<VersionEntry[]> =>
    under.startsWith(prefix)
      ? (await all()).filter((v) => v.key.startsWith(under))
      : store.listVersions(under);
  return new Proxy(store, {
    get(target, name) {
      if (name === "listVersions") return listVersions;
      const value: unknown = Reflect.get(target, name, target);
      // Bound to the store itself: S3Store's methods use its private fields.
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}
