//! The demo network and its activity generator: what makes `allstar-nexus demo` look like
//! a real, lively AllStar network.
//!
//! [`demo_network`] builds three nodes: hub 1999 (AllStar links in and out, one carrying
//! nodes behind it, a monitor link, a local-monitor link, an EchoLink user), repeater 2000
//! linked to the hub, and voter node 2001 (four receivers) linked to the repeater.
//!
//! [`spawn_activity`] then drives it from a seed: people talk (a remote link or a local
//! receiver keys for a few seconds, sometimes a kerchunk, sometimes a long over), audio
//! spreads over links between this server's own nodes, transmitters follow with a hang
//! tail, links drop and new ones connect (CONNECTING first), the nodes behind links change,
//! an EchoLink user comes and goes, and voter RSSI wanders while a signal is present, so
//! the voted receiver changes. Everything is scheduled on tokio time from one seeded RNG,
//! so a seed replays the same story (given the same starting network).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::SimHandle;
use super::rng::SimRng;
use super::truth::{SimLink, SimNodeTruth, SimTruth, SimVoterReceiver, mode_letter};
use crate::rpt::types::{Direction, LinkKind, LinkState, Mode};

/// Transmitter hang time after the last audio.
const TX_TAIL: Duration = Duration::from_millis(1500);
/// How often voter RSSI moves.
const VOTER_TICK: Duration = Duration::from_secs(1);
/// EchoLink users who drop by.
const ECHOLINK_USERS: [&str; 3] = ["3123456", "3345678", "3987654"];

/// Builds the demo network on `handle` (adds nodes 1999, 2000 and 2001).
pub fn demo_network(handle: &SimHandle) {
    for node in ["1999", "2000", "2001"] {
        handle.add_node(node);
    }
    // Oldest first: links are listed newest first.
    local_pair(handle, "2000", "1999", Duration::from_secs(99_180));
    local_pair(handle, "2001", "2000", Duration::from_secs(99_100));
    for (link, age) in hub_links() {
        let name = link.name.clone();
        handle.connect_link("1999", link);
        handle.backdate_link("1999", &name, Duration::from_secs(age));
    }
    handle.set_voter("2001", voter_receivers());
    handle.set_variable("2000", "cpu_temp", "46.7");
    handle.set_variable("2000", "cpu_up", "up 1 day, 3 hours");
    sync_local_lists(handle);
}

/// The hub's remote links with their ages in seconds, oldest first.
fn hub_links() -> [(SimLink, u64); 5] {
    let behind = vec![
        (Mode::T, "2530"),
        (Mode::T, "25333"),
        (Mode::T, "2546"),
        (Mode::R, "2547"),
    ];
    let big_hub = SimLink::allstar("27339", "192.0.2.10", Direction::Out)
        .with_reconnects(1)
        .with_remote_nodes(behind);
    let monitored = SimLink::allstar("51234", "203.0.113.25", Direction::Out)
        .with_mode(Mode::R)
        .with_remote_nodes(vec![(Mode::T, "51235")]);
    let local_monitor =
        SimLink::allstar("48335", "198.51.100.44", Direction::In).with_mode(Mode::L);
    [
        (big_hub, 18_753),
        (monitored, 7_260),
        (
            SimLink::allstar("41522", "198.51.100.7", Direction::In),
            2_841,
        ),
        (local_monitor, 1_205),
        (SimLink::echolink(ECHOLINK_USERS[0]), 135),
    ]
}

/// The voter's receivers: a master site, two plain ones and one that is offline.
fn voter_receivers() -> Vec<SimVoterReceiver> {
    vec![
        SimVoterReceiver::new("hilltop", "192.0.2.51:1667", 0)
            .with_flags(&["Master", "ActiveMaster"]),
        SimVoterReceiver::new("downtown", "192.0.2.52:1667", 0),
        SimVoterReceiver::new("airport", "198.51.100.53:1667", 0),
        SimVoterReceiver::new("harbor", "203.0.113.54:1667", 0).with_flags(&["Inactive"]),
    ]
}

