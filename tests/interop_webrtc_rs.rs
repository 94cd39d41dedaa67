//! Interop: webrtc-rs 0.21 (an independent WebRTC stack) against `meridian serve`,
//! signalling over WHIP/WHEP as described in docs/PROTOCOL.md.
//!
//! * `whip_publish_whep_play_webrtc_rs` — a webrtc-rs WHIP publisher (sendonly VP8 + Opus)
//!   and a webrtc-rs WHEP player (recvonly audio + video) in one room; media must arrive on
//!   both tracks with byte-identical payloads, then both sessions are DELETEd (204).
//! * `whep_delete_stops_media_webrtc_rs` — a second webrtc-rs WHIP publisher and a webrtc-rs
//!   WHEP player; `DELETE {Location}` of the player returns 204 and media to the player stops
//!   while the publisher keeps sending; a second DELETE returns 404.
//! * `whep_player_survives_publisher_switch_webrtc_rs` — the played publisher leaves and
//!   another one appears: the player keeps receiving on the same SSRC with continuous
//!   sequence numbers (the PROTOCOL.md WHEP continuity promise).
//! * `whep_player_decodes_flexfec_webrtc_rs` — two webrtc-rs WHEP players without NACK behind
//!   impairment proxies losing 10 % towards them, one with webrtc-rs's FlexFEC-03 receiver:
//!   the server announces a FEC SSRC (`a=ssrc-group:FEC-FR`) only to that one and sends it
//!   repair packets, from which it rebuilds most of what the link lost.
//!
//! Every test starts its own server (`CARGO_BIN_EXE_meridian serve`, dev mode) on free
//! loopback ports; all peers gather host candidates on 127.0.0.1 only, no STUN. Every wait
//! is bounded. Set `INTEROP_LOG=webrtc=debug,rtc=debug` for webrtc-rs logs; the server's
//! own log is printed when a test fails (it runs with `RUST_LOG=info` unless set).

mod common;

use common::Server;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::watch;

use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::network_type::NetworkType;
use rtc::interceptor::{FlexFec03ReceiveBuilder, Slot};
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_rtcp_reports, configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_FLEX_FEC03;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::media_stream::MediaStreamTrack;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceConnectionState,
    RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription, Registry,
    SettingEngineBuilder,
};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit, RtpSender};

/// Payload types a peer registers (and so offers): (VP8, Opus).
#[derive(Clone, Copy, Debug)]
struct Pts {
    video: u8,
    audio: u8,
}
/// Publishers, and the players of the DELETE and switch tests: Chrome's numbering.
const CHROME_PTS: Pts = Pts {
    video: 96,
    audio: 111,
};
/// The player of the main test: Firefox's numbering, so the server must map payload types
/// between the publisher's and the player's negotiation.
const FIREFOX_PTS: Pts = Pts {
    video: 120,
    audio: 109,
};
const VIDEO_PAYLOAD_LEN: usize = 180;
const AUDIO_PAYLOAD_LEN: usize = 64;
const VIDEO_MAGIC: &[u8; 4] = b"MRDV";
const AUDIO_MAGIC: &[u8; 4] = b"MRDA";
/// VP8 payload descriptor (1 byte) + VP8 key-frame header (10 bytes).
const VP8_HEADER_LEN: usize = 11;
/// Opus TOC byte.
const OPUS_HEADER_LEN: usize = 1;

// ───────────────────────────── logging ─────────────────────────────

fn init_logging() {
    // webrtc-rs logs through `log`; tracing-subscriber's default `tracing-log` bridge picks it up.
    let filter = tracing_subscriber::EnvFilter::try_from_env("INTEROP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

macro_rules! log {
    ($($arg:tt)*) => {
        println!("[interop {:>7.3}s] {}", t0().elapsed().as_secs_f64(), format!($($arg)*))
    };
}

fn t0() -> Instant {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *T0.get_or_init(Instant::now)
}

// ───────────────────────────── server child ─────────────────────────────

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .unwrap()
}

// ───────────────────────────── WHIP / WHEP ─────────────────────────────

/// A WHIP/WHEP session: the absolute URL of its `Location`.
struct Session {
    url: String,
}

/// POST an SDP offer; expects `201 Created`, `Location`, an `application/sdp` answer.
async fn post_offer(base: &str, path: &str, offer_sdp: &str) -> (Session, String) {
    let client = http_client();
    let url = format!("{base}{path}");
    let resp = client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/sdp")
        .body(offer_sdp.to_owned())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(
        status,
        reqwest::StatusCode::CREATED,
        "POST {path}: expected 201, got {status}; headers {headers:?}; body:\n{body}\n--- offer was ---\n{offer_sdp}"
    );
    let ctype = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        ctype.starts_with("application/sdp"),
        "POST {path}: answer Content-Type is {ctype:?}, expected application/sdp"
    );
    let location = headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("POST {path}: 201 without Location; headers {headers:?}"))
        .to_owned();
    let session_url = reqwest::Url::parse(&url)
        .unwrap()
        .join(&location)
        .unwrap_or_else(|e| panic!("POST {path}: bad Location {location:?}: {e}"))
        .to_string();
    assert!(
        body.starts_with("v=0"),
        "POST {path}: answer body does not look like SDP:\n{body}"
    );
    log!("POST {path} -> 201, Location: {location}");
    (Session { url: session_url }, body)
}

async fn delete_session(session: &Session) -> reqwest::StatusCode {
    let resp = http_client()
        .delete(&session.url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("DELETE {}: {e}", session.url));
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    log!("DELETE {} -> {status} {}", session.url, body.trim());
    status
}

