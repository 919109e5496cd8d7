/**
 * The ordering window (src/pipeline/ordered-window.ts) the parallel codec and
 * the age cipher stages share: results are handed on in the order they were
 * added whatever order they settle in; handOn returns only once fewer than
 * the limit are outstanding; the first rejection fails it, through the
 * stage's own error, and nothing after it is ever pushed.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { OrderedWindow } from "../src/pipeline/ordered-window.js";

interface Deferred<T> {
  promise: Promise<T>;
  resolve: (v: T) => void;
  reject: (e: Error) => void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: Error) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Lets every promise callback already due run. */
function tick(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}

/** Whether `p` has settled once every promise callback already due has run. */
async function hasSettled(p: Promise<unknown>): Promise<boolean> {
  let settled = false;
  p.then(
    () => {
      settled = true;
    },
    () => {
      settled = true;
    },
  );
  await tick();
  return settled;
}

describe("OrderedWindow", () => {
  it("hands results on in the order added when later ones settle first", async () => {
    const w = new OrderedWindow<string>(4);
    const pushed: string[] = [];
    const push = (s: string) => pushed.push(s);
    const d = [deferred<string>(), deferred<string>(), deferred<string>()];
    for (const x of d) w.add(x.promise);
    d[2]?.resolve("c");
    d[1]?.resolve("b");
    await tick();
    // Below the limit with the oldest pending: nothing is pushed, nothing is waited for.
    await w.handOn(push);
    assert.deepEqual(pushed, []);
    assert.equal(w.size, 3);
    d[0]?.resolve("a");
    await tick();
    await w.handOn(push);
    assert.deepEqual(pushed, ["a", "b", "c"]);
    assert.equal(w.size, 0);
  });

  it("drain waits for every result and pushes them in order", async () => {
    const w = new OrderedWindow<number>(8);
    const pushed: number[] = [];
    const d = Array.from({ length: 5 }, () => deferred<number>());
    for (const x of d) w.add(x.promise);
    const drained = w.drain((n) => pushed.push(n));
    for (const i of [3, 1, 4, 0]) d[i]?.resolve(i);
    assert.equal(await hasSettled(drained), false);
    assert.deepEqual(pushed, [0, 1]);
    d[2]?.resolve(2);
    await drained;
    assert.deepEqual(pushed, [0, 1, 2, 3, 4]);
  });

  it("returns from handOn only once fewer than the limit are outstanding", async () => {
    const limit = 3;
    const w = new OrderedWindow<number>(limit);
    const pushed: number[] = [];
    const push = (n: number) => pushed.push(n);
    const d = Array.from({ length: 12 }, () => deferred<number>());
    let settledUpTo = 0;
    for (const [i, x] of d.entries()) {
      w.add(x.promise);
      const p = w.handOn(push);
      // Settle the oldest one at a time, checking that handOn holds on while the window is full.
      while (!(await hasSettled(p))) {
        assert.ok(w.size >= limit, `handOn waited with only ${w.size} outstanding`);
        d[settledUpTo]?.resolve(settledUpTo);
        settledUpTo++;
      }
      await p;
      assert.ok(w.size < limit, `${w.size} outstanding after handOn (limit ${limit})`);
      assert.equal(pushed.length + w.size, i + 1);
    }
    // The window filled and was held to its limit: each handOn waited once it was full.
    assert.equal(settledUpTo, d.length - (limit - 1));
    for (let i = settledUpTo; i < d.length; i++) d[i]?.resolve(i);
    await w.drain(push);
    assert.deepEqual(
      pushed,
      d.map((_, i) => i),
    );
  });

  it("fails on the first rejection, through the stage's error, and pushes nothing after it", async () => {
    const failed: [string, number][] = [];
    const w = new OrderedWindow<string>(8, (err, index) => {
      failed.push([err.message, index]);
      return new Error(`block ${index + 1}: ${err.message}`, { cause: err });
    });
    const pushed: string[] = [];
    const push = (s: string) => pushed.push(s);
    const d = Array.from({ length: 4 }, () => deferred<string>());
    for (const x of d) w.add(x.promise);
    d[3]?.resolve("d");
    d[2]?.resolve("c");
    d[1]?.reject(new Error("worker died"));
    d[0]?.resolve("a");
    await assert.rejects(w.drain(push), /^Error: block 2: worker died$/);
    assert.deepEqual(pushed, ["a"]);
    // A later call fails the same way and still hands on nothing.
    await assert.rejects(w.handOn(push), /^Error: block 2: worker died$/);
    await assert.rejects(w.drain(push), /^Error: block 2: worker died$/);
    assert.deepEqual(pushed, ["a"]);
    assert.deepEqual(failed, [["worker died", 1]]);
  });

  it("fails with the rejection itself when no error is given", async () => {
    const w = new OrderedWindow<string>(2);
    const boom = new Error("boom");
    w.add(Promise.reject(boom));
    await assert.rejects(
      w.drain(() => assert.fail("nothing may be pushed")),
      (err) => err === boom,
    );
  });

  it("refuses a limit below one", () => {
    assert.throws(() => new OrderedWindow(0), /limit must be >= 1/);
  });
});
