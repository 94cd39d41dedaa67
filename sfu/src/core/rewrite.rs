//! Sequence-number and timestamp rewriting for one outgoing stream.
//!
//! A subscriber sees one SSRC per track with continuous sequence numbers and
//! timestamps, whatever happens upstream: the publisher reconnects (new SSRC,
//! new random sequence base), the track is replaced, forwarding pauses while
//! muted. Inside one source the mapping is a constant offset, so reordering
//! and retransmissions keep their relative order; at a source switch the
//! offsets are re-anchored so the first packet of the new source follows the
//! highest one sent. Everything is 64-bit extended internally (the caller
//! passes str0m's extended sequence numbers and RTP times), as mediasoup's
//! SeqManager and LiveKit's RTPMunger do with their own unwrapping.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Identifies an upstream source. A change of source re-anchors the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceKey {
    pub track_epoch: u64,
    pub ssrc: u32,
}

/// One incoming packet as the rewriter sees it.
#[derive(Debug, Clone, Copy)]
pub struct InPacket {
    pub source: SourceKey,
    /// Extended (64-bit) sequence number.
    pub seq: u64,
    /// Extended RTP timestamp in the codec clock.
    pub ts: u64,
    /// When the packet arrived; drives the timestamp gap at a switch.
    pub arrival: Instant,
}

/// Where a packet goes in the outgoing stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    pub seq: u64,
    pub ts: u32,
}

/// Why the rewriter refused a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewriteDrop {
    /// From a source we switched away from.
    StaleSource,
    /// From before the point where this source was anchored.
    BeforeSwitch,
    /// So late that the numbers reserved since cannot be accounted for.
    TooLate,
}

#[derive(Debug)]
struct Anchor {
    source: SourceKey,
    /// Offset of packets after the last reservation.
    seq_offset: u64,
    ts_offset: u64,
    first_in_seq: u64,
    max_in_seq: u64,
    /// Outgoing numbers reserved (for FEC packets) after incoming `.0`:
    /// packets before it use `seq_offset` minus the later reservations.
    reserved: VecDeque<(u64, u64)>,
    /// Packets before this lost their reservation record: too late to map.
    forgotten_before: u64,
}

/// Reservations remembered per source (a frame each: ~2 s of video).
const MAX_RESERVATIONS: usize = 64;

/// How far ahead of the highest packet a skipped number may be (a gap of
/// lost packets before a publisher's FEC packet).
const MAX_SKIP_AHEAD: u64 = 512;

/// Maps one or more upstream sources onto one continuous outgoing stream.
#[derive(Debug)]
pub struct StreamRewriter {
    clock_rate: u32,
    /// Timestamp step inserted at a switch when no time has passed (one frame).
    min_ts_step: u64,
    anchor: Option<Anchor>,
    /// Highest outgoing sequence number and timestamp so far.
    max_out_seq: u64,
    max_out_ts: u64,
    last_arrival: Option<Instant>,
    /// Set by `discontinuity()`: the next packet re-anchors even if the
    /// source is unchanged (forwarding paused and resumed).
    resync: bool,
    /// Retired sources, so late packets of them are recognised as stale.
    retired: [Option<SourceKey>; 4],
}

impl StreamRewriter {
    /// `first_seq` is the first outgoing sequence number; keep it below 2^15
    /// so receivers need no out-of-band rollover counter.
    pub fn new(clock_rate: u32, first_seq: u16, first_ts: u32) -> Self {
        let min_ts_step = (clock_rate as u64 / 50).max(1); // 20 ms
        StreamRewriter {
            clock_rate,
            min_ts_step,
            anchor: None,
            // One below the first so that "max + 1" lands on it.
            max_out_seq: u64::from(first_seq).wrapping_sub(1),
            max_out_ts: u64::from(first_ts),
            last_arrival: None,
            resync: false,
            retired: [None; 4],
        }
    }

