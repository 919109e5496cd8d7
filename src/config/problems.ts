/**
 * What is wrong with a config file, found and put into words: pure, from the
 * parsed YAML document and zod's issues to one line per problem that names
 * file:line:col and the key (and the job), says what was expected and what is
 * there (never the value: it may be a secret), and suggests the key a typo
 * meant. Everything here is linear in the file's size, because the file may
 * be hostile: 20,000 unknown keys, 30,000 aliases, an alias bomb.
 */
import { type Document, isAlias, isMap, isPair, isScalar, isSeq, visit } from "yaml";
import type { z } from "zod";
import { ConfigError } from "../errors.js";

/** Limits on what is read, so a wrong or hostile file fails at once instead of hanging. */
export const LIMITS = {
  /** A config is a few KB; 1 MiB holds thousands of jobs. */
  configBytes: 1024 * 1024,
  /** Keys and secrets are under 100 bytes; this stops a secret file like /dev/zero. */
  secretFileBytes: 64 * 1024,
  /** An excludeFrom file: 16 MiB is some 500,000 patterns; it also stops /dev/zero. */
  excludeFromBytes: 16 * 1024 * 1024,
  /**
   * Anchors (&name) and aliases (*name) in one file. The yaml package finds
   * each alias's anchor by scanning all of them, so their number must be
   * small; a config needs a handful.
   */
  aliases: 1000,
  /**
   * Nodes that aliases may add when expanded. A "billion laughs" file nests
   * aliases to grow exponentially from a few lines; sharing a block a few
   * hundred times stays far below this.
   */
  aliasNodes: 100_000,
  /** Problems listed before "… and N more". */
  problems: 10,
} as const;

/**
 * Bounds what aliases can do, in one pass: at most LIMITS.aliases anchors and
 * aliases, and expanding them adds at most LIMITS.aliasNodes nodes (each
 * anchor's expanded size is computed once). An alias inside its own anchor
 * would expand for ever.
 */
export function checkAliases(
  doc: Document,
  file: string,
  where: (offset: number | undefined) => string,
): void {
  const anchors = new Map<string, unknown>(); // the latest of each name, as YAML reads them
  const target = new Map<unknown, unknown>(); // alias node -> anchored node
  let count = 0;
  let nodes = 0;
  visit(doc, {
    Node(_, node) {
      nodes++;
      if (isAlias(node)) {
        target.set(node, anchors.get(node.source));
        count++;
      } else if (node.anchor) {
        anchors.set(node.anchor, node);
        count++;
      }
      if (count > LIMITS.aliases) {
        throw new ConfigError(
          `${where(node.range?.[0])}: more than ${LIMITS.aliases} YAML anchors (&name) and aliases (*name): write the blocks out instead`,
        );
      }
    },
  });
  if (target.size === 0) return;
  const sizes = new Map<unknown, number>();
  const open = new Set<unknown>();
  const budget = nodes + LIMITS.aliasNodes;
  const size = (node: unknown): number => {
    if (isAlias(node)) {
      const anchored = target.get(node);
      if (anchored === undefined) return 1; // reported by toJS: unresolved alias
      if (open.has(anchored)) {
        throw new ConfigError(
          `${where(node.range?.[0])}: alias *${short(node.source)} is inside its own anchor: it would never end`,
        );
      }
      return size(anchored);
    }
    const known = sizes.get(node);
    if (known !== undefined) return known;
    let n = 1;
    if (isMap(node) || isSeq(node)) {
      open.add(node);
      for (const item of node.items as unknown[]) {
        n += isPair(item) ? size(item.key) + size(item.value) : size(item);
        if (n > budget) break;
      }
      open.delete(node);
    }
    sizes.set(node, n);
    return n;
  };
  if (size(doc.contents) > budget) {
    throw new ConfigError(
      `${file}: YAML aliases (*name) expand to more than ${LIMITS.aliasNodes} extra nodes: an alias bomb ("billion laughs")? write the blocks out instead`,
    );
  }
}

/**
 * Keys must be unique within a mapping (a second `paths:` would silently win),
 * and `__proto__` is refused: it would set the prototype of the parsed object,
 * or be dropped without a word by the schema, and no immutd key or name is
 * spelled so. One pass, one Set per mapping.
 */
export function checkKeys(
  doc: Document,
  problem: (offset: number | undefined, msg: string) => void,
  lineOf: (offset: number | undefined) => number | undefined,
): void {
  visit(doc, {
    Map(_, map) {
      const seen = new Map<unknown, number | undefined>();
      for (const pair of map.items) {
        if (!isScalar(pair.key)) continue;
        const key = pair.key.value;
        const offset = pair.key.range?.[0];
        if (key === "__proto__") problem(offset, "__proto__: not allowed as a key or name");
        else if (seen.has(key)) {
          problem(
            offset,
            `${short(String(key))}: duplicate key (first at line ${lineOf(seen.get(key)) ?? "?"})`,
          );
        } else seen.set(key, offset);
      }
    },
  });
}

