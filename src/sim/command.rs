//! The Asterisk CLI behind `Action: Command`: the handful of commands monitors send
//! (`core show uptime [seconds]`, `core show version`), the app_rpt commands operators
//! type (`rpt stats|lstats|nodes|showvars <node>`, `rpt localnodes`,
//! `rpt set variable <node> name=value...`), and `rpt cmd <node> ilink <n> [<node>]`,
//! which really connects and disconnects links in the truth.
//!
//! `ilink` functions: 1 disconnect, 2 connect monitor (R), 3 connect transceive (T),
//! 6 disconnect all, 8 connect local monitor (L), 11/12/13/18 the "permanent" variants of
//! 1/2/3/8. As in app_rpt's `function_ilink`, `ilink 1` on a permanent link does nothing
//! and still succeeds ("must use perm command on perm link"); 11 disconnects any link, and
//! 6 every link. Connections are outbound and established at once. When the target is
//! another node of this server, the matching inbound link appears on it too, as it would
//! when app_rpt dials itself over IAX.
//!
//! `echolink dbget nodename <n>` answers from the simulator's EchoLink directory
//! ([`super::SimHandle::set_echolink_entry`]; the demo's three EchoLink users are in it) as
//! chan_echolink's `el_do_dbget` does: `<node>|<callsign>|<ip>` when found (the format
//! app_rpt's own `elink_db_get` splits on `|`, and Allmon3/Supermon read), and
//! `Error: Entry for <n> not found!` (a failed command) when not. The not-found wording
//! is recalled from chan_echolink.c, not from a capture.

use super::SimHandle;
use super::format;
use super::truth::{SimLink, SimNodeTruth, linked_nodes};
use crate::rpt::types::{Direction, LinkKind, Mode, format_elapsed};

/// What the CLI printed and whether the command succeeded.
pub(crate) struct CliOutput {
    pub(crate) ok: bool,
    pub(crate) text: String,
}

impl CliOutput {
    fn ok(text: impl Into<String>) -> CliOutput {
        CliOutput {
            ok: true,
            text: text.into(),
        }
    }

    fn fail(text: impl Into<String>) -> CliOutput {
        CliOutput {
            ok: false,
            text: text.into(),
        }
    }
}

/// Runs one CLI line.
pub(crate) fn run(h: &SimHandle, line: &str) -> CliOutput {
    let words: Vec<&str> = line.split_whitespace().collect();
    let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    let keys: Vec<&str> = lower.iter().map(String::as_str).collect();
    match keys.as_slice() {
        ["core", "show", "uptime"] => uptime(h, false),
        ["core", "show", "uptime", "seconds"] => uptime(h, true),
        ["core", "show", "version"] => CliOutput::ok(version(h)),
        ["rpt", "localnodes"] => CliOutput::ok(local_nodes(h)),
        ["rpt", "stats", _] => with_node(h, words[2], stats),
        ["rpt", "lstats", _] => with_node(h, words[2], lstats),
        ["rpt", "nodes", _] => with_node(h, words[2], nodes),
        ["rpt", "showvars", _] => with_node(h, words[2], showvars),
        ["rpt", "set", "variable", _, _, ..] => set_variable(h, words[3], &words[4..]),
        ["rpt", "cmd", _, "ilink", _, ..] => ilink(h, words[2], words[4], words.get(5).copied()),
        ["echolink", "dbget", "nodename", _] => echolink_dbget(h, words[3]),
        _ => no_such_command(h, line.trim()),
    }
}

fn echolink_dbget(h: &SimHandle, lookup: &str) -> CliOutput {
    let found = lookup.parse::<u32>().ok().and_then(|n| {
        let dir = h.shared.echolink.lock().unwrap_or_else(|p| p.into_inner());
        dir.get(&n).map(|(call, ip)| format!("{n}|{call}|{ip}\n"))
    });
    match found {
        Some(line) => CliOutput::ok(line),
        None => CliOutput::fail(format!("Error: Entry for {lookup} not found!\n")),
    }
}

fn no_such_command(h: &SimHandle, line: &str) -> CliOutput {
    let help = match h.shared.config.era {
        super::Era::Modern => "core show help",
        super::Era::Legacy => "help",
    };
    CliOutput::fail(format!(
        "No such command '{line}' (type '{help} {line}' for other possible commands)\n"
    ))
}

fn with_node(
    h: &SimHandle,
    node: &str,
    f: impl FnOnce(&str, &SimNodeTruth, &SimHandle) -> String,
) -> CliOutput {
    let Some(truth) = h.shared.read(|t| t.nodes.get(node).cloned()) else {
        return CliOutput::fail(format!("Node {node} not found\n"));
    };
    CliOutput::ok(f(node, &truth, h))
}

