//! FlexFEC in the draft-03 format (`video/flexfec-03`), wire-compatible with webrtc-rs
//! `rtc-interceptor` 0.21.
//!
//! Unlike ULPFEC, repair packets form a stream of their own: their own SSRC, payload type and
//! sequence numbers, associated with the media by `a=ssrc-group:FEC-FR <media> <repair>`. The
//! repair payload is:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|F|P|X|  CC   |M| PT recovery |        length recovery        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                          TS recovery                          |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   SSRCCount   |                    reserved                   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       protected SSRC                          |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |            SN base            |k|      mask, offsets 0-14     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |k|             mask, offsets 15-45 (if the first k is 0)       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |k|                                                             |
//! +-+           mask, offsets 46-108 (if the second k is 0)       |
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  XOR of the protected bytes ...               |
//! ```
//!
//! R (retransmission) and F (fixed mask) are 0; SSRCCount is 1. A set k bit marks the last mask
//! word, and the third must have it. The recovery fields and the protected bytes are computed as
//! for ULPFEC, with length recovery in the second 16 bits rather than after the timestamp.
//!
//! This is the draft format, which RFC 8627 replaced incompatibly; it is what rtc-interceptor
//! implements and what browsers negotiate under the name `flexfec-03`. Repair packets carry the
//! timestamp of the first media packet they protect, as rtc-interceptor's do.

use crate::group::{GroupError, MaskKind, MediaGroup, Protection, RecoveryFields};
use crate::recovery::{MediaStatus, RecoveryCore, RecoveryStats, Repair};
use crate::rtp::{self, RtpError, FIXED_HEADER_LEN};
use thiserror::Error;

/// Most sequence numbers one repair packet can protect: 15 + 31 + 63 mask bits.
pub const MAX_MEDIA_PACKETS: usize = 109;

/// Repair header length with one mask word.
const HEADER_LEN_1: usize = 20;
/// With two mask words.
const HEADER_LEN_2: usize = 24;
/// With three mask words.
const HEADER_LEN_3: usize = 32;

/// Mask positions covered by the first word, and by the first two.
const WORD_1_BITS: u16 = 15;
const WORDS_2_BITS: u16 = 46;

/// Errors of the FlexFEC encoder and decoder.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlexfecError {
    /// A media packet could not join the encoder's group.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// A packet given to the decoder is not well-formed RTP.
    #[error("RTP packet: {0}")]
    Rtp(#[from] RtpError),
    /// A payload type outside 0..=127 was configured.
    #[error("payload type {0} is not in 0..=127")]
    PayloadType(u8),
    /// The repair payload ends before the header it announces.
    #[error("repair payload of {len} bytes is shorter than its {need}-byte header")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Header length announced.
        need: usize,
    },
    /// The R bit is set: a retransmission, which draft-03 FlexFEC in WebRTC does not use.
    #[error("repair header has the R (retransmission) bit set")]
    RetransmissionBit,
    /// The F bit is set: a fixed (non-flexible) mask, which WebRTC does not use.
    #[error("repair header has the F (fixed mask) bit set")]
    FixedMask,
    /// The repair packet protects a number of streams other than one.
    #[error("repair header protects {0} SSRCs; only 1 is supported")]
    SsrcCount(u8),
    /// The third mask word lacks its k bit, so the header has no end.
    #[error("the last packet mask word does not set its k bit")]
    UnterminatedMask,
    /// The mask protects no packet.
    #[error("repair packet mask is empty")]
    EmptyMask,
    /// A packet belongs to a stream other than the decoder's.
    #[error("SSRC {got:#010x} is not the protected stream {expected:#010x}")]
    SsrcMismatch {
        /// The decoder's media SSRC.
        expected: u32,
        /// The SSRC in the packet (media) or its repair header (repair).
        got: u32,
    },
}

/// A parsed draft-03 repair header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlexfecHeader {
    /// P, X and CC recovery (the low six bits of the first byte).
    pub pxcc_recovery: u8,
    /// M and PT recovery.
    pub mpt_recovery: u8,
    /// Length recovery: XOR of the protected packets' lengths minus 12.
    pub length_recovery: u16,
    /// Timestamp recovery.
    pub ts_recovery: u32,
    /// SSRC of the media stream protected.
    pub protected_ssrc: u32,
    /// Sequence number the first mask bit stands for.
    pub sn_base: u16,
    /// Header length: 20, 24 or 32 bytes depending on the mask words present.
    pub header_len: usize,
    /// Bit `i` (least significant first) set: `sn_base + i` protected.
    mask: u128,
}

