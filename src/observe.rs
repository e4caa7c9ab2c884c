//! Typed internal events, in the style of Vector's: each notable thing the daemon does
//! (an AMI session coming up or going down, a poll, a protocol error, a resync, a script
//! error, an alert…) is one typed value whose [`InternalEvent::emit`] both counts its
//! metric (with typed labels) and writes its log line, so the two never drift apart.
//!
//! Event types live beside the code that raises them (e.g. `ami::events`); this module
//! holds the trait, the clock every module may use, and [`LogLimiter`] for log lines that
//! can repeat (at most one line per interval and key, with a count of what was held back).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::metrics::Metrics;

/// One notable thing that happened. `emit` counts its metric and logs it (rate-limited
/// where it can repeat).
pub trait InternalEvent {
    fn emit(self, metrics: &Metrics);
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Rate limit for repeating log lines: `allow(key)` says whether a line for `key` may be
/// written now, and how many were held back since the last one written.
pub struct LogLimiter {
    every: Duration,
    last: Mutex<HashMap<String, (Instant, u64)>>,
    max_keys: usize,
}

/// What [`LogLimiter::allow`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogDecision {
    /// Write the line; `suppressed` lines for this key were held back before it.
    Write { suppressed: u64 },
    /// Hold it back (counted).
    Hold,
}

impl LogLimiter {
    /// At most one line per `every` for each key; at most `max_keys` keys are tracked
    /// (past that, keys share one slot, so a flood of distinct keys cannot grow memory).
    pub fn new(every: Duration, max_keys: usize) -> LogLimiter {
        LogLimiter {
            every,
            last: Mutex::new(HashMap::new()),
            max_keys: max_keys.max(1),
        }
    }

    /// Whether a line for `key` may be written now.
    pub fn allow(&self, key: &str) -> LogDecision {
        let now = Instant::now();
        let mut last = match self.last.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let key = if last.contains_key(key) || last.len() < self.max_keys {
            key
        } else {
            "\u{0}overflow"
        };
        match last.get_mut(key) {
            Some((at, held)) if now.duration_since(*at) < self.every => {
                *held += 1;
                LogDecision::Hold
            }
            Some((at, held)) => {
                let suppressed = *held;
                *at = now;
                *held = 0;
                LogDecision::Write { suppressed }
            }
            None => {
                last.insert(key.to_owned(), (now, 0));
                LogDecision::Write { suppressed: 0 }
            }
        }
    }
}

/// Cuts `text` to at most `max` characters (on a character boundary); says whether it
/// was cut. Used for anything a peer sends that is stored or shown (banners, replies).
pub fn clip(text: &str, max: usize) -> (String, bool) {
    match text.char_indices().nth(max) {
        Some((at, _)) => (text[..at].to_owned(), true),
        None => (text.to_owned(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_writes_once_per_interval_and_counts_the_rest() {
        let l = LogLimiter::new(Duration::from_secs(3600), 4);
        assert_eq!(l.allow("a"), LogDecision::Write { suppressed: 0 });
        assert_eq!(l.allow("a"), LogDecision::Hold);
        assert_eq!(l.allow("a"), LogDecision::Hold);
        assert_eq!(l.allow("b"), LogDecision::Write { suppressed: 0 });
    }

    #[test]
    fn limiter_memory_is_bounded_under_distinct_keys() {
        let l = LogLimiter::new(Duration::from_secs(3600), 2);
        for i in 0..1000 {
            let _ = l.allow(&format!("k{i}"));
        }
        assert!(l.last.lock().map(|m| m.len()).unwrap_or(0) <= 3);
    }

    #[test]
    fn clip_cuts_on_char_boundaries() {
        assert_eq!(clip("héllo", 2), ("hé".to_owned(), true));
        assert_eq!(clip("abc", 5), ("abc".to_owned(), false));
    }
}