/// Links two nodes of this server (`from` dialled `to`), as app_rpt shows both ends.
fn local_pair(h: &SimHandle, from: &str, to: &str, age: Duration) {
    h.connect_link(from, SimLink::allstar(to, "127.0.0.1", Direction::Out));
    h.connect_link(to, SimLink::allstar(from, "127.0.0.1", Direction::In));
    h.backdate_link(from, to, age);
    h.backdate_link(to, from, age);
}

/// The node list `node` would send over its link to `peer`: everything it reaches except
/// through `peer` itself.
fn list_towards(node: &SimNodeTruth, peer: &str) -> Vec<(Mode, String)> {
    let mut out = Vec::new();
    for link in node
        .links
        .iter()
        .filter(|l| l.is_listed() && l.name != peer)
    {
        let letter = link.letter();
        out.push((letter, link.name.clone()));
        for (m, n) in link.remote_nodes.iter().filter(|(_, n)| n != peer) {
            let downgraded = match (letter, mode_letter(*m)) {
                ('R', 'T') => 'R',
                ('C', 'T' | 'R') => 'C',
                (_, c) => c,
            };
            out.push((downgraded, n.clone()));
        }
    }
    out.into_iter()
        .filter_map(|(c, n)| Mode::from_letter(c).map(|m| (m, n)))
        .collect()
}

/// Refreshes the nodes behind links between this server's own nodes (their `L` messages).
pub(crate) fn sync_local_lists(h: &SimHandle) {
    for _ in 0..2 {
        let truth = h.truth();
        for (name, node) in &truth.nodes {
            for link in node
                .links
                .iter()
                .filter(|l| truth.nodes.contains_key(&l.name))
            {
                if let Some(peer) = truth.nodes.get(&link.name) {
                    h.set_remote_nodes(name, &link.name, list_towards(peer, name));
                }
            }
        }
    }
}

/// Runs the demo activity on `handle` until `shutdown` is cancelled.
pub fn spawn_activity(handle: SimHandle, seed: u64, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut activity = Activity::new(handle, seed);
        activity.run(shutdown).await;
    })
}

/// A steady load for benchmarks (`allstar-nexus simulate --links-per-node 25
/// --link-keys-per-second 50`): every node gets `links_per_node` AllStar links, then link
/// keyups and unkeys follow a fixed clock.
///
/// Change `k` happens at `k × period` after the Unix epoch (`period` = 1 / rate), on node
/// `k mod N`, link `(k / N) mod L`, keyed when `(k / (N·L))` is even: a client that sees
/// the change can tell when it was made without any other channel (the load-profile
/// benchmark measures event→client latency this way). Each change is the four link events
/// app_rpt sends (`RPT_ALINKS`, `RPT_NUMALINKS`, `RPT_LINKS`, `RPT_NUMLINKS`).
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct SimLoad {
    /// Give every node this many AllStar links at start (names: see `load_link_name`).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub links_per_node: usize,
    /// Key or unkey one of those links this many times a second, round robin.
    #[arg(long, value_name = "RATE", default_value_t = 0.0, value_parser = rate)]
    pub link_keys_per_second: f64,
}

fn rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=100_000.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "{text:?} is not a rate between 0 and 100000 a second"
        )),
    }
}

/// Link `j` of the node at index `i` in the `--nodes` list (AllStar numbers 400000 up).
pub fn load_link_name(i: usize, j: usize) -> String {
    (400_000 + i * 100 + j).to_string()
}

/// Which change `k` is: (node index, link index, keyed).
pub fn load_change(k: u64, nodes: usize, links: usize) -> (usize, usize, bool) {
    let (n, l) = (nodes.max(1) as u64, links.max(1) as u64);
    (
        (k % n) as usize,
        ((k / n) % l) as usize,
        (k / (n * l)) % 2 == 0,
    )
}