impl FlexfecHeader {
    /// Parse the header at the start of a repair payload (after the repair packet's RTP header).
    pub fn parse(payload: &[u8]) -> Result<Self, FlexfecError> {
        let truncated = |need| FlexfecError::Truncated {
            len: payload.len(),
            need,
        };
        let head = payload.get(..HEADER_LEN_1).ok_or(truncated(HEADER_LEN_1))?;
        if head[0] & 0x80 != 0 {
            return Err(FlexfecError::RetransmissionBit);
        }
        if head[0] & 0x40 != 0 {
            return Err(FlexfecError::FixedMask);
        }
        if head[8] != 1 {
            return Err(FlexfecError::SsrcCount(head[8]));
        }

        // The mask words concatenated, k bits removed: 109 bits, offset 0 most significant.
        let word1 = u128::from(u16::from_be_bytes([head[18], head[19]]) & 0x7FFF);
        let mut bits = word1 << (MAX_MEDIA_PACKETS - 15);
        let mut header_len = HEADER_LEN_1;
        if head[18] & 0x80 == 0 {
            let w = payload
                .get(HEADER_LEN_1..HEADER_LEN_2)
                .ok_or(truncated(HEADER_LEN_2))?;
            let word2 = u128::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]) & 0x7FFF_FFFF);
            bits |= word2 << (MAX_MEDIA_PACKETS - 46);
            header_len = HEADER_LEN_2;
            if w[0] & 0x80 == 0 {
                let w = payload
                    .get(HEADER_LEN_2..HEADER_LEN_3)
                    .ok_or(truncated(HEADER_LEN_3))?;
                if w[0] & 0x80 == 0 {
                    return Err(FlexfecError::UnterminatedMask);
                }
                let mut word3 = [0u8; 8];
                word3.copy_from_slice(w);
                bits |= u128::from(u64::from_be_bytes(word3) & 0x7FFF_FFFF_FFFF_FFFF);
                header_len = HEADER_LEN_3;
            }
        }
        // Least significant first, as the decoder core counts.
        let mask = bits.reverse_bits() >> (128 - MAX_MEDIA_PACKETS);
        if mask == 0 {
            return Err(FlexfecError::EmptyMask);
        }
        Ok(Self {
            pxcc_recovery: head[0] & 0x3F,
            mpt_recovery: head[1],
            length_recovery: u16::from_be_bytes([head[2], head[3]]),
            ts_recovery: u32::from_be_bytes([head[4], head[5], head[6], head[7]]),
            protected_ssrc: u32::from_be_bytes([head[12], head[13], head[14], head[15]]),
            sn_base: u16::from_be_bytes([head[16], head[17]]),
            header_len,
            mask,
        })
    }

    /// Whether the packet with sequence number `seq` is protected.
    pub fn protects(&self, seq: u16) -> bool {
        let offset = seq.wrapping_sub(self.sn_base);
        offset < 128 && self.mask & (1 << offset) != 0
    }

    /// Sequence numbers of the protected packets, in order.
    pub fn protected_seqs(&self) -> impl Iterator<Item = u16> + '_ {
        (0..128u16)
            .filter(|&offset| self.mask & (1 << offset) != 0)
            .map(|offset| self.sn_base.wrapping_add(offset))
    }

    fn fields(&self) -> RecoveryFields {
        RecoveryFields {
            pxcc: self.pxcc_recovery,
            mpt: self.mpt_recovery,
            timestamp: self.ts_recovery,
            length: self.length_recovery,
        }
    }
}

/// Repair header length for a mask spanning `span` sequence numbers.
fn header_len_for(span: u16) -> usize {
    if span <= WORD_1_BITS {
        HEADER_LEN_1
    } else if span <= WORDS_2_BITS {
        HEADER_LEN_2
    } else {
        HEADER_LEN_3
    }
}

/// Collects a group of media packets of one stream and generates FlexFEC repair packets.
///
/// Add the group's packets in sending order (gaps are allowed, as long as the group spans at most
/// [`MAX_MEDIA_PACKETS`] sequence numbers), then [`generate`](Self::generate). Packets are copied
/// into buffers the encoder reuses.
#[derive(Debug)]
pub struct FlexfecEncoder {
    group: MediaGroup,
    repair_pt: u8,
    repair_ssrc: u32,
    next_seq: u16,
}

