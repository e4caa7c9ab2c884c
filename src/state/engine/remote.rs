//! Remote nodes (`sources:`): nodes another daemon publishes to a broker, put in the
//! model by the engine like any other change, marked with their `origin` daemon.
//!
//! The bridge (`bridge::source`) reads the broker and sends one [`RemoteInput`] per
//! message. A state replaces the node as its daemon last showed it (a node of this
//! daemon's own configuration is never replaced); a change is published on the local
//! stream, so WebSocket clients, Lua and metrics see remote keyups as they see local ones;
//! a daemon gone `offline` leaves its nodes in place, stale.
//!
//! What a state changes beyond its daemon's own events is announced on the stream too, as
//! `node_updated`: a remote node that appears (or changes origin) or turns stale has
//! [`REPLACED`] in `fields` ("read the node again"); one that turns current again has
//! `stale`, as a local node after its first poll. Repeated states that change neither
//! announce nothing.

use std::time::Duration;

use super::{Engine, publish_all};
use crate::state::change::{ChangeEvent, ChangeKind, now_ms};
use crate::state::model::NodeView;
use crate::state::node::{Keying, Link, NodeState};

/// The `fields` word of a `node_updated` about a remote node that appeared, changed
/// origin or turned stale: the whole node was replaced, read it again
/// (`GET /api/nodes/{id}`).
pub const REPLACED: &str = "state";

/// One thing learnt from a broker about remote nodes.
#[derive(Debug)]
pub enum RemoteInput {
    /// A node's whole state, as its daemon (`origin`, set) shows it.
    State(Box<NodeView>),
    /// A change on a remote node, to publish on the local stream (after its state).
    Change(Box<ChangeEvent>),
    /// A daemon went offline (its nodes turn stale) or came back online.
    Status { origin: String, online: bool },
}

impl Engine {
    /// Applies one remote input.
    pub(super) fn on_remote(&mut self, input: RemoteInput) {
        match input {
            RemoteInput::State(view) => self.remote_state(*view),
            RemoteInput::Change(ev) => {
                let metrics = self.metrics.clone();
                self.store.update(|m, tx| {
                    let remote = ev
                        .node
                        .as_deref()
                        .and_then(|n| m.nodes.get(n))
                        .is_some_and(|n| n.origin.is_some());
                    if remote {
                        publish_all(m, tx, &metrics, vec![*ev]);
                    }
                });
            }
            RemoteInput::Status { origin, online } => {
                if online {
                    return; // Fresh states follow from the daemon itself.
                }
                let metrics = self.metrics.clone();
                self.store.update(|m, tx| {
                    let mut out = Vec::new();
                    let theirs = m.nodes.values_mut();
                    for n in theirs.filter(|n| n.origin.as_deref() == Some(origin.as_str())) {
                        if !n.stale {
                            out.push(node_updated(&n.server, &n.node_id, REPLACED));
                        }
                        n.stale = true;
                        metrics.node_stale.with_label_values(&[&n.node_id]).set(1);
                    }
                    publish_all(m, tx, &metrics, out);
                });
            }
        }
    }

    fn remote_state(&mut self, view: NodeView) {
        if view.origin.is_none() {
            return;
        }
        let metrics = self.metrics.clone();
        self.store.update(|m, tx| {
            let old = m.nodes.get(&view.node_id);
            if old.is_some_and(|n| n.origin.is_none()) {
                return; // This daemon's own node: never replaced from a broker.
            }
            let announce = match old {
                None => Some(REPLACED),
                Some(o) if o.origin != view.origin || (!o.stale && view.stale) => Some(REPLACED),
                Some(o) if o.stale && !view.stale => Some("stale"),
                Some(_) => None,
            };
            let node = from_view(&view, now_ms());
            let id = view.node_id.as_str();
            metrics
                .node_links
                .with_label_values(&[id])
                .set(node.links.len() as i64);
            metrics
                .node_stale
                .with_label_values(&[id])
                .set(i64::from(node.stale));
            metrics
                .node_tx_keyed
                .with_label_values(&[id])
                .set(i64::from(node.tx.keyed));
            metrics
                .node_rx_keyed
                .with_label_values(&[id])
                .set(i64::from(node.rx.keyed));
            m.nodes.insert(view.node_id.clone(), node);
            if let Some(field) = announce {
                let ev = node_updated(&view.server, &view.node_id, field);
                publish_all(m, tx, &metrics, vec![ev]);
            }
        });
    }
}

/// A `node_updated` change naming one field.
fn node_updated(server: &str, node: &str, field: &'static str) -> ChangeEvent {
    let mut ev = ChangeEvent::new(ChangeKind::NodeUpdated, server, Some(node));
    ev.fields = vec![field];
    ev
}

