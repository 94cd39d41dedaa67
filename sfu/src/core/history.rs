//! Loss recovery towards subscribers: one packet history per incoming track,
//! shared by all of its subscribers, and per subscriber a sequencer mapping
//! outgoing sequence numbers back into it, with the resend policy.
//!
//! The history holds each packet once (the payload is the `Arc` str0m handed
//! us; nothing is copied per subscriber). A subscriber's [`Sequencer`] keeps,
//! per outgoing sequence number, where the packet came from, the timestamp it
//! was sent with and how often it was resent: 24 bytes per packet, as
//! LiveKit's sequencer does for its down tracks.
//!
//! A NACKed packet is resent unless (counted in [`ResendOutcome`]):
//! - it is no longer known (older than the sequencer or the history holds),
//! - it could not arrive in time any more: `age + rtt/2 > max_age`,
//! - it was resent less than one RTT ago (the resend is still in flight; the
//!   receiver NACKs again when its own timer fires),
//! - it was already resent `max_resends` times,
//! - the subscriber's retransmission budget (a share of the bytes forwarded to
//!   it) is spent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::media::Pt;
use str0m::rtp::VideoOrientation;

/// Packets kept per incoming video track (power of two). 1 s of a
/// 5 Mbit/s stream at ~1100-byte packets is ~570 packets.
pub const HISTORY_PACKETS: usize = 1024;

/// Packets kept per incoming audio track, and outgoing audio packets
/// remembered per subscriber stream (power of two): 1.28 s of Opus at 10 ms
/// frames, 2.56 s at 20 ms, beyond the resend policy's `max_age`.
pub const AUDIO_PACKETS: usize = 128;

/// Outgoing packets remembered per subscriber stream (power of two): 1 s of
/// 5 Mbit/s video at 40 bytes each (str0m's own cache kept a ~300-byte
/// header copy per packet).
pub const SEQUENCER_PACKETS: usize = 512;

/// How the SFU answers subscriber NACKs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResendPolicy {
    /// A resend that would arrive later than this after the original was
    /// sent is useless to a real-time receiver.
    pub max_age: Duration,
    /// Resends of one packet, at most.
    pub max_resends: u8,
    /// Retransmitted bytes may reach this share of the bytes forwarded.
    pub budget_share: f32,
    /// Budget that can be saved up (bytes): allows a burst of resends after
    /// a clean period without letting a long clean period bank unlimited
    /// retransmissions.
    pub budget_max: u32,
    /// While the subscriber's link loses at least this share of packets,
    /// each resend goes out twice: losing the one copy would cost another
    /// NACK round (the receiver's retry interval plus an RTT, often more
    /// than its jitter buffer allows), and the link drops copies
    /// independently. Both copies count against the budget, and the second
    /// is only sent while the budget has plenty to spare.
    pub duplicate_from_loss: f32,
}

impl ResendPolicy {
    pub const DEFAULT: ResendPolicy = ResendPolicy {
        max_age: Duration::from_millis(1000),
        max_resends: 4,
        budget_share: 0.5,
        budget_max: 256 * 1024,
        duplicate_from_loss: 0.05,
    };
}

impl Default for ResendPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One packet of an incoming track.
#[derive(Debug, Clone)]
pub struct HistPacket {
    /// When the SFU received it.
    pub at: Instant,
    pub seq: u64,
    pub marker: bool,
    pub pt: Pt,
    pub payload: Arc<[u8]>,
    /// The one header extension value a video resend must carry.
    pub orientation: Option<VideoOrientation>,
}

/// The recent packets of one incoming track, indexed by its extended
/// sequence number: at most `capacity` of them, and none older than the
/// `max_age` given to `insert` (a packet no resend may use any more is
/// released, so the payloads it shares with the forwarding path are freed:
/// at 1 Mbit/s a full ring held ≈ 8 s, ≈ 1.1 MB, of video). Cleared (a new
/// generation) when the track's source changes, so a sequencer entry of the
/// old source can never fetch a packet of the new one with a colliding
/// sequence number.
#[derive(Debug)]
pub struct PacketHistory {
    slots: Box<[Option<HistPacket>]>,
    generation: u32,
    /// Every slot for a sequence number below this is empty or reused.
    oldest: u64,
}

