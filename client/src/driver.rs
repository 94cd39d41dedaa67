//! The task that drives one client's str0m `Rtc`: UDP socket, timers,
//! WebSocket signaling (when used) and outgoing RTP commands.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use meridian_sfu::core::codec::rtc_config;
use meridian_sfu::core::dtls;
use meridian_sfu::core::fec::{receiver_for, video_fec_pts, FecReceiver};
use meridian_sfu::core::publish::{Media, Protection, SendStream, UplinkLoss};
use meridian_sfu::io::MediaSocket;
use meridian_signaling::protocol::{ClientMsg, ServerMsg};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::debug;

use crate::{ClientConfig, ClientError, ClientEvent, OutRtp, ReceivedRtp};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long to wait for the server's answer / joined message.
const SIGNALING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signaling {
    Whip,
    Whep,
}

#[derive(Debug)]
pub(crate) enum DriverCmd {
    Rtp(OutRtp),
    Chat(String),
    Signal(ClientMsg),
    Close,
}

pub(crate) struct Driver {
    rtc: Rtc,
    /// The client's name, for its debug log.
    name: String,
    /// DTLS is done (str0m's `Event::Connected`).
    connected: bool,
    /// quinn-udp socket: GRO takes a GSO-sent frame in one read.
    socket: MediaSocket,
    local: SocketAddr,
    ws: Option<Ws>,
    outgoing: HashMap<MediaKind, SendStream>,
    /// How published media is protected, and the uplink loss it follows.
    protection: Protection,
    uplink: UplinkLoss,
    /// mid → server track id, from `track_map`.
    track_ids: HashMap<Mid, Arc<str>>,
    /// Highest sequence number received per SSRC (to tell which RED copies
    /// fill a gap).
    max_seq: HashMap<u32, u64>,
    /// ULPFEC receivers per video m-line that negotiated RED + ULPFEC.
    fec_rx: HashMap<Mid, FecReceiver>,
    /// Video RED payload type per receive m-line (`None`: no FEC there).
    video_red_pts: HashMap<Mid, Option<Pt>>,
    /// Video sequence numbers delivered on m-lines with FEC, to deliver each once.
    fec_seen: HashMap<Mid, BTreeSet<u64>>,
    udp_via: Option<SocketAddr>,
    channel: Option<ChannelId>,
    /// Signals received during connect, delivered first by `run`.
    early: Vec<ServerMsg>,
    /// What str0m put out while a batch of datagrams was fed to it, in order:
    /// in RTP mode it holds one received packet until polled, so each
    /// datagram's output is taken before the next goes in. Each output is
    /// kept with the arrival of the datagram behind it.
    backlog: Vec<(Output, Instant)>,
}

/// Datagrams (or GRO groups) one client reads per wake-up.
const CLIENT_RECV_SLOTS: usize = 4;

/// When a datagram read at `now` (`wall` on the system clock) reached the
/// socket: the kernel's stamp where there is one, else `now`. Many clients
/// share one thread in `meridian load`, so a datagram may wait there for
/// milliseconds behind the others' work before its client reads it; latency
/// and jitter are measured to the arrival, which that wait does not move.
fn arrival(now: Instant, wall: SystemTime, stamp: Option<Duration>) -> Instant {
    let Some(age) = stamp.and_then(|s| wall.duration_since(UNIX_EPOCH + s).ok()) else {
        return now;
    };
    // A stamp from before a step of the system clock says nothing.
    if age > MAX_STAMP_AGE {
        return now;
    }
    now.checked_sub(age).unwrap_or(now)
}

/// Older kernel stamps than this are taken as clock steps, not waits.
const MAX_STAMP_AGE: Duration = Duration::from_secs(2);

fn rtc_error(e: impl std::fmt::Display) -> ClientError {
    ClientError::Rtc(e.to_string())
}

