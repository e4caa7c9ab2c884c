//! Polling: XStat + SawStat, the truth that corrects what events missed.
//!
//! One task per AMI server polls all of that server's nodes, each on its own schedule. A
//! node is polled right after every (re)connect so the model is complete at once, then
//! every interval (config `polling_interval_seconds`, per-node `polling_interval`, or
//! changed at run time by Lua's adaptive-polling plugin); polls are skipped while the
//! server is disconnected, and a node is polled at once on request. Polls of different
//! nodes run side by side; each node has at most one in flight. Results go to the state
//! engine, which reconciles them with events.
//!
//! One task and one timer per server, not per node: a fleet of 1,000 servers × 5 nodes
//! keeps 1,000 small tasks waiting, and a poll's futures exist only while it runs.
//!
//! "Poll now" is a flag, not a queue: one poll in flight and at most one more queued,
//! however often it is asked for.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
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

/// Controls one node's polling. Cheap to clone.
#[derive(Clone)]
pub struct PollerHandle {
    shared: Arc<Shared>,
    index: usize,
}

/// What a server's poller task and its nodes' handles share: one allocation per server.
struct Shared {
    /// Wakes the task: a node's interval changed or a poll was asked for (a stored permit
    /// if it is busy; it then looks at every node's flags).
    wake: Notify,
    nodes: Box<[Slot]>,
}

/// One node's controls.
struct Slot {
    /// The interval, in milliseconds.
    interval_ms: AtomicU64,
    /// The interval changed and the task has not seen it yet.
    interval_changed: AtomicBool,
    /// A poll has been asked for and not started yet.
    pending: AtomicBool,
}

impl PollerHandle {
    fn slot(&self) -> &Slot {
        &self.shared.nodes[self.index]
    }

    /// The current interval.
    pub fn interval(&self) -> Duration {
        self.slot().interval()
    }

    /// Changes the interval (clamped to 1 s … 1 h); takes effect from the current wait.
    pub fn set_interval(&self, d: Duration) -> Duration {
        let slot = self.slot();
        let d = slot.store_interval(d);
        slot.interval_changed.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        d
    }

    /// Polls as soon as possible. Requests made before the poll starts are one request.
    pub fn poll_now(&self) {
        self.slot().pending.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }

    /// Whether a poll is asked for and not yet started (a new request would coalesce).
    pub fn poll_pending(&self) -> bool {
        self.slot().pending.load(Ordering::SeqCst)
    }
}

impl Slot {
    fn new(interval: Duration) -> Slot {
        let slot = Slot {
            interval_ms: AtomicU64::new(0),
            interval_changed: AtomicBool::new(false),
            pending: AtomicBool::new(false),
        };
        slot.store_interval(interval);
        slot
    }

    fn store_interval(&self, d: Duration) -> Duration {
        let d = d.clamp(MIN_INTERVAL, MAX_INTERVAL);
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.interval_ms.store(ms, Ordering::SeqCst);
        d
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.load(Ordering::SeqCst))
    }
}

/// Everything one server's poller needs.
pub struct ServerPollerParts {
    /// The server's nodes and their first intervals.
    pub nodes: Vec<(String, Duration)>,
    pub ami: AmiHandle,
    pub results: mpsc::Sender<PollResult>,
    pub metrics: Metrics,
    /// `disable_link_poller`: no automatic polls (poll-now still works).
    pub automatic: bool,
    pub shutdown: CancellationToken,
}

/// Starts the poller task of one server; returns its nodes' handles, in the order given.
/// Log lines carry `node` and `server` fields (no span per poller: a fleet has thousands).
pub fn spawn_server(parts: ServerPollerParts) -> Vec<PollerHandle> {
    let shared = Arc::new(Shared {
        wake: Notify::new(),
        nodes: parts.nodes.iter().map(|(_, d)| Slot::new(*d)).collect(),
    });
    for ((node, _), slot) in parts.nodes.iter().zip(shared.nodes.iter()) {
        parts
            .metrics
            .poll_interval
            .with_label_values(&[node])
            .set(slot.interval().as_secs_f64());
    }
    let handles = (0..parts.nodes.len())
        .map(|index| PollerHandle {
            shared: shared.clone(),
            index,
        })
        .collect();
    if !parts.nodes.is_empty() {
        tokio::spawn(run(parts, shared));
    }
    handles
}

/// A node as its server's task sees it.
struct Clock {
    node: Arc<str>,
    /// When the next automatic poll is due.
    next: Instant,
    /// A poll is due (after a reconnect, a request, or its time) and not started yet.
    due: bool,
    in_flight: bool,
}

