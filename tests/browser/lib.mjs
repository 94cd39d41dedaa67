// Shared by the browser tests: how Chromium is launched, and polling.

import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--allow-loopback-in-peer-connection',
  '--disable-features=WebRtcHideLocalIpsWithMdns',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
];

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `probe` until it returns a truthy value (or `{ ok: true }`); fails with `describe(last)` on timeout. */
export async function waitUntil(probe, { timeout, interval = 500, describe = (v) => JSON.stringify(v) }) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await probe();
    if (last?.ok ?? last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms: ${describe(last)}`);
    await sleep(interval);
  }
}

/**
 * A Chromium with a fresh profile directory, its page at `url`. `log` collects
 * the page's console and WebSocket traffic (SDP shortened) for artifacts;
 * `close()` closes the browser and removes the profile.
 */
export async function launchPage(name, url, { viewport = { width: 1280, height: 720 } } = {}) {
  const dir = await mkdtemp(path.join(tmpdir(), `meridian-br-${name}-`));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    args: CHROMIUM_ARGS,
    viewport,
    timeout: 60_000,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const log = [];
  const note = (line) => log.push(`${new Date().toISOString()} ${line}`);
  page.on('console', (msg) => note(`console.${msg.type()}: ${msg.text()}`));
  page.on('pageerror', (err) => note(`pageerror: ${err.message}`));
  page.on('websocket', (ws) => {
    note(`ws open ${ws.url()}`);
    ws.on('framesent', ({ payload }) => note(`ws > ${abbreviate(payload)}`));
    ws.on('framereceived', ({ payload }) => note(`ws < ${abbreviate(payload)}`));
    ws.on('close', () => note('ws closed'));
  });
  await page.goto(url, { timeout: 30_000 });
  const close = async () => {
    await context.close().catch(() => {});
    await rm(dir, { recursive: true, force: true }).catch(() => {});
  };
  return { name, context, page, log, close };
}

/** Shortens SDP in logged signaling messages to its m= lines. */
function abbreviate(payload) {
  const text = String(payload);
  try {
    const msg = JSON.parse(text);
    if (typeof msg.sdp === 'string') {
      msg.sdp = msg.sdp
        .split('\r\n')
        .filter((l) =>
          /^(m=|a=mid:|a=(sendrecv|sendonly|recvonly|inactive)$|a=rtpmap:|a=candidate:|a=ice-lite|a=rid:|a=simulcast:)/.test(l),
        )
        .join(' | ');
    }
    return JSON.stringify(msg);
  } catch {
    return text.slice(0, 500);
  }
}

/** Waits for `base`/healthz to answer. */
export async function waitForServer(base, timeout = 20_000) {
  await waitUntil(
    async () => {
      try {
        return (await fetch(`${base}/healthz`)).ok;
      } catch {
        return false;
      }
    },
    { timeout, interval: 200, describe: () => `${base}/healthz not answering` },
  );
}

/**
 * Starts `$MERIDIAN_BIN args…` (a server or a netsim proxy); `log()` is the
 * tail of its stderr (the last `keep` characters).
 */
export function spawnMeridian(args, { keep = 100_000 } = {}) {
  const bin = process.env.MERIDIAN_BIN;
  if (!bin) throw new Error('MERIDIAN_BIN is not set');
  const child = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr.on('data', (d) => {
    log = (log + d).slice(-keep);
  });
  child.log = () => log;
  return child;
}

/** Writes each page's log to `dir/<name>.log` and closes the pages. */
export async function closePages(pages, dir) {
  for (const peer of pages) {
    if (dir) await writeFile(path.join(dir, `${peer.name}.log`), peer.log.join('\n') + '\n').catch(() => {});
    await peer.close();
  }
}
