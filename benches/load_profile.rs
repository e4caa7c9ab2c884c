//! The load profiles of issue 13, run as real processes: `allstar-nexus simulate` and
//! `allstar-nexus run` (the binary cargo built), with the WebSocket clients in this process.
//!
//! - busy: 20 nodes × 25 links on one simulated server, polled every 5 s, 50 WebSocket
//!   clients, 50 link key changes a second (4 app_rpt events each: 200 events/s);
//! - idle: 2 nodes, no links, default polling, no clients.
//!
//! Printed: the daemon's CPU (utime + stime from `/proc/PID/stat` over the measured window,
//! as a share of one core), RSS (`VmRSS`, and the peak `VmHWM` from `/proc/PID/status`),
//! and the event→client latency (p50/p99): the simulator makes change `k` at `k × period`
//! after the Unix epoch (see `sim::activity::SimLoad`), so each client works out when the
//! change it received was made.
//!
//! `cargo bench --bench load_profile` (about 2 minutes). `LOAD_PROFILE_SECONDS` sets the
//! busy window (default 60), `LOAD_PROFILE_ONLY=busy|idle` runs one profile.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use allstar_nexus::sim::activity::load_change;
use futures_util::StreamExt;

#[path = "support/process.rs"]
mod process;
use process::{Proc, cpu_secs, memory_kib, spawn_and_read};

/// One profile's settings.
struct Profile {
    name: &'static str,
    nodes: usize,
    links_per_node: usize,
    link_keys_per_second: f64,
    poll_seconds: u32,
    clients: usize,
    warmup: Duration,
    window: Duration,
}

/// What was measured.
struct Figures {
    cpu_share: f64,
    rss_kib: u64,
    hwm_kib: u64,
    latencies_us: Vec<u64>,
    events: usize,
}

fn node_id(i: usize) -> String {
    (2000 + i).to_string()
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "nexus-load-{tag}-{}-{}",
        std::process::id(),
        unix_us()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Starts the simulator and the daemon for `p`; returns both and the daemon's address.
fn start(p: &Profile, dir: &Path) -> (Proc, Proc, SocketAddr) {
    let nodes: Vec<String> = (0..p.nodes).map(node_id).collect();
    let sim_args = vec![
        "simulate".to_owned(),
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--nodes".to_owned(),
        nodes.join(","),
        "--links-per-node".to_owned(),
        p.links_per_node.to_string(),
        "--link-keys-per-second".to_owned(),
        p.link_keys_per_second.to_string(),
    ];
    let (sim, sim_addr) = spawn_and_read(&sim_args, "address");
    let sim_addr: SocketAddr = sim_addr.parse().expect("simulator address");
    let mut yaml = format!(
        "listen: 127.0.0.1:0\nami_host: 127.0.0.1\nami_port: {}\nami_username: admin\n\
         ami_password: nexus-sim\nastdb_path: /nonexistent/astdb.txt\nscript_dirs: []\n\
         polling_interval_seconds: {}\nstate_dir: {}\nnodes:\n",
        sim_addr.port(),
        p.poll_seconds,
        dir.join("state").display()
    );
    for n in &nodes {
        yaml.push_str(&format!("  - node_id: {n}\n"));
    }
    let config = dir.join("config.yaml");
    std::fs::write(&config, yaml).expect("write config");
    let args = vec![
        "run".to_owned(),
        "--config".to_owned(),
        config.display().to_string(),
    ];
    let (daemon, http) = spawn_and_read(&args, "http");
    let http: SocketAddr = http.parse().expect("daemon address");
    (sim, daemon, http)
}

/// When the change this client saw was made (µs since the epoch), from the load clock.
fn made_at(p: &Profile, node: &str, link: &str, keyed: bool, now_us: u64) -> Option<u64> {
    let i = node.parse::<usize>().ok()?.checked_sub(2000)?;
    let j = link.parse::<usize>().ok()?.checked_sub(400_000 + i * 100)?;
    if p.link_keys_per_second <= 0.0 {
        return None;
    }
    let period = (1e6 / p.link_keys_per_second) as u64;
    let cycle = 2 * (p.nodes * p.links_per_node) as u64;
    let newest = now_us / period;
    (0..cycle.min(newest + 1))
        .map(|back| newest - back)
        .find(|&k| load_change(k, p.nodes, p.links_per_node) == (i, j, keyed))
        .map(|k| k * period)
}

/// One WebSocket client: records the latency of every link key change until `until`.
async fn client(p: Arc<Profile>, http: SocketAddr, until: Instant, out: Arc<Mutex<Vec<u64>>>) {
    let url = format!("ws://{http}/ws");
    let (mut ws, _) = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok(ok) => ok,
        Err(e) => panic!("WebSocket {url}: {e}"),
    };
    let mut mine = Vec::new();
    let deadline = tokio::time::Instant::from_std(until);
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = tokio::time::sleep_until(deadline) => break,
        };
        let Some(Ok(msg)) = msg else { break };
        let Ok(text) = msg.into_text() else { continue };
        let now = unix_us();
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
            continue;
        };
        let Some(ev) = v.get("event") else { continue };
        let keyed = match ev.get("kind").and_then(|k| k.as_str()) {
            Some("link_keyed") => true,
            Some("link_unkeyed") => false,
            _ => continue,
        };
        let node = ev.get("node").and_then(|n| n.as_str()).unwrap_or("");
        let link = ev
            .get("link")
            .and_then(|l| l.get("node"))
            .and_then(|n| n.as_str())
            .unwrap_or("");
        if let Some(at) = made_at(&p, node, link, keyed, now) {
            mine.push(now.saturating_sub(at));
        }
    }
    out.lock().expect("latency lock").extend(mine);
}