impl SimLoad {
    /// Adds the links and starts the keying clock (until `stop`); nothing when both are 0.
    pub fn apply(&self, h: &SimHandle, stop: &CancellationToken) {
        if self.links_per_node == 0 {
            return;
        }
        let nodes: Vec<String> = h.truth().nodes.keys().cloned().collect();
        for (i, node) in nodes.iter().enumerate() {
            for j in 0..self.links_per_node {
                let ip = format!("10.{}.{}.{}", i / 256, i % 256, j % 256);
                h.connect_link(
                    node,
                    SimLink::allstar(load_link_name(i, j), ip, Direction::In),
                );
            }
        }
        if self.link_keys_per_second <= 0.0 {
            return;
        }
        let period_us = (1e6 / self.link_keys_per_second).max(1.0) as u64;
        let (h, stop, links) = (h.clone(), stop.clone(), self.links_per_node);
        tokio::spawn(async move {
            let mut k = unix_us() / period_us + 1;
            loop {
                let wait = (k * period_us).saturating_sub(unix_us());
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_micros(wait)) => {}
                }
                // Catch up (one change per tick) if the process was descheduled.
                let due = unix_us() / period_us;
                while k <= due {
                    let (i, j, keyed) = load_change(k, nodes.len(), links);
                    h.set_link_keyed(&nodes[i], &load_link_name(i, j), keyed);
                    k += 1;
                }
            }
        });
    }
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Something scheduled.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Task {
    /// Someone starts talking somewhere.
    Talk,
    /// A talker stops.
    EndTalk(u64),
    /// A transmitter's hang time is over (tail generation).
    TxTail(String, u64),
    /// A link drops or a new one connects.
    Churn,
    /// A connecting link comes up.
    Establish(String, String),
    /// The EchoLink user connects or leaves.
    EchoLink,
    /// Voter RSSI moves.
    Voter,
}

/// Where a talker's audio comes from.
#[derive(Debug, Clone)]
struct Talker {
    id: u64,
    node: String,
    /// A remote link keyed on `node`, or `None` for the node's own receiver.
    via: Option<String>,
}

/// What the current talkers imply.
#[derive(Debug, Default)]
struct Wanted {
    links: BTreeSet<(String, String)>,
    rx: BTreeSet<String>,
    audio: BTreeSet<String>,
}

struct Activity {
    h: SimHandle,
    rng: SimRng,
    queue: BinaryHeap<Reverse<(Instant, u64, Task)>>,
    seq: u64,
    talkers: Vec<Talker>,
    /// What the activity keyed itself (it never unkeys anything else).
    keyed_links: BTreeSet<(String, String)>,
    keyed_rx: BTreeSet<String>,
    keyed_tx: BTreeSet<String>,
    /// Pending tails: node → generation.
    tails: BTreeMap<String, u64>,
}

impl Activity {
    fn new(h: SimHandle, seed: u64) -> Activity {
        let mut a = Activity {
            h,
            rng: SimRng::new(seed),
            queue: BinaryHeap::new(),
            seq: 0,
            talkers: Vec::new(),
            keyed_links: BTreeSet::new(),
            keyed_rx: BTreeSet::new(),
            keyed_tx: BTreeSet::new(),
            tails: BTreeMap::new(),
        };
        a.schedule(Duration::from_secs(1), Task::Talk);
        a.schedule(Duration::from_secs(25), Task::Churn);
        a.schedule(Duration::from_secs(45), Task::EchoLink);
        a.schedule(VOTER_TICK, Task::Voter);
        a
    }

    fn schedule(&mut self, after: Duration, task: Task) {
        self.seq += 1;
        self.queue
            .push(Reverse((Instant::now() + after, self.seq, task)));
    }