/// `1 hour, 27 minutes, 14 seconds`.
fn human_duration(mut secs: u64) -> String {
    const UNITS: [(u64, &str); 6] = [
        (365 * 86_400, "year"),
        (7 * 86_400, "week"),
        (86_400, "day"),
        (3600, "hour"),
        (60, "minute"),
        (1, "second"),
    ];
    let mut parts = Vec::new();
    for (size, name) in UNITS {
        let n = secs / size;
        secs %= size;
        if n > 0 {
            parts.push(format!("{n} {name}{}", if n == 1 { "" } else { "s" }));
        }
    }
    if parts.is_empty() {
        return "<1 second".to_owned();
    }
    parts.join(", ")
}

fn uptime(h: &SimHandle, seconds: bool) -> CliOutput {
    let up = h.shared.clock.uptime();
    if seconds {
        return CliOutput::ok(format!("System uptime: {up}\nLast reload: {up}\n"));
    }
    let text = human_duration(up);
    CliOutput::ok(format!("System uptime: {text}\nLast reload: {text}\n"))
}

fn version(h: &SimHandle) -> String {
    match h.shared.config.era {
        super::Era::Modern => "Asterisk 22.4.1+asl3-3.5.5 built by nexus-sim @ simulator on a x86_64 running Linux on 2025-06-01 00:00:00 UTC\n",
        super::Era::Legacy => "Asterisk 1.4.23-pre built by root @ allstar on a i686 running Linux on 2012-02-02 18:20:53 UTC\n",
    }
    .to_owned()
}

fn local_nodes(h: &SimHandle) -> String {
    let mut out = String::from("\nNode\n----\n");
    for node in h
        .shared
        .read(|t| t.nodes.keys().cloned().collect::<Vec<_>>())
    {
        out.push_str(&node);
        out.push('\n');
    }
    out
}

/// `rpt stats <node>`: the node statistics report.
fn stats(node: &str, n: &SimNodeTruth, h: &SimHandle) -> String {
    let now = h.shared.clock.now().at;
    let tx = n.tx_time
        + n.tx_since
            .map_or(Default::default(), |s| now.saturating_duration_since(s));
    let connected: Vec<&str> = n
        .links
        .iter()
        .filter(|l| l.is_reported())
        .map(|l| l.name.as_str())
        .collect();
    let yes_no = |b: bool| if b { "YES" } else { "NO" };
    let rows: [(&str, String); 16] = [
        ("Selected system state", "0".into()),
        ("Signal on input", yes_no(n.rx_keyed).into()),
        ("Transmitter keyed", yes_no(n.tx_keyed).into()),
        ("System", "ENABLED".into()),
        ("Parrot", "DISABLED".into()),
        ("Scheduler", "ENABLED".into()),
        ("Tail Time", "STANDARD".into()),
        ("Time out timer", "ENABLED".into()),
        (
            "Time out timer state",
            if n.tx_keyed { "ARMED" } else { "RESET" }.into(),
        ),
        ("Identifier state", "CLEAN".into()),
        (
            "Keyups since system initialization",
            n.rx_keyups.to_string(),
        ),
        (
            "TX time since system initialization",
            format_elapsed(tx.as_secs()),
        ),
        ("Uptime", format_elapsed(h.shared.clock.uptime())),
        (
            "Nodes currently connected to us",
            if connected.is_empty() {
                "<NONE>".into()
            } else {
                connected.join(", ")
            },
        ),
        ("Autopatch state", "DOWN".into()),
        ("User linking commands", "ENABLED".into()),
    ];
    let mut out =
        format!("************************ NODE {node} STATISTICS *************************\n\n");
    for (label, value) in rows {
        out.push_str(&format!("{:.<49}: {value}\n", label));
    }
    out
}

/// `rpt lstats <node>`: the link table with XStat's columns.
fn lstats(_node: &str, n: &SimNodeTruth, h: &SimHandle) -> String {
    let now = h.shared.clock.now().at;
    let mut out = String::from(
        "NODE      PEER                RECONNECTS  DIRECTION  CONNECT TIME        CONNECT STATE\n\
         ----      ----                ----------  ---------  ------------        -------------\n",
    );
    for link in n.links.iter().filter(|l| l.is_reported()) {
        out.push_str(format::xstat_conn(link, now).trim_end());
        out.push('\n');
    }
    out
}

/// `rpt nodes <node>`: every reachable node, sorted as LinkedNodes.
fn nodes(_node: &str, n: &SimNodeTruth, _h: &SimHandle) -> String {
    let list = linked_nodes(n);
    let body = if list.is_empty() {
        "<NONE>".to_owned()
    } else {
        list.join(", ")
    };
    format!("\n************************* CONNECTED NODES *************************\n\n{body}\n\n")
}

