//! app_rpt knowledge: pure parsers for XStat, SawStat, RptStat, VoterStatus, the link
//! strings (`RPT_ALINKS`, `RPT_LINKS`, `LinkedNodes`) and the `RPT_*` events.
//!
//! Every function here works on an already decoded [`Frame`] or on one header value: no
//! I/O, no clock, no state. The wire formats come from app_rpt's source and real
//! captures, collected in `shared/reference/ami-app-rpt.md` (§2.2–2.8, §3, §4.4).
//!
//! Error policy: what app_rpt itself formats (a `Conn:` line, the link strings, a keyed
//! flag) is validated, and a malformed value gives an [`RptError`] that names the line and
//! the field. Free-form data (user `Var:` lines, unknown status flags, unknown headers) is
//! passed through untouched, so one odd script variable never hides a node's links.

mod events;
mod links;
mod rptstat;
mod sawstat;
pub mod types;
mod voter;
mod xstat;

#[cfg(test)]
mod samples;

pub use events::{RptEvent, RptValue, parse_event};
pub use links::{ALink, parse_alinks, parse_linked_nodes, parse_links};
pub use rptstat::{RptStat, parse_rptstat};
pub use sawstat::{SawStatLink, parse_sawstat, parse_sawstat_line};
pub use types::{Direction, LinkKind, LinkState, LinkedNode, Mode, format_elapsed};
pub use voter::{VoterInstance, VoterReceiver, parse_voter_status};
pub use xstat::{XStat, XStatLink, parse_conn_line, parse_xstat};

/// Most adjacent links accepted from one event or reply (`RPT_ALINKS`, XStat and SawStat
/// `Conn:` lines). app_rpt's own limits are far lower (a node serves tens of links; the
/// old `MAXLINKLIST` string buffer held about 70); a longer list is refused as a protocol
/// error, so one hostile 100,000-link event cannot stall the state engine.
pub const MAX_LINKS: usize = 1_000;

/// Most reachable nodes accepted from one `RPT_LINKS` or `LinkedNodes:` value (every node
/// of a hub network is listed; the largest real networks list hundreds).
pub const MAX_REACHABLE: usize = 10_000;

use crate::ami::Frame;

