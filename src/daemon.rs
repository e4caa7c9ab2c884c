//! The composition root and the lifecycle, in the style of mini-redis: [`build`] wires
//! every part from a [`Config`] into a [`Daemon`]; [`Daemon::run`] serves on a listener
//! until the shutdown token is cancelled, then stops in order within `shutdown_grace`.
//!
//! Order of start: the model, metrics and engine inputs; the AMI supervisors and the
//! pollers (their events and replies wait in bounded queues); the command surface and the
//! [`App`]; the Lua scripts (loaded and subscribed to the change stream); and only then,
//! in `run`, the state engine, so a `"*"` hook sees the first `ami_connected` and the
//! first links. Order of stop: HTTP stops accepting and drains, the AMI supervisors log
//! off and end, the engine ends; whatever is still running when the grace period is over
//! is abandoned with a warning. The daemon (`main.rs`), `demo`, tests and benchmarks
//! all start through here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::alerts::AlertHub;
use crate::ami::{AmiEvent, AmiHandle, connection};
use crate::app::App;
use crate::bridge::Bridges;
use crate::config::Config;
use crate::control::Control;
use crate::history::History;
use crate::metrics::Metrics;
use crate::poller::{self, PollResult, PollerHandle, ServerPollerParts};
use crate::script::{self, ScriptHost};
use crate::state::StateStore;
use crate::state::engine::{
    self, EngineInput, EngineParts, EngineSendError, EngineSender, NodeSpec,
};

/// Depth of the queue from the AMI readers to the state engine. Overflow is counted
/// (`nexus_ami_events_dropped_total`) and repaired by the next poll.
const EVENT_QUEUE: usize = 16_384;

/// Depth of the queue from the pollers to the state engine.
const POLL_QUEUE: usize = 256;

/// A built daemon: every part wired, scripts loaded, nothing published yet.
pub struct Daemon {
    app: App,
    scripts: ScriptHost,
    /// Cancelled by `run` when shutting down; every loop inside stops on it.
    stop: CancellationToken,
    engine: Option<EngineParts>,
    /// Where inputs reach the engine (the model's only writer).
    engine_tx: EngineSender,
    servers: Vec<AmiHandle>,
    /// Broker bridges (`bridges:`), stopped last so `offline` follows the final state.
    bridges: Bridges,
}

/// Binds the HTTP listener named by `listen`, with an error that says what to do.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen).await.with_context(|| {
        format!("cannot listen on {listen} (is another instance running? change `listen`)")
    })
}

/// Slots of the change broadcast: how far a subscriber (the history recorder, the scripts'
/// feed, the bridges, a WebSocket pump) may fall behind the engine before it lags. tokio
/// allocates and touches every slot up front (about 40 bytes each), so the ring is sized by
/// what the engine can publish in one burst: 16 changes per configured node (a full XStat
/// of every node at once), at least 4,096, at most 65,536; a daemon that takes nodes from
/// brokers (`sources:`) cannot know its node count and gets the most.
fn change_channel_capacity(config: &Config) -> usize {
    const MIN: usize = 4_096;
    const MAX: usize = 65_536;
    if !config.bridges.sources.is_empty() {
        return MAX;
    }
    let nodes: usize = config.servers.iter().map(|s| s.nodes.len()).sum();
    nodes.saturating_mul(16).clamp(MIN, MAX)
}

/// Wires every part from `config`. AMI sessions start connecting; their news waits for
/// [`Daemon::run`], which starts the engine after the scripts are loaded.
pub async fn build(config: Config) -> anyhow::Result<Daemon> {
    let config = Arc::new(config);
    let stop = CancellationToken::new();
    let metrics = Metrics::new(config.metrics.per_link);
    let store = StateStore::new(
        config.websocket.replay_buffer,
        change_channel_capacity(&config),
    );
    store.limit_replay_bytes(config.websocket.replay_buffer_bytes);
    let (engine_tx, commands) = EngineSender::channel();
    watch_names(&config, engine_tx.clone(), stop.clone());
    let remote_tx = engine_tx.clone();

    // Subscribes to the change stream before the engine starts, so nothing is missed.
    let history = History::start(
        &config.history,
        &store,
        engine_tx.clone(),
        metrics.clone(),
        stop.clone(),
    )?;
    let (ami_tx, ami_rx) = mpsc::channel(EVENT_QUEUE);
    let (poll_tx, poll_rx) = mpsc::channel(POLL_QUEUE);
    let wiring = spawn_sessions(&config, ami_tx, poll_tx, &metrics, &stop);
    let control = Control::with_engine(
        wiring.pollers.clone(),
        wiring.servers.clone(),
        wiring.node_server,
        engine_tx.clone(),
        store.clone(),
        metrics.clone(),
        config.ami_actions_per_second,
    );
    let alerts = AlertHub::new(
        &config.alerts,
        config.alert_webhooks.clone(),
        metrics.clone(),
    );
    if let Some(h) = &history {
        h.record_alerts(&alerts, stop.clone());
    }
    let bridges = Bridges::start(
        &config.bridges,
        &store,
        &alerts,
        &metrics,
        &remote_tx,
        &stop,
    );
    let app = App::assemble(
        config.clone(),
        store.clone(),
        control,
        alerts,
        metrics.clone(),
        history,
    );
    // Scripts subscribe to the change stream here, before the engine publishes anything.
    let scripts = script::spawn(app.script_env(), stop.clone())?;
    let automatic_polling = !config.disable_link_poller;
    let engine = EngineParts {
        store,
        metrics,
        nodes: wiring.specs,
        ami: ami_rx,
        polls: poll_rx,
        commands,
        automatic_polling,
        pollers: wiring.pollers,
        shutdown: stop.clone(),
    };
    Ok(Daemon {
        app,
        scripts,
        stop,
        engine: Some(engine),
        engine_tx,
        servers: wiring.servers.into_values().collect(),
        bridges,
    })
}

