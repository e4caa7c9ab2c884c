//! The node model as readers see it: plain, serialisable views of nodes and links.
//!
//! The state engine (`state::engine`) owns the live model and produces these views for the
//! REST API, WebSocket snapshots, Lua (`nexus.nodes()`) and change events. Times that
//! advance (connected time, seconds since a key) are computed when the view is made, so
//! they never freeze between polls.

use serde::{Deserialize, Serialize};

use crate::rpt::VoterReceiver;

pub use crate::rpt::types::{Direction, LinkKind, LinkState, LinkedNode, Mode, format_elapsed};

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

impl Default for LinkView {
    /// An AllStar link with nothing known yet (all counters 0, no IP, never keyed): the
    /// start for views built by hand, as in tests and benchmarks.
    fn default() -> LinkView {
        LinkView {
            node: String::new(),
            kind: LinkKind::Allstar,
            ip: None,
            direction: None,
            elapsed: String::new(),
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
}

/// A local node, as the API shows it. `GET /api/nodes` writes the same fields straight
/// from the engine's state (`state::snapshot`, tested byte for byte against this type's
/// serialisation): a field added here is added there too.
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
    /// For a node taken from a broker (`sources:`): the daemon that publishes it. Absent
    /// for this daemon's own nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// The last voter receivers seen for a node (VoterStatus), kept in the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VoterSnapshot {
    pub node: String,
    /// When the receivers were read (ms since the Unix epoch).
    pub time_ms: u64,
    /// The receiver currently voted (the winner), if any.
    pub voted: Option<String>,
    pub receivers: Vec<VoterReceiver>,
}
