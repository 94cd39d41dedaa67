//! Dominant / active speaker detection from RFC 6464 audio levels (sans-IO).
//!
//! The SFU feeds every audio packet's `ssrc-audio-level` header extension into
//! [`SpeakerDetector::observe`] and periodically calls [`SpeakerDetector::poll`]
//! for a ranking of the active speakers (for clients and the bitrate allocator)
//! and [`SpeakerDetector::dominant`] for the hysteresis-filtered dominant speaker.
//! There is no clock inside: every call takes the caller's `now`.
//!
//! # Model
//!
//! * **Loudness** of a packet is linear in dB: `(127 - level) / 127`, so
//!   0 dBov → 1.0 and -127 dBov (silence) → 0.0. Levels above 127 are clamped.
//! * A packet is **voiced** when `level <= level_threshold` and the sender did
//!   not set the voice-activity flag to `false`.
//! * Per track, the window is split into [`BUCKETS`] (20) fixed time buckets
//!   (50 ms for a 1 s window), each holding packet, voiced-packet and loudness
//!   sums. Memory per track is fixed (~0.5 KiB) and `observe` only touches one
//!   bucket.
//! * The **voiced share** of a track is `voiced / max(packets, BUCKETS)` over
//!   the window. The denominator is floored at one packet per bucket so sparse
//!   traffic (a lone packet, DTX comfort noise) cannot make a track active; at
//!   the usual 20 ms ptime (50 packets/s) the floor has no effect. The
//!   **smoothed level** uses the same denominator, so it decays towards 0 when a
//!   track goes quiet or stops sending (DTX).
//! * A track becomes **active** when its voiced share reaches
//!   `min_active_ratio` and stays active until the share falls below half of
//!   that (activity hysteresis, so alternating talkers do not blink in and out).
//!   A track that sent nothing for a whole window is always inactive.
//! * **Ranking**: active tracks by smoothed level, loudest first (ties by key).
//! * **Dominant speaker**: the top of the ranking, with hysteresis: the current
//!   dominant is replaced only when it has not been at the top continuously for
//!   `switch_hold` (it is then replaced by whoever is on top), or immediately when
//!   it becomes inactive or is removed. The ranking is purely by loudness, so its
//!   first entry may differ from [`SpeakerDetector::dominant`] while a challenger
//!   is being held off.
//!
//! Activity and dominance are evaluated in [`SpeakerDetector::poll`]; poll it at
//! least every `interval` (polling more often is cheap and only sharpens timing).

use std::collections::btree_map::{BTreeMap, Entry};
use std::fmt::Debug;
use std::time::{Duration, Instant};

/// Maximum number of tracks a [`SpeakerDetector`] follows. Packets of further
/// new keys are ignored until a known track is [`SpeakerDetector::remove`]d.
pub const MAX_TRACKS: usize = 4096;

/// Number of time buckets the window is split into.
pub const BUCKETS: usize = 20;

/// Smallest level change (0..=1 scale) that alone makes `poll` report again.
const LEVEL_EPSILON: f32 = 0.05;

/// An active track stays active while its voiced share is at least
/// `min_active_ratio * RELEASE_FACTOR`.
const RELEASE_FACTOR: f32 = 0.5;

/// Quietest RFC 6464 level (-127 dBov).
const SILENT_LEVEL: u8 = 127;

/// Tuning of a [`SpeakerDetector`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpeakerConfig {
    /// Span of recent packets considered "now" (default 1 s).
    pub window: Duration,
    /// Share of packets in the window that must be voiced to count as speaking
    /// (default 0.4). Once active, a track stays active down to half of this.
    pub min_active_ratio: f32,
    /// -dBov level at or below which a packet counts as voiced (default 50,
    /// i.e. louder than or equal to -50 dBov).
    pub level_threshold: u8,
    /// How long a challenger must keep the current dominant speaker off the top
    /// of the ranking before it takes over (default 1 s).
    pub switch_hold: Duration,
    /// Minimum time between two rankings returned by `poll` (default 300 ms).
    pub interval: Duration,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(1),
            min_active_ratio: 0.4,
            level_threshold: 50,
            switch_hold: Duration::from_secs(1),
            interval: Duration::from_millis(300),
        }
    }
}

