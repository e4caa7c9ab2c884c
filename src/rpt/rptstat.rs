//! `RptStatus` / `RptStat`: the nodes configured on a server and app_rpt's uptime
//! (ami-app-rpt.md §2.4).
//!
//! Shape: `Nodes: 1999,2000` (comma, no space) or, with no nodes, the bare line `<NONE>`;
//! then `RptUptime: HH:MM:SS` (hours not capped).

use serde::Serialize;

use super::{RptError, expect_success, parse_hms};
use crate::ami::Frame;

/// A parsed RptStat reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RptStat {
    /// Configured node names, in reply order.
    pub nodes: Vec<String>,
    /// Seconds since app_rpt started; `None` when the line is missing.
    pub uptime_seconds: Option<u64>,
}

/// Parses an RptStat reply (`Response: Success` required).
pub fn parse_rptstat(frame: &Frame) -> Result<RptStat, RptError> {
    expect_success(frame, "RptStat")?;
    let nodes = frame
        .get_all("Nodes")
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .filter(|node| !node.is_empty() && *node != "<NONE>")
        .map(str::to_owned)
        .collect();
    let uptime_seconds = frame
        .get("RptUptime")
        .map(|text| {
            parse_hms(text.trim()).ok_or_else(|| RptError::Uptime {
                value: text.to_owned(),
            })
        })
        .transpose()?;
    Ok(RptStat {
        nodes,
        uptime_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpt::samples;

    #[test]
    fn nodes_and_uptime() {
        let frame = Frame::from_headers(&[
            ("Response", "Success"),
            ("ActionID", "9"),
            ("Nodes", "1999,2000"),
            ("RptUptime", "01:02:03"),
        ]);
        let stat = parse_rptstat(&frame).unwrap();
        assert_eq!(stat.nodes, vec!["1999".to_owned(), "2000".to_owned()]);
        assert_eq!(stat.uptime_seconds, Some(3723));
    }

    #[test]
    fn no_nodes_is_a_bare_none_line() {
        // Decoded from the wire: `<NONE>` is not a `Key: Value` line.
        let frame = samples::frame(
            "ActionID: 9\r\nResponse: Success\r\n<NONE>\r\nRptUptime: 141:00:05\r\n\r\n",
        );
        let stat = parse_rptstat(&frame).unwrap();
        assert!(stat.nodes.is_empty());
        assert_eq!(stat.uptime_seconds, Some(141 * 3600 + 5));
    }

    #[test]
    fn missing_uptime_is_unknown_and_bad_uptime_is_named() {
        let frame = Frame::from_headers(&[("Response", "Success"), ("Nodes", "1999")]);
        assert_eq!(parse_rptstat(&frame).unwrap().uptime_seconds, None);
        let frame = Frame::from_headers(&[
            ("Response", "Success"),
            ("Nodes", "1999"),
            ("RptUptime", "1 day"),
        ]);
        assert_eq!(
            parse_rptstat(&frame).unwrap_err().to_string(),
            r#"RptStat RptUptime "1 day" is not HH:MM:SS"#
        );
    }

    #[test]
    fn error_reply() {
        let frame = Frame::from_headers(&[
            ("Response", "Error"),
            ("Message", "RptStatus missing command"),
        ]);
        assert!(matches!(
            parse_rptstat(&frame),
            Err(RptError::ErrorReply {
                reply: "RptStat",
                ..
            })
        ));
    }
}
