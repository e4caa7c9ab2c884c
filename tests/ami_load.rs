//! Issue 13, AMI load: what an idle node costs on its Asterisk server, on paused time.
//!
//! - The keepalive: an action written to a silent peer is the probe a `Ping` would be, so
//!   an idle node's polls stand in for Pings (none is sent), and a peer that stops
//!   answering after an action is still reset within `keepalive_timeout`.
//! - The whole daemon with the adaptive polling plugin against the simulator: at most 2
//!   actions a minute per idle node over 10 simulated minutes, every action counted in
//!   `nexus_ami_actions_total`, and a change whose event was lost shows within one poll.

mod common;

use std::time::Duration;

use allstar_nexus::ami::Action;
use allstar_nexus::config::AmiSettings;
use allstar_nexus::poller::poll_once;
use allstar_nexus::sim::{self, SimConfig, SimHandle, SimLink};
use allstar_nexus::state::model::Direction;
use common::{Outcome, settings, supervise_scripted, wait_connected};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How many recorded actions of each name the simulator received.
fn count(sim: &SimHandle, action: &str) -> usize {
    sim.recorded_actions()
        .iter()
        .filter(|a| a.action() == Some(action))
        .count()
}

#[tokio::test(start_paused = true)]
async fn polls_stand_in_for_pings_and_a_peer_silent_after_an_action_is_reset() {
    let stop = CancellationToken::new();
    let s = AmiSettings {
        keepalive_timeout: Duration::from_secs(10),
        ..settings()
    };
    assert_eq!(s.keepalive_interval, Duration::from_secs(90), "the default");
    let (h, _attempts, sim, _rx) = supervise_scripted(vec![Outcome::Sim], s, &stop);
    wait_connected(&h, true).await;
    sim.clear_recorded();
    // Ten idle minutes polled like the poller does (every 60 s).
    for _ in 0..10 {
        let p = poll_once("1999", &h).await;
        assert!(p.xstat.is_ok() && p.sawstat.is_ok(), "{p:?}");
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    assert_eq!(count(&sim, "RptStatus"), 20);
    assert_eq!(count(&sim, "Ping"), 0, "the polls proved the session alive");
    // Silent for longer than the keepalive: a Ping is still sent and answered.
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(count(&sim, "Ping"), 1);
    assert!(h.is_connected());
    // The peer stops answering right after an action is written: reset within the timeout.
    sim.set_stall(true);
    let sent = Instant::now();
    let probe = h.clone();
    let late = tokio::spawn(async move {
        let action = Action::new("RptStatus")
            .and_then(|a| a.header("Command", "XStat"))
            .and_then(|a| a.header("Node", "1999"))
            .expect("valid action");
        probe.send_timeout(action, Duration::from_secs(60)).await
    });
    wait_connected(&h, false).await;
    let detected = sent.elapsed();
    assert!(
        detected <= Duration::from_secs(10) + Duration::from_millis(100),
        "a silent peer was reset {detected:?} after the action"
    );
    assert_eq!(h.status().last_error_kind, Some("keepalive"));
    assert!(late.await.expect("task").is_err());
    stop.cancel();
}

/// A plugin folder holding the bundled adaptive polling plugin.
fn plugin_dir() -> std::path::PathBuf {
    let dir = common::temp_dir("ami-load");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/adaptive_polling.lua");
    std::fs::copy(&src, dir.join("adaptive_polling.lua")).expect("copy the plugin");
    dir
}

#[tokio::test(start_paused = true)]
async fn an_idle_node_costs_at_most_two_actions_a_minute_and_a_lost_event_is_corrected_within_one_poll()
 {
    let nodes = ["1999", "2000"];
    let sim = sim::start(
        "127.0.0.1:0".parse().expect("addr"),
        SimConfig {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            ..SimConfig::default()
        },
    )
    .await
    .expect("simulator");
    let plugins = plugin_dir();
    let yaml = format!(
        "listen: 127.0.0.1:0\nami_host: 127.0.0.1\nami_port: {}\nami_username: admin\n\
         ami_password: {}\nastdb_path: /nonexistent/astdb.txt\nscript_dirs: [{:?}]\n\
         state_dir: {}\nnodes:\n  - node_id: 1999\n  - node_id: 2000\n",
        sim.addr().port(),
        common::SECRET,
        plugins.display().to_string(),
        common::temp_dir("ami-load-state").display()
    );
    let config = allstar_nexus::config::Config::parse(&yaml, "ami_load", None).expect("config");
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
    // Connected and first polls done; then ten idle minutes.
    let state = daemon.app.state.clone();
    while nodes
        .iter()
        .any(|n| state.node(n).is_none_or(|v| v.last_poll.is_none()))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sim.clear_recorded();
    tokio::time::sleep(Duration::from_secs(600)).await;
    let recorded = sim.recorded_actions();
    let per_node_minute = recorded.len() as f64 / nodes.len() as f64 / 10.0;
    assert!(
        per_node_minute <= 2.0,
        "{per_node_minute} actions per idle node per minute: {:?}",
        recorded.iter().map(|a| a.action()).collect::<Vec<_>>()
    );
    assert_eq!(count(&sim, "Ping"), 0);
    // Every one of them counted, under its server and action.
    let counted = daemon
        .app
        .metrics
        .ami_actions
        .with_label_values(&["default", "RptStatus", "ok"])
        .get();
    assert!(counted as usize >= recorded.len(), "{counted} counted");

    // A link comes up and its events are lost: the next poll (≤ 60 s) shows it.
    sim.set_event_drop_ratio(1.0);
    let changed = Instant::now();
    sim.connect_link(
        "1999",
        SimLink::allstar("2001", "192.0.2.10", Direction::Out),
    );
    let has_link = || {
        state
            .node("1999")
            .is_some_and(|n| n.links.iter().any(|l| l.node == "2001"))
    };
    while !has_link() {
        assert!(
            changed.elapsed() <= Duration::from_secs(61),
            "the poll did not correct a lost event within one interval"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
