//! How fast changes get through Lua hooks, and what a hook adds to an event's delivery.
//!
//! `cargo bench --bench lua_hooks` prints:
//! - throughput: changes per second through the inbox into a trivial `nexus.on` hook (and
//!   one that reads the event's fields), with the queue kept full;
//! - latency: from `EngineSender::publish` (the real path: engine, broadcast, forwarder
//!   task, inbox, Lua thread) until the scripts have handled the change, one change at a
//!   time, with a trivial hook and with no script listening; the difference is what the
//!   hook adds.
//!
//! The daemon is started through the composition root (`daemon::start`), without AMI.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allstar_nexus::config::Config;
use allstar_nexus::script::ScriptHost;
use allstar_nexus::state::{ChangeEvent, ChangeKind, EngineSender, LinkView, Published};
use tokio_util::sync::CancellationToken;

const TRIVIAL: &str = "n = 0\nnexus.on('link_keyed', function(e) n = n + 1 end)\n";
const READS_FIELDS: &str = "keys = {}\nnexus.on('link_keyed', function(e) keys[e.link.node] = (keys[e.link.node] or 0) + (e.duration_seconds or 1) end)\n";
const NOT_LISTENING: &str = "nexus.on('tx_keyed', function(e) end)\n";

struct Rig {
    host: ScriptHost,
    engine: EngineSender,
    shutdown: CancellationToken,
    dir: PathBuf,
}

impl Rig {
    /// The daemon (`daemon::start`, the composition root) without AMI, history or astdb,
    /// with one script.
    async fn start(script: &str) -> Rig {
        let dir = std::env::temp_dir().join(format!(
            "nexus-bench-{}-{}",
            std::process::id(),
            script.len()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("state")).expect("bench dir");
        std::fs::write(dir.join("bench.lua"), script).expect("write script");
        let yaml = format!(
            "listen: 127.0.0.1:0\nami_enabled: false\nastdb_path: /nonexistent/astdb.txt\n\
             script_dirs: [{:?}]\nstate_dir: {:?}\nhistory:\n  enabled: false\nlua:\n  queue: 10000\n",
            dir.display().to_string(),
            dir.join("state").display().to_string()
        );
        let config = Config::parse(&yaml, "bench.yaml", None).expect("config");
        let shutdown = CancellationToken::new();
        let running = allstar_nexus::daemon::start(config, shutdown.clone())
            .await
            .expect("daemon starts");
        let host = running.scripts;
        assert!(
            host.wait_version("bench.lua", script.as_bytes(), Duration::from_secs(10))
                .await,
            "script loaded"
        );
        Rig {
            host,
            engine: running.engine,
            shutdown,
            dir,
        }
    }

    fn stop(self) {
        self.shutdown.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn link_keyed(seq: u64) -> ChangeEvent {
    let mut e = ChangeEvent::new(ChangeKind::LinkKeyed, "default", Some("1999"));
    e.seq = seq;
    e.link = Some(LinkView {
        node: format!("{}", 2000 + seq % 50),
        ip: Some("192.0.2.10".into()),
        elapsed: "00:01:00".into(),
        connected_seconds: 60,
        keyed: true,
        last_keyed_seconds: Some(0),
        last_unkeyed_seconds: Some(3),
        callsign: Some("W1AW".into()),
        keyups: seq,
        keyed_seconds_total: 12.5,
        ..LinkView::default()
    });
    e
}

/// Changes per second through the inbox and the hook, the queue kept full.
async fn throughput(script: &str, n: u64) -> f64 {
    let rig = Rig::start(script).await;
    let events: Vec<Arc<Published>> = (1..=n).map(|s| Published::new(link_keyed(s))).collect();
    let started = Instant::now();
    for p in events {
        while !rig.host.dispatch(p.clone()) {
            // Full: let the Lua thread drain it (spinning on the lock would only slow it).
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    rig.host.flush().await;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    assert_eq!(rig.host.delivered_seq(), n);
    rig.stop();
    rate
}

/// Publish-to-handled latency of `n` changes sent one at a time, in microseconds, sorted.
async fn latencies(script: &str, n: usize) -> Vec<f64> {
    let rig = Rig::start(script).await;
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 200 {
        let started = Instant::now();
        let seq = rig
            .engine
            .publish(link_keyed(0))
            .await
            .expect("published")
            .event
            .seq;
        while rig.host.delivered_seq() < seq {
            tokio::task::yield_now().await;
        }
        if i >= 200 {
            out.push(started.elapsed().as_secs_f64() * 1e6); // after a warm-up
        }
    }
    rig.stop();
    out.sort_by(f64::total_cmp);
    out
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run small then.
    let full = std::env::args().any(|a| a == "--bench");
    let (n, m) = if full {
        (300_000, 20_000)
    } else {
        (2_000, 200)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for (label, script) in [
            ("no script listening", NOT_LISTENING),
            ("trivial hook", TRIVIAL),
            ("hook reading fields", READS_FIELDS),
        ] {
            let rate = throughput(script, n).await;
            println!("throughput, {label:<20} {rate:>12.0} changes/s  ({n} changes)");
        }
        let with = latencies(TRIVIAL, m).await;
        let without = latencies(NOT_LISTENING, m).await;
        for (label, l) in [("with a trivial hook", &with), ("no script listening", &without)] {
            println!(
                "latency,    {label:<20} p50 {:>7.1} µs   p99 {:>7.1} µs   max {:>8.1} µs  ({m} changes)",
                pct(l, 0.5),
                pct(l, 0.99),
                pct(l, 1.0)
            );
        }
        println!(
            "added by the hook:               p50 {:>7.1} µs   p99 {:>7.1} µs",
            pct(&with, 0.5) - pct(&without, 0.5),
            pct(&with, 0.99) - pct(&without, 0.99)
        );
    });
}
