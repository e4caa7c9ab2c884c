//! A fleet of simulated Asterisk servers in one process: `allstar-nexus simulate --servers
//! 1000 --nodes-per-server 5`. Each server is an ordinary [`SimHandle`] with its own
//! loopback port (ephemeral with port 0, else consecutive ports from the one given), its own
//! truth and sessions; they share the runtime, so a server costs one listening socket, one
//! accept task and its sessions.
//!
//! [`Fleet::daemon_config`] writes the daemon configuration that watches the whole fleet
//! (one `ami_servers` entry per server, with the chosen ports). [`spawn_fleet_activity`]
//! drives every node from one task: keyups at a rate per node, links coming and going.
//! [`Fleet::restart`] models "restart all Asterisk at once": every port closes, every
//! session drops, and the ports open again after a pause.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::rng::SimRng;
use super::{SimConfig, SimHandle, SimLink};
use crate::rpt::types::{Direction, LinkState};

/// Largest fleet `simulate --servers` accepts (one port and file descriptor each).
pub const MAX_SERVERS: usize = 10_000;
/// Largest `--nodes-per-server`.
pub const MAX_NODES_PER_SERVER: usize = 100;

/// The shape of a fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// Number of servers (1 … [`MAX_SERVERS`]).
    pub servers: usize,
    /// Nodes hosted by each server (1 … [`MAX_NODES_PER_SERVER`]).
    pub nodes_per_server: usize,
    /// Id of the first node; server `i` hosts `first_node + i × nodes_per_server …`.
    pub first_node: u64,
    /// Established links each node starts with.
    pub links_per_node: usize,
    /// Address of the first server; port 0 gives every server an ephemeral port, another
    /// port gives consecutive ports from it.
    pub listen: SocketAddr,
    /// Credentials, era and faults of every server (its `nodes` are ignored).
    pub template: SimConfig,
}

impl Default for FleetConfig {
    fn default() -> FleetConfig {
        FleetConfig {
            servers: 10,
            nodes_per_server: 5,
            first_node: 10_000,
            links_per_node: 2,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            template: SimConfig::default(),
        }
    }
}

impl FleetConfig {
    /// Checks the ranges, naming the option that is off.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(1..=MAX_SERVERS).contains(&self.servers) {
            anyhow::bail!(
                "--servers must be between 1 and {MAX_SERVERS}, got {}",
                self.servers
            );
        }
        if !(1..=MAX_NODES_PER_SERVER).contains(&self.nodes_per_server) {
            anyhow::bail!(
                "--nodes-per-server must be between 1 and {MAX_NODES_PER_SERVER}, got {}",
                self.nodes_per_server
            );
        }
        if self.links_per_node > 50 {
            anyhow::bail!(
                "--links-per-node must be at most 50, got {}",
                self.links_per_node
            );
        }
        let total = (self.servers * self.nodes_per_server) as u64;
        if self.first_node == 0 || self.first_node.checked_add(total).is_none() {
            anyhow::bail!("--first-node must be a positive node number");
        }
        let port = u32::from(self.listen.port());
        if port != 0 && port + self.servers as u32 - 1 > u32::from(u16::MAX) {
            anyhow::bail!(
                "--listen port {port} + {} servers runs past port 65535 (use port 0 for ephemeral ports)",
                self.servers
            );
        }
        Ok(())
    }

    /// The node ids of server `i`.
    pub fn nodes_of(&self, i: usize) -> Vec<String> {
        let first = self.first_node + (i * self.nodes_per_server) as u64;
        (0..self.nodes_per_server as u64)
            .map(|j| (first + j).to_string())
            .collect()
    }
}

/// What the written daemon configuration asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfigOptions {
    /// The daemon's `listen`.
    pub listen: SocketAddr,
    /// `polling_interval_seconds`.
    pub poll_seconds: u32,
    /// `plugins_builtin`: the bundled Lua plugins run for every node.
    pub plugins: bool,
}

impl Default for DaemonConfigOptions {
    fn default() -> DaemonConfigOptions {
        DaemonConfigOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            poll_seconds: 30,
            plugins: false,
        }
    }
}