    /// Reserves `n` outgoing sequence numbers right after the highest one
    /// sent (for packets the SFU adds, such as FEC), shifting the packets
    /// that follow. Returns the first, or `None` before the first packet.
    pub fn reserve(&mut self, n: u64) -> Option<u64> {
        let a = self.anchor.as_mut()?;
        let first = self.max_out_seq.wrapping_add(1);
        self.max_out_seq = self.max_out_seq.wrapping_add(n);
        a.seq_offset = a.seq_offset.wrapping_add(n);
        if a.reserved.len() >= MAX_RESERVATIONS {
            if let Some((after, _)) = a.reserved.pop_front() {
                a.forgotten_before = after;
            }
        }
        a.reserved.push_back((a.max_in_seq + 1, n));
        Some(first)
    }

    /// Takes the incoming `seq` out of the mapping: packets after it move
    /// one number down, so no gap appears. Only for a packet ahead of the
    /// current source's highest: packets between (lost so far) keep their
    /// numbers if they come later. Behind it, later packets already went
    /// out, so it is left as a gap.
    pub fn skip(&mut self, source: SourceKey, seq: u64) {
        let Some(a) = self.anchor.as_mut() else {
            return;
        };
        if a.source != source || seq <= a.max_in_seq || seq - a.max_in_seq > MAX_SKIP_AHEAD {
            return;
        }
        a.max_in_seq = seq;
        a.seq_offset = a.seq_offset.wrapping_sub(1);
        if a.reserved.len() >= MAX_RESERVATIONS {
            if let Some((after, _)) = a.reserved.pop_front() {
                a.forgotten_before = after;
            }
        }
        // A shift of -1: packets before it subtract "-1" (wrapping).
        a.reserved.push_back((seq + 1, u64::MAX));
    }

    /// The next packet starts `source` on purpose (a simulcast layer
    /// switch): it re-anchors even if `source` was used before.
    pub fn switch_to(&mut self, source: SourceKey) {
        for r in &mut self.retired {
            if *r == Some(source) {
                *r = None;
            }
        }
        let same = self.anchor.as_ref().map(|a| a.source) == Some(source);
        if !same {
            self.resync = true;
        }
    }

    /// Forwarding stopped (mute, layer pause); the next packet re-anchors.
    pub fn discontinuity(&mut self) {
        self.resync = true;
    }

    /// Decide the outgoing sequence number and timestamp of `p`.
    pub fn rewrite(&mut self, p: &InPacket) -> Result<Rewritten, RewriteDrop> {
        let same_source = self.anchor.as_ref().map(|a| a.source) == Some(p.source);
        if !same_source && self.retired.contains(&Some(p.source)) {
            return Err(RewriteDrop::StaleSource);
        }
        if !same_source || self.resync {
            self.reanchor(p);
        }
        let a = self.anchor.as_mut().expect("anchored above");
        if p.seq < a.first_in_seq {
            return Err(RewriteDrop::BeforeSwitch);
        }
        if p.seq < a.forgotten_before {
            return Err(RewriteDrop::TooLate);
        }
        let mut seq_offset = a.seq_offset;
        for &(after, n) in a.reserved.iter().rev() {
            if p.seq >= after {
                break;
            }
            seq_offset = seq_offset.wrapping_sub(n);
        }
        a.max_in_seq = a.max_in_seq.max(p.seq);
        let seq = p.seq.wrapping_add(seq_offset);
        let ts = p.ts.wrapping_add(a.ts_offset);
        if seq > self.max_out_seq || self.max_out_seq == u64::MAX {
            self.max_out_seq = seq;
            self.max_out_ts = ts;
            self.last_arrival = Some(p.arrival);
        }
        Ok(Rewritten { seq, ts: ts as u32 })
    }

