//! Per-node polling: XStat + SawStat, the truth that corrects what events missed.
//!
//! One task per node. It polls right after every (re)connect so the model is complete at
//! once, then every interval (config `polling_interval_seconds`, per-node
//! `polling_interval`, or changed at run time by Lua's adaptive-polling plugin), skips
//! while the server is disconnected, and polls at once on request. Results go to the
//! state engine, which reconciles them with events.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::ami::{Action, ActionError, AmiHandle, Reply};
use crate::metrics::Metrics;

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
    interval: Arc<watch::Sender<Duration>>,
    now: Arc<Notify>,
}

impl PollerHandle {
    /// The current interval.
    pub fn interval(&self) -> Duration {
        *self.interval.borrow()
    }

    /// Changes the interval (clamped to 1 s … 1 h); takes effect from the current wait.
    pub fn set_interval(&self, d: Duration) -> Duration {
        let d = d.clamp(MIN_INTERVAL, MAX_INTERVAL);
        self.interval.send_replace(d);
        d
    }

    /// Polls as soon as possible.
    pub fn poll_now(&self) {
        self.now.notify_one();
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

/// Starts the poller task for one node.
pub fn spawn(parts: PollerParts) -> PollerHandle {
    let (tx, rx) = watch::channel(parts.interval.clamp(MIN_INTERVAL, MAX_INTERVAL));
    let handle = PollerHandle {
        interval: Arc::new(tx),
        now: Arc::new(Notify::new()),
    };
    parts
        .metrics
        .poll_interval
        .with_label_values(&[&parts.node])
        .set(parts.interval.as_secs_f64());
    tokio::spawn(run(parts, rx, handle.now.clone()));
    handle
}

async fn run(parts: PollerParts, mut interval: watch::Receiver<Duration>, now: Arc<Notify>) {
    let mut status = parts.ami.watch_status();
    let mut was_connected = status.borrow().connected;
    let mut next = tokio::time::Instant::now() + *interval.borrow();
    // A session that is already up when we start deserves a first poll at once.
    let mut due = was_connected && parts.automatic;
    loop {
        if !due {
            tokio::select! {
                _ = parts.shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(next), if parts.automatic => due = true,
                _ = now.notified() => due = true,
                changed = interval.changed() => {
                    if changed.is_err() { return; }
                    let d = *interval.borrow_and_update();
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
        next = tokio::time::Instant::now() + *interval.borrow();
        if !parts.ami.is_connected() {
            tracing::info!(node = %parts.node, "[POLLING] Skipping poll for node {} (AMI not connected, waiting for reconnection...)", parts.node);
            parts
                .metrics
                .polls
                .with_label_values(&[parts.node.as_str(), "skipped"])
                .inc();
            continue;
        }
        let result = poll_once(&parts.node, &parts.ami).await;
        let ok = result.xstat.is_ok() && result.sawstat.is_ok();
        parts
            .metrics
            .polls
            .with_label_values(&[parts.node.as_str(), if ok { "ok" } else { "error" }])
            .inc();
        parts
            .metrics
            .poll_duration
            .with_label_values(&[&parts.node])
            .observe(result.duration.as_secs_f64());
        if let Err(e) = result.xstat.as_ref().and(result.sawstat.as_ref()) {
            tracing::warn!(node = %parts.node, "[POLLING] poll of node {} failed: {e}", parts.node);
        }
        if parts.results.send(result).await.is_err() {
            return;
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
