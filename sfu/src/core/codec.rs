//! The little codec knowledge a forwarding SFU needs: which codec a payload
//! type is, and whether a packet starts a keyframe (where a new subscriber,
//! or one that resumes after mute, can start decoding).

use str0m::format::{Codec, PayloadParams};
use str0m::media::{Mid, Pt};
use str0m::{Rtc, RtcConfig};

/// The str0m configuration every Meridian peer uses, server or client: RTP
/// mode, and the codecs we forward (Opus, with RED; VP8, H.264, VP9), with
/// video RED + ULPFEC (vendored str0m's `video-fec-pts` patch).
///
/// Opus also gets generic NACK (`a=rtcp-fb:111 nack`; str0m's `audio-nack`
/// patch): audio is NACKed and retransmitted as sent, without RTX, as
/// libwebrtc does when it is negotiated. A packet a publisher's RED did not
/// carry can then still be fetched, which one RED block cannot give at 10 %
/// loss (≈ 1 % of audio stays lost).
pub fn rtc_config() -> RtcConfig {
    let mut config = Rtc::builder()
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, true)
        .enable_video_fec(true)
        .enable_vp8(true)
        .enable_h264(true)
        .enable_vp9(true);
    for p in config.codec_config().iter_mut() {
        if p.spec().codec == Codec::Opus {
            p.set_fb_nack(true);
        }
    }
    config
}

/// The payload type `rtc` sends `codec` with on `mid`: the first of its
/// configured payload types for that codec the remote side accepted.
pub fn negotiated_pt(rtc: &Rtc, mid: Mid, codec: Codec) -> Option<Pt> {
    let remote = rtc.media(mid).map(|m| m.remote_pts());
    rtc.codec_config()
        .params()
        .iter()
        .filter(|p| p.spec().codec == codec)
        .map(|p| p.pt())
        .find(|pt| remote.is_none_or(|r| r.contains(pt)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecKind {
    Opus,
    Vp8,
    Vp9,
    H264,
    /// Forwarded as-is; keyframes are not detected.
    Other,
}

impl CodecKind {
    pub fn of(params: &PayloadParams) -> CodecKind {
        match params.spec().codec {
            Codec::Opus => CodecKind::Opus,
            Codec::Vp8 => CodecKind::Vp8,
            Codec::Vp9 => CodecKind::Vp9,
            Codec::H264 => CodecKind::H264,
            _ => CodecKind::Other,
        }
    }

    pub fn is_video(self) -> bool {
        matches!(self, CodecKind::Vp8 | CodecKind::Vp9 | CodecKind::H264)
    }
}

/// Does this RTP payload begin a keyframe? Conservative: false when unsure.
pub fn is_keyframe(codec: CodecKind, payload: &[u8]) -> bool {
    match codec {
        CodecKind::Vp8 => vp8_keyframe(payload),
        CodecKind::Vp9 => vp9_keyframe(payload),
        CodecKind::H264 => h264_keyframe(payload),
        CodecKind::Opus | CodecKind::Other => false,
    }
}

/// RFC 7741: payload descriptor, then the VP8 payload header whose P bit is 0
/// on a key frame, present only in the first packet of a partition 0.
fn vp8_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let start_of_partition = b0 & 0x10 != 0;
    let partition_id = b0 & 0x07;
    if !start_of_partition || partition_id != 0 {
        return false;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let Some(&x) = p.get(i) else { return false };
        i += 1;
        if x & 0x80 != 0 {
            // PictureID, 7 or 15 bits.
            let Some(&pid) = p.get(i) else { return false };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID/Y/KEYIDX
        }
    }
    p.get(i).is_some_and(|h| h & 0x01 == 0)
}

/// VP9 payload descriptor (RFC 9628): P (inter-picture predicted) clear and
/// B (start of frame) set.
fn vp9_keyframe(p: &[u8]) -> bool {
    p.first().is_some_and(|b| b & 0x40 == 0 && b & 0x08 != 0)
}

/// RFC 6184: an IDR slice or an SPS, alone, in a STAP-A, or starting a FU-A.
fn h264_keyframe(p: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    let is_key = |t: u8| t == IDR || t == SPS;
    let Some(&b0) = p.first() else { return false };
    match b0 & 0x1f {
        24 => {
            // STAP-A: 16-bit size, then the NAL unit.
            let mut i = 1;
            while i + 2 < p.len() {
                let size = usize::from(u16::from_be_bytes([p[i], p[i + 1]]));
                if size == 0 {
                    return false;
                }
                if is_key(p[i + 2] & 0x1f) {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        28 => p
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && is_key(fu & 0x1f)),
        t => is_key(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframes() {
        // S=1, PID=0, no extension; payload header P=0.
        assert!(is_keyframe(CodecKind::Vp8, &[0x10, 0x00, 0x9d, 0x01, 0x2a]));
        // Same with P=1: interframe.
        assert!(!is_keyframe(CodecKind::Vp8, &[0x10, 0x01]));
        // X=1, I=1 with 15-bit picture id, L=1, T=1: header at index 6.
        assert!(is_keyframe(
            CodecKind::Vp8,
            &[0x90, 0xe0, 0x80, 0x01, 0x05, 0x20, 0x50]
        ));
        // Continuation packet (S=0).
        assert!(!is_keyframe(CodecKind::Vp8, &[0x00, 0x00]));
        assert!(!is_keyframe(CodecKind::Vp8, &[]));
        assert!(!is_keyframe(CodecKind::Vp8, &[0x90, 0x80]));
    }

    #[test]
    fn h264_keyframes() {
        assert!(is_keyframe(CodecKind::H264, &[0x65, 0x88]));
        assert!(is_keyframe(CodecKind::H264, &[0x67, 0x42]));
        assert!(!is_keyframe(CodecKind::H264, &[0x41, 0x9a]));
        // STAP-A with SPS + PPS.
        assert!(is_keyframe(
            CodecKind::H264,
            &[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce]
        ));
        // FU-A start of an IDR, and a middle fragment.
        assert!(is_keyframe(CodecKind::H264, &[0x7c, 0x85, 0x00]));
        assert!(!is_keyframe(CodecKind::H264, &[0x7c, 0x05, 0x00]));
        // Truncated STAP-A never panics.
        assert!(!is_keyframe(CodecKind::H264, &[0x78, 0xff]));
    }

    #[test]
    fn vp9_keyframes() {
        assert!(is_keyframe(CodecKind::Vp9, &[0x08]));
        assert!(!is_keyframe(CodecKind::Vp9, &[0x48]));
        assert!(!is_keyframe(CodecKind::Opus, &[0x00]));
    }
}
