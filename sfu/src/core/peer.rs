//! One peer: a str0m `Rtc` plus what the router needs to know about it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use str0m::change::SdpPendingOffer;
use str0m::channel::ChannelId;
use str0m::format::PayloadParams;
use str0m::media::{MediaKind, Mid, Pt};
use str0m::Rtc;

use super::fec::{FecReceiver, FlexfecReceiver, VideoFec};
use super::forward::Forwarder;
use super::history::Sequencer;
use super::ids::{PeerId, RoomId, TrackId};
use super::node::Selection;
use super::redundancy::{LossEstimate, RedLevel};
use super::rewrite::SourceKey;
use super::vp8::Vp8Munger;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerKind {
    /// Full signaling: events, server offers, data channel.
    WebSocket,
    /// WHIP ingest: publishes, never renegotiated.
    Whip,
    /// WHEP egress: plays the m-lines of its offer, bound to a publisher
    /// (`target` identity, or the room's first).
    Whep { target: Option<String> },
}

#[derive(Debug)]
pub(crate) struct Published {
    pub mid: Mid,
    pub track: TrackId,
    /// Last payload type seen and its parameters: saves a codec lookup per packet.
    pub params: Option<(Pt, PayloadParams)>,
    /// The same for the payload type inside video RED.
    pub inner_params: Option<(Pt, PayloadParams)>,
    /// ULPFEC decoders of the publisher's video, one per SSRC (simulcast
    /// layer), made on its first RED packet.
    pub fec_rx: Vec<(u32, FecReceiver)>,
    /// The FlexFEC decoder of the m-line's video (FlexFEC is not used with
    /// simulcast), made on its first protected or repair packet.
    pub flexfec_rx: Option<FlexfecReceiver>,
}

/// Most ULPFEC decoders one published m-line keeps (one per simulcast layer).
const MAX_FEC_RECEIVERS: usize = 4;

impl Published {
    pub fn new(mid: Mid, track: TrackId) -> Self {
        Published {
            mid,
            track,
            params: None,
            inner_params: None,
            fec_rx: Vec::new(),
            flexfec_rx: None,
        }
    }

    /// The format of payload type `pt` (an audio RED type stands for its
    /// primary), cached.
    pub fn params_of(&mut self, pt: Pt, rtc: &Rtc) -> Option<PayloadParams> {
        cached_params(&mut self.params, pt, rtc)
    }

    /// [`Published::params_of`] for the payload type inside video RED.
    pub fn inner_params_of(&mut self, pt: Pt, rtc: &Rtc) -> Option<PayloadParams> {
        cached_params(&mut self.inner_params, pt, rtc)
    }

    /// The FlexFEC decoder of the m-line, if it negotiated FlexFEC.
    pub fn flexfec_receiver(&mut self, rtc: &Rtc) -> Option<&mut FlexfecReceiver> {
        if self.flexfec_rx.is_none() {
            self.flexfec_rx = FlexfecReceiver::for_mline(rtc, self.mid);
        }
        self.flexfec_rx.as_mut()
    }

    /// The ULPFEC decoder of the video on `ssrc`, if the m-line negotiated
    /// ULPFEC.
    pub fn fec_receiver(&mut self, rtc: &Rtc, ssrc: u32) -> Option<&mut FecReceiver> {
        let i = match self.fec_rx.iter().position(|(s, _)| *s == ssrc) {
            Some(i) => i,
            None => {
                let rx = FecReceiver::for_mline(rtc, self.mid, ssrc)?;
                if self.fec_rx.len() >= MAX_FEC_RECEIVERS {
                    self.fec_rx.remove(0);
                }
                self.fec_rx.push((ssrc, rx));
                self.fec_rx.len() - 1
            }
        };
        self.fec_rx.get_mut(i).map(|(_, rx)| rx)
    }
}

fn cached_params(
    cache: &mut Option<(Pt, PayloadParams)>,
    pt: Pt,
    rtc: &Rtc,
) -> Option<PayloadParams> {
    match *cache {
        Some((p, params)) if p == pt => Some(params),
        _ => {
            let params = rtc
                .codec_config()
                .find(|p| p.pt() == pt || p.red() == Some(pt))
                .copied()?;
            *cache = Some((pt, params));
            Some(params)
        }
    }
}

/// The payload types one subscriber gets a track's codec on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PtMap {
    /// The publisher's payload type of the codec.
    pub incoming: Pt,
    /// The subscriber's payload type of the same codec.
    pub out: Pt,
    /// The subscriber's RED payload type for it, if negotiated.
    pub red: Option<Pt>,
}

