//! The bundled plugins, fed with changes through the state store (the real path), with
//! short settings instead of long sleeps.

mod lua_support;

use std::time::Duration;

use allstar_nexus::state::ChangeKind;
use lua_support::{Rig, TempDir, ago_ms, event, link_event};
use serde_json::json;

const ALERTS: &str = "plugins:\n  alerts:\n    stuck_tx_minutes: 10\n    flap_drops: 3\n    flap_minutes: 10\n    \
                      ami_down_seconds: 60\n    watch_nodes: [2000]\n    check_seconds: 0.05\n";

async fn alerts_rig(dir: &TempDir) -> Rig {
    dir.copy_plugin("alerts.lua");
    let rig = Rig::start(dir.path(), ALERTS, &[]).await;
    let src = std::fs::read_to_string(dir.path().join("alerts.lua")).expect("plugin");
    rig.loaded("alerts.lua", &src).await;
    rig
}

#[tokio::test]
async fn stuck_transmitter_is_reported_once_and_its_release_too() {
    let dir = TempDir::new("stuck");
    let rig = alerts_rig(&dir).await;
    let mut keyed = event(ChangeKind::TxKeyed);
    keyed.time_ms = ago_ms(9 * 60);
    rig.publish(keyed).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        rig.alerts().is_empty(),
        "9 minutes is not stuck yet: {:?}",
        rig.alerts()
    );

    let mut keyed = event(ChangeKind::TxKeyed);
    keyed.time_ms = ago_ms(11 * 60);
    rig.publish(keyed).await;
    let a = rig
        .alert_titled("Transmitter stuck", Duration::from_secs(2))
        .await
        .expect("stuck TX alert");
    assert_eq!(
        (a.severity.as_str(), a.node.as_deref(), a.source.as_str()),
        ("critical", Some("1999"), "alerts.lua")
    );
    assert!(a.message.contains("11m"), "{}", a.message);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rig.alerts().len(), 1, "reported once per key-up");

    let mut unkeyed = event(ChangeKind::TxUnkeyed);
    unkeyed.duration_seconds = Some(660.0);
    rig.publish(unkeyed).await;
    assert!(
        rig.alert_titled("Transmitter released", Duration::ZERO)
            .await
            .is_some()
    );
}

#[tokio::test]
async fn flapping_link_lost_links_and_watched_node() {
    let dir = TempDir::new("flap");
    let rig = alerts_rig(&dir).await;
    rig.publish(link_event(ChangeKind::LinkConnected, "2000"))
        .await;
    rig.publish(link_event(ChangeKind::LinkConnected, "2001"))
        .await;
    let a = rig
        .alert_titled("Watched node connected", Duration::ZERO)
        .await
        .expect("watch alert");
    assert_eq!(a.severity.as_str(), "info");
    assert!(
        a.message.contains("2000 connected to node 1999"),
        "{}",
        a.message
    );

    for _ in 0..2 {
        rig.publish(link_event(ChangeKind::LinkDisconnected, "2001"))
            .await;
        rig.publish(link_event(ChangeKind::LinkConnected, "2001"))
            .await;
    }
    assert!(
        rig.alert_titled("Link flapping", Duration::ZERO)
            .await
            .is_none(),
        "2 drops are not flapping"
    );
    rig.publish(link_event(ChangeKind::LinkDisconnected, "2001"))
        .await;
    let a = rig
        .alert_titled("Link flapping", Duration::ZERO)
        .await
        .expect("flapping alert");
    assert!(
        a.message.contains("2001") && a.message.contains("3 times"),
        "{}",
        a.message
    );
    assert!(
        rig.alert_titled("lost all its links", Duration::ZERO)
            .await
            .is_none(),
        "2000 is still linked"
    );

    rig.publish(link_event(ChangeKind::LinkDisconnected, "2000"))
        .await;
    assert!(
        rig.alert_titled("Watched node left", Duration::ZERO)
            .await
            .is_some()
    );
    let a = rig
        .alert_titled("lost all its links", Duration::ZERO)
        .await
        .expect("no-links alert");
    assert_eq!(a.node.as_deref(), Some("1999"));
}

