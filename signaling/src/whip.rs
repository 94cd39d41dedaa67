//! WHIP (RFC 9725) ingest and WHEP egress: one HTTP POST of an SDP offer,
//! answered with `201 Created`, the answer and a `Location` to DELETE.

use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use meridian_sfu::core::{CommandError, JoinKind, JoinRequest, RoomId};
use meridian_sfu::io::{Command, PeerEvent};
use tokio::sync::mpsc;

use crate::auth::AuthError;
use crate::ratelimit::BAD_INPUT;
use crate::server::{http_error, valid_room, HttpSession, Shared};

/// WHIP/WHEP offers above this size are refused.
const MAX_OFFER: usize = 128 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Whip,
    Whep,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn auth_error(e: AuthError) -> Response {
    BAD_INPUT.record("unauthorized", &e);
    match e {
        AuthError::WrongRoom { .. } | AuthError::NotGranted(_) => {
            http_error(StatusCode::FORBIDDEN, "forbidden", e)
        }
        _ => http_error(StatusCode::UNAUTHORIZED, "unauthorized", e),
    }
}

async fn post(
    state: Shared,
    dir: Dir,
    room: String,
    target: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if state.shutting_down.load(Ordering::SeqCst) {
        return http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_shutdown",
            "the server is stopping",
        );
    }
    if !valid_room(&room) {
        return http_error(
            StatusCode::BAD_REQUEST,
            "bad_room",
            "room must be 1–128 characters, no '/' or control characters",
        );
    }
    let grants = match state.auth.verify(bearer(&headers), &room) {
        Ok(g) => g,
        Err(e) => return auth_error(e),
    };
    match dir {
        Dir::Whip if !grants.publish => return auth_error(AuthError::NotGranted("publish")),
        Dir::Whep if !grants.subscribe => return auth_error(AuthError::NotGranted("subscribe")),
        _ => {}
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/sdp") {
        BAD_INPUT.record("bad_content_type", &content_type);
        return http_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the offer must be sent as Content-Type: application/sdp",
        );
    }
    if body.len() > MAX_OFFER {
        return http_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_sdp",
            "the offer is too large",
        );
    }
    let Ok(offer) = String::from_utf8(body.to_vec()) else {
        BAD_INPUT.record("bad_sdp", &"offer is not UTF-8");
        return http_error(
            StatusCode::BAD_REQUEST,
            "bad_sdp",
            "the offer is not UTF-8 text",
        );
    };
    let n = state.next_guest.fetch_add(1, Ordering::Relaxed);
    let prefix = if dir == Dir::Whip { "whip" } else { "whep" };
    let identity = grants.identity.unwrap_or_else(|| format!("{prefix}-{n}"));
    let req = JoinRequest {
        room: RoomId(room.clone()),
        identity: identity.clone(),
        name: identity.clone(),
        kind: match dir {
            Dir::Whip => JoinKind::Whip,
            Dir::Whep => JoinKind::Whep { target },
        },
        can_publish: dir == Dir::Whip,
        can_subscribe: dir == Dir::Whep,
        auto_subscribe: false,
    };
    let (events, mut gone) = mpsc::channel(1);
    let result = state
        .node
        .call(|reply| match dir {
            Dir::Whip => Command::Whip {
                req,
                offer,
                events,
                reply,
            },
            Dir::Whep => Command::Whep {
                req,
                offer,
                events,
                reply,
            },
        })
        .await;
    match result {
        Ok((peer, answer)) => {
            // Unguessable: the id in a Location must not name other sessions.
            let session = format!("s{:032x}", rand::random::<u128>());
            if let Ok(mut s) = state.sessions.lock() {
                s.insert(
                    session.clone(),
                    HttpSession {
                        room: room.clone(),
                        identity: identity.clone(),
                        peer,
                    },
                );
            }
            // Forget the resource when the peer ends on its own (ICE loss,
            // connect timeout, shutdown), not only on DELETE.
            let forget = (state.clone(), session.clone());
            tokio::spawn(async move {
                while let Some(ev) = gone.recv().await {
                    if let PeerEvent::Gone { .. } = ev {
                        break;
                    }
                }
                if let Ok(mut s) = forget.0.sessions.lock() {
                    s.remove(&forget.1);
                }
            });
            let location = format!("/{prefix}/{room}/{session}");
            (
                StatusCode::CREATED,
                [
                    (header::CONTENT_TYPE, "application/sdp".to_string()),
                    (header::LOCATION, location),
                ],
                answer,
            )
                .into_response()
        }
        Err(e @ CommandError::BadSdp(_)) => {
            BAD_INPUT.record("bad_sdp", &e);
            http_error(StatusCode::BAD_REQUEST, "bad_sdp", e)
        }
        Err(e @ CommandError::RoomFull(_)) => {
            http_error(StatusCode::SERVICE_UNAVAILABLE, "room_full", e)
        }
        Err(e) => http_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
}

pub(crate) async fn whip_post(
    State(state): State<Shared>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    post(state, Dir::Whip, room, None, headers, body).await
}

pub(crate) async fn whep_post(
    State(state): State<Shared>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    post(state, Dir::Whep, room, None, headers, body).await
}

pub(crate) async fn whep_post_identity(
    State(state): State<Shared>,
    Path((room, identity)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    post(state, Dir::Whep, room, Some(identity), headers, body).await
}

pub(crate) async fn session_delete(
    State(state): State<Shared>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let grants = match state.auth.verify(bearer(&headers), &room) {
        Ok(g) => g,
        Err(e) => return auth_error(e),
    };
    // Only the session's own room, and (with tokens) its own identity.
    let found = state.sessions.lock().ok().and_then(|mut s| {
        let ok = s.get(&session).is_some_and(|h| {
            h.room == room && grants.identity.as_ref().is_none_or(|i| *i == h.identity)
        });
        if ok {
            s.remove(&session)
        } else {
            None
        }
    });
    match found {
        Some(h) => {
            let _ = state.node.send(Command::Leave { peer: h.peer }).await;
            StatusCode::NO_CONTENT.into_response()
        }
        None => http_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no session {session:?} of yours in room {room:?}"),
        ),
    }
}

/// Trickle ICE and ICE restarts over PATCH are not supported: the server is
/// ICE-lite and its answer already holds its only candidate.
pub(crate) async fn patch_unsupported() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "POST, DELETE")],
        "trickle ICE is not needed: the answer carries the server's only candidate",
    )
        .into_response()
}
