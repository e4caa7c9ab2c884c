//! The metrics catalogue: every Prometheus series the daemon exports is defined here, and
//! nowhere else (`docs/metrics.md` lists them).
//!
//! Values are updated where things happen (the AMI supervisor, pollers, the state engine,
//! the WebSocket hub, the Lua host); a scrape only encodes what is already in memory and
//! never asks Asterisk anything.

mod compact;

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry, TextEncoder,
};

// Labelled families are stored compactly (`compact`: a fleet's 100,000 series); the
// exposition is the prometheus crate's.
pub use compact::{CounterVec, GaugeVec, HistogramVec, IntCounterVec, IntGaugeVec};

/// Every series, registered in one [`Registry`]. Cheap to clone: one pointer to the
/// shared [`Catalogue`] (a fleet's 6,000 pollers and sessions each hold one; a copy of every
/// handle cost 0.5 KiB each).
#[derive(Clone)]
pub struct Metrics(Arc<Catalogue>);

impl std::ops::Deref for Metrics {
    type Target = Catalogue;
    fn deref(&self) -> &Catalogue {
        &self.0
    }
}

/// The handles of every series (through [`Metrics`]).
pub struct Catalogue {
    registry: Registry,
    /// Whether per-link series are exported (config `metrics.per_link`).
    pub per_link: bool,

    // AMI sessions
    pub ami_up: IntGaugeVec,
    pub ami_reconnect_attempts: IntCounterVec,
    pub ami_connected_since: GaugeVec,
    pub ami_protocol_errors: IntCounterVec,
    pub ami_events: IntCounterVec,
    pub ami_events_dropped: IntCounterVec,
    pub ami_actions: IntCounterVec,

    // Polling
    pub polls: IntCounterVec,
    pub poll_duration: HistogramVec,
    pub poll_interval: GaugeVec,

    // Node model
    pub node_links: IntGaugeVec,
    pub node_rx_keyed: IntGaugeVec,
    pub node_tx_keyed: IntGaugeVec,
    pub node_tx_keyups: IntCounterVec,
    pub node_tx_seconds: CounterVec,
    pub node_rx_keyups: IntCounterVec,
    pub node_link_keyups: IntCounterVec,
    pub node_stale: IntGaugeVec,
    pub changes: IntCounterVec,
    /// Nodes made whole again by their first poll after a (re)connect.
    pub node_resyncs: IntCounterVec,
    /// AMI actions refused by the per-server rate limit (scripts and API together).
    pub ami_actions_rate_limited: IntCounterVec,
    pub change_latency: Histogram,

    // Per link (opt-in)
    pub link_keyed: IntGaugeVec,
    pub link_keyups: IntCounterVec,
    pub link_keyed_seconds: CounterVec,

    // HTTP / WebSocket
    pub ws_clients: IntGauge,
    pub ws_resyncs: IntCounterVec,
    pub http_requests: IntCounterVec,
    /// Connections refused, evicted or closed for breaking the HTTP limits, by kind.
    pub http_connection_errors: IntCounterVec,

    // Lua
    pub script_errors: IntCounterVec,
    pub script_timeouts: IntCounterVec,
    pub script_reloads: IntCounterVec,
    pub script_queue_dropped: IntCounterVec,
    pub scripts_loaded: IntGauge,
    pub script_disabled: IntGaugeVec,
    pub alerts_dropped: IntCounterVec,

    // History (SQLite)
    pub history_writes: IntCounter,
    pub history_write_errors: IntCounter,
    pub history_queue_dropped: IntCounter,
    pub history_queue_depth: IntGauge,

    // Broker bridges (MQTT)
    pub bridge_published: IntCounterVec,
    pub bridge_dropped: IntCounterVec,
    pub bridge_connected: IntGaugeVec,
    pub bridge_received: IntCounterVec,
    pub bridge_resyncs: IntCounterVec,

    // Alerts and voter
    pub alerts: IntCounterVec,
    pub alerts_suppressed: IntCounterVec,
    pub webhook_deliveries: IntCounterVec,
    pub voter_rssi: IntGaugeVec,
    pub voter_voted_changes: IntCounterVec,
    pub voter_receivers: IntGaugeVec,

    pub build_info: IntGaugeVec,

    // Link control
    pub control_actions: IntCounterVec,
}

