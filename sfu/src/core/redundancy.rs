//! Audio redundancy (RED, RFC 2198) through the SFU.
//!
//! Towards subscribers: each audio packet goes out plain while the
//! subscriber's link is clean, and as RED carrying the previous one, two or
//! three packets as well once its RTCP receiver reports show loss
//! ([`RedLevel`]). The redundant copies come from the track's last few
//! packets ([`AudioRecent`], shared by all subscribers); a RED payload is
//! built once per packet per level and shared by the subscribers at that
//! level.
//!
//! From publishers: a RED packet (Chrome sends Opus in RED when it is
//! negotiated) is split into its primary and, for packets that never
//! arrived, the redundant copies, which are forwarded first so the
//! subscriber sees them in order. Subscribers then get the primaries, with
//! their own redundancy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_fec::red;

use super::rewrite::SourceKey;

/// Most redundant packets carried in one RED packet.
pub const MAX_LEVEL: u8 = 3;

/// Loss (from receiver reports) at which each redundancy level starts:
/// level n is used from `UP[n-1]` and left below half of it. With n copies
/// a packet is lost at about loss^(n+1): at 10 % loss, two copies leave
/// 0.1 % and three 0.01 %. Audio is a small part of a call's bytes (50
/// packets of ≈ 100 bytes a second), so level 3 comes early.
const UP: [f32; MAX_LEVEL as usize] = [0.02, 0.05, 0.08];

/// Redundancy towards one subscriber, following its reported loss.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RedLevel(pub u8);

impl RedLevel {
    /// Raise at once when loss crosses a level's threshold, lower only when
    /// it falls below half of it (hysteresis).
    pub fn update(&mut self, loss: f32) {
        let mut level = self.0;
        while level < MAX_LEVEL && loss >= UP[level as usize] {
            level += 1;
        }
        while level > 0 && loss < UP[level as usize - 1] / 2.0 {
            level -= 1;
        }
        self.0 = level;
    }
}

/// How long a loss sample counts.
const LOSS_SAMPLE_LIFE: Duration = Duration::from_secs(10);

/// NACK-based samples cover at least this long and this many packets.
const NACK_WINDOW: Duration = Duration::from_secs(1);
const NACK_WINDOW_PACKETS: u32 = 20;

/// A subscriber link's packet loss, from three signals: the packets its
/// TWCC feedback reports lost (every packet, before any repair: the best
/// signal, where negotiated), first-time NACKs per video packet sent (fast,
/// but only while video flows, and short of the link's loss once FEC
/// rebuilds packets before they are NACKed) and the fraction lost its audio
/// receiver reports give (audio is not retransmitted, so those show the
/// link's loss; they come every ~5 s). The estimate is the largest recent
/// sample.
#[derive(Debug, Default)]
pub struct LossEstimate {
    /// Video packets sent and first-time NACKed in the current window.
    pub sent: u32,
    pub lost: u32,
    window_start: Option<Instant>,
    /// TWCC (packets reported, lost) when the window started.
    feedback_start: Option<(u64, u64)>,
    nack: Option<(f32, Instant)>,
    rr: Option<(f32, Instant)>,
    twcc: Option<(f32, Instant)>,
}

impl LossEstimate {
    pub fn report_rr(&mut self, now: Instant, loss: f32) {
        self.rr = Some((loss.clamp(0.0, 1.0), now));
    }

    /// Ends the window once it is long enough; true if that made a new
    /// sample. `feedback`: the TWCC (packets reported, lost) so far, if the
    /// link has TWCC feedback.
    pub fn close_window(&mut self, now: Instant, feedback: Option<(u64, u64)>) -> bool {
        let start = *self.window_start.get_or_insert(now);
        if self.feedback_start.is_none() {
            self.feedback_start = feedback;
        }
        if now.saturating_duration_since(start) < NACK_WINDOW {
            return false;
        }
        let enough = self.sent >= NACK_WINDOW_PACKETS;
        if enough {
            let loss = self.lost.min(self.sent) as f32 / self.sent as f32;
            self.nack = Some((loss, now));
        }
        let mut twcc = false;
        if let (Some((p0, l0)), Some((p1, l1))) = (self.feedback_start, feedback) {
            let (packets, lost) = (p1.saturating_sub(p0), l1.saturating_sub(l0));
            if packets >= u64::from(NACK_WINDOW_PACKETS) {
                self.twcc = Some(((lost.min(packets) as f64 / packets as f64) as f32, now));
                twcc = true;
            }
        }
        self.sent = 0;
        self.lost = 0;
        self.window_start = Some(now);
        self.feedback_start = feedback;
        enough || twcc || self.rr.is_some()
    }

