/**
 * The backup's byte path, composed: source → tar → codec → cipher → hash →
 * sink. Each stage lives in its own module here and states its contract;
 * this one only connects them and decides which failure is reported.
 *
 * In: the archive (source and tar, src/pipeline/archive.ts), the Transforms between
 * (codec, then cipher), the hash stage and the sink. Out: once every stage
 * has finished, the walk's counts, the version the sink stored and the
 * SHA-256 and size of exactly the bytes the sink was given. Backpressure runs
 * end to end: the sink reads as fast as it stores, each stage waits for the
 * next, and the walk reads no file ahead of the tar writer. Any failure or
 * the signal tears every stage down (the sink's failure destroys its body,
 * the walk closes its files) and rejects with the first real cause.
 */
import type { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { Archive } from "./archive.js";
import type { HashingCounter } from "./hash.js";
import type { Sink } from "./sink.js";
import type { ArchiveResult } from "./source.js";

export interface Stages {
  archive: Archive;
  /** Codec, then cipher stages, in order. */
  between: Transform[];
  hash: HashingCounter;
  sink: Sink;
  signal?: AbortSignal;
  /** The error a cancelled run fails with (it names the job). */
  cancelled: () => Error;
}

export interface Streamed {
  walk: ArchiveResult;
  versionId: string;
  sha256: string;
  /** Bytes the sink was given (and stored). */
  bytes: number;
}

export async function runStages(s: Stages): Promise<Streamed> {
  const onAbort = () => s.hash.destroy(s.cancelled());
  s.signal?.addEventListener("abort", onAbort, { once: true });

  // Whichever stage fails first holds the real cause; the others fail because of it.
  // A stream torn down by another stage's failure (lib-storage stops reading the
  // body before it reports the part's error) fails with an AbortError or a
  // premature close: that is never the cause while another error is known.
  let firstError: unknown;
  let knockOn: unknown;
  const note = (err: unknown): never => {
    if (isKnockOn(err)) knockOn ??= err;
    else firstError ??= err;
    throw err;
  };
  const piping = pipeline([s.archive.stream as NodeJS.ReadableStream, ...s.between, s.hash]);
  const [walk, , stored] = await Promise.allSettled([
    s.archive.done.catch(note),
    piping.catch(note),
    s.sink(s.hash).catch(note),
  ]);
  s.signal?.removeEventListener("abort", onAbort);
  if (s.signal?.aborted) throw s.cancelled();
  firstError ??= knockOn;
  if (firstError !== undefined) throw firstError;
  if (stored.status !== "fulfilled" || walk.status !== "fulfilled") throw new Error("unreachable");
  return {
    walk: walk.value,
    versionId: stored.value.versionId,
    sha256: s.hash.digest(),
    bytes: s.hash.bytes,
  };
}

function isKnockOn(err: unknown): boolean {
  const e = err as { name?: string; code?: string } | undefined;
  return e?.name === "AbortError" || e?.code === "ERR_STREAM_PREMATURE_CLOSE";
}
