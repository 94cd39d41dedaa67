//! Redundancy and forward error correction for RTP, sans-IO.
//!
//! - [`red`]: RFC 2198 redundant encodings, and the RED wrapping ULPFEC travels in.
//! - [`ulpfec`]: RFC 5109 ULPFEC as libwebrtc (Chrome) sends and decodes it.
//! - [`flexfec`]: FlexFEC draft-03 (`flexfec-03`), wire-compatible with webrtc-rs
//!   `rtc-interceptor` 0.21.
//!
//! Everything works on serialized, unencrypted RTP packets — fixed header, CSRCs, header
//! extensions, payload and padding — because FEC protects the bytes exactly as sent. Output goes
//! into caller-provided buffers, and encoders and decoders reuse their internal buffers, so a
//! long-lived instance stops allocating once it has seen its largest packets.
//!
//! Nothing here reads a clock or does I/O. Encoders collect a group and generate repair data on
//! request (optionally also covering the last few groups, `set_carry`, which at high or bursty
//! loss rebuilds far more for the same repair packets); decoders take packets through
//! `handle_*` and hand out recovered packets through `poll_recovered`. Their memory is bounded by sequence-number distance ([`WINDOW`]) and by a
//! count of pending repair packets ([`MAX_PENDING`]). Malformed input yields an error value,
//! never a panic.
//!
//! ```
//! use meridian_fec::ulpfec::{fec_count, UlpfecDecoder, UlpfecEncoder};
//! use meridian_fec::MaskKind;
//!
//! # fn packet(seq: u16) -> Vec<u8> {
//! #     let mut p = vec![0x80, 96, 0, 0, 0, 0, 0, 90, 0, 0, 0, 7, 1, 2, 3];
//! #     p[2..4].copy_from_slice(&seq.to_be_bytes());
//! #     p
//! # }
//! let media: Vec<Vec<u8>> = (100..110).map(packet).collect(); // serialized RTP, SSRC 7
//!
//! let mut encoder = UlpfecEncoder::new();
//! for p in &media {
//!     encoder.add_media(p)?;
//! }
//! let mut fec = Vec::new(); // reuse across groups
//! encoder.generate(fec_count(media.len(), 0.3), MaskKind::Interleaved, &mut fec);
//!
//! let mut decoder = UlpfecDecoder::new(7);
//! for p in media.iter().filter(|p| p[3] != 104) {
//!     decoder.handle_media(p)?;
//! }
//! for payload in &fec {
//!     decoder.handle_fec(payload)?;
//! }
//! let mut recovered = Vec::new();
//! assert_eq!(Some(104), decoder.poll_recovered(&mut recovered));
//! assert_eq!(media[4], recovered);
//! # Ok::<(), meridian_fec::ulpfec::UlpfecError>(())
//! ```

pub mod flexfec;
mod group;
mod recovery;
pub mod red;
mod rtp;
pub mod ulpfec;

pub use group::{fec_count, GroupError, MaskKind};
pub use recovery::{MediaStatus, RecoveryStats, MAX_PENDING, WINDOW};
pub use rtp::{payload_range, zero_extensions, RtpError, MAX_PACKET_LEN};
