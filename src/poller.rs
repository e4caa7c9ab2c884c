//! Per-node polling: XStat + SawStat, the truth that corrects what events missed.
//!
//! One task per node. It polls right after every (re)connect so the model is complete at
//! once, then every interval (config `polling_interval_seconds`, per-node
//! `polling_interval`, or changed at run time by Lua's adaptive-polling plugin), skips
//! while the server is disconnected, and polls at once on request. Results go to the
//! state engine, which reconciles them with events.
//!
//! "Poll now" is a flag, not a queue: one poll in flight and at most one more queued,
//! however often it is asked for.

use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::ami::{Action, ActionError, AmiHandle, Reply};
use crate::metrics::Metrics;
use crate::observe::{InternalEvent, LogDecision, LogLimiter};

/// Shortest and longest interval accepted at run time.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// What one poll brought back (parsed by the engine).
#[derive(Debug)]
pub struct PollResult {
    pub node: String,
    pub server: String,
    pub xstat: Result<Reply, ActionError>,
    pub sawstat: Result<Reply, ActionError>,
    pub duration: Duration,
}

/// Controls one node's poller. Cheap to clone.
#[derive(Clone)]
pub struct PollerHandle {
    shared: Arc<Shared>,
}

/// What a poller and its handles share: one small allocation per node (a fleet has
/// thousands; a `watch` channel for the interval alone took 450 bytes).
struct Shared {
    /// The interval, in milliseconds.
    interval_ms: AtomicU64,
    /// Wakes the poller when the interval changed (a stored permit if it is busy).
    interval_changed: Notify,
    now: Notify,
    /// A poll has been asked for and not started yet.
    pending: AtomicBool,
}

impl PollerHandle {
    fn new(interval: Duration) -> PollerHandle {
        let handle = PollerHandle {
            shared: Arc::new(Shared {
                interval_ms: AtomicU64::new(0),
                interval_changed: Notify::new(),
                now: Notify::new(),
                pending: AtomicBool::new(false),
            }),
        };
        handle.store_interval(interval);
        handle
    }

    fn store_interval(&self, d: Duration) -> Duration {
        let d = d.clamp(MIN_INTERVAL, MAX_INTERVAL);
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.shared.interval_ms.store(ms, Ordering::SeqCst);
        d
    }

    /// The current interval.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.shared.interval_ms.load(Ordering::SeqCst))
    }

    /// Changes the interval (clamped to 1 s … 1 h); takes effect from the current wait.
    pub fn set_interval(&self, d: Duration) -> Duration {
        let d = self.store_interval(d);
        self.shared.interval_changed.notify_one();
        d
    }

    /// Polls as soon as possible. Requests made before the poll starts are one request.
    pub fn poll_now(&self) {
        self.shared.pending.store(true, Ordering::SeqCst);
        self.shared.now.notify_one();
    }

    /// Whether a poll is asked for and not yet started (a new request would coalesce).
    pub fn poll_pending(&self) -> bool {
        self.shared.pending.load(Ordering::SeqCst)
    }
}

/// Everything a poller needs.
pub struct PollerParts {
    pub node: String,
    pub interval: Duration,
    pub ami: AmiHandle,
    pub results: mpsc::Sender<PollResult>,
    pub metrics: Metrics,
    /// `disable_link_poller`: no automatic polls (poll-now still works).
    pub automatic: bool,
    pub shutdown: CancellationToken,
}

/// Starts the poller task for one node. Its log lines carry `node` and `server` fields
/// (no span per poller: a fleet has thousands).
pub fn spawn(parts: PollerParts) -> PollerHandle {
    let handle = PollerHandle::new(parts.interval);
    parts
        .metrics
        .poll_interval
        .with_label_values(&[&parts.node])
        .set(parts.interval.as_secs_f64());
    tokio::spawn(run(parts, handle.clone()));
    handle
}