#[tokio::test]
async fn ami_down_is_reported_after_the_threshold_and_recovery_after() {
    let dir = TempDir::new("amidown");
    let rig = alerts_rig(&dir).await;
    let mut down = event(ChangeKind::AmiDisconnected);
    down.time_ms = ago_ms(30);
    down.error = Some("connection refused".into());
    rig.publish(down).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rig.alerts().is_empty(), "30 s is below ami_down_seconds");

    // What the plugin's own timer would see 40 s later.
    let later = lua_support::ago_ms(0) as f64 / 1000.0 + 40.0;
    rig.call("alerts.lua", "check", vec![json!(later)]).await;
    let a = rig
        .alert_titled("AMI connection down", Duration::ZERO)
        .await
        .expect("AMI alert");
    assert_eq!(a.severity.as_str(), "critical");
    assert!(a.message.contains("default"), "{}", a.message);

    rig.publish(event(ChangeKind::AmiConnected)).await;
    assert!(
        rig.alert_titled("AMI connection restored", Duration::ZERO)
            .await
            .is_some()
    );
}

/// No wall-clock waits: the plugin's own timer is set to an hour (it never fires during
/// the test) and the test runs the plugin's `check(now)` itself with chosen times, after
/// changes stamped with a fixed time. Every step is a barrier on the Lua thread (the
/// change is handled, the call has returned) before the interval is read.
#[tokio::test]
async fn adaptive_polling_speeds_up_on_activity_and_slows_down_after_cooldown() {
    let dir = TempDir::new("adaptive");
    dir.copy_plugin("adaptive_polling.lua");
    let cfg = "plugins:\n  adaptive_polling:\n    fast_seconds: 2\n    slow_seconds: 30\n    cooldown_seconds: 120\n    \
               check_seconds: 3600\n";
    let rig = Rig::start(dir.path(), cfg, &["1999"]).await;
    let src = std::fs::read_to_string(dir.path().join("adaptive_polling.lua")).expect("plugin");
    rig.loaded("adaptive_polling.lua", &src).await;
    let interval = || rig.app.control.poll_interval("1999");
    assert_eq!(
        interval(),
        Some(Duration::from_secs(60)),
        "configured interval until something happens"
    );
    // Every change happens at `t0` (seconds); checks run at `t0 + offset`.
    let t0_ms = ago_ms(0);
    let t0 = t0_ms as f64 / 1000.0;
    let at = |mut e: allstar_nexus::state::ChangeEvent| {
        e.time_ms = t0_ms;
        e
    };
    let check = |offset: f64| rig.call("adaptive_polling.lua", "check", vec![json!(t0 + offset)]);

    rig.publish(at(link_event(ChangeKind::LinkKeyed, "2000")))
        .await;
    assert_eq!(
        interval(),
        Some(Duration::from_secs(2)),
        "fast while active"
    );
    check(600.0).await;
    assert_eq!(
        interval(),
        Some(Duration::from_secs(2)),
        "stays fast while the link is keyed, however long"
    );

    rig.publish(at(link_event(ChangeKind::LinkUnkeyed, "2000")))
        .await;
    check(119.0).await;
    assert_eq!(
        interval(),
        Some(Duration::from_secs(2)),
        "cooldown not over yet"
    );
    check(120.0).await;
    assert_eq!(
        interval(),
        Some(Duration::from_secs(30)),
        "slow once nothing happened for the cooldown"
    );

    rig.publish(at(event(ChangeKind::TxKeyed))).await;
    assert_eq!(
        interval(),
        Some(Duration::from_secs(2)),
        "fast again on the next activity"
    );
}