// ───────────────────────────── synthetic media ─────────────────────────────

/// VP8 payload: descriptor (S=1, PID 0, no extensions) + a key-frame header for a 16x16 frame,
/// then `MRDV`, publisher tag, counter, and filler derived from both. Every frame is a single
/// packet and a key frame, so a server that waits for a key frame can start anywhere.
fn video_payload(tag: u8, n: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(VIDEO_PAYLOAD_LEN);
    b.put_u8(0x10); // X=0 R=0 N=0 S=1 R=0 PID=0
    let first_part_size = (VIDEO_PAYLOAD_LEN - VP8_HEADER_LEN) as u32;
    // frame tag: key_frame=0 (key), version=0, show_frame=1, first_part_size (19 bits)
    let frame_tag: u32 = (1 << 4) | (first_part_size << 5);
    b.put_u8((frame_tag & 0xff) as u8);
    b.put_u8(((frame_tag >> 8) & 0xff) as u8);
    b.put_u8(((frame_tag >> 16) & 0xff) as u8);
    b.put_slice(&[0x9d, 0x01, 0x2a]); // key-frame start code
    b.put_u16_le(16); // width, scale 0
    b.put_u16_le(16); // height, scale 0
    b.put_slice(VIDEO_MAGIC);
    b.put_u8(tag);
    b.put_u32(n);
    let mut x = n.wrapping_mul(2_654_435_761) ^ (tag as u32);
    while b.len() < VIDEO_PAYLOAD_LEN {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        b.put_u8((x >> 16) as u8);
    }
    b.freeze()
}

/// Opus payload: TOC 0xF8 (CELT FB 20 ms, mono, one frame) then `MRDA`, tag, counter, filler.
fn audio_payload(tag: u8, n: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(AUDIO_PAYLOAD_LEN);
    b.put_u8(0xf8);
    b.put_slice(AUDIO_MAGIC);
    b.put_u8(tag);
    b.put_u32(n);
    let mut x = n.wrapping_mul(40_503) ^ ((tag as u32) << 8);
    while b.len() < AUDIO_PAYLOAD_LEN {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        b.put_u8((x >> 16) as u8);
    }
    b.freeze()
}

/// (tag, counter) of a payload built by `video_payload` / `audio_payload`, if it is one.
fn parse_payload(kind: RtpCodecKind, p: &[u8]) -> Option<(u8, u32)> {
    let (off, magic) = match kind {
        RtpCodecKind::Video => (VP8_HEADER_LEN, VIDEO_MAGIC),
        RtpCodecKind::Audio => (OPUS_HEADER_LEN, AUDIO_MAGIC),
        _ => return None,
    };
    if p.len() < off + 9 || &p[off..off + 4] != magic {
        return None;
    }
    let tag = p[off + 4];
    let n = u32::from_be_bytes([p[off + 5], p[off + 6], p[off + 7], p[off + 8]]);
    Some((tag, n))
}

fn expected_payload(kind: RtpCodecKind, tag: u8, n: u32) -> Bytes {
    match kind {
        RtpCodecKind::Video => video_payload(tag, n),
        _ => audio_payload(tag, n),
    }
}

// ───────────────────────────── receive log ─────────────────────────────

#[derive(Clone, Debug)]
struct RxPacket {
    at: Instant,
    ssrc: u32,
    seq: u16,
    ts: u32,
    pt: u8,
    /// (publisher tag, counter) when the payload was recognised
    id: Option<(u8, u32)>,
    /// the payload equals what the publisher built for that (tag, counter)
    identical: bool,
}

#[derive(Default)]
struct RxLog {
    video: Mutex<Vec<RxPacket>>,
    audio: Mutex<Vec<RxPacket>>,
    tracks: Mutex<Vec<String>>,
}

#[derive(Debug, Default, Clone, Copy)]
#[allow(dead_code)] // `packets` is read through Debug in failure messages
struct KindSummary {
    packets: usize,
    identical: usize,
    mismatched: usize,
    unrecognised: usize,
}

impl RxLog {
    fn list(&self, kind: RtpCodecKind) -> &Mutex<Vec<RxPacket>> {
        match kind {
            RtpCodecKind::Video => &self.video,
            _ => &self.audio,
        }
    }

    fn count(&self, kind: RtpCodecKind) -> usize {
        self.list(kind).lock().unwrap().len()
    }

    fn count_tag(&self, kind: RtpCodecKind, tag: u8) -> usize {
        self.list(kind)
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.id.map(|(t, _)| t) == Some(tag))
            .count()
    }

    fn packets(&self, kind: RtpCodecKind) -> Vec<RxPacket> {
        self.list(kind).lock().unwrap().clone()
    }

    fn summary(&self, kind: RtpCodecKind) -> KindSummary {
        let list = self.list(kind).lock().unwrap();
        let mut s = KindSummary {
            packets: list.len(),
            ..Default::default()
        };
        for p in list.iter() {
            match (p.id, p.identical) {
                (Some(_), true) => s.identical += 1,
                (Some(_), false) => s.mismatched += 1,
                (None, _) => s.unrecognised += 1,
            }
        }
        s
    }
}

