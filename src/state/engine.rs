//! The state engine: the single writer of the node model.
//!
//! Everything that changes the model reaches it as one typed [`EngineInput`]: AMI events
//! and session status from every supervisor, poll results from every poller, and the
//! commands of the rest of the daemon (a polling interval set by Lua or the API, a
//! VoterStatus result, a new node database, today's totals from history). It routes events to nodes (by their `Node:`
//! header, `VarSet` by the channel learned from earlier events), reconciles
//! (`reconcile`), and publishes each resulting change once, updating metrics as it goes.
//! Nothing else writes the model.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::change::{ChangeEvent, ChangeKind, Published, now_ms};
use super::events::{ChangePublished, EventUnreadable, ReplyUnreadable, ServerResync};
use super::model::VoterSnapshot;
use super::node::NodeState;
use super::reconcile::{self, Changes};
use super::store::{Model, StateStore, TodayCounts};
use crate::ami::{AmiEvent, ConnectionStatus, Frame};
use crate::astdb::AstDb;
use crate::metrics::Metrics;
use crate::observe::InternalEvent;
use crate::poller::{PollResult, PollerHandle};
use crate::rpt::{self, RptEvent};

mod remote;
pub use remote::RemoteInput;

/// A node the engine tracks.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub node_id: String,
    pub server: String,
    pub poll_interval: Duration,
}

/// Everything that may change the model, as one typed value.
#[derive(Debug)]
pub enum EngineInput {
    /// An event or a session status from an AMI supervisor.
    Ami(AmiEvent),
    /// One poll's replies.
    Poll(PollResult),
    /// A node's polling interval was changed (Lua, API): shown in the model.
    SetInterval { node: String, interval: Duration },
    /// A VoterStatus result; `done` is answered once it is in the model.
    Voter {
        snapshot: VoterSnapshot,
        done: Option<oneshot::Sender<()>>,
    },
    /// A new node database (astdb.txt was read).
    Names(Arc<AstDb>),
    /// A change made outside the model (tests, tools, benchmarks inject changes this way):
    /// numbered, kept for replay, counted and broadcast like the engine's own; the node
    /// model itself is not modified. `done` gets the published change.
    Publish {
        event: ChangeEvent,
        done: Option<oneshot::Sender<Arc<Published>>>,
    },
    /// Remote nodes read from a broker (`sources:`, see `remote`).
    Remote(RemoteInput),
    /// Today's per-link totals, re-read by the history writer: shown as `keyups_today` /
    /// `talk_seconds_today` of every link.
    Today(TodayCounts),
}

/// Depth of the command queue ([`EngineInput`]s other than AMI events and polls).
pub const COMMAND_QUEUE: usize = 1024;

/// Where the rest of the daemon sends commands to the engine. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EngineSender {
    tx: mpsc::Sender<EngineInput>,
}

/// Why a command did not reach the engine.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineSendError {
    #[error("the state engine is busy (command queue full); try again")]
    Full,
    #[error("the state engine has stopped")]
    Stopped,
}

impl EngineSender {
    /// A sender and the receiver to give the engine ([`EngineParts::commands`]).
    pub fn channel() -> (EngineSender, mpsc::Receiver<EngineInput>) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        (EngineSender { tx }, rx)
    }

    /// Queues a command without waiting (callable from any thread, e.g. Lua's).
    pub fn try_send(&self, input: EngineInput) -> Result<(), EngineSendError> {
        self.tx.try_send(input).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => EngineSendError::Full,
            mpsc::error::TrySendError::Closed(_) => EngineSendError::Stopped,
        })
    }

    /// Queues a command, waiting for room (for producers that may wait: remote sources).
    pub async fn send(&self, input: EngineInput) -> Result<(), EngineSendError> {
        self.tx
            .send(input)
            .await
            .map_err(|_| EngineSendError::Stopped)
    }

    /// Records a VoterStatus result and waits until the model holds it.
    pub async fn voter(&self, snapshot: VoterSnapshot) -> Result<(), EngineSendError> {
        let (done, applied) = oneshot::channel();
        let input = EngineInput::Voter {
            snapshot,
            done: Some(done),
        };
        self.tx
            .send(input)
            .await
            .map_err(|_| EngineSendError::Stopped)?;
        applied.await.map_err(|_| EngineSendError::Stopped)
    }

    /// Publishes a change made outside the model ([`EngineInput::Publish`]) and returns it
    /// as published (with its `seq`), once the engine has broadcast it.
    pub async fn publish(&self, event: ChangeEvent) -> Result<Arc<Published>, EngineSendError> {
        let (done, published) = oneshot::channel();
        let input = EngineInput::Publish {
            event,
            done: Some(done),
        };
        self.tx
            .send(input)
            .await
            .map_err(|_| EngineSendError::Stopped)?;
        published.await.map_err(|_| EngineSendError::Stopped)
    }
}

