//! The node model as readers see it: plain, serialisable views of nodes and links.
//!
//! The state engine (`state::engine`) owns the live model and produces these views for the
//! REST API, WebSocket snapshots, Lua (`nexus.nodes()`) and change events. Times that
//! advance (connected time, seconds since a key) are computed when the view is made, so
//! they never freeze between polls.

use serde::{Deserialize, Serialize};

/// What is at the other end of a link (ami-app-rpt.md §2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkKind {
    /// An AllStar node (decimal number).
    Allstar,
    /// An EchoLink user: `3` + 6 digits; XStat shows no IP.
    Echolink,
    /// An IAX client, phone portal (`-P`) or other text-named peer.
    Client,
}

impl LinkKind {
    /// Classifies a link name as app_rpt reports it.
    pub fn of(name: &str) -> LinkKind {
        if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
            if name.len() == 7 && name.starts_with('3') {
                LinkKind::Echolink
            } else {
                LinkKind::Allstar
            }
        } else {
            LinkKind::Client
        }
    }
}

/// Link direction from XStat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Direction {
    #[serde(rename = "IN")]
    In,
    #[serde(rename = "OUT")]
    Out,
}

/// Link mode: `T` transceive, `R` receive-only (monitor), `C` connecting, `L` local
/// monitor (present in XStat but absent from `RPT_ALINKS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Mode {
    T,
    R,
    C,
    L,
}

impl Mode {
    /// Parses a mode letter.
    pub fn from_letter(c: char) -> Option<Mode> {
        match c {
            'T' => Some(Mode::T),
            'R' => Some(Mode::R),
            'C' => Some(Mode::C),
            'L' => Some(Mode::L),
            _ => None,
        }
    }
}

/// Connection state from XStat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LinkState {
    #[serde(rename = "ESTABLISHED")]
    Established,
    #[serde(rename = "CONNECTING")]
    Connecting,
}

/// One link of a node, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkView {
    /// The linked node's name: a number, or text for IAX clients.
    pub node: String,
    pub kind: LinkKind,
    /// Peer IP; `None` for EchoLink/TLB (XStat column empty) or `(none)`.
    pub ip: Option<String>,
    pub direction: Option<Direction>,
    /// Connected time as `HH:MM:SS` (hours may exceed 99).
    pub elapsed: String,
    pub connected_seconds: u64,
    pub mode: Option<Mode>,
    pub state: Option<LinkState>,
    /// Audio is being received from this link now.
    pub keyed: bool,
    /// Seconds since this link last keyed (`None` = never seen keyed).
    pub last_keyed_seconds: Option<u64>,
    /// Seconds since this link last unkeyed (`None` = never).
    pub last_unkeyed_seconds: Option<u64>,
    /// XStat reconnect counter.
    pub reconnects: u32,
    /// From `astdb.txt`, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callsign: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Keyups seen from this link since it connected.
    pub keyups: u64,
    /// Seconds of audio received from this link since it connected.
    pub keyed_seconds_total: f64,
    /// Keyups from this link today (UTC day), from the history store (0 without history).
    #[serde(default)]
    pub keyups_today: u64,
    /// Seconds of audio from this link today (UTC day), from the history store.
    #[serde(default)]
    pub talk_seconds_today: f64,
}

/// One node reachable through the network (`LinkedNodes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedNode {
    pub node: String,
    pub mode: Option<Mode>,
}

/// A local node, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub node_id: String,
    /// The AMI server (config `name`) this node lives on.
    pub server: String,
    pub rx_keyed: bool,
    pub tx_keyed: bool,
    pub links: Vec<LinkView>,
    /// Every node reachable through this one (adjacent and beyond).
    pub linked_nodes: Vec<LinkedNode>,
    pub poll_interval_seconds: f64,
    /// Last successful poll, RFC 3339 (`None` before the first).
    pub last_poll: Option<String>,
    /// True while the node's AMI server is disconnected: the data may be out of date.
    pub stale: bool,
    /// Local transmitter keyups since start.
    pub tx_keyups: u64,
    /// Seconds the local transmitter has been keyed since start.
    pub tx_seconds_total: f64,
    /// Local receiver keyups since start.
    pub rx_keyups: u64,
}

/// Formats seconds as app_rpt does: `HH:MM:SS`, hours not capped.
pub fn format_elapsed(secs: u64) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_link_names() {
        assert_eq!(LinkKind::of("2000"), LinkKind::Allstar);
        assert_eq!(LinkKind::of("547611"), LinkKind::Allstar);
        assert_eq!(LinkKind::of("3123456"), LinkKind::Echolink);
        assert_eq!(LinkKind::of("WD5M-P"), LinkKind::Client);
        assert_eq!(LinkKind::of(""), LinkKind::Client);
    }

    #[test]
    fn elapsed_hours_are_not_capped() {
        assert_eq!(format_elapsed(0), "00:00:00");
        assert_eq!(format_elapsed(510_372), "141:46:12");
    }
}
