//! End-to-end tests of who may read what (issue 10, part A): node limits (`nodes:` on a
//! token) on every read surface, the bearer header on the WebSocket handshake, IP masking
//! for anonymous readers under the default configuration (REST, link history, WebSocket
//! event frames), and the CSRF check on `/api/logout`. The daemon runs against the app_rpt
//! simulator over TCP.

mod common;

use std::time::Duration;

use allstar_nexus::alerts::{AlertRequest, Severity};
use allstar_nexus::auth::password;
use allstar_nexus::sim::SimLink;
use allstar_nexus::state::Direction;
use common::*;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ADMIN: &str = "admin-token-0123456789";
const CONTROL: &str = "control-token-0123456789";
const READ: &str = "read-token-0123456789abc";
const READ_2000: &str = "read2000-token-0123456789";
const ALICE_PW: &str = "alice-password-1";

/// The simulator and the daemon; both stop when it is dropped.
type T = TwoNodes;

/// Nodes 1999 and 2000 on one simulated server, a token per role, a `read` token limited
/// to node 2000 and a user; reads stay anonymous (`anonymous_read` is left at its default).
async fn setup() -> T {
    let hash = password::hash(ALICE_PW).expect("hash");
    let yaml = format!(
        "api_tokens:\n  - {{name: root, token: {ADMIN}, role: admin}}\n  \
         - {{name: op, token: {CONTROL}, role: control}}\n  \
         - {{name: viewer, token: {READ}, role: read}}\n  \
         - {{name: v2000, token: {READ_2000}, role: read, nodes: [2000]}}\n\
         users:\n  - {{name: alice, password_hash: '{hash}', role: control}}\n"
    );
    TwoNodes::start(&yaml).await
}