/// One entry of a speaker ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct Speaker<K> {
    /// The track.
    pub key: K,
    /// Smoothed loudness over the window, 0.0 (silent) ..= 1.0 (0 dBov).
    pub level: f32,
    /// Whether the track counts as speaking (always `true` in `poll` results).
    pub active: bool,
}

/// Accumulators of one time bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Bucket number since the detector's time base; `u64::MAX` = unused.
    epoch: u64,
    packets: u32,
    voiced: u32,
    /// Sum of `127 - level` over the bucket's packets.
    loudness: u32,
}

const UNUSED: Bucket = Bucket {
    epoch: u64::MAX,
    packets: 0,
    voiced: 0,
    loudness: 0,
};

/// Sums over one track's window.
#[derive(Debug, Clone, Copy, Default)]
struct WindowSums {
    packets: u32,
    voiced: u32,
    loudness: u32,
}

impl WindowSums {
    fn denominator(&self) -> f32 {
        self.packets.max(BUCKETS as u32) as f32
    }

    fn voiced_share(&self) -> f32 {
        self.voiced as f32 / self.denominator()
    }

    fn level(&self) -> f32 {
        (self.loudness as f32 / f32::from(SILENT_LEVEL) / self.denominator()).min(1.0)
    }
}

/// State of one audio track.
#[derive(Debug, Clone)]
struct Track {
    buckets: [Bucket; BUCKETS],
    /// Activity as of the last evaluation (hysteresis state).
    active: bool,
}

impl Track {
    fn new() -> Self {
        Self {
            buckets: [UNUSED; BUCKETS],
            active: false,
        }
    }

    fn record(&mut self, epoch: u64, voiced: bool, loudness: u32) {
        let slot = &mut self.buckets[(epoch % BUCKETS as u64) as usize];
        if slot.epoch == u64::MAX || slot.epoch < epoch {
            *slot = Bucket { epoch, ..UNUSED };
        } else if slot.epoch > epoch {
            // Older than the whole window relative to newer data: drop.
            return;
        }
        slot.packets = slot.packets.saturating_add(1);
        slot.voiced = slot.voiced.saturating_add(u32::from(voiced));
        slot.loudness = slot.loudness.saturating_add(loudness);
    }

    fn window(&self, now_epoch: u64) -> WindowSums {
        let mut sums = WindowSums::default();
        for b in &self.buckets {
            if b.epoch <= now_epoch && now_epoch - b.epoch < BUCKETS as u64 {
                sums.packets = sums.packets.saturating_add(b.packets);
                sums.voiced = sums.voiced.saturating_add(b.voiced);
                sums.loudness = sums.loudness.saturating_add(b.loudness);
            }
        }
        sums
    }
}

/// Active / dominant speaker detector for the audio tracks of one room.
#[derive(Debug)]
pub struct SpeakerDetector<K: Copy + Eq + Ord + Debug> {
    config: SpeakerConfig,
    /// Bucket length in nanoseconds (`window / BUCKETS`, at least 1).
    bucket_nanos: u128,
    /// Time base for bucket numbers, set by the first call.
    base: Option<Instant>,
    tracks: BTreeMap<K, Track>,
    /// Ranking of the last evaluation (reused buffer).
    ranking: Vec<Speaker<K>>,
    /// Last ranking returned by `poll`.
    reported: Vec<Speaker<K>>,
    reported_dominant: Option<K>,
    last_report: Option<Instant>,
    dominant: Option<K>,
    /// Since when the current dominant has not been at the top of the ranking.
    displaced_since: Option<Instant>,
}

impl<K: Copy + Eq + Ord + Debug> SpeakerDetector<K> {
    /// Creates a detector with no tracks.
    pub fn new(config: SpeakerConfig) -> Self {
        let bucket_nanos = (config.window.as_nanos() / BUCKETS as u128).max(1);
        Self {
            config,
            bucket_nanos,
            base: None,
            tracks: BTreeMap::new(),
            ranking: Vec::new(),
            reported: Vec::new(),
            reported_dominant: None,
            last_report: None,
            dominant: None,
            displaced_since: None,
        }
    }

