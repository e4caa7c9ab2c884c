//! MQTT bridge figures (plain main, `cargo bench --bench bridge`; needs `mosquitto`):
//! 5,000 nodes, 1,000 changes a second for 10 s through a local Mosquitto, from the
//! publisher's change stream to the aggregator's change stream (state applied first).
//! Prints the end-to-end latency (p50, p99, max), what arrived, the time to take the
//! first 5,000 retained states, and the CPU of the publisher's runtime, the aggregator's
//! runtime and the broker.
//!
//! Publisher and aggregator each run on their own one-worker tokio runtime (threads
//! `bridge-pub` / `bridge-agg`), so their CPU is read per thread from /proc.

#[path = "../tests/bridge_support/mod.rs"]
mod support;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use allstar_nexus::bridge::{mqtt, source};
use allstar_nexus::config::bridges::{
    BrokerAddr, BrokerLogin, DEFAULT_DISCOVERY_PREFIX, MqttConfig, MqttSourceConfig,
};
use allstar_nexus::metrics::Metrics;
use allstar_nexus::state::engine::{self, Engine, EngineInput, EngineSender, NodeSpec};
use allstar_nexus::state::{ChangeEvent, ChangeKind, StateStore};
use tokio_util::sync::CancellationToken;

const NODES: usize = 5_000;
const PER_SECOND: u64 = 1_000;
const SECONDS: u64 = 10;

/// CPU seconds (user + system) of every thread whose name starts with `prefix`.
fn threads_cpu(prefix: &str) -> f64 {
    let mut total = 0.0;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for entry in dir.flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim().starts_with(prefix) {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            total += stat_cpu(&stat);
        }
    }
    total
}

/// utime + stime of a /proc stat line, in seconds (USER_HZ = 100).
fn stat_cpu(stat: &str) -> f64 {
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (num(11) + num(12)) / 100.0
}

fn process_cpu(pid: Option<u32>) -> f64 {
    pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .map(|s| stat_cpu(&s))
        .unwrap_or(0.0)
}

fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

fn login(port: u16, id: &str) -> BrokerLogin {
    BrokerLogin {
        addr: BrokerAddr {
            host: "127.0.0.1".into(),
            port,
            tls: false,
        },
        client_id: id.into(),
        username: None,
        password: None,
    }
}

fn main() {
    let Some(broker) = support::Mosquitto::start() else {
        return;
    };
    let stop = CancellationToken::new();
    let (pub_rt, agg_rt) = (runtime("bridge-pub"), runtime("bridge-agg"));

    // The publisher: a model with 5,000 nodes and the MQTT bridge on its change stream.
    let store = StateStore::new(1024, 65_536);
    let mut e = Engine::new(store.clone(), Metrics::default(), true);
    let specs: Vec<NodeSpec> = (0..NODES)
        .map(|i| NodeSpec {
            node_id: (100_000 + i).to_string(),
            server: "bench".into(),
            poll_interval: Duration::from_secs(60),
        })
        .collect();
    e.add_nodes(&specs);
    let (_alerts_tx, alerts_rx) = tokio::sync::broadcast::channel(16);
    let cfg = MqttConfig {
        login: login(broker.port, "bench-pub"),
        topic_prefix: "bench".into(),
        name: "bench-pub".into(),
        qos: 1,
        retain: true,
        home_assistant: false,
        discovery_prefix: DEFAULT_DISCOVERY_PREFIX.into(),
        queue: 100_000,
    };
    let pub_metrics = Metrics::default();
    {
        let _g = pub_rt.enter();
        mqtt::spawn(
            cfg,
            store.clone(),
            alerts_rx,
            pub_metrics.clone(),
            stop.clone(),
        );
    }

    // The aggregator: an engine fed only by the source.
    let agg = StateStore::new(1024, 65_536);
    let (tx, rx) = EngineSender::channel();
    let agg_metrics = Metrics::default();
    {
        let _g = agg_rt.enter();
        engine::spawn_commands(agg.clone(), agg_metrics.clone(), rx);
        let src = MqttSourceConfig {
            login: login(broker.port, "bench-agg"),
            topic_prefix: "bench".into(),
        };
        source::spawn(src, tx, agg_metrics.clone(), stop.clone());
    }
    let t0 = Instant::now();
    while agg.node_ids().len() < NODES {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the aggregator has {} of {NODES} nodes",
            agg.node_ids().len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let initial = t0.elapsed();

    // Latency: the driver stamps each change; the aggregator's stream matches it by node.
    let sent: Arc<Mutex<HashMap<String, VecDeque<Instant>>>> = Arc::default();
    let total = (PER_SECOND * SECONDS) as usize;
    let mut agg_rx = agg.subscribe();
    let stamps = sent.clone();
    let measure = std::thread::spawn(move || {
        let mut lat = Vec::with_capacity(total);
        let deadline = Instant::now() + Duration::from_secs(SECONDS + 30);
        while lat.len() < total && Instant::now() < deadline {
            match agg_rx.try_recv() {
                Ok(p) => {
                    let node = p.event.node.clone().unwrap_or_default();
                    let at = stamps
                        .lock()
                        .expect("lock")
                        .get_mut(&node)
                        .and_then(VecDeque::pop_front);
                    if let Some(at) = at {
                        lat.push(at.elapsed());
                    }
                }
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
        lat
    });
    let cpu0 = (
        threads_cpu("bridge-pub"),
        threads_cpu("bridge-agg"),
        process_cpu(broker.pid()),
    );
    let start = Instant::now();
    for k in 0..total {
        let due = start + Duration::from_micros(k as u64 * 1_000_000 / PER_SECOND);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let node = (100_000 + k % NODES).to_string();
        let kind = if (k / NODES) % 2 == 0 {
            ChangeKind::TxKeyed
        } else {
            ChangeKind::TxUnkeyed
        };
        sent.lock()
            .expect("lock")
            .entry(node.clone())
            .or_default()
            .push_back(Instant::now());
        e.handle(EngineInput::Publish {
            event: ChangeEvent::new(kind, "bench", Some(&node)),
            done: None,
        });
    }
    let mut lat = measure.join().expect("measure thread");
    let wall = start.elapsed().as_secs_f64();
    let cpu1 = (
        threads_cpu("bridge-pub"),
        threads_cpu("bridge-agg"),
        process_cpu(broker.pid()),
    );
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN)
    };
    let dropped: u64 = ["queue_full", "lagged"]
        .iter()
        .map(|r| {
            pub_metrics
                .bridge_dropped
                .with_label_values(&["mqtt", r])
                .get()
        })
        .sum();
    println!(
        "bridge: {NODES} nodes, {PER_SECOND} changes/s for {SECONDS} s through mosquitto (QoS 1)"
    );
    println!(
        "  first {NODES} retained states taken by the aggregator in {:.2} s",
        initial.as_secs_f64()
    );
    println!(
        "  arrived: {} of {total} changes (publisher dropped {dropped})",
        lat.len()
    );
    println!(
        "  end-to-end latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "  CPU over {wall:.1} s: publisher {:.1} %, aggregator {:.1} %, mosquitto {:.1} % of one core",
        (cpu1.0 - cpu0.0) / wall * 100.0,
        (cpu1.1 - cpu0.1) / wall * 100.0,
        (cpu1.2 - cpu0.2) / wall * 100.0
    );
    stop.cancel();
    std::thread::sleep(Duration::from_millis(300));
    drop((pub_rt, agg_rt));
}
