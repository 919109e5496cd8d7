/**
 * A one-line progress display on a terminal (stderr), redrawn at most four
 * times a second; does nothing when stderr is not a terminal, so logs, pipes
 * and cron mail stay clean. With a total it shows the percentage and the time
 * left; the line is cut to the terminal's width, the current file shortened
 * from the left (its name is the end of the path).
 *
 *   doc: 42% 61.0 MiB of 145.0 MiB  20.3 MiB/s  2,671 of 6,388 files  ETA 4s  /usr/share/doc/tar/NEWS
 */
export interface ProgressState {
  /** Bytes done: source bytes read (backup), archive bytes downloaded (restore, verify --deep). */
  bytes?: number;
  /** Things done: files (backup, restore), backups checked (verify). */
  files?: number;
  /** What is being worked on (a path, an object key); a function is called only when the line is drawn. */
  current?: string | (() => string);
}

/** What the whole run will be, as far as known; `estimate`: from a walk still going or the previous run. */
export interface ProgressTotal {
  bytes?: number;
  files?: number;
  estimate?: boolean;
  /** What `files` counts, singular and plural (default file, files). */
  noun?: readonly [string, string];
}

export class ProgressLine {
  readonly #out: NodeJS.WriteStream;
  readonly #enabled: boolean;
  readonly #label: string;
  readonly #started: number;
  readonly #now: () => number;
  #total: ProgressTotal = {};
  #last = 0;
  #shown = false;

  constructor(
    label: string,
    out: NodeJS.WriteStream = process.stderr,
    enabled = out.isTTY === true,
    now: () => number = Date.now,
  ) {
    this.#out = out;
    this.#label = label;
    this.#enabled = enabled;
    this.#now = now;
    this.#started = now();
  }

  get enabled(): boolean {
    return this.#enabled;
  }

  /** Sets (or refines, as an estimate improves) the total. */
  setTotal(t: ProgressTotal): void {
    this.#total = t;
  }

  update(s: Readonly<ProgressState>, force = false): void {
    if (!this.#enabled) return;
    const now = this.#now();
    if (!force && now - this.#last < 250) return;
    this.#last = now;
    const line = progressText(this.#label, s, this.#total, now - this.#started, this.#out.columns);
    this.#out.write(`\r\x1b[2K${line}`);
    this.#shown = true;
  }

  clear(): void {
    if (this.#enabled && this.#shown) this.#out.write("\r\x1b[2K");
    this.#shown = false;
  }
}

/**
 * The text of one progress line (pure). Percent and ETA need a total; the
 * percent never reaches 100 before the end (a total can be an estimate), and
 * an estimated total is marked "~". Bytes decide the percent where a byte
 * total is known, else files. The ETA is the average rate so far applied to
 * what is left, shown once a second has passed.
 */
export function progressText(
  label: string,
  s: Readonly<ProgressState>,
  total: Readonly<ProgressTotal>,
  elapsedMs: number,
  columns = 80,
): string {
  const secs = Math.max(elapsedMs / 1000, 0.001);
  const approx = total.estimate ? "~" : "";
  const [one, many] = total.noun ?? ["file", "files"];
  const fraction =
    total.bytes !== undefined && total.bytes > 0 && s.bytes !== undefined
      ? s.bytes / total.bytes
      : total.files !== undefined && total.files > 0 && s.files !== undefined
        ? s.files / total.files
        : undefined;
  const parts: string[] = [];
  const pct =
    fraction === undefined ? undefined : Math.min(99, Math.max(0, Math.floor(fraction * 100)));
  const head = `${label}:${pct === undefined ? "" : ` ${approx}${pct}%`}`;
  if (s.bytes !== undefined) {
    parts.push(
      `${head} ${formatBytes(s.bytes)}${
        total.bytes !== undefined && total.bytes > 0
          ? ` of ${approx}${formatBytes(Math.max(total.bytes, s.bytes))}`
          : ""
      }`,
    );
    parts.push(`${formatBytes(s.bytes / secs)}/s`);
  } else parts.push(head);
  if (s.files !== undefined) {
    const n = (x: number) => x.toLocaleString("en-US");
    parts.push(
      total.files !== undefined && total.files > 0
        ? `${n(s.files)} of ${approx}${n(Math.max(total.files, s.files))} ${Math.max(total.files, s.files) === 1 ? one : many}`
        : `${n(s.files)} ${s.files === 1 ? one : many}`,
    );
  }
  if (fraction !== undefined && fraction > 0 && elapsedMs >= 1000) {
    const left = (elapsedMs * Math.max(0, 1 - fraction)) / fraction;
    parts.push(`ETA ${formatDuration(left, false)}`);
  } else parts.push(formatDuration(elapsedMs));
  let line = parts.join("  ");
  const width = Math.max(20, (columns || 80) - 1);
  if (s.current !== undefined && line.length + 4 < width) {
    const name = typeof s.current === "function" ? s.current() : s.current;
    const room = width - line.length - 2;
    line += `  ${name.length <= room ? name : `…${name.slice(name.length - room + 1)}`}`;
  }
  return line.length > width ? line.slice(0, width) : line;
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

/** "4.2s", "3m07s", "1h02m"; `tenths: false` for whole seconds ("4s", as an ETA reads). */
export function formatDuration(ms: number, tenths = true): string {
  const s = Math.round(ms / 1000);
  if (s < 60) return tenths ? `${(ms / 1000).toFixed(1)}s` : `${s}s`;
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
