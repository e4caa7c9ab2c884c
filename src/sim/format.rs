//! Wire text of everything the simulator writes: replies to core and app_rpt actions,
//! app_rpt and core events, with the exact columns, orders and quirks of
//! `shared/reference/ami-app-rpt.md` (§1, §2, §3).
//!
//! Functions here are pure: they take the truth and a time and return bytes. The session
//! decides when they are written.

use std::fmt::Display;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::time::Instant;

use super::Era;
use super::mask;
use super::truth::{
    SimLinkTruth, SimNodeTruth, SimTruth, SimVoterReceiver, TruthEvent, linked_nodes,
};
use crate::rpt::types::{Direction, LinkState, format_elapsed};

/// A frame under construction: `Key: Value` lines ended by CRLF.
#[derive(Debug, Default)]
pub(crate) struct Wire {
    buf: String,
}

impl Wire {
    /// An empty frame.
    pub(crate) fn new() -> Wire {
        Wire::default()
    }

    /// Appends `Key: Value`.
    pub(crate) fn header(&mut self, key: &str, value: impl Display) -> &mut Wire {
        use std::fmt::Write;
        let _ = write!(self.buf, "{key}: {value}\r\n");
        self
    }

    /// Appends a line that is not `Key: Value` (`<NONE>`, XML).
    pub(crate) fn line(&mut self, text: &str) -> &mut Wire {
        self.buf.push_str(text);
        self.buf.push_str("\r\n");
        self
    }

    /// Appends raw text (legacy Command output).
    pub(crate) fn raw(&mut self, text: &str) -> &mut Wire {
        self.buf.push_str(text);
        self
    }

    /// Appends `ActionID:` only when the request carried a non-empty one.
    pub(crate) fn action_id(&mut self, id: Option<&str>) -> &mut Wire {
        if let Some(id) = id.filter(|id| !id.is_empty()) {
            self.header("ActionID", id);
        }
        self
    }

    /// Ends the frame with the blank line.
    pub(crate) fn finish(mut self) -> Bytes {
        self.buf.push_str("\r\n");
        Bytes::from(self.buf)
    }

    /// The bytes so far, without the blank line (an aborted reply).
    pub(crate) fn unterminated(self) -> Bytes {
        Bytes::from(self.buf)
    }
}

/// `Response: <status>` then `ActionID` (Asterisk core order).
pub(crate) fn response(status: &str, id: Option<&str>) -> Wire {
    let mut w = Wire::new();
    w.header("Response", status).action_id(id);
    w
}

/// `astman_send_error`: `Response: Error`, [ActionID], `Message:`.
pub(crate) fn error(id: Option<&str>, message: &str) -> Bytes {
    let mut w = response("Error", id);
    w.header("Message", message);
    w.finish()
}

/// `Response: <status>`, [ActionID], `Message:`.
pub(crate) fn message(status: &str, id: Option<&str>, message: &str) -> Bytes {
    let mut w = response(status, id);
    w.header("Message", message);
    w.finish()
}

/// app_rpt/chan_voter success header: legacy puts `ActionID` first (§0).
pub(crate) fn rpt_success(era: Era, id: Option<&str>) -> Wire {
    match era {
        Era::Modern => response("Success", id),
        Era::Legacy => {
            let mut w = Wire::new();
            w.action_id(id).header("Response", "Success");
            w
        }
    }
}

/// `ctime()` text without the newline: `Thu Jan  1 00:00:00 1970` (UTC: the simulator's
/// "local time zone").
pub(crate) fn ctime(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let wd = (days + 4).rem_euclid(7) as usize;
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        DAYS[wd],
        MONTHS[(m - 1) as usize],
        d,
        tod / 3600,
        (tod / 60) % 60,
        tod % 60,
        y
    )
}

/// Days since 1970-01-01 to (year, month 1..=12, day) — H. Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// One event ready for delivery: its class and its bytes.
pub(crate) struct EventText {
    pub class: u32,
    pub bytes: Bytes,
}

