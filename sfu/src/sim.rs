//! An in-process, deterministic network for testing and benchmarking the
//! [`Node`]: one node, many str0m client peers, a virtual clock and, per
//! client and direction, a seeded `meridian_netsim::Link` (loss, bursts,
//! delay, jitter, reordering, a bandwidth cap; by default a fixed delay).
//!
//! Nothing here touches a socket or reads the clock (except once, for the
//! base `Instant`): addresses are fake, time only moves when the harness
//! moves it, and every datagram goes through one queue. Clients negotiate
//! the way `client/src/driver.rs` does over the WebSocket protocol — the
//! client offers its send-only m-lines and a data channel, the node answers,
//! and the client answers every `PeerSignal::Offer` the node sends later —
//! but calling the `Node` methods directly.
//!
//! The loop follows str0m's `tests/common.rs` and quinn's test pairs: find the
//! earliest wake-up (a queued datagram, a client timeout, the node timeout),
//! move the clock there, process what is due, drain every output until
//! `Timeout`, and stop after a bounded number of steps so a livelock fails
//! loudly instead of hanging. str0m itself draws SSRCs, ICE credentials and
//! DTLS keys from the OS, so runs are deterministic in what the harness
//! decides (loss, sequence bases, timing), not in those values.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{
    Direction, KeyframeRequest, KeyframeRequestKind, MediaKind, Mid, Rid, Simulcast, SimulcastLayer,
};
use str0m::net::{Protocol, Receive};
use str0m::rtp::ExtensionValues;
use str0m::{Candidate, Event, IceConnectionState, Input, Output as RtcOutput, Rtc};

use meridian_netsim::{Link, LinkConfig};
use str0m::rtp::RtpPacket;

use crate::core::fec::{video_fec_pts, FecReceiver, FlexfecReceiver};
use crate::core::publish::{Media, Plan, Protection, SendStream, UplinkLoss};

use crate::core::{
    JoinKind, JoinRequest, MuteTarget, Node, NodeConfig, NodeEvent, NodeStats, Output, PeerId,
    PeerSignal, ResendPolicy, RoomId,
};

/// Upper bound of loop passes per virtual millisecond (plus a fixed
/// allowance). A healthy run needs a handful per client per millisecond at
/// most; more means something keeps waking without making progress.
const STEPS_PER_MS: u64 = 2_000;
const STEPS_BASE: u64 = 100_000;

/// How far a component is pushed forward when it asks to be woken at the
/// very instant it was just handled (str0m's `tests/common.rs` does the same).
const FORCED_ADVANCE: Duration = Duration::from_millis(1);

/// How long `add_publisher`/`add_subscriber` wait for ICE + DTLS.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// Index of a client in the [`SimNet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub usize);

/// Network and node parameters of a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seeds the node (its sequence bases) and the harness (loss, client
    /// sequence bases).
    pub seed: u64,
    /// One-way delay of every datagram, both directions, unless a client's
    /// link is configured otherwise (`set_uplink`, `set_downlink`).
    pub delay: Duration,
    /// The node's (fake) candidate address.
    pub node_addr: SocketAddr,
    /// Passed to the node's `NodeConfig`.
    pub max_peers_per_room: usize,
    pub reconnect_grace: Duration,
    pub resend: Option<ResendPolicy>,
    pub audio_red: bool,
    pub video_fec: bool,
    /// Clients negotiate RTX for VP8.
    pub client_rtx: bool,
    /// Clients offer `flexfec-03` (and decode it) instead of red/ulpfec, as
    /// webrtc-rs with its FlexFEC receiver does.
    pub client_flexfec: bool,
    /// The node estimates subscribers' bandwidth (TWCC) and allocates layers on it.
    pub bwe: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        let node_addr = SocketAddr::from(([10, 0, 0, 1], 5000));
        let node = NodeConfig::new(node_addr);
        SimConfig {
            seed: 1,
            delay: Duration::from_millis(10),
            node_addr,
            max_peers_per_room: node.max_peers_per_room,
            reconnect_grace: node.reconnect_grace,
            resend: node.resend,
            audio_red: node.audio_red,
            video_fec: node.video_fec,
            client_rtx: true,
            client_flexfec: false,
            bwe: node.bwe,
        }
    }
}

/// One RTP packet as a client's str0m delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedPacket {
    pub mid: Mid,
    pub kind: MediaKind,
    pub ssrc: u32,
    /// Extended sequence number (str0m unwraps it).
    pub seq: u64,
    /// The RTP timestamp as on the wire.
    pub ts: u32,
    pub pt: u8,
    pub marker: bool,
    pub payload: Arc<[u8]>,
    /// Virtual time of arrival at the client.
    pub at: Instant,
}

/// A datagram diverted by [`SimNet::capture_rtp_uplink`].
#[derive(Debug, Clone)]
pub struct Captured {
    pub at: Instant,
    pub source: SocketAddr,
    pub contents: Vec<u8>,
}

/// Counters of the simulated link.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkStats {
    pub to_node: u64,
    pub to_clients: u64,
    /// Dropped by the clients' links (loss, bursts, queue overflow).
    pub lost: u64,
    /// Sent by the node to an address no live client has.
    pub undeliverable: u64,
}

