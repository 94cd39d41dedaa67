// The Meridian demo page: join form, video grid, controls, chat and stats.
// All protocol work is done by MeridianClient in meridian.js.

import { MeridianClient } from './meridian.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const ui = {
  joinForm: $('join-form'),
  room: $('room'),
  name: $('name'),
  joinButton: $('join'),
  controls: $('controls'),
  roomLabel: $('room-label'),
  cameraButton: $('toggle-camera'),
  micButton: $('toggle-mic'),
  leaveButton: $('leave'),
  status: $('status'),
  tiles: $('tiles'),
  tileTemplate: $('tile-template'),
  chatLog: $('chat-log'),
  chatForm: $('chat-form'),
  chatInput: $('chat-input'),
  chatSend: $('chat-send'),
};

/** @type {MeridianClient|null} */
let client = null;
/** Remote tiles by peer id: { el, video, audio, statsLine, participant, videoReceiver, videoMid, videoTrackId, last } */
const remoteTiles = new Map();
let localTile = null;
let statsTimer = null;
/** The peer id of the pinned (spotlight) tile, if any; the others become thumbnails. */
let pinnedPeerId = null;

/**
 * Tells the server the size each remote video is shown at, so it forwards no
 * larger simulcast layer than the tile can show. Sizes settle for a moment
 * before they are sent: a window being dragged would otherwise send dozens.
 */
const tileSizes = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const tile = [...remoteTiles.values()].find((t) => t.video === entry.target);
    if (!tile) continue;
    clearTimeout(tile.resizeTimer);
    tile.resizeTimer = setTimeout(() => sendTileSize(tile), 150);
  }
});

// ---- start-up ----------------------------------------------------------------

if (params.has('room')) ui.room.value = params.get('room');
if (params.has('name')) ui.name.value = params.get('name');

ui.joinForm.addEventListener('submit', (event) => {
  event.preventDefault();
  join();
});
ui.leaveButton.addEventListener('click', () => client?.leave());
ui.cameraButton.addEventListener('click', toggleCamera);
ui.micButton.addEventListener('click', toggleMic);
ui.chatForm.addEventListener('submit', (event) => {
  event.preventDefault();
  sendChat();
});
window.addEventListener('pagehide', () => client?.leave());

window.meridianDemo = {
  get client() {
    return client;
  },
  stats: collectTileStats,
  outbound: collectOutboundStats,
};

if (params.get('autojoin') === '1' && ui.room.value && ui.name.value) join();

// ---- joining and leaving -------------------------------------------------------

async function join() {
  const room = ui.room.value.trim();
  const name = ui.name.value.trim();
  if (!room || !name) return;

  setJoining(true);
  setStatus(`Joining ${room}…`);

  const codec = params.get('codec');
  client = new MeridianClient({
    preferCodec: codec ? codec.toUpperCase() : null,
    // Testing aids: reach the server's UDP port through a proxy
    // (`meridian netsim`), and refuse video FEC.
    udpVia: params.get('via'),
    // fec=0: no video FEC; fec=ulpfec / fec=flexfec: only that form.
    videoFec: { 0: false, ulpfec: 'ulpfec', flexfec: 'flexfec' }[params.get('fec')] ?? true,
    simulcast: params.get('simulcast') !== '0',
    ...captureConstraints(params.get('video')),
  });
  wireClientEvents(client);

  // ?publish=0 joins as a viewer: no camera, no microphone.
  const publish = params.get('publish') !== '0';
  try {
    await client.connect('/ws', {
      room,
      name,
      token: params.get('token') ?? undefined,
      ...(publish ? {} : { stream: null }),
    });
  } catch (err) {
    console.error(err);
    const failed = client;
    client = null; // so its 'closed' event does not overwrite the status
    failed?.leave();
    resetUi();
    setStatus(`Could not join: ${err.message ?? err}`, true);
  }
}

