//! The idle-node scenario shared by `tests/ami_load.rs` (which asserts on it) and
//! `benches/ami_load.rs` (which prints it): the daemon with the bundled adaptive polling
//! plugin against the simulator, started, the plugin loaded and every node polled once,
//! the simulator's record of actions cleared. Run on paused tokio time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use allstar_nexus::daemon::Running;
use allstar_nexus::sim::{self, SimConfig, SimHandle};
use tokio_util::sync::CancellationToken;

/// The scenario, ready for its idle minutes.
pub struct IdleRig {
    pub sim: SimHandle,
    pub daemon: Running,
}

/// A fresh folder under the temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "nexus-idle-{tag}-{}-{}",
        std::process::id(),
        allstar_nexus::observe::now_ms()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Starts the scenario for `nodes` in `dir`; `extra_yaml` (whole lines) goes into the
/// daemon's configuration.
pub async fn start(nodes: &[&str], extra_yaml: &str, dir: &Path) -> IdleRig {
    let sim = sim::start(
        "127.0.0.1:0".parse().expect("addr"),
        SimConfig {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
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
         ami_password: {}\nastdb_path: /nonexistent/astdb.txt\nscript_dirs: [{:?}]\n\
         state_dir: {}\n{extra_yaml}nodes:\n",
        sim.addr().port(),
        SimConfig::default().secret,
        plugins.display().to_string(),
        dir.join("state").display()
    );
    for n in nodes {
        yaml.push_str(&format!("  - node_id: {n}\n"));
    }
    let config = allstar_nexus::config::Config::parse(&yaml, "idle_rig", None).expect("config");
    let daemon = allstar_nexus::daemon::start(config, CancellationToken::new())
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
    // Connected and first polls done.
    let state = daemon.app.state.clone();
    while nodes
        .iter()
        .any(|n| state.node(n).is_none_or(|v| v.last_poll.is_none()))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sim.clear_recorded();
    IdleRig { sim, daemon }
}
