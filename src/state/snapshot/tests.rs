use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::ami::{AmiEvent, Frame, Reply};
use crate::astdb::AstDb;
use crate::metrics::Metrics;
use crate::poller::PollResult;
use crate::state::StateStore;
use crate::state::engine::{Engine, EngineInput, NodeSpec};

/// An XStat reply of `node` with the given links (name, ip).
fn xstat(node: &str, links: &[(&str, &str)]) -> Frame {
    let mut h: Vec<(String, String)> = vec![
        ("Response".into(), "Success".into()),
        ("Node".into(), node.into()),
    ];
    for (name, ip) in links {
        let conn = format!(
            "{:<10}{ip:<20}{:<12}{:<11}{:<20}{:<20}",
            name, 0, "OUT", "01:02:03", "ESTABLISHED"
        );
        h.push(("Conn".into(), conn));
    }
    let alinks: Vec<String> = links.iter().map(|(n, _)| format!("{n}TU")).collect();
    h.push((
        "Var".into(),
        format!("RPT_ALINKS={},{}", links.len(), alinks.join(",")),
    ));
    h.push((
        "LinkedNodes".into(),
        links
            .iter()
            .map(|(n, _)| format!("T{n}"))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    h.push(("Var".into(), "RPT_TXKEYED=1".into()));
    h.push(("Var".into(), "RPT_RXKEYED=0".into()));
    Frame::from_headers(&h)
}

fn sawstat(node: &str, links: &[(&str, &str)]) -> Frame {
    let mut h: Vec<(String, String)> = vec![
        ("Response".into(), "Success".into()),
        ("Node".into(), node.into()),
    ];
    for (name, _) in links {
        h.push(("Conn".into(), format!("{name} 1 12 -1")));
    }
    Frame::from_headers(&h)
}

/// A store with four nodes: polled ones with links (names from astdb, with characters
/// JSON must escape), a keyed link, today's totals from "history", and a never-polled one.
fn model() -> StateStore {
    let store = StateStore::new(64, 64);
    let mut e = Engine::new(store.clone(), Metrics::default(), true);
    let nodes = ["1999", "2000", "2001", "2002"];
    e.add_nodes(
        &nodes
            .iter()
            .map(|n| NodeSpec {
                node_id: (*n).into(),
                server: "s\"1".into(),
                poll_interval: Duration::from_millis(1500),
            })
            .collect::<Vec<_>>(),
    );
    e.handle(EngineInput::Names(Arc::new(AstDb::parse(
        "2100|W1AW|Newington \"HQ\"\\ ñ|CT\n2101|K1ABC||\n",
    ))));
    let links: [&[(&str, &str)]; 3] = [
        &[("2100", "10.0.0.1"), ("2101", "10.0.0.2")],
        &[("2100", "10.0.0.3")],
        &[],
    ];
    for (i, (node, l)) in nodes.iter().zip(links).enumerate() {
        let seq = i as u64 * 2 + 1;
        e.on_poll(PollResult {
            node: (*node).into(),
            server: "s\"1".into(),
            xstat: Ok(Reply {
                frame: xstat(node, l),
                rx_seq: seq,
            }),
            sawstat: Ok(Reply {
                frame: sawstat(node, l),
                rx_seq: seq + 1,
            }),
            duration: Duration::ZERO,
        });
    }
    e.on_ami(AmiEvent::Event {
        server: Arc::from("s\"1"),
        frame: Frame::from_headers(&[
            ("Event", "RPT_ALINKS".to_owned()),
            ("Node", "1999".to_owned()),
            ("EventValue", "2,2100TK,2101TU".to_owned()),
        ]),
        rx_seq: 100,
        received: std::time::Instant::now(),
    });
    let mut today = HashMap::new();
    today.insert(("1999".to_owned(), "2100".to_owned()), (7, 12.5));
    today.insert(("2000".to_owned(), "2100".to_owned()), (1, 0.1));
    store.set_link_today(today);
    // A node taken from a broker carries its origin.
    store.update(|m, _| {
        let mut remote = crate::state::node::NodeState::new("3000", "remote", Duration::ZERO);
        remote.origin = Some("daemon \"b\"".into());
        remote.last_poll_ms = Some(1_700_000_000_123);
        m.nodes.insert("3000".into(), remote);
    });
    store
}

/// The array as `StateStore::nodes` + serde gives it, and the one-pass encoding, made a
/// few times until both fall in the same second (the views hold whole seconds).
fn both(store: &StateStore) -> (Vec<u8>, Vec<u8>) {
    let mut last = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let mut fast = Vec::new();
        let seq = store.encode_nodes(&mut fast, |_, _| {}).expect("encodes");
        assert_eq!(seq, store.seq());
        let slow = serde_json::to_vec(&store.nodes()).expect("encodes");
        if fast == slow {
            return (fast, slow);
        }
        last = (fast, slow);
    }
    last
}

#[test]
fn the_one_pass_encoding_is_byte_identical_to_serialising_the_views() {
    let store = model();
    let (fast, slow) = both(&store);
    assert_eq!(
        String::from_utf8_lossy(&fast),
        String::from_utf8_lossy(&slow)
    );
    let v: serde_json::Value = serde_json::from_slice(&fast).expect("valid JSON");
    let nodes = v.as_array().expect("an array");
    assert_eq!(nodes.len(), 5);
    assert_eq!(nodes[4]["origin"], "daemon \"b\"");
    assert!(nodes[0].get("origin").is_none());
    let link = &nodes[0]["links"][0];
    assert_eq!(link["node"], "2100");
    assert_eq!(link["keyed"], true);
    assert_eq!(link["description"], "Newington \"HQ\"\\ ñ");
    assert_eq!(link["keyups_today"], 7);
    assert_eq!(nodes[1]["links"][0]["talk_seconds_today"], 0.1);
    assert_eq!(nodes[0]["server"], "s\"1");
    assert_eq!(nodes[3]["links"], serde_json::json!([]));
}

#[test]
fn head_sees_the_sequence_number_of_the_array() {
    let store = model();
    let mut out = b"x".to_vec();
    let seq = store
        .encode_nodes(&mut out, |out, seq| {
            out.extend_from_slice(format!("{seq}:").as_bytes())
        })
        .expect("encodes");
    assert!(seq > 0);
    assert!(out.starts_with(format!("x{seq}:[{{").as_bytes()));
    assert!(out.ends_with(b"}]"));

    let empty = StateStore::new(4, 16);
    let mut out = Vec::new();
    assert_eq!(empty.encode_nodes(&mut out, |_, _| {}).expect("encodes"), 0);
    assert_eq!(out, b"[]");
}