/// The engine's inputs and settings.
pub struct EngineParts {
    pub store: StateStore,
    pub metrics: Metrics,
    pub nodes: Vec<NodeSpec>,
    pub ami: mpsc::Receiver<AmiEvent>,
    pub polls: mpsc::Receiver<PollResult>,
    /// Commands from the rest of the daemon ([`EngineSender::channel`]).
    pub commands: mpsc::Receiver<EngineInput>,
    /// Whether pollers run by themselves: nodes stay `stale` after a reconnect until the
    /// first poll. Without automatic polling a connected session is enough.
    pub automatic_polling: bool,
    /// The pollers, for an early poll of a node (a link appeared through an event: its IP
    /// and direction come only from XStat). A poller's "poll now" is a flag, so repeated
    /// requests coalesce into one poll. Used only with automatic polling.
    pub pollers: BTreeMap<String, PollerHandle>,
    pub shutdown: CancellationToken,
}

/// Starts the engine task. It ends on shutdown, or when every input has closed.
pub fn spawn(parts: EngineParts) -> tokio::task::JoinHandle<()> {
    let mut engine = Engine::new(parts.store, parts.metrics, parts.automatic_polling);
    if parts.automatic_polling {
        engine.pollers = parts.pollers;
    }
    engine.add_nodes(&parts.nodes);
    let (mut ami, mut polls, mut commands) = (parts.ami, parts.polls, parts.commands);
    let shutdown = parts.shutdown;
    let task = async move {
        loop {
            let input = tokio::select! {
                // Events first: an event queued before a poll's reply must be applied
                // before that poll (see reconcile's rx_seq rule).
                biased;
                _ = shutdown.cancelled() => return,
                Some(ev) = ami.recv() => EngineInput::Ami(ev),
                Some(p) = polls.recv() => EngineInput::Poll(p),
                Some(c) = commands.recv() => c,
                else => return,
            };
            engine.handle(input);
        }
    };
    tokio::spawn(task.instrument(tracing::info_span!("engine")))
}

/// An engine task that applies commands only (no AMI, no polls), for rigs without the
/// whole daemon (the bridge benchmark's aggregator). Needs a tokio runtime; without
/// one, commands fail with [`EngineSendError::Stopped`].
pub fn spawn_commands(
    store: StateStore,
    metrics: Metrics,
    mut commands: mpsc::Receiver<EngineInput>,
) -> Option<tokio::task::JoinHandle<()>> {
    let rt = tokio::runtime::Handle::try_current().ok()?;
    let mut engine = Engine::new(store, metrics, true);
    Some(rt.spawn(async move {
        while let Some(c) = commands.recv().await {
            engine.handle(c);
        }
    }))
}

/// The engine's state besides the model (which lives in the store).
pub struct Engine {
    store: StateStore,
    metrics: Metrics,
    automatic_polling: bool,
    pollers: BTreeMap<String, PollerHandle>,
}

impl Engine {
    pub fn new(store: StateStore, metrics: Metrics, automatic_polling: bool) -> Engine {
        Engine {
            store,
            metrics,
            automatic_polling,
            pollers: BTreeMap::new(),
        }
    }

