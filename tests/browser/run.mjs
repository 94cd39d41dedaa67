// Three headless Chromium pages join one room through the web demo and check
// that media, codec choice, muting, chat and leaving work end to end.
//
// Expects a running `meridian serve` at MERIDIAN_URL (default
// http://127.0.0.1:8080); tests/browser/run.sh starts one in a private
// network namespace and runs this file with `node --test`.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { closePages, launchPage, sleep, waitForServer, waitUntil } from './lib.mjs';

const BASE_URL = process.env.MERIDIAN_URL ?? 'http://127.0.0.1:8080';
const ROOM = 'br-test';
const ARTIFACTS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'artifacts');

// 360p capture keeps three encoding pages light on a small machine (Chrome
// then sends two simulcast layers); simulcast.mjs publishes the full 720p.
const PARTICIPANTS = [
  { name: 'alice', query: '&video=640x360' },
  { name: 'bob', query: '&video=640x360' },
  { name: 'carol', query: '&video=640x360&codec=H264' },
];

/** name -> { name, page, log, close } */
const peers = new Map();

// ---- helpers -------------------------------------------------------------------

/** Per-remote-tile stats from the page's window.meridianDemo.stats(). */
function tileStats(peer) {
  return peer.page.evaluate(() => window.meridianDemo.stats());
}

function byName(stats, name) {
  return stats.find((s) => s.name === name);
}

/** framesDecoded of each remote tile now and `ms` later. */
async function frameProgress(peer, ms) {
  const first = await tileStats(peer);
  await sleep(ms);
  const second = await tileStats(peer);
  return second.map((s) => ({
    name: s.name,
    before: byName(first, s.name)?.framesDecoded ?? 0,
    after: s.framesDecoded,
    codec: s.codec,
    frameWidth: s.frameWidth,
  }));
}

async function launchPeer({ name, query }) {
  const peer = await launchPage(name, `${BASE_URL}/?room=${ROOM}&name=${name}&autojoin=1${query}`);
  peers.set(name, peer);
  return peer;
}

/** Every page has tiles for both others, and their framesDecoded keeps rising. */
async function assertAllVideosFlow() {
  await Promise.all(
    [...peers.values()].map(async (peer) => {
      const others = PARTICIPANTS.map((p) => p.name).filter((n) => n !== peer.name);
      await waitUntil(
        async () => {
          const stats = await tileStats(peer);
          return { ok: others.every((n) => byName(stats, n)?.framesDecoded > 0), stats };
        },
        { timeout: 60_000, describe: (v) => `${peer.name} sees ${JSON.stringify(v.stats)}` },
      );
      const progress = await frameProgress(peer, 3_000);
      for (const name of others) {
        const p = progress.find((x) => x.name === name);
        assert.ok(p, `${peer.name} has no tile for ${name}: ${JSON.stringify(progress)}`);
        assert.ok(
          p.after - p.before >= 10,
          `${peer.name}: frames from ${name} are not flowing: ${JSON.stringify(p)}`,
        );
      }
    }),
  );
}

// ---- lifecycle -------------------------------------------------------------------

before(
  async () => {
    await mkdir(ARTIFACTS, { recursive: true });
    await waitForServer(BASE_URL);
    // Start one at a time: joining in a fixed order keeps the run predictable
    // and avoids three browsers starting at once on a small machine.
    for (const participant of PARTICIPANTS) await launchPeer(participant);
  },
  { timeout: 120_000 },
);

after(
  async () => {
    await closePages(peers.values(), ARTIFACTS);
  },
  { timeout: 30_000 },
);

// ---- tests -----------------------------------------------------------------------

test('every page decodes both other videos', { timeout: 90_000 }, async () => {
  try {
    await assertAllVideosFlow();
  } finally {
    // Taken either way: it shows what a person would have seen.
    await peers.get('alice').page.screenshot({ path: path.join(ARTIFACTS, 'three-party.png') });
  }
});

test("carol's video arrives as H264 at the others", { timeout: 30_000 }, async () => {
  for (const name of ['alice', 'bob']) {
    const carol = byName(await tileStats(peers.get(name)), 'carol');
    assert.equal(carol?.codec, 'video/H264', `${name} sees carol as ${JSON.stringify(carol)}`);
  }
});

test('chat messages reach the other participants', { timeout: 30_000 }, async () => {
  const alice = peers.get('alice').page;
  await alice.waitForSelector('#chat-input:not([disabled])', { timeout: 15_000 });
  await alice.fill('#chat-input', 'hello from alice');
  await alice.click('#chat-send');
  for (const name of ['bob', 'carol']) {
    await peers
      .get(name)
      .page.getByText('hello from alice')
      .waitFor({ timeout: 15_000 });
  }
});

test("alice muting her camera stops her video at bob and carol", { timeout: 60_000 }, async () => {
  // Precondition, so the test cannot pass merely because nothing flowed.
  for (const name of ['bob', 'carol']) {
    const a = (await frameProgress(peers.get(name), 2_000)).find((p) => p.name === 'alice');
    assert.ok(a && a.after > a.before, `${name} is not decoding alice before the mute: ${JSON.stringify(a)}`);
  }

  const alice = peers.get('alice').page;
  await alice.click('#toggle-camera');
  await alice.waitForSelector('#toggle-camera[aria-pressed="true"]', { timeout: 10_000 });

  await Promise.all(
    ['bob', 'carol'].map((name) =>
      waitUntil(
        async () => {
          const progress = await frameProgress(peers.get(name), 2_000);
          const a = progress.find((p) => p.name === 'alice');
          return { ok: a && a.after === a.before, a };
        },
        { timeout: 20_000, interval: 0, describe: (v) => `${name} still decodes alice: ${JSON.stringify(v.a)}` },
      ),
    ),
  );

  // The server announced the mute (track_muted), so the tile says so.
  for (const name of ['bob', 'carol']) {
    await peers.get(name).page.waitForSelector('[data-name="alice"].camera-off', { timeout: 10_000 });
  }

  // The others' video keeps flowing.
  const bobProgress = await frameProgress(peers.get('bob'), 2_000);
  const carolAtBob = bobProgress.find((p) => p.name === 'carol');
  assert.ok(carolAtBob.after > carolAtBob.before, `bob stopped decoding carol: ${JSON.stringify(carolAtBob)}`);
});

test("alice unmuting her camera resumes her video", { timeout: 60_000 }, async () => {
  const alice = peers.get('alice').page;
  await alice.click('#toggle-camera');
  await alice.waitForSelector('#toggle-camera[aria-pressed="false"]', { timeout: 10_000 });

  await Promise.all(
    ['bob', 'carol'].map((name) =>
      waitUntil(
        async () => {
          const progress = await frameProgress(peers.get(name), 2_000);
          const a = progress.find((p) => p.name === 'alice');
          return { ok: a && a.after - a.before >= 5, a };
        },
        { timeout: 20_000, interval: 0, describe: (v) => `${name} does not decode alice again: ${JSON.stringify(v.a)}` },
      ),
    ),
  );
  for (const name of ['bob', 'carol']) {
    await peers.get(name).page.waitForSelector('[data-name="alice"]:not(.camera-off)', { timeout: 10_000 });
  }
});

test("carol leaving removes her tile at alice and bob", { timeout: 30_000 }, async () => {
  await peers.get('carol').page.click('#leave');
  for (const name of ['alice', 'bob']) {
    await peers
      .get(name)
      .page.waitForSelector('[data-name="carol"]', { state: 'detached', timeout: 20_000 });
  }
});
