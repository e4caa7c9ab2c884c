//! AMI load of idle nodes (issue 13): the daemon with the adaptive polling plugin against
//! the simulator, over 10 simulated minutes on paused tokio time. Prints the actions per
//! node per minute, by action, as the simulator received them — once with the keepalive
//! of before (`ami_keepalive_interval: 30s`) and once with the default.
//!
//! `cargo bench --bench ami_load` (a few seconds of real time).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use allstar_nexus::sim::{self, SimConfig};
use tokio_util::sync::CancellationToken;

const NODES: [&str; 2] = ["1999", "2000"];
const MINUTES: u64 = 10;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "nexus-ami-load-{tag}-{}-{}",
        std::process::id(),
        allstar_nexus::observe::now_ms()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Runs one configuration; returns actions per node per minute by action name.
async fn run(extra_yaml: &str, dir: &Path) -> BTreeMap<String, f64> {
    let sim = sim::start(
        "127.0.0.1:0".parse().expect("addr"),
        SimConfig {
            nodes: NODES.iter().map(|n| n.to_string()).collect(),
            ..SimConfig::default()
        },
    )
    .await
    .expect("simulator");
    let plugin = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/adaptive_polling.lua");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugin dir");
    std::fs::copy(&plugin, plugins.join("adaptive_polling.lua")).expect("copy plugin");
    let mut yaml = format!(
        "listen: 127.0.0.1:0\nami_host: 127.0.0.1\nami_port: {}\nami_username: admin\n\
         ami_password: nexus-sim\nastdb_path: /nonexistent/astdb.txt\nscript_dirs: [{:?}]\n\
         state_dir: {}\n{extra_yaml}nodes:\n",
        sim.addr().port(),
        plugins.display().to_string(),
        dir.join("state").display()
    );
    for n in NODES {
        yaml.push_str(&format!("  - node_id: {n}\n"));
    }
    let config = allstar_nexus::config::Config::parse(&yaml, "ami_load", None).expect("config");
    let shutdown = CancellationToken::new();
    let daemon = allstar_nexus::daemon::start(config, shutdown.clone())
        .await
        .expect("daemon");
    let src = std::fs::read(plugins.join("adaptive_polling.lua")).expect("plugin");
    // The Lua host is a thread of its own: wait in real time (paused tokio time would
    // jump past any timeout while it loads).
    let loading = std::time::Instant::now();
    while !daemon
        .scripts
        .wait_version("adaptive_polling.lua", &src, Duration::ZERO)
        .await
    {
        assert!(
            loading.elapsed() < Duration::from_secs(30),
            "the plugin did not load"
        );
        std::thread::sleep(Duration::from_millis(2));
        tokio::task::yield_now().await;
    }
    let state = daemon.app.state.clone();
    while NODES
        .iter()
        .any(|n| state.node(n).is_none_or(|v| v.last_poll.is_none()))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sim.clear_recorded();
    tokio::time::sleep(Duration::from_secs(60 * MINUTES)).await;
    let mut by_action = BTreeMap::new();
    for a in sim.recorded_actions() {
        let name = match (a.action(), a.get("Command")) {
            (Some(action), Some(cmd)) => format!("{action}/{cmd}"),
            (Some(action), None) => action.to_owned(),
            _ => "?".to_owned(),
        };
        *by_action.entry(name).or_insert(0.0) += 1.0 / NODES.len() as f64 / MINUTES as f64;
    }
    shutdown.cancel();
    let _ = daemon.done.await;
    sim.shutdown();
    by_action
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    for (label, extra) in [
        ("keepalive 30s (before)", "ami_keepalive_interval: 30s\n"),
        ("default keepalive", ""),
    ] {
        let dir = temp_dir("run");
        let by_action = runtime.block_on(run(extra, &dir));
        let total: f64 = by_action.values().sum();
        let parts: Vec<String> = by_action
            .iter()
            .map(|(a, n)| format!("{a} {n:.2}"))
            .collect();
        println!(
            "ami_load/idle_node ({label}): {total:.2} actions per node per minute over {MINUTES} \
             simulated minutes [{}]",
            parts.join(", ")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