impl FlexfecEncoder {
    /// An encoder sending repair packets with payload type `repair_pt` on `repair_ssrc`, the
    /// first numbered `first_seq` (pick it at random, as for any RTP stream).
    pub fn new(repair_pt: u8, repair_ssrc: u32, first_seq: u16) -> Result<Self, FlexfecError> {
        if repair_pt > 127 {
            return Err(FlexfecError::PayloadType(repair_pt));
        }
        Ok(Self {
            group: MediaGroup::new(MAX_MEDIA_PACKETS as u16),
            repair_pt,
            repair_ssrc,
            next_seq: first_seq,
        })
    }

    /// Add a serialized media packet to the group.
    ///
    /// Fails without changing the group if the packet is malformed, is from another SSRC than the
    /// group's first, does not follow the previous one, or would make the group span more than
    /// [`MAX_MEDIA_PACKETS`] sequence numbers.
    pub fn add_media(&mut self, packet: &[u8]) -> Result<(), FlexfecError> {
        Ok(self.group.push(packet)?)
    }

    /// Media packets in the current group.
    pub fn len(&self) -> usize {
        self.group.len()
    }

    /// Whether the current group is empty.
    pub fn is_empty(&self) -> bool {
        self.group.len() == 0
    }

    /// Drop the current group, and the earlier groups carried, without protecting them.
    pub fn clear(&mut self) {
        self.group.clear();
    }

    /// Keep the last `groups` groups after they are protected, and make each repair packet of
    /// a later group also protect one packet of each of them (a different one in successive
    /// groups), within the mask's span. A packet no repair packet of its own group could
    /// rebuild gets more chances from the groups after it: at high or bursty loss this leaves
    /// far fewer packets missing for the same number of repair packets, at the cost of
    /// rebuilding them a group or two later. 0 (the default) protects each group alone.
    pub fn set_carry(&mut self, groups: usize) {
        self.group.set_carry(groups);
    }

    /// Sequence number the next repair packet will carry.
    pub fn next_seq(&self) -> u16 {
        self.next_seq
    }

    /// Write `num_fec` complete repair RTP packets protecting the current group (and one packet of
    /// each carried group, see [`set_carry`](Self::set_carry)) into `out` and start a
    /// new group. Returns how many were written, which is also `out.len()` afterwards.
    ///
    /// `num_fec` is capped at the group size. The buffers already in `out` are reused. Each
    /// repair packet's SN base is its first protected packet, and it carries as few mask words
    /// as its span needs.
    pub fn generate(&mut self, num_fec: usize, kind: MaskKind, out: &mut Vec<Vec<u8>>) -> usize {
        let count = num_fec.min(self.group.len());
        out.resize_with(count, Vec::new);
        let protected_ssrc = self.group.ssrc();
        for (index, buf) in out.iter_mut().enumerate() {
            let header_len = |span| FIXED_HEADER_LEN + header_len_for(span);
            // `count` is within 1..=len, so every index protects something.
            let Some(protection) = self.group.protect(kind, index, count, buf, header_len) else {
                continue;
            };
            self.write_rtp_header(buf, protection.first_timestamp);
            write_repair_header(&mut buf[FIXED_HEADER_LEN..], &protection, protected_ssrc);
            self.next_seq = self.next_seq.wrapping_add(1);
        }
        self.group.finish();
        count
    }

    fn write_rtp_header(&self, buf: &mut [u8], timestamp: u32) {
        buf[0] = 0x80;
        buf[1] = self.repair_pt;
        buf[2..4].copy_from_slice(&self.next_seq.to_be_bytes());
        buf[4..8].copy_from_slice(&timestamp.to_be_bytes());
        buf[8..12].copy_from_slice(&self.repair_ssrc.to_be_bytes());
    }
}

/// Fill in the repair header at the front of `buf`, which [`MediaGroup::protect`] sized and
/// zeroed.
fn write_repair_header(buf: &mut [u8], protection: &Protection, protected_ssrc: u32) {
    let fields = protection.fields;
    // R=0, F=0.
    buf[0] = fields.pxcc;
    buf[1] = fields.mpt;
    buf[2..4].copy_from_slice(&fields.length.to_be_bytes());
    buf[4..8].copy_from_slice(&fields.timestamp.to_be_bytes());
    buf[8] = 1;
    buf[12..16].copy_from_slice(&protected_ssrc.to_be_bytes());
    buf[16..18].copy_from_slice(&protection.base.to_be_bytes());

    // Offset 0 in the most significant of 109 bits, then cut into the 15-, 31- and 63-bit words.
    let bits = protection.mask.reverse_bits() >> (128 - MAX_MEDIA_PACKETS);
    let word1 = (bits >> (MAX_MEDIA_PACKETS - 15)) as u16 & 0x7FFF;
    let word2 = (bits >> (MAX_MEDIA_PACKETS - 46)) as u32 & 0x7FFF_FFFF;
    let word3 = bits as u64 & 0x7FFF_FFFF_FFFF_FFFF;
    buf[18..20].copy_from_slice(&word1.to_be_bytes());
    match header_len_for(protection.span) {
        HEADER_LEN_1 => buf[18] |= 0x80,
        HEADER_LEN_2 => {
            buf[20..24].copy_from_slice(&word2.to_be_bytes());
            buf[20] |= 0x80;
        }
        _ => {
            buf[20..24].copy_from_slice(&word2.to_be_bytes());
            buf[24..32].copy_from_slice(&word3.to_be_bytes());
            buf[24] |= 0x80;
        }
    }
}

