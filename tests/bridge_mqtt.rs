//! The MQTT publisher against a real Mosquitto (issue 15): a daemon watching the simulator
//! publishes node state (retained), every change, alerts, its status and Home Assistant
//! discovery; a broker restart loses no final state (what overflows the bounded queue
//! meanwhile is counted, and the engine never waits); a publisher killed with SIGKILL goes
//! `offline` through its last will.

mod bridge_support;
mod common;

use std::time::Duration;

use allstar_nexus::alerts::{AlertRequest, Severity};
use allstar_nexus::sim::SimLink;
use allstar_nexus::state::Direction;
use bridge_support::{Mosquitto, Recorder, bridge_yaml};

fn kinds(msgs: &[bridge_support::Msg], topic: &str) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.topic == topic)
        .filter_map(|m| serde_json::from_str::<serde_json::Value>(&m.payload).ok())
        .filter_map(|v| v["event"]["kind"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_events_alerts_status_and_discovery_reach_the_broker() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let rec = Recorder::start(broker.port, &["t1/#", "homeassistant/#"]).await;
    let sim = common::sim_on_tcp(&["1999"]).await;
    let yaml = bridge_yaml(&broker.url(), "pub1", "t1", "    home_assistant: true\n");
    let d = common::start_daemon(sim.addr(), &["1999"], &yaml).await;

    rec.wait("online and the first state", 20, |m| {
        m.iter()
            .any(|m| m.topic == "t1/daemon/pub1/status" && m.payload == "online")
            && m.iter().any(|m| m.topic == "t1/default/1999/state")
    })
    .await;
    // A link connects and keys; the node transmits.
    sim.connect_link("1999", SimLink::allstar("2000", "10.0.0.2", Direction::Out));
    rec.wait("the link in the state", 20, |_| {
        rec.json("t1/default/1999/state")["links"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l["node"] == "2000"))
    })
    .await;
    sim.set_link_keyed("1999", "2000", true);
    sim.set_tx_keyed("1999", true);
    rec.wait("keyed state", 20, |_| {
        let s = rec.json("t1/default/1999/state");
        s["tx_keyed"] == true && s["links"][0]["keyed"] == true
    })
    .await;
    let msgs = rec.msgs();
    let ev = kinds(&msgs, "t1/default/1999/event");
    for k in ["link_connected", "link_keyed", "tx_keyed"] {
        assert!(ev.contains(&k.to_owned()), "{k} missing from {ev:?}");
    }
    // Event payloads are the WebSocket frames, with the stream's epoch and seq.
    let frame: serde_json::Value = msgs
        .iter()
        .rev()
        .find(|m| m.topic == "t1/default/1999/event")
        .and_then(|m| serde_json::from_str(&m.payload).ok())
        .expect("an event");
    assert_eq!(frame["type"], "event");
    assert_eq!(frame["epoch"], d.app.state.epoch());
    assert_eq!(frame["seq"], frame["event"]["seq"]);
    assert_eq!(frame["origin"], "pub1");
    // The state is the REST model (plus origin and stream position), retained.
    let state = rec.json("t1/default/1999/state");
    let rest = serde_json::to_value(d.app.state.node("1999").expect("node")).expect("json");
    for key in rest.as_object().expect("object").keys() {
        assert!(state.get(key).is_some(), "state lacks {key}");
    }
    assert_eq!(state["origin"], "pub1");
    assert_eq!(state["epoch"], d.app.state.epoch());
    // Alerts.
    d.app.alerts.raise(AlertRequest {
        severity: Severity::Warning,
        title: "Test".into(),
        message: "hello broker".into(),
        node: Some("1999".into()),
        key: None,
        source: "test".into(),
    });
    rec.wait("the alert", 20, |m| {
        m.iter()
            .any(|m| m.topic == "t1/default/1999/alert" && m.payload.contains("hello broker"))
    })
    .await;
    // Home Assistant discovery: transmitting, links, talker.
    let latest = rec.latest();
    for (kind, key) in [
        ("binary_sensor", "transmitting"),
        ("sensor", "links"),
        ("sensor", "talker"),
    ] {
        let topic = format!("homeassistant/{kind}/allstar_pub1_1999/{key}/config");
        let cfg: serde_json::Value =
            serde_json::from_str(latest.get(&topic).expect(&topic)).expect("json");
        assert_eq!(cfg["state_topic"], "t1/default/1999/state");
        assert_eq!(cfg["availability_topic"], "t1/daemon/pub1/status");
    }
    // Metrics.
    let text = d.app.metrics.render();
    assert!(
        text.contains("nexus_bridge_connected{bridge=\"mqtt\"} 1"),
        "{text}"
    );
    assert!(text.contains("nexus_bridge_messages_published_total{bridge=\"mqtt\"}"));
    // An orderly stop says offline.
    d.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), d.done).await;
    rec.wait("offline after the stop", 10, |_| {
        rec.latest()
            .get("t1/daemon/pub1/status")
            .map(String::as_str)
            == Some("offline")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_no_final_state() {
    let Some(mut broker) = Mosquitto::start() else {
        return;
    };
    let sim = common::sim_on_tcp(&["1999"]).await;
    // The smallest queue: what the broker misses overflows it.
    let d = common::start_daemon(
        sim.addr(),
        &["1999"],
        &bridge_yaml(&broker.url(), "pub2", "t2", "    queue: 16\n"),
    )
    .await;
    let first = Recorder::start(broker.port, &["t2/#"]).await;
    first
        .wait("the first state", 20, |m| {
            m.iter().any(|m| m.topic == "t2/default/1999/state")
        })
        .await;
    let dropped = || {
        bridge_support::metric(
            &d.app.metrics,
            "nexus_bridge_messages_dropped_total",
            &["bridge=\"mqtt\"", "reason=\"queue_full\""],
        )
    };
    assert_eq!(dropped(), 0.0);
    // The broker goes away; the node keys and unkeys (two messages each) far more often
    // than the queue holds, then a link connects and the node keys for good; the broker
    // comes back empty.
    broker.stop();
    let store = d.app.state.clone();
    let keyed = |on: bool| {
        let store = store.clone();
        move || store.node("1999").is_some_and(|n| n.tx_keyed == on)
    };
    let t0 = std::time::Instant::now();
    for _ in 0..12 {
        sim.set_tx_keyed("1999", true);
        common::wait_until("the model sees the key", keyed(true)).await;
        sim.set_tx_keyed("1999", false);
        common::wait_until("the model sees the unkey", keyed(false)).await;
    }
    sim.connect_link("1999", SimLink::allstar("2000", "10.0.0.2", Direction::Out));
    sim.set_tx_keyed("1999", true);
    common::wait_until("the model sees the last change", || {
        store
            .node("1999")
            .is_some_and(|n| n.tx_keyed && n.links.iter().any(|l| l.node == "2000"))
    })
    .await;
    // The engine kept pace with the simulator: nothing waited on the missing broker.
    let took = t0.elapsed();
    eprintln!("26 changes with the broker away took {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "the engine was slowed: {took:?}"
    );
    assert!(store.seq() >= 26, "every change was published locally");
    // The overflow was counted, not waited for.
    let lost = dropped();
    assert!(lost > 0.0, "the full queue is counted: {lost}");
    eprintln!("{lost} messages dropped while the broker was away");
    broker.restart();
    // The newest state reaches the new broker; a subscriber arriving afterwards gets it
    // retained (a restarted broker without persistence had forgotten everything).
    let last = |m: &bridge_support::Msg| {
        m.topic == "t2/default/1999/state"
            && serde_json::from_str::<serde_json::Value>(&m.payload).is_ok_and(|v| {
                v["tx_keyed"] == true
                    && v["links"]
                        .as_array()
                        .is_some_and(|l| l.iter().any(|l| l["node"] == "2000"))
            })
    };
    let late = Recorder::start(broker.port, &["t2/#"]).await;
    late.wait("the republished state", 30, |m| m.iter().any(last))
        .await;
    let later = Recorder::start(broker.port, &["t2/#"]).await;
    later
        .wait("the retained state", 10, |m| {
            m.iter().any(|m| m.retain && last(m))
        })
        .await;
    late.wait("online again", 10, |_| {
        late.latest()
            .get("t2/daemon/pub2/status")
            .map(String::as_str)
            == Some("online")
    })
    .await;
    d.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_killed_with_sigkill_goes_offline_by_its_last_will() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let rec = Recorder::start(broker.port, &["t3/daemon/#"]).await;
    let sim = common::sim_on_tcp(&["1999"]).await;
    let dir = common::temp_dir("bridge-kill");
    let path = dir.join("config.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:0\nami_host: 127.0.0.1\nami_port: {}\nami_username: admin\n\
         ami_password: {}\nastdb_path: /nonexistent/astdb.txt\nscript_dirs: []\n\
         state_dir: {}\nnodes:\n  - node_id: 1999\n{}",
        sim.addr().port(),
        common::SECRET,
        dir.display(),
        bridge_yaml(&broker.url(), "pub3", "t3", "")
    );
    std::fs::write(&path, yaml).expect("config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_allstar-nexus"))
        .args(["run", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the binary starts");
    rec.wait("online", 30, |_| {
        rec.latest()
            .get("t3/daemon/pub3/status")
            .map(String::as_str)
            == Some("online")
    })
    .await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let log = broker.log();
    let _show = scopeguard(move || eprintln!("broker log:\n{log}"));
    // The broker notices the silence (1.5 × the 5 s keepalive) and sends the will.
    rec.wait("the last will", 30, |_| {
        rec.latest()
            .get("t3/daemon/pub3/status")
            .map(String::as_str)
            == Some("offline")
    })
    .await;
}

/// Runs `f` when dropped during a panic (shows the broker's log on failure).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct G<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for G<F> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                if let Some(f) = self.0.take() {
                    f();
                }
            }
        }
    }
    G(Some(f))
}
