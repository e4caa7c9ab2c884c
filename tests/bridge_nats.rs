//! The NATS publisher against a real `nats-server` (issue 15): the same payloads as MQTT on
//! subjects with dots: state, every change, status `online` (and `offline` on stop).

mod bridge_support;
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use allstar_nexus::sim::SimLink;
use allstar_nexus::state::Direction;
use bridge_support::NatsServer;
use futures_util::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_events_and_status_reach_nats_with_dotted_subjects() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let client = async_nats::connect(server.url()).await.expect("connect");
    let mut sub = client.subscribe("t4.>").await.expect("subscribe");
    client.flush().await.expect("flush");
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let body = String::from_utf8_lossy(&m.payload).into_owned();
            sink.lock()
                .expect("lock")
                .push((m.subject.to_string(), body));
        }
    });
    let sim = common::sim_on_tcp(&["1999"]).await;
    let yaml = format!(
        "bridges:\n  nats:\n    url: {}\n    subject_prefix: t4\n    name: pubn\n",
        server.url()
    );
    let d = common::start_daemon(sim.addr(), &["1999"], &yaml).await;
    let has = |subject: &str, pred: &dyn Fn(&serde_json::Value, &str) -> bool| {
        seen.lock().expect("lock").iter().any(|(s, b)| {
            s == subject
                && pred(
                    &serde_json::from_str(b).unwrap_or(serde_json::Value::Null),
                    b,
                )
        })
    };
    common::wait_until("online", || {
        has("t4.daemon.pubn.status", &|_, b| b == "online")
    })
    .await;
    sim.connect_link("1999", SimLink::allstar("2000", "10.0.0.2", Direction::Out));
    sim.set_tx_keyed("1999", true);
    common::wait_until("the keyed state", || {
        has("t4.default.1999.state", &|v, _| {
            v["tx_keyed"] == true && v["origin"] == "pubn" && v["links"][0]["node"] == "2000"
        })
    })
    .await;
    common::wait_until("the tx_keyed event", || {
        has("t4.default.1999.event", &|v, _| {
            v["type"] == "event"
                && v["event"]["kind"] == "tx_keyed"
                && v["epoch"] == d.app.state.epoch()
        })
    })
    .await;
    let text = d.app.metrics.render();
    assert!(
        text.contains("nexus_bridge_connected{bridge=\"nats\"} 1"),
        "{text}"
    );
    d.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), d.done).await;
    common::wait_until("offline", || {
        has("t4.daemon.pubn.status", &|_, b| b == "offline")
    })
    .await;
}
