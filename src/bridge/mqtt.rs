//! The MQTT publisher (`bridges.mqtt`): the change stream, node states, alerts and the
//! daemon's status, written to a broker with `rumqttc`.
//!
//! Two tasks. The *feeder* reads the change stream and the alert hub (subscribed before
//! the engine starts, like history) and hands messages to the client's bounded queue
//! with `try_publish`: it never waits, so the engine is never slowed; a full queue (the
//! broker is away) counts a drop. The *network* task drives the connection, reconnecting
//! with backoff (`ami::backoff`), and tells the feeder about each new session; the
//! feeder then publishes `online`, the discovery configs and every node's newest state,
//! so retained state is never stale after an outage. The broker publishes the last will
//! `offline` if the daemon dies; an orderly stop publishes `offline` itself.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, Transport};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::feed::{FeedSettings, Feeder, STOP_WAIT, Sink};
use super::payload::Topics;
use crate::alerts::Alert;
use crate::ami::backoff::Backoff;
use crate::config::bridges::{BrokerLogin, MqttConfig};
use crate::metrics::Metrics;
use crate::state::StateStore;

pub use super::feed::{OFFLINE, ONLINE};

/// The `bridge` label of this publisher's metrics.
const LABEL: &str = "mqtt";

/// Client options for a broker login: keepalive, credentials, TLS (rustls, system roots).
pub fn options(login: &BrokerLogin, keep_alive: Duration) -> MqttOptions {
    let mut o = MqttOptions::new(&login.client_id, &login.addr.host, login.addr.port);
    o.set_keep_alive(keep_alive);
    o.set_clean_session(true);
    o.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
    if let Some(user) = &login.username {
        let pw = login.password.as_ref().map(|p| p.expose()).unwrap_or("");
        o.set_credentials(user, pw);
    }
    if login.addr.tls {
        o.set_transport(Transport::tls_with_default_config());
    }
    o
}

/// The QoS of a config number (0, 1, 2; validated by config).
pub fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// Starts the publisher; the handle ends after an orderly stop (`offline` published).
pub fn spawn(
    cfg: MqttConfig,
    store: StateStore,
    alerts: broadcast::Receiver<Arc<Alert>>,
    metrics: Metrics,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let topics = Topics {
        prefix: cfg.topic_prefix.clone(),
        name: cfg.name.clone(),
        sep: '/',
    };
    let mut opts = options(&cfg.login, Duration::from_secs(5));
    opts.set_last_will(LastWill::new(topics.status(), OFFLINE, qos(cfg.qos), true));
    opts.set_inflight(100);
    let (client, eventloop) = AsyncClient::new(opts, cfg.queue);
    let (sessions_tx, sessions) = watch::channel(0u64);
    let net_stop = CancellationToken::new();
    let net = tokio::spawn(drive(
        eventloop,
        metrics.clone(),
        sessions_tx,
        net_stop.clone(),
    ));
    let changes = store.subscribe();
    let sink = MqttSink {
        client,
        qos: qos(cfg.qos),
    };
    let set = FeedSettings {
        label: LABEL,
        topics,
        retain: cfg.retain,
        discovery: cfg.home_assistant.then(|| cfg.discovery_prefix.clone()),
    };
    let feeder = Feeder::new(sink, set, store, metrics);
    tokio::spawn(async move {
        feeder.run(changes, alerts, sessions, stop).await;
        // The network task ends by itself once DISCONNECT is written (or is stopped).
        let mut net = net;
        if tokio::time::timeout(STOP_WAIT, &mut net).await.is_err() {
            net_stop.cancel();
            let _ = net.await;
        }
    })
}

/// Drives the connection: polls the event loop, reconnects with backoff, counts what is
/// written, and numbers each new session in `sessions`.
async fn drive(
    mut eventloop: rumqttc::EventLoop,
    metrics: Metrics,
    sessions: watch::Sender<u64>,
    stop: CancellationToken,
) {
    let connected = metrics.bridge_connected.with_label_values(&[LABEL]);
    let published = metrics.bridge_published.with_label_values(&[LABEL]);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30), 0.2);
    let mut was_up = true;
    loop {
        let got = tokio::select! {
            _ = stop.cancelled() => break,
            got = eventloop.poll() => got,
        };
        match got {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connected.set(1);
                backoff.reset();
                was_up = true;
                tracing::info!("[BRIDGE] MQTT connected to the broker");
                sessions.send_modify(|n| *n += 1);
            }
            Ok(Event::Outgoing(Outgoing::Publish(_))) => published.inc(),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(e) => {
                connected.set(0);
                if was_up {
                    tracing::warn!("[BRIDGE] MQTT broker unreachable: {e}; retrying with backoff");
                    was_up = false;
                }
                let wait = backoff.next_delay().max(Duration::from_millis(100));
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    connected.set(0);
}

/// The MQTT client as a [`Sink`]: `try_publish` into its bounded request queue.
struct MqttSink {
    client: AsyncClient,
    qos: QoS,
}

impl Sink for MqttSink {
    fn offer(&self, topic: String, retain: bool, payload: String) -> bool {
        self.client
            .try_publish(topic, self.qos, retain, payload)
            .is_ok()
    }

    async fn goodbye(&self, status: String, retain: bool) {
        let _ = self.client.publish(status, self.qos, retain, OFFLINE).await;
        let _ = self.client.disconnect().await;
    }
}
