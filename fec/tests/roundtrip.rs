//! Encode, lose, decode: every packet a decoder returns must be byte-identical to the one sent,
//! and it must return exactly what an independent model of the masks says is recoverable.

mod common;

use common::*;
use meridian_fec::red;
use meridian_fec::ulpfec::{UlpfecDecoder, UlpfecEncoder};
use meridian_fec::{MaskKind, MediaStatus};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const KINDS: [MaskKind; 3] = [
    MaskKind::Interleaved,
    MaskKind::Consecutive,
    MaskKind::Overlapping,
];
const CODECS: [Codec; 2] = [Codec::Ulpfec, Codec::Flexfec];

/// Run one group through a fresh decoder with the given losses, in a shuffled order, and check
/// the result against the model.
fn check_pattern(
    rng: &mut SmallRng,
    codec: Codec,
    kind: MaskKind,
    group: &[Vec<u8>],
    repair: &[Vec<u8>],
    received_media: &[bool],
    received_fec: &[bool],
) {
    enum Item<'a> {
        Media(&'a [u8]),
        Repair(&'a [u8]),
    }
    let mut items: Vec<Item<'_>> = group
        .iter()
        .zip(received_media)
        .filter(|(_, &r)| r)
        .map(|(p, _)| Item::Media(p))
        .chain(
            repair
                .iter()
                .zip(received_fec)
                .filter(|(_, &r)| r)
                .map(|(p, _)| Item::Repair(p)),
        )
        .collect();
    items.shuffle(rng);

    let mut decoder = codec.decoder();
    let mut recovered = Vec::new();
    for item in items {
        match item {
            Item::Media(p) => decoder.media(p),
            Item::Repair(p) => decoder.repair(p).expect("valid repair data"),
        }
        recovered.extend(decoder.drain());
    }

    // A packet can also be rebuilt before it arrives, when a repair packet is missing only it.
    // That is correct and counted here only among the packets actually lost.
    let known = recoverable(kind, received_media, received_fec);
    let first = seq_of(&group[0]);
    let lost = |seq: u16| !received_media[usize::from(seq.wrapping_sub(first))];
    let mut expected: Vec<u16> = (0..group.len())
        .filter(|&i| known[i] && !received_media[i])
        .map(|i| first.wrapping_add(i as u16))
        .collect();
    let mut got: Vec<u16> = recovered
        .iter()
        .map(|(seq, _)| *seq)
        .filter(|&seq| lost(seq))
        .collect();
    expected.sort_unstable();
    got.sort_unstable();
    assert_eq!(
        expected,
        got,
        "{codec:?} {kind:?}: n={} k={} media {received_media:?} fec {received_fec:?}",
        group.len(),
        repair.len()
    );
    for (seq, packet) in &recovered {
        let index = usize::from(seq.wrapping_sub(first));
        assert_eq!(&group[index], packet, "{codec:?} {kind:?}: packet {seq}");
    }
}

#[test]
fn every_single_loss_is_recovered() {
    let mut rng = SmallRng::seed_from_u64(1);
    for codec in CODECS {
        let sizes: &[usize] = match codec {
            Codec::Ulpfec => &[1, 2, 5, 16, 17, 31, 48],
            Codec::Flexfec => &[1, 2, 15, 16, 46, 47, 109],
        };
        for &n in sizes {
            for kind in KINDS {
                for k in [1, 2, 3, 8] {
                    let group = random_group(&mut rng, 65_530, n);
                    let repair = codec.encoder().protect(&group, k, kind);
                    assert_eq!(k.min(n), repair.len());
                    let all_fec = vec![true; repair.len()];
                    for lost in 0..n {
                        let mut received = vec![true; n];
                        received[lost] = false;
                        check_pattern(&mut rng, codec, kind, &group, &repair, &received, &all_fec);
                    }
                }
            }
        }
    }
}

#[test]
fn random_multi_loss_patterns() {
    let mut rng = SmallRng::seed_from_u64(2);
    for codec in CODECS {
        for _ in 0..300 {
            let n = rng.random_range(1..=codec.max_group());
            let k = rng.random_range(1..=n.min(12));
            let kind = KINDS[rng.random_range(0..KINDS.len())];
            let loss = rng.random_range(0.05..0.5);
            let first = rng.random();
            let group = random_group(&mut rng, first, n);
            let repair = codec.encoder().protect(&group, k, kind);
            let received_media: Vec<bool> = (0..n).map(|_| !rng.random_bool(loss)).collect();
            let received_fec: Vec<bool> = (0..k).map(|_| !rng.random_bool(loss)).collect();
            check_pattern(
                &mut rng,
                codec,
                kind,
                &group,
                &repair,
                &received_media,
                &received_fec,
            );
        }
    }
}

/// Two losses under one repair packet: nothing can be recovered, and nothing is.
#[test]
fn unrecoverable_patterns_recover_nothing() {
    let mut rng = SmallRng::seed_from_u64(3);
    for codec in CODECS {
        let group = random_group(&mut rng, 100, 10);
        let repair = codec.encoder().protect(&group, 2, MaskKind::Interleaved);
        let mut decoder = codec.decoder();
        // 100 and 102 are both under the first repair packet; 101 and 105 under the second.
        for (i, packet) in group.iter().enumerate() {
            if ![0, 1, 2, 5].contains(&i) {
                decoder.media(packet);
            }
        }
        for r in &repair {
            decoder.repair(r).expect("valid");
        }
        assert!(decoder.drain().is_empty(), "{codec:?}");
    }
}

/// A long stream through one decoder: groups of varying size and protection, sequence numbers
/// wrapping, repair packets arriving late and interleaved with the next group.
#[test]
fn long_stream_through_one_decoder() {
    let mut rng = SmallRng::seed_from_u64(4);
    for codec in CODECS {
        let mut encoder = codec.encoder();
        let mut decoder = codec.decoder();
        let mut seq: u16 = 60_000;
        let mut sent = std::collections::HashMap::new();
        let mut lost = std::collections::HashSet::new();
        let mut expected = 0usize;
        let mut held_back: Vec<Vec<u8>> = Vec::new();
        let mut out = Vec::new();
        let mut recovered = 0usize;
        for _ in 0..150 {
            let n = rng.random_range(1..=codec.max_group().min(40));
            let k = rng.random_range(1..=n.min(6));
            let kind = KINDS[rng.random_range(0..KINDS.len())];
            let group = random_group(&mut rng, seq, n);
            seq = seq.wrapping_add(n as u16);
            for packet in &group {
                encoder.add_media(packet);
            }
            encoder.generate(k, kind, &mut out);

            let received_media: Vec<bool> = (0..n).map(|_| !rng.random_bool(0.1)).collect();
            let received_fec: Vec<bool> = (0..k).map(|_| !rng.random_bool(0.1)).collect();
            let known = recoverable(kind, &received_media, &received_fec);
            expected += (0..n).filter(|&i| known[i] && !received_media[i]).count();

            // The previous group's repair packets arrive among this group's media.
            let mut late = std::mem::take(&mut held_back);
            for (i, packet) in group.iter().enumerate() {
                sent.insert(seq_of(packet), packet.clone());
                if received_media[i] {
                    decoder.media(packet);
                } else {
                    lost.insert(seq_of(packet));
                }
                if let Some(r) = late.pop() {
                    decoder.repair(&r).expect("valid");
                }
            }
            for r in late {
                decoder.repair(&r).expect("valid");
            }
            held_back = out
                .iter()
                .zip(&received_fec)
                .filter(|(_, &r)| r)
                .map(|(r, _)| r.clone())
                .collect();

            for (s, packet) in decoder.drain() {
                assert!(
                    lost.remove(&s),
                    "{codec:?}: recovered {s}, which was not lost"
                );
                assert_eq!(sent[&s], packet, "{codec:?}: packet {s}");
                recovered += 1;
            }
        }
        for r in held_back {
            decoder.repair(&r).expect("valid");
        }
        for (s, packet) in decoder.drain() {
            assert!(
                lost.remove(&s),
                "{codec:?}: recovered {s}, which was not lost"
            );
            assert_eq!(sent[&s], packet);
            recovered += 1;
        }
        assert_eq!(expected, recovered, "{codec:?}");
        assert_eq!(0, decoder.stats().resets, "{codec:?}");
    }
}

/// The whole ULPFEC path as libwebrtc runs it: media wrapped in RED, FEC payloads as the only
/// block of RED packets in the media sequence space, and the receiver unwrapping both.
#[test]
fn ulpfec_inside_red() {
    const RED_PT: u8 = 116;
    const ULPFEC_PT: u8 = 117;
    let mut rng = SmallRng::seed_from_u64(5);
    let group = random_group(&mut rng, 1000, 8);

    let mut encoder = UlpfecEncoder::new();
    let mut wire = Vec::new();
    for packet in &group {
        encoder.add_media(packet).expect("valid");
        let mut red_packet = Vec::new();
        red::wrap_packet(packet, RED_PT, &mut red_packet).expect("valid");
        wire.push(red_packet);
    }
    let mut fec = Vec::new();
    encoder.generate(2, MaskKind::Interleaved, &mut fec);
    for (i, payload) in fec.iter().enumerate() {
        let mut red_packet = vec![0x80, RED_PT];
        red_packet.extend_from_slice(&(1008 + i as u16).to_be_bytes());
        red_packet.extend_from_slice(&group[7][4..12]);
        red::encode(ULPFEC_PT, payload, &[], &mut red_packet).expect("valid");
        wire.push(red_packet);
    }

    // Lose 1002 and 1003: consecutive, so under different FEC packets.
    wire.remove(3);
    wire.remove(2);
    let mut decoder = UlpfecDecoder::new(MEDIA_SSRC);
    let mut media = Vec::new();
    for packet in &wire {
        let payload = red::parse_packet(packet).expect("valid RED");
        if payload.primary().pt == ULPFEC_PT {
            decoder
                .handle_fec(payload.primary().data)
                .expect("valid FEC");
        } else {
            red::unwrap_packet(packet, &mut media).expect("single block");
            assert_eq!(Ok(MediaStatus::Stored), decoder.handle_media(&media));
        }
    }
    let mut out = Vec::new();
    let mut got = Vec::new();
    while let Some(seq) = decoder.poll_recovered(&mut out) {
        assert_eq!(group[usize::from(seq - 1000)], out);
        got.push(seq);
    }
    got.sort_unstable();
    assert_eq!(vec![1002, 1003], got);
}

#[test]
fn red_round_trips() {
    let mut rng = SmallRng::seed_from_u64(6);
    for _ in 0..500 {
        let count = rng.random_range(0..red::MAX_BLOCKS);
        let datas: Vec<Vec<u8>> = (0..count)
            .map(|_| {
                let len = rng.random_range(0..=red::MAX_BLOCK_LEN);
                (0..len).map(|_| rng.random()).collect()
            })
            .collect();
        let blocks: Vec<red::RedBlock<'_>> = datas
            .iter()
            .map(|d| red::RedBlock {
                pt: rng.random_range(0..128),
                ts_offset: rng.random_range(0..=red::MAX_TS_OFFSET),
                payload: d,
            })
            .collect();
        let primary: Vec<u8> = (0..rng.random_range(0..1200))
            .map(|_| rng.random())
            .collect();
        let primary_pt = rng.random_range(0..128);
        let mut out = Vec::new();
        red::encode(primary_pt, &primary, &blocks, &mut out).expect("in range");

        let parsed = red::parse(&out).expect("valid");
        assert_eq!(count, parsed.redundant().len());
        for (b, p) in blocks.iter().zip(parsed.redundant()) {
            assert_eq!((b.pt, b.ts_offset, b.payload), (p.pt, p.ts_offset, p.data));
            assert!(!p.is_primary);
        }
        assert_eq!(primary_pt, parsed.primary().pt);
        assert_eq!(&primary[..], parsed.primary().data);
    }
}

/// Memory stays bounded whatever arrives: repair packets for sequence numbers the stream never
/// reaches are evicted or dropped as stale, and a stream that jumps is followed.
#[test]
fn decoder_state_is_bounded() {
    let mut rng = SmallRng::seed_from_u64(7);
    for codec in CODECS {
        let mut encoder = codec.encoder();
        let mut decoder = codec.decoder();
        // Repair packets for a far-away part of the sequence space, never completed.
        for i in 0..2_000u16 {
            let group = random_group(&mut rng, 20_000u16.wrapping_add(i * 3), 3);
            let repair = encoder.protect(&group, 1, MaskKind::Interleaved);
            decoder.repair(&repair[0]).expect("valid");
        }
        let after_repairs = decoder.stats();
        assert!(after_repairs.repair_evicted >= 2_000 - meridian_fec::MAX_PENDING as u64);

        // Then the media stream, somewhere else entirely, jumping backwards once.
        for seq in (0..1_000u16).chain(500..600).chain(40_000..40_100) {
            decoder.media(&random_packet(&mut rng, seq, MEDIA_SSRC));
        }
        let stats = decoder.stats();
        assert!(
            stats.resets >= 1,
            "{codec:?}: the jump is followed: {stats:?}"
        );
        assert_eq!(0, stats.recovered, "{codec:?}");
        assert!(decoder.drain().is_empty());
    }
}

/// Fraction of media packets still missing after peeling, over many seeded groups of `n` media
/// and `k` repair packets with independent loss `p` on both.
fn residual(kind: MaskKind, n: usize, k: usize, p: f64) -> f64 {
    let mut rng = SmallRng::seed_from_u64(7);
    let (mut missing, groups) = (0usize, 20_000);
    for _ in 0..groups {
        let media: Vec<bool> = (0..n).map(|_| !rng.random_bool(p)).collect();
        let fec: Vec<bool> = (0..k).map(|_| !rng.random_bool(p)).collect();
        missing += recoverable(kind, &media, &fec)
            .iter()
            .filter(|&&k| !k)
            .count();
    }
    missing as f64 / (n * groups) as f64
}

/// Why Meridian's video FEC picks `Overlapping` where it does (`mask_kind` in meridian-sfu):
/// with two repair groups per packet, a rebuilt packet completes another group. That wins at a
/// high repair ratio or moderate loss, and loses when few repair packets face heavy loss.
#[test]
fn overlapping_masks_win_at_high_ratio_or_moderate_loss() {
    let cases = [
        // (n, k, loss, overlapping should leave fewer missing)
        (5, 3, 0.1, true),
        (4, 4, 0.3, true),
        (15, 12, 0.3, true),
        (10, 3, 0.3, false),
    ];
    for (n, k, p, wins) in cases {
        let inter = residual(MaskKind::Interleaved, n, k, p);
        let over = residual(MaskKind::Overlapping, n, k, p);
        println!("{n} media + {k} FEC at {p}: interleaved {inter:.4}, overlapping {over:.4}");
        assert_eq!(over < inter, wins, "{n}+{k} at {p}: {inter} vs {over}");
    }
}

/// Fraction of media packets still missing after decoding a stream of `frames` frames of 3 to
/// 5 packets, each followed by `rate` repair packets per media packet, with the encoder
/// carrying `carry` earlier frames. Loss is random at `p`, or bursty (Gilbert–Elliott, `p` the
/// chance to enter a burst, bursts ending with 25 %) when `bursty`. Every rebuilt packet must
/// be the one sent.
fn stream_residual(codec: Codec, carry: usize, rate: f64, p: f64, bursty: bool) -> f64 {
    let mut rng = SmallRng::seed_from_u64(11);
    let mut encoder = codec.encoder();
    encoder.set_carry(carry);
    let mut decoder = codec.decoder();
    let (mut in_burst, mut sent, mut missing) = (false, 0usize, 0usize);
    let mut lose = |rng: &mut SmallRng| {
        if bursty {
            in_burst = if in_burst {
                !rng.random_bool(0.25)
            } else {
                rng.random_bool(p)
            };
            in_burst
        } else {
            rng.random_bool(p)
        }
    };
    let mut lost = std::collections::HashMap::new();
    let mut seq = 1000u16;
    let mut repair = Vec::new();
    let frames = 2000;
    for frame in 0..frames {
        let n = rng.random_range(3..=5);
        let group = random_group(&mut rng, seq, n);
        seq = seq.wrapping_add(n as u16);
        for packet in &group {
            encoder.add_media(packet);
            if lose(&mut rng) {
                lost.insert(seq_of(packet), (frame, packet.clone()));
            } else {
                decoder.media(packet);
            }
        }
        let k = meridian_fec::fec_count(n, rate);
        let kind = if k >= 3 {
            MaskKind::Overlapping
        } else {
            MaskKind::Interleaved
        };
        encoder.generate(k, kind, &mut repair);
        for r in &repair {
            if !lose(&mut rng) {
                decoder.repair(r).expect("valid repair data");
            }
        }
        for (s, packet) in decoder.drain() {
            if let Some((_, sent_packet)) = lost.remove(&s) {
                assert_eq!(sent_packet, packet, "{codec:?}: packet {s}");
            }
        }
        // What three frames later is still missing stays missing.
        lost.retain(|_, (f, _)| {
            let keep = frame - *f < 3;
            missing += usize::from(!keep);
            keep
        });
        sent += n;
    }
    (missing + lost.len()) as f64 / sent as f64
}

/// Why Meridian's video FEC carries two earlier frames (`set_carry(2)` in meridian-sfu): with
/// the same repair packets, a packet its own frame's repair packets could not rebuild gets more
/// chances from the next frames' repair packets, which at high or bursty loss leaves far fewer
/// packets missing (the receiver's jitter buffer waits for them: two frames are ≈ 67 ms at
/// 30 fps).
#[test]
fn carrying_earlier_groups_leaves_fewer_missing() {
    let cases = [
        // (repair per media packet, loss, bursty)
        (1.0, 0.3, false),
        (1.0, 0.2, false),
        (0.5, 0.1, false),
        (1.0, 0.03, true),
    ];
    for codec in CODECS {
        for (rate, p, bursty) in cases {
            let alone = stream_residual(codec, 0, rate, p, bursty);
            let carried = stream_residual(codec, 2, rate, p, bursty);
            println!(
                "{codec:?} rate {rate} loss {p} bursty {bursty}: alone {alone:.4}, carry 2 {carried:.4}"
            );
            assert!(
                carried < alone * 0.6,
                "{codec:?} rate {rate} at {p} (bursty {bursty}): {alone} vs {carried}"
            );
        }
    }
}
