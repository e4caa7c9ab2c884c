use super::*;

fn pending(action: &str) -> (Pending, oneshot::Receiver<Result<Reply, ActionError>>) {
    let (tx, rx) = oneshot::channel();
    (
        Pending {
            tx,
            action: action.into(),
        },
        rx,
    )
}

fn book(actions: &[(&str, &str)]) -> (Book, Vec<oneshot::Receiver<Result<Reply, ActionError>>>) {
    let mut b = Book::default();
    let mut rxs = Vec::new();
    for (id, action) in actions {
        let (p, rx) = pending(action);
        b.add((*id).to_owned(), p);
        rxs.push(rx);
    }
    (b, rxs)
}

fn found(m: Match) -> Option<String> {
    match m {
        Match::Found(p) => Some(p.action),
        _ => None,
    }
}

#[test]
fn replies_match_by_action_id_only() {
    let (mut b, _rx) = book(&[
        ("nx-1", "RptStatus"),
        ("nx-2", "RptStatus"),
        ("nx-3", "Ping"),
    ]);
    let by_id = Frame::from_headers(&[("Response", "Success"), ("ActionID", "nx-2")]);
    assert_eq!(
        found(take_pending(&mut b, &by_id, 9)),
        Some("RptStatus".into())
    );
    // A reply without ActionID no longer completes the oldest request (issue 9 item 12).
    let bare = Frame::from_headers(&[("Response", "Success"), ("Node", "")]);
    assert!(matches!(
        take_pending(&mut b, &bare, 9),
        Match::Stray("reply without ActionID")
    ));
    let stray = Frame::from_headers(&[("Response", "Success"), ("ActionID", "zzz")]);
    assert!(matches!(
        take_pending(&mut b, &stray, 9),
        Match::Stray("reply with an unknown ActionID")
    ));
    // One of our own ids whose caller gave up: late, not an error.
    let late = Frame::from_headers(&[("Response", "Success"), ("ActionID", "nx-7")]);
    assert!(matches!(take_pending(&mut b, &late, 9), Match::Late));
    let future = Frame::from_headers(&[("Response", "Success"), ("ActionID", "nx-99")]);
    assert!(matches!(take_pending(&mut b, &future, 9), Match::Stray(_)));
    assert_eq!(b.pending.len(), 2, "nothing else was completed");
}

#[test]
fn bare_replies_answer_the_oldest_voter_status_or_local_nodes_only() {
    // app_rpt answers a VoterStatus that matched nothing with a bare blank line, and
    // RptLocalNodes with XML lines: neither echoes ActionID (ami-app-rpt.md §2.5, §2.6).
    let (mut b, _rx) = book(&[("nx-1", "VoterStatus"), ("nx-2", "RptStatus")]);
    assert_eq!(
        found(take_pending(&mut b, &Frame::default(), 9)),
        Some("VoterStatus".into())
    );
    assert!(matches!(
        take_pending(&mut b, &Frame::default(), 9),
        Match::Stray(_)
    ));
    assert_eq!(b.pending.len(), 1);
    let (mut b, _rx) = book(&[("nx-1", "RptLocalNodes")]);
    let mut xml = Frame::default();
    xml.push("", "<?xml version=\"1.0\"?>");
    assert_eq!(
        found(take_pending(&mut b, &xml, 9)),
        Some("RptLocalNodes".into())
    );
}

#[test]
fn errors_are_worded_for_operators() {
    let refused = ConnectError::from_io(
        std::io::ErrorKind::ConnectionRefused.into(),
        "127.0.0.1:5038",
    );
    assert_eq!(
        refused.to_string(),
        "connection refused by 127.0.0.1:5038 — is Asterisk running and is the manager enabled in manager.conf?"
    );
    assert_eq!(refused.kind(), ErrorKind::Refused);
    let auth = ConnectError::AuthFailed {
        user: "admin".into(),
    };
    assert_eq!(
        auth.to_string(),
        "authentication failed for user admin — check ami_username/ami_password"
    );
}

mod supervised {
    use super::*;
    use crate::sim::{SimConfig, SimHandle};
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// Refuses until `up_at`, then serves the simulator; probes say whether it is up.
    struct Probing {
        up_at: Instant,
        connects: Arc<AtomicU64>,
        probes: Arc<AtomicU64>,
        sim: SimHandle,
    }

    impl Connector for Probing {
        fn connect(&self) -> ConnectFuture {
            self.connects.fetch_add(1, Ordering::SeqCst);
            let up = Instant::now() >= self.up_at;
            let sim = self.sim.clone();
            Box::pin(async move {
                if !up {
                    return Err(ConnectError::Refused {
                        addr: "probing".into(),
                    });
                }
                let (client, server) = tokio::io::duplex(1 << 16);
                sim.serve_stream(server);
                Ok(Box::new(client) as Box<dyn AmiStream>)
            })
        }

