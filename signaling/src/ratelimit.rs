//! Rate-limited warnings for bad client input: the first occurrence of each
//! kind is logged, then at most one line per interval with the count of
//! what was suppressed, so a misbehaving client cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one log line per kind per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

pub struct BadInputLog {
    kinds: Mutex<Vec<(&'static str, Instant, u64)>>,
    pub total: AtomicU64,
}

impl BadInputLog {
    pub const fn new() -> Self {
        BadInputLog {
            kinds: Mutex::new(Vec::new()),
            total: AtomicU64::new(0),
        }
    }

    /// Counts one bad input of `kind` and logs it unless that kind was
    /// logged within the last interval.
    pub fn record(&self, kind: &'static str, detail: &dyn std::fmt::Display) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let Ok(mut kinds) = self.kinds.lock() else {
            return;
        };
        match kinds.iter_mut().find(|(k, _, _)| *k == kind) {
            Some((_, last, suppressed)) => {
                if now.duration_since(*last) >= LOG_INTERVAL {
                    tracing::warn!(kind, suppressed = *suppressed, "bad client input: {detail}");
                    *last = now;
                    *suppressed = 0;
                } else {
                    *suppressed += 1;
                }
            }
            None => {
                tracing::warn!(kind, "bad client input: {detail}");
                kinds.push((kind, now, 0));
            }
        }
    }
}

pub static BAD_INPUT: BadInputLog = BadInputLog::new();
