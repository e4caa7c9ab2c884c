//! The fleet: one daemon (a real process) watching 1,000 simulated Asterisk servers × 5
//! nodes, each on its own loopback port, served by the multi-port simulator in this process
//! (`allstar_nexus::sim::fleet`). Polls every 30 s.
//!
//! Prints: time until every session is logged in; the daemon's RSS; its CPU idle and with
//! every node active (one keyup a minute per node, links coming and going); `/api/nodes`
//! and `/metrics` latency; and a "restart all Asterisk" scenario (every port closes for a
//! few seconds, every session drops): time to recover and the most connection attempts in
//! one second.
//!
//! `cargo bench --bench fleet`. Knobs (environment): `FLEET_SERVERS` (1000),
//! `FLEET_NODES` (5 per server), `FLEET_PLUGINS=1` (run the bundled Lua plugins),
//! `FLEET_IDLE_SECS` (30), `FLEET_ACTIVE_SECS` (60), `FLEET_DOWN_SECS` (5).
//!
//! First, in process: the CPU time of building the `/api/nodes` body for the fleet's
//! nodes (synthetic, through real polls), the way it was built before (every view, then
//! serialised) and in one pass (`StateStore::encode_nodes`). `FLEET_BODY_ONLY=1` stops
//! after that.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use allstar_nexus::ami::{Frame, Reply};
use allstar_nexus::metrics::Metrics;
use allstar_nexus::poller::PollResult;
use allstar_nexus::sim::fleet::{DaemonConfigOptions, Fleet, FleetActivity, FleetConfig};
use allstar_nexus::state::StateStore;
use allstar_nexus::state::engine::{Engine, NodeSpec};
use tokio_util::sync::CancellationToken;

#[path = "support/process.rs"]
mod process;
use process::{cpu_secs, memory_mib};

// As the daemon: the body micro-benchmark allocates as it does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Raises the open-file limit to the hard limit (the daemon inherits it).
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

/// Starts the daemon and returns it with its HTTP address (read from its log).
fn start_daemon(config: &PathBuf) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_allstar-nexus"))
        .args(["--log-format", "text", "run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the daemon");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("AllStar Nexus listening on http://") {
                let addr = line[at + "AllStar Nexus listening on http://".len()..]
                    .trim()
                    .to_owned();
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr);
                }
            }
            if line.contains("ERROR") || line.contains("panicked") {
                eprintln!("daemon: {line}");
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the daemon logs its address");
    (child, addr)
}