impl Default for PacketHistory {
    fn default() -> Self {
        Self::new(HISTORY_PACKETS)
    }
}

impl PacketHistory {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.next_power_of_two();
        PacketHistory {
            slots: (0..capacity).map(|_| None).collect(),
            generation: 0,
            oldest: 0,
        }
    }

    fn index(&self, seq: u64) -> usize {
        (seq as usize) & (self.slots.len() - 1)
    }

    /// The current generation, to be remembered with each packet sent.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The source changed: forget everything.
    pub fn new_generation(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.slots.iter_mut().for_each(|s| *s = None);
        self.oldest = 0;
    }

    /// Keeps `p`, and releases packets received more than `max_age` before
    /// it (amortised O(1): each sequence number is passed once).
    pub fn insert(&mut self, p: HistPacket, max_age: Duration) {
        let (seq, now) = (p.seq, p.at);
        let i = self.index(seq);
        self.slots[i] = Some(p);
        let ring = self.slots.len() as u64;
        self.oldest = self.oldest.max(seq.saturating_sub(ring - 1));
        while self.oldest < seq {
            let j = self.index(self.oldest);
            if let Some(q) = &self.slots[j] {
                if q.seq == self.oldest {
                    if now.saturating_duration_since(q.at) <= max_age {
                        break;
                    }
                    self.slots[j] = None;
                }
            }
            self.oldest += 1;
        }
    }

    pub fn get(&self, generation: u32, seq: u64) -> Option<&HistPacket> {
        if generation != self.generation {
            return None;
        }
        self.slots[self.index(seq)]
            .as_ref()
            .filter(|p| p.seq == seq)
    }
}

/// A packet as sent to one subscriber, for [`Sequencer::sent`].
#[derive(Debug, Clone, Copy)]
pub struct SentPacket {
    pub out_seq: u64,
    pub out_ts: u32,
    /// Its sequence number in the track's history (of its simulcast
    /// layer), and the history's generation.
    pub src_seq: u64,
    pub generation: u32,
    pub layer: u8,
    /// Payload bytes (feeds the retransmission budget).
    pub len: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct SeqEntry {
    /// Outgoing extended sequence number + 1 (0: empty slot).
    out_seq_plus1: u64,
    src_seq: u64,
    out_ts: u32,
    generation: u32,
    layer: u8,
    /// Milliseconds since the sequencer's base when first sent.
    sent_ms: u32,
    /// Milliseconds since base of the last resend.
    resent_ms: u32,
    resends: u8,
    /// NACKed at least once.
    nacked: bool,
    /// Forwarded after a later packet (it filled a hole: the publisher's
    /// retransmission): NACKs sent before it could arrive are stale.
    late: bool,
    /// Made by the node (FEC): never resent, not a media loss.
    not_media: bool,
    /// Skipped: the SFU never received this packet (lost upstream). Filled
    /// in when the publisher's retransmission arrives late.
    hole: bool,
}

/// What to do about one NACKed sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResendOutcome {
    /// Resend: where the packet is in the track's history, and its timestamp.
    Resend {
        src_seq: u64,
        generation: u32,
        layer: u8,
        out_ts: u32,
    },
    /// Never sent, or forgotten.
    Unknown,
    /// The SFU itself lacks the packet; its own NACK to the publisher
    /// (one per gap, whoever asks) brings it, and it is forwarded then.
    MissingUpstream,
    TooLate,
    InFlight,
    MaxResends,
    OverBudget,
}

/// Per subscriber stream: outgoing sequence number → source packet.
#[derive(Debug)]
pub struct Sequencer {
    entries: Box<[SeqEntry]>,
    base: Instant,
    /// Retransmission budget in bytes.
    budget: f32,
    /// Highest outgoing sequence number sent.
    max_out: Option<u64>,
}

/// Slack on top of the subscriber's RTT within which a NACK for a packet
/// forwarded late is taken to predate it (the receiver's own scheduling).
const LATE_FILL_MARGIN: Duration = Duration::from_millis(20);

/// Gaps up to this long in the outgoing sequence are remembered as holes.
const MAX_HOLE: u64 = 64;