    fn secs(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.rng.range(lo * 1000, hi * 1000))
    }

    async fn run(&mut self, shutdown: CancellationToken) {
        while let Some(Reverse((due, _, task))) = self.queue.pop() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(due) => {}
            }
            self.execute(task);
        }
    }

    fn execute(&mut self, task: Task) {
        match task {
            Task::Talk => self.talk(),
            Task::EndTalk(id) => {
                self.talkers.retain(|t| t.id != id);
                self.reconcile();
            }
            Task::TxTail(node, generation) => self.tail_over(&node, generation),
            Task::Churn => self.churn(),
            Task::Establish(node, link) => {
                self.h.set_link_state(&node, &link, LinkState::Established);
                sync_local_lists(&self.h);
            }
            Task::EchoLink => self.echolink(),
            Task::Voter => self.voter(),
        }
    }

    /// Starts a talker on a node that is quiet now.
    fn talk(&mut self) {
        let next = self.secs(1, 9);
        self.schedule(next, Task::Talk);
        let truth = self.h.truth();
        let busy = self.wanted(&truth).audio;
        let mut candidates: Vec<(String, Option<String>)> = Vec::new();
        for (name, node) in truth.nodes.iter().filter(|(n, _)| !busy.contains(*n)) {
            // Voter receivers are the show: give their node's receiver more turns.
            let turns = if node.voter.is_some() { 3 } else { 1 };
            candidates.extend(std::iter::repeat_n((name.clone(), None), turns));
            for link in node
                .links
                .iter()
                .filter(|l| is_remote_talker(&truth, l.name.as_str(), l))
            {
                candidates.push((name.clone(), Some(link.name.clone())));
            }
        }
        let Some((node, via)) = self.rng.pick(&candidates).cloned() else {
            return;
        };
        self.seq += 1;
        let id = self.seq;
        self.talkers.push(Talker { id, node, via });
        let length = match self.rng.range(0, 19) {
            0 => Duration::from_millis(self.rng.range(300, 800)),
            1 | 2 => self.secs(12, 25),
            _ => self.secs(2, 8),
        };
        self.schedule(length, Task::EndTalk(id));
        self.reconcile();
    }

    /// Who should be keyed now: talkers' origins, plus audio spreading over links between
    /// this server's nodes (a node hears a neighbour through its T or R link).
    fn wanted(&self, truth: &SimTruth) -> Wanted {
        let mut w = Wanted::default();
        for t in &self.talkers {
            match &t.via {
                Some(link) => w.links.insert((t.node.clone(), link.clone())),
                None => w.rx.insert(t.node.clone()),
            };
            spread(truth, &t.node, &mut w);
        }
        w
    }

    /// Brings the truth in line with the talkers (only touching what the activity keyed).
    fn reconcile(&mut self) {
        let truth = self.h.truth();
        let w = self.wanted(&truth);
        let h = self.h.clone();
        sync_set(&mut self.keyed_links, &w.links, |(n, l), on| {
            h.set_link_keyed(n, l, on);
        });
        sync_set(&mut self.keyed_rx, &w.rx, |n, on| h.set_rx_keyed(n, on));
        for node in &w.audio {
            self.tails.remove(node);
            if self.keyed_tx.insert(node.clone()) {
                h.set_tx_keyed(node, true);
            }
        }
        let quiet: Vec<String> = self
            .keyed_tx
            .iter()
            .filter(|n| !w.audio.contains(*n) && !self.tails.contains_key(*n))
            .cloned()
            .collect();
        for node in quiet {
            self.seq += 1;
            self.tails.insert(node.clone(), self.seq);
            let generation = self.seq;
            self.schedule(TX_TAIL, Task::TxTail(node, generation));
        }
    }

    fn tail_over(&mut self, node: &str, generation: u64) {
        if self.tails.get(node) != Some(&generation) {
            return;
        }
        self.tails.remove(node);
        if self.keyed_tx.remove(node) {
            self.h.set_tx_keyed(node, false);
        }
    }

    /// A link drops, or a new one starts connecting; sometimes only the nodes behind a
    /// link change (which emits nothing).
    fn churn(&mut self) {
        let next = self.secs(30, 80);
        self.schedule(next, Task::Churn);
        let truth = self.h.truth();
        let Some((node, links)) = busiest(&truth) else {
            return;
        };
        let roll = self.rng.range(0, 9);
        if roll < 2 {
            self.reshuffle_behind(&truth, &node);
        } else if links.len() >= 5 || (links.len() > 2 && roll < 5) {
            self.drop_link(&node, &links);
        } else {
            self.new_link(&truth, &node);
        }
    }

    fn drop_link(&mut self, node: &str, links: &[String]) {
        let Some(link) = self.rng.pick(links).cloned() else {
            return;
        };
        self.talkers
            .retain(|t| !(t.node == node && t.via.as_deref() == Some(link.as_str())));
        self.keyed_links.remove(&(node.to_owned(), link.clone()));
        self.h.disconnect_link(node, &link);
        sync_local_lists(&self.h);
        self.reconcile();
    }

    fn new_link(&mut self, truth: &SimTruth, node: &str) {
        let name = loop {
            let candidate = self.rng.range(40_000, 69_999).to_string();
            if !truth.nodes.contains_key(&candidate) && truth.nodes[node].link(&candidate).is_none()
            {
                break candidate;
            }
        };
        let ip = format!("203.0.113.{}", self.rng.range(2, 250));
        let direction = if self.rng.chance(0.5) {
            Direction::In
        } else {
            Direction::Out
        };
        let mode = if self.rng.chance(0.2) {
            Mode::R
        } else {
            Mode::T
        };
        let behind = self.random_behind(&name);
        let link = SimLink::allstar(name.clone(), ip, direction)
            .with_mode(mode)
            .with_state(LinkState::Connecting)
            .with_remote_nodes(behind);
        self.h.connect_link(node, link);
        let delay = self.secs(1, 3);
        self.schedule(delay, Task::Establish(node.to_owned(), name));
    }

    fn random_behind(&mut self, name: &str) -> Vec<(Mode, String)> {
        let count = if self.rng.chance(0.4) {
            self.rng.range(1, 4)
        } else {
            0
        };
        let base: u64 = name.parse().unwrap_or(40_000);
        (1..=count)
            .map(|i| (Mode::T, (base + i).to_string()))
            .collect()
    }

    fn reshuffle_behind(&mut self, truth: &SimTruth, node: &str) {
        let remote: Vec<String> = truth.nodes[node]
            .links
            .iter()
            .filter(|l| {
                l.is_listed()
                    && !truth.nodes.contains_key(&l.name)
                    && LinkKind::of(&l.name) == LinkKind::Allstar
            })
            .map(|l| l.name.clone())
            .collect();
        if let Some(link) = self.rng.pick(&remote).cloned() {
            let behind = self.random_behind(&link);
            self.h.set_remote_nodes(node, &link, behind);
            sync_local_lists(&self.h);
        }
    }

    /// The EchoLink user on the busiest node connects or leaves.
    fn echolink(&mut self) {
        let next = self.secs(60, 150);
        self.schedule(next, Task::EchoLink);
        let truth = self.h.truth();
        let Some((node, _)) = busiest(&truth) else {
            return;
        };
        let present = truth.nodes[&node]
            .links
            .iter()
            .find(|l| LinkKind::of(&l.name) == LinkKind::Echolink)
            .map(|l| l.name.clone());
        match present {
            Some(user) => {
                let all = vec![user];
                self.drop_link(&node, &all);
            }
            None => {
                let user = self
                    .rng
                    .pick(&ECHOLINK_USERS)
                    .copied()
                    .unwrap_or(ECHOLINK_USERS[0]);
                self.h.connect_link(&node, SimLink::echolink(user));
                sync_local_lists(&self.h);
            }
        }
    }

    /// RSSI wanders while the voter node hears a signal and falls to 0 when it does not.
    fn voter(&mut self) {
        self.schedule(VOTER_TICK, Task::Voter);
        let truth = self.h.truth();
        for (name, node) in &truth.nodes {
            let Some((_, receivers)) = &node.voter else {
                continue;
            };
            let signal = node.rx_keyed;
            let moved: Vec<SimVoterReceiver> = receivers
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.rssi = if !signal || r.is_inactive() {
                        0
                    } else if r.rssi == 0 {
                        self.rng.range(60, 230) as u32
                    } else {
                        (r.rssi as i64 + self.rng.range(0, 60) as i64 - 30).clamp(10, 255) as u32
                    };
                    r
                })
                .collect();
            if &moved != receivers {
                self.h.set_voter(name, moved);
            }
        }
    }
}

