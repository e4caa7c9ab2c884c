//! Shared by the `lua_*` tests: a daemon context without AMI, temporary script
//! directories, and change events to feed the scripts.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use allstar_nexus::alerts::{Alert, AlertHub};
use allstar_nexus::ami::connection::{ConnectFuture, Connector, SupervisorParts};
use allstar_nexus::app::App;
use allstar_nexus::config::{AmiSettings, Config, NodeConfig, ServerConfig};
use allstar_nexus::control::Control;
use allstar_nexus::metrics::Metrics;
use allstar_nexus::poller::{self, PollerParts};
use allstar_nexus::script::{self, ScriptHost};
use allstar_nexus::state::{ChangeEvent, ChangeKind, LinkKind, LinkView, Published, StateStore};
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

/// A configuration without AMI, reading scripts from `dir`; `extra` is appended YAML.
pub fn config(dir: &Path, extra: &str) -> Config {
    let yaml = format!(
        "ami_enabled: false\nscript_dirs: [{:?}]\n{extra}",
        dir.display().to_string()
    );
    Config::parse(&yaml, "test.yaml", None).expect("test config")
}

/// A connector that never connects (the node has a poller, but no Asterisk).
struct Never;

impl Connector for Never {
    fn connect(&self) -> ConnectFuture {
        Box::pin(std::future::pending())
    }
}

/// The daemon's shared parts; `poll_nodes` get a real poller (with no Asterisk behind it)
/// so polling intervals can be changed and read.
pub fn app(config: Config, poll_nodes: &[&str], shutdown: &CancellationToken) -> App {
    let metrics = Metrics::new(false);
    let state = StateStore::new(1024, 4096);
    let alerts = AlertHub::new(
        &config.alerts,
        config.alert_webhooks.clone(),
        metrics.clone(),
    );
    let mut pollers = BTreeMap::new();
    let mut servers = BTreeMap::new();
    let mut node_server = BTreeMap::new();
    if !poll_nodes.is_empty() {
        let server = ServerConfig {
            name: "default".into(),
            host: "127.0.0.1".into(),
            port: 5038,
            username: "admin".into(),
            password: "unused".into(),
            nodes: poll_nodes
                .iter()
                .map(|n| NodeConfig {
                    node_id: n.to_string(),
                    poll_interval: Duration::from_secs(60),
                })
                .collect(),
        };
        let (events, _rx) = tokio::sync::mpsc::channel(16);
        let ami = allstar_nexus::ami::connection::spawn(SupervisorParts {
            server,
            settings: AmiSettings::default(),
            connector: Box::new(Never),
            events,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        });
        let (results, _) = tokio::sync::mpsc::channel(16);
        for n in poll_nodes {
            let h = poller::spawn(PollerParts {
                node: n.to_string(),
                interval: Duration::from_secs(60),
                ami: ami.clone(),
                results: results.clone(),
                metrics: metrics.clone(),
                automatic: true,
                shutdown: shutdown.clone(),
            });
            pollers.insert(n.to_string(), h);
            node_server.insert(n.to_string(), "default".to_string());
        }
        servers.insert("default".to_string(), ami);
    }
    let control = Control::new(
        pollers,
        servers,
        node_server,
        state.clone(),
        metrics.clone(),
    );
    App::assemble(Arc::new(config), state, control, alerts, metrics, None)
}

/// A running script host over `dir`.
pub struct Rig {
    pub app: App,
    pub host: ScriptHost,
    pub shutdown: CancellationToken,
}

impl Rig {
    pub fn start(dir: &Path, extra: &str, poll_nodes: &[&str]) -> Rig {
        let shutdown = CancellationToken::new();
        let app = app(config(dir, extra), poll_nodes, &shutdown);
        let host = script::spawn(app.script_env(), shutdown.clone()).expect("script host");
        Rig {
            app,
            host,
            shutdown,
        }
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

    /// Publishes a change through the state store (the real path) and waits until the
    /// scripts have handled it.
    pub async fn publish(&self, event: ChangeEvent) -> Arc<Published> {
        let p = self.app.state.publish_external(event);
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
        ip: None,
        direction: None,
        elapsed: "00:00:00".into(),
        connected_seconds: 0,
        mode: None,
        state: None,
        keyed: false,
        last_keyed_seconds: None,
        last_unkeyed_seconds: None,
        reconnects: 0,
        callsign: None,
        description: None,
        location: None,
        keyups: 0,
        keyed_seconds_total: 0.0,
        keyups_today: 0,
        talk_seconds_today: 0.0,
    }
}

/// Now minus `secs`, in ms since the Unix epoch.
pub fn ago_ms(secs: u64) -> u64 {
    allstar_nexus::state::change::now_ms() - secs * 1000
}
