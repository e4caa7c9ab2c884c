//! Parser benchmarks on a large hub: an XStat reply with 1,000 direct links (the exact
//! app_rpt column layout, IN/OUT mix, EchoLink links with an empty IP, a `(none)` peer, a
//! 1,500-entry `LinkedNodes`, the RPT_* `Var:` lines and the status flags), and a SawStat
//! reply for the same links. Each reply is decoded to a `Frame` once, outside the timing.
//!
//! Two clocks: `wall/…` is criterion's usual wall time; `on_cpu/…` counts only the time
//! the benchmark thread was on a core (`CLOCK_THREAD_CPUTIME_ID`), which keeps the figure
//! meaningful on a shared, loaded build machine.

use std::hint::black_box;

use allstar_nexus::ami::{AmiCodec, Frame, Incoming};
use allstar_nexus::rpt::{
    XStat, parse_alinks, parse_conn_line, parse_linked_nodes, parse_sawstat, parse_xstat,
};
use bytes::BytesMut;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, criterion_group, criterion_main};
use tokio_util::codec::Decoder;

// The daemon's allocator (src/main.rs), so the figures match what runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LINKS: usize = 1_000;
const BEYOND: usize = 500;

/// Link `i`: every 40th is EchoLink (`3` + 6 digits, no IP), the rest AllStar nodes.
fn link_name(i: usize) -> String {
    if i % 40 == 7 {
        format!("3{:06}", 100_000 + i)
    } else {
        format!("{}", 20_000 + i)
    }
}

/// One `Conn:` line exactly as `Conn: %-10s%-20s%-12d%-11s%-20s%-20s` prints it.
fn conn_line(i: usize) -> String {
    let name = link_name(i);
    let ip = match i {
        _ if i % 40 == 7 => String::new(),
        _ if i % 250 == 3 => "(none)".to_owned(),
        _ => format!("10.{}.{}.{}", i / 65_536, (i / 256) % 256, i % 256),
    };
    let dir = if i % 3 == 0 { "OUT" } else { "IN" };
    let secs = i * 3_677;
    let time = format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    );
    let state = if i % 97 == 5 {
        "CONNECTING"
    } else {
        "ESTABLISHED"
    };
    format!(
        "Conn: {name:<10}{ip:<20}{:<12}{dir:<11}{time:<20}{state:<20}\r\n",
        i % 7
    )
}

fn xstat_wire() -> String {
    let mut wire = String::from("Response: Success\r\nActionID: 2\r\nNode: 1999\r\n");
    (0..LINKS).for_each(|i| wire.push_str(&conn_line(i)));
    let mut reachable: Vec<String> = (0..LINKS).map(link_name).collect();
    reachable.extend((0..BEYOND).map(|i| format!("{}", 40_000 + i)));
    reachable.sort();
    let linked: Vec<String> = reachable.iter().map(|n| format!("T{n}")).collect();
    wire.push_str(&format!("LinkedNodes: {}\r\n", linked.join(", ")));
    let alinks: Vec<String> = (0..LINKS)
        .map(|i| format!("{}T{}", link_name(i), if i % 100 == 0 { 'K' } else { 'U' }))
        .collect();
    let total = LINKS + BEYOND;
    wire.push_str(&format!(
        "Var: RPT_NUMLINKS={total}\r\nVar: RPT_LINKS={total},{}\r\n",
        linked.join(",")
    ));
    wire.push_str(&format!(
        "Var: RPT_NUMALINKS={LINKS}\r\nVar: RPT_ALINKS={LINKS},{}\r\n",
        alinks.join(",")
    ));
    for var in [
        "RPT_TXKEYED=1",
        "RPT_ETXKEYED=0",
        "RPT_AUTOPATCHUP=0",
        "RPT_RXKEYED=0",
        "cpu_temp=48.3",
    ] {
        wire.push_str(&format!("Var: {var}\r\n"));
    }
    for flag in [
        "parrot_ena: 0",
        "sys_ena: 0",
        "tot_ena: 0",
        "link_ena: 0",
        "patch_ena: 0",
        "patch_state: 4",
        "sch_ena: 0",
        "user_funs: 0",
        "tail_type: 0",
        "iconns: 0",
        "tot_state: 1",
        "ider_state: 2",
        "tel_mode: 1",
    ] {
        wire.push_str(&format!("{flag}\r\n"));
    }
    wire.push_str("\r\n");
    wire
}

