//! Request handling for one session: Asterisk's `process_message` dispatch and the actions
//! the simulator implements — core `Login`, `Logoff`, `Challenge`, `Ping`, `Events`,
//! `Command`, `ListCommands`; app_rpt `RptStatus`, `RptLocalNodes`; chan_voter
//! `VoterStatus` (ami-app-rpt.md §1.3–§1.5, §2).
//!
//! Header lookups follow `astman_get_header`: case-insensitive names, first match wins
//! (`Action` takes the first non-empty one); a line with leading whitespace matches
//! nothing because the codec gives it an empty key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::command;
use super::format::{self, Wire};
use super::mask;
use super::shared::{Faults, Shared};
use super::{Era, SimHandle};
use crate::ami::Frame;

/// Asterisk sleeps this long before answering a failed login.
const LOGIN_FAILURE_DELAY: Duration = Duration::from_secs(1);

/// What to write back, and whether to close afterwards.
pub(crate) struct Reply {
    pub(crate) frames: Vec<Bytes>,
    pub(crate) close: bool,
}

impl Reply {
    fn one(frame: Bytes) -> Reply {
        Reply {
            frames: vec![frame],
            close: false,
        }
    }

    fn closing(frame: Bytes) -> Reply {
        Reply {
            frames: vec![frame],
            close: true,
        }
    }
}

/// The protocol state of one session.
pub(crate) struct Session {
    shared: Arc<Shared>,
    id: u64,
    authed: bool,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
}

/// The first non-empty value of a header (how Asterisk reads `Action`).
fn first_non_empty<'a>(frame: &'a Frame, key: &'a str) -> Option<&'a str> {
    frame.get_all(key).find(|v| !v.is_empty())
}

/// `IPV4/TCP/127.0.0.1/5038` as security events print addresses.
fn security_addr(addr: Option<SocketAddr>) -> String {
    match addr {
        Some(SocketAddr::V4(a)) => format!("IPV4/TCP/{}/{}", a.ip(), a.port()),
        Some(SocketAddr::V6(a)) => format!("IPV6/TCP/{}/{}", a.ip(), a.port()),
        None => "IPV4/TCP/127.0.0.1/0".to_owned(),
    }
}

