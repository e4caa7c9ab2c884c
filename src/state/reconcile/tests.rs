use std::time::Duration;

use super::*;
use crate::rpt::XStatLink;
use crate::state::model::Direction;

const T0: u64 = 1_700_000_000_000;

fn node() -> NodeState {
    NodeState::new("1999", "default", Duration::from_secs(60))
}

/// An `RPT_ALINKS` entry: owned (an event) or borrowed (inside an XStat reply).
fn alink<S: From<&'static str>>(name: &'static str, mode: Mode, keyed: bool) -> ALink<S> {
    ALink {
        name: name.into(),
        mode: Some(mode),
        keyed,
    }
}

fn xlink<'a>(name: &'a str, ip: Option<&'a str>, dir: Direction, secs: u64) -> XStatLink<'a> {
    XStatLink {
        name,
        ip,
        reconnects: 0,
        direction: Some(dir),
        connected_seconds: secs,
        state: Some(LinkState::Established),
    }
}

fn xstat<'a>(links: Vec<XStatLink<'a>>, alinks: Option<Vec<ALink<&'a str>>>) -> XStat<'a> {
    XStat {
        node: Some("1999"),
        links,
        linked_nodes: Vec::new(),
        vars: Vec::new(),
        flags: Vec::new(),
        alinks,
        rx_keyed: Some(false),
        tx_keyed: Some(false),
    }
}

fn kinds(ch: &Changes) -> Vec<(ChangeKind, Option<String>)> {
    ch.out
        .iter()
        .map(|e| (e.kind, e.link.as_ref().map(|l| l.node.clone())))
        .collect()
}

fn k(kind: ChangeKind, link: &str) -> (ChangeKind, Option<String>) {
    (kind, Some(link.to_owned()))
}

#[test]
fn first_poll_builds_links_with_modes_and_local_monitor() {
    let db = AstDb::default();
    let mut n = node();
    let mut ch = Changes::new(T0, &db);
    let x = xstat(
        vec![
            xlink("3123456", None, Direction::In, 135),
            xlink("2001", Some("198.51.100.7"), Direction::In, 620),
            xlink("2002", Some("203.0.113.9"), Direction::Out, 10),
        ],
        Some(vec![
            alink("3123456", Mode::T, false),
            alink("2001", Mode::R, true),
        ]),
    );
    apply_xstat(&mut n, &x, 10, &mut ch);
    assert_eq!(
        kinds(&ch),
        [
            k(ChangeKind::LinkConnected, "3123456"),
            k(ChangeKind::LinkConnected, "2001"),
            k(ChangeKind::LinkKeyed, "2001"),
            k(ChangeKind::LinkConnected, "2002"),
        ]
    );
    assert_eq!(
        n.link("2002").and_then(|l| l.mode),
        Some(Mode::L),
        "in XStat, absent from ALINKS"
    );
    assert_eq!(n.link("2001").and_then(|l| l.mode), Some(Mode::R));
    assert_eq!(
        n.link("3123456").map(|l| l.kind),
        Some(crate::state::LinkKind::Echolink)
    );
    let v = n.view(T0 + 5000, &db);
    assert_eq!(
        v.links[1].connected_seconds, 625,
        "connected time advances by itself"
    );
    assert_eq!(v.links[1].elapsed, "00:10:25");
}

#[test]
fn poll_removes_missing_links_and_updates_changed_fields() {
    let db = AstDb::default();
    let mut n = node();
    apply_xstat(
        &mut n,
        &xstat(
            vec![
                xlink("2000", Some("192.0.2.10"), Direction::Out, 5),
                xlink("2001", Some("x"), Direction::In, 5),
            ],
            None,
        ),
        1,
        &mut Changes::new(T0, &db),
    );
    let mut ch = Changes::new(T0 + 1000, &db);
    let mut moved = xlink("2000", Some("192.0.2.11"), Direction::Out, 6);
    moved.reconnects = 1;
    apply_xstat(&mut n, &xstat(vec![moved], None), 5, &mut ch);
    assert_eq!(
        kinds(&ch),
        [
            k(ChangeKind::LinkDisconnected, "2001"),
            k(ChangeKind::LinkUpdated, "2000")
        ]
    );
    assert_eq!(ch.out[1].fields, ["ip", "reconnects"]);
    // The same poll again changes nothing.
    let mut ch = Changes::new(T0 + 2000, &db);
    let mut same = xlink("2000", Some("192.0.2.11"), Direction::Out, 7);
    same.reconnects = 1;
    apply_xstat(&mut n, &xstat(vec![same], None), 9, &mut ch);
    assert!(ch.out.is_empty(), "{:?}", kinds(&ch));
}

#[test]
fn alinks_event_adds_keys_and_removes() {
    let db = AstDb::default();
    let mut n = node();
    let mut ch = Changes::new(T0, &db);
    apply_alinks(
        &mut n,
        &[alink("2000", Mode::T, false), alink("2001", Mode::T, true)],
        3,
        &mut ch,
    );
    assert_eq!(
        kinds(&ch),
        [
            k(ChangeKind::LinkConnected, "2000"),
            k(ChangeKind::LinkConnected, "2001"),
            k(ChangeKind::LinkKeyed, "2001")
        ]
    );
    let mut ch = Changes::new(T0 + 4500, &db);
    apply_alinks(&mut n, &[alink("2000", Mode::T, false)], 4, &mut ch);
    assert_eq!(
        kinds(&ch),
        [
            k(ChangeKind::LinkUnkeyed, "2001"),
            k(ChangeKind::LinkDisconnected, "2001")
        ]
    );
    assert_eq!(ch.out[0].duration_seconds, Some(4.5));
    // Empty ALINKS (""): everything goes.
    let mut ch = Changes::new(T0 + 5000, &db);
    apply_alinks(&mut n, &[], 5, &mut ch);
    assert_eq!(kinds(&ch), [k(ChangeKind::LinkDisconnected, "2000")]);
}

