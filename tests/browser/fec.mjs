// Chrome decodes Meridian's video FEC, in both forms: ULPFEC in RED, and
// FlexFEC-03 (which Chrome 156 negotiates as a receiver by default; the node
// sends it where ULPFEC is not negotiated).
//
// Its own `meridian serve --no-nack` (so only FEC can repair video) and
// `meridian netsim` proxies losing 10 % of server-to-page datagrams. For each
// form, one publisher page and two subscriber pages, each behind its own
// proxy: "fec" takes only that form (its SDP munged: `fec=ulpfec` or
// `fec=flexfec`), "nofec" refuses all video FEC (`fec=0`). After a warm-up,
// over the same 30 s, both see ~10 % of their packets lost on the wire, and
// the FEC page decodes several times as many frames per keyframe: without
// NACK only Chrome's FEC receiver can complete a frame that lost a packet.
//
// Then the other direction: a publisher page behind a third proxy losing
// 10 % of its datagrams to the node (30 ms each way), one viewer: Chrome
// sends ULPFEC, and the node consumes it and rebuilds lost packets
// (`meridian_upstream_fec_recovered_total`); the node NACKs its Opus too
// (`--no-nack` only stops the node answering subscribers), and Chrome
// retransmits it.
//
// Run by tests/browser/run.sh inside its network namespace, after run.mjs.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { closePages, launchPage, sleep, spawnMeridian, waitForServer } from './lib.mjs';

const HTTP = '127.0.0.1:18180';
const UDP_PORT = 18181;
const PROXIES = { fec: 18182, nofec: 18183, flexfec: 18185, noflexfec: 18186 };
// The second test's publisher uplink: 10 % loss, 30 ms each way.
const UP_PROXY = 18184;
const ROOM = 'fec-test';
const WINDOW_MS = 30_000;

const children = [];
const opened = [];

function start(args) {
  const child = spawnMeridian(args, { keep: 4000 });
  children.push(child);
  return child;
}

async function open(name, query, room = ROOM) {
  const peer = await launchPage(name, `http://${HTTP}/?room=${room}&name=${name}&autojoin=1${query}`);
  opened.push(peer);
  return peer.page;
}

