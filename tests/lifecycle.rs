//! The daemon's lifecycle end to end: scripts are loaded before the first AMI news, `run`
//! returns within `shutdown_grace` once shutdown is asked for, and the built binary exits
//! with status 0 on SIGTERM.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use allstar_nexus::config::Config;
use allstar_nexus::daemon;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

/// A fresh directory under the system temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("nexus-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn yaml(ami_port: u16, scripts: &str, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nami_host: 127.0.0.1\nami_port: {ami_port}\nami_username: admin\n\
         ami_password: {}\nami_retry_interval: 1s\nami_retry_max: 2s\n\
         astdb_path: /nonexistent/astdb.txt\nscript_dirs: [{scripts}]\nnodes:\n  - node_id: 1999\n{extra}",
        common::SECRET
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_star_hook_sees_the_first_ami_connected() {
    let sim = common::sim_on_tcp(&["1999"]).await;
    let dir = temp_dir("first");
    std::fs::write(
        dir.join("first.lua"),
        r#"
local first = nil
nexus.on("*", function(e)
  if first == nil then
    first = e.kind
    nexus.alert{ severity = "info", title = "first " .. e.kind, message = "seen", key = "first" }
  end
end)
"#,
    )
    .expect("script");
    let config = Config::parse(
        &yaml(
            sim.addr().port(),
            &format!("{:?}", dir.display().to_string()),
            "",
        ),
        "test",
        None,
    )
    .expect("config");
    let d = daemon::start(config, CancellationToken::new())
        .await
        .expect("daemon starts");
    common::wait_until("the script's first alert", || {
        !d.app.alerts.recent(10).is_empty()
    })
    .await;
    let titles: Vec<String> = d
        .app
        .alerts
        .recent(10)
        .iter()
        .map(|a| a.title.clone())
        .collect();
    assert_eq!(titles, vec!["first ami_connected".to_owned()]);
    d.shutdown.cancel();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_returns_within_the_grace_period() {
    let sim = common::sim_on_tcp(&["1999"]).await;
    let d = common::start_daemon(sim.addr(), &["1999"], "shutdown_grace: 2s\n").await;
    common::wait_until("the session", || {
        d.app.state.servers().iter().any(|s| s.connected)
    })
    .await;
    // A WebSocket client stays connected through the shutdown.
    let (_ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", d.http_addr))
        .await
        .expect("websocket");
    let started = std::time::Instant::now();
    d.shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(3), d.done)
        .await
        .expect("run returned within the grace period (+1 s)")
        .expect("run task");
    assert!(result.is_ok(), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Everything stopped: the HTTP port no longer answers.
    let refused = reqwest::get(format!("http://{}/api/health", d.http_addr)).await;
    assert!(refused.is_err(), "still answering after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_0_on_sigterm() {
    let sim = common::sim_on_tcp(&["1999"]).await;
    let dir = temp_dir("sigterm");
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml(sim.addr().port(), "", "shutdown_grace: 3s\n")).expect("config");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_allstar-nexus"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("binary starts");
    // Logs go to stderr (the journal's stream under systemd).
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    // Wait until it listens, then until node 1999 is polled (the daemon is fully running).
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some((_, rest)) = line.split_once("listening on http://") {
                return rest.split_whitespace().next().map(str::to_owned);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .expect("the daemon logged its address");
    // Keep draining the log so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let url = format!("http://{addr}/api/nodes/1999");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = reqwest::get(&url).await
            && let Ok(v) = r.json::<serde_json::Value>().await
            && v["stale"] == false
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 1999 never polled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = child.id().expect("pid") as i32;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("exited within the grace period")
        .expect("wait");
    assert_eq!(status.code(), Some(0), "{status:?}");
    let _ = std::fs::remove_dir_all(dir);
}
