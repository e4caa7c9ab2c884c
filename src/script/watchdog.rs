//! The watchdog: notices when the Lua thread has been inside one callback far past its
//! time budget (a path the instruction hook cannot reach, such as a long C call like
//! `string.find` with a pathological pattern) and says so.
//!
//! The Lua thread records what it is running in a [`Watch`] before every call into a
//! script and clears it after. A separate OS thread looks at it every [`TICK`]; a call
//! running longer than [`stuck_after`] is *condemned*: the script shows
//! `"status":"disabled"` with the reason in `/api/scripts`, `nexus_script_disabled{script}`
//! is 1, `/api/health` says `degraded` while the thread is stuck, and when (if) the call
//! returns, the host unloads the script.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::status::{ScriptRegistry, ScriptState};
use crate::metrics::Metrics;
use crate::observe::now_ms;

/// How often the watchdog looks.
pub const TICK: Duration = Duration::from_millis(50);
/// Least extra time past the budget before a call counts as stuck.
pub const MARGIN: Duration = Duration::from_millis(500);

/// A call is stuck once it has run this long: its budget, plus the budget again or
/// [`MARGIN`], whichever is longer.
pub fn stuck_after(limit: Duration) -> Duration {
    limit + limit.max(MARGIN)
}

/// What the Lua thread is running now.
struct Busy {
    key: Arc<str>,
    name: Arc<str>,
    since: Instant,
    limit: Duration,
    condemned: bool,
}

/// Shared between the Lua thread (writer) and the watchdog thread (reader).
pub struct Watch {
    busy: Mutex<Option<Busy>>,
    registry: ScriptRegistry,
    metrics: Metrics,
    stopped: AtomicBool,
}

impl Watch {
    pub fn new(registry: ScriptRegistry, metrics: Metrics) -> Arc<Watch> {
        Arc::new(Watch {
            busy: Mutex::new(None),
            registry,
            metrics,
            stopped: AtomicBool::new(false),
        })
    }

    /// The Lua thread enters a script's callback.
    pub fn begin(&self, key: &Arc<str>, name: &Arc<str>, limit: Duration) {
        *self.lock() = Some(Busy {
            key: key.clone(),
            name: name.clone(),
            since: Instant::now(),
            limit,
            condemned: false,
        });
    }

    /// The callback returned; `true` when the watchdog condemned it meanwhile. The
    /// problem is cleared under the same lock [`Watch::check`] sets it under, so a check
    /// that condemns a call just as it returns cannot leave the problem behind.
    pub fn end(&self) -> bool {
        let mut busy = self.lock();
        let condemned = busy.take().is_some_and(|b| b.condemned);
        if condemned {
            self.registry.set_problem(None);
        }
        condemned
    }

    /// Stops the watchdog thread.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Busy>> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One look: condemns the running call if it is stuck. Returns the script's name
    /// when it was condemned by this look.
    pub fn check(&self, now: Instant) -> Option<String> {
        let mut busy = self.lock();
        let b = busy.as_mut().filter(|b| !b.condemned)?;
        let ran = now.saturating_duration_since(b.since);
        if ran < stuck_after(b.limit) {
            return None;
        }
        b.condemned = true;
        let (key, name, limit) = (b.key.clone(), b.name.clone(), b.limit);
        // All of it while still holding `busy`: `end` (which clears the problem, and
        // after which the host disables or reloads the script) waits for this, so a call
        // returning just as it is condemned cannot be overwritten by a stale verdict.
        let reason = format!(
            "disabled by the watchdog: one callback ran over {} ms (budget {} ms, lua.callback_budget); the Lua thread was stuck in it",
            ran.as_millis(),
            limit.as_millis()
        );
        tracing::error!(script = %name, "[LUA] {name}: {reason}");
        self.registry.update(&key, |s| {
            s.status = ScriptState::Disabled;
            s.disabled_reason = Some(reason.clone());
            s.last_error = Some(reason.clone());
            s.last_error_at_ms = Some(now_ms());
        });
        self.metrics
            .script_disabled
            .with_label_values(&[&*name])
            .set(1);
        // Health last: whoever sees the problem finds the status and the metric set.
        self.registry.set_problem(Some(format!(
            "the Lua thread is stuck in {name} (over {} ms, budget {} ms)",
            ran.as_millis(),
            limit.as_millis()
        )));
        drop(busy);
        Some(name.to_string())
    }
}

/// Starts the watchdog thread; it ends after [`Watch::stop`].
pub fn spawn(watch: Arc<Watch>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("nexus-lua-watchdog".into())
        .spawn(move || {
            while !watch.stopped.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                watch.check(Instant::now());
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_past_budget_and_margin_is_condemned_once() {
        let reg = ScriptRegistry::default();
        let w = Watch::new(reg.clone(), Metrics::default());
        let (key, name): (Arc<str>, Arc<str>) = ("/s/x.lua".into(), "x.lua".into());
        w.begin(&key, &name, Duration::from_millis(100));
        let t0 = Instant::now();
        assert_eq!(w.check(t0 + Duration::from_millis(400)), None);
        assert!(reg.problem().is_none());
        assert_eq!(
            w.check(t0 + Duration::from_millis(700)).as_deref(),
            Some("x.lua")
        );
        assert!(reg.problem().is_some_and(|p| p.contains("x.lua")));
        assert_eq!(w.check(t0 + Duration::from_secs(9)), None, "only once");
        assert!(w.end(), "the host learns it was condemned");
        assert!(reg.problem().is_none(), "healthy again once it returned");
        w.begin(&key, &name, Duration::from_millis(100));
        assert!(!w.end());
    }
}
