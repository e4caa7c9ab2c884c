//! Bridges to message brokers (issue 15, `docs/fleet.md`): this daemon's change stream,
//! node states, alerts and status published to MQTT (`bridges.mqtt`) and NATS
//! (`bridges.nats`), and remote nodes
//! read back from a broker (`sources:`) so one daemon can show a whole network.
//!
//! Publishing subscribes to the change stream before the engine starts (like history)
//! and never makes the engine wait: messages go to a bounded queue, overflow is counted.
//! Payloads and topic names are shared by every broker (`payload`).

pub mod feed;
pub mod mqtt;
pub mod nats;
pub mod payload;
pub mod source;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::alerts::AlertHub;
use crate::config::bridges::BridgesConfig;
use crate::metrics::Metrics;
use crate::state::StateStore;
use crate::state::engine::EngineSender;

/// The running bridges; [`Bridges::closed`] waits for their orderly stop.
#[derive(Default)]
pub struct Bridges {
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Bridges {
    /// Starts every configured bridge. Call before the state engine starts, so the first
    /// changes are published too.
    pub fn start(
        cfg: &BridgesConfig,
        store: &StateStore,
        alerts: &AlertHub,
        metrics: &Metrics,
        engine: &EngineSender,
        stop: &CancellationToken,
    ) -> Bridges {
        let mut tasks = Vec::new();
        if let Some(m) = &cfg.mqtt {
            tracing::info!(
                "[BRIDGE] publishing to mqtt{}://{}:{} under {}/ as {}",
                if m.login.addr.tls { "s" } else { "" },
                m.login.addr.host,
                m.login.addr.port,
                m.topic_prefix,
                m.name
            );
            tasks.push(mqtt::spawn(
                m.clone(),
                store.clone(),
                alerts.subscribe(),
                metrics.clone(),
                stop.clone(),
            ));
        }
        if let Some(n) = &cfg.nats {
            tracing::info!(
                "[BRIDGE] publishing to NATS {} under {}. as {}",
                n.url,
                n.subject_prefix,
                n.name
            );
            tasks.push(nats::spawn(
                n.clone(),
                store.clone(),
                alerts.subscribe(),
                metrics.clone(),
                stop.clone(),
            ));
        }
        for s in &cfg.sources {
            tracing::info!(
                "[BRIDGE] taking remote nodes from {}:{} under {}/",
                s.login.addr.host,
                s.login.addr.port,
                s.topic_prefix
            );
            tasks.push(source::spawn(
                s.clone(),
                engine.clone(),
                metrics.clone(),
                stop.clone(),
            ));
        }
        Bridges {
            tasks: std::sync::Mutex::new(tasks),
        }
    }

    /// Waits until every bridge has stopped (after the stop token is cancelled).
    pub async fn closed(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }
}