impl Session {
    pub(crate) fn new(
        shared: Arc<Shared>,
        id: u64,
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
    ) -> Session {
        Session {
            shared,
            id,
            authed: false,
            local,
            peer,
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn authenticated(&self) -> bool {
        self.authed
    }

    fn era(&self) -> Era {
        self.shared.config.era
    }

    /// `Asterisk Call Manager/<AMI_VERSION>` with no blank line after it.
    pub(crate) fn banner(&self) -> Bytes {
        let version = match self.era() {
            Era::Modern => "11.0.0",
            Era::Legacy => "1.0",
        };
        Bytes::from(format!("Asterisk Call Manager/{version}\r\n"))
    }

    /// Answers one request.
    pub(crate) async fn handle(&mut self, frame: Frame) -> Reply {
        self.shared.record(self.id, &frame);
        let id = frame.get("ActionID");
        let Some(action) = first_non_empty(&frame, "Action") else {
            return Reply::one(format::error(id, "Missing action in request"));
        };
        let name = action.to_ascii_lowercase();
        if !self.authed && !matches!(name.as_str(), "login" | "logoff" | "challenge") {
            return Reply::one(format::error(id, "Permission denied"));
        }
        match name.as_str() {
            "login" => self.login(&frame, id).await,
            "logoff" => Reply::closing(format::message("Goodbye", id, "Thanks for all the fish.")),
            "challenge" => Reply::one(format::error(id, "Authentication type not supported")),
            "ping" => Reply::one(format::ping(self.era(), id, self.shared.clock.now().wall)),
            "events" => Reply::one(self.events(&frame, id)),
            "command" => Reply::one(self.command(&frame, id)),
            "listcommands" => Reply::one(list_commands(id)),
            "rptstatus" => self.rpt_status(&frame, id),
            "rptlocalnodes" => Reply::one(self.shared.read(format::local_nodes)),
            "voterstatus" => Reply::one(self.voter_status(&frame, id)),
            _ => Reply::one(format::error(
                id,
                &format!(
                    "Invalid/unknown command: {action}. Use Action: ListCommands to show available commands."
                ),
            )),
        }
    }

    async fn login(&mut self, frame: &Frame, id: Option<&str>) -> Reply {
        if self.authed {
            return Reply::one(format::message("Success", id, "Already authenticated"));
        }
        let config = &self.shared.config;
        let user = frame.get("Username").unwrap_or("");
        let secret = frame.get("Secret").unwrap_or("");
        let refused = Faults::on(&self.shared.faults.fail_login);
        if refused || !user.eq_ignore_ascii_case(&config.username) || secret != config.secret {
            tokio::time::sleep(LOGIN_FAILURE_DELAY).await;
            return Reply::closing(format::error(id, "Authentication failed"));
        }
        let mask = frame
            .get("Events")
            .filter(|v| !v.is_empty())
            .and_then(mask::strings_to_mask)
            .unwrap_or(mask::ALL);
        self.authed = true;
        let mut frames = vec![format::message("Success", id, "Authentication accepted")];
        frames.extend(self.login_events(mask, user));
        self.shared.set_logged_in(self.id, mask);
        Reply {
            frames,
            close: false,
        }
    }

    /// FullyBooted / SuccessfulAuth after a modern login, per the session's mask.
    fn login_events(&self, mask: u32, user: &str) -> Vec<Bytes> {
        let mut out = Vec::new();
        if self.era() == Era::Legacy {
            return out;
        }
        if mask & mask::SYSTEM != 0 {
            out.push(format::fully_booted(self.shared.clock.uptime()));
        }
        if mask & mask::SECURITY != 0 {
            let (local, remote) = (security_addr(self.local), security_addr(self.peer));
            let wall = self.shared.clock.now().wall;
            out.push(format::successful_auth(
                user, self.id, &local, &remote, wall,
            ));
        }
        out
    }

    fn events(&self, frame: &Frame, id: Option<&str>) -> Bytes {
        let Some(mask) = mask::strings_to_mask(frame.get("EventMask").unwrap_or("")) else {
            return format::error(id, "Invalid event mask");
        };
        self.shared.set_mask(self.id, mask);
        format::events_reply(self.era(), id, mask != 0)
    }

    fn command(&self, frame: &Frame, id: Option<&str>) -> Bytes {
        let line = frame.get("Command").unwrap_or("");
        if line.is_empty() {
            return format::error(id, "No command provided");
        }
        if Faults::on(&self.shared.faults.reject_commands) {
            return format::error(id, "Permission denied");
        }
        let handle = SimHandle {
            shared: self.shared.clone(),
        };
        let out = command::run(&handle, line);
        format::command(self.era(), id, out.ok, &out.text)
    }

    fn rpt_status(&self, frame: &Frame, id: Option<&str>) -> Reply {
        let era = self.era();
        let Some(cmd) = frame.get("Command").filter(|c| !c.is_empty()) else {
            return Reply::one(format::error(id, "RptStatus missing command"));
        };
        if !matches!(cmd, "RptStat" | "NodeStat" | "XStat" | "SawStat") {
            return Reply::one(format::error(id, "RptStatus unknown command"));
        }
        if cmd == "RptStat" {
            let uptime = self.shared.clock.uptime();
            return Reply::one(self.shared.read(|t| format::rptstat(era, id, t, uptime)));
        }
        let node = frame.get("Node").unwrap_or("");
        if !self.shared.read(|t| t.nodes.contains_key(node)) {
            return Reply::one(format::error(id, "RptStatus unknown or missing node"));
        }
        if Faults::on(&self.shared.faults.abort_rptstatus) {
            return Reply::closing(aborted(era, id, cmd, node));
        }
        let now = self.shared.clock.now().at;
        let reply = self.shared.read(|t| {
            let n = t.nodes.get(node)?;
            Some(match cmd {
                "XStat" => format::xstat(era, id, node, n, now),
                "SawStat" => format::sawstat(era, id, node, n, now),
                _ => format::nodestat(era, id, n, now),
            })
        });
        Reply::one(reply.unwrap_or_else(|| format::error(id, "RptStatus unknown or missing node")))
    }

    fn voter_status(&self, frame: &Frame, id: Option<&str>) -> Bytes {
        let era = self.era();
        self.shared
            .read(|t| format::voter_status(era, id, t, frame.get("Node")))
    }
}

/// The start of a reply cut short by an internal failure (§2.1): Asterisk closes the
/// session with the frame unterminated.
fn aborted(era: Era, id: Option<&str>, cmd: &str, node: &str) -> Bytes {
    let mut w = format::rpt_success(era, id);
    if cmd != "NodeStat" {
        w.header("Node", node);
    }
    w.unterminated()
}

/// `ListCommands`: the actions this server knows, as `Name: Synopsis (Priv: ...)`.
fn list_commands(id: Option<&str>) -> Bytes {
    const ACTIONS: [(&str, &str, &str); 10] = [
        ("Challenge", "Generate Challenge for MD5 Auth.", "<none>"),
        ("Command", "Execute Asterisk CLI Command.", "command,all"),
        ("Events", "Control Event Flow.", "<none>"),
        ("ListCommands", "List available manager commands.", "<none>"),
        ("Login", "Login Manager.", "<none>"),
        ("Logoff", "Logoff Manager.", "<none>"),
        ("Ping", "Keepalive command.", "<none>"),
        ("RptLocalNodes", "List local node numbers", "<none>"),
        ("RptStatus", "Return Rpt Status for CGI", "<none>"),
        ("VoterStatus", "Return Voter Status", "<none>"),
    ];
    let mut w: Wire = format::response("Success", id);
    for (name, synopsis, privilege) in ACTIONS {
        w.header(name, format_args!("{synopsis}  (Priv: {privilege})"));
    }
    w.finish()
}