/** One counter from the server's /metrics (0 if absent). */
async function metric(line) {
  const text = await (await fetch(`http://${HTTP}/metrics`)).text();
  const escaped = line.replace(/[{}"]/g, (c) => `\\${c}`);
  return Number(text.match(new RegExp(`^${escaped} (\\d+)`, 'm'))?.[1] ?? 0);
}

/** Inbound video RTP stats of a page, summed over its remote videos. */
async function videoIn(page) {
  return page.evaluate(async () => {
    const pc = window.meridianDemo.client?.pc;
    if (!pc) return null;
    const sum = { streams: 0, packetsReceived: 0, packetsLost: 0, framesDecoded: 0, framesReceived: 0, keyFramesDecoded: 0, pliCount: 0, framesDropped: 0, fecPacketsReceived: 0 };
    for (const s of (await pc.getStats()).values()) {
      if (s.type === 'inbound-rtp' && s.kind === 'video' && s.packetsReceived > 0) {
        sum.streams += 1;
        sum.packetsReceived += s.packetsReceived;
        sum.packetsLost += s.packetsLost;
        sum.framesDecoded += s.framesDecoded ?? 0;
        sum.framesReceived += s.framesReceived ?? 0;
        sum.keyFramesDecoded += s.keyFramesDecoded ?? 0;
        sum.pliCount += s.pliCount ?? 0;
        sum.framesDropped += s.framesDropped ?? 0;
        sum.fecPacketsReceived += s.fecPacketsReceived ?? 0;
      }
    }
    return sum;
  });
}

/** The publisher page's outbound audio RTP stats. */
async function audioOut(page) {
  return page.evaluate(async () => {
    const sum = { packetsSent: 0, nackCount: 0, retransmittedPacketsSent: 0 };
    for (const s of (await window.meridianDemo.client.pc.getStats()).values()) {
      if (s.type === 'outbound-rtp' && s.kind === 'audio') {
        sum.packetsSent += s.packetsSent ?? 0;
        sum.nackCount += s.nackCount ?? 0;
        sum.retransmittedPacketsSent += s.retransmittedPacketsSent ?? 0;
      }
    }
    return sum;
  });
}

const diff = (a, b) => Object.fromEntries(Object.keys(b).map((k) => [k, b[k] - a[k]]));

before(async () => {
  start(['serve', '--http', HTTP, '--udp', `127.0.0.1:${UDP_PORT}`, '--no-nack']);
  for (const port of Object.values(PROXIES)) {
    start([
      'netsim', '--listen', `127.0.0.1:${port}`, '--upstream', `127.0.0.1:${UDP_PORT}`,
      '--down', 'loss=10%', '--seed', String(port),
    ]);
  }
  start([
    'netsim', '--listen', `127.0.0.1:${UP_PROXY}`, '--upstream', `127.0.0.1:${UDP_PORT}`,
    '--up', 'loss=10%,delay=30ms', '--down', 'delay=30ms', '--seed', String(UP_PROXY),
  ]);
  await waitForServer(`http://${HTTP}`).catch((err) => {
    throw new Error(`${err.message}; server log: ${children[0].log()}`);
  });
});

after(async () => {
  await closePages(opened);
  for (const child of children) child.kill('SIGTERM');
});

/**
 * Chrome with only `form` ('ulpfec' or 'flexfec') of FEC against Chrome with
 * none, both behind 10 % loss, in `room`, through proxies `proxies`.
 */
async function fecAgainstNone(form, room, proxies) {
  // One encoding: both viewers must receive the same stream for their frame
  // counts to compare (simulcast could give them different layers, and a
  // one-packet frame survives loss far more often).
  await open(`pub-${form}`, '&video=640x360&simulcast=0', room);
  const fecBefore = await metric('meridian_fec_packets_total');
  const pages = {
    fec: await open(form, `&publish=0&via=127.0.0.1:${proxies[0]}&fec=${form}`, room),
    nofec: await open(`no${form}`, `&publish=0&via=127.0.0.1:${proxies[1]}&fec=0`, room),
  };
  // Wait for video at the FEC page and for packets at the other: without NACK
  // or FEC a 10 % loss can keep the baseline from decoding anything for a
  // while (a lost packet stalls Chrome until its next keyframe request, ~3 s
  // later). Then let the node learn the loss (1 s windows).
  for (const [name, page] of Object.entries(pages)) {
    for (let i = 0; ; i++) {
      const s = await videoIn(page);
      if (s && (name === 'fec' ? s.framesDecoded > 10 : s.packetsReceived > 100)) break;
      assert.ok(i < 60, `${name}: no video (${JSON.stringify(s)})`);
      await sleep(500);
    }
  }
  await sleep(4000);
  const before = { fec: await videoIn(pages.fec), nofec: await videoIn(pages.nofec) };
  await sleep(WINDOW_MS);
  const d = {
    fec: diff(before.fec, await videoIn(pages.fec)),
    nofec: diff(before.nofec, await videoIn(pages.nofec)),
  };
  const fecSent = (await metric('meridian_fec_packets_total')) - fecBefore;
  console.log(`${form}: FEC packets sent: ${fecSent}; over ${WINDOW_MS / 1000} s: ${JSON.stringify(d)}`);
  assert.ok(fecSent > 100, 'the node sent FEC to the page that negotiated it');
  if (form === 'flexfec') {
    // Chrome counts FlexFEC packets (on their own SSRC) in inbound-rtp; not ULPFEC.
    assert.ok(d.fec.fecPacketsReceived > 100, `Chrome received FlexFEC: ${JSON.stringify(d.fec)}`);
  }
  // Both pages lose ~10 % of their packets on the wire (Chrome's packetsLost
  // counts wire losses)...
  for (const name of ['fec', 'nofec']) {
    const lossRate = d[name].packetsLost / (d[name].packetsLost + d[name].packetsReceived);
    assert.ok(lossRate > 0.05, `${name} saw the loss: ${JSON.stringify(d[name])}`);
  }
  // ...but without NACK only FEC can complete a frame with a lost packet.
  // Either page stalls at a frame it cannot complete until its next keyframe
  // (Chrome asks for one ~3 s later), so the frames decoded per keyframe are
  // the run a page gets through the loss: FEC makes it several times longer.
  // That ratio does not depend on when the keyframes happen to come, which
  // the total number of frames decoded does. (Chrome 156 does not report
  // fecPacketsReceived for video, so this is the evidence.)
  const run = (s) => s.framesDecoded / Math.max(1, s.keyFramesDecoded);
  assert.ok(
    run(d.fec) > 2 * run(d.nofec) && d.fec.framesDecoded > d.nofec.framesDecoded,
    `${form}: frames decoded per keyframe with FEC ${run(d.fec).toFixed(1)}, without ${run(d.nofec).toFixed(1)}`,
  );
  await closePages(opened.splice(0));
}

test('Chrome recovers lost video packets from Meridian\'s ULPFEC', { timeout: 120_000 }, async () => {
  await fecAgainstNone('ulpfec', `${ROOM}-ulpfec`, [PROXIES.fec, PROXIES.nofec]);
});

test('Chrome recovers lost video packets from Meridian\'s FlexFEC', { timeout: 120_000 }, async () => {
  await fecAgainstNone('flexfec', `${ROOM}-flexfec`, [PROXIES.flexfec, PROXIES.noflexfec]);
});

test('the node rebuilds a Chrome publisher\'s lost packets from its ULPFEC', { timeout: 120_000 }, async () => {
  // Chrome protects VP8 with ULPFEC when it is negotiated and NACK is not
  // (with NACK too, it adds FEC only above 20 ms RTT): its rate follows the
  // loss the node's receiver reports show, ~10 % here.
  const publisher = await open('uppub', `&video=640x360&simulcast=0&via=127.0.0.1:${UP_PROXY}`, 'fec-up');
  const viewer = await open('upview', '&publish=0', 'fec-up');
  for (let i = 0; ; i++) {
    const s = await videoIn(viewer);
    if (s && s.framesDecoded > 10) break;
    assert.ok(i < 60, `viewer: no video (${JSON.stringify(s)})`);
    await sleep(500);
  }
  const recovered = () => metric('meridian_upstream_fec_recovered_total');
  const consumed = () => metric('meridian_dropped_total{reason="upstream_fec"}');
  const before = {
    recovered: await recovered(),
    consumed: await consumed(),
    audio: await audioOut(publisher),
  };
  await sleep(20_000);
  const d = {
    recovered: (await recovered()) - before.recovered,
    consumed: (await consumed()) - before.consumed,
  };
  const audio = diff(before.audio, await audioOut(publisher));
  console.log(`publisher audio over 20 s: ${JSON.stringify(audio)}`);
  // The node's answer carries `a=rtcp-fb:111 nack`, so Chrome keeps a
  // history of its Opus packets and answers the node's NACKs for them with
  // plain retransmissions (RFC 4585; Opus has no RTX).
  assert.ok(audio.nackCount >= 5, `the node NACKed the publisher's Opus: ${JSON.stringify(audio)}`);
  assert.ok(
    audio.retransmittedPacketsSent >= 5,
    `Chrome retransmitted Opus on the node's NACKs: ${JSON.stringify(audio)}`,
  );
  console.log(`over 20 s the node took ${d.consumed} FEC packets from the publisher and rebuilt ${d.recovered} media packets`);
  // Chrome sent FEC, the node consumed it (not forwarded: the viewer gets
  // FEC of its own when it needs it) and rebuilt lost packets from it.
  // (Chrome's FEC is light at this loss: over 15 s, four runs got 69-224
  // FEC packets and rebuilt 14-30 media packets.)
  assert.ok(d.consumed >= 20, `FEC packets from the publisher: ${d.consumed}`);
  assert.ok(d.recovered >= 5, `packets rebuilt from the publisher's FEC: ${d.recovered}`);
});