    pub fn estimate(&self, now: Instant) -> f32 {
        [self.nack, self.rr, self.twcc]
            .into_iter()
            .flatten()
            .filter(|(_, at)| now.saturating_duration_since(*at) <= LOSS_SAMPLE_LIFE)
            .map(|(l, _)| l)
            .fold(0.0, f32::max)
    }
}

/// One forwarded audio packet's payload (plain codec data).
#[derive(Debug, Clone)]
struct Frame {
    seq: u64,
    ts: u64,
    payload: Arc<[u8]>,
}

/// The last few packets of an audio track and the highest sequence number
/// received, for building redundancy and for spotting gaps RED can fill.
#[derive(Debug, Default)]
pub struct AudioRecent {
    frames: [Option<Frame>; MAX_LEVEL as usize + 1],
    source: Option<SourceKey>,
    max_seq: Option<u64>,
}

impl AudioRecent {
    /// A new source forgets the old one's packets.
    pub fn check_source(&mut self, source: SourceKey) {
        if self.source != Some(source) {
            *self = AudioRecent {
                source: Some(source),
                ..AudioRecent::default()
            };
        }
    }

    /// Has a packet with this sequence number not arrived yet (and is it
    /// recent enough to matter)?
    pub fn is_missing(&self, seq: u64) -> bool {
        match self.max_seq {
            Some(max) => seq > max,
            None => false,
        }
    }

    pub fn push(&mut self, seq: u64, ts: u64, payload: Arc<[u8]>) {
        let i = (seq as usize) % self.frames.len();
        self.frames[i] = Some(Frame { seq, ts, payload });
        self.max_seq = Some(self.max_seq.map_or(seq, |m| m.max(seq)));
    }

    /// Was this packet received (or recovered) already?
    pub fn has(&self, seq: u64) -> bool {
        self.get(seq).is_some()
    }

    fn get(&self, seq: u64) -> Option<&Frame> {
        self.frames[(seq as usize) % self.frames.len()]
            .as_ref()
            .filter(|f| f.seq == seq)
    }

    /// Builds the RED payload for packet `seq` (already pushed) with up to
    /// `level` earlier packets, consecutive and oldest first, into `out`.
    /// Returns false if there is nothing to add (send it plain).
    pub fn build_red(&self, seq: u64, level: u8, pt: u8, out: &mut Vec<u8>) -> bool {
        let Some(primary) = self.get(seq) else {
            return false;
        };
        let mut blocks: [Option<red::RedBlock<'_>>; MAX_LEVEL as usize] = [None; 3];
        let mut n = 0;
        // Receivers place redundant blocks one sequence number apart, so
        // stop at the first packet this track did not forward.
        for k in 1..=u64::from(level) {
            let Some(f) = seq.checked_sub(k).and_then(|s| self.get(s)) else {
                break;
            };
            let Some(offset) = primary
                .ts
                .checked_sub(f.ts)
                .and_then(|o| u16::try_from(o).ok())
                .filter(|o| *o <= red::MAX_TS_OFFSET)
            else {
                break;
            };
            if f.payload.len() > red::MAX_BLOCK_LEN {
                break;
            }
            blocks[n] = Some(red::RedBlock {
                pt,
                ts_offset: offset,
                payload: &f.payload,
            });
            n += 1;
        }
        if n == 0 {
            return false;
        }
        blocks[..n].reverse();
        let blocks: [red::RedBlock<'_>; MAX_LEVEL as usize] = blocks.map(|b| {
            b.unwrap_or(red::RedBlock {
                pt,
                ts_offset: 0,
                payload: &[],
            })
        });
        out.clear();
        red::encode(pt, &primary.payload, &blocks[..n], out).is_ok()
    }
}

/// A packet recovered from (or carried as the primary of) a publisher's RED.
#[derive(Debug, Clone)]
pub struct Unred {
    pub seq: u64,
    pub ts: u64,
    pub payload: Arc<[u8]>,
}

