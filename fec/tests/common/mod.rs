//! Shared by the integration tests: random RTP packets, a codec-agnostic driver for ULPFEC and
//! FlexFEC, and an independent model of which losses a set of repair packets can recover.

#![allow(dead_code)] // Each test binary uses a different part.

use meridian_fec::flexfec::{FlexfecDecoder, FlexfecEncoder};
use meridian_fec::ulpfec::{UlpfecDecoder, UlpfecEncoder};
use meridian_fec::MaskKind;
use rand::rngs::SmallRng;
use rand::Rng;

pub const MEDIA_SSRC: u32 = 0x1234_5678;
pub const REPAIR_SSRC: u32 = 0x0BAD_F00D;
pub const REPAIR_PT: u8 = 118;

/// A well-formed RTP packet of 20..=1200 bytes (more if its header and padding need it), with
/// CSRCs, a header extension, padding and the marker bit each on some packets.
pub fn random_packet(rng: &mut SmallRng, seq: u16, ssrc: u32) -> Vec<u8> {
    let cc: usize = if rng.random_bool(0.3) {
        rng.random_range(1..=4)
    } else {
        0
    };
    let ext_words: Option<usize> = rng.random_bool(0.4).then(|| rng.random_range(0..=4));
    let padding: usize = if rng.random_bool(0.25) {
        rng.random_range(1..=32)
    } else {
        0
    };
    let header_len = 12 + 4 * cc + ext_words.map_or(0, |w| 4 + 4 * w);
    let len = rng.random_range(20..=1200).max(header_len + padding);

    let mut p = Vec::with_capacity(len);
    let mut b0 = 0x80 | cc as u8;
    if padding > 0 {
        b0 |= 0x20;
    }
    if ext_words.is_some() {
        b0 |= 0x10;
    }
    p.push(b0);
    let marker = if rng.random_bool(0.3) { 0x80 } else { 0 };
    p.push(marker | rng.random_range(96..=127u8));
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&rng.random::<u32>().to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    for _ in 0..cc {
        p.extend_from_slice(&rng.random::<u32>().to_be_bytes());
    }
    if let Some(words) = ext_words {
        p.extend_from_slice(&[0xBE, 0xDE]);
        p.extend_from_slice(&(words as u16).to_be_bytes());
        for _ in 0..4 * words {
            p.push(rng.random());
        }
    }
    while p.len() < len - padding {
        p.push(rng.random());
    }
    if padding > 0 {
        p.resize(len - 1, 0);
        p.push(padding as u8);
    }
    p
}

/// `count` random packets with sequence numbers from `first`.
pub fn random_group(rng: &mut SmallRng, first: u16, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| random_packet(rng, first.wrapping_add(i as u16), MEDIA_SSRC))
        .collect()
}

/// Indices of the media packets repair packet `j` of `k` protects, from the definition of each
/// layout (not from the encoder).
pub fn protected_indices(kind: MaskKind, n: usize, k: usize, j: usize) -> Vec<usize> {
    match kind {
        MaskKind::Interleaved => (j..n).step_by(k).collect(),
        MaskKind::Consecutive => (j * n / k..(j + 1) * n / k).collect(),
        MaskKind::Overlapping if k >= 3 => {
            (0..n).filter(|i| i % k == j || (i + 1) % k == j).collect()
        }
        MaskKind::Overlapping => (j..n).step_by(k).collect(),
    }
}

/// Which media packets end up known: those received plus those recoverable by repeatedly using
/// a received repair packet with exactly one unknown packet.
pub fn recoverable(kind: MaskKind, received_media: &[bool], received_fec: &[bool]) -> Vec<bool> {
    let n = received_media.len();
    let k = received_fec.len();
    let mut known = received_media.to_vec();
    loop {
        let mut progress = false;
        for j in (0..k).filter(|&j| received_fec[j]) {
            let unknown: Vec<usize> = protected_indices(kind, n, k, j)
                .into_iter()
                .filter(|&i| !known[i])
                .collect();
            if let [only] = unknown[..] {
                known[only] = true;
                progress = true;
            }
        }
        if !progress {
            return known;
        }
    }
}

