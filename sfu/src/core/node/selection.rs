//! Selective forwarding: which layer of each track every subscriber gets
//! (the allocator, on its bandwidth estimate and its tile sizes), which
//! layers publishers need to send at all (dynacast), and who is speaking.
//!
//! Runs every [`ALLOC_INTERVAL`] from the node's housekeeping: propose a
//! layer for every track of every subscriber, commit, then apply the
//! changes (forwarder targets, keyframe requests, pause notices, BWE
//! targets, publisher layer switches).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::media::{MediaKind, Mid};

use super::{Node, PeerSignal};
use crate::core::allocator::{Allocator, AllocatorConfig, Priority, Proposal, TrackDemand};
use crate::core::fec::{protection_rate, MAX_PROTECTION};
use crate::core::ids::{PeerId, RoomId, TrackId};
use crate::core::room::Track;

/// How often subscribers' layers are chosen.
pub(super) const ALLOC_INTERVAL: Duration = Duration::from_millis(200);

/// A layer nobody took for this long is paused at its publisher (it
/// resumes as soon as somebody needs it).
pub(super) const DYNACAST_PAUSE_AFTER: Duration = Duration::from_secs(3);

/// The bandwidth estimate a subscriber starts with, before its first
/// TWCC feedback: enough for a mid layer, not for everything.
pub(super) const INITIAL_ESTIMATE_BPS: u64 = 1_500_000;

/// How often a subscriber held below its wanted layers by the estimate is
/// probed for more.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Most per-track preferences a subscriber may set (one per visible tile).
pub(super) const MAX_TRACK_PREFS: usize = 256;

/// A subscriber's wishes for one track it receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackPrefs {
    /// The size of its tile: no layer larger than needed to fill it.
    pub max_size: Option<(u32, u32)>,
    /// Hidden: forward nothing.
    pub disabled: bool,
}

/// What a subscriber's allocation knows about its link.
#[derive(Debug)]
pub(crate) struct Selection {
    pub allocator: Allocator<(Mid, TrackId)>,
    /// The TWCC estimate from str0m's BWE (bits/s), once it gave one.
    pub twcc: Option<u64>,
    /// The REMB the client sent, for clients without TWCC feedback.
    pub remb: Option<u64>,
    pub prefs: BTreeMap<TrackId, TrackPrefs>,
    /// The desired rate last handed to the BWE (it probes towards it).
    pub desired: u64,
    /// While the estimate holds tracks below the layers they want, the
    /// desired rate is lowered to the estimate and raised again at this
    /// interval: each raise lets str0m probe.
    pub next_probe: Option<Instant>,
}

impl Default for Selection {
    fn default() -> Self {
        Selection {
            allocator: Allocator::new(AllocatorConfig::default()),
            twcc: None,
            remb: None,
            prefs: BTreeMap::new(),
            desired: 0,
            next_probe: None,
        }
    }
}

impl Selection {
    /// The estimate to allocate against: TWCC, else REMB, else the start
    /// value while TWCC is expected (`bwe`), else no limit.
    pub fn estimate(&self, bwe: bool) -> u64 {
        let start = if bwe { INITIAL_ESTIMATE_BPS } else { u64::MAX };
        self.twcc.or(self.remb).unwrap_or(start)
    }
}

fn priority(t: &Track, dominant_owner: Option<&str>) -> Priority {
    if t.kind == MediaKind::Audio {
        return Priority::Audio;
    }
    if t.label.contains("screen") {
        return Priority::Screen;
    }
    // The dominant speaker's camera: the audio track is the speaker.
    if dominant_owner == Some(t.identity.as_str()) {
        return Priority::Speaker;
    }
    Priority::Normal
}

/// One subscriber's allocation as it stands (for tests, logs, the admin API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectionState {
    /// The estimate allocated against (bits/s), and the TWCC one if any.
    pub estimate_bps: u64,
    pub twcc_bps: Option<u64>,
    /// Per video track it receives: (track, layer received, layer wanted,
    /// paused for bandwidth).
    pub video: Vec<(TrackId, Option<u8>, Option<u8>, bool)>,
}

impl Node {
    pub fn selection_state(&self, id: PeerId) -> Option<SelectionState> {
        let p = self.peers.get(&id)?;
        Some(SelectionState {
            estimate_bps: p.selection.estimate(self.config.bwe),
            twcc_bps: p.selection.twcc,
            video: p
                .outs
                .iter()
                .filter(|o| o.kind == MediaKind::Video)
                .filter_map(|o| {
                    let l = &o.fwd.layers;
                    Some((o.source?, l.current, l.target, o.starved))
                })
                .collect(),
        })
    }

