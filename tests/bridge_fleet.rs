//! Aggregation through a real Mosquitto (issue 15): two daemons, each watching its own
//! simulator, publish; a third takes their nodes from the broker (`sources:`) and shows
//! them, marked with their origin, with the right links and keying within 1 s; control
//! of a remote node is refused; a gap in a daemon's numbering brings every retained state
//! back; a daemon going offline leaves its nodes stale, not gone. A publisher started after
//! a WebSocket client (and the dashboard) opened reaches them; its node turns stale there
//! when it loses its Asterisk (and current again), and when it is killed with SIGKILL
//! (through its last will).

mod bridge_support;
mod browser;
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allstar_nexus::control::ControlError;
use allstar_nexus::sim::SimLink;
use allstar_nexus::state::{ChangeKind, Direction};
use bridge_support::{Mosquitto, Recorder, bridge_yaml, metric};
use futures_util::StreamExt;
use rumqttc::QoS;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

async fn aggregator(url: &str) -> allstar_nexus::daemon::Running {
    aggregator_with(url, "").await
}

/// An aggregator with more YAML (`extra`, top level; `script_dirs: []` unless it says).
async fn aggregator_with(url: &str, extra: &str) -> allstar_nexus::daemon::Running {
    let scripts = if extra.contains("script_dirs:") {
        ""
    } else {
        "script_dirs: []\n"
    };
    let yaml = format!(
        "listen: 127.0.0.1:0\nami_enabled: false\nastdb_path: /nonexistent/astdb.txt\n\
         {scripts}state_dir: {}\nsources:\n  - mqtt: {{url: '{url}', topic_prefix: fleet, client_id: agg}}\n{extra}",
        common::temp_dir("agg").display()
    );
    let config = allstar_nexus::config::Config::parse(&yaml, "test", None).expect("valid config");
    allstar_nexus::daemon::start(config, CancellationToken::new())
        .await
        .expect("aggregator starts")
}

/// Prints the aggregator's nodes and bridge metrics if the test fails.
struct Show(
    (
        allstar_nexus::state::StateStore,
        allstar_nexus::metrics::Metrics,
    ),
);

impl Drop for Show {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in self.0.0.nodes() {
                eprintln!(
                    "aggregator node {} origin {:?} stale {} links {}",
                    n.node_id,
                    n.origin,
                    n.stale,
                    n.links.len()
                );
            }
            for l in self.0.1.render().lines().filter(|l| l.contains("bridge")) {
                eprintln!("{l}");
            }
        }
    }
}

