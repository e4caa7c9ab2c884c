//! The simulator's truth model: the nodes it hosts, their links, keying, voter receivers and
//! channel variables, and exactly which app_rpt events each mutation produces.
//!
//! Every mutation returns the [`TruthEvent`]s app_rpt would emit for it
//! (ami-app-rpt.md §3): `RPT_ALINKS`, `RPT_NUMALINKS`, `RPT_LINKS`, `RPT_NUMLINKS` together
//! and in that order on every link change and every remote key/unkey; `RPT_RXKEYED` /
//! `RPT_TXKEYED` on local keying edges; a core `VarSet` before each of them (modern Asterisk
//! only — the session layer drops it for the legacy era); nothing for a change in the nodes
//! behind a link. Channel variables are kept most-recently-set first, as Asterisk's list is.
//!
//! This module is pure data: no locks, no I/O. Times come in through [`Now`] so tests with
//! paused tokio time see ages advance exactly.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::rpt::types::{Direction, LinkState, Mode};

/// app_rpt initialises `lastkeyedtime` to start minus this (`RPT_LOCKOUT_SECS`).
const RPT_LOCKOUT_SECS: u64 = 60;

/// The eight variables app_rpt sets (to `0`) when a node starts, in that order.
const START_VARIABLES: [&str; 8] = [
    "RPT_RXKEYED",
    "RPT_TXKEYED",
    "RPT_ETXKEYED",
    "RPT_AUTOPATCHUP",
    "RPT_NUMLINKS",
    "RPT_NUMALINKS",
    "RPT_LINKS",
    "RPT_ALINKS",
];

/// A link to establish on a simulated node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimLink {
    /// Node number, EchoLink `3xxxxxx`, or a client name such as `WD5M-P`.
    pub name: String,
    /// Peer IP as XStat shows it: `None` = EchoLink/TLB (empty column), `Some("(none)")` =
    /// no channel (retrying).
    pub ip: Option<String>,
    pub direction: Direction,
    pub state: LinkState,
    /// `T`, `R`, `C`, or `L` (local monitor: in XStat/SawStat, omitted from ALINKS/LINKS).
    pub mode: Mode,
    /// XStat reconnect counter.
    pub reconnects: u32,
    /// The nodes behind this link, as its last `L` message listed them.
    pub remote_nodes: Vec<(Mode, String)>,
}

impl SimLink {
    /// An established transceive link to an AllStar node over IAX.
    pub fn allstar(
        name: impl Into<String>,
        ip: impl Into<String>,
        direction: Direction,
    ) -> SimLink {
        SimLink {
            name: name.into(),
            ip: Some(ip.into()),
            direction,
            state: LinkState::Established,
            mode: Mode::T,
            reconnects: 0,
            remote_nodes: Vec::new(),
        }
    }

    /// An inbound EchoLink user (`3` + 6 digits): XStat shows an empty IP column.
    pub fn echolink(name: impl Into<String>) -> SimLink {
        SimLink {
            ip: None,
            ..SimLink::allstar(name, "", Direction::In)
        }
    }

    /// An outbound link with no channel (retrying): XStat shows `(none)` and `CONNECTING`.
    pub fn no_channel(name: impl Into<String>) -> SimLink {
        SimLink {
            state: LinkState::Connecting,
            ..SimLink::allstar(name, "(none)", Direction::Out)
        }
    }

    /// Sets the mode (`T`, `R`, `C` or `L`).
    pub fn with_mode(mut self, mode: Mode) -> SimLink {
        self.mode = mode;
        self
    }

    /// Sets the connection state.
    pub fn with_state(mut self, state: LinkState) -> SimLink {
        self.state = state;
        self
    }

    /// Sets the reconnect counter.
    pub fn with_reconnects(mut self, reconnects: u32) -> SimLink {
        self.reconnects = reconnects;
        self
    }