#[derive(Debug)]
/// One client peer: a str0m `Rtc` in RTP mode (full ICE, not lite).
pub struct SimClient {
    pub rtc: Rtc,
    pub addr: SocketAddr,
    pub peer: PeerId,
    pub room: String,
    pub identity: String,
    publish_audio: bool,
    publish_video: bool,
    /// The `rid`s of its simulcast video, if it sends simulcast.
    simulcast: Vec<String>,
    timeout: Instant,
    /// ICE + DTLS up.
    pub connected: bool,
    /// No longer driven (replaced by a reconnect, or closed by the test).
    pub closed: bool,
    outgoing: Vec<SendStream>,
    /// Receive m-lines the node added, in the order they appeared.
    pub recv_mids: Vec<(Mid, MediaKind)>,
    received: Vec<ReceivedPacket>,
    /// (m-line, sequence number) of everything in `received`.
    seen: std::collections::HashMap<(Mid, u64), Arc<[u8]>>,
    /// A sequence number that came again with another payload: the node
    /// used one number for two packets. Only partly visible: str0m drops a
    /// repeated number before the application sees it, so a collision
    /// mostly shows as loss (which tests check by delivery ratio); this
    /// counts the case where the first of the two was lost on the link.
    pub seq_conflicts: u64,
    /// Packets that arrived as RED (audio or video).
    pub red_received: u64,
    /// ULPFEC receivers, per receive m-line.
    fec_rx: std::collections::HashMap<Mid, FecReceiver>,
    flexfec_rx: std::collections::HashMap<Mid, FlexfecReceiver>,
    /// FlexFEC repair packets received.
    pub flexfec_received: u64,
    keyframe_requests: Vec<(Instant, KeyframeRequest)>,
    signals: Vec<(Instant, PeerSignal)>,
    /// Datagrams from this client to the node.
    up: Link<InFlight>,
    /// Datagrams from the node to this client.
    down: Link<InFlight>,
    capture_rtp: bool,
    captured: Vec<Captured>,
    /// Datagrams the node sent this client (before loss).
    pub datagrams_in: u64,
    pub errors: Vec<String>,
    /// When set, server offers are kept in `held_offers` instead of being
    /// answered (a slow or absent client; glare).
    pub hold_offers: bool,
    pub held_offers: Vec<(String, u64)>,
    /// Video it publishes is kept for answering NACKs (str0m's RTX cache);
    /// off, the publisher never retransmits.
    pub retransmits: bool,
    /// Audio it sends carries this RFC 6464 level (-dBov, 0 = loudest) and
    /// the voice-activity flag; `None`: no level.
    pub audio_level: Option<(u8, bool)>,
    /// How it protects what it publishes: fixed, as Chrome does (the
    /// default: nothing), or following its uplink's loss, as
    /// `meridian-client` does.
    pub protection: Protection,
    /// Its uplink's loss and RTT, from str0m's stats.
    uplink: UplinkLoss,
    /// ULPFEC packets it sent.
    pub fec_sent: u64,
    /// Video packets its ULPFEC decoder recovered.
    pub fec_recovered: u64,
    /// NACK messages received on its send streams (str0m's egress stats).
    nacks: std::collections::HashMap<Mid, u64>,
    /// RTP datagrams it transmitted, by SSRC (read from the SRTP header,
    /// which is in the clear), before its uplink could lose any.
    rtp_sent: std::collections::HashMap<u32, u64>,
    /// Bytes of the RTP datagrams it transmitted (SRTP, all SSRCs).
    pub rtp_bytes_sent: u64,
}

impl SimClient {
    /// Records (m-line, sequence number) and says whether it is new; a
    /// repeat with another payload is a conflict.
    fn first_time(&mut self, mid: Mid, seq: u64, payload: &Arc<[u8]>) -> bool {
        match self.seen.get(&(mid, seq)) {
            Some(p) => {
                if p != payload {
                    self.seq_conflicts += 1;
                }
                false
            }
            None => {
                self.seen.insert((mid, seq), payload.clone());
                true
            }
        }
    }

    /// NACK messages its send streams received (as of the last stats event).
    pub fn nacks_received(&self) -> u64 {
        self.nacks.values().sum()
    }

    /// The protection its next packets get.
    pub fn uplink_plan(&self) -> Plan {
        self.uplink.plan(self.protection)
    }

    /// RTP datagrams it transmitted with `ssrc`.
    pub fn rtp_sent(&self, ssrc: u32) -> u64 {
        self.rtp_sent.get(&ssrc).copied().unwrap_or(0)
    }

    /// Datagrams its uplink lost (media, RTCP, STUN alike).
    pub fn datagrams_lost_up(&self) -> u64 {
        self.up.stats().lost()
    }