export function nodeOffset(doc: Document, path: (string | number)[]): number | undefined {
  for (let n = path.length; n >= 0; n--) {
    const node = doc.getIn(path.slice(0, n), true) as
      | { range?: [number, number, number] }
      | undefined;
    if (node && typeof node === "object" && node.range) return node.range[0];
  }
  return undefined;
}

/** Problems found so far: the first LIMITS.problems are written out (lazily, so finding where each is stays linear), the rest counted. */
export class Problems {
  readonly #lines: string[] = [];
  count = 0;
  add(line: () => string): void {
    if (++this.count <= LIMITS.problems) this.#lines.push(line());
  }
  error(): ConfigError {
    const more = this.count - this.#lines.length;
    return new ConfigError(
      [...this.#lines, ...(more > 0 ? [`… and ${more} more problems`] : [])].join("\n"),
    );
  }
}

/** One line of a YAML library error, in words for a config's author. */
export function yamlMessage(err: unknown): string {
  const msg = ((err as Error).message ?? String(err)).split("\n")[0] ?? "";
  return /call stack|stack overflow/i.test(msg) ? "nested too deeply" : msg;
}

export function nodeKind(node: unknown): string {
  if (isSeq(node)) return "a list";
  if (isScalar(node)) return `${kindOf(node.value)} (a bare value)`;
  return "an alias or other YAML node";
}

/** Whether the parsed YAML has a value at path, and which (own keys only). */
function valueAt(raw: unknown, path: readonly PropertyKey[]): { found: boolean; value?: unknown } {
  let cur = raw;
  for (const seg of path) {
    if (cur === null || typeof cur !== "object" || !Object.hasOwn(cur, seg))
      return { found: false };
    cur = (cur as Record<PropertyKey, unknown>)[seg];
  }
  return { found: true, value: cur };
}

/** What a YAML value is, in words. Never the value itself: it may be a secret. */
function kindOf(value: unknown): string {
  if (value === null || value === undefined) return "an empty value";
  if (Array.isArray(value)) return "a list";
  if (value instanceof Uint8Array) return "binary data (!!binary)";
  if (value instanceof Date) return "a timestamp";
  switch (typeof value) {
    case "string":
      return "a string";
    case "number":
      return Number.isFinite(value)
        ? "a number"
        : Number.isNaN(value)
          ? "not-a-number (.nan)"
          : "an infinite number";
    case "boolean":
      return "true/false";
    case "object":
      return "a mapping";
    default:
      return typeof value;
  }
}

const EXPECTED: Record<string, string> = {
  string: "a string",
  number: "a number",
  int: "a whole number",
  boolean: "true or false",
  object: "a mapping (key: value)",
  record: "a mapping (name: …)",
  array: "a list",
};

/**
 * The issues worth a line: one per path, the first. zod reports a number past
 * 2^53 twice (once against the safe-integer range, once against the key's own
 * limit); the key's own limit is the one to name. A required key that is
 * missing because it was misspelt is said once, by the unknown key's "did you
 * mean".
 */
export function relevantIssues(
  issues: readonly z.core.$ZodIssue[],
  raw: unknown,
  schema: z.ZodType,
): z.core.$ZodIssue[] {
  const byPath = new Map<string, z.core.$ZodIssue>();
  const out: z.core.$ZodIssue[] = [];
  const meant = new Set<string>();
  let guesses = 1000; // edit distances are not free: enough for every real typo
  for (const issue of issues) {
    if (issue.code !== "unrecognized_keys") continue;
    out.push(issue);
    const known = keysAt(schema, issue.path as (string | number)[]);
    for (const key of issue.keys.slice(0, Math.max(0, guesses))) {
      guesses--;
      const best = closest(key, known);
      if (best !== undefined) meant.add(JSON.stringify([...issue.path, best]));
    }
  }
  for (const issue of issues) {
    if (issue.code === "unrecognized_keys") continue;
    const key = JSON.stringify(issue.path);
    if (meant.has(key) && !valueAt(raw, issue.path).found) continue;
    const seen = byPath.get(key);
    const safeRange = (i: z.core.$ZodIssue) =>
      (i.code === "too_big" || i.code === "too_small") && i.origin === "int";
    if (!seen) byPath.set(key, issue);
    else if (safeRange(seen) && !safeRange(issue)) byPath.set(key, issue);
  }
  return [...out, ...byPath.values()];
}

/** One issue in words: what was expected and what the file has instead, never the value. */
export function explain(issue: z.core.$ZodIssue, raw: unknown): string {
  // zod's own messages start like this; a message given in the schema says it better.
  const own = !/^(Invalid|Too (big|small))\b/.test(issue.message);
  switch (issue.code) {
    case "invalid_type": {
      const at = valueAt(raw, issue.path);
      if (!at.found) return "required key is missing";
      const expected = EXPECTED[issue.expected] ?? issue.expected;
      const got =
        issue.expected === "int" && typeof at.value === "number"
          ? String(at.value) // a count, never a secret
          : kindOf(at.value);
      return `expected ${expected}, got ${got}`;
    }
    case "too_big":
    case "too_small": {
      if (own) return issue.message;
      const big = issue.code === "too_big";
      const limit = big ? issue.maximum : issue.minimum;
      const bound = big
        ? issue.inclusive === false
          ? "less than"
          : "at most"
        : issue.inclusive === false
          ? "more than"
          : "at least";
      if (issue.origin === "array" || issue.origin === "set")
        return !big && Number(limit) === 1
          ? "must not be empty"
          : `must have ${bound} ${limit} entries`;
      if (issue.origin === "string")
        return !big && Number(limit) === 1
          ? "must not be empty"
          : `must be ${bound} ${limit} characters`;
      return `must be ${bound} ${limit}`;
    }
    case "invalid_value":
      return `must be one of ${issue.values.map((v) => String(v)).join(", ")}`;
    case "invalid_key":
      return `is not a valid name: ${issue.issues[0]?.message ?? issue.message}`;
    default:
      return issue.message;
  }
}

/** The unknown keys of one mapping, on one line: each with its line and the key it probably meant. */
export function unknownKeys(
  doc: Document,
  raw: unknown,
  schema: z.ZodType,
  path: (string | number)[],
  keys: readonly string[],
  where: (offset: number | undefined) => string,
  lineOf: (offset: number | undefined) => number | undefined,
): string {
  // One pass over the mapping, not one per key: 20,000 unknown keys must not take minutes.
  const offsets = new Map<string, number | undefined>();
  const map = path.length ? doc.getIn(path, true) : doc.contents;
  if (isMap(map)) {
    for (const pair of map.items) {
      if (isScalar(pair.key)) offsets.set(String(pair.key.value), pair.key.range?.[0]);
    }
  }
  const at = (key: string) => offsets.get(key) ?? nodeOffset(doc, path);
  const known = keysAt(schema, path);
  const [only] = keys;
  if (keys.length === 1 && only !== undefined) {
    const best = closest(only, known);
    const hint = best
      ? ` (did you mean "${best}"?)`
      : known.length
        ? ` (known keys: ${known.join(", ")})`
        : "";
    return `${where(at(only))}: ${describePath(raw, [...path, only])}: unknown key${hint}`;
  }
  const shown = keys.slice(0, 3).map((key) => {
    const best = closest(key, known);
    return `"${short(key)}" (line ${lineOf(at(key)) ?? "?"}${best ? `, did you mean "${best}"?` : ""})`;
  });
  const more = keys.length > shown.length ? ` and ${keys.length - shown.length} more` : "";
  const list = known.length ? `; known keys: ${known.join(", ")}` : "";
  return `${where(at(keys[0] as string))}: ${describePath(raw, path)}: ${keys.length} unknown keys: ${shown.join(", ")}${more}${list}`;
}

/** The known key a typo most likely meant, if any is close. */
function closest(key: string, known: readonly string[]): string | undefined {
  if (key.length > 64) return undefined; // not a typo, and edit distance is quadratic
  let best: string | undefined;
  let bestDist = 3;
  for (const k of known) {
    const d = editDistance(key.toLowerCase(), k.toLowerCase());
    if (d < bestDist) {
      bestDist = d;
      best = k;
    }
  }
  return best;
}

/** A key or name as a message shows it: a 900 KB key must not make a 900 KB line. */
export function short(text: string): string {
  return text.length <= 80 ? text : `${text.slice(0, 60)}…(${text.length} characters)`;
}

/** "jobs[1] (etc).schedule" — names the job where there is one. */
export function describePath(raw: unknown, path: (string | number)[]): string {
  if (path.length === 0) return "config";
  let out = "";
  let cur: unknown = raw;
  for (const seg of path) {
    if (typeof seg === "number") {
      out += `[${seg}]`;
      cur = Array.isArray(cur) ? cur[seg] : undefined;
      const name = valueAt(cur, ["name"]).value;
      if (typeof name === "string") out += ` (${short(name)})`;
    } else {
      out += out ? `.${short(seg)}` : short(seg);
      cur = valueAt(cur, [seg]).value;
    }
  }
  return out;
}

function keysAt(schema: z.ZodType, path: (string | number)[]): string[] {
  // biome-ignore lint/suspicious/noExplicitAny: walking zod's internal definitions
  let s: any = schema;
  const unwrap = () => {
    while (s?._zod?.def && ["default", "optional", "pipe"].includes(s._zod.def.type)) {
      s = s._zod.def.innerType ?? s._zod.def.in;
    }
  };
  unwrap();
  for (const seg of path) {
    if (s?._zod?.def?.type === "array") s = s._zod.def.element;
    else if (s?._zod?.def?.type === "record") s = s._zod.def.valueType;
    else if (s?._zod?.def?.type === "object" && typeof seg === "string")
      s = Object.hasOwn(s._zod.def.shape, seg) ? s._zod.def.shape[seg] : undefined;
    else return [];
    unwrap();
  }
  return s?._zod?.def?.type === "object" ? Object.keys(s._zod.def.shape) : [];
}

function editDistance(a: string, b: string): number {
  const dp = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = dp[0] as number;
    dp[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = dp[j] as number;
      dp[j] = Math.min(
        (dp[j] as number) + 1,
        (dp[j - 1] as number) + 1,
        prev + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
      prev = tmp;
    }
  }
  return dp[b.length] as number;
}
