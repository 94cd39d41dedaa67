//! The WebSocket protocol's messages (docs/PROTOCOL.md), as serde types.

use meridian_sfu::core::{MediaKind, ParticipantInfo, PeerSignal, TrackInfo};
use serde::{Deserialize, Serialize};

/// Client → server.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    Join {
        room: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        auto_subscribe: Option<bool>,
    },
    Offer {
        sdp: String,
        #[serde(default)]
        seq: Option<u64>,
    },
    Answer {
        sdp: String,
        seq: u64,
    },
    Candidate {
        candidate: String,
        #[serde(default)]
        sdp_mid: Option<String>,
        #[serde(default)]
        sdp_m_line_index: Option<u32>,
    },
    TrackInfo {
        mid: String,
        label: String,
    },
    Mute {
        #[serde(default)]
        track_id: Option<String>,
        #[serde(default)]
        mid: Option<String>,
        muted: bool,
    },
    Subscribe {
        track_ids: Vec<String>,
    },
    Unsubscribe {
        track_ids: Vec<String>,
    },
    /// How the client shows a track it receives: the size of its tile (the
    /// server sends no larger layer than fills it), or hidden.
    TrackSettings {
        track_id: String,
        #[serde(default)]
        width: Option<u32>,
        #[serde(default)]
        height: Option<u32>,
        #[serde(default)]
        disabled: Option<bool>,
    },
    Leave,
    Ping,
}