/// A link whose far end can start talking: established, not local monitor, not one of this
/// server's own nodes (their audio comes from their own receivers).
fn is_remote_talker(truth: &SimTruth, name: &str, link: &super::SimLinkTruth) -> bool {
    link.state == LinkState::Established && link.mode != Mode::L && !truth.nodes.contains_key(name)
}

/// Spreads audio from `origin` to every node of this server reachable over T/R links.
fn spread(truth: &SimTruth, origin: &str, w: &mut Wanted) {
    let mut seen = BTreeSet::from([origin.to_owned()]);
    let mut todo = vec![origin.to_owned()];
    w.audio.insert(origin.to_owned());
    while let Some(from) = todo.pop() {
        for (name, node) in &truth.nodes {
            let hears = node.link(&from).is_some_and(|l| {
                l.state == LinkState::Established && matches!(l.mode, Mode::T | Mode::R)
            });
            if hears && seen.insert(name.clone()) {
                w.links.insert((name.clone(), from.clone()));
                w.audio.insert(name.clone());
                todo.push(name.clone());
            }
        }
    }
}

/// Keys what is wanted and not yet keyed, unkeys what the activity keyed and is no longer
/// wanted.
fn sync_set<T: Ord + Clone>(
    ours: &mut BTreeSet<T>,
    wanted: &BTreeSet<T>,
    mut set: impl FnMut(&T, bool),
) {
    for item in wanted {
        if ours.insert(item.clone()) {
            set(item, true);
        }
    }
    let stale: Vec<T> = ours.difference(wanted).cloned().collect();
    for item in stale {
        ours.remove(&item);
        set(&item, false);
    }
}

