//! Demultiplexing of the one shared UDP port onto peers.
//!
//! A datagram from a known 4-tuple goes straight to its peer. An unknown
//! source can only be a STUN binding request whose USERNAME names one of our
//! local ICE ufrags; once it is seen, the source address is learned. Entries
//! of peers that left or went silent are evicted, and the address table is
//! bounded so a flood of spoofed sources cannot grow it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::ice::StunMessage;

use super::ids::PeerId;

/// An address that sent nothing for this long is forgotten. Longer than
/// ICE consent freshness (30 s), so a live peer never loses its entry.
pub const ADDR_IDLE_TIMEOUT: Duration = Duration::from_secs(40);

/// Upper bound of learned addresses over all peers.
pub const MAX_ADDRS: usize = 65_536;

/// Addresses one peer may have. A peer normally has one or two (a candidate
/// pair, another after a network change); a client that knows its own ufrag
/// must not fill the table from many source ports. Its oldest is evicted.
pub const MAX_ADDRS_PER_PEER: usize = 4;

/// Why a datagram could not be routed to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemuxMiss {
    /// Unknown source, and not a STUN message.
    UnknownSource,
    /// A STUN message whose username names no peer.
    UnknownUfrag,
    /// A STUN-looking datagram that did not parse.
    BadStun,
}

#[derive(Debug)]
struct AddrEntry {
    peer: PeerId,
    last_seen: Instant,
}

#[derive(Debug, Default)]
pub struct Demux {
    by_ufrag: HashMap<String, PeerId, ahash::RandomState>,
    by_addr: HashMap<SocketAddr, AddrEntry, ahash::RandomState>,
}

/// True for the first byte of a STUN message (RFC 7983 demultiplexing).
fn looks_like_stun(buf: &[u8]) -> bool {
    matches!(buf.first(), Some(0..=3))
}

impl Demux {
    pub fn add_peer(&mut self, local_ufrag: &str, peer: PeerId) {
        self.by_ufrag.insert(local_ufrag.to_string(), peer);
    }

    pub fn remove_peer(&mut self, peer: PeerId) {
        self.by_ufrag.retain(|_, p| *p != peer);
        self.by_addr.retain(|_, e| e.peer != peer);
    }

    /// Routes a datagram. Learns the source address from a STUN request.
    pub fn route(
        &mut self,
        now: Instant,
        source: SocketAddr,
        buf: &[u8],
    ) -> Result<PeerId, DemuxMiss> {
        if let Some(e) = self.by_addr.get_mut(&source) {
            e.last_seen = now;
            // A STUN request from a known address may belong to another peer
            // (a client reusing its port across sessions): trust the ufrag.
            if !looks_like_stun(buf) {
                return Ok(e.peer);
            }
        }
        if !looks_like_stun(buf) {
            return Err(DemuxMiss::UnknownSource);
        }
        let msg = StunMessage::parse(buf).map_err(|_| DemuxMiss::BadStun)?;
        let (local, _remote) = msg.split_username().ok_or(DemuxMiss::BadStun)?;
        let peer = *self.by_ufrag.get(local).ok_or(DemuxMiss::UnknownUfrag)?;
        if !self.by_addr.contains_key(&source) {
            self.cap_peer(peer);
        }
        if self.by_addr.len() >= MAX_ADDRS && !self.by_addr.contains_key(&source) {
            self.evict_idle(now);
            if self.by_addr.len() >= MAX_ADDRS {
                // Still full of live entries: route this one without learning it.
                return Ok(peer);
            }
        }
        self.by_addr.insert(
            source,
            AddrEntry {
                peer,
                last_seen: now,
            },
        );
        Ok(peer)
    }

    /// Makes room for one more address of `peer`: drops its least recently
    /// seen one when it has `MAX_ADDRS_PER_PEER`. Linear in the peer's
    /// entries only through the scan; rare (a new address per peer).
    fn cap_peer(&mut self, peer: PeerId) {
        let mine: Vec<(SocketAddr, Instant)> = self
            .by_addr
            .iter()
            .filter(|(_, e)| e.peer == peer)
            .map(|(a, e)| (*a, e.last_seen))
            .collect();
        if mine.len() >= MAX_ADDRS_PER_PEER {
            if let Some((oldest, _)) = mine.iter().min_by_key(|(_, t)| *t) {
                self.by_addr.remove(oldest);
            }
        }
    }

    /// Forgets addresses idle for longer than `ADDR_IDLE_TIMEOUT`.
    pub fn evict_idle(&mut self, now: Instant) {
        self.by_addr
            .retain(|_, e| now.saturating_duration_since(e.last_seen) < ADDR_IDLE_TIMEOUT);
    }

