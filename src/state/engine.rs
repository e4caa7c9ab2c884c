//! The state engine: the single writer of the node model.
//!
//! It takes AMI events and session status from every supervisor, and poll results from
//! every poller, routes them to nodes (events by their `Node:` header, `VarSet` by the
//! channel learned from earlier events), reconciles (`reconcile`), and publishes each
//! resulting change once, updating metrics as it goes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::change::{ChangeEvent, ChangeKind, Published, now_ms};
use super::node::NodeState;
use super::reconcile::{self, Changes};
use super::store::{Model, StateStore};
use crate::ami::{AmiEvent, ConnectionStatus, Frame};
use crate::metrics::Metrics;
use crate::poller::PollResult;
use crate::rpt::{self, RptEvent};

/// A node the engine tracks.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub node_id: String,
    pub server: String,
    pub poll_interval: Duration,
}

/// The engine's inputs and settings.
pub struct EngineParts {
    pub store: StateStore,
    pub metrics: Metrics,
    pub nodes: Vec<NodeSpec>,
    pub ami: mpsc::Receiver<AmiEvent>,
    pub polls: mpsc::Receiver<PollResult>,
    /// Whether pollers run by themselves: nodes stay `stale` after a reconnect until the
    /// first poll. Without automatic polling a connected session is enough.
    pub automatic_polling: bool,
    /// Where to ask for an early poll of a node (a link appeared through an event: its IP
    /// and direction come only from XStat). Used only with automatic polling.
    pub poll_requests: Option<mpsc::UnboundedSender<String>>,
    pub shutdown: CancellationToken,
}

/// Starts the engine task.
pub fn spawn(parts: EngineParts) -> tokio::task::JoinHandle<()> {
    let mut engine = Engine::new(parts.store, parts.metrics, parts.automatic_polling);
    engine.poll_requests = parts.poll_requests.filter(|_| parts.automatic_polling);
    engine.add_nodes(&parts.nodes);
    let (mut ami, mut polls, shutdown) = (parts.ami, parts.polls, parts.shutdown);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                // Events first: an event queued before a poll's reply must be applied
                // before that poll (see reconcile's rx_seq rule).
                biased;
                _ = shutdown.cancelled() => return,
                Some(ev) = ami.recv() => engine.on_ami(ev),
                Some(p) = polls.recv() => engine.on_poll(p),
                else => return,
            }
        }
    })
}

/// The engine's state besides the model (which lives in the store).
pub struct Engine {
    store: StateStore,
    metrics: Metrics,
    automatic_polling: bool,
    poll_requests: Option<mpsc::UnboundedSender<String>>,
}

impl Engine {
    pub fn new(store: StateStore, metrics: Metrics, automatic_polling: bool) -> Engine {
        Engine {
            store,
            metrics,
            automatic_polling,
            poll_requests: None,
        }
    }

    /// Registers nodes (empty, stale until their server connects and a poll arrives).
    pub fn add_nodes(&mut self, nodes: &[NodeSpec]) {
        self.store.update(|m, _| {
            for n in nodes {
                m.nodes.insert(
                    n.node_id.clone(),
                    NodeState::new(&n.node_id, &n.server, n.poll_interval),
                );
                self.metrics
                    .node_links
                    .with_label_values(&[&n.node_id])
                    .set(0);
                self.metrics
                    .node_stale
                    .with_label_values(&[&n.node_id])
                    .set(1);
            }
        });
    }

    /// One input from an AMI supervisor.
    pub fn on_ami(&mut self, ev: AmiEvent) {
        match ev {
            AmiEvent::Event {
                server,
                frame,
                rx_seq,
                received,
            } => {
                self.on_event(&server, &frame, rx_seq);
                self.metrics
                    .change_latency
                    .observe(received.elapsed().as_secs_f64());
            }
            AmiEvent::Status(st) => self.on_status(st),
        }
    }