/// The node with the most remote links (ties: lowest id) and those links' names (excluding
/// links to this server's own nodes, local-monitor links and EchoLink users).
fn busiest(truth: &SimTruth) -> Option<(String, Vec<String>)> {
    let mut best: Option<(String, Vec<String>)> = None;
    for (name, node) in &truth.nodes {
        let links: Vec<String> = node
            .links
            .iter()
            .filter(|l| {
                l.mode != Mode::L
                    && !truth.nodes.contains_key(&l.name)
                    && LinkKind::of(&l.name) == LinkKind::Allstar
            })
            .map(|l| l.name.clone())
            .collect();
        if best.as_ref().is_none_or(|(_, b)| links.len() > b.len()) {
            best = Some((name.clone(), links));
        }
    }
    best
}

#[cfg(test)]
mod load_tests {
    use super::*;
    use crate::sim::SimConfig;

    #[test]
    fn load_changes_walk_every_link_then_flip() {
        // 2 nodes × 3 links: node alternates, link advances every 2, keyed flips every 6.
        let seen: Vec<_> = (0..12).map(|k| load_change(k, 2, 3)).collect();
        assert_eq!(
            &seen[..4],
            &[(0, 0, true), (1, 0, true), (0, 1, true), (1, 1, true)]
        );
        assert_eq!(seen[6], (0, 0, false));
        assert_eq!(seen[11], (1, 2, false));
        assert_eq!(load_link_name(3, 7), "400307");
    }

    #[tokio::test]
    async fn load_adds_the_links_and_keys_them_on_the_clock() {
        let h = SimHandle::detached(SimConfig {
            nodes: vec!["2000".into(), "2001".into()],
            ..SimConfig::default()
        });
        let stop = CancellationToken::new();
        SimLoad {
            links_per_node: 3,
            link_keys_per_second: 1000.0,
        }
        .apply(&h, &stop);
        let truth = h.truth();
        assert_eq!(truth.nodes["2001"].links.len(), 3);
        assert!(truth.nodes["2001"].links.iter().any(|l| l.name == "400102"));
        let started = std::time::Instant::now();
        while !h
            .truth()
            .nodes
            .values()
            .any(|n| n.links.iter().any(|l| l.keyed))
        {
            assert!(started.elapsed() < Duration::from_secs(10), "nothing keyed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
    }
}