    /// A FlexFEC repair packet (`repair`), or a media packet of a stream
    /// FlexFEC protects: decoded (`core::fec::FlexfecReceiver`), and what
    /// it rebuilds recorded. The media packet itself is the caller's.
    fn receive_flexfec(
        &mut self,
        mid: Mid,
        kind: MediaKind,
        pkt: &RtpPacket,
        repair: bool,
        now: Instant,
    ) {
        use std::collections::hash_map::Entry;
        let rx = match self.flexfec_rx.entry(mid) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => match FlexfecReceiver::for_mline(&self.rtc, mid) {
                Some(r) => v.insert(r),
                None => return,
            },
        };
        let mut out = Vec::new();
        if repair {
            self.flexfec_received += 1;
            rx.on_repair(&pkt.payload, &mut out);
        } else {
            rx.on_media(
                pkt.header_bytes.as_deref(),
                *pkt.seq_no,
                &pkt.payload,
                &mut out,
            );
        }
        let media_ssrc = self
            .rtc
            .direct_api()
            .stream_rx_by_mid(mid, None)
            .map(|s| s.ssrc());
        if let Some(ssrc) = media_ssrc {
            self.record_units(mid, kind, ssrc, out, now);
        }
    }

    /// Video in RED: unwrapped and ULPFEC-decoded (`core::fec::FecReceiver`),
    /// everything new recorded.
    fn receive_video_red(&mut self, mid: Mid, kind: MediaKind, pkt: &RtpPacket, now: Instant) {
        let ssrc = *pkt.header.ssrc;
        let Some(rx) = crate::core::fec::receiver_for(&mut self.fec_rx, &self.rtc, mid, ssrc)
        else {
            return;
        };
        let mut out = Vec::new();
        rx.on_red(
            pkt.header_bytes.as_deref(),
            *pkt.seq_no,
            pkt.header.timestamp,
            pkt.header.marker,
            &pkt.payload,
            &mut out,
        );
        self.red_received += 1;
        self.record_units(mid, kind, pkt.header.ssrc, out, now);
    }

    /// What came out of RED or a FEC decoder for the media stream `ssrc`:
    /// each new sequence number recorded; a rebuilt one counted and, as
    /// libwebrtc's receiver does, marked in str0m so it is not NACKed.
    fn record_units(
        &mut self,
        mid: Mid,
        kind: MediaKind,
        ssrc: str0m::rtp::Ssrc,
        units: Vec<crate::core::fec::Unwrapped>,
        now: Instant,
    ) {
        for u in units {
            if !self.first_time(mid, u.seq, &u.payload) {
                continue;
            }
            if u.recovered {
                self.fec_recovered += 1;
                if let Some(rx) = self.rtc.direct_api().stream_rx(&ssrc) {
                    rx.mark_recovered(u.seq.into());
                }
            }
            self.received.push(ReceivedPacket {
                mid,
                kind,
                ssrc: *ssrc,
                seq: u.seq,
                ts: u.ts,
                pt: u.pt,
                marker: u.marker,
                payload: u.payload,
                at: now,
            });
        }
    }
}

#[derive(Debug, Clone)]
struct InFlight {
    from: SocketAddr,
    to: SocketAddr,
    contents: Vec<u8>,
}