    /// Sets the nodes behind this link.
    pub fn with_remote_nodes<S: Into<String>>(mut self, nodes: Vec<(Mode, S)>) -> SimLink {
        self.remote_nodes = nodes.into_iter().map(|(m, n)| (m, n.into())).collect();
        self
    }
}

/// One receiver (client) of a chan_voter instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimVoterReceiver {
    pub name: String,
    /// `a.b.c.d:port`.
    pub ip: String,
    /// 0..=255.
    pub rssi: u32,
    /// Any of `Mix`, `Master`, `ActiveMaster`, `Inactive` (printed in that order).
    pub flags: Vec<String>,
}

impl SimVoterReceiver {
    /// A receiver with no flags.
    pub fn new(name: impl Into<String>, ip: impl Into<String>, rssi: u32) -> SimVoterReceiver {
        SimVoterReceiver {
            name: name.into(),
            ip: ip.into(),
            rssi,
            flags: Vec::new(),
        }
    }

    /// Adds flags.
    pub fn with_flags(mut self, flags: &[&str]) -> SimVoterReceiver {
        self.flags.extend(flags.iter().map(|f| f.to_string()));
        self
    }

    /// True when the receiver carries the `Inactive` flag.
    pub fn is_inactive(&self) -> bool {
        self.flags.iter().any(|f| f == "Inactive")
    }
}

/// One link as the simulator holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimLinkTruth {
    pub name: String,
    pub ip: Option<String>,
    pub direction: Direction,
    pub state: LinkState,
    pub mode: Mode,
    pub reconnects: u32,
    pub remote_nodes: Vec<(Mode, String)>,
    /// Audio is being received from this link now (`lastrx1`).
    pub keyed: bool,
    /// When the link connected (or became established).
    pub connected_at: Instant,
    /// Last key-up from this link (`None` = never; SawStat prints `-1`).
    pub last_key: Option<Instant>,
    /// Last un-key from this link (`None` = never).
    pub last_unkey: Option<Instant>,
    /// Made with a "permanent" `ilink` (12, 13, 18): app_rpt ignores `ilink 1` on it
    /// ("must use perm command on perm link"); only 11 (or 6) drops it.
    pub permanent: bool,
}

impl SimLinkTruth {
    fn new(link: SimLink, now: Instant) -> SimLinkTruth {
        SimLinkTruth {
            name: link.name,
            ip: link.ip,
            direction: link.direction,
            state: link.state,
            mode: link.mode,
            reconnects: link.reconnects,
            remote_nodes: link.remote_nodes,
            keyed: false,
            connected_at: now,
            last_key: None,
            last_unkey: None,
            permanent: false,
        }
    }

    /// The link's static description.
    pub fn link(&self) -> SimLink {
        SimLink {
            name: self.name.clone(),
            ip: self.ip.clone(),
            direction: self.direction,
            state: self.state,
            mode: self.mode,
            reconnects: self.reconnects,
            remote_nodes: self.remote_nodes.clone(),
        }
    }

    /// The mode letter app_rpt reports: `C` while connecting, else the mode.
    pub fn letter(&self) -> char {
        if self.state == LinkState::Connecting {
            return 'C';
        }
        mode_letter(self.mode)
    }

    /// Reported in XStat/SawStat (names starting with `0` are phone/autopatch pseudo-links).
    pub fn is_reported(&self) -> bool {
        !self.name.starts_with('0')
    }

    /// Part of RPT_ALINKS / RPT_LINKS / LinkedNodes (also excludes local-monitor links).
    pub fn is_listed(&self) -> bool {
        self.is_reported() && self.mode != Mode::L
    }
}

