/**
 * What the storage owner does on the test RGW beyond the tutorial: the bucket
 * policy that README's least-privilege section recommends.
 */
import { DeleteBucketPolicyCommand, PutBucketPolicyCommand } from "@aws-sdk/client-s3";
import { client, type S3Env } from "./s3env.js";

/** The subusers scripts/s3-test-server.sh creates (uid "backups"). */
export const SUBUSERS = ["backups:creator", "backups:restorer"];

/**
 * Ceph RGW 16 lets every subuser of the bucket owner change the bucket's
 * Object Lock configuration (even a read-only one). A bucket policy that
 * denies it to the subusers closes that gap; the main user keeps it.
 */
export async function denySubusersLockConfig(env: S3Env, bucket: string): Promise<void> {
  await denySubusers(env, bucket, "s3:PutBucketObjectLockConfiguration", `arn:aws:s3:::${bucket}`);
}

/** A provider or policy that refuses the subusers PutObjectRetention (AWS without s3:PutObjectRetention). */
export async function denySubusersRetention(env: S3Env, bucket: string): Promise<void> {
  await denySubusers(env, bucket, "s3:PutObjectRetention", `arn:aws:s3:::${bucket}/*`);
}

/** Replaces the bucket policy with one that denies both subusers one action. */
async function denySubusers(
  env: S3Env,
  bucket: string,
  action: string,
  resource: string,
): Promise<void> {
  const policy = {
    Version: "2012-10-17",
    Statement: [
      {
        Sid: "immutd-test-deny-subusers",
        Effect: "Deny",
        Principal: { AWS: SUBUSERS.map((u) => `arn:aws:iam:::user/${u}`) },
        Action: [action],
        Resource: [resource],
      },
    ],
  };
  const c = client(env, env.main);
  try {
    await c.send(new PutBucketPolicyCommand({ Bucket: bucket, Policy: JSON.stringify(policy) }));
  } finally {
    c.destroy();
  }
}

/** Removes the bucket's policy. */
export async function removeBucketPolicy(env: S3Env, bucket: string): Promise<void> {
  const c = client(env, env.main);
  try {
    await c.send(new DeleteBucketPolicyCommand({ Bucket: bucket }));
  } finally {
    c.destroy();
  }
}
