//! RED (RFC 2198): several encodings in one RTP payload, and the wrapping ULPFEC travels in.
//!
//! A RED payload is a list of block headers, then the blocks' data in the same order:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |1|   block PT  |  timestamp offset         |   block length    |  per redundant block
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |0|   block PT  |  primary block: no offset, length is the rest
//! +-+-+-+-+-+-+-+-+
//! ```
//!
//! Redundant blocks come first, oldest first; the primary (current) encoding is last. RED
//! carries timestamp offsets but no sequence numbers; see [`RedPayload::packets`] for the
//! convention used to assign them.

use crate::rtp::{self, RtpError};
use thiserror::Error;

/// Most blocks, primary included, accepted in one RED payload.
///
/// RFC 2198 sets no limit. Senders use a handful (libwebrtc's audio RED sends at most a few
/// redundant encodings), and a fixed cap lets [`parse`] return its blocks without allocating.
pub const MAX_BLOCKS: usize = 16;

/// Largest timestamp offset a redundant block header can carry (14 bits).
pub const MAX_TS_OFFSET: u16 = (1 << 14) - 1;

/// Largest redundant block a header can describe (10 bits).
pub const MAX_BLOCK_LEN: usize = (1 << 10) - 1;

/// Errors building or reading RED payloads.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedError {
    /// The payload is empty; even a primary-only payload has a one-byte header.
    #[error("RED payload is empty")]
    Empty,
    /// The block headers run past the end of the payload.
    #[error("RED block headers run past the end of the payload")]
    Truncated,
    /// More than [`MAX_BLOCKS`] blocks.
    #[error("RED payload has more than {MAX_BLOCKS} blocks")]
    TooManyBlocks,
    /// A redundant block's length runs past the end of the payload.
    #[error("RED block {block} claims {len} bytes but only {available} remain")]
    BlockOverrun {
        /// Index of the block, oldest first.
        block: usize,
        /// Length in its header.
        len: usize,
        /// Bytes left for it.
        available: usize,
    },
    /// A payload type outside 0..=127.
    #[error("payload type {0} is not in 0..=127")]
    PayloadType(u8),
    /// A redundant block's timestamp offset does not fit in 14 bits.
    #[error("timestamp offset {0} exceeds {MAX_TS_OFFSET}")]
    TimestampOffset(u16),
    /// A redundant block is too long for its 10-bit length field.
    #[error("redundant block of {0} bytes exceeds {MAX_BLOCK_LEN}")]
    BlockLength(usize),
    /// The RED packet has redundant blocks where only a primary block is supported.
    #[error("RED packet has more than one block")]
    MultipleBlocks,
    /// The packet is not well-formed RTP.
    #[error("RTP packet: {0}")]
    Rtp(#[from] RtpError),
}

/// A redundant encoding to include in a RED payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedBlock<'a> {
    /// Its payload type.
    pub pt: u8,
    /// How far its timestamp is before the RED packet's.
    pub ts_offset: u16,
    /// Its payload.
    pub payload: &'a [u8],
}

/// Append a RED payload to `out`: the `redundant` blocks (oldest first), then the primary.
///
/// Every block is checked before anything is written, so on error `out` is unchanged: a payload
/// type above 127, a timestamp offset above [`MAX_TS_OFFSET`], a redundant block longer than
/// [`MAX_BLOCK_LEN`], or more than [`MAX_BLOCKS`] blocks is an error rather than skipped, since
/// the caller chose the blocks and can choose again. Appending lets the caller write the RTP
/// header into `out` first.
pub fn encode(
    primary_pt: u8,
    primary_payload: &[u8],
    redundant: &[RedBlock<'_>],
    out: &mut Vec<u8>,
) -> Result<(), RedError> {
    if redundant.len() >= MAX_BLOCKS {
        return Err(RedError::TooManyBlocks);
    }
    if primary_pt > 127 {
        return Err(RedError::PayloadType(primary_pt));
    }
    for block in redundant {
        if block.pt > 127 {
            return Err(RedError::PayloadType(block.pt));
        }
        if block.ts_offset > MAX_TS_OFFSET {
            return Err(RedError::TimestampOffset(block.ts_offset));
        }
        if block.payload.len() > MAX_BLOCK_LEN {
            return Err(RedError::BlockLength(block.payload.len()));
        }
    }
    let data_len: usize = redundant.iter().map(|b| b.payload.len()).sum();
    out.reserve(4 * redundant.len() + 1 + data_len + primary_payload.len());
    for block in redundant {
        // F=1 | PT (7) | timestamp offset (14) | length (10), checked above.
        let word = 1 << 31
            | u32::from(block.pt) << 24
            | u32::from(block.ts_offset) << 10
            | block.payload.len() as u32;
        out.extend_from_slice(&word.to_be_bytes());
    }
    out.push(primary_pt);
    for block in redundant {
        out.extend_from_slice(block.payload);
    }
    out.extend_from_slice(primary_payload);
    Ok(())
}

/// One block of a parsed RED payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParsedBlock<'a> {
    /// Its payload type.
    pub pt: u8,
    /// How far its timestamp is before the RED packet's; 0 for the primary.
    pub ts_offset: u16,
    /// Its data.
    pub data: &'a [u8],
    /// Whether it is the primary (last) block.
    pub is_primary: bool,
}