/// One simulated node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimNodeTruth {
    pub rx_keyed: bool,
    pub tx_keyed: bool,
    /// Container order: newest first.
    pub links: Vec<SimLinkTruth>,
    /// `Some((voted receiver, receivers))` when the node is a chan_voter instance.
    pub voter: Option<(Option<String>, Vec<SimVoterReceiver>)>,
    /// Channel variables of the rx channel, most recently set first (RPT_* included).
    pub variables: Vec<(String, String)>,
    /// The rx channel name in events (`SimpleUSB/1999`, `Voter/2001`, ...).
    pub channel: String,
    /// `LastKeyedTime` of events (local receiver).
    pub last_keyed_time: SystemTime,
    /// `LastTxKeyedTime` of events (local transmitter).
    pub last_tx_keyed_time: SystemTime,
    /// Local receiver key-ups since start.
    pub rx_keyups: u64,
    /// Local transmitter key-ups since start.
    pub tx_keyups: u64,
    /// Transmitter time since start, not counting a key-up in progress.
    pub tx_time: Duration,
    /// When the transmitter keyed, while it is keyed.
    pub tx_since: Option<Instant>,
    /// `Uniqueid` of the rx channel (VarSet events).
    pub uniqueid: String,
}

impl SimNodeTruth {
    /// The link called `name`.
    pub fn link(&self, name: &str) -> Option<&SimLinkTruth> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The value of a channel variable.
    pub fn variable(&self, name: &str) -> Option<&str> {
        self.variables
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn link_mut(&mut self, name: &str) -> Option<&mut SimLinkTruth> {
        self.links.iter_mut().find(|l| l.name == name)
    }
}

/// Everything the simulator knows, cloned out by `SimHandle::truth()`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimTruth {
    pub nodes: BTreeMap<String, SimNodeTruth>,
}

/// The moment a mutation happens: monotonic (ages) and wall clock (ctime text).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub at: Instant,
    pub wall: SystemTime,
}

/// What a mutation emits, before formatting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TruthEvent {
    /// An app_rpt manager event (class `call`).
    Rpt {
        node: String,
        channel: String,
        name: &'static str,
        value: String,
        last_keyed: SystemTime,
        last_tx_keyed: SystemTime,
    },
    /// A core `VarSet` (class `dialplan`; modern Asterisk only).
    VarSet {
        channel: String,
        uniqueid: String,
        variable: String,
        value: String,
    },
}

/// Events produced by one mutation, in wire order.
pub(crate) type Emitted = Vec<TruthEvent>;

/// The letter of a mode.
pub(crate) fn mode_letter(mode: Mode) -> char {
    match mode {
        Mode::T => 'T',
        Mode::R => 'R',
        Mode::C => 'C',
        Mode::L => 'L',
    }
}

/// `__mklinklist_mode_adjust`: through an `R` link every `T` becomes `R`; through a `C`
/// link `T`/`R` become `C`.
fn adjust(through: char, mode: char) -> char {
    match (through, mode) {
        ('R', 'T') => 'R',
        ('C', 'T' | 'R') => 'C',
        _ => mode,
    }
}

/// `__mklinklist`: every reachable node as `(letter, name)`, container order, adjacent
/// link first and then the nodes behind it.
pub(crate) fn link_list(node: &SimNodeTruth) -> Vec<(char, String)> {
    let mut out = Vec::new();
    for link in node.links.iter().filter(|l| l.is_listed()) {
        let letter = link.letter();
        out.push((letter, link.name.clone()));
        for (mode, name) in &link.remote_nodes {
            if *mode != Mode::L {
                out.push((adjust(letter, mode_letter(*mode)), name.clone()));
            }
        }
    }
    out
}

