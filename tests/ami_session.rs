//! The AMI supervisor against the app_rpt simulator: verified login, plain-worded
//! failures, the reconnect ladder and its reset, keepalive, pending actions on disconnect,
//! and ActionID matching under load.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use allstar_nexus::ami::{Action, ActionError, AmiEvent, ErrorKind};
use allstar_nexus::config::AmiSettings;
use allstar_nexus::sim::SimLink;
use allstar_nexus::state::Direction;
use common::*;
use tokio_util::sync::CancellationToken;

fn ping() -> Action {
    Action::new("Ping").expect("valid action")
}

#[tokio::test]
async fn login_is_verified_before_connected() {
    let sim = sim_on_tcp(&["1999"]).await;
    let stop = CancellationToken::new();
    let (h, _rx) = supervise_tcp(sim.addr(), settings(), &stop);
    wait_connected(&h, true).await;
    let st = h.status();
    assert!(h.is_connected());
    assert_eq!(st.banner.as_deref(), Some("Asterisk Call Manager/11.0.0"));
    let logins: Vec<_> = sim
        .recorded_actions()
        .into_iter()
        .filter(|a| a.action() == Some("Login"))
        .collect();
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0].get("Username"), Some("admin"));
    assert_eq!(logins[0].get("Events"), Some("call"));
    let reply = h.send(ping()).await.expect("ping answered");
    assert_eq!(reply.frame.get("Ping"), Some("Pong"));
    stop.cancel();
}

#[tokio::test]
async fn wrong_password_is_a_distinct_plain_error() {
    let sim = sim_on_tcp(&["1999"]).await;
    sim.set_fail_login(true);
    let stop = CancellationToken::new();
    let (h, mut rx) = supervise_tcp(sim.addr(), settings(), &stop);
    let st = tokio::time::timeout(Duration::from_secs(10), next_status(&mut rx))
        .await
        .expect("status in time")
        .expect("status");
    assert!(!st.connected);
    assert_eq!(st.last_error_kind, Some(ErrorKind::AuthFailed));
    assert_eq!(
        st.last_error.as_deref(),
        Some("authentication failed for user admin — check ami_username/ami_password")
    );
    assert!(!h.is_connected());
    assert!(matches!(
        h.send(ping()).await,
        Err(ActionError::NotConnected { .. })
    ));
    stop.cancel();
}

