//! `RptStatus` / `XStat`: the node's direct links (`Conn:`), every reachable node
//! (`LinkedNodes:`), the rx channel's variables (`Var:`) and the status flags
//! (ami-app-rpt.md §2.2).
//!
//! A `Conn:` line is printf `%-10s%-20s%-12d%-11s%-20s%-20s`: name, peer IP, reconnects,
//! `IN`/`OUT`, `HH:MM:SS`, `ESTABLISHED`/`CONNECTING`. Widths are minimums, so it is read
//! in two steps:
//!
//! 1. Fixed columns, accepted only when every field sits exactly in its column (the
//!    common case, and the only correct reading of a 10-character name glued to its IP).
//! 2. Otherwise, from the right: the last three blank-separated words are direction, time
//!    and state (they never overflow). The reconnect count is the 12 columns before the
//!    direction (its `%-12d` field ends there even when the IP overflowed into it), or the
//!    word before the direction when a capture collapsed the spacing. What is left is the
//!    name (first word) and the IP (the rest: empty for EchoLink/TLB, `(none)` for a link
//!    without a channel). A name of more than 10 characters runs into the IP; the IP's
//!    own padding to 20 tells where the name ends.
//!
//! The parse is borrowed: names, addresses, `Var:` lines and flags are slices of the
//! reply's frame, so a 1,000-link reply costs a handful of allocations (the vectors); the
//! model copies only what it keeps (a new link's name, a changed address or network).

use std::net::{IpAddr, Ipv6Addr};

use serde::Serialize;

use super::links::{ALink, parse_alinks_borrowed, parse_linked_nodes};
use super::{RptError, expect_success, parse_digits, parse_hms, parse_keyed};
use crate::ami::Frame;
use crate::rpt::types::{Direction, LinkState, LinkedNode};

/// One directly connected link from an XStat `Conn:` line (borrowed from the line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct XStatLink<'a> {
    /// Node number, or text for IAX clients (`WD5M-P`).
    pub name: &'a str,
    /// Peer address without port; `None` for EchoLink/TLB (empty column) and `(none)`.
    pub ip: Option<&'a str>,
    pub reconnects: u32,
    /// `None` only if app_rpt ever prints a word other than `IN`/`OUT`.
    pub direction: Option<Direction>,
    pub connected_seconds: u64,
    /// `None` for a state word other than `ESTABLISHED`/`CONNECTING`.
    pub state: Option<LinkState>,
}

/// A parsed XStat reply, borrowing its text from the reply's frame.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct XStat<'a> {
    /// The `Node:` echo.
    pub node: Option<&'a str>,
    /// `Conn:` lines, in reply order (app_rpt's order changed over versions: don't rely on it).
    pub links: Vec<XStatLink<'a>>,
    /// `LinkedNodes:`: every reachable node, duplicates kept; empty for `<NONE>`.
    pub linked_nodes: Vec<LinkedNode<&'a str>>,
    /// `Var: NAME=value` lines in reply order (most recently set first).
    pub vars: Vec<(&'a str, &'a str)>,
    /// Every other `key: value` line: the status flags (`parrot_ena`, `sys_ena`, …).
    pub flags: Vec<(&'a str, &'a str)>,
    /// `RPT_ALINKS` parsed; `None` when the reply has no such `Var:` (older ASL3).
    pub alinks: Option<Vec<ALink<&'a str>>>,
    /// `RPT_RXKEYED`; `None` when absent.
    pub rx_keyed: Option<bool>,
    /// `RPT_TXKEYED`; `None` when absent.
    pub tx_keyed: Option<bool>,
}

impl<'a> XStat<'a> {
    /// The value of a `Var:` (exact name; the first one if repeated).
    pub fn var(&self, name: &str) -> Option<&'a str> {
        self.vars.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    /// The value of a status flag such as `parrot_ena` or `tel_mode`.
    pub fn flag(&self, name: &str) -> Option<&'a str> {
        self.flags.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }
}

/// Parses an XStat reply (`Response: Success` required; `ActionID` may come first).
pub fn parse_xstat(frame: &Frame) -> Result<XStat<'_>, RptError> {
    expect_success(frame, "XStat")?;
    let mut x = XStat::default();
    for (key, value) in frame.headers() {
        absorb(&mut x, key, value)?;
        if x.links.len() > super::MAX_LINKS {
            return Err(RptError::TooManyLinks {
                list: "XStat Conn",
                limit: super::MAX_LINKS,
            });
        }
        if x.linked_nodes.len() > super::MAX_REACHABLE {
            return Err(RptError::TooManyLinks {
                list: "XStat LinkedNodes",
                limit: super::MAX_REACHABLE,
            });
        }
    }
    x.alinks = x.var("RPT_ALINKS").map(parse_alinks_borrowed).transpose()?;
    x.rx_keyed = keyed_var(&x, "RPT_RXKEYED")?;
    x.tx_keyed = keyed_var(&x, "RPT_TXKEYED")?;
    Ok(x)
}

