import { MemoryBucket, type MemoryStore } from "../src/store/memory.js";
import { storeContract } from "./store-contract.js";

let n = 0;
const buckets = new Map<string, MemoryBucket>();

storeContract("memory", {
  async lockedTarget() {
    const b = new MemoryBucket(`mem-${n++}`, { defaultRetention: { mode: "COMPLIANCE", days: 1 } });
    buckets.set(b.name, b);
    return b.target();
  },
  async plainTarget() {
    const b = new MemoryBucket(`mem-${n++}`, { objectLock: false });
    buckets.set(b.name, b);
    return b.target();
  },
  async deleteVersion(t, _role, key, versionId) {
    buckets.get(t.bucket)?.deleteVersion(key, versionId);
  },
  async deleteMarker(t, key) {
    (t.writer as MemoryStore).putDeleteMarker(key);
  },
  async missingTarget() {
    const b = new MemoryBucket(`mem-${n++}`, { exists: false });
    buckets.set(b.name, b);
    return b.target();
  },
  async denyLockConfig(t) {
    const b = buckets.get(t.bucket) as MemoryBucket;
    b.denyLockConfig.add("writer");
    b.denyLockConfig.add("reader");
  },
  async removeDefaultRetention(t) {
    (buckets.get(t.bucket) as MemoryBucket).defaultRetention = undefined;
  },
});
