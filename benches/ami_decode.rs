//! Decoding a realistic AMI stream (XStat replies of a 200-link hub, SawStat replies and
//! bursts of RPT_* events, in the exact app_rpt layout) against the floor: a bare scan
//! of the same bytes for `\r\n\r\n`.
//!
//! Run: `cargo bench --bench ami_decode`. Figures go in docs/performance.md.

use std::hint::black_box;

use allstar_nexus::ami::codec::{AmiCodec, DEFAULT_MAX_FRAME_BYTES};
use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio_util::codec::Decoder;

fn xstat(links: usize, id: usize) -> String {
    let mut s = format!("Response: Success\r\nActionID: nx-{id}\r\nNode: 1999\r\n");
    for i in 0..links {
        let name = 2000 + i;
        let (ip, dir) = if i % 10 == 7 {
            (String::new(), "IN")
        } else {
            (
                format!("192.0.2.{}", i % 250),
                if i % 2 == 0 { "OUT" } else { "IN" },
            )
        };
        let time = format!("{:02}:{:02}:{:02}", i / 60, i % 60, (i * 7) % 60);
        s.push_str(&format!(
            "Conn: {name:<10}{ip:<20}{:<12}{dir:<11}{time:<20}{:<20}\r\n",
            i % 3,
            "ESTABLISHED"
        ));
    }
    let nodes: Vec<String> = (0..links * 3).map(|i| format!("T{}", 2000 + i)).collect();
    s.push_str(&format!("LinkedNodes: {}\r\n", nodes.join(", ")));
    s.push_str(&format!(
        "Var: RPT_NUMLINKS={}\r\nVar: RPT_LINKS={},{}\r\n",
        links * 3,
        links * 3,
        nodes.join(",")
    ));
    let alinks: Vec<String> = (0..links).map(|i| format!("{}TU", 2000 + i)).collect();
    s.push_str(&format!(
        "Var: RPT_NUMALINKS={links}\r\nVar: RPT_ALINKS={links},{}\r\n",
        alinks.join(",")
    ));
    s.push_str("Var: RPT_TXKEYED=0\r\nVar: RPT_ETXKEYED=0\r\nVar: RPT_AUTOPATCHUP=0\r\nVar: RPT_RXKEYED=0\r\n");
    for f in [
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
        s.push_str(f);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s
}

fn sawstat(links: usize, id: usize) -> String {
    let mut s = format!("Response: Success\r\nActionID: nx-{id}\r\nNode: 1999\r\n");
    for i in 0..links {
        s.push_str(&format!(
            "Conn: {} {} {} {}\r\n",
            2000 + i,
            u8::from(i == 3),
            i * 5,
            i * 4
        ));
    }
    s.push_str("\r\n");
    s
}

fn event(name: &str, value: &str) -> String {
    format!(
        "Event: {name}\r\nPrivilege: call,all\r\nNode: 1999\r\nChannel: SimpleUSB/1999\r\nEventValue: {value}\r\nLastKeyedTime: Tue Aug 19 09:58:02 2025\r\nLastTxKeyedTime: Tue Aug 19 10:04:41 2025\r\n\r\n"
    )
}

/// The recorded stream: per minute of a busy hub, one poll and a burst of key/unkey events.
fn stream() -> (Vec<u8>, usize) {
    let mut s = String::from("Asterisk Call Manager/11.0.0\r\n");
    let mut frames = 0;
    for round in 0..10 {
        s.push_str(&xstat(200, round * 2));
        s.push_str(&sawstat(200, round * 2 + 1));
        frames += 2;
        for k in 0..50 {
            let alinks: Vec<String> = (0..20)
                .map(|i| format!("{}T{}", 2000 + i, if i == k % 20 { 'K' } else { 'U' }))
                .collect();
            for (name, value) in [
                ("RPT_ALINKS", format!("20,{}", alinks.join(","))),
                ("RPT_NUMALINKS", "20".into()),
                ("RPT_LINKS", "3,T2000,T2001,T2002".into()),
                ("RPT_NUMLINKS", "3".into()),
                ("RPT_TXKEYED", (k % 2).to_string()),
            ] {
                s.push_str(&event(name, &value));
                frames += 1;
            }
        }
    }
    (s.into_bytes(), frames)
}

fn decode_all(bytes: &[u8], chunk: usize) -> usize {
    let mut codec = AmiCodec::client(DEFAULT_MAX_FRAME_BYTES);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut n = 0;
    for piece in bytes.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Ok(Some(item)) = codec.decode(&mut buf) {
            black_box(&item);
            n += 1;
        }
    }
    n
}

fn bare_scan(bytes: &[u8]) -> usize {
    memchr::memmem::find_iter(bytes, b"\r\n\r\n").count()
}

fn bench(c: &mut Criterion) {
    let (bytes, frames) = stream();
    assert_eq!(
        decode_all(&bytes, 8192),
        frames + 1,
        "every frame (and the banner) decodes"
    );
    let mut g = c.benchmark_group("ami_stream");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("bare_scan_crlfcrlf", |b| {
        b.iter(|| bare_scan(black_box(&bytes)))
    });
    g.bench_function("decode_8k_reads", |b| {
        b.iter(|| decode_all(black_box(&bytes), 8192))
    });
    g.bench_function("decode_1460b_reads", |b| {
        b.iter(|| decode_all(black_box(&bytes), 1460))
    });
    g.finish();
    let mut g = c.benchmark_group("ami_frames");
    g.throughput(Throughput::Elements(frames as u64));
    g.bench_function("decode_8k_reads", |b| {
        b.iter(|| decode_all(black_box(&bytes), 8192))
    });
    g.finish();
    println!("stream: {} bytes, {} frames", bytes.len(), frames);
}

criterion_group!(benches, bench);
criterion_main!(benches);