/// Adds one header line of the reply to `x`.
fn absorb<'a>(x: &mut XStat<'a>, key: &'a str, value: &'a str) -> Result<(), RptError> {
    let is = |name: &str| key.eq_ignore_ascii_case(name);
    if is("Conn") {
        x.links.push(parse_conn_line(value)?);
    } else if is("Var") {
        let (name, val) = value.split_once('=').unwrap_or((value, ""));
        x.vars.push((name.trim(), val));
    } else if is("LinkedNodes") {
        super::links::check_count("XStat LinkedNodes", value, super::MAX_REACHABLE)?;
        let nodes = parse_linked_nodes(value);
        if x.linked_nodes.is_empty() {
            x.linked_nodes = nodes;
        } else {
            x.linked_nodes.extend(nodes);
        }
    } else if is("Node") {
        x.node.get_or_insert_with(|| value.trim());
    } else if !(key.is_empty() || is("Response") || is("ActionID") || is("Message")) {
        x.flags.push((key, value.trim_end()));
    }
    Ok(())
}

fn keyed_var(x: &XStat<'_>, name: &str) -> Result<Option<bool>, RptError> {
    x.var(name).map(|v| parse_keyed(name, v)).transpose()
}

/// Parses the text after `Conn: ` of an XStat reply (see the module doc for the rules).
pub fn parse_conn_line(value: &str) -> Result<XStatLink<'_>, RptError> {
    let line = value.trim_ascii_start().trim_end_matches(['\r', '\n']);
    match parse_fixed(line) {
        Some(link) => Ok(link),
        None => parse_anchored(line),
    }
}

/// Column layout of `%-10s%-20s%-12d%-11s%-20s%-20s`.
const NAME_END: usize = 10;
const IP_END: usize = 30;
const RECONNECTS_END: usize = 42;
const DIRECTION_END: usize = 53;
const TIME_END: usize = 73;
const IP_WIDTH: usize = IP_END - NAME_END;
const RECONNECTS_WIDTH: usize = RECONNECTS_END - IP_END;

/// Step 1: every field exactly in its column, with the values app_rpt prints.
fn parse_fixed(line: &str) -> Option<XStatLink<'_>> {
    let name = padded(line.get(..NAME_END)?)?;
    let ip_col = line.get(NAME_END..IP_END)?;
    let ip = if ip_col.bytes().all(|b| b == b' ') {
        None
    } else {
        peer(padded(ip_col)?)
    };
    let reconnects = parse_digits(padded(line.get(IP_END..RECONNECTS_END)?)?)?;
    let direction = match padded(line.get(RECONNECTS_END..DIRECTION_END)?)? {
        "IN" => Direction::In,
        "OUT" => Direction::Out,
        _ => return None,
    };
    let connected_seconds = parse_hms(padded(line.get(DIRECTION_END..TIME_END)?)?)?;
    let state = known_state(padded(line.get(TIME_END..)?)?)?;
    Some(XStatLink {
        name,
        ip,
        reconnects,
        direction: Some(direction),
        connected_seconds,
        state: Some(state),
    })
}

/// A left-justified field: its text, when the text starts the field and only spaces follow.
fn padded(field: &str) -> Option<&str> {
    let bytes = field.as_bytes();
    let end = bytes
        .iter()
        .position(u8::is_ascii_whitespace)
        .unwrap_or(bytes.len());
    let only_spaces_after = bytes[end..].iter().all(|&b| b == b' ');
    (end > 0 && only_spaces_after).then(|| &field[..end])
}

/// The IP column's text, `None` for `(none)` and empty.
fn peer(text: &str) -> Option<&str> {
    (!text.is_empty() && text != "(none)").then_some(text)
}

fn known_state(word: &str) -> Option<LinkState> {
    match word {
        "ESTABLISHED" => Some(LinkState::Established),
        "CONNECTING" => Some(LinkState::Connecting),
        _ => None,
    }
}

/// Step 2: anchored on the last three words (see the module doc).
fn parse_anchored(line: &str) -> Result<XStatLink<'_>, RptError> {
    let words: Vec<(usize, &str)> = word_positions(line).collect();
    let n = words.len();
    if n < 4 {
        return Err(too_few(n, line));
    }
    let ((dir_at, dir), (_, time), (_, state)) = (words[n - 3], words[n - 2], words[n - 1]);
    // Four words only when name, IP and count are glued: the exact column must say so.
    let exact = exact_reconnects(line, dir_at);
    let count_at = match exact {
        Some(at) => at,
        None if n >= 5 => words[n - 4].0,
        None => return Err(too_few(n, line)),
    };
    let direction = direction_word(dir, line)?;
    let connected_seconds =
        parse_hms(time).ok_or_else(|| bad_field("connected time", time, "HH:MM:SS", line))?;
    let state = state_word(state, line)?;
    let text = line[count_at..dir_at].trim_end();
    let reconnects =
        parse_digits(text).ok_or_else(|| bad_field("reconnect count", text, "a number", line))?;
    let (name, ip) = split_name_ip(&line[..count_at], exact.is_some(), line)?;
    Ok(XStatLink {
        name,
        ip,
        reconnects,
        direction,
        connected_seconds,
        state,
    })
}

