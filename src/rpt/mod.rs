//! app_rpt knowledge: pure parsers for XStat, SawStat, link strings and VoterStatus.
//! (Interface placeholder; the parsers land from the rpt-parsers branch.)

use crate::ami::Frame;
use crate::state::model::{Direction, LinkState, LinkedNode, Mode};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct RptError(pub String);

#[derive(Debug, Clone, PartialEq)]
pub struct XStatLink {
    pub name: String,
    pub ip: Option<String>,
    pub reconnects: u32,
    pub direction: Option<Direction>,
    pub connected_seconds: u64,
    pub state: Option<LinkState>,
}
#[derive(Debug, Clone, PartialEq)]
pub struct XStat {
    pub node: Option<String>,
    pub links: Vec<XStatLink>,
    pub linked_nodes: Vec<LinkedNode>,
    pub vars: Vec<(String, String)>,
    pub flags: Vec<(String, String)>,
    pub alinks: Option<Vec<ALink>>,
    pub rx_keyed: Option<bool>,
    pub tx_keyed: Option<bool>,
}
pub fn parse_xstat(_frame: &Frame) -> Result<XStat, RptError> {
    Err(RptError("pending".into()))
}
#[derive(Debug, Clone, PartialEq)]
pub struct SawStatLink {
    pub name: String,
    pub keyed: bool,
    pub secs_since_key: Option<u64>,
    pub secs_since_unkey: Option<u64>,
}
pub fn parse_sawstat(_frame: &Frame) -> Result<Vec<SawStatLink>, RptError> {
    Err(RptError("pending".into()))
}
#[derive(Debug, Clone, PartialEq)]
pub struct ALink {
    pub name: String,
    pub mode: Option<Mode>,
    pub keyed: bool,
}
pub fn parse_alinks(_v: &str) -> Result<Vec<ALink>, RptError> {
    Err(RptError("pending".into()))
}
pub fn parse_links(_v: &str) -> Result<Vec<LinkedNode>, RptError> {
    Err(RptError("pending".into()))
}
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VoterReceiver {
    pub name: String,
    pub flags: Vec<String>,
    pub ip: Option<String>,
    pub rssi: u32,
    pub voted: bool,
}
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VoterInstance {
    pub node: String,
    pub voted: Option<String>,
    pub receivers: Vec<VoterReceiver>,
}
pub fn parse_voter_status(_frame: &Frame) -> Result<Vec<VoterInstance>, RptError> {
    Err(RptError("pending".into()))
}
#[derive(Debug, Clone, PartialEq)]
pub enum RptEvent {
    ALinks {
        node: String,
        channel: Option<String>,
        links: Vec<ALink>,
    },
    Links {
        node: String,
        channel: Option<String>,
        nodes: Vec<LinkedNode>,
    },
    TxKeyed {
        node: String,
        channel: Option<String>,
        keyed: bool,
    },
    RxKeyed {
        node: String,
        channel: Option<String>,
        keyed: bool,
    },
    VarSet {
        channel: String,
        variable: String,
        value: String,
    },
}
pub fn parse_event(_frame: &Frame) -> Option<Result<RptEvent, RptError>> {
    None
}