impl Driver {
    async fn new(cfg: &ClientConfig) -> Result<Driver, ClientError> {
        let socket = MediaSocket::bind(SocketAddr::new(cfg.bind_ip, 0), CLIENT_RECV_SLOTS)?;
        let local = socket.local_addr()?;
        // Header bytes as received: ULPFEC recovery needs the packets as sent.
        // One certificate and DTLS configuration for all the clients of this
        // process: each of `meridian load`'s hundreds of clients made its own
        // (≈ 3.5 ms of the tester's CPU per join, in the measured join time).
        let mut config = rtc_config()
            .keep_rtp_header_bytes(true)
            .set_crypto_provider(dtls::crypto_provider());
        if let Some(cert) = dtls::shared_certificate() {
            config = config.set_dtls_cert(cert);
        }
        if cfg.publish_audio || cfg.publish_video {
            // The uplink's loss, from the server's transport feedback, once
            // a second (`Event::PeerStats`), for the protection that follows
            // it.
            config = config.set_stats_interval(Some(Duration::from_secs(1)));
        }
        let mut rtc = config.build(Instant::now());
        let cand = Candidate::host(local, "udp").map_err(rtc_error)?;
        rtc.add_local_candidate(cand);
        Ok(Driver {
            rtc,
            socket,
            local,
            ws: None,
            outgoing: HashMap::new(),
            protection: cfg.protection,
            uplink: UplinkLoss::new(),
            track_ids: HashMap::new(),
            max_seq: HashMap::new(),
            fec_rx: HashMap::new(),
            video_red_pts: HashMap::new(),
            fec_seen: HashMap::new(),
            udp_via: cfg.udp_via,
            name: cfg.name.clone(),
            connected: false,
            channel: None,
            early: Vec::new(),
            backlog: Vec::new(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Adds our send (or, for WHEP, receive) m-lines and creates the offer.
    fn make_offer(
        &mut self,
        cfg: &ClientConfig,
        sig: Option<Signaling>,
    ) -> Result<(SdpOffer, SdpPendingOffer), ClientError> {
        let mut api = self.rtc.sdp_api();
        let mut adds = Vec::new();
        if sig == Some(Signaling::Whep) {
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
            api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        } else {
            if cfg.publish_audio {
                let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
                adds.push((MediaKind::Audio, mid, Codec::Opus));
            }
            if cfg.publish_video {
                let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
                adds.push((MediaKind::Video, mid, cfg.video_codec.codec()));
            }
        }
        if sig.is_none() {
            api.add_channel("meridian".into());
        }
        let Some((offer, pending)) = api.apply() else {
            return Err(ClientError::Protocol(
                "nothing to negotiate: publish audio or video".into(),
            ));
        };
        for (kind, mid, codec) in adds {
            self.outgoing
                .insert(kind, SendStream::new(kind, mid, None, codec, 1));
        }
        Ok((offer, pending))
    }

    /// WebSocket: join, offer, wait for the answer. Returns the driver and
    /// our peer id.
    pub async fn connect_ws(cfg: &ClientConfig) -> Result<(Driver, Option<String>), ClientError> {
        let mut d = Driver::new(cfg).await?;
        let base = cfg
            .server
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1);
        let url = match &cfg.token {
            Some(t) => format!("{base}/ws?token={t}"),
            None => format!("{base}/ws"),
        };
        let (mut ws, _) =
            // No Nagle: signaling messages are small and latency-bound.
            tokio_tungstenite::connect_async_with_config(&url, Some(ws_config()), true)
                .await
                .map_err(|e| ClientError::Unreachable {
                    url: url.clone(),
                    detail: e.to_string(),
                })?;
        send_json(
            &mut ws,
            &ClientMsg::Join {
                room: cfg.room.clone(),
                name: Some(cfg.name.clone()),
                auto_subscribe: Some(cfg.auto_subscribe),
            },
        )
        .await?;
        let joined = recv_json(&mut ws).await?;
        let peer_id = match &joined {
            ServerMsg::Joined { peer_id, .. } => peer_id.clone(),
            ServerMsg::Error { code, message } => {
                return Err(ClientError::Refused {
                    code: format!("{code:?}"),
                    message: message.clone(),
                })
            }
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected joined, got {other:?}"
                )))
            }
        };
        let (offer, pending) = d.make_offer(cfg, None)?;
        send_json(
            &mut ws,
            &ClientMsg::Offer {
                sdp: offer.to_sdp_string(),
                seq: Some(0),
            },
        )
        .await?;
        // The roster and events that arrive before our answer are handed to
        // the caller as the first events.
        let mut early = vec![joined];
        let answer = loop {
            match recv_json(&mut ws).await? {
                ServerMsg::Answer { sdp, .. } => break sdp,
                ServerMsg::Error { code, message } => {
                    return Err(ClientError::Refused {
                        code: format!("{code:?}"),
                        message,
                    })
                }
                other => early.push(other),
            }
        };
        let answer = d.via(&answer);
        let answer = SdpAnswer::from_sdp_string(&answer).map_err(rtc_error)?;
        d.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(rtc_error)?;
        debug!(name = %cfg.name, "answer applied");
        d.ws = Some(ws);
        for m in &early {
            d.early_signal(m);
        }
        d.early = early;
        Ok((d, Some(peer_id)))
    }

    /// The server's SDP with its ICE candidates pointed at `udp_via`.
    fn via(&self, sdp: &str) -> String {
        let Some(via) = self.udp_via else {
            return sdp.to_string();
        };
        sdp.lines()
            .map(|l| {
                if !l.starts_with("a=candidate:") {
                    return l.to_string();
                }
                // foundation component transport priority address port ...
                let mut f: Vec<String> = l.split(' ').map(str::to_string).collect();
                if f.len() > 5 {
                    f[4] = via.ip().to_string();
                    f[5] = via.port().to_string();
                }
                f.join(" ")
            })
            .collect::<Vec<_>>()
            .join("\r\n")
            + "\r\n"
    }

    fn early_signal(&mut self, m: &ServerMsg) {
        if let ServerMsg::TrackMap { tracks } = &m {
            for t in tracks {
                self.track_ids
                    .insert(Mid::from(t.mid.as_str()), Arc::from(t.track_id.as_str()));
            }
        }
    }

    /// WHIP/WHEP: one POST. Returns the driver and the resource location.
    pub async fn connect_http(
        cfg: &ClientConfig,
        url: &str,
        sig: Signaling,
    ) -> Result<(Driver, String), ClientError> {
        let mut d = Driver::new(cfg).await?;
        let (offer, pending) = d.make_offer(cfg, Some(sig))?;
        let mut req = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/sdp")
            .body(offer.to_sdp_string());
        if let Some(t) = &cfg.token {
            req = req.bearer_auth(t);
        }
        let resp = tokio::time::timeout(SIGNALING_TIMEOUT, req.send())
            .await
            .map_err(|_| ClientError::Timeout("the WHIP/WHEP answer"))?
            .map_err(|e| ClientError::Unreachable {
                url: url.to_string(),
                detail: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.text().await.unwrap_or_default();
        if status != 201 {
            return Err(ClientError::Http { status, body });
        }
        let location =
            location.ok_or_else(|| ClientError::Protocol("201 without Location".into()))?;
        let body = d.via(&body);
        let answer = SdpAnswer::from_sdp_string(&body).map_err(rtc_error)?;
        d.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(rtc_error)?;
        Ok((d, location))
    }

    pub async fn run(
        mut self,
        mut cmds: mpsc::Receiver<DriverCmd>,
        events: mpsc::Sender<ClientEvent>,
    ) {
        debug!(name = %self.name, "driver running");
        for m in std::mem::take(&mut self.early) {
            let _ = events.send(ClientEvent::Signal(m)).await;
        }
        let reason = loop {
            let timeout = match self.drain(&events).await {
                Ok(t) => t,
                Err(why) => break why,
            };
            let ws_next = async {
                match self.ws.as_mut() {
                    Some(ws) => ws.next().await,
                    None => std::future::pending().await,
                }
            };
            // str0m needs a Timeout tick to send what was written and to run
            // its timers; a received datagram already carries the time, so
            // ticking after each one only costs (it was most of the
            // per-packet cost of a receiving client).
            let mut tick = false;
            tokio::select! {
                r = self.socket.readable() => {
                    if r.is_ok() {
                        if let Err(why) = self.receive(&events).await {
                            break why;
                        }
                        // During the handshake a datagram moves ICE and DTLS on,
                        // and their next step waits for a tick.
                        tick = !self.connected;
                    }
                }
                msg = ws_next => match msg {
                    Some(Ok(Message::Text(t))) => {
                        match serde_json::from_str::<ServerMsg>(t.as_str()) {
                            Ok(m) => if let Err(why) = self.on_signal(m, &events).await { break why },
                            Err(e) => debug!(error = %e, "unparseable server message"),
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => {
                        self.ws = None;
                        break "signaling closed".to_string();
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        self.ws = None;
                        break format!("signaling failed: {e}");
                    }
                },
                cmd = cmds.recv() => match cmd {
                    Some(DriverCmd::Rtp(p)) => {
                        self.write_rtp(p);
                        tick = true;
                    }
                    Some(DriverCmd::Chat(text)) => {
                        self.chat(&text);
                        tick = true;
                    }
                    Some(DriverCmd::Signal(m)) => {
                        if let Some(ws) = self.ws.as_mut() {
                            if let Err(e) = send_json(ws, &m).await {
                                break e.to_string();
                            }
                        }
                    }
                    Some(DriverCmd::Close) | None => {
                        if let Some(ws) = self.ws.as_mut() {
                            let _ = send_json(ws, &ClientMsg::Leave).await;
                        }
                        self.rtc.disconnect();
                        break "closed".to_string();
                    }
                },
                _ = tokio::time::sleep_until(timeout.into()) => tick = true,
            }
            if tick {
                if let Err(e) = self.rtc.handle_input(Input::Timeout(Instant::now())) {
                    break format!("WebRTC stack failed: {e}");
                }
            }
        };
        let _ = events.send(ClientEvent::Closed(reason)).await;
    }

    /// Feeds what the socket has queued (a batch, GRO groups split) to
    /// str0m, then handles what came out.
    async fn receive(&mut self, events: &mpsc::Sender<ClientEvent>) -> Result<(), String> {
        let now = Instant::now();
        let wall = SystemTime::now();
        let local = self.local;
        let rtc = &mut self.rtc;
        let backlog = &mut self.backlog;
        let mut failed = None;
        let r = self.socket.try_recv_stamped(|source, d, stamp| {
            let arrived = arrival(now, wall, stamp);
            let Ok(contents) = d.try_into() else { return };
            let input = Input::Receive(
                now,
                Receive {
                    proto: Protocol::Udp,
                    source,
                    destination: local,
                    contents,
                },
            );
            if let Err(e) = rtc.handle_input(input) {
                debug!(error = %e, "client rejected a datagram");
            }
            while failed.is_none() {
                match rtc.poll_output() {
                    Ok(Output::Timeout(_)) => break,
                    Ok(o) => backlog.push((o, arrived)),
                    Err(e) => failed = Some(e.to_string()),
                }
            }
        });
        if let Err(e) = r {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                debug!(error = %e, "UDP receive failed");
            }
        }
        let mut backlog = std::mem::take(&mut self.backlog);
        for (o, arrived) in backlog.drain(..) {
            match o {
                Output::Transmit(t) => self.socket.send_to(&t.contents, t.destination).await,
                Output::Event(e) => self.on_event(e, Some(arrived), events).await,
                Output::Timeout(_) => {}
            }
        }
        self.backlog = backlog;
        failed.map_or(Ok(()), Err)
    }

    async fn drain(&mut self, events: &mpsc::Sender<ClientEvent>) -> Result<Instant, String> {
        loop {
            if !self.rtc.is_alive() {
                return Err("connection closed".into());
            }
            match self.rtc.poll_output().map_err(|e| e.to_string())? {
                Output::Transmit(t) => self.socket.send_to(&t.contents, t.destination).await,
                Output::Timeout(t) => {
                    // A frame that went out is followed by its FEC.
                    if !self.write_fec() {
                        return Ok(t);
                    }
                    self.rtc
                        .handle_input(Input::Timeout(Instant::now()))
                        .map_err(|e| e.to_string())?;
                }
                Output::Event(e) => self.on_event(e, None, events).await,
            }
        }
    }

    /// `arrived`: when the datagram behind `e` reached our socket, if `e`
    /// came of one.
    async fn on_event(
        &mut self,
        e: Event,
        arrived: Option<Instant>,
        events: &mpsc::Sender<ClientEvent>,
    ) {
        match e {
            Event::Connected => {
                debug!(name = %self.name, "connected");
                self.connected = true;
                let _ = events.send(ClientEvent::Connected).await;
            }
            Event::IceConnectionStateChange(state) => {
                debug!(name = %self.name, ?state, "ICE");
            }
            Event::RtpPacket(pkt) => {
                let ssrc = pkt.header.ssrc;
                let (mid, kind) = {
                    let mid = self.rtc.direct_api().stream_rx(&ssrc).map(|s| s.mid());
                    let kind = mid.and_then(|m| self.rtc.media(m)).map(|m| m.kind());
                    (mid, kind)
                };
                let track_id = mid.and_then(|m| self.track_ids.get(&m)).cloned();
                let seq = *pkt.seq_no;
                let r = ReceivedRtp {
                    mid,
                    kind,
                    track_id,
                    ssrc: *ssrc,
                    seq,
                    timestamp: pkt.header.timestamp,
                    payload_type: *pkt.header.payload_type,
                    marker: pkt.header.marker,
                    payload: pkt.payload.clone(),
                    received_at: arrived.unwrap_or(pkt.timestamp),
                };
                let pt = pkt.header.payload_type;
                if let Some(mid) = mid.filter(|m| self.video_red_pt(*m) == Some(pt)) {
                    self.on_video_red(mid, &pkt, r, events).await;
                    return;
                }
                // On an m-line with FEC, a retransmission or a late original
                // may repeat what FEC rebuilt.
                if let Some(mid) = mid.filter(|m| self.fec_rx.contains_key(m)) {
                    if !self.first_delivery(mid, seq) {
                        return;
                    }
                }
                let primary_pt = self
                    .rtc
                    .codec_config()
                    .params()
                    .iter()
                    .find(|p| p.red() == Some(pt))
                    .map(|p| *p.pt());
                let last = self.max_seq.get(&*ssrc).copied();
                if last.is_none_or(|l| seq > l) {
                    self.max_seq.insert(*ssrc, seq);
                }
                let Some(primary_pt) = primary_pt else {
                    let _ = events.send(ClientEvent::Rtp(r)).await;
                    return;
                };
                // RED (RFC 2198): the primary, preceded by the copies of
                // packets that never arrived (one sequence number apart).
                let Ok(red) = meridian_fec::red::parse(&pkt.payload) else {
                    debug!(seq, "RED payload that does not parse");
                    return;
                };
                let n = red.blocks().len() as u64;
                for (k, b) in red.blocks().iter().enumerate() {
                    let Some(s) = seq.checked_sub(n - 1 - k as u64) else {
                        continue;
                    };
                    let missing = b.is_primary || last.is_some_and(|l| s > l);
                    if !missing || b.pt != primary_pt {
                        continue;
                    }
                    let unit = ReceivedRtp {
                        seq: s,
                        timestamp: r.timestamp.wrapping_sub(u32::from(b.ts_offset)),
                        payload_type: primary_pt,
                        marker: b.is_primary && r.marker,
                        payload: b.data.into(),
                        ..r.clone()
                    };
                    let _ = events.send(ClientEvent::Rtp(unit)).await;
                }
            }
            Event::ChannelOpen(cid, _) => self.channel = Some(cid),
            Event::ChannelData(d) if !d.binary => {
                let text = String::from_utf8_lossy(&d.data).into_owned();
                let _ = events.send(ClientEvent::Chat(text)).await;
            }
            Event::PeerStats(s) => {
                self.uplink
                    .on_peer_stats(Instant::now(), s.egress_loss_fraction);
            }
            Event::MediaEgressStats(s) => {
                if let Some(rtt) = s.rtt {
                    self.uplink.on_rtt(rtt);
                }
            }
            _ => {}
        }
    }

    /// Video in RED: unwrapped and ULPFEC-decoded; what comes out (media and
    /// rebuilt packets, each sequence number once) goes to the application.
    async fn on_video_red(
        &mut self,
        mid: Mid,
        pkt: &RtpPacket,
        r: ReceivedRtp,
        events: &mpsc::Sender<ClientEvent>,
    ) {
        let Some(rx) = receiver_for(&mut self.fec_rx, &self.rtc, mid, r.ssrc) else {
            return;
        };
        let mut out = Vec::new();
        rx.on_red(
            pkt.header_bytes.as_deref(),
            r.seq,
            r.timestamp,
            r.marker,
            &pkt.payload,
            &mut out,
        );
        for u in out {
            // Each sequence number once: a packet may come as sent, rebuilt
            // by FEC, and by retransmission, in any order.
            if !self.first_delivery(mid, u.seq) {
                continue;
            }
            if u.recovered {
                // As libwebrtc's receiver: a packet FEC rebuilt is not NACKed
                // (and a retransmission of it is dropped by str0m).
                if let Some(rx) = self.rtc.direct_api().stream_rx(&pkt.header.ssrc) {
                    rx.mark_recovered(u.seq.into());
                }
            }
            let unit = ReceivedRtp {
                seq: u.seq,
                timestamp: u.ts,
                payload_type: u.pt,
                marker: u.marker,
                payload: u.payload,
                ..r.clone()
            };
            let _ = events.send(ClientEvent::Rtp(unit)).await;
        }
    }

    /// The video RED payload type of `mid`, if it negotiated RED + ULPFEC
    /// (looked up once per m-line, not per packet).
    fn video_red_pt(&mut self, mid: Mid) -> Option<Pt> {
        let rtc = &self.rtc;
        *self
            .video_red_pts
            .entry(mid)
            .or_insert_with(|| video_fec_pts(rtc, mid).map(|(red, _)| red))
    }

    /// On an m-line with FEC: true the first time `seq` is delivered.
    /// Remembers the last 2048 sequence numbers per m-line.
    fn first_delivery(&mut self, mid: Mid, seq: u64) -> bool {
        let seen = self.fec_seen.entry(mid).or_default();
        if !seen.insert(seq) {
            return false;
        }
        if seen.len() > 4096 {
            *seen = seen.split_off(&seq.saturating_sub(2048));
        }
        true
    }

    async fn on_signal(
        &mut self,
        m: ServerMsg,
        events: &mpsc::Sender<ClientEvent>,
    ) -> Result<(), String> {
        match &m {
            // The client offers only once, while connecting (before `run`),
            // so a server offer never meets an outstanding offer of ours.
            ServerMsg::Offer { sdp, seq } => {
                let offer = SdpOffer::from_sdp_string(&self.via(sdp)).map_err(|e| e.to_string())?;
                let answer = self
                    .rtc
                    .sdp_api()
                    .accept_offer(offer)
                    .map_err(|e| format!("server offer rejected: {e}"))?;
                if let Some(ws) = self.ws.as_mut() {
                    send_json(
                        ws,
                        &ClientMsg::Answer {
                            sdp: answer.to_sdp_string(),
                            seq: *seq,
                        },
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                }
                return Ok(());
            }
            ServerMsg::TrackMap { tracks } => {
                for t in tracks {
                    self.track_ids
                        .insert(Mid::from(t.mid.as_str()), Arc::from(t.track_id.as_str()));
                }
            }
            _ => {}
        }
        let _ = events.send(ClientEvent::Signal(m)).await;
        Ok(())
    }

    fn write_rtp(&mut self, p: OutRtp) {
        let Some(out) = self.outgoing.get_mut(&p.kind) else {
            return;
        };
        let media = Media {
            timestamp: p.timestamp,
            marker: p.marker,
            payload: p.payload.to_vec(),
            ext: ExtensionValues::default(),
            // str0m keeps what it can resend: video (RTX), and Opus (NACK
            // without RTX, see `codec::rtc_config`).
            nackable: true,
        };
        let plan = self.uplink.plan(self.protection);
        out.write(&mut self.rtc, Instant::now(), media, &plan);
    }

    /// Writes the video FEC due for what str0m sent since the last call.
    /// Returns true if there was any (str0m then needs a tick to send it).
    fn write_fec(&mut self) -> bool {
        let now = Instant::now();
        let mut wrote = false;
        for out in self.outgoing.values_mut() {
            wrote |= out.write_fec(&mut self.rtc, now) > 0;
        }
        wrote
    }

    fn chat(&mut self, text: &str) {
        let Some(cid) = self.channel else { return };
        if let Some(mut ch) = self.rtc.channel(cid) {
            let _ = ch.write(false, text.as_bytes());
        }
    }
}

/// tungstenite zeroes its whole read buffer (128 KiB by default) each time
/// the stream is polled, and the run loop polls it once per pass — per
/// received packet. Signaling messages are small; a larger one is read in
/// several chunks.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(WS_READ_BUFFER)
}

/// See `ws_config`.
const WS_READ_BUFFER: usize = 4 * 1024;

async fn send_json(ws: &mut Ws, m: &ClientMsg) -> Result<(), ClientError> {
    let text = serde_json::to_string(m).map_err(|e| ClientError::Protocol(e.to_string()))?;
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|e| ClientError::Protocol(format!("WebSocket send: {e}")))
}

async fn recv_json(ws: &mut Ws) -> Result<ServerMsg, ClientError> {
    loop {
        let msg = tokio::time::timeout(SIGNALING_TIMEOUT, ws.next())
            .await
            .map_err(|_| ClientError::Timeout("a signaling reply"))?;
        match msg {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str())
                    .map_err(|e| ClientError::Protocol(format!("bad server message: {e}")))
            }
            Some(Ok(Message::Close(_))) | None => {
                return Err(ClientError::Protocol(
                    "the server closed the WebSocket".into(),
                ))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(ClientError::Protocol(format!("WebSocket: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrival_is_the_kernels_stamp_when_it_is_believable() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let since_epoch = wall.duration_since(UNIX_EPOCH).expect("after 1970");
        let ms = Duration::from_millis;
        assert_eq!(arrival(now, wall, None), now, "no stamp: read time");
        assert_eq!(
            arrival(now, wall, Some(since_epoch - ms(3))),
            now - ms(3),
            "waited 3 ms in the socket"
        );
        assert_eq!(
            arrival(now, wall, Some(since_epoch + ms(5))),
            now,
            "a stamp after the read (clock stepped back)"
        );
        assert_eq!(
            arrival(now, wall, Some(since_epoch - Duration::from_secs(60))),
            now,
            "a stamp from before a clock step forward"
        );
    }
}