/// One series of the catalogue: its name, help, label names (none for a plain series)
/// and, for a histogram, its buckets.
struct Def {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
}

impl Def {
    const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Def {
        Def {
            name,
            help,
            labels,
            buckets: &[],
        }
    }

    const fn histogram(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Def {
        Def {
            name,
            help,
            labels,
            buckets,
        }
    }

    fn opts(&self) -> Opts {
        Opts::new(self.name, self.help)
    }

    fn histogram_opts(&self) -> HistogramOpts {
        HistogramOpts::new(self.name, self.help).buckets(self.buckets.to_vec())
    }
}

/// A kind of series that can be made from a [`Def`].
trait Series: Clone + prometheus::core::Collector + Sized + 'static {
    fn make(d: &Def) -> prometheus::Result<Self>;
}

macro_rules! series {
    ($($t:ty => |$d:ident| $make:expr;)*) => {
        $(impl Series for $t {
            fn make($d: &Def) -> prometheus::Result<Self> {
                $make
            }
        })*
    };
}

series! {
    IntGaugeVec => |d| IntGaugeVec::new(d.name, d.help, d.labels);
    IntCounterVec => |d| IntCounterVec::new(d.name, d.help, d.labels);
    GaugeVec => |d| GaugeVec::new(d.name, d.help, d.labels);
    CounterVec => |d| CounterVec::new(d.name, d.help, d.labels);
    HistogramVec => |d| HistogramVec::new(d.name, d.help, d.labels, d.buckets);
    Histogram => |d| Histogram::with_opts(d.histogram_opts());
    IntGauge => |d| IntGauge::with_opts(d.opts());
    IntCounter => |d| IntCounter::with_opts(d.opts());
}

/// Makes and registers one series. The catalogue is fixed at compile time, so a bad
/// definition or a duplicate name is a bug caught by every test, not a runtime condition.
fn reg<T: Series>(r: &Registry, d: &Def) -> T {
    let m = T::make(d).expect("metric definition is valid");
    r.register(Box::new(m.clone()))
        .expect("metric names are unique");
    m
}

/// Buckets of the duration histograms, in seconds.
const SECS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

// AMI sessions
const AMI_UP: Def = Def::new(
    "nexus_ami_up",
    "1 while the AMI session to the server is logged in, else 0.",
    &["server"],
);
const AMI_RECONNECT_ATTEMPTS: Def = Def::new(
    "nexus_ami_reconnect_attempts_total",
    "AMI connection attempts after the first.",
    &["server"],
);
const AMI_CONNECTED_SINCE: Def = Def::new(
    "nexus_ami_connected_since_timestamp_seconds",
    "Unix time the current AMI session was established (0 while down); uptime = time() - this.",
    &["server"],
);
const AMI_PROTOCOL_ERRORS: Def = Def::new(
    "nexus_ami_protocol_errors_total",
    "AMI protocol errors (oversized or malformed frames, bad banner).",
    &["server"],
);
const AMI_EVENTS: Def = Def::new(
    "nexus_ami_events_total",
    "AMI events received, by event name (RPT_* and VarSet; others as 'other').",
    &["server", "event"],
);
const AMI_EVENTS_DROPPED: Def = Def::new(
    "nexus_ami_events_dropped_total",
    "AMI events dropped because the state engine queue was full (recovered by the next poll).",
    &["server"],
);
const AMI_ACTIONS: Def = Def::new(
    "nexus_ami_actions_total",
    "AMI actions sent, by action and result (ok, error, timeout, disconnected).",
    &["server", "action", "result"],
);

// Polling
const POLLS: Def = Def::new(
    "nexus_polls_total",
    "XStat/SawStat polls by result (ok, error, skipped).",
    &["node", "result"],
);
const POLL_DURATION: Def = Def::histogram(
    "nexus_poll_duration_seconds",
    "Time for one XStat+SawStat poll.",
    &["node"],
    SECS_BUCKETS,
);
const POLL_INTERVAL: Def = Def::new(
    "nexus_poll_interval_seconds",
    "Current polling interval of the node.",
    &["node"],
);