function wireClientEvents(c) {
  c.on('joined', ({ room, participants }) => {
    setJoining(false);
    ui.joinForm.hidden = true;
    ui.controls.hidden = false;
    ui.roomLabel.textContent = `Room “${room}”`;
    setStatus(`Joined as ${ui.name.value.trim()}`);
    localTile = createTile(`${ui.name.value.trim()} (you)`);
    localTile.el.classList.add('local');
    localTile.el.dataset.local = 'true';
    localTile.video.srcObject = c.localStream;
    if (!c.localStream?.getVideoTracks().length) localTile.el.classList.add('camera-off');
    ui.tiles.prepend(localTile.el);
    for (const participant of participants) ensureRemoteTile(participant);
    statsTimer = setInterval(updateStatsLines, 1000);
  });

  c.on('participantjoined', ({ participant }) => {
    ensureRemoteTile(participant);
    addChatLine(null, `${participant.name} joined`);
  });

  c.on('participantleft', ({ peerId, participant }) => {
    removeRemoteTile(peerId);
    if (participant) addChatLine(null, `${participant.name} left`);
  });

  c.on('trackadded', ({ peerId, trackId, kind, track, receiver, mid, participant }) => {
    const tile = ensureRemoteTile(participant ?? { peerId, name: peerId });
    if (kind === 'video') {
      tile.video.srcObject = new MediaStream([track]);
      tile.videoReceiver = receiver;
      tile.videoMid = mid;
      tile.videoTrackId = trackId;
      tile.last = null;
      sendTileSize(tile);
    } else {
      tile.audio.srcObject = new MediaStream([track]);
      playAudio(tile.audio);
    }
    refreshBadges(tile);
  });

  c.on('trackremoved', ({ peerId, kind, mid }) => {
    const tile = remoteTiles.get(peerId);
    if (!tile) return;
    if (kind === 'video' && tile.videoMid === mid) {
      tile.video.srcObject = null;
      tile.videoReceiver = null;
      tile.videoMid = null;
      tile.videoTrackId = null;
      tile.el.classList.remove('paused');
      tile.statsLine.textContent = '';
    } else if (kind === 'audio') {
      tile.audio.srcObject = null;
    }
  });

  c.on('trackpublished', ({ peerId }) => refreshBadges(remoteTiles.get(peerId)));
  c.on('trackunpublished', ({ peerId }) => refreshBadges(remoteTiles.get(peerId)));
  c.on('muted', ({ peerId }) => refreshBadges(remoteTiles.get(peerId)));

  // The server stopped forwarding a video for lack of bandwidth, or resumed it.
  c.on('trackpaused', ({ trackId, paused }) => {
    const tile = [...remoteTiles.values()].find((t) => t.videoTrackId === trackId);
    if (tile) {
      tile.el.classList.toggle('paused', paused);
      refreshBadges(tile);
    }
  });

  c.on('speakers', ({ dominant }) => {
    for (const [peerId, tile] of remoteTiles) tile.el.classList.toggle('speaking', peerId === dominant);
    localTile?.el.classList.toggle('speaking', dominant != null && dominant === c.peerId);
  });

  c.on('chatready', () => {
    ui.chatInput.disabled = false;
    ui.chatSend.disabled = false;
  });
  c.on('chat', ({ name, from, data }) => addChatLine(name ?? from ?? '?', data));

  c.on('connectionstatechange', ({ state }) => {
    if (state === 'failed') setStatus('Media connection failed', true);
  });
  c.on('error', ({ code, message }) => setStatus(`Server error ${code}: ${message}`, true));
  c.on('closed', ({ reason }) => {
    if (c !== client) return;
    client = null;
    resetUi();
    setStatus(reason === 'left' ? 'You left the room' : `Disconnected: ${reason}`, reason !== 'left');
  });
}

/** `?video=640x360` captures the camera at that size instead of 720p. */
function captureConstraints(size) {
  const m = /^(\d{2,4})x(\d{2,4})$/.exec(size ?? '');
  if (!m) return {};
  const video = { width: Number(m[1]), height: Number(m[2]), frameRate: 24 };
  return { mediaConstraints: { audio: true, video } };
}

function resetUi() {
  clearInterval(statsTimer);
  statsTimer = null;
  pinnedPeerId = null;
  ui.tiles.classList.remove('has-spotlight');
  for (const peerId of [...remoteTiles.keys()]) removeRemoteTile(peerId);
  localTile?.el.remove();
  localTile = null;
  ui.joinForm.hidden = false;
  ui.controls.hidden = true;
  ui.chatInput.disabled = true;
  ui.chatSend.disabled = true;
  setButtonState(ui.cameraButton, false, 'camera');
  setButtonState(ui.micButton, false, 'mic');
  setJoining(false);
}

function setJoining(joining) {
  ui.joinButton.disabled = joining;
  ui.room.disabled = joining;
  ui.name.disabled = joining;
}

function setStatus(text, isError = false) {
  ui.status.textContent = text;
  ui.status.classList.toggle('error', isError);
}

// ---- controls ----------------------------------------------------------------

async function toggleCamera() {
  if (!client) return;
  const muted = !client.cameraMuted;
  ui.cameraButton.disabled = true;
  try {
    await client.setCameraMuted(muted);
    setButtonState(ui.cameraButton, muted, 'camera');
    localTile?.el.classList.toggle('camera-off', muted);
  } finally {
    ui.cameraButton.disabled = false;
  }
}