/// Formats a truth event for the era (`None`: not emitted in that era — VarSet on 1.4).
pub(crate) fn event(era: Era, ev: &TruthEvent) -> Option<EventText> {
    match ev {
        TruthEvent::Rpt {
            node,
            channel,
            name,
            value,
            last_keyed,
            last_tx_keyed,
        } => {
            // app_rpt < 3.0.5: ctime()'s newline stays in the value (§1.2).
            let nl = if era == Era::Legacy { "\n" } else { "" };
            let mut w = Wire::new();
            w.header("Event", name)
                .header("Privilege", mask::privilege(mask::CALL))
                .header("Node", node)
                .header("Channel", channel)
                .header("EventValue", value)
                .header("LastKeyedTime", format_args!("{}{nl}", ctime(*last_keyed)))
                .header(
                    "LastTxKeyedTime",
                    format_args!("{}{nl}", ctime(*last_tx_keyed)),
                );
            Some(EventText {
                class: mask::CALL,
                bytes: w.finish(),
            })
        }
        TruthEvent::VarSet {
            channel,
            uniqueid,
            variable,
            value,
        } => (era == Era::Modern).then(|| EventText {
            class: mask::DIALPLAN,
            bytes: varset(channel, uniqueid, variable, value),
        }),
    }
}

/// Asterisk 20/22 `VarSet` with the channel snapshot block (§3.3).
fn varset(channel: &str, uniqueid: &str, variable: &str, value: &str) -> Bytes {
    let mut w = Wire::new();
    w.header("Event", "VarSet")
        .header("Privilege", mask::privilege(mask::DIALPLAN))
        .header("Channel", channel)
        .header("ChannelState", "6")
        .header("ChannelStateDesc", "Up")
        .header("CallerIDNum", "<unknown>")
        .header("CallerIDName", "<unknown>")
        .header("ConnectedLineNum", "<unknown>")
        .header("ConnectedLineName", "<unknown>")
        .header("Language", "en")
        .header("AccountCode", "")
        .header("Context", "default")
        .header("Exten", "s")
        .header("Priority", "1")
        .header("Uniqueid", uniqueid)
        .header("Linkedid", uniqueid)
        .header("Variable", variable)
        .header("Value", c_escape(value));
    w.finish()
}

/// `ast_escape_c`-style escaping of a VarSet value.
fn c_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
    out
}

/// `FullyBooted` (class system) sent after a login whose mask includes `system`.
pub(crate) fn fully_booted(uptime: u64) -> Bytes {
    let mut w = Wire::new();
    w.header("Event", "FullyBooted")
        .header("Privilege", mask::privilege(mask::SYSTEM))
        .header("Uptime", uptime)
        .header("LastReload", uptime)
        .header("Status", "Fully Booted");
    w.finish()
}

/// `SuccessfulAuth` (class security) sent after a login whose mask includes `security`.
pub(crate) fn successful_auth(
    user: &str,
    session: u64,
    local: &str,
    remote: &str,
    wall: SystemTime,
) -> Bytes {
    let tv = timestamp(wall);
    let mut w = Wire::new();
    w.header("Event", "SuccessfulAuth")
        .header("Privilege", mask::privilege(mask::SECURITY))
        .header("EventTV", &tv)
        .header("Severity", "Informational")
        .header("Service", "AMI")
        .header("EventVersion", "1")
        .header("AccountID", user)
        .header(
            "SessionID",
            format_args!("0x{:012x}", 0x7f00_0000_0000u64 + session),
        )
        .header("LocalAddress", local)
        .header("RemoteAddress", remote)
        .header("UsingPassword", "0")
        .header("SessionTV", &tv);
    w.finish()
}

/// `<sec>.<usec>` as in Ping's `Timestamp:`.
pub(crate) fn timestamp(wall: SystemTime) -> String {
    let d = wall
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    format!("{}.{:06}", d.as_secs(), d.subsec_micros())
}