// Node model
const NODE_LINKS: Def = Def::new(
    "nexus_node_links",
    "Links directly connected to the node.",
    &["node"],
);
const NODE_RX_KEYED: Def = Def::new(
    "nexus_node_rx_keyed",
    "1 while the node's local receiver is active.",
    &["node"],
);
const NODE_TX_KEYED: Def = Def::new(
    "nexus_node_tx_keyed",
    "1 while the node's transmitter is keyed.",
    &["node"],
);
const NODE_TX_KEYUPS: Def = Def::new(
    "nexus_node_tx_keyups_total",
    "Transmitter keyups of the node.",
    &["node"],
);
const NODE_TX_SECONDS: Def = Def::new(
    "nexus_node_tx_seconds_total",
    "Seconds the node's transmitter has been keyed.",
    &["node"],
);
const NODE_RX_KEYUPS: Def = Def::new(
    "nexus_node_rx_keyups_total",
    "Local receiver keyups of the node.",
    &["node"],
);
const NODE_LINK_KEYUPS: Def = Def::new(
    "nexus_node_link_keyups_total",
    "Keyups received from any link of the node.",
    &["node"],
);
const NODE_STALE: Def = Def::new(
    "nexus_node_stale",
    "1 while the node's AMI server is disconnected and its data may be out of date.",
    &["node"],
);
const CHANGES: Def = Def::new(
    "nexus_changes_total",
    "State changes emitted, by kind.",
    &["kind"],
);
const NODE_RESYNCS: Def = Def::new(
    "nexus_node_resyncs_total",
    "First good poll of a node after its AMI server (re)connected.",
    &["node"],
);
const AMI_ACTIONS_RATE_LIMITED: Def = Def::new(
    "nexus_ami_actions_rate_limited_total",
    "Actions from scripts and the API refused by the per-server rate limit.",
    &["server"],
);
const CHANGE_LATENCY: Def = Def::histogram(
    "nexus_change_latency_seconds",
    "Time from an AMI frame's arrival to its change being published.",
    &[],
    &[0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05],
);

// Per link (opt-in)
const LINK_KEYED: Def = Def::new(
    "nexus_link_keyed",
    "1 while audio is received from the link (only with metrics.per_link).",
    &["node", "link"],
);
const LINK_KEYUPS: Def = Def::new(
    "nexus_link_keyups_total",
    "Keyups from the link (only with metrics.per_link).",
    &["node", "link"],
);
const LINK_KEYED_SECONDS: Def = Def::new(
    "nexus_link_keyed_seconds_total",
    "Seconds of audio from the link (only with metrics.per_link).",
    &["node", "link"],
);

// HTTP / WebSocket
const WS_CLIENTS: Def = Def::new(
    "nexus_websocket_clients",
    "Connected WebSocket clients.",
    &[],
);
const WS_RESYNCS: Def = Def::new(
    "nexus_websocket_resyncs_total",
    "WebSocket clients resynced or dropped, by reason (slow, replay_miss, epoch_changed, dropped).",
    &["reason"],
);
const HTTP_CONNECTION_ERRORS: Def = Def::new(
    "nexus_http_connection_errors_total",
    "HTTP connections refused, evicted or closed, by kind (malformed, header_timeout, evicted, refused, accept).",
    &["kind"],
);
const HTTP_REQUESTS: Def = Def::new(
    "nexus_http_requests_total",
    "HTTP API requests by route and status class.",
    &["route", "status"],
);

// Lua
const SCRIPT_ERRORS: Def = Def::new(
    "nexus_script_errors_total",
    "Lua runtime and load errors, by script.",
    &["script"],
);
const SCRIPT_TIMEOUTS: Def = Def::new(
    "nexus_script_timeouts_total",
    "Lua callbacks aborted for exceeding their instruction budget.",
    &["script"],
);
const SCRIPT_RELOADS: Def = Def::new(
    "nexus_script_reloads_total",
    "Lua script (re)loads, by result (ok, error).",
    &["script", "result"],
);
const SCRIPT_QUEUE_DROPPED: Def = Def::new(
    "nexus_script_queue_dropped_total",
    "Changes not delivered to Lua because its queue was full.",
    &["queue"],
);
const SCRIPT_DISABLED: Def = Def::new(
    "nexus_script_disabled",
    "1 while a Lua script is disabled (repeated failures, timeouts or the watchdog), else 0.",
    &["script"],
);
const ALERTS_DROPPED: Def = Def::new(
    "nexus_alerts_dropped_total",
    "Alerts from scripts refused by a limit, by reason (rate, keys).",
    &["reason"],
);
const SCRIPTS_LOADED: Def = Def::new(
    "nexus_scripts_loaded",
    "Lua scripts currently loaded and enabled.",
    &[],
);

