//! ULPFEC (RFC 5109) as libwebrtc sends and decodes it: one protection level, carried in RED.
//!
//! A FEC payload is the 10-byte FEC header, one level-0 ULP header and the protected bytes:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |E|L|P|X|  CC   |M| PT recovery |            SN base            |  FEC header
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                          TS recovery                          |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |        length recovery        |       Protection Length       |  ULP level 0 header
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |             mask              |  mask cont. (present if L=1)  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |              mask cont. (present if L=1)                      |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  XOR of the protected bytes ...               |
//! ```
//!
//! Mask bit *i* (from the most significant) set means the packet with sequence number
//! `SN base + i` is protected. The protected bytes are everything after each packet's fixed
//! 12-byte header, so level 0 covers whole packets and the protection length is that of the
//! longest.
//!
//! # Carrying it
//!
//! libwebrtc sends the FEC payload as the only block of a RED packet (RFC 2198) whose block
//! payload type is the negotiated `ulpfec` type, on the media SSRC and in the media sequence
//! space; [`crate::red::wrap_packet`] builds one from an RTP header. It rejects RED packets with
//! more than one block on this path.
//!
//! The media packets it protects are the packets *without* RED: when media is sent inside RED,
//! the protected form has the media payload type in the header and the RED block's payload as
//! payload ([`crate::red::unwrap_packet`] converts). Feed both the encoder and the decoder that
//! form; recovered packets come out in it.

use crate::group::{GroupError, MaskKind, MediaGroup, RecoveryFields};
use crate::recovery::{MediaStatus, RecoveryCore, RecoveryStats, Repair};
use crate::rtp::{self, RtpError, MAX_PACKET_LEN};
use thiserror::Error;

pub use crate::group::fec_count;

/// Most sequence numbers one FEC packet can protect: the 48-bit mask with L=1.
pub const MAX_MEDIA_PACKETS: usize = 48;

/// Length of the FEC header plus a ULP level header with the 16-bit mask.
pub const SHORT_HEADER_LEN: usize = 14;

/// Length of the FEC header plus a ULP level header with the 48-bit mask.
pub const LONG_HEADER_LEN: usize = 18;

/// Mask positions without the L bit.
const SHORT_MASK_BITS: u32 = 16;

/// Errors of the ULPFEC encoder and decoder.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UlpfecError {
    /// A media packet could not join the encoder's group.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// A media packet given to the decoder is not well-formed RTP.
    #[error("media packet: {0}")]
    Rtp(#[from] RtpError),
    /// The FEC payload ends before the header it announces.
    #[error("FEC payload of {len} bytes is shorter than its {need}-byte header")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Header length announced.
        need: usize,
    },
    /// The FEC payload is longer than any packet this crate handles.
    #[error("FEC payload of {0} bytes exceeds the packet size limit")]
    TooLong(usize),
    /// The E bit is set; RFC 5109 reserves it for a header extension nobody defined.
    #[error("FEC header has the reserved E bit set")]
    ExtensionBit,
    /// The mask protects no packet.
    #[error("FEC packet mask is empty")]
    EmptyMask,
    /// A media packet belongs to a stream other than the decoder's.
    #[error("SSRC {got:#010x} is not the protected stream {expected:#010x}")]
    SsrcMismatch {
        /// The decoder's media SSRC.
        expected: u32,
        /// The SSRC in the packet.
        got: u32,
    },
    /// The protection length runs past the end of the payload.
    #[error("protection length {protection_len} exceeds the {available} bytes after the header")]
    ProtectionOverrun {
        /// Protection length announced.
        protection_len: usize,
        /// Bytes after the headers.
        available: usize,
    },
}

/// A parsed FEC header and level-0 ULP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UlpfecHeader {
    /// L bit: the mask is 48 bits rather than 16.
    pub long_mask: bool,
    /// Sequence number the first mask bit stands for.
    pub sn_base: u16,
    /// P, X and CC recovery (the low six bits of the first byte).
    pub pxcc_recovery: u8,
    /// M and PT recovery.
    pub mpt_recovery: u8,
    /// Timestamp recovery.
    pub ts_recovery: u32,
    /// Length recovery: XOR of the protected packets' lengths minus 12.
    pub length_recovery: u16,
    /// Protected bytes following the headers.
    pub protection_len: u16,
    /// Bit `i` (least significant first) set: `sn_base + i` protected.
    mask: u64,
}

