//! Wire-level tests: a raw AMI client (request bytes out, frames split by the real client
//! codec in) against the simulator over `tokio::io::duplex` with paused time, or over TCP on
//! port 0.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, advance, timeout};
use tokio_util::codec::FramedRead;

use super::*;
use crate::ami::{AmiCodec, Frame, Incoming};
use crate::rpt::types::{Direction, LinkState, Mode};

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A bare AMI client.
struct Client {
    frames: FramedRead<Reader, AmiCodec>,
    w: Writer,
}

impl Client {
    /// Connects over an in-memory pipe.
    fn duplex(h: &SimHandle) -> Client {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        h.serve_stream(theirs);
        let (r, w) = tokio::io::split(ours);
        Client::new(Box::new(r), Box::new(w))
    }

    /// Connects over TCP.
    async fn tcp(h: &SimHandle) -> Client {
        let sock = tokio::net::TcpStream::connect(h.addr())
            .await
            .expect("connect");
        let (r, w) = sock.into_split();
        Client::new(Box::new(r), Box::new(w))
    }

    fn new(r: Reader, w: Writer) -> Client {
        Client {
            frames: FramedRead::new(r, AmiCodec::client(1 << 20)),
            w,
        }
    }

    async fn next(&mut self) -> Option<Incoming> {
        match self.frames.next().await {
            Some(Ok(item)) => Some(item),
            Some(Err(e)) => panic!("decode error: {e}"),
            None => None,
        }
    }

    async fn banner(&mut self) -> String {
        match self.next().await {
            Some(Incoming::Banner(b)) => b,
            other => panic!("expected a banner, got {other:?}"),
        }
    }

