// meridian.js — a small browser client for the Meridian SFU.
//
// Speaks the WebSocket signaling protocol described in docs/PROTOCOL.md:
// join a room, publish camera + microphone, receive everyone else's tracks,
// chat over the "meridian" data channel.
//
//   import { MeridianClient } from './meridian.js';
//   const client = new MeridianClient({ preferCodec: 'VP8' });
//   client.on('trackadded', ({ track, peerId }) => { ... });
//   await client.connect('/ws', { room: 'demo', name: 'alice' });
//
// Events (subscribe with client.on(type, fn)); each handler gets one object:
//   joined             { room, peerId, identity, participants }
//   participantjoined  { participant }
//   participantleft    { peerId, participant }
//   trackpublished     { peerId, track }             (track info, not media)
//   trackunpublished   { peerId, trackId }
//   trackadded         { peerId, trackId, mid, kind, track, receiver, participant }
//   trackremoved       { peerId, trackId, mid, kind, track, receiver }
//   muted              { peerId, trackId, kind, muted }
//   trackpaused        { trackId, paused, reason }    (server stopped forwarding for lack of bandwidth)
//   layers             { mid, layers: [{ rid, active }] } (simulcast encodings the server asked for; applied)
//   speakers           { speakers: [{ peerId, level }], dominant }  (loudest first, level 0–100)
//   chatready          {}                            (data channel open)
//   chat               { from, name, data }
//   connectionstatechange { state }
//   error              { code, message }
//   closed             { reason }
//
// A participant object is { peerId, identity, name, tracks: Map<trackId, info> }
// where info is { trackId, kind, muted, label }.

const DATA_CHANNEL_LABEL = 'meridian';

export class MeridianClient {
  /**
   * @param {object} [options]
   * @param {'H264'|'VP8'} [options.preferCodec] the only video codec to offer (if the browser has it)
   * @param {MediaStreamConstraints} [options.mediaConstraints] for getUserMedia
   * @param {RTCIceServer[]} [options.iceServers]
   * @param {string} [options.udpVia] send media to this 'ip:port' instead of the
   *   server's ICE candidates (a UDP proxy such as `meridian netsim`, for testing)
   * @param {boolean|string} [options.videoFec] false: refuse all video FEC from the server
   *   (RED/ULPFEC and FlexFEC); 'ulpfec' or 'flexfec': accept only that form
   * @param {boolean|object[]} [options.simulcast] publish the camera as simulcast:
   *   true for SIMULCAST_ENCODINGS (q/h/f), an array of RTCRtpEncodingParameters
   *   with `rid`s for others, false for one encoding
   */
  constructor(options = {}) {
    this.options = {
      preferCodec: null,
      // 720p: large enough for three simulcast layers (browsers send fewer
      // for small captures, e.g. Chrome two at 640x360).
      mediaConstraints: { audio: true, video: { width: 1280, height: 720, frameRate: 24 } },
      iceServers: [],
      udpVia: null,
      videoFec: true,
      simulcast: true,
      ...options,
    };
    this.ws = null;
    /** @type {RTCPeerConnection|null} exposed for getStats() */
    this.pc = null;
    this.dataChannel = null;
    this.localStream = null;
    this.room = null;
    this.peerId = null;
    this.identity = null;
    /** @type {Map<string, object>} remote participants by peer_id */
    this.participants = new Map();

    this._listeners = new Map();
    this._audioTransceiver = null;
    this._videoTransceiver = null;
    this._offerSeq = 0;
    this._pendingOfferSeq = null; // seq of our own offer awaiting an answer
    this._signalingQueue = Promise.resolve();
    this._midMap = new Map(); // mid -> { trackId, peerId } from track_map
    this._announced = new Map(); // mid -> { trackId, peerId, kind, track } reported as added
    this._closed = false;
    this._cameraMuted = false;
    this._micMuted = false;
    this._trackSettings = new Map(); // trackId -> JSON of the last track_settings sent
    this._layersQueue = Promise.resolve(); // setParameters calls, one at a time
  }

