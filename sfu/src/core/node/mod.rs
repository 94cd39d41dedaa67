//! The node: every room, peer and track of one SFU process (one shard).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::channel::ChannelData;
use str0m::config::DtlsCert;
use str0m::format::PayloadParams;
use str0m::media::{
    Direction, KeyframeRequest, KeyframeRequestKind, MediaAdded, MediaKind, Mid, Pt, ResendRequest,
    Rid,
};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};
use str0m::{Candidate, Event, IceConnectionState, Input, Rtc, RtcConfig};
use tracing::{debug, trace, warn};

use super::codec::{is_keyframe, CodecKind};
use super::demux::{Demux, DemuxMiss};
use super::fec::{FecForm, FecPacket, Unwrapped, VideoFec};
use super::forward::{Decision, Forwarder, FwdPacket};
use super::history::{
    HistPacket, ResendOutcome, ResendPolicy, SentPacket, Sequencer, AUDIO_PACKETS, HISTORY_PACKETS,
    SEQUENCER_PACKETS,
};
use super::ids::{PeerId, RoomId, TrackId};
use super::peer::{Negotiation, OutTrack, Peer, PeerKind, PendingOffer, PtMap, Published};
use super::redundancy::{unred, AudioRecent, LossEstimate, RedLevel, Unred, MAX_LEVEL};
use super::rewrite::SourceKey;
use super::room::{Room, Track};
use super::simulcast::{self, TrackLayers, MAX_LAYERS};
use super::vp8::{self, Vp8Munger};
use super::{DropCounters, DropReason};

mod selection;
pub(crate) use selection::Selection;
pub use selection::{SelectionState, TrackPrefs};

/// How often the node does its housekeeping (orphaned tracks, connect
/// deadlines, merged keyframe requests, demux eviction).
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(100);

/// How often idle demux entries are evicted.
const DEMUX_EVICT_INTERVAL: Duration = Duration::from_secs(10);

/// A peer that has not completed ICE + DTLS this long after its SDP was
/// accepted is removed; a client that never connects must not hold state.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A peer whose ICE stays disconnected this long is removed. ICE's
/// "disconnected" is transient: on a lossy link a run of lost binding
/// requests gets there, and the next one that arrives brings it back (media
/// keeps flowing meanwhile). str0m's ICE-lite agent counts a pair as alive
/// for 15 s after the remote's last binding request; consent freshness
/// (RFC 7675) gives up after 30 s.
const ICE_DISCONNECT_GRACE: Duration = Duration::from_secs(15);

/// Round-trip time assumed for a subscriber until its receiver reports
/// give one.
const DEFAULT_RTT: Duration = Duration::from_millis(100);

/// How often str0m reports per-stream stats (RTT and loss from RTCP RR).
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Most m-lines one offer may carry. Every published m-line becomes a track
/// that every other peer in the room is told about and (with auto-subscribe)
/// offered; a browser publishes 2–4.
pub const MAX_MEDIA_PER_OFFER: usize = 16;

/// Most labels a peer may set (one per own m-line is the normal use).
const MAX_LABELS: usize = MAX_MEDIA_PER_OFFER;

/// A server offer not answered by then is abandoned and made again; after
/// `MAX_UNANSWERED_OFFERS` in a row the peer is removed.
const OFFER_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_UNANSWERED_OFFERS: u32 = 3;

/// Data-channel messages above this size are dropped rather than fanned out.
const MAX_CHAT_MESSAGE: usize = 16 * 1024;

/// Default room size limit: large enough for webinars on one node, small
/// enough that one room cannot take every peer slot by accident.
pub const DEFAULT_MAX_PEERS_PER_ROOM: usize = 1000;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The address put in ICE candidates (the UDP socket's, or `--public-ip`).
    pub candidate_addr: SocketAddr,
    pub max_peers_per_room: usize,
    /// How long a lost publisher's tracks wait for the same identity to come
    /// back before they are unpublished.
    pub reconnect_grace: Duration,
    /// Seed for start sequence numbers and timestamps; `None` draws one
    /// from the OS. Tests set it to be reproducible.
    pub seed: Option<u64>,
    /// How subscriber NACKs are answered; `None`: they are not (for
    /// measuring what recovery brings).
    pub resend: Option<ResendPolicy>,
    /// Audio to subscribers whose links lose packets goes as RED (when
    /// they negotiated it).
    pub audio_red: bool,
    /// Video to subscribers whose links lose packets is protected with
    /// FlexFEC or ULPFEC in RED (whichever they negotiated; FlexFEC first).
    pub video_fec: bool,
    /// Offer `flexfec-03` (with `video_fec`); off, only ULPFEC is offered.
    pub flexfec: bool,
    /// Estimate each subscriber's downlink (TWCC, str0m's BWE) and choose
    /// layers with it; off, only REMB and tile sizes limit layers. The
    /// estimate steers the allocator, not the pacer: see [`PACER_QUEUE_LIMIT`].
    pub bwe: bool,
}

