//! End-to-end tests of the HTTP surface: real HTTP requests (reqwest) and real WebSocket
//! clients (tokio-tungstenite) against the daemon (`daemon::start`) on port 0.
//!
//! The AMI server it points at is a closed port, so the supervisor reports "connection
//! refused" (health shows it) and nothing ever connects. Changes are injected through the
//! state engine (`EngineSender::publish`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allstar_nexus::alerts::{AlertRequest, Severity};
use allstar_nexus::app::App;
use allstar_nexus::config::Config;
use allstar_nexus::state::{ChangeEvent, ChangeKind, EngineSender, Published};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const PASSWORD: &str = "s3cret-AMI-pw-never-shown";

/// A running daemon (`daemon::start`) and the parts the tests poke.
struct Harness {
    addr: SocketAddr,
    app: App,
    /// Inputs to the state engine: the tests' changes go in here.
    engine: EngineSender,
    shutdown: CancellationToken,
    /// Ends when the daemon has stopped.
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The sequence number once the daemon is ready (the AMI server's first, failed,
    /// status is published as `ami_disconnected`); the tests' changes come after it.
    base: u64,
    _state: TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("nexus-http-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr").port()
}

/// Starts the daemon with the given `websocket:` settings (YAML, indented by 2) and a
/// replay buffer of `replay` changes.
async fn start(websocket: &str, replay: usize) -> Harness {
    start_with(websocket, "", replay, Duration::from_secs(5)).await
}

/// [`start`] with an `http:` section (YAML, indented by 2) and a shutdown grace period.
async fn start_with(websocket: &str, http: &str, replay: usize, grace: Duration) -> Harness {
    start_full(websocket, http, "", replay, grace).await
}

/// [`start_with`] plus `extra` top-level YAML. No scripts, no history, no astdb; the AMI
/// server is a closed port.
async fn start_full(
    websocket: &str,
    http: &str,
    extra: &str,
    replay: usize,
    grace: Duration,
) -> Harness {
    let port = closed_port().await;
    let http = if http.is_empty() {
        String::new()
    } else {
        format!("http:\n{http}\n")
    };
    let state = TempDir::new();
    let yaml = format!(
        "listen: 127.0.0.1:0\nami_host: 127.0.0.1\nami_port: {port}\nami_username: admin\nami_password: {PASSWORD}\n\
         ami_retry_interval: 30s\nami_retry_max: 60s\nami_connect_timeout: 1s\n\
         astdb_path: /nonexistent/astdb.txt\nscript_dirs: []\nstate_dir: {:?}\nhistory:\n  enabled: false\n\
         shutdown_grace: {}ms\nnodes:\n  - node_id: 1999\n  - node_id: 2000\n\
         websocket:\n{websocket}  replay_buffer: {replay}\n{http}{extra}",
        state.0.display().to_string(),
        grace.as_millis()
    );
    let config = Config::parse(&yaml, "test", None).expect("test config is valid");
    let shutdown = CancellationToken::new();
    let running = allstar_nexus::daemon::start(config, shutdown.clone())
        .await
        .expect("daemon starts");
    let app = running.app;
    // Ready once the refused first attempt is in the model (and published).
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.state.servers().is_empty() {
        assert!(Instant::now() < deadline, "no AMI status in time");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Harness {
        addr: running.http_addr,
        base: app.state.seq(),
        app,
        engine: running.engine,
        shutdown,
        server: running.done,
        _state: state,
    }
}

const WS_DEFAULT: &str = "  heartbeat: 60s\n";

impl Harness {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The `n`th change the test publishes (sequence numbers after [`Harness::base`]).
    fn seq(&self, n: u64) -> u64 {
        self.base + n
    }

    /// Publishes a change of node 1999 through the state engine.
    async fn publish(&self, kind: ChangeKind) -> Arc<Published> {
        let ev = ChangeEvent::new(kind, "default", Some("1999"));
        self.engine.publish(ev).await.expect("the engine publishes")
    }

    /// A change with a large payload (fills sockets quickly).
    async fn publish_big(&self, bytes: usize) -> Arc<Published> {
        let mut ev = ChangeEvent::new(ChangeKind::AmiDisconnected, "default", None);
        ev.error = Some("x".repeat(bytes));
        self.engine.publish(ev).await.expect("the engine publishes")
    }

    async fn ws(&self, query: &str) -> Ws {
        self.ws_with_origin(query, None)
            .await
            .expect("WebSocket handshake")
    }

    async fn ws_with_origin(
        &self,
        query: &str,
        origin: Option<&str>,
    ) -> Result<Ws, tungstenite::Error> {
        let mut req = format!("ws://{}/ws{query}", self.addr)
            .into_client_request()
            .expect("request");
        if let Some(o) = origin {
            req.headers_mut()
                .insert("origin", o.parse().expect("header"));
        }
        tokio_tungstenite::connect_async(req)
            .await
            .map(|(ws, _)| ws)
    }

    fn resyncs(&self, reason: &str) -> u64 {
        self.app
            .metrics
            .ws_resyncs
            .with_label_values(&[reason])
            .get()
    }
}

/// The next JSON message (control frames skipped), within `wait`.
async fn next_json_within(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        match msg {
            Ok(Message::Text(t)) => {
                return Some(serde_json::from_str(t.as_str()).expect("server sends JSON"));
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    next_json_within(ws, Duration::from_secs(5))
        .await
        .expect("a message within 5 s")
}

/// The next `event` message, skipping heartbeats.
async fn next_event(ws: &mut Ws) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] != "heartbeat" {
            return v;
        }
    }
}

fn http_status(e: &tungstenite::Error) -> Option<(u16, Value)> {
    match e {
        tungstenite::Error::Http(res) => {
            let body = res
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Some((res.status().as_u16(), body))
        }
        _ => None,
    }
}

async fn get_json(url: &str) -> (u16, Value) {
    let res = reqwest::get(url).await.expect("request");
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        ct.starts_with("application/json"),
        "{url}: content-type {ct}"
    );
    (status, res.json().await.expect("JSON body"))
}

