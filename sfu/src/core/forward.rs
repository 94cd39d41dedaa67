//! The per-subscriber forwarding decision: drop, or forward with which
//! sequence number, timestamp and payload type. Pure: it sees the packet and
//! the subscriber's state and returns a `Decision`; the node applies it.

use std::time::Instant;

use str0m::media::Pt;

use super::codec::CodecKind;
use super::rewrite::{InPacket, RewriteDrop, SourceKey, StreamRewriter};
use super::simulcast::{LayerSelector, LayerVerdict};
use super::DropReason;

/// What the router knows about one incoming packet, computed once and shared
/// by every subscriber of its track.
#[derive(Debug, Clone, Copy)]
pub struct FwdPacket {
    pub source: SourceKey,
    pub seq: u64,
    pub ts: u64,
    pub arrival: Instant,
    pub pt: Pt,
    pub codec: CodecKind,
    pub clock_rate: u32,
    pub keyframe: bool,
    /// Its simulcast layer (0 without simulcast).
    pub layer: u8,
    /// Bumped by the track each time it is unmuted: forwarders re-sync.
    pub resume_epoch: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Drop(DropReason),
    /// Of a simulcast layer this subscriber does not receive (not counted:
    /// every subscriber skips most layers).
    Skip,
    /// `switched`: the first packet after a change of source (layer
    /// switch, resume): payload-level state (VP8 picture ids) re-anchors.
    Forward {
        seq: u64,
        ts: u32,
        switched: bool,
    },
}

/// State of one outgoing stream of one subscriber.
#[derive(Debug)]
pub struct Forwarder {
    first_seq: u16,
    first_ts: u32,
    rewriter: Option<StreamRewriter>,
    /// Video: the layer received, the layer wanted. It waits for a keyframe
    /// before the first packet, after a resume and to switch layers.
    pub layers: LayerSelector,
    resume_epoch: u32,
}

impl Forwarder {
    /// `first_seq`/`first_ts` start the outgoing stream (keep seq < 2^15).
    pub fn new(first_seq: u16, first_ts: u32) -> Self {
        Forwarder {
            first_seq,
            first_ts,
            rewriter: None,
            layers: LayerSelector::new(Some(0)),
            resume_epoch: 0,
        }
    }

    /// The track's source changed under this forwarder (WHEP switch): the
    /// decoder must start over on a keyframe.
    pub fn source_changed(&mut self) {
        self.layers.reset();
        if let Some(r) = self.rewriter.as_mut() {
            r.discontinuity();
        }
    }

    /// The allocator's choice: `None` pauses the stream at once; another
    /// layer is switched to on its next keyframe.
    pub fn set_target(&mut self, layer: Option<u8>) {
        if layer.is_none() && self.layers.current.is_some() {
            if let Some(r) = self.rewriter.as_mut() {
                r.discontinuity();
            }
        }
        self.layers.set_target(layer);
    }

    pub fn decide(&mut self, p: &FwdPacket) -> Decision {
        if p.resume_epoch != self.resume_epoch {
            self.resume_epoch = p.resume_epoch;
            self.source_changed();
        }
        let mut switched = false;
        if p.codec.is_video() {
            match self.layers.check(usize::from(p.layer), p.keyframe) {
                LayerVerdict::Forward => {}
                LayerVerdict::Skip => return Decision::Skip,
                LayerVerdict::WaitKeyframe => {
                    return Decision::Drop(DropReason::WaitingForKeyframe)
                }
                LayerVerdict::Switch => switched = true,
            }
        }
        let (first_seq, first_ts) = (self.first_seq, self.first_ts);
        let rewriter = self
            .rewriter
            .get_or_insert_with(|| StreamRewriter::new(p.clock_rate, first_seq, first_ts));
        if switched {
            rewriter.switch_to(p.source);
        }
        let rin = InPacket {
            source: p.source,
            seq: p.seq,
            ts: p.ts,
            arrival: p.arrival,
        };
        match rewriter.rewrite(&rin) {
            Ok(rw) => Decision::Forward {
                seq: rw.seq,
                ts: rw.ts,
                switched,
            },
            Err(RewriteDrop::StaleSource) => Decision::Drop(DropReason::StaleSource),
            Err(RewriteDrop::BeforeSwitch) => Decision::Drop(DropReason::BeforeSwitch),
            Err(RewriteDrop::TooLate) => Decision::Drop(DropReason::TooLate),
        }
    }

    /// The incoming packet `seq` of `source` is not forwarded (a publisher's
    /// FEC): later packets close up over it.
    pub fn skip(&mut self, source: SourceKey, seq: u64) {
        if let Some(r) = self.rewriter.as_mut() {
            r.skip(source, seq);
        }
    }

    /// Reserves `n` outgoing sequence numbers after the highest sent.
    pub fn reserve(&mut self, n: u64) -> Option<u64> {
        self.rewriter.as_mut()?.reserve(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn p(seq: u64, keyframe: bool, epoch: u32, t0: Instant) -> FwdPacket {
        FwdPacket {
            source: SourceKey {
                track_epoch: 0,
                ssrc: 1,
            },
            seq,
            ts: seq * 3000,
            arrival: t0 + Duration::from_millis(seq * 33),
            pt: Pt::new_with_value(96),
            codec: CodecKind::Vp8,
            clock_rate: 90_000,
            keyframe,
            layer: 0,
            resume_epoch: epoch,
        }
    }

    #[test]
    fn video_starts_on_keyframe_and_resumes_on_keyframe_without_gap() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(1, 0);
        assert_eq!(
            f.decide(&p(10, false, 0, t0)),
            Decision::Drop(DropReason::WaitingForKeyframe)
        );
        assert!(matches!(
            f.decide(&p(11, true, 0, t0)),
            Decision::Forward { seq: 1, .. }
        ));
        assert!(matches!(
            f.decide(&p(12, false, 0, t0)),
            Decision::Forward { seq: 2, .. }
        ));
        // Muted for a while then unmuted (epoch 1): drop until a keyframe, then continue at 3.
        assert_eq!(
            f.decide(&p(100, false, 1, t0)),
            Decision::Drop(DropReason::WaitingForKeyframe)
        );
        assert!(matches!(
            f.decide(&p(101, true, 1, t0)),
            Decision::Forward { seq: 3, .. }
        ));
    }
}