/// The message types a client may send, for `unknown_type` errors.
pub const CLIENT_TYPES: &[&str] = &[
    "join",
    "offer",
    "answer",
    "candidate",
    "track_info",
    "mute",
    "subscribe",
    "unsubscribe",
    "track_settings",
    "leave",
    "ping",
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TrackJson {
    pub track_id: String,
    pub kind: String,
    pub muted: bool,
    pub label: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ParticipantJson {
    pub peer_id: String,
    pub identity: String,
    pub name: String,
    pub tracks: Vec<TrackJson>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerJson {
    pub rid: String,
    pub active: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpeakerJson {
    pub peer_id: String,
    /// 0–100.
    pub level: u8,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TrackMapJson {
    pub mid: String,
    pub track_id: String,
    pub peer_id: Option<String>,
}

/// Server → client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Joined {
        room: String,
        peer_id: String,
        identity: String,
        participants: Vec<ParticipantJson>,
    },
    Offer {
        sdp: String,
        seq: u64,
    },
    Answer {
        sdp: String,
        seq: u64,
    },
    ParticipantJoined {
        participant: ParticipantJson,
    },
    ParticipantLeft {
        peer_id: String,
    },
    TrackPublished {
        peer_id: String,
        track: TrackJson,
    },
    TrackUnpublished {
        peer_id: String,
        track_id: String,
    },
    TrackMuted {
        peer_id: String,
        track_id: String,
        muted: bool,
    },
    TrackMap {
        tracks: Vec<TrackMapJson>,
    },
    /// A track this client receives is paused for lack of bandwidth, or
    /// resumed.
    TrackPaused {
        track_id: String,
        paused: bool,
        reason: String,
    },
    /// To a publisher: send only the simulcast encodings marked active.
    Layers {
        track_id: String,
        mid: String,
        layers: Vec<LayerJson>,
    },
    /// The room's active speakers, loudest first, and the dominant one.
    Speakers {
        speakers: Vec<SpeakerJson>,
        dominant: Option<String>,
    },
    ServerShutdown {
        reason: String,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    Pong,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadMessage,
    UnknownType,
    BadSdp,
    NotJoined,
    AlreadyJoined,
    Unauthorized,
    Forbidden,
    RoomFull,
    RateLimited,
    ServerShutdown,
    Internal,
}

impl ServerMsg {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMsg::Error {
            code,
            message: message.into(),
        }
    }
}

pub fn kind_str(k: MediaKind) -> &'static str {
    match k {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
    }
}

impl From<&TrackInfo> for TrackJson {
    fn from(t: &TrackInfo) -> Self {
        TrackJson {
            track_id: t.track_id.to_string(),
            kind: kind_str(t.kind).into(),
            muted: t.muted,
            label: t.label.clone(),
        }
    }
}

impl From<&ParticipantInfo> for ParticipantJson {
    fn from(p: &ParticipantInfo) -> Self {
        ParticipantJson {
            peer_id: p.peer_id.to_string(),
            identity: p.identity.clone(),
            name: p.name.clone(),
            tracks: p.tracks.iter().map(TrackJson::from).collect(),
        }
    }
}

impl From<PeerSignal> for ServerMsg {
    fn from(s: PeerSignal) -> Self {
        match s {
            PeerSignal::Offer { sdp, seq } => ServerMsg::Offer { sdp, seq },
            PeerSignal::TrackMap(entries) => ServerMsg::TrackMap {
                tracks: entries
                    .into_iter()
                    .map(|e| TrackMapJson {
                        mid: e.mid,
                        track_id: e.track_id.to_string(),
                        peer_id: e.peer_id.map(|p| p.to_string()),
                    })
                    .collect(),
            },
            PeerSignal::ParticipantJoined(p) => ServerMsg::ParticipantJoined {
                participant: (&p).into(),
            },
            PeerSignal::ParticipantLeft(p) => ServerMsg::ParticipantLeft {
                peer_id: p.to_string(),
            },
            PeerSignal::TrackPublished { peer_id, track } => ServerMsg::TrackPublished {
                peer_id: peer_id.to_string(),
                track: (&track).into(),
            },
            PeerSignal::TrackUnpublished { peer_id, track_id } => ServerMsg::TrackUnpublished {
                peer_id: peer_id.to_string(),
                track_id: track_id.to_string(),
            },
            PeerSignal::TrackMuted {
                peer_id,
                track_id,
                muted,
            } => ServerMsg::TrackMuted {
                peer_id: peer_id.to_string(),
                track_id: track_id.to_string(),
                muted,
            },
            PeerSignal::TrackPaused { track_id, paused } => ServerMsg::TrackPaused {
                track_id: track_id.to_string(),
                paused,
                reason: "bandwidth".into(),
            },
            PeerSignal::PublisherLayers {
                track_id,
                mid,
                layers,
            } => ServerMsg::Layers {
                track_id: track_id.to_string(),
                mid,
                layers: layers
                    .into_iter()
                    .map(|(rid, active)| LayerJson { rid, active })
                    .collect(),
            },
            PeerSignal::Speakers { speakers, dominant } => ServerMsg::Speakers {
                speakers: speakers
                    .into_iter()
                    .map(|(p, level)| SpeakerJson {
                        peer_id: p.to_string(),
                        level,
                    })
                    .collect(),
                dominant: dominant.map(|p| p.to_string()),
            },
        }
    }
}

/// Parses a client message, telling malformed JSON from an unknown type.
pub fn parse_client(text: &str) -> Result<ClientMsg, ServerMsg> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ServerMsg::error(ErrorCode::BadMessage, format!("not valid JSON: {e}")))?;
    let Some(ty) = v.get("type").and_then(|t| t.as_str()) else {
        return Err(ServerMsg::error(
            ErrorCode::BadMessage,
            "expected a JSON object with a string \"type\" field",
        ));
    };
    if !CLIENT_TYPES.contains(&ty) {
        return Err(ServerMsg::error(
            ErrorCode::UnknownType,
            format!(
                "unknown message type {ty:?}; known: {}",
                CLIENT_TYPES.join(", ")
            ),
        ));
    }
    let ty = ty.to_string();
    serde_json::from_value(v)
        .map_err(|e| ServerMsg::error(ErrorCode::BadMessage, format!("bad {ty:?} message: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_classifies_errors() {
        assert_eq!(
            parse_client(r#"{"type":"join","room":"r","name":"a"}"#),
            Ok(ClientMsg::Join {
                room: "r".into(),
                name: Some("a".into()),
                auto_subscribe: None
            })
        );
        let code = |s: &str| match parse_client(s) {
            Err(ServerMsg::Error { code, .. }) => Some(code),
            _ => None,
        };
        assert_eq!(code("{not json"), Some(ErrorCode::BadMessage));
        assert_eq!(code("[1,2]"), Some(ErrorCode::BadMessage));
        assert_eq!(code(r#"{"type":"dance"}"#), Some(ErrorCode::UnknownType));
        assert_eq!(code(r#"{"type":"join"}"#), Some(ErrorCode::BadMessage));
        assert_eq!(
            code(r#"{"type":"answer","sdp":"x"}"#),
            Some(ErrorCode::BadMessage)
        );
    }

    #[test]
    fn server_messages_serialize_with_type_tag() {
        let s = serde_json::to_string(&ServerMsg::error(ErrorCode::BadSdp, "x")).unwrap();
        assert_eq!(s, r#"{"type":"error","code":"bad_sdp","message":"x"}"#);
        assert_eq!(
            serde_json::to_string(&ServerMsg::Pong).unwrap(),
            r#"{"type":"pong"}"#
        );
    }
}
