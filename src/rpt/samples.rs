//! Real and composed wire samples from `shared/reference/ami-app-rpt.md`, copied verbatim
//! (trailing spaces included), and a helper that decodes them with the real codec.
//!
//! Each constant is what the server writes after the banner; lines end in CRLF and each
//! frame ends with an empty line.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::ami::{AmiCodec, Frame, Incoming};

/// Decodes server bytes (a banner is put in front) into frames.
pub fn decode(wire: &str) -> Vec<Frame> {
    let mut codec = AmiCodec::client(1 << 24);
    let mut buf = BytesMut::from(format!("Asterisk Call Manager/11.0.0\r\n{wire}").as_bytes());
    let mut frames = Vec::new();
    while let Some(item) = codec.decode(&mut buf).expect("sample decodes") {
        if let Incoming::Frame(frame) = item {
            frames.push(frame);
        }
    }
    assert!(buf.is_empty(), "sample ends inside a frame");
    frames
}

/// Decodes a sample that holds exactly one frame.
pub fn frame(wire: &str) -> Frame {
    let mut frames = decode(wire);
    assert_eq!(frames.len(), 1, "one frame expected");
    frames.remove(0)
}

/// §5 composed session: the XStat reply for node 1999 (app_rpt ≥ 3.5, columns padded).
pub const SESSION_XSTAT: &str = concat!(
    "Response: Success\r\n",
    "ActionID: 2\r\n",
    "Node: 1999\r\n",
    "Conn: 3123456                       0           IN         00:02:15            ESTABLISHED         \r\n",
    "Conn: 2001      198.51.100.7        0           IN         00:10:20            ESTABLISHED         \r\n",
    "Conn: 2000      192.0.2.10          1           OUT        01:15:30            ESTABLISHED         \r\n",
    "LinkedNodes: T2000, T2001, T2005, T2006, T3123456\r\n",
    "Var: RPT_NUMLINKS=5\r\n",
    "Var: RPT_LINKS=5,T3123456,T2001,T2000,T2005,T2006\r\n",
    "Var: RPT_NUMALINKS=3\r\n",
    "Var: RPT_ALINKS=3,3123456TU,2001TU,2000TK\r\n",
    "Var: RPT_TXKEYED=0\r\n",
    "Var: RPT_ETXKEYED=0\r\n",
    "Var: RPT_AUTOPATCHUP=0\r\n",
    "Var: RPT_RXKEYED=0\r\n",
    "parrot_ena: 0\r\n",
    "sys_ena: 0\r\n",
    "tot_ena: 0\r\n",
    "link_ena: 0\r\n",
    "patch_ena: 0\r\n",
    "patch_state: 4\r\n",
    "sch_ena: 0\r\n",
    "user_funs: 0\r\n",
    "tail_type: 0\r\n",
    "iconns: 0\r\n",
    "tot_state: 1\r\n",
    "ider_state: 2\r\n",
    "tel_mode: 1\r\n",
    "\r\n",
);

/// §5 composed session: an `RPT_TXKEYED` event, then the SawStat reply.
pub const SESSION_SAWSTAT: &str = concat!(
    "Event: RPT_TXKEYED\r\n",
    "Privilege: call,all\r\n",
    "Node: 1999\r\n",
    "Channel: SimpleUSB/1999\r\n",
    "EventValue: 1\r\n",
    "LastKeyedTime: Tue Aug 19 09:58:02 2025\r\n",
    "LastTxKeyedTime: Tue Aug 19 10:04:41 2025\r\n",
    "\r\n",
    "Response: Success\r\n",
    "ActionID: 3\r\n",
    "Node: 1999\r\n",
    "Conn: 3123456 0 -1 -1\r\n",
    "Conn: 2001 0 95 90\r\n",
    "Conn: 2000 1 3 12\r\n",
    "\r\n",
);

