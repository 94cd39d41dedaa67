//! A publishing client's own protection of its uplink: what Meridian's
//! native client (`meridian-client`) sends so that the SFU can repair loss
//! between it and the node, shared with the simulator's clients.
//!
//! A browser decides this for itself: Chrome sends Opus in RED with one
//! earlier packet (a fixed libwebrtc constant) and VP8 with ULPFEC after
//! each frame when they are negotiated. At 150 ms RTT a 200 ms jitter
//! buffer leaves time for one NACK round, so for a Chrome publisher at 30 %
//! random loss an audio packet is lost whenever it, the next packet and its
//! one retransmission are all lost: 0.3³ = 2.7 %, whatever the SFU does.
//!
//! Our client does what the node does towards its subscribers
//! ([`RedLevel`], [`VideoFec`]), driven by the uplink's loss as the node's
//! transport-wide feedback shows it ([`UplinkLoss`], from str0m's
//! `PeerStats::egress_loss_fraction`: every packet sent, before any repair):
//! audio carries up to three earlier packets, and video FEC follows the loss
//! and protects across frames ([`super::fec::CARRIED_FRAMES`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::{MediaKind, Mid, Pt, Rid};
use str0m::rtp::{ExtensionValues, RtpWrite, SeqNo};
use str0m::Rtc;

use super::codec::negotiated_pt;
use super::fec::{FecForm, VideoFec, CARRIED_FRAMES};
use super::redundancy::{AudioRecent, RedLevel};

/// How a publisher protects what it sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Protection {
    /// Fixed, as Chrome publishes: Opus in RED with `red_blocks` earlier
    /// packets (0: plain Opus), and, with `fec_loss`, VP8 in RED with
    /// ULPFEC after each frame at the protection rate for that loss (the
    /// loss libwebrtc would see in its transport feedback; `None`: no FEC).
    Fixed {
        red_blocks: u8,
        fec_loss: Option<f32>,
    },
    /// Following the uplink's measured loss, as `meridian-client` publishes.
    Adaptive,
}

impl Default for Protection {
    fn default() -> Self {
        Protection::Fixed {
            red_blocks: 0,
            fec_loss: None,
        }
    }
}

/// RTT assumed until the first measurement.
const INITIAL_RTT: Duration = Duration::from_millis(100);

/// How long a loss sample (one second of transport feedback) counts: the
/// estimate is the largest of this long, so that one lucky second does not
/// drop the protection a lossy link needs.
const LOSS_MEMORY: Duration = Duration::from_secs(5);

/// The uplink's loss and RTT as the publisher measures them, and the
/// protection they call for.
#[derive(Debug)]
pub struct UplinkLoss {
    /// Loss samples (when, fraction), oldest first, at most `LOSS_MEMORY` old.
    samples: VecDeque<(Instant, f32)>,
    red: RedLevel,
    rtt: Duration,
}

impl UplinkLoss {
    pub fn new() -> Self {
        UplinkLoss {
            samples: VecDeque::new(),
            red: RedLevel::default(),
            rtt: INITIAL_RTT,
        }
    }

    /// From str0m's `Event::PeerStats`: the loss the remote's transport
    /// feedback reported over the last second (`egress_loss_fraction`).
    pub fn on_peer_stats(&mut self, now: Instant, loss: Option<f32>) {
        if let Some(loss) = loss {
            self.samples.push_back((now, loss.clamp(0.0, 1.0)));
            while self.samples.len() > 1
                && self
                    .samples
                    .front()
                    .is_some_and(|(at, _)| now.saturating_duration_since(*at) > LOSS_MEMORY)
            {
                self.samples.pop_front();
            }
            self.red.update(self.loss());
        }
    }

    /// The largest loss of the last few seconds' samples (0 before any).
    pub fn loss(&self) -> f32 {
        self.samples.iter().map(|(_, l)| *l).fold(0.0, f32::max)
    }

    /// From str0m's `Event::MediaEgressStats` (receiver reports): the RTT.
    pub fn on_rtt(&mut self, rtt: Duration) {
        self.rtt = rtt;
    }

    pub fn rtt(&self) -> Duration {
        self.rtt
    }

    /// What to send now under `protection`.
    pub fn plan(&self, protection: Protection) -> Plan {
        match protection {
            Protection::Fixed {
                red_blocks,
                fec_loss,
            } => Plan {
                red_blocks,
                fec_loss,
                rtt: self.rtt,
                carried_frames: 0,
            },
            Protection::Adaptive => Plan {
                red_blocks: self.red.0,
                fec_loss: Some(self.loss()),
                rtt: self.rtt,
                carried_frames: CARRIED_FRAMES,
            },
        }
    }
}

impl Default for UplinkLoss {
    fn default() -> Self {
        Self::new()
    }
}

/// What one packet gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// Earlier audio packets each audio packet carries in RED (0: plain).
    pub red_blocks: u8,
    /// The loss video FEC protects against (`None`: no FEC; below
    /// [`super::fec::FEC_FROM_LOSS`] it is off).
    pub fec_loss: Option<f32>,
    pub rtt: Duration,
    /// Earlier frames each FEC packet also protects (0: each frame alone,
    /// as libwebrtc does).
    pub carried_frames: usize,
}

