use super::*;
use crate::rpt::samples;
use crate::rpt::types::Mode;

/// What app_rpt prints: `Conn: %-10s%-20s%-12d%-11s%-20s%-20s` (value part). printf pads
/// by bytes, not characters.
fn conn(name: &str, ip: &str, reconnects: u32, dir: &str, time: &str, state: &str) -> String {
    let reconnects = reconnects.to_string();
    let fields: [(&str, usize); 6] = [
        (name, 10),
        (ip, 20),
        (&reconnects, 12),
        (dir, 11),
        (time, 20),
        (state, 20),
    ];
    fields
        .iter()
        .map(|&(text, width)| format!("{text:<0$}", width.max(text.len())))
        .collect()
}

fn link<'a>(
    name: &'a str,
    ip: Option<&'a str>,
    reconnects: u32,
    dir: Direction,
    secs: u64,
) -> XStatLink<'a> {
    XStatLink {
        name,
        ip,
        reconnects,
        direction: Some(dir),
        connected_seconds: secs,
        state: Some(LinkState::Established),
    }
}

fn t(node: &str) -> LinkedNode<&str> {
    LinkedNode {
        node,
        mode: Some(Mode::T),
    }
}

fn alink(name: &str, keyed: bool) -> ALink<&str> {
    ALink {
        name,
        mode: Some(Mode::T),
        keyed,
    }
}

/// Both steps must read a well-formed line the same way.
fn both_ways(line: &str) -> XStatLink<'_> {
    let fixed = parse_fixed(line).expect("fixed columns apply");
    assert_eq!(
        parse_anchored(line),
        Ok(fixed.clone()),
        "anchored reading of {line:?}"
    );
    fixed
}

#[test]
fn composed_session_xstat() {
    let frame = samples::frame(samples::SESSION_XSTAT);
    let x = parse_xstat(&frame).unwrap();
    assert_eq!(x.node, Some("1999"));
    assert_eq!(
        x.links,
        vec![
            link("3123456", None, 0, Direction::In, 135),
            link("2001", Some("198.51.100.7"), 0, Direction::In, 620),
            link("2000", Some("192.0.2.10"), 1, Direction::Out, 4530),
        ]
    );
    assert_eq!(
        x.linked_nodes,
        ["2000", "2001", "2005", "2006", "3123456"].map(t).to_vec()
    );
    let var_names: Vec<&str> = x.vars.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        var_names,
        [
            "RPT_NUMLINKS",
            "RPT_LINKS",
            "RPT_NUMALINKS",
            "RPT_ALINKS",
            "RPT_TXKEYED",
            "RPT_ETXKEYED",
            "RPT_AUTOPATCHUP",
            "RPT_RXKEYED"
        ]
    );
    assert_eq!(
        x.var("RPT_LINKS"),
        Some("5,T3123456,T2001,T2000,T2005,T2006")
    );
    assert_eq!(
        x.alinks,
        Some(vec![
            alink("3123456", false),
            alink("2001", false),
            alink("2000", true)
        ])
    );
    assert_eq!((x.rx_keyed, x.tx_keyed), (Some(false), Some(false)));
    assert_eq!(x.flags.len(), 13);
    assert_eq!(x.flags[0], ("parrot_ena", "0"));
    assert_eq!(x.flag("patch_state"), Some("4"));
    assert_eq!(x.flag("tel_mode"), Some("1"));
    assert_eq!(x.flag("ActionID"), None);
}

#[test]
fn composed_session_conn_lines_read_the_same_both_ways() {
    let frame = samples::frame(samples::SESSION_XSTAT);
    for line in frame.get_all("Conn") {
        both_ways(line);
    }
}

#[test]
fn allmon3_issue_35_echolink_141_hours_action_id_first() {
    let frame = samples::frame(samples::ALLMON3_35_XSTAT);
    assert_eq!(frame.headers().next().map(|(k, _)| k), Some("ActionID"));
    let x = parse_xstat(&frame).unwrap();
    assert_eq!(x.node, Some("547611"));
    assert_eq!(
        x.links,
        vec![
            link(
                "1910",
                Some("127.0.0.1"),
                0,
                Direction::Out,
                141 * 3600 + 46 * 60 + 12
            ),
            link("3507690", None, 0, Direction::In, 8),
        ]
    );
    assert_eq!(
        x.linked_nodes,
        ["1910", "3507690", "547612"].map(t).to_vec()
    );
    assert_eq!(
        x.alinks,
        Some(vec![
            alink("1910", false),
            alink("3507690", false),
            alink("547612", false)
        ])
    );
    // No RPT_RXKEYED / RPT_TXKEYED lines in the excerpt: unknown, not false.
    assert_eq!((x.rx_keyed, x.tx_keyed), (None, None));
    assert!(x.flags.is_empty());
}

