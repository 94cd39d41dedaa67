//! Simulcast: the layers of one published video track (publisher side) and
//! one subscriber's choice among them (subscriber side).
//!
//! A publisher sends each layer (a `rid` encoding) on its own SSRC with its
//! own sequence numbers, timestamps and VP8 picture ids. The node keeps, per
//! layer, what the allocator needs (measured bitrate, frame size from
//! keyframes, whether it is being sent) and what NACKs need (a packet
//! history). A subscriber's [`LayerSelector`] passes the packets of one layer
//! and moves to another only on a keyframe of the target layer; the
//! subscriber's rewriter then re-anchors sequence numbers and timestamps, and
//! its VP8 munger the picture ids, so the decoder sees one stream.

use std::time::{Duration, Instant};

use str0m::media::Rid;

use super::allocator;
use super::history::PacketHistory;
use super::keyframe::KeyframeThrottle;
use super::rewrite::SourceKey;

/// Layers per track at most; further `rid`s of an offer are not used.
pub const MAX_LAYERS: usize = 4;

/// A layer that sent nothing for this long is not being sent (the publisher
/// dropped it, for CPU or bandwidth, or we paused it).
pub const LAYER_IDLE: Duration = Duration::from_millis(1200);

/// How long a layer that should be coming may take to arrive: one never seen
/// since its track's first packet (publishers start their layers together,
/// but a browser holds back the ones its bandwidth or the capture size does
/// not allow), or one just resumed at the publisher.
pub const LAYER_START_GRACE: Duration = Duration::from_secs(2);

/// After a resumed layer failed to arrive, how long before a subscriber may
/// ask for it again.
pub const LAYER_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Bitrate measurement window.
const RATE_WINDOW: Duration = Duration::from_millis(500);

/// The low-to-high order of common `rid` names (LiveKit's q/h/f, and the
/// l/m/h and numeric conventions); other names keep their offer order after
/// these.
fn rid_rank(rid: &str) -> u8 {
    match rid.to_ascii_lowercase().as_str() {
        "q" | "l" | "low" | "0" => 0,
        "h" | "m" | "mid" | "medium" | "1" => 1,
        "f" | "hi" | "high" | "full" | "2" => 2,
        _ => 3,
    }
}

/// A bitrate measured over fixed windows and smoothed.
#[derive(Debug, Default, Clone)]
pub struct RateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    bps: u64,
    measured: bool,
}

impl RateMeter {
    pub fn add(&mut self, now: Instant, bytes: usize) {
        self.roll(now);
        self.bytes += bytes as u64;
    }

    /// Closes the windows that ended by `now`.
    pub fn roll(&mut self, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed < RATE_WINDOW {
            return;
        }
        let sample = self.bytes * 8 * 1000 / elapsed.as_millis().max(1) as u64;
        // Keyframes make single windows spiky: smooth, but follow a drop fast.
        self.bps = if !self.measured || sample < self.bps / 2 {
            sample
        } else {
            (self.bps + sample) / 2
        };
        self.measured = true;
        self.bytes = 0;
        self.window_start = Some(now);
    }

    /// Bits per second; 0 until a window closed.
    pub fn bps(&self) -> u64 {
        self.bps
    }
}

/// One layer of a published track.
#[derive(Debug, Default)]
pub struct Layer {
    pub rid: Option<Rid>,
    pub ssrc: Option<u32>,
    pub rate: RateMeter,
    /// Frame size from its last keyframe (0×0 until seen).
    pub size: (u32, u32),
    pub last_packet: Option<Instant>,
    /// Recent packets for subscriber NACKs (video, created on first packet).
    history: Option<PacketHistory>,
    history_source: Option<SourceKey>,
    pub keyframe: KeyframeThrottle,
    /// We asked the publisher to stop sending it (nobody takes it).
    paused: bool,
    /// When we last asked the publisher to resume it.
    resumed_at: Option<Instant>,
    /// A resume did not bring it back: not offered to subscribers before this.
    retry_at: Option<Instant>,
    /// When a subscriber last took it (dynacast).
    pub needed_at: Option<Instant>,
}