/// One media packet to publish.
#[derive(Debug)]
pub struct Media {
    pub timestamp: u32,
    pub marker: bool,
    pub payload: Vec<u8>,
    pub ext: ExtensionValues,
    /// Kept for retransmission (str0m's send history).
    pub nackable: bool,
}

/// One stream a client publishes: its numbering and its protection state.
#[derive(Debug)]
pub struct SendStream {
    pub kind: MediaKind,
    pub mid: Mid,
    /// The simulcast layer, for a simulcast video m-line.
    pub rid: Option<Rid>,
    pub codec: Codec,
    pt: Option<Pt>,
    next_seq: u64,
    /// Audio: the last few packets, for RED; and the extended timestamp.
    recent: AudioRecent,
    ts: Option<(u32, u64)>,
    /// Video: the FEC encoder, once FEC was asked for and is negotiated.
    fec: Option<VideoFec>,
    /// FEC was asked for but the m-line negotiated none (not asked again).
    no_fec: bool,
    /// FEC packets sent.
    pub fec_sent: u64,
}

impl SendStream {
    /// `first_seq`: the first packet's sequence number (browsers pick a
    /// random one per session).
    pub fn new(kind: MediaKind, mid: Mid, rid: Option<Rid>, codec: Codec, first_seq: u64) -> Self {
        SendStream {
            kind,
            mid,
            rid,
            codec,
            pt: None,
            next_seq: first_seq,
            recent: AudioRecent::default(),
            ts: None,
            fec: None,
            no_fec: false,
            fec_sent: 0,
        }
    }

    /// Sends `codec` from now on.
    pub fn set_codec(&mut self, codec: Codec) {
        self.codec = codec;
        self.pt = None;
    }

    /// The payload type the stream's codec was negotiated with. The first
    /// time, the stream is also set to answer every NACK, as libwebrtc does
    /// (its retransmissions may use up to the whole target rate): str0m's
    /// default stops resending above 15 % of the bytes, which on a lossy
    /// uplink would drop most of what the SFU asks for. `None` until the
    /// codec is negotiated and str0m has the send stream.
    pub fn pt(&mut self, rtc: &mut Rtc) -> Option<Pt> {
        if let Some(pt) = self.pt {
            return Some(pt);
        }
        let pt = negotiated_pt(rtc, self.mid, self.codec)?;
        // Not ready before str0m has the send stream (`write` counts on it).
        let mut api = rtc.direct_api();
        let tx = api.stream_tx_by_mid(self.mid, self.rid)?;
        tx.set_rtx_cache(1024, Duration::from_secs(3), None);
        self.pt = Some(pt);
        Some(pt)
    }

    /// Writes one packet to str0m, wrapped as `plan` says. Returns its
    /// sequence number; `None` if the codec is not negotiated (yet) or the
    /// m-line has no send stream. Video FEC for it follows once str0m has
    /// serialized it: call [`SendStream::write_fec`] after polling str0m.
    pub fn write(&mut self, rtc: &mut Rtc, now: Instant, m: Media, plan: &Plan) -> Option<u64> {
        // Once `pt` is known the send stream exists, so the state below
        // counts only packets that are written.
        let pt = self.pt(rtc)?;
        let seq = self.next_seq;
        let mut wire_pt = pt;
        let mut body = m.payload;
        if self.kind == MediaKind::Audio {
            (wire_pt, body) = self.audio_red(rtc, seq, pt, m.timestamp, body, plan.red_blocks);
        } else if let Some(loss) = plan.fec_loss {
            if let Some(red_pt) = self.video_fec(rtc, seq, m.marker, m.timestamp, loss, plan) {
                body.insert(0, *pt);
                wire_pt = red_pt;
            }
        }
        let mut api = rtc.direct_api();
        let tx = api.stream_tx_by_mid(self.mid, self.rid)?;
        tx.write_rtp(
            RtpWrite::new(wire_pt, SeqNo::from(seq), m.timestamp, now, body)
                .ext_vals(m.ext)
                .marker(m.marker)
                .nackable(m.nackable),
        );
        self.next_seq += 1;
        Some(seq)
    }

    /// Opus in RED with up to `blocks` earlier packets, if RED was
    /// negotiated for it and `blocks` > 0; else as it is.
    fn audio_red(
        &mut self,
        rtc: &Rtc,
        seq: u64,
        pt: Pt,
        ts: u32,
        payload: Vec<u8>,
        blocks: u8,
    ) -> (Pt, Vec<u8>) {
        let ext_ts = match self.ts {
            Some((last, ext)) => ext.wrapping_add_signed(i64::from(ts.wrapping_sub(last) as i32)),
            None => u64::from(ts) + (1 << 32),
        };
        self.ts = Some((ts, ext_ts));
        let payload: Arc<[u8]> = payload.into();
        self.recent.push(seq, ext_ts, payload.clone());
        // str0m keeps a codec's RED payload type only where the remote
        // offered or accepted it (a WHIP server may not).
        let red_pt = (blocks > 0)
            .then(|| {
                rtc.codec_config()
                    .params()
                    .iter()
                    .find(|p| p.pt() == pt)?
                    .red()
            })
            .flatten();
        let Some(red_pt) = red_pt else {
            return (pt, payload.to_vec());
        };
        let mut red = Vec::with_capacity(payload.len() * (usize::from(blocks) + 1) + 16);
        // The first packet has no earlier one: RED with the primary alone,
        // as libwebrtc sends it.
        if self.recent.build_red(seq, blocks, *pt, &mut red)
            || meridian_fec::red::encode(*pt, &payload, &[], &mut red).is_ok()
        {
            return (red_pt, red);
        }
        (pt, payload.to_vec())
    }

