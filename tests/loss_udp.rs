//! Over real UDP on 127.0.0.1, through the impairment proxy (`meridian
//! netsim`'s `Proxy`): one publisher sends real VP8 + Opus through `meridian
//! serve` to two subscribers; one of them reaches the server through 20 %
//! random loss each way and 60 ms RTT. After a warm-up pass (the node learns
//! that subscriber's loss from its NACKs and turns on RED and ULPFEC), two
//! more passes of the capture are measured: the lossy subscriber ends up
//! with ≥ 99.5 % of the packets, byte for byte (NACK/RTX, RED, ULPFEC), and
//! the clean one with all of them, plain. And the other direction: a
//! publisher behind the same link, its video recovered by NACK.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{
    impaired, matched, payload_counts, publish_sample, sample, wait_tracks, Sample, Server,
};
use meridian_client::{Client, ClientConfig, ClientEvent};

/// Appended to every payload of the two measured passes, to tell them from
/// the warm-up and each other (the SFU does not look past a payload's
/// first bytes).
const MARKS: [u8; 2] = [0xE2, 0x3C];

/// 20 % random loss and 30 ms each way (60 ms RTT).
const LOSSY: &str = "loss=20%,delay=30ms";

fn marked(s: &Sample, mark: u8) -> Sample {
    let mut m = s.clone();
    for stream in [&mut m.video, &mut m.audio] {
        for p in &mut stream.packets {
            let end = p.rtp.len() - p.padding_len;
            p.rtp.insert(end, mark);
        }
    }
    m
}