// History (SQLite)
const HISTORY_WRITES: Def = Def::new(
    "nexus_history_writes_total",
    "Items (changes, alerts, audit records, store writes) committed to the history database.",
    &[],
);
const HISTORY_WRITE_ERRORS: Def = Def::new(
    "nexus_history_write_errors_total",
    "History items or batches that could not be written (see the log).",
    &[],
);
const HISTORY_QUEUE_DROPPED: Def = Def::new(
    "nexus_history_queue_dropped_total",
    "Items not recorded because the history writer's queue was full.",
    &[],
);
const HISTORY_QUEUE_DEPTH: Def = Def::new(
    "nexus_history_queue_depth",
    "Items waiting for the history writer.",
    &[],
);

// Broker bridges (MQTT, NATS)
const BRIDGE_PUBLISHED: Def = Def::new(
    "nexus_bridge_messages_published_total",
    "Messages written to a broker, by bridge (mqtt, nats).",
    &["bridge"],
);
const BRIDGE_DROPPED: Def = Def::new(
    "nexus_bridge_messages_dropped_total",
    "Messages not published, by bridge and reason (queue_full while the broker is away, lagged behind the change stream).",
    &["bridge", "reason"],
);
const BRIDGE_CONNECTED: Def = Def::new(
    "nexus_bridge_connected",
    "1 while a bridge or source is connected to its broker, else 0.",
    &["bridge"],
);
const BRIDGE_RECEIVED: Def = Def::new(
    "nexus_bridge_messages_received_total",
    "Messages read from a broker by a source, by source and kind (state, event, status, ignored).",
    &["bridge", "kind"],
);
const BRIDGE_RESYNCS: Def = Def::new(
    "nexus_bridge_source_resyncs_total",
    "Times a source took the retained state again after a gap in a daemon's sequence numbers.",
    &["bridge"],
);

// Alerts and voter
const ALERTS: Def = Def::new(
    "nexus_alerts_total",
    "Alerts raised, by severity.",
    &["severity"],
);
const ALERTS_SUPPRESSED: Def = Def::new(
    "nexus_alerts_suppressed_total",
    "Alerts suppressed by the per-key rate limit.",
    &["severity"],
);
const WEBHOOK_DELIVERIES: Def = Def::new(
    "nexus_alert_webhook_deliveries_total",
    "Alert webhook deliveries by result (ok, failed).",
    &["result"],
);
const VOTER_RSSI: Def = Def::new(
    "nexus_voter_rssi",
    "Last RSSI (0-255) of each voter receiver.",
    &["node", "receiver"],
);
const VOTER_VOTED_CHANGES: Def = Def::new(
    "nexus_voter_voted_changes_total",
    "Times the voted (winning) receiver changed.",
    &["node"],
);
const VOTER_RECEIVERS: Def = Def::new(
    "nexus_voter_receivers",
    "Voter receivers reported for the node.",
    &["node"],
);

// Build
const BUILD_INFO: Def = Def::new(
    "nexus_build_info",
    "Always 1; the version label says which build runs.",
    &["version"],
);

// Link control
const CONTROL_ACTIONS: Def = Def::new(
    "nexus_control_actions_total",
    "Link control attempts by action (connect, disconnect, disconnect_all) and result (verified, unverified, already, refused, failed).",
    &["action", "result"],
);