async fn read_remote_track(name: String, track: Arc<dyn TrackRemote>, rx: Arc<RxLog>) {
    let kind = track.kind().await;
    let track_id = track.track_id().await;
    let stream_id = track.stream_id().await;
    let ssrcs = track.ssrcs().await;
    log!("[{name}] on_track kind={kind} stream_id={stream_id} track_id={track_id} ssrcs={ssrcs:?}");
    rx.tracks.lock().unwrap().push(format!("{kind}:{track_id}"));
    let mut first = true;
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(pkt) => {
                let id = parse_payload(kind, &pkt.payload);
                let identical = id
                    .map(|(tag, n)| expected_payload(kind, tag, n) == pkt.payload)
                    .unwrap_or(false);
                if first {
                    first = false;
                    log!(
                        "[{name}] first {kind} RTP: ssrc={} pt={} seq={} ts={} len={} id={id:?} identical={identical}",
                        pkt.header.ssrc,
                        pkt.header.payload_type,
                        pkt.header.sequence_number,
                        pkt.header.timestamp,
                        pkt.payload.len()
                    );
                }
                if id.is_some() && !identical {
                    log!(
                        "[{name}] {kind} payload MISMATCH seq={} id={id:?}: got {:02x?}",
                        pkt.header.sequence_number,
                        &pkt.payload[..pkt.payload.len().min(32)]
                    );
                }
                rx.list(kind).lock().unwrap().push(RxPacket {
                    at: Instant::now(),
                    ssrc: pkt.header.ssrc,
                    seq: pkt.header.sequence_number,
                    ts: pkt.header.timestamp,
                    pt: pkt.header.payload_type,
                    id,
                    identical,
                });
            }
            TrackRemoteEvent::OnEnded => {
                log!("[{name}] remote {kind} track ended");
                break;
            }
            TrackRemoteEvent::OnEnding => log!("[{name}] remote {kind} track ending"),
            TrackRemoteEvent::OnMute => log!("[{name}] remote {kind} track muted"),
            TrackRemoteEvent::OnUnmute => log!("[{name}] remote {kind} track unmuted"),
            _ => {}
        }
    }
}

// ───────────────────────────── webrtc-rs peers ─────────────────────────────

struct Handler {
    name: String,
    gathered: watch::Sender<bool>,
    state: watch::Sender<RTCPeerConnectionState>,
    rx: Arc<RxLog>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        log!("[{}] ICE connection state: {state}", self.name);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        log!("[{}] peer connection state: {state}", self.name);
        self.state.send_replace(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        // Called from the connection's driver: hand the track to a task and return at once.
        tokio::spawn(read_remote_track(
            self.name.clone(),
            track,
            Arc::clone(&self.rx),
        ));
    }
}

fn vp8_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// How a webrtc-rs peer recovers loss: NACK (the default interceptors) unless `no_nack`,
/// and FlexFEC-03 with webrtc-rs's receiver when `flexfec_pt` is set.
#[derive(Clone, Copy, Debug, Default)]
struct RecoveryOptions {
    no_nack: bool,
    flexfec_pt: Option<u8>,
}

struct Peer {
    name: String,
    pc: Arc<dyn PeerConnection>,
    gathered: watch::Receiver<bool>,
    state: watch::Receiver<RTCPeerConnectionState>,
    rx: Arc<RxLog>,
}

impl Peer {
    /// A webrtc-rs PeerConnection with Opus + VP8 only (payload types `pts`), the default
    /// interceptors (NACK, RTCP reports, TWCC receiver), one UDP socket on 127.0.0.1, no STUN,
    /// no mDNS.
    async fn new(name: &str, pts: Pts) -> Peer {
        Peer::build(name, pts, RecoveryOptions::default()).await
    }