impl NodeConfig {
    pub fn new(candidate_addr: SocketAddr) -> Self {
        NodeConfig {
            candidate_addr,
            max_peers_per_room: DEFAULT_MAX_PEERS_PER_ROOM,
            reconnect_grace: Duration::from_secs(10),
            seed: None,
            resend: Some(ResendPolicy::default()),
            audio_red: true,
            video_fec: true,
            flexfec: true,
            bwe: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinKind {
    WebSocket,
    Whip,
    Whep { target: Option<String> },
}

#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub room: RoomId,
    pub identity: String,
    pub name: String,
    pub kind: JoinKind,
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub auto_subscribe: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    pub track_id: TrackId,
    pub kind: MediaKind,
    pub muted: bool,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantInfo {
    pub peer_id: PeerId,
    pub identity: String,
    pub name: String,
    pub tracks: Vec<TrackInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackMapEntry {
    pub mid: String,
    pub track_id: TrackId,
    pub peer_id: Option<PeerId>,
}

/// A message for one peer's signaling session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSignal {
    Offer {
        sdp: String,
        seq: u64,
    },
    TrackMap(Vec<TrackMapEntry>),
    ParticipantJoined(ParticipantInfo),
    ParticipantLeft(PeerId),
    TrackPublished {
        peer_id: PeerId,
        track: TrackInfo,
    },
    TrackUnpublished {
        peer_id: PeerId,
        track_id: TrackId,
    },
    TrackMuted {
        peer_id: PeerId,
        track_id: TrackId,
        muted: bool,
    },
    /// A track this subscriber receives is paused for lack of bandwidth
    /// (or resumed).
    TrackPaused {
        track_id: TrackId,
        paused: bool,
    },
    /// To a publisher: send only the layers marked active of this m-line
    /// (dynacast), as (rid, active).
    PublisherLayers {
        track_id: TrackId,
        mid: String,
        layers: Vec<(String, bool)>,
    },
    /// The room's active speakers, loudest first (level 0–100), and the
    /// dominant one.
    Speakers {
        speakers: Vec<(PeerId, u8)>,
        dominant: Option<PeerId>,
    },
}

#[derive(Debug)]
pub enum NodeEvent {
    Signal(PeerId, PeerSignal),
    /// The peer is gone (left, lost its connection, replaced, timed out).
    PeerGone {
        peer: PeerId,
        reason: &'static str,
    },
}

#[derive(Debug)]
#[must_use]
pub enum Output {
    Transmit(Transmit),
    Event(NodeEvent),
    Timeout(Instant),
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    #[error("unknown peer {0}")]
    UnknownPeer(PeerId),
    #[error("the SDP was rejected: {0}")]
    BadSdp(String),
    #[error("room {0} is full")]
    RoomFull(RoomId),
    #[error("not allowed: {0}")]
    Forbidden(&'static str),
    #[error("no offer with seq {0} is outstanding")]
    NoPendingOffer(u64),
    #[error("unknown track {0}")]
    UnknownTrack(TrackId),
    #[error("the WebRTC stack failed: {0}")]
    Rtc(String),
}

#[derive(Debug, Clone, Copy)]
pub enum MuteTarget {
    Track(TrackId),
    Mid(Mid),
}

#[derive(Debug, Clone, Default)]
pub struct NodeStats {
    pub rooms: usize,
    pub peers: usize,
    pub tracks: usize,
    pub rtp_in: u64,
    pub rtp_forwarded: u64,
    pub bytes_forwarded: u64,
    pub keyframe_requests_upstream: u64,
    /// Audio packets recovered from publishers' RED.
    pub red_recovered: u64,
    /// Video packets rebuilt from publishers' ULPFEC (before str0m's NACK
    /// for them was answered).
    pub upstream_fec_recovered: u64,
    /// ULPFEC packets sent to subscribers, and their payload bytes.
    pub fec_packets: u64,
    pub fec_bytes: u64,
    pub drops: DropCounters,
    pub nack: NackStats,
    /// Socket counters; the node is sans-IO, so the I/O shell fills these.
    pub io: IoStats,
}

/// What the media socket did (filled by `io::worker`, not by `Node`).
#[derive(Debug, Clone, Default)]
pub struct IoStats {
    pub datagrams_in: u64,
    /// `recvmmsg` calls that returned data.
    pub recv_calls: u64,
    pub datagrams_out: u64,
    /// Send system calls: with GSO one carries several datagrams.
    pub send_calls: u64,
}

/// What became of the sequence numbers subscribers NACKed.
#[derive(Debug, Clone, Default)]
pub struct NackStats {
    /// Sequence numbers asked for.
    pub requested: u64,
    /// Answered with a retransmission.
    pub resent: u64,
    /// Payload bytes of those retransmissions (both copies of a duplicate).
    pub resent_bytes: u64,
    /// Retransmissions sent twice (a lossy link, `ResendPolicy::duplicate_from_loss`).
    pub duplicated: u64,
    /// Never sent or already forgotten.
    pub unknown: u64,
    /// Lost before it reached the SFU and not (yet) recovered from the
    /// publisher: the SFU's own NACK upstream covers it.
    pub missing_upstream: u64,
    /// Could not arrive in time any more.
    pub too_late: u64,
    /// Resent less than an RTT ago.
    pub in_flight: u64,
    /// Resent as often as the policy allows.
    pub max_resends: u64,
    /// The subscriber's retransmission budget was spent.
    pub over_budget: u64,
}

impl NackStats {
    /// Counts a NACKed packet that is not resent, under its reason.
    fn count_refusal(&mut self, outcome: ResendOutcome) {
        match outcome {
            ResendOutcome::Resend { .. } => {}
            ResendOutcome::Unknown => self.unknown += 1,
            ResendOutcome::MissingUpstream => self.missing_upstream += 1,
            ResendOutcome::TooLate => self.too_late += 1,
            ResendOutcome::InFlight => self.in_flight += 1,
            ResendOutcome::MaxResends => self.max_resends += 1,
            ResendOutcome::OverBudget => self.over_budget += 1,
        }
    }
}

pub struct Node {
    config: NodeConfig,
    now: Instant,
    /// One DTLS certificate for every peer of this node, made at start (as
    /// mediasoup and Janus do): str0m would otherwise generate a key pair and
    /// sign a certificate for each join, on the media thread.
    dtls_cert: Option<DtlsCert>,
    /// Looked up per subscriber per forwarded packet: ahash (randomly
    /// keyed like std's SipHash, so room names chosen by clients cannot
    /// pick collisions, and several times cheaper per lookup).
    peers: HashMap<PeerId, Peer, ahash::RandomState>,
    rooms: HashMap<RoomId, Room, ahash::RandomState>,
    demux: Demux,
    next_peer: u64,
    next_track: u64,
    dirty: VecDeque<PeerId>,
    renegotiate: BTreeSet<PeerId>,
    events: VecDeque<NodeEvent>,
    /// Datagrams produced while draining a peer inside `handle_receive`.
    transmits: VecDeque<Transmit>,
    next_housekeeping: Instant,
    /// Next layer allocation and speaker poll.
    next_alloc: Instant,
    next_evict: Instant,
    stats: NodeStats,
    rng: SmallRng,
    /// Scratch for building RED payloads.
    red_buf: Vec<u8>,
    /// Scratch for VP8 payloads with rewritten picture ids.
    vp8_buf: Vec<u8>,
    fec_scratch: Vec<FecPacket>,
    /// Packets out of one publisher's video RED packet (reused).
    unwrapped: Vec<Unwrapped>,
}

/// A RED payload built for one packet: (level, primary payload type, payload).
type BuiltRed = (u8, Pt, Arc<[u8]>);

/// One packet to fan out (a publisher's RED packet can yield several).
#[derive(Debug, Default)]
struct Unit {
    seq: u64,
    ts: u64,
    marker: bool,
    payload: Arc<[u8]>,
}

/// A video packet wrapped in RED: (payload type, the media payload, the RED payload).
type RedWrapped = (Pt, Arc<[u8]>, Arc<[u8]>);

/// The longest forwarded media waits in str0m's pacer. Its BWE paces to the
/// estimate, which suits an encoder that adapts to it; a forwarder cannot
/// shrink a single-layer track, and on a randomly lossy link the loss-based
/// estimate falls below such a track's rate, so pacing would hold its packets
/// past their use (tests/loss_udp.rs delivered 97 % instead of 99.9 % with a
/// 2 s limit). With a short limit the estimate steers the allocator's layer
/// choices while media leaves at once; probes and padding are still paced.
pub const PACER_QUEUE_LIMIT: Duration = Duration::from_millis(20);

/// Sent packets each peer's str0m remembers for TWCC feedback: 511 fills a
/// 512-slot ring (str0m's 1000 took a 1024-slot one, ≈ 90 KB per peer). At
/// 5 Mbit/s (≈ 500 packets/s) that is a second, against feedback every
/// 50–100 ms plus a round trip.
const TWCC_SEND_RECORDS: usize = 511;

fn rtc_config(bwe: bool, flexfec: bool) -> RtcConfig {
    let initial = Bitrate::bps(selection::INITIAL_ESTIMATE_BPS);
    super::codec::rtc_config()
        .enable_flexfec(flexfec)
        .set_ice_lite(true)
        .set_stats_interval(Some(STATS_INTERVAL))
        .enable_bwe(bwe.then_some(initial))
        .set_pacer_queue_limit(PACER_QUEUE_LIMIT)
        // Forwarded media is not held by the pacer outside BWE probes (the
        // publisher paced it, and the SFU cannot make a frame smaller, only
        // pick a layer that fits the estimate): with str0m's pacing, a
        // 1 Mbit/s stream's keyframes waited up to the 20 ms queue limit and
        // `meridian load` measured a latency p99 of ≈ 35 ms with BWE on
        // against ≈ 8 ms off. A frame's packets leave back to back in one
        // poll run (no str0m tick between them), so the worker sends them
        // with one GSO call. Probes keep their pacing, so the estimate ramps
        // as before.
        .set_pacer_burst(true)
        .set_twcc_send_records(TWCC_SEND_RECORDS)
        // A publisher's ULPFEC rebuilds packets as they were sent: its
        // decoder needs the received headers (only video RED packets get them).
        .keep_rtp_header_bytes(true)
        // Upstream NACKs go twice (str0m patch `nack-repeat`): on a long
        // path there is time for one round only, and a lost NACK lost it.
        // The publisher ignores the copy when it already resent the packet.
        .set_nack_repeat(Some(NACK_REPEAT))
}

/// Delay of the second copy of each upstream NACK round: long enough to
/// be a separate packet on the wire, short enough to leave the round's
/// retransmission time to arrive (a 150 ms RTT leaves ≈ 50 ms).
const NACK_REPEAT: Duration = Duration::from_millis(10);

/// One media packet on its way from a publisher to the forwarders: as
/// received, or unwrapped from video RED, or rebuilt by ULPFEC.
#[derive(Debug, Clone)]
struct Ingress {
    ssrc: str0m::rtp::Ssrc,
    /// The published track (resolved from the SSRC's m-line once).
    track: TrackId,
    rid: Option<Rid>,
    /// Extended sequence number and RTP timestamp.
    seq: u64,
    ts: u64,
    /// The payload's type (for audio, possibly its RED type).
    pt: Pt,
    /// The format: `pt`'s, or for audio RED its primary's.
    params: PayloadParams,
    marker: bool,
    payload: Arc<[u8]>,
    /// Payload bytes on the wire (the layer's bitrate).
    wire_len: usize,
    ext: ExtensionValues,
    arrival: Instant,
}

fn sdp_error(e: impl std::fmt::Display) -> CommandError {
    CommandError::BadSdp(e.to_string())
}

/// Parses an offer, refusing ones with more m-lines than a peer may have.
fn parse_offer(sdp: &str) -> Result<SdpOffer, CommandError> {
    let media = sdp.lines().filter(|l| l.starts_with("m=")).count();
    if media > MAX_MEDIA_PER_OFFER {
        return Err(CommandError::BadSdp(format!(
            "{media} m-lines; at most {MAX_MEDIA_PER_OFFER} are accepted"
        )));
    }
    SdpOffer::from_sdp_string(sdp).map_err(sdp_error)
}

impl Node {
    pub fn new(config: NodeConfig, now: Instant) -> Self {
        let rng = match config.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_os_rng(),
        };
        let dtls_cert = super::dtls::shared_certificate();
        if dtls_cert.is_none() {
            warn!("no DTLS certificate could be made up front; each peer will make its own");
        }
        Node {
            config,
            now,
            dtls_cert,
            peers: HashMap::default(),
            rooms: HashMap::default(),
            demux: Demux::default(),
            next_peer: 1,
            next_track: 1,
            dirty: VecDeque::new(),
            renegotiate: BTreeSet::new(),
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            next_housekeeping: now,
            next_alloc: now,
            next_evict: now + DEMUX_EVICT_INTERVAL,
            stats: NodeStats::default(),
            rng,
            red_buf: Vec::new(),
            vp8_buf: Vec::new(),
            fec_scratch: Vec::new(),
            unwrapped: Vec::new(),
        }
    }

    /// The tracks published in `room`, with their kinds.
    pub fn tracks_in_room(&self, room: &str) -> Vec<(TrackId, MediaKind)> {
        self.rooms
            .get(&RoomId(room.to_string()))
            .map(|r| r.tracks.values().map(|t| (t.id, t.kind)).collect())
            .unwrap_or_default()
    }

    pub fn stats(&self) -> NodeStats {
        let mut s = self.stats.clone();
        s.rooms = self.rooms.len();
        s.peers = self.peers.len();
        s.tracks = self.rooms.values().map(|r| r.tracks.len()).sum();
        s
    }

    fn advance(&mut self, now: Instant) {
        // Time never goes backwards in the core.
        if now > self.now {
            self.now = now;
        }
    }

    fn mark_dirty(dirty: &mut VecDeque<PeerId>, peer: &mut Peer) {
        if !peer.dirty {
            peer.dirty = true;
            dirty.push_back(peer.id);
        }
    }

    // ---------------------------------------------------------------- commands

    /// Adds a peer to a room. WebSocket peers then send an offer
    /// (`handle_offer`); WHIP/WHEP go through `whip`/`whep`.
    pub fn join(
        &mut self,
        now: Instant,
        req: JoinRequest,
    ) -> Result<(PeerId, Vec<ParticipantInfo>), CommandError> {
        self.advance(now);
        let room = self
            .rooms
            .entry(req.room.clone())
            .or_insert_with(|| Room::new(req.room.clone()));
        // The same identity joining again replaces its old session (a
        // reload, a reconnect): the old one's tracks are handed over.
        let replaced: Vec<PeerId> = room
            .peers
            .iter()
            .copied()
            .filter(|p| {
                self.peers
                    .get(p)
                    .is_some_and(|p| p.identity == req.identity && p.kind == PeerKind::WebSocket)
            })
            .collect();
        if req.kind == JoinKind::WebSocket {
            for old in replaced {
                self.remove_peer(old, "replaced", false);
            }
        }
        let room = self
            .rooms
            .entry(req.room.clone())
            .or_insert_with(|| Room::new(req.room.clone()));
        if room.peers.len() >= self.config.max_peers_per_room {
            return Err(CommandError::RoomFull(req.room));
        }

        let id = PeerId(self.next_peer);
        self.next_peer += 1;
        let mut config = rtc_config(
            self.config.bwe,
            self.config.video_fec && self.config.flexfec,
        )
        .set_crypto_provider(super::dtls::crypto_provider());
        if let Some(cert) = &self.dtls_cert {
            config = config.set_dtls_cert(cert.clone());
        }
        let mut rtc = config.build(self.now);
        let candidate = Candidate::host(self.config.candidate_addr, "udp")
            .map_err(|e| CommandError::Rtc(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        self.demux.add_peer(&ufrag, id);

        let participants = room
            .peers
            .iter()
            .filter_map(|p| self.peers.get(p))
            .map(|p| participant_info(p, room))
            .collect();
        room.peers.push(id);
        let kind = match req.kind {
            JoinKind::WebSocket => PeerKind::WebSocket,
            JoinKind::Whip => PeerKind::Whip,
            JoinKind::Whep { target } => PeerKind::Whep { target },
        };
        let peer = Peer {
            id,
            room: req.room.clone(),
            identity: req.identity,
            name: req.name,
            kind,
            can_publish: req.can_publish,
            can_subscribe: req.can_subscribe,
            auto_subscribe: req.auto_subscribe && req.can_subscribe,
            rtc,
            published: Vec::new(),
            outs: Vec::new(),
            wanted: BTreeSet::new(),
            neg: Negotiation::default(),
            channel: None,
            chat_rate: Default::default(),
            labels: Vec::new(),
            next_timeout: None,
            dirty: false,
            needs_tick: false,
            connected: false,
            // Whatever the kind, a peer must be connected this long after
            // joining (a WebSocket client that never offers included).
            connect_deadline: Some(self.now + CONNECT_TIMEOUT),
            ice_lost_at: None,
            rtt: DEFAULT_RTT,
            red: RedLevel::default(),
            loss: LossEstimate::default(),
            selection: Selection::default(),
        };
        debug!(peer = %id, room = %req.room, identity = %peer.identity, "peer joined");
        let info = participant_info(&peer, room);
        let mut wanted = BTreeSet::new();
        if peer.auto_subscribe {
            wanted.extend(
                room.tracks
                    .values()
                    .filter(|t| t.owner.is_some())
                    .map(|t| t.id),
            );
        }
        let others: Vec<PeerId> = room.peers.iter().copied().filter(|p| *p != id).collect();
        let mut peer = peer;
        peer.wanted = wanted;
        self.peers.insert(id, peer);
        for other in others {
            self.signal(other, PeerSignal::ParticipantJoined(info.clone()));
        }
        Ok((id, participants))
    }

    /// WHIP: a publisher's offer, answered at once.
    pub fn whip(
        &mut self,
        now: Instant,
        req: JoinRequest,
        offer: &str,
    ) -> Result<(PeerId, String), CommandError> {
        self.one_shot_session(now, req, offer)
    }

    /// WHEP: a player's offer (recvonly m-lines), answered at once.
    pub fn whep(
        &mut self,
        now: Instant,
        req: JoinRequest,
        offer: &str,
    ) -> Result<(PeerId, String), CommandError> {
        self.one_shot_session(now, req, offer)
    }

    fn one_shot_session(
        &mut self,
        now: Instant,
        req: JoinRequest,
        offer: &str,
    ) -> Result<(PeerId, String), CommandError> {
        // Parse before creating anything: a bad offer leaves no trace.
        let offer = parse_offer(offer)?;
        let (id, _) = self.join(now, req)?;
        match self.accept_offer(id, offer) {
            Ok(answer) => Ok((id, answer)),
            Err(e) => {
                self.remove_peer(id, "bad offer", true);
                Err(e)
            }
        }
    }

    /// An SDP offer from the client. Returns the answer.
    pub fn handle_offer(
        &mut self,
        now: Instant,
        peer: PeerId,
        sdp: &str,
    ) -> Result<String, CommandError> {
        self.advance(now);
        let offer = parse_offer(sdp)?;
        self.accept_offer(peer, offer)
    }

    fn accept_offer(&mut self, id: PeerId, offer: SdpOffer) -> Result<String, CommandError> {
        let peer = self
            .peers
            .get_mut(&id)
            .ok_or(CommandError::UnknownPeer(id))?;
        // Glare: the server is polite. Our outstanding offer is dropped
        // (str0m rolls it back) and re-planned after this one.
        if let Some(p) = peer.neg.pending.take() {
            debug!(peer = %id, "glare: dropping our offer for the client's");
            let room = self
                .rooms
                .get_mut(&peer.room)
                .expect("a peer's room exists");
            abandon_offer(peer, room, p);
        }
        let answer = peer.rtc.sdp_api().accept_offer(offer).map_err(sdp_error)?;
        peer.neg.ready = true;
        if !peer.connected && peer.connect_deadline.is_none() {
            peer.connect_deadline = Some(self.now + CONNECT_TIMEOUT);
        }
        Self::mark_dirty(&mut self.dirty, peer);
        self.renegotiate.insert(id);
        Ok(answer.to_sdp_string())
    }

    /// The client's answer to our offer `seq`.
    pub fn handle_answer(
        &mut self,
        now: Instant,
        id: PeerId,
        sdp: &str,
        seq: u64,
    ) -> Result<(), CommandError> {
        self.advance(now);
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(sdp_error)?;
        let peer = self
            .peers
            .get_mut(&id)
            .ok_or(CommandError::UnknownPeer(id))?;
        let Some(pending) = peer.neg.pending.take_if(|p| p.seq == seq) else {
            return Err(CommandError::NoPendingOffer(seq));
        };
        debug!(peer = %id, seq, "answer");
        self.renegotiate.insert(id);
        Self::mark_dirty(&mut self.dirty, peer);
        peer.neg.unanswered = 0;
        let room = self
            .rooms
            .get_mut(&peer.room)
            .expect("a peer's room exists");
        let PendingOffer {
            offer,
            seq: _,
            adds,
            stops,
            sent_at: _,
        } = pending;
        if let Err(e) = peer.rtc.sdp_api().accept_answer(offer, answer) {
            // The offer is gone either way; its stops already happened.
            for mid in stops {
                peer.outs.retain(|o| o.mid != mid);
                room.remove_subscriber(id, mid);
            }
            return Err(sdp_error(e));
        }

        let mut want_keyframe = Vec::new();
        for mid in stops {
            peer.outs.retain(|o| o.mid != mid);
            room.remove_subscriber(id, mid);
        }
        for (track, mid, kind) in adds {
            tune_out_stream(&mut peer.rtc, mid);
            let Some(t) = room.tracks.get_mut(&track) else {
                // Unpublished while we negotiated: the next offer stops it.
                peer.outs.push(new_out(mid, kind, None, &mut self.rng));
                continue;
            };
            t.subscribers.push((id, mid));
            peer.outs
                .push(new_out(mid, kind, Some(track), &mut self.rng));
            if kind == MediaKind::Video {
                want_keyframe.push(track);
            }
        }
        let room_id = peer.room.clone();
        for t in want_keyframe {
            self.request_keyframe(&room_id, t, Some(0));
        }
        Ok(())
    }

    /// A label for one of the client's own m-lines ("camera", "screen", …).
    pub fn set_track_label(
        &mut self,
        id: PeerId,
        mid: Mid,
        label: String,
    ) -> Result<(), CommandError> {
        let peer = self
            .peers
            .get_mut(&id)
            .ok_or(CommandError::UnknownPeer(id))?;
        peer.labels.retain(|(m, _)| *m != mid);
        if peer.labels.len() >= MAX_LABELS {
            return Err(CommandError::Forbidden("too many track labels"));
        }
        peer.labels.push((mid, label.clone()));
        if let Some(track) = peer.track_at(mid) {
            if let Some(t) = self
                .rooms
                .get_mut(&peer.room)
                .and_then(|r| r.tracks.get_mut(&track))
            {
                t.label = label;
            }
        }
        Ok(())
    }

    pub fn set_muted(
        &mut self,
        now: Instant,
        id: PeerId,
        target: MuteTarget,
        muted: bool,
    ) -> Result<(), CommandError> {
        self.advance(now);
        let peer = self.peers.get(&id).ok_or(CommandError::UnknownPeer(id))?;
        let track = match target {
            MuteTarget::Track(t) => t,
            MuteTarget::Mid(m) => peer.track_at(m).ok_or(CommandError::Forbidden(
                "that m-line carries no track you publish",
            ))?,
        };
        let room_id = peer.room.clone();
        let room = self.rooms.get_mut(&room_id).expect("a peer's room exists");
        let t = room
            .tracks
            .get_mut(&track)
            .ok_or(CommandError::UnknownTrack(track))?;
        if t.owner != Some(id) {
            return Err(CommandError::Forbidden("you can only mute your own tracks"));
        }
        if t.muted == muted {
            return Ok(());
        }
        t.muted = muted;
        let video = t.kind == MediaKind::Video;
        if !muted {
            t.resume_epoch = t.resume_epoch.wrapping_add(1);
        }
        let others: Vec<PeerId> = room.peers.iter().copied().filter(|p| *p != id).collect();
        for p in others {
            self.signal(
                p,
                PeerSignal::TrackMuted {
                    peer_id: id,
                    track_id: track,
                    muted,
                },
            );
        }
        if !muted && video {
            self.request_keyframe(&room_id, track, None);
        }
        Ok(())
    }

    pub fn subscribe(
        &mut self,
        id: PeerId,
        tracks: &[TrackId],
        on: bool,
    ) -> Result<(), CommandError> {
        let peer = self
            .peers
            .get_mut(&id)
            .ok_or(CommandError::UnknownPeer(id))?;
        if !peer.can_subscribe {
            return Err(CommandError::Forbidden(
                "the token does not grant subscribe",
            ));
        }
        let room = self.rooms.get(&peer.room).expect("a peer's room exists");
        // All or nothing: check the whole list before applying any of it.
        if on {
            if let Some(t) = tracks.iter().find(|t| !room.tracks.contains_key(t)) {
                return Err(CommandError::UnknownTrack(*t));
            }
        }
        for t in tracks {
            if on {
                peer.wanted.insert(*t);
            } else {
                peer.wanted.remove(t);
            }
        }
        self.renegotiate.insert(id);
        Ok(())
    }

    pub fn leave(&mut self, now: Instant, id: PeerId) {
        self.advance(now);
        self.remove_peer(id, "left", true);
    }

    /// Stops everything: every peer is disconnected and reported gone.
    pub fn shutdown(&mut self, now: Instant) {
        self.advance(now);
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            if let Some(p) = self.peers.get_mut(&id) {
                p.rtc.disconnect();
            }
            // Collect what the close produces (DTLS close_notify, RTCP BYE)
            // before the peer goes; the caller drains `poll_output`.
            self.drain_peer(id);
            self.remove_peer(id, "server shutdown", true);
        }
    }

    // ---------------------------------------------------------------- network

    /// A datagram arrived on the UDP socket.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        buf: &[u8],
    ) {
        self.advance(now);
        let now = self.now;
        let id = match self.demux.route(now, source, buf) {
            Ok(id) => id,
            Err(miss) => {
                let r = match miss {
                    DemuxMiss::UnknownSource => DropReason::UnknownSource,
                    DemuxMiss::UnknownUfrag => DropReason::UnknownUfrag,
                    DemuxMiss::BadStun => DropReason::BadStun,
                };
                trace!(%source, reason = r.as_str(), "datagram dropped");
                self.stats.drops.add(r);
                return;
            }
        };
        let Ok(contents) = buf.try_into() else {
            self.stats.drops.add(DropReason::Unparseable);
            return;
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination,
                contents,
            },
        );
        if let Err(e) = peer.rtc.handle_input(input) {
            trace!(peer = %id, error = %e, "datagram rejected");
            self.stats.drops.add(DropReason::RejectedByPeer);
        }
        // During the handshake a datagram moves ICE and DTLS on, and some
        // of their next steps (state changes, the next flight) wait for a
        // tick: without one they waited for the peer's next timer.
        if !peer.connected {
            if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                debug!(peer = %id, error = %e, "timeout handling failed");
            }
        }
        // In RTP mode str0m holds one received packet until the next
        // poll_output: drain this peer now, before the next datagram.
        // Subscribers written to are only marked dirty, so a batch of
        // datagrams still costs one str0m tick per subscriber.
        self.drain_peer(id);
    }

    /// Polls one peer until it has nothing more; transmits are queued.
    fn drain_peer(&mut self, id: PeerId) {
        loop {
            let Some(peer) = self.peers.get_mut(&id) else {
                return;
            };
            match peer.rtc.poll_output() {
                Ok(str0m::Output::Transmit(t)) => self.transmits.push_back(t),
                Ok(str0m::Output::Timeout(t)) => {
                    peer.next_timeout = Some(t);
                    return;
                }
                Ok(str0m::Output::Event(e)) => self.handle_event(id, e),
                Err(e) => {
                    debug!(peer = %id, error = %e, "peer failed");
                    peer.rtc.disconnect();
                    Self::mark_dirty(&mut self.dirty, peer);
                    return;
                }
            }
        }
    }

    /// Time passed: let every peer whose timer is due run.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        let now = self.now;
        for peer in self.peers.values_mut() {
            if peer.next_timeout.is_none_or(|t| t <= now) {
                if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                    debug!(peer = %peer.id, error = %e, "timeout handling failed");
                }
                peer.next_timeout = None;
                Self::mark_dirty(&mut self.dirty, peer);
            }
        }
        self.poll_keyframes(now);
        if now >= self.next_housekeeping {
            self.housekeeping();
            self.next_housekeeping = now + HOUSEKEEPING_INTERVAL;
        }
        if now >= self.next_alloc {
            self.allocate();
            self.poll_speakers();
            self.next_alloc = now + selection::ALLOC_INTERVAL;
        }
    }

    /// Sends merged keyframe requests that came due.
    fn poll_keyframes(&mut self, now: Instant) {
        let mut due = Vec::new();
        for room in self.rooms.values_mut() {
            for t in room.tracks.values_mut() {
                for l in t.layers.iter_mut() {
                    if l.keyframe.poll(now) {
                        if let Some(owner) = t.owner {
                            due.push((owner, t.mid, l.rid));
                        }
                    }
                }
            }
        }
        for (owner, mid, rid) in due {
            self.send_keyframe_request(owner, mid, rid);
        }
    }

    fn housekeeping(&mut self) {
        let now = self.now;
        // Each subscriber's loss estimate, and the audio redundancy it gets.
        for p in self.peers.values_mut() {
            let feedback = p.rtc.bwe().feedback_counts();
            if p.loss.close_window(now, feedback) {
                let loss = p.loss.estimate(now);
                p.red.update(loss);
                for out in &mut p.outs {
                    let Some(f) = out.fec.as_mut() else { continue };
                    if f.update(loss) {
                        if let Some(tx) = p.rtc.direct_api().stream_tx_by_mid(out.mid, None) {
                            tx.set_tap(f.active);
                        }
                    }
                }
            }
        }
        // Orphaned tracks whose publisher did not come back.
        let expired: Vec<(RoomId, TrackId)> = self
            .rooms
            .values()
            .flat_map(|r| {
                r.tracks
                    .values()
                    .filter(|t| t.orphaned_until.is_some_and(|d| d <= now))
                    .map(|t| (r.id.clone(), t.id))
            })
            .collect();
        for (room, track) in expired {
            self.unpublish(&room, track);
        }
        // Server offers nobody answered: make them again, or give up.
        let stale: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| {
                p.neg
                    .pending
                    .as_ref()
                    .is_some_and(|o| now.saturating_duration_since(o.sent_at) >= OFFER_TIMEOUT)
            })
            .map(|p| p.id)
            .collect();
        for id in stale {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            let Some(pending) = peer.neg.pending.take() else {
                continue;
            };
            peer.neg.unanswered += 1;
            let give_up = peer.neg.unanswered >= MAX_UNANSWERED_OFFERS;
            debug!(peer = %id, seq = pending.seq, give_up, "server offer unanswered");
            if let Some(room) = self.rooms.get_mut(&peer.room) {
                abandon_offer(peer, room, pending);
            }
            if give_up {
                self.remove_peer(id, "renegotiation timed out", false);
            } else {
                self.renegotiate.insert(id);
            }
        }
        // Peers that never connected.
        let stale: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| !p.connected && p.connect_deadline.is_some_and(|d| d <= now))
            .map(|p| p.id)
            .collect();
        for id in stale {
            debug!(peer = %id, "peer never connected");
            self.remove_peer(id, "connection timed out", false);
        }
        let lost: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| {
                p.ice_lost_at
                    .is_some_and(|t| t + ICE_DISCONNECT_GRACE <= now)
            })
            .map(|p| p.id)
            .collect();
        for id in lost {
            debug!(peer = %id, "ICE did not come back");
            self.remove_peer(id, "ICE disconnected", false);
        }
        self.rooms.retain(|_, r| !r.is_empty());
        if now >= self.next_evict {
            self.demux.evict_idle(now);
            self.next_evict = now + DEMUX_EVICT_INTERVAL;
        }
    }

    /// Drains output. Call until it returns `Output::Timeout`.
    pub fn poll_output(&mut self) -> Output {
        loop {
            if let Some(t) = self.transmits.pop_front() {
                return Output::Transmit(t);
            }
            if let Some(e) = self.events.pop_front() {
                return Output::Event(e);
            }
            if let Some(id) = self.renegotiate.pop_first() {
                self.negotiate(id);
                continue;
            }
            let Some(&id) = self.dirty.front() else {
                return Output::Timeout(self.next_timeout());
            };
            let now = self.now;
            let Some(peer) = self.peers.get_mut(&id) else {
                self.dirty.pop_front();
                continue;
            };
            if peer.needs_tick {
                // Media was written: the pacer's snapshot is all that needs
                // refreshing (str0m patch 11); the rest of a tick keeps its
                // own deadlines, which `handle_timeout` meets.
                peer.needs_tick = false;
                if let Err(e) = peer.rtc.handle_written(now) {
                    debug!(peer = %id, error = %e, "tick failed");
                }
            }
            if !peer.rtc.is_alive() {
                self.dirty.pop_front();
                peer.dirty = false;
                self.remove_peer(id, "connection closed", false);
                continue;
            }
            match peer.rtc.poll_output() {
                Ok(str0m::Output::Transmit(t)) => return Output::Transmit(t),
                Ok(str0m::Output::Timeout(t)) => {
                    // Everything written is serialized now: FEC for the
                    // frames that are complete, then tick again to send it.
                    if Self::write_fec(peer, now, &mut self.fec_scratch, &mut self.stats) {
                        peer.needs_tick = true;
                        continue;
                    }
                    peer.next_timeout = Some(t);
                    peer.dirty = false;
                    self.dirty.pop_front();
                }
                Ok(str0m::Output::Event(e)) => self.handle_event(id, e),
                Err(e) => {
                    debug!(peer = %id, error = %e, "peer failed");
                    peer.rtc.disconnect();
                }
            }
        }
    }

    /// Feeds what str0m sent on a peer's FEC streams to their encoders and
    /// writes the FEC packets of completed frames. True if it wrote any.
    fn write_fec(
        peer: &mut Peer,
        now: Instant,
        scratch: &mut Vec<FecPacket>,
        stats: &mut NodeStats,
    ) -> bool {
        let mut wrote = false;
        for out in &mut peer.outs {
            let Some(f) = out.fec.as_mut().filter(|f| f.active) else {
                continue;
            };
            let mut api = peer.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(out.mid, None) else {
                continue;
            };
            while let Some(bytes) = tx.poll_tap() {
                f.on_tapped(bytes, scratch);
            }
            if scratch.is_empty() {
                continue;
            }
            let red_pt = match f.form {
                FecForm::Ulpfec { red_pt, .. } => red_pt,
                FecForm::Flexfec { pt } => {
                    // Own SSRC and numbers: nothing to reserve.
                    for p in scratch.drain(..) {
                        stats.fec_packets += 1;
                        stats.fec_bytes += p.payload.len() as u64;
                        let write = RtpWrite::new(pt, 0.into(), p.ts, now, p.payload);
                        wrote |= tx.write_fec(write);
                    }
                    continue;
                }
            };
            // Numbers for exactly the packets made, after the highest sent.
            let Some(first) = out.fwd.reserve(scratch.len() as u64) else {
                scratch.clear();
                continue;
            };
            for (k, p) in scratch.drain(..).enumerate() {
                let seq = first + k as u64;
                if let Some(s) = out.seq.as_mut() {
                    s.not_media(now, seq);
                }
                stats.fec_packets += 1;
                stats.fec_bytes += p.payload.len() as u64;
                tx.write_rtp(
                    RtpWrite::new(red_pt, seq.into(), p.ts, now, p.payload).nackable(false),
                );
                wrote = true;
            }
        }
        wrote
    }

    fn next_timeout(&self) -> Instant {
        let mut t = self.next_housekeeping.min(self.next_alloc);
        for p in self.peers.values() {
            if let Some(pt) = p.next_timeout {
                t = t.min(pt);
            }
        }
        let layers = self
            .rooms
            .values()
            .flat_map(|r| r.tracks.values())
            .flat_map(|t| t.layers.iter());
        for kt in layers.filter_map(|l| l.keyframe.timeout()) {
            t = t.min(kt);
        }
        t.max(self.now)
    }

    // ---------------------------------------------------------------- events

    fn handle_event(&mut self, id: PeerId, e: Event) {
        match e {
            Event::RtpPacket(pkt) => self.forward(id, pkt),
            Event::KeyframeRequest(req) => self.on_keyframe_request(id, req),
            Event::ResendRequest(req) => self.on_resend_request(id, req),
            Event::MediaEgressStats(s) => {
                let Some(p) = self.peers.get_mut(&id) else {
                    return;
                };
                if let Some(rtt) = s.rtt {
                    p.rtt = rtt;
                }
                // Audio is not retransmitted, so its receiver reports show
                // the link's loss (video's show what NACK left over).
                let audio = p
                    .outs
                    .iter()
                    .any(|o| o.mid == s.mid && o.kind == MediaKind::Audio);
                if let (Some(loss), true) = (s.loss, audio) {
                    let now = self.now;
                    p.loss.report_rr(now, loss);
                    p.red.update(p.loss.estimate(now));
                }
            }
            Event::EgressBitrateEstimate(kind) => {
                let Some(p) = self.peers.get_mut(&id) else {
                    return;
                };
                match kind {
                    BweKind::Twcc { estimate, .. } => {
                        trace!(peer = %id, estimate = estimate.as_u64(), "twcc estimate");
                        p.selection.twcc = Some(estimate.as_u64());
                    }
                    BweKind::Remb { estimate, .. } => {
                        p.selection.remb = Some(estimate.as_u64());
                    }
                    _ => {}
                }
            }
            Event::Connected => {
                debug!(peer = %id, "connected");
                if let Some(p) = self.peers.get_mut(&id) {
                    p.connected = true;
                    p.connect_deadline = None;
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                debug!(peer = %id, "ICE disconnected");
                if let Some(p) = self.peers.get_mut(&id) {
                    p.ice_lost_at.get_or_insert(self.now);
                }
            }
            Event::IceConnectionStateChange(state) => {
                debug!(peer = %id, ?state, "ICE");
                if let Some(p) = self.peers.get_mut(&id).filter(|p| p.ice_lost_at.is_some()) {
                    debug!(peer = %id, ?state, "ICE back");
                    p.ice_lost_at = None;
                }
            }
            Event::MediaAdded(m) => self.on_media_added(id, m),
            Event::MediaChanged(m) if !m.direction.is_receiving() => {
                self.on_media_stopped(id, m.mid);
            }
            Event::ChannelOpen(cid, label) => {
                debug!(peer = %id, %label, "data channel open");
                if let Some(p) = self.peers.get_mut(&id) {
                    p.channel = Some(cid);
                }
            }
            Event::ChannelData(d) => self.on_channel_data(id, d),
            Event::ChannelClose(_) => {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.channel = None;
                }
            }
            _ => {}
        }
    }

    fn on_media_added(&mut self, id: PeerId, m: MediaAdded) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if m.direction.is_receiving() {
            if !peer.can_publish {
                debug!(peer = %id, mid = %m.mid, "publish not granted; ignoring m-line");
                return;
            }
            let room = self
                .rooms
                .get_mut(&peer.room)
                .expect("a peer's room exists");
            let label = peer.label_for(m.mid, m.kind);
            let adopted = room.orphan_for(&peer.identity, m.kind);
            let track_id = if let Some(tid) = adopted {
                let t = room.tracks.get_mut(&tid).expect("orphan exists");
                t.owner = Some(id);
                t.last_owner = id;
                t.mid = m.mid;
                t.orphaned_until = None;
                t.source_epoch += 1;
                t.resume_epoch = t.resume_epoch.wrapping_add(1);
                t.layers = layers_of(&m);
                t.muted = false;
                debug!(peer = %id, track = %tid, "reconnected publisher adopts its track");
                tid
            } else {
                let tid = TrackId(self.next_track);
                self.next_track += 1;
                room.tracks.insert(
                    tid,
                    Track {
                        id: tid,
                        owner: Some(id),
                        last_owner: id,
                        identity: peer.identity.clone(),
                        kind: m.kind,
                        mid: m.mid,
                        label,
                        muted: false,
                        resume_epoch: 0,
                        source_epoch: tid.0 << 16,
                        subscribers: Vec::new(),
                        orphaned_until: None,
                        layers: layers_of(&m),
                        audio: None,
                    },
                );
                tid
            };
            peer.published.push(Published::new(m.mid, track_id));
            let t = &room.tracks[&track_id];
            let info = track_info(t);
            let room_id = room.id.clone();
            let others: Vec<PeerId> = room.peers.iter().copied().filter(|p| *p != id).collect();
            for other in others {
                let Some(o) = self.peers.get_mut(&other) else {
                    continue;
                };
                if o.auto_subscribe && o.kind == PeerKind::WebSocket {
                    o.wanted.insert(track_id);
                    self.renegotiate.insert(other);
                }
                self.signal(
                    other,
                    PeerSignal::TrackPublished {
                        peer_id: id,
                        track: info.clone(),
                    },
                );
            }
            self.rebind_players(&room_id);
        } else if m.direction.is_sending() {
            // Only WHEP offers create m-lines for us to send on; WebSocket
            // clients receive on m-lines the server adds.
            if let PeerKind::Whep { .. } = peer.kind {
                tune_out_stream(&mut peer.rtc, m.mid);
                peer.outs.push(new_out(m.mid, m.kind, None, &mut self.rng));
                let room_id = peer.room.clone();
                self.rebind_players(&room_id);
            }
        }
    }

    fn on_media_stopped(&mut self, id: PeerId, mid: Mid) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(track) = peer.track_at(mid) else {
            return;
        };
        peer.published.retain(|p| p.mid != mid);
        let room = peer.room.clone();
        self.unpublish(&room, track);
    }

    /// Removes a track from its room and from every subscriber.
    fn unpublish(&mut self, room_id: &RoomId, track: TrackId) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        let Some(t) = room.tracks.remove(&track) else {
            return;
        };
        room.speakers.remove(track);
        if room.dominant == Some(track) {
            room.dominant = None;
        }
        debug!(room = %room_id, %track, "track unpublished");
        let peers = room.peers.clone();
        for (sub, mid) in &t.subscribers {
            if let Some(p) = self.peers.get_mut(sub) {
                if let Some(o) = p.outs.iter_mut().find(|o| o.mid == *mid) {
                    o.source = None;
                }
            }
        }
        for p in peers {
            let Some(peer) = self.peers.get_mut(&p) else {
                continue;
            };
            peer.wanted.remove(&track);
            peer.selection.prefs.remove(&track);
            if peer.kind == PeerKind::WebSocket {
                self.renegotiate.insert(p);
            }
            if let Some(owner) = t.owner {
                if owner == p {
                    continue;
                }
            }
            self.signal(
                p,
                PeerSignal::TrackUnpublished {
                    peer_id: t.last_owner,
                    track_id: track,
                },
            );
        }
        self.rebind_players(room_id);
    }

    /// Binds WHEP players' idle m-lines to a publisher's tracks.
    fn rebind_players(&mut self, room_id: &RoomId) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        let mut want_keyframe = Vec::new();
        for pid in room.peers.iter() {
            let Some(peer) = self.peers.get_mut(pid) else {
                continue;
            };
            let PeerKind::Whep { target } = &peer.kind else {
                continue;
            };
            // Prefer the publisher already playing on another m-line, so
            // audio and video come from the same participant.
            let current_owner = peer
                .outs
                .iter()
                .filter_map(|o| o.source)
                .filter_map(|t| room.tracks.get(&t))
                .find_map(|t| t.owner);
            for out in peer.outs.iter_mut().filter(|o| o.source.is_none()) {
                let candidate = room
                    .tracks
                    .values()
                    .filter(|t| t.kind == out.kind && t.owner.is_some() && t.owner != Some(*pid))
                    .filter(|t| target.as_ref().is_none_or(|id| *id == t.identity))
                    .min_by_key(|t| (current_owner.is_some() && t.owner != current_owner, t.id));
                if let Some(t) = candidate {
                    out.source = Some(t.id);
                    out.fwd.source_changed();
                    // Its sent packets refer to the old track's history.
                    out.seq = None;
                    if out.kind == MediaKind::Video {
                        want_keyframe.push(t.id);
                    }
                    debug!(peer = %pid, mid = %out.mid, track = %t.id, "player bound");
                }
            }
            for out in &peer.outs {
                if let Some(tid) = out.source {
                    if let Some(t) = room.tracks.get_mut(&tid) {
                        if !t.subscribers.contains(&(*pid, out.mid)) {
                            t.subscribers.push((*pid, out.mid));
                        }
                    }
                }
            }
        }
        for t in want_keyframe {
            self.request_keyframe(room_id, t, Some(0));
        }
    }

    // ---------------------------------------------------------------- media

    /// One incoming RTP packet: video in RED (a publisher that negotiated
    /// ULPFEC wraps every packet) is unwrapped and fed to the track's ULPFEC
    /// decoder, and what it rebuilds is forwarded too; everything else goes
    /// straight to [`Node::forward_media`].
    fn forward(&mut self, from: PeerId, pkt: RtpPacket) {
        self.stats.rtp_in += 1;
        let Some(publisher) = self.peers.get_mut(&from) else {
            return;
        };
        let ssrc = pkt.header.ssrc;
        let Some((mid, rid, fec_repair, fec_protected)) = publisher
            .rtc
            .direct_api()
            .stream_rx(&ssrc)
            .map(|s| (s.mid(), s.rid(), s.is_fec_repair(), s.is_fec_protected()))
        else {
            self.stats.drops.add(DropReason::NoTrack);
            return;
        };
        let wire_pt = pkt.header.payload_type;
        let Some(published) = publisher.published.iter_mut().find(|p| p.mid == mid) else {
            self.stats.drops.add(DropReason::NoTrack);
            return;
        };
        // The format of the packet's payload type (cached: one lookup per
        // change of payload type); an audio RED type stands for its primary.
        let Some(params) = published.params_of(wire_pt, &publisher.rtc) else {
            self.stats.drops.add(DropReason::NoPayloadType);
            return;
        };
        let ext = ExtensionValues {
            audio_level: pkt.header.ext_vals.audio_level,
            voice_activity: pkt.header.ext_vals.voice_activity,
            video_orientation: pkt.header.ext_vals.video_orientation,
            ..Default::default()
        };
        let mut ingress = Ingress {
            ssrc,
            track: published.track,
            rid,
            seq: *pkt.seq_no,
            ts: pkt.time.numer(),
            pt: wire_pt,
            params,
            marker: pkt.header.marker,
            payload: pkt.payload.clone(),
            wire_len: pkt.payload.len(),
            ext,
            arrival: pkt.timestamp,
        };
        // FlexFEC (str0m patch `flexfec`): repair packets on their own SSRC
        // go to the m-line's decoder, not to subscribers; media of the
        // stream they protect goes to both.
        if fec_repair || fec_protected {
            let media_ssrc = if fec_repair {
                let api = &mut publisher.rtc.direct_api();
                match api.stream_rx_by_mid(mid, None) {
                    Some(s) => s.ssrc(),
                    None => {
                        self.stats.drops.add(DropReason::UpstreamFec);
                        return;
                    }
                }
            } else {
                ssrc
            };
            let mut units = std::mem::take(&mut self.unwrapped);
            units.clear();
            if let Some(rx) = published.flexfec_receiver(&publisher.rtc) {
                if fec_repair {
                    rx.on_repair(&pkt.payload, &mut units);
                } else {
                    rx.on_media(
                        pkt.header_bytes.as_deref(),
                        ingress.seq,
                        &pkt.payload,
                        &mut units,
                    );
                }
            }
            if fec_repair {
                self.stats.drops.add(DropReason::UpstreamFec);
                ingress.ssrc = media_ssrc;
            } else {
                self.forward_media(from, ingress.clone());
            }
            let carrier = (pkt.header.timestamp, pkt.time.numer());
            self.forward_units(from, mid, ingress, carrier, &mut units);
            self.unwrapped = units;
            return;
        }
        if !params.is_video_fec() {
            self.forward_media(from, ingress);
            return;
        }
        let inner = match pkt.payload.first() {
            Some(b) if b & 0x80 == 0 => Pt::new_with_value(*b),
            _ => {
                self.stats.drops.add(DropReason::BadRed);
                return;
            }
        };
        let Some(inner_params) = published.inner_params_of(inner, &publisher.rtc) else {
            self.stats.drops.add(DropReason::NoPayloadType);
            return;
        };
        // The primary (unless it is a ULPFEC packet) and any packets the
        // publisher's ULPFEC rebuilt.
        let mut units = std::mem::take(&mut self.unwrapped);
        units.clear();
        match published.fec_receiver(&publisher.rtc, *ssrc) {
            Some(rx) => rx.on_red(
                pkt.header_bytes.as_deref(),
                ingress.seq,
                pkt.header.timestamp,
                pkt.header.marker,
                &pkt.payload,
                &mut units,
            ),
            // RED without ULPFEC: only the primary.
            None if !inner_params.is_video_fec() => units.push(Unwrapped {
                seq: ingress.seq,
                ts: pkt.header.timestamp,
                pt: *inner,
                marker: pkt.header.marker,
                payload: Arc::from(&pkt.payload[1..]),
                recovered: false,
            }),
            None => {}
        }
        if inner_params.is_video_fec() {
            self.skip_upstream_fec(from, mid, *ssrc, ingress.seq);
        }
        let carrier = (pkt.header.timestamp, pkt.time.numer());
        self.forward_units(from, mid, ingress, carrier, &mut units);
        self.unwrapped = units;
    }

    /// Forwards what came out of a publisher's RED or FEC (`units`), in
    /// the place of `ingress` (the packet that carried them, its media
    /// SSRC, track and layer): primaries as they are, rebuilt packets once
    /// str0m agrees they were missing (then neither NACKed nor taken again
    /// from a retransmission). `carrier` is the carrier's RTP timestamp and
    /// its extended form, to extend theirs.
    fn forward_units(
        &mut self,
        from: PeerId,
        mid: Mid,
        mut ingress: Ingress,
        carrier: (u32, u64),
        units: &mut Vec<Unwrapped>,
    ) {
        for u in units.drain(..) {
            let Some(publisher) = self.peers.get_mut(&from) else {
                break;
            };
            let Some(published) = publisher.published.iter_mut().find(|p| p.mid == mid) else {
                break;
            };
            let Some(params) = published.inner_params_of(Pt::new_with_value(u.pt), &publisher.rtc)
            else {
                self.stats.drops.add(DropReason::NoPayloadType);
                continue;
            };
            if u.recovered {
                // str0m must neither NACK it nor take a retransmission of it
                // as new; if it was not missing, the rebuilt copy is a duplicate.
                let missing = publisher
                    .rtc
                    .direct_api()
                    .stream_rx(&ingress.ssrc)
                    .is_some_and(|rx| rx.mark_recovered(u.seq.into()));
                if !missing {
                    continue;
                }
                self.stats.upstream_fec_recovered += 1;
            }
            // The 32-bit timestamp, extended next to the carrier's.
            let delta = i64::from(u.ts.wrapping_sub(carrier.0) as i32);
            let Some(ts) = carrier.1.checked_add_signed(delta) else {
                continue;
            };
            ingress.seq = u.seq;
            ingress.ts = ts;
            ingress.pt = params.pt();
            ingress.params = params;
            ingress.marker = u.marker;
            ingress.payload = u.payload;
            if u.recovered {
                // Its header extensions were the sender's; ours are the carrier's.
                ingress.ext = ExtensionValues::default();
                ingress.wire_len = ingress.payload.len();
            }
            self.forward_media(from, ingress.clone());
        }
    }

    /// Fans one media packet (a codec's payload, or audio in RED) out to
    /// the subscribers of its track.
    fn forward_media(&mut self, from: PeerId, pkt: Ingress) {
        let Some(publisher) = self.peers.get(&from) else {
            return;
        };
        let Ingress {
            ssrc,
            track: track_id,
            rid,
            seq,
            ts,
            pt,
            params,
            marker,
            payload: media_payload,
            wire_len,
            ext,
            arrival,
        } = pkt;
        let is_red = params.pt() != pt;
        let Some(room) = self.rooms.get_mut(&publisher.room) else {
            return;
        };
        let Some(track) = room.tracks.get_mut(&track_id) else {
            self.stats.drops.add(DropReason::NoTrack);
            return;
        };
        if track.muted {
            self.stats.drops.add(DropReason::Muted);
            return;
        }
        let Some(layer) = track.layers.index(rid) else {
            self.stats.drops.add(DropReason::NoTrack);
            return;
        };
        let codec = CodecKind::of(&params);
        let video = codec.is_video();
        let keyframe = video && is_keyframe(codec, &media_payload);
        let size = match (keyframe, codec) {
            (true, CodecKind::Vp8) => vp8::parse(&media_payload)
                .and_then(|d| simulcast::vp8_keyframe_size(&media_payload, d.header_len)),
            (true, CodecKind::H264) => simulcast::h264_sps_size(&media_payload),
            _ => None,
        };
        track
            .layers
            .on_packet(layer, self.now, *ssrc, wire_len, size);
        let source = SourceKey {
            track_epoch: track.source_epoch,
            ssrc: *ssrc,
        };
        if let (false, Some(level)) = (video, ext.audio_level) {
            // RFC 6464 carries -dBov as a negative number in str0m.
            let level = level.unsigned_abs().min(127);
            room.speakers
                .observe(self.now, track_id, level, ext.voice_activity);
        }

        // What goes out: the packet itself or, from a publisher's RED, the
        // copies of packets that never arrived (oldest first), then its primary.
        let mut units: [Option<Unit>; 1 + MAX_LEVEL as usize] = Default::default();
        // Audio packets rebuilt from the publisher's RED.
        let mut red_recovered: [Option<u64>; 1 + MAX_LEVEL as usize] = Default::default();
        if video {
            units[0] = Some(Unit {
                seq,
                ts,
                marker,
                payload: media_payload.clone(),
            });
        } else {
            let recent = track.audio.get_or_insert_with(AudioRecent::default);
            recent.check_source(source);
            if is_red {
                let Some(unred) = unred(recent, seq, ts, *params.pt(), &media_payload) else {
                    self.stats.drops.add(DropReason::BadRed);
                    return;
                };
                // Only the last MAX_LEVEL + 1 blocks can matter.
                let all: Vec<Unred> = unred.collect();
                let skip = all.len().saturating_sub(units.len());
                for (slot, u) in units.iter_mut().zip(all.into_iter().skip(skip)) {
                    *slot = Some(Unit {
                        seq: u.seq,
                        ts: u.ts,
                        // The marker belongs to the primary.
                        marker: u.seq == seq && marker,
                        payload: u.payload,
                    });
                }
                self.stats.red_recovered += units.iter().flatten().count().saturating_sub(1) as u64;
                for (slot, u) in red_recovered.iter_mut().zip(units.iter().flatten()) {
                    *slot = Some(u.seq).filter(|s| *s != seq);
                }
            } else {
                units[0] = Some(Unit {
                    seq,
                    ts,
                    marker,
                    payload: media_payload.clone(),
                });
            }
            for u in units.iter().flatten() {
                recent.push(u.seq, u.ts, u.payload.clone());
            }
        }

        let resend = self.config.resend;
        // Packets older than a resend may be are released from the history.
        let history_age = resend.map_or(Duration::ZERO, |r| r.max_age);
        let audio_red = self.config.audio_red;
        let now = self.now;
        // Layers some subscriber waits for a keyframe of (bit i: layer i).
        let mut needs_keyframe = 0u8;
        for unit in units.iter().flatten() {
            let fwd = FwdPacket {
                source,
                seq: unit.seq,
                ts: unit.ts,
                arrival,
                pt,
                codec,
                clock_rate: params.spec().clock_rate.get(),
                keyframe: video && unit.seq == seq && keyframe,
                layer: layer as u8,
                resume_epoch: track.resume_epoch,
            };
            // One copy of each packet for NACKs, shared by all subscribers
            // (audio too: NACK is negotiated for Opus, see `codec::rtc_config`).
            let generation = match track.layers.get_mut(layer) {
                Some(l) => {
                    let h = l.history(
                        fwd.source,
                        if video {
                            HISTORY_PACKETS
                        } else {
                            AUDIO_PACKETS
                        },
                    );
                    h.insert(
                        HistPacket {
                            at: now,
                            seq: fwd.seq,
                            marker: unit.marker,
                            // The codec's: audio from a publisher's RED is unwrapped.
                            pt: params.pt(),
                            payload: unit.payload.clone(),
                            orientation: ext.video_orientation,
                        },
                        history_age,
                    );
                    Some(h.generation())
                }
                None => None,
            };
            // RED payloads built for this packet, by (level, payload type).
            let mut red_built: [Option<BuiltRed>; MAX_LEVEL as usize] = Default::default();
            // The packet wrapped in video RED (for subscribers getting FEC),
            // by payload type and the media payload it wraps.
            let mut red_wrapped: Option<RedWrapped> = None;
            // VP8 payloads with rewritten picture ids, shared by subscribers
            // whose rewrite came out the same.
            let mut munged: [Option<Arc<[u8]>>; 4] = Default::default();
            for &(sub_id, mid) in &track.subscribers {
                let Some(sub) = self.peers.get_mut(&sub_id) else {
                    continue;
                };
                let Some(out) = sub.outs.iter_mut().find(|o| o.mid == mid) else {
                    continue;
                };
                let (out_seq, out_ts, switched) = match out.fwd.decide(&fwd) {
                    Decision::Skip => continue,
                    Decision::Drop(r) => {
                        if r == DropReason::WaitingForKeyframe {
                            if let Some(l) = out.fwd.layers.waiting_for() {
                                needs_keyframe |= 1 << l;
                            }
                        }
                        self.stats.drops.add(r);
                        continue;
                    }
                    Decision::Forward { seq, ts, switched } => (seq, ts, switched),
                };
                // VP8: picture ids continue across layer switches.
                let mut media = &unit.payload;
                let munged_payload;
                if codec == CodecKind::Vp8 {
                    // Only a new source needs new picture ids: after a pause
                    // of the same one, its own numbering (with a gap the
                    // keyframe makes harmless) goes through unchanged.
                    if switched && out.vp8_source != Some(fwd.source) {
                        if out.vp8_source.is_some() {
                            out.vp8.switch_source();
                        }
                        out.vp8_source = Some(fwd.source);
                    }
                    match out.vp8.rewrite(&unit.payload, &mut self.vp8_buf) {
                        Ok(false) => {}
                        Ok(true) => {
                            let buf = &self.vp8_buf;
                            munged_payload = match munged.iter().flatten().find(|b| ***b == **buf) {
                                Some(b) => b.clone(),
                                None => {
                                    let b: Arc<[u8]> = Arc::from(&buf[..]);
                                    if let Some(slot) = munged.iter_mut().find(|s| s.is_none()) {
                                        *slot = Some(b.clone());
                                    }
                                    b
                                }
                            };
                            media = &munged_payload;
                        }
                        Err(_) => {
                            self.stats.drops.add(DropReason::BadVp8);
                            continue;
                        }
                    }
                }
                let map = match out.pt_map {
                    Some(m) if m.incoming == params.pt() => m,
                    _ => {
                        let Some(local) = sub.rtc.codec_config().match_params(params).copied()
                        else {
                            self.stats.drops.add(DropReason::NoPayloadType);
                            continue;
                        };
                        let negotiated = sub
                            .rtc
                            .media(mid)
                            .is_some_and(|m| m.remote_pts().contains(&local.pt()));
                        if !negotiated {
                            self.stats.drops.add(DropReason::NoPayloadType);
                            continue;
                        }
                        let m = PtMap {
                            incoming: params.pt(),
                            out: local.pt(),
                            red: local.red(),
                        };
                        out.pt_map = Some(m);
                        // Not H.264: without a picture id a lost FEC packet
                        // (never retransmitted) breaks frame continuity, as
                        // libwebrtc reasons.
                        let fec_codec = matches!(codec, CodecKind::Vp8 | CodecKind::Vp9);
                        if fec_codec && self.config.video_fec && out.fec.is_none() {
                            out.fec = VideoFec::for_mline(&mut sub.rtc, mid);
                        }
                        m
                    }
                };
                // Audio to a subscriber whose link loses packets: RED.
                let mut out_pt = map.out;
                let mut payload = media;
                let red_payload;
                let fec = out.fec.as_mut().filter(|f| f.active && video);
                if let Some(red_pt) = fec.as_ref().and_then(|f| f.red_pt()) {
                    let wrapped = match &red_wrapped {
                        Some((p, m, b)) if *p == map.out && Arc::ptr_eq(m, media) => b.clone(),
                        _ => {
                            let mut b = Vec::with_capacity(media.len() + 1);
                            b.push(*map.out);
                            b.extend_from_slice(media);
                            let b: Arc<[u8]> = b.into();
                            red_wrapped = Some((map.out, media.clone(), b.clone()));
                            b
                        }
                    };
                    red_payload = wrapped;
                    payload = &red_payload;
                    out_pt = red_pt;
                } else if let (Some(red_pt), Some(recent), level @ 1..) = (
                    map.red.filter(|_| audio_red),
                    track.audio.as_ref(),
                    sub.red.0,
                ) {
                    let cached = red_built
                        .iter()
                        .flatten()
                        .find(|(l, p, _)| *l == level && *p == map.out)
                        .map(|(_, _, b)| b.clone());
                    let built = cached.or_else(|| {
                        if !recent.build_red(unit.seq, level, *map.out, &mut self.red_buf) {
                            return None;
                        }
                        let b: Arc<[u8]> = Arc::from(&self.red_buf[..]);
                        if let Some(slot) = red_built.iter_mut().find(|s| s.is_none()) {
                            *slot = Some((level, map.out, b.clone()));
                        }
                        Some(b)
                    });
                    if let Some(b) = built {
                        red_payload = b;
                        payload = &red_payload;
                        out_pt = red_pt;
                    }
                }
                let mut api = sub.rtc.direct_api();
                let Some(tx) = api.stream_tx_by_mid(mid, None) else {
                    self.stats.drops.add(DropReason::NotNegotiated);
                    continue;
                };
                tx.write_rtp(
                    RtpWrite::new(out_pt, out_seq.into(), out_ts, fwd.arrival, payload.clone())
                        .marker(unit.marker)
                        .ext_vals(ext.clone())
                        .nackable(video),
                );
                if let Some(generation) = generation {
                    let policy = resend.as_ref().unwrap_or(&ResendPolicy::DEFAULT);
                    out.seq
                        .get_or_insert_with(|| {
                            let n = if video {
                                SEQUENCER_PACKETS
                            } else {
                                AUDIO_PACKETS
                            };
                            Sequencer::new(n, now)
                        })
                        .sent(
                            now,
                            SentPacket {
                                out_seq,
                                out_ts,
                                src_seq: fwd.seq,
                                generation,
                                layer: fwd.layer,
                                len: unit.payload.len(),
                            },
                            policy,
                        );
                }
                if video {
                    sub.loss.sent += 1;
                }
                if let Some(f) = fec {
                    let n = f.on_media(unit.marker, sub.loss.estimate(now), sub.rtt);
                    f.add_job(out_seq, n, out_ts);
                }
                self.stats.rtp_forwarded += 1;
                self.stats.bytes_forwarded += payload.len() as u64;
                sub.needs_tick = true;
                Self::mark_dirty(&mut self.dirty, sub);
            }
        }
        // str0m must neither NACK what RED rebuilt nor take a retransmission
        // of it as new.
        if let (true, Some(p)) = (
            red_recovered.iter().any(Option::is_some),
            self.peers.get_mut(&from),
        ) {
            let mut api = p.rtc.direct_api();
            if let Some(rx) = api.stream_rx(&ssrc) {
                for s in red_recovered.into_iter().flatten() {
                    rx.mark_recovered(s.into());
                }
            }
        }
        // Subscribers wait for a keyframe: ask the publisher (throttled).
        if needs_keyframe != 0 {
            let track_id = track.id;
            let room = self.peers.get(&from).map(|p| p.room.clone());
            for l in (0..MAX_LAYERS).filter(|l| needs_keyframe & (1 << l) != 0) {
                if let Some(room) = &room {
                    self.request_keyframe(room, track_id, Some(l));
                }
            }
        }
    }

    /// A publisher's ULPFEC packet (its decoder has it; it is not
    /// forwarded): its sequence number is taken out of every subscriber's
    /// stream, so it leaves no gap for them to NACK.
    fn skip_upstream_fec(&mut self, from: PeerId, mid: Mid, ssrc: u32, seq: u64) {
        self.stats.drops.add(DropReason::UpstreamFec);
        let Some(publisher) = self.peers.get(&from) else {
            return;
        };
        let Some(track_id) = publisher.track_at(mid) else {
            return;
        };
        let Some(track) = self
            .rooms
            .get(&publisher.room)
            .and_then(|r| r.tracks.get(&track_id))
        else {
            return;
        };
        let source = SourceKey {
            track_epoch: track.source_epoch,
            ssrc,
        };
        for &(sub_id, sub_mid) in &track.subscribers {
            let Some(out) = self
                .peers
                .get_mut(&sub_id)
                .and_then(|p| p.outs.iter_mut().find(|o| o.mid == sub_mid))
            else {
                continue;
            };
            out.fwd.skip(source, seq);
        }
    }

    /// A subscriber NACKed packets: resend what the policy allows from the
    /// track's shared history.
    fn on_resend_request(&mut self, id: PeerId, req: ResendRequest) {
        let now = self.now;
        let nack = &mut self.stats.nack;
        nack.requested += req.seq_nos.len() as u64;
        // Without a policy NACKs are still counted (they measure the
        // subscriber's loss) but not answered.
        let answer = self.config.resend.is_some();
        let policy = self.config.resend.unwrap_or_default();
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let rtt = peer.rtt;
        let loss = &mut peer.loss;
        let copies = if loss.estimate(now) >= policy.duplicate_from_loss {
            2
        } else {
            1
        };
        let Some(out) = peer.outs.iter_mut().find(|o| o.mid == req.mid) else {
            return;
        };
        let (
            Some(track_id),
            Some(PtMap {
                incoming: in_pt,
                out: out_pt,
                ..
            }),
            Some(seq),
        ) = (out.source, out.pt_map, out.seq.as_mut())
        else {
            nack.unknown += req.seq_nos.len() as u64;
            return;
        };
        let Some((layers, video)) = self
            .rooms
            .get(&peer.room)
            .and_then(|r| r.tracks.get(&track_id))
            .map(|t| (&t.layers, t.kind == MediaKind::Video))
        else {
            nack.unknown += req.seq_nos.len() as u64;
            return;
        };
        let current_layer = out.fwd.layers.current;
        let vp8 = &mut out.vp8;
        let mut api = peer.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(req.mid, None) else {
            return;
        };
        let mut resent = false;
        for out_seq in req.seq_nos {
            let (outcome, first) = seq.on_nack(now, *out_seq, rtt, &policy);
            // The NACK loss sample is over video (`loss.sent` counts video):
            // a receiver need not NACK audio. (`first` already leaves out
            // holes the node itself has and NACKs that crossed a late fill.)
            if first && video {
                loss.lost += 1;
            }
            if !answer {
                continue;
            }
            let ResendOutcome::Resend {
                src_seq,
                generation,
                layer,
                out_ts,
            } = outcome
            else {
                nack.count_refusal(outcome);
                continue;
            };
            // A packet of the layer it switched away from: the keyframe it
            // switched on made it useless (and its picture ids are mapped
            // for the new layer only).
            if video && current_layer != Some(layer) {
                nack.too_late += 1;
                continue;
            }
            let Some(p) = layers
                .get(usize::from(layer))
                .and_then(|l| l.history_ref())
                .and_then(|h| h.get(generation, src_seq))
                .filter(|p| p.pt == in_pt)
            else {
                nack.unknown += 1;
                continue;
            };
            let payload = match video.then(|| vp8.rewrite(&p.payload, &mut self.vp8_buf)) {
                Some(Ok(true)) => Arc::from(&self.vp8_buf[..]),
                _ => p.payload.clone(),
            };
            for copy in 0..copies {
                if copy > 0 && !seq.can_duplicate(p.payload.len(), &policy) {
                    break;
                }
                seq.charge(p.payload.len());
                tx.write_resend(
                    RtpWrite::new(out_pt, out_seq, out_ts, now, payload.clone())
                        .marker(p.marker)
                        .ext_vals(ExtensionValues {
                            video_orientation: p.orientation,
                            ..Default::default()
                        })
                        .nackable(true),
                );
                nack.resent_bytes += p.payload.len() as u64;
                if copy > 0 {
                    nack.duplicated += 1;
                }
            }
            nack.resent += 1;
            resent = true;
        }
        if resent {
            peer.needs_tick = true;
            Self::mark_dirty(&mut self.dirty, peer);
        }
    }

    /// A subscriber lost a picture: ask the publisher, merged and throttled,
    /// for the layer it receives (or waits for).
    fn on_keyframe_request(&mut self, id: PeerId, req: KeyframeRequest) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let Some(out) = peer.outs.iter().find(|o| o.mid == req.mid) else {
            return;
        };
        let Some(track) = out.source else {
            return;
        };
        let sel = &out.fwd.layers;
        let Some(layer) = sel.current.or(sel.target) else {
            return;
        };
        let room = peer.room.clone();
        self.request_keyframe(&room, track, Some(usize::from(layer)));
    }

    /// Asks the publisher of `track` for a keyframe of `layer` (`None`: of
    /// every layer), each layer at most once per throttle interval.
    fn request_keyframe(&mut self, room: &RoomId, track: TrackId, layer: Option<usize>) {
        let now = self.now;
        let Some(t) = self
            .rooms
            .get_mut(room)
            .and_then(|r| r.tracks.get_mut(&track))
        else {
            return;
        };
        if t.kind != MediaKind::Video {
            return;
        }
        let Some(owner) = t.owner else { return };
        let mid = t.mid;
        let mut due: [Option<Option<Rid>>; MAX_LAYERS] = [None; MAX_LAYERS];
        for (i, l) in t.layers.iter_mut().enumerate() {
            if layer.is_none_or(|want| want == i) && l.keyframe.request(now) {
                due[i] = Some(l.rid);
            }
        }
        for rid in due.into_iter().flatten() {
            self.send_keyframe_request(owner, mid, rid);
        }
    }

    fn send_keyframe_request(&mut self, owner: PeerId, mid: Mid, rid: Option<Rid>) {
        let Some(p) = self.peers.get_mut(&owner) else {
            return;
        };
        let mut api = p.rtc.direct_api();
        let Some(rx) = api.stream_rx_by_mid(mid, rid) else {
            return;
        };
        rx.request_keyframe(KeyframeRequestKind::Pli);
        self.stats.keyframe_requests_upstream += 1;
        Self::mark_dirty(&mut self.dirty, p);
    }

    fn on_channel_data(&mut self, from: PeerId, d: ChannelData) {
        let now = self.now;
        if d.data.len() > MAX_CHAT_MESSAGE {
            self.stats.drops.add(DropReason::MessageTooLarge);
            return;
        }
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        if d.binary {
            return; // Only text chat is relayed.
        }
        if !peer.chat_rate.allow(now) {
            self.stats.drops.add(DropReason::ChatRateLimited);
            return;
        }
        // The identity comes from the token (or is per session in dev
        // mode); the display name is the client's own choice.
        let msg = serde_json::json!({
            "from": from.to_string(),
            "identity": peer.identity,
            "name": peer.name,
            "data": String::from_utf8_lossy(&d.data),
        })
        .to_string();
        let Some(room) = self.rooms.get(&peer.room) else {
            return;
        };
        for pid in room.peers.iter().filter(|p| **p != from) {
            let Some(p) = self.peers.get_mut(pid) else {
                continue;
            };
            let Some(cid) = p.channel else { continue };
            if let Some(mut ch) = p.rtc.channel(cid) {
                match ch.write(false, msg.as_bytes()) {
                    Ok(true) => {}
                    // The receiver's SCTP buffer is full: it is not reading.
                    Ok(false) | Err(_) => self.stats.drops.add(DropReason::ChatBufferFull),
                }
                Self::mark_dirty(&mut self.dirty, p);
            }
        }
    }

    // ---------------------------------------------------------------- negotiation

    /// Brings a WebSocket peer's receiving m-lines in line with what it
    /// wants: one server offer adding and stopping m-lines.
    fn negotiate(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer.kind != PeerKind::WebSocket || !peer.neg.ready || peer.neg.pending.is_some() {
            return;
        }
        let Some(room) = self.rooms.get(&peer.room) else {
            return;
        };
        let desired: Vec<TrackId> = peer
            .wanted
            .iter()
            .copied()
            .filter(|t| room.tracks.get(t).is_some_and(|t| t.owner != Some(id)))
            .collect();
        let mut api = peer.rtc.sdp_api();
        let mut adds = Vec::new();
        let mut stops = Vec::new();
        for tid in &desired {
            if peer.outs.iter().any(|o| o.source == Some(*tid)) {
                continue;
            }
            let t = &room.tracks[tid];
            let stream_id = t.owner.map(|o| o.to_string());
            let mid = api.add_media(
                t.kind,
                Direction::SendOnly,
                stream_id,
                Some(tid.to_string()),
                None,
            );
            adds.push((*tid, mid, t.kind));
        }
        for o in &peer.outs {
            if o.source.is_none_or(|s| !desired.contains(&s)) {
                api.stop_media(o.mid);
                stops.push(o.mid);
            }
        }
        if !api.has_changes() {
            return;
        }
        let Some((offer, pending)) = api.apply() else {
            return;
        };
        let seq = peer.neg.next_seq;
        peer.neg.next_seq += 1;
        let mut map: Vec<TrackMapEntry> = peer
            .outs
            .iter()
            .filter(|o| !stops.contains(&o.mid))
            .filter_map(|o| o.source.map(|s| (o.mid, s)))
            .chain(adds.iter().map(|(t, m, _)| (*m, *t)))
            .map(|(mid, track_id)| TrackMapEntry {
                mid: mid.to_string(),
                track_id,
                peer_id: room.tracks.get(&track_id).and_then(|t| t.owner),
            })
            .collect();
        map.sort_by(|a, b| a.mid.cmp(&b.mid));
        peer.neg.pending = Some(PendingOffer {
            offer: pending,
            seq,
            adds,
            stops,
            sent_at: self.now,
        });
        Self::mark_dirty(&mut self.dirty, peer);
        debug!(peer = %id, seq, "server offer");
        self.signal(id, PeerSignal::TrackMap(map));
        self.signal(
            id,
            PeerSignal::Offer {
                sdp: offer.to_sdp_string(),
                seq,
            },
        );
    }

    // ---------------------------------------------------------------- leaving

    /// Removes a peer. With `unpublish` its tracks go at once; otherwise
    /// (connection lost, replaced) they wait the reconnect grace for the
    /// same identity to come back.
    fn remove_peer(&mut self, id: PeerId, reason: &'static str, unpublish: bool) {
        let Some(peer) = self.peers.remove(&id) else {
            return;
        };
        debug!(peer = %id, reason, "peer removed");
        self.demux.remove_peer(id);
        self.renegotiate.remove(&id);
        let grace = self.now + self.config.reconnect_grace;
        let Some(room) = self.rooms.get_mut(&peer.room) else {
            return;
        };
        room.peers.retain(|p| *p != id);
        for o in &peer.outs {
            room.remove_subscriber(id, o.mid);
        }
        let mut gone = Vec::new();
        for p in &peer.published {
            if let Some(t) = room.tracks.get_mut(&p.track) {
                if unpublish || peer.kind != PeerKind::WebSocket {
                    gone.push(p.track);
                } else {
                    t.owner = None;
                    t.orphaned_until = Some(grace);
                }
            }
        }
        let room_id = room.id.clone();
        let others = room.peers.clone();
        for t in gone {
            self.unpublish(&room_id, t);
        }
        for o in others {
            self.signal(o, PeerSignal::ParticipantLeft(id));
        }
        self.events
            .push_back(NodeEvent::PeerGone { peer: id, reason });
    }

    fn signal(&mut self, to: PeerId, s: PeerSignal) {
        if let Some(p) = self.peers.get(&to) {
            if p.kind == PeerKind::WebSocket {
                self.events.push_back(NodeEvent::Signal(to, s));
            }
        }
    }
}

