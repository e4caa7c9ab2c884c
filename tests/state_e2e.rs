//! The live model against the simulator's truth: first poll, random mutations through
//! events, dropped events repaired by polling, changes made while disconnected, several
//! nodes on one server, and a 500-link hub.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use allstar_nexus::daemon::Running;
use allstar_nexus::sim::{SimHandle, SimLink};
use allstar_nexus::state::{ChangeKind, Direction, LinkState, Mode, Published};
use common::*;
use tokio::sync::broadcast;

/// A link as both sides can describe it: name, ip, direction, mode, state, keyed.
type Row = (
    String,
    Option<String>,
    Option<Direction>,
    Option<Mode>,
    Option<LinkState>,
    bool,
);

fn truth_rows(sim: &SimHandle, node: &str) -> BTreeSet<Row> {
    let t = sim.truth();
    let Some(n) = t.nodes.get(node) else {
        return BTreeSet::new();
    };
    n.links
        .iter()
        .filter(|l| l.is_reported())
        .map(|l| {
            let ip = l.ip.clone().filter(|ip| ip != "(none)" && !ip.is_empty());
            let mode = Mode::from_letter(l.letter());
            (
                l.name.clone(),
                ip,
                Some(l.direction),
                mode,
                Some(l.state),
                l.keyed,
            )
        })
        .collect()
}

fn model_rows(d: &Running, node: &str) -> BTreeSet<Row> {
    let Some(n) = d.app.state.node(node) else {
        return BTreeSet::new();
    };
    n.links
        .into_iter()
        .map(|l| (l.node, l.ip, l.direction, l.mode, l.state, l.keyed))
        .collect()
}

async fn wait_for_poll(d: &Running, node: &str, after: Option<String>) {
    wait_until("a poll", || {
        d.app
            .state
            .node(node)
            .is_some_and(|n| n.last_poll.is_some() && n.last_poll != after)
    })
    .await;
}

async fn poll_and_wait(d: &Running, node: &str) {
    let before = d.app.state.node(node).and_then(|n| n.last_poll);
    // last_poll has ms resolution: make sure the next one differs.
    tokio::time::sleep(Duration::from_millis(2)).await;
    d.app.control.poll_now(node).expect("known node");
    wait_for_poll(d, node, before).await;
}

/// Collects changes until `n` have arrived (20 s bound).
async fn collect(rx: &mut broadcast::Receiver<Arc<Published>>, n: usize) -> Vec<Arc<Published>> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
            Ok(Ok(p)) => out.push(p),
            Ok(Err(e)) => panic!("change stream: {e}"),
            Err(_) => panic!(
                "timed out after {} of {n} changes: {:?}",
                out.len(),
                out.iter().map(|p| &p.json).collect::<Vec<_>>()
            ),
        }
    }
    out
}