/// Why an app_rpt reply, link string or event could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RptError {
    /// Asterisk or app_rpt answered `Response: Error` (unknown node, missing command…).
    #[error("{reply} reply is \"Response: Error\": {message:?}")]
    ErrorReply {
        reply: &'static str,
        message: String,
    },
    /// The frame is not a successful reply (no `Response:` header, or another value).
    #[error("{reply} reply has no \"Response: Success\" (Response: {response:?})")]
    NotSuccess {
        reply: &'static str,
        response: Option<String>,
    },
    /// A `Conn:` line of XStat with too few whitespace-separated fields.
    #[error("XStat Conn line has {found} fields, expected at least 5: {line:?}")]
    ConnFieldCount { found: usize, line: String },
    /// A `Conn:` line of XStat with one field that cannot be read.
    #[error("XStat Conn line has a bad {field} {value:?} (expected {expected}): {line:?}")]
    ConnField {
        field: &'static str,
        value: String,
        expected: &'static str,
        line: String,
    },
    /// A `Conn:` line of SawStat without exactly 4 fields.
    #[error(
        "SawStat Conn line has {found} fields, expected 4 (name, keyed, secs since key, secs since unkey): {line:?}"
    )]
    SawStatFieldCount { found: usize, line: String },
    /// A `Conn:` line of SawStat with one field that cannot be read.
    #[error("SawStat Conn line has a bad {field} {value:?} (expected {expected}): {line:?}")]
    SawStatField {
        field: &'static str,
        value: String,
        expected: &'static str,
        line: String,
    },
    /// The leading count of `RPT_ALINKS` / `RPT_LINKS` is not a number.
    #[error("{list} count {count:?} is not a number (value starts {start:?})")]
    LinkCount {
        list: &'static str,
        count: String,
        start: String,
    },
    /// One entry of a link string cannot be read.
    #[error("{list} entry {entry:?} is malformed: {problem}")]
    LinkEntry {
        list: &'static str,
        entry: String,
        problem: &'static str,
    },
    /// A keyed flag (`RPT_TXKEYED`, `RPT_RXKEYED`) that is not `0` or `1`.
    #[error("{name} value {value:?} is not 0 or 1")]
    KeyedValue { name: String, value: String },
    /// A header the frame must carry is missing.
    #[error("{what} has no {header} header")]
    MissingHeader { what: String, header: &'static str },
    /// A list longer than app_rpt ever sends ([`MAX_LINKS`], [`MAX_REACHABLE`]).
    #[error("{list} lists more than {limit} entries (protocol error; the whole value is ignored)")]
    TooManyLinks { list: &'static str, limit: usize },
    /// RptStat's `RptUptime` is not `HH:MM:SS`.
    #[error("RptStat RptUptime {value:?} is not HH:MM:SS")]
    Uptime { value: String },
    /// A VoterStatus line that is out of place or unreadable.
    #[error("VoterStatus {problem}: {line:?}")]
    Voter { problem: &'static str, line: String },
}

/// Succeeds when `frame` carries `Response: Success` (anywhere: legacy app_rpt writes
/// `ActionID:` first).
fn expect_success(frame: &Frame, reply: &'static str) -> Result<(), RptError> {
    match frame.response().map(str::trim) {
        Some(r) if r.eq_ignore_ascii_case("Success") => Ok(()),
        Some(r) if r.eq_ignore_ascii_case("Error") => Err(RptError::ErrorReply {
            reply,
            message: frame.get("Message").unwrap_or_default().trim().to_owned(),
        }),
        other => Err(RptError::NotSuccess {
            reply,
            response: other.map(str::to_owned),
        }),
    }
}

/// Parses app_rpt's `HH:MM:SS` (hours not capped: `141:46:12`) into seconds.
fn parse_hms(text: &str) -> Option<u64> {
    let mut parts = text.as_bytes().split(|&b| b == b':');
    let mut next = || digits(parts.next()?);
    let (h, m, s) = (next()?, next()?, next()?);
    if parts.next().is_some() || m >= 60 || s >= 60 {
        return None;
    }
    h.checked_mul(3600)?.checked_add(m * 60 + s)
}

/// Parses a non-empty run of ASCII digits (no sign, no blanks) that fits in `T`.
fn parse_digits<T: TryFrom<u64>>(text: &str) -> Option<T> {
    T::try_from(digits(text.as_bytes())?).ok()
}

fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |acc, &b| {
        let digit = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
        acc.checked_mul(10)?.checked_add(digit)
    })
}

