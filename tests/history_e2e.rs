//! Durable history end to end against the simulator: keyups and link sessions with the
//! simulator's durations, AMI sessions, queries while AMI is down, pagination under
//! concurrent writes, retention, `keyups_today` on `/api/nodes`, and parameter errors.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use allstar_nexus::alerts::{AlertRequest, Severity};
use allstar_nexus::daemon::Running;
use allstar_nexus::sim::SimLink;
use allstar_nexus::state::{ChangeEvent, ChangeKind, Direction, Mode};
use common::*;
use serde_json::Value;

async fn get(d: &Running, path: &str) -> (u16, Value) {
    let res = reqwest::get(format!("http://{}{path}", d.http_addr))
        .await
        .expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.expect("json body"))
}

/// Polls `path` until `cond` holds on its JSON (20 s at most).
async fn wait_json(d: &Running, path: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = get(d, path).await;
        if status == 200 && cond(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

fn state_yaml(dir: &Path, extra: &str) -> String {
    format!("state_dir: {}\n{extra}", dir.display())
}

async fn stop(d: Running) {
    d.shutdown.cancel();
    if let Some(h) = &d.app.history {
        tokio::time::timeout(Duration::from_secs(10), h.closed())
            .await
            .expect("history writer stops");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyups_and_sessions_match_the_simulators_durations() {
    let sim = sim_on_tcp(&["1999"]).await;
    let dir = temp_dir("durations");
    let d = start_daemon(sim.addr(), &["1999"], &state_yaml(&dir, "")).await;
    wait_json(&d, "/api/history/ami", "AMI session row", |v| {
        items(v).iter().any(|r| r["down_ms"].is_null())
    })
    .await;

    sim.connect_link("1999", SimLink::allstar("2000", "10.0.0.2", Direction::Out));
    let connected_at = Instant::now();
    wait_json(&d, "/api/history/links?node=1999", "open session", |v| {
        items(v)
            .iter()
            .any(|r| r["link"] == "2000" && r["open"] == true)
    })
    .await;

    // A keyup of ~1.2 s from the link, and one of ~0.7 s from the local receiver.
    sim.set_link_keyed("1999", "2000", true);
    let keyed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    sim.set_link_keyed("1999", "2000", false);
    let link_truth = keyed_at.elapsed().as_secs_f64();
    sim.set_rx_keyed("1999", true);
    let rx_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(700)).await;
    sim.set_rx_keyed("1999", false);
    let rx_truth = rx_at.elapsed().as_secs_f64();

    let body = wait_json(&d, "/api/history/keyups?node=1999", "closed keyups", |v| {
        items(v)
            .iter()
            .filter(|r| r["end_reason"] == "unkeyed")
            .count()
            >= 2
    })
    .await;
    let rows = items(&body);
    let link_row = rows
        .iter()
        .find(|r| r["link"] == "2000")
        .expect("link keyup");
    let rx_row = rows.iter().find(|r| r["source"] == "rx").expect("rx keyup");
    let got = link_row["duration_seconds"].as_f64().expect("duration");
    assert!(
        (got - link_truth).abs() <= 0.5,
        "link keyup {got} s vs truth {link_truth} s"
    );
    let got = rx_row["duration_seconds"].as_f64().expect("duration");
    assert!(
        (got - rx_truth).abs() <= 0.5,
        "rx keyup {got} s vs truth {rx_truth} s"
    );

    // A mode change is kept with the session; the disconnect closes it.
    sim.set_link_mode("1999", "2000", Mode::R);
    wait_json(&d, "/api/history/links?link=2000", "mode change", |v| {
        items(v).iter().any(|r| r["mode"] == "R")
    })
    .await;
    sim.disconnect_link("1999", "2000");
    let session_truth = connected_at.elapsed().as_secs_f64();
    let body = wait_json(&d, "/api/history/links?link=2000", "closed session", |v| {
        items(v).iter().any(|r| r["end_reason"] == "disconnected")
    })
    .await;
    let s = &items(&body)[0];
    let got = s["duration_seconds"].as_f64().expect("duration");
    assert!(
        (got - session_truth).abs() <= 0.5,
        "session {got} s vs truth {session_truth} s: {s}"
    );
    assert_eq!(s["direction"], "OUT");
    assert_eq!(s["ip"], "10.0.0.2");
    let changes = s["changes"].as_array().expect("changes");
    assert!(
        changes
            .iter()
            .any(|c| c["field"] == "mode" && c["value"] == "R"),
        "mode change recorded: {s}"
    );

    // Statistics over the same data.
    let (status, t) = get(&d, "/api/stats/talkers?node=1999").await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["node"], "1999");
    assert_eq!(t["talkers"][0]["link"], "2000");
    assert_eq!(t["talkers"][0]["keyups"], 1);
    // The local receiver's keyup is beside the list, never in it.
    assert_eq!(t["talkers"].as_array().map(Vec::len), Some(1), "{t}");
    assert_eq!(t["local_rx"]["keyups"], 1, "{t}");
    let local = t["local_rx"]["talk_seconds"].as_f64().expect("seconds");
    assert!((local - rx_truth).abs() <= 0.5, "{local} vs {rx_truth}");
    let (status, a) = get(&d, "/api/stats/activity?node=1999&bucket=1h").await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["bucket_seconds"], 3600);
    let total: u64 = a["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| b["keyups"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(total, 1, "one link keyup in the last day: {a}");
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_in_api_nodes_carry_todays_totals() {
    let sim = sim_on_tcp(&["1999"]).await;
    sim.connect_link("1999", SimLink::allstar("2001", "10.0.0.3", Direction::In));
    let dir = temp_dir("today");
    let d = start_daemon(sim.addr(), &["1999"], &state_yaml(&dir, "")).await;
    wait_json(&d, "/api/nodes", "link 2001", |v| {
        v["nodes"][0]["links"][0]["node"] == "2001"
    })
    .await;
    for _ in 0..2 {
        sim.set_link_keyed("1999", "2001", true);
        tokio::time::sleep(Duration::from_millis(300)).await;
        sim.set_link_keyed("1999", "2001", false);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = wait_json(&d, "/api/nodes", "keyups_today", |v| {
        v["nodes"][0]["links"][0]["keyups_today"] == 2
    })
    .await;
    let secs = body["nodes"][0]["links"][0]["talk_seconds_today"]
        .as_f64()
        .expect("talk seconds");
    assert!(secs > 0.4 && secs < 1.5, "talk seconds today: {secs}");
    let (_, one) = get(&d, "/api/nodes/1999").await;
    assert_eq!(one["links"][0]["keyups_today"], 2);
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_answer_while_ami_is_down() {
    let sim = sim_on_tcp(&["1999"]).await;
    let dir = temp_dir("amidown");
    let d = start_daemon(sim.addr(), &["1999"], &state_yaml(&dir, "")).await;
    wait_json(&d, "/api/history/ami", "AMI up row", |v| {
        !items(v).is_empty()
    })
    .await;
    sim.set_refuse(true);
    sim.drop_sessions();
    let body = wait_json(&d, "/api/history/ami", "AMI loss recorded", |v| {
        items(v).iter().any(|r| r["end_reason"] == "lost")
    })
    .await;
    let lost = items(&body)
        .into_iter()
        .find(|r| r["end_reason"] == "lost")
        .expect("lost row");
    assert!(
        lost["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{lost}"
    );
    assert!(lost["duration_seconds"].as_f64().is_some());
    // AMI still down: every history route answers from the database, and an alert raised
    // now is read back through its route, filtered by node.
    assert!(!d.app.state.servers()[0].connected);
    d.app.alerts.raise(AlertRequest {
        severity: Severity::Warning,
        title: "hub quiet".into(),
        message: "no keyups for an hour".into(),
        node: Some("1999".into()),
        key: Some("quiet".into()),
        source: "test".into(),
    });
    let body = wait_json(&d, "/api/history/alerts?node=1999", "alert recorded", |v| {
        !items(v).is_empty()
    })
    .await;
    let a = &items(&body)[0];
    assert_eq!(
        (&a["title"], &a["message"], &a["severity"], &a["node"]),
        (
            &Value::from("hub quiet"),
            &Value::from("no keyups for an hour"),
            &Value::from("warning"),
            &Value::from("1999")
        ),
        "{a}"
    );
    let (status, other) = get(&d, "/api/history/alerts?node=2000").await;
    assert_eq!(status, 200, "{other}");
    assert!(items(&other).is_empty(), "another node's alerts: {other}");
    for path in [
        "/api/history/keyups",
        "/api/history/links",
        "/api/history/alerts",
        "/api/stats/talkers",
        "/api/stats/activity",
    ] {
        let (status, body) = get(&d, path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_gone_during_an_ami_outage_ends_as_ami_lost() {
    let sim = sim_on_tcp(&["1999"]).await;
    sim.connect_link("1999", SimLink::allstar("2000", "10.0.0.2", Direction::In));
    sim.connect_link("1999", SimLink::allstar("2001", "10.0.0.3", Direction::In));
    let dir = temp_dir("amilost");
    let d = start_daemon(sim.addr(), &["1999"], &state_yaml(&dir, "")).await;
    wait_json(
        &d,
        "/api/history/links?node=1999",
        "two open sessions",
        |v| items(v).iter().filter(|r| r["open"] == true).count() == 2,
    )
    .await;
    // AMI goes down; while it is down 2000 leaves and 2001 stays; then AMI comes back.
    sim.set_refuse(true);
    sim.drop_sessions();
    let ami = wait_json(&d, "/api/history/ami", "AMI loss", |v| {
        items(v).iter().any(|r| r["end_reason"] == "lost")
    })
    .await;
    let down_ms = items(&ami)
        .iter()
        .find(|r| r["end_reason"] == "lost")
        .and_then(|r| r["down_ms"].as_u64())
        .expect("down_ms");
    assert!(sim.disconnect_link("1999", "2000"));
    sim.set_refuse(false);
    let body = wait_json(&d, "/api/history/links?link=2000", "2000 closed", |v| {
        items(v).first().is_some_and(|r| r["open"] == false)
    })
    .await;
    let row = &items(&body)[0];
    assert_eq!(row["end_reason"], "ami_lost", "{row}");
    assert_eq!(row["ami_lost_ms"].as_u64(), Some(down_ms), "{row}");
    let gone = row["disconnected_ms"].as_u64().expect("disconnected_ms");
    assert!(gone >= down_ms, "seen gone after the loss: {row}");
    // The link that stayed keeps its open row.
    let (_, stayed) = get(&d, "/api/history/links?link=2001").await;
    let s = &items(&stayed)[0];
    assert_eq!(
        (&s["open"], &s["end_reason"]),
        (&Value::Bool(true), &Value::Null),
        "{s}"
    );
    stop(d).await;
}

fn keyup(node: &str, link: &str, kind: ChangeKind, at_ms: u64, secs: f64) -> ChangeEvent {
    let mut ev = ChangeEvent::new(kind, "test", Some(node));
    ev.time_ms = at_ms;
    let mut l = allstar_nexus_link(link);
    l.keyed = kind == ChangeKind::LinkKeyed;
    ev.link = Some(l);
    if kind == ChangeKind::LinkUnkeyed {
        ev.duration_seconds = Some(secs);
    }
    ev
}

fn allstar_nexus_link(name: &str) -> allstar_nexus::state::LinkView {
    allstar_nexus::state::LinkView {
        node: name.into(),
        kind: allstar_nexus::state::LinkKind::of(name),
        elapsed: "00:00:00".into(),
        ..allstar_nexus::state::LinkView::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_have_no_gaps_or_repeats_under_concurrent_writes() {
    let sim = sim_on_tcp(&["1999"]).await;
    let dir = temp_dir("pages");
    let d = start_daemon(sim.addr(), &["1999"], &state_yaml(&dir, "")).await;
    let now = allstar_nexus::observe::now_ms();
    for i in 0..150u64 {
        let at = now - 100_000 + i * 100;
        let link = format!("{}", 3000 + i % 7);
        d.engine
            .publish(keyup("1999", &link, ChangeKind::LinkUnkeyed, at, 1.0))
            .await
            .expect("published");
    }
    let all = wait_json(&d, "/api/history/keyups?limit=1000", "150 keyups", |v| {
        items(v).len() >= 150
    })
    .await;
    // Without `limit`, a page holds 100 rows and points to the next.
    let (status, first) = get(&d, "/api/history/keyups").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(items(&first).len(), 100);
    assert_eq!(
        first["next_cursor"],
        items(&first)[99]["id"].to_string().as_str()
    );
    // `since` / `until` (ms or RFC 3339) leave the rows outside the range out.
    let all = items(&all);
    let (older, middle, newer) = (&all[76], &all[75], &all[74]);
    let start = |r: &Value| r["start_ms"].as_u64().expect("start_ms");
    assert!(start(older) < start(middle) && start(middle) < start(newer));
    let t2 = start(middle);
    for path in [
        format!("/api/history/keyups?since={t2}&until={t2}"),
        format!(
            "/api/history/keyups?since={}&until={t2}",
            middle["start"].as_str().expect("start")
        ),
    ] {
        let (status, body) = get(&d, &path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let ids: Vec<Value> = items(&body).iter().map(|r| r["id"].clone()).collect();
        assert_eq!(ids, [middle["id"].clone()], "{path}");
    }
    let (_, since) = get(&d, &format!("/api/history/keyups?limit=1000&since={t2}")).await;
    assert_eq!(items(&since).len(), 76, "rows from t2 on");
    assert!(items(&since).iter().all(|r| start(r) >= t2));
    let (_, until) = get(&d, &format!("/api/history/keyups?limit=1000&until={t2}")).await;
    assert_eq!(items(&until).len(), all.len() - 75, "rows up to t2");
    assert!(items(&until).iter().all(|r| start(r) <= t2));
    // A writer keeps adding keyups while a reader pages through.
    let engine = d.engine.clone();
    let writing = tokio::spawn(async move {
        for i in 0..200u64 {
            let at = allstar_nexus::observe::now_ms();
            let change = keyup("1999", "4000", ChangeKind::LinkUnkeyed, at, 0.5 + i as f64);
            engine.publish(change).await.expect("published");
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/history/keyups?limit=7&cursor={c}"),
            None => "/api/history/keyups?limit=7".to_owned(),
        };
        let (status, body) = get(&d, &path).await;
        assert_eq!(status, 200, "{body}");
        seen.extend(items(&body).iter().map(|r| r["id"].as_i64().expect("id")));
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writing.await.expect("writer");
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "strictly newest first, no repeats"
    );
    let first = seen[0];
    // Every row at or below the first id seen was returned exactly once.
    let conn = rusqlite::Connection::open(dir.join("history.db")).expect("open db");
    let all: BTreeSet<i64> = conn
        .prepare("SELECT id FROM keyups WHERE id <= ?1")
        .expect("prepare")
        .query_map([first], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(
        all,
        seen.iter().copied().collect::<BTreeSet<i64>>(),
        "no gaps"
    );
    assert!(seen.len() >= 150);
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_old_rows_at_start() {
    let sim = sim_on_tcp(&["1999"]).await;
    let dir = temp_dir("retention");
    let d = start_daemon(sim.addr(), &["1999"], &state_yaml(&dir, "")).await;
    let now = allstar_nexus::observe::now_ms();
    let day = 86_400_000;
    for i in 0..1200u64 {
        let at = now - 5 * day + i;
        d.engine
            .publish(keyup("1999", "2000", ChangeKind::LinkUnkeyed, at, 1.0))
            .await
            .expect("published");
    }
    d.engine
        .publish(keyup("1999", "2000", ChangeKind::LinkUnkeyed, now, 2.0))
        .await
        .expect("published");
    wait_json(
        &d,
        "/api/history/keyups?limit=1000&link=2000",
        "rows recorded",
        |v| items(v).len() == 1000,
    )
    .await;
    stop(d).await;

    let d = start_daemon(
        sim.addr(),
        &["1999"],
        &state_yaml(&dir, "history:\n  retention_days: 2\n"),
    )
    .await;
    let body = wait_json(
        &d,
        "/api/history/keyups?limit=1000",
        "old rows pruned",
        |v| items(v).len() == 1,
    )
    .await;
    assert_eq!(items(&body)[0]["duration_seconds"], 2.0);
    // The per-hour totals are pruned too: nothing of 5 days ago is counted.
    let since = now - 6 * day;
    let (_, t) = get(&d, &format!("/api/stats/talkers?since={since}")).await;
    assert_eq!(t["talkers"][0]["keyups"], 1, "{t}");
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_named_and_disabled_history_answers_503() {
    let sim = sim_on_tcp(&["1999"]).await;
    let dir = temp_dir("params");
    let d = start_daemon(sim.addr(), &["1999"], &state_yaml(&dir, "")).await;
    for (path, param) in [
        ("/api/history/keyups?limit=0", "limit"),
        ("/api/history/keyups?limit=1001", "limit"),
        ("/api/history/keyups?since=yesterday", "since"),
        ("/api/history/links?until=2026-13-01T00:00:00Z", "until"),
        ("/api/history/ami?cursor=abc", "cursor"),
        ("/api/history/keyups?node=1999%0d%0a", "node"),
        ("/api/history/alerts?colour=red", "colour"),
        ("/api/history/ami?node=1999", "node"),
        ("/api/history/ami?link=2000", "link"),
        ("/api/history/alerts?link=2000", "link"),
        ("/api/history/alerts?server=default", "server"),
        ("/api/stats/activity?bucket=5s", "bucket"),
        (
            "/api/stats/activity?since=0&until=9999999999999&bucket=1m",
            "bucket",
        ),
        ("/api/history/keyups?since=2000&until=1000", "since"),
    ] {
        let (status, body) = get(&d, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        let msg = body["error"].as_str().expect("error text");
        assert!(msg.contains(&format!("`{param}`")), "{path}: {msg}");
    }
    let (status, body) = get(
        &d,
        "/api/history/keyups?since=2026-11-29T00:00:00Z&until=1900000000000",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    stop(d).await;

    let d = start_daemon(
        sim.addr(),
        &["1999"],
        &state_yaml(&dir, "history:\n  enabled: false\n"),
    )
    .await;
    assert!(d.app.history.is_none());
    for path in [
        "/api/history/keyups",
        "/api/stats/talkers",
        "/api/stats/activity",
    ] {
        let (status, body) = get(&d, path).await;
        assert_eq!(status, 503, "{path}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("history is disabled"))
        );
    }
    d.shutdown.cancel();
}
