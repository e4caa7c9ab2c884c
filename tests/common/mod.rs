//! Shared helpers for the end-to-end tests: simulator + daemon parts on port 0.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use allstar_nexus::ami::connection::{
    self, AmiStream, ConnectError, ConnectFuture, Connector, SupervisorParts,
};
use allstar_nexus::ami::{AmiEvent, AmiHandle};
use allstar_nexus::config::{AmiSettings, NodeConfig, ServerConfig};
use allstar_nexus::metrics::Metrics;
use allstar_nexus::sim::{self, SimConfig, SimHandle};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "nexus-sim";

/// A server entry pointing at `addr`.
pub fn server(addr: SocketAddr, nodes: &[&str]) -> ServerConfig {
    ServerConfig {
        name: "test".into(),
        host: addr.ip().to_string(),
        port: addr.port(),
        username: "admin".into(),
        password: SECRET.into(),
        nodes: nodes
            .iter()
            .map(|n| NodeConfig {
                node_id: (*n).into(),
                poll_interval: Duration::from_secs(60),
            })
            .collect(),
    }
}

/// Default timings without jitter, so ladders are exact.
pub fn settings() -> AmiSettings {
    AmiSettings {
        retry_jitter: 0.0,
        ..AmiSettings::default()
    }
}

/// A simulator on 127.0.0.1:0.
pub async fn sim_on_tcp(nodes: &[&str]) -> SimHandle {
    let cfg = SimConfig {
        nodes: nodes.iter().map(|n| n.to_string()).collect(),
        ..SimConfig::default()
    };
    sim::start("127.0.0.1:0".parse().expect("addr"), cfg)
        .await
        .expect("simulator starts")
}

/// A supervisor over TCP; returns the handle and the engine-side event receiver.
pub fn supervise_tcp(
    addr: SocketAddr,
    settings: AmiSettings,
    shutdown: &CancellationToken,
) -> (AmiHandle, mpsc::Receiver<AmiEvent>) {
    let (tx, rx) = mpsc::channel(100_000);
    let h = connection::spawn_tcp(
        server(addr, &["1999"]),
        settings,
        tx,
        Metrics::default(),
        shutdown.clone(),
    );
    (h, rx)
}

/// What a scripted connector does on its n-th attempt (1-based).
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    Refuse,
    /// Serve the session from the simulator over an in-memory pipe.
    Sim,
}

/// A connector for paused-time tests: records when each attempt happens and answers as
/// the script says (the last entry repeats).
pub struct ScriptedConnector {
    pub attempts: Arc<Mutex<Vec<tokio::time::Instant>>>,
    pub script: Vec<Outcome>,
    pub sim: SimHandle,
}

impl Connector for ScriptedConnector {
    fn connect(&self) -> ConnectFuture {
        let n = {
            let mut a = self.attempts.lock().expect("lock");
            a.push(tokio::time::Instant::now());
            a.len()
        };
        let outcome = self
            .script
            .get(n - 1)
            .or(self.script.last())
            .copied()
            .unwrap_or(Outcome::Refuse);
        let sim = self.sim.clone();
        Box::pin(async move {
            match outcome {
                Outcome::Refuse => Err(ConnectError::Refused {
                    addr: "scripted".into(),
                }),
                Outcome::Sim => {
                    let (client, server) = tokio::io::duplex(1 << 16);
                    sim.serve_stream(server);
                    Ok(Box::new(client) as Box<dyn AmiStream>)
                }
            }
        })
    }
}

/// Starts a supervisor with a scripted connector; returns the handle and attempt times.
pub fn supervise_scripted(
    script: Vec<Outcome>,
    settings: AmiSettings,
    shutdown: &CancellationToken,
) -> (
    AmiHandle,
    Arc<Mutex<Vec<tokio::time::Instant>>>,
    SimHandle,
    mpsc::Receiver<AmiEvent>,
) {
    let sim = SimHandle::detached(SimConfig::default());
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let connector = ScriptedConnector {
        attempts: attempts.clone(),
        script,
        sim: sim.clone(),
    };
    let (tx, rx) = mpsc::channel(10_000);
    let h = connection::spawn(SupervisorParts {
        server: server("127.0.0.1:5038".parse().expect("addr"), &["1999"]),
        settings,
        connector: Box::new(connector),
        events: tx,
        metrics: Metrics::default(),
        shutdown: shutdown.clone(),
    });
    (h, attempts, sim, rx)
}

