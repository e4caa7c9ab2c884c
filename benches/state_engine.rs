//! The state engine in process:
//! - event received → change published: p50/p99 of `Engine::on_ami` for an `RPT_ALINKS`
//!   keying edge on a node with 20 links (parse, reconcile, JSON once, broadcast);
//! - memory of the model for 100 nodes × 100 links, counted by a wrapping allocator.
//!
//! Run: `cargo bench --bench state_engine`. Figures go in docs/performance.md.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use allstar_nexus::ami::{AmiEvent, Frame, Reply};
use allstar_nexus::metrics::Metrics;
use allstar_nexus::poller::PollResult;
use allstar_nexus::state::StateStore;
use allstar_nexus::state::engine::{Engine, NodeSpec};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn alinks_event(node: &str, links: usize, keyed: Option<usize>) -> Frame {
    let list: Vec<String> = (0..links)
        .map(|i| format!("{}T{}", 2000 + i, if Some(i) == keyed { 'K' } else { 'U' }))
        .collect();
    Frame::from_headers(&[
        ("Event", "RPT_ALINKS".to_owned()),
        ("Privilege", "call,all".to_owned()),
        ("Node", node.to_owned()),
        ("Channel", format!("SimpleUSB/{node}")),
        ("EventValue", format!("{links},{}", list.join(","))),
        ("LastKeyedTime", "Tue Aug 19 09:58:02 2025".to_owned()),
        ("LastTxKeyedTime", "Tue Aug 19 10:04:41 2025".to_owned()),
    ])
}

fn xstat(node: &str, links: usize) -> Frame {
    let mut h: Vec<(String, String)> = vec![
        ("Response".into(), "Success".into()),
        ("Node".into(), node.into()),
    ];
    for i in 0..links {
        let ip = format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256);
        let conn = format!(
            "{:<10}{ip:<20}{:<12}{:<11}{:<20}{:<20}",
            100_000 + i,
            0,
            "OUT",
            "01:02:03",
            "ESTABLISHED"
        );
        h.push(("Conn".into(), conn));
    }
    let alinks: Vec<String> = (0..links).map(|i| format!("{}TU", 100_000 + i)).collect();
    h.push((
        "Var".into(),
        format!("RPT_ALINKS={links},{}", alinks.join(",")),
    ));
    h.push(("Var".into(), "RPT_TXKEYED=0".into()));
    h.push(("Var".into(), "RPT_RXKEYED=0".into()));
    Frame::from_headers(&h)
}

fn sawstat(node: &str, links: usize) -> Frame {
    let mut h: Vec<(String, String)> = vec![
        ("Response".into(), "Success".into()),
        ("Node".into(), node.into()),
    ];
    for i in 0..links {
        h.push(("Conn".into(), format!("{} 0 -1 -1", 100_000 + i)));
    }
    Frame::from_headers(&h)
}

fn latency() {
    let store = StateStore::new(4096, 1 << 16);
    let mut rx = store.subscribe();
    let mut engine = Engine::new(store.clone(), Metrics::default(), true);
    engine.add_nodes(&[NodeSpec {
        node_id: "1999".into(),
        server: "default".into(),
        poll_interval: Duration::from_secs(60),
    }]);
    let server: std::sync::Arc<str> = "default".into();
    let frames: Vec<Frame> = (0..40)
        .map(|i| alinks_event("1999", 20, if i % 2 == 0 { Some(i / 2) } else { None }))
        .collect();
    let mut samples = Vec::with_capacity(100_000);
    for round in 0..100_000u64 {
        let frame = frames[(round % 40) as usize].clone();
        let ev = AmiEvent::Event {
            server: server.clone(),
            frame,
            rx_seq: round + 1,
            received: Instant::now(),
        };
        let t = Instant::now();
        engine.on_ami(ev);
        samples.push(t.elapsed());
        while rx.try_recv().is_ok() {}
    }
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    let changes = store.seq();
    println!(
        "event → change (RPT_ALINKS, 20 links, {} events, {} changes): p50 {:?}  p99 {:?}  p99.9 {:?}  max {:?}",
        samples.len(),
        changes,
        pct(0.50),
        pct(0.99),
        pct(0.999),
        samples[samples.len() - 1]
    );
}

fn memory() {
    let before = LIVE.load(Ordering::Relaxed);
    let store = StateStore::new(1, 16);
    let mut engine = Engine::new(store.clone(), Metrics::default(), true);
    let nodes: Vec<NodeSpec> = (0..100)
        .map(|n| NodeSpec {
            node_id: format!("{}", 40_000 + n),
            server: "default".into(),
            poll_interval: Duration::from_secs(60),
        })
        .collect();
    engine.add_nodes(&nodes);
    let after_nodes = LIVE.load(Ordering::Relaxed);
    for (i, n) in nodes.iter().enumerate() {
        let x = xstat(&n.node_id, 100);
        let s = sawstat(&n.node_id, 100);
        engine.on_poll(PollResult {
            node: n.node_id.clone(),
            server: "default".into(),
            xstat: Ok(Reply {
                frame: x,
                rx_seq: i as u64 * 2 + 1,
            }),
            sawstat: Ok(Reply {
                frame: s,
                rx_seq: i as u64 * 2 + 2,
            }),
            duration: Duration::ZERO,
        });
    }
    let after = LIVE.load(Ordering::Relaxed);
    let links: usize = store.nodes().iter().map(|n| n.links.len()).sum();
    assert_eq!(links, 10_000);
    println!(
        "memory: 100 nodes × 100 links = {links} links: model {} KiB in all, {:.0} bytes per link (nodes alone {} KiB; \
         excludes metrics label series, replay buffer capped at 1 here)",
        (after - before) / 1024,
        (after - after_nodes) as f64 / links as f64,
        (after_nodes - before) / 1024
    );
    drop(engine);
}

fn main() {
    // `cargo test --benches` passes --test/--bench flags; run the figures only for `cargo bench`.
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    latency();
    memory();
}