#[tokio::test]
async fn refused_and_unresolvable_hosts_are_told_apart() {
    let free = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = free.local_addr().expect("addr");
    drop(free);
    let stop = CancellationToken::new();
    let (_h, mut rx) = supervise_tcp(addr, settings(), &stop);
    let st = tokio::time::timeout(Duration::from_secs(10), next_status(&mut rx))
        .await
        .expect("in time")
        .expect("status");
    assert_eq!(st.last_error_kind, Some(ErrorKind::Refused), "{st:?}");
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("connection refused by 127.0.0.1:"))
    );
    stop.cancel();

    let stop = CancellationToken::new();
    let mut cfg = server(addr, &["1999"]);
    cfg.host = "no-such-host.invalid".into();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let s = AmiSettings {
        connect_timeout: Duration::from_secs(5),
        ..settings()
    };
    let _h =
        allstar_nexus::ami::connection::spawn_tcp(cfg, s, tx, Default::default(), stop.clone());
    let st = tokio::time::timeout(Duration::from_secs(15), next_status(&mut rx))
        .await
        .expect("in time")
        .expect("status");
    assert!(
        matches!(
            st.last_error_kind,
            Some(ErrorKind::HostNotFound) | Some(ErrorKind::Timeout)
        ),
        "an unresolvable host is reported as such (or as a timeout where DNS cannot answer): {st:?}"
    );
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn backoff_ladder_is_0_15_30_60_60() {
    let stop = CancellationToken::new();
    let (_h, attempts, _sim, _rx) = supervise_scripted(vec![Outcome::Refuse], settings(), &stop);
    tokio::time::sleep(Duration::from_secs(200)).await;
    assert_eq!(gaps(&attempts)[..5], [0, 15, 30, 60, 60]);
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn backoff_values_come_from_config() {
    let stop = CancellationToken::new();
    let s = AmiSettings {
        retry_interval: Duration::from_secs(2),
        retry_max: Duration::from_secs(5),
        ..settings()
    };
    let (_h, attempts, _sim, _rx) = supervise_scripted(vec![Outcome::Refuse], s, &stop);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(gaps(&attempts)[..5], [0, 2, 4, 5, 5]);
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn ladder_resets_after_a_stable_session_but_not_after_a_short_one() {
    use Outcome::*;
    // Short session: attempts 1, 2 fail, 3 connects for 5 s; the ladder goes on (30 s).
    let stop = CancellationToken::new();
    let (h, attempts, sim, _rx) =
        supervise_scripted(vec![Refuse, Refuse, Sim, Refuse], settings(), &stop);
    wait_connected(&h, true).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    sim.drop_sessions();
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(
        gaps(&attempts)[..3],
        [0, 15, 35],
        "5 s of session + 30 s wait"
    );
    stop.cancel();

    // Stable session (longer than ami_retry_max): the next retry is immediate.
    let stop = CancellationToken::new();
    let (h, attempts, sim, _rx) =
        supervise_scripted(vec![Refuse, Refuse, Sim, Refuse], settings(), &stop);
    wait_connected(&h, true).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    sim.drop_sessions();
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(
        gaps(&attempts)[..4],
        [0, 15, 120, 15],
        "reset: 0 s after the drop, then 15 s"
    );
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn stalled_peer_is_detected_within_keepalive_plus_deadline_and_recovers() {
    let stop = CancellationToken::new();
    let s = AmiSettings {
        keepalive_interval: Duration::from_secs(30),
        keepalive_timeout: Duration::from_secs(10),
        ..settings()
    };
    let (h, _attempts, sim, _rx) = supervise_scripted(vec![Outcome::Sim], s, &stop);
    wait_connected(&h, true).await;
    // A healthy idle session survives many keepalive rounds.
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(h.is_connected(), "Pings keep an idle session up");
    let stalled_at = tokio::time::Instant::now();
    sim.set_stall(true);
    wait_connected(&h, false).await;
    let detected = stalled_at.elapsed();
    assert!(
        detected <= Duration::from_secs(40) + Duration::from_millis(100),
        "detected after {detected:?}"
    );
    assert_eq!(h.status().last_error_kind, Some(ErrorKind::Keepalive));
    sim.set_stall(false);
    wait_connected(&h, true).await;
    stop.cancel();
}

#[tokio::test]
async fn actions_in_flight_fail_at_once_on_disconnect_and_are_not_resent() {
    let sim = sim_on_tcp(&["1999"]).await;
    let stop = CancellationToken::new();
    let (h, _rx) = supervise_tcp(sim.addr(), settings(), &stop);
    wait_connected(&h, true).await;
    sim.set_stall(true);
    let entered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (h, entered) = (h.clone(), entered.clone());
        tasks.push(tokio::spawn(async move {
            let fut = h.send(ping());
            entered.fetch_add(1, Ordering::SeqCst);
            let r = fut.await;
            (r, Instant::now())
        }));
    }
    while entered.load(Ordering::SeqCst) < 50 {
        tokio::task::yield_now().await;
    }
    // Let the supervisor write them (the stalled peer never answers).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let dropped_at = Instant::now();
    sim.drop_sessions();
    let mut ids = HashSet::new();
    for t in tasks {
        let (r, at) = t.await.expect("task");
        match r {
            Err(ActionError::Disconnected { reason, .. }) => assert!(!reason.is_empty()),
            other => panic!("expected a disconnect error, got {other:?}"),
        }
        assert!(
            at.duration_since(dropped_at) < Duration::from_millis(100),
            "failed {:?} after the drop",
            at - dropped_at
        );
    }
    sim.set_stall(false);
    wait_connected(&h, true).await;
    h.send(ping()).await.expect("new session works");
    for a in sim.recorded_actions() {
        if a.action() == Some("Ping") {
            assert!(
                ids.insert(a.get("ActionID").map(str::to_owned)),
                "an action was sent twice: {a:?}"
            );
        }
    }
    assert!(
        ids.len() <= 51 + 2,
        "the 50 failed actions were not re-sent ({} pings seen)",
        ids.len()
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_actions_each_reply_reaches_its_caller_with_events_interleaved() {
    let sim = sim_on_tcp(&["1999"]).await;
    sim.connect_link(
        "1999",
        SimLink::allstar("2000", "192.0.2.10", Direction::Out),
    );
    let stop = CancellationToken::new();
    let (h, mut events) = supervise_tcp(sim.addr(), settings(), &stop);
    wait_connected(&h, true).await;
    // Keep events flowing while the actions run.
    let churn = {
        let (sim, stop) = (sim.clone(), stop.clone());
        tokio::spawn(async move {
            let mut keyed = false;
            while !stop.is_cancelled() {
                keyed = !keyed;
                sim.set_link_keyed("1999", "2000", keyed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let counter = tokio::spawn(async move {
        let mut n = 0usize;
        while let Some(ev) = events.recv().await {
            if matches!(ev, AmiEvent::Event { .. }) {
                n += 1;
            }
        }
        n
    });
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(1000);
            for _ in 0..1000 {
                let r = h.send(ping()).await.expect("every action gets its reply");
                ids.push(
                    r.frame
                        .action_id()
                        .map(str::to_owned)
                        .expect("reply carries its ActionID"),
                );
            }
            ids
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        for id in t.await.expect("task") {
            assert!(all.insert(id), "duplicate ActionID");
        }
    }
    assert_eq!(all.len(), 100_000);
    stop.cancel();
    churn.await.expect("churn");
    let sent: Vec<_> = sim
        .recorded_actions()
        .into_iter()
        .filter(|a| a.action() == Some("Ping"))
        .collect();
    let unique: HashSet<_> = sent.iter().filter_map(|a| a.get("ActionID")).collect();
    assert_eq!(unique.len(), sent.len(), "no ActionID reused on the wire");
    drop(h);
    let events = tokio::time::timeout(Duration::from_secs(10), counter)
        .await
        .expect("supervisor stopped")
        .expect("counter");
    assert!(
        events > 100,
        "events were interleaved with the replies ({events})"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_a_backoff_wait_stops_at_once() {
    let stop = CancellationToken::new();
    let (h, attempts, _sim, mut events) =
        supervise_scripted(vec![Outcome::Refuse], settings(), &stop);
    // Climb to the 60 s rung, then cancel in the middle of the wait.
    tokio::time::sleep(Duration::from_secs(110)).await;
    let before = attempts.lock().expect("lock").len();
    let cancelled_at = tokio::time::Instant::now();
    stop.cancel();
    // The supervisor drops its event sender when it ends: the channel closes at once.
    while events.recv().await.is_some() {}
    assert_eq!(
        cancelled_at.elapsed(),
        Duration::ZERO,
        "no waiting out the backoff"
    );
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        attempts.lock().expect("lock").len(),
        before,
        "no attempt after shutdown"
    );
    assert!(matches!(
        h.send(ping()).await,
        Err(ActionError::NotConnected { .. })
    ));
}

/// A supervisor over TCP whose metrics the test can read.
fn supervise_tcp_with_metrics(
    addr: std::net::SocketAddr,
    settings: AmiSettings,
    stop: &CancellationToken,
) -> (
    allstar_nexus::ami::AmiHandle,
    allstar_nexus::metrics::Metrics,
    tokio::sync::mpsc::Receiver<AmiEvent>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(100_000);
    let metrics = allstar_nexus::metrics::Metrics::default();
    let h = allstar_nexus::ami::connection::spawn_tcp(
        server(addr, &["1999"]),
        settings,
        tx,
        metrics.clone(),
        stop.clone(),
    );
    (h, metrics, rx)
}

#[tokio::test]
async fn shutdown_sends_logoff_and_the_supervisor_ends() {
    let sim = sim_on_tcp(&["1999"]).await;
    let stop = CancellationToken::new();
    let (h, m, _rx) = supervise_tcp_with_metrics(sim.addr(), settings(), &stop);
    wait_connected(&h, true).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), h.stopped())
        .await
        .expect("the supervisor task ends within the grace period");
    let actions: Vec<String> = sim
        .recorded_actions()
        .iter()
        .filter_map(|a| a.action().map(str::to_owned))
        .collect();
    assert_eq!(
        actions.last().map(String::as_str),
        Some("Logoff"),
        "{actions:?}"
    );
    assert_eq!(
        m.ami_actions
            .with_label_values(&["test", "Logoff", "ok"])
            .get(),
        1
    );
}

#[tokio::test]
async fn login_follows_asterisk_back_within_two_seconds() {
    // The ladder waits 15 s after the immediate retry; the probe must beat it.
    let sim = sim_on_tcp(&["1999"]).await;
    let stop = CancellationToken::new();
    let (h, _m, _rx) = supervise_tcp_with_metrics(sim.addr(), settings(), &stop);
    wait_connected(&h, true).await;
    let mut w = h.watch_status();
    sim.pause_listener().await;
    // Barrier: the immediate retry was refused, so the supervisor is in its 15 s wait.
    tokio::time::timeout(
        Duration::from_secs(10),
        w.wait_for(|s| !s.connected && s.last_error_kind == Some(ErrorKind::Refused)),
    )
    .await
    .expect("refused in time")
    .expect("alive");
    let logins_before = sim
        .recorded_actions()
        .iter()
        .filter(|a| a.action() == Some("Login"))
        .count();
    sim.resume_listener().await.expect("listens again");
    let back = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), w.wait_for(|s| s.connected))
        .await
        .expect("reconnected")
        .expect("alive");
    let took = back.elapsed();
    eprintln!("reconnected {took:?} after the port answered again");
    assert!(took <= Duration::from_millis(2500), "{took:?}");
    let logins = sim
        .recorded_actions()
        .iter()
        .filter(|a| a.action() == Some("Login"))
        .count();
    assert_eq!(logins, logins_before + 1, "one login, no hammering");
    stop.cancel();
}

#[tokio::test]
async fn a_port_that_never_greets_gets_its_own_error() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut socks = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            socks.push(s);
        }
    });
    let stop = CancellationToken::new();
    let s = AmiSettings {
        connect_timeout: Duration::from_millis(300),
        ..settings()
    };
    let (_h, mut rx) = supervise_tcp(addr, s, &stop);
    let st = tokio::time::timeout(Duration::from_secs(10), next_status(&mut rx))
        .await
        .expect("in time")
        .expect("status");
    assert_eq!(st.last_error_kind, Some(ErrorKind::NoGreeting), "{st:?}");
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("answered but sent no AMI greeting within 0.3s")),
        "{st:?}"
    );
    stop.cancel();
    held.abort();
}