impl Sequencer {
    pub fn new(capacity: usize, now: Instant) -> Self {
        let capacity = capacity.next_power_of_two();
        Sequencer {
            entries: vec![SeqEntry::default(); capacity].into_boxed_slice(),
            base: now,
            budget: 0.0,
            max_out: None,
        }
    }

    fn ms(&self, t: Instant) -> u32 {
        // Wraps after 49 days; entries live ~1 s.
        t.saturating_duration_since(self.base).as_millis() as u32
    }

    fn slot(&self, out_seq: u64) -> usize {
        (out_seq as usize) & (self.entries.len() - 1)
    }

    /// A packet went out (first transmission).
    pub fn sent(&mut self, now: Instant, p: SentPacket, policy: &ResendPolicy) {
        let SentPacket {
            out_seq,
            out_ts,
            src_seq,
            generation,
            layer,
            len,
        } = p;
        let sent_ms = self.ms(now);
        let late = matches!(self.max_out, Some(max) if out_seq < max);
        let entry = |out: u64, src: u64, hole: bool| SeqEntry {
            out_seq_plus1: out.wrapping_add(1),
            src_seq: src,
            out_ts,
            generation,
            layer,
            sent_ms,
            resent_ms: 0,
            resends: 0,
            nacked: false,
            late: late && !hole,
            not_media: false,
            hole,
        };
        match self.max_out {
            Some(max) if out_seq > max => {
                // Within one source the mapping is a constant offset, so the
                // skipped outgoing numbers map back to skipped source numbers.
                let gap = out_seq - max - 1;
                if gap <= MAX_HOLE {
                    for k in 1..=gap {
                        let i = self.slot(out_seq - k);
                        self.entries[i] = entry(out_seq - k, src_seq.wrapping_sub(k), true);
                    }
                }
                self.max_out = Some(out_seq);
            }
            None => self.max_out = Some(out_seq),
            Some(_) => {}
        }
        let i = self.slot(out_seq);
        // A hole the subscriber NACKed before the packet came (receivers
        // NACK a gap at once): its next NACK is a retry, not a new loss.
        let old = &self.entries[i];
        let nacked_hole = old.hole && old.nacked && old.out_seq_plus1 == out_seq.wrapping_add(1);
        self.entries[i] = SeqEntry {
            nacked: nacked_hole,
            ..entry(out_seq, src_seq, false)
        };
        self.budget =
            (self.budget + len as f32 * policy.budget_share).min(policy.budget_max as f32);
    }

    /// Decide about one NACKed outgoing sequence number, and say whether it
    /// is the first NACK for it (a loss on the subscriber's link). Charge
    /// the resend with `charge` once its length is known.
    pub fn on_nack(
        &mut self,
        now: Instant,
        out_seq: u64,
        rtt: Duration,
        policy: &ResendPolicy,
    ) -> (ResendOutcome, bool) {
        let i = self.slot(out_seq);
        let now_ms = self.ms(now);
        let e = &mut self.entries[i];
        if e.out_seq_plus1 != out_seq.wrapping_add(1) || e.not_media {
            return (ResendOutcome::Unknown, false);
        }
        // A packet the SFU never had is not a loss on the subscriber's link,
        // nor is one it forwarded late (rebuilt from the publisher's FEC or
        // retransmission) less than a round trip ago: the subscriber NACKed
        // the gap before that packet could reach it.
        let since_sent = Duration::from_millis(now_ms.wrapping_sub(e.sent_ms) as u64);
        let raced = e.late && since_sent < rtt + LATE_FILL_MARGIN;
        let first = !e.nacked && !e.hole && !raced;
        e.nacked = true;
        (self.decide(i, now, rtt, policy), first)
    }

