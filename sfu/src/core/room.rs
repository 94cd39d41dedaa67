//! Rooms and the tracks published in them.

use std::collections::BTreeMap;
use std::time::Instant;

use str0m::media::{MediaKind, Mid};

use super::ids::{PeerId, RoomId, TrackId};
use super::redundancy::AudioRecent;
use super::simulcast::TrackLayers;
use super::speaker::SpeakerDetector;

#[derive(Debug)]
pub(crate) struct Track {
    pub id: TrackId,
    /// The publishing peer; `None` while orphaned (publisher lost, waiting
    /// for the same identity to come back within the reconnect grace).
    pub owner: Option<PeerId>,
    /// The last peer that published it (for events after it was orphaned).
    pub last_owner: PeerId,
    pub identity: String,
    pub kind: MediaKind,
    /// The publisher's m-line carrying it.
    pub mid: Mid,
    pub label: String,
    pub muted: bool,
    /// Bumped on unmute and on adoption by a reconnected publisher:
    /// forwarders re-anchor and wait for a keyframe.
    pub resume_epoch: u32,
    /// Bumped on adoption: distinguishes the old publisher's packets.
    pub source_epoch: u64,
    /// Active outgoing streams: (subscriber, its m-line).
    pub subscribers: Vec<(PeerId, Mid)>,
    pub orphaned_until: Option<Instant>,
    /// Its simulcast layers (one without simulcast), each with its rate,
    /// size, packet history (for NACKs) and keyframe-request throttle.
    pub layers: TrackLayers,
    /// The last packets of an audio track, for RED (created on the first).
    pub audio: Option<AudioRecent>,
}

#[derive(Debug)]
pub(crate) struct Room {
    pub id: RoomId,
    /// In join order.
    pub peers: Vec<PeerId>,
    pub tracks: BTreeMap<TrackId, Track>,
    /// Audio levels of its audio tracks, ranked.
    pub speakers: SpeakerDetector<TrackId>,
    /// The audio track of the dominant speaker.
    pub dominant: Option<TrackId>,
}

impl Room {
    pub fn new(id: RoomId) -> Self {
        Room {
            id,
            peers: Vec::new(),
            tracks: BTreeMap::new(),
            speakers: SpeakerDetector::new(Default::default()),
            dominant: None,
        }
    }

    /// An orphaned track of `identity` with `kind` that a reconnecting
    /// publisher can take over, so subscribers keep their stream.
    pub fn orphan_for(&self, identity: &str, kind: MediaKind) -> Option<TrackId> {
        self.tracks
            .values()
            .find(|t| t.owner.is_none() && t.identity == identity && t.kind == kind)
            .map(|t| t.id)
    }

    pub fn remove_subscriber(&mut self, peer: PeerId, mid: Mid) {
        for t in self.tracks.values_mut() {
            t.subscribers.retain(|s| *s != (peer, mid));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty() && self.tracks.is_empty()
    }
}
