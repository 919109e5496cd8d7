import { inspect } from "node:util";

/**
 * A value that must never reach a log line, an error message or printed output.
 * It serializes as "<redacted>" through JSON, util.inspect and string coercion;
 * only reveal() hands out the value, at the one place that sends it.
 */
export class Secret<T = string> {
  readonly #value: T;
  constructor(value: T) {
    this.#value = value;
  }
  reveal(): T {
    return this.#value;
  }
  toJSON(): string {
    return "<redacted>";
  }
  toString(): string {
    return "<redacted>";
  }
  [inspect.custom](): string {
    return "<redacted>";
  }
}
