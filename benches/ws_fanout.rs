//! WebSocket fan-out benchmark: one change fanned out to 1,000 WebSocket clients on
//! loopback.
//!
//! The daemon runs in this process, built by the composition root (`daemon::start`, as
//! `main.rs` does) from a configuration whose one AMI server is unreachable, so nothing but
//! the published changes moves; the clients run in a child process (this same binary,
//! started with `ws-fanout-client`), so the figures for each side are separate: server CPU
//! (user and kernel) from `getrusage(RUSAGE_SELF)` of this process, server RSS from
//! `/proc/self/status`, delivery latency measured at the clients against the publish time
//! (both sides read `CLOCK_MONOTONIC`, which is shared by every process).
//!
//! Run: `cargo bench --bench ws_fanout` (options after `--`: `--clients N --events N
//! --interval-ms N`). Mind the open-file limit (`ulimit -n`): every client needs one
//! descriptor on each side.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use allstar_nexus::config::Config;
use allstar_nexus::state::{ChangeEvent, ChangeKind, Direction, LinkState, LinkView, Mode};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

// --- libc bits (std links libc; no extra crate needed) ---------------------------------

#[repr(C)]
#[derive(Default)]
struct Timeval {
    tv_sec: i64,
    tv_usec: i64,
}

#[repr(C)]
#[derive(Default)]
struct Rusage {
    ru_utime: Timeval,
    ru_stime: Timeval,
    rest: [i64; 14],
}

#[repr(C)]
#[derive(Default)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

unsafe extern "C" {
    fn getrusage(who: i32, usage: *mut Rusage) -> i32;
    fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
}

const RUSAGE_SELF: i32 = 0;
const CLOCK_MONOTONIC: i32 = 1;

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let (user, sys) = cpu_split();
    user + sys
}

/// (user, system) CPU time of this process.
fn cpu_split() -> (Duration, Duration) {
    let mut r = Rusage::default();
    // SAFETY: `r` is a valid, writable `struct rusage` (64-bit Linux layout).
    if unsafe { getrusage(RUSAGE_SELF, &mut r) } != 0 {
        return (Duration::ZERO, Duration::ZERO);
    }
    let tv = |t: &Timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (tv(&r.ru_utime), tv(&r.ru_stime))
}