impl UlpfecHeader {
    /// Parse the headers at the start of a FEC payload (the RED block, not the RTP packet).
    ///
    /// Checks that the protection length fits in `payload`; bytes beyond it are ignored.
    pub fn parse(payload: &[u8]) -> Result<Self, UlpfecError> {
        if payload.len() > MAX_PACKET_LEN {
            return Err(UlpfecError::TooLong(payload.len()));
        }
        let short = payload
            .get(..SHORT_HEADER_LEN)
            .ok_or(UlpfecError::Truncated {
                len: payload.len(),
                need: SHORT_HEADER_LEN,
            })?;
        if short[0] & 0x80 != 0 {
            return Err(UlpfecError::ExtensionBit);
        }
        let long_mask = short[0] & 0x40 != 0;
        let header_len = if long_mask {
            LONG_HEADER_LEN
        } else {
            SHORT_HEADER_LEN
        };
        let header = payload.get(..header_len).ok_or(UlpfecError::Truncated {
            len: payload.len(),
            need: header_len,
        })?;
        let mut wire = [0u8; 8];
        wire[..header_len - 12].copy_from_slice(&header[12..]);
        // Most significant first on the wire, least significant first in `mask`.
        let mask = u64::from_be_bytes(wire).reverse_bits();
        if mask == 0 {
            return Err(UlpfecError::EmptyMask);
        }
        let protection_len = u16::from_be_bytes([header[10], header[11]]);
        let available = payload.len() - header_len;
        if usize::from(protection_len) > available {
            return Err(UlpfecError::ProtectionOverrun {
                protection_len: protection_len.into(),
                available,
            });
        }
        Ok(Self {
            long_mask,
            sn_base: u16::from_be_bytes([header[2], header[3]]),
            pxcc_recovery: header[0] & 0x3F,
            mpt_recovery: header[1],
            ts_recovery: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
            length_recovery: u16::from_be_bytes([header[8], header[9]]),
            protection_len,
            mask,
        })
    }

    /// Length of the headers: 14 bytes, or 18 with the long mask.
    pub fn header_len(&self) -> usize {
        if self.long_mask {
            LONG_HEADER_LEN
        } else {
            SHORT_HEADER_LEN
        }
    }

    /// Whether the packet with sequence number `seq` is protected.
    pub fn protects(&self, seq: u16) -> bool {
        let offset = seq.wrapping_sub(self.sn_base);
        offset < 64 && self.mask & (1 << offset) != 0
    }

    /// Sequence numbers of the protected packets, in order.
    pub fn protected_seqs(&self) -> impl Iterator<Item = u16> + '_ {
        (0..64u16)
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

/// Collects a group of media packets and generates ULPFEC payloads protecting it.
///
/// Add the group's packets in sending order (gaps are allowed, as long as the group spans at
/// most [`MAX_MEDIA_PACKETS`] sequence numbers), then [`generate`](Self::generate). Packets are
/// copied into buffers the encoder reuses, so a long-lived encoder stops allocating once it has
/// seen its largest group.
#[derive(Debug)]
pub struct UlpfecEncoder {
    group: MediaGroup,
}

impl Default for UlpfecEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl UlpfecEncoder {
    /// An encoder with an empty group.
    pub fn new() -> Self {
        Self {
            group: MediaGroup::new(MAX_MEDIA_PACKETS as u16),
        }
    }

