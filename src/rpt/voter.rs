//! `VoterStatus` (chan_voter): per voter instance, the receivers, their RSSI and the
//! current winner (ami-app-rpt.md §2.6).
//!
//! One reply frame may hold several instances, each starting again with
//! `Response: Success` and `Node:`, with no blank line between them:
//!
//! ```text
//! Response: Success / [ActionID] / Node: 1999 / [Voted: rx-main]
//! Client: rx-main Master ActiveMaster / IP: 192.0.2.50:1667 / RSSI: 201   (per client)
//! ```
//!
//! When no instance matches, the reply is the empty frame.

use serde::Serialize;

use super::{RptError, expect_success, parse_digits};
use crate::ami::Frame;

/// One receiver (voter client) of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VoterReceiver {
    pub name: String,
    /// The words after the name: `Mix`, `Master`, `ActiveMaster`, `Inactive`.
    pub flags: Vec<String>,
    /// `address:port` as chan_voter prints it; `None` when the line is absent or empty.
    pub ip: Option<String>,
    /// 0–255.
    pub rssi: u32,
    /// This receiver is the current winner (`Voted:`).
    pub voted: bool,
}

/// One voter instance (one node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VoterInstance {
    pub node: String,
    /// The winning receiver's name, when one is voted.
    pub voted: Option<String>,
    pub receivers: Vec<VoterReceiver>,
}

/// Parses a VoterStatus reply: every instance in the frame; the empty frame is `Ok(vec![])`.
pub fn parse_voter_status(frame: &Frame) -> Result<Vec<VoterInstance>, RptError> {
    if frame.is_empty() {
        return Ok(Vec::new());
    }
    expect_success(frame, "VoterStatus")?;
    let mut instances = Vec::new();
    for (key, value) in frame.headers() {
        absorb(&mut instances, key, value)?;
    }
    for instance in &mut instances {
        if let Some(voted) = &instance.voted {
            for receiver in &mut instance.receivers {
                receiver.voted = receiver.name == *voted;
            }
        }
    }
    Ok(instances)
}

/// Adds one header line to the instances read so far.
fn absorb(instances: &mut Vec<VoterInstance>, key: &str, value: &str) -> Result<(), RptError> {
    let is = |name: &str| key.eq_ignore_ascii_case(name);
    let text = value.trim();
    if is("Node") {
        instances.push(VoterInstance {
            node: text.to_owned(),
            voted: None,
            receivers: Vec::new(),
        });
    } else if is("Voted") {
        last_instance(instances, "Voted line comes before any Node line", value)?.voted =
            (!text.is_empty()).then(|| text.to_owned());
    } else if is("Client") {
        let receiver = parse_client(value)?;
        last_instance(instances, "Client line comes before any Node line", value)?
            .receivers
            .push(receiver);
    } else if is("IP") {
        last_receiver(instances, "IP line comes before any Client line", value)?.ip =
            (!text.is_empty()).then(|| text.to_owned());
    } else if is("RSSI") {
        let rssi = parse_digits(text).ok_or_else(|| voter_error("RSSI is not a number", value))?;
        last_receiver(instances, "RSSI line comes before any Client line", value)?.rssi = rssi;
    }
    Ok(())
}

/// `<name>[ Mix][ Master][ ActiveMaster][ Inactive]`.
fn parse_client(value: &str) -> Result<VoterReceiver, RptError> {
    let mut words = value.split_ascii_whitespace();
    let name = words
        .next()
        .ok_or_else(|| voter_error("Client line has no name", value))?;
    Ok(VoterReceiver {
        name: name.to_owned(),
        flags: words.map(str::to_owned).collect(),
        ip: None,
        rssi: 0,
        voted: false,
    })
}

/// The instance being read (the last `Node:` seen).
fn last_instance<'a>(
    instances: &'a mut [VoterInstance],
    problem: &'static str,
    value: &str,
) -> Result<&'a mut VoterInstance, RptError> {
    instances
        .last_mut()
        .ok_or_else(|| voter_error(problem, value))
}

/// The receiver being read (the last `Client:` of the last instance).
fn last_receiver<'a>(
    instances: &'a mut [VoterInstance],
    problem: &'static str,
    value: &str,
) -> Result<&'a mut VoterReceiver, RptError> {
    let receiver = instances.last_mut().and_then(|i| i.receivers.last_mut());
    receiver.ok_or_else(|| voter_error(problem, value))
}