/// The two FEC codecs behind one interface, so every scenario runs against both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Ulpfec,
    Flexfec,
}

impl Codec {
    pub fn max_group(self) -> usize {
        match self {
            Codec::Ulpfec => meridian_fec::ulpfec::MAX_MEDIA_PACKETS,
            Codec::Flexfec => meridian_fec::flexfec::MAX_MEDIA_PACKETS,
        }
    }

    pub fn encoder(self) -> Encoder {
        match self {
            Codec::Ulpfec => Encoder::Ulpfec(UlpfecEncoder::new()),
            Codec::Flexfec => Encoder::Flexfec(
                FlexfecEncoder::new(REPAIR_PT, REPAIR_SSRC, 40_000).expect("valid PT"),
            ),
        }
    }

    pub fn decoder(self) -> Decoder {
        match self {
            Codec::Ulpfec => Decoder::Ulpfec(UlpfecDecoder::new(MEDIA_SSRC)),
            Codec::Flexfec => Decoder::Flexfec(FlexfecDecoder::new(MEDIA_SSRC)),
        }
    }
}

pub enum Encoder {
    Ulpfec(UlpfecEncoder),
    Flexfec(FlexfecEncoder),
}

impl Encoder {
    pub fn add_media(&mut self, packet: &[u8]) {
        match self {
            Encoder::Ulpfec(e) => e.add_media(packet).expect("valid media"),
            Encoder::Flexfec(e) => e.add_media(packet).expect("valid media"),
        }
    }

    pub fn generate(&mut self, num_fec: usize, kind: MaskKind, out: &mut Vec<Vec<u8>>) -> usize {
        match self {
            Encoder::Ulpfec(e) => e.generate(num_fec, kind, out),
            Encoder::Flexfec(e) => e.generate(num_fec, kind, out),
        }
    }

    pub fn set_carry(&mut self, groups: usize) {
        match self {
            Encoder::Ulpfec(e) => e.set_carry(groups),
            Encoder::Flexfec(e) => e.set_carry(groups),
        }
    }

    /// Repair data for a whole group.
    pub fn protect(&mut self, group: &[Vec<u8>], num_fec: usize, kind: MaskKind) -> Vec<Vec<u8>> {
        for packet in group {
            self.add_media(packet);
        }
        let mut out = Vec::new();
        self.generate(num_fec, kind, &mut out);
        out
    }
}

pub enum Decoder {
    Ulpfec(UlpfecDecoder),
    Flexfec(FlexfecDecoder),
}

impl Decoder {
    pub fn media(&mut self, packet: &[u8]) {
        let status = match self {
            Decoder::Ulpfec(d) => d.handle_media(packet).map_err(|e| e.to_string()),
            Decoder::Flexfec(d) => d.handle_media(packet).map_err(|e| e.to_string()),
        };
        status.expect("valid media");
    }

    /// A ULPFEC payload or a FlexFEC repair packet.
    pub fn repair(&mut self, data: &[u8]) -> Result<(), String> {
        match self {
            Decoder::Ulpfec(d) => d.handle_fec(data).map_err(|e| e.to_string()),
            Decoder::Flexfec(d) => d.handle_repair(data).map_err(|e| e.to_string()),
        }
    }

    pub fn poll(&mut self, out: &mut Vec<u8>) -> Option<u16> {
        match self {
            Decoder::Ulpfec(d) => d.poll_recovered(out),
            Decoder::Flexfec(d) => d.poll_recovered(out),
        }
    }

    /// Everything recovered so far, as (sequence number, packet).
    pub fn drain(&mut self) -> Vec<(u16, Vec<u8>)> {
        let mut all = Vec::new();
        let mut buf = Vec::new();
        while let Some(seq) = self.poll(&mut buf) {
            all.push((seq, buf.clone()));
        }
        all
    }

    pub fn stats(&self) -> meridian_fec::RecoveryStats {
        match self {
            Decoder::Ulpfec(d) => d.stats(),
            Decoder::Flexfec(d) => d.stats(),
        }
    }
}

/// Sequence number of a serialized packet.
pub fn seq_of(packet: &[u8]) -> u16 {
    u16::from_be_bytes([packet[2], packet[3]])
}