/// The values of RPT_ALINKS, RPT_NUMALINKS, RPT_LINKS, RPT_NUMLINKS after a link update
/// (ami-app-rpt.md §2.8, including the empty case `""` / `"0"`).
pub(crate) fn link_strings(node: &SimNodeTruth) -> [(&'static str, String); 4] {
    let adjacent: Vec<String> = node
        .links
        .iter()
        .filter(|l| l.is_listed())
        .map(|l| {
            format!(
                "{}{}{}",
                l.name,
                l.letter(),
                if l.keyed { 'K' } else { 'U' }
            )
        })
        .collect();
    let all = link_list(node);
    let alinks = if adjacent.is_empty() {
        String::new()
    } else {
        format!("{},{}", adjacent.len(), adjacent.join(","))
    };
    let mut links = all.len().to_string();
    for (letter, name) in &all {
        links.push(',');
        links.push(*letter);
        links.push_str(name);
    }
    [
        ("RPT_ALINKS", alinks),
        ("RPT_NUMALINKS", adjacent.len().to_string()),
        ("RPT_LINKS", links),
        ("RPT_NUMLINKS", all.len().to_string()),
    ]
}

/// The `LinkedNodes:` entries: the link list sorted by name with the mode letter skipped
/// (`mycompar`), duplicates kept.
pub(crate) fn linked_nodes(node: &SimNodeTruth) -> Vec<String> {
    let mut all = link_list(node);
    all.sort_by(|a, b| a.1.as_bytes().cmp(b.1.as_bytes()));
    all.into_iter().map(|(l, n)| format!("{l}{n}")).collect()
}

/// The voted receiver: the strongest active receiver with a signal (ties: the first).
pub(crate) fn voted(receivers: &[SimVoterReceiver]) -> Option<String> {
    let mut best: Option<&SimVoterReceiver> = None;
    for r in receivers.iter().filter(|r| !r.is_inactive() && r.rssi > 0) {
        if best.is_none_or(|b| r.rssi > b.rssi) {
            best = Some(r);
        }
    }
    best.map(|r| r.name.clone())
}

impl SimTruth {
    /// Adds a node as app_rpt starts it: the eight RPT_* variables set to `0` (and their
    /// events). Nothing happens if the node exists.
    pub(crate) fn add_node(&mut self, node: &str, now: Now, epoch_id: u64) -> Emitted {
        if self.nodes.contains_key(node) {
            return Vec::new();
        }
        let lockout = Duration::from_secs(RPT_LOCKOUT_SECS);
        let truth = SimNodeTruth {
            rx_keyed: false,
            tx_keyed: false,
            links: Vec::new(),
            voter: None,
            variables: Vec::new(),
            channel: format!("SimpleUSB/{node}"),
            last_keyed_time: now.wall.checked_sub(lockout).unwrap_or(now.wall),
            last_tx_keyed_time: now.wall,
            rx_keyups: 0,
            tx_keyups: 0,
            tx_time: Duration::ZERO,
            tx_since: None,
            uniqueid: format!("{epoch_id}.{}", self.nodes.len() + 1),
        };
        self.nodes.insert(node.to_owned(), truth);
        let mut out = Vec::new();
        for name in START_VARIABLES {
            self.trigger(node, name, "0".to_owned(), &mut out);
        }
        out
    }

    /// Sets a variable (most recent first) and emits its VarSet.
    pub(crate) fn set_variable(&mut self, node: &str, name: &str, value: &str) -> Emitted {
        let mut out = Vec::new();
        self.set_var(node, name, value.to_owned(), &mut out);
        out
    }

    fn set_var(&mut self, node: &str, name: &str, value: String, out: &mut Emitted) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        n.variables.retain(|(k, _)| k != name);
        n.variables.insert(0, (name.to_owned(), value.clone()));
        out.push(TruthEvent::VarSet {
            channel: n.channel.clone(),
            uniqueid: n.uniqueid.clone(),
            variable: name.to_owned(),
            value,
        });
    }

    /// `rpt_manager_trigger` after `pbx_builtin_setvar_helper`: VarSet then the RPT event.
    fn trigger(&mut self, node: &str, name: &'static str, value: String, out: &mut Emitted) {
        self.set_var(node, name, value.clone(), out);
        let Some(n) = self.nodes.get(node) else {
            return;
        };
        out.push(TruthEvent::Rpt {
            node: node.to_owned(),
            channel: n.channel.clone(),
            name,
            value,
            last_keyed: n.last_keyed_time,
            last_tx_keyed: n.last_tx_keyed_time,
        });
    }

    /// `rpt_update_links`: the four link variables and events.
    fn update_links(&mut self, node: &str, out: &mut Emitted) {
        let Some(n) = self.nodes.get(node) else {
            return;
        };
        for (name, value) in link_strings(n) {
            self.trigger(node, name, value, out);
        }
    }

    /// Applies `f` to one link and, when it reports a change, emits the link events.
    /// Returns whether the link exists.
    fn with_link(
        &mut self,
        node: &str,
        link: &str,
        out: &mut Emitted,
        f: impl FnOnce(&mut SimLinkTruth) -> bool,
    ) -> bool {
        let Some(l) = self.nodes.get_mut(node).and_then(|n| n.link_mut(link)) else {
            return false;
        };
        if f(l) {
            self.update_links(node, out);
        }
        true
    }

    /// A link comes up (inserted at the front). An existing link of that name is replaced.
    /// Returns `None` when the node does not exist.
    pub(crate) fn connect_link(&mut self, node: &str, link: SimLink, now: Now) -> Option<Emitted> {
        let n = self.nodes.get_mut(node)?;
        n.links.retain(|l| l.name != link.name);
        n.links.insert(0, SimLinkTruth::new(link, now.at));
        let mut out = Vec::new();
        self.update_links(node, &mut out);
        Some(out)
    }

    /// A link goes away. Returns `None` when there was no such link.
    pub(crate) fn disconnect_link(&mut self, node: &str, link: &str) -> Option<Emitted> {
        let n = self.nodes.get_mut(node)?;
        let before = n.links.len();
        n.links.retain(|l| l.name != link);
        if n.links.len() == before {
            return None;
        }
        let mut out = Vec::new();
        self.update_links(node, &mut out);
        Some(out)
    }

    /// Remote key/unkey: SawStat ages move, the four link events follow (on a change).
    pub(crate) fn set_link_keyed(
        &mut self,
        node: &str,
        link: &str,
        keyed: bool,
        now: Now,
    ) -> Option<Emitted> {
        let mut out = Vec::new();
        let found = self.with_link(node, link, &mut out, |l| {
            if l.keyed == keyed {
                return false;
            }
            l.keyed = keyed;
            if keyed {
                l.last_key = Some(now.at);
            } else {
                l.last_unkey = Some(now.at);
            }
            true
        });
        found.then_some(out)
    }

    /// CONNECTING ↔ ESTABLISHED. Becoming established restarts the connect time.
    pub(crate) fn set_link_state(
        &mut self,
        node: &str,
        link: &str,
        state: LinkState,
        now: Now,
    ) -> Option<Emitted> {
        let mut out = Vec::new();
        let found = self.with_link(node, link, &mut out, |l| {
            if l.state == state {
                return false;
            }
            l.state = state;
            if state == LinkState::Established {
                l.connected_at = now.at;
            }
            true
        });
        found.then_some(out)
    }

    /// Transceive / monitor / local monitor.
    pub(crate) fn set_link_mode(&mut self, node: &str, link: &str, mode: Mode) -> Option<Emitted> {
        let mut out = Vec::new();
        let found = self.with_link(node, link, &mut out, |l| {
            let changed = l.mode != mode;
            l.mode = mode;
            changed
        });
        found.then_some(out)
    }

    /// Marks a link permanent or not; app_rpt emits nothing for that.
    pub(crate) fn set_link_permanent(&mut self, node: &str, link: &str, permanent: bool) -> bool {
        let mut out = Vec::new();
        self.with_link(node, link, &mut out, |l| {
            l.permanent = permanent;
            false
        })
    }

    /// The nodes behind a link changed: app_rpt emits nothing for that.
    pub(crate) fn set_remote_nodes(
        &mut self,
        node: &str,
        link: &str,
        nodes: Vec<(Mode, String)>,
    ) -> bool {
        let mut out = Vec::new();
        self.with_link(node, link, &mut out, |l| {
            l.remote_nodes = nodes;
            false
        })
    }

    /// Moves a link's connect time (and key times) `age` into the past.
    pub(crate) fn backdate_link(&mut self, node: &str, link: &str, age: Duration) -> bool {
        let mut out = Vec::new();
        self.with_link(node, link, &mut out, |l| {
            l.connected_at = l.connected_at.checked_sub(age).unwrap_or(l.connected_at);
            false
        })
    }

    /// Local receiver COS edge: `RPT_RXKEYED`. On key-up the event carries the previous
    /// `LastKeyedTime`; on un-key the current time (inferred to match TX, §3.1).
    pub(crate) fn set_rx_keyed(&mut self, node: &str, keyed: bool, now: Now) -> Emitted {
        let mut out = Vec::new();
        let Some(n) = self.nodes.get_mut(node) else {
            return out;
        };
        if n.rx_keyed == keyed {
            return out;
        }
        n.rx_keyed = keyed;
        if keyed {
            n.rx_keyups += 1;
        } else {
            n.last_keyed_time = now.wall;
        }
        self.trigger(node, "RPT_RXKEYED", bit(keyed), &mut out);
        if let Some(n) = self.nodes.get_mut(node).filter(|_| keyed) {
            n.last_keyed_time = now.wall;
        }
        out
    }

    /// Local transmitter edge: `RPT_TXKEYED` (key-up carries the previous
    /// `LastTxKeyedTime`, un-key the current one: `log_keyed`/`log_unkeyed`).
    pub(crate) fn set_tx_keyed(&mut self, node: &str, keyed: bool, now: Now) -> Emitted {
        let mut out = Vec::new();
        let Some(n) = self.nodes.get_mut(node) else {
            return out;
        };
        if n.tx_keyed == keyed {
            return out;
        }
        n.tx_keyed = keyed;
        if keyed {
            n.tx_keyups += 1;
            n.tx_since = Some(now.at);
        } else {
            if let Some(since) = n.tx_since.take() {
                n.tx_time += now.at.saturating_duration_since(since);
            }
            n.last_tx_keyed_time = now.wall;
        }
        self.trigger(node, "RPT_TXKEYED", bit(keyed), &mut out);
        if let Some(n) = self.nodes.get_mut(node).filter(|_| keyed) {
            n.last_tx_keyed_time = now.wall;
        }
        out
    }

    /// Makes the node a chan_voter instance (its rx channel becomes `Voter/<node>` unless a
    /// channel was set explicitly). Emits nothing: chan_voter has no AMI events.
    pub(crate) fn set_voter(&mut self, node: &str, receivers: Vec<SimVoterReceiver>) -> bool {
        let Some(n) = self.nodes.get_mut(node) else {
            return false;
        };
        if n.channel == format!("SimpleUSB/{node}") {
            n.channel = format!("Voter/{node}");
        }
        n.voter = Some((voted(&receivers), receivers));
        true
    }

    /// The node is no longer a voter instance.
    pub(crate) fn clear_voter(&mut self, node: &str) -> bool {
        self.nodes
            .get_mut(node)
            .is_some_and(|n| n.voter.take().is_some())
    }

    /// Sets the rx channel name used in events.
    pub(crate) fn set_channel(&mut self, node: &str, channel: &str) -> bool {
        let Some(n) = self.nodes.get_mut(node) else {
            return false;
        };
        n.channel = channel.to_owned();
        true
    }
}