  // ---- events -------------------------------------------------------------

  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    this._listeners.get(type)?.delete(fn);
  }

  _emit(type, detail) {
    for (const fn of this._listeners.get(type) ?? []) {
      try {
        fn(detail);
      } catch (err) {
        console.error(`meridian: "${type}" handler failed`, err);
      }
    }
  }

  // ---- public API -----------------------------------------------------------

  /**
   * Opens the WebSocket, joins the room, publishes camera + mic and sends the
   * initial offer. Resolves once `joined` has arrived and the offer is sent.
   *
   * @param {string} url  ws(s):// URL or a path like "/ws" (resolved against the page)
   * @param {object} params
   * @param {string} params.room
   * @param {string} [params.name]  display name
   * @param {string} [params.token] JWT; not needed in dev mode
   * @param {boolean} [params.autoSubscribe=true]
   * @param {MediaStream|null} [params.stream] publish this instead of calling
   *        getUserMedia; pass null to join without publishing
   */
  async connect(url, { room, name, token, autoSubscribe = true, stream } = {}) {
    if (this.ws) throw new Error('already connected');
    if (!room) throw new Error('room is required');

    if (stream === undefined) {
      this.localStream = await navigator.mediaDevices.getUserMedia(this.options.mediaConstraints);
    } else {
      this.localStream = stream;
    }

    const ws = new WebSocket(websocketUrl(url, token));
    this.ws = ws;
    const joined = new Promise((resolve, reject) => {
      this._resolveJoined = resolve;
      this._rejectJoined = reject;
    });

    ws.addEventListener('open', () => {
      this._send({ type: 'join', room, name, auto_subscribe: autoSubscribe });
    });
    ws.addEventListener('message', (event) => this._onMessage(event.data));
    ws.addEventListener('error', () => {
      this._rejectJoined?.(new Error('WebSocket error'));
    });
    ws.addEventListener('close', (event) => {
      this._rejectJoined?.(new Error(`WebSocket closed (${event.code}) before joining`));
      this._shutdown(event.reason || 'connection closed');
    });

    await joined;
    await this._signalingQueue; // the initial offer is queued right after `joined`
  }

  /** Mutes/unmutes the camera: stops sending video and tells the server. */
  async setCameraMuted(muted) {
    this._cameraMuted = Boolean(muted);
    const track = this.localStream?.getVideoTracks()[0];
    if (track) track.enabled = !muted;
    const transceiver = this._videoTransceiver;
    if (!transceiver) return;
    // Disabled tracks still send black frames; detach the track instead so
    // nothing is sent at all while muted.
    await transceiver.sender.replaceTrack(muted ? null : track ?? null);
    this._sendMute(transceiver, muted);
  }

  /** Mutes/unmutes the microphone (silence is cheap) and tells the server. */
  async setMicMuted(muted) {
    this._micMuted = Boolean(muted);
    const track = this.localStream?.getAudioTracks()[0];
    if (track) track.enabled = !muted;
    if (this._audioTransceiver) this._sendMute(this._audioTransceiver, muted);
  }

  get cameraMuted() {
    return this._cameraMuted;
  }

  get micMuted() {
    return this._micMuted;
  }

  /** Sends a text message to everyone else in the room over the data channel. */
  sendChat(text) {
    if (this.dataChannel?.readyState !== 'open') throw new Error('data channel is not open');
    this.dataChannel.send(String(text));
  }

  /** Leaves the room and releases the camera and microphone. */
  leave() {
    if (this.ws?.readyState === WebSocket.OPEN) this._send({ type: 'leave' });
    this._shutdown('left');
  }

  /**
   * Tells the server how a received video track is shown, so that it forwards
   * no simulcast layer larger than needed: `{ width, height }` of its tile in
   * device pixels, `{ disabled: true }` when hidden, `{}` to lift the limits.
   * Repeating the same settings sends nothing.
   */
  setTrackSettings(trackId, { width, height, disabled } = {}) {
    const message = { type: 'track_settings', track_id: trackId };
    if (disabled) {
      message.disabled = true;
    } else if (width > 0 && height > 0) {
      message.width = Math.round(width);
      message.height = Math.round(height);
    }
    const key = JSON.stringify(message);
    if (this._trackSettings.get(trackId) === key) return;
    this._trackSettings.set(trackId, key);
    this._send(message);
  }

  /** The receiving transceiver state for a remote track, if it has media. */
  remoteTrack(trackId) {
    for (const [mid, info] of this._announced) {
      if (info.trackId === trackId) return { mid, ...info };
    }
    return null;
  }

  /** Receivers currently carrying remote media: [{ mid, peerId, trackId, kind, track, receiver }]. */
  remoteTracks() {
    return [...this._announced].map(([mid, info]) => ({ mid, ...info }));
  }

  // ---- signaling ------------------------------------------------------------

  _send(message) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  /** Runs signaling steps one after another so SDP operations never interleave. */
  _enqueue(step) {
    this._signalingQueue = this._signalingQueue.then(step).catch((err) => {
      console.error('meridian: signaling step failed', err);
      this._emit('error', { code: 'client', message: String(err?.message ?? err) });
    });
    return this._signalingQueue;
  }

  _onMessage(raw) {
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      console.warn('meridian: ignoring non-JSON message', raw);
      return;
    }
    switch (msg.type) {
      case 'joined':
        this._onJoined(msg);
        break;
      case 'offer':
        this._enqueue(() => this._onRemoteOffer(msg));
        break;
      case 'answer':
        this._enqueue(() => this._onRemoteAnswer(msg));
        break;
      case 'track_map':
        // Queued so it is applied in order with the offer it accompanies.
        this._enqueue(() => this._onTrackMap(msg.tracks ?? []));
        break;
      case 'participant_joined':
        this._addParticipant(msg.participant);
        break;
      case 'participant_left':
        this._onParticipantLeft(msg.peer_id);
        break;
      case 'track_published':
        this._onTrackPublished(msg.peer_id, msg.track);
        break;
      case 'track_unpublished':
        this._onTrackUnpublished(msg.peer_id, msg.track_id);
        break;
      case 'track_muted':
        this._onTrackMuted(msg.peer_id, msg.track_id, msg.muted);
        break;
      case 'track_paused':
        this._emit('trackpaused', {
          trackId: msg.track_id,
          paused: Boolean(msg.paused),
          reason: msg.reason ?? null,
        });
        break;
      case 'layers':
        this._applyLayers(String(msg.mid), msg.layers ?? []);
        break;
      case 'speakers':
        this._emit('speakers', {
          speakers: (msg.speakers ?? []).map((s) => ({ peerId: s.peer_id, level: s.level ?? 0 })),
          dominant: msg.dominant ?? null,
        });
        break;
      case 'pong':
        break;
      case 'server_shutdown':
        this._emit('error', { code: 'server_shutdown', message: msg.reason ?? 'server is stopping' });
        break;
      case 'error':
        this._emit('error', { code: msg.code, message: msg.message });
        if (!this.peerId) this._rejectJoined?.(new Error(`${msg.code}: ${msg.message}`));
        break;
      default:
        console.debug('meridian: unhandled message', msg);
    }
  }

  _onJoined(msg) {
    this.room = msg.room;
    this.peerId = msg.peer_id;
    this.identity = msg.identity;
    for (const p of msg.participants ?? []) this._addParticipant(p, { silent: true });

    this._createPeerConnection();
    // Mark our offer outstanding right away, so that a server offer racing
    // with it is ignored (the server is polite and re-offers after answering).
    this._pendingOfferSeq = ++this._offerSeq;
    this._enqueue(() => this._sendInitialOffer(this._pendingOfferSeq));

    this._emit('joined', {
      room: this.room,
      peerId: this.peerId,
      identity: this.identity,
      participants: [...this.participants.values()],
    });
    this._resolveJoined?.();
    this._resolveJoined = this._rejectJoined = null;
  }

  _createPeerConnection() {
    const pc = new RTCPeerConnection({
      iceServers: this.options.iceServers,
      bundlePolicy: 'max-bundle',
      rtcpMuxPolicy: 'require',
    });
    this.pc = pc;

    const audio = this.localStream?.getAudioTracks()[0];
    const video = this.localStream?.getVideoTracks()[0];
    const streams = this.localStream ? [this.localStream] : [];
    if (audio) {
      this._audioTransceiver = pc.addTransceiver(audio, { direction: 'sendonly', streams });
    }
    if (video) {
      const init = { direction: 'sendonly', streams };
      const encodings = simulcastEncodings(this.options.simulcast);
      if (encodings) init.sendEncodings = encodings;
      this._videoTransceiver = pc.addTransceiver(video, init);
      if (this.options.preferCodec) {
        applyCodecPreference(this._videoTransceiver, this.options.preferCodec);
      }
    }

    // The server relays chat on this same channel.
    this._attachDataChannel(pc.createDataChannel(DATA_CHANNEL_LABEL));

    pc.addEventListener('icecandidate', ({ candidate }) => {
      if (candidate) {
        this._send({ type: 'candidate', candidate: candidate.candidate, sdp_mid: candidate.sdpMid });
      } else {
        this._send({ type: 'candidate', candidate: '', sdp_mid: null });
      }
    });
    pc.addEventListener('track', (event) => {
      const mid = event.transceiver?.mid;
      if (mid != null) this._maybeAnnounce(mid);
    });
    pc.addEventListener('connectionstatechange', () => {
      this._emit('connectionstatechange', { state: pc.connectionState });
    });
  }

  _attachDataChannel(channel) {
    this.dataChannel = channel;
    channel.addEventListener('open', () => this._emit('chatready', {}));
    channel.addEventListener('message', (event) => {
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        msg = { from: null, name: null, data: event.data };
      }
      this._emit('chat', { from: msg.from ?? null, name: msg.name ?? null, data: msg.data });
    });
  }

  async _sendInitialOffer(seq) {
    const pc = this.pc;
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    this._send({ type: 'offer', sdp: pc.localDescription.sdp, seq });
    // Label what we publish so others can tell camera from screen share.
    if (this._audioTransceiver?.mid != null) {
      this._send({ type: 'track_info', mid: this._audioTransceiver.mid, label: 'mic' });
    }
    if (this._videoTransceiver?.mid != null) {
      this._send({ type: 'track_info', mid: this._videoTransceiver.mid, label: 'camera' });
    }
  }

  async _onRemoteAnswer(msg) {
    const pc = this.pc;
    if (!pc || pc.signalingState !== 'have-local-offer') {
      console.warn('meridian: unexpected answer in state', pc?.signalingState);
      return;
    }
    if (msg.seq != null && this._pendingOfferSeq != null && msg.seq !== this._pendingOfferSeq) {
      console.warn(`meridian: answer seq ${msg.seq} does not match offer ${this._pendingOfferSeq}`);
    }
    await pc.setRemoteDescription({ type: 'answer', sdp: this._mungeRemote(msg.sdp) });
    this._pendingOfferSeq = null;
    this._reconcileTracks();
  }

  async _onRemoteOffer(msg) {
    const pc = this.pc;
    if (!pc) return;
    // Glare: the server is polite and will offer again after answering ours.
    if (this._pendingOfferSeq != null || pc.signalingState !== 'stable') {
      console.debug(`meridian: ignoring server offer ${msg.seq} while our offer is outstanding`);
      return;
    }
    await pc.setRemoteDescription({ type: 'offer', sdp: this._mungeRemote(msg.sdp) });
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    this._send({ type: 'answer', sdp: pc.localDescription.sdp, seq: msg.seq });
    this._reconcileTracks();
  }

  /** Applies the udpVia and videoFec options to an SDP from the server. */
  _mungeRemote(sdp) {
    let lines = sdp.split('\r\n');
    if (this.options.udpVia) {
      const [ip, port] = this.options.udpVia.split(':');
      lines = lines.map((l) => {
        if (!l.startsWith('a=candidate:')) return l;
        const f = l.split(' ');
        if (f.length > 5) { f[4] = ip; f[5] = port; }
        return f.join(' ');
      });
    }
    const refused = { false: ['red', 'ulpfec', 'flexfec-03'], ulpfec: ['flexfec-03'], flexfec: ['red', 'ulpfec'] }[
      String(this.options.videoFec)
    ];
    if (refused) {
      // Payload types of the refused video FEC formats, and the RTX of red.
      const drop = new Set();
      for (const l of lines) {
        const m = l.match(/^a=rtpmap:(\d+) ([\w-]+)\/90000/i);
        if (m && refused.includes(m[2].toLowerCase())) drop.add(m[1]);
      }
      for (const l of lines) {
        const m = l.match(/^a=fmtp:(\d+) apt=(\d+)/);
        if (m && drop.has(m[2])) drop.add(m[1]);
      }
      lines = lines
        .filter((l) => {
          const m = l.match(/^a=(rtpmap|fmtp|rtcp-fb):(\d+)/);
          return !(m && drop.has(m[2]));
        })
        .map((l) => (l.startsWith('m=video') ? l.split(' ').filter((f) => !drop.has(f)).join(' ') : l));
    }
    return lines.join('\r\n');
  }

  _onTrackMap(entries) {
    for (const { mid, track_id: trackId, peer_id: peerId } of entries) {
      const previous = this._midMap.get(String(mid));
      if (previous && (previous.trackId !== trackId || previous.peerId !== peerId)) {
        this._retract(String(mid));
      }
      this._midMap.set(String(mid), { trackId, peerId: peerId ?? null });
    }
    this._reconcileTracks();
  }

  /** Announces newly usable receivers and retracts ones the server disabled. */
  _reconcileTracks() {
    if (!this.pc) return;
    for (const transceiver of this.pc.getTransceivers()) {
      const mid = transceiver.mid;
      if (mid == null || !this._midMap.has(mid)) continue;
      const dir = transceiver.currentDirection;
      if (transceiver.stopped || dir === 'inactive' || dir === 'stopped') {
        this._retract(mid);
      } else {
        this._maybeAnnounce(mid);
      }
    }
  }

  /** Emits `trackadded` once both the m-line's media and its track_map entry are known. */
  _maybeAnnounce(mid) {
    const mapping = this._midMap.get(mid);
    const transceiver = this._transceiverByMid(mid);
    // A null peer_id is a track whose owner is reconnecting: wait for an owner.
    if (!mapping?.peerId || !transceiver) return;
    if (transceiver === this._audioTransceiver || transceiver === this._videoTransceiver) return;
    const dir = transceiver.currentDirection;
    if (transceiver.stopped || dir === 'inactive' || dir === 'stopped' || dir === 'sendonly') return;
    const announced = this._announced.get(mid);
    if (announced && announced.trackId === mapping.trackId) return;
    if (announced) this._retract(mid);

    const { receiver } = transceiver;
    const info = {
      trackId: mapping.trackId,
      peerId: mapping.peerId,
      kind: receiver.track.kind,
      track: receiver.track,
      receiver,
    };
    this._announced.set(mid, info);
    this._emit('trackadded', { ...info, mid, participant: this.participants.get(mapping.peerId) ?? null });
  }

  _retract(mid) {
    const info = this._announced.get(mid);
    if (!info) return;
    this._announced.delete(mid);
    this._emit('trackremoved', { ...info, mid });
  }

  _transceiverByMid(mid) {
    return this.pc?.getTransceivers().find((t) => t.mid === mid) ?? null;
  }

  /**
   * Turns simulcast encodings on and off as the server asks (dynacast): an
   * encoding no subscriber takes is not worth encoding or sending.
   */
  _applyLayers(mid, layers) {
    const wanted = new Map(layers.map((l) => [String(l.rid), Boolean(l.active)]));
    this._layersQueue = this._layersQueue
      .then(async () => {
        const sender = this.pc?.getTransceivers().find((t) => t.mid === mid)?.sender;
        if (!sender) return;
        const params = sender.getParameters();
        let changed = false;
        for (const encoding of params.encodings ?? []) {
          const active = encoding.rid != null ? wanted.get(encoding.rid) : undefined;
          if (active !== undefined && encoding.active !== active) {
            encoding.active = active;
            changed = true;
          }
        }
        if (changed) await sender.setParameters(params);
        this._emit('layers', { mid, layers: (params.encodings ?? []).map((e) => ({ rid: e.rid, active: e.active })) });
      })
      .catch((err) => console.warn('meridian: could not apply layers', err));
  }

  _sendMute(transceiver, muted) {
    if (transceiver.mid != null) this._send({ type: 'mute', mid: transceiver.mid, muted: Boolean(muted) });
  }

  // ---- room state -----------------------------------------------------------

  _addParticipant(p, { silent = false } = {}) {
    if (!p?.peer_id || p.peer_id === this.peerId) return;
    const participant = {
      peerId: p.peer_id,
      identity: p.identity ?? p.name ?? p.peer_id,
      name: p.name ?? p.identity ?? p.peer_id,
      tracks: new Map(),
    };
    for (const t of p.tracks ?? []) participant.tracks.set(t.track_id, trackInfo(t));
    this.participants.set(participant.peerId, participant);
    if (!silent) this._emit('participantjoined', { participant });
  }

  _onParticipantLeft(peerId) {
    for (const [mid, info] of [...this._announced]) {
      if (info.peerId === peerId) this._retract(mid);
    }
    for (const [mid, mapping] of [...this._midMap]) {
      if (mapping.peerId === peerId) this._midMap.delete(mid);
    }
    const participant = this.participants.get(peerId) ?? null;
    this.participants.delete(peerId);
    this._emit('participantleft', { peerId, participant });
  }

  _onTrackPublished(peerId, track) {
    const participant = this.participants.get(peerId);
    if (!participant || !track) return;
    const info = trackInfo(track);
    participant.tracks.set(info.trackId, info);
    this._emit('trackpublished', { peerId, track: info });
  }

  _onTrackUnpublished(peerId, trackId) {
    this.participants.get(peerId)?.tracks.delete(trackId);
    for (const [mid, info] of [...this._announced]) {
      if (info.trackId === trackId) this._retract(mid);
    }
    for (const [mid, mapping] of [...this._midMap]) {
      if (mapping.trackId === trackId) this._midMap.delete(mid);
    }
    this._emit('trackunpublished', { peerId, trackId });
  }

  _onTrackMuted(peerId, trackId, muted) {
    const info = this.participants.get(peerId)?.tracks.get(trackId);
    if (info) info.muted = Boolean(muted);
    this._emit('muted', { peerId, trackId, kind: info?.kind ?? null, muted: Boolean(muted) });
  }

  _shutdown(reason) {
    if (this._closed) return;
    this._closed = true;
    for (const mid of [...this._announced.keys()]) this._retract(mid);
    try {
      this.dataChannel?.close();
      this.pc?.close();
    } catch {
      // already closed
    }
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, reason);
    for (const track of this.localStream?.getTracks() ?? []) track.stop();
    this._emit('closed', { reason });
  }
}