    fn decide(
        &mut self,
        i: usize,
        now: Instant,
        rtt: Duration,
        policy: &ResendPolicy,
    ) -> ResendOutcome {
        let now_ms = self.ms(now);
        let e = &mut self.entries[i];
        if e.hole {
            return ResendOutcome::MissingUpstream;
        }
        let age = Duration::from_millis(now_ms.wrapping_sub(e.sent_ms) as u64);
        if age + rtt / 2 > policy.max_age {
            return ResendOutcome::TooLate;
        }
        // A transmission less than one RTT old may still arrive: a NACK for
        // it was sent before it could have (the receiver re-NACKs on its own
        // timer, also ~RTT, and at once when a new gap opens). For a first
        // transmission in order that cannot happen; for a resend, or a
        // packet forwarded late, it does. (0.8 RTT let NACKs that crossed a
        // late packet on a 2 ms path through: a duplicate each.)
        let last = if e.resends > 0 {
            Some(e.resent_ms)
        } else {
            e.late.then_some(e.sent_ms)
        };
        if let Some(last) = last {
            let since = Duration::from_millis(now_ms.wrapping_sub(last) as u64);
            if since < rtt {
                return ResendOutcome::InFlight;
            }
        }
        if e.resends >= policy.max_resends {
            return ResendOutcome::MaxResends;
        }
        if self.budget <= 0.0 {
            return ResendOutcome::OverBudget;
        }
        e.resends += 1;
        e.resent_ms = now_ms;
        ResendOutcome::Resend {
            src_seq: e.src_seq,
            generation: e.generation,
            layer: e.layer,
            out_ts: e.out_ts,
        }
    }

    /// A packet the node made itself (FEC) went out under `out_seq`: a NACK
    /// for it is not a loss of media and is not answered.
    pub fn not_media(&mut self, now: Instant, out_seq: u64) {
        let i = self.slot(out_seq);
        self.entries[i] = SeqEntry {
            out_seq_plus1: out_seq.wrapping_add(1),
            sent_ms: self.ms(now),
            not_media: true,
            ..SeqEntry::default()
        };
        if self.max_out.is_none_or(|m| out_seq > m) {
            self.max_out = Some(out_seq);
        }
    }

    /// Spend budget for a resend of `len` bytes.
    pub fn charge(&mut self, len: usize) {
        self.budget -= len as f32;
    }

    /// Whether a second copy of a `len`-byte resend fits with budget to
    /// spare (a quarter of what may be saved up): duplicates must not take
    /// the budget that first copies of later losses need.
    pub fn can_duplicate(&self, len: usize, policy: &ResendPolicy) -> bool {
        self.budget >= len as f32 + policy.budget_max as f32 / 4.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(out_seq: u64, out_ts: u32, src_seq: u64, generation: u32, len: usize) -> SentPacket {
        SentPacket {
            out_seq,
            out_ts,
            src_seq,
            generation,
            layer: 0,
            len,
        }
    }

    fn pkt(seq: u64) -> HistPacket {
        HistPacket {
            at: Instant::now(),
            seq,
            marker: false,
            pt: Pt::new_with_value(96),
            payload: vec![seq as u8; 100].into(),
            orientation: None,
        }
    }

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn history_keeps_the_last_capacity_packets_and_forgets_on_new_generation() {
        let mut h = PacketHistory::new(8);
        for s in 100..120 {
            h.insert(pkt(s), LONG);
        }
        let g = h.generation();
        assert!(h.get(g, 111).is_none(), "overwritten by 119");
        assert_eq!(h.get(g, 119).map(|p| p.seq), Some(119));
        assert_eq!(h.get(g, 112).map(|p| p.payload[0]), Some(112));
        h.new_generation();
        h.insert(pkt(119), LONG);
        assert!(h.get(g, 119).is_none(), "old generation never matches");
        assert!(h.get(h.generation(), 119).is_some());
    }

    #[test]
    fn history_releases_packets_older_than_max_age() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut h = PacketHistory::new(64);
        let max_age = Duration::from_millis(100);
        // One packet every 10 ms; 113 is lost upstream.
        for s in (100..130u64).filter(|s| *s != 113) {
            h.insert(
                HistPacket {
                    at: at((s - 100) * 10),
                    ..pkt(s)
                },
                max_age,
            );
        }
        let g = h.generation();
        // The last packet came at 290 ms: what came before 190 ms is gone.
        assert!(h.get(g, 118).is_none(), "received at 180 ms");
        assert_eq!(
            h.get(g, 119).map(|p| p.seq),
            Some(119),
            "received at 190 ms"
        );
        assert_eq!(h.get(g, 129).map(|p| p.seq), Some(129));
        let held = h.slots.iter().flatten().count();
        assert_eq!(held, 11, "119..=129");
        // A late retransmission of an old packet is kept (until the ring
        // reuses its slot).
        h.insert(
            HistPacket {
                at: at(295),
                ..pkt(113)
            },
            max_age,
        );
        assert!(h.get(g, 113).is_some());
        h.insert(
            HistPacket {
                at: at(300),
                ..pkt(130)
            },
            max_age,
        );
        assert!(h.get(g, 119).is_none(), "190 ms is now too old");
        assert!(h.get(g, 120).is_some());
    }