#[test]
fn brucemack_real_xstat_with_collapsed_spacing() {
    let frame = samples::frame(samples::BRUCEMACK_XSTAT);
    let line = frame.get("Conn").unwrap();
    assert_eq!(
        parse_fixed(line),
        None,
        "the capture's time column is too narrow"
    );
    let x = parse_xstat(&frame).unwrap();
    assert_eq!(x.node, Some("61057"));
    assert_eq!(
        x.links,
        vec![link("29999", Some("173.199.119.177"), 0, Direction::Out, 0)]
    );
    assert_eq!(x.linked_nodes.len(), 11);
    assert_eq!(
        x.linked_nodes[0],
        LinkedNode {
            node: "1010",
            mode: Some(Mode::R)
        }
    );
    assert_eq!(x.alinks, Some(vec![alink("29999", false)]));
    assert_eq!((x.rx_keyed, x.tx_keyed), (Some(false), Some(true)));
    assert_eq!(x.var("RPT_ETXKEYED"), Some("1"));
    assert_eq!(x.flags, vec![("parrot_ena", "0"), ("tel_mode", "2")]);
}

#[test]
fn brucemack_idle_node() {
    let frame = samples::frame(samples::BRUCEMACK_IDLE_XSTAT);
    let x = parse_xstat(&frame).unwrap();
    assert!(x.links.is_empty());
    assert!(x.linked_nodes.is_empty());
    assert_eq!(x.alinks, Some(vec![]));
    assert_eq!(x.var("RPT_LINKS"), Some("0"));
    assert_eq!((x.rx_keyed, x.tx_keyed), (Some(false), Some(false)));
}

#[test]
fn reply_without_vars_leaves_them_unknown() {
    // Allmon3 issue #36: older ASL3 sent no Var: lines at all.
    let frame = Frame::from_headers(&[
        ("Response", "Success"),
        ("Node", "2510"),
        (
            "Conn",
            &conn("2530", "203.0.113.5", 0, "OUT", "00:01:17", "ESTABLISHED"),
        ),
        ("LinkedNodes", "T2530"),
        ("parrot_ena", "0"),
    ]);
    let x = parse_xstat(&frame).unwrap();
    assert_eq!((x.alinks, x.rx_keyed, x.tx_keyed), (None, None, None));
    assert!(x.vars.is_empty());
}

#[test]
fn empty_alinks_after_links_drop() {
    let frame = Frame::from_headers(&[
        ("Response", "Success"),
        ("Node", "1999"),
        ("LinkedNodes", "<NONE>"),
        ("Var", "RPT_ALINKS="),
        ("Var", "RPT_LINKS=0"),
    ]);
    let x = parse_xstat(&frame).unwrap();
    assert_eq!(x.alinks, Some(vec![]));
    assert_eq!(x.var("RPT_ALINKS"), Some(""));
}

#[test]
fn user_vars_keep_equals_commas_and_empty_values() {
    let frame = Frame::from_headers(&[
        ("Response", "Success"),
        ("Var", "WX=Temp=72F, wind=5"),
        ("Var", "ALERT="),
        ("Var", "cpu_temp=48.3 C"),
        ("Var", "NOEQUALS"),
    ]);
    let x = parse_xstat(&frame).unwrap();
    assert_eq!(x.var("WX"), Some("Temp=72F, wind=5"));
    assert_eq!(x.var("ALERT"), Some(""));
    assert_eq!(x.var("cpu_temp"), Some("48.3 C"));
    assert_eq!(x.var("NOEQUALS"), Some(""));
    assert_eq!(x.var("wx"), None);
}