/// A block of a RED packet with the sequence number and timestamp it is taken to have had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedPacket<'a> {
    /// Assumed sequence number (see [`RedPayload::packets`]).
    pub seq: u16,
    /// Timestamp: the RED packet's minus the block's offset.
    pub ts: u32,
    /// Its payload type.
    pub pt: u8,
    /// Its data.
    pub data: &'a [u8],
    /// Whether it is the primary block.
    pub is_primary: bool,
}

/// The blocks of a RED payload, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct RedPayload<'a> {
    blocks: [ParsedBlock<'a>; MAX_BLOCKS],
    len: usize,
}

impl<'a> RedPayload<'a> {
    /// All blocks, oldest first; the primary is last.
    pub fn blocks(&self) -> &[ParsedBlock<'a>] {
        &self.blocks[..self.len]
    }

    /// The primary block.
    pub fn primary(&self) -> ParsedBlock<'a> {
        // `parse` always stores the primary, so `len` is at least 1.
        self.blocks[self.len.saturating_sub(1)]
    }

    /// The redundant blocks, oldest first.
    pub fn redundant(&self) -> &[ParsedBlock<'a>] {
        &self.blocks[..self.len.saturating_sub(1)]
    }

    /// The blocks as packets, oldest first, given the RED packet's sequence number and timestamp.
    ///
    /// RED does not carry sequence numbers. This assumes what libwebrtc's audio RED does: each
    /// packet repeats the encodings of the packets immediately before it, one per packet, so with
    /// `n` redundant blocks block `k` (oldest first, from 0) was sent as `seq - (n - k)`. That
    /// only holds for such senders, and only if each earlier encoding went out in a packet of its
    /// own; the timestamps are exact, so prefer them for deduplication.
    pub fn packets(&self, seq: u16, ts: u32) -> impl Iterator<Item = RedPacket<'a>> + '_ {
        let redundant = self.len.saturating_sub(1);
        self.blocks()
            .iter()
            .enumerate()
            .map(move |(k, block)| RedPacket {
                // At most MAX_BLOCKS, so the cast is exact.
                seq: seq.wrapping_sub((redundant - k.min(redundant)) as u16),
                ts: ts.wrapping_sub(u32::from(block.ts_offset)),
                pt: block.pt,
                data: block.data,
                is_primary: block.is_primary,
            })
    }
}

/// Parse a RED payload (the RTP payload, padding removed).
///
/// Fails on an empty payload, headers or redundant blocks running past its end, or more than
/// [`MAX_BLOCKS`] blocks. The primary block may be empty.
pub fn parse(payload: &[u8]) -> Result<RedPayload<'_>, RedError> {
    if payload.is_empty() {
        return Err(RedError::Empty);
    }
    let mut blocks = [ParsedBlock::default(); MAX_BLOCKS];
    let mut lengths = [0usize; MAX_BLOCKS];
    let mut count = 0;
    let mut pos = 0;
    loop {
        let first = *payload.get(pos).ok_or(RedError::Truncated)?;
        if first & 0x80 == 0 {
            blocks[count] = ParsedBlock {
                pt: first,
                ts_offset: 0,
                data: &[],
                is_primary: true,
            };
            pos += 1;
            break;
        }
        if count == MAX_BLOCKS - 1 {
            return Err(RedError::TooManyBlocks);
        }
        let h = payload.get(pos..pos + 4).ok_or(RedError::Truncated)?;
        blocks[count] = ParsedBlock {
            pt: h[0] & 0x7F,
            ts_offset: u16::from(h[1]) << 6 | u16::from(h[2] >> 2),
            data: &[],
            is_primary: false,
        };
        lengths[count] = usize::from(h[2] & 0x03) << 8 | usize::from(h[3]);
        count += 1;
        pos += 4;
    }
    for (index, (block, &len)) in blocks.iter_mut().zip(&lengths).take(count).enumerate() {
        let available = payload.len() - pos;
        block.data = payload.get(pos..pos + len).ok_or(RedError::BlockOverrun {
            block: index,
            len,
            available,
        })?;
        pos += len;
    }
    blocks[count].data = &payload[pos..];
    Ok(RedPayload {
        blocks,
        len: count + 1,
    })
}

