//! A join storm's roster changes reach every member, complete and in order.
//!
//! The server writes the node's events that are queued for one WebSocket
//! together (one flush per burst, not one TCP send per message); this checks
//! that nothing is lost, duplicated or reordered on that path, for joins and
//! for leaves, while 40 clients join and leave at once.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::Server;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const ROOM: &str = "storm";
const JOINERS: usize = 40;

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("the socket stays open")
            .expect("no WebSocket error");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).expect("JSON from the server");
        }
    }
}

async fn join(server: &Server, name: &str) -> (Ws, Value) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.http))
        .await
        .expect("ws connects");
    let join = serde_json::json!({"type": "join", "room": ROOM, "name": name});
    ws.send(Message::Text(join.to_string().into()))
        .await
        .expect("join is sent");
    let joined = next_json(&mut ws).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    (ws, joined)
}

fn peer_number(id: &Value) -> u64 {
    id.as_str()
        .and_then(|s| s.strip_prefix('p'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a peer id like p7, got {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_storm_reaches_every_member_complete_and_in_order() {
    let server = Server::start(&[]).await;
    let (mut observer, _) = join(&server, "observer").await;

    let joins = (0..JOINERS).map(|i| {
        let server = &server;
        async move { join(server, &format!("j{i}")).await }
    });
    let joiners = futures_util::future::join_all(joins).await;

    // Each joiner's roster holds the observer and everyone who joined before it.
    for (_, joined) in &joiners {
        let me = peer_number(&joined["peer_id"]);
        let roster = joined["participants"].as_array().expect("a roster");
        assert!(roster.iter().any(|p| p["name"] == "observer"), "{joined}");
        assert!(
            roster.iter().all(|p| peer_number(&p["peer_id"]) < me),
            "a roster lists only earlier peers: {joined}"
        );
    }

    // The observer hears of each joiner once, in the order they joined.
    let mut seen = Vec::new();
    while seen.len() < JOINERS {
        let m = next_json(&mut observer).await;
        if m["type"] == "participant_joined" {
            seen.push(m["participant"].clone());
        }
    }
    let numbers: Vec<u64> = seen.iter().map(|p| peer_number(&p["peer_id"])).collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "joins arrive in order: {numbers:?}"
    );
    let names: HashSet<_> = seen.iter().map(|p| p["name"].to_string()).collect();
    assert_eq!(names.len(), JOINERS, "each joiner once");

    // And of each leave, once.
    drop(joiners);
    let mut left = HashSet::new();
    while left.len() < JOINERS {
        let m = next_json(&mut observer).await;
        if m["type"] == "participant_left" {
            assert!(left.insert(m["peer_id"].to_string()), "a leave twice: {m}");
        }
    }
    assert_eq!(
        left,
        numbers.iter().map(|n| format!("\"p{n}\"")).collect(),
        "every joiner left"
    );
}