fn sawstat_wire() -> String {
    let mut wire = String::from("Response: Success\r\nActionID: 3\r\nNode: 1999\r\n");
    for i in 0..LINKS {
        let (key, unkey) = if i % 10 == 4 {
            (-1, -1)
        } else {
            (i as i64 * 13, i as i64 * 13 - 2)
        };
        wire.push_str(&format!(
            "Conn: {} {} {key} {unkey}\r\n",
            link_name(i),
            u8::from(i % 100 == 0)
        ));
    }
    wire.push_str("\r\n");
    wire
}

/// Decodes one reply with the real codec (after a banner).
fn decode(wire: &str) -> Frame {
    let mut codec = AmiCodec::client(1 << 24);
    let mut buf = BytesMut::from(format!("Asterisk Call Manager/11.0.0\r\n{wire}").as_bytes());
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(Incoming::Frame(frame))) => return frame,
            Ok(Some(Incoming::Banner(_))) => continue,
            other => panic!("benchmark reply does not decode: {other:?}"),
        }
    }
}

/// Nanoseconds the calling thread has spent on a CPU.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Criterion measurement: thread CPU time, shown like wall time.
struct OnCpu;

static WALL: WallTime = WallTime;

impl Measurement for OnCpu {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, value: &u64) -> f64 {
        *value as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}

/// Registers the benchmarks under `clock/…`; `pieces` adds the parts of parse_xstat.
fn bench<M: Measurement + 'static>(c: &mut Criterion<M>, clock: &str, pieces: bool) {
    let xstat = decode(&xstat_wire());
    let parsed = parse_xstat(&xstat).expect("benchmark XStat parses");
    assert_eq!(parsed.links.len(), LINKS);
    assert_eq!(parsed.linked_nodes.len(), LINKS + BEYOND);
    assert_eq!(parsed.alinks.as_ref().map(Vec::len), Some(LINKS));
    // The parse alone (results dropped after each timed batch), then parse + drop.
    c.bench_function(&format!("{clock}/parse_xstat/1000_links"), |b| {
        b.iter_with_large_drop(|| parse_xstat(black_box(&xstat)))
    });
    c.bench_function(&format!("{clock}/parse_xstat_and_drop/1000_links"), |b| {
        b.iter(|| parse_xstat(black_box(&xstat)))
    });
    let sawstat = decode(&sawstat_wire());
    let links = parse_sawstat(&sawstat).expect("benchmark SawStat parses");
    assert_eq!(links.len(), LINKS);
    c.bench_function(&format!("{clock}/parse_sawstat/1000_links"), |b| {
        b.iter_with_large_drop(|| parse_sawstat(black_box(&sawstat)))
    });
    if pieces {
        bench_pieces(c, clock, &xstat, &parsed);
    }
}

/// The parts of parse_xstat, to see where the time goes.
fn bench_pieces<M: Measurement + 'static>(
    c: &mut Criterion<M>,
    clock: &str,
    xstat: &Frame,
    parsed: &XStat,
) {
    let conns: Vec<&str> = xstat.get_all("Conn").collect();
    c.bench_function(&format!("{clock}/parse_conn_line/x1000"), |b| {
        b.iter_with_large_drop(|| {
            conns
                .iter()
                .map(|l| parse_conn_line(black_box(l)))
                .collect::<Vec<_>>()
        })
    });
    let linked = xstat.get("LinkedNodes").unwrap_or_default();
    c.bench_function(&format!("{clock}/parse_linked_nodes/1500"), |b| {
        b.iter_with_large_drop(|| parse_linked_nodes(black_box(linked)))
    });
    let alinks = parsed.var("RPT_ALINKS").unwrap_or_default();
    c.bench_function(&format!("{clock}/parse_alinks/1000"), |b| {
        b.iter_with_large_drop(|| parse_alinks(black_box(alinks)))
    });
}

fn wall(c: &mut Criterion) {
    bench(c, "wall", false);
}

fn on_cpu(c: &mut Criterion<OnCpu>) {
    bench(c, "on_cpu", true);
}

criterion_group!(wall_time, wall);
criterion_group! {
    name = cpu_time;
    config = Criterion::default().with_measurement(OnCpu);
    targets = on_cpu
}
criterion_main!(wall_time, cpu_time);
