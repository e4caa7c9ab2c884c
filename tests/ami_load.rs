//! Issue 13, AMI load: what an idle node costs on its Asterisk server, on paused time.
//!
//! - The keepalive: an action written to a silent peer is the probe a `Ping` would be, so
//!   an idle node's polls stand in for Pings (none is sent), and a peer that stops
//!   answering after an action is still reset within `keepalive_timeout`.
//! - The whole daemon with the adaptive polling plugin against the simulator: at most 2
//!   actions a minute per idle node over 10 simulated minutes, every action counted in
//!   `nexus_ami_actions_total`, and a change whose event was lost shows within one poll.

mod common;
mod idle_rig;

use std::time::Duration;

use allstar_nexus::ami::{Action, ErrorKind};
use allstar_nexus::config::AmiSettings;
use allstar_nexus::poller::poll_once;
use allstar_nexus::sim::{SimHandle, SimLink};
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
    assert_eq!(h.status().last_error_kind, Some(ErrorKind::Keepalive));
    assert!(late.await.expect("task").is_err());
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn an_idle_node_costs_at_most_two_actions_a_minute_and_a_lost_event_is_corrected_within_one_poll()
 {
    let nodes = ["1999", "2000"];
    let rig = idle_rig::start(&nodes, "", &idle_rig::temp_dir("ami-load")).await;
    let (sim, daemon) = (&rig.sim, &rig.daemon);
    let state = daemon.app.state.clone();
    // Ten idle minutes.
    tokio::time::sleep(Duration::from_secs(600)).await;
    let recorded = sim.recorded_actions();
    let per_node_minute = recorded.len() as f64 / nodes.len() as f64 / 10.0;
    assert!(
        per_node_minute <= 2.0,
        "{per_node_minute} actions per idle node per minute: {:?}",
        recorded.iter().map(|a| a.action()).collect::<Vec<_>>()
    );
    assert_eq!(count(sim, "Ping"), 0);
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
