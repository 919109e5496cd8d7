import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { Writable } from "node:stream";
import { describe, it } from "node:test";
import {
  cancelOnStopSignals,
  FORCED_EXIT_CODE,
  onStopSignals,
  REPEAT_SIGNAL_MS,
  signalMeaning,
} from "../src/cli/signals.js";
import { createLogger } from "../src/log.js";

/** A fake process: signals are emitted by hand, the clock is moved by hand. */
function harness() {
  const source = new EventEmitter();
  let clock = 1_000_000;
  const stops: string[] = [];
  const exits: number[] = [];
  const remove = onStopSignals({
    stop: (sig) => stops.push(sig),
    exit: (code) => exits.push(code),
    now: () => clock,
    source: source as unknown as NodeJS.Process,
  });
  return {
    source,
    stops,
    exits,
    remove,
    signal(sig: NodeJS.Signals, afterMs: number) {
      clock += afterMs;
      source.emit(sig, sig);
    },
  };
}

describe("stop signals", () => {
  it("signals within the window are one request: two SIGTERMs 24 ms apart (timeout(1) and the process group) stop once, never exit", () => {
    const h = harness();
    h.signal("SIGTERM", 0);
    h.signal("SIGTERM", 24);
    h.signal("SIGINT", REPEAT_SIGNAL_MS - 24); // still within the window of the first
    assert.deepEqual(h.stops, ["SIGTERM"]);
    assert.deepEqual(h.exits, []);
  });

  it("a signal later than the window forces the exit with 130", () => {
    const h = harness();
    h.signal("SIGINT", 0);
    h.signal("SIGINT", 2000);
    assert.deepEqual(h.stops, ["SIGINT"]);
    assert.deepEqual(h.exits, [FORCED_EXIT_CODE]);
  });

  it("the remover takes both handlers off", () => {
    const h = harness();
    h.remove();
    assert.equal(h.source.listenerCount("SIGTERM"), 0);
    assert.equal(h.source.listenerCount("SIGINT"), 0);
  });

  it("after a stop was asked for, the remover leaves the handlers: a late repeat still cannot kill the process by the default action", () => {
    const h = harness();
    h.signal("SIGTERM", 0);
    h.remove(); // the command finished its cancel and is about to exit
    assert.equal(h.source.listenerCount("SIGTERM"), 1);
    assert.equal(h.source.listenerCount("SIGINT"), 1);
    h.signal("SIGTERM", 20);
    assert.deepEqual(h.stops, ["SIGTERM"]);
    assert.deepEqual(h.exits, []);
  });

  it("signalMeaning: first is stop, the window's edge is still the same request", () => {
    assert.equal(signalMeaning(undefined, 5), "stop");
    assert.equal(signalMeaning(0, REPEAT_SIGNAL_MS), "same");
    assert.equal(signalMeaning(0, REPEAT_SIGNAL_MS + 1), "force");
  });
});

describe("cancelOnStopSignals (backup, restore, verify)", () => {
  it("the first signal logs what stops and aborts with the command's reason; a repeat in the window neither aborts again nor exits; a late one exits", () => {
    const lines: string[] = [];
    const log = createLogger({
      level: "info",
      format: "json",
      destination: new Writable({
        write(chunk, _enc, cb) {
          lines.push(String(chunk));
          cb();
        },
      }),
    });
    const source = new EventEmitter();
    let clock = 5_000;
    const exits: number[] = [];
    const controller = new AbortController();
    let aborts = 0;
    controller.signal.addEventListener("abort", () => aborts++);
    cancelOnStopSignals(controller, log, "stopping the restore", (sig) => new Error(`by ${sig}`), {
      source: source as unknown as NodeJS.Process,
      now: () => clock,
      exit: (code) => exits.push(code),
    });
    source.emit("SIGTERM", "SIGTERM");
    assert.equal(aborts, 1);
    assert.equal((controller.signal.reason as Error).message, "by SIGTERM");
    clock += 10;
    source.emit("SIGINT", "SIGINT");
    assert.equal(aborts, 1);
    assert.deepEqual(exits, []);
    clock += REPEAT_SIGNAL_MS + 1;
    source.emit("SIGINT", "SIGINT");
    assert.deepEqual(exits, [FORCED_EXIT_CODE]);
    const msgs = lines.map((l) => JSON.parse(l).msg as string);
    assert.equal(
      msgs[0],
      "SIGTERM received: stopping the restore; send it again after 1 s to exit at once",
    );
    assert.match(msgs[1] ?? "", /taken as the same stop request/);
    assert.match(msgs[2] ?? "", /exiting now, without cleaning up/);
  });
});
