//! `allstar-nexus demo` end to end, as a newcomer meets it: the simulated network, the
//! daemon with the bundled scripts, REST answering with real nodes, and the WebSocket
//! stream carrying a snapshot and then live changes.

use std::time::Duration;

use allstar_nexus::demo;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

async fn get(url: &str) -> Value {
    let r = reqwest::get(url).await.expect("request");
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_network_is_monitored_end_to_end() {
    let stop = CancellationToken::new();
    let d = demo::start("127.0.0.1:0".parse().expect("addr"), 7, stop.clone())
        .await
        .expect("demo starts");
    let base = format!("http://{}", d.daemon.http_addr);

    // Every node is polled and complete.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let nodes = loop {
        let v = get(&format!("{base}/api/nodes")).await;
        let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
        if nodes.len() == 3
            && nodes
                .iter()
                .all(|n| n["stale"] == false && n["last_poll"].is_string())
        {
            break nodes;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes never became fresh: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let hub = nodes
        .iter()
        .find(|n| n["node_id"] == "1999")
        .expect("node 1999");
    assert!(
        hub["links"].as_array().is_some_and(|l| l.len() >= 3),
        "{hub}"
    );
    let one = get(&format!("{base}/api/nodes/1999")).await;
    assert_eq!(one["node_id"], "1999");

    let health = get(&format!("{base}/api/health")).await;
    assert_eq!(health["status"], "ok");

    // The bundled plugins and examples loaded without error.
    let scripts = get(&format!("{base}/api/scripts")).await;
    let list = scripts["scripts"].as_array().cloned().unwrap_or_default();
    for name in ["alerts.lua", "adaptive_polling.lua", "voter.lua"] {
        let s = list
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {scripts}"));
        assert_eq!(s["status"], "running", "{s}");
    }

    // The stream: a snapshot first, then live changes from the simulated activity.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", d.daemon.http_addr))
        .await
        .expect("ws");
    let mut saw_snapshot = false;
    let mut events = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while events < 3 {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("live changes in time");
        let Some(Ok(Message::Text(text))) = msg else {
            continue;
        };
        let v: Value = serde_json::from_str(&text).expect("json message");
        match v["type"].as_str() {
            Some("snapshot") => {
                assert!(
                    !saw_snapshot && events == 0,
                    "the snapshot comes first, once"
                );
                saw_snapshot = true;
            }
            Some("event") => {
                assert!(saw_snapshot);
                events += 1;
            }
            _ => {}
        }
    }

    // Voter receivers come from plugins/voter.lua polling VoterStatus on node 2001.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = reqwest::get(format!("{base}/api/nodes/2001/voter"))
            .await
            .expect("request");
        if r.status().is_success() {
            let v: Value = r.json().await.expect("json");
            assert!(
                v["receivers"].as_array().is_some_and(|r| r.len() >= 3),
                "{v}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "voter data never published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    d.sim.shutdown();
}
