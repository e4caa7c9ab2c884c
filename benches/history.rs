//! History store figures (plain main, `cargo bench --bench history`):
//! 1. 2,000 recorded changes per second for 10 s: the writer thread's CPU time;
//! 2. top talkers over one day holding 1,000,000 keyups (whole day, and a range whose
//!    ends fall inside hours);
//! 3. bytes on disk per keyup; 4. the daemon's RSS with that database: the real
//!    `allstar-nexus` binary started on the filled file (and, to compare, on an empty one)
//!    against the simulator, the history routes asked once, then `VmRSS` / `VmHWM` of the
//!    daemon from `/proc/PID/status`; this process's own RSS is printed beside it;
//! 5. an audit entry written durably (committed and synced before the call returns).
//!
//! `cargo bench --bench history -- million` runs only the parts whose name holds a filter
//! (`sustained`, `million`, `audit`); `HISTORY_BENCH_ROWS` sets the keyups filled (default
//! 1,000,000; fewer for a quick check in the dev profile).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use allstar_nexus::config::HistoryConfig;
use allstar_nexus::history::{History, RangeQuery, query, schema};
use allstar_nexus::metrics::Metrics;
use allstar_nexus::state::{ChangeEvent, ChangeKind, EngineSender, LinkKind, LinkView, Published};
use tokio_util::sync::CancellationToken;

#[path = "support/process.rs"]
mod process;
use process::{memory_mib, spawn_and_read};

fn link(name: &str) -> LinkView {
    LinkView {
        node: name.into(),
        kind: LinkKind::of(name),
        ip: Some("10.0.0.1".into()),
        elapsed: "00:00:00".into(),
        ..LinkView::default()
    }
}

/// CPU seconds (user + system) of the thread named `name` in this process.
fn thread_cpu(name: &str) -> Option<f64> {
    let ticks = 100.0; // USER_HZ on Linux
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = entry.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let (u, s): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
            return Some((u + s) / ticks);
        }
    }
    None
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn temp(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("nexus-bench-history-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir.join("history.db")
}

fn sustained(seconds: u64, per_second: u64) {
    let path = temp("rate");
    let shutdown = CancellationToken::new();
    let metrics = Metrics::default();
    let h = History::open(
        &path,
        &HistoryConfig::default(),
        EngineSender::channel().0,
        metrics.clone(),
        shutdown.clone(),
    )
    .expect("open");
    std::thread::sleep(Duration::from_millis(300));
    let cpu0 = thread_cpu("nexus-history").expect("writer thread");
    let start = Instant::now();
    let tick = Duration::from_millis(10);
    let per_tick = per_second / 100;
    let mut sent = 0u64;
    let mut keyed = [false; 200];
    while start.elapsed() < Duration::from_secs(seconds) {
        for _ in 0..per_tick {
            let i = (sent % 200) as usize;
            let kind = if keyed[i] {
                ChangeKind::LinkUnkeyed
            } else {
                ChangeKind::LinkKeyed
            };
            keyed[i] = !keyed[i];
            let node = format!("{}", 1000 + i % 5);
            let mut ev = ChangeEvent::new(kind, "bench", Some(&node));
            ev.link = Some(link(&format!("{}", 2000 + i)));
            if kind == ChangeKind::LinkUnkeyed {
                ev.duration_seconds = Some(1.5);
            }
            h.record(Published::new(ev));
            sent += 1;
        }
        let next = start + tick * ((sent / per_tick) as u32);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let wall = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(600)); // last batch
    let cpu = thread_cpu("nexus-history").expect("writer thread") - cpu0;
    let written = metrics.history_writes.get();
    let dropped = metrics.history_queue_dropped.get();
    println!(
        "sustained: {sent} changes in {wall:.1} s ({:.0}/s), written {written}, dropped {dropped}, \
         writer CPU {cpu:.2} s = {:.1} % of a core",
        sent as f64 / wall,
        cpu / wall * 100.0
    );
    shutdown.cancel();
}

/// Writes `n` closed keyups spread over one day (and their hourly totals) directly.
fn fill(path: &Path, n: u64, day: u64) {
    let mut c = rusqlite::Connection::open(path).expect("open");
    c.pragma_update(None, "journal_mode", "WAL").expect("wal");
    schema::migrate(&mut c).expect("schema");
    let tx = c.transaction().expect("tx");
    {
        let mut ins = tx
            .prepare(
                "INSERT INTO keyups (server, node, link, source, start_ms, end_ms, duration_s, end_reason)
                 VALUES ('bench', ?1, ?2, ?6, ?3, ?4, ?5, 'unkeyed')",
            )
            .expect("prepare");
        let mut hour = tx
            .prepare(
                "INSERT INTO keyup_hours (node, link, hour_ms, keyups, talk_seconds) VALUES (?1, ?2, ?3, 1, ?4)
                 ON CONFLICT(node, hour_ms, link) DO UPDATE
                 SET keyups = keyups + 1, talk_seconds = talk_seconds + excluded.talk_seconds",
            )
            .expect("prepare");
        let mut x: u64 = 12345;
        for i in 0..n {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let start = day + i * 86_400_000 / n;
            let secs = 0.5 + (x >> 40) as f64 % 30.0;
            let node = "1999";
            // One keyup in ten is the local receiver (no link; `(rx)` in the hourly totals).
            let local = i % 10 == 9;
            let l = format!("{}", 2000 + (x >> 33) % 500);
            ins.execute(rusqlite::params![
                node,
                (!local).then_some(&l),
                start as i64,
                (start + (secs * 1000.0) as u64) as i64,
                secs,
                if local { "rx" } else { "link" }
            ])
            .expect("insert");
            hour.execute(rusqlite::params![
                node,
                if local { "(rx)" } else { l.as_str() },
                (start / 3_600_000 * 3_600_000) as i64,
                secs
            ])
            .expect("hour");
        }
    }
    tx.commit().expect("commit");
    c.pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .expect("checkpoint");
}

/// This thread's CPU time, in milliseconds.
fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1000.0 + ts.tv_nsec as f64 / 1e6
}