/// Counts the payloads `s` receives until it has had none for 4 s.
fn read_payloads(mut s: Client) -> tokio::task::JoinHandle<HashMap<Arc<[u8]>, usize>> {
    tokio::spawn(async move {
        let mut got: HashMap<Arc<[u8]>, usize> = HashMap::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(4), s.next_event()).await {
                Ok(Some(ClientEvent::Rtp(p))) => {
                    *got.entry(p.payload.clone()).or_insert(0) += 1;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        got
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_subscriber_gets_nearly_everything_and_the_clean_one_is_unaffected() {
    let server = Server::start(&[]).await;
    let proxy = impaired(&server, LOSSY, LOSSY, 20).await;

    let warmup = sample();
    let measured = MARKS.map(|m| marked(&warmup, m));
    let expected = payload_counts(&[
        &measured[0].video,
        &measured[0].audio,
        &measured[1].video,
        &measured[1].audio,
    ]);
    let warm = payload_counts(&[&warmup.video, &warmup.audio]);
    let total: usize = expected.values().sum();

    let mut publisher =
        Client::connect(ClientConfig::new(server.base(), "lossy", "pub").publish(true, true))
            .await
            .expect("publisher joins");
    publisher
        .wait_connected(Duration::from_secs(10))
        .await
        .expect("publisher connects");
    let mut subs = Vec::new();
    for (name, via) in [("clean", None), ("lossy", Some(proxy.local_addr()))] {
        let mut cfg = ClientConfig::new(server.base(), "lossy", name);
        if let Some(via) = via {
            cfg = cfg.udp_via(via);
        }
        let mut s = Client::connect(cfg).await.expect("subscriber joins");
        // Through 20 % loss each way ICE and DTLS take a few retries.
        s.wait_connected(Duration::from_secs(20))
            .await
            .expect("subscriber connects");
        wait_tracks(&mut s, 2).await;
        subs.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let readers: Vec<_> = subs.into_iter().map(read_payloads).collect();
    let sender = publisher.sender();
    publish_sample(sender.clone(), &warmup).await;
    for m in &measured {
        publish_sample(sender.clone(), m).await;
    }

    let mut ratios = Vec::new();
    for h in readers {
        let got = h.await.expect("reader task");
        let matched = matched(&expected, &got);
        let extra = got
            .keys()
            .filter(|p| !expected.contains_key(*p) && !warm.contains_key(*p))
            .count();
        assert_eq!(extra, 0, "only payloads that were sent, byte for byte");
        ratios.push(matched as f64 / total as f64);
    }
    let stats = proxy.stats();
    let m = server.metrics().await;
    eprintln!(
        "clean {:.2} %, lossy {:.2} % of {total}; proxy up {} down {}; resent {}, fec packets in metrics: {:?}",
        ratios[0] * 100.0,
        ratios[1] * 100.0,
        stats.up,
        stats.down,
        m.get("meridian_nack_total{outcome=\"resent\"}").copied().unwrap_or(0),
        m.get("meridian_fec_packets_total"),
    );
    assert!(
        stats.down.lost() > 0 && stats.up.lost() > 0,
        "the link lost packets"
    );
    assert_eq!(ratios[0], 1.0, "the clean subscriber gets everything");
    assert!(
        ratios[1] >= 0.995,
        "the lossy subscriber got {:.2} %",
        ratios[1] * 100.0
    );
    assert!(m["meridian_fec_packets_total"] > 0, "ULPFEC was used");
}

/// The other direction: a `meridian-client` publisher behind 20 % loss each
/// way and 60 ms RTT. The client measures its uplink's loss from the node's
/// transport feedback and protects what it sends (`Protection::Adaptive`:
/// Opus in RED with up to three earlier packets, VP8 with ULPFEC); the node
/// rebuilds from both and NACKs what is left, and the client answers every
/// NACK (str0m's default would stop resending above 15 % of the bytes). A
/// clean subscriber gets ≥ 99.5 % of the video and of the audio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_publishers_media_is_recovered() {
    let server = Server::start(&[]).await;
    let proxy = impaired(&server, LOSSY, LOSSY, 21).await;

    // A warm-up pass first (the subscriber starts at a keyframe the link may
    // have cut), then a marked pass is measured.
    let warmup = sample();
    let clip = marked(&warmup, MARKS[0]);
    let expected = payload_counts(&[&clip.video]);
    let total: usize = expected.values().sum();
    let expected_audio = payload_counts(&[&clip.audio]);
    let total_audio: usize = expected_audio.values().sum();
    let mut publisher = Client::connect(
        ClientConfig::new(server.base(), "uplink", "pub")
            .publish(true, true)
            .udp_via(proxy.local_addr()),
    )
    .await
    .expect("publisher joins");
    publisher
        .wait_connected(Duration::from_secs(20))
        .await
        .expect("publisher connects");
    let mut sub = Client::connect(ClientConfig::new(server.base(), "uplink", "sub"))
        .await
        .expect("subscriber joins");
    sub.wait_connected(Duration::from_secs(10))
        .await
        .expect("subscriber connects");
    wait_tracks(&mut sub, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let reader = read_payloads(sub);
    publish_sample(publisher.sender(), &warmup).await;
    publish_sample(publisher.sender(), &clip).await;
    // Media goes on after the measured pass, as it would: the loss of a
    // stream's very last packets shows to no receiver (no later packet
    // opens the gap). Without more media, about one run in four missed
    // exactly the clip's last frame (3 packets) — more often than 20 %
    // random loss explains; not found why.
    publish_sample(publisher.sender(), &marked(&warmup, MARKS[1])).await;
    let got = reader.await.expect("reader task");
    let audio = matched(&expected_audio, &got);
    let matched = matched(&expected, &got);
    let stats = proxy.stats();
    let m = server.metrics().await;
    let red = m.get("meridian_red_recovered_total").copied().unwrap_or(0);
    let fec = m
        .get("meridian_upstream_fec_recovered_total")
        .copied()
        .unwrap_or(0);
    eprintln!(
        "video {matched} of {total} ({:.2} %), audio {audio} of {total_audio} ({:.2} %); \
         proxy up {}; rebuilt by the node from RED {red}, from ULPFEC {fec}",
        matched as f64 * 100.0 / total as f64,
        audio as f64 * 100.0 / total_audio as f64,
        stats.up,
    );
    assert!(stats.up.lost() > 0, "the uplink lost packets");
    assert!(
        matched as f64 >= 0.995 * total as f64,
        "the subscriber got {matched} of {total} video packets"
    );
    assert!(
        audio as f64 >= 0.995 * total_audio as f64,
        "the subscriber got {audio} of {total_audio} audio packets"
    );
    assert!(red > 0, "the publisher sent RED and the node used it");
    assert!(fec > 0, "the publisher sent ULPFEC and the node used it");
}