/// A node's live state rebuilt from its view at `now` (times shown as "seconds ago"
/// become instants again, so they keep advancing).
pub fn from_view(v: &NodeView, now: u64) -> NodeState {
    let interval = Duration::from_secs_f64(v.poll_interval_seconds.clamp(0.0, 86_400.0));
    let mut n = NodeState::new(&v.node_id, &v.server, interval);
    let ago = |s: u64| now.saturating_sub(s.saturating_mul(1000));
    n.origin = v.origin.clone();
    n.stale = v.stale;
    n.rx = Keying {
        keyed: v.rx_keyed,
        since_ms: now,
        keyups: v.rx_keyups,
        total_s: 0.0,
        touched_seq: 0,
    };
    n.tx = Keying {
        keyed: v.tx_keyed,
        since_ms: now,
        keyups: v.tx_keyups,
        total_s: v.tx_seconds_total.max(0.0),
        touched_seq: 0,
    };
    n.linked_nodes = v.linked_nodes.clone();
    n.last_poll_ms = v
        .last_poll
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64);
    n.links = v
        .links
        .iter()
        .map(|l| Link {
            kind: l.kind,
            ip: l.ip.clone(),
            direction: l.direction,
            connected_at_ms: ago(l.connected_seconds),
            mode: l.mode,
            state: l.state,
            keyed: l.keyed,
            keyed_since_ms: now,
            last_key_ms: l.last_keyed_seconds.map(ago),
            last_unkey_ms: l.last_unkeyed_seconds.map(ago),
            reconnects: l.reconnects,
            keyups: l.keyups,
            keyed_total_s: l.keyed_seconds_total.max(0.0),
            ..Link::new(&l.node, now)
        })
        .collect();
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::state::engine::EngineInput;
    use crate::state::{ChangeKind, StateStore};

    fn remote_view(id: &str, origin: &str) -> NodeView {
        let mut n = NodeState::new(id, "main", Duration::from_secs(60));
        n.stale = false;
        n.tx.keyed = true;
        n.links.push(Link::new("2000", now_ms()));
        let mut v = n.view(now_ms(), &Default::default());
        v.origin = Some(origin.into());
        v
    }

    #[test]
    fn remote_states_and_changes_go_through_the_engine_and_offline_makes_them_stale() {
        let store = StateStore::new(64, 64);
        let mut e = Engine::new(store.clone(), Metrics::default(), true);
        let mut rx = store.subscribe();
        let view = remote_view("2001", "east");
        e.handle(EngineInput::Remote(RemoteInput::State(Box::new(
            view.clone(),
        ))));
        let got = store.node("2001").expect("remote node");
        assert_eq!(got.origin.as_deref(), Some("east"));
        assert!(got.tx_keyed && !got.stale);
        assert_eq!(got.links[0].node, "2000");
        assert_eq!(announced(&mut rx), vec![("2001".into(), REPLACED)]);
        let ev = ChangeEvent::new(ChangeKind::TxKeyed, "main", Some("2001"));
        e.handle(EngineInput::Remote(RemoteInput::Change(Box::new(ev))));
        assert_eq!(
            rx.try_recv().expect("published").event.kind,
            ChangeKind::TxKeyed
        );
        e.handle(EngineInput::Remote(RemoteInput::Status {
            origin: "east".into(),
            online: false,
        }));
        let got = store.node("2001").expect("still there");
        assert!(got.stale, "offline daemon's nodes are stale, not gone");
    }

    /// The `node_updated` changes published so far, as (node, fields).
    fn announced(
        rx: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<crate::state::Published>>,
    ) -> Vec<(String, &'static str)> {
        let mut out = Vec::new();
        while let Ok(p) = rx.try_recv() {
            if p.event.kind == ChangeKind::NodeUpdated {
                let node = p.event.node.clone().unwrap_or_default();
                out.extend(p.event.fields.iter().map(|f| (node.clone(), *f)));
            }
        }
        out
    }

    #[test]
    fn appearing_going_stale_and_coming_back_are_announced_on_the_stream() {
        let store = StateStore::new(64, 64);
        let mut e = Engine::new(store.clone(), Metrics::default(), true);
        let mut rx = store.subscribe();
        let state = |v: NodeView| EngineInput::Remote(RemoteInput::State(Box::new(v)));
        let status = |online| {
            EngineInput::Remote(RemoteInput::Status {
                origin: "east".into(),
                online,
            })
        };
        e.handle(state(remote_view("2001", "east")));
        e.handle(state(remote_view("2002", "east")));
        e.handle(state(remote_view("3001", "west")));
        let mut got = announced(&mut rx);
        got.sort();
        let want: Vec<(String, &str)> = ["2001", "2002", "3001"]
            .map(|n| (n.to_owned(), REPLACED))
            .into();
        assert_eq!(got, want, "new remote nodes are announced");
        // The same state again (a resync, a keyup's state): nothing more to say.
        e.handle(state(remote_view("2001", "east")));
        assert_eq!(announced(&mut rx), vec![]);
        // East goes offline: its two nodes turn stale, each announced once; west is left.
        e.handle(status(false));
        e.handle(status(false));
        let mut got = announced(&mut rx);
        got.sort();
        assert_eq!(
            got,
            vec![("2001".into(), REPLACED), ("2002".into(), REPLACED)]
        );
        // A state saying stale while already stale says nothing; a fresh one: current again.
        let mut stale = remote_view("2001", "east");
        stale.stale = true;
        e.handle(state(stale));
        assert_eq!(announced(&mut rx), vec![]);
        e.handle(status(true));
        e.handle(state(remote_view("2001", "east")));
        assert_eq!(announced(&mut rx), vec![("2001".into(), "stale")]);
        // A state turning stale by itself (its daemon lost AMI) is announced.
        let mut stale = remote_view("3001", "west");
        stale.stale = true;
        e.handle(state(stale));
        assert_eq!(announced(&mut rx), vec![("3001".into(), REPLACED)]);
        // A node that moves to another daemon is replaced, and said so.
        e.handle(state(remote_view("2002", "west")));
        assert_eq!(announced(&mut rx), vec![("2002".into(), REPLACED)]);
    }

    #[test]
    fn a_local_node_is_never_replaced_from_a_broker() {
        let store = StateStore::new(64, 64);
        let mut e = Engine::new(store.clone(), Metrics::default(), true);
        e.add_nodes(&[crate::state::engine::NodeSpec {
            node_id: "1999".into(),
            server: "s".into(),
            poll_interval: Duration::from_secs(60),
        }]);
        e.handle(EngineInput::Remote(RemoteInput::State(Box::new(
            remote_view("1999", "east"),
        ))));
        assert_eq!(store.node("1999").expect("local").origin, None);
    }
}
