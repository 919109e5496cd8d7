import { DeleteObjectCommand } from "@aws-sdk/client-s3";
import { openTarget } from "../src/store/s3.js";
import { storeContract } from "./store-contract.js";
import { setDefaultRetention } from "./support/lock-config.js";
import { applyReadmePolicy } from "./support/rgw-admin.js";
import { client, createLockedBucket, rgwTarget, s3env } from "./support/s3env.js";

const env = s3env();
const creds = { writer: env.writer, reader: env.reader, admin: env.main };

storeContract("Ceph RGW", {
  async lockedTarget() {
    const tc = rgwTarget(env, `immutd-c-${Math.random().toString(16).slice(2, 10)}`);
    await createLockedBucket(env, tc.bucket, 1);
    return openTarget(tc);
  },
  async plainTarget() {
    const tc = rgwTarget(env, `immutd-p-${Math.random().toString(16).slice(2, 10)}`);
    await createLockedBucket(env, tc.bucket, 1, false);
    return openTarget(tc);
  },
  async deleteVersion(t, role, key, versionId) {
    await client(env, creds[role]).send(
      new DeleteObjectCommand({
        Bucket: t.bucket,
        Key: key,
        VersionId: versionId,
        BypassGovernanceRetention: true,
      }),
    );
  },
  async deleteMarker(t, key) {
    await client(env, env.writer).send(new DeleteObjectCommand({ Bucket: t.bucket, Key: key }));
  },
  async missingTarget() {
    return openTarget(rgwTarget(env, `immutd-m-${Math.random().toString(16).slice(2, 10)}`));
  },
  async denyLockConfig(t) {
    await applyReadmePolicy(env, t.bucket);
  },
  async removeDefaultRetention(t) {
    await setDefaultRetention(env, t.bucket, undefined);
  },
});