    fn reanchor(&mut self, p: &InPacket) {
        let first_packet = self.last_arrival.is_none();
        let out_seq = self.max_out_seq.wrapping_add(1);
        let out_ts = if first_packet {
            self.max_out_ts
        } else {
            // Let the timestamp advance by the wall-clock time that passed,
            // at least one frame, so players neither stall nor rush.
            let gap = self
                .last_arrival
                .map(|t| p.arrival.saturating_duration_since(t))
                .unwrap_or(Duration::ZERO);
            let ticks = (gap.as_micros() as u64 * self.clock_rate as u64) / 1_000_000;
            self.max_out_ts + ticks.max(self.min_ts_step)
        };
        if let Some(old) = self.anchor.take() {
            if old.source != p.source {
                self.retired.rotate_right(1);
                self.retired[0] = Some(old.source);
            }
        }
        self.anchor = Some(Anchor {
            source: p.source,
            seq_offset: out_seq.wrapping_sub(p.seq),
            ts_offset: out_ts.wrapping_sub(p.ts),
            first_in_seq: p.seq,
            max_in_seq: p.seq,
            reserved: VecDeque::new(),
            forgotten_before: 0,
        });
        self.resync = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(ssrc: u32) -> SourceKey {
        SourceKey {
            track_epoch: 1,
            ssrc,
        }
    }

    fn pkt(source: SourceKey, seq: u64, ts: u64, t0: Instant, ms: u64) -> InPacket {
        InPacket {
            source,
            seq,
            ts,
            arrival: t0 + Duration::from_millis(ms),
        }
    }

    #[test]
    fn reserved_numbers_shift_later_packets_but_not_late_ones() {
        let t0 = Instant::now();
        let mut r = StreamRewriter::new(90_000, 100, 0);
        assert_eq!(r.reserve(2), None, "nothing to reserve after yet");
        let s = |r: &mut StreamRewriter, seq: u64| r.rewrite(&pkt(src(1), seq, seq * 10, t0, 0));
        assert_eq!(s(&mut r, 10).unwrap().seq, 100);
        // 11 is lost upstream; 12 ends a frame, two FEC packets follow it.
        assert_eq!(s(&mut r, 12).unwrap().seq, 102);
        assert_eq!(r.reserve(2), Some(103));
        assert_eq!(s(&mut r, 13).unwrap().seq, 105);
        // The publisher's retransmission of 11 keeps its place.
        assert_eq!(s(&mut r, 11).unwrap().seq, 101);
        for _ in 0..MAX_RESERVATIONS {
            r.reserve(1);
        }
        assert_eq!(s(&mut r, 11), Err(RewriteDrop::TooLate));
        assert_eq!(s(&mut r, 14).unwrap().seq, 106 + MAX_RESERVATIONS as u64);
    }

    #[test]
    fn a_skipped_packet_leaves_no_gap() {
        let t0 = Instant::now();
        let mut r = StreamRewriter::new(90_000, 100, 0);
        let s = |r: &mut StreamRewriter, seq: u64| r.rewrite(&pkt(src(1), seq, seq * 10, t0, 0));
        assert_eq!(s(&mut r, 10).unwrap().seq, 100);
        assert_eq!(s(&mut r, 12).unwrap().seq, 102);
        // 13 is the publisher's FEC: not forwarded, and 14 follows 12.
        r.skip(src(1), 13);
        assert_eq!(s(&mut r, 14).unwrap().seq, 103);
        // The late 11 keeps its place; a skip behind the highest changes
        // nothing.
        assert_eq!(s(&mut r, 11).unwrap().seq, 101);
        r.skip(src(1), 12);
        assert_eq!(s(&mut r, 15).unwrap().seq, 104);
        // 16 and 17 are lost, 18 is FEC: 19 follows as if 18 never was,
        // and 16 and 17, recovered later, keep their places.
        r.skip(src(1), 18);
        assert_eq!(s(&mut r, 19).unwrap().seq, 107);
        assert_eq!(s(&mut r, 17).unwrap().seq, 106);
        assert_eq!(s(&mut r, 16).unwrap().seq, 105);
    }

    #[test]
    fn continuous_within_one_source_and_keeps_reordering() {
        let t0 = Instant::now();
        let mut r = StreamRewriter::new(90_000, 100, 5000);
        let a = r.rewrite(&pkt(src(1), 40_000, 1_000_000, t0, 0)).unwrap();
        assert_eq!(a, Rewritten { seq: 100, ts: 5000 });
        let c = r.rewrite(&pkt(src(1), 40_002, 1_003_000, t0, 33)).unwrap();
        let b = r.rewrite(&pkt(src(1), 40_001, 1_000_000, t0, 34)).unwrap();
        assert_eq!(c.seq, 102);
        assert_eq!(b.seq, 101);
        assert_eq!(c.ts, 8000);
    }

    #[test]
    fn publisher_reconnect_keeps_sequence_and_time_continuous() {
        let t0 = Instant::now();
        let mut r = StreamRewriter::new(90_000, 1, 0);
        let mut last = None;
        for i in 0..10u64 {
            last = Some(
                r.rewrite(&pkt(src(7), 65_530 + i, 3000 * i, t0, 33 * i))
                    .unwrap(),
            );
        }
        let last = last.unwrap();
        // The publisher comes back 500 ms later with a new SSRC and a random base.
        let t_new = 33 * 9 + 500;
        let first = r
            .rewrite(&pkt(src(99), 12, 4_000_000_000, t0, t_new))
            .unwrap();
        assert_eq!(first.seq, last.seq + 1, "no sequence gap at the switch");
        let dt = first.ts.wrapping_sub(last.ts);
        assert_eq!(dt, 45_000, "timestamp advances by the 500 ms that passed");
        let second = r
            .rewrite(&pkt(src(99), 13, 4_000_003_000, t0, t_new + 33))
            .unwrap();
        assert_eq!(second.seq, first.seq + 1);
        assert_eq!(second.ts.wrapping_sub(first.ts), 3000);
        // A late packet of the old source is refused, not interleaved.
        assert_eq!(
            r.rewrite(&pkt(src(7), 65_541, 33_000, t0, t_new + 40)),
            Err(RewriteDrop::StaleSource)
        );
    }

    #[test]
    fn track_replacement_on_same_ssrc_after_pause_reanchors() {
        let t0 = Instant::now();
        let mut r = StreamRewriter::new(48_000, 10, 0);
        let a = r.rewrite(&pkt(src(5), 500, 960, t0, 0)).unwrap();
        r.discontinuity();
        // Replaced track: same SSRC, timestamps jumped far ahead, sequence jumped.
        let b = r.rewrite(&pkt(src(5), 9000, 9_999_999, t0, 1000)).unwrap();
        assert_eq!(b.seq, a.seq + 1);
        assert_eq!(b.ts.wrapping_sub(a.ts), 48_000);
        // Packets from before the re-anchor point are refused.
        assert_eq!(
            r.rewrite(&pkt(src(5), 8999, 9_999_000, t0, 1001)),
            Err(RewriteDrop::BeforeSwitch)
        );
    }

    #[test]
    fn immediate_switch_advances_at_least_one_frame() {
        let t0 = Instant::now();
        let mut r = StreamRewriter::new(90_000, 1, 0);
        let a = r.rewrite(&pkt(src(1), 1, 0, t0, 0)).unwrap();
        let b = r.rewrite(&pkt(src(2), 77, 123, t0, 0)).unwrap();
        assert_eq!(b.seq, a.seq + 1);
        assert_eq!(b.ts.wrapping_sub(a.ts), 1800);
    }

    #[test]
    fn outgoing_u16_wraps_without_gap() {
        let t0 = Instant::now();
        let mut r = StreamRewriter::new(90_000, 65_534, 0);
        let seqs: Vec<u16> = (0..4)
            .map(|i| r.rewrite(&pkt(src(1), 10 + i, 0, t0, i)).unwrap().seq as u16)
            .collect();
        assert_eq!(seqs, vec![65_534, 65_535, 0, 1]);
    }
}
