//! FlexFEC draft-03 interop with webrtc-rs `rtc-interceptor` 0.21, in both directions:
//!
//! - our repair packets recovered by its `FlexFec03Decoder`, and by its receive interceptor in a
//!   chain (the path a webrtc-rs receiver uses);
//! - its `FlexFec03Encoder`'s repair packets, and those its send interceptor emits, recovered by
//!   our decoder.
//!
//! Media packets are built and serialized with `rtc-rtp`, so they are in the canonical form its
//! decoder re-serializes present packets in (it XORs `marshal()` output, not received bytes).

mod common;

use common::{recoverable, MEDIA_SSRC, REPAIR_PT, REPAIR_SSRC};
use meridian_fec::flexfec::{FlexfecDecoder, FlexfecEncoder, FlexfecHeader};
use meridian_fec::MaskKind;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rtc_interceptor::{
    Attribute, AttributedPacket, FlexFec03Decoder, FlexFec03Encoder, FlexFec03ReceiveBuilder,
    FlexFec03SendBuilder, Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket,
};
use rtc_shared::marshal::{Marshal, Unmarshal};
use rtc_shared::TransportContext;
use sansio::Protocol;
use std::time::Instant;

fn random_rtp(rng: &mut SmallRng, seq: u16) -> rtc_rtp::Packet {
    let mut header = rtc_rtp::header::Header {
        version: 2,
        padding: rng.random_bool(0.25),
        marker: rng.random_bool(0.3),
        payload_type: rng.random_range(96..=127),
        sequence_number: seq,
        timestamp: rng.random(),
        ssrc: MEDIA_SSRC,
        csrc: (0..rng.random_range(0..=3)).map(|_| rng.random()).collect(),
        ..Default::default()
    };
    if rng.random_bool(0.4) {
        header.extension = true;
        header.extension_profile = 0xBEDE;
        for id in 1..=rng.random_range(1..=3u8) {
            let len = rng.random_range(1..=8);
            let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            header
                .set_extension(id, data.into())
                .expect("valid one-byte extension");
        }
    }
    let len = rng.random_range(8..=1100);
    let payload: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    rtc_rtp::Packet {
        header,
        payload: payload.into(),
    }
}

fn bytes_of(packet: &rtc_rtp::Packet) -> Vec<u8> {
    packet.marshal().expect("marshal").to_vec()
}

fn parse(bytes: &[u8]) -> rtc_rtp::Packet {
    let mut buf = bytes;
    rtc_rtp::Packet::unmarshal(&mut buf).expect("well-formed RTP")
}

/// A block of media, checked to survive rtc-rtp's parse and re-serialize unchanged.
fn block(rng: &mut SmallRng, first: u16, count: usize) -> (Vec<rtc_rtp::Packet>, Vec<Vec<u8>>) {
    let packets: Vec<_> = (0..count)
        .map(|i| random_rtp(rng, first.wrapping_add(i as u16)))
        .collect();
    let bytes: Vec<_> = packets.iter().map(bytes_of).collect();
    for b in &bytes {
        assert_eq!(b, &bytes_of(&parse(b)), "canonical serialization");
    }
    (packets, bytes)
}

fn our_repair(media: &[Vec<u8>], num_fec: usize, kind: MaskKind) -> Vec<Vec<u8>> {
    let mut encoder = FlexfecEncoder::new(REPAIR_PT, REPAIR_SSRC, 500).expect("valid PT");
    for packet in media {
        encoder.add_media(packet).expect("in order");
    }
    let mut out = Vec::new();
    encoder.generate(num_fec, kind, &mut out);
    out
}

