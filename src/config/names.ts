/**
 * The names a config and a manifest share: compressions and encryption
 * schemes. They live apart from config.ts (its schema pulls in zod and yaml)
 * so that code on a worker thread that reads a manifest (the walk's worker
 * imports src/repo/manifest.ts) does not load the config's schema to learn
 * three words; test/bundle.test.ts keeps the workers' imports that small.
 */

/** How a job's archive is compressed; the name also picks the key's extension (src/repo/naming.ts). */
export type Compression = "none" | "gzip" | "zstd";
export const COMPRESSIONS = ["none", "gzip", "zstd"] as const satisfies readonly Compression[];

/**
 * sse-c: the server encrypts with a per-backup key derived from the master key
 * (the host can read its backups). age: the host encrypts to age recipients
 * and sends no SSE-C key (only an identity holder can read them). both: age
 * inside SSE-C.
 */
export type EncryptionScheme = "sse-c" | "age" | "both";
export const ENCRYPTION_SCHEMES = [
  "sse-c",
  "age",
  "both",
] as const satisfies readonly EncryptionScheme[];
