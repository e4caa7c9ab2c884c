//! Where a server's status is read, and where log lines say they come from: `/api/health`
//! shows the model's copy of each AMI server's status (the one the engine publishes), and
//! every `[AMI]` line names its server (the supervisor's span) and every `[POLLING]` line
//! its node.
//!
//! This binary installs a global log subscriber that captures every line (at debug level),
//! so its tests can read what an operator would see.

mod common;

use std::io::Write;
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Every log line written in this test binary.
static LOG: LazyLock<Arc<Mutex<Vec<u8>>>> = LazyLock::new(|| {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_ansi(false)
        .with_target(false)
        .with_writer(move || Capture(sink.clone()))
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("one subscriber per binary");
    buf
});

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured lines containing `needle`.
fn lines_with(needle: &str) -> Vec<String> {
    let log = LOG.lock().unwrap_or_else(|p| p.into_inner());
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

async fn health(addr: std::net::SocketAddr) -> Value {
    let body = reqwest::get(format!("http://{addr}/api/health"))
        .await
        .expect("health answers")
        .text()
        .await
        .expect("body");
    serde_json::from_str(&body).expect("JSON")
}

/// A manager port that closes its first connection at once and holds every later one
/// open without a greeting: the supervisor's second attempt stays in progress.
async fn closes_then_hangs() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        if let Ok((mut first, _)) = listener.accept().await {
            let _ = first.shutdown().await;
        }
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_shows_the_status_the_model_holds() {
    LazyLock::force(&LOG);
    let addr = closes_then_hangs().await;
    let d = common::start_daemon(addr, &["1999"], "ami_connect_timeout: 60s\n").await;
    let ami = d.app.control.servers()["default"].clone();
    let state = d.app.state.clone();
    // The first attempt failed (published: in the model); the second is in progress.
    common::wait_until("the first failure in the model", || {
        state.servers().iter().any(|s| s.last_error.is_some())
    })
    .await;
    common::wait_until("the second attempt", || {
        ami.status().reconnect_attempts == 1
    })
    .await;

    // The supervisor's own copy counts the attempt in progress; the model (the published
    // status) counts attempts whose outcome is known. Health shows the model's.
    let own = ami.status();
    let model = state.servers().pop().expect("one server");
    assert_eq!(own.reconnect_attempts, 1, "{own:?}");
    assert_eq!(model.reconnect_attempts, 0, "{model:?}");
    let v = health(d.http_addr).await;
    let s = &v["servers"][0];
    assert_eq!(s["name"], "default");
    assert_eq!(s["reconnect_attempts"], model.reconnect_attempts, "{s}");
    assert_eq!(s["connected"], model.connected);
    assert_eq!(s["state"], "disconnected");
    assert_eq!(
        s["last_error_kind"],
        serde_json::to_value(model.last_error_kind).expect("json")
    );
    assert_eq!(s["last_error"].as_str(), model.last_error.as_deref());
    assert_eq!(v["status"], "degraded");
    d.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ami_lines_name_their_server_and_polling_lines_their_node() {
    LazyLock::force(&LOG);
    let sim = common::sim_on_tcp(&["1999"]).await;
    let d = common::start_daemon(sim.addr(), &["1999"], "").await;
    common::wait_until("a poll of node 1999 logged", || {
        !lines_with("[POLLING] polled node 1999").is_empty()
    })
    .await;

    let ami = lines_with("[AMI] AMI connection established");
    assert!(!ami.is_empty(), "no [AMI] line captured");
    for line in &ami {
        // The supervisor's span: `ami{server=default}: [AMI] …`.
        assert!(line.contains("ami{server=default}"), "{line}");
    }
    // Every line the supervisor of this server writes carries its span.
    for line in lines_with("[AMI]")
        .iter()
        .filter(|l| l.contains(&format!("127.0.0.1:{}", sim.addr().port())))
    {
        assert!(line.contains("server=default"), "{line}");
    }
    for line in lines_with("[POLLING]") {
        assert!(line.contains("node=1999"), "{line}");
    }
    d.shutdown.cancel();
}