async fn run(parts: PollerParts, handle: PollerHandle) {
    let shared = &handle.shared;
    let mut status = parts.ami.watch_status();
    let mut was_connected = status.borrow().connected;
    let mut next = tokio::time::Instant::now() + handle.interval();
    // A session that is already up when we start deserves a first poll at once.
    let mut due = was_connected && parts.automatic;
    loop {
        if !due {
            tokio::select! {
                _ = parts.shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(next), if parts.automatic => due = true,
                // A stale wake-up (the request was served by a poll already) is ignored.
                _ = shared.now.notified() => due = handle.poll_pending(),
                _ = shared.interval_changed.notified() => {
                    let d = handle.interval();
                    parts.metrics.poll_interval.with_label_values(&[&parts.node]).set(d.as_secs_f64());
                    // Shorter interval: do not wait out the old, longer one.
                    next = next.min(tokio::time::Instant::now() + d);
                }
                changed = status.changed() => {
                    if changed.is_err() { return; }
                    let up = status.borrow_and_update().connected;
                    // Resync right after every (re)connect.
                    if up && !was_connected { due = parts.automatic; }
                    was_connected = up;
                }
            }
            continue;
        }
        due = false;
        shared.pending.store(false, Ordering::SeqCst);
        next = tokio::time::Instant::now() + handle.interval();
        if !parts.ami.is_connected() {
            PollSkipped {
                node: &parts.node,
                server: parts.ami.server(),
            }
            .emit(&parts.metrics);
            continue;
        }
        // Boxed: the poll's futures (two actions with their timeouts, the hand-off to the
        // engine) exist only while a poll runs, not in every waiting poller of a fleet.
        if !Box::pin(poll_and_report(&parts)).await {
            return;
        }
    }
}

/// Polls, counts the poll, and hands the result to the engine; false when the engine is
/// gone.
async fn poll_and_report(parts: &PollerParts) -> bool {
    let result = poll_once(&parts.node, &parts.ami).await;
    PollCompleted { result: &result }.emit(&parts.metrics);
    parts.results.send(result).await.is_ok()
}

/// One warning per node every 30 s for failed polls.
static POLL_LOG: LazyLock<LogLimiter> =
    LazyLock::new(|| LogLimiter::new(Duration::from_secs(30), 256));

/// A poll was due while the server was disconnected.
struct PollSkipped<'a> {
    node: &'a str,
    server: &'a str,
}

impl InternalEvent for PollSkipped<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .polls
            .with_label_values(&[self.node, "skipped"])
            .inc();
        tracing::info!(node = %self.node, server = %self.server, "[POLLING] Skipping poll for node {} (AMI not connected, waiting for reconnection...)", self.node);
    }
}

/// A poll's round trips finished (well or not).
struct PollCompleted<'a> {
    result: &'a PollResult,
}

impl InternalEvent for PollCompleted<'_> {
    fn emit(self, metrics: &Metrics) {
        let r = self.result;
        let ok = r.xstat.is_ok() && r.sawstat.is_ok();
        metrics
            .polls
            .with_label_values(&[r.node.as_str(), if ok { "ok" } else { "error" }])
            .inc();
        metrics
            .poll_duration
            .with_label_values(&[&r.node])
            .observe(r.duration.as_secs_f64());
        match r.xstat.as_ref().and(r.sawstat.as_ref()) {
            Ok(_) => {
                tracing::debug!(node = %r.node, server = %r.server, "[POLLING] polled node {} in {:?}", r.node, r.duration)
            }
            Err(e) => {
                if let LogDecision::Write { suppressed } = POLL_LOG.allow(&r.node) {
                    tracing::warn!(node = %r.node, server = %r.server, "[POLLING] poll of node {} failed: {e} ({suppressed} more failures not logged)", r.node);
                }
            }
        }
    }
}

/// One XStat + SawStat round trip.
pub async fn poll_once(node: &str, ami: &AmiHandle) -> PollResult {
    let started = tokio::time::Instant::now();
    let xstat = rpt_status(ami, "XStat", node).await;
    let sawstat = rpt_status(ami, "SawStat", node).await;
    PollResult {
        node: node.to_owned(),
        server: ami.server().to_owned(),
        xstat,
        sawstat,
        duration: started.elapsed(),
    }
}

async fn rpt_status(ami: &AmiHandle, command: &str, node: &str) -> Result<Reply, ActionError> {
    let action = Action::new("RptStatus")
        .and_then(|a| a.header("Command", command))
        .and_then(|a| a.header("Node", node))
        .map_err(|e| ActionError::Rejected {
            action: "RptStatus".into(),
            message: e.to_string(),
        })?;
    ami.send(action).await
}