/// Recovers lost packets of one media stream from its FlexFEC repair stream.
///
/// Feed it the stream's media packets and the repair packets (both as complete serialized RTP
/// packets, routed by SSRC by the caller), in any order; after each call, drain
/// [`poll_recovered`](Self::poll_recovered). Memory is bounded as for
/// [`UlpfecDecoder`](crate::ulpfec::UlpfecDecoder).
#[derive(Debug)]
pub struct FlexfecDecoder {
    core: RecoveryCore,
    media_ssrc: u32,
}

impl FlexfecDecoder {
    /// A decoder for the media stream `media_ssrc`.
    pub fn new(media_ssrc: u32) -> Self {
        Self {
            core: RecoveryCore::new(media_ssrc),
            media_ssrc,
        }
    }

    /// The media stream this decoder rebuilds.
    pub fn media_ssrc(&self) -> u32 {
        self.media_ssrc
    }

    /// Offer a received media packet; it must be from the decoder's stream.
    pub fn handle_media(&mut self, packet: &[u8]) -> Result<MediaStatus, FlexfecError> {
        rtp::check(packet)?;
        let ssrc = rtp::ssrc(packet);
        if ssrc != self.media_ssrc {
            return Err(FlexfecError::SsrcMismatch {
                expected: self.media_ssrc,
                got: ssrc,
            });
        }
        Ok(self.core.insert_media(packet))
    }

    /// Offer a received repair packet, complete with its RTP header.
    pub fn handle_repair(&mut self, packet: &[u8]) -> Result<(), FlexfecError> {
        let layout = rtp::check(packet)?;
        let payload = &packet[layout.header_len..packet.len() - layout.padding_len];
        let header = FlexfecHeader::parse(payload)?;
        if header.protected_ssrc != self.media_ssrc {
            return Err(FlexfecError::SsrcMismatch {
                expected: self.media_ssrc,
                got: header.protected_ssrc,
            });
        }
        let mut body = self.core.take_buffer();
        body.extend_from_slice(&payload[header.header_len..]);
        self.core.insert_repair(Repair {
            base: header.sn_base,
            mask: header.mask,
            fields: header.fields(),
            body,
        });
        Ok(())
    }

    /// Copy the next recovered packet, a complete serialized RTP packet, into `out` (replacing
    /// its contents) and return its sequence number; `None` when there is nothing more.
    #[must_use = "a recovered packet is lost unless it is used"]
    pub fn poll_recovered(&mut self, out: &mut Vec<u8>) -> Option<u16> {
        self.core.poll(out)
    }

    /// What the decoder has done so far.
    pub fn stats(&self) -> RecoveryStats {
        self.core.stats
    }