#[tokio::test]
async fn stray_replies_are_protocol_errors_and_complete_nothing() {
    let sim = sim_on_tcp(&["1999"]).await;
    let stop = CancellationToken::new();
    let (h, m, _rx) = supervise_tcp_with_metrics(sim.addr(), settings(), &stop);
    wait_connected(&h, true).await;
    sim.inject_raw(
        b"Response: Success\r\nNode: \r\n\r\nResponse: Success\r\nActionID: evil-1\r\n\r\n",
    );
    let errors = || m.ami_protocol_errors.with_label_values(&["test"]).get();
    wait_until("two protocol errors", || errors() >= 2).await;
    let reply = h.send(ping()).await.expect("the session still works");
    assert_eq!(reply.frame.get("Ping"), Some("Pong"));
    assert_eq!(errors(), 2);
    stop.cancel();
}

#[tokio::test]
async fn event_names_outside_the_fixed_set_count_as_other() {
    let sim = sim_on_tcp(&["1999"]).await;
    let stop = CancellationToken::new();
    let (h, m, _rx) = supervise_tcp_with_metrics(sim.addr(), settings(), &stop);
    wait_connected(&h, true).await;
    let mut burst = String::new();
    for i in 0..2_000 {
        burst.push_str(&format!("Event: RPT_FAKE{i}\r\nNode: 1999\r\n\r\n"));
    }
    sim.inject_raw(burst.as_bytes());
    let other = || m.ami_events.with_label_values(&["test", "other"]).get();
    wait_until("2000 events counted", || other() >= 2_000).await;
    let text = m.render();
    let series = text
        .lines()
        .filter(|l| l.starts_with("nexus_ami_events_total{"))
        .count();
    assert!(series <= 3, "{series} series:\n{text}");
    stop.cancel();
}