fn assert_error(v: &Value, contains: &str) {
    let msg = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {v}"));
    assert!(
        msg.contains(contains),
        "error {msg:?} should mention {contains:?}"
    );
    assert_eq!(
        v.as_object().map(|o| o.len()),
        Some(1),
        "error body is only {{\"error\": ...}}: {v}"
    );
}

#[tokio::test]
async fn snapshot_then_events_in_order() {
    let h = start(WS_DEFAULT, 1024).await;
    h.publish(ChangeKind::TxKeyed).await;
    let mut ws = h.ws("").await;
    let snap = next_json(&mut ws).await;
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["seq"], h.seq(1));
    assert_eq!(snap["reason"], "connect");
    assert!(snap["nodes"].is_array());

    let mut published = Vec::new();
    for i in 0..50 {
        published.push(
            h.publish(if i % 2 == 0 {
                ChangeKind::TxUnkeyed
            } else {
                ChangeKind::TxKeyed
            })
            .await,
        );
    }
    for p in &published {
        let raw = loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => break t.to_string(),
                Ok(Some(Ok(_))) => continue,
                other => panic!("expected an event, got {other:?}"),
            }
        };
        // The change's JSON is embedded verbatim.
        assert!(raw.contains(&p.json), "frame {raw} should embed {}", p.json);
        let v: Value = serde_json::from_str(&raw).expect("JSON");
        assert_eq!(v["type"], "event");
        assert_eq!(v["seq"], p.event.seq);
        assert_eq!(v["event"]["seq"], p.event.seq);
        assert_eq!(v["event"]["kind"], p.event.kind.as_str());
    }
    assert_eq!(published.last().map(|p| p.event.seq), Some(h.seq(51)));
}