    /// A subscriber's preferences for one track it receives.
    pub fn set_track_prefs(
        &mut self,
        id: PeerId,
        track: TrackId,
        prefs: TrackPrefs,
    ) -> Result<(), super::CommandError> {
        let peer = self
            .peers
            .get_mut(&id)
            .ok_or(super::CommandError::UnknownPeer(id))?;
        let exists = self
            .rooms
            .get(&peer.room)
            .is_some_and(|r| r.tracks.contains_key(&track));
        if !exists {
            return Err(super::CommandError::UnknownTrack(track));
        }
        let sel = &mut peer.selection;
        if !sel.prefs.contains_key(&track) && sel.prefs.len() >= MAX_TRACK_PREFS {
            return Err(super::CommandError::Forbidden("too many track preferences"));
        }
        sel.prefs.insert(track, prefs);
        // Apply at the next pass, soon.
        self.next_alloc = self.now;
        Ok(())
    }

    /// Chooses every subscriber's layers and applies the result.
    pub(super) fn allocate(&mut self) {
        let now = self.now;
        let mut demands: Vec<TrackDemand<(Mid, TrackId)>> = Vec::new();
        // Per track: the highest layer some subscriber takes.
        let mut needed: BTreeMap<(RoomId, TrackId), usize> = BTreeMap::new();
        let mut keyframes: Vec<(RoomId, TrackId, usize)> = Vec::new();
        let mut signals: Vec<(PeerId, PeerSignal)> = Vec::new();
        let mut layer_buf = Vec::new();
        for peer in self.peers.values_mut() {
            if peer.outs.is_empty() {
                continue;
            }
            let Some(room) = self.rooms.get_mut(&peer.room) else {
                continue;
            };
            let dominant_owner = room
                .dominant
                .and_then(|d| room.tracks.get(&d))
                .map(|t| t.identity.clone());
            demands.clear();
            for out in &peer.outs {
                let Some(t) = out.source.and_then(|s| room.tracks.get_mut(&s)) else {
                    continue;
                };
                // Without simulcast there is nothing to choose, and pausing
                // is the only lever: it is not pulled (a lossy link's
                // falling estimate would pause video that NACK and FEC
                // still deliver). Such a track counts against the budget
                // only through the measured rates of the others' choices.
                if t.kind == MediaKind::Video && !t.layers.is_simulcast() {
                    continue;
                }
                t.layers.offer(now, &mut layer_buf);
                let prefs = peer.selection.prefs.get(&t.id).copied().unwrap_or_default();
                demands.push(TrackDemand {
                    key: (out.mid, t.id),
                    priority: priority(t, dominant_owner.as_deref()),
                    layers: layer_buf.clone(),
                    max_size: prefs.max_size,
                    disabled: prefs.disabled,
                });
            }
            // FEC rides on the same link: leave room for what the loss
            // calls for, and cap FEC to what the media leaves over.
            let fec_on = peer
                .outs
                .iter()
                .any(|o| o.fec.as_ref().is_some_and(|f| f.active));
            let fec_rate = if fec_on {
                protection_rate(peer.loss.estimate(now), peer.rtt)
            } else {
                0.0
            };
            // FEC is the answer to loss, so it is not sized from the
            // loss-based estimate, which reads all loss as congestion (at
            // 30 % random loss it sits near 130 kbit/s): while the delay
            // detector sees no queue building, FEC may use the delay-based
            // estimate; media still gets no more than the full estimate.
            let estimate = peer.selection.estimate(self.config.bwe);
            let fec_estimate = match peer.rtc.bwe().delay_estimate() {
                Some((delay, false)) if fec_on && peer.selection.twcc.is_some() => {
                    estimate.max(delay.as_u64())
                }
                _ => estimate,
            };
            let sel = &mut peer.selection;
            let media_budget = ((fec_estimate as f64 / (1.0 + fec_rate)) as u64).min(estimate);
            let mut proposal = sel.allocator.propose(now, media_budget, &demands);
            if fec_rate > 0.0 {
                // FEC yields to media where it would pause a track.
                let starved = |p: &Proposal<(Mid, TrackId)>| {
                    p.allocations.iter().filter(|a| a.starved).count()
                };
                let full = sel.allocator.propose(now, estimate, &demands);
                if starved(&full) < starved(&proposal) {
                    proposal = full;
                }
            }
            sel.allocator.commit(now, &proposal);
            sel.allocator.retain_proposed(&proposal);
            if fec_on {
                let spare = (fec_estimate as f64 * 0.95 - proposal.used_bps as f64).max(0.0);
                let max_rate = spare / (proposal.used_bps.max(1) as f64);
                for f in peer.outs.iter_mut().filter_map(|o| o.fec.as_mut()) {
                    f.max_rate = max_rate.min(MAX_PROTECTION);
                }
            }
            for a in &proposal.allocations {
                let (mid, track) = a.key;
                let Some(out) = peer.outs.iter_mut().find(|o| o.mid == mid) else {
                    continue;
                };
                if out.kind == MediaKind::Video {
                    let target = a.layer.map(|l| l as u8);
                    if out.fwd.layers.target != target {
                        out.fwd.set_target(target);
                        if let Some(l) = out.fwd.layers.waiting_for() {
                            keyframes.push((room.id.clone(), track, l));
                        }
                    }
                    if a.starved != out.starved {
                        out.starved = a.starved;
                        signals.push((
                            peer.id,
                            PeerSignal::TrackPaused {
                                track_id: track,
                                paused: a.starved,
                            },
                        ));
                    }
                }
                if let Some(l) = a.layer {
                    let e = needed.entry((room.id.clone(), track)).or_insert(0);
                    *e = (*e).max(l);
                }
            }
            // Probe towards what the tracks would take, unconstrained. Each
            // raise of the desired rate can start a probe: follow the
            // measured rates' noise only when it moves by a quarter.
            let desired = proposal.desired_bps.max(INITIAL_ESTIMATE_BPS / 5);
            let moved = desired.abs_diff(sel.desired) > sel.desired / 4;
            let constrained = desired > estimate + estimate / 10;
            let reprobe = constrained && sel.next_probe.is_some_and(|t| now >= t);
            if self.config.bwe && (moved || reprobe) {
                if reprobe {
                    // Down to the estimate, then up again below: a raise.
                    peer.rtc
                        .bwe()
                        .set_bitrate(Bitrate::ZERO, Bitrate::bps(estimate));
                }
                sel.desired = desired;
                peer.rtc
                    .bwe()
                    .set_bitrate(Bitrate::ZERO, Bitrate::bps(desired));
            }
            if !constrained {
                sel.next_probe = None;
            } else if sel.next_probe.is_none_or(|t| now >= t) {
                sel.next_probe = Some(now + PROBE_INTERVAL);
            }
        }
        self.dynacast(now, &needed, &mut signals);
        for (room, track, layer) in keyframes {
            self.request_keyframe(&room, track, Some(layer));
        }
        for (to, s) in signals {
            self.signal(to, s);
        }
    }

