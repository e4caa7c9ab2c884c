//! End-to-end tests of link control (issue 10): the daemon against the app_rpt simulator
//! over TCP, real HTTP requests. The simulator records every action it receives, which
//! proves that refused requests never reached AMI.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use allstar_nexus::auth::{hex, password, sha256};
use common::*;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-0123456789";
const CONTROL: &str = "control-token-0123456789";
const READ: &str = "read-token-0123456789abc";
const ONLY_2000: &str = "node2000-token-0123456789";
const ALICE_PW: &str = "alice-password-1";

/// The two-node rig and the daemon's state folder.
struct T {
    rig: TwoNodes,
    dir: PathBuf,
}

impl std::ops::Deref for T {
    type Target = TwoNodes;
    fn deref(&self) -> &TwoNodes {
        &self.rig
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "nexus-control-{name}-{}-{}",
        std::process::id(),
        allstar_nexus::observe::now_ms()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Tokens for every role, a node-restricted token and a user, plus `extra` YAML.
fn auth_yaml(dir: &std::path::Path, extra: &str) -> String {
    let hash = password::hash(ALICE_PW).expect("hash");
    format!(
        "state_dir: {}\napi_tokens:\n  - {{name: root, token: {ADMIN}, role: admin}}\n  \
         - {{name: op, token: \"sha256:{}\", role: control}}\n  - {{name: viewer, token: {READ}, role: read}}\n  \
         - {{name: op2000, token: {ONLY_2000}, role: control, nodes: [2000]}}\n\
         users:\n  - {{name: alice, password_hash: '{hash}', role: control}}\n{extra}",
        dir.display(),
        hex(&sha256(CONTROL.as_bytes()))
    )
}

async fn setup_with(dir: PathBuf, yaml: &str) -> T {
    T {
        rig: TwoNodes::start(yaml).await,
        dir,
    }
}

async fn setup(name: &str, extra: &str) -> T {
    let dir = temp_dir(name);
    let yaml = auth_yaml(
        &dir,
        &format!("control:\n  verify_timeout: 3s\n  rate_limit_per_minute: 100\n{extra}"),
    );
    setup_with(dir, &yaml).await
}

impl T {
    /// `rpt cmd … ilink …` commands the simulator received.
    fn ilinks(&self) -> Vec<String> {
        ilinks(&self.sim)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut r = self.http.request(method, self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r.send().await.expect("request");
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            headers,
        )
    }

    async fn connect(&self, node: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        let (s, v, _) = self
            .send(
                reqwest::Method::POST,
                &format!("/api/nodes/{node}/links"),
                token,
                Some(body),
            )
            .await;
        (s, v)
    }

    async fn audit(&self, query: &str) -> Vec<Value> {
        let v = self.audit_page(query).await;
        v["entries"].as_array().cloned().unwrap_or_default()
    }

    /// One page of `GET /api/audit` as an admin (entries and `next_cursor`).
    async fn audit_page(&self, query: &str) -> Value {
        let (s, v, _) = self
            .send(
                reqwest::Method::GET,
                &format!("/api/audit{query}"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }
}

#[tokio::test]
async fn without_credentials_configured_control_is_403_and_reads_stay_open() {
    let dir = temp_dir("off");
    let t = setup_with(dir.clone(), &format!("state_dir: {}\n", dir.display())).await;
    let (s, v) = t.connect("1999", None, json!({"target": "2003"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("api_tokens"),
        "{v}"
    );
    let (s, v, _) = t
        .send(reqwest::Method::GET, "/api/session", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["authenticated"], false);
    assert_eq!(v["control_enabled"], false);
    assert_eq!(v["login_available"], false);
    t.sim.connect_link(
        "1999",
        allstar_nexus::sim::SimLink::allstar(
            "2100",
            "203.0.113.9",
            allstar_nexus::state::Direction::Out,
        ),
    );
    t.d.app.control.poll_now("1999").expect("poll");
    wait_until("link seen", || {
        t.d.app.state.node("1999").is_some_and(|n| {
            n.links
                .iter()
                .any(|l| l.ip.as_deref() == Some("203.0.113.9"))
        })
    })
    .await;
    let (s, v, _) = t
        .send(reqwest::Method::GET, "/api/nodes/1999", None, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        v.to_string().contains("203.0.113.9"),
        "unmasked when auth is off: {v}"
    );
    assert!(t.ilinks().is_empty());
}

#[tokio::test]
async fn each_role_and_refusal_is_audited_and_reaches_nothing() {
    let t = setup("roles", "").await;
    let body = json!({"target": "2003", "mode": "transceive"});
    let cases: [(&str, Option<&str>, StatusCode); 5] = [
        ("1999", None, StatusCode::UNAUTHORIZED),
        (
            "1999",
            Some("wrong-token-0123456789"),
            StatusCode::UNAUTHORIZED,
        ),
        ("1999", Some(READ), StatusCode::FORBIDDEN),
        ("1999", Some(ONLY_2000), StatusCode::FORBIDDEN),
        ("9999", Some(ADMIN), StatusCode::NOT_FOUND),
    ];
    for (node, token, want) in cases {
        let (s, v) = t.connect(node, token, body.clone()).await;
        assert_eq!(s, want, "{node} {token:?}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    let (s, v, _) = t
        .send(
            reqwest::Method::DELETE,
            "/api/nodes/1999/links",
            Some(READ),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        t.ilinks().is_empty(),
        "refusals reached AMI: {:?}",
        t.ilinks()
    );
    let refused = t.audit("?result=refused").await;
    assert_eq!(refused.len(), 6, "{refused:?}");
    let names: Vec<&str> = refused
        .iter()
        .filter_map(|e| e["identity"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "anonymous",
            "anonymous",
            "viewer",
            "op2000",
            "root",
            "viewer"
        ]
    );
    let statuses: Vec<u64> = refused
        .iter()
        .filter_map(|e| e["status"].as_u64())
        .collect();
    assert_eq!(statuses, [401, 401, 403, 403, 404, 403]);
    let text = serde_json::to_string(&refused).expect("json");
    for secret in [ADMIN, CONTROL, READ, ONLY_2000, "wrong-token-0123456789"] {
        assert!(!text.contains(secret), "a secret reached the audit");
    }
    // The node-restricted token may act on its own node; control may too.
    let (s, v) = t.connect("2000", Some(ONLY_2000), body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v, _) = t
        .send(reqwest::Method::GET, "/api/audit", Some(CONTROL), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "audit is admin only: {v}");
    let metrics = t
        .http
        .get(t.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("nexus_control_actions_total{action=\"connect\",result=\"refused\"} 5"),
        "{metrics}"
    );
}

#[tokio::test]
async fn injections_in_every_field_are_400_and_reach_nothing() {
    let t = setup("inject", "").await;
    let targets = [
        "2003\r\nAction: Logoff",
        "2003;ls",
        "2003\n",
        " 2003",
        "20 03",
        "",
        "abc",
        "12345678",
    ];
    for target in targets {
        let (s, v) = t
            .connect("1999", Some(ADMIN), json!({"target": target}))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{target:?}: {v}");
        assert!(v["error"].as_str().unwrap_or("").contains("target"), "{v}");
    }
    for mode in ["transceive\r\n", "monitor;", "T"] {
        let (s, v) = t
            .connect("1999", Some(ADMIN), json!({"target": "2003", "mode": mode}))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{mode:?}: {v}");
        assert!(v["error"].as_str().unwrap_or("").contains("mode"), "{v}");
    }
    for node in ["1999%0D%0AAction:%20Logoff", "1999;x", "1999%0A", "19%2099"] {
        let (s, v) = t
            .connect(node, Some(ADMIN), json!({"target": "2003"}))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{node:?}: {v}");
        let (s, v, _) = t
            .send(
                reqwest::Method::DELETE,
                &format!("/api/nodes/{node}/links"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{node:?}: {v}");
    }
    for target in ["2003%0D%0A", "2003;6", "2003%20"] {
        let (s, v, _) = t
            .send(
                reqwest::Method::DELETE,
                &format!("/api/nodes/1999/links/{target}"),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{target:?}: {v}");
    }
    let (s, _) = t
        .connect("1999", Some(ADMIN), json!({"target": "2003", "extra": "x"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        t.ilinks().is_empty(),
        "injections reached AMI: {:?}",
        t.ilinks()
    );
    let audit = t.audit("?result=refused&limit=1000").await;
    assert!(audit.len() >= 20, "{}", audit.len());
    // History is on: the entries are rows of its database (injected text kept as data).
    assert!(!t.dir.join("audit.jsonl").exists());
    let rows = audit_rows(
        &t.dir,
        "SELECT COUNT(*) FROM audit WHERE result = 'refused'",
    );
    assert_eq!(rows, audit.len() as i64);
}

/// One number from the history database in `dir` (read-only, beside the running daemon).
fn audit_rows(dir: &std::path::Path, sql: &str) -> i64 {
    let db = rusqlite::Connection::open_with_flags(
        dir.join("history.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("history database");
    db.query_row(sql, [], |r| r.get(0)).expect("query")
}

#[tokio::test]
async fn verified_connect_mode_change_permanent_disconnect_and_idempotence() {
    let t = setup("verify", "").await;
    let (s, v) = t
        .connect("1999", Some(CONTROL), json!({"target": "2003"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["result"], "verified", "{v}");
    assert_eq!(v["action"], "connect");
    assert_eq!(v["mode"], "transceive");
    assert_eq!(v["link"]["node"], "2003");
    assert_eq!(v["link"]["mode"], "T");
    assert_eq!(t.ilinks(), ["rpt cmd 1999 ilink 3 2003"]);

    let (s, v) = t
        .connect(
            "1999",
            Some(CONTROL),
            json!({"target": 2003, "mode": "transceive"}),
        )
        .await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::OK, Some("already")),
        "{v}"
    );
    assert_eq!(t.ilinks().len(), 1, "an idempotent repeat sends nothing");

    let (s, v) = t
        .connect(
            "1999",
            Some(CONTROL),
            json!({"target": "2003", "mode": "monitor"}),
        )
        .await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::OK, Some("verified")),
        "{v}"
    );
    assert_eq!(v["link"]["mode"], "R");
    let (s, v) = t
        .connect(
            "1999",
            Some(CONTROL),
            json!({"target": "2003", "mode": "monitor", "permanent": true}),
        )
        .await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::OK, Some("verified")),
        "{v}"
    );
    assert_eq!(v["permanent"], true);
    let (s, v) = t
        .connect(
            "1999",
            Some(CONTROL),
            json!({"target": "2004", "mode": "local_monitor"}),
        )
        .await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::OK, Some("verified")),
        "{v}"
    );
    assert_eq!(v["link"]["mode"], "L");

    let (s, v, _) = t
        .send(
            reqwest::Method::DELETE,
            "/api/nodes/1999/links/2003",
            Some(CONTROL),
            None,
        )
        .await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::OK, Some("verified")),
        "{v}"
    );
    assert!(v["link"].is_null(), "{v}");
    let (s, v, _) = t
        .send(
            reqwest::Method::DELETE,
            "/api/nodes/1999/links/2003",
            Some(CONTROL),
            None,
        )
        .await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::OK, Some("already")),
        "{v}"
    );

    let (s, v, _) = t
        .send(
            reqwest::Method::DELETE,
            "/api/nodes/1999/links",
            Some(CONTROL),
            None,
        )
        .await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::OK, Some("verified")),
        "{v}"
    );
    assert_eq!(v["action"], "disconnect_all");
    let (s, v, _) = t
        .send(
            reqwest::Method::DELETE,
            "/api/nodes/1999/links",
            Some(CONTROL),
            None,
        )
        .await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::OK, Some("already")),
        "{v}"
    );
    assert_eq!(
        t.ilinks(),
        [
            "rpt cmd 1999 ilink 3 2003",
            "rpt cmd 1999 ilink 2 2003",
            "rpt cmd 1999 ilink 12 2003",
            "rpt cmd 1999 ilink 8 2004",
            "rpt cmd 1999 ilink 11 2003",
            "rpt cmd 1999 ilink 6",
        ]
    );
    let audit = t.audit("?identity=op").await;
    let results: Vec<&str> = audit.iter().filter_map(|e| e["result"].as_str()).collect();
    assert_eq!(
        results,
        [
            "verified", "already", "verified", "verified", "verified", "verified", "already",
            "verified", "already"
        ]
    );
    assert!(
        audit.iter().all(|e| e["source"] == "127.0.0.1"),
        "{audit:?}"
    );
}

#[tokio::test]
async fn a_link_that_never_appears_ends_unverified_in_time() {
    let dir = temp_dir("unverified");
    let yaml = auth_yaml(&dir, "control:\n  verify_timeout: 1s\n");
    let t = setup_with(dir, &yaml).await;
    // app_rpt (and the simulator) ignore a node linking to itself: the link never shows.
    let started = Instant::now();
    let (s, v) = t
        .connect("1999", Some(ADMIN), json!({"target": "1999"}))
        .await;
    let took = started.elapsed();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["result"], "unverified", "{v}");
    assert!(
        v["detail"].as_str().unwrap_or("").contains("no link 1999"),
        "{v}"
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(t.ilinks(), ["rpt cmd 1999 ilink 3 1999"]);
    assert_eq!(t.audit("?result=unverified").await.len(), 1);
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after() {
    let dir = temp_dir("rate");
    let yaml = auth_yaml(&dir, "control:\n  rate_limit_per_minute: 2\n");
    let t = setup_with(dir, &yaml).await;
    let (s, _) = t
        .connect("1999", Some(CONTROL), json!({"target": "2003"}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = t
        .send(
            reqwest::Method::DELETE,
            "/api/nodes/1999/links/2003",
            Some(CONTROL),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v, h) = t
        .send(
            reqwest::Method::POST,
            "/api/nodes/1999/links",
            Some(CONTROL),
            Some(json!({"target": "2003"})),
        )
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    let retry: u64 = h
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(t.ilinks().len(), 2, "the refused one sent nothing");
    // Another identity has its own budget.
    let (s, _) = t
        .connect("1999", Some(ADMIN), json!({"target": "2003"}))
        .await;
    assert_eq!(s, StatusCode::OK);
}

async fn login(t: &T, name: &str, pw: &str) -> reqwest::Response {
    t.http
        .post(t.url("/api/login"))
        .json(&json!({"name": name, "password": pw}))
        .send()
        .await
        .expect("login")
}

#[tokio::test]
async fn cookie_login_needs_csrf_and_origin() {
    let t = setup("cookie", "").await;
    let res = login(&t, "alice", "not-her-password").await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = login(&t, "alice", ALICE_PW).await;
    assert_eq!(res.status(), StatusCode::OK);
    let cookie = res
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Path=/"),
        "{cookie}"
    );
    let v: Value = res.json().await.expect("json");
    assert_eq!(
        (v["name"].as_str(), v["role"].as_str()),
        (Some("alice"), Some("control"))
    );
    let csrf = v["csrf_token"].as_str().expect("csrf").to_owned();
    let session = cookie.split(';').next().expect("pair").to_owned();
    let origin = format!("http://{}", t.d.http_addr);

    let s: Value = t
        .http
        .get(t.url("/api/session"))
        .header("cookie", &session)
        .send()
        .await
        .expect("s")
        .json()
        .await
        .expect("j");
    assert_eq!(
        (s["authenticated"].as_bool(), s["csrf_token"].as_str()),
        (Some(true), Some(csrf.as_str()))
    );
    assert_eq!(s["login_available"], true);
    assert_eq!(s["control_enabled"], true);

    let post = |csrf: Option<&str>, origin: Option<&str>| {
        let mut r = t
            .http
            .post(t.url("/api/nodes/1999/links"))
            .header("cookie", &session)
            .json(&json!({"target": "2003"}));
        if let Some(c) = csrf {
            r = r.header("x-csrf-token", c);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    for (c, o) in [
        (None, Some(origin.as_str())),
        (Some("bad"), Some(origin.as_str())),
        (Some(csrf.as_str()), None),
        (Some(csrf.as_str()), Some("http://evil.example")),
    ] {
        let res = post(c, o).await.expect("post");
        assert_eq!(
            res.status(),
            StatusCode::FORBIDDEN,
            "csrf {c:?} origin {o:?}"
        );
    }
    assert!(t.ilinks().is_empty());
    let res = post(Some(&csrf), Some(&origin)).await.expect("post");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(t.ilinks().len(), 1);

    let res = t
        .http
        .post(t.url("/api/logout"))
        .header("cookie", &session)
        .header("x-csrf-token", &csrf)
        .header("origin", &origin)
        .send()
        .await
        .expect("logout");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let s: Value = t
        .http
        .get(t.url("/api/session"))
        .header("cookie", &session)
        .send()
        .await
        .expect("s")
        .json()
        .await
        .expect("j");
    assert_eq!(s["authenticated"], false);
    let logins = t.audit("?action=login").await;
    let results: Vec<&str> = logins.iter().filter_map(|e| e["result"].as_str()).collect();
    assert_eq!(results, ["refused", "ok"]);
}

#[tokio::test]
async fn repeated_failed_logins_lock_the_address_out() {
    let dir = temp_dir("lockout");
    let yaml = auth_yaml(
        &dir,
        "control:\n  login_slowdown_after: 10\n  login_lockout_after: 3\n  login_lockout: 10m\n",
    );
    let t = setup_with(dir, &yaml).await;
    for _ in 0..3 {
        assert_eq!(
            login(&t, "alice", "wrong").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let res = login(&t, "alice", ALICE_PW).await;
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits"
    );
    let retry: u64 = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(retry > 500 && retry <= 600, "{retry}");
    assert_eq!(t.audit("?action=login&result=refused").await.len(), 4);
}

#[tokio::test]
async fn reads_can_require_a_credential_and_ips_are_masked_below_control() {
    let t = setup("reads", "anonymous_read: false\n").await;
    t.sim.connect_link(
        "1999",
        allstar_nexus::sim::SimLink::allstar(
            "2100",
            "203.0.113.9",
            allstar_nexus::state::Direction::Out,
        ),
    );
    t.d.app.control.poll_now("1999").expect("poll");
    wait_until("link seen", || {
        t.d.app.state.node("1999").is_some_and(|n| {
            n.links
                .iter()
                .any(|l| l.ip.as_deref() == Some("203.0.113.9"))
        })
    })
    .await;
    for path in ["/api/nodes", "/api/dashboard"] {
        let (s, _, _) = t.send(reqwest::Method::GET, path, None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
    }
    let (s, _, _) = t
        .send(
            reqwest::Method::GET,
            "/api/nodes",
            Some("bogus-token-0123456789"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = t
        .send(reqwest::Method::GET, "/api/health", None, None)
        .await;
    assert_eq!(s, StatusCode::OK, "health stays open");
    for path in ["/api/nodes", "/api/nodes/1999"] {
        let (s, v, _) = t.send(reqwest::Method::GET, path, Some(READ), None).await;
        assert_eq!(s, StatusCode::OK);
        let text = v.to_string();
        assert!(
            !text.contains("203.0.113.9") && text.contains("203.0.x.x"),
            "{text}"
        );
        let (_, v, _) = t
            .send(reqwest::Method::GET, path, Some(CONTROL), None)
            .await;
        assert!(v.to_string().contains("203.0.113.9"), "control sees IPs");
    }
    // The WebSocket snapshot follows the same rule as REST.
    for (token, sees) in [(READ, false), (CONTROL, true)] {
        let url = format!("ws://{}/ws?token={token}", t.d.http_addr);
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws handshake");
        let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("snapshot in time")
            .expect("a frame")
            .expect("frame ok");
        let text = first.into_text().expect("text frame").to_string();
        assert!(text.contains("\"snapshot\""), "{text}");
        assert_eq!(text.contains("203.0.113.9"), sees, "{text}");
        assert_eq!(text.contains("203.0.x.x"), !sees, "{text}");
    }
}

#[tokio::test]
async fn audit_entries_survive_a_restart() {
    let dir = temp_dir("restart");
    let yaml = auth_yaml(&dir, "");
    {
        let t = setup_with(dir.clone(), &yaml).await;
        let (s, v) = t
            .connect("1999", Some(CONTROL), json!({"target": "2003"}))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let t = setup_with(dir, &yaml).await;
    let entries = t.audit("?action=connect").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["identity"], "op");
    assert_eq!(entries[0]["target"], "2003");
    assert_eq!(entries[0]["result"], "verified");
}

#[tokio::test]
async fn lua_control_is_audited_under_the_script_name() {
    let dir = temp_dir("lua");
    let scripts = dir.join("scripts");
    std::fs::create_dir_all(&scripts).expect("dir");
    std::fs::write(
        scripts.join("ctl.lua"),
        "got = {}\n\
         function go() nexus.connect(1999, 2005, {mode = 'monitor'}, function(r) got.first = r end) end\n\
         function bad() nexus.disconnect(1999, '2005;6') end\n\
         function on_control_result(r) got.event = r end\n\
         function result() return got end\n",
    )
    .expect("script");
    let sim = sim_on_tcp(&["1999", "2000"]).await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nami_host: 127.0.0.1\nami_port: {}\nami_username: admin\nami_password: {SECRET}\n\
         astdb_path: /nonexistent/astdb.txt\nscript_dirs: [{}]\nnodes:\n  - node_id: 1999\n  - node_id: 2000\n{}",
        sim.addr().port(),
        scripts.display(),
        auth_yaml(&dir, "")
    );
    let config = allstar_nexus::config::Config::parse(&yaml, "test", None).expect("valid");
    let d = allstar_nexus::daemon::start(config, tokio_util::sync::CancellationToken::new())
        .await
        .expect("daemon starts");
    wait_until("node polled", || {
        d.app
            .state
            .node("1999")
            .is_some_and(|v| v.last_poll.is_some())
    })
    .await;
    let t = T {
        rig: TwoNodes {
            sim,
            d,
            http: reqwest::Client::new(),
        },
        dir,
    };
    assert!(
        t.d.scripts
            .wait_until(Duration::from_secs(10), |h| h.version("ctl.lua").is_some())
            .await
    );
    t.d.scripts.call("ctl.lua", "go", vec![]).await.expect("go");
    t.d.scripts
        .call("ctl.lua", "bad", vec![])
        .await
        .expect("bad");
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got =
            t.d.scripts
                .call("ctl.lua", "result", vec![])
                .await
                .expect("result");
        if got["first"].is_object() && got["event"].is_object() {
            break got;
        }
        assert!(Instant::now() < deadline, "no results: {got}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(got["first"]["result"], "verified", "{got}");
    assert_eq!(got["first"]["link"]["mode"], "R", "{got}");
    assert_eq!(got["event"]["ok"], false, "{got}");
    assert_eq!(got["event"]["status"], 400, "{got}");
    assert_eq!(t.ilinks(), ["rpt cmd 1999 ilink 2 2005"]);
    let audit = t.audit("?identity=script:ctl.lua").await;
    // The refusal is written at once, the connect when its verification ends: either
    // order is right, so compare them as a set.
    let mut results: Vec<&str> = audit.iter().filter_map(|e| e["result"].as_str()).collect();
    results.sort_unstable();
    assert_eq!(results, ["refused", "verified"]);
    assert!(audit.iter().all(|e| e["via"] == "script"));
}

#[tokio::test]
async fn refusals_and_logins_are_in_the_history_store_before_the_answer() {
    let dir = temp_dir("store");
    let yaml = auth_yaml(&dir, "control:\n  rate_limit_per_minute: 1\n");
    let t = setup_with(dir, &yaml).await;
    let rows = || audit_rows(&t.dir, "SELECT COUNT(*) FROM audit");
    let body = json!({"target": "2003"});
    let steps: [(Option<&str>, Value, StatusCode); 5] = [
        (None, body.clone(), StatusCode::UNAUTHORIZED),
        (Some(READ), body.clone(), StatusCode::FORBIDDEN),
        (
            Some(CONTROL),
            json!({"target": "20;03"}),
            StatusCode::BAD_REQUEST,
        ),
        (Some(CONTROL), body.clone(), StatusCode::OK),
        (
            Some(CONTROL),
            json!({"target": "2004"}),
            StatusCode::TOO_MANY_REQUESTS,
        ),
    ];
    for (i, (token, body, want)) in steps.into_iter().enumerate() {
        let (s, v) = t.connect("1999", token, body).await;
        assert_eq!(s, want, "{v}");
        // Committed when the answer arrives (read from another connection, at once).
        assert_eq!(rows(), i as i64 + 1, "step {i}");
    }
    let logins = [
        (
            json!({"name": "alice", "password": "wrong"}),
            StatusCode::UNAUTHORIZED,
        ),
        (
            json!({"name": "alice", "password": ALICE_PW}),
            StatusCode::OK,
        ),
        (json!({"name": "alice"}), StatusCode::BAD_REQUEST),
    ];
    for (i, (body, want)) in logins.into_iter().enumerate() {
        let res = t
            .http
            .post(t.url("/api/login"))
            .json(&body)
            .send()
            .await
            .expect("login");
        assert_eq!(res.status(), want);
        assert_eq!(rows(), i as i64 + 6, "login {i}");
    }
    assert!(
        !t.dir.join("audit.jsonl").exists(),
        "no file beside the store"
    );
    let all = t.audit("").await;
    let statuses: Vec<u64> = all.iter().filter_map(|e| e["status"].as_u64()).collect();
    assert_eq!(statuses, [401, 403, 400, 200, 429, 401, 200, 400]);
    let actions: Vec<&str> = all.iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions[..5], ["connect"; 5]);
    assert_eq!(actions[5..], ["login"; 3]);
    // The fields the JSON Lines file had, plus `id`.
    let ok = &all[3];
    for field in [
        "time_ms",
        "time",
        "identity",
        "via",
        "source",
        "action",
        "node",
        "target",
        "mode",
        "permanent",
        "result",
        "status",
        "detail",
        "id",
    ] {
        assert!(!ok[field].is_null(), "{field} missing in {ok}");
    }
    assert_eq!(
        (ok["identity"].as_str(), ok["result"].as_str()),
        (Some("op"), Some("verified"))
    );
    // Pages of three, walking back: every entry once.
    let mut ids = Vec::new();
    let mut query = "?limit=3".to_owned();
    loop {
        let v = t.audit_page(&query).await;
        let mut page: Vec<i64> = v["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter_map(|e| e["id"].as_i64())
            .collect();
        page.extend(ids);
        ids = page;
        match v["next_cursor"].as_str() {
            Some(c) => query = format!("?limit=3&cursor={c}"),
            None => break,
        }
    }
    let want: Vec<i64> = all.iter().filter_map(|e| e["id"].as_i64()).collect();
    assert_eq!(ids, want);
}

#[tokio::test]
async fn an_audit_file_from_a_run_without_history_is_imported_at_the_next_start() {
    let dir = temp_dir("upgrade");
    {
        let yaml = auth_yaml(&dir, "history:\n  enabled: false\n");
        let t = setup_with(dir.clone(), &yaml).await;
        let (s, _) = t.connect("1999", None, json!({"target": "2003"})).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, v) = t
            .connect("1999", Some(CONTROL), json!({"target": "2003"}))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v, _) = t
            .send(
                reqwest::Method::GET,
                "/api/audit?cursor=5",
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "paging needs the store: {v}");
        assert!(dir.join("audit.jsonl").exists());
        assert!(!dir.join("history.db").exists());
    }
    let t = setup_with(dir.clone(), &auth_yaml(&dir, "")).await;
    assert!(!dir.join("audit.jsonl").exists(), "moved aside");
    assert!(
        dir.join("audit.jsonl.imported").exists(),
        "kept as an archive"
    );
    let (s, _, _) = t
        .send(
            reqwest::Method::DELETE,
            "/api/nodes/1999/links/2003",
            Some(CONTROL),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let entries = t.audit("").await;
    let got: Vec<(&str, &str)> = entries
        .iter()
        .filter_map(|e| Some((e["identity"].as_str()?, e["action"].as_str()?)))
        .collect();
    assert_eq!(
        got,
        [
            ("anonymous", "connect"),
            ("op", "connect"),
            ("op", "disconnect")
        ]
    );
    assert_eq!(audit_rows(&dir, "SELECT COUNT(*) FROM audit"), 3);
}

/// The next text frame of a WebSocket, as JSON.
async fn next_json<S>(ws: &mut S) -> Value
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame ok");
        if let Ok(text) = m.into_text() {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                return v;
            }
        }
    }
}

#[tokio::test]
async fn admins_get_a_control_message_on_the_websocket_and_others_do_not() {
    use futures_util::SinkExt;
    let t = setup("ws", "").await;
    let open = |token: &str| {
        let url = format!("ws://{}/ws?token={token}", t.d.http_addr);
        async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .expect("ws handshake");
            assert_eq!(next_json(&mut ws).await["type"], "snapshot");
            ws
        }
    };
    let mut admin = open(ADMIN).await;
    let mut op = open(CONTROL).await;
    let (s, v) = t
        .connect(
            "1999",
            Some(CONTROL),
            json!({"target": "2003", "mode": "monitor"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = t
        .connect("1999", Some(READ), json!({"target": "2003"}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let mut controls = Vec::new();
    while controls.len() < 2 {
        let v = next_json(&mut admin).await;
        if v["type"] == "control" {
            controls.push(v);
        }
    }
    let c = &controls[0];
    assert_eq!(
        (
            c["identity"].as_str(),
            c["action"].as_str(),
            c["node"].as_str(),
            c["target"].as_str(),
            c["mode"].as_str(),
            c["result"].as_str(),
            c["status"].as_u64()
        ),
        (
            Some("op"),
            Some("connect"),
            Some("1999"),
            Some("2003"),
            Some("monitor"),
            Some("verified"),
            Some(200)
        ),
        "{c}"
    );
    assert!(
        c["seq"].is_u64() && c["epoch"].is_string() && c["time"].is_string(),
        "{c}"
    );
    assert_eq!(
        (
            controls[1]["identity"].as_str(),
            controls[1]["result"].as_str(),
            controls[1]["status"].as_u64()
        ),
        (Some("viewer"), Some("refused"), Some(403))
    );
    // The control-role client gets everything else, but no control message.
    op.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"type":"ping"}"#,
    ))
    .await
    .expect("ping");
    loop {
        let v = next_json(&mut op).await;
        assert_ne!(v["type"], "control", "a non-admin got {v}");
        if v["type"] == "pong" {
            break;
        }
    }
}