/// A running fleet. Dropping it does not stop it: call [`Fleet::shutdown`].
#[derive(Debug, Clone)]
pub struct Fleet {
    config: FleetConfig,
    servers: Vec<SimHandle>,
}

impl Fleet {
    /// Binds every server (in order) and loads its nodes and links.
    pub async fn start(config: FleetConfig) -> anyhow::Result<Fleet> {
        config.validate()?;
        let mut servers = Vec::with_capacity(config.servers);
        let mut rng = SimRng::new(config.first_node);
        for i in 0..config.servers {
            let mut addr = config.listen;
            if addr.port() != 0 {
                addr.set_port(config.listen.port() + i as u16);
            }
            let sim = SimConfig {
                nodes: config.nodes_of(i),
                ..config.template.clone()
            };
            let handle = super::start(addr, sim).await.with_context(|| {
                format!(
                    "fleet server {} of {} cannot listen on {addr} (port in use? `ulimit -n` too low?)",
                    i + 1,
                    config.servers
                )
            })?;
            for node in config.nodes_of(i) {
                for _ in 0..config.links_per_node {
                    connect_new_link(&handle, &node, &mut rng, LinkState::Established);
                }
            }
            servers.push(handle);
        }
        Ok(Fleet { config, servers })
    }

    /// Its shape.
    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// Every server, in order.
    pub fn servers(&self) -> &[SimHandle] {
        &self.servers
    }

    /// Logged-in sessions on all servers.
    pub fn session_count(&self) -> usize {
        self.servers.iter().map(SimHandle::session_count).sum()
    }

    /// Connections accepted by all servers so far (refused ones included).
    pub fn accepted_connections(&self) -> u64 {
        self.servers
            .iter()
            .map(SimHandle::accepted_connections)
            .sum()
    }

    /// "Restart all Asterisk at once": every port closes and every session drops; after
    /// `down`, every port listens again.
    pub async fn restart(&self, down: Duration) -> std::io::Result<()> {
        for s in &self.servers {
            s.pause_listener().await;
        }
        tokio::time::sleep(down).await;
        for s in &self.servers {
            s.resume_listener().await?;
        }
        Ok(())
    }

    /// Stops every server.
    pub fn shutdown(&self) {
        for s in &self.servers {
            s.shutdown();
        }
    }

    /// A daemon configuration (YAML) watching every node of the fleet.
    pub fn daemon_config(&self, opts: &DaemonConfigOptions) -> String {
        let t = &self.config.template;
        let mut y = String::with_capacity(
            64 + self.servers.len() * (120 + 24 * self.config.nodes_per_server),
        );
        let _ = writeln!(
            y,
            "# Written by `allstar-nexus simulate --servers {} --nodes-per-server {}`:\n\
             # one AMI session per simulated server. Run: allstar-nexus run --config <this file>\n\
             listen: {}\n\
             polling_interval_seconds: {}\n\
             script_dirs: []\n\
             plugins_builtin: {}\n\
             ami_servers:",
            self.config.servers,
            self.config.nodes_per_server,
            opts.listen,
            opts.poll_seconds.max(1),
            opts.plugins
        );
        for (i, s) in self.servers.iter().enumerate() {
            let addr = s.addr();
            let host = match addr.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_owned(),
                IpAddr::V6(ip) if ip.is_unspecified() => "::1".to_owned(),
                ip => ip.to_string(),
            };
            let _ = writeln!(
                y,
                "  - name: sim-{:04}\n    host: \"{host}\"\n    port: {}\n    username: {}\n    password: {}\n    nodes:",
                i + 1,
                addr.port(),
                yaml_str(&t.username),
                yaml_str(&t.secret),
            );
            for node in self.config.nodes_of(i) {
                let _ = writeln!(y, "      - node_id: {node}");
            }
        }
        y
    }

    /// Writes [`Fleet::daemon_config`] to `path` (mode 0600: it holds the AMI secret).
    pub fn write_daemon_config(
        &self,
        path: &Path,
        opts: &DaemonConfigOptions,
    ) -> anyhow::Result<()> {
        let text = self.daemon_config(opts);
        write_private(path, text.as_bytes())
            .with_context(|| format!("cannot write the fleet configuration to {}", path.display()))
    }
}

