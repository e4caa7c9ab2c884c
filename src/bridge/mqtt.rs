//! The MQTT publisher (`bridges.mqtt`): the change stream, node states, alerts and the
//! daemon's status, written to a broker with `rumqttc`.
//!
//! Two tasks. The *feeder* reads the change stream and the alert hub (subscribed before
//! the engine starts, like history) and hands messages to the client's bounded queue
//! with `try_publish`: it never waits, so the engine is never slowed; a full queue (the
//! broker is away) counts a drop. The *network* task drives the connection, reconnecting
//! with backoff (`ami::backoff`), and tells the feeder about each new session; the
//! feeder then publishes `online`, the discovery configs and every node's newest state,
//! so retained state is never stale after an outage. The broker publishes the last will
//! `offline` if the daemon dies; an orderly stop publishes `offline` itself.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, Transport};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::payload::{self, SERVER_LEVEL, Topics};
use crate::alerts::Alert;
use crate::ami::backoff::Backoff;
use crate::config::bridges::{BrokerLogin, MqttConfig};
use crate::metrics::Metrics;
use crate::state::{Published, StateStore};

/// The `bridge` label of this publisher's metrics.
const LABEL: &str = "mqtt";

/// How long an orderly stop waits for `offline` and the DISCONNECT to be written.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// The last will and `status` payloads.
pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";

/// Client options for a broker login: keepalive, credentials, TLS (rustls, system roots).
pub fn options(login: &BrokerLogin, keep_alive: Duration) -> MqttOptions {
    let mut o = MqttOptions::new(&login.client_id, &login.addr.host, login.addr.port);
    o.set_keep_alive(keep_alive);
    o.set_clean_session(true);
    o.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
    if let Some(user) = &login.username {
        let pw = login.password.as_ref().map(|p| p.expose()).unwrap_or("");
        o.set_credentials(user, pw);
    }
    if login.addr.tls {
        o.set_transport(Transport::tls_with_default_config());
    }
    o
}

/// The QoS of a config number (0, 1, 2; validated by config).
pub fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// Starts the publisher; the handle ends after an orderly stop (`offline` published).
pub fn spawn(
    cfg: MqttConfig,
    store: StateStore,
    alerts: broadcast::Receiver<Arc<Alert>>,
    metrics: Metrics,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let topics = Topics {
        prefix: cfg.topic_prefix.clone(),
        name: cfg.name.clone(),
        sep: '/',
    };
    let mut opts = options(&cfg.login, Duration::from_secs(5));
    opts.set_last_will(LastWill::new(topics.status(), OFFLINE, qos(cfg.qos), true));
    opts.set_inflight(100);
    let (client, eventloop) = AsyncClient::new(opts, cfg.queue);
    let (sessions_tx, sessions) = watch::channel(0u64);
    let net_stop = CancellationToken::new();
    let net = tokio::spawn(drive(
        eventloop,
        metrics.clone(),
        sessions_tx,
        net_stop.clone(),
    ));
    let changes = store.subscribe();
    let feeder = Feeder {
        client,
        topics,
        qos: qos(cfg.qos),
        cfg,
        store,
        metrics,
        unsent: BTreeSet::new(),
        hello: false,
        discovered: BTreeSet::new(),
    };
    tokio::spawn(async move {
        feeder.run(changes, alerts, sessions, stop).await;
        // The network task ends by itself once DISCONNECT is written (or is stopped).
        let mut net = net;
        if tokio::time::timeout(STOP_WAIT, &mut net).await.is_err() {
            net_stop.cancel();
            let _ = net.await;
        }
    })
}