fn bit(on: bool) -> String {
    if on { "1" } else { "0" }.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Now {
        Now {
            at: Instant::now(),
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    fn rpt_values(events: &Emitted) -> Vec<(&'static str, String)> {
        events
            .iter()
            .filter_map(|e| match e {
                TruthEvent::Rpt { name, value, .. } => Some((*name, value.clone())),
                TruthEvent::VarSet { .. } => None,
            })
            .collect()
    }

    fn hub() -> SimTruth {
        let mut t = SimTruth::default();
        t.add_node("1999", now(), 1);
        t
    }

    #[test]
    fn node_start_sets_eight_zero_variables_most_recent_first() {
        let t = hub();
        let names: Vec<&str> = t.nodes["1999"]
            .variables
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "RPT_ALINKS",
                "RPT_LINKS",
                "RPT_NUMALINKS",
                "RPT_NUMLINKS",
                "RPT_AUTOPATCHUP",
                "RPT_ETXKEYED",
                "RPT_TXKEYED",
                "RPT_RXKEYED"
            ]
        );
        assert!(t.nodes["1999"].variables.iter().all(|(_, v)| v == "0"));
    }

    #[test]
    fn link_strings_follow_container_order_downgrades_and_empty_case() {
        let mut t = hub();
        let behind = vec![(Mode::T, "2005"), (Mode::T, "2006")];
        t.connect_link(
            "1999",
            SimLink::allstar("2000", "192.0.2.10", Direction::Out).with_remote_nodes(behind),
            now(),
        );
        t.connect_link(
            "1999",
            SimLink::allstar("2001", "198.51.100.7", Direction::In),
            now(),
        );
        t.connect_link("1999", SimLink::echolink("3123456"), now());
        t.connect_link(
            "1999",
            SimLink::allstar("48335", "1.2.3.4", Direction::In).with_mode(Mode::L),
            now(),
        );
        let out = t
            .set_link_keyed("1999", "2000", true, now())
            .expect("link exists");
        assert_eq!(
            rpt_values(&out),
            [
                ("RPT_ALINKS", "3,3123456TU,2001TU,2000TK".to_owned()),
                ("RPT_NUMALINKS", "3".to_owned()),
                ("RPT_LINKS", "5,T3123456,T2001,T2000,T2005,T2006".to_owned()),
                ("RPT_NUMLINKS", "5".to_owned()),
            ]
        );
        t.set_link_mode("1999", "2000", Mode::R);
        assert_eq!(
            linked_nodes(&t.nodes["1999"]),
            ["R2000", "T2001", "R2005", "R2006", "T3123456"]
        );
        for l in ["2000", "2001", "3123456"] {
            t.disconnect_link("1999", l);
        }
        let out = t.disconnect_link("1999", "48335").expect("link exists");
        assert_eq!(rpt_values(&out)[0], ("RPT_ALINKS", String::new()));
        assert_eq!(rpt_values(&out)[2], ("RPT_LINKS", "0".to_owned()));
    }

    #[test]
    fn connecting_links_show_c_and_downgrade_nodes_behind() {
        let mut t = hub();
        let link = SimLink::no_channel("2002")
            .with_remote_nodes(vec![(Mode::T, "2003"), (Mode::R, "2004")]);
        let out = t.connect_link("1999", link, now()).expect("node exists");
        assert_eq!(rpt_values(&out)[2].1, "3,C2002,C2003,C2004");
    }

    #[test]
    fn remote_node_changes_and_unchanged_keying_emit_nothing() {
        let mut t = hub();
        t.connect_link(
            "1999",
            SimLink::allstar("2000", "192.0.2.10", Direction::Out),
            now(),
        );
        assert!(t.set_remote_nodes("1999", "2000", vec![(Mode::T, "2005".into())]));
        assert_eq!(
            t.set_link_keyed("1999", "2000", false, now()),
            Some(Vec::new())
        );
        assert_eq!(t.set_link_keyed("1999", "9999", true, now()), None);
        assert!(t.set_rx_keyed("1999", false, now()).is_empty());
    }

    #[test]
    fn voted_is_the_strongest_active_receiver() {
        let rs = vec![
            SimVoterReceiver::new("a", "1.1.1.1:1667", 120),
            SimVoterReceiver::new("b", "1.1.1.2:1667", 200).with_flags(&["Inactive"]),
            SimVoterReceiver::new("c", "1.1.1.3:1667", 180),
        ];
        assert_eq!(voted(&rs).as_deref(), Some("c"));
        assert_eq!(voted(&[SimVoterReceiver::new("a", "x", 0)]), None);
    }
}