    /// Counts a video packet into FEC. Returns the RED payload type to wrap
    /// it in while ULPFEC is on; `None`: send it plain.
    fn video_fec(
        &mut self,
        rtc: &mut Rtc,
        seq: u64,
        marker: bool,
        ts: u32,
        loss: f32,
        plan: &Plan,
    ) -> Option<Pt> {
        if self.fec.is_none() && !self.no_fec {
            // ULPFEC in RED where negotiated, else FlexFEC.
            match VideoFec::for_mline(rtc, self.mid) {
                Some(mut f) => {
                    f.set_carried_frames(plan.carried_frames);
                    self.fec = Some(f);
                }
                None => self.no_fec = true,
            }
        }
        let f = self.fec.as_mut()?;
        if f.update(loss) {
            let active = f.active;
            if let Some(tx) = rtc.direct_api().stream_tx_by_mid(self.mid, self.rid) {
                tx.set_tap(active);
            }
        }
        if !f.active {
            return None;
        }
        let n = f.on_media(marker, loss, plan.rtt);
        f.add_job(seq, n, ts);
        f.red_pt()
    }

    /// Writes the FEC packets due for what str0m serialized since the last
    /// call (a frame's, once its last packet went out), on the next
    /// sequence numbers. Returns how many were written; the caller ticks
    /// str0m to send them.
    pub fn write_fec(&mut self, rtc: &mut Rtc, now: Instant) -> usize {
        let Some(f) = self.fec.as_mut() else {
            return 0;
        };
        let mut api = rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(self.mid, self.rid) else {
            return 0;
        };
        let mut fec = Vec::new();
        while let Some(bytes) = tx.poll_tap() {
            f.on_tapped(bytes, &mut fec);
        }
        for p in &fec {
            match f.form {
                FecForm::Ulpfec { red_pt, .. } => {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    // Not kept for NACKs: by the time a retransmission came,
                    // the packets it protects would have been resent
                    // themselves.
                    tx.write_rtp(
                        RtpWrite::new(red_pt, SeqNo::from(seq), p.ts, now, p.payload.to_vec())
                            .nackable(false),
                    );
                }
                FecForm::Flexfec { pt } => {
                    tx.write_fec(RtpWrite::new(pt, 0.into(), p.ts, now, p.payload.to_vec()));
                }
            }
        }
        self.fec_sent += fec.len() as u64;
        fec.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_protection_follows_the_reported_loss() {
        let now = Instant::now();
        let mut up = UplinkLoss::new();
        let adaptive = Protection::Adaptive;
        let plan = up.plan(adaptive);
        assert_eq!(plan.red_blocks, 0, "a clean link sends plain audio");
        assert_eq!(plan.fec_loss, Some(0.0));
        up.on_peer_stats(now, Some(0.03));
        up.on_rtt(Duration::from_millis(150));
        assert_eq!(up.plan(adaptive).red_blocks, 1);
        assert_eq!(up.rtt(), Duration::from_millis(150));
        up.on_peer_stats(now, Some(0.30));
        let plan = up.plan(adaptive);
        assert_eq!(plan.red_blocks, 3);
        assert_eq!(plan.fec_loss, Some(0.30));
        assert_eq!(plan.carried_frames, CARRIED_FRAMES);
        // A loss sample counts for a while: one clean second does not drop
        // the protection at once.
        up.on_peer_stats(now + Duration::from_secs(1), Some(0.0));
        assert_eq!(up.plan(adaptive).red_blocks, 3);
        // Once the lossy samples are old, it comes down.
        let later = now + Duration::from_secs(7);
        up.on_peer_stats(later, Some(0.0));
        assert_eq!(up.plan(adaptive).red_blocks, 0);
        assert_eq!(up.plan(adaptive).fec_loss, Some(0.0));
    }

    #[test]
    fn fixed_protection_is_what_it_says() {
        let now = Instant::now();
        let mut up = UplinkLoss::new();
        let fixed = Protection::Fixed {
            red_blocks: 1,
            fec_loss: Some(0.1),
        };
        up.on_peer_stats(now, Some(0.3));
        let plan = up.plan(fixed);
        assert_eq!(plan.red_blocks, 1);
        assert_eq!(plan.fec_loss, Some(0.1));
        assert_eq!(plan.carried_frames, 0);
    }
}