fn measure(p: Profile) -> Figures {
    let dir = temp_dir(p.name);
    let (_sim, daemon, http) = start(&p, &dir);
    let pid = daemon.pid();
    let p = Arc::new(p);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let measure_from = Instant::now() + p.warmup;
    let until = measure_from + p.window;
    let out = Arc::new(Mutex::new(Vec::new()));
    let figures = rt.block_on(async {
        let tasks: Vec<_> = (0..p.clients)
            .map(|_| tokio::spawn(client(p.clone(), http, until, out.clone())))
            .collect();
        tokio::time::sleep_until(tokio::time::Instant::from_std(measure_from)).await;
        out.lock().expect("latency lock").clear();
        let cpu0 = cpu_secs(pid);
        let t0 = Instant::now();
        tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
        let cpu = cpu_secs(pid) - cpu0;
        let wall = t0.elapsed().as_secs_f64();
        for t in tasks {
            let _ = t.await;
        }
        let (rss_kib, hwm_kib) = memory_kib(pid);
        let mut latencies_us = std::mem::take(&mut *out.lock().expect("latency lock"));
        latencies_us.sort_unstable();
        Figures {
            cpu_share: cpu / wall,
            rss_kib,
            hwm_kib,
            events: latencies_us.len(),
            latencies_us,
        }
    });
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
    figures
}

fn pct(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn report(name: &str, f: &Figures) {
    println!(
        "load_profile/{name}: cpu {:.2}% of a core, VmRSS {:.1} MiB, VmHWM {:.1} MiB, \
         {} client deliveries, latency p50 {:.2} ms p99 {:.2} ms",
        f.cpu_share * 100.0,
        f.rss_kib as f64 / 1024.0,
        f.hwm_kib as f64 / 1024.0,
        f.events,
        pct(&f.latencies_us, 0.5),
        pct(&f.latencies_us, 0.99),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that names neither profile is ignored.
    let window = std::env::var("LOAD_PROFILE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let only = std::env::var("LOAD_PROFILE_ONLY").unwrap_or_default();
    if only.is_empty() || only == "busy" {
        let busy = measure(Profile {
            name: "busy",
            nodes: 20,
            links_per_node: 25,
            link_keys_per_second: 50.0,
            poll_seconds: 5,
            clients: 50,
            warmup: Duration::from_secs(15),
            window: Duration::from_secs(window),
        });
        report(
            "busy (20 nodes x 25 links, 5 s polls, 50 clients, 200 events/s)",
            &busy,
        );
    }
    if only.is_empty() || only == "idle" {
        let idle = measure(Profile {
            name: "idle",
            nodes: 2,
            links_per_node: 0,
            link_keys_per_second: 0.0,
            poll_seconds: 60,
            clients: 0,
            warmup: Duration::from_secs(10),
            window: Duration::from_secs(window.min(30)),
        });
        report("idle (2 nodes)", &idle);
    }
}
