use prometheus::{Encoder, Registry, TextEncoder};

use super::*;

fn render(r: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&r.gather(), &mut buf)
        .expect("encodes");
    String::from_utf8(buf).expect("utf-8")
}

const BOUNDS: &[f64] = &[0.001, 0.01, 0.1, 1.0, 10.0];

/// The same operations on the crate's families and on compact ones give the same page.
#[test]
fn the_exposition_is_the_crates_own_byte_for_byte() {
    let (a, b) = (Registry::new(), Registry::new());
    let help = "Help with \"quotes\" and a \\ backslash.";
    let p_counter = prometheus::IntCounterVec::new(
        prometheus::Opts::new("t_actions_total", help),
        &["server", "action", "result"],
    )
    .expect("valid");
    let c_counter = IntCounterVec::new("t_actions_total", help, &["server", "action", "result"])
        .expect("valid");
    let p_gauge =
        prometheus::IntGaugeVec::new(prometheus::Opts::new("t_links", "Links."), &["node"])
            .expect("valid");
    let c_gauge = IntGaugeVec::new("t_links", "Links.", &["node"]).expect("valid");
    let p_fgauge =
        prometheus::GaugeVec::new(prometheus::Opts::new("t_interval", "Interval."), &["node"])
            .expect("valid");
    let c_fgauge = GaugeVec::new("t_interval", "Interval.", &["node"]).expect("valid");
    let p_fcounter =
        prometheus::CounterVec::new(prometheus::Opts::new("t_secs_total", "Secs."), &["node"])
            .expect("valid");
    let c_fcounter = CounterVec::new("t_secs_total", "Secs.", &["node"]).expect("valid");
    let p_hist = prometheus::HistogramVec::new(
        prometheus::HistogramOpts::new("t_duration_seconds", "Duration.").buckets(BOUNDS.to_vec()),
        &["node"],
    )
    .expect("valid");
    let c_hist =
        HistogramVec::new("t_duration_seconds", "Duration.", &["node"], BOUNDS).expect("valid");
    let p_unused =
        prometheus::IntGaugeVec::new(prometheus::Opts::new("t_unused", "Unused."), &["node"])
            .expect("valid");
    let c_unused = IntGaugeVec::new("t_unused", "Unused.", &["node"]).expect("valid");
    a.register(Box::new(p_counter.clone())).expect("registers");
    a.register(Box::new(p_gauge.clone())).expect("registers");
    a.register(Box::new(p_fgauge.clone())).expect("registers");
    a.register(Box::new(p_fcounter.clone())).expect("registers");
    a.register(Box::new(p_hist.clone())).expect("registers");
    a.register(Box::new(p_unused)).expect("registers");
    b.register(Box::new(c_counter.clone())).expect("registers");
    b.register(Box::new(c_gauge.clone())).expect("registers");
    b.register(Box::new(c_fgauge.clone())).expect("registers");
    b.register(Box::new(c_fcounter.clone())).expect("registers");
    b.register(Box::new(c_hist.clone())).expect("registers");
    b.register(Box::new(c_unused)).expect("registers");

    for (i, node) in ["2000", "1999", "10001", "we\"ird\\\n"].iter().enumerate() {
        let n = node.to_string();
        p_counter
            .with_label_values(&["sim-1", "RptStatus", "ok"])
            .inc_by(i as u64 + 1);
        c_counter
            .with_label_values(&["sim-1", "RptStatus", "ok"])
            .inc_by(i as u64 + 1);
        p_counter.with_label_values(&[&n, "Ping", "timeout"]).inc();
        c_counter.with_label_values(&[&n, "Ping", "timeout"]).inc();
        p_gauge.with_label_values(&[&n]).set(i as i64 - 2);
        c_gauge.with_label_values(&[&n]).set(i as i64 - 2);
        p_fgauge.with_label_values(&[&n]).set(1.5 * i as f64);
        c_fgauge.with_label_values(&[&n]).set(1.5 * i as f64);
        p_fcounter.with_label_values(&[&n]).inc_by(0.1 + i as f64);
        c_fcounter.with_label_values(&[&n]).inc_by(0.1 + i as f64);
        for v in [0.0005, 0.001, 0.05, 2.0, 11.0, 1e9][..=i + 1].iter() {
            p_hist.with_label_values(&[&n]).observe(*v);
            c_hist.with_label_values(&[&n]).observe(*v);
        }
    }
    p_gauge.with_label_values(&["gone"]).set(1);
    c_gauge.with_label_values(&["gone"]).set(1);
    p_gauge.remove_label_values(&["gone"]).expect("removed");
    c_gauge.remove_label_values(&["gone"]).expect("removed");
    assert!(c_gauge.remove_label_values(&["gone"]).is_err());

    let (pa, pb) = (render(&a), render(&b));
    assert_eq!(pa, pb);
    assert!(pb.contains("t_actions_total{action=\"RptStatus\",result=\"ok\",server=\"sim-1\"} 10"));
    assert!(pb.contains("t_duration_seconds_bucket{node=\"1999\",le=\"+Inf\"} 3"));
    assert!(!pb.contains("gone"));
    assert!(
        !pb.contains("t_unused"),
        "a family without series is not shown"
    );

    assert_eq!(
        c_counter
            .with_label_values(&["sim-1", "RptStatus", "ok"])
            .get(),
        10
    );
    assert_eq!(c_gauge.with_label_values(&["2000"]).get(), -2);
    assert_eq!(c_hist.with_label_values(&["1999"]).get_sample_count(), 3);
}

#[test]
fn label_sets_are_told_apart_even_when_their_hashes_collide() {
    let f = IntCounterVec::new("t_total", "T.", &["a"]).expect("valid");
    f.with_label_values(&["x"]).inc();
    // Force a collision: put "y" where "x"'s hash would be, then "x" again.
    let h = hash_of(&["x"]);
    {
        let mut map = f.0.children.write().expect("lock");
        let x = map.remove(&h).expect("x is there");
        map.insert(
            h,
            Arc::new(Child {
                labels: vec!["y".into()].into(),
                value: IntCounterValue::default(),
            }),
        );
        map.insert(h.wrapping_add(1), x);
    }
    assert_eq!(f.with_label_values(&["x"]).get(), 1);
    f.with_label_values(&["x"]).inc();
    assert_eq!(f.with_label_values(&["x"]).get(), 2);
    assert_eq!(f.with_label_values(&["y"]).get(), 0);
    f.remove_label_values(&["x"]).expect("removed");
    assert_eq!(f.with_label_values(&["y"]).get(), 0);
    assert_eq!(f.with_label_values(&["x"]).get(), 0);
}
