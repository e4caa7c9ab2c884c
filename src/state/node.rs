//! The live state of one node and its links, as the engine keeps it, and how it turns
//! into the views readers get.
//!
//! Times are kept as instants (ms since the Unix epoch), not as counters, so connected
//! time and "seconds since last key" advance by themselves between polls.

use std::collections::HashMap;
use std::time::Duration;

use super::model::{
    Direction, LinkKind, LinkState, LinkView, LinkedNode, Mode, NodeView, format_elapsed,
};
use crate::astdb::AstDb;

/// One link of a node.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub name: String,
    pub kind: LinkKind,
    pub ip: Option<String>,
    pub direction: Option<Direction>,
    pub connected_at_ms: u64,
    pub mode: Option<Mode>,
    pub state: Option<LinkState>,
    pub keyed: bool,
    /// When the current key started (valid while `keyed`).
    pub keyed_since_ms: u64,
    pub last_key_ms: Option<u64>,
    pub last_unkey_ms: Option<u64>,
    pub reconnects: u32,
    pub keyups: u64,
    pub keyed_total_s: f64,
    /// Frame counter (`rx_seq`) of the last event that touched this link: a poll answered
    /// before it must not undo it.
    pub touched_seq: u64,
}

impl Link {
    /// A link first seen now.
    pub fn new(name: &str, now_ms: u64) -> Link {
        Link {
            name: name.to_owned(),
            kind: LinkKind::of(name),
            ip: None,
            direction: None,
            connected_at_ms: now_ms,
            mode: None,
            state: None,
            keyed: false,
            keyed_since_ms: now_ms,
            last_key_ms: None,
            last_unkey_ms: None,
            reconnects: 0,
            keyups: 0,
            keyed_total_s: 0.0,
            touched_seq: 0,
        }
    }

    /// The API view at `now`, with names from the node database.
    pub fn view(&self, now_ms: u64, db: &AstDb) -> LinkView {
        let secs = self.connected_seconds(now_ms);
        let entry = db.get(&self.name);
        LinkView {
            node: self.name.clone(),
            kind: self.kind,
            ip: self.ip.clone(),
            direction: self.direction,
            elapsed: format_elapsed(secs),
            connected_seconds: secs,
            mode: self.mode,
            state: self.state,
            keyed: self.keyed,
            last_keyed_seconds: self.last_keyed_seconds(now_ms),
            last_unkeyed_seconds: self.last_unkeyed_seconds(now_ms),
            reconnects: self.reconnects,
            callsign: entry.map(|e| e.callsign.clone()).filter(|s| !s.is_empty()),
            description: entry
                .map(|e| e.description.clone())
                .filter(|s| !s.is_empty()),
            location: entry.map(|e| e.location.clone()).filter(|s| !s.is_empty()),
            keyups: self.keyups,
            keyed_seconds_total: self.keyed_seconds_total(now_ms),
            keyups_today: 0,
            talk_seconds_today: 0.0,
        }
    }

    /// `connected_seconds` of the view at `now`.
    pub fn connected_seconds(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.connected_at_ms) / 1000
    }

    /// `last_keyed_seconds` of the view at `now` (0 while keyed).
    pub fn last_keyed_seconds(&self, now_ms: u64) -> Option<u64> {
        if self.keyed {
            Some(0)
        } else {
            self.last_key_ms.map(|t| now_ms.saturating_sub(t) / 1000)
        }
    }

    /// `last_unkeyed_seconds` of the view at `now`.
    pub fn last_unkeyed_seconds(&self, now_ms: u64) -> Option<u64> {
        self.last_unkey_ms.map(|t| now_ms.saturating_sub(t) / 1000)
    }

    /// `keyed_seconds_total` of the view at `now` (the current key counts so far).
    pub fn keyed_seconds_total(&self, now_ms: u64) -> f64 {
        self.keyed_total_s
            + if self.keyed {
                now_ms.saturating_sub(self.keyed_since_ms) as f64 / 1000.0
            } else {
                0.0
            }
    }

    /// Sets the keyed flag at `at_ms`: `None` when nothing changed, `Some(None)` on a key,
    /// `Some(Some(seconds))` on an unkey (how long the key lasted).
    pub fn set_keyed(&mut self, keyed: bool, at_ms: u64) -> Option<Option<f64>> {
        if self.keyed == keyed {
            return None;
        }
        self.keyed = keyed;
        if keyed {
            self.keyed_since_ms = at_ms;
            self.last_key_ms = Some(at_ms);
            self.keyups += 1;
            Some(None)
        } else {
            self.last_unkey_ms = Some(at_ms);
            let d = at_ms.saturating_sub(self.keyed_since_ms) as f64 / 1000.0;
            self.keyed_total_s += d;
            Some(Some(d))
        }
    }
}

