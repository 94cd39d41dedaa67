//! The sans-IO media plane: no clock, no sockets, no tokio.
//!
//! [`Node`] owns rooms, peers (each a str0m `Rtc` in RTP mode) and the demux
//! of the shared UDP port. Input: `handle_receive(now, …)`, `handle_timeout(now)`
//! and signaling commands (`join`, `handle_offer`, …). Output: drain
//! `poll_output()` until it returns `Output::Timeout`.

pub mod allocator;
pub mod codec;
pub mod demux;
pub mod dtls;
pub mod fec;
pub mod forward;
pub mod history;
pub mod ids;
pub mod keyframe;
pub mod publish;
pub mod redundancy;
pub mod rewrite;
pub mod simulcast;
pub mod speaker;
pub mod vp8;

mod node;
mod peer;
mod room;

pub use history::ResendPolicy;
pub use ids::{PeerId, RoomId, TrackId};
pub use node::{
    CommandError, IoStats, JoinKind, JoinRequest, MuteTarget, NackStats, Node, NodeConfig,
    NodeEvent, NodeStats, Output, ParticipantInfo, PeerSignal, SelectionState, TrackInfo,
    TrackMapEntry, TrackPrefs, DEFAULT_MAX_PEERS_PER_ROOM,
};
pub use str0m::media::MediaKind;

/// Why a datagram or a packet was not forwarded. Every drop is counted under
/// one of these (see `NodeStats::drops`); none of them is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Datagram from an address no peer uses, and not STUN.
    UnknownSource,
    /// STUN naming an ICE ufrag no peer has.
    UnknownUfrag,
    /// STUN that did not parse.
    BadStun,
    /// Not STUN, DTLS, RTP or RTCP by its first byte.
    Unparseable,
    /// The peer's WebRTC stack rejected the datagram (bad SRTP, bad DTLS, …).
    RejectedByPeer,
    /// RTP on an m-line that carries no published track.
    NoTrack,
    /// The track is muted.
    Muted,
    /// Video for a subscriber that has not had a keyframe yet.
    WaitingForKeyframe,
    /// Late packet of a source the subscriber was switched away from.
    StaleSource,
    /// Packet older than the point where its source was anchored.
    BeforeSwitch,
    /// The subscriber did not negotiate the packet's codec.
    NoPayloadType,
    /// The subscriber's m-line is not (or no longer) negotiated.
    NotNegotiated,
    /// A data-channel message over the size limit.
    MessageTooLarge,
    /// A participant sending chat faster than its rate (5/s after a burst of 20).
    ChatRateLimited,
    /// A receiver's data-channel buffer is full (it does not read).
    ChatBufferFull,
    /// A publisher's RED payload that does not parse or wraps another codec.
    BadRed,
    /// A packet so late that its place in the subscriber's stream is unknown.
    TooLate,
    /// A publisher's ULPFEC packet (not used for recovery yet).
    UpstreamFec,
    /// A VP8 payload descriptor that does not parse.
    BadVp8,
}

impl DropReason {
    pub const ALL: [DropReason; 19] = [
        DropReason::UnknownSource,
        DropReason::UnknownUfrag,
        DropReason::BadStun,
        DropReason::Unparseable,
        DropReason::RejectedByPeer,
        DropReason::NoTrack,
        DropReason::Muted,
        DropReason::WaitingForKeyframe,
        DropReason::StaleSource,
        DropReason::BeforeSwitch,
        DropReason::NoPayloadType,
        DropReason::NotNegotiated,
        DropReason::MessageTooLarge,
        DropReason::ChatRateLimited,
        DropReason::ChatBufferFull,
        DropReason::BadRed,
        DropReason::TooLate,
        DropReason::UpstreamFec,
        DropReason::BadVp8,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::UnknownSource => "unknown_source",
            DropReason::UnknownUfrag => "unknown_ufrag",
            DropReason::BadStun => "bad_stun",
            DropReason::Unparseable => "unparseable",
            DropReason::RejectedByPeer => "rejected_by_peer",
            DropReason::NoTrack => "no_track",
            DropReason::Muted => "muted",
            DropReason::WaitingForKeyframe => "waiting_for_keyframe",
            DropReason::StaleSource => "stale_source",
            DropReason::BeforeSwitch => "before_switch",
            DropReason::NoPayloadType => "no_payload_type",
            DropReason::NotNegotiated => "not_negotiated",
            DropReason::MessageTooLarge => "message_too_large",
            DropReason::ChatRateLimited => "chat_rate_limited",
            DropReason::ChatBufferFull => "chat_buffer_full",
            DropReason::BadRed => "bad_red",
            DropReason::TooLate => "too_late",
            DropReason::UpstreamFec => "upstream_fec",
            DropReason::BadVp8 => "bad_vp8",
        }
    }
}

/// Drop counters, indexed by `DropReason as usize`.
#[derive(Debug, Clone, Default)]
pub struct DropCounters([u64; DropReason::ALL.len()]);

impl DropCounters {
    pub fn add(&mut self, r: DropReason) {
        self.0[r as usize] += 1;
    }

    pub fn get(&self, r: DropReason) -> u64 {
        self.0[r as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.0[*r as usize]))
    }
}
