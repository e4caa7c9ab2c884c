//! End-to-end tests of `/ws` features of its own transport and filters, against the daemon
//! built by the composition root (`daemon::start`, port 0) with an unreachable AMI server:
//! `?nodes=` / `?servers=` subscriptions, protocol pings, the closing handshake, frames
//! split by the client, and many clients sharing one encoding of each event.

use std::time::Duration;

use allstar_nexus::config::Config;
use allstar_nexus::daemon::Running;
use allstar_nexus::state::{ChangeEvent, ChangeKind};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A daemon with nodes 2000 and 2001 on server `hub`, and 3000 on server `home`, neither
/// reachable (nothing listens on port 9 of localhost in the test machine; they retry slowly).
async fn daemon() -> Running {
    daemon_with("  heartbeat: 60s\n").await
}

/// [`daemon`] with its own `websocket:` section (YAML, indented by 2).
async fn daemon_with(websocket: &str) -> Running {
    let yaml = "listen: 127.0.0.1:0\nastdb_path: /nonexistent/astdb.txt\nscript_dirs: []\n\
        history:\n  enabled: false\n\
        ami_retry_interval: 60s\nami_retry_max: 60s\n\
        ami_servers:\n\
        \x20 - name: hub\n    host: 127.0.0.1\n    port: 9\n    username: admin\n    password: x\n    nodes: [{node_id: 2000}, {node_id: 2001}]\n\
        \x20 - name: home\n    host: 127.0.0.1\n    port: 9\n    username: admin\n    password: x\n    nodes: [{node_id: 3000}]\n\
        websocket:\n"
        .to_owned()
        + websocket;
    let config = Config::parse(&yaml, "test", None).expect("test config");
    let d = allstar_nexus::daemon::start(config, CancellationToken::new())
        .await
        .expect("daemon starts");
    // Ready once both servers' refused first attempts are in the model (and published),
    // so the engine's own `ami_disconnected` changes never interleave with the tests'.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while d.app.state.servers().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no AMI status in time"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    d
}

async fn connect(d: &Running, query: &str) -> Result<Ws, tungstenite::Error> {
    tokio_tungstenite::connect_async(format!("ws://{}/ws{query}", d.http_addr))
        .await
        .map(|(ws, _)| ws)
}

/// The next JSON message (control frames skipped), within 5 s.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
            .expect("open")
            .expect("readable");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).expect("JSON");
        }
    }
}

async fn publish(d: &Running, kind: ChangeKind, server: &str, node: Option<&str>) -> u64 {
    d.engine
        .publish(ChangeEvent::new(kind, server, node))
        .await
        .expect("the engine publishes")
        .event
        .seq
}

/// The seqs of the next `n` messages, which must be events.
async fn seqs(ws: &mut Ws, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..n {
        let v = next_json(ws).await;
        assert_eq!(v["type"], "event", "{v}");
        out.push(v["seq"].as_u64().expect("seq"));
    }
    out
}

fn snapshot_nodes(v: &Value) -> Vec<String> {
    assert_eq!(v["type"], "snapshot", "{v}");
    let mut ids: Vec<String> = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["node_id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_filtered_client_sees_only_its_nodes() {
    let d = daemon().await;
    // The engine adds the configured nodes to the model.
    for _ in 0..100 {
        if d.app.state.node_ids().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut all = connect(&d, "").await.expect("handshake");
    let mut one = connect(&d, "?nodes=2001").await.expect("handshake");
    let mut home = connect(&d, "?servers=home").await.expect("handshake");
    let mut both = connect(&d, "?servers=home&nodes=2000")
        .await
        .expect("handshake");
    assert_eq!(
        snapshot_nodes(&next_json(&mut all).await),
        ["2000", "2001", "3000"]
    );
    assert_eq!(snapshot_nodes(&next_json(&mut one).await), ["2001"]);
    assert_eq!(snapshot_nodes(&next_json(&mut home).await), ["3000"]);
    assert_eq!(
        snapshot_nodes(&next_json(&mut both).await),
        ["2000", "3000"]
    );

    let s1 = publish(&d, ChangeKind::TxKeyed, "hub", Some("2000")).await;
    let s2 = publish(&d, ChangeKind::TxKeyed, "hub", Some("2001")).await;
    let s3 = publish(&d, ChangeKind::AmiConnected, "home", None).await;
    let s4 = publish(&d, ChangeKind::TxKeyed, "home", Some("3000")).await;
    let s5 = publish(&d, ChangeKind::AmiConnected, "hub", None).await;
    assert_eq!(seqs(&mut all, 5).await, [s1, s2, s3, s4, s5]);
    assert_eq!(
        seqs(&mut one, 2).await,
        [s2, s5],
        "its node, and its server's news"
    );
    assert_eq!(seqs(&mut home, 2).await, [s3, s4]);
    assert_eq!(seqs(&mut both, 4).await, [s1, s3, s4, s5]);

    // A pong carries the stream position: the last change, sent or left out.
    home.send(Message::text(r#"{"type":"ping"}"#))
        .await
        .expect("send");
    let pong = next_json(&mut home).await;
    assert_eq!(
        (pong["type"].as_str(), pong["seq"].as_u64()),
        (Some("pong"), Some(s5))
    );

    // Resuming with the same filter replays only the followed changes.
    let mut again = connect(
        &d,
        &format!("?nodes=2001&since={}&epoch={}", s1 - 1, d.app.state.epoch()),
    )
    .await
    .expect("handshake");
    assert_eq!(seqs(&mut again, 2).await, [s2, s5]);
    d.shutdown.cancel();
}

#[tokio::test]
async fn unknown_or_invalid_filters_are_refused_by_name() {
    let d = daemon().await;
    for (query, says) in [
        ("?nodes=2000,2005", "unknown node 2005"),
        ("?nodes=20x0", "invalid node \"20x0\""),
        ("?servers=away", "unknown server \"away\""),
        ("?nodes=", "nodes= is empty"),
    ] {
        let err = connect(&d, query).await.expect_err("refused");
        let tungstenite::Error::Http(res) = err else {
            panic!("{query}: not an HTTP refusal: {err}");
        };
        assert_eq!(res.status().as_u16(), 400, "{query}");
        let body: Value =
            serde_json::from_slice(res.body().as_deref().unwrap_or_default()).expect("JSON error");
        let msg = body["error"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{query}: {msg}");
    }
    d.shutdown.cancel();
}

#[tokio::test]
async fn protocol_pings_are_answered_and_a_client_close_is_echoed() {
    let d = daemon().await;
    let mut ws = connect(&d, "").await.expect("handshake");
    next_json(&mut ws).await;
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(p))) => return p,
                Some(Ok(_)) => continue,
                other => panic!("no pong: {other:?}"),
            }
        }
    })
    .await
    .expect("a pong within 5 s");
    assert_eq!(&pong[..], b"are you there");

    ws.send(Message::Close(Some(tungstenite::protocol::CloseFrame {
        code: 4000.into(),
        reason: "bye".into(),
    })))
    .await
    .expect("close");
    let echoed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("the close is answered");
    assert_eq!(echoed, Some(4000));
    d.shutdown.cancel();
}

