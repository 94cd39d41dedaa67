//! One direction of an impaired link, sans-IO: packets go in with
//! [`Link::push`], come out of [`Link::poll`] when their time has come, and
//! every random decision comes from the link's own seeded generator, so the
//! same seed, configuration and push sequence give the same deliveries on
//! any platform.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt;
use std::ops::{Add, AddAssign};
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::{JitterDist, LinkConfig, QueueLimit};

/// Packets a link holds at once (waiting at the bottleneck or in flight).
/// Pushes beyond it are dropped and counted as `dropped_queue`, so an
/// uncapped link fed faster than it is drained cannot grow without bound.
/// At 5,000 packets/s this is 13 s of one-way delay.
pub const MAX_IN_FLIGHT: usize = 65_536;

/// Longest delay, jitter or hold a link applies; longer settings are cut to
/// it. An hour is beyond any test and keeps `Instant` arithmetic far from
/// overflow.
pub const MAX_DELAY: Duration = Duration::from_secs(3_600);

/// Counters of one link. `offered = delivered + lost + dropped_queue +
/// in flight - duplicated`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets pushed.
    pub offered: u64,
    /// Packets returned by `poll`, duplicates included.
    pub delivered: u64,
    /// Lost to the independent `loss`.
    pub lost_random: u64,
    /// Lost to the Gilbert–Elliott model.
    pub lost_burst: u64,
    /// Dropped at the tail of a full bottleneck queue, or because the link
    /// held [`MAX_IN_FLIGHT`] packets.
    pub dropped_queue: u64,
    /// Extra copies scheduled.
    pub duplicated: u64,
    /// Packets held back so that later ones overtake them.
    pub reordered: u64,
}

impl LinkStats {
    /// All packets lost on the wire (random and burst).
    pub fn lost(&self) -> u64 {
        self.lost_random + self.lost_burst
    }

    /// Field-wise difference `self - earlier`, saturating at 0.
    pub fn since(&self, earlier: &LinkStats) -> LinkStats {
        LinkStats {
            offered: self.offered.saturating_sub(earlier.offered),
            delivered: self.delivered.saturating_sub(earlier.delivered),
            lost_random: self.lost_random.saturating_sub(earlier.lost_random),
            lost_burst: self.lost_burst.saturating_sub(earlier.lost_burst),
            dropped_queue: self.dropped_queue.saturating_sub(earlier.dropped_queue),
            duplicated: self.duplicated.saturating_sub(earlier.duplicated),
            reordered: self.reordered.saturating_sub(earlier.reordered),
        }
    }
}

impl AddAssign for LinkStats {
    fn add_assign(&mut self, o: LinkStats) {
        self.offered += o.offered;
        self.delivered += o.delivered;
        self.lost_random += o.lost_random;
        self.lost_burst += o.lost_burst;
        self.dropped_queue += o.dropped_queue;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
    }
}

impl Add for LinkStats {
    type Output = LinkStats;

    fn add(mut self, o: LinkStats) -> LinkStats {
        self += o;
        self
    }
}

impl fmt::Display for LinkStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "offered={} delivered={} lost_random={} lost_burst={} dropped_queue={} \
             duplicated={} reordered={}",
            self.offered,
            self.delivered,
            self.lost_random,
            self.lost_burst,
            self.dropped_queue,
            self.duplicated,
            self.reordered
        )
    }
}