/// Parses a keyed flag written by app_rpt (`RPT_TXKEYED`, `RPT_RXKEYED`): `1` or `0`,
/// surrounding blanks tolerated.
pub fn parse_keyed(name: &str, value: &str) -> Result<bool, RptError> {
    match value.trim() {
        "1" => Ok(true),
        "0" => Ok(false),
        _ => Err(RptError::KeyedValue {
            name: name.to_owned(),
            value: value.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hms_hours_are_not_capped() {
        assert_eq!(parse_hms("00:00:00"), Some(0));
        assert_eq!(parse_hms("01:15:30"), Some(4530));
        assert_eq!(parse_hms("141:46:12"), Some(510_372));
        assert_eq!(parse_hms("1234:05:06"), Some(1234 * 3600 + 306));
    }

    #[test]
    fn hms_rejects_garbage() {
        for bad in [
            "",
            "00:00",
            "00:00:00:00",
            "aa:00:00",
            "00:60:00",
            "00:00:60",
            "-1:00:00",
            " 1:00:00",
        ] {
            assert_eq!(parse_hms(bad), None, "{bad:?}");
        }
        assert_eq!(parse_hms("99999999999999999999:00:00"), None);
    }

    #[test]
    fn keyed_flags() {
        assert_eq!(parse_keyed("RPT_TXKEYED", "1"), Ok(true));
        assert_eq!(parse_keyed("RPT_TXKEYED", " 0 "), Ok(false));
        let err = parse_keyed("RPT_RXKEYED", "yes").unwrap_err();
        assert_eq!(err.to_string(), r#"RPT_RXKEYED value "yes" is not 0 or 1"#);
    }

    mod no_panics {
        use super::super::*;
        use proptest::prelude::*;

        /// Text near the real formats: digits, letters, separators, blanks, a non-ASCII char.
        const NEAR: &str = "[0-9A-Z:.,()<> \t\\-=é]{0,120}";

        proptest! {
            #[test]
            fn line_parsers_never_panic(text in NEAR, any_text in ".{0,80}") {
                for t in [&text, &any_text] {
                    let _ = parse_conn_line(t);
                    let _ = parse_sawstat_line(t);
                    let _ = parse_alinks(t);
                    let _ = parse_links(t);
                    let _ = parse_linked_nodes(t);
                    let _ = parse_hms(t);
                }
            }

            #[test]
            fn conn_line_with_a_byte_cut_out_never_panics(cut in 0usize..100, len in 0usize..30) {
                let line = "KC1FSZ-PORTAL2001:db8:85a3::8a2e:370:73341           IN         00:00:02            ESTABLISHED";
                let end = (cut + len).min(line.len());
                let mangled = format!("{}{}", &line[..cut.min(end)], &line[end..]);
                let _ = parse_conn_line(&mangled);
            }
        }
    }

    #[test]
    fn error_reply_names_the_message() {
        let frame = Frame::from_headers(&[
            ("Response", "Error"),
            ("ActionID", "5"),
            ("Message", "RptStatus unknown or missing node"),
        ]);
        let err = expect_success(&frame, "XStat").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"XStat reply is "Response: Error": "RptStatus unknown or missing node""#
        );
        let none = expect_success(&Frame::from_headers(&[("Event", "FullyBooted")]), "SawStat");
        assert_eq!(
            none.unwrap_err().to_string(),
            r#"SawStat reply has no "Response: Success" (Response: None)"#
        );
    }
}

#[cfg(test)]
mod limits {
    use super::*;
    use std::time::{Duration, Instant};

    fn alinks(n: usize) -> String {
        let entries: Vec<String> = (0..n).map(|i| format!("{}TU", 100_000 + i)).collect();
        format!("{n},{}", entries.join(","))
    }

    #[test]
    fn a_100000_link_event_is_refused_fast_and_1000_pass() {
        let huge = alinks(100_000);
        let started = Instant::now();
        let refused = RptError::TooManyLinks {
            list: "RPT_ALINKS",
            limit: MAX_LINKS,
        };
        assert_eq!(parse_alinks(&huge), Err(refused.clone()));
        let frame = Frame::from_headers(&[
            ("Event", "RPT_ALINKS"),
            ("Node", "1999"),
            ("EventValue", huge.as_str()),
        ]);
        assert_eq!(parse_event(&frame), Some(Err(refused)));
        let links = format!("100000,{}", vec!["T2000"; 100_000].join(","));
        assert!(matches!(
            parse_links(&links),
            Err(RptError::TooManyLinks {
                limit: MAX_REACHABLE,
                ..
            })
        ));
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            parse_alinks(&alinks(MAX_LINKS)).map(|l| l.len()),
            Ok(MAX_LINKS)
        );
    }

    #[test]
    fn replies_with_too_many_links_are_refused() {
        let mut x = vec![("Response", "Success"), ("Node", "1999")];
        let conn =
            "2000     127.0.0.1           0           OUT        00:00:01            ESTABLISHED";
        x.extend(std::iter::repeat_n(("Conn", conn), MAX_LINKS + 1));
        let e = parse_xstat(&Frame::from_headers(&x)).unwrap_err();
        assert!(
            matches!(
                e,
                RptError::TooManyLinks {
                    list: "XStat Conn",
                    ..
                }
            ),
            "{e}"
        );
        let mut s = vec![("Response", "Success")];
        s.extend(std::iter::repeat_n(("Conn", "2000 0 -1 -1"), MAX_LINKS + 1));
        let e = parse_sawstat(&Frame::from_headers(&s)).unwrap_err();
        assert!(
            matches!(
                e,
                RptError::TooManyLinks {
                    list: "SawStat Conn",
                    ..
                }
            ),
            "{e}"
        );
    }
}
