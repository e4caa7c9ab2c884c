//! The reconnect policy, in one place: retry at once (see the fleet below), then `ami_retry_interval`, doubling
//! up to `ami_retry_max` (0 s, 15 s, 30 s, 60 s, 60 s … by default), plus a little jitter
//! so many daemons do not hammer one Asterisk in step. Jitter never takes a wait past
//! `ami_retry_max`: at the top of the ladder it shortens the wait instead. The ladder starts
//! again from the bottom once a session has stayed up for `stable_after`.
//!
//! A daemon watching a fleet must not open every session in the same instant (at start, or
//! when every Asterisk restarts at once): the attempts that are "at once" — the first
//! connect, the immediate retry, the next port probe — wait a random part of a
//! window that grows with the number of supervisors in the process ([`FleetMember`]):
//! [`SPREAD_PER_SERVER`] per server beyond the first, at most `ami_retry_interval`. A single
//! server still connects at once; 1,000 spread over 4 s. Each server draws its own offset, so
//! its later ladder steps stay spread too.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Width of the "at once" window per supervisor beyond the first (1,000 servers: 4 s, at
/// most 250 attempts a second).
pub const SPREAD_PER_SERVER: Duration = Duration::from_millis(4);

/// Supervisors alive in this process.
static FLEET: AtomicUsize = AtomicUsize::new(0);

/// Counts one supervisor in the fleet while it lives.
#[derive(Debug)]
pub struct FleetMember(());

impl FleetMember {
    /// Joins the fleet (leaves on drop).
    pub fn join() -> FleetMember {
        FLEET.fetch_add(1, Ordering::Relaxed);
        FleetMember(())
    }

    /// Supervisors alive now.
    pub fn count() -> usize {
        FLEET.load(Ordering::Relaxed)
    }
}

impl Drop for FleetMember {
    fn drop(&mut self) {
        FLEET.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a server is on the reconnect ladder.
#[derive(Debug, Clone)]
pub struct Backoff {
    interval: Duration,
    max: Duration,
    jitter: f64,
    /// Consecutive failed attempts (or short-lived sessions) since the last reset.
    failures: u32,
}

impl Backoff {
    /// A ladder with the given base interval, cap, and jitter fraction (0.1 = up to +10 %).
    pub fn new(interval: Duration, max: Duration, jitter: f64) -> Backoff {
        Backoff {
            interval,
            max: max.max(interval),
            jitter: jitter.clamp(0.0, 1.0),
            failures: 0,
        }
    }

    /// The wait before the next attempt, without jitter: 0, interval, 2×interval, … ≤ max.
    pub fn base_delay(&self) -> Duration {
        match self.failures {
            0 => Duration::ZERO,
            n => {
                let factor = 1u32.checked_shl(n - 1).unwrap_or(u32::MAX);
                self.interval
                    .checked_mul(factor)
                    .unwrap_or(self.max)
                    .min(self.max)
            }
        }
    }

    /// The wait before the next attempt (with jitter), and one more step up the ladder.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(rand::random::<f64>(), FleetMember::count())
    }

    /// The wait before an attempt that would otherwise be at once (the first connect, the
    /// login after a probe answers): a random part of [`Backoff::spread_window`].
    pub fn spread_delay(&self) -> Duration {
        self.spread_delay_with(rand::random::<f64>(), FleetMember::count())
    }

    /// The "at once" window for a fleet of `servers`: [`SPREAD_PER_SERVER`] per server beyond
    /// the first, at most `ami_retry_interval` (and `ami_retry_max`); zero without jitter.
    pub fn spread_window(&self, servers: usize) -> Duration {
        if self.jitter == 0.0 {
            return Duration::ZERO;
        }
        let others = u32::try_from(servers.saturating_sub(1)).unwrap_or(u32::MAX);
        SPREAD_PER_SERVER
            .checked_mul(others)
            .unwrap_or(self.interval)
            .min(self.interval)
            .min(self.max)
    }

    fn spread_delay_with(&self, r: f64, servers: usize) -> Duration {
        self.spread_window(servers).mul_f64(r.clamp(0.0, 1.0))
    }

    /// [`Backoff::next_delay`] with the random draw and the fleet size given (`r` in 0..1):
    /// the immediate retry waits `r` of the spread window; a later step's jitter is
    /// `base × jitter × r`, added below the cap and subtracted where it would pass it.
    fn next_delay_with(&mut self, r: f64, servers: usize) -> Duration {
        let base = self.base_delay();
        self.failures = self.failures.saturating_add(1);
        if base.is_zero() {
            return self.spread_delay_with(r, servers);
        }
        if self.jitter == 0.0 {
            return base;
        }
        let extra = base.mul_f64(r.clamp(0.0, 1.0) * self.jitter);
        match base.checked_add(extra) {
            Some(up) if up <= self.max => up,
            _ => base.saturating_sub(extra),
        }
    }

    /// How long a session must stay up for the ladder to start again from the bottom.
    pub fn stable_after(&self) -> Duration {
        self.max
    }

    /// Back to the bottom of the ladder (the next retry is immediate).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder(b: &mut Backoff, n: usize) -> Vec<u64> {
        (0..n).map(|_| b.next_delay().as_secs()).collect()
    }

