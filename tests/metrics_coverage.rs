//! Every catalogued metric is emitted: the demo scenario (simulator + daemon + bundled
//! scripts) is driven through keyups, links, a protocol error, a rate-limited burst and a
//! reconnect, `/metrics` is scraped, and any series of `src/metrics.rs` that never
//! appeared fails the test, except those in [`NEEDS_A_RARE_CONDITION`].

use std::collections::BTreeSet;
use std::time::Duration;

use allstar_nexus::alerts::{AlertRequest, Severity};
use allstar_nexus::demo;
use allstar_nexus::sim::SimLink;
use tokio_util::sync::CancellationToken;

/// Series that need a condition this scenario does not create, each with why.
const NEEDS_A_RARE_CONDITION: &[(&str, &str)] = &[
    (
        "nexus_ami_events_dropped_total",
        "the engine's 16,384-event queue must overflow",
    ),
    (
        "nexus_link_keyed",
        "per-link series are off unless metrics.per_link is set (the demo keeps the default)",
    ),
    ("nexus_link_keyups_total", "metrics.per_link only"),
    ("nexus_link_keyed_seconds_total", "metrics.per_link only"),
    (
        "nexus_websocket_resyncs_total",
        "a WebSocket client must fall behind its queue",
    ),
    (
        "nexus_script_errors_total",
        "a script must fail; the bundled ones do not",
    ),
    (
        "nexus_script_timeouts_total",
        "a script must exceed its time budget",
    ),
    (
        "nexus_script_queue_dropped_total",
        "the Lua inbox must overflow",
    ),
    (
        "nexus_alerts_suppressed_total",
        "an alert key must repeat within alerts.repeat_interval",
    ),
    (
        "nexus_alert_webhook_deliveries_total",
        "the demo configures no webhook",
    ),
    (
        "nexus_voter_voted_changes_total",
        "the voted receiver must change between two VoterStatus reads",
    ),
    (
        "nexus_script_reloads_total",
        "a script file must change (or SIGHUP)",
    ),
    // The broker bridges need a broker (tests/bridge_mqtt.rs, tests/bridge_fleet.rs).
    (
        "nexus_bridge_connected",
        "bridges.mqtt or sources: must be set",
    ),
    ("nexus_bridge_messages_published_total", "bridges.mqtt only"),
    (
        "nexus_bridge_messages_dropped_total",
        "the broker must be away",
    ),
    ("nexus_bridge_messages_received_total", "sources: only"),
    ("nexus_bridge_source_resyncs_total", "sources: and a gap"),
];

/// Every series name the catalogue defines.
fn catalogue() -> BTreeSet<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics.rs");
    let text = std::fs::read_to_string(path).expect("src/metrics.rs");
    text.split('"')
        .filter(|s| {
            s.starts_with("nexus_") && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        })
        .map(str::to_owned)
        .collect()
}

/// The series names present in a scrape (histogram parts folded into their name).
fn scraped(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
                .to_owned()
        })
        .collect()
}

fn missing(seen: &BTreeSet<String>) -> Vec<String> {
    catalogue()
        .into_iter()
        .filter(|n| !seen.contains(n))
        .filter(|n| !NEEDS_A_RARE_CONDITION.iter().any(|(a, _)| a == n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_catalogued_series_appears_after_the_demo_scenario() {
    let stop = CancellationToken::new();
    let d = demo::start("127.0.0.1:0".parse().expect("addr"), 11, stop.clone())
        .await
        .expect("demo starts");
    let base = format!("http://{}", d.daemon.http_addr);
    let app = d.daemon.app.clone();
    let (_ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", d.daemon.http_addr))
        .await
        .expect("websocket");
    let wait = |what: &'static str, cond: Box<dyn Fn() -> bool + Send>| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let a = app.clone();
    wait(
        "every node polled",
        Box::new(move || a.state.nodes().iter().all(|n| !n.stale)),
    )
    .await;

    // Local keys, a link keying, a new link and a lost one.
    for keyed in [true, false] {
        d.sim.set_tx_keyed("1999", keyed);
        d.sim.set_rx_keyed("1999", keyed);
        d.sim.set_link_keyed("1999", "2000", keyed);
    }
    d.sim.connect_link("1999", SimLink::no_channel("2777"));
    d.sim.disconnect_link("1999", "2777");
    // A VarSet whose keyed flag is neither 0 nor 1: a counted protocol error.
    d.sim.inject_raw(
        b"Event: VarSet\r\nPrivilege: dialplan,all\r\nChannel: SimpleUSB/1999\r\n\
          Variable: RPT_TXKEYED\r\nValue: 2\r\n\r\n",
    );
    // An alert, as a script raises it (the bundled plugins need minutes of silence).
    app.alerts.raise(AlertRequest {
        severity: Severity::Info,
        title: "metrics coverage".into(),
        message: "raised by the test".into(),
        node: Some("1999".into()),
        key: None,
        source: "metrics_coverage".into(),
    });
    // VoterStatus until the per-server budget refuses one.
    let mut refused = false;
    for _ in 0..200 {
        if app.control.voter_status("2001").await.is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused, "the action budget never ran out");
    // A link control attempt while no identity is configured: refused (403) and counted.
    let res = reqwest::Client::new()
        .post(format!("{base}/api/nodes/1999/links"))
        .json(&serde_json::json!({"target": "2003"}))
        .send()
        .await
        .expect("control request");
    assert_eq!(res.status().as_u16(), 403);
    // A request that is not HTTP: answered 400 and counted as a connection error.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(d.daemon.http_addr)
            .await
            .expect("tcp");
        s.write_all(b"NOT HTTP AT ALL\r\n\r\n")
            .await
            .expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
        assert!(answer.starts_with(b"HTTP/1.1 400"), "{answer:?}");
    }
    // A reconnect.
    d.sim.drop_sessions();
    let a = app.clone();
    wait(
        "the reconnect",
        Box::new(move || {
            a.metrics
                .changes
                .with_label_values(&["ami_disconnected"])
                .get()
                >= 1
                && a.state.servers().iter().all(|s| s.connected)
        }),
    )
    .await;

    // Scrape until nothing is missing (20 s bound).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = reqwest::get(format!("{base}/metrics"))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body");
        let gone = missing(&scraped(&text));
        if gone.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "catalogued series never emitted: {gone:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
}

#[test]
fn the_allow_list_names_only_catalogued_series() {
    let all = catalogue();
    assert!(all.len() > 30, "catalogue not read: {all:?}");
    for (name, _) in NEEDS_A_RARE_CONDITION {
        assert!(all.contains(*name), "{name} is not in the catalogue");
    }
}