/// Median wall time and median CPU time of the calling thread, in ms (the machine may be
/// shared: CPU time is what the query itself costs).
fn timed<R>(runs: usize, mut f: impl FnMut() -> R) -> ((f64, f64), R) {
    let mut times = Vec::with_capacity(runs);
    let mut cpu = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let c = thread_cpu_ms();
        last = Some(f());
        cpu.push(thread_cpu_ms() - c);
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    ((times[runs / 2], cpu[runs / 2]), last.expect("ran"))
}

fn million(n: u64) {
    let path = temp("million");
    let day = 20_000 * 86_400_000u64;
    let t = Instant::now();
    fill(&path, n, day);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "fill: {n} keyups in {:.1} s; file {:.1} MB = {:.0} bytes per keyup (rows, indexes, hourly totals)",
        t.elapsed().as_secs_f64(),
        size as f64 / 1e6,
        size as f64 / n as f64
    );
    let rss0 = rss_mb();
    let shutdown = CancellationToken::new();
    let h = History::open(
        &path,
        &HistoryConfig {
            retention_days: 0,
            ..HistoryConfig::default()
        },
        EngineSender::channel().0,
        Metrics::default(),
        shutdown.clone(),
    )
    .expect("open");
    let whole = RangeQuery {
        node: Some("1999".into()),
        since_ms: Some(day),
        until_ms: Some(day + 86_400_000 - 1),
        limit: 100,
        ..RangeQuery::default()
    };
    // What `GET /api/stats/talkers` runs: the talkers and the local receiver, one pass.
    let ((ms, cpu), (top, local)) = timed(21, || {
        h.read(|c| query::talkers_and_local_rx(c, &whole))
            .expect("talkers")
    });
    println!(
        "top talkers, whole day of {n} keyups: median {ms:.2} ms wall, {cpu:.2} ms CPU ({} talkers, top {} with {} keyups; local rx {} keyups)",
        top.len(),
        top[0].link,
        top[0].keyups,
        local.keyups
    );
    let ragged = RangeQuery {
        since_ms: Some(day + 1_800_000),
        until_ms: Some(day + 86_400_000 - 1_800_000),
        ..whole.clone()
    };
    let ((ms, cpu), _) = timed(21, || {
        h.read(|c| query::talkers_and_local_rx(c, &ragged))
            .expect("talkers")
    });
    println!(
        "top talkers, day minus half an hour at each end: median {ms:.2} ms wall, {cpu:.2} ms CPU"
    );
    let act = RangeQuery {
        bucket_ms: 3_600_000,
        ..whole.clone()
    };
    let ((ms, cpu), b) = timed(21, || {
        h.read(|c| query::activity(c, &act)).expect("activity")
    });
    println!(
        "activity, 24 hourly buckets: median {ms:.2} ms wall, {cpu:.2} ms CPU ({} buckets)",
        b.len()
    );
    let page = RangeQuery {
        limit: 100,
        ..whole.clone()
    };
    let ((ms, cpu), _) = timed(21, || h.read(|c| query::keyups(c, &page)).expect("keyups"));
    println!("keyups page of 100 (node + day): median {ms:.2} ms wall, {cpu:.2} ms CPU");
    println!(
        "this bench process (store, writer and reader only, not the daemon): RSS {rss0:.1} MB \
         before opening the {n}-keyup database, {:.1} MB after opening and querying it",
        rss_mb()
    );
    shutdown.cancel();
    drop(h);
    std::thread::sleep(Duration::from_millis(500)); // the writer's last checkpoint
    let empty = temp("empty");
    let state = path.parent().expect("the database's folder");
    daemon_rss("empty database", empty.parent().expect("folder"), day);
    daemon_rss(&format!("{n}-keyup database"), state, day);
}