    /// Forget all packets, as after a discontinuity.
    pub fn reset(&mut self) {
        self.core.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0xE0];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&0x1000u32.wrapping_add(u32::from(seq)).to_be_bytes());
        p.extend_from_slice(&0x1122_3344u32.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn repair_for(seqs: &[u16]) -> Vec<u8> {
        let mut encoder = FlexfecEncoder::new(49, 0xABCD, 7).expect("valid PT");
        for &seq in seqs {
            encoder
                .add_media(&media(seq, &[1, 2, 3]))
                .expect("in order");
        }
        let mut out = Vec::new();
        encoder.generate(1, MaskKind::Interleaved, &mut out);
        out.swap_remove(0)
    }

    #[test]
    fn header_layout_by_hand() {
        // Two packets, SN 100 and 101, TS 0x1064 and 0x1065, bodies 01 02 03.
        let packet = repair_for(&[100, 101]);
        let expected: [u8; 35] = [
            0x80, 49, 0x00, 0x07, 0x00, 0x00, 0x10, 0x64, 0x00, 0x00, 0xAB, 0xCD, // RTP
            0x00, // R=0, F=0, P/X/CC recovery 0
            0x00, // M 1^1, PT 96^96
            0x00, 0x00, // length recovery 3 ^ 3
            0x00, 0x00, 0x00, 0x01, // TS 0x1064 ^ 0x1065
            0x01, 0x00, 0x00, 0x00, // SSRCCount 1, reserved
            0x11, 0x22, 0x33, 0x44, // protected SSRC
            0x00, 0x64, // SN base 100
            0xE0, 0x00, // k=1, offsets 0 and 1: bits 14 and 13 of the 15-bit word
            0x00, 0x00, 0x00, // 01 02 03 ^ 01 02 03
        ];
        assert_eq!(&expected[..], &packet[..]);
    }

    #[test]
    fn mask_words_by_span() {
        // Offsets 0 and 20: the second word, offset 20 is its bit 30 - 5.
        let packet = repair_for(&[100, 120]);
        let payload = &packet[FIXED_HEADER_LEN..];
        assert_eq!([0x40, 0x00], payload[18..20], "k=0, offset 0");
        assert_eq!([0x82, 0x00, 0x00, 0x00], payload[20..24], "k=1, offset 20");
        let header = FlexfecHeader::parse(payload).expect("valid");
        assert_eq!(HEADER_LEN_2, header.header_len);
        assert_eq!(vec![100, 120], header.protected_seqs().collect::<Vec<_>>());

        // Offsets 0 and 108: the last bit of the third word.
        let packet = repair_for(&[100, 208]);
        let payload = &packet[FIXED_HEADER_LEN..];
        assert_eq!([0x00, 0x00, 0x00, 0x00], payload[20..24], "k=0, empty");
        assert_eq!(
            [0x80, 0, 0, 0, 0, 0, 0, 0x01],
            payload[24..32],
            "k=1, offset 108"
        );
        let header = FlexfecHeader::parse(payload).expect("valid");
        assert_eq!(HEADER_LEN_3, header.header_len);
        assert_eq!(vec![100, 208], header.protected_seqs().collect::<Vec<_>>());
    }

    #[test]
    fn rejects_malformed_headers() {
        let packet = repair_for(&[100, 101]);
        let payload = &packet[FIXED_HEADER_LEN..];

        let mut r = payload.to_vec();
        r[0] |= 0x80;
        assert_eq!(
            Err(FlexfecError::RetransmissionBit),
            FlexfecHeader::parse(&r)
        );
        let mut f = payload.to_vec();
        f[0] |= 0x40;
        assert_eq!(Err(FlexfecError::FixedMask), FlexfecHeader::parse(&f));
        let mut c = payload.to_vec();
        c[8] = 2;
        assert_eq!(Err(FlexfecError::SsrcCount(2)), FlexfecHeader::parse(&c));
        let mut k = payload.to_vec();
        k[18] &= 0x7F;
        assert!(matches!(
            FlexfecHeader::parse(&k[..22]),
            Err(FlexfecError::Truncated { need: 24, .. })
        ));
        let mut unterminated = payload[..20].to_vec();
        unterminated[18] &= 0x7F;
        unterminated.extend_from_slice(&[0; 12]);
        assert_eq!(
            Err(FlexfecError::UnterminatedMask),
            FlexfecHeader::parse(&unterminated)
        );
        let mut empty = payload.to_vec();
        empty[18] = 0x80;
        empty[19] = 0;
        assert_eq!(Err(FlexfecError::EmptyMask), FlexfecHeader::parse(&empty));
    }

    #[test]
    fn recovers_and_checks_ssrc() {
        let repair = repair_for(&[100, 101, 102]);
        let mut decoder = FlexfecDecoder::new(0x1122_3344);
        decoder
            .handle_media(&media(100, &[1, 2, 3]))
            .expect("valid");
        decoder
            .handle_media(&media(102, &[1, 2, 3]))
            .expect("valid");
        decoder.handle_repair(&repair).expect("valid");
        let mut out = Vec::new();
        assert_eq!(Some(101), decoder.poll_recovered(&mut out));
        assert_eq!(media(101, &[1, 2, 3]), out);

        let mut other = FlexfecDecoder::new(5);
        assert!(matches!(
            other.handle_repair(&repair),
            Err(FlexfecError::SsrcMismatch {
                got: 0x1122_3344,
                ..
            })
        ));
        assert!(matches!(
            other.handle_media(&media(100, &[1])),
            Err(FlexfecError::SsrcMismatch { .. })
        ));
        assert_eq!(
            Err(FlexfecError::PayloadType(128)),
            FlexfecEncoder::new(128, 1, 0).map(|_| ())
        );
    }
}