/// What their decoder recovers from the received media and repair packets, in random order.
fn their_decoder_recovers(
    media: &[rtc_rtp::Packet],
    repair: &[Vec<u8>],
    received_media: &[bool],
    received_fec: &[bool],
    rng: &mut SmallRng,
) -> Vec<rtc_rtp::Packet> {
    let mut items: Vec<rtc_rtp::Packet> = media
        .iter()
        .zip(received_media)
        .filter(|(_, &r)| r)
        .map(|(p, _)| p.clone())
        .chain(
            repair
                .iter()
                .zip(received_fec)
                .filter(|(_, &r)| r)
                .map(|(r, _)| parse(r)),
        )
        .collect();
    // Their decoder clears its state when a media packet is more than 100 sequence numbers from
    // the newest it holds, so blocks longer than that are only recoverable in sending order.
    if media.len() < 100 {
        items.shuffle(rng);
    }
    let mut decoder = FlexFec03Decoder::new(REPAIR_SSRC, MEDIA_SSRC);
    items
        .into_iter()
        .flat_map(|packet| decoder.decode(packet))
        .collect()
}

/// Compare a decoder's output with the model: the lost packets recovered are exactly those the
/// masks allow, and each is byte-identical. (A packet not yet received can be rebuilt early;
/// that is correct, and checked for identity too.)
fn check_recovered(
    kind: MaskKind,
    media: &[Vec<u8>],
    recovered: &[Vec<u8>],
    received_media: &[bool],
    received_fec: &[bool],
    what: &str,
) {
    let first = common::seq_of(&media[0]);
    let known = recoverable(kind, received_media, received_fec);
    let expected: Vec<usize> = (0..media.len())
        .filter(|&i| known[i] && !received_media[i])
        .collect();
    let mut got = Vec::new();
    for packet in recovered {
        let index = usize::from(common::seq_of(packet).wrapping_sub(first));
        assert_eq!(&media[index], packet, "{what}: packet {index}");
        if !received_media[index] {
            got.push(index);
        }
    }
    got.sort_unstable();
    got.dedup();
    assert_eq!(
        expected,
        got,
        "{what}: n={} k={} media {received_media:?} fec {received_fec:?}",
        media.len(),
        received_fec.len()
    );
}

#[test]
fn our_repair_packets_every_single_loss_their_decoder() {
    let mut rng = SmallRng::seed_from_u64(20);
    for (n, ks) in [
        (1, &[1][..]),
        (2, &[1, 2]),
        (5, &[1, 2]),
        (15, &[1, 3]),
        (16, &[1, 3]),
        (46, &[1, 4]),
        (47, &[2]),
        (109, &[1, 5]),
    ] {
        for &k in ks {
            for kind in [MaskKind::Interleaved, MaskKind::Consecutive] {
                let (packets, bytes) = block(&mut rng, 65_500, n);
                let repair = our_repair(&bytes, k, kind);
                let all_fec = vec![true; repair.len()];
                for lost in 0..n {
                    let mut received = vec![true; n];
                    received[lost] = false;
                    let recovered: Vec<Vec<u8>> =
                        their_decoder_recovers(&packets, &repair, &received, &all_fec, &mut rng)
                            .iter()
                            .map(bytes_of)
                            .collect();
                    check_recovered(kind, &bytes, &recovered, &received, &all_fec, "theirs");
                }
            }
        }
    }
}

#[test]
fn our_repair_packets_random_losses_their_decoder() {
    let mut rng = SmallRng::seed_from_u64(21);
    for _ in 0..150 {
        let n = rng.random_range(1..=109);
        let k = rng.random_range(1..=n.min(10));
        let kind = if rng.random_bool(0.5) {
            MaskKind::Interleaved
        } else {
            MaskKind::Consecutive
        };
        let first = rng.random();
        let (packets, bytes) = block(&mut rng, first, n);
        let repair = our_repair(&bytes, k, kind);
        let received_media: Vec<bool> = (0..n).map(|_| !rng.random_bool(0.2)).collect();
        let received_fec: Vec<bool> = (0..k).map(|_| !rng.random_bool(0.2)).collect();
        let recovered: Vec<Vec<u8>> =
            their_decoder_recovers(&packets, &repair, &received_media, &received_fec, &mut rng)
                .iter()
                .map(bytes_of)
                .collect();
        check_recovered(
            kind,
            &bytes,
            &recovered,
            &received_media,
            &received_fec,
            "theirs",
        );
    }
}