/// Ping: modern `Success` + `Ping: Pong` + `Timestamp`; Asterisk 1.4 `Response: Pong`.
pub(crate) fn ping(era: Era, id: Option<&str>, wall: SystemTime) -> Bytes {
    match era {
        Era::Modern => {
            let mut w = response("Success", id);
            w.header("Ping", "Pong")
                .header("Timestamp", timestamp(wall));
            w.finish()
        }
        Era::Legacy => response("Pong", id).finish(),
    }
}

/// `Events` action reply: modern `Events: On|Off`, Asterisk 1.4 `Response: Events On|Off`.
pub(crate) fn events_reply(era: Era, id: Option<&str>, on: bool) -> Bytes {
    let state = if on { "On" } else { "Off" };
    match era {
        Era::Modern => {
            let mut w = response("Success", id);
            w.header("Events", state);
            w.finish()
        }
        Era::Legacy => response(&format!("Events {state}"), id).finish(),
    }
}

/// Command reply: modern `Output:` lines (§1.5), legacy `Response: Follows` raw block.
pub(crate) fn command(era: Era, id: Option<&str>, ok: bool, output: &str) -> Bytes {
    match era {
        Era::Modern => {
            let mut w = response(if ok { "Success" } else { "Error" }, id);
            w.header("Message", "Command output follows");
            let text = output.strip_suffix('\n').unwrap_or(output);
            for line in text.split('\n') {
                w.header("Output", line);
            }
            w.finish()
        }
        Era::Legacy => {
            let mut w = Wire::new();
            w.header("Response", "Follows")
                .header("Privilege", "Command")
                .action_id(id);
            w.raw(output).raw("--END COMMAND--\r\n");
            w.finish()
        }
    }
}

/// The peer column: empty for EchoLink/TLB, `(none)`, or the IP, cut to 30 characters.
fn peer(link: &SimLinkTruth) -> String {
    link.ip.as_deref().unwrap_or("").chars().take(30).collect()
}

/// Seconds from `then` to `now`.
fn age(now: Instant, then: Instant) -> u64 {
    now.saturating_duration_since(then).as_secs()
}

/// One XStat `Conn:` value: `%-10s%-20s%-12d%-11s%-20s%-20s`.
pub(crate) fn xstat_conn(link: &SimLinkTruth, now: Instant) -> String {
    let dir = match link.direction {
        Direction::In => "IN",
        Direction::Out => "OUT",
    };
    let state = match link.state {
        LinkState::Established => "ESTABLISHED",
        LinkState::Connecting => "CONNECTING",
    };
    let elapsed = format_elapsed(age(now, link.connected_at));
    format!(
        "{:<10}{:<20}{:<12}{:<11}{:<20}{:<20}",
        link.name,
        peer(link),
        link.reconnects,
        dir,
        elapsed,
        state
    )
}

/// One SawStat `Conn:` value: `<name> <keyed> <secs since key|-1> <secs since unkey|-1>`.
pub(crate) fn sawstat_conn(link: &SimLinkTruth, now: Instant) -> String {
    let secs = |t: Option<Instant>| t.map_or(-1, |t| age(now, t) as i64);
    format!(
        "{} {} {} {}",
        link.name,
        u8::from(link.keyed),
        secs(link.last_key),
        secs(link.last_unkey)
    )
}

/// The XStat status flags; modern app_rpt prints the *disable* flags (0 = enabled).
fn xstat_flags(w: &mut Wire, era: Era, node: &SimNodeTruth) {
    let enabled = if era == Era::Legacy { "1" } else { "0" };
    let tot_state = if node.tx_keyed { "1" } else { "2" };
    w.header("parrot_ena", "0")
        .header("sys_ena", enabled)
        .header("tot_ena", enabled)
        .header("link_ena", enabled)
        .header("patch_ena", enabled)
        .header("patch_state", "4")
        .header("sch_ena", enabled)
        .header("user_funs", enabled)
        .header("tail_type", "0")
        .header("iconns", enabled)
        .header("tot_state", tot_state)
        .header("ider_state", "2")
        .header("tel_mode", "1");
}