/// Where the reconnect count starts when it fills its `%-12d` field exactly up to the
/// direction at `dir_at` (digits, then only spaces): true even after an IP overflow.
fn exact_reconnects(line: &str, dir_at: usize) -> Option<usize> {
    let at = dir_at.checked_sub(RECONNECTS_WIDTH)?;
    let text = padded(line.get(at..dir_at)?)?;
    text.bytes().all(|b| b.is_ascii_digit()).then_some(at)
}

/// Blank-separated words with their byte offsets.
fn word_positions(line: &str) -> impl Iterator<Item = (usize, &str)> {
    line.split_ascii_whitespace()
        .map(move |w| (w.as_ptr() as usize - line.as_ptr() as usize, w))
}

/// `IN`/`OUT`; another word (a future app_rpt) is tolerated as `None`, a non-word is an error.
fn direction_word(word: &str, line: &str) -> Result<Option<Direction>, RptError> {
    match word {
        "IN" => Ok(Some(Direction::In)),
        "OUT" => Ok(Some(Direction::Out)),
        w if is_word(w) => Ok(None),
        w => Err(bad_field("direction", w, "IN or OUT", line)),
    }
}

/// `ESTABLISHED`/`CONNECTING`; another word is tolerated as `None`, a non-word is an error.
fn state_word(word: &str, line: &str) -> Result<Option<LinkState>, RptError> {
    match known_state(word) {
        Some(state) => Ok(Some(state)),
        None if is_word(word) => Ok(None),
        None => Err(bad_field("state", word, "ESTABLISHED or CONNECTING", line)),
    }
}

fn is_word(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_')
}

/// Splits `name(pad 10) + ip(pad 20)` into the name and the IP (`None` when empty or
/// `(none)`). `trusted`: the text ends exactly where the reconnect column starts.
fn split_name_ip<'a>(
    left: &'a str,
    trusted: bool,
    line: &str,
) -> Result<(&'a str, Option<&'a str>), RptError> {
    let text = left.trim_ascii_end();
    if text.is_empty() {
        return Err(bad_field("name", "", "a node name", line));
    }
    let padding = trusted.then_some(left.len() - text.len());
    let (name, ip) = match text.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((name, rest)) => (name, rest.trim()),
        None => split_glued(text, padding),
    };
    if ip.contains(|c: char| c.is_ascii_whitespace()) {
        return Err(bad_field("peer IP", ip, "one address", line));
    }
    Ok((name, peer(ip)))
}

/// A name of 10+ characters glued to its IP. With a trusted layout, the blanks after the
/// IP say how long it is (`20 - padding`, when the IP is shorter than its column).
/// Otherwise (an IP of 20+ characters, or collapsed spacing) the IP is the longest
/// suffix, past the name column, that is an address; failing that it is all name.
fn split_glued(token: &str, padding: Option<usize>) -> (&str, &str) {
    match padding {
        Some(padding) if padding >= IP_WIDTH => return (token, ""),
        Some(padding) if padding > 0 => {
            let at = token
                .len()
                .checked_sub(IP_WIDTH - padding)
                .filter(|&at| at >= NAME_END);
            if let Some(pair) = at.and_then(|at| split_at_checked(token, at)) {
                return pair;
            }
        }
        _ => {}
    }
    (NAME_END..token.len())
        .find(|&at| token.get(at..).is_some_and(is_ip_literal))
        .and_then(|at| split_at_checked(token, at))
        .unwrap_or((token, ""))
}

fn split_at_checked(text: &str, at: usize) -> Option<(&str, &str)> {
    Some((text.get(..at)?, text.get(at..)?))
}

fn is_ip_literal(text: &str) -> bool {
    if text.parse::<IpAddr>().is_ok() {
        return true;
    }
    // IPv6 with a zone (`fe80::1%eth0`).
    text.split_once('%')
        .is_some_and(|(addr, _)| addr.parse::<Ipv6Addr>().is_ok())
}

fn too_few(found: usize, line: &str) -> RptError {
    RptError::ConnFieldCount {
        found,
        line: line.trim_end().to_owned(),
    }
}

fn bad_field(field: &'static str, value: &str, expected: &'static str, line: &str) -> RptError {
    RptError::ConnField {
        field,
        value: value.to_owned(),
        expected,
        line: line.trim_end().to_owned(),
    }
}

#[cfg(test)]
mod tests;
