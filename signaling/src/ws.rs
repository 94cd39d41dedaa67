//! One WebSocket signaling session: JSON in, commands to the media worker,
//! peer events back out as JSON.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use meridian_sfu::core::{
    CommandError, JoinKind, JoinRequest, MuteTarget, PeerId, RoomId, TrackId, TrackPrefs,
};
use meridian_sfu::io::{Command, PeerEvent, PEER_EVENT_QUEUE};
use str0m::media::Mid;
use tokio::sync::mpsc;
use tracing::{debug, info_span, Instrument};

use crate::protocol::{parse_client, ClientMsg, ErrorCode, ParticipantJson, ServerMsg};
use crate::ratelimit::BAD_INPUT;
use crate::server::Shared;

/// Largest accepted WebSocket message. SDP offers with many m-lines run to
/// tens of kilobytes; anything much larger is not signaling.
const MAX_WS_MESSAGE: usize = 256 * 1024;

/// Read buffer per WebSocket session. tungstenite's default (128 KiB) was
/// the largest part of a subscriber's memory; signaling messages are small
/// and a larger one is simply read in several chunks.
const WS_READ_BUFFER: usize = 8 * 1024;

/// Outgoing messages are gathered up to this many bytes before a write; the
/// session flushes after each burst (`EVENT_BURST`), so nothing waits. With
/// a write per message (tungstenite's `write_buffer_size(0)`), a join storm
/// of 100 subscribers cost ≈ 5,000 TCP sends for the roster changes alone,
/// a fifth of the server's CPU while they joined.
const WS_WRITE_BUFFER: usize = 8 * 1024;

/// The most node events written to a WebSocket with one flush.
const EVENT_BURST: usize = 64;

/// Messages a session may send in a burst, and per second after that. A
/// browser sends a handful per negotiation; this bounds what one socket can
/// make the media worker do.
const RATE_BURST: f64 = 50.0;
const RATE_PER_SECOND: f64 = 20.0;

/// A socket that has not joined by then is closed: unauthenticated
/// connections must not linger.
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Longest room name / display name accepted.
const MAX_NAME: usize = 128;

pub(crate) async fn ws_handler(
    ws: WebSocketUpgrade,
    State(state): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let token = q.get("token").cloned();
    ws.max_message_size(MAX_WS_MESSAGE)
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .on_upgrade(move |socket| Session::new(state, token).run(socket))
}

/// A token bucket of messages.
struct RateLimit {
    tokens: f64,
    last: std::time::Instant,
}