/// A YAML double-quoted string.
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.flush()
}

/// A new AllStar link on `node` with a random remote node number, newest first.
fn connect_new_link(h: &SimHandle, node: &str, rng: &mut SimRng, state: LinkState) -> String {
    let name = rng.range(400_000, 699_999).to_string();
    let ip = format!("203.0.113.{}", rng.range(2, 250));
    let direction = if rng.chance(0.5) {
        Direction::In
    } else {
        Direction::Out
    };
    h.connect_link(
        node,
        SimLink::allstar(name.clone(), ip, direction).with_state(state),
    );
    name
}

/// How busy the fleet is.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetActivity {
    /// Keyups per node per minute (a local receiver or a link keys for 2–8 s).
    pub keyups_per_minute: f64,
    /// Link changes per node per hour (a link drops, or a new one connects and is
    /// established 1–3 s later).
    pub link_changes_per_hour: f64,
    /// Seed of the choices (same seed, same story).
    pub seed: u64,
}

impl Default for FleetActivity {
    fn default() -> FleetActivity {
        FleetActivity {
            keyups_per_minute: 1.0,
            link_changes_per_hour: 6.0,
            seed: 1999,
        }
    }
}

/// Something the fleet activity does later.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Later {
    /// Unkey a node's receiver and transmitter (server, node).
    UnkeyRx(usize, String),
    /// Unkey a link and the node's transmitter (server, node, link).
    UnkeyLink(usize, String, String),
    /// A connecting link comes up (server, node, link).
    Establish(usize, String, String),
}

/// How often the activity task wakes (events are spread over the fleet, not bunched).
const ACTIVITY_TICK: Duration = Duration::from_millis(100);

/// Drives the fleet's activity from one task until `shutdown` is cancelled.
pub fn spawn_fleet_activity(
    fleet: Fleet,
    activity: FleetActivity,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut driver = Driver {
            rng: SimRng::new(activity.seed),
            later: std::collections::BinaryHeap::new(),
            seq: 0,
            keyup_credit: 0.0,
            change_credit: 0.0,
            fleet,
            activity,
        };
        let mut tick = tokio::time::interval(ACTIVITY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => driver.step(),
            }
        }
    })
}

struct Driver {
    fleet: Fleet,
    activity: FleetActivity,
    rng: SimRng,
    later: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, u64, Later)>>,
    seq: u64,
    keyup_credit: f64,
    change_credit: f64,
}

impl Driver {
    fn step(&mut self) {
        let now = Instant::now();
        while self.later.peek().is_some_and(|e| e.0.0 <= now) {
            if let Some(std::cmp::Reverse((_, _, job))) = self.later.pop() {
                self.run(job);
            }
        }
        let nodes = (self.fleet.config.servers * self.fleet.config.nodes_per_server) as f64;
        let tick = ACTIVITY_TICK.as_secs_f64();
        self.keyup_credit += nodes * self.activity.keyups_per_minute / 60.0 * tick;
        self.change_credit += nodes * self.activity.link_changes_per_hour / 3600.0 * tick;
        while self.keyup_credit >= 1.0 {
            self.keyup_credit -= 1.0;
            self.keyup();
        }
        while self.change_credit >= 1.0 {
            self.change_credit -= 1.0;
            self.link_change();
        }
    }

    fn schedule(&mut self, after: Duration, job: Later) {
        self.seq += 1;
        self.later
            .push(std::cmp::Reverse((Instant::now() + after, self.seq, job)));
    }

    /// A random (server, node).
    fn pick(&mut self) -> (usize, String) {
        let c = &self.fleet.config;
        let server = self.rng.range(0, c.servers as u64 - 1) as usize;
        let j = self.rng.range(0, c.nodes_per_server as u64 - 1);
        let node = c.first_node + (server * c.nodes_per_server) as u64 + j;
        (server, node.to_string())
    }