#[test]
fn wd5m_phone_portal_client() {
    // app_rpt issue #706: RPT_ALINKS=1,WD5M-PTU.
    let frame = Frame::from_headers(&[
        ("Response", "Success"),
        ("Node", "1999"),
        (
            "Conn",
            &conn(
                "WD5M-P",
                "198.51.100.23",
                0,
                "IN",
                "00:03:00",
                "ESTABLISHED",
            ),
        ),
        ("LinkedNodes", "TWD5M-P"),
        ("Var", "RPT_ALINKS=1,WD5M-PTU"),
    ]);
    let x = parse_xstat(&frame).unwrap();
    assert_eq!(x.links[0].name, "WD5M-P");
    assert_eq!(x.alinks, Some(vec![alink("WD5M-P", false)]));
    assert_eq!(x.linked_nodes, vec![t("WD5M-P")]);
}

#[test]
fn error_reply_and_bad_keyed_var() {
    let frame = Frame::from_headers(&[
        ("Response", "Error"),
        ("ActionID", "2"),
        ("Message", "RptStatus unknown or missing node"),
    ]);
    assert!(matches!(
        parse_xstat(&frame),
        Err(RptError::ErrorReply { reply: "XStat", .. })
    ));
    let frame = Frame::from_headers(&[("Response", "Success"), ("Var", "RPT_TXKEYED=2")]);
    assert_eq!(
        parse_xstat(&frame).unwrap_err().to_string(),
        r#"RPT_TXKEYED value "2" is not 0 or 1"#
    );
}

#[test]
fn malformed_conn_line_fails_the_reply_with_a_named_error() {
    let frame = Frame::from_headers(&[("Response", "Success"), ("Conn", "2000 1.2.3.4 0")]);
    assert_eq!(
        parse_xstat(&frame).unwrap_err().to_string(),
        r#"XStat Conn line has 3 fields, expected at least 5: "2000 1.2.3.4 0""#
    );
}

#[test]
fn reconnects_and_connecting_state() {
    let line = conn("2000", "(none)", 17, "OUT", "00:00:00", "CONNECTING");
    let l = both_ways(&line);
    assert_eq!(l.ip, None, "(none) is no address");
    assert_eq!(l.reconnects, 17);
    assert_eq!(l.state, Some(LinkState::Connecting));
}

#[test]
fn hours_beyond_two_digits() {
    let line = conn("2000", "192.0.2.10", 0, "OUT", "141:46:12", "ESTABLISHED");
    let l = both_ways(&line);
    assert_eq!(l.connected_seconds, 510_372);
    let line = conn("2000", "192.0.2.10", 0, "OUT", "12345:00:01", "ESTABLISHED");
    let l = both_ways(&line);
    assert_eq!(l.connected_seconds, 12345 * 3600 + 1);
}

#[test]
fn ten_character_name_glued_to_its_ip_reads_by_columns() {
    let line = conn(
        "ABCDEFGHIJ",
        "192.0.2.1",
        2,
        "IN",
        "00:00:05",
        "ESTABLISHED",
    );
    assert!(line.starts_with("ABCDEFGHIJ192.0.2.1 "));
    let l = both_ways(&line);
    assert_eq!((l.name, l.ip), ("ABCDEFGHIJ", Some("192.0.2.1")));
}

#[test]
fn long_name_overflowing_into_the_ip() {
    let line = conn(
        "KC1FSZ-PORTAL",
        "192.0.2.1",
        0,
        "IN",
        "00:01:00",
        "ESTABLISHED",
    );
    assert!(line.starts_with("KC1FSZ-PORTAL192.0.2.1 "));
    let l = parse_conn_line(&line).unwrap();
    assert_eq!(l.name, "KC1FSZ-PORTAL");
    assert_eq!(l.ip, Some("192.0.2.1"));
    assert_eq!(
        (l.direction, l.connected_seconds),
        (Some(Direction::In), 60)
    );
    // A name that ends in a digit: the IP's own padding still says where it starts.
    let line = conn(
        "NODE-1234567",
        "10.0.0.1",
        3,
        "OUT",
        "00:00:09",
        "ESTABLISHED",
    );
    let l = parse_conn_line(&line).unwrap();
    assert_eq!(
        (l.name, l.ip, l.reconnects),
        ("NODE-1234567", Some("10.0.0.1"), 3)
    );
}

#[test]
fn long_name_with_empty_ip() {
    let line = conn("ABCDEFGHIJKL", "", 0, "IN", "00:00:30", "ESTABLISHED");
    let l = parse_conn_line(&line).unwrap();
    assert_eq!((l.name, l.ip), ("ABCDEFGHIJKL", None));
    let line = conn("ABCDEFGHIJKL", "(none)", 0, "OUT", "00:00:30", "CONNECTING");
    let l = parse_conn_line(&line).unwrap();
    assert_eq!((l.name, l.ip), ("ABCDEFGHIJKL", None));
}

