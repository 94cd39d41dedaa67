//! Measurement pieces of the load tester: the send log that makes latency
//! exact, per-subscriber statistics, and the live counters.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

pub use meridian_signaling::procstat::ProcStat;

use crate::{MediaKind, ReceivedRtp};

/// Shards of the send log; receivers on many threads look packets up at
/// once, one lock would serialise them.
const SEND_LOG_SHARDS: usize = 64;

/// Latencies above this are clamped in the histograms (they are losses in
/// any real-time sense anyway).
const MAX_LATENCY_US: u64 = 60_000_000;

/// A 64-bit key for a payload's bytes. Fixed seeds: the same payload hashes
/// the same in the sender and every receiver.
pub fn payload_key(payload: &[u8]) -> u64 {
    let mut h = ahash::RandomState::with_seeds(1, 2, 3, 4).build_hasher();
    h.write(payload);
    h.finish()
}

/// When each (publisher, payload) was last sent. Bounded by the number of
/// distinct payloads in the capture: a loop overwrites its own entries.
pub struct SendLog {
    shards: Vec<Mutex<HashMap<(usize, u64), Instant>>>,
    /// When each publisher sent its first packet.
    started: Mutex<HashMap<usize, Instant>>,
}

impl Default for SendLog {
    fn default() -> Self {
        SendLog {
            shards: (0..SEND_LOG_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            started: Mutex::new(HashMap::new()),
        }
    }
}

impl SendLog {
    fn shard(&self, key: u64) -> &Mutex<HashMap<(usize, u64), Instant>> {
        &self.shards[(key as usize) % SEND_LOG_SHARDS]
    }

    /// Publisher `publisher` sent its first packet at `at`.
    pub fn started(&self, publisher: usize, at: Instant) {
        if let Ok(mut m) = self.started.lock() {
            m.entry(publisher).or_insert(at);
        }
    }

    pub fn started_at(&self, publisher: usize) -> Option<Instant> {
        self.started.lock().ok()?.get(&publisher).copied()
    }

    pub fn record(&self, publisher: usize, key: u64, at: Instant) {
        if let Ok(mut m) = self.shard(key).lock() {
            m.insert((publisher, key), at);
        }
    }

    pub fn lookup(&self, publisher: usize, key: u64) -> Option<Instant> {
        self.shard(key).lock().ok()?.get(&(publisher, key)).copied()
    }
}

/// Live totals for the progress bar and the per-second send series.
#[derive(Default)]
pub struct Timeline {
    pub sent: AtomicU64,
    pub sent_bytes: AtomicU64,
    pub received: AtomicU64,
    pub received_bytes: AtomicU64,
    pub latency_sum_us: AtomicU64,
    pub latency_count: AtomicU64,
    /// Packets sent in each second of the run.
    pub sent_per_second: Mutex<Vec<u64>>,
    /// Latency of every matched packet, overall and per second of the run.
    /// Shared rather than per subscriber: 400 subscribers × per-second
    /// histograms took gigabytes.
    pub latency: Mutex<LatencyHistograms>,
}

pub struct LatencyHistograms {
    pub overall: Histogram<u64>,
    pub per_second: Vec<Histogram<u64>>,
}

impl Default for LatencyHistograms {
    fn default() -> Self {
        LatencyHistograms {
            overall: histogram(),
            per_second: Vec::new(),
        }
    }
}

impl Timeline {
    pub fn sent(&self, bytes: usize, second: usize) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.sent_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        if let Ok(mut v) = self.sent_per_second.lock() {
            if v.len() <= second {
                v.resize(second + 1, 0);
            }
            v[second] += 1;
        }
    }

    pub fn received(&self, bytes: usize, latency: Option<Duration>, second: usize) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.received_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        let Some(l) = latency else { return };
        let us = (l.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut h) = self.latency.lock() {
            let _ = h.overall.record(us);
            if h.per_second.len() <= second {
                h.per_second.resize_with(second + 1, histogram);
            }
            let _ = h.per_second[second].record(us);
        }
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// One received stream (one SSRC) of one subscriber.
#[derive(Debug)]
pub struct StreamStat {
    pub kind: Option<MediaKind>,
    pub packets: u64,
    pub min_seq: u64,
    pub max_seq: u64,
    /// RFC 3550 interarrival jitter, in seconds.
    pub jitter: f64,
    last_transit: Option<f64>,
}

impl StreamStat {
    fn clock_rate(&self) -> f64 {
        match self.kind {
            Some(MediaKind::Audio) => 48_000.0,
            _ => 90_000.0,
        }
    }

    /// Packets the sender sent in the span we saw, minus those we got.
    pub fn lost(&self) -> u64 {
        (self.max_seq - self.min_seq + 1).saturating_sub(self.packets)
    }