        fn probe(&self) -> Option<ProbeFuture> {
            self.probes.fetch_add(1, Ordering::SeqCst);
            let up = Instant::now() >= self.up_at;
            Some(Box::pin(async move { up }))
        }
    }

    fn probing(up_at: Instant) -> (Probing, Arc<AtomicU64>, SimHandle) {
        let connects = Arc::new(AtomicU64::new(0));
        let sim = SimHandle::detached(SimConfig::default());
        let c = Probing {
            up_at,
            connects: connects.clone(),
            probes: Arc::new(AtomicU64::new(0)),
            sim: sim.clone(),
        };
        (c, connects, sim)
    }

    fn server() -> ServerConfig {
        ServerConfig {
            name: "t".into(),
            host: "127.0.0.1".into(),
            port: 5038,
            username: "admin".into(),
            password: "nexus-sim".into(),
            nodes: Vec::new(),
        }
    }

    /// The next status the supervisor published (to the engine's channel).
    async fn next_status(rx: &mut mpsc::Receiver<AmiEvent>) -> Option<ConnectionStatus> {
        loop {
            if let AmiEvent::Status(st) = rx.recv().await? {
                return Some(st);
            }
        }
    }

    fn start(
        connector: Box<dyn Connector>,
        stop: &CancellationToken,
    ) -> (AmiHandle, Metrics, mpsc::Receiver<AmiEvent>) {
        let (tx, rx) = mpsc::channel(1000);
        let metrics = Metrics::default();
        let settings = AmiSettings {
            retry_jitter: 0.0,
            ..AmiSettings::default()
        };
        let h = spawn(SupervisorParts {
            server: server(),
            settings,
            connector,
            events: tx,
            metrics: metrics.clone(),
            shutdown: stop.clone(),
        });
        (h, metrics, rx)
    }

    fn actions(m: &Metrics, action: &str, result: &str) -> u64 {
        m.ami_actions
            .with_label_values(&["t", action, result])
            .get()
    }

    #[tokio::test(start_paused = true)]
    async fn login_follows_the_port_within_two_seconds_with_no_extra_attempts() {
        let stop = CancellationToken::new();
        let t0 = Instant::now();
        let up_at = t0 + Duration::from_secs(40);
        let (c, connects, _sim) = probing(up_at);
        let (h, _m, _rx) = start(Box::new(c), &stop);
        let mut w = h.watch_status();
        w.wait_for(|s| s.connected).await.expect("supervisor alive");
        let at = Instant::now();
        assert!(
            at >= up_at && at - up_at <= Duration::from_secs(2),
            "connected {:?} after start, port up at 40 s",
            at - t0
        );
        // The ladder alone tries at 0, 0 (the immediate retry), 15 and 45 s (connected at
        // 45 s): 4 attempts. Probing replaces the last wait, it adds no attempt.
        assert_eq!(connects.load(Ordering::SeqCst), 4);
        stop.cancel();
        h.stopped().await;
    }

    #[tokio::test(start_paused = true)]
    async fn no_probing_after_a_refused_login() {
        // The port answers but the login fails: probing would hammer, so the ladder holds.
        let stop = CancellationToken::new();
        let (c, connects, sim) = probing(Instant::now());
        sim.set_fail_login(true);
        let (h, _m, _rx) = start(Box::new(c), &stop);
        tokio::time::sleep(Duration::from_secs(50)).await;
        // Attempts at 0, 1, 16+1 and 46+2 s (each failed login takes Asterisk's 1 s), as
        // the ladder alone: none earlier.
        assert_eq!(connects.load(Ordering::SeqCst), 4);
        assert_eq!(h.status().last_error_kind, Some(ErrorKind::AuthFailed));
        stop.cancel();
        h.stopped().await;
    }