fn voter_error(problem: &'static str, line: &str) -> RptError {
    RptError::Voter {
        problem,
        line: line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpt::samples;

    /// Composed from chan_voter's format (§2.6): two instances in one frame.
    const TWO_INSTANCES: &str = concat!(
        "Response: Success\r\n",
        "ActionID: 11\r\n",
        "Node: 1999\r\n",
        "Voted: rx-north\r\n",
        "Client: rx-main Master ActiveMaster\r\n",
        "IP: 192.0.2.50:1667\r\n",
        "RSSI: 180\r\n",
        "Client: rx-north\r\n",
        "IP: 198.51.100.9:1667\r\n",
        "RSSI: 201\r\n",
        "Client: rx-south Inactive\r\n",
        "IP: 0.0.0.0:0\r\n",
        "RSSI: 0\r\n",
        "Response: Success\r\n",
        "ActionID: 11\r\n",
        "Node: 2000\r\n",
        "Client: mix-site Mix\r\n",
        "IP: 203.0.113.4:1667\r\n",
        "RSSI: 0\r\n",
        "\r\n",
    );

    fn receiver(name: &str, flags: &[&str], ip: &str, rssi: u32, voted: bool) -> VoterReceiver {
        VoterReceiver {
            name: name.into(),
            flags: flags.iter().map(|f| f.to_string()).collect(),
            ip: Some(ip.into()),
            rssi,
            voted,
        }
    }

    #[test]
    fn two_instances_in_one_frame() {
        let instances = parse_voter_status(&samples::frame(TWO_INSTANCES)).unwrap();
        assert_eq!(
            instances,
            vec![
                VoterInstance {
                    node: "1999".into(),
                    voted: Some("rx-north".into()),
                    receivers: vec![
                        receiver(
                            "rx-main",
                            &["Master", "ActiveMaster"],
                            "192.0.2.50:1667",
                            180,
                            false
                        ),
                        receiver("rx-north", &[], "198.51.100.9:1667", 201, true),
                        receiver("rx-south", &["Inactive"], "0.0.0.0:0", 0, false),
                    ],
                },
                VoterInstance {
                    node: "2000".into(),
                    voted: None,
                    receivers: vec![receiver("mix-site", &["Mix"], "203.0.113.4:1667", 0, false)],
                },
            ]
        );
    }

    #[test]
    fn serializes_with_the_field_names() {
        let instances = parse_voter_status(&samples::frame(TWO_INSTANCES)).unwrap();
        let json = serde_json::to_value(&instances[1]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "node": "2000",
                "voted": null,
                "receivers": [{"name": "mix-site", "flags": ["Mix"], "ip": "203.0.113.4:1667", "rssi": 0, "voted": false}]
            })
        );
    }

    #[test]
    fn empty_reply_means_no_instances() {
        let frames = samples::decode("\r\n");
        assert_eq!(frames.len(), 1);
        assert_eq!(parse_voter_status(&frames[0]), Ok(vec![]));
    }

    #[test]
    fn instance_without_clients() {
        let frame = Frame::from_headers(&[("Response", "Success"), ("Node", "1999")]);
        let instances = parse_voter_status(&frame).unwrap();
        assert_eq!(
            instances,
            vec![VoterInstance {
                node: "1999".into(),
                voted: None,
                receivers: vec![]
            }]
        );
    }

    #[test]
    fn out_of_place_lines_are_named() {
        let frame = Frame::from_headers(&[
            ("Response", "Success"),
            ("Node", "1999"),
            ("IP", "192.0.2.1:1667"),
        ]);
        assert_eq!(
            parse_voter_status(&frame).unwrap_err().to_string(),
            r#"VoterStatus IP line comes before any Client line: "192.0.2.1:1667""#
        );
        let frame = Frame::from_headers(&[("Response", "Success"), ("Client", "rx-main")]);
        assert_eq!(
            parse_voter_status(&frame).unwrap_err().to_string(),
            r#"VoterStatus Client line comes before any Node line: "rx-main""#
        );
        let frame = Frame::from_headers(&[
            ("Response", "Success"),
            ("Node", "1"),
            ("Client", "a"),
            ("RSSI", "-3"),
        ]);
        assert_eq!(
            parse_voter_status(&frame).unwrap_err().to_string(),
            r#"VoterStatus RSSI is not a number: "-3""#
        );
        let frame = Frame::from_headers(&[("Response", "Success"), ("Node", "1"), ("Client", " ")]);
        assert!(matches!(
            parse_voter_status(&frame),
            Err(RptError::Voter {
                problem: "Client line has no name",
                ..
            })
        ));
    }

    #[test]
    fn error_reply() {
        let frame = Frame::from_headers(&[("Response", "Error"), ("Message", "Permission denied")]);
        assert!(matches!(
            parse_voter_status(&frame),
            Err(RptError::ErrorReply {
                reply: "VoterStatus",
                ..
            })
        ));
    }
}