/// The simulated network. See the module documentation.
pub struct SimNet {
    node: Node,
    config: SimConfig,
    start: Instant,
    now: Instant,
    node_timeout: Instant,
    clients: Vec<SimClient>,
    rng: SmallRng,
    /// Links made so far (each gets its own seed).
    links_made: u64,
    link: LinkStats,
    gone: Vec<(Instant, PeerId, &'static str)>,
    next_addr: u32,
}

/// The offer as a receiver without RTX would see it: no `rtx` formats, no
/// FID groups (so its answer has no RTX either).
fn without_rtx(sdp: &str) -> String {
    let rtx: Vec<String> = sdp
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("a=rtpmap:")?;
            let (pt, name) = rest.split_once(' ')?;
            name.to_ascii_lowercase()
                .starts_with("rtx/")
                .then(|| pt.to_string())
        })
        .collect();
    let drops = |l: &str| {
        l.starts_with("a=ssrc-group:FID")
            || rtx.iter().any(|pt| {
                [
                    format!("a=rtpmap:{pt} "),
                    format!("a=fmtp:{pt} "),
                    format!("a=rtcp-fb:{pt} "),
                ]
                .iter()
                .any(|p| l.starts_with(p.as_str()))
            })
    };
    sdp.lines()
        .filter(|l| !drops(l))
        .map(|l| {
            if !l.starts_with("m=") {
                return l.to_string();
            }
            l.split(' ')
                .filter(|f| !rtx.iter().any(|pt| pt == f))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\r\n")
        + "\r\n"
}

fn is_rtcp(buf: &[u8]) -> bool {
    // RFC 5761: RTCP packet types 192..=223 share the first two bytes' space with RTP.
    buf.len() > 1 && (192..=223).contains(&buf[1])
}

/// True for an RTP (not RTCP) datagram, by RFC 7983 demultiplexing.
pub fn is_rtp(buf: &[u8]) -> bool {
    matches!(buf.first(), Some(128..=191)) && !is_rtcp(buf)
}

impl SimNet {
    pub fn new(config: SimConfig) -> Self {
        let start = Instant::now();
        let mut node_config = NodeConfig::new(config.node_addr);
        node_config.seed = Some(config.seed);
        node_config.max_peers_per_room = config.max_peers_per_room;
        node_config.reconnect_grace = config.reconnect_grace;
        node_config.resend = config.resend;
        node_config.audio_red = config.audio_red;
        node_config.video_fec = config.video_fec;
        node_config.bwe = config.bwe;
        let node = Node::new(node_config, start);
        SimNet {
            node,
            rng: SmallRng::seed_from_u64(config.seed ^ 0x5eed_5eed),
            config,
            start,
            now: start,
            node_timeout: start,
            clients: Vec::new(),
            links_made: 0,
            link: LinkStats::default(),
            gone: Vec::new(),
            next_addr: 1,
        }
    }

    // ------------------------------------------------------------ accessors

    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time since the simulation started.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The node itself, for driving it by hand (benchmarks). Call
    /// [`SimNet::drain_node`] afterwards so the harness sees its output.
    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    pub fn node_addr(&self) -> SocketAddr {
        self.config.node_addr
    }

    pub fn stats(&self) -> NodeStats {
        self.node.stats()
    }

    pub fn link_stats(&self) -> LinkStats {
        let lost = self
            .clients
            .iter()
            .map(|c| c.up.stats().lost() + c.down.stats().lost())
            .sum();
        LinkStats { lost, ..self.link }
    }

    pub fn clients_len(&self) -> usize {
        self.clients.len()
    }

    pub fn client(&self, id: ClientId) -> &SimClient {
        &self.clients[id.0]
    }

    pub fn client_mut(&mut self, id: ClientId) -> &mut SimClient {
        &mut self.clients[id.0]
    }

    pub fn received(&self, id: ClientId) -> &[ReceivedPacket] {
        &self.clients[id.0].received
    }

    /// Keyframe requests (PLI/FIR) the client's str0m reported for its
    /// outgoing streams, with their arrival time.
    pub fn keyframe_requests(&self, id: ClientId) -> &[(Instant, KeyframeRequest)] {
        &self.clients[id.0].keyframe_requests
    }

    /// Signals the node sent this client, except offers (answered here).
    pub fn signals(&self, id: ClientId) -> &[(Instant, PeerSignal)] {
        &self.clients[id.0].signals
    }

    /// Peers the node reported gone.
    pub fn gone(&self) -> &[(Instant, PeerId, &'static str)] {
        &self.gone
    }

    /// The publisher sends its video as `codec` from now on (VP8 unless
    /// changed; the node offers and accepts H.264 too).
    pub fn set_video_codec(&mut self, id: ClientId, codec: Codec) {
        for out in &mut self.clients[id.0].outgoing {
            if out.kind == MediaKind::Video {
                out.set_codec(codec);
            }
        }
    }

    /// The m-line a client publishes `kind` on.
    pub fn send_mid(&self, id: ClientId, kind: MediaKind) -> Option<Mid> {
        let c = &self.clients[id.0];
        c.outgoing.iter().find(|o| o.kind == kind).map(|o| o.mid)
    }

    /// The receive m-lines of a client carrying `kind`.
    pub fn recv_mids(&self, id: ClientId, kind: MediaKind) -> Vec<Mid> {
        let c = &self.clients[id.0];
        c.recv_mids
            .iter()
            .filter(|(_, k)| *k == kind)
            .map(|(m, _)| *m)
            .collect()
    }

    // ------------------------------------------------------------ link

    fn new_link(&mut self, config: LinkConfig) -> Link<InFlight> {
        self.links_made += 1;
        let seed = self.config.seed ^ self.links_made.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Link::new(config, seed)
    }

    /// The default link: the configured fixed delay, nothing else.
    pub fn default_link(&self) -> LinkConfig {
        LinkConfig {
            delay: self.config.delay,
            ..LinkConfig::default()
        }
    }

    /// Replaces the node → client link. Datagrams in flight on the old link
    /// are lost, as on a real network change.
    pub fn set_downlink(&mut self, id: ClientId, config: LinkConfig) {
        let link = self.new_link(config);
        self.clients[id.0].down = link;
    }

    /// Replaces the client → node link (see `set_downlink`).
    pub fn set_uplink(&mut self, id: ClientId, config: LinkConfig) {
        let link = self.new_link(config);
        self.clients[id.0].up = link;
    }

    /// Random loss on the node → client direction, on the default link.
    pub fn set_downlink_loss(&mut self, id: ClientId, p: f64) {
        let config = LinkConfig {
            loss: p,
            ..self.default_link()
        };
        self.set_downlink(id, config);
    }

    /// Random loss on the client → node direction, on the default link.
    pub fn set_uplink_loss(&mut self, id: ClientId, p: f64) {
        let config = LinkConfig {
            loss: p,
            ..self.default_link()
        };
        self.set_uplink(id, config);
    }

    /// Diverts the client's RTP datagrams (not RTCP, STUN or DTLS) towards
    /// the node into a buffer, to be fed to the node by hand (benchmarks).
    pub fn capture_rtp_uplink(&mut self, id: ClientId, on: bool) {
        self.clients[id.0].capture_rtp = on;
    }

    pub fn take_captured(&mut self, id: ClientId) -> Vec<Captured> {
        std::mem::take(&mut self.clients[id.0].captured)
    }

    /// Puts a raw datagram on the wire from the client's address to the node.
    pub fn inject_to_node(&mut self, id: ClientId, contents: Vec<u8>) {
        let now = self.now;
        let to = self.config.node_addr;
        let c = &mut self.clients[id.0];
        let d = InFlight {
            from: c.addr,
            to,
            contents,
        };
        c.up.push(now, d.contents.len(), d);
    }

    fn next_client_addr(&mut self) -> SocketAddr {
        let n = self.next_addr;
        self.next_addr += 1;
        SocketAddr::from(([10, 1, (n >> 8) as u8, n as u8], 40_000))
    }

    // ------------------------------------------------------------ peers

    /// A client that publishes audio and/or video (and subscribes to
    /// everything), connected before this returns.
    pub fn add_publisher(
        &mut self,
        room: &str,
        identity: &str,
        audio: bool,
        video: bool,
    ) -> ClientId {
        let id = self.open_client(room, identity, audio, video);
        self.run_until_connected(id);
        id
    }

    /// A client that publishes nothing and subscribes to everything (the
    /// node adds receive m-lines with its own offers), connected before
    /// this returns.
    pub fn add_subscriber(&mut self, room: &str, identity: &str) -> ClientId {
        let id = self.open_client(room, identity, false, false);
        self.run_until_connected(id);
        id
    }

    /// The publisher's session is replaced by a new one of the same identity
    /// (a page reload): the old client stops at once, a new client with a
    /// new address, new SSRCs and a new sequence base joins and publishes
    /// the same kinds. Returns the new client, connected.
    pub fn reconnect_publisher(&mut self, old: ClientId) -> ClientId {
        let c = &mut self.clients[old.0];
        c.closed = true;
        let (room, identity, audio, video, rids) = (
            c.room.clone(),
            c.identity.clone(),
            c.publish_audio,
            c.publish_video,
            c.simulcast.clone(),
        );
        let rids: Vec<&str> = rids.iter().map(String::as_str).collect();
        let id = self.open_client_simulcast(&room, &identity, audio, video, &rids);
        self.run_until_connected(id);
        id
    }

    /// A publisher whose video goes as simulcast, one encoding per `rid`
    /// (send each with [`SimNet::send_rtp_layer`]), connected before this
    /// returns.
    pub fn add_simulcast_publisher(
        &mut self,
        room: &str,
        identity: &str,
        audio: bool,
        rids: &[&str],
    ) -> ClientId {
        let id = self.open_client_simulcast(room, identity, audio, true, rids);
        self.run_until_connected(id);
        id
    }

    /// Signaling of one client: join, offer, answer. Does not run the net.
    pub fn open_client(
        &mut self,
        room: &str,
        identity: &str,
        audio: bool,
        video: bool,
    ) -> ClientId {
        self.open_client_simulcast(room, identity, audio, video, &[])
    }

    /// [`SimNet::open_client`], with simulcast video when `rids` is not empty.
    pub fn open_client_simulcast(
        &mut self,
        room: &str,
        identity: &str,
        audio: bool,
        video: bool,
        rids: &[&str],
    ) -> ClientId {
        let now = self.now;
        let addr = self.next_client_addr();
        let req = JoinRequest {
            room: RoomId(room.to_string()),
            identity: identity.to_string(),
            name: identity.to_string(),
            kind: JoinKind::WebSocket,
            can_publish: true,
            can_subscribe: true,
            auto_subscribe: true,
        };
        let (peer, _participants) = self.node.join(now, req).expect("join");
        // Header bytes as received: ULPFEC recovery needs the packets as sent.
        let mut rtc = crate::core::codec::rtc_config()
            .enable_flexfec(self.config.client_flexfec)
            // The node prefers ULPFEC where both are negotiated.
            .enable_video_fec(!self.config.client_flexfec)
            .keep_rtp_header_bytes(true)
            .set_stats_interval(Some(Duration::from_secs(1)))
            .build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("host candidate"));
        let mut api = rtc.sdp_api();
        let mut outgoing = Vec::new();
        for (on, kind, codec) in [
            (audio, MediaKind::Audio, Codec::Opus),
            (video, MediaKind::Video, Codec::Vp8),
        ] {
            if on {
                let layered = kind == MediaKind::Video && !rids.is_empty();
                let simulcast = layered.then(|| {
                    let mut s = Simulcast::new();
                    for r in rids {
                        s.add_send_layer(SimulcastLayer::new(r));
                    }
                    s
                });
                let mid = api.add_media(kind, Direction::SendOnly, None, None, simulcast);
                let layers: Vec<Option<Rid>> = if layered {
                    rids.iter().map(|r| Some(Rid::from(*r))).collect()
                } else {
                    vec![None]
                };
                for rid in layers {
                    // A random base per session, as a browser picks one.
                    let first_seq = self.rng.random_range(1..u16::MAX) as u64;
                    outgoing.push(SendStream::new(kind, mid, rid, codec, first_seq));
                }
            }
        }
        api.add_channel("meridian".into());
        let (offer, pending) = api.apply().expect("an offer with a data channel");
        let answer = self
            .node
            .handle_offer(now, peer, &offer.to_sdp_string())
            .expect("the node accepts the client's offer");
        let answer = SdpAnswer::from_sdp_string(&answer).expect("the node's answer parses");
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .expect("the client accepts the node's answer");
        let id = ClientId(self.clients.len());
        let (up, down) = (
            self.new_link(self.default_link()),
            self.new_link(self.default_link()),
        );
        self.clients.push(SimClient {
            rtc,
            addr,
            peer,
            room: room.to_string(),
            identity: identity.to_string(),
            publish_audio: audio,
            publish_video: video,
            simulcast: rids.iter().map(|r| r.to_string()).collect(),
            timeout: now,
            connected: false,
            closed: false,
            outgoing,
            recv_mids: Vec::new(),
            received: Vec::new(),
            seen: Default::default(),
            seq_conflicts: 0,
            red_received: 0,
            fec_rx: Default::default(),
            flexfec_rx: Default::default(),
            flexfec_received: 0,
            keyframe_requests: Vec::new(),
            signals: Vec::new(),
            up,
            down,
            capture_rtp: false,
            captured: Vec::new(),
            datagrams_in: 0,
            errors: Vec::new(),
            hold_offers: false,
            held_offers: Vec::new(),
            retransmits: true,
            audio_level: None,
            protection: Protection::default(),
            uplink: UplinkLoss::new(),
            fec_sent: 0,
            fec_recovered: 0,
            nacks: Default::default(),
            rtp_sent: Default::default(),
            rtp_bytes_sent: 0,
        });
        self.drain_client(id);
        self.drain_node();
        id
    }

    /// Runs until the client reports ICE + DTLS connected.
    pub fn run_until_connected(&mut self, id: ClientId) {
        let limit = self.now + CONNECT_LIMIT;
        while !self.clients[id.0].connected {
            assert!(
                self.now < limit,
                "client {id:?} did not connect within {CONNECT_LIMIT:?}: {:?}",
                self.clients[id.0].errors
            );
            let next = self.next_wakeup().min(limit);
            self.run_until(next);
        }
    }

    /// The client leaves through signaling (`Node::leave`). Its str0m keeps
    /// running, like a client whose leave message went out but which still
    /// sends what it had scheduled.
    pub fn leave(&mut self, id: ClientId) {
        let peer = self.clients[id.0].peer;
        self.node.leave(self.now, peer);
        self.drain_node();
    }

    /// Stops driving the client: it vanishes without a word.
    pub fn close(&mut self, id: ClientId) {
        self.clients[id.0].closed = true;
    }

    pub fn set_muted(&mut self, id: ClientId, kind: MediaKind, muted: bool) {
        let mid = self
            .send_mid(id, kind)
            .expect("the client publishes this kind");
        let peer = self.clients[id.0].peer;
        self.node
            .set_muted(self.now, peer, MuteTarget::Mid(mid), muted)
            .expect("set_muted");
        self.drain_node();
    }

    // ------------------------------------------------------------ media

    /// The publisher sends one RTP packet on its `kind` m-line at the
    /// current virtual time. Returns the (extended) sequence number used.
    pub fn send_rtp(
        &mut self,
        id: ClientId,
        kind: MediaKind,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> u64 {
        self.send_rtp_layer(id, kind, None, timestamp, marker, payload)
    }

    /// [`SimNet::send_rtp`] on one simulcast layer (`rid`) of the m-line.
    pub fn send_rtp_layer(
        &mut self,
        id: ClientId,
        kind: MediaKind,
        rid: Option<&str>,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> u64 {
        let now = self.now;
        let c = &mut self.clients[id.0];
        let rid = rid.map(Rid::from);
        let out = c
            .outgoing
            .iter_mut()
            .find(|o| o.kind == kind && (rid.is_none() || o.rid == rid))
            .expect("the client publishes this kind (and layer)");
        let mut ext = ExtensionValues::default();
        if let (MediaKind::Audio, Some((level, voice))) = (kind, c.audio_level) {
            ext.audio_level = Some(-(level.min(127) as i8));
            ext.voice_activity = Some(voice);
        }
        let media = Media {
            timestamp,
            marker,
            payload: payload.to_vec(),
            ext,
            nackable: c.retransmits,
        };
        let plan = c.uplink.plan(c.protection);
        let seq = out
            .write(&mut c.rtc, now, media, &plan)
            .expect("the codec was negotiated");
        // str0m sends written RTP on the next tick.
        if let Err(e) = c.rtc.handle_input(Input::Timeout(now)) {
            c.errors.push(e.to_string());
        }
        self.drain_client(id);
        // Video FEC for what went out (a frame's, after its last packet).
        let c = &mut self.clients[id.0];
        let mut fec = 0;
        for out in c.outgoing.iter_mut().filter(|o| o.kind == MediaKind::Video) {
            fec += out.write_fec(&mut c.rtc, now);
        }
        if fec > 0 {
            c.fec_sent += fec as u64;
            if let Err(e) = c.rtc.handle_input(Input::Timeout(now)) {
                c.errors.push(e.to_string());
            }
            self.drain_client(id);
        }
        seq
    }

    /// The subscriber's str0m sends a PLI for the stream it receives on `mid`.
    /// The client makes an offer of its own (adding a send-only audio
    /// m-line), as a browser does when it starts sharing something. Returns
    /// the node's verdict; on success the client applies the answer.
    pub fn client_offer(&mut self, id: ClientId) -> Result<(), crate::core::CommandError> {
        let now = self.now;
        let c = &mut self.clients[id.0];
        let mut api = c.rtc.sdp_api();
        api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let (offer, pending) = api.apply().expect("an offer with a new m-line");
        let answer = self
            .node
            .handle_offer(now, c.peer, &offer.to_sdp_string())?;
        let answer = SdpAnswer::from_sdp_string(&answer).expect("the node's answer parses");
        c.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("the client accepts the node's answer");
        self.drain_client(id);
        self.drain_node();
        Ok(())
    }

    /// Answers the newest held server offer (and forgets the older ones).
    pub fn answer_held(&mut self, id: ClientId) -> Result<(), crate::core::CommandError> {
        let now = self.now;
        let c = &mut self.clients[id.0];
        let Some((sdp, seq)) = c.held_offers.pop() else {
            return Ok(());
        };
        c.held_offers.clear();
        let offer = SdpOffer::from_sdp_string(&sdp).expect("the node's offer parses");
        let answer = c
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .expect("the client accepts the node's offer");
        let peer = c.peer;
        let r = self
            .node
            .handle_answer(now, peer, &answer.to_sdp_string(), seq);
        self.drain_client(id);
        self.drain_node();
        r
    }

    pub fn request_keyframe_from(&mut self, id: ClientId, mid: Mid) {
        let now = self.now;
        let c = &mut self.clients[id.0];
        let mut api = c.rtc.direct_api();
        let rx = api
            .stream_rx_by_mid(mid, None)
            .expect("a receive stream on the m-line (has media arrived yet?)");
        rx.request_keyframe(KeyframeRequestKind::Pli);
        if let Err(e) = c.rtc.handle_input(Input::Timeout(now)) {
            c.errors.push(e.to_string());
        }
        self.drain_client(id);
    }

    // ------------------------------------------------------------ time

    /// Moves the clock without processing anything (benchmarks generate
    /// packets at successive instants this way); the next `run_*` call
    /// handles what came due meanwhile.
    pub fn set_clock(&mut self, t: Instant) {
        if t > self.now {
            self.now = t;
        }
    }

    /// When something next has to happen.
    pub fn next_wakeup(&self) -> Instant {
        let mut t = self.node_timeout;
        for c in &self.clients {
            for due in [c.up.poll_timeout(), c.down.poll_timeout()]
                .into_iter()
                .flatten()
            {
                t = t.min(due);
            }
            if !c.closed {
                t = t.min(c.timeout);
            }
        }
        t.max(self.now)
    }

    /// Advances to the next wake-up (if it is not after `limit`) and
    /// processes it. Returns false if nothing was due by `limit`.
    pub fn step(&mut self, limit: Instant) -> bool {
        let t = self.next_wakeup();
        if t > limit {
            return false;
        }
        self.now = t;
        self.process_due();
        true
    }

    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Processes everything due up to `deadline`, then sets the clock to it.
    /// Panics after a bounded number of steps (livelock).
    pub fn run_until(&mut self, deadline: Instant) {
        let span = deadline.saturating_duration_since(self.now);
        let max_steps = STEPS_BASE + STEPS_PER_MS * span.as_millis() as u64;
        let mut steps = 0u64;
        while self.step(deadline) {
            steps += 1;
            assert!(
                steps <= max_steps,
                "livelock: {steps} steps without reaching {:?} (now {:?}, node timeout {:?}, in flight {})",
                deadline - self.start,
                self.now - self.start,
                self.node_timeout.saturating_duration_since(self.start),
                self.clients
                    .iter()
                    .map(|c| c.up.in_flight() + c.down.in_flight())
                    .sum::<usize>(),
            );
        }
        self.set_clock(deadline);
    }

    fn process_due(&mut self) {
        let now = self.now;
        for i in 0..self.clients.len() {
            while let Some(d) = self.clients[i].up.poll(now) {
                self.deliver(d);
            }
            while let Some(d) = self.clients[i].down.poll(now) {
                self.deliver(d);
            }
        }
        for i in 0..self.clients.len() {
            let c = &mut self.clients[i];
            if c.closed || c.timeout > now {
                continue;
            }
            if let Err(e) = c.rtc.handle_input(Input::Timeout(now)) {
                c.errors.push(e.to_string());
            }
            self.drain_client(ClientId(i));
            let c = &mut self.clients[i];
            if c.timeout <= now {
                c.timeout = now + FORCED_ADVANCE;
            }
        }
        if self.node_timeout <= now {
            self.node.handle_timeout(now);
            self.drain_node();
            if self.node_timeout <= now {
                self.node_timeout = now + FORCED_ADVANCE;
            }
        }
    }

    fn deliver(&mut self, d: InFlight) {
        let now = self.now;
        if d.to == self.config.node_addr {
            self.node.handle_receive(now, d.from, d.to, &d.contents);
            self.drain_node();
            return;
        }
        let Some(i) = self
            .clients
            .iter()
            .position(|c| c.addr == d.to && !c.closed)
        else {
            return;
        };
        let c = &mut self.clients[i];
        let Ok(contents) = d.contents.as_slice().try_into() else {
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source: d.from,
                destination: d.to,
                contents,
            },
        );
        if let Err(e) = c.rtc.handle_input(input) {
            c.errors.push(e.to_string());
        }
        // str0m holds one received RTP packet until polled: drain now.
        self.drain_client(ClientId(i));
    }

    // ------------------------------------------------------------ draining

    fn drain_client(&mut self, id: ClientId) {
        let now = self.now;
        let node_addr = self.config.node_addr;
        let nack_without_rtx = !self.config.client_rtx;
        let c = &mut self.clients[id.0];
        loop {
            if !c.rtc.is_alive() {
                c.timeout = now + Duration::from_secs(3600);
                return;
            }
            let out = match c.rtc.poll_output() {
                Ok(o) => o,
                Err(e) => {
                    c.errors.push(e.to_string());
                    c.timeout = now + FORCED_ADVANCE;
                    return;
                }
            };
            match out {
                RtcOutput::Timeout(t) => {
                    c.timeout = t;
                    return;
                }
                RtcOutput::Transmit(t) => {
                    if t.destination != node_addr {
                        continue;
                    }
                    if c.capture_rtp && is_rtp(&t.contents) {
                        c.captured.push(Captured {
                            at: now,
                            source: t.source,
                            contents: t.contents.to_vec(),
                        });
                        continue;
                    }
                    self.link.to_node += 1;
                    if is_rtp(&t.contents) {
                        c.rtp_bytes_sent += t.contents.len() as u64;
                        if let Some(ssrc) = t.contents.get(8..12) {
                            let ssrc = u32::from_be_bytes([ssrc[0], ssrc[1], ssrc[2], ssrc[3]]);
                            *c.rtp_sent.entry(ssrc).or_default() += 1;
                        }
                    }
                    let d = InFlight {
                        from: t.source,
                        to: t.destination,
                        contents: t.contents.to_vec(),
                    };
                    c.up.push(now, d.contents.len(), d);
                }
                RtcOutput::Event(e) => match e {
                    Event::Connected => c.connected = true,
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        c.errors.push("ICE disconnected".into());
                    }
                    Event::MediaAdded(m) if m.direction.is_receiving() => {
                        c.recv_mids.push((m.mid, m.kind));
                    }
                    Event::KeyframeRequest(r) => c.keyframe_requests.push((now, r)),
                    Event::MediaEgressStats(s) => {
                        c.nacks.insert(s.mid, s.nacks);
                        if let Some(rtt) = s.rtt {
                            c.uplink.on_rtt(rtt);
                        }
                    }
                    Event::PeerStats(s) => {
                        c.uplink.on_peer_stats(now, s.egress_loss_fraction);
                    }
                    Event::RtpPacket(pkt) => {
                        let ssrc = pkt.header.ssrc;
                        if nack_without_rtx {
                            // str0m NACKs only with RTX; a receiver without
                            // RTX that NACKs gets plain retransmissions.
                            if let Some(rx) = c.rtc.direct_api().stream_rx(&ssrc) {
                                rx.suppress_nack(false);
                            }
                        }
                        let Some(mid) = c.rtc.direct_api().stream_rx(&ssrc).map(|s| s.mid()) else {
                            c.errors.push(format!("RTP on unknown SSRC {ssrc}"));
                            continue;
                        };
                        let Some(kind) = c.rtc.media(mid).map(|m| m.kind()) else {
                            continue;
                        };
                        let pt = pkt.header.payload_type;
                        let (fec_repair, fec_protected) = c
                            .rtc
                            .direct_api()
                            .stream_rx(&ssrc)
                            .map_or((false, false), |s| {
                                (s.is_fec_repair(), s.is_fec_protected())
                            });
                        if fec_repair {
                            c.receive_flexfec(mid, kind, &pkt, true, now);
                            continue;
                        }
                        if video_fec_pts(&c.rtc, mid).is_some_and(|(red, _)| red == pt) {
                            c.receive_video_red(mid, kind, &pkt, now);
                            continue;
                        }
                        let red_of = c
                            .rtc
                            .codec_config()
                            .params()
                            .iter()
                            .find(|p| p.red() == Some(pt))
                            .map(|p| p.pt());
                        let seq = *pkt.seq_no;
                        let base = ReceivedPacket {
                            mid,
                            kind,
                            ssrc: *ssrc,
                            seq,
                            ts: pkt.header.timestamp,
                            pt: *pt,
                            marker: pkt.header.marker,
                            payload: pkt.payload.clone(),
                            at: now,
                        };
                        let Some(primary_pt) = red_of else {
                            if c.first_time(mid, seq, &base.payload) {
                                c.received.push(base);
                            }
                            if fec_protected {
                                c.receive_flexfec(mid, kind, &pkt, false, now);
                            }
                            continue;
                        };
                        c.red_received += 1;
                        // RED (RFC 2198): the primary, and copies of the
                        // previous packets (one sequence number apart).
                        let Ok(red) = meridian_fec::red::parse(&pkt.payload) else {
                            c.errors.push(format!("bad RED payload at seq {seq}"));
                            continue;
                        };
                        let n = red.blocks().len() as u64;
                        for (k, b) in red.blocks().iter().enumerate() {
                            let Some(s) = seq.checked_sub(n - 1 - k as u64) else {
                                continue;
                            };
                            let data: Arc<[u8]> = Arc::from(b.data);
                            if !c.first_time(mid, s, &data) {
                                continue;
                            }
                            c.received.push(ReceivedPacket {
                                seq: s,
                                ts: base.ts.wrapping_sub(u32::from(b.ts_offset)),
                                pt: *primary_pt,
                                marker: b.is_primary && base.marker,
                                payload: data,
                                ..base.clone()
                            });
                        }
                    }
                    _ => {}
                },
            }
        }
    }

    /// Captured datagrams through the node as one batch (as the worker
    /// reads them), then its output drained by hand: each datagram goes to
    /// `on_transmit` instead of the simulated wire, in the node's order.
    /// Returns how many events (signaling) the node produced. For benchmarks
    /// and for tests of what one drain emits.
    #[inline]
    pub fn forward_captured(
        &mut self,
        batch: &[Captured],
        mut on_transmit: impl FnMut(&str0m::net::Transmit),
    ) -> u64 {
        let node_addr = self.config.node_addr;
        for c in batch {
            self.node
                .handle_receive(c.at, c.source, node_addr, &c.contents);
        }
        let mut events = 0;
        loop {
            match self.node.poll_output() {
                Output::Transmit(t) => on_transmit(&t),
                Output::Event(_) => events += 1,
                Output::Timeout(_) => return events,
            }
        }
    }

    /// Drains the node's output into the wire and the clients' signaling.
    /// Call after driving the node by hand.
    pub fn drain_node(&mut self) {
        loop {
            match self.node.poll_output() {
                Output::Timeout(t) => {
                    self.node_timeout = t;
                    return;
                }
                Output::Transmit(t) => {
                    let Some(c) = self
                        .clients
                        .iter_mut()
                        .find(|c| c.addr == t.destination && !c.closed)
                    else {
                        self.link.undeliverable += 1;
                        continue;
                    };
                    c.datagrams_in += 1;
                    self.link.to_clients += 1;
                    let d = InFlight {
                        from: t.source,
                        to: t.destination,
                        contents: t.contents.to_vec(),
                    };
                    c.down.push(self.now, d.contents.len(), d);
                }
                Output::Event(NodeEvent::Signal(peer, signal)) => self.on_signal(peer, signal),
                Output::Event(NodeEvent::PeerGone { peer, reason }) => {
                    self.gone.push((self.now, peer, reason));
                }
            }
        }
    }

    fn on_signal(&mut self, peer: PeerId, signal: PeerSignal) {
        let now = self.now;
        let Some(i) = self
            .clients
            .iter()
            .position(|c| c.peer == peer && !c.closed)
        else {
            return;
        };
        match signal {
            PeerSignal::Offer { sdp, seq } if self.clients[i].hold_offers => {
                self.clients[i].held_offers.push((sdp, seq));
            }
            PeerSignal::Offer { sdp, seq } => {
                let sdp = if self.config.client_rtx {
                    sdp
                } else {
                    without_rtx(&sdp)
                };
                let c = &mut self.clients[i];
                let offer = SdpOffer::from_sdp_string(&sdp).expect("the node's offer parses");
                let answer = c
                    .rtc
                    .sdp_api()
                    .accept_offer(offer)
                    .expect("the client accepts the node's offer");
                self.node
                    .handle_answer(now, peer, &answer.to_sdp_string(), seq)
                    .expect("the node accepts the client's answer");
                self.drain_client(ClientId(i));
            }
            other => self.clients[i].signals.push((now, other)),
        }
    }
}
