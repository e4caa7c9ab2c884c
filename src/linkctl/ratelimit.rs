//! Control actions per identity per minute: a sliding window of the last minute's
//! attempts. A refused attempt says when the oldest one leaves the window (`Retry-After`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

const WINDOW: Duration = Duration::from_secs(60);
/// Identities tracked at most (idle ones are dropped first).
const MAX_IDENTITIES: usize = 10_000;

/// The limiter. Times come from tokio's clock, so tests can pause it.
pub struct RateLimiter {
    per_minute: usize,
    seen: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute: per_minute.max(1) as usize,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one slot for `who`, or says how long until one frees up.
    pub fn take(&self, who: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_IDENTITIES && !seen.contains_key(who) {
            seen.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
        }
        let q = seen.entry(who.to_owned()).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            q.pop_front();
        }
        if q.len() >= self.per_minute {
            let oldest = q.front().copied().unwrap_or(now);
            return Err(WINDOW.saturating_sub(now.duration_since(oldest)));
        }
        q.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refuses_past_the_limit_until_the_window_moves() {
        let r = RateLimiter::new(3);
        for _ in 0..3 {
            assert!(r.take("alice").is_ok());
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        assert_eq!(r.take("alice"), Err(Duration::from_secs(30)));
        assert!(r.take("bob").is_ok(), "limits are per identity");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(r.take("alice").is_ok());
        assert!(r.take("alice").is_err());
    }
}