/// The layers of a published m-line: its simulcast `rid`s, if any.
fn layers_of(m: &MediaAdded) -> TrackLayers {
    match &m.simulcast {
        Some(s) if m.kind == MediaKind::Video && !s.recv.is_empty() => {
            TrackLayers::from_rids(s.recv.iter().map(|l| l.rid))
        }
        _ => TrackLayers::single(),
    }
}

fn new_out(mid: Mid, kind: MediaKind, source: Option<TrackId>, rng: &mut SmallRng) -> OutTrack {
    // Random start (RFC 3550 §5.1), below 2^15 so receivers need no
    // out-of-band rollover counter (see str0m's StreamTx::write_rtp).
    let first_seq = rng.random_range(1..0x8000u16);
    let first_ts = rng.random::<u32>();
    OutTrack {
        mid,
        kind,
        source,
        fwd: Forwarder::new(first_seq, first_ts),
        pt_map: None,
        seq: None,
        fec: None,
        vp8: Vp8Munger::new(),
        vp8_source: None,
        starved: false,
    }
}

/// Our offer will never be answered (glare, timeout): drop the m-lines it
/// stopped (str0m stopped them already) from our side too. Its additions are
/// rolled back by str0m and re-planned by the next `negotiate`.
fn abandon_offer(peer: &mut Peer, room: &mut Room, pending: PendingOffer) {
    for mid in pending.stops {
        peer.outs.retain(|o| o.mid != mid);
        room.remove_subscriber(peer.id, mid);
    }
}

/// NACKs on a new outgoing stream come to the node (`on_resend_request`),
/// which answers from the track's shared history; str0m keeps no copy.
fn tune_out_stream(rtc: &mut Rtc, mid: Mid) {
    if let Some(tx) = rtc.direct_api().stream_tx_by_mid(mid, None) {
        tx.set_nack_handoff(true);
    }
}

fn track_info(t: &Track) -> TrackInfo {
    TrackInfo {
        track_id: t.id,
        kind: t.kind,
        muted: t.muted,
        label: t.label.clone(),
    }
}

fn participant_info(p: &Peer, room: &Room) -> ParticipantInfo {
    ParticipantInfo {
        peer_id: p.id,
        identity: p.identity.clone(),
        name: p.name.clone(),
        tracks: room
            .tracks
            .values()
            .filter(|t| t.owner == Some(p.id))
            .map(track_info)
            .collect(),
    }
}