    pub fn addr_count(&self) -> usize {
        self.by_addr.len()
    }

    pub fn ufrag_count(&self) -> usize {
        self.by_ufrag.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::ice::TransId;

    fn binding_request(local: &str, remote: &str) -> Vec<u8> {
        let username = format!("{local}:{remote}");
        let msg = StunMessage::binding_request(&username, TransId::new(), true, 1, 1, false);
        let mut buf = vec![0u8; 1500];
        // A dummy HMAC: the demux only reads USERNAME; str0m verifies integrity.
        let n = msg
            .to_bytes(Some(b"pass"), &mut buf, |_, _| [0u8; 20])
            .expect("serialize stun");
        buf.truncate(n);
        buf
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn learns_address_from_stun_then_routes_media() {
        let t0 = Instant::now();
        let mut d = Demux::default();
        d.add_peer("srvA", PeerId(1));
        d.add_peer("srvB", PeerId(2));
        assert_eq!(
            d.route(t0, addr(5000), &[0x80, 0, 0]),
            Err(DemuxMiss::UnknownSource)
        );
        let stun = binding_request("srvB", "cli");
        assert_eq!(d.route(t0, addr(5000), &stun), Ok(PeerId(2)));
        assert_eq!(d.route(t0, addr(5000), &[0x80, 0x60, 0, 1]), Ok(PeerId(2)));
        assert_eq!(
            d.route(t0, addr(5001), &binding_request("nobody", "cli")),
            Err(DemuxMiss::UnknownUfrag)
        );
        assert_eq!(
            d.route(t0, addr(5002), &[0, 1, 0, 4, 1]),
            Err(DemuxMiss::BadStun)
        );
    }

    #[test]
    fn evicts_peers_that_left_and_idle_addresses() {
        let t0 = Instant::now();
        let mut d = Demux::default();
        d.add_peer("a", PeerId(1));
        d.add_peer("b", PeerId(2));
        d.route(t0, addr(1), &binding_request("a", "x")).unwrap();
        d.route(t0, addr(2), &binding_request("b", "x")).unwrap();
        assert_eq!(d.addr_count(), 2);
        d.remove_peer(PeerId(1));
        assert_eq!(d.addr_count(), 1);
        assert_eq!(d.ufrag_count(), 1);
        assert_eq!(
            d.route(t0, addr(1), &[0x80, 0]),
            Err(DemuxMiss::UnknownSource)
        );
        // Peer 2 goes silent.
        d.evict_idle(t0 + ADDR_IDLE_TIMEOUT + Duration::from_secs(1));
        assert_eq!(d.addr_count(), 0);
        assert_eq!(
            d.route(t0, addr(2), &[0x80, 0]),
            Err(DemuxMiss::UnknownSource)
        );
    }

    #[test]
    fn one_peer_cannot_fill_the_table() {
        let t0 = Instant::now();
        let mut d = Demux::default();
        d.add_peer("a", PeerId(1));
        d.add_peer("b", PeerId(2));
        d.route(t0, addr(1), &binding_request("b", "x")).unwrap();
        for port in 100..1100u16 {
            let now = t0 + Duration::from_millis(u64::from(port));
            d.route(now, addr(port), &binding_request("a", "x"))
                .unwrap();
        }
        assert_eq!(d.addr_count(), MAX_ADDRS_PER_PEER + 1);
        // The other peer keeps its address; the flooder keeps its newest.
        assert_eq!(d.route(t0, addr(1), &[0x80, 0]), Ok(PeerId(2)));
        assert_eq!(d.route(t0, addr(1099), &[0x80, 0]), Ok(PeerId(1)));
        assert_eq!(
            d.route(t0, addr(100), &[0x80, 0]),
            Err(DemuxMiss::UnknownSource)
        );
    }

    #[test]
    fn garbage_never_panics() {
        let t0 = Instant::now();
        let mut d = Demux::default();
        d.add_peer("a", PeerId(1));
        let mut seed = 1u64;
        for len in 0..300usize {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 56) as u8
                })
                .collect();
            let _ = d.route(t0, addr(9), &buf);
            let mut stunish = buf.clone();
            if let Some(b) = stunish.first_mut() {
                *b = 0;
            }
            let _ = d.route(t0, addr(9), &stunish);
        }
        // Truncated real STUN.
        let stun = binding_request("a", "x");
        for n in 0..stun.len() {
            let _ = d.route(t0, addr(10), &stun[..n]);
        }
    }
}
