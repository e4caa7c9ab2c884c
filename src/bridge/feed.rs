//! The publishing side shared by every broker: a [`Feeder`] reads the change stream and
//! the alert hub and turns them into messages (`payload`) for a [`Sink`] (MQTT, NATS).
//!
//! It never waits on the broker: [`Sink::offer`] queues without waiting, a full queue is
//! a counted drop, and a node whose newest state could not be queued is sent again at
//! the next chance (every second, and on each new session with `online` first).
//!
//! A daemon publishes its own nodes only: a remote node (`sources:`, with an `origin`) is
//! its daemon's to publish. Relaying it would overwrite that daemon's retained state with
//! this daemon's name, on the very topic this daemon reads it from.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::payload::{self, SERVER_LEVEL, Topics};
use crate::alerts::Alert;
use crate::metrics::Metrics;
use crate::state::{Published, StateStore};

/// The status payloads (`{prefix}/daemon/{name}/status`).
pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";

/// How long an orderly stop waits for `offline` to be written.
pub const STOP_WAIT: Duration = Duration::from_secs(1);

/// Where messages go.
pub trait Sink: Send + 'static {
    /// Queues one message without waiting; `false` when the queue is full.
    fn offer(&self, topic: String, retain: bool, payload: String) -> bool;
    /// An orderly stop: publish `offline` on `status` and close (bounded by the caller).
    fn goodbye(&self, status: String, retain: bool) -> impl Future<Output = ()> + Send;
}

/// What a feeder publishes, and how.
pub struct FeedSettings {
    /// The `bridge` label of the metrics (`mqtt`, `nats`).
    pub label: &'static str,
    pub topics: Topics,
    /// Retain states and status (MQTT).
    pub retain: bool,
    /// Home Assistant discovery prefix, when discovery is on.
    pub discovery: Option<String>,
}

/// Turns changes and alerts into messages.
pub struct Feeder<S: Sink> {
    sink: S,
    set: FeedSettings,
    store: StateStore,
    metrics: Metrics,
    /// Nodes whose newest state could not be queued: sent at the next chance.
    unsent: BTreeSet<String>,
    /// A new session still lacks `online`.
    hello: bool,
    /// Nodes whose Home Assistant discovery was sent in this session.
    discovered: BTreeSet<String>,
}

impl<S: Sink> Feeder<S> {
    pub fn new(sink: S, set: FeedSettings, store: StateStore, metrics: Metrics) -> Feeder<S> {
        Feeder {
            sink,
            set,
            store,
            metrics,
            unsent: BTreeSet::new(),
            hello: false,
            discovered: BTreeSet::new(),
        }
    }

    /// Runs until `stop`; each change of `sessions` is a new broker session.
    pub async fn run(
        mut self,
        mut changes: broadcast::Receiver<Arc<Published>>,
        mut alerts: broadcast::Receiver<Arc<Alert>>,
        mut sessions: watch::Receiver<u64>,
        stop: CancellationToken,
    ) {
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                got = changes.recv() => match got {
                    Ok(p) => self.on_change(&p),
                    Err(RecvError::Lagged(n)) => {
                        self.dropped("lagged", n);
                        self.unsent.extend(self.store.node_ids());
                    }
                    Err(RecvError::Closed) => break,
                },
                got = alerts.recv() => match got {
                    Ok(a) => self.on_alert(&a),
                    Err(RecvError::Lagged(n)) => self.dropped("lagged", n),
                    Err(RecvError::Closed) => {}
                },
                changed = sessions.changed() => {
                    if changed.is_err() { break; }
                    self.on_session();
                }
                _ = retry.tick(), if self.hello || !self.unsent.is_empty() => self.send_unsent(),
            }
        }
        self.goodbye().await;
    }

    fn dropped(&self, reason: &str, n: u64) {
        self.metrics
            .bridge_dropped
            .with_label_values(&[self.set.label, reason])
            .inc_by(n);
    }

    /// Queues one message without waiting; `false` (counted) when the queue is full.
    fn offer(&self, topic: String, retain: bool, payload: String) -> bool {
        let ok = self.sink.offer(topic, retain, payload);
        if !ok {
            self.dropped("queue_full", 1);
        }
        ok
    }

    fn on_change(&mut self, p: &Published) {
        let ev = &p.event;
        let node = ev.node.as_deref().unwrap_or(SERVER_LEVEL);
        // The state first: a reader applying the event finds the node already as it is.
        match &ev.node {
            Some(id) => {
                if !self.send_state(id, ev.seq) {
                    return; // A remote node: its own daemon publishes it.
                }
            }
            // A session came or went: every node of that server changed `stale`.
            None => {
                for n in self.store.nodes() {
                    if n.server == ev.server && n.origin.is_none() {
                        self.send_state(&n.node_id, ev.seq);
                    }
                }
            }
        }
        let epoch = self.store.epoch().to_owned();
        let body = payload::event_json(p, &epoch, &self.set.topics.name);
        self.offer(self.set.topics.event(&ev.server, node), false, body);
    }

    /// Queues a node's newest state; remembers it when the queue is full. `false` for a
    /// remote node, which is not this daemon's to publish.
    fn send_state(&mut self, id: &str, seq: u64) -> bool {
        let Some(view) = self.store.node(id) else {
            return true;
        };
        if view.origin.is_some() {
            self.unsent.remove(id);
            return false;
        }
        if let Some(prefix) = &self.set.discovery {
            if !self.discovered.contains(id) {
                for d in payload::discovery(&self.set.topics, prefix, &view) {
                    self.offer(d.topic, true, d.payload);
                }
                self.discovered.insert(id.to_owned());
            }
        }
        let body = payload::state_json(&view, &self.set.topics.name, self.store.epoch(), seq);
        let topic = self.set.topics.state(&view.server, id);
        if self.offer(topic, self.set.retain, body) {
            self.unsent.remove(id);
        } else {
            self.unsent.insert(id.to_owned());
        }
        true
    }

    fn on_alert(&self, a: &Alert) {
        let topic = match a.node.as_deref() {
            Some(n) => {
                let server = self.store.node(n).map(|v| v.server).unwrap_or_default();
                self.set.topics.alert(&server, n)
            }
            None => self.set.topics.daemon("alert"),
        };
        self.offer(topic, false, payload::alert_json(a, &self.set.topics.name));
    }

    /// A new session: `online`, then every node's discovery (when asked) and newest state.
    fn on_session(&mut self) {
        self.hello = true;
        self.unsent.extend(self.store.node_ids());
        self.send_unsent();
    }

    /// Queues what a session still lacks (`online` first, then states),
    /// as far as the queue has room; the rest waits for the next retry.
    fn send_unsent(&mut self) {
        if self.hello && !self.send_hello() {
            return;
        }
        let seq = self.store.seq();
        for id in std::mem::take(&mut self.unsent) {
            self.send_state(&id, seq);
        }
    }

    fn send_hello(&mut self) -> bool {
        let status = self.set.topics.status();
        if !self.offer(status, self.set.retain, ONLINE.to_owned()) {
            return false;
        }
        // Discovery goes again with each node's next state.
        self.discovered.clear();
        self.hello = false;
        true
    }

    /// An orderly stop: `offline`, then close, within [`STOP_WAIT`].
    async fn goodbye(&self) {
        let bye = self.sink.goodbye(self.set.topics.status(), self.set.retain);
        let _ = tokio::time::timeout(STOP_WAIT, bye).await;
    }
}