    fn on_event(&mut self, server: &str, frame: &Frame, rx_seq: u64) {
        let event = match rpt::parse_event(frame) {
            None => return,
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                tracing::debug!(server, "ignoring malformed app_rpt event: {e}");
                self.metrics
                    .ami_protocol_errors
                    .with_label_values(&[server])
                    .inc();
                return;
            }
        };
        let metrics = self.metrics.clone();
        let new_link_on = self.store.update(|m, tx| {
            let node_id = route(m, server, &event)?;
            let now = now_ms();
            let db = m.astdb.clone();
            let mut ch = Changes::new(now, &db);
            let node = m.nodes.get_mut(&node_id)?;
            apply_event(node, event, rx_seq, &mut ch);
            let n_links = node.links.len();
            let new_link = ch.out.iter().any(|c| c.kind == ChangeKind::LinkConnected);
            publish_all(m, tx, &metrics, ch.out);
            metrics
                .node_links
                .with_label_values(&[&node_id])
                .set(n_links as i64);
            new_link.then_some(node_id)
        });
        if let (Some(node), Some(req)) = (new_link_on, &self.poll_requests) {
            let _ = req.send(node);
        }
    }

    /// One poll result.
    pub fn on_poll(&mut self, p: PollResult) {
        let xstat = match &p.xstat {
            Ok(r) => match rpt::parse_xstat(&r.frame) {
                Ok(x) => Some((x, r.rx_seq)),
                Err(e) => {
                    tracing::warn!(node = %p.node, "[POLLING] unreadable XStat reply for node {}: {e}", p.node);
                    None
                }
            },
            Err(_) => None,
        };
        let sawstat = match &p.sawstat {
            Ok(r) => match rpt::parse_sawstat(&r.frame) {
                Ok(s) => Some((s, r.rx_seq)),
                Err(e) => {
                    tracing::warn!(node = %p.node, "[POLLING] unreadable SawStat reply for node {}: {e}", p.node);
                    None
                }
            },
            Err(_) => None,
        };
        if xstat.is_none() && sawstat.is_none() {
            return;
        }
        let metrics = self.metrics.clone();
        self.store.update(|m, tx| {
            let now = now_ms();
            let db = m.astdb.clone();
            let mut ch = Changes::new(now, &db);
            let Some(node) = m.nodes.get_mut(&p.node) else {
                return;
            };
            if let Some((x, seq)) = &xstat {
                reconcile::apply_xstat(node, x, *seq, &mut ch);
                node.last_poll_ms = Some(now);
                node.stale = false;
            }
            if let Some((s, seq)) = &sawstat {
                reconcile::apply_sawstat(node, s, *seq, &mut ch);
            }
            let (n_links, stale) = (node.links.len(), node.stale);
            publish_all(m, tx, &metrics, ch.out);
            metrics
                .node_links
                .with_label_values(&[&p.node])
                .set(n_links as i64);
            metrics
                .node_stale
                .with_label_values(&[&p.node])
                .set(i64::from(stale));
        });
    }

    /// A session came up or went down.
    pub fn on_status(&mut self, st: ConnectionStatus) {
        let metrics = self.metrics.clone();
        let automatic = self.automatic_polling;
        self.store.update(|m, tx| {
            // Announce every transition, and a server's first known state when it is down;
            // repeated failures while down are news for the API, not the change stream.
            let was_up = m.servers.get(&st.server).map(|old| old.connected);
            let announce = match (was_up, st.connected) {
                (_, true) => Some(ChangeKind::AmiConnected),
                (None | Some(true), false) => Some(ChangeKind::AmiDisconnected),
                (Some(false), false) => None,
            };
            m.servers.insert(st.server.clone(), st.clone());
            for n in m.nodes.values_mut().filter(|n| n.server == st.server) {
                // Down: stale at once. Up: fresh when the first poll lands (or at once
                // when nothing polls by itself).
                if !st.connected {
                    n.stale = true;
                } else if !automatic {
                    n.stale = false;
                }
                metrics
                    .node_stale
                    .with_label_values(&[&n.node_id])
                    .set(i64::from(n.stale));
            }
            if let Some(kind) = announce {
                let mut ev = ChangeEvent::new(kind, &st.server, None);
                if !st.connected {
                    ev.error = st.last_error.clone();
                }
                publish_all(m, tx, &metrics, vec![ev]);
            }
        });
    }
}

/// Which configured node an event is for: its `Node:` header (on the same server), or for
/// `VarSet` the node whose rx channel it names.
fn route(m: &Model, server: &str, event: &RptEvent) -> Option<String> {
    let node = match event {
        RptEvent::ALinks { node, .. }
        | RptEvent::Links { node, .. }
        | RptEvent::TxKeyed { node, .. }
        | RptEvent::RxKeyed { node, .. } => Some(node.clone()),
        RptEvent::VarSet { channel, .. } => m
            .nodes
            .values()
            .find(|n| n.server == server && n.channel.as_deref() == Some(channel.as_str()))
            .map(|n| n.node_id.clone()),
    }?;
    m.nodes
        .get(&node)
        .filter(|n| n.server == server)
        .map(|n| n.node_id.clone())
}

