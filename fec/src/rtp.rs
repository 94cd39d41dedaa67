//! Just enough RTP (RFC 3550 §5.1) to check the structure of a serialized packet.
//!
//! FEC protects packet bytes, not parsed fields, so nothing here builds a packet model: the codecs
//! only need to know that a buffer is a well-formed packet, where its header ends, and its
//! sequence number and SSRC.

use thiserror::Error;

/// Length of the fixed RTP header, which FEC rebuilds field by field rather than XOR-ing whole.
pub const FIXED_HEADER_LEN: usize = 12;

/// Longest RTP packet the codecs accept.
///
/// WebRTC keeps RTP under the path MTU (about 1200–1500 bytes). 4 KiB leaves room for jumbo-frame
/// links between relays while bounding what one decoder can be made to hold: its window of
/// stored packets is at most `WINDOW × MAX_PACKET_LEN`.
pub const MAX_PACKET_LEN: usize = 4096;

/// Why a buffer is not a well-formed RTP packet.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RtpError {
    /// Shorter than the 12-byte fixed header.
    #[error("RTP packet of {0} bytes is shorter than the 12-byte fixed header")]
    TooShort(usize),
    /// Longer than [`MAX_PACKET_LEN`].
    #[error("RTP packet of {0} bytes exceeds the {MAX_PACKET_LEN}-byte limit")]
    TooLong(usize),
    /// The version field is not 2.
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    /// The CSRC list or the header extension runs past the end of the packet.
    #[error("the CSRC list or header extension runs past the end of the packet")]
    HeaderOverrun,
    /// The P bit is set but the padding count is zero or larger than what follows the header.
    #[error("padding count {0} is zero or longer than the payload")]
    BadPadding(u8),
}

/// Where the parts of a checked packet are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Fixed header, CSRCs and header extension.
    pub header_len: usize,
    /// Padding bytes at the end, including the count byte; 0 without the P bit.
    pub padding_len: usize,
}

/// Check that `packet` is a well-formed RTP packet and say where its payload is.
pub(crate) fn check(packet: &[u8]) -> Result<Layout, RtpError> {
    if packet.len() < FIXED_HEADER_LEN {
        return Err(RtpError::TooShort(packet.len()));
    }
    if packet.len() > MAX_PACKET_LEN {
        return Err(RtpError::TooLong(packet.len()));
    }
    let version = packet[0] >> 6;
    if version != 2 {
        return Err(RtpError::BadVersion(version));
    }
    let csrc_count = usize::from(packet[0] & 0x0F);
    let mut header_len = FIXED_HEADER_LEN + 4 * csrc_count;
    if packet[0] & 0x10 != 0 {
        // Profile-defined header: 16-bit profile, then its length in 32-bit words.
        let words = packet
            .get(header_len + 2..header_len + 4)
            .ok_or(RtpError::HeaderOverrun)?;
        header_len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    if header_len > packet.len() {
        return Err(RtpError::HeaderOverrun);
    }
    let padding_len = if packet[0] & 0x20 != 0 {
        // The length check above guarantees at least the 12 header bytes.
        let count = packet[packet.len() - 1];
        if count == 0 || usize::from(count) > packet.len() - header_len {
            return Err(RtpError::BadPadding(count));
        }
        usize::from(count)
    } else {
        0
    };
    Ok(Layout {
        header_len,
        padding_len,
    })
}

/// Sequence number of a packet at least [`FIXED_HEADER_LEN`] long.
pub(crate) fn seq(packet: &[u8]) -> u16 {
    u16::from_be_bytes([packet[2], packet[3]])
}

/// SSRC of a packet at least [`FIXED_HEADER_LEN`] long.
pub(crate) fn ssrc(packet: &[u8]) -> u32 {
    u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]])
}

/// Extend a 16-bit sequence number to 64 bits, taking the value nearest to `reference`.
///
/// Returns `None` only if that would go below zero, which cannot happen for references built
/// with [`first_extended`].
pub(crate) fn extend(reference: u64, seq: u16) -> Option<u64> {
    // Reinterpreting the wrapped difference as signed picks the nearer of the two directions.
    let delta = i64::from(seq.wrapping_sub(reference as u16) as i16);
    reference.checked_add_signed(delta)
}