    #[test]
    fn resend_policy_limits() {
        let t0 = Instant::now();
        let policy = ResendPolicy {
            max_age: Duration::from_millis(500),
            max_resends: 2,
            budget_share: 0.5,
            budget_max: 1000,
            ..ResendPolicy::DEFAULT
        };
        let rtt = Duration::from_millis(100);
        let mut s = Sequencer::new(16, t0);
        for i in 0..10u64 {
            s.sent(t0, sp(1000 + i, 90 * i as u32, 50 + i, 0, 100), &policy);
        }
        // Budget: 10 × 100 × 0.5 = 500 bytes.
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(
            s.on_nack(at(20), 1003, rtt, &policy).0,
            ResendOutcome::Resend {
                src_seq: 53,
                generation: 0,
                layer: 0,
                out_ts: 270
            }
        );
        s.charge(100);
        assert_eq!(
            s.on_nack(at(40), 1003, rtt, &policy).0,
            ResendOutcome::InFlight
        );
        assert!(matches!(
            s.on_nack(at(150), 1003, rtt, &policy).0,
            ResendOutcome::Resend { .. }
        ));
        s.charge(100);
        assert_eq!(
            s.on_nack(at(300), 1003, rtt, &policy).0,
            ResendOutcome::MaxResends
        );
        assert_eq!(
            s.on_nack(at(20), 999, rtt, &policy).0,
            ResendOutcome::Unknown
        );
        assert_eq!(
            s.on_nack(at(20), 1000 + 16, rtt, &policy).0,
            ResendOutcome::Unknown,
            "a slot holds only its own sequence number"
        );
        // 460 ms old + 50 ms to arrive > 500 ms.
        assert_eq!(
            s.on_nack(at(460), 1004, rtt, &policy).0,
            ResendOutcome::TooLate
        );
        // Spend the rest of the budget.
        for seq in 1005..1008 {
            assert!(matches!(
                s.on_nack(at(30), seq, rtt, &policy).0,
                ResendOutcome::Resend { .. }
            ));
            s.charge(100);
        }
        assert_eq!(
            s.on_nack(at(30), 1008, rtt, &policy).0,
            ResendOutcome::OverBudget
        );
    }

    #[test]
    fn packets_lost_upstream_are_holes_until_they_arrive() {
        let t0 = Instant::now();
        let policy = ResendPolicy::default();
        let rtt = Duration::from_millis(50);
        let mut s = Sequencer::new(64, t0);
        s.sent(t0, sp(10, 0, 110, 0, 1000), &policy);
        // 111 and 112 never reached the SFU.
        s.sent(t0, sp(13, 0, 113, 0, 1000), &policy);
        assert_eq!(
            s.on_nack(t0, 11, rtt, &policy).0,
            ResendOutcome::MissingUpstream
        );
        assert_eq!(
            s.on_nack(t0, 12, rtt, &policy).0,
            ResendOutcome::MissingUpstream
        );
        // The publisher's retransmission of 112 arrives and is forwarded
        // late; a NACK sent before it could arrive is stale, a later one not.
        s.sent(t0, sp(12, 0, 112, 0, 1000), &policy);
        assert_eq!(s.on_nack(t0, 12, rtt, &policy).0, ResendOutcome::InFlight);
        let later = t0 + Duration::from_millis(60);
        assert!(matches!(
            s.on_nack(later, 12, rtt, &policy).0,
            ResendOutcome::Resend { src_seq: 112, .. }
        ));
        assert_eq!(
            s.on_nack(t0, 11, rtt, &policy).0,
            ResendOutcome::MissingUpstream
        );
    }
}