impl Metrics {
    /// Builds and registers the whole catalogue (the definitions above, in order).
    pub fn new(per_link: bool) -> Metrics {
        let r = Registry::new();
        let m = Catalogue {
            per_link,
            ami_up: reg(&r, &AMI_UP),
            ami_reconnect_attempts: reg(&r, &AMI_RECONNECT_ATTEMPTS),
            ami_connected_since: reg(&r, &AMI_CONNECTED_SINCE),
            ami_protocol_errors: reg(&r, &AMI_PROTOCOL_ERRORS),
            ami_events: reg(&r, &AMI_EVENTS),
            ami_events_dropped: reg(&r, &AMI_EVENTS_DROPPED),
            ami_actions: reg(&r, &AMI_ACTIONS),
            polls: reg(&r, &POLLS),
            poll_duration: reg(&r, &POLL_DURATION),
            poll_interval: reg(&r, &POLL_INTERVAL),
            node_links: reg(&r, &NODE_LINKS),
            node_rx_keyed: reg(&r, &NODE_RX_KEYED),
            node_tx_keyed: reg(&r, &NODE_TX_KEYED),
            node_tx_keyups: reg(&r, &NODE_TX_KEYUPS),
            node_tx_seconds: reg(&r, &NODE_TX_SECONDS),
            node_rx_keyups: reg(&r, &NODE_RX_KEYUPS),
            node_link_keyups: reg(&r, &NODE_LINK_KEYUPS),
            node_stale: reg(&r, &NODE_STALE),
            changes: reg(&r, &CHANGES),
            node_resyncs: reg(&r, &NODE_RESYNCS),
            ami_actions_rate_limited: reg(&r, &AMI_ACTIONS_RATE_LIMITED),
            change_latency: reg(&r, &CHANGE_LATENCY),
            link_keyed: reg(&r, &LINK_KEYED),
            link_keyups: reg(&r, &LINK_KEYUPS),
            link_keyed_seconds: reg(&r, &LINK_KEYED_SECONDS),
            ws_clients: reg(&r, &WS_CLIENTS),
            ws_resyncs: reg(&r, &WS_RESYNCS),
            http_connection_errors: reg(&r, &HTTP_CONNECTION_ERRORS),
            http_requests: reg(&r, &HTTP_REQUESTS),
            script_errors: reg(&r, &SCRIPT_ERRORS),
            script_timeouts: reg(&r, &SCRIPT_TIMEOUTS),
            script_reloads: reg(&r, &SCRIPT_RELOADS),
            script_queue_dropped: reg(&r, &SCRIPT_QUEUE_DROPPED),
            script_disabled: reg(&r, &SCRIPT_DISABLED),
            alerts_dropped: reg(&r, &ALERTS_DROPPED),
            scripts_loaded: reg(&r, &SCRIPTS_LOADED),
            history_writes: reg(&r, &HISTORY_WRITES),
            history_write_errors: reg(&r, &HISTORY_WRITE_ERRORS),
            history_queue_dropped: reg(&r, &HISTORY_QUEUE_DROPPED),
            history_queue_depth: reg(&r, &HISTORY_QUEUE_DEPTH),
            bridge_published: reg(&r, &BRIDGE_PUBLISHED),
            bridge_dropped: reg(&r, &BRIDGE_DROPPED),
            bridge_connected: reg(&r, &BRIDGE_CONNECTED),
            bridge_received: reg(&r, &BRIDGE_RECEIVED),
            bridge_resyncs: reg(&r, &BRIDGE_RESYNCS),
            alerts: reg(&r, &ALERTS),
            alerts_suppressed: reg(&r, &ALERTS_SUPPRESSED),
            webhook_deliveries: reg(&r, &WEBHOOK_DELIVERIES),
            voter_rssi: reg(&r, &VOTER_RSSI),
            voter_voted_changes: reg(&r, &VOTER_VOTED_CHANGES),
            voter_receivers: reg(&r, &VOTER_RECEIVERS),
            build_info: reg(&r, &BUILD_INFO),
            control_actions: reg(&r, &CONTROL_ACTIONS),
            registry: r,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Metrics(Arc::new(m))
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            return format!("# encoding error: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Removes every per-link series of a link that went away.
    pub fn remove_link(&self, node: &str, link: &str) {
        let labels = [node, link];
        let _ = self.link_keyed.remove_label_values(&labels);
        let _ = self.link_keyups.remove_label_values(&labels);
        let _ = self.link_keyed_seconds.remove_label_values(&labels);
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_registers_and_renders() {
        let m = Metrics::new(true);
        m.ami_up.with_label_values(&["default"]).set(1);
        m.link_keyups.with_label_values(&["1999", "2000"]).inc();
        let text = m.render();
        assert!(text.contains("nexus_ami_up{server=\"default\"} 1"));
        assert!(text.contains("nexus_build_info"));
        m.remove_link("1999", "2000");
        assert!(!m.render().contains("link=\"2000\""));
    }
}
