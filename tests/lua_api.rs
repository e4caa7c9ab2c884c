//! The `nexus` API as scripts see it: event tables, timers, polling control, voter calls
//! that answer later, alerts (down to a webhook on a local listener), config and store.

mod lua_support;

use std::time::Duration;

use allstar_nexus::state::ChangeKind;
use lua_support::{Rig, TempDir, event, link_event};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RECORDER: &str = r#"
last = {}
nexus.on("*", function(e) last[e.kind] = e end)
function get(kind)
  local e = last[kind]
  if not e then return nil end
  return {
    seq = e.seq, kind = e.kind, server = e.server, node = e.node, time_ms = e.time_ms,
    duration = e.duration_seconds, error = e.error, fields = e.fields and table.concat(e.fields, ","),
    link = e.link and { node = e.link.node, kind = e.link.kind, keyed = e.link.keyed, ip_is_nil = e.link.ip == nil,
                        callsign = e.link.callsign },
    absent = tostring(e.link == nil) .. " " .. tostring(e.error == nil) .. " " .. tostring(e.fields == nil),
  }
end
"#;

#[tokio::test]
async fn events_are_plain_tables_with_the_websocket_fields_and_nil_for_missing_ones() {
    let dir = TempDir::new("events");
    dir.save("rec.lua", RECORDER);
    let rig = Rig::start(dir.path(), "", &[]).await;
    rig.loaded("rec.lua", RECORDER).await;

    let p = rig.publish(event(ChangeKind::TxKeyed)).await;
    let got = rig.call("rec.lua", "get", vec![json!("tx_keyed")]).await;
    assert_eq!(got["seq"], json!(p.event.seq));
    assert_eq!(got["kind"], json!("tx_keyed"));
    assert_eq!(
        (got["server"].clone(), got["node"].clone()),
        (json!("default"), json!("1999"))
    );
    assert_eq!(got["time_ms"], json!(p.event.time_ms));
    assert_eq!(got["absent"], json!("true true true"));

    let mut e = link_event(ChangeKind::LinkUpdated, "2000");
    e.fields = vec!["mode", "ip"];
    if let Some(l) = e.link.as_mut() {
        l.callsign = Some("W1AW".into());
    }
    rig.publish(e).await;
    let got = rig
        .call("rec.lua", "get", vec![json!("link_updated")])
        .await;
    assert_eq!(got["fields"], json!("mode,ip"));
    assert_eq!(
        got["link"],
        json!({"node": "2000", "kind": "allstar", "keyed": false, "ip_is_nil": true, "callsign": "W1AW"})
    );

    let mut e = event(ChangeKind::AmiDisconnected);
    e.error = Some("connection refused".into());
    rig.publish(e).await;
    let got = rig
        .call("rec.lua", "get", vec![json!("ami_disconnected")])
        .await;
    assert_eq!(
        (got["error"].clone(), got.get("node").cloned()),
        (json!("connection refused"), None)
    );

    let mut e = event(ChangeKind::RxUnkeyed);
    e.duration_seconds = Some(2.5);
    rig.publish(e).await;
    assert_eq!(
        rig.call("rec.lua", "get", vec![json!("rx_unkeyed")]).await["duration"],
        json!(2.5)
    );
}