impl RateLimit {
    fn new() -> Self {
        RateLimit {
            tokens: RATE_BURST,
            last: std::time::Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = std::time::Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * RATE_PER_SECOND).min(RATE_BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Session {
    state: Shared,
    rate: RateLimit,
    token: Option<String>,
    peer: Option<PeerId>,
    /// Handed to the media worker at join; the session keeps no copy, so
    /// `events_rx` ends when the worker drops the peer (even silently).
    events_tx: Option<mpsc::Sender<PeerEvent>>,
    events_rx: mpsc::Receiver<PeerEvent>,
}

/// What handling one client message asks the loop to do.
enum Step {
    Reply(Vec<ServerMsg>),
    Close(Vec<ServerMsg>),
}

fn command_error(e: CommandError) -> ServerMsg {
    let code = match &e {
        CommandError::BadSdp(_) => ErrorCode::BadSdp,
        CommandError::RoomFull(_) => ErrorCode::RoomFull,
        CommandError::Forbidden(_) => ErrorCode::Forbidden,
        CommandError::UnknownTrack(_) | CommandError::NoPendingOffer(_) => ErrorCode::BadMessage,
        _ => ErrorCode::Internal,
    };
    if code == ErrorCode::BadSdp {
        BAD_INPUT.record("bad_sdp", &e);
    }
    ServerMsg::error(code, e.to_string())
}

impl Session {
    fn new(state: Shared, token: Option<String>) -> Self {
        let (events_tx, events_rx) = mpsc::channel(PEER_EVENT_QUEUE);
        Session {
            state,
            rate: RateLimit::new(),
            token,
            peer: None,
            events_tx: Some(events_tx),
            events_rx,
        }
    }

    async fn run(mut self, socket: WebSocket) {
        let (mut sink, mut stream) = socket.split();
        let mut shutdown = self.state.shutdown.clone();
        let span = info_span!("ws", peer = tracing::field::Empty);
        let join_deadline = tokio::time::sleep(JOIN_TIMEOUT);
        tokio::pin!(join_deadline);
        async {
            loop {
                let waiting_to_join = self.peer.is_none() && self.events_tx.is_some();
                let step = tokio::select! {
                    _ = &mut join_deadline, if waiting_to_join => Step::Close(vec![ServerMsg::error(
                        ErrorCode::NotJoined,
                        "no join within 30 s; closing",
                    )]),
                    msg = stream.next() => match msg {
                        Some(Ok(Message::Text(t))) => self.handle_text(t.as_str()).await,
                        Some(Ok(Message::Binary(_))) => {
                            BAD_INPUT.record("bad_message", &"binary WebSocket frame");
                            Step::Reply(vec![ServerMsg::error(ErrorCode::BadMessage, "send JSON text frames, not binary")])
                        }
                        Some(Ok(Message::Close(_))) | None => break,
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => {
                            debug!(error = %e, "WebSocket error");
                            break;
                        }
                    },
                    ev = self.events_rx.recv() => match ev {
                        Some(ev) => self.node_events(ev),
                        None => break,
                    },
                    _ = shutdown.changed() => Step::Close(vec![ServerMsg::ServerShutdown { reason: "server is stopping".into() }]),
                };
                let (msgs, close) = match step {
                    Step::Reply(m) => (m, false),
                    Step::Close(m) => (m, true),
                };
                // Queued, then written with one flush: a burst (the roster
                // changes of a join storm) leaves in one TCP send, not one
                // per message.
                for m in msgs {
                    let Ok(text) = serde_json::to_string(&m) else { continue };
                    if sink.feed(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                if close {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        }
        .instrument(span)
        .await;
        if let Some(peer) = self.peer.take() {
            let _ = self.state.node.send(Command::Leave { peer }).await;
        }
    }

    /// `first` and the node's events already queued behind it (up to
    /// `EVENT_BURST`), as one step.
    fn node_events(&mut self, first: PeerEvent) -> Step {
        let mut msgs = Vec::new();
        let mut next = Some(first);
        while let Some(ev) = next.take() {
            match ev {
                PeerEvent::Signal(s) => msgs.push(s.into()),
                PeerEvent::Gone { reason } => {
                    self.peer = None;
                    msgs.push(ServerMsg::error(
                        ErrorCode::Internal,
                        format!("your session ended: {reason}"),
                    ));
                    return Step::Close(msgs);
                }
            }
            if msgs.len() < EVENT_BURST {
                next = self.events_rx.try_recv().ok();
            }
        }
        Step::Reply(msgs)
    }

    async fn handle_text(&mut self, text: &str) -> Step {
        if !self.rate.allow() {
            BAD_INPUT.record("rate_limited", &"signaling messages too fast");
            return Step::Reply(vec![ServerMsg::error(
                ErrorCode::RateLimited,
                format!("more than {RATE_PER_SECOND} messages per second; slow down"),
            )]);
        }
        let msg = match parse_client(text) {
            Ok(m) => m,
            Err(e) => {
                BAD_INPUT.record("bad_message", &text.chars().take(80).collect::<String>());
                return Step::Reply(vec![e]);
            }
        };
        if let ClientMsg::Join {
            room,
            name,
            auto_subscribe,
        } = msg
        {
            return self.join(room, name, auto_subscribe).await;
        }
        if matches!(msg, ClientMsg::Ping) {
            return Step::Reply(vec![ServerMsg::Pong]);
        }
        let Some(peer) = self.peer else {
            return Step::Reply(vec![ServerMsg::error(
                ErrorCode::NotJoined,
                "send \"join\" first",
            )]);
        };
        let node = &self.state.node;
        let result = match msg {
            ClientMsg::Offer { sdp, seq } => node
                .call(|reply| Command::Offer { peer, sdp, reply })
                .await
                .map(|sdp| {
                    vec![ServerMsg::Answer {
                        sdp,
                        seq: seq.unwrap_or(0),
                    }]
                }),
            ClientMsg::Answer { sdp, seq } => node
                .call(|reply| Command::Answer {
                    peer,
                    sdp,
                    seq,
                    reply,
                })
                .await
                .map(|_| vec![]),
            // ICE-lite: the client's addresses are learned from its STUN checks.
            ClientMsg::Candidate { .. } => Ok(vec![]),
            ClientMsg::TrackInfo { mid, label } => {
                let label: String = label.chars().take(MAX_NAME).collect();
                node.call(|reply| Command::Label {
                    peer,
                    mid,
                    label,
                    reply,
                })
                .await
                .map(|_| vec![])
            }
            ClientMsg::Mute {
                track_id,
                mid,
                muted,
            } => {
                let target = match (track_id.as_deref().and_then(TrackId::parse), mid) {
                    (Some(t), _) => MuteTarget::Track(t),
                    (None, Some(m)) => MuteTarget::Mid(Mid::from(m.as_str())),
                    (None, None) => {
                        return Step::Reply(vec![ServerMsg::error(
                            ErrorCode::BadMessage,
                            "mute needs a valid \"track_id\" or a \"mid\"",
                        )])
                    }
                };
                node.call(|reply| Command::Mute {
                    peer,
                    target,
                    muted,
                    reply,
                })
                .await
                .map(|_| vec![])
            }
            ClientMsg::Subscribe { track_ids } | ClientMsg::Unsubscribe { track_ids }
                if track_ids.iter().any(|t| TrackId::parse(t).is_none()) =>
            {
                return Step::Reply(vec![ServerMsg::error(
                    ErrorCode::BadMessage,
                    "track ids look like \"t12\"",
                )]);
            }
            ClientMsg::Subscribe { track_ids } => {
                let tracks = track_ids.iter().filter_map(|t| TrackId::parse(t)).collect();
                node.call(|reply| Command::Subscribe {
                    peer,
                    tracks,
                    on: true,
                    reply,
                })
                .await
                .map(|_| vec![])
            }
            ClientMsg::Unsubscribe { track_ids } => {
                let tracks = track_ids.iter().filter_map(|t| TrackId::parse(t)).collect();
                node.call(|reply| Command::Subscribe {
                    peer,
                    tracks,
                    on: false,
                    reply,
                })
                .await
                .map(|_| vec![])
            }
            ClientMsg::TrackSettings {
                track_id,
                width,
                height,
                disabled,
            } => {
                let Some(track) = TrackId::parse(&track_id) else {
                    return Step::Reply(vec![ServerMsg::error(
                        ErrorCode::BadMessage,
                        "track ids look like \"t12\"",
                    )]);
                };
                let max_size = match (width, height) {
                    (Some(w), Some(h)) if w > 0 && h > 0 => Some((w, h)),
                    (None, None) => None,
                    _ => {
                        return Step::Reply(vec![ServerMsg::error(
                            ErrorCode::BadMessage,
                            "track_settings needs both \"width\" and \"height\" (> 0), or neither",
                        )])
                    }
                };
                let prefs = TrackPrefs {
                    max_size,
                    disabled: disabled.unwrap_or(false),
                };
                node.call(|reply| Command::TrackPrefs {
                    peer,
                    track,
                    prefs,
                    reply,
                })
                .await
                .map(|_| vec![])
            }
            ClientMsg::Leave => {
                self.peer = None;
                let _ = node.send(Command::Leave { peer }).await;
                return Step::Close(vec![]);
            }
            ClientMsg::Join { .. } | ClientMsg::Ping => unreachable!("handled above"),
        };
        match result {
            Ok(msgs) => Step::Reply(msgs),
            Err(e) => Step::Reply(vec![command_error(e)]),
        }
    }

    async fn join(
        &mut self,
        room: String,
        name: Option<String>,
        auto_subscribe: Option<bool>,
    ) -> Step {
        if self.peer.is_some() {
            return Step::Reply(vec![ServerMsg::error(
                ErrorCode::AlreadyJoined,
                "this session has joined already",
            )]);
        }
        if self.state.shutting_down.load(Ordering::SeqCst) {
            return Step::Close(vec![ServerMsg::error(
                ErrorCode::ServerShutdown,
                "the server is stopping; try another node",
            )]);
        }
        if !crate::server::valid_room(&room) {
            return Step::Reply(vec![ServerMsg::error(
                ErrorCode::BadMessage,
                "room must be 1–128 characters, no '/' or control characters",
            )]);
        }
        let grants = match self.state.auth.verify(self.token.as_deref(), &room) {
            Ok(g) => g,
            Err(e) => {
                BAD_INPUT.record("unauthorized", &e);
                return Step::Close(vec![ServerMsg::error(
                    ErrorCode::Unauthorized,
                    e.to_string(),
                )]);
            }
        };
        let guest = self.state.next_guest.fetch_add(1, Ordering::Relaxed);
        let name: String = name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| format!("guest-{guest}"))
            .chars()
            .take(MAX_NAME)
            .collect();
        // Without tokens there is no identity to trust: each session gets its own.
        let identity = grants
            .identity
            .clone()
            .unwrap_or_else(|| format!("{name}#{guest}"));
        let req = JoinRequest {
            room: RoomId(room.clone()),
            identity: identity.clone(),
            name,
            kind: JoinKind::WebSocket,
            can_publish: grants.publish,
            can_subscribe: grants.subscribe,
            auto_subscribe: auto_subscribe.unwrap_or(true),
        };
        let Some(events) = self.events_tx.take() else {
            return Step::Close(vec![ServerMsg::error(
                ErrorCode::AlreadyJoined,
                "this session has joined before; open a new WebSocket",
            )]);
        };
        match self
            .state
            .node
            .call(|reply| Command::Join { req, events, reply })
            .await
        {
            Ok((peer, participants)) => {
                self.peer = Some(peer);
                tracing::Span::current().record("peer", tracing::field::display(peer));
                Step::Reply(vec![ServerMsg::Joined {
                    room,
                    peer_id: peer.to_string(),
                    identity,
                    participants: participants.iter().map(ParticipantJson::from).collect(),
                }])
            }
            Err(e) => Step::Reply(vec![command_error(e)]),
        }
    }
}
