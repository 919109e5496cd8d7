/**
 * An ordering window: results that worker threads finish in any order,
 * handed on in the order they were sent out, with at most a bounded number
 * outstanding. The parallel codec stage (parallel-codec.ts, one compressed
 * block each) and the age cipher stage (age.ts, one sealed batch each) both
 * keep their memory bounded and their output in input order with it.
 *
 * The contract a stage relies on:
 * - handOn pushes every result at the head that has settled, oldest first;
 *   while `limit` or more remain it waits for the oldest, so when it returns
 *   fewer than `limit` are outstanding (a Transform calls it from _transform
 *   and calls back only then, which is how backpressure reaches the intake).
 * - drain waits for and pushes them all (from _flush).
 * - The first result that was rejected fails handOn/drain, through `fail`
 *   (which names the block or batch), and nothing after it is ever pushed:
 *   every later call fails with the same error.
 */
/** A result sent out: settled once its promise has, with its value or its rejection. */
interface Pending<T> {
  settled: Promise<void>;
  done: boolean;
  out?: T;
  err?: Error;
}

export class OrderedWindow<T> {
  readonly #limit: number;
  readonly #fail: (err: Error, index: number) => Error;
  readonly #queue: Pending<T>[] = [];
  /** Results handed on so far: the index of the head. */
  #handed = 0;
  #failed: Error | undefined;

  /**
   * `limit`: how many results may be outstanding when handOn returns (less
   * one). `fail` turns the first rejection, and the 0-based index of its
   * result, into the error the stage fails with (default: the rejection).
   */
  constructor(limit: number, fail: (err: Error, index: number) => Error = (err) => err) {
    if (!Number.isInteger(limit) || limit < 1) throw new Error("limit must be >= 1");
    this.#limit = limit;
    this.#fail = fail;
  }

  /** Results added and not yet handed on. */
  get size(): number {
    return this.#queue.length;
  }

  /** Queues a pending result behind those already added; its rejection is held here, never unhandled. */
  add(result: Promise<T>): void {
    const f: Pending<T> = { settled: Promise.resolve(), done: false };
    f.settled = result.then(
      (out) => {
        f.out = out;
        f.done = true;
      },
      (err: Error) => {
        f.err = err;
        f.done = true;
      },
    );
    this.#queue.push(f);
  }

  /** Pushes settled results in order, waiting for the oldest until fewer than `limit` remain. */
  handOn(push: (out: T) => void): Promise<void> {
    return this.#handOn(push, this.#limit);
  }

  /** Waits for and pushes every result, in order. */
  drain(push: (out: T) => void): Promise<void> {
    return this.#handOn(push, 1);
  }

  async #handOn(push: (out: T) => void, below: number): Promise<void> {
    for (;;) {
      if (this.#failed) throw this.#failed;
      const head = this.#queue[0];
      if (!head) return;
      if (!head.done) {
        if (this.#queue.length < below) return;
        await head.settled;
      }
      this.#queue.shift();
      if (head.err) {
        this.#failed = this.#fail(head.err, this.#handed);
        throw this.#failed;
      }
      this.#handed++;
      push(head.out as T);
    }
  }
}
