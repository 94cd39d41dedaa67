// Simulcast through the web demo: one page publishes its camera as three
// encodings (q/h/f); two viewer pages (joined with ?publish=0) show it, one in
// a pinned, large tile and one as a thumbnail. The server forwards each the
// layer its tile needs (frameWidth in getStats is the publisher's encoding of
// that rid), pauses the encodings above the highest one taken at the
// publisher (dynacast), and resumes them when a tile grows to need them.
// While the publisher talks it is the dominant speaker, which the viewers
// highlight.
//
// Its own `meridian serve --no-bwe`, so that tile sizes alone choose: with
// three Chromium instances on a two-core machine, str0m's delay-based
// estimate over loopback stays at 0.6–1.2 Mbit/s (CPU-delayed arrivals read
// as queueing), below the 720p layer. Choices on the estimate are tested
// deterministically in sfu/tests/simulcast_sim.rs. tests/browser/run.sh runs
// this file in its network namespace after run.mjs.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { closePages, launchPage, spawnMeridian, waitForServer, waitUntil } from './lib.mjs';

// The publisher's codec: VP8 (picture ids rewritten at switches) or H264
// (layer sizes read from its SPS). run.sh runs this file once for each.
const CODEC = (process.env.SIMULCAST_CODEC ?? 'VP8').toUpperCase();
const HTTP = '127.0.0.1:18280';
const BASE_URL = `http://${HTTP}`;
const ROOM = `br-simulcast-${CODEC.toLowerCase()}`;
const ARTIFACTS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'artifacts');

/** name -> { name, page, log, close } */
const peers = new Map();
let server = null;

async function join(name, query = '') {
  const peer = await launchPage(
    `sc-${CODEC.toLowerCase()}-${name}`,
    `${BASE_URL}/?room=${ROOM}&name=${name}&autojoin=1${query}`,
  );
  peers.set(name, peer);
  return peer.page;
}

/** The publisher's encodings, lowest first: [{ rid, active, frameWidth, ... }]. */
function outbound() {
  return peers.get('pub').page.evaluate(() => window.meridianDemo.outbound());
}

/** What viewer `name` shows of the publisher: { frameWidth, tileWidth, pinned, ... }. */
async function pubTile(name) {
  const stats = await peers.get(name).page.evaluate(() => window.meridianDemo.stats());
  return stats.find((s) => s.name === 'pub') ?? null;
}

const widthOf = (encodings, rid) => encodings.find((e) => e.rid === rid)?.frameWidth ?? 0;

before(
  async () => {
    await mkdir(ARTIFACTS, { recursive: true });
    server = spawnMeridian(['serve', '--http', HTTP, '--udp', '127.0.0.1:18281', '--no-bwe']);
    await waitForServer(BASE_URL).catch((err) => {
      throw new Error(`${err.message}; server log: ${server.log().slice(-4000)}`);
    });
    await join('pub', `&codec=${CODEC}`);
    await join('big', '&publish=0');
    await join('small', '&publish=0');
  },
  { timeout: 120_000 },
);

after(
  async () => {
    await closePages(peers.values(), ARTIFACTS);
    server?.kill('SIGTERM');
    const log = `simulcast-${CODEC.toLowerCase()}-server.log`;
    if (server) await writeFile(path.join(ARTIFACTS, log), server.log()).catch(() => {});
  },
  { timeout: 30_000 },
);