    fn keyup(&mut self) {
        let (server, node) = self.pick();
        let h = self.fleet.servers[server].clone();
        let length = Duration::from_millis(self.rng.range(2_000, 8_000));
        let links: Vec<String> = h.shared.read(|t| {
            t.nodes
                .get(&node)
                .map(|n| {
                    n.links
                        .iter()
                        .filter(|l| l.state == LinkState::Established)
                        .map(|l| l.name.clone())
                        .collect()
                })
                .unwrap_or_default()
        });
        match self.rng.pick(&links).cloned() {
            Some(link) if self.rng.chance(0.5) => {
                if h.set_link_keyed(&node, &link, true) {
                    h.set_tx_keyed(&node, true);
                    self.schedule(length, Later::UnkeyLink(server, node, link));
                }
            }
            _ => {
                h.set_rx_keyed(&node, true);
                h.set_tx_keyed(&node, true);
                self.schedule(length, Later::UnkeyRx(server, node));
            }
        }
    }

    fn link_change(&mut self) {
        let (server, node) = self.pick();
        let h = self.fleet.servers[server].clone();
        let links: Vec<String> = h.shared.read(|t| {
            t.nodes
                .get(&node)
                .map(|n| n.links.iter().map(|l| l.name.clone()).collect())
                .unwrap_or_default()
        });
        let target = self.fleet.config.links_per_node.max(1);
        let drop = !links.is_empty() && (links.len() > target || self.rng.chance(0.5));
        if drop {
            if let Some(link) = self.rng.pick(&links).cloned() {
                h.disconnect_link(&node, &link);
            }
        } else {
            let link = connect_new_link(&h, &node, &mut self.rng, LinkState::Connecting);
            let delay = Duration::from_millis(self.rng.range(1_000, 3_000));
            self.schedule(delay, Later::Establish(server, node, link));
        }
    }

    fn run(&mut self, job: Later) {
        match job {
            Later::UnkeyRx(server, node) => {
                let h = &self.fleet.servers[server];
                h.set_rx_keyed(&node, false);
                h.set_tx_keyed(&node, false);
            }
            Later::UnkeyLink(server, node, link) => {
                let h = &self.fleet.servers[server];
                h.set_link_keyed(&node, &link, false);
                h.set_tx_keyed(&node, false);
            }
            Later::Establish(server, node, link) => {
                self.fleet.servers[server].set_link_state(&node, &link, LinkState::Established);
            }
        }
    }
}

/// `allstar-nexus simulate --servers N`: runs the fleet (and its activity, with a seed)
/// until `shutdown`, after writing the daemon configuration when asked.
pub async fn run_fleet(
    config: FleetConfig,
    write_config: Option<&Path>,
    daemon: DaemonConfigOptions,
    activity: Option<FleetActivity>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let faults = config.template.faults.clone();
    let fleet = Fleet::start(config).await?;
    for s in fleet.servers() {
        faults.apply(s, &shutdown);
    }
    if let Some(path) = write_config {
        fleet.write_daemon_config(path, &daemon)?;
        tracing::info!(path = %path.display(), "fleet: daemon configuration written (allstar-nexus run --config {})", path.display());
    }
    let c = fleet.config();
    let first = fleet.servers().first().map(SimHandle::addr);
    let last = fleet.servers().last().map(SimHandle::addr);
    tracing::info!(
        servers = c.servers,
        nodes_per_server = c.nodes_per_server,
        first_node = c.first_node,
        first = ?first,
        last = ?last,
        username = %c.template.username,
        activity = activity.is_some(),
        "app_rpt simulator fleet listening"
    );
    let driver = activity.map(|a| spawn_fleet_activity(fleet.clone(), a, shutdown.child_token()));
    shutdown.cancelled().await;
    fleet.shutdown();
    if let Some(task) = driver {
        let _ = task.await;
    }
    tracing::info!("app_rpt simulator fleet stopped");
    Ok(())
}