#[test]
fn ipv6_peer_overflowing_its_column() {
    let ip = "2001:db8:85a3::8a2e:370:7334";
    for reconnects in [0, 7, 12, 4_000_000_000] {
        let line = conn("2000", ip, reconnects, "OUT", "01:00:00", "ESTABLISHED");
        assert!(
            line.contains(&format!("{ip}{reconnects} ")),
            "glued: {line:?}"
        );
        let l = parse_conn_line(&line).unwrap();
        assert_eq!(
            l,
            link("2000", Some(ip), reconnects, Direction::Out, 3600),
            "{line:?}"
        );
    }
}

#[test]
fn ipv6_peer_of_exactly_twenty_characters() {
    let ip = "2001:db8:aaaa::1:2:3";
    assert_eq!(ip.len(), 20);
    let line = conn("2000", ip, 5, "IN", "00:00:01", "ESTABLISHED");
    let l = both_ways(&line);
    assert_eq!((l.ip, l.reconnects), (Some(ip), 5));
}

#[test]
fn long_name_and_ipv6_both_overflowing() {
    let ip = "2001:db8:85a3::8a2e:370:7334";
    let line = conn("KC1FSZ-PORTAL", ip, 1, "IN", "00:00:02", "ESTABLISHED");
    let l = parse_conn_line(&line).unwrap();
    assert_eq!((l.name, l.ip, l.reconnects), ("KC1FSZ-PORTAL", Some(ip), 1));
}

#[test]
fn echolink_empty_ip_column() {
    let line = conn("3123456", "", 0, "IN", "00:02:15", "ESTABLISHED");
    let l = both_ways(&line);
    assert_eq!((l.name, l.ip), ("3123456", None));
}

#[test]
fn trailing_spaces_and_line_ends_are_ignored() {
    let base = conn("2001", "198.51.100.7", 0, "IN", "00:10:20", "ESTABLISHED");
    let expected = parse_conn_line(&base).unwrap();
    assert_eq!(parse_conn_line(base.trim_end()), Ok(expected.clone()));
    assert_eq!(
        parse_conn_line(&format!("{base}\r\n")),
        Ok(expected.clone())
    );
    assert_eq!(parse_conn_line(&format!("  {base}")), Ok(expected));
}

#[test]
fn collapsed_spacing_everywhere() {
    // A capture squeezed to single spaces still reads by words.
    let l = parse_conn_line("2000 192.0.2.10 1 OUT 01:15:30 ESTABLISHED").unwrap();
    assert_eq!(l, link("2000", Some("192.0.2.10"), 1, Direction::Out, 4530));
    let l = parse_conn_line("3123456 0 IN 00:02:15 ESTABLISHED").unwrap();
    assert_eq!(l, link("3123456", None, 0, Direction::In, 135));
}

#[test]
fn collapsed_spacing_with_a_long_name() {
    let l = parse_conn_line("ABCDEFGHIJKL 0 IN 00:00:01 ESTABLISHED").unwrap();
    assert_eq!((l.name, l.ip), ("ABCDEFGHIJKL", None));
    let l = parse_conn_line("ABCDEFGHIJKL192.0.2.1 0 IN 00:00:01 ESTABLISHED").unwrap();
    assert_eq!((l.name, l.ip), ("ABCDEFGHIJKL", Some("192.0.2.1")));
}

#[test]
fn unknown_words_are_tolerated_as_none() {
    let line = conn("2000", "192.0.2.10", 0, "SIDEWAYS", "00:00:01", "DRAINING");
    let l = parse_conn_line(&line).unwrap();
    assert_eq!((l.direction, l.state), (None, None));
    assert_eq!(l.ip, Some("192.0.2.10"));
}