// ---- helpers ------------------------------------------------------------------

/**
 * The camera's simulcast encodings, lowest first: quarter, half and full
 * resolution. The bitrate caps match what the server assumes for a layer it
 * has not measured yet.
 */
export const SIMULCAST_ENCODINGS = Object.freeze([
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
]);

function simulcastEncodings(option) {
  if (option === true) return SIMULCAST_ENCODINGS.map((e) => ({ ...e }));
  if (Array.isArray(option) && option.length > 0) return option.map((e) => ({ ...e }));
  return null;
}

function trackInfo(t) {
  return { trackId: t.track_id, kind: t.kind, muted: Boolean(t.muted), label: t.label ?? null };
}

/** Resolves "/ws" or "ws://host/ws" to an absolute WebSocket URL, adding ?token=. */
function websocketUrl(url, token) {
  const resolved = new URL(url, globalThis.location?.href);
  if (resolved.protocol === 'http:') resolved.protocol = 'ws:';
  if (resolved.protocol === 'https:') resolved.protocol = 'wss:';
  if (token) resolved.searchParams.set('token', token);
  return resolved.toString();
}

/**
 * Restricts a video transceiver to one codec (e.g. "H264") plus the repair
 * formats (rtx, red, ulpfec, flexfec). Merely listing it first is not enough:
 * the sender follows the order of the *answer*, and the server answers in its
 * own preference order. If the browser lacks the codec, nothing is changed.
 */
function applyCodecPreference(transceiver, codecName) {
  if (typeof transceiver.setCodecPreferences !== 'function') return;
  const capabilities = RTCRtpReceiver.getCapabilities('video');
  if (!capabilities) return;
  const wanted = `video/${codecName}`.toLowerCase();
  const preferred = capabilities.codecs.filter((c) => c.mimeType.toLowerCase() === wanted);
  if (preferred.length === 0) {
    console.warn(`meridian: this browser cannot use ${codecName}; keeping the default codecs`);
    return;
  }
  // For H.264, packetization-mode=1 is what SFUs expect; list those first.
  preferred.sort((a, b) => packetizationMode(b) - packetizationMode(a));
  const repair = capabilities.codecs.filter((c) => REPAIR_CODECS.has(c.mimeType.toLowerCase()));
  transceiver.setCodecPreferences([...preferred, ...repair]);
}

const REPAIR_CODECS = new Set(['video/rtx', 'video/red', 'video/ulpfec', 'video/flexfec-03']);

function packetizationMode(codec) {
  return /packetization-mode=1/.test(codec.sdpFmtpLine ?? '') ? 1 : 0;
}