/// Their encoder's repair packets through our decoder. Their coverage is interleaved and their
/// blocks must be consecutive runs.
#[test]
fn their_repair_packets_our_decoder() {
    let mut rng = SmallRng::seed_from_u64(22);
    let mut cases: Vec<(usize, u32, Vec<bool>, Vec<bool>)> = Vec::new();
    for (n, k) in [(1, 1), (2, 1), (5, 2), (16, 3), (47, 1), (60, 4), (109, 2)] {
        for lost in 0..n {
            let mut received = vec![true; n];
            received[lost] = false;
            cases.push((n, k, received, vec![true; k as usize]));
        }
    }
    for _ in 0..150 {
        let n = rng.random_range(1..=109);
        let k = rng.random_range(1..=n.min(10)) as u32;
        let media = (0..n).map(|_| !rng.random_bool(0.2)).collect();
        let fec = (0..k).map(|_| !rng.random_bool(0.2)).collect();
        cases.push((n, k, media, fec));
    }

    for (n, k, received_media, received_fec) in cases {
        let first = rng.random();
        let (packets, bytes) = block(&mut rng, first, n);
        let repair: Vec<Vec<u8>> = FlexFec03Encoder::new(REPAIR_PT, REPAIR_SSRC)
            .encode(&packets, k)
            .iter()
            .map(bytes_of)
            .collect();
        assert_eq!(k as usize, repair.len());

        let mut items: Vec<(bool, &Vec<u8>)> = bytes
            .iter()
            .zip(&received_media)
            .filter(|(_, &r)| r)
            .map(|(p, _)| (false, p))
            .chain(
                repair
                    .iter()
                    .zip(&received_fec)
                    .filter(|(_, &r)| r)
                    .map(|(r, _)| (true, r)),
            )
            .collect();
        items.shuffle(&mut rng);
        let mut decoder = FlexfecDecoder::new(MEDIA_SSRC);
        let mut recovered = Vec::new();
        let mut out = Vec::new();
        for (is_repair, packet) in items {
            if is_repair {
                decoder
                    .handle_repair(packet)
                    .expect("their repair packet parses");
            } else {
                decoder.handle_media(packet).expect("valid media");
            }
            while decoder.poll_recovered(&mut out).is_some() {
                recovered.push(out.clone());
            }
        }
        check_recovered(
            MaskKind::Interleaved,
            &bytes,
            &recovered,
            &received_media,
            &received_fec,
            "ours",
        );
    }
}

fn stream_info() -> StreamInfo {
    StreamInfo {
        ssrc: MEDIA_SSRC,
        ssrc_fec: Some(REPAIR_SSRC),
        payload_type: 96,
        payload_type_fec: Some(REPAIR_PT),
        clock_rate: 90_000,
        ..Default::default()
    }
}

fn tagged(now: Instant, packet: rtc_rtp::Packet) -> TaggedPacket {
    TaggedPacket {
        now,
        transport: TransportContext::default(),
        message: AttributedPacket::new(Packet::Rtp(packet)),
    }
}