/// `GET path` over a fresh connection: (status, body bytes).
fn http_get(addr: &str, path: &str) -> (u16, usize) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the daemon");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("response");
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.find("\r\n\r\n").map_or(0, |i| buf.len() - i - 4);
    (status, body)
}

/// The daemon (release binary, one node on the simulator) started with `state` as its state
/// folder: RSS once it is up, then after the history and statistics routes have answered.
fn daemon_rss(label: &str, state: &Path, day: u64) {
    let (_sim, sim_addr) = spawn_and_read(
        &["simulate", "--listen", "127.0.0.1:0", "--nodes", "1999"],
        "address",
    );
    let port = sim_addr.rsplit(':').next().expect("simulator port");
    // Retention off: the filled day is older than the default 90 days, and pruning a
    // million rows at start is not what is measured here.
    let yaml = format!(
        "listen: 127.0.0.1:0\nami_host: 127.0.0.1\nami_port: {port}\nami_username: admin\n\
         ami_password: nexus-sim\nastdb_path: /nonexistent/astdb.txt\nscript_dirs: []\n\
         state_dir: {}\nhistory:\n  retention_days: 0\nnodes:\n  - node_id: 1999\n",
        state.display()
    );
    let config = state.join("config.yaml");
    std::fs::write(&config, yaml).expect("write config");
    let config = config.display().to_string();
    let (daemon, http) = spawn_and_read(&["run", "--config", &config], "http");
    let pid = daemon.pid();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&http, "/api/nodes/1999").0 != 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2)); // first polls, a heartbeat or two
    let (up, _) = memory_mib(pid);
    let end = day + 86_400_000 - 1;
    let whole = format!("node=1999&since={day}&until={end}");
    let ragged = format!(
        "node=1999&since={}&until={}",
        day + 1_800_000,
        end - 1_800_000
    );
    let mut ms = Vec::new();
    for path in [
        format!("/api/stats/talkers?{whole}"),
        format!("/api/stats/talkers?{ragged}"),
        format!("/api/stats/activity?{whole}&bucket=1h"),
        format!("/api/history/keyups?{whole}&limit=1000"),
        "/api/history/links".to_owned(),
        "/api/nodes".to_owned(),
    ] {
        let t = Instant::now();
        let (status, bytes) = http_get(&http, &path);
        assert_eq!(status, 200, "{path}");
        ms.push(format!(
            "{:.1} ms/{bytes} B",
            t.elapsed().as_secs_f64() * 1000.0
        ));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (after, hwm) = memory_mib(pid);
    println!(
        "daemon RSS, {label}: {up:.1} MiB once up, {after:.1} MiB after the queries \
         (peak VmHWM {hwm:.1} MiB); first answers: talkers day {}, talkers ragged {}, \
         activity {}, keyups page of 1000 {}, links {}, nodes {}",
        ms[0], ms[1], ms[2], ms[3], ms[4], ms[5]
    );
}

/// Durable audit writes (`History::write_audit`, what every control answer and login
/// waits for): latency of one entry at a time, committed with `synchronous = FULL`.
fn audit_writes(n: usize) {
    let path = temp("audit");
    let shutdown = CancellationToken::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let h = History::open(
        &path,
        &HistoryConfig::default(),
        EngineSender::channel().0,
        Metrics::default(),
        shutdown.clone(),
    )
    .expect("open");
    let mut times: Vec<f64> = rt.block_on(async {
        let mut t = Vec::with_capacity(n);
        for i in 0..n {
            let e = allstar_nexus::audit::AuditEntry {
                time_ms: i as u64,
                identity: "bench".into(),
                action: "connect".into(),
                result: "verified".into(),
                status: 200,
                ..Default::default()
            };
            let s = Instant::now();
            h.write_audit(e).await.expect("audit written");
            t.push(s.elapsed().as_secs_f64() * 1000.0);
        }
        t
    });
    times.sort_by(f64::total_cmp);
    println!(
        "audit: {n} durable writes one at a time: median {:.2} ms, p95 {:.2} ms, max {:.2} ms",
        times[n / 2],
        times[n * 95 / 100],
        times[n - 1]
    );
    shutdown.cancel();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let run = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    let rows = std::env::var("HISTORY_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    if run("sustained") {
        sustained(10, 2000);
    }
    if run("million") {
        million(rows);
    }
    if run("audit") {
        audit_writes(200);
    }
}
