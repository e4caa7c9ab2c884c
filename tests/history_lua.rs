//! Lua and the history store: `nexus.history.keyups{}` / `talkers{}` read recorded keyups,
//! return at most 100 rows (20 without `limit`), bad arguments raise, and `nexus.store`
//! survives a restart of the daemon.

mod common;

use std::path::Path;
use std::time::Duration;

use allstar_nexus::daemon::Running;
use allstar_nexus::sim::SimLink;
use allstar_nexus::state::{ChangeEvent, ChangeKind, Direction, LinkKind, LinkView};
use common::*;
use tokio_util::sync::CancellationToken;

const SCRIPT: &str = r#"
nexus.store.runs = (nexus.store.runs or 0) + 1
nexus.store.pi = 3.5
nexus.alert{title = "runs", message = tostring(nexus.store.runs) .. " " .. tostring(nexus.store.pi), key = "runs"}
local ok = pcall(nexus.history.keyups, {limit = 0})
local ok2 = pcall(nexus.history.talkers, {since = {}})
nexus.alert{title = "checks", message = tostring(ok) .. " " .. tostring(ok2), key = "checks"}
local done = false
nexus.every(0.1, function()
  if done then return end
  local rows = nexus.history.keyups{node = "1999", limit = 5}
  if #rows > 0 and rows[1].end_reason == "unkeyed" then
    done = true
    local top = nexus.history.talkers{node = 1999, since = nexus.now() - 3600}
    nexus.alert{title = "history",
      message = rows[1].link .. " " .. rows[1].source .. " " .. #top .. " " .. top[1].keyups, key = "h"}
  end
end)
"#;

async fn start(sim_port: u16, scripts: &Path, state: &Path) -> Running {
    let yaml = format!(
        "listen: 127.0.0.1:0\nami_host: 127.0.0.1\nami_port: {sim_port}\nami_username: admin\n\
         ami_password: {SECRET}\nami_retry_interval: 1s\nami_retry_max: 2s\n\
         astdb_path: /nonexistent/astdb.txt\nscript_dirs: [{}]\nstate_dir: {}\nnodes:\n  - node_id: 1999\n",
        scripts.display(),
        state.display()
    );
    let config = allstar_nexus::config::Config::parse(&yaml, "test", None).expect("config");
    allstar_nexus::daemon::start(config, CancellationToken::new())
        .await
        .expect("daemon starts")
}

fn alert(d: &Running, title: &str) -> Option<String> {
    d.app
        .alerts
        .recent(100)
        .iter()
        .rev()
        .find(|a| a.title == title)
        .map(|a| a.message.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_read_history_and_their_store_survives_a_restart() {
    let sim = sim_on_tcp(&["1999"]).await;
    sim.connect_link("1999", SimLink::allstar("2000", "10.0.0.2", Direction::In));
    let scripts = temp_dir("lua-scripts");
    std::fs::write(scripts.join("hist.lua"), SCRIPT).expect("script");
    let state = temp_dir("lua-state");

    let d = start(sim.addr().port(), &scripts, &state).await;
    // The script raises "runs" then "checks" on its own thread: wait for the second.
    wait_until("first run", || alert(&d, "checks").is_some()).await;
    assert_eq!(alert(&d, "runs").as_deref(), Some("1 3.5"));
    assert_eq!(alert(&d, "checks").as_deref(), Some("false false"));
    wait_until("link seen", || {
        d.app
            .state
            .node("1999")
            .is_some_and(|n| !n.links.is_empty())
    })
    .await;
    sim.set_link_keyed("1999", "2000", true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    sim.set_link_keyed("1999", "2000", false);
    wait_until("script read history", || alert(&d, "history").is_some()).await;
    assert_eq!(alert(&d, "history").as_deref(), Some("2000 link 1 1"));
    d.shutdown.cancel();
    let h = d.app.history.clone().expect("history on");
    tokio::time::timeout(Duration::from_secs(10), h.closed())
        .await
        .expect("writer stops");

    let d = start(sim.addr().port(), &scripts, &state).await;
    wait_until("second run", || alert(&d, "runs").is_some()).await;
    assert_eq!(
        alert(&d, "runs").as_deref(),
        Some("2 3.5"),
        "nexus.store is durable"
    );
    // The alerts of both runs are in the history.
    let h = d.app.history.clone().expect("history on");
    wait_until("alerts recorded", || {
        h.read(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM alerts WHERE title = 'runs'",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .unwrap_or(0)
            == 2
    })
    .await;
    d.shutdown.cancel();
}

/// Reports how many rows each call returns once the last of 151 keyups (151 links) is in.
const CAPS: &str = r#"
local done = false
nexus.every(0.1, function()
  if done or #nexus.history.keyups{link = "9999", limit = 1} == 0 then return end
  done = true
  nexus.alert{title = "caps", key = "caps", message = string.format("%d %d %d %d %d %d %s",
    #nexus.history.keyups{limit = 500}, #nexus.history.keyups{}, #nexus.history.keyups{limit = 7},
    #nexus.history.talkers{limit = 500}, #nexus.history.talkers{},
    #nexus.history.keyups{link = 3007}, tostring(pcall(nexus.history.keyups, {link = {}})))}
end)
"#;

fn unkeyed(link: &str) -> ChangeEvent {
    let mut ev = ChangeEvent::new(ChangeKind::LinkUnkeyed, "default", Some("1999"));
    ev.link = Some(LinkView {
        node: link.into(),
        kind: LinkKind::of(link),
        ..LinkView::default()
    });
    ev.duration_seconds = Some(1.0);
    ev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_calls_return_at_most_100_rows_and_20_by_default() {
    let sim = sim_on_tcp(&["1999"]).await;
    let scripts = temp_dir("lua-caps");
    std::fs::write(scripts.join("caps.lua"), CAPS).expect("script");
    let state = temp_dir("lua-caps-state");
    let d = start(sim.addr().port(), &scripts, &state).await;
    for i in 0..150 {
        let change = unkeyed(&(3000 + i).to_string());
        d.engine.publish(change).await.expect("published");
    }
    // Written last (same or a later batch than the others): the script's signal.
    d.engine.publish(unkeyed("9999")).await.expect("published");
    wait_until("script counted rows", || alert(&d, "caps").is_some()).await;
    // keyups{limit = 500}, keyups{}, keyups{limit = 7}, talkers{limit = 500}, talkers{};
    // a link given as a number filters; a link of another type raises (never ignored).
    assert_eq!(
        alert(&d, "caps").as_deref(),
        Some("100 20 7 100 20 1 false")
    );
    d.shutdown.cancel();
}