/// Splits a publisher's RED payload: the redundant copies of packets that
/// are missing, oldest first, then the primary. `None` if it does not parse
/// or carries another codec than `pt`.
pub fn unred(
    recent: &AudioRecent,
    seq: u64,
    ts: u64,
    pt: u8,
    payload: &[u8],
) -> Option<impl Iterator<Item = Unred>> {
    let parsed = red::parse(payload).ok()?;
    let blocks = parsed.blocks();
    if blocks.iter().any(|b| b.pt != pt) {
        return None;
    }
    let n = blocks.len() as u64;
    let mut out: [Option<Unred>; red::MAX_BLOCKS] = Default::default();
    for (k, b) in blocks.iter().enumerate() {
        let distance = n - 1 - k as u64;
        let Some(block_seq) = seq.checked_sub(distance) else {
            continue;
        };
        // Only packets that never arrived: a primary whose copy already came
        // in a later packet's redundancy is not forwarded twice.
        if !recent.is_missing(block_seq) && (distance > 0 || recent.has(block_seq)) {
            continue;
        }
        let Some(block_ts) = ts.checked_sub(u64::from(b.ts_offset)) else {
            continue;
        };
        out[k] = Some(Unred {
            seq: block_seq,
            ts: block_ts,
            payload: Arc::from(b.data),
        });
    }
    Some(out.into_iter().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> SourceKey {
        SourceKey {
            track_epoch: 1,
            ssrc: 7,
        }
    }

    #[test]
    fn level_follows_loss_with_hysteresis() {
        let mut l = RedLevel::default();
        l.update(0.01);
        assert_eq!(l.0, 0);
        l.update(0.03);
        assert_eq!(l.0, 1);
        l.update(0.2);
        assert_eq!(l.0, 3);
        l.update(0.05);
        assert_eq!(l.0, 3, "above half of the level-3 threshold");
        l.update(0.03);
        assert_eq!(l.0, 2);
        l.update(0.0);
        assert_eq!(l.0, 0);
    }

    #[test]
    fn loss_estimate_takes_the_largest_of_twcc_and_nack_samples() {
        let t0 = Instant::now();
        let mut e = LossEstimate::default();
        assert!(!e.close_window(t0, Some((0, 0))));
        // FEC rebuilt most losses before they were NACKed: the NACKs say
        // 5 %, TWCC feedback 30 % of 200 packets.
        e.sent = 100;
        e.lost = 5;
        assert!(e.close_window(t0 + NACK_WINDOW, Some((200, 60))));
        assert!((e.estimate(t0 + NACK_WINDOW) - 0.3).abs() < 1e-6);
        // Too few packets reported: no new TWCC sample, the last one holds.
        e.sent = 100;
        e.lost = 10;
        assert!(e.close_window(t0 + 2 * NACK_WINDOW, Some((210, 60))));
        assert!((e.estimate(t0 + 2 * NACK_WINDOW) - 0.3).abs() < 1e-6);
        // Samples expire.
        let later = t0 + 2 * NACK_WINDOW + LOSS_SAMPLE_LIFE + Duration::from_millis(1);
        assert_eq!(e.estimate(later), 0.0);
        // Without TWCC the NACK samples alone count.
        let mut n = LossEstimate::default();
        n.close_window(t0, None);
        n.sent = 50;
        n.lost = 5;
        assert!(n.close_window(t0 + NACK_WINDOW, None));
        assert!((n.estimate(t0 + NACK_WINDOW) - 0.1).abs() < 1e-6);
    }

    #[test]
    fn red_round_trip_recovers_missing_packets_in_order() {
        let mut sender = AudioRecent::default();
        sender.check_source(src());
        for s in 10..=13u64 {
            sender.push(s, s * 960, vec![s as u8; 50].into());
        }
        let mut buf = Vec::new();
        assert!(sender.build_red(13, 2, 111, &mut buf));

        // The receiving SFU got up to 10; 11 and 12 were lost.
        let mut receiver = AudioRecent::default();
        receiver.check_source(src());
        receiver.push(10, 9600, vec![10; 50].into());
        let got: Vec<Unred> = unred(&receiver, 13, 13 * 960, 111, &buf)
            .expect("parses")
            .collect();
        let seqs: Vec<u64> = got.iter().map(|u| u.seq).collect();
        assert_eq!(seqs, vec![11, 12, 13]);
        for u in &got {
            assert_eq!(u.ts, u.seq * 960);
            assert_eq!(&u.payload[..], &[u.seq as u8; 50][..]);
        }
        // Had 12 arrived, only the primary would come out.
        receiver.push(12, 12 * 960, vec![12; 50].into());
        let seqs: Vec<u64> = unred(&receiver, 13, 13 * 960, 111, &buf)
            .expect("parses")
            .map(|u| u.seq)
            .collect();
        assert_eq!(seqs, vec![13]);
        // Another codec inside, or garbage: refused.
        assert!(unred(&receiver, 13, 13 * 960, 109, &buf).is_none());
        assert!(unred(&receiver, 13, 0, 111, &[0xff, 0xff]).is_none());
    }

    #[test]
    fn redundancy_stops_at_a_gap() {
        let mut r = AudioRecent::default();
        r.check_source(src());
        r.push(20, 0, vec![1; 10].into());
        r.push(22, 1920, vec![3; 10].into());
        let mut buf = Vec::new();
        assert!(!r.build_red(22, 3, 111, &mut buf), "21 is missing");
        r.push(23, 2880, vec![4; 10].into());
        assert!(r.build_red(23, 3, 111, &mut buf));
        assert_eq!(red::parse(&buf).expect("parses").blocks().len(), 2);
    }
}