    /// Pauses layers nobody has taken for a while at their publisher, and
    /// resumes the ones somebody needs. The lowest layer always runs.
    fn dynacast(
        &mut self,
        now: Instant,
        needed: &BTreeMap<(RoomId, TrackId), usize>,
        signals: &mut Vec<(PeerId, PeerSignal)>,
    ) {
        for room in self.rooms.values_mut() {
            for t in room.tracks.values_mut() {
                if t.kind != MediaKind::Video || !t.layers.is_simulcast() {
                    continue;
                }
                let Some(owner) = t.owner else { continue };
                let top = needed.get(&(room.id.clone(), t.id)).copied();
                let mut changed = false;
                for (i, l) in t.layers.iter_mut().enumerate() {
                    let wanted = i == 0 || top.is_some_and(|top| i <= top);
                    if wanted {
                        l.needed_at = Some(now);
                    }
                    let idle = l
                        .needed_at
                        .is_none_or(|at| now.saturating_duration_since(at) >= DYNACAST_PAUSE_AFTER);
                    // A layer never seen is not paused: it is not being
                    // sent, and pausing it would keep it from ever starting.
                    let pause = !wanted && idle && l.last_packet.is_some();
                    if pause != l.paused() {
                        l.set_paused(now, pause);
                        changed = true;
                    }
                }
                if changed {
                    let layers = t
                        .layers
                        .iter()
                        .filter_map(|l| l.rid.map(|r| (r.to_string(), !l.paused())))
                        .collect();
                    signals.push((
                        owner,
                        PeerSignal::PublisherLayers {
                            track_id: t.id,
                            mid: t.mid.to_string(),
                            layers,
                        },
                    ));
                }
            }
        }
    }

    /// Feeds audio levels to the room's speaker detector and tells the room
    /// when the ranking changes.
    pub(super) fn poll_speakers(&mut self) {
        let now = self.now;
        let mut signals = Vec::new();
        for room in self.rooms.values_mut() {
            let Some(ranking) = room.speakers.poll(now) else {
                continue;
            };
            room.dominant = room.speakers.dominant();
            let speakers: Vec<(PeerId, u8)> = ranking
                .iter()
                .filter_map(|s| {
                    let t = room.tracks.get(&s.key)?;
                    let level = (s.level.clamp(0.0, 1.0) * 100.0).round() as u8;
                    Some((t.owner.unwrap_or(t.last_owner), level))
                })
                .collect();
            let dominant = room
                .dominant
                .and_then(|d| room.tracks.get(&d))
                .map(|t| t.owner.unwrap_or(t.last_owner));
            for p in &room.peers {
                signals.push((
                    *p,
                    PeerSignal::Speakers {
                        speakers: speakers.clone(),
                        dominant,
                    },
                ));
            }
        }
        for (to, s) in signals {
            self.signal(to, s);
        }
    }
}
