//! End-to-end tests of link control from Lua and of the harder control paths (issue 10):
//! the shipped `scripts/deny_list.lua` and `scripts/scheduled_net.lua` run against the
//! app_rpt simulator; scripts are refused like everyone else while control is off;
//! permanent links are disconnected with `ilink 11` after a restart, and when another tool
//! made them permanent; failed attempts (AMI down, AMI rejecting the command) are 503/502,
//! audited and counted.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use allstar_nexus::audit::{AuditEntry, AuditQuery};
use allstar_nexus::daemon::Running;
use allstar_nexus::sim::{SimHandle, SimLink};
use allstar_nexus::state::Direction;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

const CONTROL: &str = "control-token-0123456789";
const NODES: [&str; 2] = ["1999", "2000"];

/// The daemon and its simulator; the simulator outlives a daemon restart.
struct Rig {
    sim: SimHandle,
    d: Running,
    http: reqwest::Client,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.d.shutdown.cancel();
        self.sim.shutdown();
    }
}

/// Config: `state_dir`, the scripts folder, and a control token when `control` is on.
fn yaml(state: &Path, scripts: Option<&Path>, control: bool) -> String {
    let mut y = format!(
        "state_dir: {}\ncontrol:\n  verify_timeout: 4s\n",
        state.display()
    );
    if let Some(dir) = scripts {
        y.push_str(&format!("script_dirs: [{}]\n", dir.display()));
    }
    if control {
        y.push_str(&format!(
            "api_tokens:\n  - {{name: op, token: {CONTROL}, role: control}}\n"
        ));
    }
    y
}

async fn daemon(sim: &SimHandle, yaml: &str) -> Running {
    let d = start_daemon(sim.addr(), &NODES, yaml).await;
    wait_until("both nodes polled", || {
        NODES
            .iter()
            .all(|n| d.app.state.node(n).is_some_and(|v| v.last_poll.is_some()))
    })
    .await;
    d
}

async fn rig(yaml: &str) -> Rig {
    let sim = sim_on_tcp(&NODES).await;
    let d = daemon(&sim, yaml).await;
    Rig {
        sim,
        d,
        http: reqwest::Client::new(),
    }
}

/// A scripts folder holding `scripts/<name>` from the repository with `edit` applied
/// (the edit must change something: it fills in the operator's list).
fn script_dir(name: &str, edit: impl Fn(&str) -> String) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name);
    let text = std::fs::read_to_string(&src).expect("shipped script");
    let edited = edit(&text);
    assert_ne!(edited, text, "the edit of {name} found its place");
    let dir = temp_dir("scripts");
    std::fs::write(dir.join(name), edited).expect("write script");
    dir
}

impl Rig {
    fn ilinks(&self) -> Vec<String> {
        ilinks(&self.sim)
    }

    async fn audit(&self, identity: &str) -> Vec<AuditEntry> {
        self.d
            .app
            .linkctl
            .audit()
            .query(AuditQuery {
                identity: Some(identity.to_owned()),
                limit: 1000,
                ..AuditQuery::default()
            })
            .await
            .expect("audit readable")
            .entries
    }