    /// Add a serialized media packet (see the [module docs](self) for which form) to the group.
    ///
    /// Its sequence number is read from the packet. Fails without changing the group if the
    /// packet is malformed, is from another SSRC, does not follow the previous one, or would make
    /// the group span more than [`MAX_MEDIA_PACKETS`] sequence numbers.
    pub fn add_media(&mut self, packet: &[u8]) -> Result<(), UlpfecError> {
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

    /// Write `num_fec` FEC payloads protecting the current group (and one packet of each
    /// carried group, see [`set_carry`](Self::set_carry)) into `out` and start a
    /// new group. Returns how many were written, which is also `out.len()` afterwards.
    ///
    /// `num_fec` is capped at the group size (a further one would only duplicate a packet). The
    /// buffers already in `out` are reused, so passing the same `out` every time avoids
    /// allocating. Each payload's SN base is its first protected packet, and it uses the long
    /// mask only if its protected packets span more than 16 sequence numbers.
    pub fn generate(&mut self, num_fec: usize, kind: MaskKind, out: &mut Vec<Vec<u8>>) -> usize {
        let count = num_fec.min(self.group.len());
        out.resize_with(count, Vec::new);
        for (index, buf) in out.iter_mut().enumerate() {
            let header_len = |span: u16| {
                if u32::from(span) > SHORT_MASK_BITS {
                    LONG_HEADER_LEN
                } else {
                    SHORT_HEADER_LEN
                }
            };
            // `count` is within 1..=len, so every index protects something.
            let Some(protection) = self.group.protect(kind, index, count, buf, header_len) else {
                continue;
            };
            let long_mask = u32::from(protection.span) > SHORT_MASK_BITS;
            let protection_len = (buf.len() - header_len(protection.span)) as u16;
            write_header(buf, long_mask, &protection, protection_len);
        }
        self.group.finish();
        count
    }
}

/// Fill in the headers at the front of `buf`, which [`MediaGroup::protect`] sized and zeroed.
fn write_header(
    buf: &mut [u8],
    long_mask: bool,
    protection: &crate::group::Protection,
    protection_len: u16,
) {
    let fields = protection.fields;
    buf[0] = if long_mask { 0x40 } else { 0 } | fields.pxcc;
    buf[1] = fields.mpt;
    buf[2..4].copy_from_slice(&protection.base.to_be_bytes());
    buf[4..8].copy_from_slice(&fields.timestamp.to_be_bytes());
    buf[8..10].copy_from_slice(&fields.length.to_be_bytes());
    buf[10..12].copy_from_slice(&protection_len.to_be_bytes());
    // The group limits spans to 48, so the mask fits in u64, and reversing it puts offset 0 in
    // the most significant bit as the wire has it.
    let wire = (protection.mask as u64).reverse_bits().to_be_bytes();
    let mask_len = if long_mask { 6 } else { 2 };
    buf[12..12 + mask_len].copy_from_slice(&wire[..mask_len]);
}

/// Recovers lost media packets of one stream from ULPFEC payloads.
///
/// Feed it every media packet received (in the form described in the [module docs](self)) and
/// every FEC payload, in any order; after each call, drain [`poll_recovered`](Self::poll_recovered).
/// A FEC payload recovers a packet once exactly one of the packets it protects is missing, and
/// recovery repeats while recovered packets complete further FEC payloads.
///
/// Memory is bounded: the last [`WINDOW`](crate::WINDOW) sequence numbers of media and at most
/// [`MAX_PENDING`](crate::MAX_PENDING) FEC payloads.
///
/// The FEC header carries no SSRC; ULPFEC travels on the media SSRC, so the decoder is created
/// for it and gives it to recovered packets.
#[derive(Debug)]
pub struct UlpfecDecoder {
    core: RecoveryCore,
    media_ssrc: u32,
}

impl UlpfecDecoder {
    /// A decoder for the media stream `media_ssrc`.
    pub fn new(media_ssrc: u32) -> Self {
        Self {
            core: RecoveryCore::new(media_ssrc),
            media_ssrc,
        }
    }

    /// Offer a received media packet; it must be from the decoder's stream.
    pub fn handle_media(&mut self, packet: &[u8]) -> Result<MediaStatus, UlpfecError> {
        rtp::check(packet)?;
        let ssrc = rtp::ssrc(packet);
        if ssrc != self.media_ssrc {
            return Err(UlpfecError::SsrcMismatch {
                expected: self.media_ssrc,
                got: ssrc,
            });
        }
        Ok(self.core.insert_media(packet))
    }