fn sample_network(sim: &SimHandle) {
    sim.connect_link(
        "1999",
        SimLink::allstar("2000", "192.0.2.10", Direction::Out)
            .with_remote_nodes(vec![(Mode::T, "2005"), (Mode::T, "2006")])
            .with_reconnects(1),
    );
    sim.connect_link(
        "1999",
        SimLink::allstar("2001", "198.51.100.7", Direction::In),
    );
    sim.connect_link("1999", SimLink::echolink("3123456"));
    sim.connect_link(
        "1999",
        SimLink::allstar("2002", "203.0.113.9", Direction::Out).with_mode(Mode::L),
    );
    sim.connect_link(
        "1999",
        SimLink::allstar("2003", "203.0.113.10", Direction::Out).with_state(LinkState::Connecting),
    );
    sim.connect_link("1999", SimLink::no_channel("2004"));
    sim.set_link_keyed("1999", "2001", true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_first_poll_the_model_equals_the_truth() {
    let sim = sim_on_tcp(&["1999"]).await;
    sample_network(&sim);
    let d = start_daemon(sim.addr(), &["1999"], "").await;
    wait_for_poll(&d, "1999", None).await;
    assert_eq!(model_rows(&d, "1999"), truth_rows(&sim, "1999"));
    let view = d.app.state.node("1999").expect("node");
    assert!(!view.stale);
    let behind: BTreeSet<_> = view.linked_nodes.iter().map(|n| n.node.as_str()).collect();
    assert!(
        behind.contains("2005") && behind.contains("2006"),
        "nodes behind a link: {behind:?}"
    );
    let el = view
        .links
        .iter()
        .find(|l| l.node == "3123456")
        .expect("EchoLink link");
    assert_eq!(
        (el.ip.as_deref(), el.kind),
        (None, allstar_nexus::state::LinkKind::Echolink)
    );
    let l2000 = view.links.iter().find(|l| l.node == "2000").expect("2000");
    assert_eq!(l2000.reconnects, 1);
    let l2001 = view.links.iter().find(|l| l.node == "2001").expect("2001");
    assert_eq!(l2001.last_keyed_seconds, Some(0));
    d.shutdown.cancel();
}

/// A tiny seeded generator (the test must be repeatable).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

/// The reference: what the engine must report for each mutation.
#[derive(Default)]
struct Reference {
    links: Vec<(String, bool)>,
    tx: bool,
    rx: bool,
    expected: Vec<(ChangeKind, Option<String>)>,
}

impl Reference {
    fn mutate(&mut self, sim: &SimHandle, rng: &mut Lcg) {
        match rng.next(6) {
            0 | 1 if self.links.len() < 30 => {
                let name = loop {
                    let n = format!("{}", 2100 + rng.next(60));
                    if !self.links.iter().any(|(l, _)| *l == n) {
                        break n;
                    }
                };
                let dir = if rng.next(2) == 0 {
                    Direction::In
                } else {
                    Direction::Out
                };
                sim.connect_link("1999", SimLink::allstar(&name, "192.0.2.1", dir));
                self.links.insert(0, (name.clone(), false));
                self.expected.push((ChangeKind::LinkConnected, Some(name)));
            }
            2 if !self.links.is_empty() => {
                let i = rng.next(self.links.len());
                let (name, keyed) = self.links.remove(i);
                assert!(sim.disconnect_link("1999", &name));
                if keyed {
                    self.expected
                        .push((ChangeKind::LinkUnkeyed, Some(name.clone())));
                }
                self.expected
                    .push((ChangeKind::LinkDisconnected, Some(name)));
            }
            3 if !self.links.is_empty() => {
                let i = rng.next(self.links.len());
                let (name, keyed) = self.links[i].clone();
                assert!(sim.set_link_keyed("1999", &name, !keyed));
                self.links[i].1 = !keyed;
                let kind = if keyed {
                    ChangeKind::LinkUnkeyed
                } else {
                    ChangeKind::LinkKeyed
                };
                self.expected.push((kind, Some(name)));
            }
            4 => {
                self.tx = !self.tx;
                sim.set_tx_keyed("1999", self.tx);
                self.expected.push((
                    if self.tx {
                        ChangeKind::TxKeyed
                    } else {
                        ChangeKind::TxUnkeyed
                    },
                    None,
                ));
            }
            _ => {
                self.rx = !self.rx;
                sim.set_rx_keyed("1999", self.rx);
                self.expected.push((
                    if self.rx {
                        ChangeKind::RxKeyed
                    } else {
                        ChangeKind::RxUnkeyed
                    },
                    None,
                ));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_random_mutations_produce_exactly_the_expected_changes_in_order() {
    let sim = sim_on_tcp(&["1999"]).await;
    sim.set_event_queue_limit(1_000_000);
    let d = start_daemon(sim.addr(), &["1999"], "disable_link_poller: true\n").await;
    // Once the engine has seen the session up, nothing else is pending.
    // (An empty list is not "all connected": the engine may not have seen the session yet.)
    wait_until("connected", || {
        let servers = d.app.state.servers();
        !servers.is_empty() && servers.iter().all(|s| s.connected)
    })
    .await;
    let mut rx = d.app.state.subscribe();
    let mut reference = Reference::default();
    let mut rng = Lcg(42);
    for _ in 0..1000 {
        reference.mutate(&sim, &mut rng);
    }
    let got = collect(&mut rx, reference.expected.len()).await;
    let got_kinds: Vec<_> = got
        .iter()
        .map(|p| (p.event.kind, p.event.link.as_ref().map(|l| l.node.clone())))
        .collect();
    for (i, (g, e)) in got_kinds.iter().zip(&reference.expected).enumerate() {
        assert_eq!(g, e, "change #{i} differs");
    }
    assert!(
        got.windows(2).all(|w| w[1].event.seq == w[0].event.seq + 1),
        "seq is gap-free and monotonic"
    );
    // Nothing more arrives.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), rx.recv())
            .await
            .is_err(),
        "no extra changes"
    );
    // The keying tracker counted every TX keyup.
    let tx_ups = reference
        .expected
        .iter()
        .filter(|(k, _)| *k == ChangeKind::TxKeyed)
        .count() as u64;
    assert_eq!(d.app.state.node("1999").map(|n| n.tx_keyups), Some(tx_ups));
    // And a poll agrees with all of it.
    poll_and_wait(&d, "1999").await;
    assert_eq!(model_rows(&d, "1999"), truth_rows(&sim, "1999"));
    d.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_30_percent_of_events_dropped_the_next_poll_restores_the_truth() {
    let sim = sim_on_tcp(&["1999"]).await;
    sim.set_event_queue_limit(1_000_000);
    sim.set_event_drop_ratio(0.3);
    let d = start_daemon(sim.addr(), &["1999"], "disable_link_poller: true\n").await;
    wait_until("connected", || {
        d.app.control.servers().values().all(|h| h.is_connected())
    })
    .await;
    let mut reference = Reference::default();
    let mut rng = Lcg(7);
    for _ in 0..500 {
        reference.mutate(&sim, &mut rng);
    }
    // Let the surviving events land, then poll.
    tokio::time::sleep(Duration::from_millis(200)).await;
    poll_and_wait(&d, "1999").await;
    assert_eq!(
        model_rows(&d, "1999"),
        truth_rows(&sim, "1999"),
        "no ghost link, no stuck key"
    );
    let n = d.app.state.node("1999").expect("node");
    let t = sim.truth();
    let tn = t.nodes.get("1999").expect("truth");
    assert_eq!((n.tx_keyed, n.rx_keyed), (tn.tx_keyed, tn.rx_keyed));
    d.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_disconnected_are_reported_after_the_reconnect() {
    let sim = sim_on_tcp(&["1999"]).await;
    sim.connect_link(
        "1999",
        SimLink::allstar("2000", "192.0.2.10", Direction::Out),
    );
    sim.connect_link(
        "1999",
        SimLink::allstar("2001", "192.0.2.11", Direction::In),
    );
    let d = start_daemon(sim.addr(), &["1999"], "").await;
    wait_for_poll(&d, "1999", None).await;
    let mut rx = d.app.state.subscribe();
    sim.pause_listener().await;
    let down = collect(&mut rx, 1).await;
    assert_eq!(down[0].event.kind, ChangeKind::AmiDisconnected);
    assert!(down[0].event.error.is_some());
    wait_until("stale", || {
        d.app.state.node("1999").is_some_and(|n| n.stale)
    })
    .await;
    // Meanwhile on the node:
    sim.connect_link(
        "1999",
        SimLink::allstar("2100", "192.0.2.12", Direction::In),
    );
    sim.disconnect_link("1999", "2000");
    sim.set_link_keyed("1999", "2001", true);
    sim.set_tx_keyed("1999", true);
    sim.resume_listener().await.expect("same port again");
    let got = collect(&mut rx, 5).await;
    let kinds: Vec<_> = got
        .iter()
        .map(|p| (p.event.kind, p.event.link.as_ref().map(|l| l.node.as_str())))
        .collect();
    assert_eq!(kinds[0], (ChangeKind::AmiConnected, None));
    let rest: BTreeSet<_> = kinds[1..].iter().cloned().collect();
    let want: BTreeSet<_> = [
        (ChangeKind::LinkDisconnected, Some("2000")),
        (ChangeKind::LinkConnected, Some("2100")),
        (ChangeKind::LinkKeyed, Some("2001")),
        (ChangeKind::TxKeyed, None),
    ]
    .into_iter()
    .collect();
    assert_eq!(rest, want);
    wait_until("fresh", || {
        d.app.state.node("1999").is_some_and(|n| !n.stale)
    })
    .await;
    assert_eq!(model_rows(&d, "1999"), truth_rows(&sim, "1999"));
    d.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_server_never_cross() {
    let sim = sim_on_tcp(&["1999", "2000"]).await;
    sim.connect_link(
        "1999",
        SimLink::allstar("3000", "192.0.2.30", Direction::Out),
    );
    sim.connect_link(
        "2000",
        SimLink::allstar("4000", "192.0.2.40", Direction::In),
    );
    let d = start_daemon(sim.addr(), &["1999", "2000"], "").await;
    wait_for_poll(&d, "1999", None).await;
    wait_for_poll(&d, "2000", None).await;
    let mut rx = d.app.state.subscribe();
    sim.set_link_keyed("2000", "4000", true);
    sim.connect_link(
        "1999",
        SimLink::allstar("3001", "192.0.2.31", Direction::In),
    );
    sim.set_tx_keyed("2000", true);
    // Changes arrive until both nodes' news is in (the poll that 3001's appearance
    // triggers may answer before the TX event: order across nodes is not fixed).
    let mut seen_tx = false;
    let mut seen_3001 = false;
    while !(seen_tx && seen_3001) {
        let p = collect(&mut rx, 1).await.remove(0);
        let node = p.event.node.as_deref().expect("node");
        let link = p.event.link.as_ref().map(|l| l.node.as_str());
        match node {
            "1999" => assert!(matches!(link, Some("3001")), "{}", p.json),
            "2000" => assert!(matches!(link, Some("4000") | None), "{}", p.json),
            other => panic!("unknown node {other}"),
        }
        seen_tx |= p.event.kind == ChangeKind::TxKeyed && node == "2000";
        seen_3001 |= p.event.kind == ChangeKind::LinkConnected && link == Some("3001");
    }
    // The new link's IP and direction come from the poll its appearance triggers.
    wait_until("1999 complete", || {
        model_rows(&d, "1999") == truth_rows(&sim, "1999")
    })
    .await;
    assert_eq!(model_rows(&d, "2000"), truth_rows(&sim, "2000"));
    assert!(!d.app.state.node("1999").expect("node").tx_keyed);
    assert!(d.app.state.node("2000").expect("node").tx_keyed);
    d.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_with_500_links_is_handled() {
    let sim = sim_on_tcp(&["1999"]).await;
    for i in 0..500 {
        let dir = if i % 2 == 0 {
            Direction::In
        } else {
            Direction::Out
        };
        if i % 50 == 7 {
            sim.connect_link("1999", SimLink::echolink(format!("3{:06}", i)));
        } else {
            sim.connect_link(
                "1999",
                SimLink::allstar(
                    format!("{}", 10_000 + i),
                    format!("10.0.{}.{}", i / 250, i % 250),
                    dir,
                ),
            );
        }
    }
    let d = start_daemon(sim.addr(), &["1999"], "").await;
    wait_for_poll(&d, "1999", None).await;
    assert_eq!(d.app.state.node("1999").map(|n| n.links.len()), Some(500));
    assert_eq!(model_rows(&d, "1999"), truth_rows(&sim, "1999"));
    let mut rx = d.app.state.subscribe();
    sim.set_link_keyed("1999", "10010", true);
    let got = collect(&mut rx, 1).await;
    assert_eq!(got[0].event.kind, ChangeKind::LinkKeyed);
    d.shutdown.cancel();
}

fn polls_ok(d: &Running, node: &str) -> u64 {
    d.app.metrics.polls.with_label_values(&[node, "ok"]).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_poll_requests_is_at_most_one_poll_in_flight_and_one_queued() {
    let sim = sim_on_tcp(&["1999"]).await;
    let d = start_daemon(sim.addr(), &["1999"], "ami_actions_per_second: 1000\n").await;
    poll_and_wait(&d, "1999").await;
    let before = polls_ok(&d, "1999");
    for _ in 0..500 {
        d.app.control.poll_now("1999").expect("accepted");
    }
    // One more request after the burst is served: every burst poll is done by then.
    wait_until("the burst's polls", || {
        !d.app.control.poll_pending("1999") && polls_ok(&d, "1999") > before
    })
    .await;
    let mid = polls_ok(&d, "1999");
    d.app.control.poll_now("1999").expect("accepted");
    wait_until("the last poll", || polls_ok(&d, "1999") > mid).await;
    let polls = polls_ok(&d, "1999") - before;
    assert!(
        (2..=3).contains(&polls),
        "500 requests gave {polls} polls (want at most 2 for the burst + 1)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_past_the_per_server_budget_are_refused_with_a_clear_error() {
    let sim = sim_on_tcp(&["1999"]).await;
    let d = start_daemon(sim.addr(), &["1999"], "ami_actions_per_second: 3\n").await;
    poll_and_wait(&d, "1999").await;
    let mut refused = None;
    for _ in 0..10 {
        match d.app.control.voter_status("1999").await {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
        }
    }
    let msg = refused.expect("the budget ran out");
    assert!(
        msg.starts_with("rate limited: at most 3 actions/s to server "),
        "{msg}"
    );
    let server = d
        .app
        .control
        .servers()
        .keys()
        .next()
        .cloned()
        .expect("server");
    assert!(
        d.app
            .metrics
            .ami_actions_rate_limited
            .with_label_values(&[&server])
            .get()
            >= 1
    );
}

/// "Poll now" is a flag, not a queue: a burst before the poller wakes is one poll, and a
/// burst while a poll is in flight adds at most one more (paused time).
#[tokio::test(start_paused = true)]
async fn poll_now_is_a_flag_not_a_queue() {
    use allstar_nexus::metrics::Metrics;
    use allstar_nexus::poller::{self, ServerPollerParts};
    use tokio_util::sync::CancellationToken;

    let shutdown = CancellationToken::new();
    let (ami, _attempts, _sim, _events) =
        supervise_scripted(vec![Outcome::Sim], settings(), &shutdown);
    wait_connected(&ami, true).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let handles = poller::spawn_server(ServerPollerParts {
        nodes: vec![("1999".into(), Duration::from_secs(3600))],
        ami: ami.clone(),
        results: tx,
        metrics: Metrics::default(),
        automatic: false,
        shutdown: shutdown.clone(),
    });
    let p = &handles[0];
    let count = |rx: &mut tokio::sync::mpsc::Receiver<_>| {
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        n
    };
    for _ in 0..100 {
        p.poll_now();
    }
    // Idle for a (virtual) minute: every poll asked for has finished.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(count(&mut rx), 1, "100 requests before the poller woke");

    p.poll_now();
    while p.poll_pending() {
        tokio::task::yield_now().await;
    }
    for _ in 0..50 {
        p.poll_now();
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    let polls = count(&mut rx);
    assert!(
        (1..=2).contains(&polls),
        "51 requests around a poll in flight gave {polls} polls"
    );
    shutdown.cancel();
}

/// One task polls all of a server's nodes, each on its own schedule: two intervals side by
/// side, a changed interval taking effect at once, a resync of every node after a
/// reconnect, and skipped polls while the server is down (paused time).
#[tokio::test(start_paused = true)]
async fn a_servers_nodes_keep_their_own_schedules() {
    use allstar_nexus::metrics::Metrics;
    use allstar_nexus::poller::{self, PollResult, ServerPollerParts};
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    let shutdown = CancellationToken::new();
    // One session, then every attempt is refused: the server stays down after a drop.
    let (ami, attempts, sim, _events) = supervise_scripted(
        vec![Outcome::Sim, Outcome::Sim, Outcome::Refuse],
        settings(),
        &shutdown,
    );
    wait_connected(&ami, true).await;
    let (tx, mut rx) = mpsc::channel(1024);
    let metrics = Metrics::default();
    let handles = poller::spawn_server(ServerPollerParts {
        nodes: vec![
            ("1999".into(), Duration::from_secs(10)),
            ("2000".into(), Duration::from_secs(25)),
        ],
        ami: ami.clone(),
        results: tx,
        metrics: metrics.clone(),
        automatic: true,
        shutdown: shutdown.clone(),
    });
    let count = |rx: &mut mpsc::Receiver<PollResult>| {
        let (mut a, mut b) = (0, 0);
        while let Ok(r) = rx.try_recv() {
            match r.node.as_str() {
                "1999" => a += 1,
                "2000" => b += 1,
                other => panic!("a poll of {other}"),
            }
        }
        (a, b)
    };

    // At once, then every 10 s and every 25 s: t = 0..100 s.
    tokio::time::sleep(Duration::from_millis(100_500)).await;
    let (a, b) = count(&mut rx);
    assert!((10..=11).contains(&a), "1999 every 10 s: {a} polls");
    assert!((4..=5).contains(&b), "2000 every 25 s: {b} polls");

    // 2000's interval goes to 2 s: it does not wait out its 25 s.
    handles[1].set_interval(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let (a, b) = count(&mut rx);
    assert!(a <= 1, "1999 unchanged: {a} polls in 5.5 s");
    assert!(b >= 2, "2000 every 2 s: {b} polls in 5.5 s");

    // A reconnect: every node is polled at once, whatever its schedule.
    // (The session was stable, so the supervisor reconnects at once.)
    sim.drop_sessions();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(attempts.lock().expect("lock").len(), 2, "one reconnect");
    assert!(ami.is_connected());
    let (a, b) = count(&mut rx);
    assert!(
        a >= 1 && b >= 1,
        "both nodes resync after a reconnect: {a}, {b}"
    );

    // Down for good: polls come due and are skipped, none reaches the engine.
    sim.drop_sessions();
    wait_connected(&ami, false).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(count(&mut rx), (0, 0), "no polls while down");
    let skipped = |node: &str| metrics.polls.with_label_values(&[node, "skipped"]).get();
    assert!((2..=4).contains(&skipped("1999")), "{}", skipped("1999"));
    assert!(skipped("2000") >= 13, "{}", skipped("2000"));
    shutdown.cancel();
}