    /// Waits until `identity` has `n` audit entries (scripts get their results later).
    async fn audit_n(&self, identity: &str, n: usize) -> Vec<AuditEntry> {
        for _ in 0..400 {
            let e = self.audit(identity).await;
            if e.len() >= n {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{identity}: fewer than {n} audit entries");
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(method, format!("http://{}{path}", self.d.http_addr))
            .bearer_auth(CONTROL);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r.send().await.expect("request");
        let status = res.status();
        let text = res.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn wait_link(&self, node: &str, target: &str, present: bool) {
        wait_until(&format!("{target} on {node}: {present}"), || {
            self.d
                .app
                .state
                .node(node)
                .is_some_and(|v| v.links.iter().any(|l| l.node == target) == present)
        })
        .await;
    }

    /// Connects 1999 to `target` and expects it to fail with `status` and an error
    /// message holding `text`.
    async fn connect_fails(&self, target: &str, status: StatusCode, text: &str) {
        let (s, v) = self
            .request(
                reqwest::Method::POST,
                "/api/nodes/1999/links",
                Some(json!({"target": target})),
            )
            .await;
        assert_eq!(s, status, "{v}");
        assert!(v["error"].as_str().is_some_and(|e| e.contains(text)), "{v}");
    }

    fn failed(&self, action: &str) -> u64 {
        self.d
            .app
            .metrics
            .control_actions
            .with_label_values(&[action, "failed"])
            .get()
    }
}

/// Calls `script`'s global `function` until it returns a table (results are asynchronous).
async fn result_of(d: &Running, script: &str, function: &str) -> Value {
    for _ in 0..400 {
        let v = d
            .scripts
            .call(script, function, vec![])
            .await
            .expect("call");
        if v.is_object() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{script}: {function}() never returned a result");
}

async fn loaded(d: &Running, script: &str) {
    assert!(
        d.scripts
            .wait_until(Duration::from_secs(10), |h| h.version(script).is_some())
            .await,
        "{script} did not load"
    );
}

#[tokio::test]
async fn without_credentials_a_script_is_refused_too_and_control_result_handlers_hear_it() {
    let dir = temp_dir("ctl-off");
    std::fs::write(
        dir.join("ctl.lua"),
        "local got\n\
         nexus.on('control_result', function(r) got = r end)\n\
         function go() nexus.connect(1999, 2005) end\n\
         function result() return got end\n",
    )
    .expect("script");
    let t = rig(&yaml(&dir, Some(&dir), false)).await;
    loaded(&t.d, "ctl.lua").await;
    t.d.scripts.call("ctl.lua", "go", vec![]).await.expect("go");
    let r = result_of(&t.d, "ctl.lua", "result").await;
    assert_eq!(
        (r["ok"].clone(), r["status"].clone()),
        (json!(false), json!(403)),
        "{r}"
    );
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("api_tokens")),
        "the answer says how to enable control: {r}"
    );
    let audit = t.audit_n("script:ctl.lua", 1).await;
    assert_eq!(
        (audit[0].result.as_str(), audit[0].status),
        ("refused", 403)
    );
    assert_eq!(audit[0].via, "script");
    assert!(
        t.ilinks().is_empty(),
        "nothing reached AMI: {:?}",
        t.ilinks()
    );
}

#[tokio::test]
async fn deny_list_disconnects_a_listed_node_with_an_alert() {
    let scripts = script_dir("deny_list.lua", |s| {
        s.replace(
            "local DENY = {\n",
            "local DENY = {\n  [\"2100\"] = \"test: denied\",\n",
        )
    });
    let t = rig(&yaml(&temp_dir("deny"), Some(&scripts), true)).await;
    loaded(&t.d, "deny_list.lua").await;
    // An unlisted node may stay.
    t.sim.connect_link(
        "1999",
        SimLink::allstar("2101", "203.0.113.7", Direction::In),
    );
    t.sim.connect_link(
        "1999",
        SimLink::allstar("2100", "203.0.113.9", Direction::In),
    );
    t.d.app.control.poll_now("1999").expect("poll");
    let audit = t.audit_n("script:deny_list.lua", 1).await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(
        (
            audit[0].action.as_str(),
            audit[0].target.as_deref(),
            audit[0].result.as_str()
        ),
        ("disconnect", Some("2100"), "verified"),
        "{audit:?}"
    );
    assert_eq!(t.ilinks(), ["rpt cmd 1999 ilink 1 2100"]);
    t.wait_link("1999", "2100", false).await;
    assert!(
        t.d.app
            .state
            .node("1999")
            .is_some_and(|v| v.links.iter().any(|l| l.node == "2101"))
    );
    wait_until("the alert", || {
        t.d.app
            .alerts
            .recent(10)
            .iter()
            .any(|a| a.title == "denied node 2100 on 1999" && a.message.starts_with("test: denied"))
    })
    .await;
}

#[tokio::test]
async fn scheduled_net_connects_inside_its_window_and_disconnects_after() {
    // A net that started a minute ago and lasts an hour; the 30 s timer is slowed down so
    // that only the test's calls of check_nets act.
    let scripts = script_dir("scheduled_net.lua", |s| {
        s.replace(
            "local NETS = {\n",
            "local NETS = {\n  { node = \"1999\", hub = \"2005\", day = os.date(\"%A\", os.time() - 60), \
             start = os.date(\"%H:%M\", os.time() - 60), minutes = 60 },\n",
        )
        .replace("nexus.every(30,", "nexus.every(3600,")
    });
    let t = rig(&yaml(&temp_dir("net"), Some(&scripts), true)).await;
    loaded(&t.d, "scheduled_net.lua").await;
    let name = "script:scheduled_net.lua";
    t.d.scripts
        .call("scheduled_net.lua", "check_nets", vec![])
        .await
        .expect("check now");
    let audit = t.audit_n(name, 1).await;
    assert_eq!(
        (audit[0].action.as_str(), audit[0].result.as_str()),
        ("connect", "verified")
    );
    t.wait_link("1999", "2005", true).await;
    // Inside the window again: nothing more is sent.
    t.d.scripts
        .call("scheduled_net.lua", "check_nets", vec![])
        .await
        .expect("check again");
    let two_hours_on = allstar_nexus::observe::now_ms() / 1000 + 7200;
    t.d.scripts
        .call("scheduled_net.lua", "check_nets", vec![json!(two_hours_on)])
        .await
        .expect("check later");
    let audit = t.audit_n(name, 2).await;
    let got: Vec<(&str, &str)> = audit
        .iter()
        .map(|e| (e.action.as_str(), e.result.as_str()))
        .collect();
    assert_eq!(got, [("connect", "verified"), ("disconnect", "verified")]);
    assert_eq!(
        t.ilinks(),
        ["rpt cmd 1999 ilink 3 2005", "rpt cmd 1999 ilink 1 2005"]
    );
}

#[tokio::test]
async fn a_permanent_link_is_disconnected_with_ilink_11_after_a_restart() {
    let state = temp_dir("perm-restart");
    let y = yaml(&state, None, true);
    let mut t = rig(&y).await;
    let (s, v) = t
        .request(
            reqwest::Method::POST,
            "/api/nodes/1999/links",
            Some(json!({"target": "2003", "permanent": true})),
        )
        .await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::OK, Some("verified")),
        "{v}"
    );
    t.d.shutdown.cancel();
    (&mut t.d.done).await.expect("joined").expect("clean stop");
    t.d = daemon(&t.sim, &y).await;
    t.wait_link("1999", "2003", true).await;
    let (s, v) = t
        .request(reqwest::Method::DELETE, "/api/nodes/1999/links/2003", None)
        .await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::OK, Some("verified")),
        "{v}"
    );
    assert_eq!(v["permanent"], true, "{v}");
    assert_eq!(
        t.ilinks(),
        ["rpt cmd 1999 ilink 13 2003", "rpt cmd 1999 ilink 11 2003"]
    );
    let audit = t.audit("op").await;
    let last = audit.last().expect("entries");
    assert_eq!(
        (last.action.as_str(), last.permanent),
        ("disconnect", Some(true))
    );
}