    /// Applies one input: the only way the model changes.
    pub fn handle(&mut self, input: EngineInput) {
        match input {
            EngineInput::Ami(ev) => self.on_ami(ev),
            EngineInput::Poll(p) => self.on_poll(p),
            EngineInput::SetInterval { node, interval } => self.on_interval(&node, interval),
            EngineInput::Voter { snapshot, done } => {
                self.on_voter(snapshot);
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            EngineInput::Names(db) => self.store.update(|m, _| m.astdb = db),
            EngineInput::Publish { event, done } => {
                let metrics = self.metrics.clone();
                let p = self
                    .store
                    .update(|m, tx| publish_one(m, tx, &metrics, event));
                if let Some(done) = done {
                    let _ = done.send(p);
                }
            }
            EngineInput::Remote(r) => self.on_remote(r),
            EngineInput::Today(counts) => self.store.set_link_today(counts),
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
                let span = tracing::debug_span!("server", server = %server);
                let _enter = span.enter();
                self.on_event(&server, &frame, rx_seq);
                self.metrics
                    .change_latency
                    .observe(received.elapsed().as_secs_f64());
            }
            AmiEvent::Status(st) => {
                let span = tracing::info_span!("server", server = %st.server);
                let _enter = span.enter();
                self.on_status(st)
            }
        }
    }

    fn on_event(&mut self, server: &str, frame: &Frame, rx_seq: u64) {
        let event = match rpt::parse_event(frame) {
            None => return,
            Some(Ok(e)) => e,
            Some(Err(error)) => {
                EventUnreadable { server, error }.emit(&self.metrics);
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
            apply_event(node, event.resolve(&node_id), rx_seq, &mut ch);
            let n_links = node.links.len();
            let new_link = ch.out.iter().any(|c| c.kind == ChangeKind::LinkConnected);
            publish_all(m, tx, &metrics, ch.out);
            metrics
                .node_links
                .with_label_values(&[&node_id])
                .set(n_links as i64);
            new_link.then_some(node_id)
        });
        if let Some(p) = new_link_on.and_then(|n| self.pollers.get(&n)) {
            p.poll_now();
        }
    }

    /// One poll result.
    pub fn on_poll(&mut self, p: PollResult) {
        let span = tracing::info_span!("node", node = %p.node, server = %p.server);
        let _enter = span.enter();
        let xstat = self.read_reply(&p, "XStat", &p.xstat, rpt::parse_xstat);
        let sawstat = self.read_reply(&p, "SawStat", &p.sawstat, rpt::parse_sawstat);
        if xstat.is_none() && sawstat.is_none() {
            return;
        }
        let metrics = self.metrics.clone();
        let applied = self.store.update(|m, tx| {
            let now = now_ms();
            let db = m.astdb.clone();
            let mut ch = Changes::new(now, &db);
            let node = m.nodes.get_mut(&p.node)?;
            let was_stale = node.stale;
            if let Some((x, seq)) = &xstat {
                reconcile::apply_xstat(node, x, *seq, &mut ch);
                node.last_poll_ms = Some(now);
                node.stale = false;
            }
            if let Some((s, seq)) = &sawstat {
                reconcile::apply_sawstat(node, s, *seq, &mut ch);
            }
            let (n_links, stale) = (node.links.len(), node.stale);
            if was_stale && !stale {
                // Said even when the poll changed nothing else (a node without links):
                // a subscriber holding the node as stale learns it is current.
                let mut ev = ChangeEvent::new(ChangeKind::NodeUpdated, &p.server, Some(&p.node));
                ev.fields = vec!["stale"];
                ch.out.push(ev);
            }
            publish_all(m, tx, &metrics, ch.out);
            metrics
                .node_links
                .with_label_values(&[&p.node])
                .set(n_links as i64);
            metrics
                .node_stale
                .with_label_values(&[&p.node])
                .set(i64::from(stale));
            Some((was_stale && !stale, n_links))
        });
        if let Some((true, links)) = applied {
            ServerResync {
                server: &p.server,
                node: &p.node,
                links,
            }
            .emit(&self.metrics);
        }
    }

