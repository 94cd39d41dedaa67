//! Room semantics over real UDP: explicit subscribe/unsubscribe per track,
//! mute/unmute, participant and track events, and leaving.

mod common;

use std::time::Duration;

use common::{publish_sample, sample, Server};
use meridian_client::{Client, ClientConfig, ClientEvent, ClientMsg, MediaKind, ServerMsg};

/// Collects events for `d`, returning RTP counts by kind and signals seen.
async fn collect(c: &mut Client, d: Duration) -> (usize, usize, Vec<ServerMsg>) {
    let (mut audio, mut video, mut sigs) = (0, 0, Vec::new());
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, c.next_event()).await {
        match ev {
            ClientEvent::Rtp(p) if p.kind == Some(MediaKind::Audio) => audio += 1,
            ClientEvent::Rtp(_) => video += 1,
            ClientEvent::Signal(s) => sigs.push(s),
            ClientEvent::Closed(why) => panic!("closed: {why}"),
            _ => {}
        }
    }
    (audio, video, sigs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_unsubscribe_mute_and_leave() {
    let server = Server::start(&[]).await;
    let base = server.base();
    let mut cfg = ClientConfig::new(&base, "subs", "viewer");
    cfg.auto_subscribe = false;
    let mut viewer = Client::connect(cfg).await.expect("viewer joins");
    viewer
        .wait_connected(Duration::from_secs(10))
        .await
        .unwrap();

    let publisher = Client::connect(ClientConfig::new(&base, "subs", "cam").publish(true, true))
        .await
        .expect("publisher joins");
    let pub_id = publisher.peer_id.clone().unwrap();
    let sender = publisher.sender();
    let streaming = tokio::spawn(async move {
        let s = sample();
        loop {
            publish_sample(sender.clone(), &s).await;
        }
    });

    // Without auto-subscribe the viewer hears of the tracks but gets no media.
    let (a, v, sigs) = collect(&mut viewer, Duration::from_secs(2)).await;
    assert_eq!((a, v), (0, 0), "nothing arrives before subscribing");
    assert!(sigs.iter().any(|s| matches!(s, ServerMsg::ParticipantJoined { participant } if participant.peer_id == pub_id)));
    let tracks: Vec<(String, String)> = sigs
        .iter()
        .filter_map(|s| match s {
            ServerMsg::TrackPublished { track, .. } => {
                Some((track.kind.clone(), track.track_id.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(tracks.len(), 2, "{sigs:?}");
    let video = tracks.iter().find(|(k, _)| k == "video").unwrap().1.clone();
    let audio = tracks.iter().find(|(k, _)| k == "audio").unwrap().1.clone();

    // Video only.
    viewer
        .sender()
        .signal(ClientMsg::Subscribe {
            track_ids: vec![video.clone()],
        })
        .await
        .unwrap();
    let (a, v, _) = collect(&mut viewer, Duration::from_secs(3)).await;
    assert_eq!(a, 0, "audio was not subscribed");
    assert!(v > 50, "video flows after subscribing: {v}");

    // Audio too, then drop video.
    viewer
        .sender()
        .signal(ClientMsg::Subscribe {
            track_ids: vec![audio.clone()],
        })
        .await
        .unwrap();
    viewer
        .sender()
        .signal(ClientMsg::Unsubscribe {
            track_ids: vec![video.clone()],
        })
        .await
        .unwrap();
    let _ = collect(&mut viewer, Duration::from_secs(1)).await;
    let (a, v, _) = collect(&mut viewer, Duration::from_secs(2)).await;
    assert!(a > 50, "audio flows: {a}");
    assert_eq!(v, 0, "video stopped after unsubscribing");

    // Mute the audio: the viewer is told and the packets stop; unmute resumes.
    publisher
        .sender()
        .signal(ClientMsg::Mute {
            track_id: Some(audio.clone()),
            mid: None,
            muted: true,
        })
        .await
        .unwrap();
    let (_, _, sigs) = collect(&mut viewer, Duration::from_millis(500)).await;
    assert!(
        sigs.iter()
            .any(|s| matches!(s, ServerMsg::TrackMuted { muted: true, .. })),
        "{sigs:?}"
    );
    let (a, _, _) = collect(&mut viewer, Duration::from_secs(1)).await;
    assert_eq!(a, 0, "muted audio is not forwarded");
    publisher
        .sender()
        .signal(ClientMsg::Mute {
            track_id: Some(audio.clone()),
            mid: None,
            muted: false,
        })
        .await
        .unwrap();
    let (a, _, _) = collect(&mut viewer, Duration::from_secs(1)).await;
    assert!(a > 20, "unmuted audio flows again: {a}");

    // Muting someone else's track is refused.
    viewer
        .sender()
        .signal(ClientMsg::Mute {
            track_id: Some(audio.clone()),
            mid: None,
            muted: true,
        })
        .await
        .unwrap();
    let (_, _, sigs) = collect(&mut viewer, Duration::from_millis(500)).await;
    assert!(
        sigs.iter().any(|s| matches!(
            s,
            ServerMsg::Error {
                code: meridian_signaling::protocol::ErrorCode::Forbidden,
                ..
            }
        )),
        "{sigs:?}"
    );

    // The publisher leaves: tracks unpublished, participant left.
    streaming.abort();
    publisher.close(&base).await.unwrap();
    let (_, _, sigs) = collect(&mut viewer, Duration::from_secs(2)).await;
    assert!(
        sigs.iter().any(
            |s| matches!(s, ServerMsg::TrackUnpublished { track_id, .. } if *track_id == audio)
        ),
        "{sigs:?}"
    );
    assert!(
        sigs.iter()
            .any(|s| matches!(s, ServerMsg::ParticipantLeft { peer_id } if *peer_id == pub_id)),
        "{sigs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_reaches_the_others() {
    let server = Server::start(&[]).await;
    let mut a = Client::connect(ClientConfig::new(server.base(), "chat", "ann"))
        .await
        .unwrap();
    let mut b = Client::connect(ClientConfig::new(server.base(), "chat", "bob"))
        .await
        .unwrap();
    a.wait_connected(Duration::from_secs(10)).await.unwrap();
    b.wait_connected(Duration::from_secs(10)).await.unwrap();
    // The data channel opens right after DTLS; retry until it carries.
    for _ in 0..20 {
        a.sender().chat("hello bob").await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, b.next_event()).await {
            if let ClientEvent::Chat(text) = ev {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["name"], "ann");
                assert!(v["identity"].as_str().is_some_and(|i| i.starts_with("ann")));
                assert_eq!(v["data"], "hello bob");
                assert_eq!(v["from"].as_str(), a.peer_id.as_deref());
                return;
            }
        }
    }
    panic!("chat message never arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_floods_are_rate_limited_and_counted() {
    let server = Server::start(&[]).await;
    let mut a = Client::connect(ClientConfig::new(server.base(), "flood", "ann"))
        .await
        .unwrap();
    let mut b = Client::connect(ClientConfig::new(server.base(), "flood", "bob"))
        .await
        .unwrap();
    a.wait_connected(Duration::from_secs(10)).await.unwrap();
    b.wait_connected(Duration::from_secs(10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..100 {
        a.sender().chat(format!("spam {i}")).await.unwrap();
    }
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, b.next_event()).await {
        if let ClientEvent::Chat(_) = ev {
            got += 1;
        }
    }
    assert!(
        (15..=40).contains(&got),
        "a burst of about 20 passes, the rest is dropped: {got}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let m = server.metrics().await;
    assert!(
        m["meridian_dropped_total{reason=\"chat_rate_limited\"}"] >= 50,
        "{m:?}"
    );
}