    async fn frame(&mut self) -> Frame {
        match self.next().await {
            Some(Incoming::Frame(f)) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next frame that is not an event.
    async fn reply(&mut self) -> Frame {
        loop {
            let f = self.frame().await;
            if f.event().is_none() {
                return f;
            }
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.expect("write");
    }

    async fn send(&mut self, headers: &[(&str, &str)]) {
        let mut text = String::new();
        for (k, v) in headers {
            text.push_str(&format!("{k}: {v}\r\n"));
        }
        text.push_str("\r\n");
        self.send_raw(text.as_bytes()).await;
    }

    /// Banner + successful login with this event mask.
    async fn login(&mut self, events: &str) {
        self.banner().await;
        self.send(&[
            ("Action", "Login"),
            ("Username", "admin"),
            ("Secret", "nexus-sim"),
            ("Events", events),
        ])
        .await;
        let f = self.reply().await;
        assert_eq!(f.response(), Some("Success"), "{f:?}");
    }

    async fn action(&mut self, headers: &[(&str, &str)]) -> Frame {
        self.send(headers).await;
        self.reply().await
    }

    async fn xstat(&mut self, node: &str) -> Frame {
        self.action(&[
            ("Action", "RptStatus"),
            ("Command", "XStat"),
            ("Node", node),
        ])
        .await
    }

    /// True when the server closed the session (EOF) before sending another frame.
    async fn is_closed(&mut self) -> bool {
        self.next().await.is_none()
    }

    /// True if nothing arrives within 5 s (paused time: instant).
    async fn is_quiet(&mut self) -> bool {
        timeout(Duration::from_secs(5), self.next()).await.is_err()
    }
}

fn config(nodes: &[&str]) -> SimConfig {
    SimConfig {
        nodes: nodes.iter().map(|n| n.to_string()).collect(),
        ..SimConfig::default()
    }
}

fn legacy(nodes: &[&str]) -> SimConfig {
    SimConfig {
        era: Era::Legacy,
        ..config(nodes)
    }
}

async fn logged_in(h: &SimHandle, events: &str) -> Client {
    let mut c = Client::duplex(h);
    c.login(events).await;
    c
}

fn event_values(frames: &[Frame]) -> Vec<(String, String)> {
    frames
        .iter()
        .map(|f| {
            (
                f.event().unwrap_or("").to_owned(),
                f.get("EventValue")
                    .or(f.get("Value"))
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect()
}

async fn events(c: &mut Client, n: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    for _ in 0..n {
        let f = c.frame().await;
        assert!(f.event().is_some(), "expected an event, got {f:?}");
        out.push(f);
    }
    out
}

#[tokio::test]
async fn tcp_banner_has_no_blank_line_and_login_succeeds() {
    let h = start("127.0.0.1:0".parse().expect("addr"), config(&["1999"]))
        .await
        .expect("start");
    assert_ne!(h.addr().port(), 0);
    let mut c = Client::tcp(&h).await;
    assert_eq!(c.banner().await, "Asterisk Call Manager/11.0.0");
    c.send(&[
        ("Action", "Login"),
        ("Username", "admin"),
        ("Secret", "nexus-sim"),
        ("Events", "off"),
        ("ActionID", "1"),
    ])
    .await;
    // A blank line after the banner would decode as an empty frame here.
    let f = c.frame().await;
    assert_eq!(f.response(), Some("Success"));
    assert_eq!(f.action_id(), Some("1"));
    assert_eq!(f.get("Message"), Some("Authentication accepted"));
    h.wait_for_session_count(1).await;
    h.shutdown();
    assert!(c.is_closed().await);
}

#[tokio::test(start_paused = true)]
async fn failed_login_waits_a_second_then_closes() {
    let h = SimHandle::detached(config(&["1999"]));
    let mut c = Client::duplex(&h);
    c.banner().await;
    let t0 = Instant::now();
    c.send(&[
        ("Action", "Login"),
        ("Username", "admin"),
        ("Secret", "wrong"),
        ("ActionID", "9"),
    ])
    .await;
    let f = c.frame().await;
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert_eq!(f.response(), Some("Error"));
    assert_eq!(f.action_id(), Some("9"));
    assert_eq!(f.get("Message"), Some("Authentication failed"));
    assert!(c.is_closed().await);

    h.set_fail_login(true);
    let mut c = Client::duplex(&h);
    c.banner().await;
    c.send(&[
        ("Action", "Login"),
        ("Username", "admin"),
        ("Secret", "nexus-sim"),
    ])
    .await;
    assert_eq!(
        c.frame().await.get("Message"),
        Some("Authentication failed")
    );
    assert!(c.is_closed().await);
    assert_eq!(h.session_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn permission_denied_missing_and_unknown_actions() {
    let h = SimHandle::detached(config(&["1999"]));
    let mut c = Client::duplex(&h);
    c.banner().await;
    let f = c.action(&[("Action", "Ping"), ("ActionID", "p")]).await;
    assert_eq!(
        (f.response(), f.get("Message")),
        (Some("Error"), Some("Permission denied"))
    );
    assert_eq!(f.action_id(), Some("p"));
    let f = c.action(&[("Node", "1999"), ("ActionID", "m")]).await;
    assert_eq!(f.get("Message"), Some("Missing action in request"));
    c.send(&[
        ("Action", "Login"),
        ("Username", "ADMIN"),
        ("Secret", "nexus-sim"),
        ("Events", "off"),
    ])
    .await;
    assert_eq!(
        c.reply().await.get("Message"),
        Some("Authentication accepted")
    );
    let f = c.action(&[("Action", "Frobnicate")]).await;
    assert_eq!(
        f.get("Message"),
        Some(
            "Invalid/unknown command: Frobnicate. Use Action: ListCommands to show available commands."
        )
    );
    assert_eq!(f.action_id(), None);
    // Allmon3's leading-space ActionID matches nothing: never echoed, never an error.
    c.send_raw(b"ACTION: PING\r\n ActionID: abc\r\n\r\n").await;
    let f = c.reply().await;
    assert_eq!(
        (f.response(), f.get("Ping"), f.action_id()),
        (Some("Success"), Some("Pong"), None)
    );
    assert!(f.get("Timestamp").is_some());
    // Bare LF requests work too (Asterisk >= 1.8).
    c.send_raw(b"Action: Login\nUsername: admin\nSecret: x\n\n")
        .await;
    assert_eq!(
        c.reply().await.get("Message"),
        Some("Already authenticated")
    );
}

/// Node 1999 with every kind of link, oldest first.
fn xstat_network(h: &SimHandle) {
    let behind = vec![(Mode::T, "2005"), (Mode::T, "2006")];
    h.connect_link(
        "1999",
        SimLink::allstar("2000", "192.0.2.10", Direction::Out)
            .with_reconnects(1)
            .with_remote_nodes(behind),
    );
    h.backdate_link("1999", "2000", Duration::from_secs(4530));
    h.connect_link(
        "1999",
        SimLink::allstar("2001", "198.51.100.7", Direction::In),
    );
    h.backdate_link("1999", "2001", Duration::from_secs(620));
    h.connect_link("1999", SimLink::echolink("3123456"));
    h.backdate_link("1999", "3123456", Duration::from_secs(135));
    h.connect_link("1999", SimLink::no_channel("2002"));
}

#[tokio::test(start_paused = true)]
async fn xstat_columns_linked_nodes_vars_and_flags_are_exact() {
    let h = SimHandle::detached(config(&["1999"]));
    xstat_network(&h);
    h.set_variable("1999", "cpu_temp", "47.5");
    let mut c = logged_in(&h, "off").await;
    let f = c
        .action(&[
            ("Action", "RptStatus"),
            ("Command", "XStat"),
            ("Node", "1999"),
            ("ActionID", "2"),
        ])
        .await;
    let keys: Vec<&str> = f.headers().take(3).map(|(k, _)| k).collect();
    assert_eq!(keys, ["Response", "ActionID", "Node"]);
    let conns: Vec<&str> = f.get_all("Conn").collect();
    assert_eq!(
        conns,
        [
            "2002      (none)              0           OUT        00:00:00            CONNECTING          ",
            "3123456                       0           IN         00:02:15            ESTABLISHED         ",
            "2001      198.51.100.7        0           IN         00:10:20            ESTABLISHED         ",
            "2000      192.0.2.10          1           OUT        01:15:30            ESTABLISHED         ",
        ]
    );
    assert_eq!(
        f.get("LinkedNodes"),
        Some("T2000, T2001, C2002, T2005, T2006, T3123456")
    );
    let vars: Vec<&str> = f.get_all("Var").collect();
    assert_eq!(vars[0], "cpu_temp=47.5");
    assert_eq!(vars[1], "RPT_NUMLINKS=6");
    assert_eq!(
        vars[2],
        "RPT_LINKS=6,C2002,T3123456,T2001,T2000,T2005,T2006"
    );
    assert_eq!(vars[4], "RPT_ALINKS=4,2002CU,3123456TU,2001TU,2000TU");
    assert_eq!(vars.len(), 9);
    assert_eq!(f.get("sys_ena"), Some("0"));
    assert_eq!(f.get("tel_mode"), Some("1"));
    // Connect time advances with the clock.
    advance(Duration::from_secs(3600)).await;
    let f = c.xstat("1999").await;
    assert!(f.get_all("Conn").any(|c| c.contains("02:15:30")));
}

#[tokio::test(start_paused = true)]
async fn xstat_of_an_idle_node_and_rptstatus_errors() {
    let h = SimHandle::detached(config(&["1999", "2000"]));
    let mut c = logged_in(&h, "off").await;
    let f = c.xstat("2000").await;
    assert_eq!(f.get("LinkedNodes"), Some("<NONE>"));
    assert_eq!(f.get("Var"), Some("RPT_ALINKS=0"));
    let err = |cmd: Option<&str>, node: &str| {
        let mut h = vec![("Action", "RptStatus"), ("Node", node)];
        if let Some(cmd) = cmd {
            h.push(("Command", cmd));
        }
        h.into_iter()
            .map(|(k, v)| (k, v.to_owned()))
            .collect::<Vec<_>>()
    };
    for (cmd, node, msg) in [
        (None, "1999", "RptStatus missing command"),
        (Some("xstat"), "1999", "RptStatus unknown command"),
        (Some("XStat"), "1999 ", "RptStatus unknown or missing node"),
        (Some("SawStat"), "", "RptStatus unknown or missing node"),
    ] {
        let req = err(cmd, node);
        let req: Vec<(&str, &str)> = req.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let f = c.action(&req).await;
        assert_eq!(
            (f.response(), f.get("Message")),
            (Some("Error"), Some(msg)),
            "{cmd:?} {node:?}"
        );
    }
    let f = c
        .action(&[("Action", "RptStatus"), ("Command", "RptStat")])
        .await;
    assert_eq!(f.get("Nodes"), Some("1999,2000"));
    assert_eq!(f.get("RptUptime"), Some("00:00:00"));
    let f = c
        .action(&[
            ("Action", "RptStatus"),
            ("Command", "NodeStat"),
            ("Node", "1999"),
        ])
        .await;
    assert_eq!(f.get("Node"), None);
    assert_eq!(f.get("NodesCurrentlyConnectedToUs"), Some("<NONE>"));
    let f = c
        .action(&[("Action", "RptLocalNodes"), ("ActionID", "x")])
        .await;
    let lines: Vec<&str> = f.headers().map(|(_, v)| v).collect();
    assert_eq!(
        lines,
        [
            "<?xml version=\"1.0\"?>",
            "<nodes>",
            "  <node>1999</node>",
            "  <node>2000</node>",
            "</nodes>"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn sawstat_prints_minus_one_for_never_and_ages_in_seconds() {
    let h = SimHandle::detached(config(&["1999"]));
    h.connect_link(
        "1999",
        SimLink::allstar("2001", "198.51.100.7", Direction::In),
    );
    h.connect_link("1999", SimLink::echolink("3123456"));
    let mut c = logged_in(&h, "off").await;
    h.set_link_keyed("1999", "2001", true);
    advance(Duration::from_secs(5)).await;
    h.set_link_keyed("1999", "2001", false);
    advance(Duration::from_secs(90)).await;
    let f = c
        .action(&[
            ("Action", "RptStatus"),
            ("Command", "SawStat"),
            ("Node", "1999"),
        ])
        .await;
    let conns: Vec<&str> = f.get_all("Conn").collect();
    assert_eq!(conns, ["3123456 0 -1 -1", "2001 0 95 90"]);
    h.set_link_keyed("1999", "2001", true);
    let f = c
        .action(&[
            ("Action", "RptStatus"),
            ("Command", "SawStat"),
            ("Node", "1999"),
        ])
        .await;
    assert_eq!(f.get_all("Conn").nth(1), Some("2001 1 0 90"));
}

#[tokio::test(start_paused = true)]
async fn link_changes_emit_the_four_link_events_in_order() {
    let h = SimHandle::detached(config(&["1999"]));
    let mut c = logged_in(&h, "call").await;
    h.connect_link(
        "1999",
        SimLink::allstar("2000", "192.0.2.10", Direction::Out),
    );
    let got = event_values(&events(&mut c, 4).await);
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["RPT_ALINKS", "RPT_NUMALINKS", "RPT_LINKS", "RPT_NUMLINKS"]
    );
    assert_eq!(got[0].1, "1,2000TU");
    assert_eq!(got[2].1, "1,T2000");

    h.set_link_keyed("1999", "2000", true);
    let frames = events(&mut c, 4).await;
    assert_eq!(frames[0].get("EventValue"), Some("1,2000TK"));
    assert_eq!(frames[0].get("Node"), Some("1999"));
    assert_eq!(frames[0].get("Channel"), Some("SimpleUSB/1999"));
    assert_eq!(frames[0].get("Privilege"), Some("call,all"));
    assert!(
        frames[0]
            .get("LastKeyedTime")
            .is_some_and(|t| t.len() == 24)
    );

    // The nodes behind a link changing emits nothing; the next update carries them.
    h.set_remote_nodes("1999", "2000", vec![(Mode::T, "2005".into())]);
    assert!(c.is_quiet().await);
    h.set_link_keyed("1999", "2000", false);
    let got = event_values(&events(&mut c, 4).await);
    assert_eq!(got[0].1, "1,2000TU");
    assert_eq!(got[2].1, "2,T2000,T2005");

    assert!(h.disconnect_link("1999", "2000"));
    let got = event_values(&events(&mut c, 4).await);
    let values: Vec<&str> = got.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(values, ["", "0", "0", "0"]);
    assert!(!h.disconnect_link("1999", "2000"));
    assert!(c.is_quiet().await);
}

#[tokio::test(start_paused = true)]
async fn keying_events_and_varset_follow_the_event_mask() {
    let h = SimHandle::detached(config(&["1999"]));
    let mut call = logged_in(&h, "call").await;
    let mut all = logged_in(&h, "on").await;
    let mut none = logged_in(&h, "off").await;
    h.set_tx_keyed("1999", true);
    h.set_tx_keyed("1999", true); // no change, no event
    h.set_variable("1999", "WX", "rain");
    let f = call.frame().await;
    assert_eq!(
        (f.event(), f.get("EventValue")),
        (Some("RPT_TXKEYED"), Some("1"))
    );
    assert!(call.is_quiet().await);
    let booted = event_values(&events(&mut all, 2).await);
    assert_eq!(
        (booted[0].0.as_str(), booted[1].0.as_str()),
        ("FullyBooted", "SuccessfulAuth")
    );
    let got = event_values(&events(&mut all, 3).await);
    assert_eq!(
        got,
        [
            ("VarSet".to_owned(), "1".to_owned()),
            ("RPT_TXKEYED".to_owned(), "1".to_owned()),
            ("VarSet".to_owned(), "rain".to_owned()),
        ]
    );
    assert!(none.is_quiet().await);
    // Events action switches a session's mask.
    let f = none
        .action(&[
            ("Action", "Events"),
            ("EventMask", "call"),
            ("ActionID", "e"),
        ])
        .await;
    assert_eq!((f.get("Events"), f.action_id()), (Some("On"), Some("e")));
    h.set_rx_keyed("1999", true);
    assert_eq!(none.frame().await.event(), Some("RPT_RXKEYED"));
    let f = none
        .action(&[("Action", "Events"), ("EventMask", "")])
        .await;
    assert_eq!(f.get("Message"), Some("Invalid event mask"));
}

#[tokio::test(start_paused = true)]
async fn login_with_system_and_security_classes_gets_booted_and_auth_events() {
    let h = SimHandle::detached(config(&["1999"]));
    let mut c = Client::duplex(&h);
    c.banner().await;
    c.send(&[
        ("Action", "Login"),
        ("Username", "admin"),
        ("Secret", "nexus-sim"),
    ])
    .await;
    assert_eq!(c.frame().await.response(), Some("Success"));
    let f = c.frame().await;
    assert_eq!(
        (f.event(), f.get("Status")),
        (Some("FullyBooted"), Some("Fully Booted"))
    );
    assert_eq!(c.frame().await.event(), Some("SuccessfulAuth"));
}

#[tokio::test(start_paused = true)]
async fn voterstatus_concatenates_instances_and_answers_empty() {
    let h = SimHandle::detached(config(&["1999", "2001", "2002"]));
    h.set_voter(
        "2001",
        vec![
            SimVoterReceiver::new("hilltop", "192.0.2.51:1667", 180)
                .with_flags(&["ActiveMaster", "Master"]),
            SimVoterReceiver::new("downtown", "192.0.2.52:1667", 120),
        ],
    );
    h.set_voter(
        "2002",
        vec![SimVoterReceiver::new("solo", "192.0.2.60:1667", 0)],
    );
    let mut c = logged_in(&h, "off").await;
    let f = c
        .action(&[("Action", "VoterStatus"), ("ActionID", "v")])
        .await;
    let lines: Vec<String> = f.headers().map(|(k, v)| format!("{k}: {v}")).collect();
    assert_eq!(
        lines,
        [
            "Response: Success",
            "ActionID: v",
            "Node: 2001",
            "Voted: hilltop",
            "Client: hilltop Master ActiveMaster",
            "IP: 192.0.2.51:1667",
            "RSSI: 180",
            "Client: downtown",
            "IP: 192.0.2.52:1667",
            "RSSI: 120",
            "Response: Success",
            "ActionID: v",
            "Node: 2002",
            "Client: solo",
            "IP: 192.0.2.60:1667",
            "RSSI: 0",
        ]
    );
    let f = c
        .action(&[("Action", "VoterStatus"), ("Node", "2002")])
        .await;
    assert_eq!(f.get_all("Node").collect::<Vec<_>>(), ["2002"]);
    let f = c
        .action(&[("Action", "VoterStatus"), ("Node", "1999")])
        .await;
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(h.truth().nodes["2001"].channel, "Voter/2001");
}

#[tokio::test(start_paused = true)]
async fn legacy_era_quirks_on_the_raw_wire() {
    let h = SimHandle::detached(legacy(&["1999"]));
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    h.serve_stream(theirs);
    let (mut r, mut w) = tokio::io::split(ours);
    w.write_all(b"Action: Login\r\nUsername: admin\r\nSecret: nexus-sim\r\nEvents: on\r\n\r\n")
        .await
        .expect("write");
    let text = read_until(&mut r, "Authentication accepted\r\n\r\n").await;
    assert_eq!(
        text,
        "Asterisk Call Manager/1.0\r\nResponse: Success\r\nMessage: Authentication accepted\r\n\r\n"
    );
    // No FullyBooted/SuccessfulAuth/VarSet on 1.4; event ctime values keep their newline.
    h.set_tx_keyed("1999", true);
    let ev = read_until(&mut r, "\n\r\n\r\n").await;
    assert!(
        ev.starts_with("Event: RPT_TXKEYED\r\nPrivilege: call,all\r\n"),
        "{ev:?}"
    );
    assert!(
        ev.contains("\nLastKeyedTime: ") && ev.contains("\n\r\nLastTxKeyedTime: "),
        "{ev:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn legacy_era_replies() {
    let h = SimHandle::detached(legacy(&["1999"]));
    let mut c = logged_in(&h, "call").await;
    h.set_tx_keyed("1999", true);
    let f = c.frame().await;
    assert_eq!(f.get("EventValue"), Some("1"));
    assert!(
        f.get("LastTxKeyedTime").is_some_and(|t| t.len() == 24),
        "{f:?}"
    );
    let f = c.xstat("1999").await;
    let keys: Vec<&str> = f.headers().take(2).map(|(k, _)| k).collect();
    assert_eq!(keys, ["Response", "Node"]);
    let f = c
        .action(&[
            ("Action", "RptStatus"),
            ("Command", "XStat"),
            ("Node", "1999"),
            ("ActionID", "7"),
        ])
        .await;
    let keys: Vec<&str> = f.headers().take(3).map(|(k, _)| k).collect();
    assert_eq!(keys, ["ActionID", "Response", "Node"]);
    assert_eq!(f.get("sys_ena"), Some("1"));
    assert_eq!(f.get("Var"), Some("RPT_TXKEYED=1"));
    let f = c
        .action(&[
            ("Action", "RptStatus"),
            ("Command", "Bogus"),
            ("ActionID", "8"),
        ])
        .await;
    let keys: Vec<&str> = f.headers().take(2).map(|(k, _)| k).collect();
    assert_eq!(keys, ["Response", "ActionID"]);
    let f = c.action(&[("Action", "Ping"), ("ActionID", "p")]).await;
    assert_eq!(
        (f.response(), f.action_id(), f.len()),
        (Some("Pong"), Some("p"), 2)
    );
    let f = c
        .action(&[
            ("Action", "Command"),
            ("Command", "core show uptime seconds"),
            ("ActionID", "c"),
        ])
        .await;
    assert_eq!((f.response(), f.action_id()), (Some("Follows"), Some("c")));
    assert_eq!(f.body(), Some("System uptime: 0\nLast reload: 0\n"));
    let f = c
        .action(&[("Action", "Events"), ("EventMask", "off")])
        .await;
    assert_eq!(f.response(), Some("Events Off"));
}

/// Reads raw bytes until `marker` has arrived; returns them as text.
async fn read_until<R: AsyncRead + Unpin>(r: &mut R, marker: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&buf).ends_with(marker) {
        let n = r.read(&mut byte).await.expect("read");
        assert!(
            n > 0,
            "EOF before {marker:?}: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(start_paused = true)]
async fn modern_command_output_and_errors() {
    let h = SimHandle::detached(config(&["1999"]));
    let mut c = logged_in(&h, "off").await;
    advance(Duration::from_secs(814)).await;
    let f = c
        .action(&[
            ("Action", "Command"),
            ("Command", "core show uptime seconds"),
            ("ActionID", "u"),
        ])
        .await;
    assert_eq!(f.get("Message"), Some("Command output follows"));
    let out: Vec<&str> = f.get_all("Output").collect();
    assert_eq!(out, ["System uptime: 814", "Last reload: 814"]);
    let f = c
        .action(&[("Action", "Command"), ("Command", "core show version")])
        .await;
    assert!(
        f.get("Output")
            .is_some_and(|o| o.starts_with("Asterisk 22."))
    );
    let f = c
        .action(&[("Action", "Command"), ("Command", "frob nicate")])
        .await;
    assert_eq!(f.response(), Some("Error"));
    assert!(
        f.get("Output")
            .is_some_and(|o| o.starts_with("No such command 'frob nicate'"))
    );
    let f = c.action(&[("Action", "Command")]).await;
    assert_eq!(f.get("Message"), Some("No command provided"));
    let f = c
        .action(&[("Action", "Command"), ("Command", "rpt stats 1999")])
        .await;
    assert!(
        f.get_all("Output")
            .any(|o| o.contains("NODE 1999 STATISTICS"))
    );
}

#[tokio::test(start_paused = true)]
async fn ilink_1_leaves_a_permanent_link_up_and_11_drops_it() {
    let h = SimHandle::detached(config(&["1999"]));
    let mut c = logged_in(&h, "perm").await;
    for cmd in [
        "rpt cmd 1999 ilink 13 29999",
        "rpt cmd 1999 ilink 18 29998",
        "rpt cmd 1999 ilink 3 29997",
    ] {
        c.action(&[("Action", "Command"), ("Command", cmd)]).await;
    }
    let t = h.truth();
    let n = &t.nodes["1999"];
    let got = |name: &str| n.link(name).map(|l| (l.mode, l.permanent));
    assert_eq!(got("29999"), Some((Mode::T, true)));
    assert_eq!(got("29998"), Some((Mode::L, true)));
    assert_eq!(got("29997"), Some((Mode::T, false)));
    for target in ["29999", "29997"] {
        let f = c
            .action(&[
                ("Action", "Command"),
                ("Command", &format!("rpt cmd 1999 ilink 1 {target}")),
            ])
            .await;
        assert_eq!(f.response(), Some("Success"), "app_rpt does not complain");
    }
    let t = h.truth();
    assert!(
        t.nodes["1999"].link("29999").is_some(),
        "ignored: permanent"
    );
    assert!(t.nodes["1999"].link("29997").is_none());
    c.action(&[
        ("Action", "Command"),
        ("Command", "rpt cmd 1999 ilink 11 29999"),
    ])
    .await;
    assert!(h.truth().nodes["1999"].link("29999").is_none());
    // Another tool made it permanent: the same.
    assert!(h.set_link_permanent("1999", "29998", true));
    c.action(&[("Action", "Command"), ("Command", "rpt cmd 1999 ilink 6")])
        .await;
    assert!(
        h.truth().nodes["1999"].links.is_empty(),
        "6 drops every link"
    );
}

#[tokio::test(start_paused = true)]
async fn reject_commands_answers_permission_denied() {
    let h = SimHandle::detached(config(&["1999"]));
    let mut c = logged_in(&h, "deny").await;
    h.set_reject_commands(true);
    let f = c
        .action(&[
            ("Action", "Command"),
            ("Command", "rpt cmd 1999 ilink 3 29999"),
        ])
        .await;
    assert_eq!(f.response(), Some("Error"));
    assert_eq!(f.get("Message"), Some("Permission denied"));
    assert!(h.truth().nodes["1999"].links.is_empty(), "nothing happened");
}

#[tokio::test(start_paused = true)]
async fn ilink_commands_change_the_truth_and_emit_events() {
    let h = SimHandle::detached(config(&["1999", "2000"]));
    let mut c = logged_in(&h, "call").await;
    let f = c
        .action(&[
            ("Action", "Command"),
            ("Command", "rpt cmd 1999 ilink 3 29999"),
        ])
        .await;
    assert_eq!(f.get_all("Output").collect::<Vec<_>>(), [""]);
    let link = h.truth().nodes["1999"]
        .link("29999")
        .cloned()
        .expect("link made");
    assert_eq!(
        (link.direction, link.mode, link.state),
        (Direction::Out, Mode::T, LinkState::Established)
    );
    let got = event_values(&events(&mut c, 4).await);
    assert_eq!(got[0].1, "1,29999TU");
    // A link to a node of this server shows at both ends.
    c.action(&[
        ("Action", "Command"),
        ("Command", "rpt cmd 1999 ilink 2 2000"),
    ])
    .await;
    let t = h.truth();
    assert_eq!(t.nodes["1999"].link("2000").map(|l| l.mode), Some(Mode::R));
    assert_eq!(
        t.nodes["2000"].link("1999").map(|l| l.direction),
        Some(Direction::In)
    );
    c.action(&[
        ("Action", "Command"),
        ("Command", "rpt cmd 1999 ilink 1 29999"),
    ])
    .await;
    c.action(&[("Action", "Command"), ("Command", "rpt cmd 1999 ilink 6")])
        .await;
    let t = h.truth();
    assert!(t.nodes["1999"].links.is_empty());
    assert!(t.nodes["2000"].links.is_empty());
    let f = c
        .action(&[
            ("Action", "Command"),
            ("Command", "rpt set variable 1999 ALERT=test WX=sun"),
        ])
        .await;
    assert_eq!(f.response(), Some("Success"));
    assert_eq!(
        h.truth().nodes["1999"].variables[0],
        ("WX".to_owned(), "sun".to_owned())
    );
}

#[tokio::test(start_paused = true)]
async fn chunked_writes_decode_to_the_same_frames() {
    let h = SimHandle::detached(config(&["1999"]));
    xstat_network(&h);
    let mut c = logged_in(&h, "call").await;
    let whole = c.xstat("1999").await;
    h.set_chunk_writes(Some(3));
    let chunked = c.xstat("1999").await;
    assert_eq!(whole, chunked);
    h.set_link_keyed("1999", "2000", true);
    assert_eq!(
        events(&mut c, 4).await[0].get("EventValue"),
        Some("4,2002CU,3123456TU,2001TU,2000TK")
    );
    h.set_chunk_writes(None);
    h.set_coalesce(true);
    h.set_link_keyed("1999", "2000", false);
    let after = c.xstat("1999").await;
    assert_eq!(after.get("Node"), Some("1999"));
}

/// Counts writes to check coalescing.
#[derive(Default)]
struct CountingWriter {
    writes: Vec<Vec<u8>>,
}

impl AsyncWrite for CountingWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.writes.push(buf.to_vec());
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn output_coalesces_and_chunks_writes() {
    let h = SimHandle::detached(config(&["1999"]));
    let frames = [
        bytes::Bytes::from_static(b"A: 1\r\n\r\n"),
        bytes::Bytes::from_static(b"B: 2\r\n\r\n"),
    ];
    let mut out = session::Output::for_test(CountingWriter::default(), h.shared.clone());
    out.send(&frames).await.expect("write");
    assert_eq!(out.inner().writes.len(), 2);
    h.set_coalesce(true);
    let mut out = session::Output::for_test(CountingWriter::default(), h.shared.clone());
    out.send(&frames).await.expect("write");
    assert_eq!(out.inner().writes, [b"A: 1\r\n\r\nB: 2\r\n\r\n".to_vec()]);
    h.set_chunk_writes(Some(4));
    let mut out = session::Output::for_test(CountingWriter::default(), h.shared.clone());
    out.send(&frames).await.expect("write");
    assert_eq!(out.inner().writes.len(), 4);
    assert!(out.inner().writes.iter().all(|w| w.len() <= 4));
}

#[tokio::test(start_paused = true)]
async fn event_drop_ratio_drops_events_never_replies() {
    let h = SimHandle::detached(config(&["1999"]));
    h.connect_link(
        "1999",
        SimLink::allstar("2000", "192.0.2.10", Direction::Out),
    );
    let mut c = logged_in(&h, "call").await;
    h.set_event_drop_ratio(1.0);
    for i in 0..10 {
        h.set_link_keyed("1999", "2000", i % 2 == 0);
    }
    let f = c.xstat("1999").await;
    assert_eq!(f.response(), Some("Success"));
    assert!(c.is_quiet().await);
    h.set_event_drop_ratio(0.5);
    for i in 0..50 {
        h.set_link_keyed("1999", "2000", i % 2 == 0);
    }
    let mut received = 0;
    while timeout(Duration::from_secs(1), c.frame()).await.is_ok() {
        received += 1;
    }
    assert!((50..150).contains(&received), "received {received} of 200");
}

#[tokio::test(start_paused = true)]
async fn recorded_actions_redact_the_secret() {
    let h = SimHandle::detached(config(&["1999"]));
    let mut c = logged_in(&h, "off").await;
    c.send_raw(b"Action: Ping\r\n ActionID: x\r\n\r\n").await;
    c.reply().await;
    h.wait_for_recorded(2).await;
    let rec = h.recorded_actions();
    assert_eq!(rec.len(), 2);
    assert_eq!(rec[0].action(), Some("Login"));
    assert_eq!(rec[0].get("secret"), Some("********"));
    assert_eq!(rec[0].get("Username"), Some("admin"));
    assert_eq!(
        rec[1].headers[1],
        (String::new(), " ActionID: x".to_owned())
    );
    assert_eq!(rec[0].session, rec[1].session);
    h.clear_recorded();
    assert!(h.recorded_actions().is_empty());
}

#[tokio::test(start_paused = true)]
async fn stall_holds_replies_until_released() {
    let h = SimHandle::detached(config(&["1999"]));
    let mut c = logged_in(&h, "call").await;
    h.set_stall(true);
    c.send(&[("Action", "Ping"), ("ActionID", "s")]).await;
    h.set_tx_keyed("1999", true); // produced while hung: never delivered
    assert!(c.is_quiet().await);
    h.set_stall(false);
    let f = c.frame().await;
    assert_eq!((f.response(), f.action_id()), (Some("Success"), Some("s")));
    assert!(c.is_quiet().await);
}

#[tokio::test(start_paused = true)]
async fn logoff_drop_sessions_inject_raw_and_auth_timeout() {
    let h = SimHandle::detached(config(&["1999"]));
    let mut c = logged_in(&h, "off").await;
    let f = c.action(&[("Action", "Logoff"), ("ActionID", "bye")]).await;
    assert_eq!(
        (f.response(), f.get("Message")),
        (Some("Goodbye"), Some("Thanks for all the fish."))
    );
    assert!(c.is_closed().await);

    let mut c = logged_in(&h, "off").await;
    h.inject_raw(b"Junk: line\r\n\r\n");
    assert_eq!(c.frame().await.get("Junk"), Some("line"));
    h.drop_sessions();
    assert!(c.is_closed().await);
    h.wait_for_session_count(0).await;

    let mut c = Client::duplex(&h);
    c.banner().await;
    let t0 = Instant::now();
    assert!(c.is_closed().await);
    assert!(t0.elapsed() >= Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn a_slow_session_is_closed_without_blocking_others() {
    let h = SimHandle::detached(config(&["1999"]));
    h.connect_link(
        "1999",
        SimLink::allstar("2000", "192.0.2.10", Direction::Out),
    );
    h.set_event_queue_limit(8);
    let (ours, theirs) = tokio::io::duplex(256);
    h.serve_stream(theirs);
    let (r, w) = tokio::io::split(ours);
    let mut slow = Client::new(Box::new(r), Box::new(w));
    slow.login("call").await;
    let mut fast = logged_in(&h, "call").await;
    h.wait_for_session_count(2).await;
    for i in 0..40 {
        h.set_link_keyed("1999", "2000", i % 2 == 0);
        for _ in 0..4 {
            fast.frame().await;
        }
    }
    h.wait_for_session_count(1).await;
    let mut frames = 0;
    // The session may be cut mid-frame: a decode error at EOF is part of the story.
    while let Some(Ok(_)) = slow.frames.next().await {
        frames += 1;
    }
    assert!(
        frames < 160,
        "slow session got {frames} frames before being closed"
    );
    assert_eq!(fast.xstat("1999").await.response(), Some("Success"));
}

#[tokio::test(start_paused = true)]
async fn rptstatus_abort_closes_with_an_unterminated_frame() {
    let h = SimHandle::detached(config(&["1999"]));
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    h.serve_stream(theirs);
    let (mut r, mut w) = tokio::io::split(ours);
    w.write_all(b"Action: Login\r\nUsername: admin\r\nSecret: nexus-sim\r\nEvents: off\r\n\r\n")
        .await
        .expect("write");
    read_until(&mut r, "accepted\r\n\r\n").await;
    h.set_rptstatus_abort(true);
    w.write_all(b"Action: RptStatus\r\nCommand: XStat\r\nNode: 1999\r\n\r\n")
        .await
        .expect("write");
    let mut rest = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut r, &mut rest)
        .await
        .expect("read");
    assert_eq!(rest, "Response: Success\r\nNode: 1999\r\n");
}

#[tokio::test]
async fn tcp_refuse_pause_and_resume_listener() {
    let h = start("127.0.0.1:0".parse().expect("addr"), config(&["1999"]))
        .await
        .expect("start");
    let addr = h.addr();
    h.set_refuse(true);
    let mut c = Client::tcp(&h).await;
    assert!(c.is_closed().await);
    h.set_refuse(false);
    let mut c = Client::tcp(&h).await;
    c.login("off").await;
    h.pause_listener().await;
    assert!(c.is_closed().await);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    h.resume_listener().await.expect("rebind");
    assert_eq!(h.addr(), addr);
    let mut c = Client::tcp(&h).await;
    c.login("off").await;
    h.shutdown();
}

#[tokio::test(start_paused = true)]
async fn demo_network_and_activity_are_lively() {
    let h = SimHandle::detached(SimConfig {
        nodes: Vec::new(),
        ..SimConfig::default()
    });
    demo_network(&h);
    let t = h.truth();
    assert_eq!(t.nodes.keys().collect::<Vec<_>>(), ["1999", "2000", "2001"]);
    assert!(t.nodes["1999"].links.len() >= 6);
    assert!(t.nodes["2001"].voter.is_some());
    let mut c = logged_in(&h, "call").await;
    let f = c.xstat("2000").await;
    assert!(
        f.get("LinkedNodes")
            .is_some_and(|l| l.contains("T27339") && l.contains("T2001"))
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let task = spawn_activity(h.clone(), 7, stop.clone());
    let mut seen = std::collections::BTreeSet::new();
    let mut voted = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        if let Ok(f) = timeout(Duration::from_millis(500), c.frame()).await {
            seen.insert(f.event().unwrap_or("").to_owned());
        }
        if let Some((Some(v), _)) = &h.truth().nodes["2001"].voter {
            voted.insert(v.clone());
        }
    }
    stop.cancel();
    task.await.expect("activity ends");
    for name in ["RPT_TXKEYED", "RPT_RXKEYED", "RPT_ALINKS", "RPT_LINKS"] {
        assert!(seen.contains(name), "no {name} in {seen:?}");
    }
    assert!(
        voted.len() >= 2,
        "the voted receiver never changed: {voted:?}"
    );
    // Links came and went: the hub no longer has exactly its starting set.
    let links: Vec<String> = h.truth().nodes["1999"]
        .links
        .iter()
        .map(|l| l.name.clone())
        .collect();
    assert_ne!(
        links,
        ["3123456", "48335", "41522", "51234", "27339", "2000"]
    );
}

#[tokio::test]
async fn run_standalone_serves_until_cancelled() {
    let stop = tokio_util::sync::CancellationToken::new();
    let addr = "127.0.0.1:0".parse().expect("addr");
    let run = tokio::spawn(run_standalone(
        addr,
        SimConfig::default(),
        true,
        Some(1),
        stop.clone(),
    ));
    stop.cancel();
    run.await.expect("task").expect("clean stop");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = taken.local_addr().expect("addr");
    let err = run_standalone(busy, SimConfig::default(), false, None, stop).await;
    assert!(err.is_err_and(|e| e.to_string().contains("cannot listen")));
}

#[tokio::test(start_paused = true)]
async fn echolink_dbget_nodename_like_chan_echolink() {
    let h = SimHandle::detached(config(&["1999"]));
    h.set_echolink_entry(42, "KD2ABC", "203.0.113.9");
    let mut c = logged_in(&h, "off").await;
    for (lookup, want) in [
        ("123456", "123456|W1AW-L|192.0.2.10"),
        ("42", "42|KD2ABC|203.0.113.9"),
        ("000042", "42|KD2ABC|203.0.113.9"),
    ] {
        let cmd = format!("echolink dbget nodename {lookup}");
        let f = c
            .action(&[("Action", "Command"), ("Command", cmd.as_str())])
            .await;
        assert_eq!(f.response(), Some("Success"), "{lookup}");
        assert_eq!(f.get_all("Output").collect::<Vec<_>>(), [want], "{lookup}");
    }
    let f = c
        .action(&[
            ("Action", "Command"),
            ("Command", "echolink dbget nodename 555"),
        ])
        .await;
    assert_eq!(f.response(), Some("Error"));
    assert_eq!(f.get("Output"), Some("Error: Entry for 555 not found!"));
}

// --- the fleet (`simulate --servers N`) -------------------------------------------------

fn small_fleet(servers: usize) -> fleet::FleetConfig {
    fleet::FleetConfig {
        servers,
        nodes_per_server: 2,
        first_node: 50_000,
        links_per_node: 1,
        ..fleet::FleetConfig::default()
    }
}

#[tokio::test]
async fn fleet_serves_each_server_on_its_own_ephemeral_port() {
    let f = fleet::Fleet::start(small_fleet(3)).await.expect("fleet");
    let ports: std::collections::BTreeSet<u16> =
        f.servers().iter().map(|s| s.addr().port()).collect();
    assert_eq!(ports.len(), 3, "{ports:?}");
    assert!(!ports.contains(&0));
    // The second server hosts nodes 50002 and 50003, each with one established link.
    let mut c = Client::tcp(&f.servers()[1]).await;
    c.login("off").await;
    let x = c.xstat("50003").await;
    assert_eq!(x.response(), Some("Success"), "{x:?}");
    assert_eq!(
        x.headers().filter(|(k, _)| *k == "Conn").count(),
        1,
        "{x:?}"
    );
    let other = c.xstat("50000").await;
    assert_ne!(other.response(), Some("Success"), "{other:?}");
    f.servers()[1].wait_for_session_count(1).await;
    assert_eq!(f.session_count(), 1);
    assert_eq!(f.accepted_connections(), 1);
    f.shutdown();
}

#[tokio::test]
async fn fleet_writes_a_daemon_config_that_loads_with_the_chosen_ports() {
    let f = fleet::Fleet::start(small_fleet(4)).await.expect("fleet");
    let dir = std::env::temp_dir().join(format!("nexus-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("fleet.yaml");
    let opts = fleet::DaemonConfigOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        poll_seconds: 30,
        plugins: true,
    };
    f.write_daemon_config(&path, &opts).expect("write");
    let config = crate::config::Config::load(&path).expect("the written config is valid");
    assert_eq!(config.servers.len(), 4);
    for (server, sim) in config.servers.iter().zip(f.servers()) {
        assert_eq!(server.port, sim.addr().port());
        assert_eq!(server.host, "127.0.0.1");
        assert_eq!(server.username, "admin");
        assert_eq!(server.password, "nexus-sim");
        let nodes: Vec<&str> = server.nodes.iter().map(|n| n.node_id.as_str()).collect();
        let hosted = sim.truth();
        let hosted: Vec<&str> = hosted.nodes.keys().map(String::as_str).collect();
        assert_eq!(nodes, hosted);
        assert!(
            server
                .nodes
                .iter()
                .all(|n| n.poll_interval == Duration::from_secs(30))
        );
    }
    assert!(config.plugins_builtin);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "the secret is not readable by others");
    }
    let _ = std::fs::remove_dir_all(&dir);
    f.shutdown();
}

#[tokio::test]
async fn fleet_options_out_of_range_are_refused_with_the_option_named() {
    for (cfg, word) in [
        (small_fleet(0), "--servers"),
        (small_fleet(fleet::MAX_SERVERS + 1), "--servers"),
        (
            fleet::FleetConfig {
                nodes_per_server: 0,
                ..small_fleet(1)
            },
            "--nodes-per-server",
        ),
        (
            fleet::FleetConfig {
                listen: "127.0.0.1:65000".parse().expect("addr"),
                ..small_fleet(1000)
            },
            "65535",
        ),
    ] {
        let err = fleet::Fleet::start(cfg).await.expect_err("refused");
        assert!(err.to_string().contains(word), "{err}");
    }
}

#[tokio::test(start_paused = true)]
async fn fleet_activity_keys_nodes_and_changes_links_at_the_asked_rates() {
    let f = fleet::Fleet::start(small_fleet(5)).await.expect("fleet");
    let mut c = Client::tcp(&f.servers()[0]).await;
    c.login("on").await;
    let activity = fleet::FleetActivity {
        // 10 nodes × 60 a minute: ten keyups a second, fleet-wide.
        keyups_per_minute: 60.0,
        link_changes_per_hour: 3600.0,
        seed: 7,
    };
    let stop = CancellationToken::new();
    let task = fleet::spawn_fleet_activity(f.clone(), activity, stop.clone());
    let mut keyups = 0;
    let mut link_events = 0;
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        let Ok(Some(Incoming::Frame(ev))) = timeout(Duration::from_secs(1), c.next()).await else {
            continue;
        };
        match ev.event() {
            Some("RPT_RXKEYED" | "RPT_LINKKEYED") if ev.get("EventValue") == Some("1") => {
                keyups += 1
            }
            Some("RPT_NUMLINKS") => link_events += 1,
            _ => {}
        }
    }
    stop.cancel();
    let _ = task.await;
    // Server 1 of 5 holds a fifth of the nodes: about 60 keyups and 6 link changes in 30 s.
    assert!((20..=120).contains(&keyups), "keyups {keyups}");
    assert!(link_events >= 1, "link events {link_events}");
    f.shutdown();
}

#[tokio::test]
async fn fleet_restart_closes_every_port_then_listens_again() {
    let f = fleet::Fleet::start(small_fleet(2)).await.expect("fleet");
    let addr = f.servers()[1].addr();
    let mut c = Client::tcp(&f.servers()[1]).await;
    c.login("off").await;
    f.servers()[1].wait_for_session_count(1).await;
    let restart = {
        let f = f.clone();
        tokio::spawn(async move { f.restart(Duration::from_millis(300)).await })
    };
    assert!(c.is_closed().await, "the session dropped");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the port is closed while down"
    );
    restart.await.expect("join").expect("listening again");
    let mut again = Client::tcp(&f.servers()[1]).await;
    again.login("off").await;
    f.shutdown();
}