/// The full XStat reply (§2.2).
pub(crate) fn xstat(
    era: Era,
    id: Option<&str>,
    name: &str,
    node: &SimNodeTruth,
    now: Instant,
) -> Bytes {
    let mut w = rpt_success(era, id);
    w.header("Node", name);
    for link in node.links.iter().filter(|l| l.is_reported()) {
        w.header("Conn", xstat_conn(link, now));
    }
    let nodes = linked_nodes(node);
    if nodes.is_empty() {
        w.header("LinkedNodes", "<NONE>");
    } else {
        w.header("LinkedNodes", nodes.join(", "));
    }
    for (k, v) in &node.variables {
        w.header("Var", format_args!("{k}={v}"));
    }
    xstat_flags(&mut w, era, node);
    w.finish()
}

/// The SawStat reply (§2.3).
pub(crate) fn sawstat(
    era: Era,
    id: Option<&str>,
    name: &str,
    node: &SimNodeTruth,
    now: Instant,
) -> Bytes {
    let mut w = rpt_success(era, id);
    w.header("Node", name);
    for link in node.links.iter().filter(|l| l.is_reported()) {
        w.header("Conn", sawstat_conn(link, now));
    }
    w.finish()
}

/// `HH:MM:SS` with uncapped hours.
fn hms(secs: u64) -> String {
    format_elapsed(secs)
}

/// The RptStat reply: `Nodes: a,b` (or a bare `<NONE>`), `RptUptime`.
pub(crate) fn rptstat(era: Era, id: Option<&str>, truth: &SimTruth, uptime: u64) -> Bytes {
    let mut w = rpt_success(era, id);
    if truth.nodes.is_empty() {
        w.line("<NONE>");
    } else {
        let names: Vec<&str> = truth.nodes.keys().map(String::as_str).collect();
        w.header("Nodes", names.join(","));
    }
    w.header("RptUptime", hms(uptime));
    w.finish()
}

/// `HH:MM:SS:ms` as NodeStat prints transmitter time (`%02d:%02d:%02d:%02d`).
fn tx_time(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    format!(
        "{:02}:{:02}:{:02}:{:02}",
        ms / 3_600_000,
        (ms / 60_000) % 60,
        (ms / 1000) % 60,
        ms % 1000
    )
}

fn yes_no(on: bool) -> &'static str {
    if on { "YES" } else { "NO" }
}

/// The NodeStat reply for a repeater node (no `Node:` echo, §2.4).
pub(crate) fn nodestat(era: Era, id: Option<&str>, node: &SimNodeTruth, now: Instant) -> Bytes {
    let mut w = rpt_success(era, id);
    let tx = node.tx_time
        + node
            .tx_since
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
    let links: Vec<&str> = node
        .links
        .iter()
        .filter(|l| l.is_reported())
        .map(|l| l.name.as_str())
        .collect();
    let connected = if links.is_empty() {
        "<NONE>".to_owned()
    } else {
        links.join(",")
    };
    w.header("IsRemoteBase", "NO")
        .header("NodeState", "0")
        .header("SignalOnInput", yes_no(node.rx_keyed))
        .header("TransmitterKeyed", yes_no(node.tx_keyed))
        .header("Transmitter", "ENABLED")
        .header("Parrot", "DISABLED")
        .header("Scheduler", "ENABLED")
        .header("TailLength", "STANDARD")
        .header("TimeOutTimer", "ENABLED")
        .header(
            "TimeOutTimerState",
            if node.tx_keyed { "ARMED" } else { "RESET" },
        )
        .header("TimeOutsSinceSystemInitialization", "0")
        .header("IdentifierState", "CLEAN")
        .header("KerchunksToday", "0")
        .header("KerchunksSinceSystemInitialization", "0")
        .header("KeyupsToday", node.rx_keyups)
        .header("KeyupsSinceSystemInitialization", node.rx_keyups)
        .header("DtmfCommandsToday", "0")
        .header("DtmfCommandsSinceSystemInitialization", "0")
        .header("LastDtmfCommandExecuted", "N/A")
        .header("TxTimeToday", tx_time(tx))
        .header("TxTimeSinceSystemInitialization", tx_time(tx))
        .header("NodesCurrentlyConnectedToUs", connected)
        .header("Autopatch", "ENABLED")
        .header("AutopatchState", "DOWN")
        .header("AutopatchCalledNumber", "N/A")
        .header("ReversePatchIaxrptConnected", "DOWN")
        .header("UserLinkingCommands", "ENABLED")
        .header("UserFunctions", "ENABLED");
    w.finish()
}