/// Drives the connection: polls the event loop, reconnects with backoff, counts what is
/// written, and numbers each new session in `sessions`.
async fn drive(
    mut eventloop: rumqttc::EventLoop,
    metrics: Metrics,
    sessions: watch::Sender<u64>,
    stop: CancellationToken,
) {
    let connected = metrics.bridge_connected.with_label_values(&[LABEL]);
    let published = metrics.bridge_published.with_label_values(&[LABEL]);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30), 0.2);
    let mut was_up = true;
    loop {
        let got = tokio::select! {
            _ = stop.cancelled() => break,
            got = eventloop.poll() => got,
        };
        match got {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connected.set(1);
                backoff.reset();
                was_up = true;
                tracing::info!("[BRIDGE] MQTT connected to the broker");
                sessions.send_modify(|n| *n += 1);
            }
            Ok(Event::Outgoing(Outgoing::Publish(_))) => published.inc(),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(e) => {
                connected.set(0);
                if was_up {
                    tracing::warn!("[BRIDGE] MQTT broker unreachable: {e}; retrying with backoff");
                    was_up = false;
                }
                let wait = backoff.next_delay().max(Duration::from_millis(100));
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    connected.set(0);
}

/// Turns changes and alerts into messages.
struct Feeder {
    client: AsyncClient,
    topics: Topics,
    qos: QoS,
    cfg: MqttConfig,
    store: StateStore,
    metrics: Metrics,
    /// Nodes whose newest state could not be queued: sent at the next chance.
    unsent: BTreeSet<String>,
    /// A new session still lacks `online`.
    hello: bool,
    /// Nodes whose Home Assistant discovery was sent in this session.
    discovered: BTreeSet<String>,
}

impl Feeder {
    async fn run(
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
            .with_label_values(&[LABEL, reason])
            .inc_by(n);
    }

    /// Queues one message without waiting; `false` (counted) when the queue is full.
    fn offer(&self, topic: String, retain: bool, payload: String) -> bool {
        match self.client.try_publish(topic, self.qos, retain, payload) {
            Ok(()) => true,
            Err(_) => {
                self.dropped("queue_full", 1);
                false
            }
        }
    }

    fn on_change(&mut self, p: &Published) {
        let ev = &p.event;
        let node = ev.node.as_deref().unwrap_or(SERVER_LEVEL);
        // The state first: a reader applying the event finds the node already as it is.
        match &ev.node {
            Some(id) => self.send_state(id, ev.seq),
            // A session came or went: every node of that server changed `stale`.
            None => {
                for n in self.store.nodes() {
                    if n.server == ev.server {
                        self.send_state(&n.node_id, ev.seq);
                    }
                }
            }
        }
        let epoch = self.store.epoch().to_owned();
        let body = payload::event_json(p, &epoch, &self.cfg.name);
        self.offer(self.topics.event(&ev.server, node), false, body);
    }

    /// Queues a node's newest state; remembers it when the queue is full.
    fn send_state(&mut self, id: &str, seq: u64) {
        let Some(view) = self.store.node(id) else {
            return;
        };
        if self.cfg.home_assistant && !self.discovered.contains(id) {
            for d in payload::discovery(&self.topics, &self.cfg.discovery_prefix, &view) {
                self.offer(d.topic, true, d.payload);
            }
            self.discovered.insert(id.to_owned());
        }
        let body = payload::state_json(&view, &self.cfg.name, self.store.epoch(), seq);
        let topic = self.topics.state(&view.server, id);
        if self.offer(topic, self.cfg.retain, body) {
            self.unsent.remove(id);
        } else {
            self.unsent.insert(id.to_owned());
        }
    }

    fn on_alert(&self, a: &Alert) {
        let topic = match a.node.as_deref() {
            Some(n) => {
                let server = self.store.node(n).map(|v| v.server).unwrap_or_default();
                self.topics.alert(&server, n)
            }
            None => self.topics.daemon("alert"),
        };
        self.offer(topic, false, payload::alert_json(a, &self.cfg.name));
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
        let status = self.topics.status();
        if !self.offer(status, self.cfg.retain, ONLINE.to_owned()) {
            return false;
        }
        // Discovery goes again with each node's next state.
        self.discovered.clear();
        self.hello = false;
        true
    }

    /// An orderly stop: `offline` (retained), then DISCONNECT, within [`STOP_WAIT`].
    async fn goodbye(&self) {
        let bye = async {
            let topic = self.topics.status();
            let _ = self
                .client
                .publish(topic, self.qos, self.cfg.retain, OFFLINE)
                .await;
            let _ = self.client.disconnect().await;
        };
        let _ = tokio::time::timeout(STOP_WAIT, bye).await;
    }
}
