//! The app_rpt vocabulary shared by the parsers, the simulator and the node model: link
//! kind, direction, mode and state as XStat and the `RPT_*` variables spell them
//! (ami-app-rpt.md §2.7). They belong to the protocol; `state::model` re-exports them so
//! the model's paths keep working.

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

/// One node reachable through the network (`LinkedNodes`). `S` is `String` where it is
/// kept (events, the model) and `&str` in a borrowed XStat reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedNode<S = String> {
    pub node: S,
    pub mode: Option<Mode>,
}

impl LinkedNode<&str> {
    /// The owned copy the model keeps.
    pub fn to_owned_node(&self) -> LinkedNode {
        LinkedNode {
            node: self.node.to_owned(),
            mode: self.mode,
        }
    }

    /// Whether `kept` (the model's copy) says the same.
    pub fn same_as(&self, kept: &LinkedNode) -> bool {
        self.mode == kept.mode && self.node == kept.node
    }
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