#[tokio::test]
async fn voter_reports_a_silent_receiver_and_a_vanished_one() {
    let dir = TempDir::new("voter");
    dir.copy_plugin("voter.lua");
    let rig = Rig::start(
        dir.path(),
        "plugins:\n  voter:\n    interval_seconds: 60\n    silent_seconds: 60\n",
        &[],
    )
    .await;
    let src = std::fs::read_to_string(dir.path().join("voter.lua")).expect("plugin");
    rig.loaded("voter.lua", &src).await;
    let rx = |name: &str, rssi: u32| json!({"name": name, "rssi": rssi, "voted": rssi > 0, "ip": "192.0.2.1", "flags": []});
    let answer = |t: f64, list: serde_json::Value| {
        rig.call(
            "voter.lua",
            "on_receivers",
            vec![json!("1999"), list, json!(t)],
        )
    };

    answer(
        1000.0,
        json!([rx("main", 0), rx("north", 0), rx("south", 0)]),
    )
    .await;
    answer(
        1070.0,
        json!([rx("main", 0), rx("north", 0), rx("south", 0)]),
    )
    .await;
    assert!(
        rig.alerts().is_empty(),
        "an idle channel is not a dead receiver"
    );

    answer(
        1080.0,
        json!([rx("main", 180), rx("north", 120), rx("south", 0)]),
    )
    .await;
    answer(
        1130.0,
        json!([rx("main", 175), rx("north", 0), rx("south", 0)]),
    )
    .await;
    assert!(
        rig.alerts().is_empty(),
        "south has been silent for 50 s only of the active time"
    );
    answer(
        1145.0,
        json!([rx("main", 170), rx("north", 90), rx("south", 0)]),
    )
    .await;
    let a = rig
        .alert_titled("Voter receiver silent", Duration::ZERO)
        .await
        .expect("silent alert");
    assert!(
        a.message.contains("south") && a.message.contains("1999"),
        "{}",
        a.message
    );
    assert_eq!(rig.alerts().len(), 1, "only south");

    answer(1150.0, json!([rx("main", 160), rx("south", 0)])).await;
    let a = rig
        .alert_titled("disappeared", Duration::ZERO)
        .await
        .expect("vanished alert");
    assert!(a.message.contains("north"), "{}", a.message);

    answer(
        1155.0,
        json!([rx("main", 160), rx("north", 10), rx("south", 30)]),
    )
    .await;
    assert!(
        rig.alert_titled("Voter receiver back", Duration::ZERO)
            .await
            .is_some()
    );
    assert!(
        rig.alert_titled("hears again", Duration::ZERO)
            .await
            .is_some()
    );
}

#[tokio::test]
async fn voter_polls_nodes_and_tolerates_nodes_without_a_voter() {
    let dir = TempDir::new("voterpoll");
    dir.copy_plugin("voter.lua");
    let cfg =
        "plugins:\n  voter:\n    interval_seconds: 0.05\n    give_up_polls: 2\n    nodes: [1999]\n";
    let rig = Rig::start(dir.path(), cfg, &["1999"]).await;
    let src = std::fs::read_to_string(dir.path().join("voter.lua")).expect("plugin");
    rig.loaded("voter.lua", &src).await;
    // No Asterisk behind node 1999: every VoterStatus fails (not connected), and after
    // give_up_polls (2) misses the plugin backs off quietly (retry_seconds, minutes).
    let asked = || {
        ["ok", "error", "timeout", "disconnected", "not_connected"]
            .iter()
            .map(|r| {
                rig.app
                    .metrics
                    .ami_actions
                    .with_label_values(&["default", "VoterStatus", r])
                    .get()
            })
            .sum::<u64>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while asked() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the plugin never polled: {} VoterStatus actions",
            asked()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Eight more intervals: still two, so it gave up on node 1999 as it should.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(asked(), 2, "VoterStatus after give_up_polls misses");
    let s = rig.app.scripts.get("voter.lua").expect("status");
    assert_eq!(
        (s.errors, s.status),
        (0, allstar_nexus::script::ScriptState::Running),
        "{s:?}"
    );
    assert!(rig.alerts().is_empty());
}