/// `CLOCK_MONOTONIC` in nanoseconds: comparable between processes.
fn mono_ns() -> u64 {
    let mut t = Timespec::default();
    // SAFETY: `t` is a valid, writable `struct timespec`.
    unsafe { clock_gettime(CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// A line of `/proc/self/status` (`VmRSS`, `VmHWM`), in KiB.
fn proc_status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("ws-fanout-client") {
        client_main(&args);
        return;
    }
    let clients = arg(&args, "--clients", 1000) as usize;
    let events = arg(&args, "--events", 300) as usize;
    let interval = Duration::from_millis(arg(&args, "--interval-ms", 20));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(server_main(clients, events, interval));
}

// --- server side (this process) ---------------------------------------------------------

/// The daemon's configuration: node 1999 on an AMI server nobody listens on (it retries
/// in the background, once a minute), no scripts, no history file, room for every client.
fn bench_config(clients: usize) -> Config {
    let yaml = format!(
        "listen: 127.0.0.1:0\nami_host: 127.0.0.1\nami_port: 9\nami_username: admin\nami_password: bench\n\
         ami_retry_interval: 60s\nami_retry_max: 60s\nastdb_path: /nonexistent/astdb.txt\nscript_dirs: []\n\
         nodes:\n  - node_id: 1999\nhistory:\n  enabled: false\n\
         http:\n  max_connections_per_ip: {conns}\n  max_connections: {conns}\n\
         websocket:\n  max_clients: {conns}\n  client_queue: 512\n  heartbeat: 60s\n",
        conns = clients + 16
    );
    Config::parse(&yaml, "bench", None).expect("bench config")
}

/// A realistic change: a link keyed, with its full link view (about 400 bytes of JSON).
fn link_keyed() -> ChangeEvent {
    let mut ev = ChangeEvent::new(ChangeKind::LinkKeyed, "default", Some("1999"));
    ev.link = Some(LinkView {
        node: "2000".into(),
        ip: Some("192.0.2.44".into()),
        direction: Some(Direction::Out),
        elapsed: "01:02:03".into(),
        connected_seconds: 3723,
        mode: Some(Mode::T),
        state: Some(LinkState::Established),
        keyed: true,
        last_keyed_seconds: Some(0),
        last_unkeyed_seconds: Some(12),
        callsign: Some("W1AW".into()),
        description: Some("ARRL HQ repeater".into()),
        location: Some("Newington, CT".into()),
        keyups: 42,
        keyed_seconds_total: 311.5,
        ..LinkView::default()
    });
    ev
}

async fn server_main(clients: usize, events: usize, interval: Duration) {
    let shutdown = CancellationToken::new();
    let daemon = allstar_nexus::daemon::start(bench_config(clients), shutdown.clone())
        .await
        .expect("start the daemon");
    let (app, addr) = (daemon.app.clone(), daemon.http_addr);
    // Let the engine, the AMI supervisor's first attempt and the HTTP server settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = proc_status_kib("VmRSS:");

    let exe = std::env::current_exe().expect("own path");
    let warmup = 20;
    let mut child = Command::new(exe)
        .args([
            "ws-fanout-client",
            &addr.to_string(),
            &clients.to_string(),
            &(warmup + events).to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the client process");
    let mut child_in = child.stdin.take().expect("stdin");
    let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
    let child_out = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(child_out).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_line = |prefix: &str, within: Duration| -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match line_rx.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(l) => eprintln!("client: {l}"),
                Err(_) => panic!("the client process did not report {prefix} in time"),
            }
        }
    };

    let t_connect = Instant::now();
    let ready = tokio::task::block_in_place(|| wait_line("READY", Duration::from_secs(120)));
    let connect_time = t_connect.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_clients = proc_status_kib("VmRSS:");
    let connected = app.metrics.ws_clients.get();

    // Warm-up, then the measured events, one every `interval`.
    let mut sent: Vec<(u64, u64)> = Vec::with_capacity(warmup + events);
    for _ in 0..warmup {
        let t = mono_ns();
        let p = daemon
            .engine
            .publish(link_keyed())
            .await
            .expect("the engine publishes");
        sent.push((p.event.seq, t));
        tokio::time::sleep(interval).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (user0, sys0) = cpu_split();
    let cpu0 = user0 + sys0;
    let wall0 = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    for _ in 0..events {
        ticker.tick().await;
        let t = mono_ns();
        let p = daemon
            .engine
            .publish(link_keyed())
            .await
            .expect("the engine publishes");
        sent.push((p.event.seq, t));
    }
    let received = tokio::task::block_in_place(|| wait_line("RECEIVED", Duration::from_secs(120)));
    let cpu = cpu_time().saturating_sub(cpu0);
    let (user1, sys1) = cpu_split();
    let (user, sys) = (user1.saturating_sub(user0), sys1.saturating_sub(sys0));
    let wall = wall0.elapsed();
    let rss_peak = proc_status_kib("VmHWM:");

    // Hand the publish times to the client process; it computes the latencies.
    let mut table = String::new();
    for (seq, t) in sent.iter().skip(warmup) {
        table.push_str(&format!("{seq} {t}\n"));
    }
    child_in
        .write_all(table.as_bytes())
        .expect("send publish times");
    drop(child_in);
    let result = tokio::task::block_in_place(|| wait_line("RESULT", Duration::from_secs(60)));
    let _ = child.wait();
    shutdown.cancel();
    let _ = daemon.done.await;

    let field = |line: &str, key: &str| -> String {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_owned))
            .unwrap_or_else(|| "?".into())
    };
    let n = events as f64;
    let json_len = serde_json::to_string(&link_keyed())
        .map(|s| s.len())
        .unwrap_or(0);
    println!(
        "ws_fanout: {clients} WebSocket clients on loopback, {events} events ({json_len}-byte change JSON), one every {interval:?}"
    );
    println!(
        "  clients connected:          {connected} (in {:.2} s; {})",
        connect_time.as_secs_f64(),
        ready.trim()
    );
    println!(
        "  delivery latency:           p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs  ({} deliveries, {} missing)",
        field(&result, "p50_us"),
        field(&result, "p99_us"),
        field(&result, "p999_us"),
        field(&result, "max_us"),
        field(&result, "samples"),
        field(&result, "missing"),
    );
    let per_delivery = |d: Duration| d.as_secs_f64() * 1e6 / n / clients as f64;
    println!(
        "  server CPU per event:       {:.1} µs  ({:.1} % of one core over {:.2} s)",
        cpu.as_secs_f64() * 1e6 / n,
        cpu.as_secs_f64() * 100.0 / wall.as_secs_f64(),
        wall.as_secs_f64()
    );
    println!(
        "  per client per event:       user {:.2} µs, kernel {:.2} µs, total {:.2} µs  (the kernel part is the TCP send, which on loopback includes delivery into the client's socket)",
        per_delivery(user),
        per_delivery(sys),
        per_delivery(cpu)
    );
    println!(
        "  client process CPU:         {}",
        received.trim_start_matches("RECEIVED").trim()
    );
    println!(
        "  server RSS:                 {:.1} MiB idle → {:.1} MiB with {clients} clients (RSS per client {:.1} KiB); peak {:.1} MiB",
        rss_idle as f64 / 1024.0,
        rss_clients as f64 / 1024.0,
        rss_clients.saturating_sub(rss_idle) as f64 / clients as f64,
        rss_peak as f64 / 1024.0
    );
    println!(
        "  resyncs: {} slow, {} dropped",
        app.metrics.ws_resyncs.with_label_values(&["slow"]).get(),
        app.metrics.ws_resyncs.with_label_values(&["dropped"]).get()
    );
}