    pub fn expected(&self) -> u64 {
        self.max_seq - self.min_seq + 1
    }
}

#[derive(Clone, Copy, Default)]
pub struct SecondBucket {
    pub received: u64,
    pub bytes: u64,
}

pub struct SubscriberStats {
    pub requested: Instant,
    pub run_start: Instant,
    pub first_packet: Option<Instant>,
    pub first_video: Option<Instant>,
    /// Join time: from the request, or from when the publisher of the
    /// first packet started sending if that was later (in a meeting the
    /// others are still joining), to the first packet; and to the first
    /// video packet.
    pub join: Option<Duration>,
    pub join_video: Option<Duration>,
    /// Phases of the join, from the request: signaling done (the client
    /// has the server's answer), and ICE + DTLS connected.
    pub signaled: Option<Duration>,
    pub connected: Option<Duration>,
    pub streams: HashMap<u32, StreamStat>,
    pub seconds: Vec<SecondBucket>,
    pub closed: Option<String>,
    pub bytes: u64,
}

impl SubscriberStats {
    pub fn new(requested: Instant, run_start: Instant) -> Self {
        SubscriberStats {
            requested,
            run_start,
            first_packet: None,
            first_video: None,
            join: None,
            join_video: None,
            signaled: None,
            connected: None,
            streams: HashMap::new(),
            seconds: Vec::new(),
            closed: None,
            bytes: 0,
        }
    }

    /// Whether a packet of `kind` would set a join time.
    pub fn joining(&self, kind: Option<MediaKind>) -> bool {
        self.first_packet.is_none()
            || (kind == Some(MediaKind::Video) && self.first_video.is_none())
    }

    /// A packet whose publisher started sending at `started` (if known).
    pub fn on_packet(&mut self, p: &ReceivedRtp, started: Option<Instant>) {
        let base = started.map_or(self.requested, |t| t.max(self.requested));
        let waited = p.received_at.saturating_duration_since(base);
        if self.first_packet.is_none() {
            self.first_packet = Some(p.received_at);
            self.join = Some(waited);
        }
        if p.kind == Some(MediaKind::Video) && self.first_video.is_none() {
            self.first_video = Some(p.received_at);
            self.join_video = Some(waited);
        }
        self.bytes += p.payload.len() as u64;
        let s = self.streams.entry(p.ssrc).or_insert(StreamStat {
            kind: p.kind,
            packets: 0,
            min_seq: p.seq,
            max_seq: p.seq,
            jitter: 0.0,
            last_transit: None,
        });
        s.packets += 1;
        s.min_seq = s.min_seq.min(p.seq);
        s.max_seq = s.max_seq.max(p.seq);
        let arrival = p
            .received_at
            .saturating_duration_since(self.run_start)
            .as_secs_f64();
        let transit = arrival - f64::from(p.timestamp) / s.clock_rate();
        if let Some(last) = s.last_transit {
            let d = (transit - last).abs();
            // Timestamps jump at capture loops; ignore jumps over a second.
            if d < 1.0 {
                s.jitter += (d - s.jitter) / 16.0;
            }
        }
        s.last_transit = Some(transit);
        let second = p
            .received_at
            .saturating_duration_since(self.run_start)
            .as_secs() as usize;
        if self.seconds.len() <= second {
            self.seconds.resize(second + 1, SecondBucket::default());
        }
        let b = &mut self.seconds[second];
        b.received += 1;
        b.bytes += p.payload.len() as u64;
    }

    pub fn loss(&self) -> f64 {
        let expected: u64 = self.streams.values().map(StreamStat::expected).sum();
        let lost: u64 = self.streams.values().map(StreamStat::lost).sum();
        if expected == 0 {
            return 1.0;
        }
        lost as f64 / expected as f64
    }

    pub fn packets(&self) -> u64 {
        self.streams.values().map(|s| s.packets).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: MediaKind, at: Instant) -> ReceivedRtp {
        ReceivedRtp {
            mid: None,
            kind: Some(kind),
            track_id: None,
            ssrc: 1,
            seq: 1,
            timestamp: 0,
            payload_type: 96,
            marker: false,
            payload: std::sync::Arc::from(&[0u8; 4][..]),
            received_at: at,
        }
    }

    #[test]
    fn join_counts_from_the_request_or_the_publishers_first_send() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Joined flowing media: from the request.
        let mut flowing = SubscriberStats::new(t0, t0);
        assert!(flowing.joining(Some(MediaKind::Audio)));
        flowing.on_packet(&packet(MediaKind::Audio, t0 + ms(30)), Some(t0 - ms(500)));
        assert!(!flowing.joining(Some(MediaKind::Audio)));
        assert!(flowing.joining(Some(MediaKind::Video)));
        flowing.on_packet(&packet(MediaKind::Video, t0 + ms(40)), Some(t0 - ms(500)));
        assert!(!flowing.joining(Some(MediaKind::Video)));
        assert_eq!(
            (flowing.join, flowing.join_video),
            (Some(ms(30)), Some(ms(40)))
        );
        // A meeting: the publisher started 600 ms after the request.
        let mut meeting = SubscriberStats::new(t0, t0);
        meeting.on_packet(&packet(MediaKind::Video, t0 + ms(620)), Some(t0 + ms(600)));
        assert_eq!(
            (meeting.join, meeting.join_video),
            (Some(ms(20)), Some(ms(20)))
        );
        // Unknown publisher: from the request; later packets change nothing.
        let mut unknown = SubscriberStats::new(t0, t0);
        unknown.on_packet(&packet(MediaKind::Audio, t0 + ms(700)), None);
        unknown.on_packet(&packet(MediaKind::Audio, t0 + ms(900)), Some(t0 + ms(800)));
        assert_eq!(unknown.join, Some(ms(700)));
    }
}