    /// Reads one poll reply with its `rx_seq`; an unreadable one is a counted protocol
    /// error, a failed one (already counted by the poller) is `None`.
    fn read_reply<'r, T>(
        &self,
        p: &PollResult,
        reply: &'static str,
        got: &'r Result<crate::ami::Reply, crate::ami::ActionError>,
        parse: impl FnOnce(&'r Frame) -> Result<T, rpt::RptError>,
    ) -> Option<(T, u64)> {
        let r = got.as_ref().ok()?;
        match parse(&r.frame) {
            Ok(x) => Some((x, r.rx_seq)),
            Err(error) => {
                ReplyUnreadable {
                    server: &p.server,
                    node: &p.node,
                    reply,
                    error,
                }
                .emit(&self.metrics);
                None
            }
        }
    }

    /// A node's polling interval changed.
    fn on_interval(&mut self, node: &str, interval: Duration) {
        self.store.update(|m, _| {
            if let Some(n) = m.nodes.get_mut(node) {
                n.poll_interval = interval;
            }
        });
    }

    /// A VoterStatus result: kept in the model (API) and in the voter metrics.
    fn on_voter(&mut self, snap: VoterSnapshot) {
        let metrics = &self.metrics;
        self.store.update(|model, _| {
            if let Some(old) = model.voters.get(&snap.node) {
                if old.voted.is_some() && snap.voted.is_some() && old.voted != snap.voted {
                    metrics
                        .voter_voted_changes
                        .with_label_values(&[&snap.node])
                        .inc();
                }
                for gone in old
                    .receivers
                    .iter()
                    .filter(|o| !snap.receivers.iter().any(|r| r.name == o.name))
                {
                    let _ = metrics
                        .voter_rssi
                        .remove_label_values(&[&snap.node, &gone.name]);
                }
            }
            for r in &snap.receivers {
                metrics
                    .voter_rssi
                    .with_label_values(&[&snap.node, &r.name])
                    .set(i64::from(r.rssi));
            }
            metrics
                .voter_receivers
                .with_label_values(&[&snap.node])
                .set(snap.receivers.len() as i64);
            model.voters.insert(snap.node.clone(), snap);
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
            mark_stale(m, &metrics, &st, automatic);
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

/// A server's nodes after a status change. Down: stale at once. Up: fresh when the first
/// poll lands (or at once when nothing polls by itself).
fn mark_stale(m: &mut Model, metrics: &Metrics, st: &ConnectionStatus, automatic: bool) {
    let ours = |n: &&mut NodeState| n.server == st.server && n.origin.is_none();
    for n in m.nodes.values_mut().filter(ours) {
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
        // `resolve` turned a routed VarSet into one of the variants above.
        RptEvent::VarSet { .. } => {}
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
        publish_one(m, tx, metrics, ev);
    }
}

/// Publishes one change and updates the metrics it implies.
fn publish_one(
    m: &mut Model,
    tx: &broadcast::Sender<Arc<Published>>,
    metrics: &Metrics,
    ev: ChangeEvent,
) -> Arc<Published> {
    record_metrics(metrics, &ev);
    let p = m.publish(tx, ev);
    ChangePublished { event: &p.event }.emit(metrics);
    p
}

/// The metrics a change implies: the node's keying series, then the link's.
fn record_metrics(metrics: &Metrics, ev: &ChangeEvent) {
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
            record_link_metrics(metrics, node, ev, secs);
        }
        ChangeKind::LinkDisconnected => {
            if let Some(l) = &ev.link {
                metrics.remove_link(node, &l.node);
            }
        }
        _ => record_link_metrics(metrics, node, ev, secs),
    }
}

/// The per-link series (`metrics.per_link`) a link change implies.
fn record_link_metrics(metrics: &Metrics, node: &str, ev: &ChangeEvent, secs: f64) {
    let (true, Some(l)) = (metrics.per_link, &ev.link) else {
        return;
    };
    let labels = [node, l.node.as_str()];
    match ev.kind {
        ChangeKind::LinkKeyed => {
            metrics.link_keyed.with_label_values(&labels).set(1);
            metrics.link_keyups.with_label_values(&labels).inc();
        }
        ChangeKind::LinkUnkeyed => {
            metrics.link_keyed.with_label_values(&labels).set(0);
            metrics
                .link_keyed_seconds
                .with_label_values(&labels)
                .inc_by(secs);
        }
        ChangeKind::LinkConnected => metrics.link_keyed.with_label_values(&labels).set(0),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpt::VoterReceiver;

    fn engine() -> (Engine, StateStore, Metrics) {
        let store = StateStore::new(64, 64);
        let metrics = Metrics::default();
        let mut e = Engine::new(store.clone(), metrics.clone(), true);
        e.add_nodes(&[NodeSpec {
            node_id: "1999".into(),
            server: "s".into(),
            poll_interval: Duration::from_secs(60),
        }]);
        (e, store, metrics)
    }

    fn frame_input(headers: &[(&str, &str)], rx_seq: u64) -> EngineInput {
        EngineInput::Ami(AmiEvent::Event {
            server: Arc::from("s"),
            frame: Frame::from_headers(headers),
            rx_seq,
            received: std::time::Instant::now(),
        })
    }

    fn varset(variable: &str, value: &str, rx_seq: u64) -> EngineInput {
        frame_input(
            &[
                ("Event", "VarSet"),
                ("Channel", "SimpleUSB/1999"),
                ("Variable", variable),
                ("Value", value),
            ],
            rx_seq,
        )
    }

    fn protocol_errors(m: &Metrics) -> u64 {
        m.ami_protocol_errors.with_label_values(&["s"]).get()
    }

    #[test]
    fn varset_goes_the_same_way_as_app_rpt_events() {
        let (mut e, store, metrics) = engine();
        // The node's channel is learned from one of app_rpt's own events.
        e.handle(frame_input(
            &[
                ("Event", "RPT_RXKEYED"),
                ("Node", "1999"),
                ("Channel", "SimpleUSB/1999"),
                ("EventValue", "0"),
            ],
            1,
        ));
        e.handle(varset("RPT_RXKEYED", "1", 2));
        assert_eq!(store.node("1999").map(|n| n.rx_keyed), Some(true));
        e.handle(varset("RPT_ALINKS", "1,2000TK", 3));
        let links = store.node("1999").map(|n| n.links).unwrap_or_default();
        assert_eq!(links.len(), 1);
        assert!(links[0].keyed);
        assert_eq!(protocol_errors(&metrics), 0);
    }

    #[test]
    fn a_keyed_value_other_than_0_or_1_is_a_counted_protocol_error_not_unkeyed() {
        let (mut e, store, metrics) = engine();
        e.handle(frame_input(
            &[
                ("Event", "RPT_RXKEYED"),
                ("Node", "1999"),
                ("Channel", "SimpleUSB/1999"),
                ("EventValue", "1"),
            ],
            1,
        ));
        let seq = store.seq();
        e.handle(varset("RPT_RXKEYED", "2", 2));
        e.handle(varset("RPT_RXKEYED", "", 3));
        assert_eq!(protocol_errors(&metrics), 2);
        assert_eq!(store.node("1999").map(|n| n.rx_keyed), Some(true));
        assert_eq!(store.seq(), seq, "nothing published");
        // An unreadable app_rpt event is counted too.
        e.handle(frame_input(
            &[
                ("Event", "RPT_ALINKS"),
                ("Node", "1999"),
                ("EventValue", "1,2000ZZ"),
            ],
            4,
        ));
        assert_eq!(protocol_errors(&metrics), 3);
    }

    #[test]
    fn an_injected_change_is_numbered_broadcast_and_counted_by_the_engine() {
        let (mut e, store, metrics) = engine();
        let mut rx = store.subscribe();
        let before = store.seq();
        let (done, published) = oneshot::channel();
        e.handle(EngineInput::Publish {
            event: ChangeEvent::new(ChangeKind::TxKeyed, "default", Some("1999")),
            done: Some(done),
        });
        let p = published
            .blocking_recv()
            .expect("the caller gets the change");
        assert_eq!(p.event.seq, before + 1);
        assert_eq!(store.seq(), before + 1);
        assert_eq!(rx.try_recv().map(|q| q.event.seq).ok(), Some(before + 1));
        assert_eq!(
            metrics.node_tx_keyups.with_label_values(&["1999"]).get(),
            1,
            "counted like the engine's own changes"
        );
        assert_eq!(
            store.node("1999").map(|n| n.tx_keyed),
            Some(false),
            "the model itself is not changed"
        );
    }

    #[test]
    fn the_first_poll_of_a_node_without_links_says_it_is_current() {
        let (mut e, store, _) = engine();
        let mut rx = store.subscribe();
        let reply = |rx_seq| {
            Ok(crate::ami::Reply {
                frame: Frame::from_headers(&[("Response", "Success"), ("Node", "1999")]),
                rx_seq,
            })
        };
        let poll = |seq| PollResult {
            node: "1999".into(),
            server: "s".into(),
            xstat: reply(seq),
            sawstat: reply(seq + 1),
            duration: Duration::ZERO,
        };
        assert_eq!(store.node("1999").map(|n| n.stale), Some(true));
        e.on_poll(poll(1));
        assert_eq!(store.node("1999").map(|n| n.stale), Some(false));
        let got = rx.try_recv().expect("a change, though no link changed");
        assert_eq!(got.event.kind, ChangeKind::NodeUpdated);
        assert_eq!(got.event.node.as_deref(), Some("1999"));
        assert_eq!(got.event.fields, vec!["stale"]);
        // A second poll of a current node changes nothing and says nothing.
        e.on_poll(poll(3));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn commands_change_the_model_only_through_the_engine() {
        let (mut e, store, metrics) = engine();
        e.handle(EngineInput::SetInterval {
            node: "1999".into(),
            interval: Duration::from_secs(7),
        });
        assert_eq!(
            store.node("1999").map(|n| n.poll_interval_seconds),
            Some(7.0)
        );
        let receiver = |name: &str, rssi| VoterReceiver {
            name: name.into(),
            flags: Vec::new(),
            ip: None,
            rssi,
            voted: false,
        };
        let (done, applied) = oneshot::channel();
        e.handle(EngineInput::Voter {
            snapshot: VoterSnapshot {
                node: "1999".into(),
                time_ms: 1,
                voted: Some("north".into()),
                receivers: vec![receiver("north", 200), receiver("south", 10)],
            },
            done: Some(done),
        });
        assert!(applied.blocking_recv().is_ok(), "the caller is told");
        assert_eq!(store.voter("1999").map(|v| v.receivers.len()), Some(2));
        assert_eq!(
            metrics
                .voter_rssi
                .with_label_values(&["1999", "north"])
                .get(),
            200
        );
        e.handle(EngineInput::Names(Arc::new(crate::astdb::AstDb::parse(
            "2000|W1AW|Hartford|CT\n",
        ))));
        e.handle(frame_input(
            &[
                ("Event", "RPT_ALINKS"),
                ("Node", "1999"),
                ("EventValue", "1,2000TU"),
            ],
            5,
        ));
        let links = store.node("1999").map(|n| n.links).unwrap_or_default();
        assert_eq!(links[0].callsign.as_deref(), Some("W1AW"));
    }

    #[test]
    fn todays_totals_reach_the_link_views_through_the_engine() {
        let (mut e, store, _) = engine();
        e.handle(frame_input(
            &[
                ("Event", "RPT_ALINKS"),
                ("Node", "1999"),
                ("EventValue", "1,2000TU"),
            ],
            1,
        ));
        let mut today = TodayCounts::new();
        today.insert(("1999".into(), "2000".into()), (3, 12.5));
        e.handle(EngineInput::Today(today));
        let links = store.node("1999").map(|n| n.links).unwrap_or_default();
        assert_eq!(links.len(), 1);
        assert_eq!(links[0].keyups_today, 3);
        assert_eq!(links[0].talk_seconds_today, 12.5);
        let all = store.nodes();
        assert_eq!(all[0].links[0].keyups_today, 3, "every reader sees them");
    }
}
