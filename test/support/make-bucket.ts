/**
 * Creates a bucket on the local test RGW the way the tutorial does by hand
 * (Object Lock, COMPLIANCE default retention), for scripts/quickstart.sh.
 * Usage: node dist/test/support/make-bucket.js BUCKET [DAYS]
 * (`immutd init` will do this for real servers.)
 */
import { HeadBucketCommand } from "@aws-sdk/client-s3";
import { client, createLockedBucket, s3env } from "./s3env.js";

const [bucket, days = "1"] = process.argv.slice(2);
if (!bucket) {
  process.stderr.write("usage: make-bucket BUCKET [DAYS]\n");
  process.exit(2);
}
const env = s3env();
try {
  await client(env, env.main).send(new HeadBucketCommand({ Bucket: bucket }));
  process.stdout.write(`bucket ${bucket} exists\n`);
} catch {
  await createLockedBucket(env, bucket, Number(days));
  process.stdout.write(`created bucket ${bucket} with Object Lock, COMPLIANCE ${days} day(s)\n`);
}