/// What [`spawn_sessions`] started.
struct Wiring {
    servers: BTreeMap<String, AmiHandle>,
    pollers: BTreeMap<String, PollerHandle>,
    node_server: BTreeMap<String, String>,
    specs: Vec<NodeSpec>,
}

/// One supervisor per server, one poller per node.
fn spawn_sessions(
    config: &Config,
    ami_tx: mpsc::Sender<AmiEvent>,
    poll_tx: mpsc::Sender<PollResult>,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Wiring {
    let automatic = !config.disable_link_poller;
    if !automatic {
        tracing::info!("[POLLING] disable_link_poller is set: nodes are polled only on request");
    }
    let mut w = Wiring {
        servers: BTreeMap::new(),
        pollers: BTreeMap::new(),
        node_server: BTreeMap::new(),
        specs: Vec::new(),
    };
    for s in &config.servers {
        for n in &s.nodes {
            w.node_server.insert(n.node_id.clone(), s.name.clone());
            w.specs.push(NodeSpec {
                node_id: n.node_id.clone(),
                server: s.name.clone(),
                poll_interval: n.poll_interval,
            });
        }
        if let Some(what) = config.setup_needed.get(&s.name) {
            not_configured(s, what, &ami_tx, metrics);
            continue;
        }
        let ami = connection::spawn_tcp(
            s.clone(),
            config.ami.clone(),
            ami_tx.clone(),
            metrics.clone(),
            stop.clone(),
        );
        let handles = poller::spawn_server(ServerPollerParts {
            nodes: (s.nodes.iter())
                .map(|n| (n.node_id.clone(), n.poll_interval))
                .collect(),
            ami: ami.clone(),
            results: poll_tx.clone(),
            metrics: metrics.clone(),
            automatic,
            shutdown: stop.clone(),
        });
        for (n, handle) in s.nodes.iter().zip(handles) {
            w.pollers.insert(n.node_id.clone(), handle);
        }
        w.servers.insert(s.name.clone(), ami);
    }
    w
}

/// A server not set up yet (no AMI secret, no nodes) is not contacted: its status says
/// what to configure, so health, metrics and the page tell the operator (no crash loop).
fn not_configured(
    s: &crate::config::ServerConfig,
    what: &str,
    ami_tx: &mpsc::Sender<AmiEvent>,
    metrics: &Metrics,
) {
    let problem = format!("not set up yet: {what}; then restart AllStar Nexus");
    tracing::warn!("[AMI] {problem}");
    let _ = ami_tx.try_send(AmiEvent::Status(crate::ami::ConnectionStatus {
        since_ms: crate::observe::now_ms(),
        last_error: Some(problem),
        last_error_kind: Some(crate::ami::ErrorKind::NotConfigured),
        ..crate::ami::ConnectionStatus::never_connected(s)
    }));
    metrics.ami_up.with_label_values(&[&s.name]).set(0);
}

/// astdb.txt, read now and on every change, goes to the engine (the model's writer).
fn watch_names(config: &Config, engine: EngineSender, stop: CancellationToken) {
    crate::astdb::watch(
        config.astdb_path.clone(),
        move |db| match engine.try_send(EngineInput::Names(db)) {
            Ok(()) => {}
            Err(EngineSendError::Stopped) => {}
            Err(e) => tracing::warn!("[ASTDB] node names not installed: {e}"),
        },
        stop,
    );
}

impl Daemon {
    /// The shared parts (state, control, metrics…).
    pub fn app(&self) -> &App {
        &self.app
    }

    /// The Lua host (reload, test hooks).
    pub fn scripts(&self) -> &ScriptHost {
        &self.scripts
    }

    /// Where inputs reach the state engine (tools and tests inject changes with
    /// [`EngineSender::publish`]); inputs wait until [`Daemon::run`] starts the engine.
    pub fn engine(&self) -> &EngineSender {
        &self.engine_tx
    }

    /// Serves on `listener` until `shutdown` is cancelled, then stops every part within
    /// `shutdown_grace`. Returns `Ok` after an orderly stop (and after a late one: what
    /// did not finish in time is logged and abandoned).
    pub async fn run(
        mut self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let engine = match self.engine.take() {
            Some(parts) => engine::spawn(parts),
            None => anyhow::bail!("the daemon is already running"),
        };
        reload_on_sighup(self.scripts.clone(), self.stop.clone());
        let http = tokio::spawn(crate::http::serve(
            self.app.clone(),
            listener,
            self.stop.clone(),
        ));
        tokio::select! {
            _ = shutdown.cancelled() => {}
            // Stop sibling parts if the HTTP server ends by itself (it should not).
            _ = self.stop.cancelled() => {}
        }
        let grace = self.app.config.shutdown_grace;
        tracing::info!("shutting down (at most {}s)", grace.as_secs_f64());
        self.stop.cancel();
        let stopped = tokio::time::timeout(grace, self.stop_parts(http, engine)).await;
        match stopped {
            Ok(()) => tracing::info!("stopped"),
            Err(_) => tracing::warn!(
                "shutdown took longer than shutdown_grace ({}s): leaving the rest",
                grace.as_secs_f64()
            ),
        }
        Ok(())
    }

    /// Awaits every part that must finish: HTTP drain, AMI logoff, the engine.
    async fn stop_parts(&self, http: JoinHandle<anyhow::Result<()>>, engine: JoinHandle<()>) {
        match http.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("[HTTP] server stopped with an error: {e:#}"),
            Err(e) => tracing::error!("[HTTP] server task failed: {e}"),
        }
        for s in &self.servers {
            s.stopped().await;
        }
        let _ = engine.await;
        // Open keyups and sessions closed at the shutdown time, the file flushed.
        if let Some(h) = &self.app.history {
            h.closed().await;
        }
        self.bridges.closed().await;
    }
}