#[test]
fn malformed_conn_lines_name_the_field() {
    let cases = [
        (
            "",
            r#"XStat Conn line has 0 fields, expected at least 5: """#,
        ),
        (
            "2000 192.0.2.10 OUT 00:00:01",
            r#"XStat Conn line has 4 fields, expected at least 5: "2000 192.0.2.10 OUT 00:00:01""#,
        ),
        (
            "2000 192.0.2.10 0 1 00:00:01 ESTABLISHED",
            r#"XStat Conn line has a bad direction "1" (expected IN or OUT): "2000 192.0.2.10 0 1 00:00:01 ESTABLISHED""#,
        ),
        (
            "2000 192.0.2.10 0 IN 00:77:01 ESTABLISHED",
            r#"XStat Conn line has a bad connected time "00:77:01" (expected HH:MM:SS): "2000 192.0.2.10 0 IN 00:77:01 ESTABLISHED""#,
        ),
        (
            "2000 192.0.2.10 x IN 00:00:01 ESTABLISHED",
            r#"XStat Conn line has a bad reconnect count "x" (expected a number): "2000 192.0.2.10 x IN 00:00:01 ESTABLISHED""#,
        ),
        (
            "2000 192.0.2.10 0 IN 00:00:01 ESTABLISHED!",
            r#"XStat Conn line has a bad state "ESTABLISHED!" (expected ESTABLISHED or CONNECTING): "2000 192.0.2.10 0 IN 00:00:01 ESTABLISHED!""#,
        ),
        (
            "2000 192.0.2.10 junk 0 IN 00:00:01 ESTABLISHED",
            r#"XStat Conn line has a bad peer IP "192.0.2.10 junk" (expected one address): "2000 192.0.2.10 junk 0 IN 00:00:01 ESTABLISHED""#,
        ),
    ];
    for (line, message) in cases {
        assert_eq!(
            parse_conn_line(line).unwrap_err().to_string(),
            message,
            "{line:?}"
        );
    }
    let overflow = conn("2000", "192.0.2.10", 0, "IN", "00:00:01", "ESTABLISHED").replacen(
        "0           IN",
        "99999999999 IN",
        1,
    );
    assert!(matches!(
        parse_conn_line(&overflow),
        Err(RptError::ConnField {
            field: "reconnect count",
            ..
        })
    ));
}

#[test]
fn non_ascii_text_does_not_panic() {
    for line in [
        "Ünïcødé名前ABCDEFGHIJKL 0 IN 00:00:01 ESTABLISHED",
        "名前名前名前名前名前名前名前名前名前名前名前名前名前名前名前",
    ] {
        let _ = parse_conn_line(line);
    }
    let line = conn("Ünï", "192.0.2.1", 0, "IN", "00:00:01", "ESTABLISHED");
    let l = parse_conn_line(&line).unwrap();
    assert_eq!(l.name, "Ünï");
}

mod layout_round_trip {
    use super::*;
    use crate::rpt::types::format_elapsed;
    use proptest::prelude::*;

    fn peer_ip() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("(none)".to_owned()),
            any::<[u8; 4]>().prop_map(|[a, b, c, d]| format!("{a}.{b}.{c}.{d}")),
            // 14 to 28 characters: shorter than, exactly, and longer than the column.
            any::<[u16; 3]>().prop_map(|[a, b, c]| format!("2001:db8:{a:x}:{b:x}::{c:x}")),
            any::<[u16; 4]>()
                .prop_map(|[a, b, c, d]| format!("2a02:{a:x}:{b:x}:{c:x}:{d:x}:1:2:3")),
        ]
    }

    proptest! {
        /// Whatever overflows its column, printf's output reads back as what went in.
        #[test]
        fn printf_output_reads_back(
            name in "[A-Z0-9][A-Z0-9-]{0,13}",
            ip in peer_ip(),
            reconnects in any::<u32>(),
            outbound in any::<bool>(),
            secs in 0u64..40_000_000,
            established in any::<bool>(),
        ) {
            let dir = if outbound { "OUT" } else { "IN" };
            let state = if established { "ESTABLISHED" } else { "CONNECTING" };
            let line = conn(&name, &ip, reconnects, dir, &format_elapsed(secs), state);
            let link = parse_conn_line(&line).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let expected_ip = (!ip.is_empty() && ip != "(none)").then_some(ip.as_str());
            prop_assert_eq!(link.name, name.as_str(), "{:?}", line);
            prop_assert_eq!(link.ip, expected_ip, "{:?}", line);
            prop_assert_eq!(link.reconnects, reconnects);
            prop_assert_eq!(link.direction, Some(if outbound { Direction::Out } else { Direction::In }));
            prop_assert_eq!(link.connected_seconds, secs);
            let expected_state = if established { LinkState::Established } else { LinkState::Connecting };
            prop_assert_eq!(link.state, Some(expected_state));
        }
    }
}