/// Parse the RED payload of a complete RTP packet (header and padding skipped).
pub fn parse_packet(packet: &[u8]) -> Result<RedPayload<'_>, RedError> {
    let layout = rtp::check(packet)?;
    parse(&packet[layout.header_len..packet.len() - layout.padding_len])
}

/// Wrap a media packet in RED as libwebrtc does for video with ULPFEC: the same RTP header with
/// payload type `red_pt`, then a one-byte RED header with the media payload type, then the
/// media payload and any padding. Replaces the contents of `out`.
pub fn wrap_packet(media: &[u8], red_pt: u8, out: &mut Vec<u8>) -> Result<(), RedError> {
    if red_pt > 127 {
        return Err(RedError::PayloadType(red_pt));
    }
    let layout = rtp::check(media)?;
    let (header, rest) = media.split_at(layout.header_len);
    out.clear();
    out.reserve(media.len() + 1);
    out.extend_from_slice(header);
    out[1] = (header[1] & 0x80) | red_pt;
    out.push(header[1] & 0x7F);
    out.extend_from_slice(rest);
    Ok(())
}

/// Undo [`wrap_packet`]: rebuild the media packet inside a primary-only RED packet into `out`
/// (replacing its contents) and return its payload type.
///
/// This is the form ULPFEC protects. A RED packet with redundant blocks is an error
/// ([`RedError::MultipleBlocks`]), as in libwebrtc's ULPFEC receiver; use [`parse`] for those.
pub fn unwrap_packet(red: &[u8], out: &mut Vec<u8>) -> Result<u8, RedError> {
    let layout = rtp::check(red)?;
    if layout.header_len + layout.padding_len >= red.len() {
        return Err(RedError::Empty);
    }
    let block_header = red[layout.header_len];
    if block_header & 0x80 != 0 {
        return Err(RedError::MultipleBlocks);
    }
    out.clear();
    out.reserve(red.len() - 1);
    out.extend_from_slice(&red[..layout.header_len]);
    out[1] = (red[1] & 0x80) | block_header;
    out.extend_from_slice(&red[layout.header_len + 1..]);
    Ok(block_header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_rfc2198_layout() {
        let mut out = vec![0xEE]; // something already there, which is kept
        let redundant = [RedBlock {
            pt: 111,
            ts_offset: 960,
            payload: &[0xAA, 0xBB, 0xCC],
        }];
        encode(111, &[0x11, 0x22], &redundant, &mut out).expect("valid");
        assert_eq!(
            vec![
                0xEE, // untouched
                0xEF, // F=1, PT 111
                0x0F, // offset 960 = 0b00_0011_1100_0000: top 8 of 14 bits
                0x00, // low 6 bits of the offset, then the top 2 bits of the length
                0x03, // length 3
                0x6F, // F=0, PT 111
                0xAA, 0xBB, 0xCC, 0x11, 0x22,
            ],
            out
        );

        let parsed = parse(&out[1..]).expect("valid");
        assert_eq!(2, parsed.blocks().len());
        assert_eq!(
            ParsedBlock {
                pt: 111,
                ts_offset: 960,
                data: &[0xAA, 0xBB, 0xCC],
                is_primary: false
            },
            parsed.redundant()[0]
        );
        assert_eq!(&[0x11, 0x22], parsed.primary().data);
        assert!(parsed.primary().is_primary);
    }

    #[test]
    fn field_extremes() {
        let big = [0u8; MAX_BLOCK_LEN];
        let redundant = [RedBlock {
            pt: 127,
            ts_offset: MAX_TS_OFFSET,
            payload: &big,
        }];
        let mut out = Vec::new();
        encode(0, &[], &redundant, &mut out).expect("at the limits");
        assert_eq!([0xFF, 0xFF, 0xFF, 0xFF, 0x00], out[..5]);
        let parsed = parse(&out).expect("valid");
        assert_eq!(MAX_TS_OFFSET, parsed.redundant()[0].ts_offset);
        assert_eq!(MAX_BLOCK_LEN, parsed.redundant()[0].data.len());
        assert!(parsed.primary().data.is_empty());
    }

    #[test]
    fn encode_rejects_out_of_range_and_leaves_out_alone() {
        let mut out = vec![1, 2];
        let block = |ts_offset, payload| RedBlock {
            pt: 100,
            ts_offset,
            payload,
        };
        let long = [0u8; MAX_BLOCK_LEN + 1];
        assert_eq!(
            Err(RedError::TimestampOffset(1 << 14)),
            encode(100, &[], &[block(1 << 14, &[])], &mut out)
        );
        assert_eq!(
            Err(RedError::BlockLength(1024)),
            encode(100, &[], &[block(0, &long)], &mut out)
        );
        assert_eq!(
            Err(RedError::PayloadType(200)),
            encode(200, &[], &[], &mut out)
        );
        let many = [block(0, &[]); MAX_BLOCKS];
        assert_eq!(
            Err(RedError::TooManyBlocks),
            encode(100, &[], &many, &mut out)
        );
        assert_eq!(vec![1, 2], out);
        encode(100, &[], &many[1..], &mut out).expect("exactly MAX_BLOCKS");
        assert_eq!(MAX_BLOCKS, parse(&out[2..]).expect("valid").blocks().len());
    }

    #[test]
    fn parse_rejects_malformed() {
        assert_eq!(Err(RedError::Empty), parse(&[]).map(|_| ()));
        assert_eq!(Err(RedError::Truncated), parse(&[0x80, 0, 0]).map(|_| ()));
        assert_eq!(
            Err(RedError::Truncated),
            parse(&[0x80, 0, 0, 0]).map(|_| ())
        );
        assert_eq!(
            Err(RedError::BlockOverrun {
                block: 0,
                len: 2,
                available: 1
            }),
            parse(&[0x80, 0, 0, 2, 0x00, 9]).map(|_| ())
        );
        let mut many = [0x80u8, 0, 0, 0].repeat(MAX_BLOCKS);
        many.push(0);
        assert_eq!(Err(RedError::TooManyBlocks), parse(&many).map(|_| ()));
    }

    #[test]
    fn assumed_sequence_numbers() {
        let mut out = Vec::new();
        let redundant = [
            RedBlock {
                pt: 111,
                ts_offset: 1920,
                payload: &[1],
            },
            RedBlock {
                pt: 111,
                ts_offset: 960,
                payload: &[2],
            },
        ];
        encode(111, &[3], &redundant, &mut out).expect("valid");
        let parsed = parse(&out).expect("valid");
        let packets: Vec<_> = parsed
            .packets(1, 1000)
            .map(|p| (p.seq, p.ts, p.data[0], p.is_primary))
            .collect();
        assert_eq!(
            vec![
                (65_535, 1000u32.wrapping_sub(1920), 1, false),
                (0, 40, 2, false),
                (1, 1000, 3, true)
            ],
            packets
        );
    }

    #[test]
    fn wrap_and_unwrap() {
        // M=1, PT=96, CC=0, X=1 with one extension word, P=1 with two bytes of padding.
        let media = [
            0xB0, 0xE0, 0, 7, 0, 0, 0, 9, 0, 0, 0, 1, 0xBE, 0xDE, 0, 1, 0x10, 0x55, 0, 0, 0xAB,
            0xCD, 0x00, 0x02,
        ];
        let mut red = Vec::new();
        wrap_packet(&media, 116, &mut red).expect("valid");
        assert_eq!(0xF4, red[1], "marker kept, PT 116");
        assert_eq!(0x60, red[20], "RED header: F=0, PT 96");
        assert_eq!(&media[20..], &red[21..]);

        let mut back = Vec::new();
        assert_eq!(Ok(96), unwrap_packet(&red, &mut back));
        assert_eq!(&media[..], &back[..]);

        red[20] |= 0x80;
        assert_eq!(
            Err(RedError::MultipleBlocks),
            unwrap_packet(&red, &mut back)
        );
        let mut header_only = red[..20].to_vec();
        header_only[0] &= !0x20;
        assert_eq!(Err(RedError::Empty), unwrap_packet(&header_only, &mut back));
    }
}
