import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { missedRun, nextRun } from "../src/config/schedule.js";

describe("schedule decisions", () => {
  const daily = { schedule: "0 3 * * *" };
  it("computes the next run, also in a time zone", () => {
    assert.equal(
      nextRun(daily, new Date("2026-11-25T02:59:00Z"))?.toISOString(),
      "2026-11-25T03:00:00.000Z",
    );
    const berlin = { schedule: "0 3 * * *", timezone: "Europe/Berlin" };
    assert.equal(
      nextRun(berlin, new Date("2026-11-25T00:00:00Z"))?.toISOString(),
      "2026-11-25T02:00:00.000Z",
    );
  });

  it("a job that never succeeded, or whose scheduled time passed since its last success, was missed", () => {
    const now = new Date("2026-11-25T03:05:00Z");
    assert.equal(missedRun(daily, undefined, now), true);
    assert.equal(
      missedRun(daily, new Date("2026-11-24T03:00:01Z"), now),
      true,
      "rebooted at 02:59, back at 03:05",
    );
    assert.equal(missedRun(daily, new Date("2026-11-25T03:00:00Z"), now), false);
  });

  it("an expression that never fires has no next run and is never missed", () => {
    const never = { schedule: "0 0 30 2 *" }; // 30 February
    assert.equal(nextRun(never, new Date()), null);
    assert.equal(missedRun(never, new Date("2026-01-01T00:00:00Z"), new Date()), false);
  });
});