/// Waits until `cond` holds (checking every 2 ms), returning how long it took.
async fn within(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_daemon_shows_both_fleets_nodes_within_a_second() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let (sim_e, sim_w) = (
        common::sim_on_tcp(&["1999"]).await,
        common::sim_on_tcp(&["2001"]).await,
    );
    sim_w.connect_link("2001", SimLink::allstar("2500", "10.0.0.5", Direction::In));
    let east = common::start_daemon(
        sim_e.addr(),
        &["1999"],
        &bridge_yaml(&broker.url(), "east", "fleet", ""),
    )
    .await;
    let west = common::start_daemon(
        sim_w.addr(),
        &["2001"],
        &bridge_yaml(&broker.url(), "west", "fleet", ""),
    )
    .await;
    let agg = aggregator(&broker.url()).await;
    let store = agg.app.state.clone();
    let dbg = (store.clone(), agg.app.metrics.clone());
    let _show = Show(dbg);
    within("both daemons' nodes", Duration::from_secs(20), || {
        let a = store.node("1999");
        let b = store.node("2001");
        a.is_some_and(|n| n.origin.as_deref() == Some("east") && !n.stale)
            && b.is_some_and(|n| {
                n.origin.as_deref() == Some("west") && n.links.iter().any(|l| l.node == "2500")
            })
    })
    .await;
    let mut changes = store.subscribe();

    // A link connects on east and keys: the aggregator shows it within 1 s.
    sim_e.connect_link("1999", SimLink::allstar("2000", "10.0.0.2", Direction::Out));
    let took = within("east's new link", Duration::from_secs(1), || {
        store
            .node("1999")
            .is_some_and(|n| n.links.iter().any(|l| l.node == "2000"))
    })
    .await;
    eprintln!("link seen by the aggregator after {took:?}");
    sim_e.set_link_keyed("1999", "2000", true);
    sim_w.set_tx_keyed("2001", true);
    let took = within("keying on both", Duration::from_secs(1), || {
        let e = store.node("1999");
        let w = store.node("2001");
        e.is_some_and(|n| n.links.iter().any(|l| l.node == "2000" && l.keyed))
            && w.is_some_and(|n| n.tx_keyed)
    })
    .await;
    eprintln!("keying seen by the aggregator after {took:?}");
    // The changes reach the aggregator's own stream (WebSocket, Lua), in the same words.
    // A node's state travels before its event, so the model above can be ahead of the
    // stream by a message: read the stream until both are there (the 1 s above is the
    // target; this only allows for a loaded machine between the state and its event).
    let mut kinds = Vec::new();
    let wanted = [
        (ChangeKind::LinkKeyed, Some("1999".to_owned())),
        (ChangeKind::TxKeyed, Some("2001".to_owned())),
    ];
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while !wanted.iter().all(|w| kinds.contains(w)) {
        match tokio::time::timeout_at(until, changes.recv()).await {
            Ok(Ok(p)) => kinds.push((p.event.kind, p.event.node.clone())),
            Ok(Err(_)) | Err(_) => break,
        }
    }
    assert!(
        kinds.contains(&(ChangeKind::LinkKeyed, Some("1999".into()))),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(ChangeKind::TxKeyed, Some("2001".into()))),
        "{kinds:?}"
    );
    // REST shows the origin.
    let body: serde_json::Value = reqwest::get(format!("http://{}/api/nodes/2001", agg.http_addr))
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(body["origin"], "west", "{body}");
    // The aggregator counted what it read from the broker.
    let text = agg.app.metrics.render();
    assert!(
        text.lines().any(|l| l
            .starts_with("nexus_bridge_messages_received_total{bridge=\"source:")
            && !l.ends_with(" 0")),
        "{text}"
    );
    // Control of a remote node is refused, and says why.
    match agg.app.control.ami_for("2001") {
        Err(e @ ControlError::RemoteNode { .. }) => {
            assert!(e.to_string().contains("control it on that daemon"), "{e}")
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    // West's next event arrives with a gap in its numbering (messages lost): the aggregator
    // takes every retained state again, which repairs a node it holds wrong. A test client
    // forges both: a wrong (not retained) state of 2001, then the event after the gap.
    let forger = Recorder::start(broker.port, &["fleet/daemon/#"]).await;
    let mut wrong = west.app.state.node("2001").expect("west's node");
    (wrong.links, wrong.tx_keyed, wrong.origin) = (Vec::new(), false, Some("west".into()));
    let wrong = serde_json::to_string(&wrong).expect("json");
    let topic = format!("fleet/{}/2001", store.node("2001").expect("2001").server);
    let forge = |t: String, body: String| forger.client.publish(t, QoS::AtLeastOnce, false, body);
    forge(format!("{topic}/state"), wrong)
        .await
        .expect("publish");
    within("the wrong state", Duration::from_secs(5), || {
        store.node("2001").is_some_and(|n| n.links.is_empty())
    })
    .await;
    let states = || {
        metric(
            &agg.app.metrics,
            "nexus_bridge_messages_received_total",
            &["kind=\"state\""],
        )
    };
    let resyncs = || metric(&agg.app.metrics, "nexus_bridge_source_resyncs_total", &[]);
    let (states0, resyncs0) = (states(), resyncs());
    let seq = west.app.state.seq() + 5;
    let event = json!({"type": "event", "seq": seq, "epoch": west.app.state.epoch(),
        "origin": "west", "event": {"seq": seq, "kind": "ami_connected", "time_ms": 1,
        "server": "default"}});
    forge(format!("{topic}/event"), event.to_string())
        .await
        .expect("publish");
    within("the repaired state", Duration::from_secs(5), || {
        store.node("2001").is_some_and(|n| {
            n.tx_keyed && n.links.iter().any(|l| l.node == "2500") && n.origin.is_some()
        })
    })
    .await;
    assert!(resyncs() > resyncs0, "the gap is counted");
    assert!(
        states() >= states0 + 2.0,
        "both daemons' retained states came again: {} then {}",
        states0,
        states()
    );
    // East stops: its status turns offline and its node stays, stale.
    east.shutdown.cancel();
    within("east's node stale", Duration::from_secs(10), || {
        store.node("1999").is_some_and(|n| n.stale)
    })
    .await;
    assert!(
        store.node("2001").is_some_and(|n| !n.stale),
        "west is still live"
    );
    let _ = (west.shutdown.cancel(), agg.shutdown.cancel());
}

/// Every JSON message a WebSocket client of `addr` receives, in order.
#[derive(Clone)]
struct WsLog(Arc<Mutex<Vec<Value>>>);

impl WsLog {
    async fn open(addr: std::net::SocketAddr) -> WsLog {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("WebSocket");
        let log = WsLog(Arc::new(Mutex::new(Vec::new())));
        let sink = log.0.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if let Ok(v) = serde_json::from_slice::<Value>(&m.into_data()) {
                    sink.lock().expect("lock").push(v);
                }
            }
        });
        log
    }

    fn all(&self) -> Vec<Value> {
        self.0.lock().expect("lock").clone()
    }

    /// The changes (`event` frames' `event`) received after the first `from` messages.
    fn events_after(&self, from: usize) -> Vec<Value> {
        self.all()
            .into_iter()
            .skip(from)
            .filter(|v| v["type"] == "event")
            .map(|v| v["event"].clone())
            .collect()
    }

    async fn wait(&self, what: &str, limit: Duration, mut cond: impl FnMut(&[Value]) -> bool) {
        let t0 = Instant::now();
        while !cond(&self.all()) {
            assert!(
                t0.elapsed() < limit,
                "{what}: not within {limit:?}; the client saw {:?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Whether `ev` is a `node_updated` of `node` naming `field`.
fn node_updated(ev: &Value, node: &str, field: &str) -> bool {
    ev["kind"] == "node_updated"
        && ev["node"] == node
        && ev["fields"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == field))
}

/// A publishing daemon run as its own process (so it can be killed with SIGKILL), killed
/// on drop.
struct Publisher(std::process::Child);

impl Publisher {
    fn start(sim: std::net::SocketAddr, broker: &str, name: &str) -> Publisher {
        let dir = common::temp_dir("bridge-publisher");
        let path = dir.join("config.yaml");
        let yaml = format!(
            "listen: 127.0.0.1:0\nami_host: 127.0.0.1\nami_port: {}\nami_username: admin\n\
             ami_password: {}\nami_retry_interval: 1s\nami_retry_max: 2s\n\
             astdb_path: /nonexistent/astdb.txt\nscript_dirs: []\n\
             state_dir: {}\nnodes:\n  - node_id: 1999\n{}",
            sim.port(),
            common::SECRET,
            dir.display(),
            bridge_yaml(broker, name, "fleet", "")
        );
        std::fs::write(&path, yaml).expect("config");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_allstar-nexus"))
            .args(["run", "--config"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the binary starts");
        Publisher(child)
    }

    /// SIGKILL: no orderly `offline`, only the broker's last will.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Alerts when a remote node turns stale (its daemon offline, or without its Asterisk).
const REMOTE_STALE_LUA: &str = r#"
nexus.on("node_updated", function(e)
  for _, f in ipairs(e.fields or {}) do
    local n = f == "state" and nexus.node(e.node)
    if n and n.origin and n.stale then
      nexus.alert { title = "Remote node stale", message = e.node .. " from " .. n.origin,
                    node = e.node, key = "remote-stale:" .. e.node }
    end
  end
end)
"#;

/// The dashboard's card of node 1999, as JavaScript for [`browser::Browser::wait_for`].
fn card_js(cond: &str) -> String {
    format!(
        "const c = document.querySelector('#nodes > [data-node=\"1999\"]'); return !!c && ({cond});"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_publishers_node_turns_stale_on_the_aggregators_websocket_and_dashboard() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    // A script on the aggregator raises an alert when a remote node turns stale
    // (docs/fleet.md has it).
    let scripts = common::temp_dir("agg-scripts");
    std::fs::write(scripts.join("remote_stale.lua"), REMOTE_STALE_LUA).expect("script");
    let agg = aggregator_with(
        &broker.url(),
        &format!("script_dirs: [{:?}]\n", scripts.display().to_string()),
    )
    .await;
    let store = agg.app.state.clone();
    let _show = Show((store.clone(), agg.app.metrics.clone()));
    // A client and the dashboard look before any publisher runs: nothing to show yet.
    let ws = WsLog::open(agg.http_addr).await;
    ws.wait("the empty snapshot", Duration::from_secs(5), |m| {
        m.first()
            .is_some_and(|v| v["type"] == "snapshot" && v["nodes"] == json!([]))
    })
    .await;
    let base = format!("http://{}", agg.http_addr);
    let page = if browser::available() {
        let b = browser::Browser::open(1280, 900).await;
        b.goto(&base).await;
        b.wait_for(
            "the empty page",
            Duration::from_secs(20),
            "return document.getElementById('live').textContent === 'live'",
        )
        .await;
        Some(b)
    } else {
        None
    };
    // The publisher starts: its node appears on the aggregator after the client's
    // snapshot, and is announced on the stream.
    let sim = common::sim_on_tcp(&["1999"]).await;
    sim.connect_link("1999", SimLink::allstar("2000", "10.0.0.2", Direction::Out));
    let mut north = Publisher::start(sim.addr(), &broker.url(), "north");
    ws.wait("1999 announced", Duration::from_secs(30), |_| {
        ws.events_after(0)
            .iter()
            .any(|e| node_updated(e, "1999", "state"))
    })
    .await;
    within(
        "1999 current with its link",
        Duration::from_secs(30),
        || {
            store.node("1999").is_some_and(|n| {
                !n.stale && n.links.iter().any(|l| l.node == "2000") && n.origin.is_some()
            })
        },
    )
    .await;
    // Its changes reach the same client, and the metrics.
    sim.set_tx_keyed("1999", true);
    ws.wait("1999's key", Duration::from_secs(10), |_| {
        ws.events_after(0)
            .iter()
            .any(|e| e["kind"] == "tx_keyed" && e["node"] == "1999")
    })
    .await;
    let keyed = || metric(&agg.app.metrics, "nexus_node_tx_keyed", &["node=\"1999\""]);
    within("the key in the metrics", Duration::from_secs(5), || {
        keyed() == 1.0
    })
    .await;
    if let Some(b) = &page {
        b.wait_for(
            "the card from north, live and keyed",
            Duration::from_secs(20),
            &card_js(
                "c.querySelector('.origin').textContent === 'from north' && \
                 !c.querySelector('.origin').hidden && c.classList.contains('on-air') && \
                 !c.classList.contains('stale') && \
                 c.querySelector('tr[data-link=\"2000\"]') !== null",
            ),
        )
        .await;
    }
    // The publisher loses its Asterisk: its node turns stale here too, announced; and
    // current again once the publisher polls it.
    let before = ws.all().len();
    sim.pause_listener().await;
    ws.wait("1999 stale with its AMI", Duration::from_secs(10), |_| {
        ws.events_after(before)
            .iter()
            .any(|e| node_updated(e, "1999", "state"))
    })
    .await;
    assert!(store.node("1999").is_some_and(|n| n.stale));
    // Lua sees it too: the script's alert reaches the WebSocket client.
    ws.wait("the script's alert", Duration::from_secs(10), |m| {
        m.iter().any(|v| {
            v["type"] == "alert"
                && v["alert"]["title"] == "Remote node stale"
                && v["alert"]["message"] == "1999 from north"
        })
    })
    .await;
    if let Some(b) = &page {
        b.wait_for(
            "the card stale",
            Duration::from_secs(20),
            &card_js("c.classList.contains('stale')"),
        )
        .await;
    }
    let before = ws.all().len();
    sim.resume_listener().await.expect("listen again");
    ws.wait("1999 current again", Duration::from_secs(20), |_| {
        ws.events_after(before)
            .iter()
            .any(|e| node_updated(e, "1999", "stale"))
    })
    .await;
    assert!(store.node("1999").is_some_and(|n| !n.stale));
    if let Some(b) = &page {
        b.wait_for(
            "the card current",
            Duration::from_secs(20),
            &card_js("!c.classList.contains('stale')"),
        )
        .await;
    }
    // SIGKILL: no goodbye; the broker sends the last will, `offline` (at once here, as the
    // kernel closes the socket; after 1.5 × the 5 s keepalive when a machine just goes
    // silent), and the node turns stale on the stream, in REST and in the metrics.
    let before = ws.all().len();
    north.kill();
    ws.wait("1999 stale on the stream", Duration::from_secs(30), |_| {
        ws.events_after(before)
            .iter()
            .any(|e| node_updated(e, "1999", "state"))
    })
    .await;
    let body: Value = reqwest::get(format!("{base}/api/nodes/1999"))
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(body["stale"], true, "{body}");
    assert_eq!(body["origin"], "north", "stale, not gone: {body}");
    let stale = metric(&agg.app.metrics, "nexus_node_stale", &["node=\"1999\""]);
    assert_eq!(stale, 1.0);
    if let Some(b) = &page {
        b.wait_for(
            "the card stale, its daemon offline",
            Duration::from_secs(20),
            &card_js(
                "c.classList.contains('stale') && \
                 c.querySelector('.ami-status').textContent.includes('north offline')",
            ),
        )
        .await;
        // The page's own AMI banner is about this daemon's sessions only.
        let banner = b
            .js(
                "return document.getElementById('ami-banner').hidden",
                json!([]),
            )
            .await;
        assert_eq!(banner, json!(true));
    }
    agg.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_publishes_and_aggregates_on_one_prefix_relays_no_remote_node() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let rec = Recorder::start(broker.port, &["fleet/#"]).await;
    let sim = common::sim_on_tcp(&["1999"]).await;
    let east = common::start_daemon(
        sim.addr(),
        &["1999"],
        &bridge_yaml(&broker.url(), "east", "fleet", ""),
    )
    .await;
    // The hub reads the prefix and publishes to it too (its own nodes, were it to have any).
    let hub = aggregator_with(
        &broker.url(),
        &bridge_yaml(&broker.url(), "hub", "fleet", ""),
    )
    .await;
    let store = hub.app.state.clone();
    let _show = Show((store.clone(), hub.app.metrics.clone()));
    within("1999 on the hub", Duration::from_secs(20), || {
        store
            .node("1999")
            .is_some_and(|n| n.origin.as_deref() == Some("east") && !n.stale)
    })
    .await;
    let mut changes = store.subscribe();
    sim.set_tx_keyed("1999", true);
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let p = tokio::time::timeout_at(until, changes.recv())
            .await
            .expect("the key on the hub's stream")
            .expect("open");
        if p.event.kind == ChangeKind::TxKeyed {
            break;
        }
    }
    // The hub's publisher has seen the key by the time it publishes a later change of its
    // own: after that, whatever it would relay is at the broker.
    hub.engine
        .publish(allstar_nexus::state::ChangeEvent::new(
            ChangeKind::AmiConnected,
            "marker",
            None,
        ))
        .await
        .expect("published");
    rec.wait("the hub's marker", 20, |m| {
        m.iter().any(|m| m.topic == "fleet/marker/_server/event")
    })
    .await;
    let theirs: Vec<String> = rec
        .msgs()
        .into_iter()
        .filter(|m| m.topic.contains("/1999/"))
        .filter_map(|m| serde_json::from_str::<Value>(&m.payload).ok())
        .filter_map(|v| v["origin"].as_str().map(str::to_owned))
        .collect();
    assert!(
        theirs.iter().any(|o| o == "east"),
        "east publishes 1999: {theirs:?}"
    );
    assert!(
        theirs.iter().all(|o| o == "east"),
        "only east publishes 1999: {theirs:?}"
    );
    assert!(
        store
            .node("1999")
            .is_some_and(|n| n.origin.as_deref() == Some("east") && n.tx_keyed),
        "the hub still shows east's node"
    );
    let _ = (east.shutdown.cancel(), hub.shutdown.cancel());
}