#[tokio::test]
async fn timers_run_and_voter_status_answers_later_without_blocking() {
    let dir = TempDir::new("timers");
    let src = r#"
ticks = 0
nexus.every(0.02, function() ticks = ticks + 1 end)
function ticked() return ticks end
function ask(node)
  answer = nil
  return nexus.voter_status(node, function(receivers, err) answer = { receivers = receivers, err = err } end)
end
function answered() return answer end
"#;
    dir.save("t.lua", src);
    let rig = Rig::start(dir.path(), "", &[]).await;
    rig.loaded("t.lua", src).await;
    // No fixed sleep: wait for the fifth tick, then check the pace (20 ms apart at least).
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs(10);
    let mut ticks = 0;
    while ticks < 5 {
        assert!(std::time::Instant::now() < deadline, "only {ticks} ticks");
        tokio::task::yield_now().await;
        ticks = rig
            .call("t.lua", "ticked", vec![])
            .await
            .as_i64()
            .unwrap_or(0);
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(20) * (ticks as u32 - 1),
        "{ticks} ticks in {took:?} at 20 ms"
    );

    assert_eq!(
        rig.call("t.lua", "ask", vec![json!(4242)]).await,
        json!(true)
    );
    let mut answer = serde_json::Value::Null;
    for _ in 0..100 {
        answer = rig.call("t.lua", "answered", vec![]).await;
        if !answer.is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let err = answer["err"].as_str().unwrap_or_default();
    assert!(err.contains("unknown node \"4242\""), "{answer}");
    assert!(answer.get("receivers").is_none());
}

#[tokio::test]
async fn polling_control_reports_errors_as_nil_and_message() {
    let dir = TempDir::new("polling");
    let src = r#"
function try()
  local a, aerr = nexus.set_poll_interval("1999", 7)
  local b = nexus.poll_interval(1999)
  local c, cerr = nexus.poll_now("1999")
  local d, derr = nexus.set_poll_interval("1999", 0.5)
  local e, eerr = nexus.set_poll_interval("4242", 5)
  return { set = a, now = b, poll = c, bad = tostring(d) .. " " .. derr, unknown = tostring(e) .. " " .. eerr,
           missing = tostring(nexus.poll_interval("4242")), aerr = tostring(aerr), cerr = tostring(cerr) }
end
"#;
    dir.save("p.lua", src);
    let rig = Rig::start(dir.path(), "", &["1999"]).await;
    rig.loaded("p.lua", src).await;
    let got = rig.call("p.lua", "try", vec![]).await;
    assert_eq!(
        (got["set"].clone(), got["now"].clone(), got["poll"].clone()),
        (json!(7.0), json!(7.0), json!(true))
    );
    assert_eq!(
        (got["aerr"].clone(), got["cerr"].clone()),
        (json!("nil"), json!("nil"))
    );
    assert!(
        got["bad"]
            .as_str()
            .is_some_and(|s| s.starts_with("nil invalid interval")),
        "{got}"
    );
    assert!(
        got["unknown"]
            .as_str()
            .is_some_and(|s| s.starts_with("nil unknown node")),
        "{got}"
    );
    assert_eq!(got["missing"], json!("nil"));
    assert_eq!(
        rig.app.control.poll_interval("1999"),
        Some(Duration::from_secs(7))
    );
}

#[tokio::test]
async fn config_and_store() {
    let dir = TempDir::new("config");
    let src = r#"
nexus.store.loads = (nexus.store.loads or 0) + 1
function show()
  return { limit = nexus.config.limit, nested = nexus.config.nested.deep, null_is_nil = nexus.config.gone == nil,
           list = #nexus.config.list, loads = nexus.store.loads, script = nexus.script,
           kinds = #nexus.kinds, now_ok = math.abs(nexus.now() - os.time()) < 5 }
end
function store_table() return pcall(function() nexus.store.bad = {} end) end
"#;
    dir.save("cfg.lua", src);
    dir.save(
        "none.lua",
        "function cfg() return next(nexus.config) == nil end\n",
    );
    let extra = "plugins:\n  cfg:\n    limit: 3\n    gone: null\n    nested: {deep: true}\n    list: [1, 2]\n";
    let rig = Rig::start(dir.path(), extra, &[]).await;
    rig.loaded("cfg.lua", src).await;
    let got = rig.call("cfg.lua", "show", vec![]).await;
    assert_eq!(
        got,
        json!({"limit": 3, "nested": true, "null_is_nil": true, "list": 2, "loads": 1, "script": "cfg.lua",
               "kinds": ChangeKind::ALL.len(), "now_ok": true})
    );
    assert_eq!(
        rig.call("cfg.lua", "store_table", vec![]).await,
        json!(false)
    );
    assert_eq!(rig.call("none.lua", "cfg", vec![]).await, json!(true));
}

/// A one-shot HTTP server on port 0 that hands back the body of the first request.
async fn webhook_listener() -> (String, tokio::sync::oneshot::Receiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let Ok(n) = sock.read(&mut chunk).await else {
                return;
            };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = tx.send(body.to_owned());
                return;
            }
        }
    });
    (url, rx)
}

#[tokio::test]
async fn alerts_from_scripts_reach_the_hub_and_a_webhook() {
    let (url, body) = webhook_listener().await;
    let dir = TempDir::new("webhook");
    let src = r#"
function raise()
  local id = nexus.alert { severity = "critical", title = "Test alert", message = "it works", node = 1999, key = "k" }
  local again = nexus.alert { title = "Test alert", key = "k" }
  local ok, err = pcall(nexus.alert, { severity = "loud", title = "x" })
  return { id = id, again = again == nil, bad = not ok and err:find("unknown severity") ~= nil }
end
"#;
    dir.save("raise.lua", src);
    let extra = format!("alert_webhooks:\n  - url: {url}\n    timeout: 2s\n    retries: 0\n");
    let rig = Rig::start(dir.path(), &extra, &[]).await;
    rig.loaded("raise.lua", src).await;
    let got = rig.call("raise.lua", "raise", vec![]).await;
    assert_eq!(
        (got["again"].clone(), got["bad"].clone()),
        (json!(true), json!(true)),
        "{got}"
    );
    let alert = rig
        .alerts()
        .into_iter()
        .find(|a| a.title == "Test alert")
        .expect("alert in history");
    assert_eq!(json!(alert.id), got["id"]);
    assert_eq!(
        (
            alert.source.as_str(),
            alert.node.as_deref(),
            alert.key.as_deref()
        ),
        ("raise.lua", Some("1999"), Some("k"))
    );

    let body = tokio::time::timeout(Duration::from_secs(5), body)
        .await
        .expect("webhook in time")
        .expect("body");
    let posted: serde_json::Value = serde_json::from_str(&body).expect("json body");
    assert_eq!(
        (
            posted["title"].clone(),
            posted["severity"].clone(),
            posted["source"].clone(),
            posted["message"].clone()
        ),
        (
            json!("Test alert"),
            json!("critical"),
            json!("raise.lua"),
            json!("it works")
        )
    );
}

