//! The events app_rpt emits, and the core `VarSet` events for its variables
//! (ami-app-rpt.md §3).
//!
//! app_rpt names each event after the variable (`Event: RPT_ALINKS`) and puts the value in
//! `EventValue:`, with `Node:` and `Channel:` (the node's rx channel). Only the four
//! variables that change the live model are returned; everything else (`RPT_NUMLINKS`,
//! `RPT_ETXKEYED`, `DTMF`, `FullyBooted`, other `VarSet`s…) gives `None`.

use super::links::{ALink, parse_alinks, parse_links};
use super::{RptError, parse_keyed};
use crate::ami::Frame;
use crate::rpt::types::LinkedNode;

/// An app_rpt event the state engine tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// A core `VarSet` event for an RPT_* variable: no Node header, only the channel. The
    /// value is already read (a keyed flag other than 0/1 is an error, as for app_rpt's own
    /// events); [`RptEvent::resolve`] turns it into the variant app_rpt's event gives once
    /// the engine knows which node owns the channel.
    VarSet { channel: String, value: RptValue },
}

/// The read value of a tracked variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RptValue {
    ALinks(Vec<ALink>),
    Links(Vec<LinkedNode>),
    TxKeyed(bool),
    RxKeyed(bool),
}

impl RptValue {
    /// Reads `variable` = `value`; `None` for an untracked variable.
    pub fn parse(variable: &str, value: &str) -> Option<Result<RptValue, RptError>> {
        Some(match variable {
            "RPT_ALINKS" => parse_alinks(value).map(RptValue::ALinks),
            "RPT_LINKS" => parse_links(value).map(RptValue::Links),
            "RPT_TXKEYED" => parse_keyed(variable, value).map(RptValue::TxKeyed),
            "RPT_RXKEYED" => parse_keyed(variable, value).map(RptValue::RxKeyed),
            _ => return None,
        })
    }
}

/// The variables whose changes are tracked.
const TRACKED: [&str; 4] = ["RPT_ALINKS", "RPT_LINKS", "RPT_TXKEYED", "RPT_RXKEYED"];

impl RptEvent {
    /// Builds the event for `variable` = `value` on `node`, as app_rpt's event carries it,
    /// or `None` for an untracked variable. The state engine also uses this for a
    /// [`RptEvent::VarSet`] once it knows which node the channel belongs to.
    pub fn from_variable(
        node: &str,
        channel: Option<&str>,
        variable: &str,
        value: &str,
    ) -> Option<Result<RptEvent, RptError>> {
        let value = RptValue::parse(variable, value)?;
        Some(value.map(|v| RptEvent::with_node(node, channel.map(str::to_owned), v)))
    }

    /// The event app_rpt's own `RPT_*` event gives for `value` on `node`.
    pub fn with_node(node: &str, channel: Option<String>, value: RptValue) -> RptEvent {
        let node = node.to_owned();
        match value {
            RptValue::ALinks(links) => RptEvent::ALinks {
                node,
                channel,
                links,
            },
            RptValue::Links(nodes) => RptEvent::Links {
                node,
                channel,
                nodes,
            },
            RptValue::TxKeyed(keyed) => RptEvent::TxKeyed {
                node,
                channel,
                keyed,
            },
            RptValue::RxKeyed(keyed) => RptEvent::RxKeyed {
                node,
                channel,
                keyed,
            },
        }
    }

    /// A `VarSet` once its channel's node is known: the same variant as app_rpt's event.
    /// Other variants are returned as they are.
    pub fn resolve(self, node: &str) -> RptEvent {
        match self {
            RptEvent::VarSet { channel, value } => RptEvent::with_node(node, Some(channel), value),
            other => other,
        }
    }

    /// The node, for every variant but `VarSet`.
    pub fn node(&self) -> Option<&str> {
        match self {
            RptEvent::ALinks { node, .. }
            | RptEvent::Links { node, .. }
            | RptEvent::TxKeyed { node, .. }
            | RptEvent::RxKeyed { node, .. } => Some(node),
            RptEvent::VarSet { .. } => None,
        }
    }