/// Latencies of `n` GETs of `url`, sorted (ms), and the body size.
async fn latency(http: &reqwest::Client, url: &str, n: usize) -> (Vec<f64>, usize) {
    let mut times = Vec::with_capacity(n);
    let mut size = 0;
    for _ in 0..n {
        let t = Instant::now();
        let body = http
            .get(url)
            .send()
            .await
            .expect("request")
            .bytes()
            .await
            .expect("body");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        size = body.len();
    }
    times.sort_by(|a, b| a.total_cmp(b));
    (times, size)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Sum of a counter family in a Prometheus text page.
fn metric_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// CPU share of one core used by the daemon over `secs`.
async fn cpu_over(pid: u32, secs: u64) -> f64 {
    let (c0, t0) = (cpu_secs(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    (cpu_secs(pid) - c0) / t0.elapsed().as_secs_f64() * 100.0
}

async fn report_http(http: &reqwest::Client, base: &str, label: &str) {
    for (path, requests) in [("/api/nodes", 20), ("/metrics", 10)] {
        let (times, size) = latency(http, &format!("{base}{path}"), requests).await;
        println!(
            "  {path} ({label}): p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms, {} KiB",
            pct(&times, 0.5),
            pct(&times, 0.95),
            pct(&times, 1.0),
            size / 1024
        );
    }
}

/// Every server logged in again: seconds it took and the most attempts in one second
/// (simulator accepts, daemon-counted reconnect attempts).
async fn restart(fleet: &Fleet, http: &reqwest::Client, base: &str, down: u64) {
    let servers = fleet.config().servers;
    let attempts_url = format!("{base}/metrics");
    let daemon_attempts = |page: String| metric_sum(&page, "nexus_ami_reconnect_attempts_total");
    let page = http.get(&attempts_url).send().await.expect("metrics");
    let mut last_daemon = daemon_attempts(page.text().await.unwrap_or_default());
    let mut last_accepts = fleet.accepted_connections();
    let t0 = Instant::now();
    let restarting = {
        let fleet = fleet.clone();
        tokio::spawn(async move { fleet.restart(Duration::from_secs(down)).await })
    };
    let mut per_sec = Vec::new();
    let mut recovered = None;
    let mut resumed = None;
    while t0.elapsed() < Duration::from_secs(down + 90) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if resumed.is_none() && restarting.is_finished() {
            resumed = Some(t0.elapsed());
        }
        let accepts = fleet.accepted_connections();
        let page = match http.get(&attempts_url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let daemon = daemon_attempts(page);
        per_sec.push((accepts - last_accepts, daemon - last_daemon));
        last_accepts = accepts;
        last_daemon = daemon;
        if resumed.is_some() && fleet.session_count() == servers {
            recovered = Some(t0.elapsed());
            break;
        }
    }
    let _ = restarting.await;
    let down_for = resumed.map_or(0.0, |d| d.as_secs_f64());
    match recovered {
        Some(t) => println!(
            "  restart all {servers}: ports closed {down} s; every session back {:.1} s after the drop ({:.1} s after the ports opened)",
            t.as_secs_f64(),
            t.as_secs_f64() - down_for
        ),
        None => println!(
            "  restart all {servers}: NOT recovered within 90 s ({} logged in)",
            fleet.session_count()
        ),
    }
    let max_acc = per_sec.iter().map(|p| p.0).max().unwrap_or(0);
    let max_att = per_sec.iter().map(|p| p.1 as u64).max().unwrap_or(0);
    println!(
        "  connection attempts per second: at most {max_att} (daemon's reconnect attempts), at most {max_acc} accepted by the servers"
    );
    let shape: Vec<String> = per_sec.iter().map(|(a, d)| format!("{d:.0}/{a}")).collect();
    println!("  per second (attempts/accepted): {}", shape.join(" "));
}

/// CPU seconds of the calling thread.
fn thread_cpu() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec for the call to fill.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t);
    }
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// A model of `n` nodes like the fleet's: two established links each (one keyed), their
/// `LinkedNodes`, built through real XStat/SawStat polls.
fn synthetic_model(n: usize) -> (StateStore, Engine) {
    let store = StateStore::new(4096, 1024);
    let mut engine = Engine::new(store.clone(), Metrics::default(), true);
    let specs: Vec<NodeSpec> = (0..n)
        .map(|i| NodeSpec {
            node_id: (10_000 + i).to_string(),
            server: format!("fleet-{}", i / 5),
            poll_interval: Duration::from_secs(30),
        })
        .collect();
    engine.add_nodes(&specs);
    for (i, spec) in specs.iter().enumerate() {
        let links = [(400_000 + i * 2, "OUT"), (400_001 + i * 2, "IN")];
        let mut x: Vec<(String, String)> = vec![
            ("Response".into(), "Success".into()),
            ("Node".into(), spec.node_id.clone()),
        ];
        let mut s = x.clone();
        for (j, (name, dir)) in links.iter().enumerate() {
            let ip = format!("203.0.113.{}", (i + j) % 250 + 2);
            let conn = format!(
                "{name:<10}{ip:<20}{:<12}{dir:<11}{:<20}{:<20}",
                0, "01:02:03", "ESTABLISHED"
            );
            x.push(("Conn".into(), conn));
            s.push(("Conn".into(), format!("{name} {} 12 -1", j)));
        }
        x.push((
            "LinkedNodes".into(),
            format!("T{}, T{}, T{}", links[0].0, links[1].0, 500_000 + i),
        ));
        x.push((
            "Var".into(),
            format!("RPT_ALINKS=2,{}TK,{}TU", links[0].0, links[1].0),
        ));
        x.push(("Var".into(), "RPT_TXKEYED=0".into()));
        x.push(("Var".into(), "RPT_RXKEYED=0".into()));
        engine.on_poll(PollResult {
            node: spec.node_id.clone(),
            server: spec.server.clone(),
            xstat: Ok(Reply {
                frame: Frame::from_headers(&x),
                rx_seq: i as u64 * 2 + 1,
            }),
            sawstat: Ok(Reply {
                frame: Frame::from_headers(&s),
                rx_seq: i as u64 * 2 + 2,
            }),
            duration: Duration::ZERO,
        });
    }
    (store, engine)
}

/// CPU time of building the `/api/nodes` body for `n` nodes: before (views, then
/// serde_json::to_vec, as `warp::reply::json` does) and in one pass (what the route does).
fn body_benchmark(n: usize) {
    #[derive(serde::Serialize)]
    struct Nodes<'a> {
        seq: u64,
        epoch: &'a str,
        nodes: Vec<allstar_nexus::state::NodeView>,
    }
    let (store, _engine) = synthetic_model(n);
    let rounds = 60;
    let mut size = 0;
    let mut views_ms = Vec::new();
    let mut before_ms = Vec::new();
    let mut after_ms = Vec::new();
    let mut hint = 0;
    for _ in 0..rounds {
        let t = thread_cpu();
        let (seq, nodes, _rx) = store.subscribe_with_snapshot();
        let built = thread_cpu();
        let body = serde_json::to_vec(&Nodes {
            seq,
            epoch: store.epoch(),
            nodes,
        })
        .expect("encodes");
        before_ms.push((thread_cpu() - t) * 1e3);
        views_ms.push((built - t) * 1e3);
        size = body.len();
        drop(body);

        let t = thread_cpu();
        let mut out = Vec::with_capacity(hint + hint / 16 + 256);
        store
            .encode_nodes(&mut out, |out, seq| {
                out.extend_from_slice(format!("{{\"seq\":{seq},\"epoch\":").as_bytes());
                let _ = serde_json::to_writer(&mut *out, store.epoch());
                out.extend_from_slice(b",\"nodes\":");
            })
            .expect("encodes");
        out.push(b'}');
        after_ms.push((thread_cpu() - t) * 1e3);
        hint = out.len();
        // Keyed links' seconds grow between the two builds: a few digits more or less.
        assert!(out.len().abs_diff(size) < size / 100, "same body");
    }
    for v in [&mut views_ms, &mut before_ms, &mut after_ms] {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    println!(
        "/api/nodes body, {n} nodes, {} KiB ({} B a node), CPU per build over {rounds} builds:",
        size / 1024,
        size / n.max(1)
    );
    println!(
        "  before (views under the lock, then to_vec): p50 {:.2} ms, p95 {:.2} ms (views alone, under the lock: p50 {:.2} ms)",
        pct(&before_ms, 0.5),
        pct(&before_ms, 0.95),
        pct(&views_ms, 0.5)
    );
    println!(
        "  one pass (all under the lock): p50 {:.2} ms, p95 {:.2} ms",
        pct(&after_ms, 0.5),
        pct(&after_ms, 0.95)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that is not ours means skip.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && a != "fleet")
    {
        return;
    }
    let servers: usize = env_num("FLEET_SERVERS", 1000);
    let nodes: usize = env_num("FLEET_NODES", 5);
    let plugins = env_num("FLEET_PLUGINS", 0) == 1;
    let idle_secs: u64 = env_num("FLEET_IDLE_SECS", 30);
    let active_secs: u64 = env_num("FLEET_ACTIVE_SECS", 60);
    let down: u64 = env_num("FLEET_DOWN_SECS", 5);
    body_benchmark(servers * nodes);
    if env_num("FLEET_BODY_ONLY", 0) == 1 {
        return;
    }
    let nofile = raise_nofile();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        println!(
            "fleet: {servers} servers × {nodes} nodes, polls every 30 s, plugins {}, open files ≤ {nofile}",
            if plugins { "on" } else { "off" }
        );
        let fleet = Fleet::start(FleetConfig {
            servers,
            nodes_per_server: nodes,
            links_per_node: 2,
            ..FleetConfig::default()
        })
        .await
        .expect("the fleet starts (ulimit -n?)");
        let dir = std::env::temp_dir().join(format!("nexus-fleet-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("fleet.yaml");
        fleet
            .write_daemon_config(
                &path,
                &DaemonConfigOptions {
                    listen: "127.0.0.1:0".parse().expect("addr"),
                    poll_seconds: 30,
                    plugins,
                },
            )
            .expect("config");
        let t0 = Instant::now();
        let (mut daemon, addr) = start_daemon(&path);
        let pid = daemon.id();
        let base = format!("http://{addr}");
        let http = reqwest::Client::new();
        while fleet.session_count() < servers && t0.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "  all connected: {}/{servers} sessions {:.2} s after the daemon started",
            fleet.session_count(),
            t0.elapsed().as_secs_f64()
        );
        // Let the first polls (every node, right after its connect) and plugins settle.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (rss, hwm) = memory_mib(pid);
        println!("  RSS after connect: {rss:.1} MiB (peak {hwm:.1} MiB)");
        let idle = cpu_over(pid, idle_secs).await;
        let (rss, hwm) = memory_mib(pid);
        println!("  idle: {idle:.2} % of a core over {idle_secs} s; RSS {rss:.1} MiB (peak {hwm:.1} MiB)");
        report_http(&http, &base, "idle").await;
        let stop = CancellationToken::new();
        let activity = allstar_nexus::sim::fleet::spawn_fleet_activity(
            fleet.clone(),
            FleetActivity {
                keyups_per_minute: 1.0,
                link_changes_per_hour: 6.0,
                seed: 1999,
            },
            stop.clone(),
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        let active = cpu_over(pid, active_secs).await;
        let (rss, hwm) = memory_mib(pid);
        println!(
            "  active (1 keyup/min/node, 6 link changes/h/node): {active:.2} % of a core over {active_secs} s; RSS {rss:.1} MiB (peak {hwm:.1} MiB)"
        );
        report_http(&http, &base, "active").await;
        stop.cancel();
        let _ = activity.await;
        restart(&fleet, &http, &base, down).await;
        let (rss, hwm) = memory_mib(pid);
        println!("  RSS after the restart: {rss:.1} MiB (peak {hwm:.1} MiB)");
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        let _ = daemon.wait();
        fleet.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    });
}
