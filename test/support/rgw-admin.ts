/**
 * What the storage owner does on the test RGW beyond the tutorial: the bucket
 * policy that README's least-privilege section recommends.
 */
import { DeleteBucketPolicyCommand, PutBucketPolicyCommand } from "@aws-sdk/client-s3";
import { client, type S3Env } from "./s3env.js";

/** The subusers scripts/s3-test-server.sh creates (uid "backups"). */
export const SUBUSERS = ["backups:creator", "backups:restorer"];

/**
 * README's bucket policy. Ceph RGW 16 lets every subuser of the bucket owner
 * change the bucket's Object Lock configuration (even a read-only one), and the
 * write subuser put delete markers; the policy denies both to the subusers, and
 * the main user keeps them.
 */
export async function applyReadmePolicy(env: S3Env, bucket: string): Promise<void> {
  await putPolicy(env, bucket, [
    deny(
      "immutd-lock-config-owner-only",
      "s3:PutBucketObjectLockConfiguration",
      `arn:aws:s3:::${bucket}`,
    ),
    deny("immutd-no-delete-markers", "s3:DeleteObject", `arn:aws:s3:::${bucket}/*`),
  ]);
}

/** A provider or policy that refuses the subusers PutObjectRetention (AWS without s3:PutObjectRetention). */
export async function denySubusersRetention(env: S3Env, bucket: string): Promise<void> {
  await putPolicy(env, bucket, [
    deny("immutd-test-no-retention", "s3:PutObjectRetention", `arn:aws:s3:::${bucket}/*`),
  ]);
}

/** A reader without GetObjectRetention (an AWS policy that grants only s3:GetObject and listing). */
export async function denySubusersRetentionRead(env: S3Env, bucket: string): Promise<void> {
  await putPolicy(env, bucket, [
    deny("immutd-test-no-retention-read", "s3:GetObjectRetention", `arn:aws:s3:::${bucket}/*`),
  ]);
}

/** A statement denying both subusers one action. */
function deny(sid: string, action: string, resource: string) {
  return {
    Sid: sid,
    Effect: "Deny",
    Principal: { AWS: SUBUSERS.map((u) => `arn:aws:iam:::user/${u}`) },
    Action: [action],
    Resource: [resource],
  };
}

/** Replaces the bucket's policy. */
async function putPolicy(env: S3Env, bucket: string, statements: unknown[]): Promise<void> {
  const policy = { Version: "2012-10-17", Statement: statements };
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
