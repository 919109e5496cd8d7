/**
 * Times given on the command line (restore --at). One zone everywhere: UTC.
 * `immutd list`, the catalog and the logs show times in UTC, so a time
 * without an offset is read as UTC as well, never in the machine's zone (which
 * would move it by hours without a word); an explicit `Z` or `±HH:MM` is
 * honoured.
 *
 * A time stands for the whole of its last unit: a date for the whole day,
 * 18:23 for the whole minute, 18:23:05 for the whole second. As an upper bound
 * ("at or before") it is the last millisecond of that unit, so a creation time
 * copied from `immutd list` (seconds, no milliseconds) selects that backup.
 *
 * Pure: no clock, no environment.
 */
import { UsageError } from "../errors.js";

const FORMAT =
  /^(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?([Zz]|[+-]\d{2}:?\d{2})?)?$/;

const EXAMPLES =
  "give a UTC date or time as immutd list shows it, e.g. 2026-11-25, 2026-11-25T03:00, " +
  '"2026-11-25 03:00:12", or with an offset, 2026-11-25T04:00+01:00';

/** The last millisecond that TEXT (an ISO-8601 date or time, UTC unless it has an offset) covers. */
export function parseTimeBound(option: string, text: string): Date {
  const m = FORMAT.exec(text.trim());
  if (!m) throw new UsageError(`${option} ${text}: not a date or time; ${EXAMPLES}`);
  const [, y, mo, d, h, mi, s, frac, zone] = m;
  const num = (v: string | undefined) => (v === undefined ? 0 : Number(v));
  const year = num(y);
  const month = num(mo);
  const day = num(d);
  const hour = num(h);
  const minute = num(mi);
  const second = num(s);
  const ms = frac === undefined ? 0 : Number(frac.slice(0, 3).padEnd(3, "0"));
  const daysInMonth = new Date(Date.UTC(2000, month, 0)).getUTCDate(); // 2000: a leap year
  const leapDay = month === 2 && day === 29 && !isLeapYear(year);
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth || leapDay) {
    throw new UsageError(`${option} ${text}: there is no such date; ${EXAMPLES}`);
  }
  if (hour > 23 || minute > 59 || second > 59) {
    throw new UsageError(`${option} ${text}: there is no such time of day; ${EXAMPLES}`);
  }
  let offsetMinutes = 0;
  if (zone !== undefined && zone.toUpperCase() !== "Z") {
    const [, sign, oh, om] = /^([+-])(\d{2}):?(\d{2})$/.exec(zone) ?? [];
    if (num(oh) > 23 || num(om) > 59) {
      throw new UsageError(`${option} ${text}: ${zone} is not a UTC offset; ${EXAMPLES}`);
    }
    offsetMinutes = (sign === "-" ? -1 : 1) * (num(oh) * 60 + num(om));
  }
  // Date.UTC reads years 0-99 as 1900-1999; setUTCFullYear does not.
  const start = new Date(Date.UTC(2000, month - 1, day, hour, minute, second, ms));
  start.setUTCFullYear(year);
  const unit =
    h === undefined ? 86_400_000 : s === undefined ? 60_000 : frac === undefined ? 1000 : 1;
  return new Date(start.getTime() + unit - 1 - offsetMinutes * 60_000);
}

function isLeapYear(y: number): boolean {
  return (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0;
}
