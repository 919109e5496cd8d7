/**
 * A one-line progress display on a terminal (stderr), redrawn at most four
 * times a second; does nothing when stderr is not a terminal, so logs and
 * pipes stay clean.
 */
export interface ProgressState {
  bytes: number;
  files: number;
}

export class ProgressLine {
  readonly #out: NodeJS.WriteStream;
  readonly #enabled: boolean;
  readonly #label: string;
  readonly #started = Date.now();
  #last = 0;
  #shown = false;

  constructor(
    label: string,
    out: NodeJS.WriteStream = process.stderr,
    enabled = out.isTTY === true,
  ) {
    this.#out = out;
    this.#label = label;
    this.#enabled = enabled;
  }

  update(s: Readonly<ProgressState>, force = false): void {
    if (!this.#enabled) return;
    const now = Date.now();
    if (!force && now - this.#last < 250) return;
    this.#last = now;
    const secs = Math.max((now - this.#started) / 1000, 0.001);
    const line = `${this.#label}: ${formatBytes(s.bytes)}  ${formatBytes(s.bytes / secs)}/s  ${s.files.toLocaleString("en-US")} files  ${formatDuration(now - this.#started)}`;
    this.#out.write(`\r\x1b[2K${line}`);
    this.#shown = true;
  }

  clear(): void {
    if (this.#enabled && this.#shown) this.#out.write("\r\x1b[2K");
    this.#shown = false;
  }
}

export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

export function formatDuration(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${(ms / 1000).toFixed(1)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

/** Left-aligned columns two spaces apart, header first: the tables people read on a terminal. */
export function formatTable(head: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]) =>
    `${cells
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join("  ")
      .trimEnd()}\n`;
  return line(head) + rows.map(line).join("");
}
