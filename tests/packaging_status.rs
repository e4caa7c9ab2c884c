//! `allstar-nexus status` against the simulator and the daemon: the one-shot table (library
//! and binary) and `--watch` redrawing from the WebSocket stream.

mod common;

use std::time::Duration;

use allstar_nexus::sim::{self, SimHandle};
use allstar_nexus::status::Client;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The demo network (1999 with links, 2000, 2001) and the daemon watching it, every node
/// polled once.
async fn world() -> (SimHandle, allstar_nexus::daemon::Running, String) {
    let sim = common::sim_on_tcp(&["1999", "2000", "2001"]).await;
    sim::demo_network(&sim);
    let running = common::start_daemon(sim.addr(), &["1999", "2000", "2001"], "").await;
    let state = running.app.state.clone();
    common::wait_until("every node polled", || {
        let nodes = state.nodes();
        nodes.len() == 3 && nodes.iter().all(|n| !n.stale && n.last_poll.is_some())
    })
    .await;
    let base = format!("http://{}", running.http_addr);
    (sim, running, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_table_shows_nodes_links_and_ami() {
    let (sim, running, base) = world().await;
    let view = Client::new(&base, None)
        .expect("client")
        .fetch()
        .await
        .expect("fetch");
    let table = view.render();
    for node in ["NODE 1999", "NODE 2000", "NODE 2001"] {
        assert!(table.contains(node), "{node}:\n{table}");
    }
    assert!(table.contains("connected for"), "{table}");
    let hub = running
        .app
        .state
        .nodes()
        .into_iter()
        .find(|n| n.node_id == "1999")
        .expect("1999");
    assert!(!hub.links.is_empty());
    for l in &hub.links {
        assert!(
            table
                .lines()
                .any(|line| line.trim_start().starts_with(&l.node)),
            "link {}:\n{table}",
            l.node
        );
    }

    // The binary prints the same table.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_allstar-nexus"))
        .args(["status", "--url", &base])
        .env_remove("NEXUS_TOKEN")
        .output()
        .await
        .expect("run status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("NODE 1999") && text.contains("AMI SERVER"),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "no escapes into a pipe");
    running.shutdown.cancel();
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_daemon_is_said_in_plain_words() {
    // A port nothing listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let err = Client::new(&format!("http://127.0.0.1:{port}"), None)
        .expect("client")
        .fetch()
        .await
        .expect_err("nothing there");
    assert!(
        format!("{err:#}").contains("cannot reach AllStar Nexus"),
        "{err:#}"
    );
}

/// The next frame `watch` drew (20 s at most: the daemon is on loopback).
async fn next(frames: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(20), frames.recv())
        .await
        .expect("a frame in time")
        .expect("watch running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_redraws_from_the_stream() {
    let (sim, running, base) = world().await;
    let client = Client::new(&base, None).expect("client");
    let (tx, mut frames) = mpsc::unbounded_channel::<String>();
    let stop = CancellationToken::new();
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move { client.watch(|f| drop(tx.send(f.to_owned())), stop).await })
    };
    let first = next(&mut frames).await;
    assert!(
        first.contains("NODE 2000") && first.contains("TX idle"),
        "{first}"
    );

    // Wait until the stream is open (the daemon counts the client), then key a transmitter.
    let hub = running.app.clone();
    common::wait_until("watch connected", || hub.metrics.ws_clients.get() >= 1).await;
    sim.set_tx_keyed("2000", true);
    loop {
        let f = next(&mut frames).await;
        if let Some(line) = f.lines().find(|l| l.starts_with("NODE 2000")) {
            if line.contains("TX KEYED") {
                break;
            }
        }
    }
    // A link that goes away disappears from the table.
    let gone = running
        .app
        .state
        .nodes()
        .into_iter()
        .find(|n| n.node_id == "1999")
        .and_then(|n| n.links.first().map(|l| l.node.clone()))
        .expect("a link on 1999");
    assert!(sim.disconnect_link("1999", &gone));
    loop {
        let f = next(&mut frames).await;
        let block: String = f
            .split("NODE ")
            .find(|b| b.starts_with("1999"))
            .unwrap_or("")
            .to_owned();
        if !block
            .lines()
            .any(|l| l.split_whitespace().next() == Some(gone.as_str()))
        {
            break;
        }
    }
    stop.cancel();
    task.await.expect("join").expect("watch ends cleanly");
    running.shutdown.cancel();
    sim.shutdown();
}