    /// Offer a received FEC payload: the RED block carrying it, without RTP or RED headers.
    pub fn handle_fec(&mut self, payload: &[u8]) -> Result<(), UlpfecError> {
        let header = UlpfecHeader::parse(payload)?;
        let start = header.header_len();
        let mut body = self.core.take_buffer();
        body.extend_from_slice(&payload[start..start + usize::from(header.protection_len)]);
        self.core.insert_repair(Repair {
            base: header.sn_base,
            mask: header.mask.into(),
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

    /// Forget all packets, as for a new stream.
    pub fn reset(&mut self) {
        self.core.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// V=2, M=1, PT=96, SN=100, TS=0x1000, SSRC=0x11223344, payload 01 02 03.
    const P1: [u8; 15] = [
        0x80, 0xE0, 0x00, 0x64, 0x00, 0x00, 0x10, 0x00, 0x11, 0x22, 0x33, 0x44, 0x01, 0x02, 0x03,
    ];
    /// V=2, CC=1, M=0, PT=96, SN=101, TS=0x2000, same SSRC, CSRC 0xCAFEBABE, payload 10 20.
    const P2: [u8; 18] = [
        0x81, 0x60, 0x00, 0x65, 0x00, 0x00, 0x20, 0x00, 0x11, 0x22, 0x33, 0x44, 0xCA, 0xFE, 0xBA,
        0xBE, 0x10, 0x20,
    ];

    /// RFC 5109 §7.3 and §7.4 by hand, for P1 and P2 protected by one FEC packet.
    const FEC_P1_P2: [u8; 20] = [
        0x01, // E=0, L=0, P^P=0, X^X=0, CC 0^1 = 1
        0x80, // M 1^0, PT 96^96
        0x00, 0x64, // SN base 100
        0x00, 0x00, 0x30, 0x00, // TS 0x1000 ^ 0x2000
        0x00, 0x05, // length recovery (15-12) ^ (18-12) = 3 ^ 6
        0x00, 0x06, // protection length: the longer body, 6
        0xC0, 0x00, // mask: SN base + 0 and + 1
        0xCB, 0xFC, 0xB9, 0xBE, 0x10, 0x20, // 01 02 03 ^ CA FE BA BE 10 20
    ];

    #[test]
    fn encodes_rfc5109_layout() {
        let mut encoder = UlpfecEncoder::new();
        encoder.add_media(&P1).expect("valid");
        encoder.add_media(&P2).expect("valid");
        let mut out = Vec::new();
        assert_eq!(1, encoder.generate(1, MaskKind::Interleaved, &mut out));
        assert_eq!(&FEC_P1_P2[..], &out[0][..]);
        assert!(encoder.is_empty(), "generate starts a new group");
    }

    #[test]
    fn parses_rfc5109_layout() {
        let header = UlpfecHeader::parse(&FEC_P1_P2).expect("valid");
        assert!(!header.long_mask);
        assert_eq!(100, header.sn_base);
        assert_eq!(0x01, header.pxcc_recovery);
        assert_eq!(0x80, header.mpt_recovery);
        assert_eq!(0x3000, header.ts_recovery);
        assert_eq!(5, header.length_recovery);
        assert_eq!(6, header.protection_len);
        assert_eq!(vec![100, 101], header.protected_seqs().collect::<Vec<_>>());
    }

    #[test]
    fn long_mask_when_span_exceeds_16() {
        // SN 100 and 120: offset 20 is bit 20 of the 48-bit mask, in its third byte.
        let mut late = P2;
        late[2..4].copy_from_slice(&120u16.to_be_bytes());
        let mut encoder = UlpfecEncoder::new();
        encoder.add_media(&P1).expect("valid");
        encoder.add_media(&late).expect("a gap is fine");
        let mut out = Vec::new();
        encoder.generate(1, MaskKind::Interleaved, &mut out);
        let fec = &out[0];
        assert_eq!(0x41, fec[0], "L bit, CC recovery 1");
        assert_eq!([0x00, 0x64], fec[2..4]);
        assert_eq!([0x80, 0x00, 0x08, 0x00, 0x00, 0x00], fec[12..18]);
        assert_eq!(LONG_HEADER_LEN + 6, fec.len());

        let header = UlpfecHeader::parse(fec).expect("valid");
        assert!(header.long_mask);
        assert_eq!(vec![100, 120], header.protected_seqs().collect::<Vec<_>>());
    }

    #[test]
    fn recovers_by_hand_example() {
        let mut decoder = UlpfecDecoder::new(0x1122_3344);
        assert_eq!(Ok(MediaStatus::Stored), decoder.handle_media(&P1));
        decoder.handle_fec(&FEC_P1_P2).expect("valid");
        let mut out = Vec::new();
        assert_eq!(Some(101), decoder.poll_recovered(&mut out));
        assert_eq!(&P2[..], &out[..]);
        assert_eq!(None, decoder.poll_recovered(&mut out));
        assert_eq!(Ok(MediaStatus::Duplicate), decoder.handle_media(&P2));

        let mut other = P1;
        other[11] = 0;
        assert!(matches!(
            decoder.handle_media(&other),
            Err(UlpfecError::SsrcMismatch {
                got: 0x1122_3300,
                ..
            })
        ));
    }

    #[test]
    fn rejects_malformed_headers() {
        let mut e = FEC_P1_P2;
        e[0] |= 0x80;
        assert_eq!(Err(UlpfecError::ExtensionBit), UlpfecHeader::parse(&e));

        let mut l = FEC_P1_P2;
        l[0] |= 0x40;
        assert_eq!(
            Err(UlpfecError::ProtectionOverrun {
                protection_len: 6,
                available: 2
            }),
            UlpfecHeader::parse(&l)
        );

        let mut m = FEC_P1_P2;
        m[12] = 0;
        assert_eq!(Err(UlpfecError::EmptyMask), UlpfecHeader::parse(&m));

        assert_eq!(
            Err(UlpfecError::Truncated { len: 13, need: 14 }),
            UlpfecHeader::parse(&FEC_P1_P2[..13])
        );
        assert!(matches!(
            UlpfecHeader::parse(&FEC_P1_P2[..19]),
            Err(UlpfecError::ProtectionOverrun { .. })
        ));
    }
}
