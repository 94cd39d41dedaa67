//! Per-subscriber simulcast layer allocation.
//!
//! Given a subscriber's downlink bandwidth estimate, decides which simulcast
//! layer of each track it receives. The allocator is sans-IO and
//! deterministic: callers pass `now`.
//!
//! Allocation is two-phase: [`Allocator::propose`] computes targets for all
//! tracks of one subscriber without changing state, [`Allocator::commit`]
//! records a proposal (layers and up-switch hold timers). Between the two the
//! SFU may inspect all proposals (e.g. to decide which publisher layers anyone
//! needs).
//!
//! Algorithm:
//! - Tracks are ordered by [`Priority`], then key (then input position).
//! - The budget is `estimate * (1 - headroom)`.
//! - Audio always gets its bitrate (never paused for bandwidth) and counts
//!   against the budget.
//! - Phase A: in order, each video track gets its lowest active layer if that
//!   fits the remaining budget, else it is paused with `starved: true` once
//!   it has been short for `pause_hold` (until then it keeps its lowest
//!   layer, over budget: pausing blanks a video, and a young or CPU-starved
//!   estimate can dip for seconds on a link that carries it fine).
//! - Phase B: in order, each forwarded video track is raised as high as fits,
//!   capped at the smallest active layer covering its tile (`max_size`).
//! - Down-switches happen at once. Up-switches above the committed layer need
//!   `rate * (1 + up_margin)` to fit and this to have been true in every
//!   committed proposal for `up_hold`. The target is the highest layer that
//!   was reachable during the whole hold, so a step in the estimate moves
//!   0 → 2 directly, a ramp moves 0 → 1 → 2 (one hold per step).
//! - New tracks (no committed layer, or previously disabled / without active
//!   layers) start at the best layer that fits without margin or hold, to
//!   start quickly. Tracks paused for bandwidth (starved) resume at their
//!   lowest layer only through margin + hold, to avoid flapping.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::{Duration, Instant};

/// Allocation order: lower first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Audio: always allocated, never paused for bandwidth.
    Audio,
    /// Screen share.
    Screen,
    /// Camera of an active speaker.
    Speaker,
    /// Any other camera.
    Normal,
}

/// One encoding (simulcast layer) of a published track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layer {
    /// Measured rate of this layer at the publisher (0 if unknown yet).
    pub bitrate_bps: u64,
    /// Width in pixels (0 if unknown).
    pub width: u32,
    /// Height in pixels (0 if unknown).
    pub height: u32,
    /// The publisher is currently sending it.
    pub active: bool,
}

/// What a subscriber wants of one track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackDemand<K> {
    /// Track key, unique per subscriber.
    pub key: K,
    /// Allocation priority.
    pub priority: Priority,
    /// Layers lowest first. Audio: one layer (its bitrate). A non-simulcast
    /// video track: one layer.
    pub layers: Vec<Layer>,
    /// Largest size the subscriber displays it at (its video tile), None = no limit.
    pub max_size: Option<(u32, u32)>,
    /// The subscriber does not want it at all (e.g. hidden tile).
    pub disabled: bool,
}

/// The decision for one track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation<K> {
    /// Track key.
    pub key: K,
    /// Layer index to forward, None = paused (could not get its lowest
    /// layer, or disabled, or no active layer).
    pub layer: Option<usize>,
    /// Rate assumed for the chosen layer (measured, or the configured default).
    pub bitrate_bps: u64,
    /// Paused only for lack of bandwidth (the client is told; distinct from disabled).
    pub starved: bool,
}

/// Result of [`Allocator::propose`]; pass it to [`Allocator::commit`].
#[derive(Debug, Clone)]
pub struct Proposal<K> {
    /// One allocation per track, in the order the tracks were given.
    pub allocations: Vec<Allocation<K>>,
    /// Sum of the allocated bitrates.
    pub used_bps: u64,
    /// What all tracks at their best wanted layer would take (respecting
    /// `max_size`, active layers and `disabled`): feed to BWE "desired" for probing.
    pub desired_bps: u64,
    /// Up-switch bookkeeping for `commit`, in allocation (priority) order.
    holds: Vec<Hold<K>>,
}

#[derive(Debug, Clone, Copy)]
struct Hold<K> {
    key: K,
    /// Index into `tracks` / `allocations`.
    index: usize,
    /// Highest layer above the committed one that fits with margin now.
    candidate: Option<usize>,
    /// Kept at its lowest layer although that does not fit (see `pause_hold`).
    short: bool,
}

