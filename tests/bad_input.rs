//! Bad input never disturbs other peers: while a publisher streams to a
//! subscriber (token mode), hostile clients send malformed JSON, unknown
//! message types, garbage and hostile SDP, missing/expired/wrong-room
//! tokens, and random or truncated datagrams. Each gets a clear error (a
//! signaling error with a code, or an HTTP status with a JSON body) or is
//! dropped and counted; the subscriber keeps receiving media throughout.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{publish_sample, sample, Server};
use futures_util::{SinkExt, StreamExt};
use meridian_client::{Client, ClientConfig, ClientEvent};
use meridian_signaling::auth::{Auth, Claims};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "test-secret-0123456789";
const ROOM: &str = "guarded";

fn auth() -> Auth {
    Auth::new("meridian", Some(SECRET.into()))
}

fn token(room: &str, identity: &str, publish: bool, subscribe: bool) -> String {
    auth()
        .issue(room, identity, publish, subscribe, Duration::from_secs(600))
        .expect("token issues")
}

fn expired_token() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = Claims {
        iss: "meridian".into(),
        sub: "late".into(),
        room: ROOM.into(),
        publish: true,
        subscribe: true,
        exp: now - 3600,
        nbf: now - 7200,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(server: &Server, token: Option<&str>) -> Ws {
    let url = match token {
        Some(t) => format!("ws://{}/ws?token={t}", server.http),
        None => format!("ws://{}/ws", server.http),
    };
    tokio_tungstenite::connect_async(url)
        .await
        .expect("ws connects")
        .0
}

/// Sends raw text, returns the next JSON message (or None if the server closed).
async fn exchange(ws: &mut Ws, text: &str) -> Option<Value> {
    ws.send(Message::Text(text.into())).await.ok()?;
    next_json(ws).await
}

async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .ok()??
        {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

fn code(v: &Option<Value>) -> String {
    let v = v.as_ref().expect("a reply");
    assert_eq!(v["type"], "error", "expected an error, got {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "errors say what was wrong"
    );
    v["code"].as_str().unwrap().to_string()
}

/// Counts RTP the victim subscriber receives; checks it keeps rising.
struct Flow(Arc<AtomicU64>);

impl Flow {
    async fn still_flowing(&self, phase: &str) {
        let before = self.0.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(700)).await;
        let after = self.0.load(Ordering::Relaxed);
        assert!(
            after > before + 10,
            "media stalled after {phase}: {before} -> {after}"
        );
    }
}

async fn whip(
    server: &Server,
    room: &str,
    token: Option<&str>,
    ctype: &str,
    body: &str,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/whip/{room}", server.base()))
        .header("content-type", ctype)
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("http reachable");
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// An SDP that parses as text but is hostile: a thousand m-lines, no
/// fingerprint, absurd values.
fn hostile_sdp() -> String {
    let mut s = String::from("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE");
    for i in 0..1000 {
        s.push_str(&format!(" {i}"));
    }
    s.push_str("\r\n");
    for i in 0..1000 {
        s.push_str(&format!(
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:{i}\r\na=rtpmap:96 VP8/4294967295\r\na=ice-ufrag:x\r\na=ice-pwd:y\r\na=sendonly\r\n"
        ));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_disturbs_no_one() {
    let server = Server::start(&[("MERIDIAN_API_SECRET", SECRET)]).await;
    let base = server.base();

    // The victims: a publisher streaming the sample in a loop, one subscriber.
    let publisher = Client::connect(
        ClientConfig::new(&base, ROOM, "pub")
            .publish(true, true)
            .token(Some(token(ROOM, "pub", true, false))),
    )
    .await
    .expect("publisher joins");
    let mut sub = Client::connect(
        ClientConfig::new(&base, ROOM, "sub").token(Some(token(ROOM, "sub", false, true))),
    )
    .await
    .expect("subscriber joins");
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        while let Some(ev) = sub.next_event().await {
            if let ClientEvent::Rtp(_) = ev {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let sender = publisher.sender();
    tokio::spawn(async move {
        let s = sample();
        loop {
            publish_sample(sender.clone(), &s).await;
        }
    });
    let flow = Flow(received);
    // Wait for media to start (renegotiation + first keyframe).
    for _ in 0..100 {
        if flow.0.load(Ordering::Relaxed) > 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    flow.still_flowing("start").await;

    // --- WebSocket tokens.
    let mut c = ws(&server, None).await;
    assert_eq!(
        code(&exchange(&mut c, r#"{"type":"join","room":"guarded"}"#).await),
        "unauthorized"
    );
    let mut c = ws(&server, Some(&expired_token())).await;
    let reply = exchange(&mut c, r#"{"type":"join","room":"guarded"}"#).await;
    assert_eq!(code(&reply), "unauthorized");
    assert!(reply.unwrap()["message"]
        .as_str()
        .unwrap()
        .contains("expired"));
    let mut c = ws(&server, Some(&token("elsewhere", "x", true, true))).await;
    assert_eq!(
        code(&exchange(&mut c, r#"{"type":"join","room":"guarded"}"#).await),
        "unauthorized"
    );
    let mut c = ws(&server, Some("not.a.jwt")).await;
    assert_eq!(
        code(&exchange(&mut c, r#"{"type":"join","room":"guarded"}"#).await),
        "unauthorized"
    );
    flow.still_flowing("bad tokens").await;

    // --- Malformed messages and SDP from a properly joined client.
    let mut c = ws(&server, Some(&token(ROOM, "mallory", true, true))).await;
    assert_eq!(
        code(&exchange(&mut c, "{this is not json").await),
        "bad_message"
    );
    assert_eq!(code(&exchange(&mut c, "[1,2,3]").await), "bad_message");
    assert_eq!(
        code(&exchange(&mut c, r#"{"type":"offer","sdp":"x"}"#).await),
        "not_joined"
    );
    assert_eq!(
        code(&exchange(&mut c, r#"{"type":"teleport"}"#).await),
        "unknown_type"
    );
    let joined = exchange(
        &mut c,
        r#"{"type":"join","room":"guarded","name":"mallory"}"#,
    )
    .await
    .unwrap();
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(
        code(&exchange(&mut c, r#"{"type":"join","room":"guarded"}"#).await),
        "already_joined"
    );
    assert_eq!(
        code(&exchange(&mut c, r#"{"type":"offer","sdp":"garbage"}"#).await),
        "bad_sdp"
    );
    let hostile = serde_json::json!({"type": "offer", "sdp": hostile_sdp()}).to_string();
    let reply = exchange(&mut c, &hostile).await;
    assert_eq!(code(&reply), "bad_sdp", "a thousand m-lines are refused");
    assert_eq!(
        code(&exchange(&mut c, r#"{"type":"answer","sdp":"v=0","seq":99}"#).await),
        "bad_sdp"
    );
    assert_eq!(
        code(&exchange(&mut c, r#"{"type":"mute","muted":true}"#).await),
        "bad_message"
    );
    assert_eq!(
        code(&exchange(&mut c, r#"{"type":"subscribe","track_ids":["zzz"]}"#).await),
        "bad_message"
    );
    c.send(Message::Binary(vec![0u8; 64].into())).await.unwrap();
    assert_eq!(code(&next_json(&mut c).await), "bad_message");
    // The session is still usable after all that.
    let pong = exchange(&mut c, r#"{"type":"ping"}"#).await.unwrap();
    assert_eq!(pong["type"], "pong");
    flow.still_flowing("malformed signaling").await;

    // --- WHIP with bad tokens, types and SDP.
    let sdp = "application/sdp";
    let (s, b) = whip(&server, ROOM, None, sdp, "v=0").await;
    assert_eq!((s, b["error"].as_str()), (401, Some("unauthorized")));
    let (s, b) = whip(&server, ROOM, Some(&expired_token()), sdp, "v=0").await;
    assert_eq!((s, b["error"].as_str()), (401, Some("unauthorized")));
    let (s, _) = whip(
        &server,
        ROOM,
        Some(&token("elsewhere", "x", true, true)),
        sdp,
        "v=0",
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = whip(
        &server,
        ROOM,
        Some(&token(ROOM, "viewer", false, true)),
        sdp,
        "v=0",
    )
    .await;
    assert_eq!(s, 403, "a subscribe-only token cannot publish");
    let good = token(ROOM, "whipper", true, false);
    let (s, b) = whip(&server, ROOM, Some(&good), "text/plain", "v=0").await;
    assert_eq!(
        (s, b["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let (s, b) = whip(&server, ROOM, Some(&good), sdp, "complete garbage").await;
    assert_eq!((s, b["error"].as_str()), (400, Some("bad_sdp")));
    let (s, b) = whip(&server, ROOM, Some(&good), sdp, &hostile_sdp()).await;
    assert!(s == 400 || s == 413, "hostile SDP refused: {s}");
    assert_eq!(b["error"].as_str(), Some("bad_sdp"));
    // An encoded '/' would make a Location that can never be DELETEd.
    let (s, b) = whip(&server, "bad%2Froom", Some(&good), sdp, "v=0").await;
    assert_eq!((s, b["error"].as_str()), (400, Some("bad_room")));
    flow.still_flowing("bad WHIP").await;

    // --- A WHIP session can only be ended by its owner.
    let offer = common::audio_offer();
    let created = reqwest::Client::new()
        .post(format!("{}/whip/{ROOM}", server.base()))
        .header("content-type", "application/sdp")
        .bearer_auth(&good)
        .body(offer)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.len() > format!("/whip/{ROOM}/s").len() + 20,
        "unguessable id: {location}"
    );
    let delete = |t: String| {
        let url = format!("{}{location}", server.base());
        async move {
            reqwest::Client::new()
                .delete(url)
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        delete(token(ROOM, "mallory", true, true)).await,
        404,
        "not yours"
    );
    assert_eq!(
        delete(token("elsewhere", "whipper", true, true)).await,
        403,
        "wrong room"
    );
    assert_eq!(delete(good.clone()).await, 204, "the owner ends it");
    assert_eq!(delete(good.clone()).await, 404, "once");

    // --- A flood of messages from one socket is rate-limited, not served.
    let mut c = ws(&server, Some(&token(ROOM, "chatty", true, true))).await;
    for _ in 0..200 {
        c.send(Message::Text(r#"{"type":"ping"}"#.into()))
            .await
            .unwrap();
    }
    let mut limited = 0;
    for _ in 0..200 {
        let v = next_json(&mut c).await.expect("a reply per message");
        if v["type"] == "error" {
            assert_eq!(v["code"], "rate_limited");
            limited += 1;
        }
    }
    assert!(
        limited >= 100,
        "most of a 200-message burst is refused: {limited}"
    );
    flow.still_flowing("message flood").await;

    // --- Random and truncated datagrams on the media port.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..3000usize {
        let len = (rnd() % 1400) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        match i % 3 {
            // Looks like STUN (first byte 0/1), truncated.
            0 if !buf.is_empty() => buf[0] = 0,
            // Looks like RTP/RTCP (version 2), truncated.
            1 if buf.len() > 1 => buf[0] = 0x80,
            _ => {}
        }
        let _ = sock.send_to(&buf, server.udp);
        if i % 100 == 99 {
            // Paced so the kernel's socket buffer does not drop them first.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // A real STUN header cut short, and a bare RTP header.
    let _ = sock.send_to(
        &[0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42],
        server.udp,
    );
    let _ = sock.send_to(&[0x80, 0x60, 0x00, 0x01], server.udp);
    flow.still_flowing("garbage datagrams").await;

    // Stats are published once a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let m = server.metrics().await;
    let dropped: u64 = ["unknown_source", "bad_stun", "unparseable"]
        .iter()
        .map(|r| m[&format!("meridian_dropped_total{{reason=\"{r}\"}}")])
        .sum();
    assert!(
        dropped >= 2900,
        "garbage datagrams are dropped and counted: {dropped}"
    );
    assert!(
        m["meridian_bad_client_input_total"] >= 15,
        "bad signaling is counted: {m:?}"
    );
    assert_eq!(m["meridian_rooms"], 1);
}
