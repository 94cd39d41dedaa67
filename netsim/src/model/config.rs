//! What a link does to packets: the plain-data configuration a [`Link`]
//! is built from. Parsing and printing the compact spec lives in `spec.rs`.
//!
//! [`Link`]: crate::model::Link

use std::num::{NonZeroU64, NonZeroUsize};
use std::time::Duration;

/// How long a reordered packet is held back when the spec does not say.
/// Long enough that at a few hundred packets/s (audio, low-rate video) the
/// next few packets overtake it; at 5,000 packets/s about 50 do.
pub const DEFAULT_REORDER_HOLD: Duration = Duration::from_millis(10);

/// Queue bound of a rate-capped link when the spec gives `rate` but no
/// `queue`: a moderately buffered access link.
pub const DEFAULT_QUEUE: QueueLimit = QueueLimit::Time(Duration::from_millis(100));

/// Configuration of one direction of a link. `LinkConfig::default()` is a
/// perfect link: nothing lost, delayed, reordered, duplicated or capped.
///
/// The stages a packet goes through, in order:
///
/// 1. **Bottleneck** ([`rate`](Self::rate)): the packet waits behind the bytes
///    already queued and is serialised at the cap; drop-tail when the queue is
///    full (`dropped_queue`).
/// 2. **Loss** on the wire after the bottleneck, so a lost packet has still
///    used the capacity: first the Gilbert–Elliott [`burst`](Self::burst)
///    model (`lost_burst`), then the independent [`loss`](Self::loss)
///    (`lost_random`).
/// 3. **Delay**: [`delay`](Self::delay) plus a jitter sample, bounded to
///    `±jitter` (and never below zero). Jitter alone never reorders: a packet
///    is not delivered before the one pushed ahead of it (like netem with
///    `rate`, or a pfifo after a jittery hop), so a packet whose sample is
///    smaller than its predecessor's leaves right after it. Its delay
///    therefore stays within `delay ± jitter`, but the distribution of the
///    delays seen is skewed upwards when packets are closer together than
///    the jitter.
/// 4. **Reorder**: with probability [`reorder`](Self::reorder) the packet is
///    held back a further [`reorder_hold`](Self::reorder_hold) outside that
///    ordering, so packets pushed after it overtake it (`reordered`).
/// 5. **Duplication**: with probability [`dup`](Self::dup) a copy is
///    delivered right after the original (`duplicated`).
///
/// Probabilities are fractions in `0.0..=1.0`; values outside act as the
/// nearest bound and NaN as 0, so no configuration can make a link panic.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Independent loss probability per packet.
    pub loss: f64,
    /// Bursty loss (Gilbert–Elliott); applies in addition to `loss`.
    pub burst: Option<GilbertElliott>,
    /// One-way base delay.
    pub delay: Duration,
    /// Bound of the jitter added to `delay`: the sample lies in `±jitter`.
    pub jitter: Duration,
    /// Shape of the jitter within its bound.
    pub jitter_dist: JitterDist,
    /// Probability that a packet is held back so later packets overtake it.
    pub reorder: f64,
    /// Extra time a reordered packet is held back.
    pub reorder_hold: Duration,
    /// Probability that a packet is delivered twice.
    pub dup: f64,
    /// Bandwidth cap with its queue; `None` is unlimited.
    pub rate: Option<RateLimit>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            loss: 0.0,
            burst: None,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            jitter_dist: JitterDist::Uniform,
            reorder: 0.0,
            reorder_hold: DEFAULT_REORDER_HOLD,
            dup: 0.0,
            rate: None,
        }
    }
}

impl LinkConfig {
    /// True when the link changes nothing (the default).
    pub fn is_perfect(&self) -> bool {
        *self == Self::default()
    }
}

