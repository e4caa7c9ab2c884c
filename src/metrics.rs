//! The metrics catalogue: every Prometheus series the daemon exports is defined here, and
//! nowhere else (`docs/metrics.md` lists them).
//!
//! Values are updated where things happen (the AMI supervisor, pollers, the state engine,
//! the WebSocket hub, the Lua host); a scrape only encodes what is already in memory and
//! never asks Asterisk anything.

use prometheus::{
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every series, registered in one [`Registry`]. Cheap to clone (handles are shared).
#[derive(Clone)]
pub struct Metrics {
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

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

macro_rules! reg {
    ($reg:expr, $metric:expr) => {{
        let m = $metric.expect("metric definition is valid");
        $reg.register(Box::new(m.clone()))
            .expect("metric names are unique");
        m
    }};
}

impl Metrics {
    /// Builds and registers the whole catalogue.
    pub fn new(per_link: bool) -> Metrics {
        let r = Registry::new();
        let secs_buckets = vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let m = Metrics {
            per_link,
            ami_up: reg!(
                r,
                IntGaugeVec::new(
                    opts(
                        "nexus_ami_up",
                        "1 while the AMI session to the server is logged in, else 0."
                    ),
                    &["server"]
                )
            ),
            ami_reconnect_attempts: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_ami_reconnect_attempts_total",
                        "AMI connection attempts after the first."
                    ),
                    &["server"]
                )
            ),
            ami_connected_since: reg!(
                r,
                GaugeVec::new(
                    opts(
                        "nexus_ami_connected_since_timestamp_seconds",
                        "Unix time the current AMI session was established (0 while down); uptime = time() - this."
                    ),
                    &["server"]
                )
            ),
            ami_protocol_errors: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_ami_protocol_errors_total",
                        "AMI protocol errors (oversized or malformed frames, bad banner)."
                    ),
                    &["server"]
                )
            ),
            ami_events: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_ami_events_total",
                        "AMI events received, by event name (RPT_* and VarSet; others as 'other')."
                    ),
                    &["server", "event"]
                )
            ),
            ami_events_dropped: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_ami_events_dropped_total",
                        "AMI events dropped because the state engine queue was full (recovered by the next poll)."
                    ),
                    &["server"]
                )
            ),
            ami_actions: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_ami_actions_total",
                        "AMI actions sent, by action and result (ok, error, timeout, disconnected)."
                    ),
                    &["server", "action", "result"]
                )
            ),
            polls: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_polls_total",
                        "XStat/SawStat polls by result (ok, error, skipped)."
                    ),
                    &["node", "result"]
                )
            ),
            poll_duration: reg!(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "nexus_poll_duration_seconds",
                        "Time for one XStat+SawStat poll."
                    )
                    .buckets(secs_buckets.clone()),
                    &["node"]
                )
            ),
            poll_interval: reg!(
                r,
                GaugeVec::new(
                    opts(
                        "nexus_poll_interval_seconds",
                        "Current polling interval of the node."
                    ),
                    &["node"]
                )
            ),
            node_links: reg!(
                r,
                IntGaugeVec::new(
                    opts("nexus_node_links", "Links directly connected to the node."),
                    &["node"]
                )
            ),
            node_rx_keyed: reg!(
                r,
                IntGaugeVec::new(
                    opts(
                        "nexus_node_rx_keyed",
                        "1 while the node's local receiver is active."
                    ),
                    &["node"]
                )
            ),
            node_tx_keyed: reg!(
                r,
                IntGaugeVec::new(
                    opts(
                        "nexus_node_tx_keyed",
                        "1 while the node's transmitter is keyed."
                    ),
                    &["node"]
                )
            ),
            node_tx_keyups: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_node_tx_keyups_total",
                        "Transmitter keyups of the node."
                    ),
                    &["node"]
                )
            ),
            node_tx_seconds: reg!(
                r,
                CounterVec::new(
                    opts(
                        "nexus_node_tx_seconds_total",
                        "Seconds the node's transmitter has been keyed."
                    ),
                    &["node"]
                )
            ),
            node_rx_keyups: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_node_rx_keyups_total",
                        "Local receiver keyups of the node."
                    ),
                    &["node"]
                )
            ),
            node_link_keyups: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_node_link_keyups_total",
                        "Keyups received from any link of the node."
                    ),
                    &["node"]
                )
            ),
            node_stale: reg!(
                r,
                IntGaugeVec::new(
                    opts(
                        "nexus_node_stale",
                        "1 while the node's AMI server is disconnected and its data may be out of date."
                    ),
                    &["node"]
                )
            ),
            changes: reg!(
                r,
                IntCounterVec::new(
                    opts("nexus_changes_total", "State changes emitted, by kind."),
                    &["kind"]
                )
            ),
            node_resyncs: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_node_resyncs_total",
                        "First good poll of a node after its AMI server (re)connected."
                    ),
                    &["node"]
                )
            ),
            ami_actions_rate_limited: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_ami_actions_rate_limited_total",
                        "Actions from scripts and the API refused by the per-server rate limit."
                    ),
                    &["server"]
                )
            ),
            change_latency: reg!(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "nexus_change_latency_seconds",
                        "Time from an AMI frame's arrival to its change being published."
                    )
                    .buckets(vec![
                        0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05
                    ])
                )
            ),
            link_keyed: reg!(
                r,
                IntGaugeVec::new(
                    opts(
                        "nexus_link_keyed",
                        "1 while audio is received from the link (only with metrics.per_link)."
                    ),
                    &["node", "link"]
                )
            ),
            link_keyups: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_link_keyups_total",
                        "Keyups from the link (only with metrics.per_link)."
                    ),
                    &["node", "link"]
                )
            ),
            link_keyed_seconds: reg!(
                r,
                CounterVec::new(
                    opts(
                        "nexus_link_keyed_seconds_total",
                        "Seconds of audio from the link (only with metrics.per_link)."
                    ),
                    &["node", "link"]
                )
            ),
            ws_clients: reg!(
                r,
                IntGauge::with_opts(opts(
                    "nexus_websocket_clients",
                    "Connected WebSocket clients."
                ))
            ),
            ws_resyncs: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_websocket_resyncs_total",
                        "WebSocket clients resynced or dropped, by reason (slow, replay_miss, epoch_changed, dropped)."
                    ),
                    &["reason"]
                )
            ),
            http_connection_errors: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_http_connection_errors_total",
                        "HTTP connections refused, evicted or closed, by kind (malformed, header_timeout, evicted, refused, accept)."
                    ),
                    &["kind"]
                )
            ),
            http_requests: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_http_requests_total",
                        "HTTP API requests by route and status class."
                    ),
                    &["route", "status"]
                )
            ),
            script_errors: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_script_errors_total",
                        "Lua runtime and load errors, by script."
                    ),
                    &["script"]
                )
            ),
            script_timeouts: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_script_timeouts_total",
                        "Lua callbacks aborted for exceeding their instruction budget."
                    ),
                    &["script"]
                )
            ),
            script_reloads: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_script_reloads_total",
                        "Lua script (re)loads, by result (ok, error)."
                    ),
                    &["script", "result"]
                )
            ),
            script_queue_dropped: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_script_queue_dropped_total",
                        "Changes not delivered to Lua because its queue was full."
                    ),
                    &["queue"]
                )
            ),
            script_disabled: reg!(
                r,
                IntGaugeVec::new(
                    opts(
                        "nexus_script_disabled",
                        "1 while a Lua script is disabled (repeated failures, timeouts or the watchdog), else 0."
                    ),
                    &["script"]
                )
            ),
            alerts_dropped: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_alerts_dropped_total",
                        "Alerts from scripts refused by a limit, by reason (rate, keys)."
                    ),
                    &["reason"]
                )
            ),
            scripts_loaded: reg!(
                r,
                IntGauge::with_opts(opts(
                    "nexus_scripts_loaded",
                    "Lua scripts currently loaded and enabled."
                ))
            ),
            history_writes: reg!(
                r,
                IntCounter::with_opts(opts(
                    "nexus_history_writes_total",
                    "Items (changes, alerts, audit records, store writes) committed to the history database."
                ))
            ),
            history_write_errors: reg!(
                r,
                IntCounter::with_opts(opts(
                    "nexus_history_write_errors_total",
                    "History items or batches that could not be written (see the log)."
                ))
            ),
            history_queue_dropped: reg!(
                r,
                IntCounter::with_opts(opts(
                    "nexus_history_queue_dropped_total",
                    "Items not recorded because the history writer's queue was full."
                ))
            ),
            history_queue_depth: reg!(
                r,
                IntGauge::with_opts(opts(
                    "nexus_history_queue_depth",
                    "Items waiting for the history writer."
                ))
            ),
            bridge_published: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_bridge_messages_published_total",
                        "Messages written to a broker, by bridge (mqtt, nats)."
                    ),
                    &["bridge"]
                )
            ),
            bridge_dropped: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_bridge_messages_dropped_total",
                        "Messages not published, by bridge and reason (queue_full while the broker is away, lagged behind the change stream)."
                    ),
                    &["bridge", "reason"]
                )
            ),
            bridge_connected: reg!(
                r,
                IntGaugeVec::new(
                    opts(
                        "nexus_bridge_connected",
                        "1 while a bridge or source is connected to its broker, else 0."
                    ),
                    &["bridge"]
                )
            ),
            bridge_received: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_bridge_messages_received_total",
                        "Messages read from a broker by a source, by source and kind (state, event, status, ignored)."
                    ),
                    &["bridge", "kind"]
                )
            ),
            bridge_resyncs: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_bridge_source_resyncs_total",
                        "Times a source took the retained state again after a gap in a daemon's sequence numbers."
                    ),
                    &["bridge"]
                )
            ),
            alerts: reg!(
                r,
                IntCounterVec::new(
                    opts("nexus_alerts_total", "Alerts raised, by severity."),
                    &["severity"]
                )
            ),
            alerts_suppressed: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_alerts_suppressed_total",
                        "Alerts suppressed by the per-key rate limit."
                    ),
                    &["severity"]
                )
            ),
            webhook_deliveries: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_alert_webhook_deliveries_total",
                        "Alert webhook deliveries by result (ok, failed)."
                    ),
                    &["result"]
                )
            ),
            voter_rssi: reg!(
                r,
                IntGaugeVec::new(
                    opts(
                        "nexus_voter_rssi",
                        "Last RSSI (0-255) of each voter receiver."
                    ),
                    &["node", "receiver"]
                )
            ),
            voter_voted_changes: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_voter_voted_changes_total",
                        "Times the voted (winning) receiver changed."
                    ),
                    &["node"]
                )
            ),
            voter_receivers: reg!(
                r,
                IntGaugeVec::new(
                    opts(
                        "nexus_voter_receivers",
                        "Voter receivers reported for the node."
                    ),
                    &["node"]
                )
            ),
            build_info: reg!(
                r,
                IntGaugeVec::new(
                    opts(
                        "nexus_build_info",
                        "Always 1; the version label says which build runs."
                    ),
                    &["version"]
                )
            ),
            control_actions: reg!(
                r,
                IntCounterVec::new(
                    opts(
                        "nexus_control_actions_total",
                        "Link control attempts by action (connect, disconnect, disconnect_all) and result (verified, unverified, already, refused, failed)."
                    ),
                    &["action", "result"]
                )
            ),
            registry: r,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
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