/// A packet waiting for its delivery time. Ordered so that `BinaryHeap`
/// (a max-heap) pops the earliest `at`, then the earliest pushed.
struct Scheduled<T> {
    /// Delivery time, nanoseconds since the link's epoch.
    at: u64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Scheduled<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<T> Eq for Scheduled<T> {}

impl<T> PartialOrd for Scheduled<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Scheduled<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// One direction of an impaired link carrying items of type `T` (a buffer,
/// an index, a test sequence number…). Time is passed in; the link never
/// reads the clock, and a `now` earlier than one already seen is taken as
/// that later one.
///
/// Storage is one heap of scheduled packets, reused for the link's life: no
/// allocation per packet once it has grown to the packets in flight.
pub struct Link<T> {
    cfg: LinkConfig,
    rng: ChaCha8Rng,
    /// Time zero of the nanosecond clock below: the first push.
    epoch: Option<Instant>,
    /// Latest `now` seen, nanoseconds since `epoch`.
    now: u64,
    /// The Gilbert–Elliott chain is in its Bad state.
    ge_bad: bool,
    /// When the bottleneck finishes sending what it holds, in nanoseconds ×
    /// bits/s: integer units in which serialising one byte is exactly
    /// `8e9`, so queue sizes and drain times never accumulate rounding.
    busy_until: u128,
    /// Queue bound in the same units as `busy_until`.
    queue_limit: u128,
    /// Delivery time of the last packet that keeps its order; later ones
    /// never leave before it.
    fifo_floor: u64,
    next_seq: u64,
    heap: BinaryHeap<Scheduled<T>>,
    stats: LinkStats,
}

impl<T> fmt::Debug for Link<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("cfg", &self.cfg)
            .field("in_flight", &self.heap.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<T> Link<T> {
    /// A link with its own generator seeded from `seed`.
    pub fn new(mut cfg: LinkConfig, seed: u64) -> Self {
        for d in [&mut cfg.delay, &mut cfg.jitter, &mut cfg.reorder_hold] {
            *d = (*d).min(MAX_DELAY);
        }
        let queue_limit = cfg.rate.map_or(0, |rate| match rate.queue {
            QueueLimit::Bytes(bytes) => bytes.get() as u128 * 8 * NANOS_PER_SEC,
            QueueLimit::Time(t) => {
                t.min(MAX_DELAY).as_nanos() * u128::from(rate.bits_per_sec.get())
            }
        });
        Self {
            cfg,
            rng: ChaCha8Rng::seed_from_u64(seed),
            epoch: None,
            now: 0,
            ge_bad: false,
            busy_until: 0,
            queue_limit,
            fifo_floor: 0,
            next_seq: 0,
            heap: BinaryHeap::new(),
            stats: LinkStats::default(),
        }
    }

    /// The configuration (with durations cut to [`MAX_DELAY`]).
    pub fn config(&self) -> &LinkConfig {
        &self.cfg
    }

    /// Counters so far.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Packets pushed and neither delivered nor dropped yet.
    pub fn in_flight(&self) -> usize {
        self.heap.len()
    }

    /// The next item whose delivery time is at or before `now`, in delivery
    /// order (time, then push order). Call until `None`.
    #[must_use]
    pub fn poll(&mut self, now: Instant) -> Option<T> {
        let now = self.advance(now);
        if self.heap.peek()?.at > now {
            return None;
        }
        let entry = self.heap.pop()?;
        self.stats.delivered += 1;
        Some(entry.item)
    }

    /// When the next item is due, if any is in flight.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let at = self.heap.peek()?.at;
        let epoch = self.epoch?;
        // `at` is bounded by MAX_DELAY-sized steps past a real `now`, so this
        // only fails for a clock centuries ahead; then "now" is the best wake-up.
        Some(epoch.checked_add(Duration::from_nanos(at)).unwrap_or(epoch))
    }

    /// Like [`push`](Link::push) for items that cannot be cloned: a packet
    /// picked for duplication is delivered once and not counted as
    /// duplicated. Every random draw is still made, so all other decisions
    /// match what `push` would do.
    pub fn push_unique(&mut self, now: Instant, size_bytes: usize, item: T) {
        self.push_with(now, size_bytes, item, |_| None);
    }

    fn push_with(
        &mut self,
        now: Instant,
        size_bytes: usize,
        item: T,
        duplicate: impl FnOnce(&T) -> Option<T>,
    ) {
        let now = self.advance(now);
        self.stats.offered += 1;
        // A duplicate needs a second slot; keep one spare so it always fits.
        if self.heap.len() + 1 >= MAX_IN_FLIGHT {
            self.stats.dropped_queue += 1;
            return;
        }
        let Some(exit) = self.bottleneck(now, size_bytes) else {
            self.stats.dropped_queue += 1;
            return;
        };
        if let Some(ge) = self.cfg.burst {
            let flip = if self.ge_bad {
                ge.p_bad_to_good
            } else {
                ge.p_good_to_bad
            };
            if self.chance(flip) {
                self.ge_bad = !self.ge_bad;
            }
            let loss = if self.ge_bad {
                ge.loss_bad
            } else {
                ge.loss_good
            };
            if self.chance(loss) {
                self.stats.lost_burst += 1;
                return;
            }
        }
        if self.chance(self.cfg.loss) {
            self.stats.lost_random += 1;
            return;
        }
        let mut at = self.jittered(exit);
        if self.chance(self.cfg.reorder) {
            // Outside the FIFO: it neither waits for the floor nor raises it.
            at = at.saturating_add(nanos(self.cfg.reorder_hold));
            self.stats.reordered += 1;
        } else {
            at = at.max(self.fifo_floor);
            self.fifo_floor = at;
        }
        let copy = if self.chance(self.cfg.dup) {
            duplicate(&item)
        } else {
            None
        };
        self.schedule(at, item);
        if let Some(copy) = copy {
            self.stats.duplicated += 1;
            self.schedule(at, copy);
        }
    }

    fn schedule(&mut self, at: u64, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Scheduled { at, seq, item });
    }

    /// Moves the link clock to `now` (never backwards) and returns it in
    /// nanoseconds since the epoch.
    fn advance(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        let ns = u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
        self.now = self.now.max(ns);
        self.now
    }