// --- client side (child process) --------------------------------------------------------

fn client_main(args: &[String]) {
    let addr = args.get(2).cloned().unwrap_or_default();
    let clients: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let total: usize = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(100);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let url = format!("ws://{addr}/ws");
        let mut sockets = Vec::with_capacity(clients);
        for chunk in 0..clients.div_ceil(100) {
            let n = (clients - chunk * 100).min(100);
            let batch = (0..n).map(|_| {
                let url = url.clone();
                async move {
                    let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                        .read_buffer_size(4096)
                        .write_buffer_size(0);
                    let (mut ws, _) =
                        tokio_tungstenite::connect_async_with_config(url, Some(cfg), true)
                            .await
                            .expect("connect");
                    // The snapshot.
                    let _ = ws.next().await;
                    ws
                }
            });
            sockets.extend(futures_util::future::join_all(batch).await);
        }
        println!("READY {} clients", sockets.len());
        let cpu0 = cpu_time();
        let tasks: Vec<_> = sockets
            .into_iter()
            .map(|mut ws| {
                tokio::spawn(async move {
                    let mut got: Vec<(u64, u64)> = Vec::with_capacity(total);
                    while got.len() < total {
                        let msg =
                            match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
                                Ok(Some(Ok(m))) => m,
                                _ => break,
                            };
                        let now = mono_ns();
                        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                            if let Some(seq) = seq_of(t.as_str()) {
                                got.push((seq, now));
                            }
                        }
                    }
                    got
                })
            })
            .collect();
        let mut all = Vec::with_capacity(tasks.len());
        for t in tasks {
            all.push(t.await.unwrap_or_default());
        }
        let cpu = cpu_time().saturating_sub(cpu0);
        println!(
            "RECEIVED {:.1} µs per event for all clients (parsing included)",
            cpu.as_secs_f64() * 1e6 / total as f64
        );

        // Publish times from the server, then latencies.
        let mut sent = BTreeMap::new();
        let stdin = std::io::stdin();
        for line in stdin.lock().lines().map_while(Result::ok) {
            let mut it = line.split_whitespace();
            if let (Some(Ok(seq)), Some(Ok(t))) = (
                it.next().map(str::parse::<u64>),
                it.next().map(str::parse::<u64>),
            ) {
                sent.insert(seq, t);
            }
        }
        let mut lat: Vec<u64> = Vec::with_capacity(sent.len() * clients);
        let mut missing = 0usize;
        for got in &all {
            let mut seen = 0;
            for (seq, t) in got {
                if let Some(s) = sent.get(seq) {
                    lat.push(t.saturating_sub(*s));
                    seen += 1;
                }
            }
            missing += sent.len().saturating_sub(seen);
        }
        lat.sort_unstable();
        let pct = |p: f64| -> u64 {
            if lat.is_empty() {
                return 0;
            }
            let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
            lat[i.min(lat.len() - 1)] / 1000
        };
        println!(
            "RESULT p50_us={} p99_us={} p999_us={} max_us={} samples={} missing={missing}",
            pct(0.50),
            pct(0.99),
            pct(0.999),
            lat.last().copied().unwrap_or(0) / 1000,
            lat.len()
        );
    });
}

/// The `seq` of an `event` frame (`{"type":"event","seq":N,...}`), read without a JSON parser.
fn seq_of(frame: &str) -> Option<u64> {
    let rest = frame.strip_prefix("{\"type\":\"event\",\"seq\":")?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}
