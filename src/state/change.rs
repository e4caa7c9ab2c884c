//! The change stream: one typed vocabulary for every difference the state engine sees.
//!
//! Every consumer (WebSocket clients, Lua scripts, metrics, alerts) receives the same
//! [`ChangeEvent`], serialised to JSON once ([`Published`]). Field names match the REST
//! node model (`docs/api.md`).

use std::sync::Arc;

use serde::Serialize;

use super::model::LinkView;

/// What changed. Serialised in `snake_case` (`link_connected`, `tx_unkeyed`, …).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A link appeared on a node (`link` is the new link).
    LinkConnected,
    /// A link went away (`link` is its last known state).
    LinkDisconnected,
    /// A link's direction, mode, state, IP or reconnect count changed (`fields` says which).
    LinkUpdated,
    /// Audio started arriving from a link.
    LinkKeyed,
    /// Audio from a link stopped (`duration_seconds` = how long it was keyed).
    LinkUnkeyed,
    /// The node's local receiver (COS) went active.
    RxKeyed,
    /// The node's local receiver went idle (`duration_seconds`).
    RxUnkeyed,
    /// The node's transmitter keyed.
    TxKeyed,
    /// The node's transmitter unkeyed (`duration_seconds`).
    TxUnkeyed,
    /// A node's own state changed (`fields` says which; today `stale`: the first poll
    /// after a session came up made the node current again).
    NodeUpdated,
    /// An AMI session to a server was established (login verified).
    AmiConnected,
    /// An AMI session was lost (`error` says why, in plain words).
    AmiDisconnected,
}

impl ChangeKind {
    /// Every kind, in documentation order.
    pub const ALL: [ChangeKind; 12] = [
        ChangeKind::LinkConnected,
        ChangeKind::LinkDisconnected,
        ChangeKind::LinkUpdated,
        ChangeKind::LinkKeyed,
        ChangeKind::LinkUnkeyed,
        ChangeKind::RxKeyed,
        ChangeKind::RxUnkeyed,
        ChangeKind::TxKeyed,
        ChangeKind::TxUnkeyed,
        ChangeKind::NodeUpdated,
        ChangeKind::AmiConnected,
        ChangeKind::AmiDisconnected,
    ];

    /// The wire name (`link_connected`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::LinkConnected => "link_connected",
            ChangeKind::LinkDisconnected => "link_disconnected",
            ChangeKind::LinkUpdated => "link_updated",
            ChangeKind::LinkKeyed => "link_keyed",
            ChangeKind::LinkUnkeyed => "link_unkeyed",
            ChangeKind::RxKeyed => "rx_keyed",
            ChangeKind::RxUnkeyed => "rx_unkeyed",
            ChangeKind::TxKeyed => "tx_keyed",
            ChangeKind::TxUnkeyed => "tx_unkeyed",
            ChangeKind::NodeUpdated => "node_updated",
            ChangeKind::AmiConnected => "ami_connected",
            ChangeKind::AmiDisconnected => "ami_disconnected",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<ChangeKind> {
        ChangeKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change, as every consumer sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeEvent {
    /// Monotonic sequence number, shared by every change of the process (starts at 1).
    pub seq: u64,
    /// What changed.
    pub kind: ChangeKind,
    /// Wall-clock time of the change, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The AMI server (config `name`) the change came from.
    pub server: String,
    /// The local node, when the change concerns one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The link, for `link_*` kinds: its state after the change (last known state for
    /// `link_disconnected`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkView>,
    /// For `*_unkeyed`: how long the key lasted, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// For `ami_disconnected`: the reason, in plain words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `link_updated` and `node_updated`: the names of the fields that changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<&'static str>,
}

impl ChangeEvent {
    /// A change with only the common fields set; callers fill in the rest.
    pub fn new(kind: ChangeKind, server: &str, node: Option<&str>) -> ChangeEvent {
        ChangeEvent {
            seq: 0,
            kind,
            time_ms: now_ms(),
            server: server.to_owned(),
            node: node.map(str::to_owned),
            link: None,
            duration_seconds: None,
            error: None,
            fields: Vec::new(),
        }
    }
}

/// A change together with its JSON text, built once and shared by every consumer.
#[derive(Debug)]
pub struct Published {
    pub event: ChangeEvent,
    /// `serde_json` of `event`: the WebSocket `event` message body uses it verbatim.
    pub json: String,
}

impl Published {
    /// Serialises `event` once.
    pub fn new(event: ChangeEvent) -> Arc<Published> {
        let json = serde_json::to_string(&event).unwrap_or_else(|e| {
            // Serialising plain data cannot fail; keep the stream going if it ever does.
            format!(
                "{{\"seq\":{},\"kind\":\"{}\",\"error\":\"{e}\"}}",
                event.seq, event.kind
            )
        });
        Arc::new(Published { event, json })
    }
}

/// Milliseconds since the Unix epoch (one clock for every module: `observe::now_ms`).
pub use crate::observe::now_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_their_wire_names() {
        for k in ChangeKind::ALL {
            assert_eq!(ChangeKind::parse(k.as_str()), Some(k));
            let json = serde_json::to_string(&k).expect("serialise");
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
    }

    #[test]
    fn optional_fields_are_omitted_not_null() {
        let ev = ChangeEvent::new(ChangeKind::TxKeyed, "default", Some("1999"));
        let p = Published::new(ev);
        assert!(p.json.contains("\"kind\":\"tx_keyed\""));
        assert!(!p.json.contains("null"));
        assert!(!p.json.contains("link"));
    }
}
