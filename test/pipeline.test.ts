import assert from "node:assert/strict";
import fs from "node:fs";
import type { Readable } from "node:stream";
import { after, describe, it } from "node:test";
import { createArchive } from "../src/archive.js";
import { makePinnedTree, normalisedHash } from "./support/pinned-tree.js";

const cleanups: (() => void)[] = [];
after(() => {
  for (const c of cleanups.reverse()) c();
});

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

describe("the tar bytes of a fixed tree", () => {
  it("are the ones immutd 0.1 wrote (pinned SHA-256 of the normalised archive)", async () => {
    const { top, token } = makePinnedTree();
    cleanups.push(() => fs.rmSync(top, { recursive: true, force: true }));
    const a = createArchive({ paths: [top] });
    const tar = await collect(a.stream);
    await a.done;
    assert.equal(
      normalisedHash(tar, token),
      "04066e883a128fa654b1de1daaae1e59699d008e40402d3243209878ebda34a3",
    );
  });
});
