/** What kind of file a stat result describes, in words, for warnings and refusals. */
import type { BigIntStats, Stats } from "node:fs";

export function fileKind(st: Stats | BigIntStats): string {
  if (st.isFile()) return "regular file";
  if (st.isDirectory()) return "directory";
  if (st.isSymbolicLink()) return "symlink";
  if (st.isFIFO()) return "FIFO";
  if (st.isSocket()) return "socket";
  if (st.isBlockDevice()) return "block device";
  if (st.isCharacterDevice()) return "character device";
  return "special file";
}