/// Our repair packets into the interceptor a webrtc-rs receiver runs: the lost packets come out
/// of its read side, marked as recovered, byte-identical.
#[test]
fn our_repair_packets_their_receive_interceptor() {
    let mut rng = SmallRng::seed_from_u64(23);
    let now = Instant::now();
    let mut chain = Registry::new()
        .with(Slot::FecDecoder, FlexFec03ReceiveBuilder::new().build())
        .build();
    chain.bind_remote_stream(&stream_info());

    let mut recovered = Vec::new();
    let mut lost = Vec::new();
    let mut seq = 1_000u16;
    for _ in 0..20 {
        let (packets, bytes) = block(&mut rng, seq, 10);
        seq = seq.wrapping_add(10);
        let repair = our_repair(&bytes, 3, MaskKind::Interleaved);
        // Three consecutive losses: one under each repair packet.
        let skip = rng.random_range(0..8);
        for (i, packet) in packets.iter().enumerate() {
            if (skip..skip + 3).contains(&i) {
                lost.push(bytes[i].clone());
            } else {
                chain
                    .handle_read(tagged(now, packet.clone()))
                    .expect("read");
            }
        }
        for r in &repair {
            chain.handle_read(tagged(now, parse(r))).expect("read");
        }
        while let Some(msg) = chain.poll_read() {
            if msg.message.has(&Attribute::RecoveredByFec) {
                let Packet::Rtp(packet) = msg.message.packet else {
                    panic!("recovered something other than RTP");
                };
                recovered.push(bytes_of(&packet));
            } else if let Packet::Rtp(packet) = &msg.message.packet {
                assert_eq!(
                    MEDIA_SSRC, packet.header.ssrc,
                    "repair packets are consumed"
                );
            }
        }
    }
    recovered.sort();
    lost.sort();
    assert_eq!(60, lost.len());
    assert_eq!(lost, recovered);
}

/// What a webrtc-rs sender's FlexFEC interceptor puts on the wire, recovered by our decoder.
#[test]
fn their_send_interceptor_our_decoder() {
    let mut rng = SmallRng::seed_from_u64(24);
    let now = Instant::now();
    let mut chain = Registry::new()
        .with(
            Slot::FecEncoder,
            FlexFec03SendBuilder::new()
                .with_num_media_packets(8)
                .with_num_fec_packets(2)
                .build(),
        )
        .build();
    chain.bind_local_stream(&stream_info());

    let (packets, bytes) = block(&mut rng, 65_530, 64);
    let mut wire = Vec::new();
    for packet in &packets {
        chain
            .handle_write(tagged(now, packet.clone()))
            .expect("write");
        while let Some(msg) = chain.poll_write() {
            if let Packet::Rtp(packet) = msg.message.packet {
                wire.push(bytes_of(&packet));
            }
        }
    }
    assert_eq!(64 + 16, wire.len(), "two repair packets per block of eight");

    let mut decoder = FlexfecDecoder::new(MEDIA_SSRC);
    let mut out = Vec::new();
    let mut recovered = Vec::new();
    let mut lost = Vec::new();
    for (i, packet) in wire.iter().enumerate() {
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        if ssrc == REPAIR_SSRC {
            assert_eq!(REPAIR_PT, packet[1] & 0x7F);
            decoder
                .handle_repair(packet)
                .expect("their repair packet parses");
        } else if i % 5 == 2 {
            lost.push(packet.clone());
        } else {
            decoder.handle_media(packet).expect("valid media");
        }
        while decoder.poll_recovered(&mut out).is_some() {
            recovered.push(out.clone());
        }
    }
    recovered.sort();
    lost.sort();
    assert!(!lost.is_empty());
    assert_eq!(lost, recovered);
    assert!(recovered.iter().all(|p| bytes.contains(p)));
}

/// A hazard found while testing: rtc-interceptor 0.21's encoder accepts a 110-packet block, but
/// draft-03's masks describe only 109 positions, so the 110th packet is XORed into the repair
/// data without being declared. Recovery from such a repair packet, by either decoder, yields a
/// wrong packet. Do not configure its sender with more than 109 media packets per block; our
/// encoder refuses spans over 109.
#[test]
fn their_encoder_leaves_the_110th_packet_out_of_the_mask() {
    let mut rng = SmallRng::seed_from_u64(25);
    let (packets, _) = block(&mut rng, 0, 110);
    let repair = FlexFec03Encoder::new(REPAIR_PT, REPAIR_SSRC).encode(&packets, 1);
    let bytes = bytes_of(&repair[0]);
    let header = FlexfecHeader::parse(&bytes[12..]).expect("parses");
    assert_eq!(109, header.protected_seqs().count());
    assert!(!header.protects(109));
}