    /// One audio packet of `key`'s track: `level` in -dBov (0 = loudest,
    /// 127 = silence; larger values are clamped to 127) and the RFC 6464
    /// voice-activity flag if the sender sets it (`Some(false)` = not voiced).
    ///
    /// Constant work per packet (one bucket update) plus an `O(log n)` key
    /// lookup (`K` is `Ord`, not `Hash`); no allocation once the track is
    /// known. When [`MAX_TRACKS`] tracks are known, packets of new keys are
    /// ignored.
    pub fn observe(&mut self, now: Instant, key: K, level: u8, voice: Option<bool>) {
        let epoch = self.epoch(now);
        let level = level.min(SILENT_LEVEL);
        let voiced = voice != Some(false) && level <= self.config.level_threshold;
        let loudness = u32::from(SILENT_LEVEL - level);
        let full = self.tracks.len() >= MAX_TRACKS;
        let track = match self.tracks.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(_) if full => return,
            Entry::Vacant(e) => e.insert(Track::new()),
        };
        track.record(epoch, voiced, loudness);
    }

    /// Forgets a track (unpublished). If it was the dominant speaker, there is
    /// no dominant speaker until the next [`poll`](Self::poll).
    pub fn remove(&mut self, key: K) {
        self.tracks.remove(&key);
        if self.dominant == Some(key) {
            self.dominant = None;
            self.displaced_since = None;
        }
    }

    /// Re-evaluates activity and the dominant speaker, and returns the active
    /// speakers ranked loudest first when the ranking changed since the last
    /// returned value and at least `interval` has passed since then; else `None`.
    ///
    /// "Changed" means a different list of keys (order included), a different
    /// dominant speaker, or some level that moved by more than 0.05. An empty
    /// list is returned once when the last speaker goes quiet. Tracks that sent
    /// no packet for `window` are inactive (with DTX, silence arrives as no
    /// packets at all).
    pub fn poll(&mut self, now: Instant) -> Option<Vec<Speaker<K>>> {
        self.evaluate(now);
        if !self.changed() {
            return None;
        }
        let too_soon = self
            .last_report
            .is_some_and(|last| now.saturating_duration_since(last) < self.config.interval);
        if too_soon {
            return None;
        }
        self.reported.clone_from(&self.ranking);
        self.reported_dominant = self.dominant;
        self.last_report = Some(now);
        Some(self.ranking.clone())
    }

    /// The dominant speaker (hold/hysteresis applied) as of the last
    /// [`poll`](Self::poll), if any.
    pub fn dominant(&self) -> Option<K> {
        self.dominant
    }

    /// Bucket number of `now` relative to the time base (set on first use).
    fn epoch(&mut self, now: Instant) -> u64 {
        let base = *self.base.get_or_insert(now);
        let n = now.saturating_duration_since(base).as_nanos() / self.bucket_nanos;
        // Never reaches the `UNUSED` marker in practice (centuries of uptime).
        u64::try_from(n).unwrap_or(u64::MAX - 1)
    }

    /// Updates per-track activity, the ranking and the dominant speaker.
    fn evaluate(&mut self, now: Instant) {
        let epoch = self.epoch(now);
        let enter = self.config.min_active_ratio;
        let stay = enter * RELEASE_FACTOR;
        self.ranking.clear();
        for (key, track) in self.tracks.iter_mut() {
            let sums = track.window(epoch);
            let threshold = if track.active { stay } else { enter };
            track.active = sums.voiced > 0 && sums.voiced_share() >= threshold;
            if track.active {
                self.ranking.push(Speaker {
                    key: *key,
                    level: sums.level(),
                    active: true,
                });
            }
        }
        self.ranking
            .sort_unstable_by(|a, b| b.level.total_cmp(&a.level).then(a.key.cmp(&b.key)));

        let Some(top) = self.ranking.first().map(|s| s.key) else {
            self.dominant = None;
            self.displaced_since = None;
            return;
        };
        let current = self
            .dominant
            .filter(|d| self.tracks.get(d).is_some_and(|t| t.active));
        match current {
            // No dominant, or it went inactive: take the top right away.
            None => {
                self.dominant = Some(top);
                self.displaced_since = None;
            }
            Some(d) if d == top => self.displaced_since = None,
            Some(_) => {
                let since = *self.displaced_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= self.config.switch_hold {
                    self.dominant = Some(top);
                    self.displaced_since = None;
                }
            }
        }
    }

    /// Whether the current ranking differs meaningfully from the last reported one.
    fn changed(&self) -> bool {
        self.dominant != self.reported_dominant
            || self.ranking.len() != self.reported.len()
            || self.ranking.iter().zip(&self.reported).any(|(a, b)| {
                a.key != b.key || a.active != b.active || (a.level - b.level).abs() > LEVEL_EPSILON
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP_MS: u64 = 20;

    /// Virtual-time driver: one packet per talker every 20 ms, poll every step.
    struct Sim {
        det: SpeakerDetector<u32>,
        t0: Instant,
        ms: u64,
        /// (time, ranking) of every `Some` from `poll`.
        emits: Vec<(u64, Vec<Speaker<u32>>)>,
        /// (time, dominant, top of ranking) after every poll.
        trace: Vec<(u64, Option<u32>, Option<u32>)>,
    }

    impl Sim {
        fn new() -> Self {
            Self {
                det: SpeakerDetector::new(SpeakerConfig::default()),
                t0: Instant::now(),
                ms: 0,
                emits: Vec::new(),
                trace: Vec::new(),
            }
        }

        fn now(&self) -> Instant {
            self.t0 + Duration::from_millis(self.ms)
        }

        /// Runs for `dur_ms`; `packets(ms)` lists (key, level, voice) sent at `ms`.
        fn run(&mut self, dur_ms: u64, packets: impl Fn(u64) -> Vec<(u32, u8, Option<bool>)>) {
            let end = self.ms + dur_ms;
            while self.ms < end {
                self.ms += STEP_MS;
                let now = self.now();
                for (key, level, voice) in packets(self.ms) {
                    self.det.observe(now, key, level, voice);
                }
                if let Some(r) = self.det.poll(now) {
                    self.emits.push((self.ms, r));
                }
                let top = self.det.ranking.first().map(|s| s.key);
                self.trace.push((self.ms, self.det.dominant(), top));
            }
        }

        fn active(&self, key: u32) -> bool {
            self.det.tracks.get(&key).is_some_and(|t| t.active)
        }
    }

    #[test]
    fn loud_talker_becomes_dominant_then_stable() {
        let mut s = Sim::new();
        let talk = |ms: u64| {
            // Small level jitter (< 0.05 in loudness) must not cause reports.
            let mut v = vec![(1, 20 + (ms / STEP_MS % 3) as u8, None)];
            v.extend((2..=5).map(|k| (k, 127, None)));
            v
        };
        s.run(1000, talk);
        assert_eq!(s.det.dominant(), Some(1));
        let (_, first) = &s.emits[0];
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].key, 1);
        let last = &s.emits.last().unwrap().1;
        assert!(last[0].level > 0.8 && last[0].level <= 1.0, "{last:?}");
        for w in s.emits.windows(2) {
            assert!(w[1].0 - w[0].0 >= 300, "reports closer than interval");
        }
        // Stable: nothing more is reported.
        let n = s.emits.len();
        s.run(3000, talk);
        assert_eq!(s.emits.len(), n, "{:?}", &s.emits[n..]);
        assert_eq!(s.det.poll(s.now()), None);
        assert_eq!(s.det.dominant(), Some(1));
    }

    #[test]
    fn quick_alternation_does_not_flap() {
        let mut s = Sim::new();
        s.run(6000, |ms| {
            let a = (ms / 300) % 2 == 0;
            vec![
                (1, if a { 20 } else { 127 }, None),
                (2, if a { 127 } else { 20 }, None),
            ]
        });
        // Both are speaking, the top of the ranking does change...
        assert!(s.active(1) && s.active(2));
        assert!(s.trace.iter().any(|t| t.2 == Some(2)));
        // ...but the dominant speaker does not.
        for &(ms, dom, _) in s.trace.iter().filter(|t| t.0 >= 200) {
            assert_eq!(dom, Some(1), "flapped at {ms} ms");
        }
    }

    #[test]
    fn sustained_switch_moves_after_hold() {
        let mut s = Sim::new();
        s.run(2000, |_| vec![(1, 30, None), (2, 127, None)]);
        assert_eq!(s.det.dominant(), Some(1));
        let start = s.ms;
        s.run(3000, |_| vec![(1, 30, None), (2, 10, None)]);
        let after: Vec<_> = s.trace.iter().filter(|t| t.0 > start).collect();
        let first_top = after.iter().find(|t| t.2 == Some(2)).unwrap().0;
        let switched = after.iter().find(|t| t.1 == Some(2)).unwrap().0;
        // Challenger stayed on top from then on, and needed the full hold.
        assert!(after
            .iter()
            .filter(|t| t.0 >= first_top)
            .all(|t| t.2 == Some(2)));
        assert!(
            switched - first_top >= 1000,
            "top {first_top} switch {switched}"
        );
        assert!(switched - first_top <= 1000 + 2 * STEP_MS);
        assert_eq!(s.det.dominant(), Some(2));
        assert!(s.active(1), "quieter talker is still active");
        let last = &s.emits.last().unwrap().1;
        assert_eq!(last.iter().map(|x| x.key).collect::<Vec<_>>(), vec![2, 1]);
    }

    #[test]
    fn dtx_silence_goes_inactive() {
        let mut s = Sim::new();
        s.run(2000, |_| vec![(1, 10, None), (2, 30, None)]);
        assert_eq!(s.det.dominant(), Some(1));
        // Talker 1 stops sending entirely (DTX).
        s.run(300, |_| vec![(2, 30, None)]);
        assert_eq!(s.det.dominant(), Some(1), "a short gap must not drop it");
        s.run(800, |_| vec![(2, 30, None)]);
        assert!(!s.active(1));
        assert_eq!(s.det.dominant(), Some(2));
        assert_eq!(s.emits.last().unwrap().1.len(), 1);
        assert_eq!(s.emits.last().unwrap().1[0].key, 2);
        // Everyone stops: no dominant, and an empty ranking is reported once.
        s.run(1100, |_| vec![]);
        assert_eq!(s.det.dominant(), None);
        assert_eq!(s.emits.last().unwrap().1, vec![]);
        let n = s.emits.len();
        s.run(1000, |_| vec![]);
        assert_eq!(s.emits.len(), n);
    }

    #[test]
    fn voice_flag_false_is_not_active() {
        let mut s = Sim::new();
        s.run(2000, |_| vec![(1, 5, Some(false)), (2, 127, Some(false))]);
        assert!(!s.active(1));
        assert_eq!(s.det.dominant(), None);
        assert!(s.emits.is_empty());
        s.run(1000, |_| vec![(1, 5, Some(true)), (2, 127, Some(false))]);
        assert_eq!(s.det.dominant(), Some(1));
    }

    #[test]
    fn levels_above_127_are_clamped_and_silent() {
        let mut s = Sim::new();
        s.run(1000, |_| vec![(1, 255, Some(true))]);
        let epoch = s.det.epoch(s.now());
        let sums = s.det.tracks[&1].window(epoch);
        assert_eq!(sums.loudness, 0);
        assert_eq!(sums.voiced, 0);
        assert_eq!(s.det.dominant(), None);
    }

    #[test]
    fn remove_drops_track() {
        let mut s = Sim::new();
        s.run(1000, |_| vec![(1, 20, None)]);
        assert_eq!(s.det.dominant(), Some(1));
        s.det.remove(1);
        assert_eq!(s.det.dominant(), None);
        assert!(!s.det.tracks.contains_key(&1));
        s.run(400, |_| vec![]);
        assert_eq!(s.emits.last().unwrap().1, vec![]);
        s.det.remove(42); // unknown key: no-op
    }

    #[test]
    fn track_cap() {
        let mut det = SpeakerDetector::new(SpeakerConfig::default());
        let now = Instant::now();
        for k in 0..5000u32 {
            det.observe(now, k, 20, None);
        }
        assert_eq!(det.tracks.len(), MAX_TRACKS);
        assert!(!det.tracks.contains_key(&4096));
        det.remove(0);
        det.observe(now, 4999, 20, None);
        assert!(det.tracks.contains_key(&4999));
        assert_eq!(det.tracks.len(), MAX_TRACKS);
    }
}
