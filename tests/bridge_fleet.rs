//! Aggregation through a real Mosquitto (issue 15): two daemons, each watching its own
//! simulator, publish; a third takes their nodes from the broker (`sources:`) and shows
//! them, marked with their origin, with the right links and keying within 1 s; control
//! of a remote node is refused; a daemon going offline leaves its nodes stale, not gone.

mod bridge_support;
mod common;

use std::time::{Duration, Instant};

use allstar_nexus::control::ControlError;
use allstar_nexus::sim::SimLink;
use allstar_nexus::state::{ChangeKind, Direction};
use bridge_support::{Mosquitto, bridge_yaml};
use tokio_util::sync::CancellationToken;

async fn aggregator(url: &str) -> allstar_nexus::daemon::Running {
    let yaml = format!(
        "listen: 127.0.0.1:0\nami_enabled: false\nastdb_path: /nonexistent/astdb.txt\n\
         script_dirs: []\nstate_dir: {}\nsources:\n  - mqtt: {{url: '{url}', topic_prefix: fleet, client_id: agg}}\n",
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