#[tokio::test]
async fn a_link_made_permanent_by_another_tool_is_dropped_by_the_ilink_11_fallback() {
    let t = rig(&yaml(&temp_dir("perm-other"), None, true)).await;
    t.sim.connect_link(
        "1999",
        SimLink::allstar("2003", "203.0.113.3", Direction::Out),
    );
    assert!(t.sim.set_link_permanent("1999", "2003", true));
    t.d.app.control.poll_now("1999").expect("poll");
    t.wait_link("1999", "2003", true).await;
    let (s, v) = t
        .request(reqwest::Method::DELETE, "/api/nodes/1999/links/2003", None)
        .await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::OK, Some("verified")),
        "{v}"
    );
    assert_eq!(v["permanent"], true, "{v}");
    assert!(
        v["detail"].as_str().is_some_and(|d| d.contains("ilink 11")),
        "{v}"
    );
    assert_eq!(
        t.ilinks(),
        ["rpt cmd 1999 ilink 1 2003", "rpt cmd 1999 ilink 11 2003"]
    );
    let audit = t.audit("op").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].permanent, Some(true));
    assert!(audit[0].detail.contains("sent ilink 11"), "{audit:?}");
}

#[tokio::test]
async fn failed_attempts_are_503_and_502_audited_and_counted() {
    let t = rig(&yaml(&temp_dir("failed"), None, true)).await;
    // AMI rejects the command (a manager user without the `command` class).
    t.sim.set_reject_commands(true);
    t.connect_fails("2003", StatusCode::BAD_GATEWAY, "Permission denied")
        .await;
    assert_eq!(t.failed("connect"), 1);
    // AMI not connected.
    t.sim.set_reject_commands(false);
    t.sim.set_refuse(true);
    t.sim.drop_sessions();
    let ami = t.d.app.control.ami_for("1999").expect("configured");
    wait_until("AMI down", || !ami.is_connected()).await;
    t.connect_fails("2004", StatusCode::SERVICE_UNAVAILABLE, "not connected")
        .await;
    assert_eq!(t.failed("connect"), 2);
    let audit = t.audit("op").await;
    let got: Vec<(&str, &str, u16)> = audit
        .iter()
        .map(|e| (e.action.as_str(), e.result.as_str(), e.status))
        .collect();
    assert_eq!(
        got,
        [("connect", "failed", 502), ("connect", "failed", 503)]
    );
    // The rejected command reached the simulator; the second never left the daemon.
    assert_eq!(t.ilinks(), ["rpt cmd 1999 ilink 3 2003"]);
}