    #[test]
    fn default_ladder_is_0_15_30_60_60() {
        let mut b = Backoff::new(Duration::from_secs(15), Duration::from_secs(60), 0.0);
        assert_eq!(ladder(&mut b, 6), [0, 15, 30, 60, 60, 60]);
        b.reset();
        assert_eq!(ladder(&mut b, 2), [0, 15]);
    }

    #[test]
    fn configured_values_and_jitter_bounds() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(10), 0.0);
        assert_eq!(ladder(&mut b, 6), [0, 2, 4, 8, 10, 10]);
        let mut j = Backoff::new(Duration::from_secs(10), Duration::from_secs(10), 0.1);
        // One server alone retries at once, jitter or not.
        assert_eq!(j.next_delay_with(0.9, 1), Duration::ZERO);
        for _ in 0..100 {
            let d = j.next_delay();
            assert!(
                d >= Duration::from_secs(9) && d <= Duration::from_secs(10),
                "{d:?}"
            );
        }
    }

    #[test]
    fn jitter_never_passes_the_maximum() {
        // The default ladder with 10 % jitter once gave 61 s and 65 s waits with a 60 s max.
        for r in [0.0, 0.5, 0.999_999, 1.0] {
            let mut b = Backoff::new(Duration::from_secs(15), Duration::from_secs(60), 0.1);
            let waits: Vec<Duration> = (0..8).map(|_| b.next_delay_with(r, 1)).collect();
            for w in &waits {
                assert!(*w <= Duration::from_secs(60), "r={r}: {waits:?}");
            }
            // Below the cap the jitter still adds (15 s step → 15..16.5 s).
            assert!(waits[1] >= Duration::from_secs(15), "{waits:?}");
        }
        let mut top = Backoff::new(Duration::from_secs(15), Duration::from_secs(60), 0.1);
        let waits: Vec<Duration> = (0..6).map(|_| top.next_delay_with(1.0, 1)).collect();
        assert_eq!(waits[3], Duration::from_secs(54), "{waits:?}");
        for _ in 0..1000 {
            assert!(top.next_delay() <= Duration::from_secs(60));
        }
    }

    #[test]
    fn a_fleet_spreads_its_at_once_attempts() {
        let b = Backoff::new(Duration::from_secs(15), Duration::from_secs(60), 0.1);
        assert_eq!(b.spread_window(1), Duration::ZERO);
        assert_eq!(b.spread_window(2), SPREAD_PER_SERVER);
        assert_eq!(b.spread_window(1001), Duration::from_secs(4));
        // Never past the retry interval (nor the maximum), however large the fleet.
        assert_eq!(b.spread_window(100_000), Duration::from_secs(15));
        assert_eq!(b.spread_window(usize::MAX), Duration::from_secs(15));
        let short = Backoff::new(Duration::from_secs(2), Duration::from_secs(2), 0.1);
        assert_eq!(short.spread_window(5000), Duration::from_secs(2));
        // Without jitter everything stays exact.
        let exact = Backoff::new(Duration::from_secs(15), Duration::from_secs(60), 0.0);
        assert_eq!(exact.spread_window(1000), Duration::ZERO);
        // The immediate retry draws from the window; the ladder continues as before.
        let mut fleet = Backoff::new(Duration::from_secs(15), Duration::from_secs(60), 0.1);
        assert_eq!(fleet.next_delay_with(0.5, 1001), Duration::from_secs(2));
        assert_eq!(fleet.next_delay_with(0.0, 1001), Duration::from_secs(15));
        // 1,000 draws fill the window evenly: no second holds more than a third of them.
        let mut per_second = [0usize; 4];
        for i in 0..1000 {
            let d = b.spread_delay_with((i as f64 + 0.5) / 1000.0, 1001);
            per_second[(d.as_secs() as usize).min(3)] += 1;
        }
        assert!(per_second.iter().all(|n| *n <= 334), "{per_second:?}");
    }

    #[test]
    fn never_overflows() {
        let mut b = Backoff::new(Duration::from_secs(15), Duration::from_secs(60), 0.0);
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), Duration::from_secs(60));
    }
}