/// §5 composed session: the `RPT_ALINKS` event after link 2000 unkeys.
pub const SESSION_EVENT_ALINKS: &str = concat!(
    "Event: RPT_ALINKS\r\n",
    "Privilege: call,all\r\n",
    "Node: 1999\r\n",
    "Channel: SimpleUSB/1999\r\n",
    "EventValue: 3,3123456TU,2001TU,2000TU\r\n",
    "LastKeyedTime: Tue Aug 19 09:58:02 2025\r\n",
    "LastTxKeyedTime: Tue Aug 19 10:04:41 2025\r\n",
    "\r\n",
);

/// §2.2 real XStat (brucemack `ampersand/index.md`, Asterisk 22 / app_rpt 3.5.5). The page
/// collapsed the Conn line's spacing (the time column is 17 wide, not 20); the elided
/// status flags (`...`) are left out.
pub const BRUCEMACK_XSTAT: &str = concat!(
    "```\r\n",
    "Response: Success\r\n",
    "ActionID: getXStat\r\n",
    "Node: 61057\r\n",
    "Conn: 29999     173.199.119.177     0           OUT        00:00:00         ESTABLISHED\r\n",
    "LinkedNodes: R1010, R1020, T1950, T1951, T1980, T29283, T29284, T29285, T29999, T48335, T49999\r\n",
    "Var: RPT_NUMLINKS=1\r\n",
    "Var: RPT_LINKS=1,T29999\r\n",
    "Var: RPT_NUMALINKS=1\r\n",
    "Var: RPT_ALINKS=1,29999TU\r\n",
    "Var: RPT_ETXKEYED=1\r\n",
    "Var: RPT_TXKEYED=1\r\n",
    "Var: RPT_AUTOPATCHUP=0\r\n",
    "Var: RPT_RXKEYED=0\r\n",
    "parrot_ena: 0\r\n",
    "tel_mode: 2\r\n",
    "\r\n",
);

/// §2.2 real excerpt (Allmon3 issue #35): ActionID before Response, a 141-hour link and an
/// EchoLink link with an empty IP column.
pub const ALLMON3_35_XSTAT: &str = concat!(
    "ActionID: 298b75b1-4c18-4609-8c6b-82de8149c1a0\r\n",
    "Response: Success\r\n",
    "Node: 547611\r\n",
    "Conn: 1910      127.0.0.1           0           OUT        141:46:12           ESTABLISHED\r\n",
    "Conn: 3507690                       0           IN         00:00:08            ESTABLISHED\r\n",
    "LinkedNodes: T1910, T3507690, T547612\r\n",
    "Var: RPT_ALINKS=3,1910TU,3507690TU,547612TU\r\n",
    "\r\n",
);

/// §2.3 real SawStat (Allmon3 issue #36), with the `ActionID: 3` that preceded it.
pub const ALLMON3_36_SAWSTAT: &str = concat!(
    "ActionID: 3\r\n",
    "Response: Success\r\n",
    "Node: 2510\r\n",
    "Conn: 2530 0 77 77\r\n",
    "Conn: 2000 0 -1 -1\r\n",
    "Conn: 2509 0 4148 4148\r\n",
    "\r\n",
);

/// §2.2 idle node just after start (brucemack): the values listed there, in a reply.
pub const BRUCEMACK_IDLE_XSTAT: &str = concat!(
    "Response: Success\r\n",
    "ActionID: getXStat\r\n",
    "Node: 61057\r\n",
    "LinkedNodes: <NONE>\r\n",
    "Var: RPT_ALINKS=0\r\n",
    "Var: RPT_LINKS=0\r\n",
    "Var: RPT_NUMALINKS=0\r\n",
    "Var: RPT_NUMLINKS=0\r\n",
    "Var: RPT_AUTOPATCHUP=0\r\n",
    "Var: RPT_ETXKEYED=0\r\n",
    "Var: RPT_TXKEYED=0\r\n",
    "Var: RPT_RXKEYED=0\r\n",
    "parrot_ena: 0\r\n",
    "tel_mode: 2\r\n",
    "\r\n",
);