/// RptLocalNodes: XML lines, no `Response:` and no `ActionID:` (§2.5).
pub(crate) fn local_nodes(truth: &SimTruth) -> Bytes {
    let mut w = Wire::new();
    w.line("<?xml version=\"1.0\"?>").line("<nodes>");
    for name in truth.nodes.keys() {
        w.line(&format!("  <node>{name}</node>"));
    }
    w.line("</nodes>");
    w.finish()
}

/// A receiver's `Client:` value: the name and its flags in chan_voter's order.
fn client_label(r: &SimVoterReceiver) -> String {
    const ORDER: [&str; 4] = ["Mix", "Master", "ActiveMaster", "Inactive"];
    let mut flags: Vec<&str> = r.flags.iter().map(String::as_str).collect();
    flags.sort_by_key(|f| ORDER.iter().position(|o| o == f).unwrap_or(ORDER.len()));
    let mut label = r.name.clone();
    for f in flags {
        label.push(' ');
        label.push_str(f);
    }
    label
}

/// VoterStatus: one block per matching instance, concatenated with no blank line between;
/// a bare CRLF when nothing matches (§2.6). `filter` is the request's `Node:` list.
pub(crate) fn voter_status(
    era: Era,
    id: Option<&str>,
    truth: &SimTruth,
    filter: Option<&str>,
) -> Bytes {
    let wanted: Option<Vec<&str>> = filter
        .filter(|f| !f.is_empty())
        .map(|f| f.split(',').collect());
    let mut out = String::new();
    for (name, node) in &truth.nodes {
        let Some((voted, receivers)) = &node.voter else {
            continue;
        };
        if wanted.as_ref().is_some_and(|w| !w.contains(&name.as_str())) {
            continue;
        }
        let mut w = rpt_success(era, id);
        w.header("Node", name);
        if let Some(v) = voted {
            w.header("Voted", v);
        }
        for r in receivers {
            w.header("Client", client_label(r))
                .header("IP", &r.ip)
                .header("RSSI", r.rssi);
        }
        out.push_str(std::str::from_utf8(&w.unterminated()).unwrap_or_default());
    }
    out.push_str("\r\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::truth::SimLink;

    fn link(l: SimLink, at: Instant) -> SimLinkTruth {
        let mut t = SimTruth::default();
        let now = crate::sim::truth::Now {
            at,
            wall: SystemTime::UNIX_EPOCH,
        };
        t.add_node("1", now, 1);
        t.connect_link("1", l, now);
        t.nodes["1"].links[0].clone()
    }

    #[test]
    fn ctime_pads_the_day_with_a_space() {
        assert_eq!(ctime(SystemTime::UNIX_EPOCH), "Thu Jan  1 00:00:00 1970");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_755_525_731);
        assert_eq!(ctime(t), "Mon Aug 18 14:02:11 2025");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(ctime(leap), "Tue Feb 29 00:00:00 2000");
    }

    #[test]
    fn conn_columns_are_exact() {
        let at = Instant::now();
        let now = at + Duration::from_secs(4530);
        let out = link(
            SimLink::allstar("2000", "192.0.2.10", Direction::Out).with_reconnects(1),
            at,
        );
        assert_eq!(
            xstat_conn(&out, now),
            "2000      192.0.2.10          1           OUT        01:15:30            ESTABLISHED         "
        );
        let el = link(SimLink::echolink("3123456"), at);
        assert_eq!(
            xstat_conn(&el, at + Duration::from_secs(135)),
            "3123456                       0           IN         00:02:15            ESTABLISHED         "
        );
        let none = link(SimLink::no_channel("2002"), at);
        assert_eq!(
            xstat_conn(&none, at),
            "2002      (none)              0           OUT        00:00:00            CONNECTING          "
        );
        assert_eq!(sawstat_conn(&none, at), "2002 0 -1 -1");
    }

    #[test]
    fn wide_fields_run_into_the_next_column_and_peers_are_cut_at_30() {
        let at = Instant::now();
        let ip6 = "2001:db8:85a3:1234:5678:8a2e:370:7334";
        let l = link(SimLink::allstar("12345678901", ip6, Direction::In), at);
        assert_eq!(
            xstat_conn(&l, at),
            "12345678901".to_owned()
                + "2001:db8:85a3:1234:5678:8a2e:3"
                + "0           IN         00:00:00            ESTABLISHED         "
        );
    }

    #[test]
    fn pseudo_links_starting_with_zero_are_never_reported() {
        let mut t = SimTruth::default();
        let now = crate::sim::truth::Now {
            at: Instant::now(),
            wall: SystemTime::UNIX_EPOCH,
        };
        t.add_node("1999", now, 1);
        t.connect_link(
            "1999",
            SimLink::allstar("2000", "192.0.2.1", Direction::Out),
            now,
        );
        t.connect_link("1999", SimLink::allstar("0123", "", Direction::In), now);
        let xs = xstat(Era::Modern, None, "1999", &t.nodes["1999"], now.at);
        let text = String::from_utf8_lossy(&xs);
        assert!(!text.contains("0123"), "{text}");
        assert!(text.contains("Var: RPT_ALINKS=1,2000TU\r\n"));
        let ss = sawstat(Era::Modern, None, "1999", &t.nodes["1999"], now.at);
        assert_eq!(
            &ss[..],
            b"Response: Success\r\nNode: 1999\r\nConn: 2000 0 -1 -1\r\n\r\n"
        );
    }

    #[test]
    fn linked_nodes_lines_are_not_capped() {
        let mut t = SimTruth::default();
        let now = crate::sim::truth::Now {
            at: Instant::now(),
            wall: SystemTime::UNIX_EPOCH,
        };
        t.add_node("1999", now, 1);
        let behind: Vec<(crate::rpt::types::Mode, String)> = (0..5000)
            .map(|i| (crate::rpt::types::Mode::T, (100_000 + i).to_string()))
            .collect();
        let hub = SimLink::allstar("2000", "192.0.2.1", Direction::Out).with_remote_nodes(behind);
        t.connect_link("1999", hub, now);
        let xs = xstat(Era::Modern, None, "1999", &t.nodes["1999"], now.at);
        let mut codec = crate::ami::AmiCodec::client(1 << 20);
        let mut buf = bytes::BytesMut::from(&b"Asterisk Call Manager/11.0.0\r\n"[..]);
        buf.extend_from_slice(&xs);
        use tokio_util::codec::Decoder;
        let _banner = codec.decode(&mut buf).expect("banner");
        let Some(crate::ami::Incoming::Frame(f)) = codec.decode(&mut buf).expect("frame") else {
            panic!("no frame");
        };
        assert!(f.get("LinkedNodes").is_some_and(|l| l.len() > 40_000));
        assert!(
            f.get_all("Var")
                .any(|v| v.starts_with("RPT_LINKS=5001,T2000,T100000,"))
        );
    }

    #[test]
    fn legacy_command_glues_the_marker_and_modern_splits_lines() {
        let legacy = command(Era::Legacy, Some("7"), true, "a\n\nb\n");
        assert_eq!(
            &legacy[..],
            b"Response: Follows\r\nPrivilege: Command\r\nActionID: 7\r\na\n\nb\n--END COMMAND--\r\n\r\n"
        );
        let modern = command(Era::Modern, None, true, "");
        assert_eq!(
            &modern[..],
            b"Response: Success\r\nMessage: Command output follows\r\nOutput: \r\n\r\n"
        );
    }

    #[test]
    fn client_flags_print_in_chan_voter_order() {
        let r = SimVoterReceiver::new("site", "1.2.3.4:1667", 5)
            .with_flags(&["ActiveMaster", "Master"]);
        assert_eq!(client_label(&r), "site Master ActiveMaster");
    }
}
