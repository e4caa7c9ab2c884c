//! Shared by the `lua_*` tests: the whole daemon (`daemon::start`) over a temporary
//! script directory, without a reachable Asterisk, and change events to feed the scripts
//! through the state engine.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use allstar_nexus::alerts::Alert;
use allstar_nexus::app::App;
use allstar_nexus::config::Config;
use allstar_nexus::script::ScriptHost;
use allstar_nexus::state::{ChangeEvent, ChangeKind, EngineSender, LinkKind, LinkView, Published};
use tokio_util::sync::CancellationToken;

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("nexus-lua-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes a file the way editors do: a temporary file renamed over the target.
    pub fn save(&self, name: &str, text: &str) {
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write temp file");
        std::fs::rename(&tmp, self.0.join(name)).expect("rename");
    }

    /// Copies a bundled plugin into this directory.
    pub fn copy_plugin(&self, name: &str) {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("plugins")
            .join(name);
        std::fs::copy(&src, self.0.join(name)).expect("copy plugin");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A configuration reading scripts from `dir`, HTTP on port 0, no astdb, no history
/// (unless `extra` has a `history:` section), state in `state`; `extra` is appended YAML.
/// With `poll_nodes`, those nodes belong to an AMI server at a closed port (so they have
/// pollers whose intervals can be set, and nothing ever connects); without, AMI is off.
pub fn config(
    dir: &Path,
    state: &Path,
    extra: &str,
    ami_port: Option<u16>,
    poll_nodes: &[&str],
) -> Config {
    let mut yaml = format!(
        "listen: 127.0.0.1:0\nastdb_path: /nonexistent/astdb.txt\nscript_dirs: [{:?}]\nstate_dir: {:?}\n",
        dir.display().to_string(),
        state.display().to_string()
    );
    match ami_port {
        Some(port) if !poll_nodes.is_empty() => {
            yaml.push_str(&format!(
                "ami_host: 127.0.0.1\nami_port: {port}\nami_username: admin\nami_password: unused\n\
                 ami_retry_interval: 60s\nami_retry_max: 60s\nnodes:\n"
            ));
            for n in poll_nodes {
                yaml.push_str(&format!("  - node_id: {n}\n"));
            }
        }
        _ => yaml.push_str("ami_enabled: false\n"),
    }
    if !extra.contains("history:") {
        yaml.push_str("history:\n  enabled: false\n");
    }
    yaml.push_str(extra);
    Config::parse(&yaml, "test.yaml", None).expect("test config")
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The whole daemon (`daemon::start`, the composition root) over a script directory.
pub struct Rig {
    pub app: App,
    pub host: ScriptHost,
    /// Inputs to the state engine: changes are injected there.
    pub engine: EngineSender,
    pub shutdown: CancellationToken,
    _state: TempDir,
}

impl Rig {
    /// Starts the daemon with scripts from `dir`; `poll_nodes` get a poller (with no
    /// Asterisk behind it) so polling intervals can be changed and read. Returns once the
    /// AMI server's first (failed) status is in the model, so that news is not mixed into
    /// what a test publishes.
    pub async fn start(dir: &Path, extra: &str, poll_nodes: &[&str]) -> Rig {
        let state = TempDir::new("state");
        let port = (!poll_nodes.is_empty()).then(closed_port);
        let config = config(dir, state.path(), extra, port, poll_nodes);
        let shutdown = CancellationToken::new();
        let running = allstar_nexus::daemon::start(config, shutdown.clone())
            .await
            .expect("daemon starts");
        let rig = Rig {
            app: running.app,
            host: running.scripts,
            engine: running.engine,
            shutdown,
            _state: state,
        };
        if !poll_nodes.is_empty() {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while rig.app.state.servers().is_empty() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the AMI server's status never arrived"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        rig
    }

    /// Waits until `name` runs this exact content.
    pub async fn loaded(&self, name: &str, content: &str) {
        assert!(
            self.host
                .wait_version(name, content.as_bytes(), Duration::from_secs(5))
                .await,
            "{name} was not loaded: {:?}",
            self.app.scripts.get(name)
        );
    }

    /// Publishes a change through the state engine (the real path) and waits until the
    /// scripts have handled it.
    pub async fn publish(&self, event: ChangeEvent) -> Arc<Published> {
        let p = self.inject(event).await;
        let seq = p.event.seq;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.host.delivered_seq() < seq {
            assert!(
                tokio::time::Instant::now() < deadline,
                "change {seq} was not delivered"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        p
    }

    /// Publishes a change through the state engine without waiting for the scripts.
    pub async fn inject(&self, event: ChangeEvent) -> Arc<Published> {
        self.engine
            .publish(event)
            .await
            .expect("the engine publishes")
    }

    /// Calls a script's global function.
    pub async fn call(
        &self,
        script: &str,
        function: &str,
        args: Vec<serde_json::Value>,
    ) -> serde_json::Value {
        self.host
            .call(script, function, args)
            .await
            .unwrap_or_else(|e| panic!("{script}.{function}: {e}"))
    }

    pub fn alerts(&self) -> Vec<Arc<Alert>> {
        self.app.alerts.recent(100)
    }

    /// Waits up to `timeout` for an alert whose title contains `title`.
    pub async fn alert_titled(&self, title: &str, timeout: Duration) -> Option<Arc<Alert>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(a) = self.alerts().into_iter().find(|a| a.title.contains(title)) {
                return Some(a);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A change on node 1999 of server `default`.
pub fn event(kind: ChangeKind) -> ChangeEvent {
    let server_wide = matches!(kind, ChangeKind::AmiConnected | ChangeKind::AmiDisconnected);
    ChangeEvent::new(
        kind,
        "default",
        if server_wide { None } else { Some("1999") },
    )
}

/// A link change on node 1999.
pub fn link_event(kind: ChangeKind, link: &str) -> ChangeEvent {
    let mut e = event(kind);
    e.link = Some(link_view(link));
    e
}

/// A link as the engine would describe it.
pub fn link_view(name: &str) -> LinkView {
    LinkView {
        node: name.to_owned(),
        kind: LinkKind::of(name),
        elapsed: "00:00:00".into(),
        ..LinkView::default()
    }
}

/// Now minus `secs`, in ms since the Unix epoch.
pub fn ago_ms(secs: u64) -> u64 {
    allstar_nexus::state::change::now_ms() - secs * 1000
}