impl Layer {
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Pauses or resumes it at the publisher (the caller tells the publisher).
    pub fn set_paused(&mut self, now: Instant, paused: bool) {
        if self.paused && !paused {
            self.resumed_at = Some(now);
        }
        self.paused = paused;
    }

    /// Whether subscribers may be given this layer: it is being sent, or is
    /// expected (see [`LAYER_START_GRACE`]), or we paused it and it will
    /// resume on demand, unless a recent resume failed.
    fn available(&mut self, now: Instant, track_started: Option<Instant>) -> bool {
        let within = |t: Instant| now.saturating_duration_since(t) < LAYER_START_GRACE;
        if self.sending(now) {
            self.resumed_at = None;
            self.retry_at = None;
            return true;
        }
        if let Some(at) = self.resumed_at {
            if within(at) {
                return true;
            }
            self.resumed_at = None;
            self.retry_at = Some(now + LAYER_RETRY_AFTER);
        }
        match self.last_packet {
            None => track_started.is_none_or(within),
            Some(_) => self.paused && self.retry_at.is_none_or(|t| now >= t),
        }
    }

    /// Being sent: a packet came recently.
    pub fn sending(&self, now: Instant) -> bool {
        self.last_packet
            .is_some_and(|t| now.saturating_duration_since(t) < LAYER_IDLE)
    }

    /// The packet history for packets of `source`; cleared when the source
    /// changes (a new generation), so old sequencer entries cannot fetch a
    /// packet of the new source.
    /// The layer's packet history, made with room for `capacity` packets.
    pub fn history(&mut self, source: SourceKey, capacity: usize) -> &mut PacketHistory {
        let h = self
            .history
            .get_or_insert_with(|| PacketHistory::new(capacity));
        if self.history_source != Some(source) {
            h.new_generation();
            self.history_source = Some(source);
        }
        h
    }

    pub fn history_ref(&self) -> Option<&PacketHistory> {
        self.history.as_ref()
    }
}

/// The layers of one published track, lowest first. A track without
/// simulcast has one layer with no `rid`.
#[derive(Debug)]
pub struct TrackLayers {
    layers: Vec<Layer>,
    /// The first packet of any layer.
    started: Option<Instant>,
}

impl Default for TrackLayers {
    fn default() -> Self {
        TrackLayers::single()
    }
}

impl TrackLayers {
    pub fn single() -> Self {
        TrackLayers {
            layers: vec![Layer::default()],
            started: None,
        }
    }

