//! Every catalogued metric is emitted: the demo scenario (the demo's simulated network and
//! activity, the daemon with the demo's settings and bundled scripts) plus the opt-in and
//! failure paths that cost nothing to set up (per-link series, a webhook to a local
//! listener, an MQTT bridge whose broker is away, a script that does not load, a hook that
//! overruns its budget, a small Lua queue) is driven through keyups, links, a protocol
//! error, a repeated alert, a voter change, a foreign-epoch resume, a rate-limited burst
//! and a reconnect; `/metrics` is scraped, and any series of `src/metrics.rs` that never
//! appeared fails the test, except those in [`NEEDS_A_RARE_CONDITION`], each of which
//! another test must name.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use allstar_nexus::alerts::{AlertRequest, Severity};
use allstar_nexus::config::Config;
use allstar_nexus::daemon::{self, Running};
use allstar_nexus::sim::{self, SimConfig, SimHandle, SimLink, SimVoterReceiver};
use allstar_nexus::state::{ChangeEvent, ChangeKind};
use tokio_util::sync::CancellationToken;

/// Series that need a condition this scenario does not create, each with why.
/// Series that need a condition this scenario does not create, each with why. Each must be
/// named by another test in `tests/` (checked by `every_exemption_is_named_by_another_test`).
const NEEDS_A_RARE_CONDITION: &[(&str, &str)] = &[
    (
        "nexus_ami_events_dropped_total",
        "the engine's 16,384-event queue must overflow",
    ),
    // The sources need a broker that carries other daemons' nodes (tests/bridge_fleet.rs).
    ("nexus_bridge_messages_received_total", "sources: only"),
    ("nexus_bridge_source_resyncs_total", "sources: and a gap"),
];

/// Exemptions that no other test names yet (a ratchet: once a test names one, it must
/// leave this list, and nothing may join it).
const NO_TEST_YET: &[&str] = &["nexus_ami_events_dropped_total"];

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

/// The scenario's running parts; the temporary folder is removed on drop.
struct Scenario {
    sim: SimHandle,
    daemon: Running,
    dir: PathBuf,
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A webhook receiver answering 200 to every POST; returns its address.
async fn webhook_listener() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then Content-Length bytes of body.
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let len = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    addr
}

/// The demo's network and activity (seed 11) and the daemon with the demo's settings,
/// plus the cheap opt-in and failure paths.
async fn scenario(stop: &CancellationToken) -> Scenario {
    let sim_config = SimConfig {
        nodes: vec!["1999".into(), "2000".into(), "2001".into()],
        ..SimConfig::default()
    };
    let secret = sim_config.secret.clone();
    let sim = sim::start("127.0.0.1:0".parse().expect("addr"), sim_config)
        .await
        .expect("simulator");
    sim::demo_network(&sim);
    sim::spawn_activity(sim.clone(), 11, stop.child_token());
    let dir = std::env::temp_dir().join(format!("nexus-metrics-coverage-{}", std::process::id()));
    let scripts = dir.join("scripts");
    std::fs::create_dir_all(&scripts).expect("script dir");
    // A script that does not load: a counted script error and a failed reload.
    std::fs::write(scripts.join("broken.lua"), "this is not lua\n").expect("write");
    // A hook that never returns: timeouts (and errors), and a Lua queue that overflows.
    std::fs::write(
        scripts.join("spin.lua"),
        "nexus.on(\"tx_keyed\", function(e) while true do end end)\n",
    )
    .expect("write");
    let hook = webhook_listener().await;
    let yaml = format!(
        "state_dir: {:?}\nlisten: 127.0.0.1:0\n\
         ami_host: \"{}\"\nami_port: {}\nami_username: admin\nami_password: \"{secret}\"\n\
         ami_retry_interval: 2s\nami_retry_max: 10s\npolling_interval_seconds: 15\n\
         nodes:\n  - node_id: 1999\n  - node_id: 2000\n  - node_id: 2001\n\
         script_dirs: [{:?}]\nplugins_builtin: true\nastdb_path: /nonexistent/astdb.txt\n\
         alerts:\n  repeat_interval: 30s\n\
         plugins:\n  alerts:\n    stuck_tx_minutes: 1\n    ami_down_seconds: 10\n    watch_nodes: [2002]\n\
         metrics:\n  per_link: true\n\
         lua:\n  callback_budget: 20ms\n  queue: 8\n  max_consecutive_errors: 1000\n\
         alert_webhooks:\n  - url: http://{hook}/alerts\n    retries: 0\n    min_severity: info\n\
         bridges:\n  mqtt:\n    url: mqtt://127.0.0.1:{}\n    queue: 16\n",
        dir.join("state").display().to_string(),
        sim.addr().ip(),
        sim.addr().port(),
        scripts.display().to_string(),
        closed_port(),
    );
    let config = Config::parse(&yaml, "metrics_coverage", None).expect("config");
    let daemon = daemon::start(config, stop.clone())
        .await
        .expect("daemon starts");
    Scenario { sim, daemon, dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_catalogued_series_appears_after_the_demo_scenario() {
    let stop = CancellationToken::new();
    let d = scenario(&stop).await;
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
    // An alert, as a script raises it (the bundled plugins need minutes of silence), to the
    // webhook; raised again with the same key, it is suppressed.
    for _ in 0..2 {
        app.alerts.raise(AlertRequest {
            severity: Severity::Info,
            title: "metrics coverage".into(),
            message: "raised by the test".into(),
            node: Some("1999".into()),
            key: Some("metrics_coverage".into()),
            source: "metrics_coverage".into(),
        });
    }
    // A burst of changes: the spinning hook holds the Lua thread, its 8-slot queue
    // overflows, and the MQTT bridge's 16-message queue (no broker) overflows too.
    for _ in 0..200 {
        let e = ChangeEvent::new(ChangeKind::TxKeyed, "default", Some("1999"));
        d.daemon.engine.publish(e).await.expect("publish");
    }
    // A resume from another run: a resync (reason epoch_changed).
    let _foreign = tokio_tungstenite::connect_async(format!(
        "ws://{}/ws?since=1&epoch=another-run",
        d.daemon.http_addr
    ))
    .await
    .expect("websocket");
    // The voted receiver changes between two VoterStatus reads.
    for (a, b) in [(200, 50), (10, 220)] {
        d.sim.set_voter(
            "2001",
            vec![
                SimVoterReceiver::new("north", "10.0.0.1:1667", a),
                SimVoterReceiver::new("south", "10.0.0.2:1667", b),
            ],
        );
        app.control.voter_status("2001").await.expect("VoterStatus");
    }
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

/// An exemption is only as good as the test that covers the series instead: each must be
/// named (as a string) by another file in `tests/`.
#[test]
fn every_exemption_is_named_by_another_test() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut texts = Vec::new();
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("tests/").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs")
                && p.file_name().is_some_and(|n| n != "metrics_coverage.rs")
            {
                texts.push(std::fs::read_to_string(&p).expect("read a test"));
            }
        }
    }
    let unnamed: Vec<&str> = NEEDS_A_RARE_CONDITION
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !texts.iter().any(|t| t.contains(&format!("\"{n}"))))
        .collect();
    assert_eq!(
        unnamed, NO_TEST_YET,
        "the series exempt from the scenario and named by no other test"
    );
}
