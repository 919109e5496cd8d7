/** Reads systemd unit files the way the tests compare them. */
import assert from "node:assert/strict";

/** The [Service] settings, each key with all its values in order (comments dropped). */
export function settings(text: string, section = "Service"): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let current = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const head = /^\[(.+)\]$/.exec(line);
    if (head) {
      current = head[1] ?? "";
      continue;
    }
    if (current !== section) continue;
    const eq = line.indexOf("=");
    assert.ok(eq > 0, `not a setting: ${line}`);
    const key = line.slice(0, eq);
    out.set(key, [...(out.get(key) ?? []), line.slice(eq + 1)]);
  }
  return out;
}