    async fn build(name: &str, pts: Pts, recovery: RecoveryOptions) -> Peer {
        let mut media_engine = MediaEngine::default();
        media_engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: opus_codec(),
                    payload_type: pts.audio,
                },
                RtpCodecKind::Audio,
            )
            .unwrap();
        media_engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: vp8_codec(),
                    payload_type: pts.video,
                },
                RtpCodecKind::Video,
            )
            .unwrap();
        let registry = if recovery.no_nack {
            // The default set without NACK (so only FEC can repair loss).
            configure_simulcast_extension_headers(&mut media_engine).unwrap();
            let registry =
                configure_twcc_receiver_only(Registry::new(), &mut media_engine).unwrap();
            configure_rtcp_reports(registry)
        } else {
            register_default_interceptors(Registry::new(), &mut media_engine).unwrap()
        };
        let registry = match recovery.flexfec_pt {
            Some(pt) => {
                media_engine
                    .register_codec(
                        RTCRtpCodecParameters {
                            rtp_codec: RTCRtpCodec {
                                mime_type: MIME_TYPE_FLEX_FEC03.to_owned(),
                                clock_rate: 90000,
                                channels: 0,
                                sdp_fmtp_line: "repair-window=10000000".to_owned(),
                                rtcp_feedback: vec![],
                            },
                            payload_type: pt,
                        },
                        RtpCodecKind::Video,
                    )
                    .unwrap();
                registry.with(Slot::FecDecoder, FlexFec03ReceiveBuilder::new().build())
            }
            None => registry,
        };

        // Host candidates are derived from the bound sockets: binding only 127.0.0.1 makes
        // loopback the only candidate. mDNS off (no multicast socket, no .local names).
        let setting_engine = SettingEngineBuilder::new()
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_network_types(vec![NetworkType::Udp4])
            .with_include_loopback_candidate(true)
            .build();

        let (gathered_tx, gathered) = watch::channel(false);
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let rx = Arc::new(RxLog::default());
        let handler = Arc::new(Handler {
            name: name.to_owned(),
            gathered: gathered_tx,
            state: state_tx,
            rx: Arc::clone(&rx),
        });

        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media_engine)
            .with_setting_engine(setting_engine)
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
            .build()
            .await
            .unwrap_or_else(|e| panic!("[{name}] build PeerConnection: {e}"));
        Peer {
            name: name.to_owned(),
            pc: Arc::new(pc),
            gathered,
            state,
            rx,
        }
    }

    /// createOffer + setLocalDescription, then wait for ICE gathering to complete (non-trickle).
    async fn offer(&mut self) -> String {
        let offer = self.pc.create_offer(None).await.expect("create_offer");
        self.pc
            .set_local_description(offer)
            .await
            .expect("set_local_description");
        let gathered =
            tokio::time::timeout(Duration::from_secs(5), self.gathered.wait_for(|done| *done))
                .await;
        if gathered.is_err() {
            log!(
                "[{}] ICE gathering not complete after 5 s, using what we have",
                self.name
            );
        }
        let sdp = self
            .pc
            .local_description()
            .await
            .expect("local description")
            .sdp;
        let candidates: Vec<&str> = sdp
            .lines()
            .filter(|l| l.starts_with("a=candidate"))
            .collect();
        log!("[{}] offer gathered, candidates: {candidates:?}", self.name);
        assert!(
            !candidates.is_empty(),
            "[{}] offer has no ICE candidate:\n{sdp}",
            self.name
        );
        for c in &candidates {
            assert!(
                c.contains(" 127.0.0.1 "),
                "[{}] non-loopback candidate in offer: {c}",
                self.name
            );
        }
        sdp
    }

    async fn apply_answer(&self, answer: &str) {
        let desc = RTCSessionDescription::answer(answer.to_owned())
            .unwrap_or_else(|e| panic!("[{}] parse SDP answer: {e}\n{answer}", self.name));
        self.pc
            .set_remote_description(desc)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "[{}] set_remote_description(answer): {e}\n{answer}",
                    self.name
                )
            });
    }

    async fn wait_connected(&mut self, limit: Duration) {
        let name = self.name.clone();
        let res = tokio::time::timeout(
            limit,
            self.state.wait_for(|s| {
                matches!(
                    s,
                    RTCPeerConnectionState::Connected
                        | RTCPeerConnectionState::Failed
                        | RTCPeerConnectionState::Closed
                )
            }),
        )
        .await
        .is_ok();
        let state = *self.state.borrow();
        match res {
            true if state == RTCPeerConnectionState::Connected => {
                log!("[{name}] connected");
            }
            _ => panic!(
                "[{name}] peer connection did not reach Connected within {limit:?}: state {state}"
            ),
        }
    }

    fn state_now(&self) -> RTCPeerConnectionState {
        *self.state.borrow()
    }

    async fn close(&self) {
        if let Err(e) = self.pc.close().await {
            log!("[{}] close: {e}", self.name);
        }
    }
}

// ───────────────────────────── publisher / player ─────────────────────────────

struct Publisher {
    peer: Peer,
    session: Session,
    answer: String,
    stop: Arc<AtomicBool>,
    video_sent: Arc<AtomicU64>,
    audio_sent: Arc<AtomicU64>,
    write_errors: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn negotiated_pt(sender: &Arc<dyn RtpSender>, name: &str, fallback: u8) -> u8 {
    match sender.get_parameters().await {
        Ok(params) => match params.rtp_parameters.codecs.first() {
            Some(codec) => {
                log!(
                    "[{name}] sender codec {} pt {}",
                    codec.rtp_codec.mime_type,
                    codec.payload_type
                );
                codec.payload_type
            }
            None => panic!("[{name}] sender has no negotiated codec"),
        },
        Err(e) => {
            log!("[{name}] get_parameters: {e}; using pt {fallback}");
            fallback
        }
    }
}

/// Packet pacer: writes `make(n)` every `period` with `ts_step` timestamp increments.
#[allow(clippy::too_many_arguments)]
fn spawn_rtp_writer(
    name: String,
    kind: &'static str,
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    pt: u8,
    period: Duration,
    ts_step: u32,
    marker: bool,
    make: fn(u8, u32) -> Bytes,
    tag: u8,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seq: u16 = rand::random();
        let mut ts: u32 = rand::random();
        let mut n: u32 = 0;
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(Ordering::Relaxed) {
            ticker.tick().await;
            let pkt = rtc::rtp::Packet {
                header: rtc::rtp::Header {
                    version: 2,
                    marker,
                    payload_type: pt,
                    sequence_number: seq,
                    timestamp: ts,
                    ssrc,
                    ..Default::default()
                },
                payload: make(tag, n),
            };
            match track.write_rtp(pkt).await {
                Ok(()) => {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        log!("[{name}] {kind} write_rtp error: {e}");
                    }
                }
            }
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(ts_step);
            n += 1;
        }
    })
}

