//! H.264 and VP9 go through like VP8: the server recognises their keyframes
//! (subscribers start on one) and maps payload types per subscriber.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Server;
use meridian_client::{
    Client, ClientConfig, ClientEvent, MediaKind, OutRtp, ServerMsg, VideoCodec,
};

/// Synthetic frames: a keyframe every 30th, unique bytes in each.
fn payload(codec: VideoCodec, n: u32) -> Arc<[u8]> {
    let key = n.is_multiple_of(30);
    let mut p = match (codec, key) {
        // IDR slice / non-IDR slice NAL headers.
        (VideoCodec::H264, true) => vec![0x65, 0x88],
        (VideoCodec::H264, false) => vec![0x41, 0x9a],
        // VP9 descriptor: B (start of frame) set; P (predicted) clear on keyframes.
        (VideoCodec::Vp9, true) => vec![0x08, 0x00],
        (VideoCodec::Vp9, false) => vec![0x48, 0x00],
        (VideoCodec::Vp8, true) => vec![0x10, 0x00, 0x9d, 0x01, 0x2a],
        (VideoCodec::Vp8, false) => vec![0x10, 0x01],
    };
    p.extend_from_slice(&n.to_be_bytes());
    p.resize(300, 0xab);
    p.into()
}

async fn roundtrip(codec: VideoCodec) {
    let server = Server::start(&[]).await;
    let room = format!("codec-{codec:?}");
    let mut publisher = Client::connect(
        ClientConfig::new(server.base(), &room, "p")
            .publish(false, true)
            .video_codec(codec),
    )
    .await
    .unwrap();
    publisher
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();
    let mut sub = Client::connect(ClientConfig::new(server.base(), &room, "s"))
        .await
        .unwrap();
    // Wait for the subscription's renegotiation.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sub.next_event()).await {
            Ok(Some(ClientEvent::Signal(ServerMsg::TrackMap { tracks }))) if !tracks.is_empty() => {
                break
            }
            Ok(Some(_)) => {}
            other => panic!("no track map: {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sender = publisher.sender();
    tokio::spawn(async move {
        // Start mid-GOP: the first packets are not keyframes.
        for n in 10..160u32 {
            let pkt = OutRtp {
                kind: MediaKind::Video,
                timestamp: n * 3000,
                marker: true,
                payload: payload(codec, n),
            };
            if sender.send(pkt).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut got = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(2), sub.next_event()).await {
        if let ClientEvent::Rtp(p) = ev {
            got.push(p.payload);
        }
    }
    let first = got.first().expect("video arrives");
    assert_eq!(
        first,
        &payload(codec, 30),
        "{codec:?}: forwarding starts on the first keyframe sent"
    );
    let expected: Vec<Arc<[u8]>> = (30..160).map(|n| payload(codec, n)).collect();
    assert!(got.len() >= 128, "{codec:?}: {} of 130 arrived", got.len());
    assert!(
        got.iter().all(|p| expected.contains(p)),
        "{codec:?}: payloads unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_is_forwarded_from_a_keyframe() {
    roundtrip(VideoCodec::H264).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp9_is_forwarded_from_a_keyframe() {
    roundtrip(VideoCodec::Vp9).await;
}