    /// Layers for the `rid`s of a simulcast offer, ordered low to high by
    /// name where the name says it, else in offer order.
    pub fn from_rids(rids: impl IntoIterator<Item = Rid>) -> Self {
        let mut rids: Vec<Rid> = rids.into_iter().take(MAX_LAYERS).collect();
        if rids.is_empty() {
            return TrackLayers::single();
        }
        rids.sort_by_key(|r| rid_rank(r)); // stable: unknown names keep offer order
        TrackLayers {
            layers: rids
                .into_iter()
                .map(|rid| Layer {
                    rid: Some(rid),
                    ..Default::default()
                })
                .collect(),
            started: None,
        }
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    pub fn is_simulcast(&self) -> bool {
        self.layers.len() > 1 || self.layers.first().is_some_and(|l| l.rid.is_some())
    }

    /// The layer a packet with this `rid` belongs to.
    pub fn index(&self, rid: Option<Rid>) -> Option<usize> {
        if !self.is_simulcast() {
            return Some(0);
        }
        let rid = rid?;
        self.layers.iter().position(|l| l.rid == Some(rid))
    }

    pub fn get(&self, i: usize) -> Option<&Layer> {
        self.layers.get(i)
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut Layer> {
        self.layers.get_mut(i)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Layer> {
        self.layers.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Layer> {
        self.layers.iter_mut()
    }

    /// A packet of layer `i` arrived.
    pub fn on_packet(
        &mut self,
        i: usize,
        now: Instant,
        ssrc: u32,
        bytes: usize,
        keyframe_size: Option<(u32, u32)>,
    ) {
        let Some(l) = self.layers.get_mut(i) else {
            return;
        };
        self.started.get_or_insert(now);
        l.ssrc = Some(ssrc);
        l.rate.add(now, bytes);
        l.last_packet = Some(now);
        if let Some(size) = keyframe_size {
            l.size = size;
        }
    }

    /// The layers as the allocator sees them. A layer we paused counts as
    /// available (it resumes on demand) with its last measured rate, and so
    /// does one that should start soon (see [`Layer::available`]).
    pub fn offer(&mut self, now: Instant, out: &mut Vec<allocator::Layer>) {
        out.clear();
        let started = self.started;
        for l in &mut self.layers {
            l.rate.roll(now);
            out.push(allocator::Layer {
                bitrate_bps: l.rate.bps(),
                width: l.size.0,
                height: l.size.1,
                active: l.available(now, started),
            });
        }
    }
}

/// What a subscriber does with a packet of some layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerVerdict {
    /// Of the layer it receives.
    Forward,
    /// The keyframe of the target layer: switch to it with this packet.
    Switch,
    /// Of the target layer, not a keyframe: wait (and ask for one).
    WaitKeyframe,
    /// Of a layer it does not receive, or the track is paused for it.
    Skip,
}

/// One subscriber's layer of one track.
#[derive(Debug, Clone, Default)]
pub struct LayerSelector {
    /// The layer it receives now (`None`: nothing yet, or paused).
    pub current: Option<u8>,
    /// The layer the allocator chose (`None`: paused).
    pub target: Option<u8>,
}

impl LayerSelector {
    pub fn new(target: Option<u8>) -> Self {
        LayerSelector {
            current: None,
            target,
        }
    }

    pub fn check(&mut self, layer: usize, keyframe: bool) -> LayerVerdict {
        let layer = Some(layer as u8);
        let Some(target) = self.target else {
            return LayerVerdict::Skip;
        };
        if self.current == layer {
            // Still on it; a keyframe of the target layer may come later.
            return LayerVerdict::Forward;
        }
        if layer != Some(target) {
            return LayerVerdict::Skip;
        }
        if !keyframe {
            return LayerVerdict::WaitKeyframe;
        }
        self.current = layer;
        LayerVerdict::Switch
    }

    /// The layer to ask a keyframe for, if it waits for one.
    pub fn waiting_for(&self) -> Option<usize> {
        match (self.current, self.target) {
            (c, Some(t)) if c != Some(t) => Some(t as usize),
            _ => None,
        }
    }

    /// Sets the target. Pausing stops forwarding at once; the next layer
    /// (or the same, resumed) starts on a keyframe.
    pub fn set_target(&mut self, target: Option<u8>) {
        self.target = target;
        if target.is_none() {
            self.current = None;
        }
    }

    /// Start over on a keyframe (source changed, unmute).
    pub fn reset(&mut self) {
        self.current = None;
    }
}

/// The frame size in the VP8 payload header of a keyframe's first packet
/// (RFC 6386 §9.1), after a payload descriptor of `descriptor_len` bytes.
pub fn vp8_keyframe_size(payload: &[u8], descriptor_len: usize) -> Option<(u32, u32)> {
    let h = payload.get(descriptor_len..descriptor_len + 10)?;
    // Frame tag (3 bytes, bit 0 = 0 on keyframes), start code, sizes (14 bits).
    if h[0] & 0x01 != 0 || h[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([h[6], h[7]]) & 0x3fff;
    let hgt = u16::from_le_bytes([h[8], h[9]]) & 0x3fff;
    Some((u32::from(w), u32::from(hgt)))
}

/// The frame size in an H.264 sequence parameter set carried by an RTP
/// payload (RFC 6184): a single SPS NAL unit or one inside a STAP-A, as
/// encoders send them before each IDR. Parsing is h264-reader's.
pub fn h264_sps_size(payload: &[u8]) -> Option<(u32, u32)> {
    const SPS: u8 = 7;
    const STAP_A: u8 = 24;
    let b0 = *payload.first()?;
    match b0 & 0x1f {
        SPS => sps_size(payload),
        STAP_A => {
            let mut rest = payload.get(1..)?;
            while rest.len() > 2 {
                let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let nal = rest.get(2..2 + size)?;
                if nal.first().is_some_and(|b| b & 0x1f == SPS) {
                    return sps_size(nal);
                }
                rest = &rest[2 + size..];
            }
            None
        }
        _ => None,
    }
}

fn sps_size(nal: &[u8]) -> Option<(u32, u32)> {
    use h264_reader::nal::sps::SeqParameterSet;
    use h264_reader::rbsp::{decode_nal, BitReader};
    let rbsp = decode_nal(nal).ok()?;
    let sps = SeqParameterSet::from_bits(BitReader::new(&*rbsp)).ok()?;
    sps.pixel_dimensions().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rids_are_ordered_low_to_high_by_name() {
        let l = TrackLayers::from_rids(["f", "q", "h"].map(Rid::from));
        let rids: Vec<String> = l.iter().map(|l| l.rid.unwrap().to_string()).collect();
        assert_eq!(rids, ["q", "h", "f"]);
        assert_eq!(l.index(Some(Rid::from("h"))), Some(1));
        assert_eq!(l.index(Some(Rid::from("x"))), None);
        assert_eq!(l.index(None), None, "simulcast packets carry a rid");
        assert_eq!(TrackLayers::single().index(None), Some(0));
        let odd = TrackLayers::from_rids(["b", "a"].map(Rid::from));
        assert_eq!(odd.get(0).unwrap().rid, Some(Rid::from("b")), "offer order");
    }

    fn active(l: &mut TrackLayers, now: Instant) -> Vec<bool> {
        let mut out = Vec::new();
        l.offer(now, &mut out);
        out.iter().map(|l| l.active).collect()
    }

    #[test]
    fn layers_that_do_not_come_are_not_offered() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut l = TrackLayers::from_rids(["q", "h", "f"].map(Rid::from));
        // Before any packet, all are expected.
        assert_eq!(active(&mut l, t0), [true, true, true]);
        // q and h arrive, f does not (a browser's layer limit).
        for t in (0..3000).step_by(100) {
            l.on_packet(0, ms(t), 1, 100, None);
            l.on_packet(1, ms(t), 2, 300, None);
        }
        assert_eq!(
            active(&mut l, ms(1000)),
            [true, true, true],
            "within the grace"
        );
        assert_eq!(active(&mut l, ms(2900)), [true, true, false], "never came");

        // h paused by us: still offered, it resumes on demand.
        l.get_mut(1).unwrap().set_paused(ms(3000), true);
        assert_eq!(active(&mut l, ms(5000)), [false, true, false]);
        // Resumed, but it does not come back: withdrawn, retried later.
        l.get_mut(1).unwrap().set_paused(ms(5000), false);
        assert_eq!(active(&mut l, ms(6000)), [false, true, false]);
        assert_eq!(active(&mut l, ms(7100)), [false, false, false]);
        l.get_mut(1).unwrap().set_paused(ms(8000), true);
        assert_eq!(active(&mut l, ms(9000)), [false, false, false]);
        assert_eq!(active(&mut l, ms(17_200)), [false, true, false], "retry");
        // A packet makes it available at once.
        l.on_packet(2, ms(17_300), 3, 900, None);
        assert_eq!(active(&mut l, ms(17_300)), [false, true, true]);
    }

    #[test]
    fn selector_switches_only_on_a_keyframe_of_the_target() {
        let mut s = LayerSelector::new(Some(0));
        assert_eq!(s.check(1, true), LayerVerdict::Skip);
        assert_eq!(s.check(0, false), LayerVerdict::WaitKeyframe);
        assert_eq!(s.waiting_for(), Some(0));
        assert_eq!(s.check(0, true), LayerVerdict::Switch);
        assert_eq!(s.check(0, false), LayerVerdict::Forward);
        s.set_target(Some(2));
        assert_eq!(s.waiting_for(), Some(2));
        assert_eq!(
            s.check(0, false),
            LayerVerdict::Forward,
            "keeps layer 0 meanwhile"
        );
        assert_eq!(s.check(2, false), LayerVerdict::WaitKeyframe);
        assert_eq!(s.check(2, true), LayerVerdict::Switch);
        assert_eq!(s.check(0, true), LayerVerdict::Skip);
        s.set_target(None);
        assert_eq!(s.check(2, true), LayerVerdict::Skip);
        s.set_target(Some(2));
        assert_eq!(
            s.check(2, false),
            LayerVerdict::WaitKeyframe,
            "resumes on a keyframe"
        );
    }

    #[test]
    fn rate_meter_smooths_and_follows_drops() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        for i in 0..=20u64 {
            // 125 kB/s = 1 Mbit/s in 12.5 kB steps every 100 ms.
            m.add(t0 + Duration::from_millis(i * 100), 12_500);
        }
        assert!((900_000..=1_300_000).contains(&m.bps()), "{}", m.bps());
        m.roll(t0 + Duration::from_millis(3000));
        assert!(m.bps() < 500_000, "silence brings it down: {}", m.bps());
    }

    /// Constrained Baseline SPSs (level 3.1, POC type 2, no VUI), bit by bit
    /// from H.264 §7.3.2.1: 1280x720 (80x45 macroblocks), and 320x180
    /// (20x12 macroblocks, 12 rows cropped at the bottom).
    const SPS_720P: [u8; 9] = [0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe4];
    const SPS_180P: [u8; 9] = [0x67, 0x42, 0xc0, 0x1f, 0xda, 0x05, 0x06, 0x7e, 0x74];

    #[test]
    fn h264_sps_size_reads_single_and_stap_a() {
        assert_eq!(h264_sps_size(&SPS_720P), Some((1280, 720)));
        assert_eq!(h264_sps_size(&SPS_180P), Some((320, 180)));
        let pps = [0x68, 0xce, 0x3c, 0x80];
        let mut stap = vec![0x78];
        for nal in [&SPS_720P[..], &pps[..]] {
            stap.extend_from_slice(&(nal.len() as u16).to_be_bytes());
            stap.extend_from_slice(nal);
        }
        assert_eq!(h264_sps_size(&stap), Some((1280, 720)));
        // An IDR slice, a truncated STAP-A, garbage: no size, no panic.
        assert_eq!(h264_sps_size(&[0x65, 0x88, 0x84]), None);
        assert_eq!(h264_sps_size(&stap[..6]), None);
        let mut x: u32 = 12345;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|i| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    if i == 0 {
                        0x67
                    } else {
                        (x >> 16) as u8
                    }
                })
                .collect();
            let _ = h264_sps_size(&bytes);
        }
    }

    #[test]
    fn vp8_keyframe_size_reads_the_payload_header() {
        // Descriptor: X=1, S=1; I=1 with 15-bit picture id.
        let mut p = vec![0x90, 0x80, 0x81, 0x23];
        // Frame tag (keyframe), start code, 640x360.
        p.extend_from_slice(&[0x50, 0x02, 0x00, 0x9d, 0x01, 0x2a]);
        p.extend_from_slice(&640u16.to_le_bytes());
        p.extend_from_slice(&360u16.to_le_bytes());
        assert_eq!(vp8_keyframe_size(&p, 4), Some((640, 360)));
        assert_eq!(vp8_keyframe_size(&p[..8], 4), None);
        p[4] |= 1; // inter frame
        assert_eq!(vp8_keyframe_size(&p, 4), None);
    }
}