/// The polls running now: each says which node it was and whether the engine took it.
type Running = FuturesUnordered<Pin<Box<dyn Future<Output = (usize, bool)> + Send>>>;

/// What the task works with (moved out of [`ServerPollerParts`]).
struct Task {
    ami: AmiHandle,
    results: mpsc::Sender<PollResult>,
    metrics: Metrics,
    shared: Arc<Shared>,
    clocks: Vec<Clock>,
    running: Running,
}

async fn run(parts: ServerPollerParts, shared: Arc<Shared>) {
    let automatic = parts.automatic;
    let shutdown = parts.shutdown;
    let mut status = parts.ami.watch_status();
    let mut was_connected = status.borrow().connected;
    let now = Instant::now();
    let clocks = (parts.nodes.into_iter().zip(shared.nodes.iter()))
        .map(|((node, _), slot)| Clock {
            node: node.into(),
            next: now + slot.interval(),
            // A session that is already up when we start deserves a first poll at once.
            due: was_connected && automatic,
            in_flight: false,
        })
        .collect();
    let mut t = Task {
        ami: parts.ami,
        results: parts.results,
        metrics: parts.metrics,
        shared,
        clocks,
        running: FuturesUnordered::new(),
    };
    loop {
        t.start_due();
        // The earliest automatic poll of a node that is not polling now.
        let earliest = automatic
            .then(|| {
                t.clocks
                    .iter()
                    .filter(|c| !c.in_flight)
                    .map(|c| c.next)
                    .min()
            })
            .flatten();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(earliest.unwrap_or(now)), if earliest.is_some() => {
                let now = Instant::now();
                for c in t.clocks.iter_mut().filter(|c| c.next <= now) {
                    c.due = true;
                }
            }
            _ = t.shared.wake.notified() => t.take_requests(),
            changed = status.changed() => {
                if changed.is_err() { return; }
                let up = status.borrow_and_update().connected;
                // Resync right after every (re)connect.
                if up && !was_connected && automatic {
                    t.clocks.iter_mut().for_each(|c| c.due = true);
                }
                was_connected = up;
            }
            Some((i, engine_alive)) = t.running.next(), if !t.running.is_empty() => {
                if !engine_alive { return; }
                t.clocks[i].in_flight = false;
                // Asked for while it ran: the one queued poll.
                if t.shared.nodes[i].pending.load(Ordering::SeqCst) {
                    t.clocks[i].due = true;
                }
            }
        }
    }
}

impl Task {
    /// Reads the nodes' flags after a wake-up: new intervals and requested polls.
    fn take_requests(&mut self) {
        let now = Instant::now();
        for (c, slot) in self.clocks.iter_mut().zip(self.shared.nodes.iter()) {
            if slot.interval_changed.swap(false, Ordering::SeqCst) {
                let d = slot.interval();
                self.metrics
                    .poll_interval
                    .with_label_values(&[&*c.node])
                    .set(d.as_secs_f64());
                // Shorter interval: do not wait out the old, longer one.
                c.next = c.next.min(now + d);
            }
            // A stale wake-up (the request was served by a poll already) is ignored; a
            // request while the node polls waits for that poll to end.
            if slot.pending.load(Ordering::SeqCst) && !c.in_flight {
                c.due = true;
            }
        }
    }

    /// Starts the poll of every node that is due and not polling; while the server is
    /// disconnected, a due poll is skipped (and counted).
    fn start_due(&mut self) {
        let now = Instant::now();
        for (i, (c, slot)) in self
            .clocks
            .iter_mut()
            .zip(self.shared.nodes.iter())
            .enumerate()
        {
            if !c.due || c.in_flight {
                continue;
            }
            c.due = false;
            slot.pending.store(false, Ordering::SeqCst);
            c.next = now + slot.interval();
            if !self.ami.is_connected() {
                PollSkipped {
                    node: &c.node,
                    server: self.ami.server(),
                }
                .emit(&self.metrics);
                continue;
            }
            c.in_flight = true;
            let node = c.node.clone();
            let ami = self.ami.clone();
            let results = self.results.clone();
            let metrics = self.metrics.clone();
            // Boxed: a poll's futures (two actions with their timeouts, the hand-off to
            // the engine) exist only while it runs.
            self.running.push(Box::pin(async move {
                let result = poll_once(&node, &ami).await;
                PollCompleted { result: &result }.emit(&metrics);
                (i, results.send(result).await.is_ok())
            }));
        }
    }
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