/// `rpt showvars <node>`: the rx channel's variables.
fn showvars(node: &str, n: &SimNodeTruth, _h: &SimHandle) -> String {
    let mut out = format!("Variable listing for node {node}:\n");
    for (k, v) in &n.variables {
        out.push_str(&format!("   {k}={v}\n"));
    }
    out.push_str(&format!("    -- {} variables\n", n.variables.len()));
    out
}

fn set_variable(h: &SimHandle, node: &str, assignments: &[&str]) -> CliOutput {
    if !h.shared.read(|t| t.nodes.contains_key(node)) {
        return CliOutput::fail(format!("Node {node} not found\n"));
    }
    for a in assignments {
        if let Some((name, value)) = a.split_once('=') {
            h.set_variable(node, name, value);
        }
    }
    CliOutput::ok("")
}

/// The peer IP a new outbound link gets: loopback for our own nodes, none for EchoLink,
/// a documentation address derived from the number otherwise.
fn peer_ip(h: &SimHandle, target: &str) -> Option<String> {
    if h.shared.read(|t| t.nodes.contains_key(target)) {
        return Some("127.0.0.1".to_owned());
    }
    match LinkKind::of(target) {
        LinkKind::Echolink => None,
        _ => {
            let n: u64 = target.bytes().map(u64::from).sum();
            Some(format!("198.51.100.{}", n % 250 + 2))
        }
    }
}

fn ilink(h: &SimHandle, node: &str, func: &str, target: Option<&str>) -> CliOutput {
    if !h.shared.read(|t| t.nodes.contains_key(node)) {
        return CliOutput::fail(format!("Node {node} not found\n"));
    }
    let permanent = func.len() == 2;
    let mode = match func {
        "1" => return disconnect_unless_permanent(h, node, target),
        "11" => return disconnect(h, node, target),
        "6" => return disconnect_all(h, node),
        "2" | "12" => Mode::R,
        "3" | "13" => Mode::T,
        "8" | "18" => Mode::L,
        _ => return CliOutput::ok(""),
    };
    let Some(target) = target.filter(|t| *t != node) else {
        return CliOutput::ok("");
    };
    connect(h, node, target, mode);
    if permanent {
        h.set_link_permanent(node, target, true);
    }
    CliOutput::ok("")
}

/// `ilink 1`: app_rpt leaves a permanent link up (and answers as if it had worked).
fn disconnect_unless_permanent(h: &SimHandle, node: &str, target: Option<&str>) -> CliOutput {
    let permanent = target.is_some_and(|t| {
        h.shared.read(|truth| {
            truth
                .nodes
                .get(node)
                .and_then(|n| n.link(t))
                .is_some_and(|l| l.permanent)
        })
    });
    if permanent {
        return CliOutput::ok("");
    }
    disconnect(h, node, target)
}

fn connect(h: &SimHandle, node: &str, target: &str, mode: Mode) {
    let existing = h.shared.read(|t| {
        t.nodes
            .get(node)
            .and_then(|n| n.link(target).map(|l| l.mode))
    });
    match existing {
        Some(m) if m == mode => {}
        Some(_) => {
            h.set_link_mode(node, target, mode);
        }
        None => {
            let mut link = SimLink::allstar(target, "", Direction::Out).with_mode(mode);
            link.ip = peer_ip(h, target);
            h.connect_link(node, link);
            if h.shared.read(|t| t.nodes.contains_key(target)) {
                let back = SimLink::allstar(node, "127.0.0.1", Direction::In).with_mode(mode);
                h.connect_link(target, back);
            }
        }
    }
    super::activity::sync_local_lists(h);
}

fn disconnect(h: &SimHandle, node: &str, target: Option<&str>) -> CliOutput {
    if let Some(target) = target {
        h.disconnect_link(node, target);
        let back_is_ours = h.shared.read(|t| {
            t.nodes
                .get(target)
                .and_then(|n| n.link(node))
                .is_some_and(|l| l.direction == Direction::In)
        });
        if back_is_ours {
            h.disconnect_link(target, node);
        }
        super::activity::sync_local_lists(h);
    }
    CliOutput::ok("")
}

fn disconnect_all(h: &SimHandle, node: &str) -> CliOutput {
    let names: Vec<String> = h.shared.read(|t| {
        t.nodes
            .get(node)
            .map(|n| {
                n.links
                    .iter()
                    .filter(|l| l.is_reported())
                    .map(|l| l.name.clone())
                    .collect()
            })
            .unwrap_or_default()
    });
    for name in names {
        disconnect(h, node, Some(&name));
    }
    CliOutput::ok("")
}