/// A hand-written client: the upgrade request, then a `{"type":"ping"}` split into two
/// fragments sent one byte at a time, answered with a `pong` frame.
#[tokio::test]
async fn fragmented_messages_sent_byte_by_byte_are_read() {
    let d = daemon().await;
    let mut sock = TcpStream::connect(d.http_addr).await.expect("connect");
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        d.http_addr
    );
    sock.write_all(req.as_bytes()).await.expect("request");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed during the handshake");
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );

    let key = [1u8, 2, 3, 4];
    let frame = |fin_op: u8, payload: &[u8]| {
        let mut f = vec![fin_op, 0x80 | payload.len() as u8];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
        f
    };
    let mut wire = frame(0x01, br#"{"type":"#);
    wire.extend(frame(0x80, br#""ping"}"#));
    for b in wire {
        sock.write_all(&[b]).await.expect("write");
        sock.flush().await.expect("flush");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut text = String::new();
    while !text.contains("\"type\":\"pong\"") {
        let n = tokio::time::timeout_at(deadline, sock.read(&mut buf))
            .await
            .expect("a pong within 5 s")
            .expect("read");
        assert!(n > 0, "closed instead of answering");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    d.shutdown.cancel();
}

/// Frames go straight to the socket while it takes them, and through the writer's queue
/// once it is full: a client that stops reading for a while and then reads again gets
/// every event, in order, with no resync.
#[tokio::test]
async fn frames_stay_in_order_when_the_socket_fills_and_drains() {
    let d = daemon_with("  heartbeat: 60s\n  client_queue: 4000\n").await;
    let mut ws = connect(&d, "").await.expect("handshake");
    next_json(&mut ws).await;
    let mut first = None;
    let mut last = 0;
    // About 40 MB: more than loopback socket buffers hold (the client reads nothing
    // meanwhile), so the queue is used.
    for _ in 0..640 {
        let mut ev = ChangeEvent::new(ChangeKind::AmiDisconnected, "hub", None);
        ev.error = Some("x".repeat(64 * 1024));
        last = d
            .engine
            .publish(ev)
            .await
            .expect("the engine publishes")
            .event
            .seq;
        first.get_or_insert(last);
        tokio::task::yield_now().await;
    }
    let first = first.expect("published");
    let got = tokio::time::timeout(Duration::from_secs(30), seqs(&mut ws, 640))
        .await
        .expect("everything arrives");
    let want: Vec<u64> = (first..=last).collect();
    assert_eq!(got, want);
    let resyncs = d.app.metrics.ws_resyncs.with_label_values(&["slow"]).get();
    assert_eq!(resyncs, 0, "no resync was needed");
    d.shutdown.cancel();
}

/// Clients connecting while changes are being published (the fan-out takes them in at
/// any point of the stream) each get every change after their snapshot: no gap, no
/// repeat, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_joining_during_a_stream_of_changes_miss_nothing() {
    let d = daemon().await;
    let engine = d.engine.clone();
    let publisher = tokio::spawn(async move {
        let mut last = 0;
        for _ in 0..400 {
            last = engine
                .publish(ChangeEvent::new(ChangeKind::TxKeyed, "hub", Some("2000")))
                .await
                .expect("the engine publishes")
                .event
                .seq;
            tokio::task::yield_now().await;
        }
        last
    });
    let mut clients = Vec::new();
    for _ in 0..40 {
        let mut ws = connect(&d, "").await.expect("handshake");
        let snap = next_json(&mut ws).await;
        assert_eq!(snap["type"], "snapshot", "{snap}");
        clients.push((snap["seq"].as_u64().expect("seq"), ws));
    }
    let last = publisher.await.expect("publisher");
    for (from, mut ws) in clients {
        let want: Vec<u64> = (from + 1..=last).collect();
        let got = seqs(&mut ws, want.len()).await;
        assert_eq!(got, want, "after a snapshot at {from}");
    }
    d.shutdown.cancel();
}