    /// The rx channel the event names, when it has one.
    pub fn channel(&self) -> Option<&str> {
        match self {
            RptEvent::ALinks { channel, .. }
            | RptEvent::Links { channel, .. }
            | RptEvent::TxKeyed { channel, .. }
            | RptEvent::RxKeyed { channel, .. } => channel.as_deref(),
            RptEvent::VarSet { channel, .. } => Some(channel),
        }
    }
}

/// Reads a tracked event; `None` for frames that are not events or events not tracked.
pub fn parse_event(frame: &Frame) -> Option<Result<RptEvent, RptError>> {
    let name = frame.event()?.trim();
    if name == "VarSet" {
        return parse_varset(frame);
    }
    if !TRACKED.contains(&name) {
        return None;
    }
    let what = || format!("{name} event");
    let Some(node) = frame.get("Node").map(str::trim) else {
        return Some(Err(RptError::MissingHeader {
            what: what(),
            header: "Node",
        }));
    };
    let Some(value) = frame.get("EventValue") else {
        return Some(Err(RptError::MissingHeader {
            what: what(),
            header: "EventValue",
        }));
    };
    let channel = frame.get("Channel").map(str::trim);
    RptEvent::from_variable(node, channel, name, value)
}

/// A core `VarSet` for a tracked variable, its value read like app_rpt's own event's.
fn parse_varset(frame: &Frame) -> Option<Result<RptEvent, RptError>> {
    let variable = frame.get("Variable")?.trim();
    if !TRACKED.contains(&variable) {
        return None;
    }
    let what = || format!("VarSet event for {variable}");
    let Some(channel) = frame.get("Channel") else {
        return Some(Err(RptError::MissingHeader {
            what: what(),
            header: "Channel",
        }));
    };
    let Some(value) = frame.get("Value") else {
        return Some(Err(RptError::MissingHeader {
            what: what(),
            header: "Value",
        }));
    };
    let value = match RptValue::parse(variable, value.trim())? {
        Ok(v) => v,
        Err(e) => return Some(Err(e)),
    };
    Some(Ok(RptEvent::VarSet {
        channel: channel.trim().to_owned(),
        value,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpt::samples;
    use crate::rpt::types::Mode;

    fn alink(name: &str, keyed: bool) -> ALink {
        ALink {
            name: name.into(),
            mode: Some(Mode::T),
            keyed,
        }
    }

    /// An app_rpt event frame as `rpt_manager_trigger` writes it.
    fn event(name: &str, value: &str) -> String {
        format!(
            "Event: {name}\r\nPrivilege: call,all\r\nNode: 1999\r\nChannel: SimpleUSB/1999\r\nEventValue: {value}\r\n\
             LastKeyedTime: Tue Aug 19 09:58:02 2025\r\nLastTxKeyedTime: Tue Aug 19 10:04:41 2025\r\n\r\n"
        )
    }

    fn parse(wire: &str) -> Option<Result<RptEvent, RptError>> {
        parse_event(&samples::frame(wire))
    }

    #[test]
    fn composed_session_txkeyed_before_the_sawstat_reply() {
        let frames = samples::decode(samples::SESSION_SAWSTAT);
        assert_eq!(
            parse_event(&frames[0]),
            Some(Ok(RptEvent::TxKeyed {
                node: "1999".into(),
                channel: Some("SimpleUSB/1999".into()),
                keyed: true
            }))
        );
        assert_eq!(parse_event(&frames[1]), None, "a reply is not an event");
    }

    #[test]
    fn composed_session_alinks_event() {
        let event = parse(samples::SESSION_EVENT_ALINKS).unwrap().unwrap();
        assert_eq!(
            event,
            RptEvent::ALinks {
                node: "1999".into(),
                channel: Some("SimpleUSB/1999".into()),
                links: vec![
                    alink("3123456", false),
                    alink("2001", false),
                    alink("2000", false)
                ],
            }
        );
        assert_eq!(
            (event.node(), event.channel()),
            (Some("1999"), Some("SimpleUSB/1999"))
        );
    }

    #[test]
    fn composed_session_follow_up_events() {
        let links = parse(&event("RPT_LINKS", "5,T3123456,T2001,T2000,T2005,T2006"))
            .unwrap()
            .unwrap();
        let RptEvent::Links { nodes, .. } = links else {
            panic!("Links expected: {links:?}")
        };
        assert_eq!(nodes.len(), 5);
        assert_eq!(
            nodes[4],
            LinkedNode {
                node: "2006".to_owned(),
                mode: Some(Mode::T)
            }
        );
        let alinks = parse(&event("RPT_ALINKS", "3,3123456TU,2001TK,2000TU"))
            .unwrap()
            .unwrap();
        let RptEvent::ALinks { links, .. } = alinks else {
            panic!("ALinks expected")
        };
        assert!(links[1].keyed);
        assert_eq!(
            parse(&event("RPT_TXKEYED", "0")),
            Some(Ok(RptEvent::TxKeyed {
                node: "1999".into(),
                channel: Some("SimpleUSB/1999".into()),
                keyed: false
            }))
        );
        assert_eq!(
            parse(&event("RPT_RXKEYED", "1")),
            Some(Ok(RptEvent::RxKeyed {
                node: "1999".into(),
                channel: Some("SimpleUSB/1999".into()),
                keyed: true
            }))
        );
    }

    #[test]
    fn node_start_values() {
        // At start app_rpt sets everything to "0".
        let RptEvent::ALinks { links, .. } = parse(&event("RPT_ALINKS", "0")).unwrap().unwrap()
        else {
            panic!()
        };
        assert!(links.is_empty());
        let RptEvent::Links { nodes, .. } = parse(&event("RPT_LINKS", "0")).unwrap().unwrap()
        else {
            panic!()
        };
        assert!(nodes.is_empty());
        // After links drop to zero RPT_ALINKS is the empty string.
        let RptEvent::ALinks { links, .. } = parse(&event("RPT_ALINKS", "")).unwrap().unwrap()
        else {
            panic!()
        };
        assert!(links.is_empty());
    }

    #[test]
    fn untracked_events_are_none() {
        for name in [
            "RPT_NUMLINKS",
            "RPT_NUMALINKS",
            "RPT_ETXKEYED",
            "RPT_AUTOPATCHUP",
            "DTMF",
            "RPT_URI_GPIO1",
        ] {
            assert_eq!(parse(&event(name, "1")), None, "{name}");
        }
        let booted = "Event: FullyBooted\r\nPrivilege: system,all\r\nUptime: 814\r\nLastReload: 814\r\nStatus: Fully Booted\r\n\r\n";
        assert_eq!(parse(booted), None);
        assert_eq!(
            parse("Response: Success\r\nActionID: 1\r\nMessage: Authentication accepted\r\n\r\n"),
            None
        );
    }

    #[test]
    fn legacy_values_with_stray_newlines() {
        // app_rpt < 3.0.5 / ASL2: ctime() values end in "\n" before the CRLF.
        let wire = "Event: RPT_ALINKS\r\nPrivilege: call,all\r\nNode: 1999\r\nChannel: Radio/usb\r\nEventValue: 1,2000TK\r\n\
                    LastKeyedTime: Thu Jan  1 00:00:00 1970\n\r\nLastTxKeyedTime: Thu Jan  1 00:00:00 1970\n\r\n\r\n";
        let event = parse(wire).unwrap().unwrap();
        assert_eq!(
            event,
            RptEvent::ALinks {
                node: "1999".into(),
                channel: Some("Radio/usb".into()),
                links: vec![alink("2000", true)]
            }
        );
        // Whitespace left in a value by another path is tolerated too.
        let frame = Frame::from_headers(&[
            ("Event", "RPT_TXKEYED"),
            ("Node", "1999"),
            ("EventValue", "1 \n"),
        ]);
        assert_eq!(
            parse_event(&frame),
            Some(Ok(RptEvent::TxKeyed {
                node: "1999".into(),
                channel: None,
                keyed: true
            }))
        );
    }

    #[test]
    fn varset_for_tracked_variables() {
        let wire = "Event: VarSet\r\nPrivilege: dialplan,all\r\nChannel: SimpleUSB/1999\r\nChannelState: 6\r\n\
                    ChannelStateDesc: Up\r\nCallerIDNum: <unknown>\r\nUniqueid: 1724061482.3\r\n\
                    Variable: RPT_ALINKS\r\nValue: 2,2000TU,2001TK\r\n\r\n";
        let event = parse(wire).unwrap().unwrap();
        assert_eq!(
            event,
            RptEvent::VarSet {
                channel: "SimpleUSB/1999".into(),
                value: RptValue::ALinks(vec![alink("2000", false), alink("2001", true)]),
            }
        );
        assert_eq!(
            (event.node(), event.channel()),
            (None, Some("SimpleUSB/1999"))
        );
        // The engine resolves the channel to a node: the same variant as app_rpt's event.
        assert_eq!(
            event.resolve("1999"),
            RptEvent::ALinks {
                node: "1999".into(),
                channel: Some("SimpleUSB/1999".into()),
                links: vec![alink("2000", false), alink("2001", true)],
            }
        );
    }

    #[test]
    fn varset_keyed_values_other_than_0_or_1_are_errors() {
        for (variable, value) in [
            ("RPT_TXKEYED", "2"),
            ("RPT_RXKEYED", "yes"),
            ("RPT_TXKEYED", ""),
        ] {
            let frame = Frame::from_headers(&[
                ("Event", "VarSet"),
                ("Channel", "SimpleUSB/1999"),
                ("Variable", variable),
                ("Value", value),
            ]);
            let err = parse_event(&frame).unwrap().unwrap_err();
            assert!(
                err.to_string().contains("is not 0 or 1"),
                "{variable}={value}: {err}"
            );
        }
        let frame = Frame::from_headers(&[
            ("Event", "VarSet"),
            ("Channel", "SimpleUSB/1999"),
            ("Variable", "RPT_RXKEYED"),
            ("Value", "0"),
        ]);
        assert_eq!(
            parse_event(&frame).unwrap().unwrap().resolve("1999"),
            RptEvent::RxKeyed {
                node: "1999".into(),
                channel: Some("SimpleUSB/1999".into()),
                keyed: false
            }
        );
    }

    #[test]
    fn varset_for_other_variables_is_none() {
        for variable in ["RPT_NUMLINKS", "RPT_ETXKEYED", "cpu_temp", "BRIDGEPEER"] {
            let frame = Frame::from_headers(&[
                ("Event", "VarSet"),
                ("Channel", "SimpleUSB/1999"),
                ("Variable", variable),
                ("Value", "1"),
            ]);
            assert_eq!(parse_event(&frame), None, "{variable}");
        }
        let frame = Frame::from_headers(&[("Event", "VarSet"), ("Channel", "SimpleUSB/1999")]);
        assert_eq!(parse_event(&frame), None, "no Variable header");
    }

    #[test]
    fn malformed_events_are_named_errors() {
        let frame = Frame::from_headers(&[("Event", "RPT_ALINKS"), ("EventValue", "1,2000TU")]);
        assert_eq!(
            parse_event(&frame).unwrap().unwrap_err().to_string(),
            "RPT_ALINKS event has no Node header"
        );
        let frame = Frame::from_headers(&[("Event", "RPT_LINKS"), ("Node", "1999")]);
        assert_eq!(
            parse_event(&frame).unwrap().unwrap_err().to_string(),
            "RPT_LINKS event has no EventValue header"
        );
        let err = parse(&event("RPT_TXKEYED", "2")).unwrap().unwrap_err();
        assert_eq!(err.to_string(), r#"RPT_TXKEYED value "2" is not 0 or 1"#);
        let err = parse(&event("RPT_ALINKS", "1,2000ZU"))
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(
                err,
                RptError::LinkEntry {
                    list: "RPT_ALINKS",
                    ..
                }
            ),
            "{err}"
        );
        let frame = Frame::from_headers(&[
            ("Event", "VarSet"),
            ("Variable", "RPT_TXKEYED"),
            ("Value", "1"),
        ]);
        assert_eq!(
            parse_event(&frame).unwrap().unwrap_err().to_string(),
            "VarSet event for RPT_TXKEYED has no Channel header"
        );
    }
}