async function toggleMic() {
  if (!client) return;
  const muted = !client.micMuted;
  await client.setMicMuted(muted);
  setButtonState(ui.micButton, muted, 'mic');
}

function setButtonState(button, muted, what) {
  button.setAttribute('aria-pressed', String(muted));
  button.textContent = `${muted ? 'Unmute' : 'Mute'} ${what}`;
}

// ---- tiles ---------------------------------------------------------------------

function createTile(label) {
  const el = ui.tileTemplate.content.firstElementChild.cloneNode(true);
  el.querySelector('.name').textContent = label;
  return {
    el,
    video: el.querySelector('video'),
    statsLine: el.querySelector('.stats'),
    badges: el.querySelector('.badges'),
  };
}

function ensureRemoteTile(participant) {
  const existing = remoteTiles.get(participant.peerId);
  if (existing) return existing;
  const tile = createTile(participant.name);
  tile.participant = participant;
  tile.el.dataset.peerId = participant.peerId;
  tile.el.dataset.name = participant.name;
  tile.audio = document.createElement('audio');
  tile.audio.autoplay = true;
  tile.el.append(tile.audio);
  tile.videoReceiver = null;
  tile.videoMid = null;
  tile.videoTrackId = null;
  tile.last = null;
  tile.resizeTimer = null;
  tile.el.title = 'Click to pin';
  tile.el.addEventListener('click', () => togglePin(participant.peerId));
  remoteTiles.set(participant.peerId, tile);
  ui.tiles.append(tile.el);
  tileSizes.observe(tile.video);
  refreshBadges(tile);
  return tile;
}

function removeRemoteTile(peerId) {
  const tile = remoteTiles.get(peerId);
  if (!tile) return;
  if (pinnedPeerId === peerId) togglePin(peerId);
  tileSizes.unobserve(tile.video);
  clearTimeout(tile.resizeTimer);
  tile.video.srcObject = null;
  tile.audio.srcObject = null;
  tile.el.remove();
  remoteTiles.delete(peerId);
}

/**
 * Pins a remote tile: it fills the width and the others shrink to a strip of
 * thumbnails (which then get small simulcast layers). Pinning it again unpins.
 */
function togglePin(peerId) {
  pinnedPeerId = pinnedPeerId === peerId ? null : peerId;
  for (const [id, tile] of remoteTiles) tile.el.classList.toggle('spotlight', id === pinnedPeerId);
  ui.tiles.classList.toggle('has-spotlight', pinnedPeerId !== null);
}

/** Sends the tile's size in device pixels (or "hidden") for its video track. */
function sendTileSize(tile) {
  tile.resizeTimer = null;
  if (!client || !tile.videoTrackId) return;
  const { clientWidth: width, clientHeight: height } = tile.video;
  const dpr = window.devicePixelRatio || 1;
  if (width === 0 || height === 0) {
    client.setTrackSettings(tile.videoTrackId, { disabled: true });
  } else {
    client.setTrackSettings(tile.videoTrackId, { width: width * dpr, height: height * dpr });
  }
}

/** Shows "camera off" / "mic off" / "paused" from the participant's track state. */
function refreshBadges(tile) {
  if (!tile) return;
  const tracks = [...(client?.participants.get(tile.participant.peerId)?.tracks.values() ?? [])];
  const videoOff = tracks.some((t) => t.kind === 'video' && t.muted);
  const micOff = tracks.some((t) => t.kind === 'audio' && t.muted);
  tile.el.classList.toggle('camera-off', videoOff);
  const badges = [];
  if (micOff) badges.push('🔇 mic off');
  if (tile.el.classList.contains('paused')) badges.push('⏸ low bandwidth');
  tile.badges.textContent = badges.join(' ');
}

/** Browsers may block audio autoplay until the user interacts with the page. */
function playAudio(audio) {
  audio.play().catch(() => {
    document.addEventListener('click', () => audio.play().catch(() => {}), { once: true });
  });
}

// ---- chat -----------------------------------------------------------------------

function sendChat() {
  const text = ui.chatInput.value.trim();
  if (!text || !client) return;
  try {
    client.sendChat(text);
    addChatLine('you', text, true);
    ui.chatInput.value = '';
  } catch (err) {
    setStatus(`Chat not sent: ${err.message}`, true);
  }
}