/// Resident memory of this process, in bytes (Linux; 0 elsewhere).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

#[tokio::test]
async fn an_alert_flood_is_cut_rate_limited_and_bounded_in_memory() {
    let dir = TempDir::new("flood");
    let src = r#"
function flood(n)
  local big = string.rep("x", 1024 * 1024)
  local raised, refused, why = 0, 0, nil
  for i = 1, n do
    local id, err = nexus.alert { title = big, message = big, node = big, key = i .. big }
    if id then raised = raised + 1 else refused = refused + 1; why = err end
  end
  return { raised = raised, refused = refused, why = why }
end
"#;
    dir.save("flood.lua", src);
    let rig = Rig::start(
        dir.path(),
        "lua:\n  memory_limit_mb: 64\n  callback_budget: 20s\n",
        &[],
    )
    .await;
    rig.loaded("flood.lua", src).await;
    let before = rss_bytes();
    let got = rig.call("flood.lua", "flood", vec![json!(200)]).await;
    let after = rss_bytes();
    eprintln!(
        "RSS before the 200 x 1 MiB alert flood: {} KiB, after: {} KiB; alert history holds {} bytes",
        before / 1024,
        after / 1024,
        rig.app.alerts.held_bytes()
    );
    // 10 a second: the flood takes a second or two in a debug build.
    let raised = got["raised"].as_u64().unwrap_or(0);
    assert!((10..=30).contains(&raised), "{got}");
    assert_eq!(got["refused"].as_u64(), Some(200 - raised), "{got}");
    assert!(
        got["why"]
            .as_str()
            .is_some_and(|w| w.contains("rate limited") || w.contains("a second")),
        "{got}"
    );
    let held = rig.app.alerts.held_bytes();
    assert!(held <= 30 * 8 * 1024, "history holds {held} bytes");
    let a = rig.alerts().into_iter().last().expect("an alert");
    assert!(a.truncated && a.node.as_ref().is_some_and(|n| n.len() <= 1024));
    assert!(rig.app.metrics.render().contains(&format!(
        "nexus_alerts_dropped_total{{reason=\"rate\"}} {}",
        200 - raised
    )));
}

#[tokio::test]
async fn poll_now_and_voter_status_are_rate_limited_per_script() {
    let dir = TempDir::new("actions");
    let src = r#"
function hammer(what)
  local ok, refused, why = 0, 0, nil
  for i = 1, 100 do
    local r, err
    if what == "poll" then r, err = nexus.poll_now("1999")
    else r, err = nexus.voter_status("1999", function() end) end
    if r then ok = ok + 1 else refused = refused + 1; why = err end
  end
  return { ok = ok, refused = refused, why = why }
end
"#;
    dir.save("hammer.lua", src);
    let rig = Rig::start(dir.path(), "", &["1999"]).await;
    rig.loaded("hammer.lua", src).await;
    let got = rig.call("hammer.lua", "hammer", vec![json!("poll")]).await;
    let ok = got["ok"].as_i64().unwrap_or(0);
    assert!((10..=11).contains(&ok), "{got}");
    assert!(
        got["why"]
            .as_str()
            .is_some_and(|w| w.starts_with("rate limited")),
        "{got}"
    );
    // The budget is shared: voter_status is refused right after the poll burst.
    let got = rig.call("hammer.lua", "hammer", vec![json!("voter")]).await;
    assert!(got["ok"].as_i64().unwrap_or(99) <= 2, "{got}");
    assert!(
        got["why"]
            .as_str()
            .is_some_and(|w| w.contains("nexus.voter_status")),
        "{got}"
    );
}

#[tokio::test]
async fn node_ids_lists_every_node_sorted_without_building_their_views() {
    let dir = TempDir::new("nodeids");
    let src = r#"
function ids()
  local out = nexus.node_ids()
  return { count = #out, joined = table.concat(out, ","), views = #nexus.nodes() }
end
"#;
    dir.save("ids.lua", src);
    let rig = Rig::start(dir.path(), "", &["2001", "1999", "2000"]).await;
    rig.loaded("ids.lua", src).await;
    let got = rig.call("ids.lua", "ids", vec![]).await;
    assert_eq!(got["joined"], json!("1999,2000,2001"));
    assert_eq!(got["count"], got["views"]);
}