#[test]
fn an_older_poll_does_not_undo_a_newer_event() {
    let db = AstDb::default();
    let mut n = node();
    apply_xstat(
        &mut n,
        &xstat(
            vec![xlink("2000", Some("a"), Direction::Out, 5)],
            Some(vec![alink("2000", Mode::T, false)]),
        ),
        1,
        &mut Changes::new(T0, &db),
    );
    // Event at rx_seq 12: 2001 connects keyed, 2000 drops.
    apply_alinks(
        &mut n,
        &[alink("2001", Mode::T, true)],
        12,
        &mut Changes::new(T0 + 100, &db),
    );
    // A poll answered at rx_seq 10 (before the event) still shows 2000 and not 2001.
    let mut ch = Changes::new(T0 + 200, &db);
    apply_xstat(
        &mut n,
        &xstat(
            vec![xlink("2000", Some("a"), Direction::Out, 5)],
            Some(vec![alink("2000", Mode::T, false)]),
        ),
        10,
        &mut ch,
    );
    apply_sawstat(
        &mut n,
        &[SawStatLink {
            name: "2001",
            keyed: false,
            secs_since_key: None,
            secs_since_unkey: None,
        }],
        11,
        &mut ch,
    );
    assert!(
        ch.out.is_empty(),
        "stale poll changed state: {:?}",
        kinds(&ch)
    );
    assert!(n.link("2000").is_none());
    assert!(n.link("2001").is_some_and(|l| l.keyed));
    // A poll answered after the event is the truth again.
    let mut ch = Changes::new(T0 + 300, &db);
    apply_xstat(
        &mut n,
        &xstat(
            vec![xlink("2001", Some("b"), Direction::In, 1)],
            Some(vec![alink("2001", Mode::T, true)]),
        ),
        20,
        &mut ch,
    );
    assert_eq!(kinds(&ch), [k(ChangeKind::LinkUpdated, "2001")]);
    assert!(
        n.removed.is_empty(),
        "tombstones are cleared by a newer poll"
    );
}

#[test]
fn lost_unkey_is_corrected_by_sawstat_with_the_real_duration() {
    let db = AstDb::default();
    let mut n = node();
    apply_alinks(
        &mut n,
        &[alink("2000", Mode::T, true)],
        1,
        &mut Changes::new(T0, &db),
    );
    // The unkey event was lost; SawStat 30 s later says it unkeyed 20 s ago.
    let mut ch = Changes::new(T0 + 30_000, &db);
    let saw = SawStatLink {
        name: "2000",
        keyed: false,
        secs_since_key: Some(30),
        secs_since_unkey: Some(20),
    };
    apply_sawstat(&mut n, &[saw], 5, &mut ch);
    assert_eq!(kinds(&ch), [k(ChangeKind::LinkUnkeyed, "2000")]);
    assert_eq!(ch.out[0].duration_seconds, Some(10.0));
    let v = n.view(T0 + 30_000, &db);
    assert_eq!(v.links[0].last_keyed_seconds, Some(30));
    assert_eq!(v.links[0].last_unkeyed_seconds, Some(20));
}

#[test]
fn tx_and_rx_keying_count_keyups_and_seconds() {
    let db = AstDb::default();
    let mut n = node();
    let mut ch = Changes::new(T0, &db);
    apply_keying(&mut n, true, true, 1, &mut ch);
    apply_keying(&mut n, true, true, 2, &mut ch);
    let mut ch2 = Changes::new(T0 + 2500, &db);
    apply_keying(&mut n, true, false, 3, &mut ch2);
    apply_keying(&mut n, false, true, 4, &mut ch2);
    assert_eq!(ch.out.len(), 1, "a repeated TXKEYED=1 is not a change");
    assert_eq!(ch2.out[0].kind, ChangeKind::TxUnkeyed);
    assert_eq!(ch2.out[0].duration_seconds, Some(2.5));
    assert_eq!(ch2.out[1].kind, ChangeKind::RxKeyed);
    assert_eq!((n.tx.keyups, n.tx.total_s), (1, 2.5));
    // The poll's RPT_TXKEYED is older than the RX event: RX stays keyed.
    let mut ch3 = Changes::new(T0 + 3000, &db);
    apply_xstat(&mut n, &xstat(Vec::new(), Some(Vec::new())), 2, &mut ch3);
    assert!(n.rx.keyed);
}

#[test]
fn link_in_connecting_state_and_mode_changes() {
    let db = AstDb::default();
    let mut n = node();
    let mut ch = Changes::new(T0, &db);
    apply_alinks(&mut n, &[alink("2000", Mode::C, false)], 1, &mut ch);
    assert_eq!(
        n.link("2000").and_then(|l| l.state),
        Some(LinkState::Connecting)
    );
    let mut ch = Changes::new(T0 + 10, &db);
    apply_alinks(&mut n, &[alink("2000", Mode::T, false)], 2, &mut ch);
    assert_eq!(kinds(&ch), [k(ChangeKind::LinkUpdated, "2000")]);
    assert_eq!(ch.out[0].fields, ["mode", "state"]);
}