/// Gilbert–Elliott two-state loss model. Each packet first moves the chain
/// (Good→Bad with `p_good_to_bad`, Bad→Good with `p_bad_to_good`), then is
/// lost with the loss probability of the state it is in.
///
/// Unlike netem's `gemodel p r 1-h 1-k`, the two loss fields here are loss
/// probabilities, not delivery probabilities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    /// `p`: probability of moving Good→Bad per packet.
    pub p_good_to_bad: f64,
    /// `r`: probability of moving Bad→Good per packet.
    pub p_bad_to_good: f64,
    /// `k`: loss probability while Good (usually 0).
    pub loss_good: f64,
    /// `h`: loss probability while Bad (1 for the simple Gilbert model).
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// The simple Gilbert model: nothing lost while Good, everything while
    /// Bad, so loss bursts last `1 / p_bad_to_good` packets on average.
    pub fn gilbert(p_good_to_bad: f64, p_bad_to_good: f64) -> Self {
        Self {
            p_good_to_bad,
            p_bad_to_good,
            loss_good: 0.0,
            loss_bad: 1.0,
        }
    }

    /// Long-run fraction of packets sent while Bad: `p / (p + r)`.
    pub fn stationary_bad(&self) -> f64 {
        let sum = self.p_good_to_bad + self.p_bad_to_good;
        if sum > 0.0 {
            self.p_good_to_bad / sum
        } else {
            0.0
        }
    }

    /// Long-run loss rate this model alone causes.
    pub fn mean_loss(&self) -> f64 {
        let bad = self.stationary_bad();
        bad * self.loss_bad + (1.0 - bad) * self.loss_good
    }

    /// Mean number of consecutive packets sent while Bad: `1 / r`. With
    /// `k = 0, h = 1` this is the mean loss-burst length.
    pub fn mean_bad_run(&self) -> f64 {
        1.0 / self.p_bad_to_good
    }
}

/// Shape of the jitter sample within `±jitter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JitterDist {
    /// Uniform over `±jitter`.
    #[default]
    Uniform,
    /// Bell-shaped over `±jitter` (Irwin–Hall: the mean of four uniform
    /// draws), standard deviation `jitter / √12 ≈ 0.29 · jitter`. Chosen over
    /// a true normal because it is bounded and needs no platform `ln`/`cos`,
    /// so a seed gives bit-identical delays everywhere.
    Normal,
}

/// A bandwidth cap: packets are serialised at `bits_per_sec` behind a
/// drop-tail queue bounded by `queue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Capacity of the bottleneck in bits per second.
    pub bits_per_sec: NonZeroU64,
    /// Bound of the queue in front of it.
    pub queue: QueueLimit,
}

impl RateLimit {
    /// A cap with the [`DEFAULT_QUEUE`].
    pub fn new(bits_per_sec: NonZeroU64) -> Self {
        Self {
            bits_per_sec,
            queue: DEFAULT_QUEUE,
        }
    }
}

/// Bound of a bottleneck queue. Both are measured the same way, as the bytes
/// waiting (including the rest of the packet being sent); a time bound is
/// that many milliseconds of data at the cap. A packet arriving at an empty
/// queue is always accepted, so a bound smaller than one packet still passes
/// traffic, one packet at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueLimit {
    /// At most this many bytes waiting.
    Bytes(NonZeroUsize),
    /// At most this much queueing delay.
    Time(Duration),
}

/// Named configurations accepted as the first item of a spec.
#[cfg(test)]
pub(crate) const PRESETS: &[&str] = &["perfect", "burst", "wifi", "cellular"];

/// The configuration a preset name stands for.
pub(crate) fn preset(name: &str) -> Option<LinkConfig> {
    let mbit = |n: u64| NonZeroU64::new(n * 1_000_000);
    match name {
        "perfect" | "none" => Some(LinkConfig::default()),
        // Loss in bursts of 4 packets on average, 3.8 % overall.
        "burst" => Some(LinkConfig {
            burst: Some(GilbertElliott::gilbert(0.01, 0.25)),
            ..LinkConfig::default()
        }),
        // A busy home Wi-Fi hop: little delay, some jitter, short bursts.
        "wifi" => Some(LinkConfig {
            delay: Duration::from_millis(3),
            jitter: Duration::from_millis(3),
            burst: Some(GilbertElliott {
                p_good_to_bad: 0.005,
                p_bad_to_good: 0.4,
                loss_good: 0.0,
                loss_bad: 0.6,
            }),
            ..LinkConfig::default()
        }),
        // A loaded mobile uplink: long delay, bell jitter, small cap, deep queue.
        "cellular" => Some(LinkConfig {
            loss: 0.005,
            delay: Duration::from_millis(40),
            jitter: Duration::from_millis(15),
            jitter_dist: JitterDist::Normal,
            rate: mbit(4).map(|bits_per_sec| RateLimit {
                bits_per_sec,
                queue: QueueLimit::Time(Duration::from_millis(200)),
            }),
            ..LinkConfig::default()
        }),
        _ => None,
    }
}
