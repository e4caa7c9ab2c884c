//! Reconciliation: how app_rpt events and XStat/SawStat polls change one node, and which
//! changes that makes. Pure functions over [`NodeState`], unit-tested here.
//!
//! Rules:
//! - Events give millisecond edges; a poll is the truth: links missing from it are
//!   removed, links it shows are added or corrected.
//! - Every frame carries its position in the server's stream (`rx_seq`). A poll answered
//!   before an event must not undo that event: links touched by a newer event keep the
//!   event's values, and links a newer event removed are not brought back.
//! - A lost unkey is corrected by the next SawStat.
//! - Each difference becomes exactly one change, in a stable order: disconnections, then
//!   connections and updates in link order, then keying.

use std::collections::{HashMap, HashSet};

use super::change::{ChangeEvent, ChangeKind};
use super::model::{LinkState, LinkedNode, Mode};
use super::node::{Link, NodeState};
use crate::astdb::AstDb;
use crate::rpt::{ALink, SawStatLink, XStat, XStatLink};

/// Builds changes for one node; collects them in order.
pub struct Changes<'a> {
    pub now_ms: u64,
    pub db: &'a AstDb,
    pub out: Vec<ChangeEvent>,
}

impl<'a> Changes<'a> {
    pub fn new(now_ms: u64, db: &'a AstDb) -> Changes<'a> {
        Changes {
            now_ms,
            db,
            out: Vec::new(),
        }
    }

    fn node(&mut self, node: &NodeState, kind: ChangeKind, duration: Option<f64>) {
        let mut ev = ChangeEvent::new(kind, &node.server, Some(&node.node_id));
        ev.time_ms = self.now_ms;
        ev.duration_seconds = duration;
        self.out.push(ev);
    }

    fn link(&mut self, node: &NodeState, link: &Link, kind: ChangeKind) -> &mut ChangeEvent {
        let mut ev = ChangeEvent::new(kind, &node.server, Some(&node.node_id));
        ev.time_ms = self.now_ms;
        ev.link = Some(link.view(self.now_ms, self.db));
        self.out.push(ev);
        let last = self.out.len() - 1;
        &mut self.out[last]
    }

    /// Keying change of a link (`link_keyed`, or `link_unkeyed` with its duration).
    fn link_keying(&mut self, node: &NodeState, link: &Link, duration: Option<f64>) {
        let kind = if link.keyed {
            ChangeKind::LinkKeyed
        } else {
            ChangeKind::LinkUnkeyed
        };
        self.link(node, link, kind).duration_seconds = duration;
    }

    fn disconnect(&mut self, node: &mut NodeState, idx: usize) {
        let mut link = node.links.remove(idx);
        if let Some(d) = link.set_keyed(false, self.now_ms) {
            self.link_keying(node, &link, d);
        }
        self.link(node, &link, ChangeKind::LinkDisconnected);
    }
}

fn state_for(mode: Option<Mode>) -> LinkState {
    if mode == Some(Mode::C) {
        LinkState::Connecting
    } else {
        LinkState::Established
    }
}

/// `RPT_ALINKS` (event `rx_seq` = `seq`): the adjacent links, their modes and keying.
pub fn apply_alinks(node: &mut NodeState, alinks: &[ALink], seq: u64, ch: &mut Changes) {
    let listed: HashSet<&str> = alinks.iter().map(|a| a.name.as_str()).collect();
    // Links gone from the list; local-monitor links (and links whose mode only a poll can
    // tell) are never in it, so the next poll decides about those.
    let mut i = 0;
    while i < node.links.len() {
        let l = &node.links[i];
        if listed.contains(l.name.as_str()) || matches!(l.mode, Some(Mode::L) | None) {
            i += 1;
        } else {
            node.removed.insert(l.name.clone(), seq);
            ch.disconnect(node, i);
        }
    }
    for a in alinks {
        node.removed.remove(&a.name);
        let now = ch.now_ms;
        match node.links.iter().position(|l| l.name == a.name) {
            Some(idx) => {
                let mut fields = Vec::new();
                let l = &mut node.links[idx];
                l.touched_seq = seq;
                if a.mode.is_some() && l.mode != a.mode {
                    l.mode = a.mode;
                    fields.push("mode");
                }
                let st = Some(state_for(l.mode));
                if a.mode.is_some() && l.state != st {
                    l.state = st;
                    fields.push("state");
                }
                let keying = l.set_keyed(a.keyed, now);
                let link = node.links[idx].clone();
                if !fields.is_empty() {
                    ch.link(node, &link, ChangeKind::LinkUpdated).fields = fields;
                }
                if let Some(d) = keying {
                    ch.link_keying(node, &link, d);
                }
            }
            None => {
                let mut l = Link::new(&a.name, now);
                l.mode = a.mode;
                l.state = Some(state_for(a.mode));
                l.touched_seq = seq;
                node.links.insert(0, l.clone());
                ch.link(node, &l, ChangeKind::LinkConnected);
                if a.keyed {
                    node.links[0].set_keyed(true, now);
                    let l = node.links[0].clone();
                    ch.link_keying(node, &l, None);
                }
            }
        }
    }
}

/// `RPT_LINKS`: the whole reachable network (no change is emitted; it is model data).
pub fn apply_links(node: &mut NodeState, nodes: Vec<LinkedNode>) {
    node.linked_nodes = nodes;
}

/// `RPT_TXKEYED` / `RPT_RXKEYED`.
pub fn apply_keying(node: &mut NodeState, tx: bool, keyed: bool, seq: u64, ch: &mut Changes) {
    let k = if tx { &mut node.tx } else { &mut node.rx };
    k.touched_seq = seq;
    if let Some(duration) = k.set(keyed, ch.now_ms) {
        let kind = match (tx, keyed) {
            (true, true) => ChangeKind::TxKeyed,
            (true, false) => ChangeKind::TxUnkeyed,
            (false, true) => ChangeKind::RxKeyed,
            (false, false) => ChangeKind::RxUnkeyed,
        };
        ch.node(node, kind, duration);
    }
}

/// An XStat reply (frame counter `p`): the links, their details, the network, and the
/// local RX/TX state from the `Var:` lines.
pub fn apply_xstat(node: &mut NodeState, x: &XStat<'_>, p: u64, ch: &mut Changes) {
    node.removed.retain(|_, s| *s > p);
    let modes: Option<HashMap<&str, &ALink<&str>>> = x
        .alinks
        .as_ref()
        .map(|v| v.iter().map(|a| (a.name, a)).collect());
    remove_missing_links(node, x, p, ch);
    // Room for exactly the links of the poll (a first push would make room for 4: on a
    // fleet of 2-link nodes, half of every node's link list unused).
    node.links
        .reserve_exact(x.links.len().saturating_sub(node.links.len()));
    let mut ordered = Vec::with_capacity(x.links.len());
    for xl in &x.links {
        if node.removed.contains_key(xl.name) {
            continue;
        }
        let alink = modes.as_ref().map(|m| m.get(xl.name).copied());
        let name = match node.links.iter().position(|l| l.name == xl.name) {
            Some(idx) => update_link(node, idx, xl, alink, p, ch),
            None => add_link(node, xl, alink, p, ch),
        };
        ordered.push(name);
    }
    reorder(node, &ordered);
    apply_network(node, x);
    if let Some(rx) = x.rx_keyed.filter(|_| node.rx.touched_seq <= p) {
        apply_keying(node, false, rx, p, ch);
    }
    if let Some(tx) = x.tx_keyed.filter(|_| node.tx.touched_seq <= p) {
        apply_keying(node, true, tx, p, ch);
    }
}

/// Links the poll no longer shows are disconnected, unless a newer event touched them.
fn remove_missing_links(node: &mut NodeState, x: &XStat<'_>, p: u64, ch: &mut Changes) {
    let in_poll: HashSet<&str> = x.links.iter().map(|l| l.name).collect();
    let mut i = 0;
    while i < node.links.len() {
        let l = &node.links[i];
        if in_poll.contains(l.name.as_str()) || l.touched_seq > p {
            i += 1;
        } else {
            ch.disconnect(node, i);
        }
    }
}

/// The link's mode from RPT_ALINKS: `alink` is `None` when the reply had no ALINKS, and
/// `Some(None)` for a link in XStat but not in ALINKS (a local-monitor link).
fn xstat_mode(alink: Option<Option<&ALink<&str>>>) -> Option<Mode> {
    match alink {
        Some(Some(a)) => a.mode,
        Some(None) => Some(Mode::L),
        None => None,
    }
}

/// An existing link brought up to the poll: IP, direction, reconnects, and (unless a
/// newer event set them) mode and state; one `link_updated` naming what changed.
fn update_link(
    node: &mut NodeState,
    idx: usize,
    xl: &XStatLink<'_>,
    alink: Option<Option<&ALink<&str>>>,
    p: u64,
    ch: &mut Changes,
) -> String {
    let mode = xstat_mode(alink);
    let connected_at = ch.now_ms.saturating_sub(xl.connected_seconds * 1000);
    let l = &mut node.links[idx];
    let mut fields = Vec::new();
    if l.ip.as_deref() != xl.ip {
        l.ip = xl.ip.map(str::to_owned);
        fields.push("ip");
    }
    if l.direction != xl.direction {
        l.direction = xl.direction;
        fields.push("direction");
    }
    if l.reconnects != xl.reconnects {
        l.reconnects = xl.reconnects;
        fields.push("reconnects");
    }
    if l.touched_seq <= p {
        if mode.is_some() && l.mode != mode {
            l.mode = mode;
            fields.push("mode");
        }
        if xl.state.is_some() && l.state != xl.state {
            l.state = xl.state;
            fields.push("state");
        }
    }
    // Connected time is corrected silently: it is a clock, not an event.
    if l.connected_at_ms.abs_diff(connected_at) > 2000 {
        l.connected_at_ms = connected_at;
    }
    if !fields.is_empty() {
        let link = l.clone();
        ch.link(node, &link, ChangeKind::LinkUpdated).fields = fields;
    }
    node.links[idx].name.clone()
}

/// A link the model did not have: `link_connected`, then its keying if ALINKS says keyed.
fn add_link(
    node: &mut NodeState,
    xl: &XStatLink<'_>,
    alink: Option<Option<&ALink<&str>>>,
    p: u64,
    ch: &mut Changes,
) -> String {
    let now = ch.now_ms;
    let mut l = Link::new(xl.name, now);
    l.ip = xl.ip.map(str::to_owned);
    l.direction = xl.direction;
    l.reconnects = xl.reconnects;
    l.state = xl.state;
    l.mode = xstat_mode(alink);
    l.connected_at_ms = now.saturating_sub(xl.connected_seconds * 1000);
    l.touched_seq = p;
    ch.link(node, &l, ChangeKind::LinkConnected);
    let keyed = matches!(alink, Some(Some(a)) if a.keyed);
    node.links.push(l);
    if keyed {
        let idx = node.links.len() - 1;
        node.links[idx].set_keyed(true, now);
        let l = node.links[idx].clone();
        ch.link_keying(node, &l, None);
    }
    xl.name.to_owned()
}

/// LinkedNodes, copied only when the network changed (the reply's text is borrowed).
fn apply_network(node: &mut NodeState, x: &XStat<'_>) {
    let same = node.linked_nodes.len() == x.linked_nodes.len()
        && x.linked_nodes
            .iter()
            .zip(&node.linked_nodes)
            .all(|(b, k)| b.same_as(k));
    if !same {
        node.linked_nodes = x
            .linked_nodes
            .iter()
            .map(LinkedNode::to_owned_node)
            .collect();
    }
}

/// Puts links in XStat order; links kept only because of a newer event go first (they
/// are the newest).
fn reorder(node: &mut NodeState, ordered: &[String]) {
    let rank: HashMap<&str, usize> = ordered
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    node.links
        .sort_by_key(|l| rank.get(l.name.as_str()).map(|r| r + 1).unwrap_or(0));
}

/// A SawStat reply (frame counter `q`): keying per link, and the key/unkey ages.
pub fn apply_sawstat(node: &mut NodeState, saw: &[SawStatLink<'_>], q: u64, ch: &mut Changes) {
    let now = ch.now_ms;
    for s in saw {
        let Some(idx) = node.links.iter().position(|l| l.name == s.name) else {
            continue;
        };
        let l = &mut node.links[idx];
        if l.touched_seq > q {
            continue;
        }
        let at = |secs: Option<u64>| secs.map(|s| now.saturating_sub(s * 1000));
        let key_at = at(s.secs_since_key);
        let unkey_at = at(s.secs_since_unkey);
        // The edge happened `secs` ago, not now.
        let when = if s.keyed { key_at } else { unkey_at }.unwrap_or(now);
        let keying = l.set_keyed(s.keyed, when);
        // Ages are corrected silently unless they disagree by more than the 1 s resolution.
        if let Some(t) = key_at {
            if l.last_key_ms.is_none_or(|k| k.abs_diff(t) > 2000) {
                l.last_key_ms = Some(t);
            }
        }
        if let Some(t) = unkey_at {
            if l.last_unkey_ms.is_none_or(|k| k.abs_diff(t) > 2000) {
                l.last_unkey_ms = Some(t);
            }
        }
        if let Some(d) = keying {
            let link = node.links[idx].clone();
            ch.link_keying(node, &link, d);
        }
    }
}

#[cfg(test)]
mod tests;