impl Publisher {
    /// webrtc-rs WHIP publisher: sendonly VP8 (added first) + sendonly Opus, pre-packetised
    /// RTP through `TrackLocalStaticRTP`, ~30 video + 50 audio packets/s, payloads tagged with
    /// `tag` and a per-kind counter.
    async fn start(server: &Server, room: &str, name: &str, tag: u8) -> Publisher {
        let mut peer = Peer::new(name, CHROME_PTS).await;
        let video_ssrc: u32 = rand::random();
        let audio_ssrc: u32 = rand::random();
        let track = |kind: RtpCodecKind, ssrc: u32, codec: RTCRtpCodec| {
            Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                format!("{name}-stream"),
                format!("{name}-{kind}"),
                format!("{name} {kind}"),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    active: true,
                    codec,
                    ..Default::default()
                }],
            )))
        };
        let video = track(RtpCodecKind::Video, video_ssrc, vp8_codec());
        let audio = track(RtpCodecKind::Audio, audio_ssrc, opus_codec());
        let sendonly = || {
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                streams: vec![],
                send_encodings: vec![],
            })
        };
        let vtx = peer
            .pc
            .add_transceiver_from_track(Arc::clone(&video) as Arc<dyn TrackLocal>, sendonly())
            .await
            .expect("add video transceiver");
        let atx = peer
            .pc
            .add_transceiver_from_track(Arc::clone(&audio) as Arc<dyn TrackLocal>, sendonly())
            .await
            .expect("add audio transceiver");

        let offer = peer.offer().await;
        let (session, answer) = post_offer(&server.base(), &format!("/whip/{room}"), &offer).await;
        log!("[{name}] WHIP answer:\n{answer}");
        peer.apply_answer(&answer).await;
        peer.wait_connected(Duration::from_secs(10)).await;

        let vsender = vtx
            .sender()
            .await
            .expect("video sender")
            .expect("video sender");
        let asender = atx
            .sender()
            .await
            .expect("audio sender")
            .expect("audio sender");
        let video_pt = negotiated_pt(&vsender, name, CHROME_PTS.video).await;
        let audio_pt = negotiated_pt(&asender, name, CHROME_PTS.audio).await;

        let stop = Arc::new(AtomicBool::new(false));
        let video_sent = Arc::new(AtomicU64::new(0));
        let audio_sent = Arc::new(AtomicU64::new(0));
        let write_errors = Arc::new(AtomicU64::new(0));
        let tasks = vec![
            spawn_rtp_writer(
                name.to_owned(),
                "video",
                video,
                video_ssrc,
                video_pt,
                Duration::from_millis(33),
                3000,
                true,
                video_payload,
                tag,
                Arc::clone(&stop),
                Arc::clone(&video_sent),
                Arc::clone(&write_errors),
            ),
            spawn_rtp_writer(
                name.to_owned(),
                "audio",
                audio,
                audio_ssrc,
                audio_pt,
                Duration::from_millis(20),
                960,
                false,
                audio_payload,
                tag,
                Arc::clone(&stop),
                Arc::clone(&audio_sent),
                Arc::clone(&write_errors),
            ),
        ];
        log!("[{name}] publishing: video ssrc {video_ssrc} pt {video_pt}, audio ssrc {audio_ssrc} pt {audio_pt}");
        Publisher {
            peer,
            session,
            answer,
            stop,
            video_sent,
            audio_sent,
            write_errors,
            tasks,
        }
    }

    fn sent(&self) -> (u64, u64, u64) {
        (
            self.video_sent.load(Ordering::Relaxed),
            self.audio_sent.load(Ordering::Relaxed),
            self.write_errors.load(Ordering::Relaxed),
        )
    }

    async fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
    }
}

struct Player {
    peer: Peer,
    session: Session,
    answer: String,
}

impl Player {
    /// webrtc-rs WHEP player: recvonly audio (added first) + recvonly video.
    async fn start(server: &Server, path: &str, name: &str, pts: Pts) -> Player {
        Player::start_with(server, path, name, pts, RecoveryOptions::default(), None).await
    }

    /// The same, with its loss recovery set by `recovery`, and reaching the server through
    /// `via` (an impairment proxy in front of the server's UDP port) when set.
    async fn start_with(
        server: &Server,
        path: &str,
        name: &str,
        pts: Pts,
        recovery: RecoveryOptions,
        via: Option<std::net::SocketAddr>,
    ) -> Player {
        let mut peer = Peer::build(name, pts, recovery).await;
        for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
            peer.pc
                .add_transceiver_from_kind(
                    kind,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        streams: vec![],
                        send_encodings: vec![],
                    }),
                )
                .await
                .unwrap_or_else(|e| panic!("[{name}] add recvonly {kind} transceiver: {e}"));
        }
        let offer = peer.offer().await;
        let (session, answer) = post_offer(&server.base(), path, &offer).await;
        log!("[{name}] WHEP answer:\n{answer}");
        let applied = match via {
            // The server's candidate becomes the proxy's: everything goes through it.
            Some(via) => answer.replace(
                &format!("{} {} typ host", server.udp.ip(), server.udp.port()),
                &format!("{} {} typ host", via.ip(), via.port()),
            ),
            None => answer.clone(),
        };
        peer.apply_answer(&applied).await;
        peer.wait_connected(Duration::from_secs(10)).await;
        Player {
            peer,
            session,
            answer,
        }
    }

    fn rx(&self) -> &RxLog {
        &self.peer.rx
    }
}

/// Poll `cond` every 100 ms until it holds or `limit` passes; returns whether it held.
async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Not asserted, only reported: whether a WHEP answer keeps one publisher's audio and video
/// in one MediaStream (same `a=msid` stream id) with one CNAME. Browsers' WHEP players
/// commonly do `video.srcObject = event.streams[0]`, and lip sync needs a shared CNAME.
fn note_stream_grouping(who: &str, sdp: &str) {
    let streams: BTreeSet<&str> = sdp
        .lines()
        .filter_map(|l| l.strip_prefix("a=msid:"))
        .filter_map(|v| v.split(' ').next())
        .collect();
    let cnames: BTreeSet<&str> = sdp
        .lines()
        .filter(|l| l.starts_with("a=ssrc:"))
        .filter_map(|l| l.split_once(" cname:").map(|(_, c)| c))
        .collect();
    if streams.len() > 1 || cnames.len() > 1 {
        log!("NOTE [{who}] audio and video of one publisher are split: msid streams {streams:?}, cnames {cnames:?}");
    } else {
        log!("[{who}] msid streams {streams:?}, cnames {cnames:?}");
    }
}

