/**
 * The named retry policies (src/store/retry.ts): which answers each retries, and how
 * often. Delays are the policy's own (250 ms doubling), so the lag cases take
 * a second or two.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { StorageError } from "../src/errors.js";
import { RetryPolicy, retry, withSignal } from "../src/store/retry.js";

function failing(errors: Error[]) {
  let calls = 0;
  const fn = async () => {
    const err = errors[calls++];
    if (err) throw err;
    return "ok";
  };
  return { fn, calls: () => calls };
}

const http = (status: number, transient = false) =>
  new StorageError(`HTTP ${status}`, { transient, status });

describe("retry policies", () => {
  it("read: transient errors get four attempts, a 403/404 two, anything else one", async () => {
    const t = failing([http(503, true), http(503, true), http(503, true)]);
    assert.equal(await retry(t.fn, RetryPolicy.read), "ok");
    assert.equal(t.calls(), 4);

    const five = failing([1, 2, 3, 4].map(() => http(500, true)));
    await assert.rejects(retry(five.fn, RetryPolicy.read), { status: 500 });
    assert.equal(five.calls(), 4);

    const lag = failing([http(404)]);
    assert.equal(await retry(lag.fn, RetryPolicy.read), "ok");
    const lag2 = failing([http(403), http(403)]);
    await assert.rejects(retry(lag2.fn, RetryPolicy.read), { status: 403 });
    assert.equal(lag2.calls(), 2);

    const bad = failing([http(400)]);
    await assert.rejects(retry(bad.fn, RetryPolicy.read), { status: 400 });
    assert.equal(bad.calls(), 1);
  });

  it("bucket: a 403 on bucket settings is a permission and is not retried", async () => {
    const t = failing([http(403)]);
    await assert.rejects(retry(t.fn, RetryPolicy.bucket), { status: 403 });
    assert.equal(t.calls(), 1);
  });

  it("settle: a new bucket's 404s are retried as long as transient errors", async () => {
    const t = failing([http(404), http(404), http(404)]);
    assert.equal(await retry(t.fn, RetryPolicy.settle), "ok");
    assert.equal(t.calls(), 4);
  });

  it("probe: three attempts at most, lag included", async () => {
    const t = failing([http(403), http(403), http(403)]);
    await assert.rejects(retry(t.fn, RetryPolicy.probe), { status: 403 });
    assert.equal(t.calls(), 3);
  });

  it("withSignal: an aborted run stops retrying at once, and the policy itself is left unchanged", async () => {
    const ac = new AbortController();
    ac.abort();
    const t = failing([http(503, true), http(503, true)]);
    await assert.rejects(retry(t.fn, withSignal(RetryPolicy.read, ac.signal)), { status: 503 });
    assert.equal(t.calls(), 1);
    assert.equal("signal" in RetryPolicy.read, false);
    assert.equal(withSignal(RetryPolicy.read, undefined), RetryPolicy.read);
  });
});