#[derive(Debug)]
pub(crate) struct OutTrack {
    pub mid: Mid,
    pub kind: MediaKind,
    /// The track forwarded on this m-line. `None`: to be stopped (WebSocket)
    /// or waiting for a publisher (WHEP).
    pub source: Option<TrackId>,
    pub fwd: Forwarder,
    /// Incoming payload type → this subscriber's payload types.
    pub pt_map: Option<PtMap>,
    /// Outgoing sequence number → history, for NACKs (video, on first packet).
    pub seq: Option<Sequencer>,
    /// ULPFEC towards this subscriber, if it negotiated it (video).
    pub fec: Option<VideoFec>,
    /// VP8 picture ids continuous across layer switches and new sources.
    pub vp8: Vp8Munger,
    /// The source whose picture ids the munger maps now.
    pub vp8_source: Option<SourceKey>,
    /// Paused for lack of bandwidth (the client was told).
    pub starved: bool,
}

#[derive(Debug)]
pub(crate) struct PendingOffer {
    pub offer: SdpPendingOffer,
    pub seq: u64,
    pub adds: Vec<(TrackId, Mid, MediaKind)>,
    /// str0m stops these m-lines at once, not when the answer comes: if the
    /// offer is abandoned they must still be dropped on our side.
    pub stops: Vec<Mid>,
    pub sent_at: Instant,
}

#[derive(Debug, Default)]
pub(crate) struct Negotiation {
    pub pending: Option<PendingOffer>,
    pub next_seq: u64,
    /// The client's first offer has been accepted: server offers may follow.
    pub ready: bool,
    /// Server offers in a row that went unanswered.
    pub unanswered: u32,
}

/// Chat messages a participant may send in a burst, then per second.
const CHAT_BURST: f64 = 20.0;
pub(crate) const CHAT_RATE_PER_SECOND: f64 = 5.0;

/// A token bucket on the virtual clock.
#[derive(Debug)]
pub(crate) struct ChatRate {
    tokens: f64,
    last: Option<Instant>,
}

impl Default for ChatRate {
    fn default() -> Self {
        ChatRate {
            tokens: CHAT_BURST,
            last: None,
        }
    }
}

impl ChatRate {
    pub fn allow(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * CHAT_RATE_PER_SECOND).min(CHAT_BURST);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
pub(crate) struct Peer {
    pub id: PeerId,
    pub room: RoomId,
    pub identity: String,
    pub name: String,
    pub kind: PeerKind,
    pub can_publish: bool,
    pub can_subscribe: bool,
    pub auto_subscribe: bool,
    pub rtc: Rtc,
    pub published: Vec<Published>,
    pub outs: Vec<OutTrack>,
    /// Tracks this (WebSocket) peer wants to receive.
    pub wanted: BTreeSet<TrackId>,
    pub neg: Negotiation,
    pub channel: Option<ChannelId>,
    pub chat_rate: ChatRate,
    /// Labels the client gave its m-lines before or after they were published.
    pub labels: Vec<(Mid, String)>,
    pub next_timeout: Option<Instant>,
    /// Queued in `Node::dirty`: has output to drain.
    pub dirty: bool,
    /// RTP was written since the last tick: str0m sends it on `Timeout(now)`.
    pub needs_tick: bool,
    pub connected: bool,
    /// Removed unless ICE+DTLS connect by then.
    pub connect_deadline: Option<Instant>,
    /// Since when ICE has been disconnected (it may come back).
    pub ice_lost_at: Option<Instant>,
    /// Round-trip time from RTCP receiver reports (a default until known).
    pub rtt: Duration,
    /// Audio redundancy towards this peer, from the loss its receiver
    /// reports show on any of its streams (video reports come every second,
    /// audio ones every five).
    pub red: RedLevel,
    pub loss: LossEstimate,
    /// Its bandwidth estimate, preferences and layer allocation.
    pub selection: Selection,
}

impl Peer {
    pub fn label_for(&self, mid: Mid, kind: MediaKind) -> String {
        self.labels
            .iter()
            .find(|(m, _)| *m == mid)
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| match kind {
                MediaKind::Audio => "microphone".to_string(),
                MediaKind::Video => "camera".to_string(),
            })
    }

    pub fn track_at(&self, mid: Mid) -> Option<TrackId> {
        self.published
            .iter()
            .find(|p| p.mid == mid)
            .map(|p| p.track)
    }
}