/// Tuning of the [`Allocator`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AllocatorConfig {
    /// Fraction of the estimate never allocated (RTCP, retransmissions,
    /// estimate noise): the budget is `estimate * (1 - headroom)`.
    pub headroom: f32,
    /// An upgrade needs `budget_left >= rate * (1 + up_margin)`.
    pub up_margin: f32,
    /// The upgrade must have been possible continuously for this long.
    pub up_hold: Duration,
    /// A video track that cannot fit its lowest layer is paused only after
    /// being short continuously for this long (zero: at once).
    pub pause_hold: Duration,
    /// Rates assumed for video layers not measured yet, by index (layers
    /// beyond the array use the last entry).
    pub unknown_layer_bps: [u64; 3],
    /// Rate assumed for an audio track not measured yet.
    pub unknown_audio_bps: u64,
}

impl Default for AllocatorConfig {
    fn default() -> Self {
        Self {
            headroom: 0.05,
            up_margin: 0.10,
            up_hold: Duration::from_millis(1000),
            pause_hold: Duration::from_secs(5),
            unknown_layer_bps: [150_000, 500_000, 1_500_000],
            unknown_audio_bps: 64_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct UpHold {
    /// First commit at which an upgrade was possible.
    since: Instant,
    /// Highest layer reachable in every commit since `since`.
    floor: usize,
}

#[derive(Debug, Clone, Copy)]
struct TrackState {
    layer: Option<usize>,
    starved: bool,
    up: Option<UpHold>,
    /// Since when its lowest layer has not fit (it is kept, over budget).
    short_since: Option<Instant>,
}

/// Layer allocator for one subscriber.
#[derive(Debug, Clone)]
pub struct Allocator<K> {
    config: AllocatorConfig,
    tracks: BTreeMap<K, TrackState>,
}

impl<K: Copy + Eq + Ord + Debug> Allocator<K> {
    /// Creates an allocator with no track state.
    pub fn new(config: AllocatorConfig) -> Self {
        Self {
            config,
            tracks: BTreeMap::new(),
        }
    }

    /// Computes the layer of every track for `estimate_bps`, without changing state.
    pub fn propose(
        &self,
        now: Instant,
        estimate_bps: u64,
        tracks: &[TrackDemand<K>],
    ) -> Proposal<K> {
        let headroom = f64::from(self.config.headroom).clamp(0.0, 1.0);
        let mut remaining = (estimate_bps as f64 * (1.0 - headroom)).round() as u64;
        let mut allocations: Vec<Allocation<K>> = tracks
            .iter()
            .map(|t| Allocation {
                key: t.key,
                layer: None,
                bitrate_bps: 0,
                starved: false,
            })
            .collect();
        let mut holds: Vec<Hold<K>> = tracks
            .iter()
            .enumerate()
            .map(|(index, t)| Hold {
                key: t.key,
                index,
                candidate: None,
                short: false,
            })
            .collect();
        holds.sort_unstable_by_key(|h| (tracks[h.index].priority, h.key, h.index));
        let mut desired_bps = 0u64;

        // Phase A: audio, then every video track's lowest active layer.
        for h in &mut holds {
            let t = &tracks[h.index];
            let a = &mut allocations[h.index];
            if t.disabled || t.layers.is_empty() {
                continue;
            }
            if t.priority == Priority::Audio {
                let rate = self.audio_rate(t);
                desired_bps += rate;
                a.layer = Some(0);
                a.bitrate_bps = rate;
                remaining = remaining.saturating_sub(rate);
                continue;
            }
            let (Some(lowest), Some(cap)) = (lowest_active(t), cap_layer(t)) else {
                continue;
            };
            desired_bps += self.rate(t, cap);
            let rate = self.rate(t, lowest);
            let state = self.tracks.get(&t.key);
            let resuming = state.is_some_and(|s| s.starved && s.layer.is_none());
            let fits = if resuming {
                // Paused for bandwidth: resuming is an up-switch.
                let ok = self.with_margin(rate) <= remaining;
                if ok {
                    h.candidate = Some(lowest);
                }
                ok && state.is_some_and(|s| self.hold_passed(s.up, now))
            } else {
                rate <= remaining
            };
            if fits {
                a.layer = Some(lowest);
                a.bitrate_bps = rate;
                remaining -= rate;
            } else if !resuming && !self.pause_due(state, now) {
                // Short, but not for long enough to pause it.
                h.short = true;
                a.layer = Some(lowest);
                a.bitrate_bps = rate;
                remaining = 0;
            } else {
                a.starved = true;
            }
        }

        // Phase B: raise forwarded video tracks as high as fits.
        for h in &mut holds {
            let t = &tracks[h.index];
            let a = &mut allocations[h.index];
            let (Some(base), Some(cap)) = (a.layer, cap_layer(t)) else {
                continue;
            };
            if t.priority == Priority::Audio {
                continue;
            }
            let avail = remaining + a.bitrate_bps;
            let state = self.tracks.get(&t.key);
            let chosen = match state {
                // Just resumed from starvation: stay at the lowest layer.
                Some(s) if s.starved && s.layer.is_none() => base,
                Some(&TrackState {
                    layer: Some(c), up, ..
                }) => {
                    // Keep the committed layer or go down at once.
                    let keep = self.best(t, base, c.min(cap), avail, 0.0).unwrap_or(base);
                    let margin = self.config.up_margin;
                    let candidate = self.best(t, c + 1, cap, avail, margin);
                    h.candidate = candidate;
                    match (candidate, up) {
                        (Some(u), Some(hold)) if self.hold_passed(up, now) => {
                            let limit = u.min(hold.floor);
                            self.best(t, c + 1, limit, avail, margin)
                                .map_or(keep, |x| x.max(keep))
                        }
                        _ => keep,
                    }
                }
                // New track: best fit, no margin, no hold.
                _ => self.best(t, base, cap, avail, 0.0).unwrap_or(base),
            };
            let rate = self.rate(t, chosen);
            a.layer = Some(chosen);
            a.bitrate_bps = rate;
            remaining = avail.saturating_sub(rate);
        }

        let used_bps = allocations.iter().map(|a| a.bitrate_bps).sum();
        Proposal {
            allocations,
            used_bps,
            desired_bps,
            holds,
        }
    }

    /// Records a proposal: committed layers and up-switch hold timers.
    pub fn commit(&mut self, now: Instant, proposal: &Proposal<K>) {
        for h in &proposal.holds {
            let Some(a) = proposal.allocations.get(h.index).filter(|a| a.key == h.key) else {
                continue;
            };
            let st = self.tracks.entry(h.key).or_insert(TrackState {
                layer: None,
                starved: false,
                up: None,
                short_since: None,
            });
            st.short_since = if h.short {
                st.short_since.or(Some(now))
            } else {
                None
            };
            let prev = st.layer;
            st.layer = a.layer;
            st.starved = a.starved && a.layer.is_none();
            st.up = match h.candidate {
                Some(u) if Some(u) > a.layer => match st.up {
                    Some(mut hold) if prev == a.layer => {
                        hold.floor = hold.floor.min(u);
                        Some(hold)
                    }
                    // First possible, or the layer changed: (re)start the hold.
                    _ => Some(UpHold {
                        since: now,
                        floor: u,
                    }),
                },
                _ => None,
            };
        }
    }

    /// Drops the state of a track (unsubscribed / unpublished).
    pub fn forget(&mut self, key: K) {
        self.tracks.remove(&key);
    }

    /// Keeps the state of the tracks of `proposal` only.
    pub fn retain_proposed(&mut self, proposal: &Proposal<K>) {
        self.tracks
            .retain(|k, _| proposal.allocations.iter().any(|a| a.key == *k));
    }

    /// The committed layer of a track: None = unknown track, Some(None) = paused.
    pub fn current(&self, key: K) -> Option<Option<usize>> {
        self.tracks.get(&key).map(|s| s.layer)
    }

    /// Whether a track short of its lowest layer has been so long enough to pause.
    fn pause_due(&self, state: Option<&TrackState>, now: Instant) -> bool {
        let hold = self.config.pause_hold;
        hold.is_zero()
            || state
                .and_then(|s| s.short_since)
                .is_some_and(|t| now.saturating_duration_since(t) >= hold)
    }

    fn hold_passed(&self, up: Option<UpHold>, now: Instant) -> bool {
        up.is_some_and(|u| now.saturating_duration_since(u.since) >= self.config.up_hold)
    }

    fn with_margin(&self, rate: u64) -> u64 {
        margin_rate(rate, self.config.up_margin)
    }

    fn audio_rate(&self, t: &TrackDemand<K>) -> u64 {
        match t.layers[0].bitrate_bps {
            0 => self.config.unknown_audio_bps,
            r => r,
        }
    }

    /// Rate of video layer `i` (measured, else the configured default).
    fn rate(&self, t: &TrackDemand<K>, i: usize) -> u64 {
        match t.layers[i].bitrate_bps {
            0 => {
                let d = &self.config.unknown_layer_bps;
                d[i.min(d.len() - 1)]
            }
            r => r,
        }
    }

    /// Highest active layer in `lo..=hi` whose rate (with `margin`) fits `avail`.
    fn best(
        &self,
        t: &TrackDemand<K>,
        lo: usize,
        hi: usize,
        avail: u64,
        margin: f32,
    ) -> Option<usize> {
        let hi = hi.min(t.layers.len().checked_sub(1)?);
        (lo..=hi)
            .rev()
            .find(|&i| t.layers[i].active && margin_rate(self.rate(t, i), margin) <= avail)
    }
}

fn margin_rate(rate: u64, margin: f32) -> u64 {
    (rate as f64 * (1.0 + f64::from(margin.max(0.0)))).round() as u64
}

fn lowest_active<K>(t: &TrackDemand<K>) -> Option<usize> {
    t.layers.iter().position(|l| l.active)
}

/// Highest layer worth sending for the tile: the smallest active layer known
/// to cover `max_size`, else the highest active layer. Layers of unknown size
/// (0) are assumed to grow with their index, so they never cap.
fn cap_layer<K>(t: &TrackDemand<K>) -> Option<usize> {
    let highest = t.layers.iter().rposition(|l| l.active)?;
    let Some((w, h)) = t.max_size else {
        return Some(highest);
    };
    let covering = t
        .layers
        .iter()
        .position(|l| l.active && l.width > 0 && l.height > 0 && l.width >= w && l.height >= h);
    Some(covering.unwrap_or(highest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: Duration = Duration::from_millis(200);
    const HOLD: Duration = Duration::from_millis(1000);

    fn layers() -> Vec<Layer> {
        [
            (150_000, 320, 180),
            (500_000, 640, 360),
            (1_500_000, 1280, 720),
        ]
        .iter()
        .map(|&(bitrate_bps, width, height)| Layer {
            bitrate_bps,
            width,
            height,
            active: true,
        })
        .collect()
    }

    fn video(key: u32, priority: Priority) -> TrackDemand<u32> {
        TrackDemand {
            key,
            priority,
            layers: layers(),
            max_size: None,
            disabled: false,
        }
    }

    fn audio(key: u32) -> TrackDemand<u32> {
        TrackDemand {
            key,
            priority: Priority::Audio,
            layers: vec![Layer {
                bitrate_bps: 40_000,
                width: 0,
                height: 0,
                active: true,
            }],
            max_size: None,
            disabled: false,
        }
    }

    /// Pauses at once, as the tests below expect; `pause_waits_for_the_hold`
    /// tests the hold.
    fn alloc() -> Allocator<u32> {
        Allocator::new(AllocatorConfig {
            pause_hold: Duration::ZERO,
            ..AllocatorConfig::default()
        })
    }

    /// propose + commit; returns the proposal.
    fn step(
        a: &mut Allocator<u32>,
        now: Instant,
        est: u64,
        tracks: &[TrackDemand<u32>],
    ) -> Proposal<u32> {
        let p = a.propose(now, est, tracks);
        a.commit(now, &p);
        p
    }

    fn layer_of(p: &Proposal<u32>, key: u32) -> Option<usize> {
        p.allocations.iter().find(|a| a.key == key).unwrap().layer
    }

    #[test]
    fn upgrade_waits_for_hold_then_jumps_directly() {
        let mut a = alloc();
        let t0 = Instant::now();
        let tracks = [video(1, Priority::Normal)];
        for i in 0..5 {
            let p = step(&mut a, t0 + STEP * i, 300_000, &tracks);
            assert_eq!(layer_of(&p, 1), Some(0));
        }
        let lift = t0 + STEP * 5;
        let mut seen = Vec::new();
        for i in 0..15 {
            let now = lift + STEP * i;
            let l = layer_of(&step(&mut a, now, 3_000_000, &tracks), 1);
            if now - lift < HOLD {
                assert_eq!(l, Some(0), "upgraded before hold at step {i}");
            }
            seen.push(l);
        }
        assert_eq!(*seen.last().unwrap(), Some(2));
        assert!(
            !seen.contains(&Some(1)),
            "step in estimate goes 0 -> 2 directly"
        );
        let first2 = seen.iter().position(|&l| l == Some(2)).unwrap();
        assert!(STEP * first2 as u32 <= Duration::from_millis(1600));
    }

    #[test]
    fn ramp_goes_step_by_step() {
        let mut a = alloc();
        let t0 = Instant::now();
        let tracks = [video(1, Priority::Normal)];
        step(&mut a, t0, 300_000, &tracks);
        let mut now = t0;
        for _ in 0..10 {
            now += STEP;
            step(&mut a, now, 800_000, &tracks);
        }
        assert_eq!(a.current(1), Some(Some(1)));
        for _ in 0..10 {
            now += STEP;
            step(&mut a, now, 3_000_000, &tracks);
        }
        assert_eq!(a.current(1), Some(Some(2)));
    }

    #[test]
    fn interrupted_hold_restarts() {
        let mut a = alloc();
        let t0 = Instant::now();
        let tracks = [video(1, Priority::Normal)];
        step(&mut a, t0, 300_000, &tracks);
        step(&mut a, t0 + STEP, 3_000_000, &tracks);
        step(&mut a, t0 + STEP * 5, 300_000, &tracks); // dip
        let p = step(&mut a, t0 + STEP * 9, 3_000_000, &tracks);
        assert_eq!(layer_of(&p, 1), Some(0));
        let p = step(&mut a, t0 + STEP * 9 + HOLD, 3_000_000, &tracks);
        assert_eq!(layer_of(&p, 1), Some(2));
    }

    #[test]
    fn downgrade_is_immediate() {
        let mut a = alloc();
        let t0 = Instant::now();
        let tracks = [video(1, Priority::Normal)];
        let p = step(&mut a, t0, 3_000_000, &tracks);
        assert_eq!(layer_of(&p, 1), Some(2), "new track starts at best fit");
        let p = step(&mut a, t0 + STEP, 300_000, &tracks);
        assert_eq!(layer_of(&p, 1), Some(0));
        assert!(!p.allocations[0].starved);
    }

    #[test]
    fn inactive_high_layer_moves_down() {
        let mut a = alloc();
        let t0 = Instant::now();
        let mut tracks = [video(1, Priority::Normal)];
        assert_eq!(layer_of(&step(&mut a, t0, 3_000_000, &tracks), 1), Some(2));
        tracks[0].layers[2].active = false;
        let p = step(&mut a, t0 + STEP, 3_000_000, &tracks);
        assert_eq!(layer_of(&p, 1), Some(1));
        assert_eq!(p.desired_bps, 500_000);
        // Only the top layer left: the lowest usable one is 2.
        tracks[0].layers[2].active = true;
        tracks[0].layers[0].active = false;
        tracks[0].layers[1].active = false;
        let p = step(&mut a, t0 + STEP * 2, 3_000_000, &tracks);
        assert_eq!(layer_of(&p, 1), Some(2));
        // No active layer: paused, not starved.
        tracks[0].layers[2].active = false;
        let p = step(&mut a, t0 + STEP * 3, 3_000_000, &tracks);
        assert_eq!(p.allocations[0].layer, None);
        assert!(!p.allocations[0].starved);
    }

    #[test]
    fn small_tile_gets_small_layer() {
        let a = alloc();
        let mut t = video(1, Priority::Normal);
        t.max_size = Some((320, 180));
        let p = a.propose(Instant::now(), 10_000_000, &[t.clone()]);
        assert_eq!(layer_of(&p, 1), Some(0));
        assert_eq!(p.desired_bps, 150_000);
        t.max_size = Some((400, 200));
        let p = a.propose(Instant::now(), 10_000_000, &[t]);
        assert_eq!(layer_of(&p, 1), Some(1));
    }

    #[test]
    fn unknown_sizes_and_rates_use_defaults() {
        let a = alloc();
        let mut t = video(1, Priority::Normal);
        for l in &mut t.layers {
            *l = Layer {
                bitrate_bps: 0,
                width: 0,
                height: 0,
                active: true,
            };
        }
        t.max_size = Some((320, 180));
        let p = a.propose(Instant::now(), 1_000_000, &[t]);
        assert_eq!(layer_of(&p, 1), Some(1));
        assert_eq!(p.used_bps, 500_000);
        assert_eq!(p.desired_bps, 1_500_000);
    }

    #[test]
    fn priority_order() {
        let mut a = alloc();
        let t0 = Instant::now();
        let tracks = [
            video(1, Priority::Normal),
            video(2, Priority::Screen),
            audio(3),
        ];
        let p = step(&mut a, t0, 250_000, &tracks);
        assert_eq!(layer_of(&p, 3), Some(0));
        assert_eq!(layer_of(&p, 2), Some(0));
        let cam = p.allocations[0];
        assert_eq!((cam.layer, cam.starved), (None, true));
        assert_eq!(p.used_bps, 190_000);

        // Audio is never paused, even with no bandwidth.
        let p = a.propose(t0, 0, &tracks);
        assert_eq!(layer_of(&p, 3), Some(0));
        assert_eq!(layer_of(&p, 2), None);

        // Speaker before normal, whatever the keys.
        let tracks = [video(1, Priority::Normal), video(2, Priority::Speaker)];
        let p = alloc().propose(t0, 200_000, &tracks);
        assert_eq!(layer_of(&p, 2), Some(0));
        assert!(p.allocations[0].starved);
    }

    #[test]
    fn pause_waits_for_the_hold() {
        let mut a = Allocator::new(AllocatorConfig::default());
        let hold = AllocatorConfig::default().pause_hold;
        let t0 = Instant::now();
        let tracks = [audio(3), video(1, Priority::Normal)];
        // 100 kbit/s carries the audio, not the video's lowest layer: the
        // video keeps it, over budget, while the shortage lasts < hold.
        let p = step(&mut a, t0, 100_000, &tracks);
        assert_eq!(layer_of(&p, 1), Some(0));
        assert!(!p.allocations[1].starved);
        let p = step(&mut a, t0 + hold - STEP, 100_000, &tracks);
        assert_eq!(layer_of(&p, 1), Some(0));
        // A moment of enough bandwidth restarts the hold.
        step(&mut a, t0 + hold - STEP / 2, 1_000_000, &tracks);
        let p = step(&mut a, t0 + hold, 100_000, &tracks);
        assert_eq!(layer_of(&p, 1), Some(0), "the hold restarted");
        let p = step(&mut a, t0 + hold * 2, 100_000, &tracks);
        assert_eq!((layer_of(&p, 1), p.allocations[1].starved), (None, true));
        // A track over budget never takes more than its lowest layer.
        let mut b = Allocator::new(AllocatorConfig::default());
        let p = step(&mut b, t0, 100_000, &tracks);
        assert_eq!(p.allocations[1].bitrate_bps, 150_000);
    }

    #[test]
    fn starved_track_resumes_after_hold() {
        let mut a = alloc();
        let t0 = Instant::now();
        let tracks = [video(1, Priority::Normal)];
        let p = step(&mut a, t0, 100_000, &tracks);
        assert!(p.allocations[0].starved);
        assert_eq!(a.current(1), Some(None));
        let p = step(&mut a, t0 + STEP, 300_000, &tracks);
        assert!(p.allocations[0].starved, "resume needs the hold");
        let p = step(&mut a, t0 + STEP + HOLD, 300_000, &tracks);
        assert_eq!(layer_of(&p, 1), Some(0));
        assert!(!p.allocations[0].starved);
    }

    #[test]
    fn disabled_and_desired() {
        let a = alloc();
        let mut hidden = video(1, Priority::Normal);
        hidden.disabled = true;
        let mut tile = video(2, Priority::Normal);
        tile.max_size = Some((640, 360));
        let tracks = [hidden, tile, audio(3)];
        let p = a.propose(Instant::now(), 200_000, &tracks);
        let h = p.allocations[0];
        assert_eq!((h.layer, h.starved, h.bitrate_bps), (None, false, 0));
        assert_eq!(layer_of(&p, 2), Some(0));
        assert_eq!(p.desired_bps, 500_000 + 40_000);
    }

    #[test]
    fn propose_does_not_change_state_and_forget() {
        let mut a = alloc();
        let now = Instant::now();
        let tracks = [video(1, Priority::Normal)];
        let p = a.propose(now, 3_000_000, &tracks);
        assert_eq!(a.current(1), None);
        a.commit(now, &p);
        assert_eq!(a.current(1), Some(Some(2)));
        a.forget(1);
        assert_eq!(a.current(1), None);
    }
}