impl T {
    /// `GET path` with an optional bearer token: the status and the JSON body (or the
    /// text as a JSON string when it is not JSON).
    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut r = self.http.get(self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let res = r.send().await.expect("request");
        let status = res.status();
        let text = res.text().await.expect("body");
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    /// Connects link `link` (at `ip`) to `node` in the simulator and waits until the
    /// daemon shows it with its IP (the poll fills the IP in).
    async fn link(&self, node: &str, link: &str, ip: &str) {
        self.sim
            .connect_link(node, SimLink::allstar(link, ip, Direction::Out));
        wait_until("the link seen", || {
            self.d
                .app
                .state
                .node(node)
                .is_some_and(|n| n.links.iter().any(|l| l.node == link))
        })
        .await;
        self.d.app.control.poll_now(node).expect("poll");
        wait_until("the link's IP seen", || {
            self.d.app.state.node(node).is_some_and(|n| {
                n.links
                    .iter()
                    .any(|l| l.node == link && l.ip.as_deref() == Some(ip))
            })
        })
        .await;
    }

    /// Waits until `GET path` as the admin satisfies `cond`.
    async fn wait_admin(&self, what: &str, path: &str, cond: impl Fn(&Value) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (s, v) = self.get(path, Some(ADMIN)).await;
            if s == StatusCode::OK && cond(&v) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Opens `/ws{query}`, with `Authorization: Bearer` when a token is given; `Err` is
    /// the handshake's HTTP status.
    async fn ws(&self, query: &str, token: Option<&str>) -> Result<Ws, u16> {
        let mut req = format!("ws://{}/ws{query}", self.d.http_addr)
            .into_client_request()
            .expect("request");
        if let Some(t) = token {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("header"),
            );
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
            Err(e) => panic!("ws handshake: {e}"),
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame, as text.
async fn next_text(ws: &mut Ws) -> String {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame ok");
        if let Ok(text) = m.into_text() {
            return text.to_string();
        }
    }
}

/// The node ids of a snapshot frame or a `/api/nodes` answer.
fn node_ids(v: &Value) -> Vec<String> {
    v["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["node_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The `node` of every item of a history page (`-` for none).
fn item_nodes(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| i["node"].as_str().unwrap_or("-").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn alert(t: &T, node: Option<&str>, title: &str) {
    t.d.app
        .alerts
        .raise(AlertRequest {
            severity: Severity::Warning,
            title: title.into(),
            message: "test".into(),
            node: node.map(str::to_owned),
            key: None,
            source: "test".into(),
        })
        .expect("raised");
}

#[tokio::test]
async fn a_node_limited_token_reads_only_its_nodes_everywhere() {
    let t = setup().await;
    t.link("1999", "2100", "203.0.113.9").await;
    t.link("2000", "2200", "198.51.100.7").await;
    alert(&t, Some("1999"), "about 1999");
    alert(&t, Some("2000"), "about 2000");
    alert(&t, None, "about the daemon");

    // The node list, and single nodes.
    let (s, v) = t.get("/api/nodes", Some(READ_2000)).await;
    assert_eq!((s, node_ids(&v)), (StatusCode::OK, vec!["2000".to_owned()]));
    assert!(v["seq"].is_u64() && v["epoch"].is_string(), "{v}");
    let (_, v) = t.get("/api/nodes", Some(READ)).await;
    assert_eq!(
        node_ids(&v),
        ["1999", "2000"],
        "an unlimited token is unchanged"
    );
    let (_, v) = t.get("/api/nodes", None).await;
    assert_eq!(
        node_ids(&v),
        ["1999", "2000"],
        "anonymous reads are unchanged"
    );
    for path in ["/api/nodes/1999", "/api/nodes/1999/voter"] {
        let (s, v) = t.get(path, Some(READ_2000)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {v}");
        let e = v["error"].as_str().unwrap_or("");
        assert!(
            e.contains("v2000") && e.contains("limited to node(s) 2000") && e.contains("1999"),
            "{e}"
        );
    }
    let res = t
        .http
        .post(t.url("/api/nodes/1999/poll"))
        .bearer_auth(READ_2000)
        .send()
        .await
        .expect("poll");
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let (s, v) = t.get("/api/nodes/2000", Some(READ_2000)).await;
    assert_eq!((s, v["node_id"].as_str()), (StatusCode::OK, Some("2000")));
    assert!(v.to_string().contains("198.51.x.x"), "still masked: {v}");

    // The dashboard's list of configured nodes: its node only.
    let (s, v) = t.get("/api/dashboard", Some(READ_2000)).await;
    assert_eq!(s, StatusCode::OK);
    let ids: Vec<&str> = (v["nodes"].as_array().into_iter().flatten())
        .filter_map(|n| n["node_id"].as_str())
        .collect();
    assert_eq!(ids, ["2000"]);
    let (_, v) = t.get("/api/dashboard", Some(READ)).await;
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(2));

    // /metrics is a whole-daemon view.
    let (s, v) = t.get("/metrics", Some(READ_2000)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(v.to_string().contains("whole-daemon view"), "{v}");
    assert_eq!(t.get("/metrics", Some(READ)).await.0, StatusCode::OK);

    // Alerts: its node's and the daemon's, never another node's.
    let (s, v) = t.get("/api/alerts", Some(READ_2000)).await;
    assert_eq!(s, StatusCode::OK);
    let titles: Vec<&str> = v["alerts"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["title"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        titles.contains(&"about 2000") && titles.contains(&"about the daemon"),
        "{titles:?}"
    );
    assert!(!titles.contains(&"about 1999"), "{titles:?}");
    let (_, v) = t.get("/api/alerts?limit=1", Some(READ_2000)).await;
    assert_eq!(v["alerts"][0]["title"], "about the daemon", "{v}");

    // History and statistics.
    t.wait_admin("link sessions of both nodes", "/api/history/links", |v| {
        let n = item_nodes(v);
        n.iter().any(|x| x == "1999") && n.iter().any(|x| x == "2000")
    })
    .await;
    t.wait_admin("alerts of both nodes", "/api/history/alerts", |v| {
        let n = item_nodes(v);
        n.iter().any(|x| x == "1999") && n.iter().any(|x| x == "2000")
    })
    .await;
    let (s, v) = t.get("/api/history/links", Some(READ_2000)).await;
    assert_eq!(s, StatusCode::OK);
    let nodes = item_nodes(&v);
    assert!(
        !nodes.is_empty() && nodes.iter().all(|n| n == "2000"),
        "{v}"
    );
    let (_, v) = t.get("/api/history/alerts", Some(READ_2000)).await;
    let nodes = item_nodes(&v);
    assert!(
        nodes.iter().any(|n| n == "2000") && nodes.iter().any(|n| n == "-"),
        "{v}"
    );
    assert!(!nodes.iter().any(|n| n == "1999"), "{v}");
    for path in [
        "/api/history/links?node=1999",
        "/api/history/keyups?node=2000&node=1999",
        "/api/stats/talkers?node=1999",
        "/api/stats/activity?node=1999",
    ] {
        let (s, v) = t.get(path, Some(READ_2000)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {v}");
    }
    for path in [
        "/api/history/links?node=2000",
        "/api/history/keyups",
        "/api/history/ami",
        "/api/stats/talkers",
        "/api/stats/activity",
    ] {
        let (s, v) = t.get(path, Some(READ_2000)).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
    }
    assert_eq!(
        t.get("/api/history/links?node=1999", Some(READ)).await.0,
        StatusCode::OK
    );

    // The WebSocket: a `nodes=` entry outside the limit is refused; the snapshot and
    // the events are of its nodes only, whatever the filter.
    assert_eq!(t.ws("?nodes=1999", Some(READ_2000)).await.err(), Some(403));
    let mut filtered = t.ws("?servers=default", Some(READ_2000)).await.expect("ws");
    let mut ws = t.ws("", Some(READ_2000)).await.expect("ws");
    for w in [&mut ws, &mut filtered] {
        let snap: Value = serde_json::from_str(&next_text(w).await).expect("json");
        assert_eq!(snap["type"], "snapshot");
        assert_eq!(node_ids(&snap), ["2000"]);
    }
    t.sim.connect_link(
        "1999",
        SimLink::allstar("2101", "203.0.113.10", Direction::In),
    );
    t.sim.connect_link(
        "2000",
        SimLink::allstar("2201", "198.51.100.8", Direction::In),
    );
    for w in [&mut ws, &mut filtered] {
        loop {
            let v: Value = serde_json::from_str(&next_text(w).await).expect("json");
            if v["type"] != "event" {
                continue;
            }
            assert_ne!(v["event"]["node"], "1999", "{v}");
            if v["event"]["kind"] == "link_connected" && v["event"]["link"]["node"] == "2201" {
                break;
            }
        }
    }
}

#[tokio::test]
async fn the_websocket_handshake_takes_a_bearer_header() {
    let t = setup().await;
    t.link("1999", "2100", "203.0.113.9").await;
    for (token, sees) in [(CONTROL, true), (READ, false)] {
        let mut ws = t.ws("", Some(token)).await.expect("ws");
        let text = next_text(&mut ws).await;
        assert!(text.contains("\"snapshot\""), "{text}");
        assert_eq!(text.contains("203.0.113.9"), sees, "{token}: {text}");
        assert_eq!(text.contains("203.0.x.x"), !sees, "{token}: {text}");
    }
    assert_eq!(
        t.ws("", Some("bogus-token-0123456789")).await.err(),
        Some(401)
    );
}

#[tokio::test]
async fn anonymous_readers_see_masked_ips_under_the_default_configuration() {
    let t = setup().await;
    let mut ws = t.ws("", None).await.expect("anonymous ws");
    assert!(next_text(&mut ws).await.contains("\"snapshot\""));
    t.link("1999", "2100", "203.0.113.9").await;

    let (s, v) = t.get("/api/nodes", None).await;
    assert_eq!(s, StatusCode::OK);
    let text = v.to_string();
    assert!(
        text.contains("203.0.x.x") && !text.contains("203.0.113.9"),
        "{text}"
    );

    // The IP filled in by the poll is a recorded change of the link session.
    let has_ip_change = |v: &Value, ip: &str| {
        v["items"].as_array().is_some_and(|items| {
            items.iter().any(|i| {
                i["changes"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["field"] == "ip" && c["value"] == ip))
            })
        })
    };
    t.wait_admin("the ip change recorded", "/api/history/links", |v| {
        has_ip_change(v, "203.0.113.9")
    })
    .await;
    for token in [None, Some(READ)] {
        let (s, v) = t.get("/api/history/links", token).await;
        assert_eq!(s, StatusCode::OK);
        assert!(has_ip_change(&v, "203.0.x.x"), "{v}");
        assert!(!v.to_string().contains("203.0.113.9"), "{token:?}: {v}");
    }
    let (_, v) = t.get("/api/history/links", Some(CONTROL)).await;
    assert!(has_ip_change(&v, "203.0.113.9"), "control sees IPs: {v}");

    // Every WebSocket event frame about the link is masked too.
    let mut seen_masked = false;
    while !seen_masked {
        let text = next_text(&mut ws).await;
        assert!(!text.contains("203.0.113.9"), "{text}");
        let v: Value = serde_json::from_str(&text).expect("json");
        let kind = v["event"]["kind"].as_str().unwrap_or("");
        seen_masked = v["type"] == "event"
            && kind.starts_with("link_")
            && v["event"]["link"]["ip"] == "203.0.x.x";
    }
}

#[tokio::test]
async fn logout_with_the_cookie_needs_the_csrf_header_and_origin() {
    let t = setup().await;
    let res = t
        .http
        .post(t.url("/api/login"))
        .json(&json!({"name": "alice", "password": ALICE_PW}))
        .send()
        .await
        .expect("login");
    assert_eq!(res.status(), StatusCode::OK);
    let cookie = res
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("cookie")
        .to_owned();
    let body: Value = res.json().await.expect("json");
    let csrf = body["csrf_token"].as_str().expect("csrf").to_owned();
    let origin = format!("http://{}", t.d.http_addr);
    let logged_in = || async {
        let v: Value = t
            .http
            .get(t.url("/api/session"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("session")
            .json()
            .await
            .expect("json");
        v["authenticated"] == true
    };
    for (c, o) in [(None, Some(&origin)), (Some(&csrf), None), (None, None)] {
        let mut r = t.http.post(t.url("/api/logout")).header("cookie", &cookie);
        if let Some(c) = c {
            r = r.header("x-csrf-token", c);
        }
        if let Some(o) = o {
            r = r.header("origin", o);
        }
        let res = r.send().await.expect("logout");
        assert_eq!(
            res.status(),
            StatusCode::FORBIDDEN,
            "csrf {c:?} origin {o:?}"
        );
        assert!(logged_in().await, "a refused logout keeps the session");
    }
    let res = t
        .http
        .post(t.url("/api/logout"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .header("origin", &origin)
        .send()
        .await
        .expect("logout");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(!logged_in().await);
    let (_, v) = t.get("/api/audit?action=logout", Some(ADMIN)).await;
    let results: Vec<(&str, u64)> = v["entries"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| Some((e["result"].as_str()?, e["status"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        results,
        [
            ("refused", 403),
            ("refused", 403),
            ("refused", 403),
            ("ok", 204)
        ]
    );
}
