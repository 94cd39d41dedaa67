//! Garbage in, errors out: random and mutated bytes through every parser and decoder, with a
//! seeded RNG so a failure reproduces. Passing means no panic, and that truncated repair data
//! never produces a packet that differs from the one sent.

mod common;

use common::*;
use meridian_fec::flexfec::{FlexfecDecoder, FlexfecHeader};
use meridian_fec::red;
use meridian_fec::ulpfec::{UlpfecDecoder, UlpfecHeader};
use meridian_fec::MaskKind;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn random_bytes(rng: &mut SmallRng) -> Vec<u8> {
    let len = rng.random_range(0..160);
    let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    // Often make it look like RTP, so the parsers get past their first check.
    if len > 0 && rng.random_bool(0.7) {
        bytes[0] = (bytes[0] & 0x3F) | 0x80;
    }
    if len >= 12 && rng.random_bool(0.5) {
        bytes[8..12].copy_from_slice(&MEDIA_SSRC.to_be_bytes());
    }
    bytes
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = SmallRng::seed_from_u64(10);
    let mut ulpfec = UlpfecDecoder::new(MEDIA_SSRC);
    let mut flexfec = FlexfecDecoder::new(MEDIA_SSRC);
    let mut out = Vec::new();
    for _ in 0..30_000 {
        let bytes = random_bytes(&mut rng);
        let _ = red::parse(&bytes);
        let _ = red::parse_packet(&bytes);
        let _ = red::unwrap_packet(&bytes, &mut out);
        let _ = red::wrap_packet(&bytes, 100, &mut out);
        let _ = UlpfecHeader::parse(&bytes);
        let _ = FlexfecHeader::parse(&bytes);
        let _ = ulpfec.handle_fec(&bytes);
        let _ = ulpfec.handle_media(&bytes);
        let _ = flexfec.handle_repair(&bytes);
        let _ = flexfec.handle_media(&bytes);
        while ulpfec.poll_recovered(&mut out).is_some() {}
        while flexfec.poll_recovered(&mut out).is_some() {}
    }
}

/// Valid repair data with bits flipped, bytes cut off or appended, fed among valid media.
#[test]
fn mutated_repair_data_never_panics() {
    let mut rng = SmallRng::seed_from_u64(11);
    for codec in [Codec::Ulpfec, Codec::Flexfec] {
        let mut decoder = codec.decoder();
        let mut seq: u16 = 0;
        for _ in 0..400 {
            let n = rng.random_range(1..=20);
            let group = random_group(&mut rng, seq, n);
            seq = seq.wrapping_add(n as u16);
            let repair = codec.encoder().protect(&group, 3, MaskKind::Interleaved);
            for (i, packet) in group.iter().enumerate() {
                if i % 3 != 1 {
                    decoder.media(packet);
                }
            }
            for r in &repair {
                let mut r = r.clone();
                match rng.random_range(0..3) {
                    0 => {
                        for _ in 0..rng.random_range(1..4) {
                            let at = rng.random_range(0..r.len());
                            let bit = rng.random_range(0..8);
                            r[at] ^= 1 << bit;
                        }
                    }
                    1 => r.truncate(rng.random_range(0..r.len())),
                    _ => {
                        let extra = rng.random_range(1..40);
                        r.extend((0..extra).map(|_| rng.random::<u8>()));
                    }
                }
                let _ = decoder.repair(&r);
            }
            let _ = decoder.drain();
        }
    }
}

/// Cutting a repair packet short either makes it unparseable or, when enough of it survives for
/// the lost packet, still recovers exactly that packet. Never a wrong one.
#[test]
fn truncated_repair_data_recovers_correctly_or_not_at_all() {
    let mut rng = SmallRng::seed_from_u64(12);
    for codec in [Codec::Ulpfec, Codec::Flexfec] {
        for _ in 0..20 {
            let first = rng.random();
            let group = random_group(&mut rng, first, 4);
            let repair = codec.encoder().protect(&group, 1, MaskKind::Interleaved);
            let full = &repair[0];
            let lost = rng.random_range(0..4);
            for cut in 0..full.len() {
                let mut decoder = codec.decoder();
                for (i, packet) in group.iter().enumerate() {
                    if i != lost {
                        decoder.media(packet);
                    }
                }
                let accepted = decoder.repair(&full[..cut]).is_ok();
                let recovered = decoder.drain();
                if codec == Codec::Ulpfec {
                    // The protection length says how long the payload must be.
                    assert!(!accepted, "cut to {cut} of {}", full.len());
                }
                for (_, packet) in &recovered {
                    assert_eq!(&group[lost], packet, "{codec:?}: cut to {cut}");
                }
            }
        }
    }
}

#[test]
fn truncated_red_payloads_are_errors() {
    let mut rng = SmallRng::seed_from_u64(13);
    for _ in 0..200 {
        let datas: Vec<Vec<u8>> = (0..rng.random_range(1..5))
            .map(|_| (0..rng.random_range(1..50)).map(|_| rng.random()).collect())
            .collect();
        let blocks: Vec<red::RedBlock<'_>> = datas
            .iter()
            .map(|d| red::RedBlock {
                pt: 111,
                ts_offset: 960,
                payload: d,
            })
            .collect();
        let mut out = Vec::new();
        red::encode(111, &[1, 2, 3], &blocks, &mut out).expect("valid");
        let redundant_len: usize = datas.iter().map(Vec::len).sum();
        let headers_len = 4 * datas.len() + 1;
        for cut in 0..out.len() {
            let result = red::parse(&out[..cut]);
            if cut < headers_len + redundant_len {
                assert!(result.is_err(), "cut to {cut}");
            } else {
                // Only the primary, whose length is implicit, got shorter.
                let parsed = result.expect("redundant blocks intact");
                assert_eq!(
                    cut - headers_len - redundant_len,
                    parsed.primary().data.len()
                );
            }
        }
    }
}
