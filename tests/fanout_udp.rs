//! Over real UDP on 127.0.0.1: one publisher sends real VP8 + Opus (ffmpeg's
//! encoders, tests/data) through `meridian serve` to three subscribers; each
//! receives at least 99% of the packets with identical payload bytes, on one
//! SSRC per track with continuous sequence numbers.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{payload_counts, publish_sample, sample, wait_tracks, Server};
use meridian_client::{Client, ClientConfig, ClientEvent, MediaKind};

#[derive(Default)]
struct Received {
    payloads: HashMap<Arc<[u8]>, usize>,
    ssrcs: HashMap<MediaKind, Vec<u32>>,
    video_seqs: Vec<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publisher_three_subscribers_receive_everything() {
    let server = Server::start(&[]).await;
    let sample = sample();
    let expected = payload_counts(&[&sample.video, &sample.audio]);
    let sent_total: usize = expected.values().sum();

    let mut publisher =
        Client::connect(ClientConfig::new(server.base(), "fanout", "pub").publish(true, true))
            .await
            .expect("publisher joins");
    publisher
        .wait_connected(Duration::from_secs(10))
        .await
        .expect("publisher connects");

    let mut subs = Vec::new();
    for i in 0..3 {
        let mut s = Client::connect(ClientConfig::new(
            server.base(),
            "fanout",
            format!("sub{i}"),
        ))
        .await
        .expect("subscriber joins");
        s.wait_connected(Duration::from_secs(10))
            .await
            .expect("subscriber connects");
        subs.push(s);
    }
    // The publisher's tracks exist once its offer is accepted; each
    // subscriber then gets a server offer carrying both.
    for s in subs.iter_mut() {
        wait_tracks(s, 2).await;
    }
    // Let the subscribers' answers land before media starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut readers = Vec::new();
    for mut s in subs {
        readers.push(tokio::spawn(async move {
            let mut r = Received::default();
            loop {
                match tokio::time::timeout(Duration::from_secs(3), s.next_event()).await {
                    Ok(Some(ClientEvent::Rtp(p))) => {
                        *r.payloads.entry(p.payload.clone()).or_insert(0) += 1;
                        let kind = p.kind.expect("m-line kind known");
                        let ssrcs = r.ssrcs.entry(kind).or_default();
                        if !ssrcs.contains(&p.ssrc) {
                            ssrcs.push(p.ssrc);
                        }
                        if kind == MediaKind::Video {
                            r.video_seqs.push(p.seq);
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            r
        }));
    }

    publish_sample(publisher.sender(), &sample).await;

    for (i, h) in readers.into_iter().enumerate() {
        let r = h.await.expect("reader task");
        let mut matched = 0usize;
        for (payload, n) in &expected {
            matched += (*n).min(r.payloads.get(payload).copied().unwrap_or(0));
        }
        let ratio = matched as f64 / sent_total as f64;
        let video_got = r.video_seqs.len();
        eprintln!(
            "subscriber {i}: video {video_got}/{} audio {}/{}",
            sample.video.packets.len(),
            r.payloads.values().sum::<usize>() - video_got,
            sample.audio.packets.len()
        );
        eprintln!(
            "subscriber {i}: {matched}/{sent_total} packets with identical payload ({:.2}%)",
            ratio * 100.0
        );
        assert!(
            ratio >= 0.99,
            "subscriber {i} received only {:.2}%",
            ratio * 100.0
        );
        for kind in [MediaKind::Audio, MediaKind::Video] {
            assert_eq!(
                r.ssrcs.get(&kind).map(Vec::len),
                Some(1),
                "one SSRC per {kind:?} track"
            );
        }
        let mut seqs = r.video_seqs.clone();
        seqs.sort_unstable();
        seqs.dedup();
        let span = seqs.last().unwrap() - seqs.first().unwrap() + 1;
        assert_eq!(
            span as usize,
            seqs.len(),
            "video sequence numbers are continuous"
        );
    }
    let m = server.metrics().await;
    assert!(m["meridian_rtp_forwarded_total"] >= (sent_total as u64 * 3 * 99) / 100);
}
