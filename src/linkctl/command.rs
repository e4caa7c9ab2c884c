//! Typed link commands and their validation. This is the only place that builds
//! `rpt cmd {node} ilink {code} {target}`, and only from a [`LinkCommand`] whose node and
//! target are digits (so no space, `;`, CR or LF can reach AMI).

use serde::{Deserialize, Serialize};

use crate::state::model::Mode;

/// Longest node number accepted (AllStar numbers and EchoLink `3` + 6 digits).
pub const MAX_DIGITS: usize = 7;

/// How to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkMode {
    Transceive,
    Monitor,
    LocalMonitor,
}

impl LinkMode {
    pub fn parse(s: &str) -> Result<LinkMode, String> {
        match s {
            "transceive" => Ok(LinkMode::Transceive),
            "monitor" => Ok(LinkMode::Monitor),
            "local_monitor" => Ok(LinkMode::LocalMonitor),
            other => Err(format!(
                "mode {:?} is not one of transceive, monitor, local_monitor",
                crate::observe::clip(other, 32).0
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LinkMode::Transceive => "transceive",
            LinkMode::Monitor => "monitor",
            LinkMode::LocalMonitor => "local_monitor",
        }
    }

    /// The mode letter XStat shows for a link in this mode.
    pub fn letter(self) -> Mode {
        match self {
            LinkMode::Transceive => Mode::T,
            LinkMode::Monitor => Mode::R,
            LinkMode::LocalMonitor => Mode::L,
        }
    }

    /// The `ilink` function: 3 transceive, 2 monitor, 8 local monitor; +10 permanent.
    pub fn ilink_code(self, permanent: bool) -> u8 {
        let base = match self {
            LinkMode::Transceive => 3,
            LinkMode::Monitor => 2,
            LinkMode::LocalMonitor => 8,
        };
        if permanent { base + 10 } else { base }
    }
}

/// What was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkAction {
    Connect,
    Disconnect,
    DisconnectAll,
}

impl LinkAction {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkAction::Connect => "connect",
            LinkAction::Disconnect => "disconnect",
            LinkAction::DisconnectAll => "disconnect_all",
        }
    }
}

/// A request as it arrived (HTTP body and path, or Lua arguments): not yet trusted.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRequest {
    pub action: LinkAction,
    pub node: String,
    pub target: Option<String>,
    pub mode: Option<String>,
    pub permanent: Option<bool>,
}

/// A validated command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkCommand {
    Connect {
        node: String,
        target: String,
        mode: LinkMode,
        permanent: bool,
    },
    Disconnect {
        node: String,
        target: String,
    },
    DisconnectAll {
        node: String,
    },
}

impl LinkCommand {
    pub fn node(&self) -> &str {
        match self {
            LinkCommand::Connect { node, .. }
            | LinkCommand::Disconnect { node, .. }
            | LinkCommand::DisconnectAll { node } => node,
        }
    }

    /// The CLI command for `Action: Command`. `permanent_link` says whether the link to
    /// disconnect was made permanent (ilink 11 instead of 1).
    pub fn cli(&self, permanent_link: bool) -> String {
        match self {
            LinkCommand::Connect {
                node,
                target,
                mode,
                permanent,
            } => format!(
                "rpt cmd {node} ilink {} {target}",
                mode.ilink_code(*permanent)
            ),
            LinkCommand::Disconnect { node, target } => {
                let code = if permanent_link { 11 } else { 1 };
                format!("rpt cmd {node} ilink {code} {target}")
            }
            LinkCommand::DisconnectAll { node } => format!("rpt cmd {node} ilink 6"),
        }
    }
}

/// Checks a node number: digits only, 1 to [`MAX_DIGITS`]. The message names the field
/// and the problem (never echoing control characters).
pub fn check_number(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{field} is empty: give a node number"));
    }
    if value.contains(['\r', '\n']) {
        return Err(format!("{field} contains a line break (CR/LF)"));
    }
    if value.contains(';') {
        return Err(format!("{field} contains ';'"));
    }
    if value.chars().any(char::is_whitespace) {
        return Err(format!("{field} contains a space"));
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{field} must be digits only (an AllStar node number, or an EchoLink node as 3 \
             followed by its 6-digit number)"
        ));
    }
    if value.len() > MAX_DIGITS {
        return Err(format!("{field} has more than {MAX_DIGITS} digits"));
    }
    Ok(())
}

impl RawRequest {
    /// Turns the raw request into a command, or says what is wrong with it (400).
    /// The node's syntax is checked here; whether it is configured is checked by the caller.
    pub fn validate(&self) -> Result<LinkCommand, String> {
        check_number("node", &self.node)?;
        let node = self.node.clone();
        if self.action == LinkAction::DisconnectAll {
            return Ok(LinkCommand::DisconnectAll { node });
        }
        let target = self.target.clone().unwrap_or_default();
        check_number("target", &target)?;
        if self.action == LinkAction::Disconnect {
            return Ok(LinkCommand::Disconnect { node, target });
        }
        let mode = match self.mode.as_deref() {
            None => LinkMode::Transceive,
            Some(m) => LinkMode::parse(m)?,
        };
        Ok(LinkCommand::Connect {
            node,
            target,
            mode,
            permanent: self.permanent.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(node: &str, target: &str, mode: Option<&str>) -> Result<LinkCommand, String> {
        RawRequest {
            action: LinkAction::Connect,
            node: node.into(),
            target: Some(target.into()),
            mode: mode.map(Into::into),
            permanent: None,
        }
        .validate()
    }

    #[test]
    fn codes_follow_app_rpt() {
        let c = |m, p| LinkMode::ilink_code(m, p);
        assert_eq!(
            [
                c(LinkMode::Transceive, false),
                c(LinkMode::Monitor, false),
                c(LinkMode::LocalMonitor, false)
            ],
            [3, 2, 8]
        );
        assert_eq!(
            [
                c(LinkMode::Transceive, true),
                c(LinkMode::Monitor, true),
                c(LinkMode::LocalMonitor, true)
            ],
            [13, 12, 18]
        );
        let d = LinkCommand::Disconnect {
            node: "1999".into(),
            target: "2003".into(),
        };
        assert_eq!(d.cli(false), "rpt cmd 1999 ilink 1 2003");
        assert_eq!(d.cli(true), "rpt cmd 1999 ilink 11 2003");
        assert_eq!(
            LinkCommand::DisconnectAll {
                node: "1999".into()
            }
            .cli(false),
            "rpt cmd 1999 ilink 6"
        );
    }

    #[test]
    fn only_digits_pass() {
        assert!(connect("1999", "2003", None).is_ok());
        assert!(connect("1999", "3123456", Some("monitor")).is_ok());
        for (bad, why) in [
            ("", "empty"),
            ("2003\r\nAction: Logoff", "line break"),
            ("2003;ls", "';'"),
            ("20 03", "space"),
            ("abc", "digits only"),
            ("12345678", "more than 7"),
        ] {
            let e = connect("1999", bad, None).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
            let e = connect(bad, "2003", None).expect_err(bad);
            assert!(e.starts_with("node"), "{e}");
        }
        assert!(
            connect("1999", "2003", Some("transceive\n"))
                .expect_err("mode")
                .contains("mode")
        );
    }
}