/// A daemon running in the background (tests, `demo`): built, listening, serving.
pub struct Running {
    pub app: App,
    /// The Lua host (reload, test hooks).
    pub scripts: ScriptHost,
    /// Inputs to the state engine ([`EngineSender::publish`] injects a change).
    pub engine: EngineSender,
    /// Where the HTTP server listens (useful with port 0).
    pub http_addr: SocketAddr,
    /// Cancel to stop; then await `done`.
    pub shutdown: CancellationToken,
    /// Ends when [`Daemon::run`] returns.
    pub done: JoinHandle<anyhow::Result<()>>,
}

/// Binds `config.listen`, builds the daemon and runs it in the background; returns once
/// the HTTP server is listening, so tests use port 0 and talk to the daemon at once.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let listener = bind(config.listen).await?;
    let http_addr = listener.local_addr()?;
    let daemon = build(config).await?;
    let (app, scripts) = (daemon.app.clone(), daemon.scripts.clone());
    let engine = daemon.engine_tx.clone();
    let done = tokio::spawn(daemon.run(listener, shutdown.clone()));
    Ok(Running {
        app,
        scripts,
        engine,
        http_addr,
        shutdown,
        done,
    })
}

/// SIGHUP reloads every script (Unix).
fn reload_on_sighup(scripts: ScriptHost, shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("[LUA] cannot listen for SIGHUP; scripts still reload when saved");
            return;
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    got = hup.recv() => {
                        if got.is_none() { return; }
                        tracing::info!("[LUA] SIGHUP: reloading every script");
                        scripts.reload_all();
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (scripts, shutdown);
}

/// Waits for Ctrl-C (or SIGTERM on Unix).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with_nodes(n: usize) -> Config {
        let mut yaml = String::from(
            "ami_host: 127.0.0.1\nami_username: admin\nami_password: x\nastdb_path: /nonexistent\nnodes:\n",
        );
        for i in 0..n {
            yaml.push_str(&format!("  - node_id: {}\n", 2000 + i));
        }
        Config::parse(&yaml, "test", None).expect("config")
    }

    #[test]
    fn the_change_ring_is_sized_by_the_configured_nodes() {
        // A Raspberry Pi with two nodes does not pay for a fleet's ring (2.6 MiB).
        assert_eq!(change_channel_capacity(&config_with_nodes(2)), 4_096);
        assert_eq!(change_channel_capacity(&config_with_nodes(1_000)), 16_000);
        assert_eq!(change_channel_capacity(&config_with_nodes(5_000)), 65_536);
    }
}