fn media_directions(sdp: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for l in sdp.lines() {
        if let Some(m) = l.strip_prefix("m=") {
            if let Some(c) = cur.take() {
                out.push(c);
            }
            cur = Some(m.split(' ').next().unwrap_or("").to_owned());
        } else if let Some(c) = cur.as_mut() {
            for d in ["sendrecv", "sendonly", "recvonly", "inactive"] {
                if l == format!("a={d}") {
                    c.push(':');
                    c.push_str(d);
                }
            }
        }
    }
    if let Some(c) = cur.take() {
        out.push(c);
    }
    out
}

// ───────────────────────────── tests ─────────────────────────────

/// webrtc-rs WHIP publisher → meridian → webrtc-rs WHEP player.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whip_publish_whep_play_webrtc_rs() {
    init_logging();
    tokio::time::timeout(Duration::from_secs(55), async {
        let server = Server::start(&[]).await;
        let room = "interop-wrs-a";

        let mut publisher = Publisher::start(&server, room, "pub-a", 0xA1).await;
        log!("WHIP answer m-lines: {:?}", media_directions(&publisher.answer));

        let player = Player::start(&server, &format!("/whep/{room}"), "play-a", FIREFOX_PTS).await;
        let dirs = media_directions(&player.answer);
        log!("WHEP answer m-lines: {dirs:?}");
        note_stream_grouping("play-a", &player.answer);
        assert!(
            dirs.iter().any(|d| d.starts_with("audio")) && dirs.iter().any(|d| d.starts_with("video")),
            "WHEP answer lacks an audio or video m-line: {dirs:?}\n{}",
            player.answer
        );
        assert!(
            !dirs.iter().any(|d| d.ends_with(":recvonly") || d.ends_with(":inactive")),
            "WHEP answer does not send on every m-line: {dirs:?}\n{}",
            player.answer
        );

        let rx = player.rx();
        let ok = wait_until(Duration::from_secs(15), || {
            rx.summary(RtpCodecKind::Video).identical >= 50
                && rx.summary(RtpCodecKind::Audio).identical >= 50
        })
        .await;
        let v = rx.summary(RtpCodecKind::Video);
        let a = rx.summary(RtpCodecKind::Audio);
        let (vs, as_, errs) = publisher.sent();
        log!("publisher sent video {vs} audio {as_} (write errors {errs}); player got video {v:?} audio {a:?}; tracks {:?}", rx.tracks.lock().unwrap());
        assert!(
            ok,
            "within 15 s the player did not get >= 50 identical video and audio packets: video {v:?}, audio {a:?} (publisher sent video {vs}, audio {as_}, write errors {errs}; publisher {}, player {}). NB the player offered VP8/{} Opus/{}, the publisher sends VP8/{} Opus/{}: packets forwarded without payload-type rewriting are dropped by webrtc-rs",
            publisher.peer.state_now(),
            player.peer.state_now(),
            FIREFOX_PTS.video,
            FIREFOX_PTS.audio,
            CHROME_PTS.video,
            CHROME_PTS.audio
        );
        assert_eq!(v.mismatched, 0, "video payloads altered in transit: {v:?}");
        assert_eq!(a.mismatched, 0, "audio payloads altered in transit: {a:?}");
        for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
            let pkts = rx.packets(kind);
            assert!(
                pkts.iter().all(|p| p.id.map(|(t, _)| t) == Some(0xA1) || p.id.is_none()),
                "{kind}: payloads from an unexpected publisher"
            );
            let ssrcs: BTreeSet<u32> = pkts.iter().map(|p| p.ssrc).collect();
            let pts: BTreeSet<u8> = pkts.iter().map(|p| p.pt).collect();
            log!("player {kind}: ssrcs {ssrcs:?} pts {pts:?}");
            // the payload type is the one of the player's own offer
            let want = if kind == RtpCodecKind::Video {
                FIREFOX_PTS.video
            } else {
                FIREFOX_PTS.audio
            };
            assert!(pts.iter().all(|pt| *pt == want), "{kind}: unexpected payload types {pts:?}");
        }

        assert_eq!(delete_session(&player.session).await, reqwest::StatusCode::NO_CONTENT, "DELETE WHEP session");
        assert_eq!(delete_session(&publisher.session).await, reqwest::StatusCode::NO_CONTENT, "DELETE WHIP session");
        publisher.stop().await;
        player.peer.close().await;
        publisher.peer.close().await;
    })
    .await
    .expect("test exceeded 55 s");
}