/// Applies one routed event to its node.
fn apply_event(node: &mut NodeState, event: RptEvent, seq: u64, ch: &mut Changes) {
    let learn = |node: &mut NodeState, channel: Option<String>| {
        if channel.is_some() && node.channel != channel {
            node.channel = channel;
        }
    };
    match event {
        RptEvent::ALinks { channel, links, .. } => {
            learn(node, channel);
            reconcile::apply_alinks(node, &links, seq, ch);
        }
        RptEvent::Links { channel, nodes, .. } => {
            learn(node, channel);
            reconcile::apply_links(node, nodes);
        }
        RptEvent::TxKeyed { channel, keyed, .. } => {
            learn(node, channel);
            reconcile::apply_keying(node, true, keyed, seq, ch);
        }
        RptEvent::RxKeyed { channel, keyed, .. } => {
            learn(node, channel);
            reconcile::apply_keying(node, false, keyed, seq, ch);
        }
        RptEvent::VarSet {
            variable, value, ..
        } => match variable.as_str() {
            "RPT_ALINKS" => {
                if let Ok(links) = rpt::parse_alinks(&value) {
                    reconcile::apply_alinks(node, &links, seq, ch);
                }
            }
            "RPT_LINKS" => {
                if let Ok(nodes) = rpt::parse_links(&value) {
                    reconcile::apply_links(node, nodes);
                }
            }
            "RPT_TXKEYED" | "RPT_RXKEYED" => {
                let tx = variable == "RPT_TXKEYED";
                reconcile::apply_keying(node, tx, value.trim() == "1", seq, ch);
            }
            _ => {}
        },
    }
}

/// Publishes changes in order and updates the metrics each implies.
fn publish_all(
    m: &mut Model,
    tx: &broadcast::Sender<Arc<Published>>,
    metrics: &Metrics,
    changes: Vec<ChangeEvent>,
) {
    for ev in changes {
        record_metrics(metrics, &ev);
        m.publish(tx, ev);
    }
}

fn record_metrics(metrics: &Metrics, ev: &ChangeEvent) {
    metrics.changes.with_label_values(&[ev.kind.as_str()]).inc();
    let Some(node) = ev.node.as_deref() else {
        return;
    };
    let secs = ev.duration_seconds.unwrap_or(0.0);
    match ev.kind {
        ChangeKind::TxKeyed => {
            metrics.node_tx_keyed.with_label_values(&[node]).set(1);
            metrics.node_tx_keyups.with_label_values(&[node]).inc();
        }
        ChangeKind::TxUnkeyed => {
            metrics.node_tx_keyed.with_label_values(&[node]).set(0);
            metrics
                .node_tx_seconds
                .with_label_values(&[node])
                .inc_by(secs);
        }
        ChangeKind::RxKeyed => {
            metrics.node_rx_keyed.with_label_values(&[node]).set(1);
            metrics.node_rx_keyups.with_label_values(&[node]).inc();
        }
        ChangeKind::RxUnkeyed => metrics.node_rx_keyed.with_label_values(&[node]).set(0),
        ChangeKind::LinkKeyed => {
            metrics.node_link_keyups.with_label_values(&[node]).inc();
            if let (true, Some(l)) = (metrics.per_link, &ev.link) {
                metrics
                    .link_keyed
                    .with_label_values(&[node, &l.node])
                    .set(1);
                metrics
                    .link_keyups
                    .with_label_values(&[node, &l.node])
                    .inc();
            }
        }
        ChangeKind::LinkUnkeyed => {
            if let (true, Some(l)) = (metrics.per_link, &ev.link) {
                metrics
                    .link_keyed
                    .with_label_values(&[node, &l.node])
                    .set(0);
                metrics
                    .link_keyed_seconds
                    .with_label_values(&[node, &l.node])
                    .inc_by(secs);
            }
        }
        ChangeKind::LinkConnected => {
            if let (true, Some(l)) = (metrics.per_link, &ev.link) {
                metrics
                    .link_keyed
                    .with_label_values(&[node, &l.node])
                    .set(0);
            }
        }
        ChangeKind::LinkDisconnected => {
            if let Some(l) = &ev.link {
                metrics.remove_link(node, &l.node);
            }
        }
        _ => {}
    }
}