/// The next status a supervisor published (on the channel the engine reads).
pub async fn next_status(
    rx: &mut mpsc::Receiver<AmiEvent>,
) -> Option<allstar_nexus::ami::ConnectionStatus> {
    loop {
        if let AmiEvent::Status(st) = rx.recv().await? {
            return Some(st);
        }
    }
}

/// Waits until the session is up (or down), with a generous real-time bound.
pub async fn wait_connected(h: &AmiHandle, up: bool) {
    let mut w = h.watch_status();
    tokio::time::timeout(Duration::from_secs(3600), w.wait_for(|s| s.connected == up))
        .await
        .expect("status change in time")
        .expect("supervisor alive");
}

/// Gaps between consecutive attempts, in whole seconds.
pub fn gaps(attempts: &Arc<Mutex<Vec<tokio::time::Instant>>>) -> Vec<u64> {
    let a = attempts.lock().expect("lock");
    a.windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64().round() as u64)
        .collect()
}

/// Starts the whole daemon against a simulator (HTTP on port 0, no astdb; no scripts
/// unless `extra_yaml` gives `script_dirs`).
pub async fn start_daemon(
    sim_addr: SocketAddr,
    nodes: &[&str],
    extra_yaml: &str,
) -> allstar_nexus::daemon::Running {
    let mut yaml = format!(
        "listen: 127.0.0.1:0\nami_host: 127.0.0.1\nami_port: {}\nami_username: admin\nami_password: {SECRET}\n\
         ami_retry_interval: 1s\nami_retry_max: 2s\nastdb_path: /nonexistent/astdb.txt\n{}nodes:\n",
        sim_addr.port(),
        if extra_yaml.contains("script_dirs:") {
            ""
        } else {
            "script_dirs: []\n"
        }
    );
    for n in nodes {
        yaml.push_str(&format!("  - node_id: {n}\n"));
    }
    yaml.push_str(extra_yaml);
    if !extra_yaml.contains("state_dir:") {
        // Each daemon gets its own state folder (history database), never the repository's.
        yaml.push_str(&format!("state_dir: {}\n", temp_dir("state").display()));
    }
    let config =
        allstar_nexus::config::Config::parse(&yaml, "test", None).expect("test config is valid");
    allstar_nexus::daemon::start(config, CancellationToken::new())
        .await
        .expect("daemon starts")
}

/// Waits (up to 20 s) until `cond` holds, checking every 5 ms.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A fresh, empty folder under the system temp folder, unique to this call.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "nexus-test-{tag}-{}-{}-{}",
        std::process::id(),
        allstar_nexus::observe::now_ms(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// `rpt cmd … ilink …` commands the simulator received, in order.
pub fn ilinks(sim: &SimHandle) -> Vec<String> {
    sim.recorded_actions()
        .iter()
        .filter_map(|a| a.get("Command").map(str::to_owned))
        .filter(|c| c.contains("ilink"))
        .collect()
}

/// Nodes 1999 and 2000 on one simulated server and the daemon watching both (with
/// `extra_yaml`), once both have been polled; both stop when it is dropped.
pub struct TwoNodes {
    pub sim: SimHandle,
    pub d: allstar_nexus::daemon::Running,
    pub http: reqwest::Client,
}

impl TwoNodes {
    pub async fn start(extra_yaml: &str) -> TwoNodes {
        let sim = sim_on_tcp(&["1999", "2000"]).await;
        let d = start_daemon(sim.addr(), &["1999", "2000"], extra_yaml).await;
        wait_until("both nodes polled", || {
            ["1999", "2000"]
                .iter()
                .all(|n| d.app.state.node(n).is_some_and(|v| v.last_poll.is_some()))
        })
        .await;
        TwoNodes {
            sim,
            d,
            http: reqwest::Client::new(),
        }
    }

    /// The daemon's URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.d.http_addr)
    }
}

impl Drop for TwoNodes {
    fn drop(&mut self) {
        self.d.shutdown.cancel();
        self.sim.shutdown();
    }
}