/// Second webrtc-rs WHIP publisher, webrtc-rs WHEP player; DELETE of the player's Location
/// is 204 and ends its media while the publisher keeps sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whep_delete_stops_media_webrtc_rs() {
    init_logging();
    tokio::time::timeout(Duration::from_secs(55), async {
        let server = Server::start(&[]).await;
        let room = "interop-wrs-b";

        let mut publisher = Publisher::start(&server, room, "pub-b", 0xB2).await;
        let player = Player::start(&server, &format!("/whep/{room}"), "play-b", CHROME_PTS).await;
        let rx = player.rx();

        let ok = wait_until(Duration::from_secs(15), || {
            rx.summary(RtpCodecKind::Video).identical >= 30
                && rx.summary(RtpCodecKind::Audio).identical >= 30
        })
        .await;
        let (v, a) = (rx.summary(RtpCodecKind::Video), rx.summary(RtpCodecKind::Audio));
        assert!(ok, "player did not get media before DELETE: video {v:?} audio {a:?}, publisher sent {:?}", publisher.sent());
        assert_eq!(v.mismatched + a.mismatched, 0, "payloads altered: video {v:?} audio {a:?}");

        let status = delete_session(&player.session).await;
        assert_eq!(status, reqwest::StatusCode::NO_CONTENT, "DELETE {}", player.session.url);
        let deleted_at = Instant::now();

        // allow packets already in flight, then the count must stand still while the
        // publisher keeps publishing
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (v1, a1) = (rx.count(RtpCodecKind::Video), rx.count(RtpCodecKind::Audio));
        let sent1 = publisher.sent();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (v2, a2) = (rx.count(RtpCodecKind::Video), rx.count(RtpCodecKind::Audio));
        let sent2 = publisher.sent();
        // signed ms from the DELETE to the last video packet (negative: it came before)
        let last_rx_ms = rx.packets(RtpCodecKind::Video).last().map(|p| {
            if p.at >= deleted_at {
                p.at.duration_since(deleted_at).as_millis() as i64
            } else {
                -(deleted_at.duration_since(p.at).as_millis() as i64)
            }
        });
        log!("after DELETE: video {v1}->{v2}, audio {a1}->{a2}; publisher sent {sent1:?}->{sent2:?}; last video packet at {last_rx_ms:?} ms relative to DELETE; player state {}", player.peer.state_now());
        assert!(
            sent2.0 > sent1.0 + 30 && publisher.peer.state_now() == RTCPeerConnectionState::Connected,
            "publisher stopped sending during the check: {sent1:?}->{sent2:?}, {}",
            publisher.peer.state_now()
        );
        assert_eq!(
            (v2 - v1, a2 - a1),
            (0, 0),
            "player kept receiving (video, audio) packets more than 1 s after DELETE of its session"
        );

        // Observation only (not asserted): does the deleted session stop answering ICE?
        // webrtc-rs declares "disconnected" 5 s after the last inbound packet.
        let mut state_rx = player.peer.state.clone();
        let left = tokio::time::timeout(
            Duration::from_secs(9).saturating_sub(deleted_at.elapsed()),
            state_rx.wait_for(|s| *s != RTCPeerConnectionState::Connected),
        )
        .await
        .is_ok();
        log!(
            "player connection state {:.1} s after DELETE: {}{}",
            deleted_at.elapsed().as_secs_f64(),
            player.peer.state_now(),
            if left { "" } else { " (NOTE: server still answers ICE for the deleted WHEP session)" }
        );

        let again = delete_session(&player.session).await;
        assert_eq!(again, reqwest::StatusCode::NOT_FOUND, "second DELETE of a finished WHEP session");

        assert_eq!(delete_session(&publisher.session).await, reqwest::StatusCode::NO_CONTENT, "DELETE WHIP session");
        publisher.stop().await;
        player.peer.close().await;
        publisher.peer.close().await;
    })
    .await
    .expect("test exceeded 55 s");
}

/// PROTOCOL.md: "when the played publisher leaves and another appears, the stream continues
/// on the same SSRC with continuous sequence numbers and timestamps" — checked with a
/// webrtc-rs player and two webrtc-rs publishers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whep_player_survives_publisher_switch_webrtc_rs() {
    init_logging();
    tokio::time::timeout(Duration::from_secs(55), async {
        let server = Server::start(&[]).await;
        let room = "interop-wrs-c";

        let mut first = Publisher::start(&server, room, "pub-c1", 0xC1).await;
        let player = Player::start(&server, &format!("/whep/{room}"), "play-c", CHROME_PTS).await;
        let rx = player.rx();
        let ok = wait_until(Duration::from_secs(15), || {
            rx.count_tag(RtpCodecKind::Video, 0xC1) >= 20 && rx.count_tag(RtpCodecKind::Audio, 0xC1) >= 20
        })
        .await;
        assert!(ok, "no media from the first publisher: video {:?} audio {:?}", rx.summary(RtpCodecKind::Video), rx.summary(RtpCodecKind::Audio));

        assert_eq!(delete_session(&first.session).await, reqwest::StatusCode::NO_CONTENT, "DELETE first WHIP session");
        first.stop().await;
        first.peer.close().await;

        let mut second = Publisher::start(&server, room, "pub-c2", 0xC2).await;
        let ok = wait_until(Duration::from_secs(15), || {
            rx.count_tag(RtpCodecKind::Video, 0xC2) >= 20 && rx.count_tag(RtpCodecKind::Audio, 0xC2) >= 20
        })
        .await;
        let tracks = rx.tracks.lock().unwrap().clone();
        assert!(
            ok,
            "player got no media from the second publisher: video {:?} audio {:?}, tracks {tracks:?}, player {}",
            rx.summary(RtpCodecKind::Video),
            rx.summary(RtpCodecKind::Audio),
            player.peer.state_now()
        );

        for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
            let pkts = rx.packets(kind);
            let s = rx.summary(kind);
            assert_eq!(s.mismatched, 0, "{kind}: payloads altered: {s:?}");
            let ssrcs: BTreeSet<u32> = pkts.iter().map(|p| p.ssrc).collect();
            assert_eq!(ssrcs.len(), 1, "{kind}: SSRC changed across the publisher switch: {ssrcs:?}");
            let switch = pkts
                .windows(2)
                .find(|w| w[0].id.map(|x| x.0) == Some(0xC1) && w[1].id.map(|x| x.0) == Some(0xC2))
                .unwrap_or_else(|| panic!("{kind}: no C1→C2 transition in the received stream"));
            let (a, b) = (&switch[0], &switch[1]);
            let dseq = b.seq.wrapping_sub(a.seq);
            let dts = b.ts.wrapping_sub(a.ts);
            let gap = b.at.duration_since(a.at);
            log!("{kind} switch: seq {}->{} (+{dseq}), ts {}->{} (+{dts}), wall gap {gap:?}", a.seq, b.seq, a.ts, b.ts);
            assert!((1..=10).contains(&dseq), "{kind}: sequence number not continuous across the switch: {} -> {}", a.seq, b.seq);
            let clock = if kind == RtpCodecKind::Video { 90_000u64 } else { 48_000u64 };
            assert!(
                dts > 0 && (dts as u64) < clock * 30,
                "{kind}: timestamp not continuous across the switch: {} -> {} (+{dts})",
                a.ts,
                b.ts
            );
            // every step in the whole stream moves forward by a small amount
            let bad: Vec<(u16, u16)> = pkts
                .windows(2)
                .filter(|w| !(1..=10).contains(&w[1].seq.wrapping_sub(w[0].seq)))
                .map(|w| (w[0].seq, w[1].seq))
                .collect();
            assert!(bad.is_empty(), "{kind}: sequence discontinuities {bad:?}");
        }

        assert_eq!(delete_session(&player.session).await, reqwest::StatusCode::NO_CONTENT, "DELETE WHEP session");
        assert_eq!(delete_session(&second.session).await, reqwest::StatusCode::NO_CONTENT, "DELETE second WHIP session");
        second.stop().await;
        player.peer.close().await;
        second.peer.close().await;
    })
    .await
    .expect("test exceeded 55 s");
}

