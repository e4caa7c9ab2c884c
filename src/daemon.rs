//! Wiring: builds every part from a [`Config`] and runs them until shutdown.
//!
//! `start` returns as soon as everything is listening, with the [`App`] and the HTTP
//! address, so tests (and `demo`) can use port 0 and talk to the daemon at once. One
//! cancellation token stops every loop; Ctrl-C during a 60 s backoff exits at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::alerts::AlertHub;
use crate::ami::connection;
use crate::app::App;
use crate::config::Config;
use crate::control::Control;
use crate::history::History;
use crate::metrics::Metrics;
use crate::poller::{self, PollerParts};
use crate::script::{self, ScriptHost, ScriptRegistry};
use crate::state::StateStore;
use crate::state::change::now_ms;
use crate::state::engine::{self, EngineParts, NodeSpec};

/// Depth of the queue from the AMI readers to the state engine. Overflow is counted
/// (`nexus_ami_events_dropped_total`) and repaired by the next poll.
const EVENT_QUEUE: usize = 16_384;

/// A running daemon.
pub struct Running {
    pub app: App,
    /// The Lua host (reload, test hooks).
    pub scripts: ScriptHost,
    /// Where the HTTP server listens (useful with port 0).
    pub http_addr: SocketAddr,
    pub shutdown: CancellationToken,
}

/// Starts every part; returns once the HTTP server is listening.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let config = Arc::new(config);
    let metrics = Metrics::new(config.metrics.per_link);
    let store = StateStore::new(config.websocket.replay_buffer, 65_536);
    {
        let store = store.clone();
        crate::astdb::watch(
            config.astdb_path.clone(),
            move |db| store.set_astdb(db),
            shutdown.clone(),
        );
    }

    // Subscribes to the change stream before the engine starts, so nothing is missed.
    let history = History::start(&config.history, &store, metrics.clone(), shutdown.clone())?;
    let (ami_tx, ami_rx) = mpsc::channel(EVENT_QUEUE);
    let (poll_tx, poll_rx) = mpsc::channel(256);
    let mut servers = BTreeMap::new();
    let mut node_server = BTreeMap::new();
    let mut specs = Vec::new();
    for s in &config.servers {
        let handle = connection::spawn_tcp(
            s.clone(),
            config.ami.clone(),
            ami_tx.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        servers.insert(s.name.clone(), handle);
        for n in &s.nodes {
            node_server.insert(n.node_id.clone(), s.name.clone());
            specs.push(NodeSpec {
                node_id: n.node_id.clone(),
                server: s.name.clone(),
                poll_interval: n.poll_interval,
            });
        }
    }
    let automatic = !config.disable_link_poller;
    if !automatic {
        tracing::info!("[POLLING] disable_link_poller is set: nodes are polled only on request");
    }
    let (poll_req_tx, mut poll_req_rx) = mpsc::unbounded_channel::<String>();
    engine::spawn(EngineParts {
        store: store.clone(),
        metrics: metrics.clone(),
        nodes: specs.clone(),
        ami: ami_rx,
        polls: poll_rx,
        automatic_polling: automatic,
        poll_requests: Some(poll_req_tx),
        shutdown: shutdown.clone(),
    });
    let mut pollers = BTreeMap::new();
    for spec in &specs {
        let Some(ami) = servers.get(&spec.server).cloned() else {
            continue;
        };
        let handle = poller::spawn(PollerParts {
            node: spec.node_id.clone(),
            interval: spec.poll_interval,
            ami,
            results: poll_tx.clone(),
            metrics: metrics.clone(),
            automatic,
            shutdown: shutdown.clone(),
        });
        pollers.insert(spec.node_id.clone(), handle);
    }
    let control = Control::new(
        pollers,
        servers,
        node_server,
        store.clone(),
        metrics.clone(),
    );
    // Early polls the engine asks for (a link appeared through an event).
    {
        let (control, shutdown) = (control.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    req = poll_req_rx.recv() => match req {
                        Some(node) => { let _ = control.poll_now(&node); }
                        None => return,
                    },
                }
            }
        });
    }
    let alerts = AlertHub::new(
        &config.alerts,
        config.alert_webhooks.clone(),
        metrics.clone(),
    );
    if let Some(h) = &history {
        h.record_alerts(&alerts, shutdown.clone());
    }
    let app = App {
        config: config.clone(),
        state: store,
        control,
        alerts,
        scripts: ScriptRegistry::default(),
        metrics,
        started_ms: now_ms(),
        history,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another instance running? change `listen`)",
                config.listen
            )
        })?;
    let http_addr = listener.local_addr()?;
    let scripts = script::spawn(app.clone(), shutdown.clone())?;
    reload_on_sighup(scripts.clone(), shutdown.clone());
    {
        let (app, shutdown) = (app.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::http::serve(app, listener, shutdown).await {
                tracing::error!("HTTP server stopped: {e:#}");
            }
        });
    }
    Ok(Running {
        app,
        scripts,
        http_addr,
        shutdown,
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
