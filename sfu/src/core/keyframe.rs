//! Merging and throttling of keyframe requests (PLI/FIR) towards a publisher.
//!
//! Every subscriber that loses a picture asks for a keyframe; forwarding all of
//! them would make the publisher send keyframes back to back. Requests for one
//! track are merged: the first goes out at once, the ones that arrive within
//! `KEYFRAME_MIN_INTERVAL` after it collapse into a single request sent when
//! the interval ends.

use std::time::{Duration, Instant};

/// At most one keyframe request per track per this interval, as the issue
/// (and browsers' own encoders, which ignore faster requests) asks.
pub const KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
pub struct KeyframeThrottle {
    last_sent: Option<Instant>,
    pending: bool,
}

impl KeyframeThrottle {
    /// A subscriber asked. Returns true if a request should go upstream now.
    #[must_use]
    pub fn request(&mut self, now: Instant) -> bool {
        match self.last_sent {
            Some(t) if now.saturating_duration_since(t) < KEYFRAME_MIN_INTERVAL => {
                self.pending = true;
                false
            }
            _ => {
                self.last_sent = Some(now);
                self.pending = false;
                true
            }
        }
    }

    /// Time passed. Returns true if a merged request is due now.
    #[must_use]
    pub fn poll(&mut self, now: Instant) -> bool {
        if self.pending && self.timeout().is_some_and(|t| now >= t) {
            self.last_sent = Some(now);
            self.pending = false;
            return true;
        }
        false
    }

    /// When a merged request will be due, if one is pending.
    pub fn timeout(&self) -> Option<Instant> {
        if !self.pending {
            return None;
        }
        self.last_sent.map(|t| t + KEYFRAME_MIN_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_a_burst_into_one_plus_one_trailing() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::default();
        let mut sent = Vec::new();
        // 20 subscribers ask within 100 ms, then time runs on for a second.
        for i in 0..20u64 {
            let now = t0 + Duration::from_millis(i * 5);
            if k.request(now) {
                sent.push(i * 5);
            }
        }
        for ms in (100..1000).step_by(10) {
            if k.poll(t0 + Duration::from_millis(ms)) {
                sent.push(ms);
            }
        }
        assert_eq!(sent, vec![0, 500]);
    }

    #[test]
    fn spaced_requests_pass_and_nothing_trails() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::default();
        assert!(k.request(t0));
        assert!(k.request(t0 + Duration::from_millis(600)));
        assert_eq!(k.timeout(), None);
        assert!(!k.poll(t0 + Duration::from_millis(2000)));
    }

    #[test]
    fn never_more_than_one_per_interval() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::default();
        let mut last: Option<Instant> = None;
        for ms in 0..5000u64 {
            let now = t0 + Duration::from_millis(ms);
            let fired = (ms % 7 == 0 && k.request(now)) | k.poll(now);
            if fired {
                if let Some(l) = last {
                    assert!(now - l >= KEYFRAME_MIN_INTERVAL);
                }
                last = Some(now);
            }
        }
    }
}