/// A keyed flag with its bookkeeping (local RX or TX).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Keying {
    pub keyed: bool,
    pub since_ms: u64,
    pub keyups: u64,
    pub total_s: f64,
    /// `rx_seq` of the last event that set it.
    pub touched_seq: u64,
}

impl Keying {
    /// Sets the flag; returns `Some(None)` on a key, `Some(Some(secs))` on an unkey,
    /// `None` when nothing changed.
    pub fn set(&mut self, keyed: bool, now_ms: u64) -> Option<Option<f64>> {
        if self.keyed == keyed {
            return None;
        }
        self.keyed = keyed;
        if keyed {
            self.since_ms = now_ms;
            self.keyups += 1;
            Some(None)
        } else {
            let d = now_ms.saturating_sub(self.since_ms) as f64 / 1000.0;
            self.total_s += d;
            Some(Some(d))
        }
    }

    /// Seconds keyed since start at `now` (the current key counts so far).
    pub fn total_now(&self, now_ms: u64) -> f64 {
        self.total_s
            + if self.keyed {
                now_ms.saturating_sub(self.since_ms) as f64 / 1000.0
            } else {
                0.0
            }
    }
}

/// One local node.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub node_id: String,
    pub server: String,
    pub rx: Keying,
    pub tx: Keying,
    /// Links in XStat order (newest first in current app_rpt).
    pub links: Vec<Link>,
    pub linked_nodes: Vec<LinkedNode>,
    pub poll_interval: Duration,
    pub last_poll_ms: Option<u64>,
    pub stale: bool,
    /// Links an event removed, with the event's `rx_seq`: an older poll must not bring them
    /// back. Cleared by the next poll answered after the removal.
    pub removed: HashMap<String, u64>,
    /// The node's rx channel (from events' `Channel:`), to route `VarSet` events.
    pub channel: Option<String>,
    /// The daemon a remote node (`sources:`) comes from; `None` for local nodes.
    pub origin: Option<String>,
}

impl NodeState {
    pub fn new(node_id: &str, server: &str, poll_interval: Duration) -> NodeState {
        NodeState {
            node_id: node_id.to_owned(),
            server: server.to_owned(),
            rx: Keying::default(),
            tx: Keying::default(),
            links: Vec::new(),
            linked_nodes: Vec::new(),
            poll_interval,
            last_poll_ms: None,
            stale: true,
            removed: HashMap::new(),
            channel: None,
            origin: None,
        }
    }

    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    pub fn link_mut(&mut self, name: &str) -> Option<&mut Link> {
        self.links.iter_mut().find(|l| l.name == name)
    }

    /// The API view at `now`.
    pub fn view(&self, now_ms: u64, db: &AstDb) -> NodeView {
        NodeView {
            node_id: self.node_id.clone(),
            server: self.server.clone(),
            rx_keyed: self.rx.keyed,
            tx_keyed: self.tx.keyed,
            links: self.links.iter().map(|l| l.view(now_ms, db)).collect(),
            linked_nodes: self.linked_nodes.clone(),
            poll_interval_seconds: self.poll_interval.as_secs_f64(),
            last_poll: self.last_poll_ms.map(rfc3339),
            stale: self.stale,
            tx_keyups: self.tx.keyups,
            tx_seconds_total: self.tx.total_now(now_ms),
            rx_keyups: self.rx.keyups,
            origin: self.origin.clone(),
        }
    }
}

/// Formats ms since the Unix epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}