/// FlexFEC towards a webrtc-rs player. Two WHEP players without NACK, each behind its own
/// impairment proxy losing 10 % of what the server sends it (same seed), one of them with
/// FlexFEC-03 (webrtc-rs's `FlexFec03ReceiveInterceptor`). The server announces a FEC SSRC
/// grouped with the video SSRC (`a=ssrc-group:FEC-FR`) to that player only, sends repair
/// packets on it once it sees the loss, and the player rebuilds from them: its share of the
/// publisher's video, byte-identical, is well above the plain player's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whep_player_decodes_flexfec_webrtc_rs() {
    init_logging();
    tokio::time::timeout(Duration::from_secs(80), async {
        let server = Server::start(&[]).await;
        let room = "interop-wrs-fec";
        let mut publisher = Publisher::start(&server, room, "pub-f", 0xF1).await;

        let proxy = || common::impaired(&server, "loss=0%", "loss=10%", 31);
        let (fec_proxy, plain_proxy) = (proxy().await, proxy().await);
        let with_fec = RecoveryOptions {
            no_nack: true,
            flexfec_pt: Some(115),
        };
        let plain = RecoveryOptions {
            no_nack: true,
            flexfec_pt: None,
        };
        let path = format!("/whep/{room}");
        let fec_player =
            Player::start_with(&server, &path, "play-fec", CHROME_PTS, with_fec, Some(fec_proxy.local_addr())).await;
        let plain_player =
            Player::start_with(&server, &path, "play-plain", CHROME_PTS, plain, Some(plain_proxy.local_addr())).await;
        assert!(
            fec_player.answer.contains("flexfec-03/90000") && fec_player.answer.contains("a=ssrc-group:FEC-FR"),
            "the FlexFEC player's answer announces no FEC stream:\n{}",
            fec_player.answer
        );
        assert!(
            !plain_player.answer.contains("FEC-FR") && !plain_player.answer.contains("flexfec"),
            "FlexFEC announced to a player that did not offer it:\n{}",
            plain_player.answer
        );

        // The server turns FEC on from the loss it sees in feedback; then measure 12 s.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let (from, _, _) = publisher.sent();
        tokio::time::sleep(Duration::from_secs(12)).await;
        let (to, _, _) = publisher.sent();
        tokio::time::sleep(Duration::from_millis(500)).await;

        // Video packets of the measured range each player got, byte-identical, once each.
        let delivered = |player: &Player| {
            let pkts = player.rx().packets(RtpCodecKind::Video);
            let mismatched = pkts.iter().filter(|p| p.id.is_some() && !p.identical).count();
            assert_eq!(mismatched, 0, "[{}] video payloads altered", player.peer.name);
            let ids: BTreeSet<u32> = pkts
                .iter()
                .filter_map(|p| p.id.filter(|(tag, n)| *tag == 0xF1 && (from..to).contains(&u64::from(*n))))
                .map(|(_, n)| n)
                .collect();
            ids.len() as f64 / (to - from).max(1) as f64
        };
        let (fec_ratio, plain_ratio) = (delivered(&fec_player), delivered(&plain_player));
        let fec_sent = server.metrics().await.get("meridian_fec_packets_total").copied().unwrap_or(0);
        log!(
            "video delivered over 10 % loss, no NACK: FlexFEC {:.2} %, plain {:.2} % of {}; proxies down: fec {:?}, plain {:?}; FEC packets sent {fec_sent}",
            fec_ratio * 100.0,
            plain_ratio * 100.0,
            to - from,
            fec_proxy.stats(),
            plain_proxy.stats()
        );
        assert!(fec_sent > 50, "the server sent FlexFEC: {fec_sent} FEC packets");
        assert!(plain_ratio < 0.97, "the plain player lost too little to tell: {plain_ratio:.4}");
        assert!(
            fec_ratio >= 0.98 && fec_ratio > plain_ratio + 0.04,
            "FlexFEC player got {:.2} %, plain {:.2} % ({fec_sent} FEC packets sent)",
            fec_ratio * 100.0,
            plain_ratio * 100.0
        );

        publisher.stop().await;
        fec_player.peer.close().await;
        plain_player.peer.close().await;
        publisher.peer.close().await;
    })
    .await
    .expect("test exceeded 80 s");
}