    /// When a packet arriving `now` leaves the bottleneck, or `None` if the
    /// queue is full.
    fn bottleneck(&mut self, now: u64, size_bytes: usize) -> Option<u64> {
        let Some(rate) = self.cfg.rate else {
            return Some(now);
        };
        let bits_per_sec = u128::from(rate.bits_per_sec.get());
        let now_units = u128::from(now) * bits_per_sec;
        let start = self.busy_until.max(now_units);
        let backlog = start - now_units;
        let tx = (size_bytes as u128).saturating_mul(8 * NANOS_PER_SEC);
        if backlog > 0 && backlog.saturating_add(tx) > self.queue_limit {
            return None;
        }
        self.busy_until = start.saturating_add(tx);
        let exit = self.busy_until.div_ceil(bits_per_sec);
        Some(u64::try_from(exit).unwrap_or(u64::MAX))
    }

    /// `exit + delay + jitter sample`, the sample bounded to `±jitter` and
    /// the result to no earlier than `exit`.
    fn jittered(&mut self, exit: u64) -> u64 {
        let base = exit.saturating_add(nanos(self.cfg.delay));
        let jitter = nanos(self.cfg.jitter);
        if jitter == 0 {
            return base;
        }
        // A sample in [-1, 1).
        let unit = match self.cfg.jitter_dist {
            JitterDist::Uniform => 2.0 * self.unit() - 1.0,
            JitterDist::Normal => {
                let sum: f64 = (0..4).map(|_| self.unit()).sum();
                sum / 2.0 - 1.0
            }
        };
        // |unit| < 1 and jitter ≤ MAX_DELAY, so the offset fits an i64.
        let offset = (unit * jitter as f64) as i64;
        let at = base.saturating_add_signed(offset);
        at.max(exit)
    }

    /// True with probability `p` (false for NaN or p ≤ 0, true for p ≥ 1).
    /// Draws nothing when `p` is exactly 0, so a feature that is off leaves
    /// the stream of the others alone.
    fn chance(&mut self, p: f64) -> bool {
        if p == 0.0 || p.is_nan() {
            return false;
        }
        self.unit() < p
    }

    /// Uniform in [0, 1) from the top 53 bits of one draw: defined here,
    /// not by rand's conversions, so it cannot change under a rand upgrade.
    fn unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

impl<T: Clone> Link<T> {
    /// Offers a packet of `size_bytes` (what the rate cap charges) at `now`.
    /// It is then queued, lost, delayed, reordered or duplicated as
    /// configured; what survives comes out of [`poll`](Link::poll).
    pub fn push(&mut self, now: Instant, size_bytes: usize, item: T) {
        self.push_with(now, size_bytes, item, |item| Some(item.clone()));
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_going_backwards_is_ignored() {
        let t0 = Instant::now();
        let cfg = LinkConfig {
            delay: Duration::from_millis(10),
            ..LinkConfig::default()
        };
        let mut link = Link::new(cfg, 1);
        link.push(t0 + Duration::from_millis(5), 100, 1u32);
        // Pushed "earlier" than the last push: treated as pushed at +5 ms.
        link.push(t0, 100, 2u32);
        assert_eq!(link.poll_timeout(), Some(t0 + Duration::from_millis(15)));
        assert_eq!(link.poll(t0 + Duration::from_millis(15)), Some(1));
        assert_eq!(link.poll(t0), Some(2), "the clock does not go back either");
    }

    #[test]
    fn in_flight_is_bounded() {
        let t0 = Instant::now();
        let cfg = LinkConfig {
            delay: Duration::from_secs(1),
            ..LinkConfig::default()
        };
        let mut link = Link::new(cfg, 1);
        for i in 0..MAX_IN_FLIGHT + 10 {
            link.push(t0, 1, i);
        }
        assert_eq!(link.in_flight(), MAX_IN_FLIGHT - 1);
        assert_eq!(link.stats().dropped_queue, 11);
    }

    #[test]
    fn absurd_config_does_not_panic() {
        let t0 = Instant::now();
        let cfg = LinkConfig {
            loss: f64::NAN,
            dup: 7.0,
            reorder: -1.0,
            delay: Duration::MAX,
            jitter: Duration::MAX,
            reorder_hold: Duration::MAX,
            rate: std::num::NonZeroU64::new(u64::MAX).map(|bits| super::super::RateLimit {
                bits_per_sec: bits,
                queue: QueueLimit::Time(Duration::MAX),
            }),
            ..LinkConfig::default()
        };
        let mut link = Link::new(cfg, 1);
        for i in 0..100 {
            link.push(t0, usize::MAX, i);
        }
        let far = t0 + Duration::from_secs(3 * 3_600);
        let mut n = 0;
        while link.poll(far).is_some() {
            n += 1;
        }
        assert_eq!(n, 200, "every packet duplicated, none lost");
    }
}