    #[tokio::test]
    async fn shutdown_logs_off_and_the_task_ends() {
        let stop = CancellationToken::new();
        let (c, _connects, sim) = probing(Instant::now());
        let (h, m, _rx) = start(Box::new(c), &stop);
        h.watch_status()
            .wait_for(|s| s.connected)
            .await
            .expect("alive");
        h.send(Action::new("Ping").expect("action"))
            .await
            .expect("pong");
        assert_eq!(actions(&m, "Login", "ok"), 1);
        assert_eq!(actions(&m, "Ping", "ok"), 1);
        assert!(!h.is_stopped());
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), h.stopped())
            .await
            .expect("the supervisor ends within its grace period");
        let logoffs = sim
            .recorded_actions()
            .into_iter()
            .filter(|a| a.action() == Some("Logoff"))
            .count();
        assert_eq!(logoffs, 1, "the simulator saw the Logoff");
        assert_eq!(actions(&m, "Logoff", "ok"), 1);
        assert!(matches!(
            h.send(Action::new("Ping").expect("action")).await,
            Err(ActionError::NotConnected { .. })
        ));
        assert_eq!(actions(&m, "Ping", "not_connected"), 1);
    }

    /// A peer that says `banner` (if any) and answers Login with `reply`.
    struct Peer {
        banner: Option<String>,
        reply: String,
        held: Arc<Mutex<Vec<DuplexStream>>>,
    }

    impl Connector for Peer {
        fn connect(&self) -> ConnectFuture {
            let (client, mut server) = tokio::io::duplex(1 << 16);
            let Some(banner) = self.banner.clone() else {
                self.held
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(server);
                return Box::pin(async move { Ok(Box::new(client) as Box<dyn AmiStream>) });
            };
            let reply = self.reply.clone();
            tokio::spawn(async move {
                let _ = server.write_all(banner.as_bytes()).await;
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match server.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = server.write_all(reply.as_bytes()).await;
                // Stay open (the session is served until the test ends).
                let _ = server.read(&mut buf).await;
            });
            Box::pin(async move { Ok(Box::new(client) as Box<dyn AmiStream>) })
        }
    }

    fn peer(banner: Option<String>, reply: &str) -> Box<Peer> {
        Box::new(Peer {
            banner,
            reply: reply.to_owned(),
            held: Arc::default(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_never_greets_is_told_apart_from_a_timeout() {
        let stop = CancellationToken::new();
        let (_h, _m, mut rx) = start(peer(None, ""), &stop);
        let st = next_status(&mut rx).await.expect("status");
        assert_eq!(st.last_error_kind, Some(ErrorKind::NoGreeting), "{st:?}");
        assert_eq!(
            st.last_error.as_deref(),
            Some(
                "127.0.0.1:5038 answered but sent no AMI greeting within 10s — is this port really Asterisk's manager interface?"
            )
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn huge_banner_and_login_reply_are_clipped_and_say_so() {
        let long = format!("Asterisk Call Manager/{}\r\n", "x".repeat(10_000));
        let refused = format!(
            "Response: Error\r\nActionID: nx-login\r\nMessage: {}\r\n\r\n",
            "y".repeat(100_000)
        );
        let stop = CancellationToken::new();
        let (_h, _m, mut rx) = start(peer(Some(long.clone()), &refused), &stop);
        let st = next_status(&mut rx).await.expect("status");
        let err = st.last_error.clone().unwrap_or_default();
        assert!(
            err.len() < 400 && err.contains("[clipped: 100000 bytes in all]"),
            "{err}"
        );
        stop.cancel();

        let ok =
            "Response: Success\r\nActionID: nx-login\r\nMessage: Authentication accepted\r\n\r\n";
        let stop = CancellationToken::new();
        let (h, _m, _rx) = start(peer(Some(long), ok), &stop);
        h.watch_status()
            .wait_for(|s| s.connected)
            .await
            .expect("alive");
        let banner = h.status().banner.unwrap_or_default();
        assert!(banner.starts_with("Asterisk Call Manager/xxx"), "{banner}");
        assert!(banner.len() < 300 && banner.contains("clipped"), "{banner}");
        stop.cancel();
    }

    #[test]
    fn bad_banner_text_is_clipped() {
        let err = ConnectError::BadBanner {
            banner: shown(&"z".repeat(1_000_000)),
        };
        assert!(err.to_string().len() < 400, "{err}");
    }
}

#[test]
fn error_kinds_serialise_as_the_strings_they_replaced() {
    // The spellings `last_error_kind` had as strings, in `/api/health` and the model.
    let before = [
        (ErrorKind::Refused, "refused"),
        (ErrorKind::Timeout, "timeout"),
        (ErrorKind::NoGreeting, "no_greeting"),
        (ErrorKind::HostNotFound, "host_not_found"),
        (ErrorKind::AuthFailed, "auth_failed"),
        (ErrorKind::Protocol, "protocol"),
        (ErrorKind::Login, "login"),
        (ErrorKind::Closed, "closed"),
        (ErrorKind::Keepalive, "keepalive"),
        (ErrorKind::Io, "io"),
        (ErrorKind::Shutdown, "shutdown"),
        (ErrorKind::NotConfigured, "not_configured"),
    ];
    for (kind, text) in before {
        assert_eq!(
            serde_json::to_string(&kind).expect("json"),
            format!("\"{text}\"")
        );
        assert_eq!(kind.as_str(), text);
    }
    let st = ConnectionStatus {
        server: "s".into(),
        host: "h:5038".into(),
        connected: false,
        since_ms: 1,
        reconnect_attempts: 0,
        last_error: Some(ConnectError::Closed.to_string()),
        last_error_kind: Some(ConnectError::Closed.kind()),
        banner: None,
    };
    let v = serde_json::to_value(&st).expect("json");
    assert_eq!(v["last_error_kind"], "closed");
}