test('a large tile gets the high layer, a thumbnail the low one', { timeout: 90_000 }, async () => {
  // The publisher offers three encodings. (Alone, it sends only q: the
  // layers above are paused until somebody takes them.)
  const rids = await peers.get('pub').page.evaluate(() =>
    window.meridianDemo.client.pc
      .getSenders()
      .find((s) => s.track?.kind === 'video')
      .getParameters()
      .encodings.map((e) => e.rid),
  );
  assert.deepEqual(rids, ['q', 'h', 'f']);

  // big pins the publisher (a wide tile); small pins the other viewer, which
  // leaves the publisher in a 160 px thumbnail.
  await peers.get('big').page.click('[data-name="pub"]');
  await peers.get('small').page.click('[data-name="big"]');

  let last;
  await waitUntil(
    async () => {
      const e = await outbound();
      const big = await pubTile('big');
      const small = await pubTile('small');
      last = { encodings: e, big, small };
      return (
        big?.pinned &&
        big.frameWidth > 0 &&
        big.frameWidth === widthOf(e, 'f') &&
        widthOf(e, 'h') > 0 &&
        small?.frameWidth > 0 &&
        small.frameWidth === widthOf(e, 'q')
      );
    },
    { timeout: 60_000, describe: () => JSON.stringify(last) },
  );
  assert.equal(last.big.codec, `video/${CODEC}`);
  const [q, h, f] = ['q', 'h', 'f'].map((rid) => widthOf(last.encodings, rid));
  assert.ok(q > 0 && q < h && h < f, `all three run, q < h < f: ${JSON.stringify(last.encodings)}`);
  assert.ok(last.small.tileWidth < 200, `the thumbnail is small: ${JSON.stringify(last.small)}`);
  assert.ok(last.big.tileWidth > widthOf(last.encodings, 'h'), `the pinned tile is large: ${JSON.stringify(last.big)}`);
  for (const name of ['big', 'small']) {
    const file = `simulcast-${CODEC.toLowerCase()}-${name}.png`;
    await peers.get(name).page.screenshot({ path: path.join(ARTIFACTS, file) });
  }
});

test('layers nobody takes are paused at the publisher, and resume on demand', { timeout: 120_000 }, async () => {
  // big unpins: a grid tile of ~300 px is covered by the quarter-size layer
  // (320x180 of a 720p camera), so nobody takes h or f any more and the
  // publisher stops encoding them.
  const before = await pubTile('big');
  await peers.get('big').page.click('[data-name="pub"]');
  let last;
  await waitUntil(
    async () => {
      const e = await outbound();
      const big = await pubTile('big');
      const active = Object.fromEntries(e.map((x) => [x.rid, x.active]));
      last = { encodings: e, big };
      return active.q && !active.h && !active.f && big?.frameWidth > 0 && big.frameWidth === widthOf(e, 'q');
    },
    { timeout: 45_000, describe: () => JSON.stringify(last) },
  );
  assert.ok(last.big.tileWidth <= widthOf(last.encodings, 'q'), `the grid tile fits q: ${JSON.stringify(last.big)}`);

  // Pinned again: f resumes and big switches up to it.
  const widthF = (await outbound()).find((x) => x.rid === 'f').frameWidth || 1280;
  await peers.get('big').page.click('[data-name="pub"]');
  await waitUntil(
    async () => {
      const e = await outbound();
      const big = await pubTile('big');
      last = { encodings: e, big };
      return e.find((x) => x.rid === 'f')?.active && big?.frameWidth === widthF;
    },
    { timeout: 45_000, describe: () => JSON.stringify(last) },
  );
  // Chrome's own count of frozen video (a frame interval over 3x the mean,
  // or the mean + 150 ms) across both switches, for docs/BENCHMARKS.md.
  const after = await pubTile('big');
  console.log(
    `[simulcast ${CODEC}] f -> q -> f at the pinned tile: ${after.freezeCount - before.freezeCount} freezes, ` +
      `${Math.round((after.totalFreezesDuration - before.totalFreezesDuration) * 1000)} ms frozen, ` +
      `${after.framesDecoded - before.framesDecoded} frames decoded`,
  );
});

test('the viewers highlight the publisher while it talks', { timeout: 60_000 }, async () => {
  // Chrome's fake microphone only beeps briefly; a steady tone is talking.
  const pub = peers.get('pub').page;
  await pub.click('header h1'); // a user gesture, so the AudioContext runs
  await pub.evaluate(async () => {
    const ctx = new AudioContext();
    await ctx.resume();
    const tone = ctx.createOscillator();
    const gain = ctx.createGain();
    const out = ctx.createMediaStreamDestination();
    tone.connect(gain).connect(out);
    tone.start();
    const sender = window.meridianDemo.client.pc.getSenders().find((s) => s.track?.kind === 'audio');
    await sender.replaceTrack(out.stream.getAudioTracks()[0]);
    window.testVoice = gain;
  });
  for (const name of ['big', 'small']) {
    await peers.get(name).page.waitForSelector('[data-name="pub"].speaking', { timeout: 20_000 });
  }
  // Silence: the highlight goes.
  await pub.evaluate(() => {
    window.testVoice.gain.value = 0;
  });
  for (const name of ['big', 'small']) {
    await peers.get(name).page.waitForSelector('[data-name="pub"]:not(.speaking)', { timeout: 20_000 });
  }
});
