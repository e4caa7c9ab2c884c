//! The NATS publisher (`bridges.nats`): the same messages as MQTT (`payload`), on
//! subjects with dots (`{prefix}.{server}.{node}.state`, `….event`, `….alert`,
//! `{prefix}.daemon.{name}.status`), with `async-nats`.
//!
//! NATS keeps nothing: there is no retained state and no last will. `online` and every
//! node's state are published on each (re)connection, `offline` on an orderly stop.
//! The client reconnects by itself and holds up to `queue` messages meanwhile; a full
//! queue is a counted drop (the feeder never waits).

use std::sync::Arc;

use async_nats::{Client, ConnectOptions, Event};
use bytes::Bytes;
use futures_util::FutureExt;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::feed::{FeedSettings, Feeder, OFFLINE, Sink};
use super::payload::Topics;
use crate::alerts::Alert;
use crate::config::bridges::NatsConfig;
use crate::metrics::Metrics;
use crate::state::StateStore;

/// The `bridge` label of this publisher's metrics.
const LABEL: &str = "nats";

/// Starts the publisher; the handle ends after an orderly stop.
pub fn spawn(
    cfg: NatsConfig,
    store: StateStore,
    alerts: broadcast::Receiver<Arc<Alert>>,
    metrics: Metrics,
    stop: CancellationToken,
) -> JoinHandle<()> {
    // Subscribed now, before the engine starts.
    let changes = store.subscribe();
    tokio::spawn(async move {
        let (sessions_tx, sessions) = watch::channel(0u64);
        let Some(client) = connect(&cfg, sessions_tx, metrics.clone()).await else {
            return;
        };
        let sink = NatsSink {
            client,
            metrics: metrics.clone(),
        };
        let set = FeedSettings {
            label: LABEL,
            topics: Topics {
                prefix: cfg.subject_prefix.clone(),
                name: cfg.name.clone(),
                sep: '.',
            },
            retain: false,
            discovery: None,
        };
        Feeder::new(sink, set, store, metrics)
            .run(changes, alerts, sessions, stop)
            .await;
    })
}

/// The client (connecting in the background); `None` when the credentials cannot be read.
async fn connect(
    cfg: &NatsConfig,
    sessions: watch::Sender<u64>,
    metrics: Metrics,
) -> Option<Client> {
    let connected = metrics.bridge_connected.with_label_values(&[LABEL]);
    let mut opts = ConnectOptions::new()
        .name(&cfg.name)
        .retry_on_initial_connect()
        .client_capacity(cfg.queue)
        .event_callback(move |ev| {
            match ev {
                Event::Connected => {
                    connected.set(1);
                    tracing::info!("[BRIDGE] NATS connected");
                    sessions.send_modify(|n| *n += 1);
                }
                Event::Disconnected => {
                    connected.set(0);
                    tracing::warn!("[BRIDGE] NATS server unreachable; reconnecting");
                }
                _ => {}
            }
            async {}
        });
    if let Some(path) = &cfg.credentials {
        opts = match opts.credentials_file(path).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(
                    "[BRIDGE] NATS bridge not started: cannot read credentials {}: {e}",
                    path.display()
                );
                return None;
            }
        };
    }
    match opts.connect(cfg.url.as_str()).await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!("[BRIDGE] NATS bridge not started: {e}");
            None
        }
    }
}

/// The NATS client as a [`Sink`]: a publish that would wait is a drop.
struct NatsSink {
    client: Client,
    metrics: Metrics,
}

impl Sink for NatsSink {
    fn offer(&self, topic: String, _retain: bool, payload: String) -> bool {
        let sent = self
            .client
            .publish(topic, Bytes::from(payload))
            .now_or_never();
        let ok = matches!(sent, Some(Ok(())));
        if ok {
            self.metrics
                .bridge_published
                .with_label_values(&[LABEL])
                .inc();
        }
        ok
    }

    async fn goodbye(&self, status: String, _retain: bool) {
        let _ = self.client.publish(status, Bytes::from(OFFLINE)).await;
        let _ = self.client.flush().await;
    }
}