#[tokio::test]
async fn resume_after_a_gap_gets_exactly_the_missed_events() {
    let h = start(WS_DEFAULT, 1024).await;
    let mut ws = h.ws("").await;
    assert_eq!(next_json(&mut ws).await["type"], "snapshot");
    for _ in 0..3 {
        h.publish(ChangeKind::RxKeyed).await;
    }
    let mut last = 0;
    for _ in 0..3 {
        let v = next_event(&mut ws).await;
        last = v["seq"].as_u64().expect("seq");
    }
    assert_eq!(last, h.seq(3));
    drop(ws);

    let mut missed = Vec::new();
    for _ in 0..5 {
        missed.push(h.publish(ChangeKind::RxUnkeyed).await.event.seq);
    }
    let mut ws = h.ws(&format!("?since={last}")).await;
    for want in &missed {
        let v = next_event(&mut ws).await;
        assert_eq!(
            v["type"], "event",
            "a resume replays events, no snapshot: {v}"
        );
        assert_eq!(v["seq"], *want);
    }
    assert!(
        next_json_within(&mut ws, Duration::from_millis(300))
            .await
            .is_none(),
        "nothing beyond the missed events"
    );
    let live = h.publish(ChangeKind::TxKeyed).await;
    assert_eq!(next_event(&mut ws).await["seq"], live.event.seq);

    // Resuming exactly at the current point replays nothing.
    let mut ws = h.ws(&format!("?since={}", live.event.seq)).await;
    assert!(
        next_json_within(&mut ws, Duration::from_millis(300))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn since_older_than_the_buffer_gets_a_snapshot() {
    let h = start(WS_DEFAULT, 8).await;
    for _ in 0..20 {
        h.publish(ChangeKind::TxKeyed).await;
    }
    let mut ws = h.ws(&format!("?since={}", h.seq(2))).await;
    let v = next_json(&mut ws).await;
    assert_eq!(
        (v["type"].as_str(), v["seq"].as_u64(), v["reason"].as_str()),
        (Some("snapshot"), Some(h.seq(20)), Some("replay_miss"))
    );
    // Inside the buffer: replay.
    let mut ws = h.ws(&format!("?since={}", h.seq(15))).await;
    assert_eq!(next_json(&mut ws).await["seq"], h.seq(16));
    // From the future (the daemon restarted): snapshot.
    let mut ws = h.ws("?since=999").await;
    assert_eq!(next_json(&mut ws).await["type"], "snapshot");
    assert_eq!(h.resyncs("replay_miss"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_never_delays_another_and_is_dropped() {
    // heartbeat 500ms → a client whose queue stays full for 1 s is dropped. Bursts of 16
    // fit in a queue of 64: a client that keeps reading is never resynced.
    let h = start("  heartbeat: 500ms\n  client_queue: 64\n", 64).await;
    let mut stalled = h.ws("").await;
    let mut fast = h.ws("").await;
    assert_eq!(next_json(&mut fast).await["type"], "snapshot");
    // `stalled` is never read from here on: its socket fills, then its queue.

    let sent: Arc<Mutex<BTreeMap<u64, Instant>>> = Arc::default();
    let (done_tx, mut done_rx) =
        tokio::sync::watch::channel::<(u64, Duration)>((0, Duration::ZERO));
    let reader = {
        let sent = sent.clone();
        let first = h.seq(1);
        tokio::spawn(async move {
            let mut expect = first;
            let mut worst = Duration::ZERO;
            loop {
                let Some(v) = next_json_within(&mut fast, Duration::from_secs(10)).await else {
                    break;
                };
                match v["type"].as_str() {
                    Some("heartbeat") => continue,
                    Some("event") => {}
                    other => panic!("the fast client got {other:?}: it must never be resynced"),
                }
                let seq = v["seq"].as_u64().expect("seq");
                assert_eq!(
                    seq, expect,
                    "the fast client receives every event, in order"
                );
                expect += 1;
                if let Some(t) = sent.lock().expect("lock").get(&seq) {
                    worst = worst.max(t.elapsed());
                }
                done_tx.send_replace((seq, worst));
            }
        })
    };

    let mut last = 0;
    let started = Instant::now();
    while h.resyncs("dropped") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the stalled client was never dropped"
        );
        for _ in 0..16 {
            let p = h.publish_big(8 * 1024).await;
            sent.lock()
                .expect("lock")
                .insert(p.event.seq, Instant::now());
            last = p.event.seq;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        h.resyncs("slow") >= 1,
        "the stalled client was first marked for resync"
    );
    // The fast client has everything, promptly.
    let _ = tokio::time::timeout(
        Duration::from_secs(20),
        done_rx.wait_for(|(seq, _)| *seq >= last),
    )
    .await;
    let (got, worst) = *done_rx.borrow();
    assert_eq!(got, last, "the fast client received every event");
    // Order and completeness are this test's business; latency is measured by
    // `cargo bench --bench ws_fanout` (a wall-clock bound is fragile on a shared, loaded machine).
    println!(
        "published {last} events of 8 KiB; the fast client's worst delivery latency: {worst:?}"
    );

    // The stalled client's connection ends (after what was already in its buffers).
    let mut n = 0;
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(m)) = stalled.next().await {
            if m.is_text() {
                n += 1;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the dropped client's stream ends");
    assert!(
        (n as u64) < last - h.base,
        "the stalled client did not get everything ({n} of {last})"
    );
    // The dropped client's slot is freed once its task ends: wait for that, with a deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.app.metrics.ws_clients.get() != 1 {
        assert!(
            Instant::now() < deadline,
            "the dropped client is still counted: {} clients",
            h.app.metrics.ws_clients.get()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_falls_behind_then_reads_again_is_resynced() {
    let h = start("  heartbeat: 5s\n  client_queue: 8\n", 64).await;
    let mut slow = h.ws("").await;
    assert_eq!(next_json(&mut slow).await["type"], "snapshot");
    let started = Instant::now();
    while h.resyncs("slow") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the slow client was never marked for resync"
        );
        for _ in 0..50 {
            h.publish_big(8 * 1024).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Read again: buffered events, then a resync snapshot, then live events.
    let mut prev = 0;
    let snapshot_seq = loop {
        let v = next_json(&mut slow).await;
        let seq = v["seq"].as_u64().expect("seq");
        assert!(seq >= prev, "seq never goes back ({prev} → {seq})");
        prev = seq;
        if v["type"] == "snapshot" {
            assert_eq!(v["reason"], "resync");
            break seq;
        }
        assert_eq!(v["type"], "event");
    };
    // From the snapshot on, events follow it without a gap (a later snapshot may only
    // move the cursor forward) up to a change published now.
    let live = h.publish(ChangeKind::TxKeyed).await;
    let mut cursor = snapshot_seq;
    while cursor < live.event.seq {
        let v = next_event(&mut slow).await;
        let seq = v["seq"].as_u64().expect("seq");
        match v["type"].as_str() {
            Some("event") => assert_eq!(seq, cursor + 1, "no gap after a resync snapshot"),
            Some("snapshot") => assert!(seq >= cursor),
            other => panic!("unexpected {other:?}"),
        }
        cursor = seq;
    }
    assert_eq!(cursor, live.event.seq);
    assert_eq!(h.resyncs("dropped"), 0);
}

#[tokio::test]
async fn health_and_metrics_answer_fast_while_ami_is_down() {
    let h = start(WS_DEFAULT, 64).await;
    // Wait for the supervisor's first (refused) attempt.
    let ami = h
        .app
        .control
        .servers()
        .get("default")
        .expect("server")
        .clone();
    let mut st = ami.watch_status();
    tokio::time::timeout(
        Duration::from_secs(5),
        st.wait_for(|s| s.last_error.is_some()),
    )
    .await
    .expect("the refused attempt is reported")
    .expect("status");
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let t = Instant::now();
        let res = client
            .get(h.url("/api/health"))
            .send()
            .await
            .expect("health");
        let status = res.status().as_u16();
        let text = res.text().await.expect("body");
        let took = t.elapsed();
        assert_eq!(status, 200);
        assert!(took < Duration::from_millis(50), "health took {took:?}");
        assert!(
            !text.contains(PASSWORD),
            "health must not show the AMI password"
        );
        let v: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(v["status"], "degraded");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        assert!(v["uptime_seconds"].is_u64());
        let s = &v["servers"][0];
        assert_eq!(s["name"], "default");
        assert_eq!(s["connected"], false);
        assert_eq!(s["state"], "disconnected");
        assert_eq!(s["last_error_kind"], "refused");
        assert!(
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("refused")),
            "plain words: {s}"
        );
        assert!(
            s["since"].as_str().is_some_and(|t| t.ends_with('Z')),
            "RFC 3339: {s}"
        );
        assert!(v["summary"].as_str().is_some_and(|m| m.contains("default")));

        let t = Instant::now();
        let res = client.get(h.url("/metrics")).send().await.expect("metrics");
        let ct = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = res.text().await.expect("body");
        let took = t.elapsed();
        assert!(took < Duration::from_millis(50), "metrics took {took:?}");
        assert!(
            ct.starts_with("text/plain; version=0.0.4"),
            "content type {ct}"
        );
        assert!(
            text.contains("nexus_ami_up{server=\"default\"} 0"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn errors_are_json_with_the_right_status() {
    let h = start(WS_DEFAULT, 64).await;
    let client = reqwest::Client::new();

    let (s, v) = get_json(&h.url("/nope")).await;
    assert_eq!(s, 404);
    assert_error(&v, "no such route");
    let (s, v) = get_json(&h.url("/api/nodes/424242")).await;
    assert_eq!(s, 404);
    assert_error(&v, "unknown node");
    // The engine registers every configured node before HTTP serves: never polled, its
    // server down, it is there and stale.
    let (s, v) = get_json(&h.url("/api/nodes/1999")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["node_id"].as_str(), v["stale"].as_bool()),
        (Some("1999"), Some(true)),
        "{v}"
    );
    let (s, v) = get_json(&h.url("/api/nodes/1999/voter")).await;
    assert_eq!(s, 404);
    assert_error(&v, "voter plugin");
    let (s, v) = get_json(&h.url("/api/nodes/424242/voter")).await;
    assert_eq!(s, 404);
    assert_error(&v, "unknown node");

    let res = client
        .delete(h.url("/api/nodes"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 405);
    assert_eq!(
        res.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("GET")
    );
    assert_error(&res.json().await.expect("json"), "not allowed");
    let (s, v) = get_json(&h.url("/api/nodes/1999/poll")).await;
    assert_eq!(s, 405);
    assert_error(&v, "POST");
    let res = client
        .post(h.url("/metrics"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 405);

    for bad in ["abc", "0", "-1", "99999999"] {
        let (s, v) = get_json(&h.url(&format!("/api/alerts?limit={bad}"))).await;
        assert_eq!(s, 400, "limit={bad}");
        assert_error(&v, "limit");
    }
    let (s, v) = get_json(&h.url("/api/alerts?limit=5")).await;
    assert_eq!(s, 200);
    assert!(v["alerts"].is_array());

    let (s, v) = get_json(&h.url("/ws")).await;
    assert_eq!(s, 400, "a plain GET on /ws");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("WebSocket")),
        "{v}"
    );
    let err = h
        .ws_with_origin("?since=yesterday", None)
        .await
        .expect_err("refused");
    let (s, v) = http_status(&err).expect("an HTTP answer");
    assert_eq!(s, 400);
    assert_error(&v, "since");

    let res = client
        .post(h.url("/api/nodes/1999/poll"))
        .body(vec![b'x'; 1 << 20])
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 413);
    assert_error(&res.json().await.expect("json"), "too large");

    let res = client
        .post(h.url("/api/nodes/424242/poll"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 404);
    let res = client
        .post(h.url("/api/nodes/1999/poll"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 202);
    let v: Value = res.json().await.expect("json");
    assert_eq!(
        (v["status"].as_str(), v["node"].as_str()),
        (Some("accepted"), Some("1999"))
    );

    // No CORS by default.
    let res = client
        .get(h.url("/api/health"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("request");
    assert!(res.headers().get("access-control-allow-origin").is_none());

    // The request counter uses route templates, not raw paths.
    let text = reqwest::get(h.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(
        text.contains("nexus_http_requests_total{route=\"/api/nodes/{id}\",status=\"4xx\"}"),
        "{text}"
    );
    assert!(text.contains("route=\"unmatched\""));
    assert!(!text.contains("424242"));
}

#[tokio::test]
async fn read_routes_and_openapi() {
    let h = start(WS_DEFAULT, 64).await;
    h.publish(ChangeKind::TxKeyed).await;
    let (s, v) = get_json(&h.url("/api/nodes")).await;
    assert_eq!(s, 200);
    assert_eq!(v["seq"], h.seq(1));
    assert!(v["nodes"].is_array());
    let (s, v) = get_json(&h.url("/api/scripts")).await;
    assert_eq!(s, 200);
    assert!(v["scripts"].is_array());

    let (s, doc) = get_json(&h.url("/api/openapi.json")).await;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    for path in [
        "/api/health",
        "/api/nodes",
        "/api/nodes/{id}",
        "/api/nodes/{id}/poll",
        "/ws",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }

    // No secret anywhere.
    for path in [
        "/api/health",
        "/api/nodes",
        "/api/scripts",
        "/api/alerts",
        "/api/openapi.json",
        "/metrics",
        "/api/nodes/1999",
    ] {
        let text = reqwest::get(h.url(path))
            .await
            .expect("request")
            .text()
            .await
            .expect("body");
        assert!(!text.contains(PASSWORD), "{path} shows the AMI password");
    }
}

#[tokio::test]
async fn origin_check() {
    let h = start(
        "  heartbeat: 60s\n  allowed_origins: [\"https://dash.example.org\"]\n",
        64,
    )
    .await;
    let err = h
        .ws_with_origin("", Some("https://evil.example"))
        .await
        .expect_err("refused");
    let (s, v) = http_status(&err).expect("an HTTP answer");
    assert_eq!(s, 403);
    assert_error(&v, "not allowed");
    let err = h
        .ws_with_origin("", Some("null"))
        .await
        .expect_err("refused");
    assert_eq!(http_status(&err).map(|x| x.0), Some(403));

    for ok in [
        None,
        Some("https://dash.example.org"),
        Some(&*format!("http://{}", h.addr)),
    ] {
        let mut ws = h
            .ws_with_origin("", ok)
            .await
            .unwrap_or_else(|e| panic!("origin {ok:?} refused: {e}"));
        assert_eq!(next_json(&mut ws).await["type"], "snapshot");
    }
    // The same check guards the POST route.
    let client = reqwest::Client::new();
    let res = client
        .post(h.url("/api/nodes/1999/poll"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status().as_u16(), 403);
    let res = client
        .post(h.url("/api/nodes/1999/poll"))
        .header("origin", "https://dash.example.org")
        .send()
        .await
        .expect("post");
    assert_eq!(res.status().as_u16(), 202);
}

#[tokio::test]
async fn client_cap() {
    let h = start("  heartbeat: 60s\n  max_clients: 2\n", 64).await;
    let mut a = h.ws("").await;
    let mut b = h.ws("").await;
    next_json(&mut a).await;
    next_json(&mut b).await;
    let err = h
        .ws_with_origin("", None)
        .await
        .expect_err("third client refused");
    match &err {
        tungstenite::Error::Http(res) => assert!(res.headers().contains_key("retry-after")),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
    let (s, v) = http_status(&err).expect("HTTP");
    assert_eq!(s, 503);
    assert_error(&v, "max_clients");
    let (_, health) = get_json(&h.url("/api/health")).await;
    assert_eq!(health["websocket_clients"], 2);

    a.close(None).await.expect("close");
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.app.metrics.ws_clients.get() > 1 {
        assert!(
            Instant::now() < deadline,
            "the closed client's slot was not released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = h.ws("").await;
    assert_eq!(next_json(&mut c).await["type"], "snapshot");
}

#[tokio::test]
async fn heartbeats_alerts_ping_and_oversized_messages() {
    let h = start("  heartbeat: 200ms\n  max_message_bytes: 1024\n", 64).await;
    h.publish(ChangeKind::TxKeyed).await;
    let mut ws = h.ws("").await;
    assert_eq!(next_json(&mut ws).await["seq"], h.seq(1));
    let t = Instant::now();
    let hb = next_json(&mut ws).await;
    assert_eq!(
        (hb["type"].as_str(), hb["seq"].as_u64()),
        (Some("heartbeat"), Some(h.seq(1)))
    );
    assert!(t.elapsed() < Duration::from_secs(2));

    h.app.alerts.raise(AlertRequest {
        severity: Severity::Warning,
        title: "TX stuck".into(),
        message: "node 1999 has transmitted for 10 minutes".into(),
        node: Some("1999".into()),
        key: None,
        source: "test".into(),
    });
    let alert = loop {
        let v = next_json(&mut ws).await;
        if v["type"] == "alert" {
            break v;
        }
    };
    assert_eq!(alert["seq"], h.seq(1));
    assert_eq!(alert["alert"]["title"], "TX stuck");
    assert_eq!(alert["alert"]["severity"], "warning");
    let (_, v) = get_json(&h.url("/api/alerts?limit=1")).await;
    assert_eq!(v["alerts"][0]["title"], "TX stuck");

    ws.send(Message::text(r#"{"type":"ping"}"#))
        .await
        .expect("send");
    let pong = loop {
        let v = next_json(&mut ws).await;
        if v["type"] == "pong" {
            break v;
        }
    };
    assert_eq!(pong["seq"], h.seq(1));
    ws.send(Message::text("not json at all"))
        .await
        .expect("ignored text");

    ws.send(Message::text("x".repeat(4096)))
        .await
        .expect("send");
    let code = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Close(Some(f))) => return Some(u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("the connection closes");
    assert_eq!(code, Some(1009), "closed as message too big");
}

/// Where promtool is. Missing, the check is skipped with a note on a workstation, and is
/// a failure under CI (`CI` set), where a skipped check would look like a passed one.
fn promtool(check: &str) -> Option<&'static str> {
    promtool_among(
        &["/usr/bin/promtool", "/usr/local/bin/promtool"],
        std::env::var_os("CI").is_some(),
        check,
    )
}

fn promtool_among(places: &[&'static str], ci: bool, check: &str) -> Option<&'static str> {
    let found = places
        .iter()
        .copied()
        .find(|p| std::path::Path::new(p).exists());
    if found.is_none() {
        assert!(
            !ci,
            "promtool is missing under CI: {check} cannot run (install it: apt-get install prometheus)"
        );
        println!(
            "NOTE: promtool is not installed; skipping {check} (CI installs it: apt-get install prometheus)"
        );
    }
    found
}

#[test]
#[should_panic(expected = "promtool is missing under CI")]
fn a_missing_promtool_fails_under_ci() {
    promtool_among(&["/nonexistent/promtool"], true, "the check");
}

#[test]
fn a_missing_promtool_is_a_note_outside_ci() {
    assert_eq!(
        promtool_among(&["/nonexistent/promtool"], false, "the check"),
        None
    );
}

#[tokio::test]
async fn promtool_accepts_the_metrics() {
    let h = start(WS_DEFAULT, 64).await;
    // Touch a few series so that every kind (counter, gauge, histogram) is present.
    let _ws = h.ws("").await;
    let _ = reqwest::get(h.url("/api/health")).await;
    let _ = reqwest::get(h.url("/nope")).await;
    h.app
        .metrics
        .poll_duration
        .with_label_values(&["1999"])
        .observe(0.02);
    h.app.metrics.change_latency.observe(0.0001);
    h.app
        .metrics
        .node_tx_seconds
        .with_label_values(&["1999"])
        .inc_by(1.5);
    let text = reqwest::get(h.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    let Some(promtool) = promtool("`promtool check metrics`") else {
        return;
    };
    use std::io::Write as _;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{report}\n--- metrics ---\n{text}"
    );
    println!(
        "promtool check metrics: ok ({} series lines){}",
        text.lines().filter(|l| !l.starts_with('#')).count(),
        if report.trim().is_empty() {
            String::new()
        } else {
            format!("\n{report}")
        }
    );
}

#[tokio::test]
async fn shutdown_says_goodbye_and_returns() {
    let h = start(WS_DEFAULT, 64).await;
    let mut ws = h.ws("").await;
    next_json(&mut ws).await;
    h.shutdown.cancel();
    let code = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(m) = ws.next().await {
            if let Ok(Message::Close(f)) = m {
                return f.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("closed in time");
    assert_eq!(code, Some(1001));
    let mut h = h;
    let res = tokio::time::timeout(Duration::from_secs(10), &mut h.server)
        .await
        .expect("serve returns")
        .expect("join");
    assert!(res.is_ok());
}

/// `nexus_*` names defined in `src/metrics.rs`.
fn catalogue() -> Vec<String> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics.rs"))
        .expect("src/metrics.rs");
    let mut names: Vec<String> = src
        .split('"')
        .filter(|s| {
            s.starts_with("nexus_")
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn docs_cover_every_route_and_series() {
    let root = env!("CARGO_MANIFEST_DIR");
    let api = std::fs::read_to_string(format!("{root}/docs/api.md")).expect("docs/api.md");
    for r in allstar_nexus::http::ROUTES {
        assert!(
            api.contains(&format!("`{} {}", r.method, r.path))
                || api.contains(&format!("| {} | `{}`", r.method, r.path)),
            "docs/api.md misses {} {}",
            r.method,
            r.path
        );
    }
    let metrics =
        std::fs::read_to_string(format!("{root}/docs/metrics.md")).expect("docs/metrics.md");
    let names = catalogue();
    assert!(
        names.len() > 30,
        "the catalogue was read ({} names)",
        names.len()
    );
    for n in &names {
        assert!(
            metrics.contains(&format!("`{n}`")),
            "docs/metrics.md misses {n}"
        );
    }
    // The dashboard only uses series that exist.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/docs/grafana-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let text = dash.to_string();
    for used in text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("nexus_"))
    {
        let base = used.trim_end_matches("_bucket");
        assert!(
            names.iter().any(|n| n == base),
            "the dashboard uses {used}, which is not in src/metrics.rs"
        );
    }
    // The alert rules in docs/metrics.md are valid (when promtool is there).
    let rules = metrics
        .split("```yaml\ngroups:")
        .nth(1)
        .and_then(|r| r.split("```").next())
        .expect("alert rules block");
    let Some(promtool) = promtool("`promtool check rules` of docs/metrics.md") else {
        return;
    };
    let file = std::env::temp_dir().join(format!("nexus-rules-{}.yml", std::process::id()));
    std::fs::write(&file, format!("groups:{rules}")).expect("write rules");
    let out = std::process::Command::new(promtool)
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()
        .expect("promtool");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn every_message_carries_the_epoch_and_a_foreign_epoch_gets_a_snapshot() {
    let h = start("  heartbeat: 200ms\n", 1024).await;
    let epoch = h.app.state.epoch().to_owned();
    assert!(!epoch.is_empty());
    let (_, nodes) = get_json(&h.url("/api/nodes")).await;
    assert_eq!(nodes["epoch"], epoch.as_str());
    let mut ws = h.ws("").await;
    let snap = next_json(&mut ws).await;
    assert_eq!(snap["epoch"], epoch.as_str());
    h.publish(ChangeKind::TxKeyed).await;
    h.publish(ChangeKind::TxUnkeyed).await;
    let ev = next_event(&mut ws).await;
    assert_eq!(
        (ev["type"].as_str(), ev["epoch"].as_str()),
        (Some("event"), Some(epoch.as_str()))
    );
    // Heartbeats, pongs and alerts too.
    ws.send(Message::text("{\"type\":\"ping\"}"))
        .await
        .expect("ping");
    h.app.alerts.raise(AlertRequest {
        severity: Severity::Warning,
        title: "epoch test".into(),
        message: "m".into(),
        node: None,
        key: None,
        source: "test".into(),
    });
    let mut kinds = std::collections::BTreeSet::new();
    while kinds.len() < 3 {
        let v = next_json(&mut ws).await;
        assert_eq!(v["epoch"], epoch.as_str(), "{v}");
        kinds.insert(v["type"].as_str().unwrap_or("").to_owned());
        kinds.remove("event");
    }

    // The same run resumes with its epoch: a replay, no snapshot.
    let since = h.seq(1);
    let mut ws = h.ws(&format!("?since={since}&epoch={epoch}")).await;
    let v = next_json(&mut ws).await;
    assert_eq!(
        (v["type"].as_str(), v["seq"].as_u64()),
        (Some("event"), Some(h.seq(2)))
    );
    // Another run's seq is not ours: a fresh snapshot, never our deltas.
    let mut ws = h.ws(&format!("?since={since}&epoch=another-run")).await;
    let v = next_json(&mut ws).await;
    assert_eq!(
        (v["type"].as_str(), v["reason"].as_str(), v["seq"].as_u64()),
        (Some("snapshot"), Some("epoch_changed"), Some(h.seq(2)))
    );
    assert_eq!(h.resyncs("epoch_changed"), 1);
    // Without `epoch`, today's behaviour: a replay.
    let mut ws = h.ws(&format!("?since={since}")).await;
    assert_eq!(next_json(&mut ws).await["type"], "event");
}

/// Sends raw bytes on a new connection and reads the reply until the server closes it (or
/// `wait` passes).
async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON body of a raw reply.
fn raw_body(reply: &str) -> Value {
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON body expected ({e}): {reply}"))
}

fn connection_errors(h: &Harness, kind: &str) -> u64 {
    h.app
        .metrics
        .http_connection_errors
        .with_label_values(&[kind])
        .get()
}

#[tokio::test]
async fn a_foreign_host_is_refused_dns_rebinding() {
    let h = start_with(
        WS_DEFAULT,
        "  allowed_hosts: [nexus.lan]\n",
        64,
        Duration::from_secs(5),
    )
    .await;
    let evil = b"GET /api/health HTTP/1.1\r\nHost: evil.example\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n";
    let reply = raw(h.addr, evil, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 421 "), "{reply}");
    assert_error(&raw_body(&reply), "http.allowed_hosts");
    // The WebSocket too.
    let ws = b"GET /ws HTTP/1.1\r\nHost: evil.example:8080\r\nOrigin: http://evil.example:8080\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let reply = raw(h.addr, ws, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 421 "), "{reply}");
    assert_eq!(h.app.metrics.ws_clients.get(), 0);
    // Configured names, loopback names and addresses pass.
    for host in ["nexus.lan:8080", "localhost", "127.0.0.1"] {
        let req = format!("GET /api/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let reply = raw(h.addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert!(reply.starts_with("HTTP/1.1 200 "), "{host}: {reply}");
    }
}

#[tokio::test]
async fn malformed_requests_get_json_errors_and_are_counted() {
    let h = start(WS_DEFAULT, 64).await;
    let reply = raw(h.addr, b"GARBAGE\r\n\r\n", Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    assert!(reply.contains("content-type: application/json"), "{reply}");
    assert_error(&raw_body(&reply), "malformed");
    let huge = format!(
        "GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1_000_000)
    );
    let reply = raw(h.addr, huge.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        reply.starts_with("HTTP/1.1 431 "),
        "{}",
        &reply[..reply.len().min(200)]
    );
    assert_error(&raw_body(&reply), "too large");
    assert_eq!(connection_errors(&h, "malformed"), 2);
}

#[tokio::test]
async fn head_works_where_get_does() {
    let h = start(WS_DEFAULT, 64).await;
    let client = reqwest::Client::new();
    for path in ["/api/health", "/api/nodes", "/metrics", "/api/openapi.json"] {
        let res = client.head(h.url(path)).send().await.expect("HEAD");
        assert_eq!(res.status().as_u16(), 200, "HEAD {path}");
        assert!(
            res.bytes().await.expect("body").is_empty(),
            "HEAD {path} has no body"
        );
    }
    let res = client
        .head(h.url("/api/nodes/1999/poll"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(res.status().as_u16(), 405);
}

#[tokio::test]
async fn poll_requests_past_the_rate_get_429() {
    let h = start_with(
        WS_DEFAULT,
        "  poll_requests_per_minute: 3\n",
        64,
        Duration::from_secs(5),
    )
    .await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let res = client
            .post(h.url("/api/nodes/1999/poll"))
            .send()
            .await
            .expect("poll");
        assert_eq!(res.status().as_u16(), 202);
    }
    let res = client
        .post(h.url("/api/nodes/1999/poll"))
        .send()
        .await
        .expect("poll");
    assert_eq!(res.status().as_u16(), 429);
    let retry: u64 = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=20).contains(&retry), "{retry}");
    assert_error(&res.json().await.expect("json"), "poll_requests_per_minute");
}

/// The per-server AMI action budget (`ami_actions_per_second`, shared with Lua) refuses
/// with 429 and a `Retry-After` that says when the budget holds the request again.
#[tokio::test]
async fn the_ami_action_budget_refusal_says_when_to_retry() {
    let h = start_full(
        WS_DEFAULT,
        "",
        "ami_actions_per_second: 1\n",
        64,
        Duration::from_secs(5),
    )
    .await;
    let client = reqwest::Client::new();
    let poll = |node: &str| {
        client
            .post(h.url(&format!("/api/nodes/{node}/poll")))
            .send()
    };
    // A poll is two actions (XStat + SawStat): the bucket holds exactly one.
    let res = poll("1999").await.expect("poll");
    assert_eq!(res.status().as_u16(), 202);
    // Another node on the same server: the budget is empty, refilled at 1 action a second.
    let res = poll("2000").await.expect("poll");
    assert_eq!(res.status().as_u16(), 429);
    let retry: Option<u64> = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    assert_eq!(retry, Some(2), "two actions at one a second");
    assert_error(&res.json().await.expect("json"), "rate limited");
    assert!(
        h.app
            .metrics
            .render()
            .contains("nexus_ami_actions_rate_limited_total{server=\"default\"} 1")
    );
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let h = start_with(
        WS_DEFAULT,
        "  header_read_timeout: 300ms\n",
        64,
        Duration::from_secs(5),
    )
    .await;
    let started = Instant::now();
    // Headers that never finish: closed after the header timeout, not held open.
    let reply = raw(
        h.addr,
        b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed after the timeout"
    );
    assert!(!reply.contains("200 OK"), "{reply}");
    // An idle keep-alive connection likewise.
    let started = Instant::now();
    let reply = raw(
        h.addr,
        b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "idle keep-alive closed"
    );
    assert!(connection_errors(&h, "header_timeout") >= 1);
}

#[tokio::test]
async fn idle_sockets_never_lock_out_a_new_client() {
    let h = start_with(
        WS_DEFAULT,
        "  max_connections_per_ip: 20\n",
        64,
        Duration::from_secs(5),
    )
    .await;
    // 200 idle sockets from this address (as a slowloris would open).
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(h.addr).await.expect("connect"));
    }
    let started = Instant::now();
    let (status, v) = get_json(&h.url("/api/health")).await;
    let took = started.elapsed();
    assert_eq!(status, 200);
    assert!(v["status"].is_string());
    println!("/api/health with 200 idle sockets open: {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(connection_errors(&h, "evicted") >= 180);

    // Busy connections (WebSockets) are never evicted: past the cap, a newcomer is refused.
    drop(idle);
    let h = start_with(
        WS_DEFAULT,
        "  max_connections_per_ip: 2\n",
        64,
        Duration::from_secs(5),
    )
    .await;
    let mut a = h.ws("").await;
    let mut b = h.ws("").await;
    next_json(&mut a).await;
    next_json(&mut b).await;
    let reply = raw(
        h.addr,
        b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 503 "), "{reply}");
    assert_error(&raw_body(&reply), "too many connections");
    assert_eq!(connection_errors(&h, "refused"), 1);
    drop(a);
    // The slot comes back once the WebSocket is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = raw(
            h.addr,
            b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        if reply.starts_with("HTTP/1.1 200 ") {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed: {reply}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn shutdown_stops_accepting_finishes_in_flight_requests_then_returns() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut h = start(WS_DEFAULT, 64).await;
    let mut inflight = TcpStream::connect(h.addr).await.expect("connect");
    inflight
        .write_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .expect("write");
    // Let the server read the first half (loopback delivers at once).
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.shutdown.cancel();
    // 1. No new connections.
    let deadline = Instant::now() + Duration::from_secs(3);
    while TcpStream::connect(h.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after shutdown");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // 2. serve has not returned: a request is in flight.
    assert!(
        !h.server.is_finished(),
        "serve waits for the request in flight"
    );
    inflight
        .write_all(b"\r\n")
        .await
        .expect("finish the request");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), inflight.read_to_end(&mut reply))
        .await
        .expect("answered and closed")
        .expect("read");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    // 3. Then serve returns.
    let res = tokio::time::timeout(Duration::from_secs(5), &mut h.server)
        .await
        .expect("serve returns")
        .expect("join");
    assert!(res.is_ok());
}

#[tokio::test]
async fn shutdown_is_bounded_by_the_grace_period() {
    use tokio::io::AsyncWriteExt;
    let mut h = start_with(WS_DEFAULT, "", 64, Duration::from_millis(300)).await;
    let mut stuck = TcpStream::connect(h.addr).await.expect("connect");
    stuck
        .write_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    h.shutdown.cancel();
    let res = tokio::time::timeout(Duration::from_secs(5), &mut h.server)
        .await
        .expect("serve returns within the grace period")
        .expect("join");
    assert!(res.is_ok());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