function addChatLine(from, text, self = false) {
  const li = document.createElement('li');
  if (from === null) {
    li.className = 'system';
    li.textContent = text;
  } else {
    if (self) li.className = 'self';
    const who = document.createElement('span');
    who.className = 'from';
    who.textContent = from;
    li.append(who, document.createTextNode(text));
  }
  ui.chatLog.append(li);
  ui.chatLog.scrollTop = ui.chatLog.scrollHeight;
}

// ---- stats ------------------------------------------------------------------------

/** Reads the inbound video stats of one receiver into a flat object. */
async function readVideoStats(receiver) {
  const report = await receiver.getStats();
  let inbound = null;
  let rtt = null;
  for (const s of report.values()) {
    if (s.type === 'inbound-rtp' && s.kind === 'video') inbound = s;
  }
  // RTT lives on the selected candidate pair of the transport.
  for (const s of report.values()) {
    if (s.type === 'transport' && s.selectedCandidatePairId) {
      rtt = report.get(s.selectedCandidatePairId)?.currentRoundTripTime ?? null;
    }
  }
  if (rtt === null) {
    for (const s of report.values()) {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') {
        rtt = s.currentRoundTripTime ?? null;
      }
    }
  }
  return {
    timestamp: inbound?.timestamp ?? performance.now(),
    bytesReceived: inbound?.bytesReceived ?? 0,
    packetsLost: inbound?.packetsLost ?? 0,
    framesDecoded: inbound?.framesDecoded ?? 0,
    frameWidth: inbound?.frameWidth ?? 0,
    frameHeight: inbound?.frameHeight ?? 0,
    framesPerSecond: inbound?.framesPerSecond ?? 0,
    freezeCount: inbound?.freezeCount ?? 0,
    totalFreezesDuration: inbound?.totalFreezesDuration ?? 0,
    codec: (inbound?.codecId && report.get(inbound.codecId)?.mimeType) || null,
    rtt,
  };
}

async function updateStatsLines() {
  await Promise.all(
    [...remoteTiles.values()].map(async (tile) => {
      if (!tile.videoReceiver) return;
      const now = await readVideoStats(tile.videoReceiver);
      const prev = tile.last;
      tile.last = now;
      let kbps = null; // bytes per millisecond * 8 = kbit/s
      if (prev && now.timestamp > prev.timestamp) {
        kbps = ((now.bytesReceived - prev.bytesReceived) * 8) / (now.timestamp - prev.timestamp);
      }
      const parts = [
        now.codec ? now.codec.replace('video/', '') : '—',
        now.frameWidth ? `${now.frameWidth}x${now.frameHeight}` : 'no frames',
        kbps === null ? '— kbit/s' : `${Math.max(0, Math.round(kbps))} kbit/s`,
        `lost ${now.packetsLost}`,
        now.rtt === null ? 'rtt —' : `rtt ${Math.round(now.rtt * 1000)} ms`,
      ];
      tile.statsLine.textContent = parts.join(' · ');
    }),
  );
}

/** For tests: one entry per remote tile, read fresh from getStats(). */
async function collectTileStats() {
  return Promise.all(
    [...remoteTiles.values()].map(async (tile) => {
      const s = tile.videoReceiver ? await readVideoStats(tile.videoReceiver) : null;
      return {
        peerId: tile.participant.peerId,
        name: tile.participant.name,
        framesDecoded: s?.framesDecoded ?? 0,
        frameWidth: s?.frameWidth ?? 0,
        frameHeight: s?.frameHeight ?? 0,
        freezeCount: s?.freezeCount ?? 0,
        totalFreezesDuration: s?.totalFreezesDuration ?? 0,
        codec: s?.codec ?? null,
        tileWidth: tile.video.clientWidth,
        tileHeight: tile.video.clientHeight,
        pinned: tile.participant.peerId === pinnedPeerId,
        speaking: tile.el.classList.contains('speaking'),
      };
    }),
  );
}

/** For tests: the camera's outbound encodings (one per simulcast rid). */
async function collectOutboundStats() {
  const sender = client?.pc?.getSenders().find((s) => s.track?.kind === 'video');
  if (!sender) return [];
  const active = new Map((sender.getParameters().encodings ?? []).map((e) => [e.rid ?? null, e.active]));
  const report = await sender.getStats();
  return [...report.values()]
    .filter((s) => s.type === 'outbound-rtp' && s.kind === 'video')
    .map((s) => ({
      rid: s.rid ?? null,
      active: active.get(s.rid ?? null) ?? true,
      frameWidth: s.frameWidth ?? 0,
      frameHeight: s.frameHeight ?? 0,
      framesEncoded: s.framesEncoded ?? 0,
      bytesSent: s.bytesSent ?? 0,
    }))
    .sort((a, b) => a.frameWidth - b.frameWidth);
}
