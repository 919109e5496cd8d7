/**
 * Exclude patterns for the archive walk. Pure: no I/O, only strings in and a
 * predicate out, so the config layer can validate patterns at load time and the
 * archive walker can ask "is this entry excluded?" for every entry it finds.
 *
 * Pattern forms (globs in picomatch syntax; `*` and `?` also match dotfiles,
 * `**` crosses directories, braces and character classes work):
 *
 * - Without "/": matched against the basename of every entry at any depth.
 *   "*.swp" drops every swap file; "node_modules" drops every entry named
 *   node_modules (and, being a directory, everything below it).
 * - Starting with "/": matched against the whole absolute path.
 *   "/var/log/*.gz" drops the .gz files directly in /var/log; "/srv/app/tmp"
 *   drops that directory with everything in it.
 * - A relative pattern containing "/" ("var/log/*.gz", "**\/cache") is
 *   rejected: it is ambiguous (relative to what?) and a silent no-match would
 *   make a typo invisible. Write "/**\/cache" to mean "at any depth".
 * - A trailing "/" restricts the pattern to directories ("build/", "/srv/tmp/").
 * - A leading "!" is rejected: negation in an exclude list reads as "exclude
 *   everything else", which is never what a backup wants by accident.
 * - Names are matched as text. A name component that is not valid UTF-8
 *   reaches the matcher in matchForm (src/pipeline/file-names.ts): each byte as the
 *   Latin-1 character of that value, so "caf?" and "café" match the bytes
 *   caf\xe9 and "*ÿ" a name ending in 0xff.
 *
 * Decision for "DIR/**": it excludes everything *below* DIR but keeps the DIR
 * entry itself, so the restored tree still has the (now empty) directory with
 * its owner and mode. This is what rsync ("--exclude 'cache/**'") and restic
 * users expect: "the contents are not worth backing up, the place is". To drop
 * the directory too, write the pattern without "/**" ("/srv/app/cache").
 */

import picomatch from "picomatch";

/**
 * Returns true when the entry at `absPath` (an absolute, normalized path
 * without trailing "/") must be left out of the archive. `isDir` tells whether
 * the entry is a directory; an excluded directory is not descended into.
 */
export type ExcludeMatcher = (absPath: string, isDir: boolean) => boolean;

interface Rule {
  /** Tests the basename (basename rules) or the path without its leading "/". */
  readonly test: (s: string) => boolean;
  /** For "X/**" rules: matches X itself, which stays in the archive. */
  readonly keepSelf: ((s: string) => boolean) | null;
  readonly basename: boolean;
  readonly dirOnly: boolean;
  /** The subject this rule matches exactly, when the pattern has no glob characters; else null. */
  readonly literal: string | null;
}

/** Characters that make a pattern more than a plain name or path (escapes included). */
const GLOB_CHARS = /[*?[\]{}()!+@\\]/;

const GLOB_OPTIONS: picomatch.PicomatchOptions = { dot: true, windows: false };

/**
 * Compiles exclude patterns once. Throws an Error naming the offending pattern
 * when one is invalid (the config layer reports it as a configuration error).
 */
export function compileExcludes(patterns: readonly string[]): ExcludeMatcher {
  const which = compileExcludeIndex(patterns);
  return (absPath, isDir) => which(absPath, isDir) >= 0;
}

/**
 * Like compileExcludes, but tells which pattern excluded the entry: its index
 * in `patterns` (the first that matches), or -1 when none does. For the
 * dry run's "which exclude matched how many entries" table.
 */
export function compileExcludeIndex(
  patterns: readonly string[],
): (absPath: string, isDir: boolean) => number {
  const rules = patterns.map(compileRule);
  if (rules.length === 0) return () => -1;
  // Patterns without glob characters are looked up, not tried one by one, so a
  // list of 100,000 names (an excludeFrom file) costs per entry what one does.
  const literal = new Map<string, { any: number; dir: number }>();
  const globs: [number, Rule][] = [];
  for (const [i, rule] of rules.entries()) {
    if (rule.literal === null) {
      globs.push([i, rule]);
      continue;
    }
    const key = `${rule.basename ? "b" : "p"}${rule.literal}`;
    const slot = literal.get(key) ?? { any: -1, dir: -1 };
    const field = rule.dirOnly ? "dir" : "any";
    if (slot[field] < 0) slot[field] = i;
    literal.set(key, slot);
  }
  const first = (a: number, b: number) => (a < 0 ? b : b < 0 ? a : Math.min(a, b));
  return (absPath, isDir) => {
    const rel = absPath.startsWith("/") ? absPath.slice(1) : absPath;
    const base = rel.slice(rel.lastIndexOf("/") + 1);
    let best = -1;
    if (literal.size > 0) {
      for (const key of [`b${base}`, `p${rel}`]) {
        const slot = literal.get(key);
        if (slot) best = first(best, first(slot.any, isDir ? slot.dir : -1));
      }
    }
    for (const [i, rule] of globs) {
      if (best >= 0 && i > best) break;
      if (rule.dirOnly && !isDir) continue;
      const subject = rule.basename ? base : rel;
      if (rule.test(subject) && !(rule.keepSelf?.(subject) ?? false)) return i;
    }
    return best;
  };
}

function compileRule(pattern: string): Rule {
  const quoted = JSON.stringify(pattern);
  if (pattern.trim() === "") throw new Error("exclude pattern must not be empty");
  if (pattern.startsWith("!")) {
    throw new Error(`exclude pattern ${quoted}: negation ("!") is not supported`);
  }
  let body = pattern;
  const dirOnly = body.length > 1 && body.endsWith("/");
  if (dirOnly) body = body.slice(0, -1);

  if (!body.includes("/")) {
    const literal = GLOB_CHARS.test(body) ? null : body;
    return { test: matcher(body, literal), keepSelf: null, basename: true, dirOnly, literal };
  }
  if (!body.startsWith("/")) {
    throw new Error(
      `exclude pattern ${quoted} contains "/" but is not absolute: use a bare name ` +
        `such as "*.log" to match at any depth, or an absolute pattern such as "/${body}"`,
    );
  }
  // Absolute paths are matched without their leading "/": picomatch's "/**/x"
  // needs at least one directory before x, while "**/x" also matches "x".
  const rel = body.replace(/^\/+/, "");
  if (rel === "") throw new Error(`exclude pattern ${quoted} would exclude everything`);
  const keepSelf = rel.endsWith("/**") ? picomatch(rel.slice(0, -3), GLOB_OPTIONS) : null;
  const literal = GLOB_CHARS.test(rel) ? null : rel;
  return { test: matcher(rel, literal), keepSelf, basename: false, dirOnly, literal };
}

/** A literal needs no compiled glob (100,000 of them load in well under a second). */
function matcher(glob: string, literal: string | null): (s: string) => boolean {
  return literal === null ? picomatch(glob, GLOB_OPTIONS) : (s) => s === literal;
}