/// The extended value the first sequence number of a stream is given.
///
/// Starting far from zero means later unwrapping never has to handle going negative.
pub(crate) fn first_extended(seq: u16) -> u64 {
    (1 << 32) | u64::from(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(b0: u8) -> Vec<u8> {
        let mut packet = vec![b0, 96, 0x12, 0x34, 0, 0, 0, 1, 0xAA, 0xBB, 0xCC, 0xDD];
        packet.extend_from_slice(&[1, 2, 3, 4]);
        packet
    }

    #[test]
    fn plain_packet() {
        let packet = header(0x80);
        let layout = check(&packet).expect("valid");
        assert_eq!(12, layout.header_len);
        assert_eq!(0, layout.padding_len);
        assert_eq!(0x1234, seq(&packet));
        assert_eq!(0xAABB_CCDD, ssrc(&packet));
    }

    #[test]
    fn csrcs_and_extension() {
        // CC=1, X=1: 12 + 4 CSRC + 4 extension header + 1 word.
        let mut packet = header(0x91);
        packet.truncate(12);
        packet.extend_from_slice(&[0, 0, 0, 9]);
        packet.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0xFF, 0, 0]);
        packet.extend_from_slice(&[7, 7]);
        assert_eq!(24, check(&packet).expect("valid").header_len);

        packet.truncate(22);
        assert_eq!(Err(RtpError::HeaderOverrun), check(&packet));
    }

    #[test]
    fn padding() {
        let mut packet = header(0xA0);
        packet.extend_from_slice(&[0, 0, 3]);
        assert_eq!(3, check(&packet).expect("valid").padding_len);

        let last = packet.len() - 1;
        packet[last] = 0;
        assert_eq!(Err(RtpError::BadPadding(0)), check(&packet));
        packet[last] = 8;
        assert_eq!(Err(RtpError::BadPadding(8)), check(&packet));
    }

    #[test]
    fn rejects_short_and_wrong_version() {
        assert_eq!(Err(RtpError::TooShort(3)), check(&[0x80, 0, 0]));
        assert_eq!(Err(RtpError::BadVersion(1)), check(&header(0x40)));
    }

    #[test]
    fn extension_across_wrap() {
        let base = first_extended(65_535);
        assert_eq!(Some(base + 1), extend(base, 0));
        assert_eq!(Some(base - 5), extend(base, 65_530));
        assert_eq!(Some(base), extend(base, 65_535));
    }
}

/// Zero the values of the header extensions with the given ids (RFC 8285 one- or two-byte
/// form), leaving their ids and lengths.
///
/// libwebrtc's FEC receivers zero the extensions a sender writes after FEC is computed
/// (transport-wide sequence number, absolute send time, transmission offset) in every media
/// packet before recovering; a sender that protects its packets must zero the same ones.
/// A packet without extensions, or with another profile, is left as it is.
pub fn zero_extensions(packet: &mut [u8], ids: &[u8]) -> Result<(), RtpError> {
    let layout = check(packet)?;
    if packet[0] & 0x10 == 0 || ids.is_empty() {
        return Ok(());
    }
    let start = FIXED_HEADER_LEN + 4 * usize::from(packet[0] & 0x0F);
    let profile = u16::from_be_bytes([packet[start], packet[start + 1]]);
    let two_byte = match profile {
        0xBEDE => false,
        p if p & 0xFFF0 == 0x1000 => true,
        _ => return Ok(()),
    };
    let end = layout.header_len;
    let mut i = start + 4;
    while i < end {
        let b = packet[i];
        if b == 0 {
            // Padding between elements.
            i += 1;
            continue;
        }
        let (id, len, data) = if two_byte {
            let Some(&len) = packet.get(i + 1) else {
                break;
            };
            (b, usize::from(len), i + 2)
        } else {
            if b >> 4 == 15 {
                break;
            }
            (b >> 4, usize::from(b & 0x0F) + 1, i + 1)
        };
        if data + len > end {
            return Err(RtpError::HeaderOverrun);
        }
        if ids.contains(&id) {
            packet[data..data + len].fill(0);
        }
        i = data + len;
    }
    Ok(())
}

#[cfg(test)]
mod zero_tests {
    use super::*;

    #[test]
    fn zeroes_only_the_named_one_byte_extensions() {
        // V=2, X=1; profile 0xBEDE, 2 words: id 1 len 1 [aa], id 3 len 3 [bb cc dd], id 2 len 2 [ee ff]
        let mut p = vec![
            0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0xBE, 0xDE, 0, 3, 0x10, 0xAA, 0x32, 0xBB, 0xCC,
            0xDD, 0x21, 0xEE, 0xFF, 0, 0, 0, 0x42,
        ];
        zero_extensions(&mut p, &[3]).expect("valid");
        assert_eq!(&p[16..25], &[0x10, 0xAA, 0x32, 0, 0, 0, 0x21, 0xEE, 0xFF]);
        assert_eq!(p[28], 0x42, "payload untouched");
        // Two-byte form: id 5 len 2.
        let mut q = vec![
            0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0x10, 0x00, 0, 1, 5, 2, 0x11, 0x22, 0x99,
        ];
        zero_extensions(&mut q, &[5]).expect("valid");
        assert_eq!(&q[16..21], &[5, 2, 0, 0, 0x99]);
        // Truncated extension block: an error, no panic.
        let mut r = vec![
            0x90, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0xBE, 0xDE, 0, 1, 0x3F,
        ];
        assert!(zero_extensions(&mut r, &[3]).is_err());
    }
}

/// Where the payload of a well-formed RTP packet is (after CSRCs and header
/// extension, before padding).
pub fn payload_range(packet: &[u8]) -> Result<std::ops::Range<usize>, RtpError> {
    let layout = check(packet)?;
    Ok(layout.header_len..packet.len() - layout.padding_len)
}
