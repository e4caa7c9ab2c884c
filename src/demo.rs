//! `allstar-nexus demo`: the simulator with a small, lively network, the daemon pointed at
//! it with the bundled scripts, and a few words on what to look at.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::daemon::{self, Running};
use crate::sim::{self, SimConfig, SimHandle};

/// Installed example scripts (the .deb puts them here).
const INSTALLED_EXAMPLES: &str = "/usr/share/allstar-nexus/scripts";

/// Script directories of the demo. The bundled plugins are built into the binary
/// (`plugins_builtin: true`); a checkout's `plugins/` and `scripts/` in the working
/// directory are added so edits there reload, else the installed examples.
fn script_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if Path::new("plugins").is_dir() {
        dirs.push(PathBuf::from("plugins"));
    }
    if Path::new("scripts").is_dir() {
        dirs.push(PathBuf::from("scripts"));
    } else if Path::new(INSTALLED_EXAMPLES).is_dir() {
        dirs.push(PathBuf::from(INSTALLED_EXAMPLES));
    }
    dirs
}

fn demo_config(ami: SocketAddr, listen: SocketAddr, secret: &str) -> anyhow::Result<Config> {
    let dirs: Vec<String> = script_dirs()
        .iter()
        .map(|d| format!("{:?}", d.display().to_string()))
        .collect();
    // The demo's history lives in a fresh folder under the system temp directory, never in
    // the directory it was started from.
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let state =
        std::env::temp_dir().join(format!("allstar-nexus-demo-{}-{run}", std::process::id()));
    let yaml = format!(
        "state_dir: {:?}\n\
         listen: \"{listen}\"\n\
         ami_host: \"{}\"\nami_port: {}\nami_username: admin\nami_password: \"{secret}\"\n\
         ami_retry_interval: 2s\nami_retry_max: 10s\n\
         polling_interval_seconds: 15\n\
         nodes:\n  - node_id: 1999\n  - node_id: 2000\n  - node_id: 2001\n\
         script_dirs: [{}]\nplugins_builtin: true\n\
         astdb_path: /nonexistent/astdb.txt\n\
         alerts:\n  repeat_interval: 30s\n\
         plugins:\n  alerts:\n    stuck_tx_minutes: 1\n    ami_down_seconds: 10\n    watch_nodes: [2002]\n",
        state.display().to_string(),
        ami.ip(),
        ami.port(),
        dirs.join(", ")
    );
    Ok(Config::parse(&yaml, "demo", None)?)
}

/// A running demo: the simulator and the daemon watching it.
pub struct Demo {
    pub sim: SimHandle,
    pub daemon: Running,
}

/// Starts the simulator (with the demo network and its activity) and the daemon on
/// `listen` (port 0 allowed; a busy port falls back to a free one).
pub async fn start(
    listen: SocketAddr,
    seed: u64,
    shutdown: CancellationToken,
) -> anyhow::Result<Demo> {
    let sim_config = SimConfig {
        nodes: vec!["1999".into(), "2000".into(), "2001".into()],
        ..SimConfig::default()
    };
    let secret = sim_config.secret.clone();
    let sim = sim::start("127.0.0.1:0".parse()?, sim_config)
        .await
        .context("cannot start the simulator")?;
    sim::demo_network(&sim);
    sim::spawn_activity(sim.clone(), seed, shutdown.child_token());
    let listen = match tokio::net::TcpListener::bind(listen).await {
        Ok(_) => listen,
        Err(e) => {
            eprintln!("note: {listen} is busy ({e}); using a free port instead");
            SocketAddr::new(listen.ip(), 0)
        }
    };
    let config = demo_config(sim.addr(), listen, &secret)?;
    let daemon = daemon::start(config, shutdown).await?;
    Ok(Demo { sim, daemon })
}

/// `allstar-nexus demo`: starts, prints what to try, runs until Ctrl-C.
pub async fn run(listen: SocketAddr, seed: u64) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let Demo {
        sim,
        daemon: running,
    } = start(listen, seed, shutdown.clone()).await?;
    let secret = sim.config().secret.clone();
    let base = format!("http://{}", running.http_addr);
    println!(
        "\nDashboard: {base}/   (open it in a browser)\n\n\
         AllStar Nexus demo — a simulated AllStar network (nodes 1999, 2000, 2001) on {sim_addr}\n\n\
         Try:\n\
         \x20 {base}/api/health            connection status in plain words\n\
         \x20 {base}/api/nodes             every node and link, live\n\
         \x20 {base}/api/nodes/2001/voter  voter receivers and RSSI (node 2001)\n\
         \x20 {base}/api/alerts            alerts raised by plugins/alerts.lua\n\
         \x20 {base}/api/scripts           the Lua scripts running (edit plugins/ or scripts/: they reload)\n\
         \x20 {base}/metrics               Prometheus metrics\n\
         \x20 ws://{addr}/ws               the change stream: websocat ws://{addr}/ws\n\n\
         The simulator keys links, connects and drops them, and brings an EchoLink user by.\n\
         Point another AMI client at {sim_addr} (admin / {secret}) to watch the raw protocol.\n\
         Ctrl-C to stop.\n",
        sim_addr = sim.addr(),
        addr = running.http_addr,
    );
    daemon::shutdown_signal().await;
    shutdown.cancel();
    let result = running.done.await;
    sim.shutdown();
    result.context("the daemon task failed")?
}
