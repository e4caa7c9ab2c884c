//! `RptStatus` / `SawStat`: per link, whether audio is coming in now and how long ago it
//! last keyed and unkeyed (ami-app-rpt.md §2.3).
//!
//! Each line is `Conn: <name> <keyed> <secs since key> <secs since unkey>` with single
//! spaces; an age of `-1` means the event never happened on this link. Names are borrowed
//! from the reply (the model matches them against its links and keeps none).

use serde::Serialize;

use super::{RptError, expect_success, parse_digits};
use crate::ami::Frame;

/// One link of a SawStat reply (the name borrowed from its line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SawStatLink<'a> {
    pub name: &'a str,
    /// Audio is being received from this link now (app_rpt `lastrx1`).
    pub keyed: bool,
    /// Seconds since the link last keyed; `None` = never (`-1`).
    pub secs_since_key: Option<u64>,
    /// Seconds since the link last unkeyed; `None` = never (`-1`).
    pub secs_since_unkey: Option<u64>,
}

/// Parses a SawStat reply (`Response: Success` required; `ActionID` may come first).
pub fn parse_sawstat(frame: &Frame) -> Result<Vec<SawStatLink<'_>>, RptError> {
    expect_success(frame, "SawStat")?;
    let mut links = Vec::new();
    for line in frame.get_all("Conn") {
        if links.len() == super::MAX_LINKS {
            return Err(RptError::TooManyLinks {
                list: "SawStat Conn",
                limit: super::MAX_LINKS,
            });
        }
        links.push(parse_sawstat_line(line)?);
    }
    Ok(links)
}

/// Parses the text after `Conn: ` of a SawStat reply.
pub fn parse_sawstat_line(value: &str) -> Result<SawStatLink<'_>, RptError> {
    let mut words = value.split_ascii_whitespace();
    let (Some(name), Some(keyed), Some(key), Some(unkey), None) = (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) else {
        let found = value.split_ascii_whitespace().count();
        return Err(RptError::SawStatFieldCount {
            found,
            line: value.trim_end().to_owned(),
        });
    };
    let keyed = match keyed {
        "1" => true,
        "0" => false,
        other => return Err(bad_field("keyed flag", other, "0 or 1", value)),
    };
    Ok(SawStatLink {
        name,
        keyed,
        secs_since_key: age(key, "seconds since key", value)?,
        secs_since_unkey: age(unkey, "seconds since unkey", value)?,
    })
}

/// `-1` = never. Another negative number means the server's wall clock stepped back since
/// the event (app_rpt subtracts `time()` values): the event is recent, so it reads as 0.
fn age(text: &str, field: &'static str, line: &str) -> Result<Option<u64>, RptError> {
    if text == "-1" {
        return Ok(None);
    }
    let (digits, negative) = match text.strip_prefix('-') {
        Some(rest) => (rest, true),
        None => (text, false),
    };
    match parse_digits::<u64>(digits) {
        Some(secs) => Ok(Some(if negative { 0 } else { secs })),
        None => Err(bad_field(field, text, "whole seconds or -1", line)),
    }
}

fn bad_field(field: &'static str, value: &str, expected: &'static str, line: &str) -> RptError {
    RptError::SawStatField {
        field,
        value: value.to_owned(),
        expected,
        line: line.trim_end().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpt::samples;

    fn link(name: &str, keyed: bool, key: Option<u64>, unkey: Option<u64>) -> SawStatLink<'_> {
        SawStatLink {
            name,
            keyed,
            secs_since_key: key,
            secs_since_unkey: unkey,
        }
    }

    #[test]
    fn composed_session_reply() {
        // ami-app-rpt.md §5: decoded from wire bytes, after an event frame.
        let frames = samples::decode(samples::SESSION_SAWSTAT);
        assert_eq!(frames[0].event(), Some("RPT_TXKEYED"));
        let links = parse_sawstat(&frames[1]).unwrap();
        assert_eq!(
            links,
            vec![
                link("3123456", false, None, None),
                link("2001", false, Some(95), Some(90)),
                link("2000", true, Some(3), Some(12)),
            ]
        );
    }

    #[test]
    fn allmon3_issue_36_with_minus_one_and_action_id_first() {
        let frames = samples::decode(samples::ALLMON3_36_SAWSTAT);
        let links = parse_sawstat(&frames[0]).unwrap();
        assert_eq!(
            links,
            vec![
                link("2530", false, Some(77), Some(77)),
                link("2000", false, None, None),
                link("2509", false, Some(4148), Some(4148)),
            ]
        );
    }

    #[test]
    fn no_links_is_an_empty_list() {
        let frame = Frame::from_headers(&[("Response", "Success"), ("Node", "1999")]);
        assert_eq!(parse_sawstat(&frame), Ok(vec![]));
    }

    #[test]
    fn text_names_and_clock_steps() {
        assert_eq!(
            parse_sawstat_line("WD5M-P 1 0 -1").unwrap(),
            link("WD5M-P", true, Some(0), None)
        );
        assert_eq!(
            parse_sawstat_line("2000 0 -30 5").unwrap(),
            link("2000", false, Some(0), Some(5))
        );
    }

    #[test]
    fn malformed_lines_name_the_problem() {
        let err = parse_sawstat_line("2000 0 -1").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"SawStat Conn line has 3 fields, expected 4 (name, keyed, secs since key, secs since unkey): "2000 0 -1""#
        );
        assert!(matches!(
            parse_sawstat_line("2000 0 1 2 3"),
            Err(RptError::SawStatFieldCount { found: 5, .. })
        ));
        let err = parse_sawstat_line("2000 2 1 1").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"SawStat Conn line has a bad keyed flag "2" (expected 0 or 1): "2000 2 1 1""#
        );
        let err = parse_sawstat_line("2000 0 1x -1").unwrap_err();
        assert!(
            err.to_string().contains(r#"bad seconds since key "1x""#),
            "{err}"
        );
        let err = parse_sawstat_line("2000 0 1 --1").unwrap_err();
        assert!(err.to_string().contains("seconds since unkey"), "{err}");
    }

    #[test]
    fn error_reply_is_an_error() {
        let frame = Frame::from_headers(&[
            ("Response", "Error"),
            ("Message", "RptStatus unknown or missing node"),
        ]);
        assert!(matches!(
            parse_sawstat(&frame),
            Err(RptError::ErrorReply {
                reply: "SawStat",
                ..
            })
        ));
    }
}
