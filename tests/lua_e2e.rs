//! The bundled plugins against the whole daemon: the app_rpt simulator on port 0, the AMI
//! session, the state engine, the pollers, and the script host on top.

mod lua_support;

use std::time::Duration;

use allstar_nexus::daemon::{self, Running};
use allstar_nexus::script::ScriptHost;
use allstar_nexus::sim::{self, SimConfig, SimHandle, SimLink, SimVoterReceiver};
use allstar_nexus::state::Direction;
use lua_support::TempDir;
use tokio_util::sync::CancellationToken;

struct World {
    sim: SimHandle,
    daemon: Running,
    host: ScriptHost,
    _dir: TempDir,
}

impl World {
    /// The simulator with node 1999, the daemon on it, and the given plugins loaded.
    async fn start(plugins: &[&str], settings: &str) -> World {
        let sim = sim::start("127.0.0.1:0".parse().expect("addr"), SimConfig::default())
            .await
            .expect("simulator");
        let dir = TempDir::new("e2e");
        for p in plugins {
            dir.copy_plugin(p);
        }
        let yaml = format!(
            "listen: 127.0.0.1:0\nami_port: {}\nami_username: admin\nami_password: nexus-sim\n\
             ami_retry_interval: 1s\nami_retry_max: 2s\nastdb_path: /nonexistent/astdb.txt\n\
             script_dirs: [{:?}]\nstate_dir: {:?}\nnodes:\n  - node_id: 1999\n{settings}",
            sim.addr().port(),
            dir.path().display().to_string(),
            dir.path().join("state").display().to_string()
        );
        let config = allstar_nexus::config::Config::parse(&yaml, "e2e.yaml", None).expect("config");
        let daemon = daemon::start(config, CancellationToken::new())
            .await
            .expect("daemon");
        // The daemon's own script host (one per daemon: a second one would run every
        // plugin twice).
        let host = daemon.scripts.clone();
        for p in plugins {
            let src = std::fs::read(dir.path().join(p)).expect("plugin");
            assert!(
                host.wait_version(p, &src, Duration::from_secs(5)).await,
                "{p} loaded"
            );
        }
        World {
            sim,
            daemon,
            host,
            _dir: dir,
        }
    }

    async fn alert(&self, title: &str) -> Option<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .daemon
                .app
                .alerts
                .recent(100)
                .into_iter()
                .find(|a| a.title.contains(title));
            if let Some(a) = found {
                return Some(a.message.clone());
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.daemon.shutdown.cancel();
    }
}

#[tokio::test]
async fn voter_plugin_reads_real_voter_status_and_reports_a_dead_receiver() {
    let settings = "plugins:\n  voter:\n    interval_seconds: 0.1\n    silent_seconds: 0.4\n";
    let w = World::start(&["voter.lua"], settings).await;
    let receivers = |south: bool| {
        let mut r = vec![
            SimVoterReceiver::new("main", "192.0.2.20:1667", 210),
            SimVoterReceiver::new("north", "192.0.2.21:1667", 90),
        ];
        if south {
            r.push(SimVoterReceiver::new("south", "192.0.2.22:1667", 0));
        }
        r
    };
    w.sim.set_voter("1999", receivers(true));
    let msg = w
        .alert("Voter receiver silent")
        .await
        .expect("silent receiver alert");
    assert!(msg.contains("south") && msg.contains("1999"), "{msg}");
    let snap = w
        .daemon
        .app
        .control
        .voter("1999")
        .expect("VoterStatus was recorded for the API");
    assert_eq!(snap.receivers.len(), 3);

    w.sim.set_voter("1999", receivers(false));
    let msg = w
        .alert("Voter receiver disappeared")
        .await
        .expect("vanished receiver alert");
    assert!(msg.contains("south"), "{msg}");
    assert_eq!(w.host.queued(), 0);
}

#[tokio::test]
async fn alerts_plugin_sees_a_stuck_transmitter_from_the_simulator() {
    let settings = "plugins:\n  alerts:\n    stuck_tx_minutes: 0.005\n    check_seconds: 0.05\n";
    let w = World::start(&["alerts.lua"], settings).await;
    w.sim.set_tx_keyed("1999", true);
    let msg = w
        .alert("Transmitter stuck keyed")
        .await
        .expect("stuck TX alert");
    assert!(msg.contains("1999"), "{msg}");
    w.sim.set_tx_keyed("1999", false);
    assert!(w.alert("Transmitter released").await.is_some());
}

#[tokio::test]
async fn adaptive_polling_follows_simulated_activity() {
    let settings = "plugins:\n  adaptive_polling:\n    fast_seconds: 2\n    slow_seconds: 45\n    cooldown_seconds: 0.5\n    \
                    check_seconds: 0.05\n";
    let w = World::start(&["adaptive_polling.lua"], settings).await;
    let interval = || {
        w.daemon
            .app
            .state
            .node("1999")
            .map(|n| n.poll_interval_seconds)
    };
    let wait_for = |want: f64| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while interval() != Some(want) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "interval {:?}, want {want}",
                interval()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    w.sim.connect_link(
        "1999",
        SimLink::allstar("2000", "192.0.2.10", Direction::Out),
    );
    wait_for(2.0).await;
    wait_for(45.0).await;
    assert_eq!(
        w.daemon.app.control.poll_interval("1999"),
        Some(Duration::from_secs(45))
    );
}