#[tokio::test]
async fn a_hundred_thousand_link_event_does_not_stall_the_session() {
    let sim = sim_on_tcp(&["1999"]).await;
    let stop = CancellationToken::new();
    let (h, _m, mut rx) = supervise_tcp_with_metrics(sim.addr(), settings(), &stop);
    wait_connected(&h, true).await;
    let entries: Vec<String> = (0..100_000).map(|i| format!("{}TU", 100_000 + i)).collect();
    let event = format!(
        "Event: RPT_ALINKS\r\nPrivilege: call,all\r\nNode: 1999\r\nEventValue: 100000,{}\r\n\r\n",
        entries.join(",")
    );
    sim.inject_raw(event.as_bytes());
    let started = Instant::now();
    let frame = loop {
        match rx.recv().await.expect("events flow") {
            AmiEvent::Event { frame, .. }
                if frame.event() == Some("RPT_ALINKS") && frame.len() == 4 =>
            {
                break frame;
            }
            _ => {}
        }
    };
    let parsed = allstar_nexus::rpt::parse_event(&frame);
    eprintln!(
        "100,000-link RPT_ALINKS: received and refused in {:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            parsed,
            Some(Err(allstar_nexus::rpt::RptError::TooManyLinks { .. }))
        ),
        "{parsed:?}"
    );
    let ping_at = Instant::now();
    h.send(ping()).await.expect("still answering");
    assert!(
        ping_at.elapsed() < Duration::from_secs(1),
        "{:?}",
        ping_at.elapsed()
    );
    stop.cancel();
}
