//! Newtype ids for the entities of the media plane.

use std::fmt;

/// A peer connection (one str0m `Rtc`), unique within a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

/// A published track, unique within a node. Survives a publisher reconnect
/// when the same identity republishes the same kind (see `Room::adopt_track`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackId(pub u64);

/// A room, named by clients.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(pub String);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

impl fmt::Display for TrackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PeerId {
    /// Parses the `p<n>` form used on the wire.
    pub fn parse(s: &str) -> Option<PeerId> {
        s.strip_prefix('p')?.parse().ok().map(PeerId)
    }
}

impl TrackId {
    /// Parses the `t<n>` form used on the wire.
    pub fn parse(s: &str) -> Option<TrackId> {
        s.strip_prefix('t')?.parse().ok().map(TrackId)
    }
}
